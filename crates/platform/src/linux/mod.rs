//! The real Xen primitives of a Linux backend domain, over `/dev/xen/*`.
//!
//! * [`EvtchnDevice`]: one open of `/dev/xen/evtchn` (non-blocking); closing
//!   it unbinds every port it bound.
//! * [`Gntdev`]: `/dev/xen/gntdev`; each [`MappedPages`](crate::MappedPages)
//!   it returns frees its gntdev slots (UNMAP_GRANT_REF) after `munmap`.
//! * [`Privcmd`]: `/dev/xen/privcmd` (or `/proc/xen/privcmd`); foreign
//!   mappings are plain `munmap`ped.
//!
//! A device that is not there (`ENOENT`, or `ENODEV`/`ENXIO` from a node
//! without its driver) is [`Error::NoXen`], never a panic: the caller then
//! uses the emulated platform. No raw fd or pointer crosses this module's
//! public API; failures while releasing are logged, never panicked on.

mod evtchn;
mod gntdev;
mod privcmd;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

pub use evtchn::EvtchnDevice;
pub use gntdev::Gntdev;
pub use privcmd::Privcmd;

use crate::error::{Error, Result};
use crate::types::DomId;
use crate::{EventChannels, ForeignMapper, GrantMapper, Platform};

/// How often a frame that Xen reports paged out (gntdev `EAGAIN`, privcmd
/// `ENOENT`) is retried, and the pause before each retry. The C libraries
/// retry forever; a console can fail one device instead.
const PAGED_OUT_RETRIES: u32 = 20;
const PAGED_OUT_PAUSE: Duration = Duration::from_millis(5);

/// Opens a Xen device read-write and close-on-exec.
fn open_device(path: &Path, device: &'static str, extra: OFlags) -> Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC | extra;
    loop {
        match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::INTR) => continue,
            Err(Errno::NOENT | Errno::NODEV | Errno::NXIO) => {
                return Err(Error::NoXen {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(Error::device("open", device, e)),
        }
    }
}

/// The platform of a backend running in a Linux domain on real Xen.
#[derive(Debug)]
pub struct LinuxPlatform {
    domid: DomId,
    gntdev: Gntdev,
    privcmd: Privcmd,
}

impl LinuxPlatform {
    /// Opens the devices of a dom0 backend.
    pub fn open() -> Result<LinuxPlatform> {
        LinuxPlatform::open_as(DomId::DOM0)
    }

    /// Opens the devices of a backend running in domain `domid` (a driver
    /// domain). Probes `/dev/xen/evtchn` first, so on a machine without Xen
    /// the error names it.
    pub fn open_as(domid: DomId) -> Result<LinuxPlatform> {
        drop(EvtchnDevice::open()?);
        Ok(LinuxPlatform {
            domid,
            gntdev: Gntdev::open()?,
            privcmd: Privcmd::open()?,
        })
    }
}

impl Platform for LinuxPlatform {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn event_channels(&self) -> Result<Box<dyn EventChannels>> {
        Ok(Box::new(EvtchnDevice::open()?))
    }

    fn grant_mapper(&self) -> &dyn GrantMapper {
        &self.gntdev
    }

    fn foreign_mapper(&self) -> &dyn ForeignMapper {
        &self.privcmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_xen_here() -> bool {
        !Path::new("/dev/xen").exists()
    }

    #[test]
    fn a_missing_device_is_no_xen_naming_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evtchn");
        let err = open_device(&path, "test", OFlags::empty()).unwrap_err();
        assert!(
            matches!(&err, Error::NoXen { path: p } if *p == path),
            "{err:?}"
        );
    }

    #[test]
    fn a_device_that_cannot_be_opened_is_a_device_error() {
        let dir = tempfile::tempdir().unwrap();
        // Opening a directory read-write fails with EISDIR, not "absent".
        let err = open_device(dir.path(), "test", OFlags::empty()).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Device {
                    op: "open",
                    device: "test",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn without_xen_the_platform_says_so_and_names_evtchn() {
        if !no_xen_here() {
            return; // a real-Xen lab: covered by the lab tests
        }
        let err = LinuxPlatform::open().unwrap_err();
        assert_eq!(
            err.to_string(),
            "no Xen: /dev/xen/evtchn not found; use the emulated platform"
        );
    }

    #[test]
    fn without_xen_each_device_is_no_xen_with_its_path() {
        if !no_xen_here() {
            return;
        }
        let path_of = |r: Result<()>| match r {
            Err(Error::NoXen { path }) => path,
            other => panic!("expected NoXen, got {other:?}"),
        };
        assert_eq!(
            path_of(EvtchnDevice::open().map(drop)),
            Path::new("/dev/xen/evtchn")
        );
        assert_eq!(
            path_of(Gntdev::open().map(drop)),
            Path::new("/dev/xen/gntdev")
        );
        // Falls back to /proc/xen/privcmd, but reports the primary path.
        assert_eq!(
            path_of(Privcmd::open().map(drop)),
            Path::new("/dev/xen/privcmd")
        );
    }
}
