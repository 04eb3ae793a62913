//! [`Privcmd`]: mapping another domain's frames by number through
//! `/dev/xen/privcmd` (only a privileged domain may).
//!
//! Recipe (libxenforeignmemory `linux.c`, kernel `privcmd.c`): reserve a
//! privcmd VMA with `mmap(len, prot, MAP_SHARED, fd, 0)`; MMAPBATCH_V2 over
//! the whole VMA. The kernel writes a negative errno into `err[i]` for each
//! frame it could not map and returns `-ENOENT` if any frame is paged out,
//! but returns 0 when other frames failed, so `err[]` is always checked.
//! Paged-out frames are retried in runs at their own addresses (their PTEs
//! are still empty; the kernel refuses a range that is already mapped).
//! `EINVAL` on the first call means a kernel without MMAPBATCH_V2 (before
//! 3.x); the legacy MMAPBATCH is not supported. Unmapping is `munmap`.

use std::ffi::c_int;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use super::{PAGED_OUT_PAUSE, PAGED_OUT_RETRIES};
use crate::abi::ioctl_raw;
use crate::abi::privcmd::{MmapBatchV2, XenPfn, IOCTL_PRIVCMD_MMAPBATCH_V2};
use crate::error::{Error, Result};
use crate::mapping::MappedPages;
use crate::types::{DomId, Gfn, PAGE_SIZE};
use crate::ForeignMapper;

const DEVICE: &str = "/dev/xen/privcmd";
const PROC_DEVICE: &str = "/proc/xen/privcmd";
const OP: &str = "map foreign frames";

/// `/dev/xen/privcmd`.
#[derive(Debug)]
pub struct Privcmd {
    fd: OwnedFd,
}

impl Privcmd {
    /// Opens `/dev/xen/privcmd`, falling back to `/proc/xen/privcmd` as
    /// libxenforeignmemory does. If neither exists the error names the first.
    pub fn open() -> Result<Privcmd> {
        let fd = match super::open_device(Path::new(DEVICE), DEVICE, OFlags::empty()) {
            Err(no_xen @ Error::NoXen { .. }) => {
                match super::open_device(Path::new(PROC_DEVICE), PROC_DEVICE, OFlags::empty()) {
                    Err(Error::NoXen { .. }) => return Err(no_xen),
                    other => other?,
                }
            }
            other => other?,
        };
        Ok(Privcmd { fd })
    }

    /// Reserves a privcmd VMA of `len` bytes, owned by the returned pages,
    /// and its address.
    fn reserve(&self, len: usize, writable: bool) -> Result<(MappedPages, u64)> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh shared mapping at an address the kernel chooses
        // replaces no existing memory. privcmd's mmap only marks the VMA
        // (VM_IO | VM_PFNMAP | VM_DONTCOPY) and installs no pages; touching
        // it before MMAPBATCH would SIGBUS, and nothing touches it before.
        let raw = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                &self.fd,
                0,
            )
        }
        .map_err(|e| Error::device("reserve address space (mmap)", DEVICE, e))?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| {
            Error::device(
                "reserve address space (mmap)",
                DEVICE,
                std::io::Error::other("mmap returned null"),
            )
        })?;
        let addr = ptr.as_ptr() as usize;
        // SAFETY: `ptr` starts the live `len`-byte mapping made just above
        // with `PROT_WRITE` exactly if `writable`; only the returned
        // `MappedPages` unmaps it, and nothing else holds a reference into it.
        let pages = unsafe { MappedPages::from_raw(ptr, len, writable, None) };
        let addr = u64::try_from(addr).map_err(|_| Error::device(OP, DEVICE, Errno::OVERFLOW))?;
        Ok((pages, addr))
    }

    /// One MMAPBATCH_V2 of `arr` into the pages starting at `addr`.
    ///
    /// `addr` must lie in a VMA from [`reserve`](Self::reserve) that is still
    /// held, with room for `arr.len()` pages.
    fn mmap_batch(
        &self,
        domid: DomId,
        addr: u64,
        arr: &[XenPfn],
        err: &mut [c_int],
    ) -> rustix::io::Result<()> {
        debug_assert_eq!(arr.len(), err.len());
        let num = u32::try_from(arr.len()).map_err(|_| Errno::INVAL)?;
        let mut batch = MmapBatchV2 {
            num,
            dom: domid.0,
            addr,
            arr: arr.as_ptr(),
            err: err.as_mut_ptr(),
        };
        // SAFETY: `batch` is a complete privcmd_mmapbatch_v2; `arr` is valid
        // for reads and `err` for writes of `num` entries, both borrowed for
        // the call. `addr..addr + num pages` is inside a privcmd VMA held by
        // our caller (the kernel checks the VMA is privcmd's and refuses any
        // other), whose memory nothing accesses: the kernel only installs
        // PTEs there.
        unsafe {
            ioctl_raw(
                self.fd.as_fd(),
                IOCTL_PRIVCMD_MMAPBATCH_V2,
                (&mut batch as *mut MmapBatchV2).cast(),
            )
        }
        .map(drop)
    }

    /// Retries the paged-out frames (`err[i] == -ENOENT`) a few times.
    fn retry_paged_out(
        &self,
        domid: DomId,
        base: u64,
        arr: &[XenPfn],
        err: &mut [c_int],
    ) -> Result<()> {
        for _ in 0..PAGED_OUT_RETRIES {
            let runs = paged_out_runs(err);
            if runs.is_empty() {
                break;
            }
            std::thread::sleep(PAGED_OUT_PAUSE);
            for run in runs {
                let offset = u64::try_from(run.start * PAGE_SIZE)
                    .map_err(|_| Error::device(OP, DEVICE, Errno::OVERFLOW))?;
                let (arr, err) = (&arr[run.clone()], &mut err[run]);
                match self.mmap_batch(domid, base + offset, arr, err) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(Error::device(OP, DEVICE, e)),
                }
            }
        }
        Ok(())
    }
}

