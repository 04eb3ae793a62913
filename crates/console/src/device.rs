//! The console as a XenBus device ([`ConsoleType`], [`ConsoleDevice`]) and
//! the primary console, which has no XenBus handshake ([`connect_primary`]).
//!
//! Rules taken from Xen and from what went wrong before:
//! * A console is served only if its `type` is one we are configured for
//!   (`xenconsoled`, `ioemu`, ...).
//! * Where the output goes is the operator's choice. A frontend `output`
//!   node is honoured only when the guest cannot write it (XSA-57).
//! * `ring-ref` and `port` are parsed strictly; a secondary console's
//!   `ring-ref` is a grant reference and may not name the reserved refs 0
//!   (console) or 1 (xenstore).
//! * `tty` is written by us; if we create it, it is created read-only to
//!   the guest in the same transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use platform::{DomId, EvtchnPort, Gfn, GrantRef, Platform};
use xenbus::{BackendDevice, BackendType, DeviceError, DeviceInfo};
use xenstore::client::{Client, XenStore};
use xenstore::{Access, Perm, Perms};

use crate::io::{ConsoleId, ConsoleIo};
use crate::log::{GuestLog, LogStyle};
use crate::metrics::ConsoleCounters;
use crate::output_buffer::{OutputBuffer, Overflow};
use crate::ring::ConsoleRing;
use crate::sink::null::NullSink;
use crate::sink::{self, Sink, SinkSpec};

/// libxl's default `limit`, used when a console has none.
pub const DEFAULT_LIMIT: usize = 1 << 20;

/// How consoles are served.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// The sink for a console the operator named no sink for.
    pub default_sink: SinkSpec,
    pub overflow: Overflow,
    /// `type` values we serve; a console with another `type` is left alone.
    pub serve_types: Vec<String>,
    /// Write each console's output to `<log_dir>/guest-<name>.log` too
    /// (`-console<n>` before `.log` for secondary consoles).
    pub log_dir: Option<std::path::PathBuf>,
    pub log_style: LogStyle,
    /// Serve every domain's primary console, found the xenconsoled way
    /// (`@introduceDomain`/`@releaseDomain` and `/local/domain`).
    pub discover_primaries: bool,
    /// The operator's sink for every discovered primary console; it wins
    /// over the toolstack's `output` node.
    pub primary_sink: Option<SinkSpec>,
    /// Per-console limit on guest output.
    pub rate_limit: Option<crate::io::RateLimit>,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            default_sink: SinkSpec::Pty,
            overflow: Overflow::Discard,
            serve_types: vec!["xenconsoled".into(), "ioemu".into()],
            log_dir: None,
            log_style: LogStyle::default(),
            discover_primaries: false,
            primary_sink: None,
            rate_limit: None,
        }
    }
}

/// Work for the loop that owns the reactor, queued by device callbacks.
pub enum Action {
    Serve(Box<ConsoleIo>),
    /// A frontend connected again (after closing, or resuming with a new
    /// ring without closing): serve the new ring with the sink the console
    /// has, live or parked, once its old ring is stopped. The `ConsoleIo`
    /// holds a stand-in sink until then.
    Reconnect(Box<ConsoleIo>),
    /// Stop serving; park the sink for a reconnect.
    Stop(ConsoleId),
    /// The device is gone: stop serving and drop the sink.
    Forget(ConsoleId),
}

/// State shared by the device callbacks and the loop.
#[derive(Default)]
pub struct Shared {
    pub actions: Vec<Action>,
    /// Sinks kept while a console is disconnected, so a reconnecting
    /// frontend finds the same pty and the log keeps its place.
    pub parked: HashMap<ConsoleId, Box<dyn Sink>>,
    /// Sinks the operator chose for consoles (by hot-plug or config).
    pub assigned: HashMap<ConsoleId, SinkSpec>,
    /// The sink for a hot-plug under way: the bus realizes the device
    /// inside `plug`, before its index is known to the caller.
    pub plugging: Option<(DomId, SinkSpec)>,
    pub counters: HashMap<ConsoleId, Arc<ConsoleCounters>>,
}

