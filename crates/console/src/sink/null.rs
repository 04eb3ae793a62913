//! `null`: output is swallowed (counted as delivered), no input. QEMU's
//! default for a primary console with no `output`.

use std::io;
use std::os::fd::BorrowedFd;

use super::{would_block, Sink, SinkSpec};

pub struct NullSink {
    spec: SinkSpec,
}

impl NullSink {
    pub fn new() -> NullSink {
        NullSink {
            spec: SinkSpec::Null,
        }
    }
}

impl Default for NullSink {
    fn default() -> NullSink {
        NullSink::new()
    }
}

impl Sink for NullSink {
    fn spec(&self) -> &SinkSpec {
        &self.spec
    }
    fn io_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Ok(data.len())
    }
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(would_block())
    }
    fn connected(&self) -> bool {
        true
    }
    fn accepts_input(&self) -> bool {
        false
    }
}
