//! The emulated Xen across real processes: this test process runs the
//! emulator; guests and backends are child processes (this same test
//! binary re-run in a role) that share pages and signal each other through
//! it. Children take one command per stdin line and answer one `@` line.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use platform::emu::{EmuGuest, EmuPaths, EmuPlatform, Emulator, PortState};
use platform::{
    DomId, EventChannels, EvtchnPort, Gfn, GrantRef, GuestPlatform, MappedPages, Platform,
};

const ROLE: &str = "XEN_CONSOLE_EMU_TEST_ROLE";
const SOCKET: &str = "XEN_CONSOLE_EMU_TEST_SOCKET";
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

// --- the child side -------------------------------------------------------

enum Role {
    Guest(EmuGuest),
    Backend(EmuPlatform),
}

struct ChildState {
    role: Role,
    evtchn: Box<dyn EventChannels>,
    mapping: Option<MappedPages>,
    pages: Vec<MappedPages>,
}

/// Entry point of the child processes; a no-op in the normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let socket = std::env::var(SOCKET).expect("socket path");
    let role = match role.as_str() {
        "guest" => Role::Guest(EmuGuest::connect(&socket).expect("guest connects")),
        _ => Role::Backend(EmuPlatform::connect(&socket).expect("backend connects")),
    };
    let evtchn = match &role {
        Role::Guest(g) => g.event_channels(),
        Role::Backend(b) => b.event_channels(),
    }
    .expect("event channels");
    let mut st = ChildState {
        role,
        evtchn,
        mapping: None,
        pages: Vec::new(),
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            break;
        }
        let reply = match run_command(&mut st, &words) {
            Ok(s) => format!("@ok {s}"),
            Err(e) => format!("@err {e}"),
        };
        println!("{reply}");
        std::io::stdout().flush().unwrap();
    }
    std::process::exit(0);
}

fn n<T: std::str::FromStr>(w: &[&str], i: usize) -> T {
    w[i].parse().ok().expect("numeric argument")
}

fn run_command(st: &mut ChildState, w: &[&str]) -> Result<String, String> {
    let e = |e: platform::Error| e.to_string();
    match (w[0], &st.role) {
        ("grant", Role::Guest(g)) => {
            let r = g
                .grant_access(DomId(n(w, 1)), Gfn(n(w, 2)), w[3] == "1")
                .map_err(e)?;
            Ok(r.to_string())
        }
        ("end", Role::Guest(g)) => g
            .end_access(GrantRef(n(w, 1)))
            .map(|()| String::new())
            .map_err(e),
        ("own", Role::Guest(g)) => {
            st.mapping = Some(g.map_own_page(Gfn(n(w, 1))).map_err(e)?);
            Ok(String::new())
        }
        ("start_info", Role::Guest(g)) => {
            let si = g.start_info().map_err(e)?;
            Ok(format!("{} {}", si.console_gfn, si.console_port))
        }
        ("map_grant", Role::Backend(b)) => {
            let m =
                b.grant_mapper()
                    .map_grant_refs(DomId(n(w, 1)), &[GrantRef(n(w, 2))], w[3] == "1");
            st.mapping = Some(m.map_err(e)?);
            Ok(String::new())
        }
        ("map_foreign", Role::Backend(b)) => {
            st.mapping = Some(
                b.foreign_mapper()
                    .map_foreign(DomId(n(w, 1)), &[Gfn(n(w, 2))], true)
                    .map_err(e)?,
            );
            Ok(String::new())
        }
        ("map_foreign", Role::Guest(_)) => Err("guests have no foreign mapper".into()),
        ("keep", _) => {
            let m = st.mapping.take().ok_or("nothing mapped")?;
            st.pages.push(m);
            Ok(String::new())
        }
        ("unmap", _) => {
            st.mapping = None;
            st.pages.clear();
            Ok(String::new())
        }
        ("write", _) => {
            let m = st.mapping.as_ref().ok_or("nothing mapped")?;
            m.write_from(n(w, 1), w[2].as_bytes())
                .map_err(|x| x.to_string())?;
            Ok(String::new())
        }
        ("read", _) => {
            let m = st.mapping.as_ref().ok_or("nothing mapped")?;
            let mut buf = vec![0u8; n(w, 2)];
            m.read_into(n(w, 1), &mut buf).map_err(|x| x.to_string())?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        ("alloc", _) => Ok(st
            .evtchn
            .alloc_unbound(DomId(n(w, 1)))
            .map_err(e)?
            .to_string()),
        ("bind", _) => Ok(st
            .evtchn
            .bind_interdomain(DomId(n(w, 1)), EvtchnPort(n(w, 2)))
            .map_err(e)?
            .to_string()),
        ("notify", _) => st
            .evtchn
            .notify(EvtchnPort(n(w, 1)))
            .map(|()| String::new())
            .map_err(e),
        ("wait", _) => wait_port(st.evtchn.as_mut(), EvtchnPort(n(w, 1))),
        _ => Err(format!("unknown command {w:?}")),
    }
}

/// Polls the handle's fd (up to 5 s) and reports whether `port` fired.
fn wait_port(evtchn: &mut dyn EventChannels, port: EvtchnPort) -> Result<String, String> {
    {
        let fd = evtchn.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&timeout)).map_err(|x| x.to_string())?;
    }
    let mut fired = Vec::new();
    evtchn.pending(&mut fired).map_err(|x| x.to_string())?;
    for p in &fired {
        evtchn.unmask(*p).map_err(|x| x.to_string())?;
    }
    if fired.contains(&port) {
        Ok("fired".into())
    } else {
        Err(format!("port {port} did not fire (got {fired:?})"))
    }
}

