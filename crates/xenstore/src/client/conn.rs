//! One connection to xenstored: a writer shared by all callers and a reader
//! thread that routes replies.
//!
//! Invariants:
//! * A whole request is written under the writer lock, so messages from
//!   different threads never interleave on the stream.
//! * Every in-flight request has an entry in `Pending::waiters` keyed by its
//!   `req_id`; the reader removes the entry when the reply comes, the caller
//!   removes it when it gives up. Routing never blocks the reader.
//! * When the reader stops (EOF, error, framing error, or shutdown) it sets
//!   `closed` and drops every waiter, so each pending call wakes with
//!   `Closed`; `closed` is checked under the same lock before a new request
//!   registers, so no later call can wait forever.
//! * A failed write may have sent half a message; the stream is then useless
//!   and the connection is shut down.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{send, SendFlags};

use super::watch::{EventQueue, WatchEvent};
use super::Error;
use crate::wire::{FrameDecoder, FrameError, Header, Message, MsgType};
use crate::wire::{HEADER_LEN, PAYLOAD_MAX, XENBUS_DEV_PAYLOAD_MAX};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The byte stream to xenstored.
#[derive(Debug)]
pub(crate) enum Transport {
    Socket(UnixStream),
    /// Linux's `/dev/xen/xenbus` (or anything else opened as a file).
    Device(File),
}

impl Transport {
    fn try_clone(&self) -> io::Result<Transport> {
        Ok(match self {
            Transport::Socket(s) => Transport::Socket(s.try_clone()?),
            Transport::Device(f) => Transport::Device(f.try_clone()?),
        })
    }

    /// Largest request payload the transport accepts.
    pub(crate) fn max_request(&self) -> usize {
        match self {
            Transport::Socket(_) => PAYLOAD_MAX,
            Transport::Device(_) => XENBUS_DEV_PAYLOAD_MAX,
        }
    }

    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Socket(s) => send_all(s, bytes),
            Transport::Device(f) => (&*f).write_all(bytes),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Socket(s) => (&*s).read(buf),
            Transport::Device(f) => (&*f).read(buf),
        }
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Transport::Socket(s) => s.set_write_timeout(Some(timeout)),
            Transport::Device(_) => Ok(()),
        }
    }

    fn shutdown(&self) {
        if let Transport::Socket(s) = self {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// `send(MSG_NOSIGNAL)`: a dead peer must be an error, not SIGPIPE.
fn send_all(socket: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match send(socket, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Transport::Socket(s) => s.as_fd(),
            Transport::Device(f) => f.as_fd(),
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    closed: bool,
    next_req_id: u32,
    waiters: HashMap<u32, SyncSender<Message>>,
}

impl Pending {
    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.next_req_id;
            self.next_req_id = id.wrapping_add(1);
            if !self.waiters.contains_key(&id) {
                return id;
            }
        }
    }
}

/// State the reader thread shares with the callers.
#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    events: Arc<EventQueue>,
    /// eventfd that tells the reader to stop.
    stop: OwnedFd,
}

impl Shared {
    fn register(&self) -> Option<(u32, Receiver<Message>)> {
        let mut p = lock(&self.pending);
        if p.closed {
            return None;
        }
        let id = p.fresh_id();
        let (tx, rx) = sync_channel(1);
        p.waiters.insert(id, tx);
        Some((id, rx))
    }

    fn forget(&self, req_id: u32) {
        lock(&self.pending).waiters.remove(&req_id);
    }

    fn close(&self) {
        let waiters = {
            let mut p = lock(&self.pending);
            p.closed = true;
            std::mem::take(&mut p.waiters)
        };
        drop(waiters);
        self.events.close();
    }

    fn dispatch(&self, msg: Message) {
        if msg.kind() == Some(MsgType::WatchEvent) {
            match WatchEvent::parse(&msg.payload) {
                Some(event) => self.events.push(event),
                None => tracing::warn!("malformed WATCH_EVENT dropped"),
            }
            return;
        }
        let waiter = lock(&self.pending).waiters.remove(&msg.req_id);
        match waiter {
            // Capacity 1 and one reply per entry: this never blocks.
            Some(tx) => drop(tx.try_send(msg)),
            None => tracing::debug!(req_id = msg.req_id, "reply nobody waits for dropped"),
        }
    }
}

/// What a caller sends: the type, transaction and payload, plus the node
/// path (or domid) named in errors.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub op: MsgType,
    pub tx_id: u32,
    pub path: &'a str,
    pub payload: Vec<u8>,
}

impl Request<'_> {
    fn encode(&self, req_id: u32) -> Vec<u8> {
        let header = Header {
            msg_type: self.op as u32,
            req_id,
            tx_id: self.tx_id,
            len: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.payload.len());
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    fn timeout(&self) -> Error {
        Error::Timeout {
            op: self.op,
            path: self.path.to_owned(),
        }
    }
}

