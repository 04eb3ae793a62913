//! The emulated Xen as a service: the [`Hypervisor`] on Unix sockets, the
//! project's XenStore server beside it, and a toolstack that builds and
//! destroys domains in both the way `xl` does.
//!
//! Sockets under the run directory:
//! * `xen` — dom0's hypervisor socket (privileged: toolstack verbs too);
//! * `xen-domains/<domid>` — a domain's own hypervisor socket;
//! * `xenstored` and `xenstore-domains/<domid>` — the same for XenStore.
//!
//! A process that connects to a domain's socket acts as that domain, so the
//! directory's permissions are the trust boundary, as `/dev/xen` is on a
//! real host. One thread serves each connection; when it closes (the
//! process exited or died, or its thread panicked) its ports close and its
//! mappings are released. A guest may hold at most
//! [`MAX_GUEST_CONNECTIONS`] connections at once; further ones are closed
//! on accept. Every connection, dom0's included, is tracked so that
//! destroying a domain, or dropping the [`Emulator`], cuts it off and its
//! thread ends.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use xenstore::server::{ServerConfig, ServerHandle};

use super::hypervisor::{ConnId, Hypervisor, PortFds, PortState, Refusal};
use super::proto;
use super::toolstack::{self, ConsoleSpec};
use crate::types::{DomId, EvtchnPort, Gfn, GrantRef};

/// Connections (hence serving threads) one guest domain may hold at once:
/// one per event-channel handle, plus its platform handle.
pub const MAX_GUEST_CONNECTIONS: usize = 64;

/// Paths of a running emulator.
#[derive(Debug, Clone)]
pub struct EmuPaths {
    pub dir: PathBuf,
}

impl EmuPaths {
    pub fn new(dir: impl Into<PathBuf>) -> EmuPaths {
        EmuPaths { dir: dir.into() }
    }
    /// dom0's hypervisor socket.
    pub fn xen(&self) -> PathBuf {
        self.dir.join("xen")
    }
    /// A domain's hypervisor socket.
    pub fn xen_domain(&self, d: DomId) -> PathBuf {
        self.dir.join("xen-domains").join(d.to_string())
    }
    /// dom0's XenStore socket (what `XENSTORED_PATH` names).
    pub fn xenstored(&self) -> PathBuf {
        self.dir.join("xenstored")
    }
    /// A domain's XenStore socket.
    pub fn xenstore_domain(&self, d: DomId) -> PathBuf {
        self.dir.join("xenstore-domains").join(d.to_string())
    }
}

struct Shared {
    hv: Mutex<Hypervisor>,
    xenstore: ServerHandle,
    paths: EmuPaths,
    store: xenstore::client::Client,
    next_conn: AtomicU64,
    /// Listening sockets of domains, and their live connections, so that
    /// destroying a domain cuts its processes off.
    domain_socks: Mutex<HashMap<DomId, DomainSockets>>,
}

#[derive(Default)]
struct DomainSockets {
    listener: Option<Arc<OwnedFd>>,
    conns: HashMap<ConnId, Arc<OwnedFd>>,
}

