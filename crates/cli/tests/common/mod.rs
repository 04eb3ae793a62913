//! What the end-to-end tests share: a simulated guest process driven
//! through its stdin/stdout protocol, and waiting with a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_xen-console");
pub const WAIT: Duration = Duration::from_secs(20);

/// A `xen-console guest` process: one command per stdin line, `@` lines
/// back (command results and events such as `connected 1`).
pub struct Guest {
    pub child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Every `@` line so far.
    pub seen: Vec<String>,
}

impl Guest {
    pub fn spawn(xen: &Path, xenstore: &Path) -> Guest {
        let mut child = Command::new(BIN)
            .arg("guest")
            .arg("--xen")
            .arg(xen)
            .arg("--xenstore")
            .arg(xenstore)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guest");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = line.strip_prefix('@') {
                    if tx.send(l.to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut g = Guest {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        };
        g.wait_for(|l| l.starts_with("ready"), "ready");
        g
    }

    fn next(&mut self, what: &str) -> String {
        let l = self.lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "guest said nothing while waiting for {what}; saw {:?}",
                self.seen
            )
        });
        self.seen.push(l.clone());
        l
    }

    /// The first line (seen before or arriving now) that `pred` accepts.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        loop {
            let l = self.next(what);
            if pred(&l) {
                return l;
            }
        }
    }

    /// Sends a command; returns what its `ok` line carried.
    pub fn cmd(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").expect("guest stdin");
        loop {
            let l = self.next(text);
            if let Some(rest) = l.strip_prefix("ok") {
                return rest.trim().to_owned();
            }
            assert!(!l.starts_with("err"), "guest refused {text:?}: {l}");
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it holds, failing the test after [`WAIT`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
