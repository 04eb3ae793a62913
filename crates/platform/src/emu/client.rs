//! The platform traits over the emulated hypervisor's sockets, for
//! backends ([`EmuPlatform`]) and guests ([`EmuGuest`]).
//!
//! Control requests (bind, map, grant) go to the emulator; the data path
//! does not: a mapped page is the guest's own memfd, and a notify is one
//! `write` into the eventfd the peer waits on. Each [`EmuEventChannels`]
//! handle is its own connection, so dropping it — or the process dying —
//! closes its ports, as closing `/dev/xen/evtchn` does.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::event::epoll;

use super::hypervisor::{PortState, StartInfo};
use super::proto::{Channel, Packet};
use crate::error::{Error, Result};
use crate::mapping::MappedPages;
use crate::types::{DomId, EvtchnPort, Gfn, GrantRef};
use crate::{EventChannels, ForeignMapper, GrantMapper, GuestPlatform, Platform};

fn connect(path: &Path) -> Result<Channel> {
    Channel::connect(path).map_err(|source| Error::Emulator {
        op: "connect",
        source,
    })
}

/// Sends one request; maps a refusal to [`Error::Refused`].
fn call(chan: &Channel, op: &'static str, text: &str) -> Result<Packet> {
    match chan.call(text, &[]) {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(reason)) => Err(Error::Refused { op, reason }),
        Err(source) => Err(Error::Emulator { op, source }),
    }
}

fn bad_reply(op: &'static str, p: &Packet) -> Error {
    Error::Emulator {
        op,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected reply {:?}", p.text),
        ),
    }
}

fn parse_word<T: std::str::FromStr>(op: &'static str, p: &Packet, i: usize) -> Result<T> {
    p.words()
        .get(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad_reply(op, p))
}

fn take_fd(op: &'static str, p: &mut Packet) -> Result<OwnedFd> {
    if p.fds.is_empty() {
        return Err(bad_reply(op, p));
    }
    Ok(p.fds.remove(0))
}

/// Maps the single page a reply carried, telling the emulator on unmap.
fn map_reply_page(
    mut p: Packet,
    op: &'static str,
    writable: bool,
    unmap: Option<(Arc<Channel>, String)>,
) -> Result<MappedPages> {
    let fd = take_fd(op, &mut p)?;
    let release = unmap.map(|(chan, text)| -> crate::mapping::Release {
        Box::new(move || {
            if let Err(e) = chan.call(&text, &[]) {
                tracing::warn!(error = %e, "telling the emulator about an unmap failed");
            }
        })
    });
    MappedPages::map_fd(fd.as_fd(), 0, 1, writable, release)
        .map_err(|source| Error::Emulator { op, source })
}

struct PortEnds {
    wait: OwnedFd,
    kick: OwnedFd,
}

/// An event-channel handle on the emulated hypervisor.
pub struct EmuEventChannels {
    chan: Channel,
    epoll: OwnedFd,
    ports: HashMap<u32, PortEnds>,
}

impl EmuEventChannels {
    fn open(path: &Path) -> Result<EmuEventChannels> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::Emulator {
            op: "epoll_create",
            source: e.into(),
        })?;
        Ok(EmuEventChannels {
            chan: connect(path)?,
            epoll,
            ports: HashMap::new(),
        })
    }

    fn add_port(&mut self, op: &'static str, mut p: Packet) -> Result<EvtchnPort> {
        let port: u32 = parse_word(op, &p, 0)?;
        if p.fds.len() != 2 {
            return Err(bad_reply(op, &p));
        }
        let kick = p.fds.remove(1);
        let wait = p.fds.remove(0);
        epoll::add(
            &self.epoll,
            &wait,
            epoll::EventData::new_u64(u64::from(port)),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::Emulator {
            op,
            source: e.into(),
        })?;
        self.ports.insert(port, PortEnds { wait, kick });
        Ok(EvtchnPort(port))
    }

    /// Takes over a port the toolstack allocated for this domain (a
    /// guest's console port from its start info).
    pub fn adopt(&mut self, port: EvtchnPort) -> Result<EvtchnPort> {
        let p = call(&self.chan, "adopt port", &format!("adopt {port}"))?;
        self.add_port("adopt port", p)
    }

    /// The state of one of this domain's ports, as `EVTCHNOP_status` says.
    pub fn status(&self, port: EvtchnPort) -> Result<PortState> {
        let p = call(&self.chan, "port status", &format!("status {port}"))?;
        let w = p.words();
        match w.as_slice() {
            ["unbound", r] => Ok(PortState::Unbound {
                remote: DomId(r.parse().map_err(|_| bad_reply("port status", &p))?),
            }),
            ["interdomain", r, rp] => Ok(PortState::Interdomain {
                remote: DomId(r.parse().map_err(|_| bad_reply("port status", &p))?),
                remote_port: EvtchnPort(rp.parse().map_err(|_| bad_reply("port status", &p))?),
            }),
            _ => Err(bad_reply("port status", &p)),
        }
    }
}

