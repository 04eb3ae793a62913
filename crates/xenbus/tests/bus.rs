//! The bus against a real in-process XenStore server: dom0 plays the
//! toolstack (writing devices the way libxl does, with libxl's
//! permissions), the bus runs on its own dom0 connection, and each guest
//! frontend is an unprivileged connection acting as that domain, writing its
//! own `state` the way Linux `hvc_xen` does. The bus is driven by pumping
//! its watch events, with a deadline on every wait.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::DomId;
use xenbus::{
    paths, BackendDevice, BackendType, BusError, DeviceError, DeviceInfo, Handshake, XenBus,
    XenbusState,
};
use xenstore::client::{Client, Error as XsError, Transaction, WatchEvent, WatchEvents, XenStore};
use xenstore::server::{ServerConfig, ServerHandle};
use xenstore::{Access, Perm, Perms, XsErrno};

const WAIT: Duration = Duration::from_secs(10);
const BE: u16 = 0;

// ---------------------------------------------------------------- fake backend

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, s: &str) -> usize {
        self.all().iter().filter(|c| *c == s).count()
    }
    fn count_prefix(&self, p: &str) -> usize {
        self.all().iter().filter(|c| c.starts_with(p)).count()
    }
}

/// A console-like backend type: index 0 lives at `/local/domain/<fe>/console`
/// and needs no handshake; connect reads `ring-ref` and `port` strictly.
struct FakeConsole {
    calls: Calls,
    fail_create: BTreeSet<u32>,
    fail_realize: BTreeSet<u32>,
}

impl FakeConsole {
    fn new(calls: &Calls) -> FakeConsole {
        FakeConsole {
            calls: calls.clone(),
            fail_create: BTreeSet::new(),
            fail_realize: BTreeSet::new(),
        }
    }
}

fn tag(info: &DeviceInfo) -> String {
    format!("{}/{}", info.frontend_id, info.devid)
}

impl BackendType for FakeConsole {
    fn name(&self) -> &'static str {
        "console"
    }
    fn frontend_path(&self, fe: DomId, devid: u32) -> String {
        paths::console_frontend_path(fe, devid)
    }
    fn handshake(&self, devid: u32) -> Handshake {
        if devid == 0 {
            Handshake::Direct
        } else {
            Handshake::Xenbus
        }
    }
    fn create(
        &mut self,
        _store: &Client,
        info: &DeviceInfo,
    ) -> Result<Box<dyn BackendDevice>, DeviceError> {
        self.calls.push(format!("create {}", tag(info)));
        if self.fail_create.contains(&info.devid) {
            return Err(DeviceError::NotImplemented("devices the test breaks"));
        }
        Ok(Box::new(FakeDevice {
            calls: self.calls.clone(),
            fail_realize: self.fail_realize.contains(&info.devid),
        }))
    }
}

struct FakeDevice {
    calls: Calls,
    fail_realize: bool,
}

