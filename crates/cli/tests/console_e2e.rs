//! The console backend end to end on the emulated Xen: this test process
//! runs the emulator and the backend; each guest is a separate
//! `xen-console guest` process whose consoles behave like Linux hvc_xen.
//! Rings are really shared between the processes, sinks are real files,
//! ptys and sockets.

mod common;

use common::{eventually, Guest, WAIT};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use console::backend::{BackendHandle, ConsoleBackend};
use console::device::ConsoleOptions;
use console::output_buffer::Overflow;
use console::sink::SinkSpec;
use platform::emu::{ConsoleSpec, EmuPlatform, Emulator};
use platform::DomId;
use xenstore::client::{Client, XenStore};

struct World {
    dir: tempfile::TempDir,
    emu: Emulator,
    backend: BackendHandle,
    store: Client,
}

fn world(opts: ConsoleOptions) -> World {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path().join("run")).unwrap();
    let store = Client::connect_unix(emu.paths().xenstored()).unwrap();
    let plat = Arc::new(EmuPlatform::connect(emu.paths().xen()).unwrap());
    let backend_store = Client::connect_unix(emu.paths().xenstored()).unwrap();
    let backend = ConsoleBackend::spawn(backend_store, plat, opts).unwrap();
    World {
        dir,
        emu,
        backend,
        store,
    }
}

impl World {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn guest(&self, d: DomId) -> Guest {
        Guest::spawn(
            &self.emu.paths().xen_domain(d),
            &self.emu.paths().xenstore_domain(d),
        )
    }

    fn read(&self, path: &str) -> Option<String> {
        self.store
            .read(path)
            .ok()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

fn file_has(path: &Path, want: &[u8]) -> bool {
    std::fs::read(path).map(|b| b == want).unwrap_or(false)
}

fn opts(default_sink: SinkSpec) -> ConsoleOptions {
    ConsoleOptions {
        default_sink,
        ..ConsoleOptions::default()
    }
}

#[test]
fn primary_console_output_reaches_a_log_file_and_the_ring_is_marked_connected() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("g1", 8).unwrap();
    let mut g = w.guest(d);
    assert_eq!(
        g.cmd("connected 0"),
        "0",
        "the builder marks the console disconnected"
    );
    // Output written before the backend connects is held, not lost.
    g.cmd("print 0 early line");
    let log = w.path("g1.log");
    w.backend
        .serve_primary(d, Some(SinkSpec::File(log.clone())))
        .unwrap();
    eventually("connection byte cleared", || g.cmd("connected 0") == "1");
    g.cmd("print 0 hello from the guest");
    eventually("log file", || {
        file_has(&log, b"early line\nhello from the guest\n")
    });
}

#[test]
fn binary_output_that_wraps_the_ring_many_times_arrives_byte_exact() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("bin", 8).unwrap();
    let log = w.path("bin.log");
    w.backend
        .serve_primary(d, Some(SinkSpec::File(log.clone())))
        .unwrap();
    let mut g = w.guest(d);
    eventually("connected", || g.cmd("connected 0") == "1");
    // 1 MiB of every byte value: 512 trips round the 2 KiB ring.
    let mut data = Vec::with_capacity(1 << 20);
    let mut x: u32 = 12345;
    for _ in 0..(1 << 20) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.push(x.to_be_bytes()[1]);
    }
    let src = w.path("payload.bin");
    std::fs::write(&src, &data).unwrap();
    g.cmd(&format!("write-file 0 {}", src.display()));
    eventually("all bytes in the log", || {
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) >= data.len() as u64
    });
    assert_eq!(std::fs::read(&log).unwrap(), data);
    let info = w.backend.list().unwrap();
    let c = info.iter().find(|i| i.id.domid == d).unwrap();
    assert_eq!(c.counters.bytes_out, data.len() as u64);
    assert_eq!(c.counters.dropped, 0);
}

fn open_tty(path: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open tty")
}