// --- the parent side ------------------------------------------------------

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(role: &str, socket: &std::path::Path) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(SOCKET, socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdin = child.stdin.take().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness may print "test child_main ... " before the
                // first reply on the same line.
                match line.find('@').map(|i| &line[i + 1..]) {
                    Some(rest) => {
                        if tx.send(rest.to_owned()).is_err() {
                            return;
                        }
                    }
                    None => eprintln!("child: {line}"),
                }
            }
        });
        Proc {
            child,
            stdin,
            lines: rx,
        }
    }

    fn cmd(&mut self, text: &str) -> Result<String, String> {
        writeln!(self.stdin, "{text}").expect("child stdin");
        let line = self
            .lines
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| panic!("child did not answer {text:?}"));
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("ok", rest) => Ok(rest.trim().to_owned()),
            (_, rest) => Err(rest.to_owned()),
        }
    }

    fn ok(&mut self, text: &str) -> String {
        self.cmd(text)
            .unwrap_or_else(|e| panic!("{text:?} failed: {e}"))
    }

    fn refused(&mut self, text: &str) -> String {
        match self.cmd(text) {
            Ok(v) => panic!("{text:?} should have been refused, got {v:?}"),
            Err(e) => e,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    emu: Emulator,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path().join("run")).unwrap();
    Setup { _dir: dir, emu }
}

impl Setup {
    fn paths(&self) -> &EmuPaths {
        self.emu.paths()
    }
    fn guest(&self, d: DomId) -> Proc {
        Proc::spawn("guest", &self.paths().xen_domain(d))
    }
    fn backend(&self) -> Proc {
        Proc::spawn("backend", &self.paths().xen())
    }
}

#[test]
fn granted_page_is_shared_both_ways_and_notifies_cross() {
    let s = setup();
    let d = s.emu.create_domain("g", 4).unwrap();
    let mut guest = s.guest(d);
    let mut backend = s.backend();
    let gref = guest.ok("grant 0 1 0");
    let port = guest.ok("alloc 0");
    guest.ok("own 1");
    guest.ok("write 100 hello-from-guest");
    let bport = backend.ok(&format!("bind {d} {port}"));
    guest.ok(&format!("notify {port}"));
    backend.ok(&format!("wait {bport}"));
    backend.ok(&format!("map_grant {d} {gref} 1"));
    assert_eq!(backend.ok("read 100 16"), "hello-from-guest");
    backend.ok("write 200 reply-from-backend");
    backend.ok(&format!("notify {bport}"));
    guest.ok(&format!("wait {port}"));
    assert_eq!(guest.ok("read 200 18"), "reply-from-backend");
}