impl AsFd for EmuEventChannels {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl EventChannels for EmuEventChannels {
    fn bind_interdomain(&mut self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort> {
        let p = call(
            &self.chan,
            "bind interdomain",
            &format!("bind {remote} {remote_port}"),
        )?;
        self.add_port("bind interdomain", p)
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort> {
        let p = call(
            &self.chan,
            "alloc unbound",
            &format!("alloc_unbound {remote}"),
        )?;
        self.add_port("alloc unbound", p)
    }

    fn unbind(&mut self, port: EvtchnPort) -> Result<()> {
        let ends = self.ports.remove(&port.0).ok_or(Error::NotBound(port))?;
        let _ = epoll::delete(&self.epoll, &ends.wait);
        call(&self.chan, "unbind", &format!("close {port}"))?;
        Ok(())
    }

    fn notify(&self, port: EvtchnPort) -> Result<()> {
        let ends = self.ports.get(&port.0).ok_or(Error::NotBound(port))?;
        rustix::io::write(&ends.kick, &1u64.to_ne_bytes()).map_err(|e| Error::Emulator {
            op: "notify",
            source: e.into(),
        })?;
        Ok(())
    }

    fn pending(&mut self, out: &mut Vec<EvtchnPort>) -> Result<()> {
        // A console's handle has one port: reading its eventfd directly
        // saves an epoll_wait on the hot path.
        if self.ports.len() == 1 {
            if let Some((port, ends)) = self.ports.iter().next() {
                let mut buf = [0u8; 8];
                if rustix::io::read(&ends.wait, &mut buf).is_ok() {
                    out.push(EvtchnPort(*port));
                }
            }
            return Ok(());
        }
        let mut events = Vec::with_capacity(16);
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&zero),
        )
        .map_err(|e| Error::Emulator {
            op: "pending",
            source: e.into(),
        })?;
        for ev in &events {
            let port = u32::try_from(ev.data.u64()).unwrap_or(u32::MAX);
            if let Some(ends) = self.ports.get(&port) {
                let mut buf = [0u8; 8];
                // Reading resets the count: the port stays quiet until the
                // peer notifies again, like a masked port.
                let _ = rustix::io::read(&ends.wait, &mut buf);
                out.push(EvtchnPort(port));
            }
        }
        Ok(())
    }

    fn unmask(&mut self, port: EvtchnPort) -> Result<()> {
        if self.ports.contains_key(&port.0) {
            Ok(())
        } else {
            Err(Error::NotBound(port))
        }
    }
}

/// A backend domain (normally dom0) on the emulated Xen.
pub struct EmuPlatform {
    path: PathBuf,
    chan: Arc<Channel>,
    domid: DomId,
}

impl EmuPlatform {
    /// Connects to the emulator's hypervisor socket (`<dir>/xen` for dom0).
    pub fn connect(path: impl Into<PathBuf>) -> Result<EmuPlatform> {
        let path = path.into();
        let chan = Arc::new(connect(&path)?);
        let p = call(&chan, "whoami", "whoami")?;
        let domid = DomId(parse_word("whoami", &p, 0)?);
        Ok(EmuPlatform { path, chan, domid })
    }

