//! [`EvtchnDevice`]: one open of `/dev/xen/evtchn`.
//!
//! Kernel behaviour this relies on (`drivers/xen/evtchn.c`): binds return
//! the local port; ports start enabled; a port that fires is masked and
//! queued once on this fd's pending ring until userspace writes it back;
//! `read` returns whole `u32` ports (at most a page per call) or `EAGAIN`
//! when none are queued (the fd is `O_NONBLOCK`); `write` of a port this fd
//! bound re-enables it and silently ignores any other; UNBIND/NOTIFY of a
//! port not bound here fail with `ENOTCONN`. The pending ring holds one
//! slot per bound port, so it overflows only if a masked port fires again,
//! which Xen does not do; should it still overflow, reads fail with `EFBIG`
//! (and poll reports POLLERR) until RESET, and the queued ports are lost.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::abi::evtchn::{
    BindInterdomain, BindUnboundPort, Notify, RestrictDomid, Unbind, IOCTL_EVTCHN_RESET,
};
use crate::abi::{ioctl, ioctl_no_arg};
use crate::error::{Error, Result};
use crate::types::{DomId, EvtchnPort, PAGE_SIZE};
use crate::EventChannels;

const DEVICE: &str = "/dev/xen/evtchn";
const PORT_BYTES: usize = std::mem::size_of::<u32>();

/// One event-channel handle over `/dev/xen/evtchn`. Its fd is readable
/// while a bound port has fired; dropping it unbinds all its ports.
#[derive(Debug)]
pub struct EvtchnDevice {
    fd: OwnedFd,
    /// The ports bound through this fd, as the kernel tracks them.
    bound: BTreeSet<EvtchnPort>,
}

impl EvtchnDevice {
    /// Opens `/dev/xen/evtchn`, non-blocking.
    pub fn open() -> Result<EvtchnDevice> {
        let fd = super::open_device(Path::new(DEVICE), DEVICE, OFlags::NONBLOCK)?;
        Ok(EvtchnDevice {
            fd,
            bound: BTreeSet::new(),
        })
    }

    /// Restricts this handle to binding ports of `domid` only (for a
    /// deprivileged backend). Cannot be undone.
    pub fn restrict_domid(&mut self, domid: DomId) -> Result<()> {
        let mut arg = RestrictDomid { domid: domid.0 };
        ioctl(self.fd.as_fd(), &mut arg).map_err(|e| Error::device("restrict domid", DEVICE, e))?;
        Ok(())
    }

    /// Empties the pending ring and clears an overflow. Ports that had fired
    /// stay masked until [`unmask`](EventChannels::unmask)ed.
    pub fn reset(&mut self) -> Result<()> {
        // SAFETY: IOCTL_EVTCHN_RESET takes no argument; the driver ignores it.
        unsafe { ioctl_no_arg(self.fd.as_fd(), IOCTL_EVTCHN_RESET) }
            .map_err(|e| Error::device("reset", DEVICE, e))?;
        Ok(())
    }

    fn port_from(&self, op: &'static str, rc: std::ffi::c_int) -> Result<EvtchnPort> {
        u32::try_from(rc).map(EvtchnPort).map_err(|_| {
            let bad = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("kernel returned port {rc}"),
            );
            Error::device(op, DEVICE, bad)
        })
    }

    /// After `EFBIG`: resets the ring, reports every bound port as pending
    /// (any of them may have fired, been masked and lost), and returns the
    /// error so the caller knows events were lost.
    fn recover_from_overflow(&mut self, out: &mut Vec<EvtchnPort>) -> Error {
        if let Err(e) = self.reset() {
            tracing::warn!(error = %e, "resetting the overflowed event-channel ring failed");
        }
        out.extend(self.bound.iter().copied());
        Error::device(
            "read pending ports (ring overflowed; reset, all bound ports reported)",
            DEVICE,
            Errno::FBIG,
        )
    }
}

/// Appends the whole native-endian `u32` ports in `bytes` to `out`.
fn push_ports(bytes: &[u8], out: &mut Vec<EvtchnPort>) {
    let ports = bytes.chunks_exact(PORT_BYTES).filter_map(|c| {
        let word = <[u8; PORT_BYTES]>::try_from(c).ok()?;
        Some(EvtchnPort(u32::from_ne_bytes(word)))
    });
    out.extend(ports);
}

