//! The Linux `/dev/xen/*` ABI: `#[repr(C)]` copies of the structs of
//! `include/uapi/xen/{evtchn,gntdev,privcmd}.h` and their ioctl numbers.
//!
//! Invariants:
//! * Every opcode is derived from its parts with [`xen_ioctl`], never
//!   written as a literal: Xen's headers use `_IOC(_IOC_NONE, type, nr,
//!   sizeof(struct))`, a nonzero size with no direction bits, which no
//!   `_IOR`/`_IOW` helper produces.
//! * Every struct's size and field offsets are asserted at compile time
//!   (`const _: () = assert!(...)`), the literal opcodes in this module's
//!   tests, and both against the real headers by `tests/abi_pin.rs`, which
//!   compiles a C program against `/usr/include/xen/*.h`.
//! * This module only describes memory; issuing the ioctls is the job of
//!   [`crate::linux`]. Structs that carry user pointers (`privcmd`) are only
//!   sent through the `unsafe` raw path; pointer-free ones implement
//!   the crate-private `IoctlArg`, which ties each struct to its one opcode.

pub mod evtchn;
pub mod gntdev;
pub mod privcmd;

use std::ffi::{c_int, c_void};
use std::os::fd::BorrowedFd;

use rustix::ioctl::{Direction, Ioctl, IoctlOutput};

pub use rustix::ioctl::Opcode;

/// `_IOC(_IOC_NONE, group, nr, size)`, the encoding of every Xen ioctl in
/// these headers.
pub const fn xen_ioctl(group: u8, nr: u8, size: usize) -> Opcode {
    rustix::ioctl::opcode::from_components(Direction::None, group, nr, size)
}

/// An ioctl argument struct that holds no pointers, with the one opcode
/// that takes it.
///
/// # Safety
/// `OPCODE` must be the ioctl whose argument is exactly `Self` (same size
/// and layout as the kernel's struct), and the driver must not dereference
/// anything inside `Self` as a user pointer. Then passing `&mut Self` is
/// sound: the driver reads and writes at most `size_of::<Self>()` bytes.
pub(crate) unsafe trait IoctlArg: Sized {
    const OPCODE: Opcode;
}

/// An ioctl: an opcode, a pointer to its argument (or null), and the
/// kernel's nonnegative return value as the output (Xen's evtchn binds
/// return the new port that way).
struct RawIoctl {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: the output is the syscall's return value, which needs no pointer;
// IS_MUTATING is true, so the argument may be written (gntdev and privcmd
// write their outputs back into it); the opcode and argument are the
// caller's responsibility per `ioctl_raw`'s contract.
unsafe impl Ioctl for RawIoctl {
    type Output = c_int;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _arg: *mut c_void) -> rustix::io::Result<c_int> {
        Ok(out)
    }
}

/// Issues `opcode` on `fd` with `arg`, returning the kernel's return value.
///
/// # Safety
/// `arg` must point to the argument `opcode` expects (or be null when the
/// ioctl takes none), valid for reads and writes of its full size for the
/// duration of the call, and every user pointer inside it must be valid for
/// what the driver does with it.
pub(crate) unsafe fn ioctl_raw(
    fd: BorrowedFd<'_>,
    opcode: Opcode,
    arg: *mut c_void,
) -> rustix::io::Result<c_int> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::ioctl::ioctl(fd, RawIoctl { opcode, arg }) }
}

/// Issues the ioctl that takes `T`, on `fd`.
pub(crate) fn ioctl<T: IoctlArg>(fd: BorrowedFd<'_>, arg: &mut T) -> rustix::io::Result<c_int> {
    // SAFETY: `IoctlArg` guarantees `T::OPCODE` takes exactly a `T` and that
    // the driver dereferences no pointer inside it; `arg` is a live
    // exclusive borrow of a whole `T` for the duration of the call.
    unsafe { ioctl_raw(fd, T::OPCODE, (arg as *mut T).cast()) }
}

