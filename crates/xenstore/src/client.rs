//! A XenStore client for xenstored's Unix socket or Linux's
//! `/dev/xen/xenbus`.
//!
//! Invariants:
//! * One [`Client`] is one connection. It is `Send + Sync`; every method
//!   takes `&self`, and any number of threads may have requests in flight.
//!   A reader thread frames everything the server sends and hands each reply
//!   to the caller whose `req_id` it echoes, in whatever order replies come.
//!   `WATCH_EVENT`s go, in order, to the queue behind [`Client::watch_events`].
//! * Every call is bounded by the client's timeout ([`Client::set_timeout`],
//!   default [`DEFAULT_TIMEOUT`]): a stalled server yields [`Error::Timeout`],
//!   never a hang. A reply that comes after its caller gave up is dropped.
//! * Once the connection dies, every pending and later call fails with
//!   [`Error::Closed`].
//! * A request whose payload exceeds the transport's limit (4096 bytes on a
//!   socket, 4080 through `/dev/xen/xenbus`) fails with [`Error::TooBig`] and
//!   is never sent: an oversized message makes xenstored drop the connection.
//! * Paths are sent as given; the server resolves relative ones under the
//!   caller's `/local/domain/<domid>`.
//! * Dropping the client closes the connection and joins the reader thread.
//!
//! Node operations are the [`XenStore`] trait, implemented both for the
//! client (outside any transaction) and for a [`Transaction`], so code that
//! reads and writes nodes is written once for both.

/// Implements [`XenStore`] for a type with a `scope()` (a connection, or
/// a transaction on it): every node operation is the scope's.
macro_rules! xenstore_via_scope {
    ($t:ty) => {
        impl XenStore for $t {
            fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
                self.scope().read(path)
            }
            fn write(&self, path: &str, value: &[u8]) -> Result<(), Error> {
                self.scope().write(path, value)
            }
            fn mkdir(&self, path: &str) -> Result<(), Error> {
                self.scope().mkdir(path)
            }
            fn rm(&self, path: &str) -> Result<(), Error> {
                self.scope().rm(path)
            }
            fn directory(&self, path: &str) -> Result<Vec<String>, Error> {
                self.scope().directory(path)
            }
            fn get_perms(&self, path: &str) -> Result<Perms, Error> {
                self.scope().get_perms(path)
            }
            fn set_perms(&self, path: &str, perms: &Perms) -> Result<(), Error> {
                self.scope().set_perms(path, perms)
            }
        }
    };
}

mod conn;
mod error;
mod node;
mod transaction;
mod watch;

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use conn::{lock, Connection, Request, Transport};
use node::{nul_args, Scope};

pub use error::Error;
pub use transaction::{Transaction, TRANSACTION_ATTEMPTS};
pub use watch::{WatchEvent, WatchEvents, MAX_QUEUED_EVENTS};

use crate::errno::XsErrno;
use crate::perms::{DomId, Perms};
use crate::wire::{Message, MsgType};

/// How long a call waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// xenstored's socket when neither `XENSTORED_PATH` nor `XENSTORED_RUNDIR`
/// says otherwise.
pub const DEFAULT_RUNDIR: &str = "/var/run/xenstored";
/// Linux's XenStore device, used when no xenstored socket exists.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// The node operations, for a client outside any transaction and for a
/// [`Transaction`] alike.
pub trait XenStore {
    /// The node's value, raw bytes.
    fn read(&self, path: &str) -> Result<Vec<u8>, Error>;
    /// Sets the value, creating the node (and missing parents) if needed.
    fn write(&self, path: &str, value: &[u8]) -> Result<(), Error>;
    /// Creates an empty node; succeeds if it exists.
    fn mkdir(&self, path: &str) -> Result<(), Error>;
    /// Removes the node and everything below it; succeeds if it is absent
    /// but its parent exists.
    fn rm(&self, path: &str) -> Result<(), Error>;
    /// The names (not paths) of the node's children.
    fn directory(&self, path: &str) -> Result<Vec<String>, Error>;
    fn get_perms(&self, path: &str) -> Result<Perms, Error>;
    fn set_perms(&self, path: &str, perms: &Perms) -> Result<(), Error>;

    /// Whether the node exists (`ENOENT` is `false`, other errors are errors).
    fn exists(&self, path: &str) -> Result<bool, Error> {
        match self.read(path) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A connection to a XenStore server; see the module documentation.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    timeout: Mutex<Duration>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<WatchEvents>();
};

/// The paths `open` tries, in order, as libxenstore picks them.
fn candidates(env: impl Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let var = |k| env(k).filter(|v: &OsString| !v.is_empty());
    if let Some(path) = var("XENSTORED_PATH") {
        return vec![PathBuf::from(path)];
    }
    let rundir =
        var("XENSTORED_RUNDIR").map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from);
    vec![rundir.join("socket"), PathBuf::from(XENBUS_DEVICE)]
}