/// The open connection; dropping it stops and joins the reader.
#[derive(Debug)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    writer: Mutex<Transport>,
    reader: Option<JoinHandle<()>>,
    max_request: usize,
}

impl Connection {
    pub(crate) fn start(transport: Transport) -> Result<Connection, Error> {
        let io = |op| move |source| Error::Io { op, source };
        let reader_side = transport.try_clone().map_err(io("duplicate fd"))?;
        let events = EventQueue::new().map_err(io("create eventfd"))?;
        let stop =
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| Error::Io {
                op: "create eventfd",
                source: e.into(),
            })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            events: Arc::new(events),
            stop,
        });
        let for_reader = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("xenstore-reader".into())
            .spawn(move || read_loop(&for_reader, &reader_side))
            .map_err(io("spawn reader thread"))?;
        Ok(Connection {
            shared,
            max_request: transport.max_request(),
            writer: Mutex::new(transport),
            reader: Some(reader),
        })
    }

    pub(crate) fn max_request(&self) -> usize {
        self.max_request
    }

    pub(crate) fn events(&self) -> Arc<EventQueue> {
        Arc::clone(&self.shared.events)
    }

    pub(crate) fn set_write_timeout(&self, timeout: Duration) -> Result<(), Error> {
        lock(&self.writer)
            .set_write_timeout(timeout)
            .map_err(|source| Error::Io {
                op: "set write timeout",
                source,
            })
    }

    /// Sends `req` and waits up to `timeout` for its reply.
    pub(crate) fn call(&self, req: &Request<'_>, timeout: Duration) -> Result<Message, Error> {
        let (req_id, rx) = self.shared.register().ok_or(Error::Closed)?;
        if let Err(e) = self.send(&req.encode(req_id)) {
            self.shared.forget(req_id);
            return Err(write_error(req, e));
        }
        match rx.recv_timeout(timeout) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                self.shared.forget(req_id);
                Err(req.timeout())
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// Sends `req` without waiting; its reply is discarded when it comes.
    pub(crate) fn send_only(&self, req: &Request<'_>) {
        let req_id = lock(&self.shared.pending).fresh_id();
        if let Err(e) = self.send(&req.encode(req_id)) {
            tracing::debug!(op = ?req.op, error = %e, "unanswered request not sent");
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let writer = lock(&self.writer);
        let r = writer.write_all(bytes);
        if r.is_err() {
            writer.shutdown();
            self.shared.close();
        }
        r
    }
}

fn write_error(req: &Request<'_>, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => req.timeout(),
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::NotConnected => Error::Closed,
        _ => Error::Io {
            op: "write request",
            source: e,
        },
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Err(e) = rustix::io::write(&self.shared.stop, &1u64.to_ne_bytes()) {
            tracing::warn!(error = %e, "cannot signal XenStore reader to stop");
        }
        lock(&self.writer).shutdown();
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                tracing::warn!("XenStore reader thread panicked");
            }
        }
        self.shared.close();
    }
}

/// The reader thread: frame replies and events until the stream ends or the
/// client stops it, then close.
fn read_loop(shared: &Shared, transport: &Transport) {
    let mut decoder = FrameDecoder::new(PAYLOAD_MAX);
    let mut buf = vec![0u8; HEADER_LEN + PAYLOAD_MAX];
    let why = loop {
        match wait_readable(transport, &shared.stop) {
            Ok(true) => {}
            Ok(false) => break "client closed".to_owned(),
            Err(e) => break format!("poll: {e}"),
        }
        let n = match transport.read(&mut buf) {
            Ok(0) => break "end of stream".to_owned(),
            Ok(n) => n,
            Err(e) if retryable(&e) => continue,
            Err(e) => break format!("read: {e}"),
        };
        decoder.push(&buf[..n]);
        if let Err(e) = route_all(shared, &mut decoder) {
            break format!("framing: {e}");
        }
    };
    tracing::debug!(reason = %why, "XenStore connection closed");
    transport.shutdown();
    shared.close();
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

fn route_all(shared: &Shared, decoder: &mut FrameDecoder) -> Result<(), FrameError> {
    while let Some(msg) = decoder.next_message()? {
        shared.dispatch(msg);
    }
    Ok(())
}

/// Blocks until the stream has something (`true`) or stop is signalled.
fn wait_readable(transport: &Transport, stop: &OwnedFd) -> io::Result<bool> {
    let mut fds = [
        PollFd::new(transport, PollFlags::IN),
        PollFd::new(stop, PollFlags::IN),
    ];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fds[1].revents().is_empty())
}