pub type SharedRef = Arc<Mutex<Shared>>;

pub fn lock(s: &SharedRef) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail(what: impl Into<String>) -> DeviceError {
    DeviceError::Failed {
        op: "console",
        source: what.into().into(),
    }
}

fn read_opt(store: &Client, path: &str) -> Result<Option<String>, DeviceError> {
    match store.read(path) {
        Ok(v) => String::from_utf8(v)
            .map(Some)
            .map_err(|_| fail(format!("{path} is not text"))),
        Err(e) if e.errno() == Some(xenstore::XsErrno::NoEnt) => Ok(None),
        Err(e) => Err(fail(format!("reading {path}: {e}"))),
    }
}

/// Strict decimal, as the toolstack and Linux write these numbers.
fn parse_strict<T: std::str::FromStr>(path: &str, s: &str) -> Result<T, DeviceError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(fail(format!("{path} = {s:?} is not a decimal number")));
    }
    s.parse()
        .map_err(|_| fail(format!("{path} = {s:?} is out of range")))
}

/// True if domain `fe` could have written `path` (so we must not trust it).
fn guest_writable(store: &Client, path: &str, fe: DomId) -> bool {
    match store.get_perms(path) {
        Ok(p) => p.access_for(fe.0, None).can_write(),
        Err(_) => true,
    }
}

/// Checks `type`: `Ok(false)` if another daemon serves this console.
fn type_served(store: &Client, fe_path: &str, opts: &ConsoleOptions) -> Result<bool, DeviceError> {
    match read_opt(store, &format!("{fe_path}/type"))? {
        None => Ok(true),
        Some(t) => Ok(opts.serve_types.contains(&t)),
    }
}

/// The sink for a console: the operator's choice, else a toolstack
/// `output` the guest cannot write, else the default. Reuses a parked one.
fn take_sink(
    shared: &SharedRef,
    store: &Client,
    id: ConsoleId,
    fe_path: &str,
    opts: &ConsoleOptions,
) -> Result<Box<dyn Sink>, DeviceError> {
    if let Some(s) = lock(shared).parked.remove(&id) {
        return Ok(s);
    }
    let assigned = {
        let mut s = lock(shared);
        match s.plugging.take() {
            Some((d, spec)) if d == id.domid && id.devid != 0 => {
                s.assigned.insert(id, spec.clone());
                Some(spec)
            }
            other => {
                s.plugging = other;
                s.assigned.get(&id).cloned()
            }
        }
    };
    let spec = match assigned {
        Some(s) => s,
        None => output_spec(store, id, fe_path)?.unwrap_or_else(|| opts.default_sink.clone()),
    };
    sink::open(&spec).map_err(|e| fail(format!("opening sink {spec}: {e}")))
}

fn output_spec(
    store: &Client,
    id: ConsoleId,
    fe_path: &str,
) -> Result<Option<SinkSpec>, DeviceError> {
    let path = format!("{fe_path}/output");
    let Some(v) = read_opt(store, &path)? else {
        return Ok(None);
    };
    if guest_writable(store, &path, id.domid) {
        tracing::warn!(console = %id, output = %v, "refusing an output node the guest can write");
        return Ok(None);
    }
    match v.parse::<SinkSpec>() {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(console = %id, output = %v, error = %e, "ignoring an output the toolstack wrote that we cannot serve");
            Ok(None)
        }
    }
}

