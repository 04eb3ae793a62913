//! Serves [`Core`] on Unix sockets from one epoll thread.
//!
//! * The main socket is dom0's: its connections are privileged.
//! * With a domain socket directory, each introduced domain N gets a socket
//!   `<dir>/<N>` whose connections act as domain N. A process that can open
//!   it is that domain, so the directory's permissions are the boundary; an
//!   in-process emulator can instead hand a guest one end of a socket pair
//!   ([`ServerHandle::connect_as`]), which nothing can forge.
//! * Level-triggered: a connection is read until the socket is empty or a
//!   per-wakeup budget is spent; replies are written at once and the rest
//!   waits for `EPOLLOUT`. A client that does not read its replies stops
//!   being read (so it cannot grow our memory), and watch events beyond its
//!   output bound are dropped with a log line, as C xenstored drops events
//!   a guest leaves unread.
//! * A message longer than the 4096-byte payload limit closes that one
//!   connection, as Xen does; nobody else notices.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rustix::event::{epoll, eventfd, EventfdFlags};

use super::core::{Core, Effect};
use super::quota::Quotas;
use super::ConnId;
use crate::perms::DomId;
use crate::wire::{FrameDecoder, MsgType, PAYLOAD_MAX};

const TOKEN_WAKE: u64 = 0;
const TOKEN_MAIN: u64 = 1;
const KIND_SHIFT: u32 = 56;
const KIND_DOMAIN_LISTENER: u64 = 1;
const KIND_CONN: u64 = 2;
/// Bytes read from one connection per wakeup before others get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// Output bound for privileged connections, which have no quota in Xen.
const PRIVILEGED_OUTPUT_QUEUE: usize = 64 * 1024 * 1024;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The privileged (dom0) socket.
    pub socket: PathBuf,
    /// Where introduced domains get their own sockets, if anywhere.
    pub domain_socket_dir: Option<PathBuf>,
    pub quotas: Quotas,
}

impl ServerConfig {
    pub fn new(socket: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            socket: socket.into(),
            domain_socket_dir: None,
            quotas: Quotas::default(),
        }
    }
}

enum Command {
    Shutdown,
    Adopt {
        stream: UnixStream,
        domid: DomId,
        privileged: bool,
    },
    Introduce(DomId),
    Release(DomId),
    DomainExists(DomId, mpsc::Sender<()>),
}

struct Connection {
    stream: UnixStream,
    domid: DomId,
    privileged: bool,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    /// The interest currently registered with epoll.
    registered: epoll::EventFlags,
}

impl Connection {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn output_bound(&self, quotas: &Quotas) -> usize {
        if self.privileged {
            PRIVILEGED_OUTPUT_QUEUE
        } else {
            quotas.output_queue
        }
    }
}

/// The server: sockets, connections and the protocol core.
pub struct Server {
    config: ServerConfig,
    core: Core,
    epoll: OwnedFd,
    wake: OwnedFd,
    commands: mpsc::Receiver<Command>,
    main: UnixListener,
    domain_listeners: HashMap<DomId, (UnixListener, PathBuf)>,
    conns: HashMap<ConnId, Connection>,
    next_conn: ConnId,
}