fn read_u32(store: &Client, path: &str) -> Result<Option<u32>, DeviceError> {
    match store.read(path) {
        Ok(v) => std::str::from_utf8(&v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| DeviceError::BadNode {
                path: path.to_owned(),
                reason: "not a decimal u32".into(),
            }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(DeviceError::xenstore("read", path, e)),
    }
}

impl BackendDevice for FakeDevice {
    fn realize(&mut self, _store: &Client, info: &DeviceInfo) -> Result<(), DeviceError> {
        self.calls.push(format!("realize {}", tag(info)));
        if self.fail_realize {
            return Err(DeviceError::NotImplemented("realize of this device"));
        }
        Ok(())
    }
    fn connect(&mut self, store: &Client, info: &DeviceInfo) -> Result<(), DeviceError> {
        let fe = &info.frontend_path;
        let ring = read_u32(store, &format!("{fe}/ring-ref"))?;
        let port = read_u32(store, &format!("{fe}/port"))?;
        let (Some(ring), Some(port)) = (ring, port) else {
            return Err(DeviceError::NotReady("ring-ref and port".into()));
        };
        if info.devid != 0 && ring < 8 {
            // Grant references below 8 are the toolstack's (0 console,
            // 1 xenstore): a secondary console naming one is hostile.
            self.calls.push(format!("refuse {}", tag(info)));
            return Err(DeviceError::BadNode {
                path: format!("{fe}/ring-ref"),
                reason: format!("grant reference {ring} is reserved"),
            });
        }
        self.calls
            .push(format!("connect {} ring={ring} port={port}", tag(info)));
        Ok(())
    }
    fn disconnect(&mut self, info: &DeviceInfo) {
        self.calls.push(format!("disconnect {}", tag(info)));
    }
    fn unrealize(&mut self, info: &DeviceInfo) {
        self.calls.push(format!("unrealize {}", tag(info)));
    }
    fn frontend_changed(
        &mut self,
        _store: &Client,
        info: &DeviceInfo,
        path: &str,
    ) -> Result<(), DeviceError> {
        let node = path.rsplit('/').next().unwrap_or("");
        self.calls.push(format!("changed {} {node}", tag(info)));
        Ok(())
    }
}

// ---------------------------------------------------------------- the world

struct World {
    _dir: tempfile::TempDir,
    server: ServerHandle,
    /// dom0 as the toolstack.
    ts: Client,
}

fn perms(entries: &[(Access, u16)]) -> Perms {
    Perms::new(entries.iter().map(|(a, d)| Perm::new(*a, *d)).collect()).unwrap()
}

/// libxl's sets (`libxl__device_generic_add`): backend dir and "ro"
/// frontend keys owned by the backend, the guest may read; normal frontend
/// keys owned by the guest, the backend may read.
fn backend_perms(fe: u16) -> Perms {
    perms(&[(Access::None, BE), (Access::Read, fe)])
}
fn frontend_perms(fe: u16) -> Perms {
    perms(&[(Access::None, fe), (Access::Read, BE)])
}

fn put(
    tx: &Transaction<'_>,
    path: &str,
    value: &str,
    p: &Perms,
) -> Result<(), xenstore::client::Error> {
    tx.write(path, value.as_bytes())?;
    tx.set_perms(path, p)
}

fn be_path(fe: u16, devid: u32) -> String {
    format!("/local/domain/{BE}/backend/console/{fe}/{devid}")
}
fn fe_path(fe: u16, devid: u32) -> String {
    paths::console_frontend_path(DomId(fe), devid)
}

impl World {
    fn new() -> World {
        // RUST_LOG=xenbus=debug shows the bus's trace points.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let server = ServerHandle::spawn(ServerConfig::new(dir.path().join("socket"))).unwrap();
        let ts = Client::connect_unix(server.socket_path()).unwrap();
        ts.set_timeout(WAIT).unwrap();
        World {
            _dir: dir,
            server,
            ts,
        }
    }

    fn dom0_client(&self) -> Arc<Client> {
        let c = Client::connect_unix(self.server.socket_path()).unwrap();
        c.set_timeout(WAIT).unwrap();
        Arc::new(c)
    }

    /// A domain as libxl makes one: `/local/domain/<d>` read-only to the
    /// guest, `device` its own; introduced.
    fn domain(&self, fe: u16) {
        self.server.introduce(fe).unwrap();
        self.server.domain_exists(fe).unwrap();
        let dom = format!("/local/domain/{fe}");
        self.ts
            .transaction(|tx| {
                put(
                    tx,
                    &dom,
                    "",
                    &perms(&[(Access::None, BE), (Access::Read, fe)]),
                )?;
                put(
                    tx,
                    &format!("{dom}/device"),
                    "",
                    &perms(&[(Access::None, fe)]),
                )
            })
            .unwrap();
    }

    /// A secondary console as libxl adds one, in one transaction.
    fn toolstack_console(&self, fe: u16, devid: u32) {
        let (be, fr) = (be_path(fe, devid), fe_path(fe, devid));
        let (bp, fp) = (backend_perms(fe), frontend_perms(fe));
        self.ts
            .transaction(|tx| {
                put(tx, &be, "", &bp)?;
                for (n, v) in [
                    ("frontend", fr.as_str()),
                    ("frontend-id", &fe.to_string()),
                    ("online", "1"),
                    ("state", "1"),
                    ("protocol", "vt100"),
                ] {
                    put(tx, &format!("{be}/{n}"), v, &bp)?;
                }
                put(tx, &fr, "", &fp)?;
                for (n, v) in [
                    ("backend", be.as_str()),
                    ("backend-id", "0"),
                    ("state", "1"),
                    ("protocol", "vt100"),
                ] {
                    put(tx, &format!("{fr}/{n}"), v, &fp)?;
                }
                for (n, v) in [("limit", "1048576"), ("type", "ioemu"), ("tty", "")] {
                    put(tx, &format!("{fr}/{n}"), v, &bp)?;
                }
                Ok::<_, XsError>(())
            })
            .unwrap();
    }

    /// The primary console as libxl writes it: backend dir, and the whole
    /// `/local/domain/<fe>/console` read-only to the guest, no `state`.
    fn toolstack_primary(&self, fe: u16) {
        let (be, fr) = (be_path(fe, 0), fe_path(fe, 0));
        let bp = backend_perms(fe);
        self.ts
            .transaction(|tx| {
                put(tx, &be, "", &bp)?;
                for (n, v) in [
                    ("frontend", fr.as_str()),
                    ("frontend-id", &fe.to_string()),
                    ("online", "1"),
                    ("state", "1"),
                    ("protocol", "vt100"),
                ] {
                    put(tx, &format!("{be}/{n}"), v, &bp)?;
                }
                put(tx, &fr, "", &bp)?;
                for (n, v) in [
                    ("backend", be.as_str()),
                    ("backend-id", "0"),
                    ("limit", "1048576"),
                    ("type", "ioemu"),
                    ("output", "pty"),
                    ("tty", ""),
                    ("port", "5"),
                    ("ring-ref", "4242"),
                ] {
                    put(tx, &format!("{fr}/{n}"), v, &bp)?;
                }
                Ok::<_, XsError>(())
            })
            .unwrap();
    }

    fn guest(&self, fe: u16, devid: u32) -> Guest {
        let client = Client::from_unix_stream(self.server.connect_as(fe).unwrap()).unwrap();
        client.set_timeout(WAIT).unwrap();
        Guest {
            client,
            fe: fe_path(fe, devid),
            be: be_path(fe, devid),
            seen_backend: Cell::new(None),
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        match self.ts.read(path) {
            Ok(v) => Some(String::from_utf8(v).unwrap()),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("read {path}: {e}"),
        }
    }

    fn state(&self, path: &str) -> Option<String> {
        self.read(&format!("{path}/state"))
    }

    fn exists(&self, path: &str) -> bool {
        self.ts.exists(path).unwrap()
    }
}

/// A frontend behaving like Linux `hvc_xen` (only for the nodes the test
/// asks it to write, plus its reaction to backend state changes).
struct Guest {
    client: Client,
    fe: String,
    be: String,
    /// The backend state at the last `react`: hvc_xen reacts to changes.
    seen_backend: Cell<Option<String>>,
}

impl Guest {
    fn write_state(&self, s: XenbusState) {
        self.client
            .write(&format!("{}/state", self.fe), s.to_node().as_bytes())
            .unwrap();
    }

    fn state(&self) -> String {
        String::from_utf8(self.client.read(&format!("{}/state", self.fe)).unwrap()).unwrap()
    }

    /// `xencons_connect_backend`: ring-ref and port in one transaction,
    /// then Initialised.
    fn connect(&self, ring: &str, port: &str) {
        self.client
            .transaction(|tx| {
                tx.write(&format!("{}/ring-ref", self.fe), ring.as_bytes())?;
                tx.write(&format!("{}/port", self.fe), port.as_bytes())
            })
            .unwrap();
        self.write_state(XenbusState::Initialised);
    }

    /// `xencons_backend_changed`, on a change of the backend state.
    fn react(&self) {
        let be = match self.client.read(&format!("{}/state", self.be)) {
            Ok(v) => String::from_utf8(v).ok(),
            Err(_) => None,
        };
        if be == self.seen_backend.replace(be.clone()) {
            return;
        }
        let mine = self
            .client
            .read(&format!("{}/state", self.fe))
            .ok()
            .and_then(|v| XenbusState::parse(&v));
        match be.as_deref().and_then(|b| XenbusState::parse(b.as_bytes())) {
            Some(XenbusState::Connected) if mine == Some(XenbusState::Initialised) => {
                self.write_state(XenbusState::Connected)
            }
            Some(XenbusState::Closed) if mine == Some(XenbusState::Closed) => {}
            Some(XenbusState::Closing | XenbusState::Closed) => {
                // xenbus_frontend_closed
                self.write_state(XenbusState::Closed)
            }
            _ => {}
        }
    }
}

struct Bus {
    bus: XenBus,
    events: WatchEvents,
}

impl Bus {
    fn start(w: &World, ty: FakeConsole) -> Bus {
        let store = w.dom0_client();
        let events = store.watch_events();
        let mut bus = XenBus::new(store, DomId(BE));
        bus.register(Box::new(ty)).unwrap();
        bus.start().unwrap();
        let mut b = Bus { bus, events };
        b.settle(&[]);
        b
    }

    /// Feeds queued events to the bus until none comes for `quiet`.
    fn drain(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while let Some(ev) = self.events.recv_timeout(quiet).unwrap() {
            assert!(self.bus.handle_event(&ev), "foreign event {ev:?}");
            n += 1;
        }
        n
    }

    /// Pumps events (and lets the guests react) until `cond` holds.
    fn until(&mut self, guests: &[&Guest], what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain(Duration::from_millis(5));
            for g in guests {
                g.react();
            }
            if cond() {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    }

    /// Pumps until nothing happens for a while (to show something does NOT
    /// happen).
    fn settle(&mut self, guests: &[&Guest]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let n = self.drain(Duration::from_millis(100));
            for g in guests {
                g.react();
            }
            if n == 0
                && self
                    .events
                    .recv_timeout(Duration::from_millis(50))
                    .unwrap()
                    .is_none()
            {
                return;
            }
            assert!(Instant::now() < deadline, "events never stopped");
        }
    }

    fn summary(&self, fe: u16, devid: u32) -> Option<xenbus::DeviceSummary> {
        self.bus
            .devices()
            .into_iter()
            .find(|d| d.frontend_id == DomId(fe) && d.devid == devid)
    }
}

fn state_is(w: &World, path: &str, s: XenbusState) -> bool {
    w.state(path) == Some(s.to_node())
}

// ---------------------------------------------------------------- tests

#[test]
fn toolstack_device_is_realized_and_announces_initwait() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let be = be_path(5, 1);
    bus.until(&[], "InitWait", || state_is(&w, &be, XenbusState::InitWait));

    assert_eq!(calls.all(), ["create 5/1", "realize 5/1"]);
    assert_eq!(
        w.read(&format!("{be}/hotplug-status")).as_deref(),
        Some("connected")
    );
    // Options are the backend keys except the bus's own.
    let key = xenbus::DeviceKey {
        backend_type: "console",
        frontend_id: DomId(5),
        devid: 1,
    };
    let info = bus.bus.device_info(&key).unwrap();
    assert_eq!(
        info.options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("protocol", "vt100")]
    );
    assert_eq!(info.frontend_path, "/local/domain/5/device/console/1");
    // The toolstack's directories keep their permissions.
    assert_eq!(w.ts.get_perms(&be).unwrap(), backend_perms(5));
    assert_eq!(w.ts.get_perms(&fe_path(5, 1)).unwrap(), frontend_perms(5));
    // Nothing but state and hotplug-status was written.
    let mut names = w.ts.directory(&be).unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "frontend",
            "frontend-id",
            "hotplug-status",
            "online",
            "protocol",
            "state"
        ]
    );
}