const NEG_ENOENT: c_int = -Errno::NOENT.raw_os_error();

/// The maximal runs of consecutive paged-out frames.
fn paged_out_runs(err: &[c_int]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < err.len() {
        if err[i] != NEG_ENOENT {
            i += 1;
            continue;
        }
        let start = i;
        while i < err.len() && err[i] == NEG_ENOENT {
            i += 1;
        }
        runs.push(start..i);
    }
    runs
}

/// The refusal for the first frame that did not map, if any.
fn first_failure(domid: DomId, gfns: &[Gfn], err: &[c_int]) -> Option<Error> {
    let failed = err.iter().filter(|e| **e != 0).count();
    let (i, &e) = err.iter().enumerate().find(|(_, e)| **e != 0)?;
    let why = if e == NEG_ENOENT {
        format!("still paged out after {PAGED_OUT_RETRIES} retries")
    } else {
        std::io::Error::from_raw_os_error(e.saturating_neg()).to_string()
    };
    let reason = format!(
        "frame {} (#{i} of {}) of domain {domid}: {why}; {failed} frame(s) failed",
        gfns.get(i).map_or(0, |g| g.0),
        gfns.len(),
    );
    Some(Error::Refused { op: OP, reason })
}

impl ForeignMapper for Privcmd {
    fn map_foreign(&self, domid: DomId, gfns: &[Gfn], writable: bool) -> Result<MappedPages> {
        let len = gfns
            .len()
            .checked_mul(PAGE_SIZE)
            .filter(|l| *l > 0)
            .ok_or_else(|| Error::Refused {
                op: OP,
                reason: format!("cannot map {} frames at once", gfns.len()),
            })?;
        let arr = gfns
            .iter()
            .map(|g| XenPfn::try_from(g.0))
            .collect::<std::result::Result<Vec<XenPfn>, _>>()
            .map_err(|_| Error::Refused {
                op: OP,
                reason: "a frame number does not fit xen_pfn_t".into(),
            })?;
        let mut err: Vec<c_int> = vec![0; gfns.len()];

        // Dropping `pages` on any error below unmaps the reservation.
        let (pages, base) = self.reserve(len, writable)?;
        match self.mmap_batch(domid, base, &arr, &mut err) {
            Ok(()) => {}
            Err(Errno::NOENT) => self.retry_paged_out(domid, base, &arr, &mut err)?,
            Err(e) => {
                return Err(Error::device(
                    "map foreign frames (MMAPBATCH_V2)",
                    DEVICE,
                    e,
                ))
            }
        }
        match first_failure(domid, gfns, &err) {
            Some(refused) => Err(refused),
            None => Ok(pages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Privcmd` over a memfd: the reservation mmap works, every privcmd
    /// ioctl fails with ENOTTY.
    fn privcmd_over_memfd() -> Privcmd {
        let fd = rustix::fs::memfd_create("not-privcmd", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        Privcmd { fd }
    }

    #[test]
    fn no_frames_is_refused() {
        let err = privcmd_over_memfd()
            .map_foreign(DomId(1), &[], false)
            .unwrap_err();
        assert!(matches!(err, Error::Refused { op: OP, .. }), "{err}");
    }

    #[test]
    fn a_failing_batch_is_a_device_error_and_releases_the_reservation() {
        let err = privcmd_over_memfd()
            .map_foreign(DomId(1), &[Gfn(0x1000), Gfn(0x1001)], true)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Device { op: "map foreign frames (MMAPBATCH_V2)", source, .. }
                if source.raw_os_error() == Some(Errno::NOTTY.raw_os_error())),
            "{err:?}"
        );
    }

    #[test]
    fn paged_out_frames_are_retried_in_maximal_runs() {
        let e = NEG_ENOENT;
        assert_eq!(paged_out_runs(&[0, e, e, 0, -22, e]), [1..3, 5..6]);
        let all: Range<usize> = 0..2;
        assert_eq!(paged_out_runs(&[e, e]), [all]);
        assert!(paged_out_runs(&[0, -1, 0]).is_empty());
    }

    #[test]
    fn the_first_failing_frame_is_named_with_its_errno() {
        let gfns = [Gfn(0x100), Gfn(0x101), Gfn(0x102)];
        assert!(first_failure(DomId(5), &gfns, &[0, 0, 0]).is_none());
        let err = first_failure(DomId(5), &gfns, &[0, -1, -22]).unwrap();
        let msg = err.to_string();
        assert!(matches!(err, Error::Refused { .. }), "{msg}");
        assert!(msg.contains("frame 257 (#1 of 3) of domain 5"), "{msg}");
        assert!(msg.contains("not permitted"), "{msg}");
        assert!(msg.contains("2 frame(s) failed"), "{msg}");
        let paged = first_failure(DomId(5), &gfns, &[NEG_ENOENT, 0, 0]).unwrap();
        assert!(paged.to_string().contains("still paged out"), "{paged}");
    }
}
