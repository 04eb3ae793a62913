//! `unix:PATH,server`: a unix stream socket the console listens on; one
//! client at a time gets the console (e.g. `socat -,raw,echo=0 UNIX:PATH`).
//!
//! The socket file is created mode 0600 (the console of a guest is as
//! private as its pty). A stale socket file left by a dead daemon is
//! replaced; a live one (something accepts connections on it) or a file that
//! is not a socket is refused. On drop the socket file is removed if it is
//! still ours.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::server::{Listener, Server};
use super::{Sink, SinkSpec};

pub struct UnixSink {
    server: Server,
    path: PathBuf,
    /// (dev, inode) of the socket file we created.
    file_id: (u64, u64),
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("unix socket {}: {e}", path.display()))
}

/// Removes a socket file nobody listens on any more.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on it",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

impl UnixSink {
    pub fn open(path: &Path) -> io::Result<UnixSink> {
        remove_stale_socket(path).map_err(|e| with_path(path, e))?;
        let listener = UnixListener::bind(path).map_err(|e| with_path(path, e))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| with_path(path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| with_path(path, e))?;
        listener.set_nonblocking(true)?;
        let spec = SinkSpec::Unix(path.to_owned());
        Ok(UnixSink {
            server: Server::new(spec, Listener::Unix(listener)),
            path: path.to_owned(),
            file_id: (meta.dev(), meta.ino()),
        })
    }
}

impl Drop for UnixSink {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file_id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
            }
        }
    }
}

impl Sink for UnixSink {
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
}