    /// Sends a toolstack request (dom0 only): `create <name> <pages>`, ...
    pub fn toolstack(&self, text: &str) -> Result<String> {
        Ok(call(&self.chan, "toolstack request", text)?.text)
    }

    /// A new event-channel handle of the concrete type (with `status`).
    pub fn open_event_channels(&self) -> Result<EmuEventChannels> {
        EmuEventChannels::open(&self.path)
    }
}

impl Platform for EmuPlatform {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn event_channels(&self) -> Result<Box<dyn EventChannels>> {
        Ok(Box::new(self.open_event_channels()?))
    }

    fn grant_mapper(&self) -> &dyn GrantMapper {
        self
    }

    fn foreign_mapper(&self) -> &dyn ForeignMapper {
        self
    }
}

impl GrantMapper for EmuPlatform {
    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<MappedPages> {
        let [gref] = refs else {
            return Err(Error::NotImplemented(
                "mapping more or fewer than one grant at a time on the emulated platform",
            ));
        };
        let w = u8::from(writable);
        let p = call(
            &self.chan,
            "map grant",
            &format!("map_grant {domid} {gref} {w}"),
        )?;
        let unmap = Some((self.chan.clone(), format!("unmap_grant {domid} {gref}")));
        map_reply_page(p, "map grant", writable, unmap)
    }
}

impl ForeignMapper for EmuPlatform {
    fn map_foreign(&self, domid: DomId, gfns: &[Gfn], writable: bool) -> Result<MappedPages> {
        let [gfn] = gfns else {
            return Err(Error::NotImplemented(
                "mapping more or fewer than one foreign frame at a time on the emulated platform",
            ));
        };
        let p = call(
            &self.chan,
            "map foreign",
            &format!("map_foreign {domid} {gfn}"),
        )?;
        map_reply_page(p, "map foreign", writable, None)
    }
}

/// A guest domain on the emulated Xen.
pub struct EmuGuest {
    path: PathBuf,
    chan: Channel,
    domid: DomId,
}

impl EmuGuest {
    /// Connects to the domain's own hypervisor socket.
    pub fn connect(path: impl Into<PathBuf>) -> Result<EmuGuest> {
        let path = path.into();
        let chan = connect(&path)?;
        let p = call(&chan, "whoami", "whoami")?;
        let domid = DomId(parse_word("whoami", &p, 0)?);
        Ok(EmuGuest { path, chan, domid })
    }

    /// The console frame and port the domain builder set up.
    pub fn start_info(&self) -> Result<StartInfo> {
        let p = call(&self.chan, "start info", "start_info")?;
        Ok(StartInfo {
            console_gfn: Gfn(parse_word("start info", &p, 0)?),
            console_port: EvtchnPort(parse_word("start info", &p, 1)?),
        })
    }

    /// A new event-channel handle of the concrete type (with `adopt`).
    pub fn open_event_channels(&self) -> Result<EmuEventChannels> {
        EmuEventChannels::open(&self.path)
    }
}

impl GuestPlatform for EmuGuest {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn event_channels(&self) -> Result<Box<dyn EventChannels>> {
        Ok(Box::new(self.open_event_channels()?))
    }

    fn map_own_page(&self, gfn: Gfn) -> Result<MappedPages> {
        let p = call(&self.chan, "map own page", &format!("page {gfn}"))?;
        map_reply_page(p, "map own page", true, None)
    }

    fn grant_access(&self, to: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef> {
        let p = call(
            &self.chan,
            "grant access",
            &format!("grant {to} {gfn} {}", u8::from(readonly)),
        )?;
        Ok(GrantRef(parse_word("grant access", &p, 0)?))
    }

    fn end_access(&self, gref: GrantRef) -> Result<()> {
        call(&self.chan, "end access", &format!("end_grant {gref}"))?;
        Ok(())
    }
}
