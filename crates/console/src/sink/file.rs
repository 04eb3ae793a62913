//! `file:PATH`: a log of the guest's output, appended to (`O_APPEND`,
//! created 0644 like xenconsoled's guest logs). No input. A regular file is
//! always writable, so it has no fd to poll. `reopen` opens the path again
//! for log rotation (rename the file, then SIGHUP): if that fails the old
//! file stays in use, so output is not lost to a transient error.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{would_block, Sink, SinkSpec};

pub struct FileSink {
    spec: SinkSpec,
    path: PathBuf,
    file: File,
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

impl FileSink {
    pub fn open(path: &Path) -> io::Result<FileSink> {
        Ok(FileSink {
            spec: SinkSpec::File(path.to_owned()),
            path: path.to_owned(),
            file: open_log(path)?,
        })
    }
}

impl Sink for FileSink {
    fn spec(&self) -> &SinkSpec {
        &self.spec
    }
    fn io_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        loop {
            match self.file.write(data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
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
    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_log(&self.path)?;
        Ok(())
    }
}
