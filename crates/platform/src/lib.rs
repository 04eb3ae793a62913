//! The Xen primitives a console backend (and a guest frontend) needs, as
//! traits with two implementations: [`linux`] over the real `/dev/xen/*`
//! devices of a dom0, and [`emu`], an emulated Xen that really shares pages
//! and signals between processes on a machine with no hypervisor.
//!
//! The console device sees only these traits, so it cannot tell which it
//! runs on. All of the project's `unsafe` (mmap, ioctl, shared-memory
//! access) lives in this crate, behind [`MappedPages`] and the device types.

pub mod abi;
pub mod emu;
pub mod error;
pub mod linux;
pub mod mapping;
pub mod types;

use std::os::fd::AsFd;

pub use error::{Error, Result};
pub use mapping::{AccessError, MappedPages};
/// The former name of [`AccessError`], from when a bounds check was the
/// only refusal; kept so code written against it still builds.
pub type OutOfBounds = AccessError;
pub use types::{DomId, EvtchnPort, Gfn, GrantRef, PAGE_SIZE};

/// One event-channel handle, like one open of `/dev/xen/evtchn`: it binds
/// any number of ports, and its fd is readable while one of them has fired.
/// Closing it unbinds them all. A fired port is masked until unmasked.
pub trait EventChannels: AsFd + Send {
    /// Binds a local port to `remote_port` of `remote`, which must have been
    /// allocated unbound for this domain.
    fn bind_interdomain(&mut self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort>;
    /// Allocates a port that `remote` may bind to (what a frontend does).
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort>;
    /// Closes a port of this handle.
    fn unbind(&mut self, port: EvtchnPort) -> Result<()>;
    /// Signals the other end of a bound port.
    fn notify(&self, port: EvtchnPort) -> Result<()>;
    /// Appends the ports that fired since the last call to `out`.
    fn pending(&mut self, out: &mut Vec<EvtchnPort>) -> Result<()>;
    /// Lets a fired port fire again.
    fn unmask(&mut self, port: EvtchnPort) -> Result<()>;
}

/// Maps pages another domain granted to this one.
pub trait GrantMapper: Send + Sync {
    /// Maps `refs` of `domid` as one contiguous region; unmapped on drop.
    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<MappedPages>;
}

/// Maps frames of another domain by number; only a privileged domain may.
pub trait ForeignMapper: Send + Sync {
    /// Maps `gfns` of `domid` as one contiguous region; unmapped on drop.
    fn map_foreign(&self, domid: DomId, gfns: &[Gfn], writable: bool) -> Result<MappedPages>;
}

/// What a backend domain gets from Xen.
pub trait Platform: Send + Sync {
    /// This domain's id (the backend domain).
    fn domid(&self) -> DomId;
    /// Opens a new event-channel handle.
    fn event_channels(&self) -> Result<Box<dyn EventChannels>>;
    fn grant_mapper(&self) -> &dyn GrantMapper;
    fn foreign_mapper(&self) -> &dyn ForeignMapper;
}

/// What a guest (frontend) domain gets from Xen: its own memory, grants of
/// it to others, and event channels.
pub trait GuestPlatform: Send + Sync {
    fn domid(&self) -> DomId;
    fn event_channels(&self) -> Result<Box<dyn EventChannels>>;
    /// Maps one of this domain's own pages.
    fn map_own_page(&self, gfn: Gfn) -> Result<MappedPages>;
    /// Grants `to` access to page `gfn`; returns the new reference.
    fn grant_access(&self, to: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef>;
    /// Revokes a grant; fails while the grantee still maps it.
    fn end_access(&self, gref: GrantRef) -> Result<()>;
}