#[test]
fn handshake_connects_disconnects_and_reinitialises() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let g = w.guest(5, 1);
    let be = be_path(5, 1);

    g.connect("8", "3");
    bus.until(&[&g], "Connected both ends", || {
        state_is(&w, &be, XenbusState::Connected) && g.state() == "4"
    });
    assert_eq!(calls.count("connect 5/1 ring=8 port=3"), 1);
    let s = bus.summary(5, 1).unwrap();
    assert!(s.connected && !s.failed && !s.plugged);
    assert_eq!(s.backend_state, XenbusState::Connected);

    // Frontend Closed (e.g. suspend): disconnect, backend Closed.
    g.write_state(XenbusState::Closed);
    bus.until(&[&g], "backend Closed", || {
        state_is(&w, &be, XenbusState::Closed)
    });
    assert_eq!(calls.count("disconnect 5/1"), 1);

    // The frontend starts over (resume): backend InitWait again, and a new
    // connect with the new ring and port; no second realize.
    g.write_state(XenbusState::Initialising);
    bus.until(&[&g], "InitWait again", || {
        state_is(&w, &be, XenbusState::InitWait)
    });
    g.connect("9", "4");
    bus.until(&[&g], "Connected again", || {
        state_is(&w, &be, XenbusState::Connected) && g.state() == "4"
    });
    assert_eq!(
        calls.all(),
        [
            "create 5/1",
            "realize 5/1",
            "connect 5/1 ring=8 port=3",
            "disconnect 5/1",
            "connect 5/1 ring=9 port=4"
        ]
    );

    // An in-place resume (Linux `xencons_resume`): new ring and port, and
    // straight back to Initialised without closing.
    g.write_state(XenbusState::Connected);
    bus.settle(&[&g]);
    g.connect("10", "5");
    bus.until(&[&g], "reconnected", || {
        calls.count("connect 5/1 ring=10 port=5") == 1
    });
    assert!(state_is(&w, &be, XenbusState::Connected));
    assert_eq!(calls.count("disconnect 5/1"), 2);
    g.write_state(XenbusState::Connected);
    bus.settle(&[&g]);
    assert_eq!(calls.count_prefix("connect 5/1"), 3);

    // Frontend Closing is mirrored; then Closed disconnects.
    g.write_state(XenbusState::Closing);
    bus.until(&[], "backend Closing", || {
        state_is(&w, &be, XenbusState::Closing)
    });
    g.write_state(XenbusState::Closed);
    bus.until(&[], "backend Closed", || {
        state_is(&w, &be, XenbusState::Closed)
    });
    assert_eq!(calls.count("disconnect 5/1"), 3);
}