impl Shared {
    fn hv(&self) -> MutexGuard<'_, Hypervisor> {
        self.hv.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn socks(&self) -> MutexGuard<'_, HashMap<DomId, DomainSockets>> {
        self.domain_socks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running emulated Xen. Dropping it closes every listener and every
/// connection, so all its threads end.
pub struct Emulator {
    shared: Arc<Shared>,
    dom0_listener: Arc<OwnedFd>,
}

impl Emulator {
    /// Starts XenStore and the hypervisor under `dir`.
    pub fn start(dir: impl Into<PathBuf>) -> io::Result<Emulator> {
        let paths = EmuPaths::new(dir);
        std::fs::create_dir_all(paths.dir.join("xen-domains"))?;
        let mut cfg = ServerConfig::new(paths.xenstored());
        cfg.domain_socket_dir = Some(paths.dir.join("xenstore-domains"));
        let xenstore = ServerHandle::spawn(cfg)?;
        let store =
            xenstore::client::Client::connect_unix(paths.xenstored()).map_err(io::Error::other)?;
        toolstack::init_dom0(&store).map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            hv: Mutex::new(Hypervisor::new()),
            xenstore,
            paths: paths.clone(),
            store,
            next_conn: AtomicU64::new(1),
            domain_socks: Mutex::new(HashMap::new()),
        });
        let dom0_listener = Arc::new(proto::listen(&paths.xen())?);
        shared.socks().insert(
            DomId::DOM0,
            DomainSockets {
                listener: Some(dom0_listener.clone()),
                conns: HashMap::new(),
            },
        );
        spawn_acceptor(shared.clone(), dom0_listener.clone(), DomId::DOM0)?;
        tracing::info!(dir = %paths.dir.display(), "emulated Xen running");
        Ok(Emulator {
            shared,
            dom0_listener,
        })
    }

    pub fn paths(&self) -> &EmuPaths {
        &self.shared.paths
    }

    /// Builds a domain as `xl create` would; returns its id.
    pub fn create_domain(&self, name: &str, pages: usize) -> Result<DomId, String> {
        create_domain(&self.shared, name, pages)
    }

    pub fn destroy_domain(&self, d: DomId) -> Result<(), String> {
        destroy_domain(&self.shared, d)
    }

    /// Adds a secondary console's backend and frontend dirs as libxl does.
    pub fn add_console(&self, d: DomId, spec: &ConsoleSpec) -> Result<(), String> {
        toolstack::add_console(&self.shared.store, d, spec).map_err(|e| e.to_string())
    }

    pub fn domains(&self) -> Vec<super::hypervisor::DomainInfo> {
        self.shared.hv().list()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&*self.dom0_listener, rustix::net::Shutdown::Both);
        let socks: Vec<DomainSockets> = self.shared.socks().drain().map(|(_, s)| s).collect();
        for s in socks {
            cut_off(&s);
        }
    }
}

fn cut_off(s: &DomainSockets) {
    if let Some(l) = &s.listener {
        let _ = rustix::net::shutdown(&**l, rustix::net::Shutdown::Both);
    }
    for c in s.conns.values() {
        let _ = rustix::net::shutdown(&**c, rustix::net::Shutdown::Both);
    }
}

fn create_domain(shared: &Arc<Shared>, name: &str, pages: usize) -> Result<DomId, String> {
    let (domid, info) = shared
        .hv()
        .create_domain(name, pages, DomId::DOM0)
        .map_err(|r| r.0)?;
    let listener = proto::listen(&shared.paths.xen_domain(domid)).map_err(|e| e.to_string());
    let listener = match listener {
        Ok(l) => Arc::new(l),
        Err(e) => {
            let _ = shared.hv().destroy_domain(domid);
            return Err(e);
        }
    };
    shared.socks().entry(domid).or_default().listener = Some(listener.clone());
    if let Err(e) = shared.xenstore.domain_exists(domid.0) {
        let _ = destroy_domain(shared, domid);
        return Err(e.to_string());
    }
    if let Err(e) = spawn_acceptor(shared.clone(), listener, domid) {
        let _ = destroy_domain(shared, domid);
        return Err(e.to_string());
    }
    if let Err(e) = toolstack::build_domain(&shared.store, domid, name, info) {
        let _ = destroy_domain(shared, domid);
        return Err(e.to_string());
    }
    tracing::info!(domid = %domid, name, "domain created");
    Ok(domid)
}

fn destroy_domain(shared: &Arc<Shared>, d: DomId) -> Result<(), String> {
    shared.hv().destroy_domain(d).map_err(|r| r.0)?;
    if let Some(s) = shared.socks().remove(&d) {
        cut_off(&s);
    }
    let _ = std::fs::remove_file(shared.paths.xen_domain(d));
    toolstack::release_domain(&shared.store, d).map_err(|e| e.to_string())?;
    tracing::info!(domid = %d, "domain destroyed");
    Ok(())
}

