//! What the unix and tcp sinks share: a non-blocking listening socket and
//! at most one connected client.
//!
//! Invariants: `peer` is `Some` exactly while a client is attached; a
//! second client is accepted and closed at once (one console, one user, as
//! `xenconsole`'s lock enforces); a peer is dropped on EOF or any socket
//! error, after which writes answer `NotConnected` until the next accept.
//! Writes use `MSG_NOSIGNAL`, so a client that went away cannot kill the
//! daemon with `SIGPIPE`.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;

use rustix::io::Errno;
use rustix::net::SendFlags;

use super::{not_connected, retry_eintr, would_block, SinkSpec};

pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// One waiting client, non-blocking and close-on-exec.
    fn accept(&self) -> io::Result<OwnedFd> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                // Console traffic is keystrokes and short lines.
                s.set_nodelay(true)?;
                Ok(s.into())
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            }
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

pub(crate) struct Server {
    spec: SinkSpec,
    listener: Listener,
    peer: Option<OwnedFd>,
}

impl Server {
    /// `listener` must already be non-blocking.
    pub(crate) fn new(spec: SinkSpec, listener: Listener) -> Server {
        Server {
            spec,
            listener,
            peer: None,
        }
    }

    pub(crate) fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    pub(crate) fn io_fd(&self) -> Option<BorrowedFd<'_>> {
        self.peer.as_ref().map(|p| p.as_fd())
    }

    pub(crate) fn listen_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub(crate) fn connected(&self) -> bool {
        self.peer.is_some()
    }

    pub(crate) fn accept(&mut self) -> io::Result<()> {
        loop {
            let peer = match self.listener.accept() {
                Ok(peer) => peer,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // A client that gave up before we got to it: not our error.
                Err(e) if transient_accept_error(&e) => continue,
                Err(e) => return Err(e),
            };
            if self.peer.is_some() {
                tracing::warn!(sink = %self.spec, "refused a second client: one is attached");
                drop(peer);
            } else {
                tracing::info!(sink = %self.spec, "client attached");
                self.peer = Some(peer);
            }
        }
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let peer = self.peer.as_ref().ok_or_else(not_connected)?;
        match retry_eintr(|| rustix::net::send(peer, data, SendFlags::NOSIGNAL)) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN) => Err(would_block()),
            Err(e) => {
                self.hang_up(e);
                Err(not_connected())
            }
        }
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let peer = self.peer.as_ref().ok_or_else(not_connected)?;
        match retry_eintr(|| rustix::io::read(peer, &mut *buf)) {
            Ok(0) => {
                tracing::info!(sink = %self.spec, "client detached");
                self.peer = None;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(Errno::AGAIN) => Err(would_block()),
            Err(e) => {
                self.hang_up(e);
                Ok(0)
            }
        }
    }

    /// Any error on a connected stream means the client is gone.
    fn hang_up(&mut self, e: Errno) {
        tracing::info!(sink = %self.spec, error = %e, "client connection failed; detached");
        self.peer = None;
    }
}

fn transient_accept_error(e: &io::Error) -> bool {
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    e.kind() == io::ErrorKind::Interrupted
        || matches!(errno, Some(Errno::CONNABORTED | Errno::PROTO))
}
