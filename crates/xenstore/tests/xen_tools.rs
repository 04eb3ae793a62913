//! Debian's real XenStore tools against our server.
//!
//! `xenstore-utils` (xenstore-write, -read, -ls, -list, -rm, -exists, -chmod,
//! -watch) and `xen-utils-4.17` (`test-xenstore`) are the clients a Xen host
//! runs; these tests point them at our embedded server with `XENSTORED_PATH`
//! and check what they print, byte for byte, against what the same tools
//! print against C xenstored 4.17.
//!
//! * Each test starts its own server in a temporary directory, with a domain
//!   socket directory: `XENSTORED_PATH=<socket>` acts as dom0, and
//!   `XENSTORED_PATH=<dir>/<domid>` as that (unprivileged) domain once it is
//!   introduced.
//! * Every tool runs under a deadline (real clients retry EAGAIN forever); a
//!   tool that overruns is killed and the test fails naming the command.
//! * A missing tool fails the test: run `.ci/run`, which installs the
//!   packages.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use xenstore::server::{Quotas, ServerConfig, ServerHandle};

/// How long any one tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for a watch event or a domain socket.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";
/// test-xenstore's tests, in its order.
const TEST_XENSTORE_TESTS: [&str; 12] = [
    "read 1",
    "read 2000",
    "write 1",
    "write 2000",
    "dir",
    "rm node",
    "rm dir",
    "ta empty",
    "ta empty x",
    "ta rmw",
    "ta rmw x",
    "ta err",
];

// ---------------------------------------------------------------------------
// Running tools

/// What a finished tool left behind.
#[derive(Debug)]
struct Output {
    cmdline: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

fn cmdline(socket: &Path, program: &str, args: &[&str]) -> String {
    let mut s = format!("XENSTORED_PATH={} {program}", socket.display());
    for a in args {
        s.push_str(&format!(" {a:?}"));
    }
    s
}

/// Starts `program` as a client of the server at `socket`, with both output
/// streams piped.
fn spawn(socket: &Path, program: &str, args: &[&str]) -> Child {
    let result = Command::new(program)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .env_remove("XENSTORED_RUNDIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not installed: run .ci/run, which installs the Debian \
             packages xenstore-utils and xen-utils-4.17"
        ),
        Err(e) => panic!("could not start `{}`: {e}", cmdline(socket, program, args)),
    }
}

/// Reads a pipe to its end on a thread, so the child never blocks on it.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` until `deadline`; on overrun kills it and returns `None`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs a tool to completion under [`TOOL_TIMEOUT`].
fn run(socket: &Path, program: &str, args: &[&str]) -> Output {
    let cmdline = cmdline(socket, program, args);
    let mut child = spawn(socket, program, args);
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = wait_until(&mut child, Instant::now() + TOOL_TIMEOUT);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let Some(status) = status else {
        panic!(
            "`{cmdline}` did not finish within {TOOL_TIMEOUT:?} and was killed\n\
             stdout: {stdout:?}\nstderr: {stderr:?}"
        );
    };
    Output {
        cmdline,
        status,
        stdout,
        stderr,
    }
}

/// A client of the server: dom0 on the main socket, or a domain on its own.
#[derive(Clone)]
struct Client {
    socket: PathBuf,
}

impl Client {
    fn run(&self, program: &str, args: &[&str]) -> Output {
        run(&self.socket, program, args)
    }

    /// Runs a tool that must succeed silently on stderr; returns its stdout.
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "`{}` failed: {:?}\nstdout: {:?}\nstderr: {:?}",
            out.cmdline,
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Runs a tool that must exit 1 with exactly `stderr`; returns its stdout.
    fn fails(&self, program: &str, args: &[&str], stderr: &str) -> String {
        let out = self.run(program, args);
        assert_eq!(
            out.code(),
            Some(1),
            "`{}` should fail with exit 1\nstdout: {:?}\nstderr: {:?}",
            out.cmdline,
            out.stdout,
            out.stderr
        );
        assert_eq!(out.stderr, stderr, "stderr of `{}`", out.cmdline);
        out.stdout
    }

    fn write(&self, pairs: &[&str]) {
        assert_eq!(self.ok("xenstore-write", pairs), "");
    }

    fn chmod(&self, args: &[&str]) {
        assert_eq!(self.ok("xenstore-chmod", args), "");
    }

    fn read(&self, key: &str) -> String {
        self.ok("xenstore-read", &[key])
    }

    fn ls(&self, args: &[&str]) -> String {
        self.ok("xenstore-ls", args)
    }

    fn exists(&self, key: &str) -> Option<i32> {
        let out = self.run("xenstore-exists", &[key]);
        assert_eq!(out.stdout, "", "stdout of `{}`", out.cmdline);
        assert_eq!(out.stderr, "", "stderr of `{}`", out.cmdline);
        out.code()
    }

