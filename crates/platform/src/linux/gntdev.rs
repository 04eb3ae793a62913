//! [`Gntdev`]: mapping other domains' grants through `/dev/xen/gntdev`.
//!
//! Order, as libxengnttab does it: MAP_GRANT_REF (reserves slots, returns a
//! byte offset `index`), `mmap(.., MAP_SHARED, fd, index)` (maps the grants;
//! `EAGAIN` = a granted frame is paged out, retry), and on release `munmap`
//! then UNMAP_GRANT_REF(`index`, `count`). A read-only mapping is mapped
//! `GNTMAP_readonly` (the kernel decides by the VMA's `PROT_WRITE`). If the
//! `mmap` fails the slots are freed at once.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::OFlags;
use rustix::io::Errno;

use super::{PAGED_OUT_PAUSE, PAGED_OUT_RETRIES};
use crate::abi::gntdev::{MapGrantRefs, UnmapGrantRef, IOCTL_GNTDEV_MAP_GRANT_REF};
use crate::abi::{ioctl, ioctl_raw};
use crate::error::{Error, Result};
use crate::mapping::{MappedPages, Release};
use crate::types::{DomId, GrantRef};
use crate::GrantMapper;

const DEVICE: &str = "/dev/xen/gntdev";

/// `/dev/xen/gntdev`. The fd is shared with every mapping's release, so
/// mappings may outlive this value.
#[derive(Debug)]
pub struct Gntdev {
    fd: Arc<OwnedFd>,
}

impl Gntdev {
    /// Opens `/dev/xen/gntdev`.
    pub fn open() -> Result<Gntdev> {
        let fd = super::open_device(Path::new(DEVICE), DEVICE, OFlags::empty())?;
        Ok(Gntdev { fd: Arc::new(fd) })
    }
}

/// Frees the gntdev slots of a mapping (its pages must be unmapped or
/// never mapped); logs a failure, since it runs from `Drop`.
fn unmap_grant_ref(fd: &OwnedFd, index: u64, count: u32) {
    let mut arg = UnmapGrantRef {
        index,
        count,
        pad: 0,
    };
    if let Err(e) = ioctl(fd.as_fd(), &mut arg) {
        tracing::warn!(error = %e, index, count, "gntdev UNMAP_GRANT_REF failed; slots leak until close");
    }
}

fn release_for(fd: &Arc<OwnedFd>, index: u64, count: u32) -> Release {
    let fd = Arc::clone(fd);
    Box::new(move || unmap_grant_ref(&fd, index, count))
}

impl GrantMapper for Gntdev {
    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<MappedPages> {
        let mut req = MapGrantRefs::new(domid, refs).ok_or_else(|| Error::Refused {
            op: "map grant refs",
            reason: format!("cannot map {} grant references at once", refs.len()),
        })?;
        // SAFETY: `req` holds a complete `ioctl_gntdev_map_grant_ref` header
        // followed by exactly `count` `ioctl_gntdev_grant_ref` entries, and
        // is exclusively borrowed for the call; the driver reads the entries
        // and writes back only the header (`index`). No pointers inside.
        unsafe {
            ioctl_raw(
                self.fd.as_fd(),
                IOCTL_GNTDEV_MAP_GRANT_REF,
                req.as_mut_ptr(),
            )
        }
        .map_err(|e| Error::device("map grant refs", DEVICE, e))?;
        let (index, count) = (req.index(), req.count());

        let mut retries = 0;
        loop {
            let release = release_for(&self.fd, index, count);
            match MappedPages::map_fd(self.fd.as_fd(), index, refs.len(), writable, Some(release)) {
                Ok(pages) => return Ok(pages),
                Err(e) if is_again(&e) && retries < PAGED_OUT_RETRIES => {
                    retries += 1;
                    std::thread::sleep(PAGED_OUT_PAUSE);
                }
                Err(e) => {
                    // The failed mmap dropped its release unrun; free the slots.
                    unmap_grant_ref(&self.fd, index, count);
                    return Err(Error::device("mmap granted pages", DEVICE, e));
                }
            }
        }
    }
}

fn is_again(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(Errno::AGAIN.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Gntdev` over a memfd: every gntdev ioctl fails with ENOTTY.
    fn gntdev_over_memfd() -> Gntdev {
        let fd = rustix::fs::memfd_create("not-gntdev", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        Gntdev { fd: Arc::new(fd) }
    }

    #[test]
    fn no_refs_is_refused_before_any_ioctl() {
        let err = gntdev_over_memfd()
            .map_grant_refs(DomId(1), &[], false)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Refused {
                    op: "map grant refs",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_failing_map_ioctl_is_a_device_error() {
        let err = gntdev_over_memfd()
            .map_grant_refs(DomId(1), &[GrantRef(8)], true)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Device { op: "map grant refs", device: DEVICE, source }
                if source.raw_os_error() == Some(Errno::NOTTY.raw_os_error())),
            "{err:?}"
        );
    }
}
