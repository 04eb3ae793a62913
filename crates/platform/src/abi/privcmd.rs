//! `/dev/xen/privcmd` (`include/uapi/xen/privcmd.h`).
//!
//! Foreign-mapping recipe (libxenforeignmemory
//! `tools/libs/foreignmemory/linux.c`, kernel `drivers/xen/privcmd.c`):
//! `mmap(len, prot, MAP_SHARED, fd, 0)` reserves a privcmd VMA; the first
//! MMAPBATCH_V2 must cover the whole VMA. The kernel zeroes `err[]`, then
//! writes a negative errno for each frame it could not map. The ioctl
//! returns `-ENOENT` if any frame is paged out (retry just those frames,
//! whose PTEs stay empty), and **0 even when other frames failed**: only
//! `err[]` tells. A frame left unmapped faults with SIGBUS when touched.

use std::ffi::c_int;
use std::mem::{offset_of, size_of};

use super::{xen_ioctl, IoctlArg, Opcode};

/// `xen_pfn_t`: `unsigned long` on x86, `uint64_t` on Arm.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub type XenPfn = std::ffi::c_ulong;
/// `xen_pfn_t`: `unsigned long` on x86, `uint64_t` on Arm.
#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
pub type XenPfn = u64;

/// `struct privcmd_mmapbatch_v2`. It carries user pointers, so it is only
/// ever passed through the crate's `unsafe` raw ioctl path.
#[repr(C)]
#[derive(Debug)]
pub struct MmapBatchV2 {
    /// Number of frames.
    pub num: u32,
    /// `domid_t`: the domain whose frames are mapped.
    pub dom: u16,
    /// Start of the privcmd VMA to fill.
    pub addr: u64,
    /// `num` frame numbers.
    pub arr: *const XenPfn,
    /// `num` per-frame results: 0 or a negative errno.
    pub err: *mut c_int,
}

/// `struct privcmd_mmap_resource` (`XENMEM_acquire_resource`). `addr` names
/// a privcmd VMA the kernel fills, so like [`MmapBatchV2`] it is not a
/// plain-data ioctl argument.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmapResource {
    /// `domid_t`.
    pub dom: u16,
    pub r#type: u32,
    pub id: u32,
    pub idx: u32,
    /// Frames; with `addr` 0 and `num` 0 the kernel writes back the size.
    pub num: u64,
    pub addr: u64,
}

/// The argument of `IOCTL_PRIVCMD_RESTRICT`: a bare `domid_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restrict {
    pub domid: u16,
}

const P: u8 = b'P';

pub const IOCTL_PRIVCMD_MMAPBATCH_V2: Opcode = xen_ioctl(P, 4, size_of::<MmapBatchV2>());
pub const IOCTL_PRIVCMD_RESTRICT: Opcode = xen_ioctl(P, 6, size_of::<Restrict>());
pub const IOCTL_PRIVCMD_MMAP_RESOURCE: Opcode = xen_ioctl(P, 7, size_of::<MmapResource>());

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<XenPfn>() == 8);
    assert!(size_of::<MmapBatchV2>() == 32);
    assert!(offset_of!(MmapBatchV2, arr) == 16);
    assert!(offset_of!(MmapBatchV2, err) == 24);
};
const _: () = assert!(offset_of!(MmapBatchV2, num) == 0);
const _: () = assert!(offset_of!(MmapBatchV2, dom) == 4);
const _: () = assert!(offset_of!(MmapBatchV2, addr) == 8);
const _: () = assert!(size_of::<MmapResource>() == 32);
const _: () = assert!(offset_of!(MmapResource, r#type) == 4);
const _: () = assert!(offset_of!(MmapResource, id) == 8);
const _: () = assert!(offset_of!(MmapResource, idx) == 12);
const _: () = assert!(offset_of!(MmapResource, num) == 16);
const _: () = assert!(offset_of!(MmapResource, addr) == 24);
const _: () = assert!(size_of::<Restrict>() == 2);

// SAFETY: `Restrict` is exactly a `domid_t`, the argument of this opcode,
// which the kernel only reads.
unsafe impl IoctlArg for Restrict {
    const OPCODE: Opcode = IOCTL_PRIVCMD_RESTRICT;
}