    /// Starts `xenstore-watch -n <count> keys...` in the background and
    /// waits until it has printed its initial events (one per key), so it
    /// is registered before the test changes anything.
    fn watch(&self, count: usize, keys: &[&str]) -> Watcher {
        let mut args = vec!["-n".to_owned(), count.to_string()];
        args.extend(keys.iter().map(|k| (*k).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmdline = cmdline(&self.socket, "xenstore-watch", &args);
        let mut child = spawn(&self.socket, "xenstore-watch", &args);
        let (tx, lines) = mpsc::channel();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = drain(child.stderr.take().unwrap());
        let mut w = Watcher {
            cmdline,
            child,
            lines,
            seen: Vec::new(),
            reader: Some(reader),
            stderr: Some(stderr),
        };
        w.wait_for(keys.len());
        w
    }
}

/// A `xenstore-watch` running in the background.
struct Watcher {
    cmdline: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Watcher {
    /// Waits until the watcher has printed `n` lines in all.
    fn wait_for(&mut self, n: usize) -> &[String] {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "`{}` printed {:?}, still waiting for line {} after {EVENT_TIMEOUT:?}",
                        self.cmdline,
                        self.seen,
                        self.seen.len() + 1
                    );
                }
            }
        }
        &self.seen
    }

    /// Waits for the watcher to exit on its own (its `-n` count reached) and
    /// returns every line it printed.
    fn finish(mut self) -> Vec<String> {
        let status = wait_until(&mut self.child, Instant::now() + TOOL_TIMEOUT);
        self.reader.take().unwrap().join().unwrap();
        self.seen.extend(self.lines.try_iter());
        let stderr = self.stderr.take().unwrap().join().unwrap();
        let Some(status) = status else {
            panic!(
                "`{}` did not exit within {TOOL_TIMEOUT:?} and was killed; printed {:?}",
                self.cmdline, self.seen
            );
        };
        assert!(
            status.success() && stderr.is_empty(),
            "`{}` failed: {status:?}, stderr {stderr:?}",
            self.cmdline
        );
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Only matters when a test failed midway: do not leave it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The server

/// A server of our own, in a temporary directory.
struct Xs {
    // Dropped in this order: the server stops before its directory goes.
    handle: ServerHandle,
    _dir: TempDir,
}

impl Xs {
    fn start() -> Xs {
        let dir = tempfile::tempdir().expect("tempdir");
        let domains = dir.path().join("domains");
        std::fs::create_dir(&domains).unwrap();
        let handle = ServerHandle::spawn(ServerConfig {
            socket: dir.path().join("socket"),
            domain_socket_dir: Some(domains),
            quotas: Quotas::default(),
        })
        .expect("starting the server");
        Xs { handle, _dir: dir }
    }

    fn dom0(&self) -> Client {
        Client {
            socket: self.handle.socket_path().to_owned(),
        }
    }

    /// Introduces `domid` and returns a client acting as it.
    fn introduce(&self, domid: u16) -> Client {
        self.handle.introduce(domid).unwrap();
        let socket = self.handle.domain_socket_path(domid).unwrap();
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{} did not appear after introducing domain {domid}",
                socket.display()
            );
            thread::sleep(Duration::from_millis(2));
        }
        Client { socket }
    }

    /// Releases `domid` and waits until its socket is gone, by which time
    /// the release's watch events are queued.
    fn release(&self, domid: u16) {
        self.handle.release(domid).unwrap();
        let socket = self.handle.domain_socket_path(domid).unwrap();
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{} still there after releasing domain {domid}",
                socket.display()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Lines, each ending in a newline.
fn lines(ls: &[&str]) -> String {
    ls.iter().map(|l| format!("{l}\n")).collect()
}

// ---------------------------------------------------------------------------
// xenstore-write / xenstore-read

#[test]
fn write_pairs_then_read() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/vm/a", "1", "/vm/b", "two words", "/vm/c", ""]);
    assert_eq!(d0.read("/vm/a"), "1\n");
    assert_eq!(
        d0.ok("xenstore-read", &["/vm/a", "/vm/b", "/vm/c"]),
        "1\ntwo words\n\n"
    );
    assert_eq!(
        d0.ok("xenstore-read", &["-p", "/vm/a", "/vm/b", "/vm/c"]),
        "/vm/a: 1\n/vm/b: two words\n/vm/c: \n"
    );
    // Overwriting keeps one node.
    d0.write(&["/vm/a", "again"]);
    assert_eq!(d0.read("/vm/a"), "again\n");
    // Missing parents are created, with empty values.
    assert_eq!(d0.read("/vm"), "\n");
    d0.fails(
        "xenstore-read",
        &["/vm/missing"],
        "xenstore-read: couldn't read path /vm/missing\n",
    );
}

