//! `pty`: a new pseudo-terminal; the slave path (`/dev/pts/N`) goes into
//! the frontend's `tty` node and users attach to it (`xl console`,
//! `screen`, `xen-console attach`).
//!
//! As xenconsoled does: the slave is put in raw mode (no echo, no CR/LF
//! translation, no signals — console bytes pass unchanged both ways) and
//! kept open by us for the sink's lifetime. Without that, Linux reports
//! hang-up (and `EIO` on read) on the master whenever no client has the
//! slave open, and readiness would have to be polled. The master is
//! non-blocking and close-on-exec. Output that nobody reads fills the
//! pty's buffer and then writes answer `WouldBlock`: backlog, not an error.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};

use super::{retry_eintr, would_block, Sink, SinkSpec};

pub struct PtySink {
    spec: SinkSpec,
    master: OwnedFd,
    /// Held only so the master never sees hang-up.
    _slave: OwnedFd,
    tty: PathBuf,
}

impl PtySink {
    pub fn open() -> io::Result<PtySink> {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave_flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
        let slave = rustix::fs::open(name.as_c_str(), slave_flags, Mode::empty())?;
        let mut termios = tcgetattr(&slave)?;
        termios.make_raw();
        tcsetattr(&slave, OptionalActions::Now, &termios)?;
        rustix::io::ioctl_fionbio(&master, true)?;
        let tty = PathBuf::from(name.into_string().map_err(io::Error::other)?);
        tracing::debug!(tty = %tty.display(), "pty created");
        Ok(PtySink {
            spec: SinkSpec::Pty,
            master,
            _slave: slave,
            tty,
        })
    }
}

fn pty_result(r: rustix::io::Result<usize>) -> io::Result<usize> {
    match r {
        Ok(n) => Ok(n),
        Err(Errno::AGAIN) => Err(would_block()),
        Err(e) => Err(e.into()),
    }
}

impl Sink for PtySink {
    fn spec(&self) -> &SinkSpec {
        &self.spec
    }
    fn io_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.master.as_fd())
    }
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        pty_result(retry_eintr(|| rustix::io::write(&self.master, data)))
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        pty_result(retry_eintr(|| rustix::io::read(&self.master, &mut *buf)))
    }
    fn connected(&self) -> bool {
        true
    }
    fn accepts_input(&self) -> bool {
        true
    }
    fn tty(&self) -> Option<PathBuf> {
        Some(self.tty.clone())
    }
}