#[test]
fn frontend_unknown_or_missing_state_closes_the_backend() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let g = w.guest(5, 1);
    let be = be_path(5, 1);
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be, XenbusState::Connected)
    });
    g.client.rm(&format!("{}/state", g.fe)).unwrap();
    bus.until(&[], "backend Closed", || {
        state_is(&w, &be, XenbusState::Closed)
    });
    assert_eq!(calls.count("disconnect 5/1"), 1);
    assert!(!bus.summary(5, 1).unwrap().connected);
}

#[test]
fn connect_failure_closes_that_device_until_the_frontend_starts_over() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let g = w.guest(5, 1);
    let be = be_path(5, 1);

    // Grant reference 0 is the toolstack's: connect refuses it.
    g.connect("0", "3");
    bus.until(&[], "backend Closing", || {
        state_is(&w, &be, XenbusState::Closing)
    });
    let s = bus.summary(5, 1).unwrap();
    assert!(s.failed && !s.connected, "{s:?}");
    assert!(s.error.unwrap().contains("reserved"));
    // More frontend writes do not make it try again while Closing.
    g.write_state(XenbusState::Connected);
    g.write_state(XenbusState::Initialised);
    bus.settle(&[]);
    assert_eq!(calls.count("refuse 5/1"), 1);

    // hvc_xen closes; then starts over with a proper ring.
    g.write_state(XenbusState::Closed);
    bus.until(&[], "backend Closed", || {
        state_is(&w, &be, XenbusState::Closed)
    });
    assert_eq!(calls.count("disconnect 5/1"), 0, "never connected");
    g.write_state(XenbusState::Initialising);
    bus.until(&[], "InitWait", || state_is(&w, &be, XenbusState::InitWait));
    assert!(!bus.summary(5, 1).unwrap().failed);
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be, XenbusState::Connected)
    });
}

