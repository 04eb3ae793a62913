//! `/dev/xen/evtchn` (`include/uapi/xen/evtchn.h`).
//!
//! The binds return the new local port as the ioctl's return value; UNBIND
//! and NOTIFY fail with `ENOTCONN` for a port this fd did not bind. `read`
//! yields whole `u32` ports that fired (each is then masked), `write` of a
//! `u32` port re-enables it; a pending-ring overflow makes reads fail with
//! `EFBIG` until `IOCTL_EVTCHN_RESET`.

use std::mem::{offset_of, size_of};

use super::{xen_ioctl, IoctlArg, Opcode};

/// `struct ioctl_evtchn_bind_virq`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindVirq {
    pub virq: u32,
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindInterdomain {
    pub remote_domain: u32,
    pub remote_port: u32,
}

/// `struct ioctl_evtchn_bind_unbound_port`: allocates a port that
/// `remote_domain` may bind (`EVTCHNOP_alloc_unbound`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindUnboundPort {
    pub remote_domain: u32,
}

/// `struct ioctl_evtchn_unbind`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unbind {
    pub port: u32,
}

/// `struct ioctl_evtchn_notify`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    pub port: u32,
}

/// `struct ioctl_evtchn_restrict_domid`: afterwards this fd may only bind
/// ports of `domid`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestrictDomid {
    /// `domid_t`.
    pub domid: u16,
}

const E: u8 = b'E';

pub const IOCTL_EVTCHN_BIND_VIRQ: Opcode = xen_ioctl(E, 0, size_of::<BindVirq>());
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: Opcode = xen_ioctl(E, 1, size_of::<BindInterdomain>());
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: Opcode = xen_ioctl(E, 2, size_of::<BindUnboundPort>());
pub const IOCTL_EVTCHN_UNBIND: Opcode = xen_ioctl(E, 3, size_of::<Unbind>());
pub const IOCTL_EVTCHN_NOTIFY: Opcode = xen_ioctl(E, 4, size_of::<Notify>());
/// Clears the pending ring and its overflow flag; takes no argument.
pub const IOCTL_EVTCHN_RESET: Opcode = xen_ioctl(E, 5, 0);
pub const IOCTL_EVTCHN_RESTRICT_DOMID: Opcode = xen_ioctl(E, 6, size_of::<RestrictDomid>());

const _: () = assert!(size_of::<BindVirq>() == 4);
const _: () = assert!(size_of::<BindInterdomain>() == 8);
const _: () = assert!(offset_of!(BindInterdomain, remote_domain) == 0);
const _: () = assert!(offset_of!(BindInterdomain, remote_port) == 4);
const _: () = assert!(size_of::<BindUnboundPort>() == 4);
const _: () = assert!(size_of::<Unbind>() == 4);
const _: () = assert!(size_of::<Notify>() == 4);
const _: () = assert!(size_of::<RestrictDomid>() == 2);

macro_rules! ioctl_arg {
    ($($ty:ty => $op:expr),* $(,)?) => {$(
        // SAFETY: the opcode is derived from `size_of` of this very struct,
        // whose layout is pinned above and against the C header; it holds
        // only integers.
        unsafe impl IoctlArg for $ty {
            const OPCODE: Opcode = $op;
        }
    )*};
}

ioctl_arg! {
    BindVirq => IOCTL_EVTCHN_BIND_VIRQ,
    BindInterdomain => IOCTL_EVTCHN_BIND_INTERDOMAIN,
    BindUnboundPort => IOCTL_EVTCHN_BIND_UNBOUND_PORT,
    Unbind => IOCTL_EVTCHN_UNBIND,
    Notify => IOCTL_EVTCHN_NOTIFY,
    RestrictDomid => IOCTL_EVTCHN_RESTRICT_DOMID,
}