/// Publishes a pty's path in `tty`, read-only to the guest: created so, or
/// taken over if the guest could write it (`xl console` opens whatever path
/// it names, as root).
fn publish_tty(
    store: &Client,
    backend: DomId,
    id: ConsoleId,
    fe_path: &str,
    sink: &dyn Sink,
) -> Result<(), DeviceError> {
    let Some(tty) = sink.tty() else {
        return Ok(());
    };
    let path = format!("{fe_path}/tty");
    // Owned by us (the backend domain, which may be a driver domain),
    // readable by the guest.
    let ro = Perms::new(vec![
        Perm::new(Access::None, backend.0),
        Perm::new(Access::Read, id.domid.0),
    ])
    .map_err(|e| fail(e.to_string()))?;
    store
        .transaction(|tx| {
            let guest_may_write = !tx.exists(&path)?
                || tx
                    .get_perms(&path)?
                    .access_for(id.domid.0, None)
                    .can_write();
            tx.write(&path, tty.to_string_lossy().as_bytes())?;
            if guest_may_write {
                tx.set_perms(&path, &ro)?;
            }
            Ok::<(), xenstore::client::Error>(())
        })
        .map_err(|e| fail(format!("writing {path}: {e}")))
}

/// The output buffer's bound: the toolstack's `limit`, never a guest's (a
/// guest that could set it would choose how much of our memory it holds).
fn limit(store: &Client, fe_path: &str, fe: DomId) -> Result<usize, DeviceError> {
    let path = format!("{fe_path}/limit");
    match read_opt(store, &path)? {
        None => Ok(DEFAULT_LIMIT),
        Some(v) if guest_writable(store, &path, fe) => {
            tracing::warn!(%path, limit = %v, "refusing a limit the guest can write");
            Ok(DEFAULT_LIMIT)
        }
        Some(v) => parse_strict::<usize>(&path, &v).map(|l| l.max(1)),
    }
}

fn counters(shared: &SharedRef, id: ConsoleId) -> Arc<ConsoleCounters> {
    lock(shared).counters.entry(id).or_default().clone()
}

/// Everything needed to bring one ring up.
struct Link {
    id: ConsoleId,
    ring: ConsoleRing,
    /// As XenStore gave it (grant ref or frame), for the trace.
    ring_ref: u64,
    port: EvtchnPort,
    /// Primary consoles: clear the ring's `connection` byte once served,
    /// or guests of Xen 4.21+ hold their output back.
    mark_connected: bool,
}

/// A file name for a guest's log from its (toolstack-written, but never
/// trusted) name: anything but letters, digits, `.`, `_` and `-` becomes
/// `_`, so no name can point outside the log directory.
pub fn log_file_name(name: Option<&str>, id: ConsoleId) -> String {
    let clean: String = name
        .unwrap_or_default()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = if clean.is_empty() || clean.starts_with('.') {
        format!("domain-{}", id.domid)
    } else {
        clean
    };
    match id.devid {
        0 => format!("guest-{base}.log"),
        n => format!("guest-{base}-console{n}.log"),
    }
}

fn open_log(store: &Client, id: ConsoleId, opts: &ConsoleOptions) -> Option<GuestLog> {
    let dir = opts.log_dir.as_ref()?;
    let name = read_opt(store, &format!("/local/domain/{}/name", id.domid))
        .ok()
        .flatten();
    let path = dir.join(log_file_name(name.as_deref(), id));
    match GuestLog::open(&path, opts.log_style) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(console = %id, path = %path.display(), error = %e, "cannot open the guest log");
            None
        }
    }
}

/// After a backend restart: makes the log and the ring agree, so output
/// is neither lost nor logged twice (see [`crate::log`]).
fn recover_log(log: &mut GuestLog, link: &Link) {
    let last = match log.track_position(link.id.domid.0) {
        Ok(Some(last)) => last,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(console = %link.id, error = %e, "cannot keep the log position; a crash may repeat a chunk");
            return;
        }
    };
    let out_cons = link.ring.out_cons().unwrap_or(0);
    let pending = link.ring.out_pending().unwrap_or(0);
    match log.recover(last, out_cons, pending) {
        Ok(0) => {}
        Ok(skip) => {
            tracing::info!(console = %link.id, bytes = skip, "skipping output already in the log");
            if let Err(e) = link.ring.consume_out(skip) {
                tracing::warn!(console = %link.id, error = %e, "cannot skip logged output");
            }
        }
        Err(e) => tracing::warn!(console = %link.id, error = %e, "log recovery failed"),
    }
}

