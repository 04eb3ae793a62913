//! [`MappedPages`]: guest memory mapped into this process.
//!
//! The other side of a mapping is another domain that writes the same bytes
//! whenever it likes, so nothing here hands out a `&[u8]` or `&mut [u8]` to
//! it: that would let the compiler assume the bytes do not change. Bytes move
//! with volatile copies and ring indices with atomic loads and stores, every
//! access bounds-checked. A mapping made read-only refuses every write
//! (the page is `PROT_READ`: a store would fault the whole process). The
//! mapping is released exactly once, on drop.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::types::PAGE_SIZE;

/// What to do after `munmap` (tell gntdev, tell the emulator, ...).
pub(crate) type Release = Box<dyn FnOnce() + Send>;

/// Pages of another domain, mapped shared into this process.
pub struct MappedPages {
    ptr: NonNull<u8>,
    len: usize,
    /// Mapped `PROT_WRITE`; when false every store is refused.
    writable: bool,
    release: Option<Release>,
}

// SAFETY: the mapping is plain shared memory owned by this value; it may be
// used and unmapped from any thread. All access goes through methods that
// use volatile or atomic operations, which are sound under concurrent
// modification by other threads or processes.
unsafe impl Send for MappedPages {}
// SAFETY: as for Send; no method hands out references into the mapping, and
// concurrent volatile/atomic access from several threads is sound.
unsafe impl Sync for MappedPages {}

/// An access the mapping refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Outside the mapping, or misaligned.
    #[error(
        "access of {len} bytes at offset {offset} is outside a {size}-byte mapping or misaligned"
    )]
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    /// A write to pages mapped read-only.
    #[error("write of {len} bytes at offset {offset} to a read-only mapping")]
    ReadOnly { offset: usize, len: usize },
}

impl MappedPages {
    /// Maps `pages` pages of `fd` at byte `offset`, shared.
    pub(crate) fn map_fd(
        fd: BorrowedFd<'_>,
        offset: u64,
        pages: usize,
        writable: bool,
        release: Option<Release>,
    ) -> std::io::Result<MappedPages> {
        use rustix::mm::{MapFlags, ProtFlags};
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|l| *l > 0)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: we ask for a fresh mapping at an address of the kernel's
        // choosing, so no existing memory is replaced; the result is owned
        // by the returned value, which unmaps it exactly once.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(MappedPages {
            ptr,
            len,
            writable,
            release,
        })
    }

    /// Takes ownership of a mapping made elsewhere in this crate.
    ///
    /// # Safety
    /// `ptr` must be the start of a live `mmap` of exactly `len` bytes that
    /// nothing else will unmap or access as a Rust reference, mapped with
    /// `PROT_WRITE` if `writable`.
    pub(crate) unsafe fn from_raw(
        ptr: NonNull<u8>,
        len: usize,
        writable: bool,
        release: Option<Release>,
    ) -> MappedPages {
        MappedPages {
            ptr,
            len,
            writable,
            release,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pages were mapped writable; if not, writes are refused.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn check(&self, offset: usize, len: usize, align: usize) -> Result<(), AccessError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > self.len) || !offset.is_multiple_of(align) {
            return Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        Ok(())
    }

    /// [`check`](Self::check), and refuses any write to a read-only mapping.
    fn check_write(&self, offset: usize, len: usize, align: usize) -> Result<(), AccessError> {
        self.check(offset, len, align)?;
        if !self.writable {
            return Err(AccessError::ReadOnly { offset, len });
        }
        Ok(())
    }

    /// The `u32` at `offset`, already checked by the caller (and for a
    /// store, checked writable).
    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the caller checked the range is inside the mapping and
        // 4-byte aligned (the mapping is page aligned); the mapping lives as
        // long as `self`, and shared memory is only ever accessed atomically
        // at this offset. On a read-only mapping only `load` is ever called
        // (stores are refused first), and plain atomic loads of at most 8
        // bytes are allowed on read-only memory.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast::<u32>()) }
    }

    /// Atomic load of a `u32` (a ring index).
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, AccessError> {
        self.check(offset, 4, 4)?;
        Ok(self.atomic_u32(offset).load(order))
    }

    /// Atomic store of a `u32` (a ring index).
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), AccessError> {
        self.check_write(offset, 4, 4)?;
        self.atomic_u32(offset).store(value, order);
        Ok(())
    }

    /// Atomic load of one byte (a flag such as the console's `connection`).
    pub fn load_u8(&self, offset: usize, order: Ordering) -> Result<u8, AccessError> {
        self.check(offset, 1, 1)?;
        // SAFETY: in bounds; the mapping outlives the reference; a plain
        // one-byte atomic load is allowed even on read-only memory.
        Ok(unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(offset)) }.load(order))
    }

    /// Atomic store of one byte.
    pub fn store_u8(&self, offset: usize, value: u8, order: Ordering) -> Result<(), AccessError> {
        self.check_write(offset, 1, 1)?;
        // SAFETY: in bounds of a mapping made writable; the mapping
        // outlives the reference.
        unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(offset)) }.store(value, order);
        Ok(())
    }

    /// Copies `dst.len()` bytes out of the mapping at `offset`.
    pub fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, dst.len(), 1)?;
        // SAFETY: the source range is inside the mapping; `dst` is ordinary
        // memory we own exclusively.
        unsafe { volatile_copy(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the mapping at `offset`.
    pub fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        self.check_write(offset, src.len(), 1)?;
        // SAFETY: the destination range is inside a mapping made writable;
        // `src` is ordinary memory.
        unsafe { volatile_copy(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) };
        Ok(())
    }
}