fn spawn_acceptor(shared: Arc<Shared>, listener: Arc<OwnedFd>, domid: DomId) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("xen-accept-{domid}"))
        .spawn(move || loop {
            match proto::accept(listener.as_fd()) {
                Ok(sock) => admit(&shared, domid, sock),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INTR.raw_os_error()) => {
                    continue
                }
                Err(_) => return,
            }
        })?;
    Ok(())
}

/// Registers a new connection of `domid` and starts its thread; closes it
/// instead if the domain is gone (destroyed while this connection waited
/// to be accepted: it must not outlive the cut-off) or already holds as
/// many connections as a guest may.
fn admit(shared: &Arc<Shared>, domid: DomId, sock: OwnedFd) {
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let sock = Arc::new(sock);
    {
        let mut socks = shared.socks();
        let Some(entry) = socks.get_mut(&domid) else {
            tracing::info!(domid = %domid, "connection for a domain that is gone closed");
            return;
        };
        if domid != DomId::DOM0 && entry.conns.len() >= MAX_GUEST_CONNECTIONS {
            tracing::warn!(
                domid = %domid,
                limit = MAX_GUEST_CONNECTIONS,
                "refused a connection: domain holds too many"
            );
            return;
        }
        entry.conns.insert(conn, sock.clone());
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("xen-d{domid}-c{conn}"))
        .stack_size(128 * 1024)
        .spawn(move || serve_connection(&s, domid, conn, &sock));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not serve a connection");
        if let Some(entry) = shared.socks().get_mut(&domid) {
            entry.conns.remove(&conn);
        }
    }
}

/// Releases what a connection held when its thread ends, even by a panic.
struct ConnectionCleanup<'a> {
    shared: &'a Shared,
    domid: DomId,
    conn: ConnId,
}

impl Drop for ConnectionCleanup<'_> {
    fn drop(&mut self) {
        let (domid, conn) = (self.domid, self.conn);
        self.shared.hv().connection_closed(domid, conn);
        if let Some(s) = self.shared.socks().get_mut(&domid) {
            s.conns.remove(&conn);
        }
        tracing::debug!(domid = %domid, conn, "hypervisor connection closed");
    }
}

fn serve_connection(shared: &Arc<Shared>, domid: DomId, conn: ConnId, sock: &OwnedFd) {
    tracing::debug!(domid = %domid, conn, "hypervisor connection opened");
    let _cleanup = ConnectionCleanup {
        shared,
        domid,
        conn,
    };
    while let Ok(Some(req)) = proto::recv(sock.as_fd()) {
        let reply = handle(shared, domid, conn, &req);
        let sent = match reply {
            Ok(Reply { text, fds }) => {
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                proto::send(sock.as_fd(), &format!("ok {text}"), &borrowed)
            }
            Err(reason) => {
                tracing::info!(domid = %domid, conn, request = %req.text, %reason, "refused");
                proto::send(sock.as_fd(), &format!("err {reason}"), &[])
            }
        };
        if sent.is_err() {
            break;
        }
    }
}

struct Reply {
    text: String,
    fds: Vec<Arc<OwnedFd>>,
}

impl Reply {
    fn text(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            fds: Vec::new(),
        }
    }
    fn port(p: PortFds) -> Reply {
        Reply {
            text: p.port.to_string(),
            fds: vec![p.wait, p.kick],
        }
    }
    fn page(fd: Arc<OwnedFd>) -> Reply {
        Reply {
            text: String::new(),
            fds: vec![fd],
        }
    }
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize) -> Result<T, String> {
    words
        .get(i)
        .ok_or_else(|| format!("missing argument {i}"))?
        .parse()
        .map_err(|_| format!("bad argument {:?}", words[i]))
}

