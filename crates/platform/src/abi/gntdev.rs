//! `/dev/xen/gntdev` (`include/uapi/xen/gntdev.h`).
//!
//! Mapping recipe (libxengnttab `tools/libs/gnttab/linux.c`, kernel
//! `drivers/xen/gntdev.c`): MAP_GRANT_REF reserves `count` slots and returns
//! `index`, a *byte* offset (`slot << PAGE_SHIFT`); `mmap(count pages,
//! MAP_SHARED, fd, index)` maps them (EAGAIN: a granted frame is paged out,
//! retry); after `munmap`, UNMAP_GRANT_REF with the same `index` and
//! `count` frees the slots. UNMAP_GRANT_REF of a still-mapped range only
//! detaches it; the grant is unmapped when the VMA goes.

use std::mem::{offset_of, size_of};

use super::{xen_ioctl, IoctlArg, Opcode};
use crate::types::{DomId, GrantRef};

/// `struct ioctl_gntdev_grant_ref`: one grant to map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantRefEntry {
    pub domid: u32,
    /// `grant_ref_t`.
    pub r#ref: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` with its one inline `refs[1]`
/// entry; for `count > 1` use [`MapGrantRefs`], which lays out the same
/// header followed by `count` entries.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapGrantRef {
    pub count: u32,
    pub pad: u32,
    /// Out: the byte offset to pass to `mmap`.
    pub index: u64,
    pub refs: [GrantRefEntry; 1],
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmapGrantRef {
    /// The `index` MAP_GRANT_REF returned.
    pub index: u64,
    pub count: u32,
    pub pad: u32,
}

/// `struct ioctl_gntdev_get_offset_for_vaddr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetOffsetForVaddr {
    pub vaddr: u64,
    /// Out: the offset the range was mapped with.
    pub offset: u64,
    /// Out: pages in the mapping that starts at `vaddr`.
    pub count: u32,
    pub pad: u32,
}

/// `struct ioctl_gntdev_set_max_grants` (newer kernels: ENOTTY, ignored).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetMaxGrants {
    pub count: u32,
}

/// `struct ioctl_gntdev_unmap_notify`: what the kernel does when the
/// mapping goes away, even if this process dies.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Byte offset (mmap offset + offset in the mapping) of the byte to clear.
    pub index: u64,
    /// [`UNMAP_NOTIFY_CLEAR_BYTE`] | [`UNMAP_NOTIFY_SEND_EVENT`].
    pub action: u32,
    pub event_channel_port: u32,
}

/// Clear (set to zero) the byte at `index` on unmap.
pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// Notify `event_channel_port` on unmap.
pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

const G: u8 = b'G';

pub const IOCTL_GNTDEV_MAP_GRANT_REF: Opcode = xen_ioctl(G, 0, size_of::<MapGrantRef>());
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: Opcode = xen_ioctl(G, 1, size_of::<UnmapGrantRef>());
pub const IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR: Opcode =
    xen_ioctl(G, 2, size_of::<GetOffsetForVaddr>());
pub const IOCTL_GNTDEV_SET_MAX_GRANTS: Opcode = xen_ioctl(G, 3, size_of::<SetMaxGrants>());
pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: Opcode = xen_ioctl(G, 7, size_of::<UnmapNotify>());