#[test]
fn keystrokes_typed_into_the_pty_reach_the_guest_and_its_echo_comes_back() {
    let w = world(opts(SinkSpec::Pty));
    let d = w.emu.create_domain("tty", 8).unwrap();
    w.backend.serve_primary(d, None).unwrap();
    let tty_node = format!("/local/domain/{d}/console/tty");
    eventually("tty published", || {
        w.read(&tty_node)
            .is_some_and(|t| t.starts_with("/dev/pts/"))
    });
    let tty = w.read(&tty_node).unwrap();
    let mut g = w.guest(d);
    eventually("connected", || g.cmd("connected 0") == "1");
    let mut pty = open_tty(&tty);
    pty.write_all(b"ls -l\r").unwrap();
    let line = g.wait_for(|l| l.starts_with("in 0 "), "input");
    assert_eq!(line, format!("in 0 {}", hex(b"ls -l\r")));
    // The guest echoes; the bytes come back unchanged (raw pty).
    let mut back = [0u8; 6];
    pty.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ls -l\r");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn toolstack_secondary_consoles_follow_the_hvc_xen_handshake_and_honour_a_read_only_output() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("multi", 8).unwrap();
    let mut g = w.guest(d);
    let (log1, log2) = (w.path("c1.log"), w.path("c2.log"));
    for (devid, log) in [(1, &log1), (2, &log2)] {
        let spec = ConsoleSpec {
            devid,
            kind: "xenconsoled".into(),
            output: Some(format!("file:{}", log.display())),
            name: None,
        };
        w.emu.add_console(d, &spec).unwrap();
        g.wait_for(
            |l| *l == format!("connected {devid}"),
            "secondary connected",
        );
    }
    assert_eq!(
        w.read(&format!("/local/domain/0/backend/console/{d}/1/state"))
            .as_deref(),
        Some("4")
    );
    assert_eq!(
        w.read(&format!("/local/domain/{d}/device/console/2/state"))
            .as_deref(),
        Some("4")
    );
    g.cmd("print 1 to the first");
    g.cmd("print 2 to the second");
    eventually("both logs", || {
        file_has(&log1, b"to the first\n") && file_has(&log2, b"to the second\n")
    });
}

#[test]
fn a_guest_writable_output_node_is_refused() {
    let default_log = tempfile::NamedTempFile::new().unwrap();
    let w = world(opts(SinkSpec::File(default_log.path().to_path_buf())));
    let d = w.emu.create_domain("sneaky", 8).unwrap();
    let evil = w.path("evil-target");
    // A toolstack that left `output` writable by the guest.
    let fe = format!("/local/domain/{d}/device/console/3");
    w.store
        .write(
            &format!("{fe}/output"),
            format!("file:{}", evil.display()).as_bytes(),
        )
        .unwrap();
    let guest_owned = xenstore::Perms::new(vec![
        xenstore::Perm::new(xenstore::Access::None, d.0),
        xenstore::Perm::new(xenstore::Access::Read, 0),
    ])
    .unwrap();
    w.store.set_perms(&fe, &guest_owned).unwrap();
    w.store
        .set_perms(&format!("{fe}/output"), &guest_owned)
        .unwrap();
    let mut g = w.guest(d);
    let spec = ConsoleSpec {
        devid: 3,
        kind: "xenconsoled".into(),
        output: None,
        name: None,
    };
    w.emu.add_console(d, &spec).unwrap();
    g.wait_for(|l| l == "connected 3", "connected");
    g.cmd("print 3 where does this go");
    eventually("default sink", || {
        file_has(default_log.path(), b"where does this go\n")
    });
    assert!(!evil.exists(), "a guest-chosen output was opened");
}

