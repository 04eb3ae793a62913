//! [`ConsoleBackend`]: one thread that serves consoles — the reactor for
//! the rings and sinks, the XenBus for secondary consoles, watches on the
//! primary consoles' directories, and a command channel for hot-plug and
//! queries. Commands come from other threads through [`BackendHandle`].
//!
//! Nothing a guest does can stop the loop: every device error is logged
//! and confined to its console.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use platform::{DomId, Platform};
use xenbus::XenBus;
use xenstore::client::{Client, WatchEvent, WatchEvents, XenStore};

use crate::device::{
    self, connect_primary, lock, Action, ConsoleOptions, ConsoleType, PrimaryLink, Shared,
    SharedRef,
};
use crate::io::ConsoleId;
use crate::metrics::CounterSnapshot;
use crate::reactor::{ConsoleHandle, Reactor, Ready};
use crate::sink::SinkSpec;

const TOKEN_WATCH: u32 = 1;
const TOKEN_WAKE: u32 = 2;
const PRIMARY_TOKEN: &str = "primary:";
const DOMLIST_TOKEN: &str = "domlist";

/// One console as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleInfo {
    pub id: ConsoleId,
    pub connected: bool,
    pub sink: String,
    pub tty: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub buffered: usize,
    pub counters: CounterSnapshot,
}

type Reply<T> = mpsc::Sender<Result<T, String>>;

enum Command {
    ServePrimary(DomId, Option<SinkSpec>, Reply<()>),
    StopPrimary(DomId, Reply<()>),
    Plug(DomId, Option<u32>, SinkSpec, Reply<u32>),
    Unplug(DomId, u32, Reply<()>),
    List(Reply<Vec<ConsoleInfo>>),
    ReopenLogs(Reply<()>),
    Stop,
}

pub struct ConsoleBackend {
    store: Arc<Client>,
    events: WatchEvents,
    platform: Arc<dyn Platform>,
    bus: XenBus,
    reactor: Reactor,
    shared: SharedRef,
    opts: ConsoleOptions,
    primaries: HashMap<DomId, Option<PrimaryLink>>,
    live: HashMap<ConsoleId, ConsoleHandle>,
    commands: mpsc::Receiver<Command>,
    wake: OwnedFd,
}

/// Talks to a running backend from other threads.
pub struct BackendHandle {
    tx: mpsc::Sender<Command>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
    /// Fires when the loop has ended (told to, or XenStore went away).
    ended: Mutex<Option<mpsc::Receiver<()>>>,
}

impl ConsoleBackend {
    /// Connects to XenStore at `store_path` and sets the backend up.
    pub fn new(
        store: Client,
        platform: Arc<dyn Platform>,
        opts: ConsoleOptions,
    ) -> std::io::Result<(ConsoleBackend, BackendHandle)> {
        let store = Arc::new(store);
        let events = store.watch_events();
        let shared: SharedRef = Arc::new(Mutex::new(Shared::default()));
        let mut bus = XenBus::new(store.clone(), platform.domid());
        bus.register(Box::new(ConsoleType {
            platform: platform.clone(),
            shared: shared.clone(),
            opts: opts.clone(),
        }))
        .map_err(std::io::Error::other)?;
        bus.start().map_err(std::io::Error::other)?;
        if opts.discover_primaries {
            // As xenconsoled: any domain coming or going means a rescan.
            for special in ["@introduceDomain", "@releaseDomain"] {
                store
                    .watch(special, DOMLIST_TOKEN)
                    .map_err(std::io::Error::other)?;
            }
        }
        let mut reactor = Reactor::new()?;
        reactor.add_external(events.as_fd(), TOKEN_WATCH)?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        reactor.add_external(wake.as_fd(), TOKEN_WAKE)?;
        let (tx, rx) = mpsc::channel();
        let handle = BackendHandle {
            tx,
            wake: wake.try_clone()?,
            thread: None,
            ended: Mutex::new(None),
        };
        let backend = ConsoleBackend {
            store,
            events,
            platform,
            bus,
            reactor,
            shared,
            opts,
            primaries: HashMap::new(),
            live: HashMap::new(),
            commands: rx,
            wake,
        };
        Ok((backend, handle))
    }