fn flag(words: &[&str], i: usize) -> Result<bool, String> {
    match words.get(i) {
        Some(&"1") => Ok(true),
        Some(&"0") => Ok(false),
        _ => Err(format!("argument {i} must be 0 or 1")),
    }
}

fn refusal(r: Refusal) -> String {
    r.0
}

fn handle(
    shared: &Arc<Shared>,
    caller: DomId,
    conn: ConnId,
    req: &proto::Packet,
) -> Result<Reply, String> {
    let w = req.words();
    let verb = *w.first().ok_or("empty request")?;
    let toolstack = matches!(
        verb,
        "create" | "destroy" | "list" | "add_console" | "alloc_unbound_for"
    );
    if toolstack && caller != DomId::DOM0 {
        return Err(format!("{verb} is for the toolstack in dom0"));
    }
    match verb {
        "whoami" => Ok(Reply::text(caller.to_string())),
        "alloc_unbound" => {
            let remote = DomId(arg(&w, 1)?);
            shared
                .hv()
                .alloc_unbound(caller, Some(conn), caller, remote)
                .map(Reply::port)
                .map_err(refusal)
        }
        "alloc_unbound_for" => {
            let (owner, remote) = (DomId(arg(&w, 1)?), DomId(arg(&w, 2)?));
            let p = shared
                .hv()
                .alloc_unbound(caller, None, owner, remote)
                .map_err(refusal)?;
            Ok(Reply::text(p.port.to_string()))
        }
        "adopt" => shared
            .hv()
            .adopt_port(caller, conn, EvtchnPort(arg(&w, 1)?))
            .map(Reply::port)
            .map_err(refusal),
        "bind" => {
            let (remote, port) = (DomId(arg(&w, 1)?), EvtchnPort(arg(&w, 2)?));
            shared
                .hv()
                .bind_interdomain(caller, conn, remote, port)
                .map(Reply::port)
                .map_err(refusal)
        }
        "close" => shared
            .hv()
            .close_port(caller, conn, EvtchnPort(arg(&w, 1)?))
            .map(|()| Reply::text(""))
            .map_err(refusal),
        "status" => match shared
            .hv()
            .port_status(caller, EvtchnPort(arg(&w, 1)?))
            .map_err(refusal)?
        {
            PortState::Unbound { remote } => Ok(Reply::text(format!("unbound {remote}"))),
            PortState::Interdomain {
                remote,
                remote_port,
            } => Ok(Reply::text(format!("interdomain {remote} {remote_port}"))),
        },
        "grant" => {
            let (to, gfn, ro) = (DomId(arg(&w, 1)?), Gfn(arg(&w, 2)?), flag(&w, 3)?);
            shared
                .hv()
                .grant_access(caller, to, gfn, ro)
                .map(|r| Reply::text(r.to_string()))
                .map_err(refusal)
        }
        "end_grant" => shared
            .hv()
            .end_access(caller, GrantRef(arg(&w, 1)?))
            .map(|()| Reply::text(""))
            .map_err(refusal),
        "map_grant" => {
            let (owner, gref, writable) = (DomId(arg(&w, 1)?), GrantRef(arg(&w, 2)?), flag(&w, 3)?);
            shared
                .hv()
                .map_grant(caller, conn, owner, gref, writable)
                .map(Reply::page)
                .map_err(refusal)
        }
        "unmap_grant" => {
            shared
                .hv()
                .unmap_grant(conn, DomId(arg(&w, 1)?), GrantRef(arg(&w, 2)?));
            Ok(Reply::text(""))
        }
        "map_foreign" => {
            let (owner, gfn) = (DomId(arg(&w, 1)?), Gfn(arg(&w, 2)?));
            shared
                .hv()
                .map_foreign(caller, owner, gfn)
                .map(Reply::page)
                .map_err(refusal)
        }
        "page" => shared
            .hv()
            .own_page(caller, Gfn(arg(&w, 1)?))
            .map(Reply::page)
            .map_err(refusal),
        "start_info" => {
            let si = shared.hv().start_info(caller).map_err(refusal)?;
            Ok(Reply::text(format!(
                "{} {}",
                si.console_gfn, si.console_port
            )))
        }
        "create" => {
            let name: String = arg(&w, 1)?;
            let d = create_domain(shared, &name, arg(&w, 2)?)?;
            Ok(Reply::text(d.to_string()))
        }
        "destroy" => destroy_domain(shared, DomId(arg(&w, 1)?)).map(|()| Reply::text("")),
        "add_console" => {
            let spec = ConsoleSpec::from_words(w.get(2..).unwrap_or_default())?;
            toolstack::add_console(&shared.store, DomId(arg(&w, 1)?), &spec)
                .map(|()| Reply::text(""))
                .map_err(|e| e.to_string())
        }
        "list" => {
            let list = shared.hv().list();
            let words: Vec<String> = list
                .iter()
                .map(|i| format!("{}:{}:{}", i.domid, i.name, i.pages))
                .collect();
            Ok(Reply::text(words.join(" ")))
        }
        _ => Err(format!("unknown request {verb:?}")),
    }
}