#[test]
fn failing_create_is_remembered_and_not_retried() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut ty = FakeConsole::new(&calls);
    ty.fail_create.insert(2);
    let mut bus = Bus::start(&w, ty);
    let be2 = be_path(5, 2);

    w.toolstack_console(5, 2);
    bus.until(&[], "create attempted", || calls.count("create 5/2") == 1);
    bus.settle(&[]);
    let s = bus.summary(5, 2).unwrap();
    assert!(s.failed, "{s:?}");
    // A failed create writes nothing: another backend may serve it.
    assert_eq!(w.state(&be2).as_deref(), Some("1"));
    assert!(!w.exists(&format!("{be2}/hotplug-status")));

    // Unrelated events: a sibling device, nodes changing in the failed
    // device's dirs, the toolstack rewriting state 1.
    w.toolstack_console(5, 3);
    w.ts.write(&format!("{be2}/protocol"), b"vt100").unwrap();
    w.ts.write(&format!("{be2}/state"), b"1").unwrap();
    let g2 = w.guest(5, 2);
    g2.write_state(XenbusState::Initialising);
    bus.until(&[], "sibling InitWait", || {
        state_is(&w, &be_path(5, 3), XenbusState::InitWait)
    });
    bus.settle(&[]);
    assert_eq!(calls.count("create 5/2"), 1, "{:?}", calls.all());

    // Removed and added again: one new attempt.
    w.ts.rm(&be2).unwrap();
    bus.settle(&[]);
    assert!(bus.summary(5, 2).is_none());
    w.toolstack_console(5, 2);
    bus.until(&[], "second attempt", || calls.count("create 5/2") == 2);
    bus.settle(&[]);
    assert_eq!(calls.count("create 5/2"), 2);
}

#[test]
fn failing_realize_closes_and_is_not_retried() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut ty = FakeConsole::new(&calls);
    ty.fail_realize.insert(1);
    let mut bus = Bus::start(&w, ty);
    let be = be_path(5, 1);
    bus.until(&[], "Closing", || state_is(&w, &be, XenbusState::Closing));
    let g = w.guest(5, 1);
    g.connect("8", "3");
    bus.settle(&[]);
    assert_eq!(calls.all(), ["create 5/1", "realize 5/1"]);
    assert!(bus.summary(5, 1).unwrap().failed);
}

#[test]
fn toolstack_unplug_closes_then_keeps_the_toolstack_dirs_and_perms() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let g = w.guest(5, 1);
    let (be, fe) = (be_path(5, 1), fe_path(5, 1));
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be, XenbusState::Connected) && g.state() == "4"
    });

    bus.bus.unplug("console", DomId(5), 1).unwrap();
    assert_eq!(w.read(&format!("{be}/online")).as_deref(), Some("0"));
    // The frontend is still Connected: the device waits for it.
    assert!(state_is(&w, &be, XenbusState::Closing));
    assert!(bus.summary(5, 1).is_some());
    // hvc_xen sees Closing and closes; the device is torn down.
    bus.until(&[&g], "torn down", || calls.count("unrealize 5/1") == 1);
    assert_eq!(
        calls.all()[3..],
        ["disconnect 5/1".to_owned(), "unrealize 5/1".to_owned()]
    );
    assert!(state_is(&w, &be, XenbusState::Closed));
    assert!(bus.summary(5, 1).is_none());
    // Nothing of the toolstack's was removed or re-permissioned.
    assert_eq!(w.ts.get_perms(&be).unwrap(), backend_perms(5));
    assert_eq!(w.ts.get_perms(&fe).unwrap(), frontend_perms(5));
    assert_eq!(
        w.ts.get_perms(&format!("{fe}/limit")).unwrap(),
        backend_perms(5)
    );
    assert_eq!(w.read(&format!("{fe}/limit")).as_deref(), Some("1048576"));
    assert!(w.exists(&format!("{be}/frontend")));
    bus.settle(&[&g]);
    assert_eq!(calls.count("create 5/1"), 1, "not re-created");
}

#[test]
fn toolstack_removal_of_the_backend_dir_destroys_the_device() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let g = w.guest(5, 1);
    let be = be_path(5, 1);
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be, XenbusState::Connected)
    });
    w.ts.rm(&be).unwrap();
    bus.until(&[], "destroyed", || calls.count("unrealize 5/1") == 1);
    bus.settle(&[]);
    assert!(bus.summary(5, 1).is_none());
    // Not resurrected by a late state write.
    assert!(!w.exists(&be));
    assert!(
        w.exists(&fe_path(5, 1)),
        "the frontend dir is the toolstack's"
    );
}