/// Issues an ioctl that takes no argument (`IOCTL_EVTCHN_RESET`).
///
/// # Safety
/// `opcode` must be an ioctl that ignores its argument.
pub(crate) unsafe fn ioctl_no_arg(fd: BorrowedFd<'_>, opcode: Opcode) -> rustix::io::Result<c_int> {
    // SAFETY: forwarded from this function's contract; a null argument is
    // never dereferenced by such an ioctl.
    unsafe { ioctl_raw(fd, opcode, std::ptr::null_mut()) }
}

#[cfg(test)]
mod tests {
    use super::evtchn::*;
    use super::gntdev::*;
    use super::privcmd::*;

    /// The values Xen's headers produce on x86_64 and arm64, as printed by
    /// a C program (see `shared/reference/style.md` Appendix A). krata
    /// shipped BIND_UNBOUND_PORT and UNBIND swapped and RESET mis-encoded.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn opcodes_have_the_values_of_the_c_headers() {
        let expected: &[(&str, super::Opcode, u32)] = &[
            ("IOCTL_EVTCHN_BIND_VIRQ", IOCTL_EVTCHN_BIND_VIRQ, 0x44500),
            (
                "IOCTL_EVTCHN_BIND_INTERDOMAIN",
                IOCTL_EVTCHN_BIND_INTERDOMAIN,
                0x84501,
            ),
            (
                "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
                IOCTL_EVTCHN_BIND_UNBOUND_PORT,
                0x44502,
            ),
            ("IOCTL_EVTCHN_UNBIND", IOCTL_EVTCHN_UNBIND, 0x44503),
            ("IOCTL_EVTCHN_NOTIFY", IOCTL_EVTCHN_NOTIFY, 0x44504),
            ("IOCTL_EVTCHN_RESET", IOCTL_EVTCHN_RESET, 0x4505),
            (
                "IOCTL_EVTCHN_RESTRICT_DOMID",
                IOCTL_EVTCHN_RESTRICT_DOMID,
                0x24506,
            ),
            (
                "IOCTL_GNTDEV_MAP_GRANT_REF",
                IOCTL_GNTDEV_MAP_GRANT_REF,
                0x184700,
            ),
            (
                "IOCTL_GNTDEV_UNMAP_GRANT_REF",
                IOCTL_GNTDEV_UNMAP_GRANT_REF,
                0x104701,
            ),
            (
                "IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR",
                IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR,
                0x184702,
            ),
            (
                "IOCTL_GNTDEV_SET_MAX_GRANTS",
                IOCTL_GNTDEV_SET_MAX_GRANTS,
                0x44703,
            ),
            (
                "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
                IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
                0x104707,
            ),
            (
                "IOCTL_PRIVCMD_MMAPBATCH_V2",
                IOCTL_PRIVCMD_MMAPBATCH_V2,
                0x205004,
            ),
            ("IOCTL_PRIVCMD_RESTRICT", IOCTL_PRIVCMD_RESTRICT, 0x25006),
            (
                "IOCTL_PRIVCMD_MMAP_RESOURCE",
                IOCTL_PRIVCMD_MMAP_RESOURCE,
                0x205007,
            ),
        ];
        for &(name, got, want) in expected {
            // Opcode is u32 or c_ulong depending on rustix's backend.
            assert_eq!(format!("{got:#x}"), format!("{want:#x}"), "{name}");
        }
    }

    #[test]
    fn opcodes_are_distinct() {
        let all = [
            IOCTL_EVTCHN_BIND_VIRQ,
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            IOCTL_EVTCHN_UNBIND,
            IOCTL_EVTCHN_NOTIFY,
            IOCTL_EVTCHN_RESET,
            IOCTL_EVTCHN_RESTRICT_DOMID,
            IOCTL_GNTDEV_MAP_GRANT_REF,
            IOCTL_GNTDEV_UNMAP_GRANT_REF,
            IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR,
            IOCTL_GNTDEV_SET_MAX_GRANTS,
            IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
            IOCTL_PRIVCMD_MMAPBATCH_V2,
            IOCTL_PRIVCMD_RESTRICT,
            IOCTL_PRIVCMD_MMAP_RESOURCE,
        ];
        let set: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }
}
