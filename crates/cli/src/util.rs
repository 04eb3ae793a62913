//! Small process-wide helpers for the commands.

use std::io;

/// Raises the soft limit on open files to the hard limit: a backend holds
/// a few descriptors per console, an emulator two per event channel, and
/// the default soft limit of 1024 would cap them at a few hundred guests.
pub fn raise_fd_limit() -> io::Result<()> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let new = rustix::process::Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, new)?;
    Ok(())
}

/// Where `up`, `emu` and the tools that talk to them meet by default.
pub const DEFAULT_EMU_DIR: &str = "/tmp/xen-console/emu";