#[test]
fn values_are_unescaped_on_write_and_escaped_on_read() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    // xenstore-write unescapes \t \n \r \\ \xHH \ooo.
    d0.write(&[
        "/e/ctl",
        r#"a\tb\nc\x01d\\e"f"#,
        "/e/high",
        r"\x7f\x1b\x80\r\000\007\010",
    ]);
    // Raw bytes as stored.
    assert_eq!(
        d0.ok("xenstore-read", &["-R", "/e/ctl"]),
        "a\tb\nc\u{1}d\\e\"f"
    );
    // Bytes below 8 print as \ooo, other unprintables as \xHH; `"` stays.
    assert_eq!(d0.read("/e/ctl"), "a\\tb\\nc\\001d\\\\e\"f\n");
    assert_eq!(d0.read("/e/high"), "\\x7f\\x1b\\x80\\r\\000\\007\\x08\n");
    assert_eq!(
        d0.ok("xenstore-read", &["-p", "/e/ctl"]),
        "/e/ctl: a\\tb\\nc\\001d\\\\e\"f\n"
    );
    // -R writes the argument as is.
    d0.write(&["-R", "/e/raw", r"a\tb"]);
    assert_eq!(d0.read("/e/raw"), "a\\\\tb\n");
    assert_eq!(
        d0.ls(&["/e"]),
        lines(&[
            r#"ctl = "a\tb\nc\001d\\e"f""#,
            r#"high = "\x7f\x1b\x80\r\000\007\x08""#,
            r#"raw = "a\\tb""#,
        ])
    );
}

#[test]
fn relative_paths_from_dom0_are_under_local_domain_0() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["foo", "bar"]);
    assert_eq!(d0.read("/local/domain/0/foo"), "bar\n");
    assert_eq!(d0.read("foo"), "bar\n");
    assert_eq!(
        d0.ls(&["-f", "/local"]),
        lines(&[
            r#"/local/domain = """#,
            r#"/local/domain/0 = """#,
            r#"/local/domain/0/foo = "bar""#,
        ])
    );
}

#[test]
fn invalid_paths_are_refused() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    for path in ["/a b", "/a//b", "/a/", "/a.b", "/a/\u{e9}"] {
        d0.fails(
            "xenstore-write",
            &[path, "1"],
            &format!("xenstore-write: could not write path {path}\n"),
        );
        d0.fails(
            "xenstore-read",
            &[path],
            &format!("xenstore-read: couldn't read path {path}\n"),
        );
        d0.fails(
            "xenstore-ls",
            &[path],
            &format!("xenstore-ls: xs_directory ({path}): Invalid argument\n"),
        );
    }
    // `@` and `-` and `_` are valid name characters.
    d0.write(&["/a@b/c-d_E9", "1"]);
    assert_eq!(d0.ls(&["-f", "/a@b"]), lines(&[r#"/a@b/c-d_E9 = "1""#]));
    assert_eq!(
        d0.ls(&["-f"]),
        lines(&[
            r#"/tool = """#,
            r#"/tool/xenstored = """#,
            r#"/a@b = """#,
            r#"/a@b/c-d_E9 = "1""#,
        ])
    );
}

// ---------------------------------------------------------------------------
// xenstore-ls / xenstore-list

/// A small tree; children keep insertion order.
fn small_tree(d0: &Client) {
    d0.write(&["/vm/1/name", "guest", "/vm/1/image", "a\\tb", "/vm/2", "x"]);
    d0.chmod(&["/vm/1", "n0", "r5"]);
    d0.chmod(&["/vm/1/image", "b0", "w5"]);
}

#[test]
fn ls_prints_the_tree_exactly() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    small_tree(&d0);
    // The whole store, including xenstored's own /tool.
    assert_eq!(
        d0.ls(&[]),
        lines(&[
            r#"tool = """#,
            r#" xenstored = """#,
            r#"vm = """#,
            r#" 1 = """#,
            r#"  name = "guest""#,
            r#"  image = "a\tb""#,
            r#" 2 = "x""#,
        ])
    );
    assert_eq!(d0.ls(&["/"]), d0.ls(&[]));
    // Only the children of the path are listed.
    assert_eq!(
        d0.ls(&["/vm"]),
        lines(&[
            r#"1 = """#,
            r#" name = "guest""#,
            r#" image = "a\tb""#,
            r#"2 = "x""#,
        ])
    );
    assert_eq!(d0.ls(&["/vm/2"]), "");
}

#[test]
fn ls_with_perms_pads_with_dots_to_column_60() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    small_tree(&d0);
    assert_eq!(
        d0.ls(&["-p"]),
        lines(&[
            r#"tool = ""  . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)"#,
            r#" xenstored = ""  . . . . . . . . . . . . . . . . . . . . . .  (n0)"#,
            r#"vm = ""  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)"#,
            r#" 1 = ""  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
            r#"  name = "guest" . . . . . . . . . . . . . . . . . . . . . .  (n0)"#,
            r#"  image = "a\tb" . . . . . . . . . . . . . . . . . . . . . .  (b0,w5)"#,
            r#" 2 = "x" . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)"#,
        ])
    );
    assert_eq!(
        d0.ls(&["-f"]),
        lines(&[
            r#"/tool = """#,
            r#"/tool/xenstored = """#,
            r#"/vm = """#,
            r#"/vm/1 = """#,
            r#"/vm/1/name = "guest""#,
            r#"/vm/1/image = "a\tb""#,
            r#"/vm/2 = "x""#,
        ])
    );
    assert_eq!(
        d0.ls(&["-f", "-p", "/vm"]),
        lines(&[
            r#"/vm/1 = ""   (n0,r5)"#,
            r#"/vm/1/name = "guest"   (n0)"#,
            r#"/vm/1/image = "a\tb"   (b0,w5)"#,
            r#"/vm/2 = "x"   (n0)"#,
        ])
    );
}

