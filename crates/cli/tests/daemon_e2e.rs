//! `xen-console daemon` as a real process on the emulated Xen (run by
//! this test process), with guests as real processes: discovery, guest
//! logs, crash safety, log rotation, the control socket, and the user's
//! way in (`attach`, and Xen's own `xenconsole`) driven in a real pty.

mod common;

use common::{eventually, Guest, BIN, WAIT};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use platform::emu::Emulator;
use platform::DomId;
use xenstore::client::{Client, XenStore};

struct Setup {
    dir: tempfile::TempDir,
    emu: Emulator,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path().join("emu")).unwrap();
    Setup { dir, emu }
}

impl Setup {
    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
    fn control(&self) -> PathBuf {
        self.dir.path().join("control")
    }
    fn daemon(&self) -> Daemon {
        self.daemon_with_sink("null")
    }
    fn daemon_with_sink(&self, sink: &str) -> Daemon {
        let child = Command::new(BIN)
            .args([
                "daemon",
                "--platform",
                "emu",
                "--log",
                "guest",
                "--sink",
                sink,
            ])
            .arg("--emu-dir")
            .arg(self.dir.path().join("emu"))
            .arg("--log-dir")
            .arg(self.logs())
            .arg("--control")
            .arg(self.control())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start daemon");
        let d = Daemon { child };
        eventually("control socket", || self.control().exists());
        d
    }
    fn guest(&self, d: DomId) -> Guest {
        Guest::spawn(
            &self.emu.paths().xen_domain(d),
            &self.emu.paths().xenstore_domain(d),
        )
    }
    fn store(&self) -> Client {
        Client::connect_unix(self.emu.paths().xenstored()).unwrap()
    }
    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .arg("ctl")
            .arg("--control")
            .arg(self.control())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn numbered(n: u64) -> String {
    (1..=n).map(|i| format!("line {i:08}\n")).collect()
}

#[test]
fn a_domain_created_while_the_daemon_runs_is_served_and_logged() {
    let s = setup();
    let _daemon = s.daemon();
    let d = s.emu.create_domain("late", 8).unwrap();
    let mut g = s.guest(d);
    eventually("console connected", || g.cmd("connected 0") == "1");
    g.cmd("print 0 hello from a late domain");
    let log = s.logs().join("guest-late.log");
    eventually("guest log", || read(&log) == "hello from a late domain\n");
    let (ok, list) = s.ctl(&["list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("connected") && list.contains("null"),
        "{list}"
    );
}

#[test]
fn a_daemon_killed_and_restarted_loses_no_line_and_repeats_none() {
    let s = setup();
    let mut daemon = s.daemon();
    let d = s.emu.create_domain("steady", 8).unwrap();
    let mut g = s.guest(d);
    eventually("console connected", || g.cmd("connected 0") == "1");
    let n = 3000;
    g.cmd(&format!("count 0 {n} 4"));
    let log = s.logs().join("guest-steady.log");
    eventually("some lines", || read(&log).len() > 2000);
    daemon.kill9();
    // The guest keeps printing into its ring while no daemon runs.
    std::thread::sleep(Duration::from_millis(300));
    let _daemon = s.daemon();
    g.wait_for(|l| l == format!("counted 0 {n}"), "count done");
    let want = numbered(n);
    eventually("every line in the log", || read(&log).len() >= want.len());
    std::thread::sleep(Duration::from_millis(200));
    let got = read(&log);
    assert!(
        got == want,
        "log differs: {} bytes, want {}",
        got.len(),
        want.len()
    );
}

#[test]
fn sighup_after_moving_the_log_starts_a_new_file_and_loses_nothing() {
    let s = setup();
    let daemon = s.daemon();
    let d = s.emu.create_domain("rot", 8).unwrap();
    let mut g = s.guest(d);
    eventually("console connected", || g.cmd("connected 0") == "1");
    let log = s.logs().join("guest-rot.log");
    let n = 1500;
    g.cmd(&format!("count 0 {n} 3"));
    eventually("some lines", || read(&log).len() > 3000);
    let moved = s.logs().join("guest-rot.log.1");
    std::fs::rename(&log, &moved).unwrap();
    let pid = rustix::process::Pid::from_raw(i32::try_from(daemon.child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    g.wait_for(|l| l == format!("counted 0 {n}"), "count done");
    let want = numbered(n);
    eventually("all lines across both files", || {
        read(&moved).len() + read(&log).len() >= want.len()
    });
    assert!(!read(&log).is_empty(), "no new file after SIGHUP");
    assert_eq!(read(&moved) + &read(&log), want);
}

#[test]
fn the_control_socket_hot_plugs_lists_and_unplugs_and_survives_bad_requests() {
    let s = setup();
    let _daemon = s.daemon();
    let d = s.emu.create_domain("ctl", 8).unwrap();
    let mut g = s.guest(d);
    let out = s.dir.path().join("ctl-console.log");
    let (ok, index) = s.ctl(&[
        "add",
        &d.0.to_string(),
        "--sink",
        &format!("file:{}", out.display()),
    ]);
    assert!(ok, "{index}");
    assert_eq!(index.trim(), "1");
    g.wait_for(|l| l == "connected 1", "connected");
    g.cmd("print 1 via the control socket");
    eventually("file", || read(&out) == "via the control socket\n");
    // Malformed requests get an error reply; the daemon carries on.
    let mut sock = std::os::unix::net::UnixStream::connect(s.control()).unwrap();
    writeln!(sock, "this is not json").unwrap();
    writeln!(sock, r#"{{"cmd":"del","domid":{},"index":99}}"#, d.0).unwrap();
    let mut lines = BufReader::new(sock.try_clone().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains(r#""ok":false"#) && first.contains("bad request"),
        "{first}"
    );
    let second = lines.next().unwrap().unwrap();
    assert!(second.contains(r#""ok":false"#), "{second}");
    let (ok, _) = s.ctl(&["del", &d.0.to_string(), "1"]);
    assert!(ok);
    g.wait_for(|l| l == "closed 1", "closed");
    let store = s.store();
    eventually("nodes gone", || {
        !store
            .exists(&format!("/local/domain/{d}/device/console/1"))
            .unwrap_or(true)
    });
}

// --- the user's way in, in a real pty (tmux) --------------------------------

struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, cmd: &str) -> Tmux {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "150",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .expect("tmux is needed for the attach tests (.ci/run installs it)")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { name: name.into() }
    }
    fn keys(&self, keys: &[&str]) {
        let mut c = Command::new("tmux");
        c.args(["send-keys", "-t", &self.name]).args(keys);
        assert!(c.status().unwrap().success());
    }
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn wait_screen(&self, what: &str) -> String {
        let mut last = String::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            last = self.screen();
            if last.contains(what) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("screen never showed {what:?}; it shows:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

#[test]
fn attach_shows_the_boot_log_relays_keys_refuses_a_second_client_and_ends_when_the_domain_goes() {
    let s = setup();
    let _daemon = s.daemon_with_sink("pty");
    let d = s.emu.create_domain("tty1", 8).unwrap();
    let mut g = s.guest(d);
    eventually("console connected", || g.cmd("connected 0") == "1");
    g.cmd("boot tty1");
    let store_path = s.emu.paths().xenstored();
    let locks = s.dir.path().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let attach = format!(
        "{BIN} attach {} --xenstore {} --lock-dir {}; echo ATTACH-EXIT=$?; sleep 30",
        d.0,
        store_path.display(),
        locks.display()
    );
    let name = format!("xc-attach-{}", std::process::id());
    let t = Tmux::start(&name, &attach);
    t.wait_screen("tty1 login:");
    t.keys(&["echo-me", "Enter"]);
    t.wait_screen("tty1 login: echo-me");
    g.wait_for(|l| l.starts_with("in 0 "), "keystrokes at the guest");
    // A second client is refused with a clear message.
    let second = Command::new(BIN)
        .args(["attach", &d.0.to_string(), "--xenstore"])
        .arg(&store_path)
        .arg("--lock-dir")
        .arg(&locks)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already attached"));
    s.emu.destroy_domain(d).unwrap();
    let screen = t.wait_screen("ATTACH-EXIT=0");
    assert!(screen.contains("went away"), "{screen}");
}

#[test]
fn xens_own_xenconsole_client_attaches_to_our_pty() {
    let xenconsole = "/usr/lib/xen-4.17/bin/xenconsole";
    assert!(
        Path::new(xenconsole).exists(),
        "install xen-utils-4.17 (.ci/run does)"
    );
    let s = setup();
    let _daemon = Command::new(BIN)
        .args(["daemon", "--platform", "emu", "--sink", "pty"])
        .arg("--emu-dir")
        .arg(s.dir.path().join("emu"))
        .arg("--control")
        .arg(s.control())
        .env("RUST_LOG", "warn")
        .spawn()
        .map(|child| Daemon { child })
        .unwrap();
    eventually("control socket", || s.control().exists());
    let d = s.emu.create_domain("xc", 8).unwrap();
    let mut g = s.guest(d);
    eventually("console connected", || g.cmd("connected 0") == "1");
    g.cmd("boot xc");
    let name = format!("xc-xen-{}", std::process::id());
    let cmd = format!(
        "XENSTORED_PATH={} {xenconsole} --type pv {}; sleep 30",
        s.emu.paths().xenstored().display(),
        d.0
    );
    let t = Tmux::start(&name, &cmd);
    t.wait_screen("xc login:");
    t.keys(&["typed-in-xenconsole", "Enter"]);
    t.wait_screen("xc login: typed-in-xenconsole");
}