#[test]
fn hot_plug_and_unplug_while_the_guest_runs() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("hp", 8).unwrap();
    let mut g = w.guest(d);
    let log = w.path("hp.log");
    let devid = w
        .backend
        .plug(d, None, SinkSpec::File(log.clone()))
        .unwrap();
    assert_eq!(devid, 1);
    let be = format!("/local/domain/0/backend/console/{d}/{devid}");
    let fe = format!("/local/domain/{d}/device/console/{devid}");
    assert_eq!(
        w.read(&format!("{be}/frontend")).as_deref(),
        Some(fe.as_str())
    );
    assert_eq!(
        w.read(&format!("{fe}/backend")).as_deref(),
        Some(be.as_str())
    );
    // The guest cannot change where its console goes.
    let gstore = Client::connect_unix(w.emu.paths().xenstore_domain(d)).unwrap();
    let err = gstore
        .write(&format!("{fe}/output"), b"file:/etc/passwd")
        .unwrap_err();
    assert_eq!(err.errno(), Some(xenstore::XsErrno::Acces));
    g.wait_for(|l| *l == format!("connected {devid}"), "connected");
    g.cmd(&format!("print {devid} hot-plugged"));
    eventually("log", || file_has(&log, b"hot-plugged\n"));
    w.backend.unplug(d, devid).unwrap();
    g.wait_for(|l| *l == format!("closed {devid}"), "closed");
    eventually("nodes removed", || {
        w.read(&be).is_none() && w.read(&fe).is_none()
    });
    assert!(w
        .backend
        .list()
        .unwrap()
        .iter()
        .all(|c| c.id.devid != devid));
}

#[test]
fn a_frontend_that_closes_and_reconnects_is_served_again() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("rc", 8).unwrap();
    let mut g = w.guest(d);
    let log = w.path("rc.log");
    let devid = w
        .backend
        .plug(d, Some(4), SinkSpec::File(log.clone()))
        .unwrap();
    g.wait_for(|l| *l == format!("connected {devid}"), "connected");
    g.cmd(&format!("print {devid} before"));
    eventually("before", || file_has(&log, b"before\n"));
    g.seen.clear();
    g.cmd(&format!("reconnect {devid}"));
    g.wait_for(|l| *l == format!("connected {devid}"), "reconnected");
    g.cmd(&format!("print {devid} after"));
    eventually("after", || file_has(&log, b"before\nafter\n"));
}

#[test]
fn with_keep_a_sink_stalled_for_seconds_loses_nothing() {
    let mut o = opts(SinkSpec::Null);
    o.overflow = Overflow::Keep;
    let w = world(o);
    let d = w.emu.create_domain("keep", 8).unwrap();
    let sock = w.path("keep.sock");
    w.backend
        .serve_primary(d, Some(SinkSpec::Unix(sock.clone())))
        .unwrap();
    let mut g = w.guest(d);
    eventually("connected", || g.cmd("connected 0") == "1");
    // 3 MiB against a 1 MiB limit, and nobody reading yet.
    let total = 3 << 20;
    g.cmd(&format!("flood 0 {total}"));
    std::thread::sleep(Duration::from_secs(2));
    let held: usize = g.cmd("pending 0").parse().unwrap();
    assert!(held > 0, "the guest should be waiting for the backend");
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = vec![0u8; total];
    client.read_exact(&mut got).unwrap();
    let want: Vec<u8> = (0..total)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz"[i % 26])
        .collect();
    assert!(got == want, "stream differs");
    let c = w
        .backend
        .list()
        .unwrap()
        .into_iter()
        .find(|c| c.id.domid == d)
        .unwrap();
    assert_eq!(c.counters.dropped, 0);
}

#[test]
fn hostile_indices_are_contained_while_a_neighbour_keeps_working() {
    let w = world(opts(SinkSpec::Null));
    let bad = w.emu.create_domain("bad", 8).unwrap();
    let good = w.emu.create_domain("good", 8).unwrap();
    let (bad_log, good_log) = (w.path("bad.log"), w.path("good.log"));
    w.backend
        .serve_primary(bad, Some(SinkSpec::File(bad_log.clone())))
        .unwrap();
    w.backend
        .serve_primary(good, Some(SinkSpec::File(good_log.clone())))
        .unwrap();
    let mut gb = w.guest(bad);
    let mut gg = w.guest(good);
    eventually("connected", || {
        gb.cmd("connected 0") == "1" && gg.cmd("connected 0") == "1"
    });
    gb.cmd("bad-indices 0");
    gg.cmd("print 0 still fine");
    eventually("neighbour output", || file_has(&good_log, b"still fine\n"));
    let list = w.backend.list().unwrap();
    let b = list.iter().find(|c| c.id.domid == bad).unwrap();
    assert!(b.counters.bad_index_events > 0);
    assert_eq!(
        std::fs::read(&bad_log).map(|v| v.len()).unwrap_or(0),
        0,
        "nothing read from a corrupt ring"
    );
}

