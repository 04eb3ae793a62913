//! `stdio`: output to our stdout, input from our stdin (a foreground
//! daemon, a demo, a test harness).
//!
//! The descriptors are shared with the rest of the process and possibly
//! with the invoking shell, so their file status flags are left alone
//! (setting `O_NONBLOCK` on an inherited terminal breaks the shell after
//! we exit). Instead: input is read only after a zero-timeout `poll` says
//! it is ready, and output is written blocking — a stdout that stalls
//! stalls this console's thread; use a pty or socket sink where that
//! matters. stdin that cannot be polled (a regular file, `/dev/null`)
//! offers no input, and stdin's EOF ends input but not output.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::event::{epoll, poll, PollFd, PollFlags, Timespec};

use super::{retry_eintr, would_block, Sink, SinkSpec};

pub struct StdioSink {
    spec: SinkSpec,
    stdin: io::Stdin,
    stdout: io::Stdout,
    input_open: bool,
}

/// epoll refuses regular files and `/dev/null`; such a stdin has no input
/// worth waiting for.
fn pollable(fd: BorrowedFd<'_>) -> bool {
    let Ok(ep) = epoll::create(epoll::CreateFlags::CLOEXEC) else {
        return false;
    };
    let data = epoll::EventData::new_u64(0);
    epoll::add(&ep, fd, data, epoll::EventFlags::IN).is_ok()
}

impl StdioSink {
    pub fn new() -> StdioSink {
        let stdin = io::stdin();
        let input_open = pollable(stdin.as_fd());
        StdioSink {
            spec: SinkSpec::Stdio,
            stdin,
            stdout: io::stdout(),
            input_open,
        }
    }
}

impl Default for StdioSink {
    fn default() -> StdioSink {
        StdioSink::new()
    }
}

impl Sink for StdioSink {
    fn spec(&self) -> &SinkSpec {
        &self.spec
    }
    fn io_fd(&self) -> Option<BorrowedFd<'_>> {
        self.input_open.then(|| self.stdin.as_fd())
    }
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Ok(retry_eintr(|| rustix::io::write(&self.stdout, data))?)
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.input_open {
            return Err(would_block());
        }
        let stdin = self.stdin.as_fd();
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        let ready = retry_eintr(|| poll(&mut fds, Some(&Timespec::default())))?;
        if ready == 0 {
            return Err(would_block());
        }
        let n = retry_eintr(|| rustix::io::read(stdin, &mut *buf))?;
        if n == 0 && !buf.is_empty() {
            self.input_open = false;
        }
        Ok(n)
    }
    fn connected(&self) -> bool {
        true
    }
    fn accepts_input(&self) -> bool {
        self.input_open
    }
}