type Nodes = Vec<(&'static str, String)>;

/// A console's frontend nodes and its read-only ones, as libxl sets them.
fn console_nodes() -> (Nodes, Nodes) {
    (
        vec![("protocol", "vt100".to_owned())],
        vec![
            ("limit", "1048576".to_owned()),
            ("type", "ioemu".to_owned()),
            ("output", "pty".to_owned()),
            ("tty", String::new()),
        ],
    )
}

#[test]
fn plug_writes_both_dirs_with_their_owners_and_unplug_removes_only_them() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let (fe_nodes, ro_nodes) = console_nodes();
    let devid = bus
        .bus
        .plug("console", DomId(5), None, &fe_nodes, &ro_nodes)
        .unwrap();
    assert_eq!(devid, 1);
    let (be, fe) = (be_path(5, 1), fe_path(5, 1));
    // Realized synchronously.
    assert_eq!(calls.all(), ["create 5/1", "realize 5/1"]);
    assert!(state_is(&w, &be, XenbusState::InitWait));
    assert!(bus.summary(5, 1).unwrap().plugged);

    assert_eq!(w.ts.get_perms(&be).unwrap(), backend_perms(5));
    for n in ["frontend", "frontend-id", "online", "state"] {
        assert_eq!(
            w.ts.get_perms(&format!("{be}/{n}")).unwrap(),
            backend_perms(5),
            "{n}"
        );
    }
    assert_eq!(
        w.read(&format!("{be}/frontend")).as_deref(),
        Some(fe.as_str())
    );
    assert_eq!(w.read(&format!("{be}/frontend-id")).as_deref(), Some("5"));
    assert_eq!(w.read(&format!("{be}/online")).as_deref(), Some("1"));
    assert_eq!(w.ts.get_perms(&fe).unwrap(), frontend_perms(5));
    for n in ["backend", "backend-id", "state", "protocol"] {
        assert_eq!(
            w.ts.get_perms(&format!("{fe}/{n}")).unwrap(),
            frontend_perms(5),
            "{n}"
        );
    }
    for n in ["limit", "type", "output", "tty"] {
        assert_eq!(
            w.ts.get_perms(&format!("{fe}/{n}")).unwrap(),
            backend_perms(5),
            "{n}"
        );
    }
    assert_eq!(
        w.read(&format!("{fe}/backend")).as_deref(),
        Some(be.as_str())
    );
    assert_eq!(w.read(&format!("{fe}/backend-id")).as_deref(), Some("0"));
    assert_eq!(w.state(&fe).as_deref(), Some("1"));

    let g = w.guest(5, 1);
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be, XenbusState::Connected) && g.state() == "4"
    });

    bus.bus.unplug("console", DomId(5), 1).unwrap();
    bus.until(&[&g], "removed", || !w.exists(&be) && !w.exists(&fe));
    assert_eq!(calls.count("disconnect 5/1"), 1);
    assert_eq!(calls.count("unrealize 5/1"), 1);
    // backend/console/5 was the bus's too; the toolstack's dirs stay.
    assert!(!w.exists("/local/domain/0/backend/console/5"));
    assert!(w.exists("/local/domain/5/device/console"));
    assert_eq!(
        w.ts.get_perms("/local/domain/5/device").unwrap(),
        perms(&[(Access::None, 5)])
    );
    bus.settle(&[&g]);
    assert!(bus.bus.devices().is_empty());
}

#[test]
fn unplugging_a_plugged_device_keeps_a_toolstack_sibling() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let (fe_nodes, ro_nodes) = console_nodes();
    let devid = bus
        .bus
        .plug("console", DomId(5), None, &fe_nodes, &ro_nodes)
        .unwrap();
    assert_eq!(devid, 2);
    // The frontend never connected: unplug tears down at once.
    bus.bus.unplug("console", DomId(5), 2).unwrap();
    bus.until(&[], "removed", || !w.exists(&be_path(5, 2)));
    assert!(!w.exists(&fe_path(5, 2)));
    assert!(w.exists(&be_path(5, 1)));
    assert!(w.exists(&fe_path(5, 1)));
    assert_eq!(w.ts.get_perms(&be_path(5, 1)).unwrap(), backend_perms(5));
    assert!(state_is(&w, &be_path(5, 1), XenbusState::InitWait));
    bus.settle(&[]);
    assert_eq!(bus.bus.devices().len(), 1);
}

#[test]
fn auto_devid_is_the_first_free_index_past_9_and_past_99() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    // Backend dirs 1..=9 (not to be served: Closed, offline), a leftover
    // frontend dir 10.
    w.ts.transaction(|tx| {
        for d in 1..=9 {
            let be = be_path(5, d);
            put(tx, &format!("{be}/state"), "6", &backend_perms(5))?;
            put(tx, &format!("{be}/online"), "0", &backend_perms(5))?;
        }
        put(tx, &fe_path(5, 10), "", &frontend_perms(5))
    })
    .unwrap();
    bus.settle(&[]);
    let plug = |bus: &mut Bus| bus.bus.plug("console", DomId(5), None, &[], &[]).unwrap();
    assert_eq!(plug(&mut bus), 11);
    assert_eq!(plug(&mut bus), 12);
    // Fill up to 100 with a mix of backend-only and frontend-only dirs.
    w.ts.transaction(|tx| {
        for d in 13..=100u32 {
            if d % 2 == 0 {
                put(
                    tx,
                    &format!("{}/state", be_path(5, d)),
                    "6",
                    &backend_perms(5),
                )?;
            } else {
                put(tx, &fe_path(5, d), "", &frontend_perms(5))?;
            }
        }
        Ok::<_, XsError>(())
    })
    .unwrap();
    bus.settle(&[]);
    assert_eq!(plug(&mut bus), 101);
    // Unplugging 11 frees it again.
    bus.bus.unplug("console", DomId(5), 11).unwrap();
    bus.until(&[], "11 removed", || !w.exists(&be_path(5, 11)));
    bus.settle(&[]);
    assert_eq!(plug(&mut bus), 11);
    // An explicit index that is taken is refused.
    let err = bus
        .bus
        .plug("console", DomId(5), Some(12), &[], &[])
        .unwrap_err();
    assert!(matches!(err, BusError::Exists { .. }), "{err}");
    let err = bus
        .bus
        .plug("console", DomId(5), Some(13), &[("x", "1".into())], &[])
        .unwrap_err();
    assert!(
        matches!(err, BusError::Exists { ref path } if *path == fe_path(5, 13)),
        "{err}"
    );
    assert_eq!(
        bus.bus
            .plug("console", DomId(5), Some(200), &[], &[])
            .unwrap(),
        200
    );
}