#[test]
fn consoles_with_two_digit_indices_are_served() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("wide", 8).unwrap();
    let mut g = w.guest(d);
    let log = w.path("c12.log");
    let devid = w
        .backend
        .plug(d, Some(12), SinkSpec::File(log.clone()))
        .unwrap();
    assert_eq!(devid, 12);
    g.wait_for(|l| l == "connected 12", "connected");
    g.cmd("print 12 twelve");
    eventually("log", || file_has(&log, b"twelve\n"));
}

#[test]
fn an_index_plugged_again_after_an_unplug_gets_its_new_sink() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("replug", 8).unwrap();
    let mut g = w.guest(d);
    let (first, second) = (w.path("first.log"), w.path("second.log"));
    w.backend
        .plug(d, Some(2), SinkSpec::File(first.clone()))
        .unwrap();
    g.wait_for(|l| l == "connected 2", "connected");
    g.cmd("print 2 one");
    eventually("first log", || file_has(&first, b"one\n"));
    w.backend.unplug(d, 2).unwrap();
    g.wait_for(|l| l == "closed 2", "closed");
    let fe = format!("/local/domain/{d}/device/console/2");
    eventually("nodes removed", || w.read(&fe).is_none());
    g.seen.clear();

    w.backend
        .plug(d, Some(2), SinkSpec::File(second.clone()))
        .unwrap();
    g.wait_for(|l| l == "connected 2", "connected again");
    g.cmd("print 2 two");

    eventually("second log", || file_has(&second, b"two\n"));
    assert!(file_has(&first, b"one\n"), "the old sink got new output");
}

#[test]
fn a_frontend_that_resumes_with_a_new_ring_keeps_its_sink() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("resume", 8).unwrap();
    let mut g = w.guest(d);
    let sock = w.path("resume.sock");
    let devid = w
        .backend
        .plug(d, None, SinkSpec::Unix(sock.clone()))
        .unwrap();
    g.wait_for(|l| *l == format!("connected {devid}"), "connected");
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    g.cmd(&format!("print {devid} before"));
    let mut got = [0u8; 7];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"before\n");
    g.seen.clear();
    // A suspend comes long after the handshake. The backend must have seen
    // the frontend Connected: an Initialised that follows one it missed
    // looks like a stale event, not a resume.
    std::thread::sleep(Duration::from_millis(200));

    // Linux xencons_resume: new page, new port, Initialised, no Closing.
    g.cmd(&format!("resume {devid}"));
    g.wait_for(|l| *l == format!("connected {devid}"), "resumed");
    g.cmd(&format!("print {devid} after"));

    let mut got = [0u8; 6];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after\n");
}

#[test]
fn a_backend_started_after_another_stopped_serves_the_toolstack_consoles_again() {
    let o = opts(SinkSpec::Null);
    let World {
        dir,
        emu,
        backend,
        store: _store,
    } = world(o.clone());
    let d = emu.create_domain("restart", 8).unwrap();
    let mut g = Guest::spawn(&emu.paths().xen_domain(d), &emu.paths().xenstore_domain(d));
    let log = dir.path().join("restart.log");
    let spec = ConsoleSpec {
        devid: 1,
        kind: "xenconsoled".into(),
        output: Some(format!("file:{}", log.display())),
        name: None,
    };
    emu.add_console(d, &spec).unwrap();
    g.wait_for(|l| l == "connected 1", "connected");
    g.cmd("print 1 before");
    eventually("before", || file_has(&log, b"before\n"));

    backend.stop();
    let store = Client::connect_unix(emu.paths().xenstored()).unwrap();
    let plat = Arc::new(EmuPlatform::connect(emu.paths().xen()).unwrap());
    let backend = ConsoleBackend::spawn(store, plat, o).unwrap();
    eventually("served again", || {
        backend
            .list()
            .unwrap()
            .iter()
            .any(|c| c.id.domid == d && c.id.devid == 1 && c.connected)
    });
    g.cmd("print 1 after");

    eventually("after", || file_has(&log, b"before\nafter\n"));
}