/// Controls a server running on its own thread; dropping it stops the server.
pub struct ServerHandle {
    commands: mpsc::Sender<Command>,
    wake: OwnedFd,
    socket: PathBuf,
    domain_socket_dir: Option<PathBuf>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    // A stale socket from an earlier run would make bind fail.
    if std::fs::symlink_metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    }) {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Server {
    /// Binds the sockets. Nothing is served until [`Server::run`].
    pub fn bind(config: ServerConfig) -> io::Result<(Server, ServerControl)> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let main = bind_listener(&config.socket)?;
        if let Some(dir) = &config.domain_socket_dir {
            std::fs::create_dir_all(dir)?;
        }
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(TOKEN_WAKE),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &main,
            epoll::EventData::new_u64(TOKEN_MAIN),
            epoll::EventFlags::IN,
        )?;
        let (tx, rx) = mpsc::channel();
        let control = ServerControl {
            commands: tx,
            wake: wake.try_clone()?,
        };
        let server = Server {
            core: Core::new(config.quotas.clone()),
            config,
            epoll,
            wake,
            commands: rx,
            main,
            domain_listeners: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
        };
        Ok((server, control))
    }

    /// Serves until a shutdown command arrives.
    pub fn run(mut self) -> io::Result<()> {
        tracing::info!(socket = %self.config.socket.display(), "xenstored serving");
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut touched = HashSet::new();
            for ev in &events {
                let token = ev.data.u64();
                if token == TOKEN_WAKE {
                    if !self.on_wake() {
                        self.cleanup();
                        return Ok(());
                    }
                } else if token == TOKEN_MAIN {
                    self.accept_all(None);
                } else {
                    let id = token & ((1 << KIND_SHIFT) - 1);
                    match token >> KIND_SHIFT {
                        KIND_DOMAIN_LISTENER => self.accept_all(DomId::try_from(id).ok()),
                        KIND_CONN => self.on_conn_ready(id, ev.flags, &mut touched),
                        _ => {}
                    }
                }
                self.drain_core(&mut touched);
            }
            for id in touched {
                self.flush(id);
            }
        }
    }

    /// Handles queued commands; false means shut down.
    fn on_wake(&mut self) -> bool {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Shutdown => return false,
                Command::Adopt {
                    stream,
                    domid,
                    privileged,
                } => {
                    if let Err(e) = self.add_conn(stream, domid, privileged) {
                        tracing::warn!(error = %e, domid, "could not adopt connection");
                    }
                }
                Command::Introduce(domid) => self.core.introduce(domid),
                Command::Release(domid) => self.core.release_domain(domid),
                Command::DomainExists(domid, done) => {
                    self.core.domain_exists(domid);
                    let _ = done.send(());
                }
            }
        }
        true
    }

    fn accept_all(&mut self, domain: Option<DomId>) {
        loop {
            let listener = match domain {
                None => &self.main,
                Some(d) => match self.domain_listeners.get(&d) {
                    Some((l, _)) => l,
                    None => return,
                },
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    let (domid, privileged) = domain.map_or((0, true), |d| (d, false));
                    if let Err(e) = self.add_conn(stream, domid, privileged) {
                        tracing::warn!(error = %e, "could not register connection");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, stream: UnixStream, domid: DomId, privileged: bool) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let id = self.next_conn;
        self.next_conn += 1;
        let flags = epoll::EventFlags::IN;
        epoll::add(&self.epoll, &stream, conn_token(id), flags)?;
        self.core.connect(id, domid, privileged);
        tracing::debug!(conn = id, domid, privileged, "connection opened");
        self.conns.insert(
            id,
            Connection {
                stream,
                domid,
                privileged,
                decoder: FrameDecoder::new(PAYLOAD_MAX),
                out: Vec::new(),
                out_pos: 0,
                registered: flags,
            },
        );
        Ok(())
    }

    fn close(&mut self, id: ConnId, why: &str) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = epoll::delete(&self.epoll, &c.stream);
            tracing::debug!(conn = id, domid = c.domid, why, "connection closed");
        }
        self.core.disconnect(id);
    }

    fn on_conn_ready(
        &mut self,
        id: ConnId,
        flags: epoll::EventFlags,
        touched: &mut HashSet<ConnId>,
    ) {
        if flags.contains(epoll::EventFlags::OUT) {
            touched.insert(id);
        }
        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
        {
            self.read_conn(id, touched);
        }
    }

    /// Reads and handles whole requests until the socket is empty, the
    /// budget is spent, or the client's unread output is over its bound.
    fn read_conn(&mut self, id: ConnId, touched: &mut HashSet<ConnId>) {
        let mut buf = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.queued() > c.output_bound(&self.config.quotas) {
                break;
            }
            let n = match c.stream.read(&mut buf) {
                Ok(0) => return self.close(id, "peer closed"),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id, "read error"),
            };
            budget = budget.saturating_sub(n);
            c.decoder.push(&buf[..n]);
            if !self.handle_requests(id, touched) {
                return;
            }
        }
    }

    /// Handles every whole request buffered for `id`; false if it was closed.
    fn handle_requests(&mut self, id: ConnId, touched: &mut HashSet<ConnId>) -> bool {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return false;
            };
            match c.decoder.next_message() {
                Ok(Some(msg)) => {
                    self.core.handle(id, &msg);
                    self.drain_core(touched);
                }
                Ok(None) => return true,
                Err(e) => {
                    tracing::warn!(conn = id, domid = c.domid, error = %e, "closing connection");
                    self.close(id, "oversized message");
                    return false;
                }
            }
        }
    }

    /// Moves the core's output into connection buffers and carries out its
    /// effects.
    fn drain_core(&mut self, touched: &mut HashSet<ConnId>) {
        for (id, msg) in self.core.out.drain(..) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let is_event = msg.msg_type == MsgType::WatchEvent as u32;
            if is_event && c.queued() > c.output_bound(&self.config.quotas) {
                tracing::warn!(
                    conn = id,
                    domid = c.domid,
                    "client not reading: watch event dropped"
                );
                continue;
            }
            msg.encode_into(&mut c.out);
            touched.insert(id);
        }
        for effect in std::mem::take(&mut self.core.effects) {
            match effect {
                Effect::Close(id) => self.close(id, "domain released"),
                Effect::Introduced(domid) => self.open_domain_socket(domid),
                Effect::Released(domid) => self.close_domain_socket(domid),
            }
        }
    }

    fn open_domain_socket(&mut self, domid: DomId) {
        let Some(dir) = &self.config.domain_socket_dir else {
            return;
        };
        let path = dir.join(domid.to_string());
        let token =
            epoll::EventData::new_u64((KIND_DOMAIN_LISTENER << KIND_SHIFT) | u64::from(domid));
        let result = bind_listener(&path).and_then(|l| {
            epoll::add(&self.epoll, &l, token, epoll::EventFlags::IN)
                .map(|()| l)
                .map_err(io::Error::from)
        });
        match result {
            Ok(l) => {
                self.domain_listeners.insert(domid, (l, path));
            }
            Err(e) => tracing::warn!(domid, error = %e, "could not open domain socket"),
        }
    }

    fn close_domain_socket(&mut self, domid: DomId) {
        if let Some((l, path)) = self.domain_listeners.remove(&domid) {
            let _ = epoll::delete(&self.epoll, &l);
            let _ = std::fs::remove_file(path);
        }
    }

    /// Writes what is queued for `id`; waits for `EPOLLOUT` if the socket is
    /// full, and stops reading a client whose unread output is over bound.
    fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while c.queued() > 0 {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id, "write error"),
            }
        }
        if c.queued() == 0 {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos > 64 * 1024 {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        let mut want = epoll::EventFlags::empty();
        if c.queued() <= c.output_bound(&self.config.quotas) {
            want |= epoll::EventFlags::IN;
        }
        if c.queued() > 0 {
            want |= epoll::EventFlags::OUT;
        }
        if want != c.registered {
            if epoll::modify(&self.epoll, &c.stream, conn_token(id), want).is_err() {
                return self.close(id, "epoll modify failed");
            }
            c.registered = want;
        }
        // Requests may have piled up while reading was paused.
        if want.contains(epoll::EventFlags::IN) && c.decoder.pending() > 0 {
            let mut touched = HashSet::new();
            if self.handle_requests(id, &mut touched) {
                for t in touched.into_iter().filter(|t| *t != id) {
                    self.flush(t);
                }
            }
        }
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(&self.config.socket);
        let domains: Vec<DomId> = self.domain_listeners.keys().copied().collect();
        for d in domains {
            self.close_domain_socket(d);
        }
    }
}

