//! The emulated hypervisor's wire: `SOCK_SEQPACKET` Unix sockets carrying
//! one request or reply per packet, as space-separated words, with file
//! descriptors (page memfds, eventfds) passed alongside by `SCM_RIGHTS`.
//!
//! Requests: `<verb> <arg>...`. Replies: `ok <word>...` or `err <reason>`.
//! Text keeps the rare control traffic easy to trace; the data path (ring
//! memory, notifications) never crosses this socket.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Largest packet either side sends.
pub const MAX_PACKET: usize = 4096;
/// Most descriptors one packet carries.
pub const MAX_FDS: usize = 4;

/// One packet: words and descriptors.
#[derive(Debug, Default)]
pub struct Packet {
    pub text: String,
    pub fds: Vec<OwnedFd>,
}

impl Packet {
    pub fn words(&self) -> Vec<&str> {
        self.text.split_ascii_whitespace().collect()
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A listening socket at `path` (a stale socket file is replaced).
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)?;
    }
    let fd = seqpacket()?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&fd, 128)?;
    Ok(fd)
}

pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    Ok(fd)
}

/// A connected pair, for handing one end to a child process.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

pub fn send(sock: BorrowedFd<'_>, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if text.len() > MAX_PACKET || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "packet too large",
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for descriptors"));
    }
    let iov = [io::IoSlice::new(text.as_bytes())];
    loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet; `Ok(None)` when the peer has closed.
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<Packet>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    let text = String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "packet is not UTF-8"))?;
    Ok(Some(Packet { text, fds }))
}

/// A client connection: one request at a time, each answered in order.
#[derive(Debug)]
pub struct Channel {
    sock: OwnedFd,
    lock: std::sync::Mutex<()>,
}

impl Channel {
    pub fn new(sock: OwnedFd) -> Channel {
        Channel {
            sock,
            lock: std::sync::Mutex::new(()),
        }
    }

    pub fn connect(path: &Path) -> io::Result<Channel> {
        Ok(Channel::new(connect(path)?))
    }

    /// Sends a request and waits for its reply. `Err` for transport
    /// failures; an `err` reply comes back as `Ok(Err(reason))`.
    pub fn call(&self, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<Result<Packet, String>> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        send(self.sock.as_fd(), text, fds)?;
        let reply = recv(self.sock.as_fd())?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "emulated Xen closed the connection",
            )
        })?;
        match reply
            .text
            .split_once(' ')
            .map_or((reply.text.as_str(), ""), |(a, b)| (a, b))
        {
            ("ok", rest) => Ok(Ok(Packet {
                text: rest.to_owned(),
                fds: reply.fds,
            })),
            ("err", reason) => Ok(Err(reason.to_owned())),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad reply {:?}", reply.text),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_carry_words_and_descriptors() {
        let (a, b) = pair().unwrap();
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        send(a.as_fd(), "ok 17 x", &[efd.as_fd()]).unwrap();
        let p = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(p.words(), vec!["ok", "17", "x"]);
        assert_eq!(p.fds.len(), 1);
        // The passed fd is the same eventfd: a write on it is seen on ours.
        rustix::io::write(&p.fds[0], &1u64.to_ne_bytes()).unwrap();
        let mut buf = [0u8; 8];
        rustix::io::read(&efd, &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 1);
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }
}