    /// Runs the backend on its own thread.
    pub fn spawn(
        store: Client,
        platform: Arc<dyn Platform>,
        opts: ConsoleOptions,
    ) -> std::io::Result<BackendHandle> {
        let (backend, mut handle) = ConsoleBackend::new(store, platform, opts)?;
        let (ended_tx, ended_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("console-backend".into())
            .spawn(move || {
                backend.run();
                let _ = ended_tx.send(());
            })?;
        handle.thread = Some(thread);
        handle.ended = Mutex::new(Some(ended_rx));
        Ok(handle)
    }

    /// Serves until told to stop (or XenStore goes away).
    pub fn run(mut self) {
        loop {
            let ready = match self.reactor.poll(None) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "console reactor failed");
                    return;
                }
            };
            for r in ready {
                match r {
                    // A closed connection stays readable: polling on would spin.
                    Ready::External(TOKEN_WATCH) if !self.on_watch() => {
                        self.shutdown();
                        return;
                    }
                    Ready::External(TOKEN_WAKE) if !self.on_commands() => {
                        self.shutdown();
                        return;
                    }
                    _ => {}
                }
            }
            self.apply_actions();
        }
    }

    /// Handles fired watches; false if the XenStore connection is gone.
    fn on_watch(&mut self) -> bool {
        loop {
            match self.events.try_recv() {
                Ok(Some(ev)) => self.on_event(&ev),
                Ok(None) => return true,
                Err(e) => {
                    tracing::error!(error = %e, "XenStore connection lost; the console backend stops");
                    return false;
                }
            }
            self.apply_actions();
        }
    }

    fn on_event(&mut self, ev: &WatchEvent) {
        let token = String::from_utf8_lossy(&ev.token);
        if token == DOMLIST_TOKEN {
            self.rescan_domains();
            return;
        }
        if let Some(d) = token.strip_prefix(PRIMARY_TOKEN) {
            if let Ok(d) = d.parse::<u16>() {
                self.refresh_primary(DomId(d));
            }
            return;
        }
        self.bus.handle_event(ev);
    }

    fn on_commands(&mut self) -> bool {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Stop => return false,
                Command::ServePrimary(d, sink, reply) => {
                    let _ = reply.send(self.serve_primary(d, sink));
                }
                Command::StopPrimary(d, reply) => {
                    let _ = reply.send(self.stop_primary(d));
                }
                Command::Plug(d, devid, sink, reply) => {
                    let _ = reply.send(self.plug(d, devid, sink));
                }
                Command::Unplug(d, devid, reply) => {
                    let _ = reply.send(
                        self.bus
                            .unplug("console", d, devid)
                            .map_err(|e| e.to_string()),
                    );
                }
                Command::List(reply) => {
                    let _ = reply.send(Ok(self.list()));
                }
                Command::ReopenLogs(reply) => {
                    for h in self.live.values() {
                        if let Some(io) = self.reactor.get_mut(*h) {
                            io.reopen_log();
                        }
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            self.apply_actions();
        }
        true
    }

    /// Serves the primary console of every introduced domain and stops
    /// serving those that are gone.
    fn rescan_domains(&mut self) {
        let me = self.platform.domid();
        let listed: Vec<DomId> = match self.store.directory("/local/domain") {
            Ok(names) => names
                .iter()
                .filter_map(|n| n.parse::<u16>().ok())
                .map(DomId)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list domains");
                return;
            }
        };
        let alive: Vec<DomId> = listed
            .into_iter()
            .filter(|d| *d != me && self.store.is_domain_introduced(d.0).unwrap_or(false))
            .collect();
        let gone: Vec<DomId> = self
            .primaries
            .keys()
            .filter(|d| !alive.contains(d))
            .copied()
            .collect();
        for d in gone {
            tracing::info!(domid = %d, "domain gone");
            let _ = self.stop_primary(d);
        }
        for d in alive {
            if !self.primaries.contains_key(&d) {
                tracing::info!(domid = %d, "domain found");
                if let Err(e) = self.serve_primary(d, self.opts.primary_sink.clone()) {
                    tracing::warn!(domid = %d, error = %e, "cannot watch the domain's console");
                }
            }
        }
    }

    fn serve_primary(&mut self, d: DomId, sink: Option<SinkSpec>) -> Result<(), String> {
        if self.primaries.contains_key(&d) {
            return Ok(());
        }
        if let Some(s) = sink {
            lock(&self.shared)
                .assigned
                .insert(ConsoleId { domid: d, devid: 0 }, s);
        }
        self.primaries.insert(d, None);
        self.store
            .watch(
                &format!("/local/domain/{d}/console"),
                format!("{PRIMARY_TOKEN}{d}").as_bytes(),
            )
            .map_err(|e| e.to_string())
    }

    fn stop_primary(&mut self, d: DomId) -> Result<(), String> {
        if self.primaries.remove(&d).is_none() {
            return Err(format!("domain {d}'s primary console is not served"));
        }
        let _ = self.store.unwatch(
            &format!("/local/domain/{d}/console"),
            format!("{PRIMARY_TOKEN}{d}").as_bytes(),
        );
        let id = ConsoleId { domid: d, devid: 0 };
        self.stop(id);
        let mut s = lock(&self.shared);
        s.parked.remove(&id);
        s.assigned.remove(&id);
        s.counters.remove(&id);
        Ok(())
    }

    /// Connects, reconnects or disconnects a primary console after a change
    /// in its directory (or on first sight).
    fn refresh_primary(&mut self, d: DomId) {
        let Some(current) = self.primaries.get(&d).copied() else {
            return;
        };
        let id = ConsoleId { domid: d, devid: 0 };
        let fe = format!("/local/domain/{d}/console");
        let read = |n: &str| self.store.read(&format!("{fe}/{n}")).ok();
        let now = (read("ring-ref"), read("port"));
        let unchanged = match (current, &now) {
            (Some(link), (Some(r), Some(p))) => {
                r.as_slice() == link.ring_ref.to_string().as_bytes()
                    && p.as_slice() == link.port.to_string().as_bytes()
            }
            _ => false,
        };
        if unchanged && self.live.contains_key(&id) {
            return;
        }
        // The ring moved, the port changed, or it went away: start over.
        self.stop(id);
        self.apply_actions();
        match connect_primary(
            &self.shared,
            self.platform.as_ref(),
            &self.store,
            d,
            &self.opts,
        ) {
            Ok(link) => {
                self.primaries.insert(d, link);
            }
            Err(e) => {
                tracing::warn!(console = %id, error = %e, "primary console not served");
                self.primaries.insert(d, None);
            }
        }
    }

    fn plug(&mut self, d: DomId, devid: Option<u32>, sink: SinkSpec) -> Result<u32, String> {
        if devid == Some(0) {
            return Err("hot-plug adds secondary consoles (index 1 and up)".into());
        }
        let kind = self
            .opts
            .serve_types
            .first()
            .cloned()
            .unwrap_or_else(|| "xenconsoled".into());
        let read_only = [
            ("limit", device::DEFAULT_LIMIT.to_string()),
            ("type", kind),
            ("output", sink.to_string()),
            ("tty", String::new()),
        ];
        let frontend = [("protocol", "vt100".to_owned())];
        lock(&self.shared).plugging = Some((d, sink));
        let result = self.bus.plug("console", d, devid, &frontend, &read_only);
        lock(&self.shared).plugging = None;
        result.map_err(|e| e.to_string())
    }

    fn stop(&mut self, id: ConsoleId) {
        if let Some(h) = self.live.remove(&id) {
            if let Some(io) = self.reactor.remove(h) {
                lock(&self.shared).parked.insert(id, io.into_sink());
            }
        }
    }

    /// Carries out what device callbacks queued.
    fn apply_actions(&mut self) {
        let actions = std::mem::take(&mut lock(&self.shared).actions);
        for a in actions {
            let io = match a {
                Action::Serve(io) => io,
                Action::Reconnect(mut io) => {
                    self.stop(io.id);
                    let sink = lock(&self.shared).parked.remove(&io.id);
                    match sink {
                        Some(s) => drop(io.replace_sink(s)),
                        None => {
                            tracing::warn!(console = %io.id, "no sink to reconnect; output is discarded")
                        }
                    }
                    io
                }
                Action::Stop(id) => {
                    self.stop(id);
                    continue;
                }
                Action::Forget(id) => {
                    self.stop(id);
                    let mut s = lock(&self.shared);
                    s.parked.remove(&id);
                    // A console added later at this index gets its own sink.
                    s.assigned.remove(&id);
                    continue;
                }
            };
            let id = io.id;
            self.stop(id);
            match self.reactor.add(*io) {
                Ok(h) => {
                    self.live.insert(id, h);
                }
                Err(e) => {
                    tracing::warn!(console = %id, error = %e, "could not watch the console")
                }
            }
        }
    }

    fn list(&self) -> Vec<ConsoleInfo> {
        let s = lock(&self.shared);
        let mut out: Vec<ConsoleInfo> = s
            .counters
            .iter()
            .map(|(id, c)| {
                let io = self.live.get(id).and_then(|h| self.reactor.get(*h));
                let sink = io
                    .map(|i| i.sink())
                    .or_else(|| s.parked.get(id).map(|b| b.as_ref()));
                ConsoleInfo {
                    id: *id,
                    connected: io.is_some(),
                    sink: sink.map(|k| k.spec().to_string()).unwrap_or_default(),
                    tty: sink.and_then(|k| k.tty()),
                    log: io.and_then(|i| i.log_path().map(PathBuf::from)),
                    buffered: io.map_or(0, |i| i.buffered()),
                    counters: c.snapshot(),
                }
            })
            .collect();
        out.sort_by_key(|i| i.id);
        out
    }

    fn shutdown(&mut self) {
        // The bus leaves its devices for the next backend: a toolstack's
        // back at Initialising (or it would never be served again), ours
        // removed.
        self.bus.shutdown();
        self.apply_actions();
        let ids: Vec<ConsoleId> = self.live.keys().copied().collect();
        for id in ids {
            self.stop(id);
        }
    }
}