#[test]
fn console_ring_is_reachable_by_grant_zero_and_by_foreign_map() {
    let s = setup();
    let d = s.emu.create_domain("g", 4).unwrap();
    let mut guest = s.guest(d);
    let si = guest.ok("start_info");
    let (gfn, _port) = si.split_once(' ').unwrap();
    guest.ok(&format!("own {gfn}"));
    // The domain builder marked the console disconnected.
    assert_eq!(guest.ok("read 3088 1").as_bytes(), [1]);
    guest.ok("write 1024 boot-log");
    let mut backend = s.backend();
    backend.ok(&format!("map_grant {d} 0 1"));
    assert_eq!(backend.ok("read 1024 8"), "boot-log");
    backend.ok(&format!("map_foreign {d} {gfn}"));
    assert_eq!(backend.ok("read 1024 8"), "boot-log");
    backend.ok("write 1032 +foreign");
    assert_eq!(guest.ok("read 1024 16"), "boot-log+foreign");
}

#[test]
fn a_grant_for_another_domain_cannot_be_mapped() {
    let s = setup();
    let a = s.emu.create_domain("a", 2).unwrap();
    let b = s.emu.create_domain("b", 2).unwrap();
    let mut ga = s.guest(a);
    let mut gb = s.guest(b);
    let gref = ga.ok(&format!("grant {b} 0 0"));
    let mut backend = s.backend();
    let why = backend.refused(&format!("map_grant {a} {gref} 1"));
    assert!(why.contains("is for domain"), "{why}");
    // The grantee itself has no grant mapper of its own here, but dom0 can
    // still be refused a read-only grant mapped writable.
    let ro = ga.ok("grant 0 1 1");
    assert!(backend
        .refused(&format!("map_grant {a} {ro} 1"))
        .contains("read-only"));
    backend.ok(&format!("map_grant {a} {ro} 0"));
    drop(gb.ok("start_info"));
}

#[test]
fn a_revoked_grant_cannot_be_mapped_and_a_mapped_one_cannot_be_revoked() {
    let s = setup();
    let d = s.emu.create_domain("g", 2).unwrap();
    let mut guest = s.guest(d);
    let mut backend = s.backend();
    let gref = guest.ok("grant 0 0 0");
    backend.ok(&format!("map_grant {d} {gref} 1"));
    backend.ok("keep");
    assert!(guest
        .refused(&format!("end {gref}"))
        .contains("still mapped"));
    backend.ok("unmap");
    // The unmap reaches the emulator asynchronously to the guest's next
    // request only through the backend's own connection, which answered.
    guest.ok(&format!("end {gref}"));
    assert!(backend
        .refused(&format!("map_grant {d} {gref} 1"))
        .contains("no grant"));
}

#[test]
fn only_dom0_maps_foreign_frames() {
    let s = setup();
    let a = s.emu.create_domain("a", 2).unwrap();
    let b = s.emu.create_domain("b", 2).unwrap();
    let plat = EmuPlatform::connect(s.paths().xen_domain(b)).unwrap();
    let err = plat
        .foreign_mapper()
        .map_foreign(a, &[Gfn(0)], true)
        .unwrap_err();
    assert!(
        err.to_string().contains("may not map foreign frames"),
        "{err}"
    );
    let dom0 = EmuPlatform::connect(s.paths().xen()).unwrap();
    dom0.foreign_mapper()
        .map_foreign(a, &[Gfn(0)], true)
        .unwrap();
}