impl Client {
    /// Connects the way libxenstore does: `$XENSTORED_PATH` if set (a socket
    /// is connected to, anything else opened as the device), else
    /// `$XENSTORED_RUNDIR/socket` (default `/var/run/xenstored/socket`),
    /// falling back to `/dev/xen/xenbus`.
    pub fn open() -> Result<Client, Error> {
        Client::open_first(&candidates(|k| std::env::var_os(k)))
    }

    /// The first candidate that opens. If none exists the error lists them
    /// all; if one exists but fails, the first such failure is returned.
    fn open_first(paths: &[PathBuf]) -> Result<Client, Error> {
        let mut failure = None;
        for path in paths {
            match Client::open_path(path) {
                Ok(client) => return Ok(client),
                Err(Error::NotFound { .. }) => {}
                Err(e) => {
                    let shown = path.display();
                    tracing::debug!(path = %shown, error = %e, "XenStore candidate failed");
                    failure.get_or_insert(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| Error::NotFound {
            tried: paths.to_vec(),
        }))
    }

    /// Opens `path`: a socket is connected to, anything else is opened as
    /// the xenbus device.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        match fs::metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => Client::connect_unix(path),
            Ok(_) => Client::open_device(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
                tried: vec![path.to_owned()],
            }),
            Err(source) => Err(Error::Open {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Connects to xenstored's Unix socket.
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        Client::from_unix_stream(stream)
    }

    /// Opens a xenbus character device (requests limited to 4080 bytes).
    pub fn open_device(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Client::start(Transport::Device(file))
    }

    /// Uses an already connected stream (e.g. one end of a socketpair).
    pub fn from_unix_stream(stream: UnixStream) -> Result<Client, Error> {
        stream.set_nonblocking(false).map_err(|source| Error::Io {
            op: "make socket blocking",
            source,
        })?;
        Client::start(Transport::Socket(stream))
    }

    fn start(transport: Transport) -> Result<Client, Error> {
        let client = Client {
            conn: Connection::start(transport)?,
            timeout: Mutex::new(DEFAULT_TIMEOUT),
        };
        client.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(client)
    }

    /// Sets how long each call waits for its reply (and for the socket to
    /// take its request). Zero is taken as one millisecond.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), Error> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.conn.set_write_timeout(timeout)?;
        *lock(&self.timeout) = timeout;
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        *lock(&self.timeout)
    }

    /// Largest request payload this connection's transport accepts.
    pub fn max_request(&self) -> usize {
        self.conn.max_request()
    }

    /// The queue of fired watches.
    pub fn watch_events(&self) -> WatchEvents {
        WatchEvents::new(self.conn.events())
    }

    /// Sends one request and returns the reply payload, or the typed error.
    pub(crate) fn request(&self, req: Request<'_>) -> Result<Vec<u8>, Error> {
        let max = self.conn.max_request();
        if req.payload.len() > max {
            return Err(Error::TooBig {
                op: req.op,
                path: req.path.to_owned(),
                len: req.payload.len(),
                max,
            });
        }
        let reply = self.conn.call(&req, self.timeout())?;
        reply_payload(&req, reply)
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            client: self,
            tx_id: 0,
        }
    }

    /// A request outside any transaction whose arguments are all strings.
    fn simple(&self, op: MsgType, subject: &str, args: &[&[u8]]) -> Result<Vec<u8>, Error> {
        self.request(Request {
            op,
            tx_id: 0,
            path: subject,
            payload: nul_args(op, subject, args)?,
        })
    }

    /// Registers a watch on `path` (or `@introduceDomain`, `@releaseDomain`);
    /// it fires once now and on every change at or below `path`.
    pub fn watch(&self, path: &str, token: impl AsRef<[u8]>) -> Result<(), Error> {
        self.simple(MsgType::Watch, path, &[path.as_bytes(), token.as_ref()])
            .map(drop)
    }

    pub fn unwatch(&self, path: &str, token: impl AsRef<[u8]>) -> Result<(), Error> {
        self.simple(MsgType::Unwatch, path, &[path.as_bytes(), token.as_ref()])
            .map(drop)
    }

    /// Drops every watch and transaction of this connection on the server.
    pub fn reset_watches(&self) -> Result<(), Error> {
        self.simple(MsgType::ResetWatches, "", &[b""]).map(drop)
    }

    /// Tells xenstored about a new domain's store page and event channel.
    pub fn introduce(&self, domid: DomId, gfn: u64, port: u32) -> Result<(), Error> {
        let (d, g, p) = (domid.to_string(), gfn.to_string(), port.to_string());
        self.simple(
            MsgType::Introduce,
            &d,
            &[d.as_bytes(), g.as_bytes(), p.as_bytes()],
        )
        .map(drop)
    }

    pub fn release(&self, domid: DomId) -> Result<(), Error> {
        let d = domid.to_string();
        self.simple(MsgType::Release, &d, &[d.as_bytes()]).map(drop)
    }

    pub fn is_domain_introduced(&self, domid: DomId) -> Result<bool, Error> {
        let d = domid.to_string();
        let reply = self.simple(MsgType::IsDomainIntroduced, &d, &[d.as_bytes()])?;
        match reply.strip_suffix(&[0]).unwrap_or(&reply) {
            b"T" => Ok(true),
            b"F" => Ok(false),
            other => Err(Error::Protocol(format!(
                "IsDomainIntroduced {d}: answered {other:?}"
            ))),
        }
    }