/// Binds the port and queues the console for the loop. `sink` is taken only
/// once nothing can fail any more; `None` means the console has its sink
/// already (a reconnect), and the loop hands it over.
fn serve(
    shared: &SharedRef,
    platform: &dyn Platform,
    store: &Client,
    link: Link,
    limit: usize,
    sink: &mut Option<Box<dyn Sink>>,
    opts: &ConsoleOptions,
) -> Result<(), DeviceError> {
    let mut evtchn = platform
        .event_channels()
        .map_err(|e| fail(format!("event channels: {e}")))?;
    let local = evtchn
        .bind_interdomain(link.id.domid, link.port)
        .map_err(|e| {
            fail(format!(
                "binding port {} of domain {}: {e}",
                link.port, link.id.domid
            ))
        })?;
    if link.mark_connected {
        link.ring
            .set_connected()
            .map_err(|e| fail(format!("marking the ring connected: {e}")))?;
    }
    let log = open_log(store, link.id, opts).map(|mut log| {
        recover_log(&mut log, &link);
        log
    });
    let (sink, reconnect) = match sink.take() {
        Some(s) => (s, false),
        None => (Box::new(NullSink::new()) as Box<dyn Sink>, true),
    };
    let mut io = ConsoleIo::new(
        link.id,
        link.ring,
        evtchn,
        local,
        OutputBuffer::new(limit, opts.overflow),
        sink,
        counters(shared, link.id),
    );
    if let Some(log) = log {
        io = io.with_log(log);
    }
    if let Some(limit) = opts.rate_limit {
        io = io.with_rate_limit(limit);
    }
    tracing::info!(console = %link.id, idx = link.id.devid, ring_ref = link.ring_ref, port = %link.port, limit, "xen_console_connect");
    let action = if reconnect {
        Action::Reconnect(Box::new(io))
    } else {
        Action::Serve(Box::new(io))
    };
    lock(shared).actions.push(action);
    Ok(())
}

/// The XenBus backend type `console`.
pub struct ConsoleType {
    pub platform: Arc<dyn Platform>,
    pub shared: SharedRef,
    pub opts: ConsoleOptions,
}

impl BackendType for ConsoleType {
    fn name(&self) -> &'static str {
        "console"
    }

    fn frontend_path(&self, fe: DomId, devid: u32) -> String {
        if devid == 0 {
            format!("/local/domain/{fe}/console")
        } else {
            format!("/local/domain/{fe}/device/console/{devid}")
        }
    }

    fn create(
        &mut self,
        store: &Client,
        info: &DeviceInfo,
    ) -> Result<Box<dyn BackendDevice>, DeviceError> {
        if info.devid == 0 {
            // libxl makes this directory for every domain: not an error.
            return Err(DeviceError::Declined(
                "the primary console is served without a XenBus device".into(),
            ));
        }
        // Here, before the bus writes anything: a console of another type
        // (QEMU's `ioemu`) shares the backend directory layout, and a
        // refusal after InitWait would set *its* backend Closing.
        if !type_served(store, &info.frontend_path, &self.opts)? {
            return Err(DeviceError::Declined(
                "its type is served by another daemon".into(),
            ));
        }
        tracing::info!(console = %ConsoleId { domid: info.frontend_id, devid: info.devid }, "xen_console_device_create");
        Ok(Box::new(ConsoleDevice {
            id: ConsoleId {
                domid: info.frontend_id,
                devid: info.devid,
            },
            platform: self.platform.clone(),
            shared: self.shared.clone(),
            opts: self.opts.clone(),
            sink: None,
            connected: false,
        }))
    }
}

/// A secondary console (index ≥ 1).
pub struct ConsoleDevice {
    id: ConsoleId,
    platform: Arc<dyn Platform>,
    shared: SharedRef,
    opts: ConsoleOptions,
    /// The sink between realize and the first connect; the loop has it
    /// after that (live, or parked while disconnected).
    sink: Option<Box<dyn Sink>>,
    connected: bool,
}