#[test]
fn ls_truncates_long_values_at_80_columns() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let long = "v".repeat(100);
    d0.write(&["/l/long", &long, "/l/long/sub", &long]);
    // 80 - 8 - (indent + name length) value characters, then `\...`.
    let top = format!("long = \"{}\\...\"", "v".repeat(80 - 8 - 4));
    let sub = format!(" sub = \"{}\\...\"", "v".repeat(80 - 8 - 4));
    assert_eq!(d0.ls(&["/l"]), lines(&[&top, &sub]));
    // Truncated lines get no dots, but still the perms.
    assert_eq!(
        d0.ls(&["-p", "/l"]),
        lines(&[&format!("{top}  (n0)"), &format!("{sub}  (n0)")])
    );
    // -f has no width limit.
    assert_eq!(
        d0.ls(&["-f", "/l"]),
        lines(&[
            &format!("/l/long = \"{long}\""),
            &format!("/l/long/sub = \"{long}\""),
        ])
    );
}

#[test]
fn ls_of_a_missing_path_fails() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.fails(
        "xenstore-ls",
        &["/nope"],
        "xenstore-ls: xs_directory (/nope): No such file or directory\n",
    );
}

#[test]
fn list_prints_children() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    small_tree(&d0);
    assert_eq!(d0.ok("xenstore-list", &["/vm"]), "1\n2\n");
    assert_eq!(d0.ok("xenstore-list", &["/vm/1"]), "name\nimage\n");
    assert_eq!(d0.ok("xenstore-list", &["/vm/2"]), "");
    assert_eq!(
        d0.ok("xenstore-list", &["-p", "/vm", "/vm/1"]),
        "/vm/1\n/vm/2\n/vm/1/name\n/vm/1/image\n"
    );
    // 4.17 joins with a `/` even after the root.
    assert_eq!(d0.ok("xenstore-list", &["-p", "/"]), "//tool\n//vm\n");
    d0.fails(
        "xenstore-list",
        &["/vm/3"],
        "xenstore-list: could not list path /vm/3\n",
    );
    // Removal deletes the entry in place; a new child goes last.
    assert_eq!(d0.ok("xenstore-rm", &["/vm/1"]), "");
    d0.write(&["/vm/0", ""]);
    assert_eq!(d0.ok("xenstore-list", &["/vm"]), "2\n0\n");
}

// ---------------------------------------------------------------------------
// xenstore-exists / xenstore-rm

#[test]
fn exists_exit_codes() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/x/y", "1"]);
    assert_eq!(d0.exists("/x/y"), Some(0));
    assert_eq!(d0.exists("/x"), Some(0));
    assert_eq!(d0.exists("/"), Some(0));
    assert_eq!(d0.exists("/x/z"), Some(1));
    assert_eq!(d0.exists("/q/z"), Some(1));
    // All keys must exist.
    let out = d0.run("xenstore-exists", &["/x/y", "/x/z"]);
    assert_eq!((out.code(), out.stderr.as_str()), (Some(1), ""));
    assert_eq!(d0.ok("xenstore-exists", &["/x/y", "/x"]), "");
}