#[test]
fn plug_refuses_bad_requests() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let b = &mut bus.bus;
    assert!(matches!(
        b.plug("vif", DomId(5), None, &[], &[]),
        Err(BusError::UnknownType(_))
    ));
    assert!(matches!(
        b.plug("console", DomId(0x7ff0), None, &[], &[]),
        Err(BusError::InvalidDomId(_))
    ));
    for bad in ["state", "backend", "a/b", "", "../x"] {
        assert!(
            matches!(
                b.plug("console", DomId(5), None, &[], &[(bad, String::new())]),
                Err(BusError::InvalidNodeName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        b.plug(
            "console",
            DomId(5),
            None,
            &[("x", "1".into())],
            &[("x", "2".into())]
        ),
        Err(BusError::InvalidNodeName(_))
    ));
    assert!(matches!(
        b.unplug("console", DomId(5), 4),
        Err(BusError::NoSuchDevice { .. })
    ));
    assert!(calls.all().is_empty());
    assert!(!w.exists("/local/domain/0/backend"));
}

#[test]
fn a_failing_plugged_device_is_reported_and_its_nodes_removed() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut ty = FakeConsole::new(&calls);
    ty.fail_realize.insert(1);
    let mut bus = Bus::start(&w, ty);
    let (fe_nodes, ro_nodes) = console_nodes();
    let err = bus
        .bus
        .plug("console", DomId(5), None, &fe_nodes, &ro_nodes)
        .unwrap_err();
    assert!(matches!(err, BusError::Device { .. }), "{err}");
    assert!(!w.exists(&be_path(5, 1)));
    assert!(!w.exists(&fe_path(5, 1)));
    assert!(!w.exists("/local/domain/0/backend/console/5"));
    bus.settle(&[]);
    assert!(bus.bus.devices().is_empty());
    assert_eq!(calls.all(), ["create 5/1", "realize 5/1"]);
}

#[test]
fn a_guest_cannot_write_the_read_only_nodes_of_a_plugged_device() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let (fe_nodes, ro_nodes) = console_nodes();
    let devid = bus
        .bus
        .plug("console", DomId(5), None, &fe_nodes, &ro_nodes)
        .unwrap();
    let g = w.guest(5, devid);
    let fe = fe_path(5, devid);
    for n in ["limit", "type", "output", "tty"] {
        let path = format!("{fe}/{n}");
        assert_eq!(
            g.client
                .write(&path, b"file:/etc/shadow")
                .unwrap_err()
                .errno(),
            Some(XsErrno::Acces),
            "{n}"
        );
        assert_eq!(
            g.client
                .set_perms(&path, &frontend_perms(5))
                .unwrap_err()
                .errno(),
            Some(XsErrno::Acces),
            "{n}"
        );
        assert_eq!(g.client.read(&path).unwrap(), w.ts.read(&path).unwrap());
    }
    assert_eq!(w.read(&format!("{fe}/output")).as_deref(), Some("pty"));
    // The backend dir: readable, not writable.
    let be = be_path(5, devid);
    assert_eq!(
        g.client
            .write(&format!("{be}/online"), b"1")
            .unwrap_err()
            .errno(),
        Some(XsErrno::Acces)
    );
    assert_eq!(g.client.read(&format!("{be}/state")).unwrap(), b"2");
    // Its own nodes it may write.
    g.client.write(&format!("{fe}/protocol"), b"vt100").unwrap();
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be, XenbusState::Connected)
    });
}

