//! `xen-console up`, the README's main command, as a newcomer runs it: it
//! comes up with booted guests and says how to reach them, picks up a
//! domain created meanwhile, and stops cleanly on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xen-console");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops `up` even when the test fails half-way.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn up_boots_guests_reports_them_adopts_new_domains_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("emu");
    let ds = d.to_str().unwrap().to_owned();
    let mut up = Up(Command::new(BIN)
        .args(["up", "--guests", "2", "--dir", &ds])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let up = &mut up.0;
    let (tx, rx) = mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("Running;")) {
        seen.push(
            rx.recv_timeout(Duration::from_secs(60))
                .expect("up printed nothing"),
        );
    }
    let text = seen.join("\n");
    for name in ["guest1", "guest2"] {
        let row = seen
            .iter()
            .find(|l| l.contains(name) && l.contains("/dev/pts/"))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
        assert!(row.contains(&format!("guest-{name}.log")), "{row}");
    }
    assert!(text.contains("export XENSTORED_PATH="), "{text}");
    assert!(
        text.contains("guest1 login:"),
        "the first guest's console is shown:\n{text}"
    );
    // Every guest boots; its log fills as the daemon drains it.
    let log = d.join("logs/guest-guest2.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Booting paravirtualized kernel on Xen")
    {
        assert!(
            Instant::now() < deadline,
            "guest2's boot log never reached {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let domid = run(&["domain", "create", "late", "--dir", &ds])
        .trim()
        .to_owned();
    assert_eq!(domid, "3");
    let control = d.join("control");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = run(&["ctl", "--control", control.to_str().unwrap(), "list"]);
        let served = list
            .lines()
            .any(|l| l.split_whitespace().next() == Some("3") && l.contains("connected"));
        if served {
            break;
        }
        assert!(Instant::now() < deadline, "domain 3 never served:\n{list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run(&["domain", "list", "--dir", &ds]).contains("late"));

    let pid = rustix::process::Pid::from_raw(i32::try_from(up.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "up exited with {status}");
}