/// Copies with volatile accesses, eight bytes at a time where both sides
/// are aligned, so the compiler neither elides nor tears into reads it
/// assumes stable.
///
/// # Safety
/// `src` and `dst` must be valid for `len` bytes and not overlap.
unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    let mut i = 0;
    if (src as usize) % 8 == (dst as usize) % 8 {
        while i < len && !(src as usize + i).is_multiple_of(8) {
            // SAFETY: i < len, within both ranges per the contract.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: in range, and both addresses are 8-byte aligned here.
            unsafe {
                let w = src.add(i).cast::<u64>().read_volatile();
                dst.add(i).cast::<u64>().write_volatile(w);
            }
            i += 8;
        }
    }
    while i < len {
        // SAFETY: i < len, within both ranges per the contract.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

impl Drop for MappedPages {
    fn drop(&mut self) {
        // SAFETY: we own this mapping (constructor contract) and drop runs
        // once; nothing borrowed from it can outlive `self`.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            tracing::warn!(error = %e, len = self.len, "munmap of guest pages failed");
        }
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for MappedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedPages")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd_pages(n: usize) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, (n * PAGE_SIZE) as u64).unwrap();
        fd
    }

    #[test]
    fn two_mappings_of_one_page_see_each_others_writes() {
        use std::os::fd::AsFd;
        let fd = memfd_pages(1);
        let a = MappedPages::map_fd(fd.as_fd(), 0, 1, true, None).unwrap();
        let b = MappedPages::map_fd(fd.as_fd(), 0, 1, true, None).unwrap();
        a.write_from(1000, b"hello ring").unwrap();
        let mut got = [0u8; 10];
        b.read_into(1000, &mut got).unwrap();
        assert_eq!(&got, b"hello ring");
        a.store_u32(3084, 7, Ordering::Release).unwrap();
        assert_eq!(b.load_u32(3084, Ordering::Acquire).unwrap(), 7);
    }

    #[test]
    fn accesses_outside_or_misaligned_are_refused() {
        use std::os::fd::AsFd;
        let fd = memfd_pages(1);
        let m = MappedPages::map_fd(fd.as_fd(), 0, 1, true, None).unwrap();
        assert!(m.load_u32(4094, Ordering::Relaxed).is_err());
        assert!(m.load_u32(3081, Ordering::Relaxed).is_err());
        assert!(m.read_into(4090, &mut [0u8; 7]).is_err());
        assert!(m.write_from(usize::MAX, &[1]).is_err());
        assert!(m.load_u8(4096, Ordering::Relaxed).is_err());
    }

    #[test]
    fn release_runs_once_after_unmap() {
        use std::os::fd::AsFd;
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let fd = memfd_pages(2);
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let m = MappedPages::map_fd(
            fd.as_fd(),
            0,
            2,
            true,
            Some(Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .unwrap();
        assert_eq!(m.len(), 2 * PAGE_SIZE);
        drop(m);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_read_only_mapping_refuses_writes_instead_of_faulting() {
        use std::os::fd::AsFd;
        let fd = memfd_pages(1);
        let rw = MappedPages::map_fd(fd.as_fd(), 0, 1, true, None).unwrap();
        let ro = MappedPages::map_fd(fd.as_fd(), 0, 1, false, None).unwrap();
        rw.store_u32(3084, 9, Ordering::Release).unwrap();
        rw.write_from(0, b"x").unwrap();
        assert!(!ro.is_writable());
        // Each of these used to store into a PROT_READ page: SIGSEGV.
        let refused = AccessError::ReadOnly {
            offset: 3084,
            len: 4,
        };
        assert_eq!(ro.store_u32(3084, 1, Ordering::Release), Err(refused));
        assert!(matches!(
            ro.store_u8(3088, 0, Ordering::Release),
            Err(AccessError::ReadOnly { .. })
        ));
        assert!(matches!(
            ro.write_from(0, b"y"),
            Err(AccessError::ReadOnly { .. })
        ));
        // Out of bounds is still reported as such, and reads still work.
        assert!(matches!(
            ro.write_from(4096, b"y"),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert_eq!(ro.load_u32(3084, Ordering::Acquire), Ok(9));
        let mut b = [0u8; 1];
        ro.read_into(0, &mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn unaligned_copies_move_every_byte() {
        use std::os::fd::AsFd;
        let fd = memfd_pages(1);
        let m = MappedPages::map_fd(fd.as_fd(), 0, 1, true, None).unwrap();
        let src: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        m.write_from(3, &src).unwrap();
        let mut back = vec![0u8; 1001];
        m.read_into(3, &mut back).unwrap();
        assert_eq!(back, src);
    }
}