impl BackendDevice for ConsoleDevice {
    fn realize(&mut self, store: &Client, info: &DeviceInfo) -> Result<(), DeviceError> {
        let sink = take_sink(
            &self.shared,
            store,
            self.id,
            &info.frontend_path,
            &self.opts,
        )?;
        publish_tty(
            store,
            self.platform.domid(),
            self.id,
            &info.frontend_path,
            sink.as_ref(),
        )?;
        tracing::info!(console = %self.id, sink = %sink.spec(), "xen_console_realize");
        self.sink = Some(sink);
        Ok(())
    }

    fn connect(&mut self, store: &Client, info: &DeviceInfo) -> Result<(), DeviceError> {
        let fe = &info.frontend_path;
        let ring_ref_path = format!("{fe}/ring-ref");
        let port_path = format!("{fe}/port");
        let ring_ref = read_opt(store, &ring_ref_path)?.ok_or_else(|| fail("no ring-ref"))?;
        let gref = GrantRef(parse_strict(&ring_ref_path, &ring_ref)?);
        if gref == GrantRef::CONSOLE || gref == GrantRef::XENSTORE {
            return Err(fail(format!("ring-ref {gref} names a reserved grant")));
        }
        let port = read_opt(store, &port_path)?.ok_or_else(|| fail("no port"))?;
        let port = EvtchnPort(parse_strict(&port_path, &port)?);
        let limit = limit(store, fe, self.id.domid)?;
        let page = self
            .platform
            .grant_mapper()
            .map_grant_refs(self.id.domid, &[gref], true)
            .map_err(|e| fail(format!("mapping grant {gref}: {e}")))?;
        let ring = ConsoleRing::new(page).map_err(|e| fail(e.to_string()))?;
        let link = Link {
            id: self.id,
            ring,
            ring_ref: u64::from(gref.0),
            port,
            mark_connected: false,
        };
        serve(
            &self.shared,
            self.platform.as_ref(),
            store,
            link,
            limit,
            &mut self.sink,
            &self.opts,
        )?;
        self.connected = true;
        Ok(())
    }

    fn disconnect(&mut self, _info: &DeviceInfo) {
        if std::mem::take(&mut self.connected) {
            tracing::info!(console = %self.id, "xen_console_disconnect");
            lock(&self.shared).actions.push(Action::Stop(self.id));
        }
    }

    fn unrealize(&mut self, _info: &DeviceInfo) {
        tracing::info!(console = %self.id, "xen_console_unrealize");
        tracing::info!(console = %self.id, "xen_console_device_destroy");
        self.disconnect(_info);
        self.sink = None;
        let mut s = lock(&self.shared);
        // After the disconnect's Stop, which parks the sink.
        s.actions.push(Action::Forget(self.id));
        s.counters.remove(&self.id);
    }
}

/// What the primary console was last connected with, to tell a real
/// change (remap, rebind) from a no-op watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryLink {
    pub ring_ref: Gfn,
    pub port: EvtchnPort,
}