fn conn_token(id: ConnId) -> epoll::EventData {
    epoll::EventData::new_u64((KIND_CONN << KIND_SHIFT) | id)
}

/// Sends commands to a running [`Server`] from other threads.
pub struct ServerControl {
    commands: mpsc::Sender<Command>,
    wake: OwnedFd,
}

impl ServerControl {
    fn send(&self, cmd: Command) -> io::Result<()> {
        self.commands
            .send(cmd)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "xenstored has stopped"))?;
        rustix::io::write(&self.wake, &1u64.to_ne_bytes())?;
        Ok(())
    }
}

impl ServerHandle {
    /// Binds the sockets and serves on a new thread.
    pub fn spawn(config: ServerConfig) -> io::Result<ServerHandle> {
        let socket = config.socket.clone();
        let domain_socket_dir = config.domain_socket_dir.clone();
        let (server, control) = Server::bind(config)?;
        let thread = std::thread::Builder::new()
            .name("xenstored".into())
            .spawn(move || server.run())?;
        Ok(ServerHandle {
            commands: control.commands,
            wake: control.wake,
            socket,
            domain_socket_dir,
            thread: Some(thread),
        })
    }

    fn control(&self) -> io::Result<ServerControl> {
        Ok(ServerControl {
            commands: self.commands.clone(),
            wake: self.wake.try_clone()?,
        })
    }

    /// The privileged socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The socket domain `domid` connects to once introduced.
    pub fn domain_socket_path(&self, domid: DomId) -> Option<PathBuf> {
        self.domain_socket_dir
            .as_ref()
            .map(|d| d.join(domid.to_string()))
    }

    /// A connection that acts as `domid`, unprivileged.
    pub fn connect_as(&self, domid: DomId) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        self.control()?.send(Command::Adopt {
            stream: ours,
            domid,
            privileged: false,
        })?;
        Ok(theirs)
    }

    /// Introduces a domain as the toolstack's INTRODUCE would.
    pub fn introduce(&self, domid: DomId) -> io::Result<()> {
        self.control()?.send(Command::Introduce(domid))
    }

    /// Tells the store that `domid` exists (before it is introduced), so
    /// permissions may name it; returns once the server has it.
    pub fn domain_exists(&self, domid: DomId) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.control()?.send(Command::DomainExists(domid, tx))?;
        rx.recv()
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "xenstored has stopped"))
    }

    /// Releases a domain as RELEASE would.
    pub fn release(&self, domid: DomId) -> io::Result<()> {
        self.control()?.send(Command::Release(domid))
    }

    /// Stops the server and waits for its thread.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.control().and_then(|c| c.send(Command::Shutdown));
        thread
            .join()
            .map_err(|_| io::Error::other("xenstored thread panicked"))?
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "xenstored did not stop cleanly");
        }
    }
}