#[test]
fn a_port_allocated_for_another_domain_cannot_be_bound() {
    let s = setup();
    let a = s.emu.create_domain("a", 2).unwrap();
    let b = s.emu.create_domain("b", 2).unwrap();
    let mut ga = s.guest(a);
    let mut gb = s.guest(b);
    let port = ga.ok("alloc 0");
    let why = gb.refused(&format!("bind {a} {port}"));
    assert!(why.contains("allocated for domain 0"), "{why}");
    let mut backend = s.backend();
    backend.ok(&format!("bind {a} {port}"));
}

#[test]
fn a_guest_cannot_act_as_another_domain_or_as_the_toolstack() {
    let s = setup();
    let a = s.emu.create_domain("a", 2).unwrap();
    let b = s.emu.create_domain("b", 2).unwrap();
    let guest = EmuPlatform::connect(s.paths().xen_domain(a)).unwrap();
    assert_eq!(guest.domid(), a);
    for req in [
        "create evil 1".to_string(),
        format!("destroy {b}"),
        format!("alloc_unbound_for {b} {a}"),
    ] {
        let err = guest.toolstack(&req).unwrap_err();
        assert!(err.to_string().contains("toolstack"), "{req}: {err}");
    }
    // XenStore: its own socket acts as itself, not as dom0.
    let store = xenstore::client::Client::connect_unix(s.paths().xenstore_domain(a)).unwrap();
    use xenstore::client::XenStore;
    let err = store
        .write(&format!("/local/domain/{b}/name"), b"mine")
        .unwrap_err();
    assert_eq!(err.errno(), Some(xenstore::XsErrno::Acces));
    assert_eq!(store.read("name").unwrap(), b"a");
}