/// Where the emulator of a run directory listens (for clients).
pub fn socket_for(dir: &Path, domid: DomId) -> PathBuf {
    let p = EmuPaths::new(dir);
    if domid == DomId::DOM0 {
        p.xen()
    } else {
        p.xen_domain(domid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Emulators of this module's tests name their threads alike: one at a time.
    static ONE_EMULATOR: Mutex<()> = Mutex::new(());

    /// Names of this process's threads that start with `prefix`.
    fn threads(prefix: &str) -> Vec<String> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_owned())
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{what}");
    }

    #[test]
    fn destroying_a_domain_and_dropping_the_emulator_end_every_thread() {
        let _one = ONE_EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(dir.path().join("run")).unwrap();
        let d = emu.create_domain("g", 1).unwrap();
        let guest = crate::emu::EmuGuest::connect(emu.paths().xen_domain(d)).unwrap();
        let dom0 = crate::emu::EmuPlatform::connect(emu.paths().xen()).unwrap();
        let (accept_d, conn_d) = (format!("xen-accept-{d}"), format!("xen-d{d}-"));
        assert_eq!(threads(&accept_d).len(), 1);
        assert_eq!(threads(&conn_d).len(), 1);
        emu.destroy_domain(d).unwrap();
        eventually("domain threads still running", || {
            threads(&accept_d).is_empty() && threads(&conn_d).is_empty()
        });
        assert_eq!(threads("xen-d0-").len(), 1);
        drop(emu);
        eventually("dom0 threads still running", || {
            threads("xen-accept-0").is_empty() && threads("xen-d0-").is_empty()
        });
        drop((guest, dom0));
    }

    #[test]
    fn a_connection_accepted_after_its_domain_was_destroyed_is_closed_not_served() {
        let _one = ONE_EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(dir.path().join("run")).unwrap();
        let d = emu.create_domain("g", 1).unwrap();
        emu.destroy_domain(d).unwrap();
        // The acceptor had this connection in hand when the domain went:
        // it used to re-create the domain's entry and serve it as `d`,
        // beyond the reach of the cut-off (and as a later domain `d`).
        let (ours, theirs) = proto::pair().unwrap();
        admit(&emu.shared, d, theirs);
        assert!(!emu.shared.socks().contains_key(&d));
        proto::send(ours.as_fd(), "whoami", &[]).ok();
        assert!(proto::recv(ours.as_fd()).unwrap().is_none());
        drop(emu);
        eventually("threads of the emulator still running", || {
            threads("xen-").is_empty()
        });
    }
}