impl AsFd for EvtchnDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl EventChannels for EvtchnDevice {
    fn bind_interdomain(&mut self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort> {
        const OP: &str = "bind interdomain event channel";
        let mut arg = BindInterdomain {
            remote_domain: u32::from(remote.0),
            remote_port: remote_port.0,
        };
        let rc = ioctl(self.fd.as_fd(), &mut arg).map_err(|e| Error::device(OP, DEVICE, e))?;
        let port = self.port_from(OP, rc)?;
        self.bound.insert(port);
        Ok(port)
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort> {
        const OP: &str = "allocate unbound event channel";
        let mut arg = BindUnboundPort {
            remote_domain: u32::from(remote.0),
        };
        let rc = ioctl(self.fd.as_fd(), &mut arg).map_err(|e| Error::device(OP, DEVICE, e))?;
        let port = self.port_from(OP, rc)?;
        self.bound.insert(port);
        Ok(port)
    }

    fn unbind(&mut self, port: EvtchnPort) -> Result<()> {
        let mut arg = Unbind { port: port.0 };
        let result = ioctl(self.fd.as_fd(), &mut arg);
        if matches!(result, Ok(_) | Err(Errno::NOTCONN)) {
            self.bound.remove(&port);
        }
        match result {
            Ok(_) => Ok(()),
            Err(Errno::NOTCONN) => Err(Error::NotBound(port)),
            Err(e) => Err(Error::device("unbind event channel", DEVICE, e)),
        }
    }

    fn notify(&self, port: EvtchnPort) -> Result<()> {
        let mut arg = Notify { port: port.0 };
        match ioctl(self.fd.as_fd(), &mut arg) {
            Ok(_) => Ok(()),
            Err(Errno::NOTCONN) => Err(Error::NotBound(port)),
            Err(e) => Err(Error::device("notify event channel", DEVICE, e)),
        }
    }

    /// Reads fired ports until the ring is empty. On overflow (`EFBIG`) it
    /// resets the ring, appends *every* bound port (each may have fired and
    /// now be masked: handle and unmask them all) and returns an error.
    fn pending(&mut self, out: &mut Vec<EvtchnPort>) -> Result<()> {
        let mut buf = [0u8; PAGE_SIZE];
        loop {
            match rustix::io::read(&self.fd, &mut buf[..]) {
                Ok(0) => return Ok(()),
                Ok(n) => push_ports(&buf[..n], out),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::FBIG) => return Err(self.recover_from_overflow(out)),
                Err(e) => return Err(Error::device("read pending ports", DEVICE, e)),
            }
        }
    }

    fn unmask(&mut self, port: EvtchnPort) -> Result<()> {
        // The kernel ignores ports this fd did not bind; say so instead.
        if !self.bound.contains(&port) {
            return Err(Error::NotBound(port));
        }
        let bytes = port.0.to_ne_bytes();
        loop {
            match rustix::io::write(&self.fd, &bytes) {
                Ok(PORT_BYTES) => return Ok(()),
                Ok(n) => {
                    let short = std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("wrote {n} of {PORT_BYTES} bytes"),
                    );
                    return Err(Error::device("unmask event channel", DEVICE, short));
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::device("unmask event channel", DEVICE, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// An `EvtchnDevice` over one end of a non-blocking socket pair: reads
    /// and writes behave like the device's (whole `u32` ports, EAGAIN when
    /// empty); its ioctls fail with ENOTTY.
    fn device_over_socket(bound: &[u32]) -> (EvtchnDevice, UnixStream) {
        let (ours, kernel) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let dev = EvtchnDevice {
            fd: OwnedFd::from(ours),
            bound: bound.iter().copied().map(EvtchnPort).collect(),
        };
        (dev, kernel)
    }

    #[test]
    fn pending_bytes_become_whole_ports() {
        let mut bytes = Vec::new();
        for p in [3u32, 70_000, 1] {
            bytes.extend_from_slice(&p.to_ne_bytes());
        }
        bytes.push(0xff); // a torn trailing word is never a port
        let mut out = vec![EvtchnPort(9)];
        push_ports(&bytes, &mut out);
        assert_eq!(
            out,
            [
                EvtchnPort(9),
                EvtchnPort(3),
                EvtchnPort(70_000),
                EvtchnPort(1)
            ]
        );
    }

    #[test]
    fn pending_reads_every_queued_port_until_eagain() {
        let (mut dev, mut kernel) = device_over_socket(&[3, 5]);
        for p in [3u32, 5] {
            kernel.write_all(&p.to_ne_bytes()).unwrap();
        }
        let mut out = Vec::new();
        dev.pending(&mut out).unwrap();
        assert_eq!(out, [EvtchnPort(3), EvtchnPort(5)]);
        out.clear();
        dev.pending(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn unmask_writes_the_port_back_and_refuses_foreign_ports() {
        let (mut dev, mut kernel) = device_over_socket(&[7]);
        dev.unmask(EvtchnPort(7)).unwrap();
        let mut word = [0u8; 4];
        kernel.read_exact(&mut word).unwrap();
        assert_eq!(u32::from_ne_bytes(word), 7);
        assert!(matches!(
            dev.unmask(EvtchnPort(8)),
            Err(Error::NotBound(EvtchnPort(8)))
        ));
    }

    #[test]
    fn a_failing_ioctl_is_a_device_error_naming_the_operation() {
        let (mut dev, _kernel) = device_over_socket(&[]);
        let err = dev.notify(EvtchnPort(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "notify event channel on /dev/xen/evtchn failed"
        );
        let err = dev.alloc_unbound(DomId(1)).unwrap_err();
        assert!(matches!(
            err,
            Error::Device {
                op: "allocate unbound event channel",
                ..
            }
        ));
        assert!(dev.bound.is_empty());
    }
}