/// Reads a domain's `console` directory and, if `ring-ref` and `port` are
/// there and `type` is ours, connects: grant ref 0 first (what the domain
/// builder set up for the console backend), else a foreign map of the
/// frame. Returns the link served, `None` if not ready or not ours.
pub fn connect_primary(
    shared: &SharedRef,
    platform: &dyn Platform,
    store: &Client,
    domid: DomId,
    opts: &ConsoleOptions,
) -> Result<Option<PrimaryLink>, DeviceError> {
    let id = ConsoleId { domid, devid: 0 };
    let fe = format!("/local/domain/{domid}/console");
    if !type_served(store, &fe, opts)? {
        return Ok(None);
    }
    let (Some(ring_ref), Some(port)) = (
        read_opt(store, &format!("{fe}/ring-ref"))?,
        read_opt(store, &format!("{fe}/port"))?,
    ) else {
        return Ok(None);
    };
    let gfn = Gfn(parse_strict(&format!("{fe}/ring-ref"), &ring_ref)?);
    let port = EvtchnPort(parse_strict(&format!("{fe}/port"), &port)?);
    let limit = limit(store, &fe, domid)?;
    let page = match platform
        .grant_mapper()
        .map_grant_refs(domid, &[GrantRef::CONSOLE], true)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(console = %id, error = %e, "grant 0 not mappable; foreign-mapping ring-ref");
            platform
                .foreign_mapper()
                .map_foreign(domid, &[gfn], true)
                .map_err(|e| fail(format!("mapping frame {gfn}: {e}")))?
        }
    };
    let ring = ConsoleRing::new(page).map_err(|e| fail(e.to_string()))?;
    let sink = take_sink(shared, store, id, &fe, opts)?;
    publish_tty(store, platform.domid(), id, &fe, sink.as_ref())?;
    let link = Link {
        id,
        ring,
        ring_ref: gfn.0,
        port,
        mark_connected: true,
    };
    let mut sink = Some(sink);
    if let Err(e) = serve(shared, platform, store, link, limit, &mut sink, opts) {
        // Parked again: the next attempt keeps the pty it published.
        if let Some(s) = sink {
            lock(shared).parked.insert(id, s);
        }
        return Err(e);
    }
    Ok(Some(PrimaryLink {
        ring_ref: gfn,
        port,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_cannot_escape_the_log_directory() {
        let id = ConsoleId {
            domid: DomId(7),
            devid: 0,
        };
        assert_eq!(log_file_name(Some("web-1"), id), "guest-web-1.log");
        assert_eq!(
            log_file_name(Some("../../etc/passwd"), id),
            "guest-domain-7.log"
        );
        assert_eq!(log_file_name(Some("a/b c"), id), "guest-a_b_c.log");
        assert_eq!(log_file_name(None, id), "guest-domain-7.log");
        let second = ConsoleId { devid: 3, ..id };
        assert_eq!(log_file_name(Some("web"), second), "guest-web-console3.log");
    }

    const GUEST: DomId = DomId(7);
    const FE: &str = "/local/domain/7/device/console/1";

    /// A XenStore with domain 7 in it, and dom0's connection to it.
    fn store() -> (tempfile::TempDir, xenstore::server::ServerHandle, Client) {
        let dir = tempfile::tempdir().unwrap();
        let config = xenstore::server::ServerConfig::new(dir.path().join("socket"));
        let server = xenstore::server::ServerHandle::spawn(config).unwrap();
        server.domain_exists(GUEST.0).unwrap();
        let store = Client::connect_unix(server.socket_path()).unwrap();
        (dir, server, store)
    }

    /// A node as the guest could have made it in its own directory.
    fn guest_node(store: &Client, path: &str, value: &str) {
        store.write(path, value.as_bytes()).unwrap();
        let owned = Perms::new(vec![Perm::new(Access::None, GUEST.0)]).unwrap();
        store.set_perms(path, &owned).unwrap();
    }

    fn toolstack_node(store: &Client, path: &str, value: &str) {
        store.write(path, value.as_bytes()).unwrap();
        let ro = Perms::new(vec![
            Perm::new(Access::None, 0),
            Perm::new(Access::Read, GUEST.0),
        ])
        .unwrap();
        store.set_perms(path, &ro).unwrap();
    }

    #[test]
    fn a_limit_the_guest_can_write_is_not_honoured() {
        let (_dir, _server, store) = store();
        guest_node(&store, &format!("{FE}/limit"), "1000000000000");

        assert_eq!(limit(&store, FE, GUEST).unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn a_limit_the_toolstack_wrote_read_only_is_honoured() {
        let (_dir, _server, store) = store();
        toolstack_node(&store, &format!("{FE}/limit"), "4096");

        assert_eq!(limit(&store, FE, GUEST).unwrap(), 4096);
    }

    /// A platform the test never reaches: declining must not touch Xen.
    struct NoXen;
    impl Platform for NoXen {
        fn domid(&self) -> DomId {
            DomId(0)
        }
        fn event_channels(&self) -> platform::Result<Box<dyn platform::EventChannels>> {
            unreachable!("no event channel for a declined console")
        }
        fn grant_mapper(&self) -> &dyn platform::GrantMapper {
            unreachable!("no grant map for a declined console")
        }
        fn foreign_mapper(&self) -> &dyn platform::ForeignMapper {
            unreachable!("no foreign map for a declined console")
        }
    }

    #[test]
    fn a_console_of_another_type_is_left_untouched_for_its_daemon() {
        // Found on real Xen: xl's `channel` makes a secondary console of
        // type `ioemu` for QEMU. Declining it only after announcing InitWait
        // set QEMU's backend to Closing, and QEMU refused the device
        // ("initial backend state is wrong (Closing)").
        let (_dir, _server, store) = store();
        let be = "/local/domain/0/backend/console/7/1";
        store
            .transaction(|tx| -> Result<(), xenstore::client::Error> {
                for (n, v) in [
                    ("frontend", FE),
                    ("frontend-id", "7"),
                    ("online", "1"),
                    ("state", "1"),
                ] {
                    tx.write(&format!("{be}/{n}"), v.as_bytes())?;
                }
                for (n, v) in [
                    ("backend", be),
                    ("backend-id", "0"),
                    ("state", "1"),
                    ("type", "ioemu"),
                ] {
                    tx.write(&format!("{FE}/{n}"), v.as_bytes())?;
                }
                Ok(())
            })
            .unwrap();
        let store = Arc::new(store);
        let mut bus = xenbus::XenBus::new(store.clone(), DomId(0));
        let opts = ConsoleOptions {
            serve_types: vec!["xenconsoled".into()],
            ..ConsoleOptions::default()
        };
        bus.register(Box::new(ConsoleType {
            platform: Arc::new(NoXen),
            shared: Arc::new(Mutex::new(Shared::default())),
            opts,
        }))
        .unwrap();
        bus.start().unwrap();

        bus.rescan();

        assert_eq!(store.read(&format!("{be}/state")).unwrap(), b"1");
        assert!(store.read(&format!("{be}/hotplug-status")).is_err());
        assert_eq!(store.read(&format!("{FE}/state")).unwrap(), b"1");
    }

    #[test]
    fn the_primary_consoles_backend_directory_is_declined_not_failed() {
        let (_dir, _server, store) = store();
        let mut ty = ConsoleType {
            platform: Arc::new(NoXen),
            shared: Arc::new(Mutex::new(Shared::default())),
            opts: ConsoleOptions::default(),
        };
        let info = DeviceInfo {
            backend_type: "console",
            backend_id: DomId(0),
            frontend_id: GUEST,
            devid: 0,
            backend_path: "/local/domain/0/backend/console/7/0".into(),
            frontend_path: "/local/domain/7/console".into(),
            options: Default::default(),
        };

        let err = ty.create(&store, &info).err().expect("declined");

        assert!(matches!(err, DeviceError::Declined(_)), "{err:?}");
    }

    #[test]
    fn a_tty_node_the_guest_made_is_taken_over_read_only() {
        let (_dir, _server, store) = store();
        let path = format!("{FE}/tty");
        guest_node(&store, &path, "/dev/sda");
        let pty = crate::sink::pty::PtySink::open().unwrap();
        let id = ConsoleId {
            domid: GUEST,
            devid: 1,
        };

        publish_tty(&store, DomId::DOM0, id, FE, &pty).unwrap();

        let perms = store.get_perms(&path).unwrap();
        assert!(!perms.access_for(GUEST.0, None).can_write(), "{perms:?}");
        let tty = pty.tty().unwrap();
        assert_eq!(store.read(&path).unwrap(), tty.to_string_lossy().as_bytes());
    }
}