impl BackendHandle {
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| "console backend has stopped".to_owned())?;
        rustix::io::write(&self.wake, &1u64.to_ne_bytes()).map_err(|e| e.to_string())?;
        rx.recv()
            .map_err(|_| "console backend has stopped".to_owned())?
    }

    /// Serves domain `d`'s primary console (to `sink`, or the default).
    pub fn serve_primary(&self, d: DomId, sink: Option<SinkSpec>) -> Result<(), String> {
        self.call(|r| Command::ServePrimary(d, sink, r))
    }

    pub fn stop_primary(&self, d: DomId) -> Result<(), String> {
        self.call(|r| Command::StopPrimary(d, r))
    }

    /// Hot-plugs a secondary console; returns its index.
    pub fn plug(&self, d: DomId, devid: Option<u32>, sink: SinkSpec) -> Result<u32, String> {
        self.call(|r| Command::Plug(d, devid, sink, r))
    }

    /// Hot-unplugs a secondary console, as a toolstack does.
    pub fn unplug(&self, d: DomId, devid: u32) -> Result<(), String> {
        self.call(|r| Command::Unplug(d, devid, r))
    }

    pub fn list(&self) -> Result<Vec<ConsoleInfo>, String> {
        self.call(Command::List)
    }

    /// Reopens every guest log (after rotation; what SIGHUP does).
    pub fn reopen_logs(&self) -> Result<(), String> {
        self.call(Command::ReopenLogs)
    }

    /// Stops the backend and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    /// Asks the loop to stop, without waiting (usable through an `Arc`).
    pub fn request_stop(&self) {
        let _ = self.tx.send(Command::Stop);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Blocks until the loop has ended: after [`request_stop`], or when the
    /// XenStore connection is lost. Returns at once on a second call.
    ///
    /// [`request_stop`]: BackendHandle::request_stop
    pub fn wait_ended(&self) {
        let rx = self.ended.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = rx {
            let _ = rx.recv();
        }
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Command::Stop);
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
            let _ = t.join();
        }
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.halt();
    }
}