#[test]
fn rm_removes_subtrees() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/r/a/b/c", "1", "/r/a/d", "2", "/r/e", "3"]);
    assert_eq!(d0.ok("xenstore-rm", &["/r/a"]), "");
    assert_eq!(d0.ls(&["-f", "/r"]), lines(&[r#"/r/e = "3""#]));
    // A missing node whose parent exists: success.
    assert_eq!(d0.ok("xenstore-rm", &["/r/missing"]), "");
    // ... whose parent is missing too: failure.
    d0.fails(
        "xenstore-rm",
        &["/r/missing/deeper"],
        "xenstore-rm: could not remove path /r/missing/deeper\n",
    );
    // The root cannot go.
    d0.fails(
        "xenstore-rm",
        &["/"],
        "xenstore-rm: could not remove path /\n",
    );
    // Several keys at once.
    d0.write(&["/r/f", "", "/r/g", ""]);
    assert_eq!(d0.ok("xenstore-rm", &["/r/e", "/r/f"]), "");
    assert_eq!(d0.ok("xenstore-list", &["/r"]), "g\n");
}

#[test]
fn rm_tidy_removes_empty_parents() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/t/x/y/z", "v", "/t/x/k", ""]);
    // y is left empty and childless, so goes; x still has k.
    assert_eq!(d0.ok("xenstore-rm", &["-t", "/t/x/y/z"]), "");
    assert_eq!(
        d0.ls(&["-f", "/t"]),
        lines(&[r#"/t/x = """#, r#"/t/x/k = """#])
    );
    // Now everything up to and including /t is empty: all of it goes.
    assert_eq!(d0.ok("xenstore-rm", &["-t", "/t/x/k"]), "");
    assert_eq!(d0.exists("/t"), Some(1));
    assert_eq!(
        d0.ls(&["-f"]),
        lines(&[r#"/tool = """#, r#"/tool/xenstored = """#])
    );
    // A parent with a value stays, and so do its parents.
    d0.write(&["/u/v/w", "1", "/u/v", "keep"]);
    assert_eq!(d0.ok("xenstore-rm", &["-t", "/u/v/w"]), "");
    assert_eq!(d0.ls(&["-f", "/u"]), lines(&[r#"/u/v = "keep""#]));
    // Without -t, empty parents stay.
    d0.write(&["/s/a/b", "1"]);
    assert_eq!(d0.ok("xenstore-rm", &["/s/a/b"]), "");
    assert_eq!(d0.ls(&["-f", "/s"]), lines(&[r#"/s/a = """#]));
}

// ---------------------------------------------------------------------------
// xenstore-chmod

#[test]
fn chmod_sets_perms() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    xs.introduce(5);
    d0.write(&["/c/a/b", "1", "/c/a/d", "2", "/c/e", "3"]);
    d0.chmod(&["/c/a", "n0", "r5"]);
    // Other entries may name domains that do not exist.
    d0.chmod(&["/c/e", "b0", "r5", "w9"]);
    assert_eq!(
        d0.ls(&["-f", "-p", "/c"]),
        lines(&[
            r#"/c/a = ""   (n0,r5)"#,
            r#"/c/a/b = "1"   (n0)"#,
            r#"/c/a/d = "2"   (n0)"#,
            r#"/c/e = "3"   (b0,r5,w9)"#,
        ])
    );
    // -r applies to the whole subtree.
    d0.chmod(&["-r", "/c/a", "r0", "w5"]);
    assert_eq!(
        d0.ls(&["-f", "-p", "/c/a"]),
        lines(&[r#"/c/a/b = "1"   (r0,w5)"#, r#"/c/a/d = "2"   (r0,w5)"#])
    );
    assert_eq!(
        d0.ls(&["-f", "-p", "/c"]).lines().next(),
        Some(r#"/c/a = ""   (r0,w5)"#)
    );
    // -u applies to every ancestor too.
    d0.chmod(&["-u", "/c/a/b", "n5", "r0"]);
    assert_eq!(
        d0.ls(&["-f", "-p", "/c"]),
        lines(&[
            r#"/c/a = ""   (n5,r0)"#,
            r#"/c/a/b = "1"   (n5,r0)"#,
            r#"/c/a/d = "2"   (r0,w5)"#,
            r#"/c/e = "3"   (b0,r5,w9)"#,
        ])
    );
    assert_eq!(
        d0.ls(&["-f", "-p", "/"])
            .lines()
            .find(|l| l.starts_with("/c =")),
        Some(r#"/c = ""   (n5,r0)"#)
    );
    // The owner is an introduced domain: fine.
    d0.chmod(&["/c/e", "n5"]);
    assert!(d0
        .ls(&["-f", "-p", "/c"])
        .ends_with("/c/e = \"3\"   (n5)\n"));
}

#[test]
fn chmod_to_an_owner_that_does_not_exist_fails() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/c", "1"]);
    // 4.17: the owner must be an existing domain (ENOENT).
    d0.fails(
        "xenstore-chmod",
        &["/c", "n7"],
        "xenstore-chmod: Error occurred setting permissions on '/c': \
         No such file or directory\n",
    );
    d0.fails(
        "xenstore-chmod",
        &["/c", "r7", "r0"],
        "xenstore-chmod: Error occurred setting permissions on '/c': \
         No such file or directory\n",
    );
    assert_eq!(
        d0.ls(&["-f", "-p", "/"]).lines().last(),
        Some(r#"/c = "1"   (n0)"#)
    );
    // Once domain 7 exists it can own nodes.
    xs.introduce(7);
    d0.chmod(&["/c", "n7"]);
    assert_eq!(
        d0.ls(&["-f", "-p", "/"]).lines().last(),
        Some(r#"/c = "1"   (n7)"#)
    );
    // A bad letter is the tool's own error.
    d0.fails(
        "xenstore-chmod",
        &["/c", "x0"],
        "xenstore-chmod: Invalid permission specification: 'x'\n",
    );
    // A missing node.
    d0.fails(
        "xenstore-chmod",
        &["/nope", "n0"],
        "xenstore-chmod: Error occurred setting permissions on '/nope': \
         No such file or directory\n",
    );
}

// ---------------------------------------------------------------------------
// xenstore-watch

#[test]
fn watch_on_a_parent_sees_children() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/elsewhere", "0"]);
    // The watched node need not exist yet.
    let mut w = d0.watch(5, &["/w"]);
    d0.write(&["/w/a/b", "1"]);
    w.wait_for(2);
    d0.write(&["/elsewhere", "1"]);
    // The same value again still fires.
    d0.write(&["/w/a/b", "1"]);
    w.wait_for(3);
    d0.chmod(&["/w/a", "n0", "r5"]);
    w.wait_for(4);
    assert_eq!(d0.ok("xenstore-rm", &["/w"]), "");
    assert_eq!(w.finish(), ["/w", "/w/a/b", "/w/a/b", "/w/a", "/w"]);
}

#[test]
fn watch_sees_removal_post_order_and_exact() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    d0.write(&["/r/a/b/c", "1", "/r/a/d", "2"]);
    // Watches below the removed node get an event only if exactly on a
    // removed node; watches on it or above get the removed path.
    let mut w = d0.watch(
        9,
        &["/r/a/b/c", "/r/a/b", "/r/a/nothere", "/r/a/d/none", "/r"],
    );
    assert_eq!(d0.ok("xenstore-rm", &["/r/a"]), "");
    w.wait_for(5 + 3);
    // A missing node under an existing parent: no event.
    assert_eq!(d0.ok("xenstore-rm", &["/r/missing"]), "");
    d0.write(&["/r/z", ""]);
    assert_eq!(
        w.finish(),
        [
            "/r/a/b/c",
            "/r/a/b",
            "/r/a/nothere",
            "/r/a/d/none",
            "/r",
            // Post-order: c before b, both before /r/a itself.
            "/r/a/b/c",
            "/r/a/b",
            "/r/a",
            "/r/z",
        ]
    );
}

#[test]
fn watch_count_includes_the_initial_event() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let w = d0.watch(1, &["/never"]);
    assert_eq!(w.finish(), ["/never"]);
    // Specials fire their initial event too.
    let w = d0.watch(1, &["@releaseDomain"]);
    assert_eq!(w.finish(), ["@releaseDomain"]);
}

#[test]
fn watch_relative_path_reports_relative_events() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let w = d0.watch(3, &["foo"]);
    d0.write(&["/local/domain/0/foo/bar", "1"]);
    d0.write(&["foo", "2"]);
    assert_eq!(w.finish(), ["foo", "foo/bar", "foo"]);
}

#[test]
fn watch_special_domain_events() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let mut w = d0.watch(4, &["@introduceDomain", "@releaseDomain"]);
    xs.introduce(3);
    w.wait_for(3);
    xs.release(3);
    assert_eq!(
        w.finish(),
        [
            "@introduceDomain",
            "@releaseDomain",
            "@introduceDomain",
            "@releaseDomain"
        ]
    );
}

#[test]
fn domain_watch_sees_only_what_it_may_read() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    d0.write(&["/w/pub", "0", "/w/hidden", "0"]);
    d0.chmod(&["/w/pub", "n0", "r5"]);
    let mut w = d5.watch(6, &["/w"]);
    // Neither the node nor its parent is readable by 5: not delivered.
    d0.write(&["/w/hidden/x", "1"]);
    // A readable node.
    d0.write(&["/w/pub", "1"]);
    w.wait_for(2);
    d0.write(&["/w/pub/y", "1"]);
    w.wait_for(3);
    // Readable under the old perms.
    d0.chmod(&["/w/pub/y", "n0"]);
    w.wait_for(4);
    // Unreadable node, but its parent is readable.
    d0.write(&["/w/pub/y", "2"]);
    w.wait_for(5);
    // Unreadable before and after, parent unreadable: not delivered.
    d0.chmod(&["/w/hidden/x", "n0"]);
    // Readable under the new perms.
    d0.chmod(&["/w/hidden", "n0", "r5"]);
    assert_eq!(
        w.finish(),
        [
            "/w",
            "/w/pub",
            "/w/pub/y",
            "/w/pub/y",
            "/w/pub/y",
            "/w/hidden"
        ]
    );
}

// ---------------------------------------------------------------------------
// Permissions, as an unprivileged domain

/// A guest's directory as libxl sets it up.
fn guest_dir(d0: &Client) {
    let dom = "/local/domain/5";
    d0.write(&[dom, ""]);
    d0.chmod(&[dom, "n0", "r5"]);
    d0.write(&[
        "/local/domain/5/name",
        "guest",
        "/local/domain/5/secret",
        "s",
        "/local/domain/5/data",
        "",
        "/local/domain/5/console/ring-ref",
        "123",
        "/local/domain/5/console/port",
        "7",
        "/local/domain/5/shared",
        "",
    ]);
    d0.chmod(&["/local/domain/5/secret", "n0"]);
    d0.chmod(&["/local/domain/5/data", "n5"]);
    d0.chmod(&["-r", "/local/domain/5/console", "n0", "r5"]);
    d0.chmod(&["/local/domain/5/shared", "n0", "b5"]);
}

#[test]
fn domain_reads_what_it_may_and_nothing_else() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    guest_dir(&d0);
    assert_eq!(d5.read("/local/domain/5/name"), "guest\n");
    assert_eq!(d5.read("name"), "guest\n");
    assert_eq!(d5.read("console/ring-ref"), "123\n");
    d5.fails(
        "xenstore-read",
        &["/local/domain/5/secret"],
        "xenstore-read: couldn't read path /local/domain/5/secret\n",
    );
    d5.fails(
        "xenstore-read",
        &["/tool"],
        "xenstore-read: couldn't read path /tool\n",
    );
    assert_eq!(d5.exists("/local/domain/5/name"), Some(0));
    assert_eq!(d5.exists("/local/domain/5/secret"), Some(1));
    assert_eq!(
        d5.ok("xenstore-list", &["/local/domain/5"]),
        "name\nsecret\ndata\nconsole\nshared\n"
    );
    d5.fails(
        "xenstore-list",
        &["/"],
        "xenstore-list: could not list path /\n",
    );
    assert_eq!(
        d5.ls(&["-p", "/local/domain/5/console"]),
        lines(&[
            r#"ring-ref = "123" . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
            r#"port = "7" . . . . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
        ])
    );
    // A missing node's error follows its nearest existing ancestor: ENOENT
    // if that is readable, else EACCES.
    for (path, error) in [
        ("/local/domain/5/console/none", "No such file or directory"),
        ("/local/domain/5/none/deeper", "No such file or directory"),
        ("/local/domain/5/secret/none", "Permission denied"),
        ("/local/domain/5/secret", "Permission denied"),
        ("/tool/none", "Permission denied"),
        ("/local/domain/6", "Permission denied"),
    ] {
        d5.fails(
            "xenstore-ls",
            &[path],
            &format!("xenstore-ls: xs_directory ({path}): {error}\n"),
        );
    }
    // xenstore-ls prints `:` for a value it cannot read, then fails listing
    // that node.
    let out = d5.run("xenstore-ls", &["/local/domain/5"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, "name = \"guest\"\nsecret:\n\n");
    assert_eq!(
        out.stderr,
        "xenstore-ls: xs_directory (/local/domain/5/secret): Permission denied\n"
    );
}

#[test]
fn domain_writes_only_where_it_may() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    guest_dir(&d0);
    // Its own writable directory, by absolute and relative path.
    d5.write(&["/local/domain/5/data/x", "1"]);
    d5.write(&["data/y/z", "2"]);
    // Under a dom0-owned node it may write: the new node is still its own.
    d5.write(&["/local/domain/5/shared/s", "3"]);
    // The read-only console directory.
    d5.fails(
        "xenstore-write",
        &["/local/domain/5/console/tty", "/dev/pts/1"],
        "xenstore-write: could not write path /local/domain/5/console/tty\n",
    );
    d5.fails(
        "xenstore-write",
        &["console/ring-ref", "666"],
        "xenstore-write: could not write path console/ring-ref\n",
    );
    d5.fails(
        "xenstore-write",
        &["/local/domain/5/new", "1"],
        "xenstore-write: could not write path /local/domain/5/new\n",
    );
    d5.fails(
        "xenstore-write",
        &["/local/domain/0/x", "1"],
        "xenstore-write: could not write path /local/domain/0/x\n",
    );
    d5.fails(
        "xenstore-rm",
        &["/local/domain/5/name"],
        "xenstore-rm: could not remove path /local/domain/5/name\n",
    );
    assert_eq!(d0.read("/local/domain/5/console/ring-ref"), "123\n");
    // Nodes a domain creates are its own; the rest of the parent's perms
    // are inherited.
    assert_eq!(
        d0.ls(&["-p", "/local/domain/5"]),
        lines(&[
            r#"name = "guest" . . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
            r#"secret = "s" . . . . . . . . . . . . . . . . . . . . . . . .  (n0)"#,
            r#"data = ""  . . . . . . . . . . . . . . . . . . . . . . . . .  (n5)"#,
            r#" x = "1" . . . . . . . . . . . . . . . . . . . . . . . . . .  (n5)"#,
            r#" y = ""  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n5)"#,
            r#"  z = "2"  . . . . . . . . . . . . . . . . . . . . . . . . .  (n5)"#,
            r#"console = "" . . . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
            r#" ring-ref = "123"  . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
            r#" port = "7"  . . . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)"#,
            r#"shared = ""  . . . . . . . . . . . . . . . . . . . . . . . .  (n0,b5)"#,
            r#" s = "3" . . . . . . . . . . . . . . . . . . . . . . . . . .  (n5,b5)"#,
        ])
    );
    // It may change perms on its own nodes but not give them away, nor
    // touch others'.
    d5.chmod(&["data/x", "n5", "r0"]);
    d5.fails(
        "xenstore-chmod",
        &["data/x", "n0"],
        "xenstore-chmod: Error occurred setting permissions on 'data/x': \
         Operation not permitted\n",
    );
    d5.fails(
        "xenstore-chmod",
        &["name", "n5"],
        "xenstore-chmod: Error occurred setting permissions on 'name': \
         Permission denied\n",
    );
    assert_eq!(
        d5.ls(&["-f", "-p", "/local/domain/5/data"]),
        lines(&[
            r#"/local/domain/5/data/x = "1"   (n5,r0)"#,
            r#"/local/domain/5/data/y = ""   (n5)"#,
            r#"/local/domain/5/data/y/z = "2"   (n5)"#,
        ])
    );
    // Removing a missing node: fine where it may write, not elsewhere.
    assert_eq!(d5.ok("xenstore-rm", &["data/none"]), "");
    d5.fails(
        "xenstore-rm",
        &["console/none"],
        "xenstore-rm: could not remove path console/none\n",
    );
    d5.fails(
        "xenstore-chmod",
        &["data/none", "n5"],
        "xenstore-chmod: Error occurred setting permissions on 'data/none': \
         No such file or directory\n",
    );
    d5.fails(
        "xenstore-chmod",
        &["console/none", "n5"],
        "xenstore-chmod: Error occurred setting permissions on 'console/none': \
         Permission denied\n",
    );
    // At most 5 perms per node for a domain.
    d5.chmod(&["data/x", "n5", "r1", "r2", "r3", "r4"]);
    d5.fails(
        "xenstore-chmod",
        &["data/x", "n5", "r1", "r2", "r3", "r4", "r6"],
        "xenstore-chmod: Error occurred setting permissions on 'data/x': \
         No space left on device\n",
    );
    d5.chmod(&["data/x", "n5", "r0"]);
    // Removing its own nodes works.
    assert_eq!(d5.ok("xenstore-rm", &["data/y"]), "");
    assert_eq!(d5.ok("xenstore-list", &["data"]), "x\n");
}

#[test]
fn released_domain_loses_the_nodes_it_owns() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    guest_dir(&d0);
    d5.write(&["data/x", "1", "shared/s", "2"]);
    xs.release(5);
    assert_eq!(d0.exists("/local/domain/5/data"), Some(1));
    assert_eq!(
        d0.ok("xenstore-list", &["/local/domain/5"]),
        "name\nsecret\nconsole\nshared\n"
    );
    assert_eq!(d0.ok("xenstore-list", &["/local/domain/5/shared"]), "");
}

#[test]
fn domain_node_size_is_limited() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    guest_dir(&d0);
    // 4.17: 24 + 8 * perms + data + children must stay under 2048 bytes, so
    // a one-perm leaf holds at most 2015 bytes.
    let fits = "f".repeat(2015);
    let too_big = "f".repeat(2016);
    d5.write(&["data/fits", &fits]);
    assert_eq!(d5.read("data/fits"), format!("{fits}\n"));
    d5.fails(
        "xenstore-write",
        &["data/big", &too_big],
        "xenstore-write: could not write path data/big\n",
    );
    assert_eq!(d5.exists("data/big"), Some(1));
    // dom0 has no such limit.
    let huge = "h".repeat(4000);
    d0.write(&["/local/domain/5/data/huge", &huge]);
    assert_eq!(d5.read("data/huge"), format!("{huge}\n"));
}

#[test]
fn domain_watches() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    guest_dir(&d0);
    // A relative watch reports relative paths.
    let w = d5.watch(3, &["data", "@releaseDomain"]);
    // @releaseDomain needs read permission on it, which dom0 must grant.
    xs.introduce(3);
    xs.release(3);
    d5.write(&["data/x", "1"]);
    assert_eq!(w.finish(), ["data", "@releaseDomain", "data/x"]);
    // Once granted, the domain sees releases.
    d0.chmod(&["@releaseDomain", "n0", "r5"]);
    let w = d5.watch(2, &["@releaseDomain"]);
    xs.introduce(4);
    xs.release(4);
    assert_eq!(w.finish(), ["@releaseDomain", "@releaseDomain"]);
}

// ---------------------------------------------------------------------------
// test-xenstore

/// Asserts test-xenstore passed and printed a timing line for `tests`.
fn assert_test_xenstore_passed(out: &Output, tests: &[&str]) {
    assert_eq!(
        out.code(),
        Some(0),
        "`{}`\nstdout:\n{}\nstderr:\n{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stdout.contains("failed") && !out.stderr.contains("failed"),
        "`{}`:\n{}{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stdout.contains("Exhaustive"),
        "`{}`:\n{}",
        out.cmdline,
        out.stdout
    );
    for t in tests {
        let prefix = format!("{t:<10}: ");
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&prefix)),
            "`{}` printed no line for {t:?}:\n{}",
            out.cmdline,
            out.stdout
        );
    }
}

/// test-xenstore removed everything it wrote.
fn assert_clean(d0: &Client, domain_dir: &str) {
    assert_eq!(d0.ls(&[domain_dir]), "", "left behind under {domain_dir}");
    assert_eq!(d0.exists(&format!("{domain_dir}/xenstore-test")), Some(1));
}

#[test]
fn test_xenstore_all_tests() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let out = d0.run(TEST_XENSTORE, &[]);
    assert_test_xenstore_passed(&out, &TEST_XENSTORE_TESTS);
    assert_eq!(out.stdout.lines().count(), TEST_XENSTORE_TESTS.len());
    assert_clean(&d0, "/local/domain/0");
}

#[test]
fn test_xenstore_conflict_test_repeated() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let out = d0.run(TEST_XENSTORE, &["-t", "ta err", "-i", "50"]);
    assert_test_xenstore_passed(&out, &["ta err"]);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        out.stdout.starts_with("ta err    : avg: "),
        "{}",
        out.stdout
    );
    assert_clean(&d0, "/local/domain/0");
}

#[test]
fn test_xenstore_random_mode() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let out = d0.run(TEST_XENSTORE, &["-r", "5"]);
    assert_test_xenstore_passed(&out, &[]);
    // Random mode prints only failures.
    assert_eq!(out.stdout, "");
    assert_clean(&d0, "/local/domain/0");
}

#[test]
fn test_xenstore_as_an_unprivileged_domain() {
    let xs = Xs::start();
    let d0 = xs.dom0();
    let d5 = xs.introduce(5);
    // Its relative paths land in its own directory, which it owns.
    d0.write(&["/local/domain/5", ""]);
    d0.chmod(&["/local/domain/5", "n5"]);
    let out = d5.run(TEST_XENSTORE, &[]);
    assert_test_xenstore_passed(&out, &TEST_XENSTORE_TESTS);
    assert_clean(&d0, "/local/domain/5");
}