    /// `/local/domain/<domid>`, as the server names it.
    pub fn get_domain_path(&self, domid: DomId) -> Result<String, Error> {
        let d = domid.to_string();
        let reply = self.simple(MsgType::GetDomainPath, &d, &[d.as_bytes()])?;
        let text = reply.strip_suffix(&[0]).unwrap_or(&reply);
        String::from_utf8(text.to_vec())
            .map_err(|_| Error::Protocol(format!("GetDomainPath {d}: path is not UTF-8")))
    }

    /// Makes `domid` act with `target`'s permissions (a device model).
    pub fn set_target(&self, domid: DomId, target: DomId) -> Result<(), Error> {
        let (d, t) = (domid.to_string(), target.to_string());
        self.simple(MsgType::SetTarget, &d, &[d.as_bytes(), t.as_bytes()])
            .map(drop)
    }
}

/// The payload of a successful reply, or the error it carries.
fn reply_payload(req: &Request<'_>, reply: Message) -> Result<Vec<u8>, Error> {
    match reply.kind() {
        Some(MsgType::Error) => Err(error_reply(req, &reply.payload)),
        Some(kind) if kind == req.op => Ok(reply.payload),
        _ => Err(Error::Protocol(format!(
            "{:?} {:?}: reply has type {}",
            req.op, req.path, reply.msg_type
        ))),
    }
}

fn error_reply(req: &Request<'_>, payload: &[u8]) -> Error {
    let name = payload.strip_suffix(&[0]).unwrap_or(payload);
    let errno = std::str::from_utf8(name).ok().and_then(XsErrno::from_name);
    match errno {
        Some(errno) => Error::Xs {
            op: req.op,
            path: req.path.to_owned(),
            errno,
        },
        None => Error::Protocol(format!(
            "{:?} {:?}: unknown error name {payload:?}",
            req.op, req.path
        )),
    }
}

xenstore_via_scope!(Client);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn candidates_default_to_rundir_socket_then_device() {
        assert_eq!(
            candidates(env(&[])),
            [
                PathBuf::from("/var/run/xenstored/socket"),
                PathBuf::from("/dev/xen/xenbus")
            ]
        );
    }

    #[test]
    fn candidates_honour_rundir_and_xenstored_path() {
        assert_eq!(
            candidates(env(&[("XENSTORED_RUNDIR", "/run/x")]))[0],
            PathBuf::from("/run/x/socket")
        );
        let only = candidates(env(&[
            ("XENSTORED_PATH", "/tmp/s"),
            ("XENSTORED_RUNDIR", "/r"),
        ]));
        assert_eq!(only, [PathBuf::from("/tmp/s")]);
        assert_eq!(candidates(env(&[("XENSTORED_PATH", "")])).len(), 2);
    }

    #[test]
    fn open_reports_every_missing_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let tried = vec![dir.path().join("socket"), dir.path().join("xenbus")];
        let err = Client::open_first(&tried).unwrap_err();
        assert!(
            matches!(&err, Error::NotFound { tried: t } if *t == tried),
            "{err}"
        );
        assert!(err.to_string().starts_with("no XenStore: tried "));
    }

    #[test]
    fn open_skips_a_missing_socket_and_connects_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("socket");
        let _listener = UnixListener::bind(&sock).unwrap();
        let client = Client::open_first(&[dir.path().join("absent"), sock]).unwrap();
        assert_eq!(client.max_request(), crate::wire::PAYLOAD_MAX);
    }

    #[test]
    fn open_reports_a_stale_socket_rather_than_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("socket");
        drop(UnixListener::bind(&sock).unwrap());
        let err = Client::open_first(&[sock.clone(), dir.path().join("absent")]).unwrap_err();
        assert!(
            matches!(&err, Error::Open { path, .. } if *path == sock),
            "{err}"
        );
    }

    fn req(op: MsgType) -> Request<'static> {
        Request {
            op,
            tx_id: 0,
            path: "/p",
            payload: Vec::new(),
        }
    }

    #[test]
    fn error_reply_becomes_typed_errno() {
        let reply = Message::error_reply(1, 0, XsErrno::Acces);
        let err = reply_payload(&req(MsgType::Write), reply).unwrap_err();
        assert!(matches!(
            err,
            Error::Xs { op: MsgType::Write, ref path, errno: XsErrno::Acces } if path == "/p"
        ));
    }

    #[test]
    fn unknown_error_name_and_wrong_reply_type_are_protocol_errors() {
        let odd = Message::new(MsgType::Error, 1, 0, b"EWEIRD\0".to_vec());
        assert!(matches!(
            reply_payload(&req(MsgType::Read), odd),
            Err(Error::Protocol(_))
        ));
        let wrong = Message::new(MsgType::Write, 1, 0, b"OK\0".to_vec());
        assert!(matches!(
            reply_payload(&req(MsgType::Read), wrong),
            Err(Error::Protocol(_))
        ));
    }
}