#[test]
fn the_backend_stops_instead_of_spinning_when_xenstore_goes_away() {
    let World {
        dir: _dir,
        emu,
        backend,
        store,
    } = world(opts(SinkSpec::Null));
    drop(store);

    drop(emu);

    // A loop still polling a closed XenStore connection would keep
    // answering (and burn a CPU).
    eventually("backend stopped", || backend.list().is_err());
}

#[test]
fn a_flooding_guest_is_throttled_while_its_neighbour_stays_fast() {
    let mut o = opts(SinkSpec::Null);
    o.rate_limit = Some(console::io::RateLimit {
        bytes_per_sec: 200_000,
        burst: 32 * 1024,
    });
    let w = world(o);
    let flood = w.emu.create_domain("flood", 8).unwrap();
    let calm = w.emu.create_domain("calm", 8).unwrap();
    let (flood_log, calm_log) = (w.path("flood.log"), w.path("calm.log"));
    w.backend
        .serve_primary(flood, Some(SinkSpec::File(flood_log.clone())))
        .unwrap();
    w.backend
        .serve_primary(calm, Some(SinkSpec::File(calm_log.clone())))
        .unwrap();
    let mut gf = w.guest(flood);
    let mut gc = w.guest(calm);
    eventually("connected", || {
        gf.cmd("connected 0") == "1" && gc.cmd("connected 0") == "1"
    });
    let total: u64 = 600_000;
    let start = Instant::now();
    gf.cmd(&format!("flood 0 {total}"));
    std::thread::sleep(Duration::from_millis(500));
    // The neighbour's line gets through at once.
    let t = Instant::now();
    gc.cmd("print 0 still quick");
    eventually("neighbour output", || file_has(&calm_log, b"still quick\n"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "neighbour took {:?}",
        t.elapsed()
    );
    // The flood takes about total / rate seconds, and nothing is lost.
    eventually("flood done", || {
        std::fs::metadata(&flood_log).map(|m| m.len()).unwrap_or(0) >= total
    });
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2000),
        "not throttled: {took:?}"
    );
    let c = w
        .backend
        .list()
        .unwrap()
        .into_iter()
        .find(|c| c.id.domid == flood)
        .unwrap();
    assert!(c.counters.throttled_ns > 0);
    assert_eq!(c.counters.dropped, 0);
}

#[test]
fn an_index_unplugged_and_added_again_by_the_toolstack_gets_the_toolstacks_sink() {
    let w = world(opts(SinkSpec::Null));
    let d = w.emu.create_domain("again", 8).unwrap();
    let mut g = w.guest(d);
    let (first, second) = (w.path("first.log"), w.path("second.log"));
    let devid = w
        .backend
        .plug(d, Some(5), SinkSpec::File(first.clone()))
        .unwrap();
    g.wait_for(|l| *l == format!("connected {devid}"), "connected");
    w.backend.unplug(d, devid).unwrap();
    g.wait_for(|l| *l == format!("closed {devid}"), "closed");
    let fe = format!("/local/domain/{d}/device/console/5");
    eventually("nodes removed", || w.read(&fe).is_none());
    g.seen.clear();
    let spec = ConsoleSpec {
        devid: 5,
        kind: "xenconsoled".into(),
        output: Some(format!("file:{}", second.display())),
        name: None,
    };
    w.emu.add_console(d, &spec).unwrap();
    g.wait_for(|l| l == "connected 5", "connected again");
    g.cmd("print 5 where now");
    eventually("the toolstack's file", || file_has(&second, b"where now\n"));
    assert!(!file_has(&first, b"where now\n"));
}
