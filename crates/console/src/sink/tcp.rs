//! `tcp:HOST:PORT,server`: a TCP socket the console listens on; one client
//! at a time gets the console. The address is the one the operator wrote
//! (`tcp::PORT,server` means 127.0.0.1); port 0 picks a free port, which
//! [`Sink::local_addr`] reports.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::BorrowedFd;

use super::server::{Listener, Server};
use super::{Sink, SinkSpec};

pub struct TcpSink {
    server: Server,
    local: SocketAddr,
}

impl TcpSink {
    pub fn open(addr: SocketAddr) -> io::Result<TcpSink> {
        let with_addr = |e: io::Error| io::Error::new(e.kind(), format!("tcp {addr}: {e}"));
        // std sets SO_REUSEADDR, so a restarted daemon can bind again at once.
        let listener = TcpListener::bind(addr).map_err(with_addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        Ok(TcpSink {
            server: Server::new(SinkSpec::Tcp(addr), Listener::Tcp(listener)),
            local,
        })
    }
}

impl Sink for TcpSink {
    fn spec(&self) -> &SinkSpec {
        self.server.spec()
    }
    fn io_fd(&self) -> Option<BorrowedFd<'_>> {
        self.server.io_fd()
    }
    fn listen_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.server.listen_fd())
    }
    fn accept(&mut self) -> io::Result<()> {
        self.server.accept()
    }
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.server.write(data)
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.server.read(buf)
    }
    fn connected(&self) -> bool {
        self.server.connected()
    }
    fn accepts_input(&self) -> bool {
        true
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }
}