#[test]
fn killing_a_guest_mid_way_closes_its_ports_for_the_peer_and_frees_its_mappings() {
    let s = setup();
    let d = s.emu.create_domain("g", 2).unwrap();
    let dom0 = EmuPlatform::connect(s.paths().xen()).unwrap();
    let mut evt = dom0.open_event_channels().unwrap();
    let fds_before = count_fds();
    let mut guest = s.guest(d);
    let port = guest.ok("alloc 0");
    let gref = guest.ok("grant 0 0 0");
    guest.ok("own 0");
    let local = evt
        .bind_interdomain(d, EvtchnPort(port.parse().unwrap()))
        .unwrap();
    let page = dom0
        .grant_mapper()
        .map_grant_refs(d, &[GrantRef(gref.parse().unwrap())], true)
        .unwrap();
    guest.child.kill().unwrap();
    guest.child.wait().unwrap();
    // The peer sees its port revert to unbound, and is woken to notice.
    let mut woke = false;
    for _ in 0..100 {
        let mut fired = Vec::new();
        evt.pending(&mut fired).unwrap();
        woke |= fired.contains(&local);
        if woke && evt.status(local).unwrap() == (PortState::Unbound { remote: d }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(woke, "backend was not woken");
    assert_eq!(evt.status(local).unwrap(), PortState::Unbound { remote: d });
    // Memory we mapped stays valid until we unmap it, as under Xen.
    page.write_from(0, b"still here").unwrap();
    drop(page);
    // The emulator still serves, and a new process of that domain works.
    let mut again = s.guest(d);
    again.ok("alloc 0");
    drop(again);
    s.emu.destroy_domain(d).unwrap();
    drop(evt);
    std::thread::sleep(Duration::from_millis(200));
    let fds_after = count_fds();
    assert!(
        fds_after <= fds_before + 2,
        "fds leaked: {fds_before} -> {fds_after}"
    );
}

#[test]
fn destroying_a_domain_cuts_off_its_processes_and_releases_it_in_xenstore() {
    let s = setup();
    let d = s.emu.create_domain("g", 2).unwrap();
    let mut guest = s.guest(d);
    guest.ok("start_info");
    let store = xenstore::client::Client::connect_unix(s.paths().xenstored()).unwrap();
    assert!(store.is_domain_introduced(d.0).unwrap());
    s.emu.destroy_domain(d).unwrap();
    assert!(guest.cmd("start_info").is_err() || guest.child.try_wait().ok().flatten().is_some());
    assert!(!store.is_domain_introduced(d.0).unwrap());
    use xenstore::client::XenStore;
    assert!(!store.exists(&format!("/local/domain/{d}")).unwrap());
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn one_handle_reports_each_of_several_ports_that_fired() {
    let s = setup();
    let a = s.emu.create_domain("a", 1).unwrap();
    let b = s.emu.create_domain("b", 1).unwrap();
    let mut ga = s.guest(a);
    let mut gb = s.guest(b);
    let pa = ga.ok("alloc 0");
    let pb = gb.ok("alloc 0");
    let dom0 = EmuPlatform::connect(s.paths().xen()).unwrap();
    let mut evt = dom0.event_channels().unwrap();
    let la = evt
        .bind_interdomain(a, EvtchnPort(pa.parse().unwrap()))
        .unwrap();
    let lb = evt
        .bind_interdomain(b, EvtchnPort(pb.parse().unwrap()))
        .unwrap();
    ga.ok(&format!("notify {pa}"));
    gb.ok(&format!("notify {pb}"));
    let mut fired = Vec::new();
    evt.pending(&mut fired).unwrap();
    fired.sort();
    assert_eq!(fired, vec![la, lb]);
    // Masked until the peer notifies again: nothing more is pending.
    let mut again = Vec::new();
    evt.pending(&mut again).unwrap();
    assert!(again.is_empty());
    evt.unbind(la).unwrap();
    assert!(matches!(evt.notify(la), Err(platform::Error::NotBound(_))));
    gb.ok(&format!("notify {pb}"));
    evt.pending(&mut again).unwrap();
    assert_eq!(again, vec![lb]);
}

#[test]
fn dropping_the_emulator_cuts_off_dom0_connections_too() {
    let Setup { _dir, emu } = setup();
    let dom0 = EmuPlatform::connect(emu.paths().xen()).unwrap();
    dom0.toolstack("list").unwrap();
    drop(emu);
    // Its thread (and the XenStore server it keeps alive) used to go on
    // serving this connection after the emulator was dropped.
    let err = dom0.toolstack("list").unwrap_err();
    assert!(matches!(err, platform::Error::Emulator { .. }), "{err}");
}

#[test]
fn a_guest_cannot_open_connections_without_bound() {
    use platform::emu::server::MAX_GUEST_CONNECTIONS;
    let s = setup();
    let d = s.emu.create_domain("g", 1).unwrap();
    let path = s.paths().xen_domain(d);
    let mut held: Vec<EmuGuest> = (0..MAX_GUEST_CONNECTIONS)
        .map(|_| EmuGuest::connect(&path).unwrap())
        .collect();
    let err = EmuGuest::connect(&path)
        .err()
        .expect("one connection too many");
    assert!(matches!(err, platform::Error::Emulator { .. }), "{err}");
    // Closing one makes room (the emulator notices asynchronously).
    held.pop();
    let again = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(10));
        EmuGuest::connect(&path).ok()
    });
    assert!(again.is_some(), "no room after a connection closed");
    // Other domains and dom0 are unaffected.
    let other = s.emu.create_domain("h", 1).unwrap();
    EmuGuest::connect(s.paths().xen_domain(other)).unwrap();
    EmuPlatform::connect(s.paths().xen()).unwrap();
}

#[test]
fn a_malformed_toolstack_request_is_refused_and_the_connection_lives_on() {
    let s = setup();
    let dom0 = EmuPlatform::connect(s.paths().xen()).unwrap();
    // `add_console` with no arguments used to panic the connection's thread.
    let err = dom0.toolstack("add_console").unwrap_err();
    assert!(matches!(err, platform::Error::Refused { .. }), "{err}");
    dom0.toolstack("list").unwrap();
}