const _: () = assert!(size_of::<GrantRefEntry>() == 8);
const _: () = assert!(offset_of!(GrantRefEntry, domid) == 0);
const _: () = assert!(offset_of!(GrantRefEntry, r#ref) == 4);
const _: () = assert!(size_of::<MapGrantRef>() == 24);
const _: () = assert!(offset_of!(MapGrantRef, count) == 0);
const _: () = assert!(offset_of!(MapGrantRef, index) == 8);
const _: () = assert!(offset_of!(MapGrantRef, refs) == MAP_HEADER_BYTES);
const _: () = assert!(size_of::<UnmapGrantRef>() == 16);
const _: () = assert!(offset_of!(UnmapGrantRef, count) == 8);
const _: () = assert!(size_of::<GetOffsetForVaddr>() == 24);
const _: () = assert!(offset_of!(GetOffsetForVaddr, offset) == 8);
const _: () = assert!(offset_of!(GetOffsetForVaddr, count) == 16);
const _: () = assert!(size_of::<SetMaxGrants>() == 4);
const _: () = assert!(size_of::<UnmapNotify>() == 16);
const _: () = assert!(offset_of!(UnmapNotify, action) == 8);
const _: () = assert!(offset_of!(UnmapNotify, event_channel_port) == 12);

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

// Not `MapGrantRef`: the driver reads `count` entries, however many the
// struct holds, so it only goes through the raw path with `MapGrantRefs`.
ioctl_arg! {
    UnmapGrantRef => IOCTL_GNTDEV_UNMAP_GRANT_REF,
    GetOffsetForVaddr => IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR,
    SetMaxGrants => IOCTL_GNTDEV_SET_MAX_GRANTS,
    UnmapNotify => IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
}

/// Bytes before `refs[]` in `struct ioctl_gntdev_map_grant_ref`.
const MAP_HEADER_BYTES: usize = 16;
const WORD: usize = size_of::<u32>();

/// An `ioctl_gntdev_map_grant_ref` with any number of refs: the 16-byte
/// header (`count`, `pad`, `index`) followed by `count` [`GrantRefEntry`]s,
/// held as native-endian `u32` words so it is built and read back without
/// `unsafe`. The driver copies it with `copy_{from,to}_user`, which needs
/// no alignment beyond the `u32` words'.
#[derive(Debug, Clone)]
pub struct MapGrantRefs {
    words: Vec<u32>,
}

impl MapGrantRefs {
    /// The request to map `refs` of `domid`; `None` if there are none or
    /// more than a `u32` count.
    pub fn new(domid: DomId, refs: &[GrantRef]) -> Option<MapGrantRefs> {
        let count = u32::try_from(refs.len()).ok().filter(|c| *c > 0)?;
        let mut words = Vec::with_capacity(MAP_HEADER_BYTES / WORD + 2 * refs.len());
        words.extend_from_slice(&[count, 0, 0, 0]);
        for r in refs {
            words.extend_from_slice(&[u32::from(domid.0), r.0]);
        }
        Some(MapGrantRefs { words })
    }

    pub fn count(&self) -> u32 {
        self.words[0]
    }

    /// The `index` the driver wrote back.
    pub fn index(&self) -> u64 {
        let [a, b] = [self.words[2].to_ne_bytes(), self.words[3].to_ne_bytes()];
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
    }

    /// Size of the argument in bytes.
    pub fn len_bytes(&self) -> usize {
        self.words.len() * WORD
    }

    /// The argument for IOCTL_GNTDEV_MAP_GRANT_REF, valid for
    /// [`len_bytes`](Self::len_bytes) bytes while `self` is borrowed.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut std::ffi::c_void {
        self.words.as_mut_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_grant_refs_buffer_has_the_c_layout() {
        let mut one = MapGrantRefs::new(DomId(7), &[GrantRef(3)]).unwrap();
        assert_eq!(one.len_bytes(), size_of::<MapGrantRef>());
        let as_struct = MapGrantRef {
            count: 1,
            pad: 0,
            index: 0,
            refs: [GrantRefEntry { domid: 7, r#ref: 3 }],
        };
        // SAFETY: `as_struct` is plain integers, 24 bytes, read as bytes.
        let want: &[u8] = unsafe {
            std::slice::from_raw_parts(
                (&as_struct as *const MapGrantRef).cast::<u8>(),
                size_of::<MapGrantRef>(),
            )
        };
        // SAFETY: the buffer is `len_bytes()` initialised bytes.
        let got: &[u8] =
            unsafe { std::slice::from_raw_parts(one.as_mut_ptr().cast::<u8>(), one.len_bytes()) };
        assert_eq!(got, want);

        let three =
            MapGrantRefs::new(DomId(1), &[GrantRef(10), GrantRef(11), GrantRef(12)]).unwrap();
        assert_eq!(three.len_bytes(), 16 + 3 * 8);
        assert_eq!(three.count(), 3);
        assert!(MapGrantRefs::new(DomId(1), &[]).is_none());
    }

    #[test]
    fn map_grant_refs_reads_back_the_index_the_driver_writes() {
        let mut m = MapGrantRefs::new(DomId(1), &[GrantRef(10), GrantRef(11)]).unwrap();
        let index: u64 = 0x1234_5678_9abc_d000;
        // What the driver's copy_to_user does: the u64 at byte offset 8.
        // SAFETY: the buffer is at least 16 bytes; the write is unaligned-safe.
        unsafe {
            m.as_mut_ptr()
                .cast::<u8>()
                .add(8)
                .cast::<u64>()
                .write_unaligned(index)
        };
        assert_eq!(m.index(), index);
    }
}