#[test]
fn garbage_frontend_state_fails_only_that_device() {
    let w = World::new();
    w.domain(5);
    w.domain(6);
    w.toolstack_console(5, 1);
    w.toolstack_console(6, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let bad = w.guest(5, 1);
    let good = w.guest(6, 1);
    let (be_bad, be_good) = (be_path(5, 1), be_path(6, 1));

    bad.client
        .transaction(|tx| {
            tx.write(&format!("{}/ring-ref", bad.fe), b"8")?;
            tx.write(&format!("{}/port", bad.fe), b"3")?;
            tx.write(&format!("{}/state", bad.fe), b"garbage")
        })
        .unwrap();
    good.connect("9", "4");
    bus.until(&[&good], "good Connected", || {
        state_is(&w, &be_good, XenbusState::Connected) && good.state() == "4"
    });
    bus.until(&[], "bad closed", || {
        state_is(&w, &be_bad, XenbusState::Closed)
    });
    let s = bus.summary(5, 1).unwrap();
    assert!(s.failed && !s.connected, "{s:?}");
    assert!(s.error.unwrap().contains("garbage"));
    assert!(!bus.summary(6, 1).unwrap().failed);
    assert_eq!(calls.count_prefix("connect 5/1"), 0);
    assert_eq!(calls.count("connect 6/1 ring=9 port=4"), 1);

    // More garbage, of every kind, changes nothing for the neighbour.
    for v in [&b"9"[..], b"-1", b"04", b"", b"\xff\xfe", b"4 "] {
        bad.client.write(&format!("{}/state", bad.fe), v).unwrap();
    }
    bus.settle(&[]);
    assert!(state_is(&w, &be_good, XenbusState::Connected));
    assert!(state_is(&w, &be_bad, XenbusState::Closed));
    assert_eq!(calls.count_prefix("connect 5/1"), 0);
}

#[test]
fn primary_console_connects_without_a_frontend_state() {
    let w = World::new();
    w.domain(5);
    w.toolstack_primary(5);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let (be, fe) = (be_path(5, 0), fe_path(5, 0));
    bus.until(&[], "Connected", || {
        state_is(&w, &be, XenbusState::Connected)
    });
    assert_eq!(
        calls.all()[..3],
        ["create 5/0", "realize 5/0", "connect 5/0 ring=4242 port=5"]
    );
    // The read-only directory is untouched: no state written, same perms.
    assert!(!w.exists(&format!("{fe}/state")));
    assert_eq!(w.ts.get_perms(&fe).unwrap(), backend_perms(5));

    // A soft reset moves the ring: the device hears of it.
    w.ts.write(&format!("{fe}/ring-ref"), b"4243").unwrap();
    bus.until(&[], "changed", || calls.count("changed 5/0 ring-ref") == 1);

    // Unplug: nothing active to wait for; torn down, nothing removed.
    bus.bus.unplug("console", DomId(5), 0).unwrap();
    bus.until(&[], "torn down", || calls.count("unrealize 5/0") == 1);
    assert!(state_is(&w, &be, XenbusState::Closed));
    assert!(w.exists(&format!("{fe}/ring-ref")));
    assert_eq!(w.ts.get_perms(&fe).unwrap(), backend_perms(5));
}

#[test]
fn primary_console_waits_for_ring_ref_and_port() {
    let w = World::new();
    w.domain(5);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    // The console dir exists (read-only to the guest) but has no ring yet:
    // plug adopts it untouched.
    let fe = fe_path(5, 0);
    w.ts.transaction(|tx| put(tx, &fe, "", &backend_perms(5)))
        .unwrap();
    assert_eq!(
        bus.bus
            .plug("console", DomId(5), Some(0), &[], &[])
            .unwrap(),
        0
    );
    let be = be_path(5, 0);
    bus.settle(&[]);
    assert!(state_is(&w, &be, XenbusState::InitWait));
    assert!(!bus.summary(5, 0).unwrap().failed);
    w.ts.write(&format!("{fe}/port"), b"7").unwrap();
    w.ts.write(&format!("{fe}/ring-ref"), b"99").unwrap();
    bus.until(&[], "Connected", || {
        state_is(&w, &be, XenbusState::Connected)
    });
    assert_eq!(calls.count("connect 5/0 ring=99 port=7"), 1);
    assert_eq!(w.ts.get_perms(&fe).unwrap(), backend_perms(5));

    // Unplugging an adopted frontend removes only the backend dir.
    bus.bus.unplug("console", DomId(5), 0).unwrap();
    bus.until(&[], "removed", || !w.exists(&be));
    assert!(w.exists(&format!("{fe}/ring-ref")));
    assert_eq!(w.ts.get_perms(&fe).unwrap(), backend_perms(5));
}

#[test]
fn foreign_tokens_are_left_alone_and_rescan_is_harmless() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    assert!(!bus.bus.handle_event(&WatchEvent {
        path: be_path(5, 1),
        token: b"console:something".to_vec(),
    }));
    assert!(!bus.bus.handle_event(&WatchEvent {
        path: be_path(5, 1),
        token: b"xenbus:7:type:console".to_vec(),
    }));
    bus.bus.rescan();
    bus.settle(&[]);
    assert_eq!(calls.all(), ["create 5/1", "realize 5/1"]);
    assert!(XenBus::is_bus_token(b"xenbus:0:type:console"));
}

#[test]
fn shutdown_releases_devices_and_hands_toolstack_ones_back() {
    let w = World::new();
    w.domain(5);
    w.toolstack_console(5, 1);
    let calls = Calls::default();
    let mut bus = Bus::start(&w, FakeConsole::new(&calls));
    let g = w.guest(5, 1);
    g.connect("8", "3");
    bus.until(&[&g], "Connected", || {
        state_is(&w, &be_path(5, 1), XenbusState::Connected) && g.state() == "4"
    });
    let devid = bus.bus.plug("console", DomId(5), None, &[], &[]).unwrap();
    bus.bus.shutdown();
    assert_eq!(calls.count("unrealize 5/1"), 1);
    assert_eq!(calls.count(&format!("unrealize 5/{devid}")), 1);
    assert!(state_is(&w, &be_path(5, 1), XenbusState::Initialising));
    assert!(!w.exists(&be_path(5, devid)));
    drop(bus);

    // The next backend takes the device over and reconnects.
    let calls2 = Calls::default();
    let mut bus2 = Bus::start(&w, FakeConsole::new(&calls2));
    bus2.until(&[&g], "Connected again", || {
        state_is(&w, &be_path(5, 1), XenbusState::Connected)
    });
    assert_eq!(
        calls2.all(),
        ["create 5/1", "realize 5/1", "connect 5/1 ring=8 port=3"]
    );
}
