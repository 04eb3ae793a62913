//! The emulated hypervisor's state and Xen's rules, with no I/O.
//!
//! * Memory: a domain's RAM is a set of pages, each its own `memfd`, so a
//!   grant or foreign map hands over exactly one page and never the rest.
//!   Each memfd is sealed at one page (`F_SEAL_SHRINK | F_SEAL_GROW |
//!   F_SEAL_SEAL`): whoever holds it cannot truncate it under another
//!   process's mapping, which would make that process's next access SIGBUS.
//! * Grant tables: references 0–7 are reserved; the toolstack fills ref 0
//!   (`GNTTAB_RESERVED_CONSOLE`) with the console page for the console
//!   backend, as Xen's domain builder does. A map succeeds only for an
//!   existing entry granted to the caller, writable only if not read-only.
//!   An entry cannot be ended while mapped.
//! * Foreign mapping: dom0 only.
//! * Event channels: a port allocated unbound for domain R can be bound
//!   only by R. Each channel has two eventfds, one per direction, so a
//!   notify is one `write` into the peer's eventfd. When one end closes, the
//!   other reverts to unbound (remote = the closer) and is woken, so it can
//!   see the close and the same backend can bind again after a restart.
//!   Only the connection that holds a port may close it, as only the fd that
//!   bound a port may unbind it on Linux.
//! * Limits: a domain has at most [`MAX_GUEST_PORTS`] ports (dom0
//!   [`MAX_DOM0_PORTS`]) and [`MAX_GRANTS`] grant entries, as Xen bounds
//!   them (`max_event_channels`, `max_grant_frames`); each port costs the
//!   emulator two eventfds, so an unbounded guest could exhaust its fds.
//!
//! Every refusal is an [`Refusal`] naming the rule; the caller logs it and
//! answers the requester, and nobody else is affected.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};

use crate::types::{DomId, EvtchnPort, Gfn, GrantRef, PAGE_SIZE};

/// Identifies one client connection to the hypervisor.
pub type ConnId = u64;

/// Ports a guest may have open at once: libxl's default
/// `max_event_channels`.
pub const MAX_GUEST_PORTS: usize = 1023;
/// Ports dom0 may have open at once (one per console it serves, at least):
/// the FIFO event-channel ABI's limit.
pub const MAX_DOM0_PORTS: usize = 1 << 17;
/// Grant entries a domain may have: Xen's default `max_grant_frames` (64)
/// of 512 version-1 entries each.
pub const MAX_GRANTS: usize = 64 * 512;

/// Offset of the `connection` byte in `struct xencons_interface`.
const CONSOLE_CONNECTION_OFFSET: u64 = 3088;
/// `XENCONSOLE_DISCONNECTED`.
const CONSOLE_DISCONNECTED: u8 = 1;

/// A rule refused the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    Unbound {
        remote: DomId,
    },
    Interdomain {
        remote: DomId,
        remote_port: EvtchnPort,
    },
}

#[derive(Debug)]
struct Port {
    state: PortState,
    /// Readable when the other end notified this one.
    wait: Arc<OwnedFd>,
    /// Written to notify the other end.
    kick: Arc<OwnedFd>,
    /// The connection whose handle holds this port, if any.
    holder: Option<ConnId>,
}

#[derive(Debug)]
struct Grant {
    to: DomId,
    gfn: Gfn,
    readonly: bool,
    maps: HashMap<ConnId, usize>,
}

/// What the domain builder told a guest (PV `start_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInfo {
    pub console_gfn: Gfn,
    pub console_port: EvtchnPort,
}

#[derive(Debug)]
struct Domain {
    name: String,
    pages: Vec<Arc<OwnedFd>>,
    grants: HashMap<u32, Grant>,
    ports: HashMap<u32, Port>,
    max_ports: usize,
    next_port: u32,
    next_gref: u32,
    start_info: Option<StartInfo>,
}

impl Domain {
    fn new(name: &str, max_ports: usize) -> Domain {
        Domain {
            name: name.to_owned(),
            pages: Vec::new(),
            grants: HashMap::new(),
            ports: HashMap::new(),
            max_ports,
            next_port: 1,
            next_gref: GrantRef::FIRST_FREE,
            start_info: None,
        }
    }

    fn page(&self, gfn: Gfn) -> Result<&Arc<OwnedFd>, Refusal> {
        usize::try_from(gfn.0)
            .ok()
            .and_then(|i| self.pages.get(i))
            .map_or_else(|| refuse(format!("domain has no frame {gfn}")), Ok)
    }

    /// Refuses once the domain has as many ports as it may have.
    fn check_port_room(&self) -> Result<(), Refusal> {
        if self.ports.len() >= self.max_ports {
            return refuse(format!(
                "domain has {} event channel ports, its limit",
                self.max_ports
            ));
        }
        Ok(())
    }

    /// Inserts `port` under a free number; call
    /// [`check_port_room`](Self::check_port_room) first.
    fn new_port(&mut self, port: Port) -> EvtchnPort {
        // Terminates: fewer than `max_ports` numbers are taken.
        while self.next_port == 0 || self.ports.contains_key(&self.next_port) {
            self.next_port = self.next_port.wrapping_add(1);
        }
        let p = self.next_port;
        self.ports.insert(p, port);
        self.next_port = p.wrapping_add(1);
        EvtchnPort(p)
    }
}

/// The descriptors for one bound end of an event channel.
#[derive(Debug)]
pub struct PortFds {
    pub port: EvtchnPort,
    pub wait: Arc<OwnedFd>,
    pub kick: Arc<OwnedFd>,
}

/// A domain as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: DomId,
    pub name: String,
    pub pages: usize,
}

#[derive(Debug, Default)]
pub struct Hypervisor {
    domains: HashMap<DomId, Domain>,
    next_domid: u16,
}

fn new_eventfd() -> Result<Arc<OwnedFd>, Refusal> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map(Arc::new)
        .map_err(|e| Refusal(format!("eventfd: {e}")))
}

fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

impl Hypervisor {
    /// A hypervisor with dom0 (no pages of its own: it maps others').
    pub fn new() -> Hypervisor {
        let mut domains = HashMap::new();
        domains.insert(DomId::DOM0, Domain::new("Domain-0", MAX_DOM0_PORTS));
        Hypervisor {
            domains,
            next_domid: 1,
        }
    }

    fn domain(&self, d: DomId) -> Result<&Domain, Refusal> {
        self.domains
            .get(&d)
            .map_or_else(|| refuse(format!("no domain {d}")), Ok)
    }

    fn domain_mut(&mut self, d: DomId) -> Result<&mut Domain, Refusal> {
        self.domains
            .get_mut(&d)
            .map_or_else(|| refuse(format!("no domain {d}")), Ok)
    }

    pub fn exists(&self, d: DomId) -> bool {
        self.domains.contains_key(&d)
    }

    pub fn list(&self) -> Vec<DomainInfo> {
        let mut v: Vec<DomainInfo> = self
            .domains
            .iter()
            .map(|(d, dom)| DomainInfo {
                domid: *d,
                name: dom.name.clone(),
                pages: dom.pages.len(),
            })
            .collect();
        v.sort_by_key(|i| i.domid);
        v
    }

    // --- toolstack -------------------------------------------------------

    /// Builds a domain of `pages` pages with a primary console as Xen's
    /// domain builder sets it up: the last page is the console ring, its
    /// `connection` byte says disconnected, grant ref 0 gives it to
    /// `console_backend`, and an unbound port waits for that backend.
    pub fn create_domain(
        &mut self,
        name: &str,
        pages: usize,
        console_backend: DomId,
    ) -> Result<(DomId, StartInfo), Refusal> {
        if pages == 0 || pages > 4096 {
            return refuse("a domain needs 1 to 4096 pages");
        }
        if !self.exists(console_backend) {
            return refuse(format!(
                "console backend domain {console_backend} does not exist"
            ));
        }
        let domid = self.free_domid()?;
        let mut dom = Domain::new(name, MAX_GUEST_PORTS);
        for _ in 0..pages {
            dom.pages.push(Arc::new(new_page()?));
        }
        let console_gfn = Gfn(u64::try_from(pages - 1).unwrap_or(0));
        let ring = dom.page(console_gfn)?.clone();
        rustix::io::pwrite(&*ring, &[CONSOLE_DISCONNECTED], CONSOLE_CONNECTION_OFFSET)
            .map_err(|e| Refusal(format!("writing the console page: {e}")))?;
        dom.grants.insert(
            GrantRef::CONSOLE.0,
            Grant {
                to: console_backend,
                gfn: console_gfn,
                readonly: false,
                maps: HashMap::new(),
            },
        );
        let console_port = dom.new_port(Port {
            state: PortState::Unbound {
                remote: console_backend,
            },
            wait: new_eventfd()?,
            kick: new_eventfd()?,
            holder: None,
        });
        let info = StartInfo {
            console_gfn,
            console_port,
        };
        dom.start_info = Some(info);
        self.domains.insert(domid, dom);
        Ok((domid, info))
    }

    fn free_domid(&mut self) -> Result<DomId, Refusal> {
        for _ in 0..DomId::FIRST_RESERVED {
            let d = DomId(self.next_domid);
            self.next_domid = if self.next_domid + 1 >= DomId::FIRST_RESERVED {
                1
            } else {
                self.next_domid + 1
            };
            if !self.exists(d) {
                return Ok(d);
            }
        }
        refuse("no free domain ids")
    }

    /// Destroys a domain: its ports close (peers revert to unbound and are
    /// woken), its grants go, and its pages are freed once unmapped.
    pub fn destroy_domain(&mut self, d: DomId) -> Result<(), Refusal> {
        if d == DomId::DOM0 {
            return refuse("dom0 cannot be destroyed");
        }
        let dom = self
            .domains
            .remove(&d)
            .map_or_else(|| refuse(format!("no domain {d}")), Ok)?;
        for port in dom.ports.into_values() {
            self.peer_closed(d, port.state);
        }
        Ok(())
    }

    pub fn start_info(&self, d: DomId) -> Result<StartInfo, Refusal> {
        self.domain(d)?
            .start_info
            .map_or_else(|| refuse(format!("domain {d} has no start info")), Ok)
    }

    // --- memory and grants ------------------------------------------------

    /// One of the caller's own pages.
    pub fn own_page(&self, caller: DomId, gfn: Gfn) -> Result<Arc<OwnedFd>, Refusal> {
        Ok(self.domain(caller)?.page(gfn)?.clone())
    }

    pub fn grant_access(
        &mut self,
        caller: DomId,
        to: DomId,
        gfn: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, Refusal> {
        if !self.exists(to) {
            return refuse(format!("grant to domain {to}, which does not exist"));
        }
        let dom = self.domain_mut(caller)?;
        dom.page(gfn)?;
        if dom.grants.len() >= MAX_GRANTS {
            return refuse(format!("grant table full ({MAX_GRANTS} entries)"));
        }
        while dom.grants.contains_key(&dom.next_gref) {
            dom.next_gref = dom.next_gref.wrapping_add(1).max(GrantRef::FIRST_FREE);
        }
        let r = dom.next_gref;
        dom.grants.insert(
            r,
            Grant {
                to,
                gfn,
                readonly,
                maps: HashMap::new(),
            },
        );
        dom.next_gref = r.wrapping_add(1).max(GrantRef::FIRST_FREE);
        Ok(GrantRef(r))
    }

    pub fn end_access(&mut self, caller: DomId, gref: GrantRef) -> Result<(), Refusal> {
        let dom = self.domain_mut(caller)?;
        let Some(g) = dom.grants.get(&gref.0) else {
            return refuse(format!("no grant {gref}"));
        };
        if g.maps.values().sum::<usize>() > 0 {
            return refuse(format!("grant {gref} is still mapped by domain {}", g.to));
        }
        dom.grants.remove(&gref.0);
        Ok(())
    }

    /// Maps grant `gref` of `owner` for `caller` (on connection `conn`).
    pub fn map_grant(
        &mut self,
        caller: DomId,
        conn: ConnId,
        owner: DomId,
        gref: GrantRef,
        writable: bool,
    ) -> Result<Arc<OwnedFd>, Refusal> {
        let dom = self.domain_mut(owner)?;
        let Some(g) = dom.grants.get_mut(&gref.0) else {
            return refuse(format!("domain {owner} has no grant {gref}"));
        };
        if g.to != caller {
            return refuse(format!(
                "grant {gref} of domain {owner} is for domain {}, not {caller}",
                g.to
            ));
        }
        if writable && g.readonly {
            return refuse(format!("grant {gref} of domain {owner} is read-only"));
        }
        let gfn = g.gfn;
        *g.maps.entry(conn).or_default() += 1;
        Ok(dom.page(gfn)?.clone())
    }

    pub fn unmap_grant(&mut self, conn: ConnId, owner: DomId, gref: GrantRef) {
        let Some(g) = self
            .domains
            .get_mut(&owner)
            .and_then(|d| d.grants.get_mut(&gref.0))
        else {
            return;
        };
        if let Some(n) = g.maps.get_mut(&conn) {
            *n -= 1;
            if *n == 0 {
                g.maps.remove(&conn);
            }
        }
    }

    /// Maps a frame of `owner` by number: dom0 only.
    pub fn map_foreign(
        &self,
        caller: DomId,
        owner: DomId,
        gfn: Gfn,
    ) -> Result<Arc<OwnedFd>, Refusal> {
        if caller != DomId::DOM0 {
            return refuse(format!("domain {caller} may not map foreign frames"));
        }
        Ok(self.domain(owner)?.page(gfn)?.clone())
    }

    // --- event channels ---------------------------------------------------

    /// Allocates a port in `owner`'s table that `remote` may bind. Only the
    /// owner itself, or dom0 acting as toolstack, may do this.
    pub fn alloc_unbound(
        &mut self,
        caller: DomId,
        conn: Option<ConnId>,
        owner: DomId,
        remote: DomId,
    ) -> Result<PortFds, Refusal> {
        if caller != owner && caller != DomId::DOM0 {
            return refuse(format!(
                "domain {caller} may not allocate ports for domain {owner}"
            ));
        }
        if !self.exists(remote) {
            return refuse(format!("remote domain {remote} does not exist"));
        }
        self.domain(owner)?.check_port_room()?;
        let (wait, kick) = (new_eventfd()?, new_eventfd()?);
        let holder = if caller == owner { conn } else { None };
        let port = self.domain_mut(owner)?.new_port(Port {
            state: PortState::Unbound { remote },
            wait: wait.clone(),
            kick: kick.clone(),
            holder,
        });
        Ok(PortFds { port, wait, kick })
    }

    /// Takes over a port of the caller's own table that nobody holds (one
    /// the toolstack allocated for it, such as its console port).
    pub fn adopt_port(
        &mut self,
        caller: DomId,
        conn: ConnId,
        port: EvtchnPort,
    ) -> Result<PortFds, Refusal> {
        let dom = self.domain_mut(caller)?;
        let Some(p) = dom.ports.get_mut(&port.0) else {
            return refuse(format!("domain {caller} has no port {port}"));
        };
        if p.holder.is_some() {
            return refuse(format!("port {port} of domain {caller} is already in use"));
        }
        p.holder = Some(conn);
        Ok(PortFds {
            port,
            wait: p.wait.clone(),
            kick: p.kick.clone(),
        })
    }

    /// Binds a new port of `caller` to `remote_port` of `remote`, which must
    /// be unbound and allocated for `caller`.
    pub fn bind_interdomain(
        &mut self,
        caller: DomId,
        conn: ConnId,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<PortFds, Refusal> {
        self.domain(caller)?.check_port_room()?;
        let rdom = self.domain_mut(remote)?;
        let Some(rp) = rdom.ports.get_mut(&remote_port.0) else {
            return refuse(format!("domain {remote} has no port {remote_port}"));
        };
        match rp.state {
            PortState::Unbound { remote: allowed } if allowed == caller => {}
            PortState::Unbound { remote: allowed } => {
                return refuse(format!(
                    "port {remote_port} of domain {remote} was allocated for domain {allowed}, not {caller}"
                ))
            }
            PortState::Interdomain { .. } => return refuse(format!("port {remote_port} of domain {remote} is already bound")),
        }
        // The binder waits where the allocator kicks, and kicks where it waits.
        let (wait, kick) = (rp.kick.clone(), rp.wait.clone());
        let local = self.domain_mut(caller)?.new_port(Port {
            state: PortState::Interdomain {
                remote,
                remote_port,
            },
            wait: wait.clone(),
            kick: kick.clone(),
            holder: Some(conn),
        });
        if let Some(rp) = self
            .domains
            .get_mut(&remote)
            .and_then(|d| d.ports.get_mut(&remote_port.0))
        {
            rp.state = PortState::Interdomain {
                remote: caller,
                remote_port: local,
            };
        }
        Ok(PortFds {
            port: local,
            wait,
            kick,
        })
    }

    /// Closes a port of `caller` that connection `conn` holds; its peer
    /// reverts to unbound and is woken. Another process's port of the same
    /// domain (say, another backend in dom0) is not this connection's to
    /// close, as Linux's evtchn answers `ENOTCONN` for a port another fd
    /// bound.
    pub fn close_port(
        &mut self,
        caller: DomId,
        conn: ConnId,
        port: EvtchnPort,
    ) -> Result<(), Refusal> {
        let dom = self.domain_mut(caller)?;
        match dom.ports.get(&port.0) {
            None => return refuse(format!("domain {caller} has no port {port}")),
            Some(p) if p.holder != Some(conn) => {
                return refuse(format!("port {port} of domain {caller} is not bound here"))
            }
            Some(_) => {}
        }
        if let Some(p) = dom.ports.remove(&port.0) {
            self.peer_closed(caller, p.state);
        }
        Ok(())
    }

    fn peer_closed(&mut self, closer: DomId, state: PortState) {
        let PortState::Interdomain {
            remote,
            remote_port,
        } = state
        else {
            return;
        };
        if let Some(rp) = self
            .domains
            .get_mut(&remote)
            .and_then(|d| d.ports.get_mut(&remote_port.0))
        {
            rp.state = PortState::Unbound { remote: closer };
            wake(&rp.wait);
        }
    }

    pub fn port_status(&self, caller: DomId, port: EvtchnPort) -> Result<PortState, Refusal> {
        self.domain(caller)?
            .ports
            .get(&port.0)
            .map(|p| p.state)
            .map_or_else(|| refuse(format!("domain {caller} has no port {port}")), Ok)
    }

    /// Cleans up after a connection that went away: its ports close and its
    /// grant mappings are released. Ports the toolstack allocated for a
    /// domain (the console port) stay, unheld, for the next process.
    pub fn connection_closed(&mut self, caller: DomId, conn: ConnId) {
        let mut closed = Vec::new();
        if let Some(dom) = self.domains.get_mut(&caller) {
            let held: Vec<u32> = dom
                .ports
                .iter()
                .filter(|(_, p)| p.holder == Some(conn))
                .map(|(n, _)| *n)
                .collect();
            for n in held {
                let keep = dom.start_info.is_some_and(|s| s.console_port.0 == n);
                if keep {
                    if let Some(p) = dom.ports.get_mut(&n) {
                        p.holder = None;
                    }
                } else if let Some(p) = dom.ports.remove(&n) {
                    closed.push(p.state);
                }
            }
        }
        for state in closed {
            self.peer_closed(caller, state);
        }
        for dom in self.domains.values_mut() {
            for g in dom.grants.values_mut() {
                g.maps.remove(&conn);
            }
        }
    }
}

/// One page of guest RAM: a memfd of one page, sealed at that size so no
/// holder (the guest itself, a backend) can shrink it under the others'
/// mappings, and sealed against further seals (say, `F_SEAL_WRITE`).
fn new_page() -> Result<OwnedFd, Refusal> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("xen-page", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Refusal(format!("memfd_create: {e}")))?;
    rustix::fs::ftruncate(&fd, PAGE_SIZE as u64).map_err(|e| Refusal(format!("ftruncate: {e}")))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| Refusal(format!("sealing a page: {e}")))?;
    Ok(fd)
}

/// Reads one byte of a page (for tests and the toolstack).
pub fn peek(page: &OwnedFd, offset: u64) -> u8 {
    let mut b = [0u8; 1];
    let _ = rustix::io::pread(page.as_fd(), &mut b, offset);
    b[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv_with_guest() -> (Hypervisor, DomId, StartInfo) {
        let mut hv = Hypervisor::new();
        let (d, si) = hv.create_domain("guest", 4, DomId::DOM0).unwrap();
        (hv, d, si)
    }

    #[test]
    fn domain_builder_sets_up_the_primary_console() {
        let (hv, d, si) = hv_with_guest();
        assert_eq!(si.console_gfn, Gfn(3));
        let page = hv.own_page(d, si.console_gfn).unwrap();
        assert_eq!(peek(&page, CONSOLE_CONNECTION_OFFSET), CONSOLE_DISCONNECTED);
        assert_eq!(
            hv.port_status(d, si.console_port),
            Ok(PortState::Unbound {
                remote: DomId::DOM0
            })
        );
    }

    #[test]
    fn grant_zero_is_for_the_console_backend_only() {
        let (mut hv, d, _) = hv_with_guest();
        hv.map_grant(DomId::DOM0, 1, d, GrantRef::CONSOLE, true)
            .unwrap();
        let (other, _) = hv.create_domain("other", 1, DomId::DOM0).unwrap();
        assert!(hv.map_grant(other, 2, d, GrantRef::CONSOLE, true).is_err());
    }

    #[test]
    fn grants_are_checked_for_grantee_validity_and_writability() {
        let (mut hv, d, _) = hv_with_guest();
        let (e, _) = hv.create_domain("e", 1, DomId::DOM0).unwrap();
        let r = hv.grant_access(d, DomId::DOM0, Gfn(0), true).unwrap();
        assert!(r.0 >= GrantRef::FIRST_FREE);
        assert!(
            hv.map_grant(e, 1, d, r, false).is_err(),
            "granted to dom0, not e"
        );
        assert!(
            hv.map_grant(DomId::DOM0, 1, d, r, true).is_err(),
            "read-only grant"
        );
        hv.map_grant(DomId::DOM0, 1, d, r, false).unwrap();
        assert!(hv.end_access(d, r).is_err(), "still mapped");
        hv.unmap_grant(1, d, r);
        hv.end_access(d, r).unwrap();
        assert!(
            hv.map_grant(DomId::DOM0, 1, d, r, false).is_err(),
            "revoked"
        );
        assert!(
            hv.grant_access(d, DomId::DOM0, Gfn(99), false).is_err(),
            "no such frame"
        );
    }

    #[test]
    fn only_dom0_maps_foreign_frames() {
        let (hv, d, si) = hv_with_guest();
        hv.map_foreign(DomId::DOM0, d, si.console_gfn).unwrap();
        assert!(hv.map_foreign(d, DomId::DOM0, Gfn(0)).is_err());
        assert!(hv.map_foreign(DomId::DOM0, d, Gfn(4)).is_err());
    }

    #[test]
    fn a_port_binds_only_for_the_domain_it_was_allocated_for() {
        let (mut hv, d, si) = hv_with_guest();
        let (e, _) = hv.create_domain("e", 1, DomId::DOM0).unwrap();
        assert!(hv.bind_interdomain(e, 5, d, si.console_port).is_err());
        let b = hv
            .bind_interdomain(DomId::DOM0, 1, d, si.console_port)
            .unwrap();
        assert!(
            hv.bind_interdomain(DomId::DOM0, 1, d, si.console_port)
                .is_err(),
            "already bound"
        );
        assert_eq!(
            hv.port_status(d, si.console_port),
            Ok(PortState::Interdomain {
                remote: DomId::DOM0,
                remote_port: b.port
            })
        );
        assert!(
            hv.alloc_unbound(d, Some(3), e, DomId::DOM0).is_err(),
            "not its table"
        );
    }

    #[test]
    fn notify_is_a_write_into_the_peers_eventfd() {
        let (mut hv, d, si) = hv_with_guest();
        let g = hv.adopt_port(d, 7, si.console_port).unwrap();
        let b = hv
            .bind_interdomain(DomId::DOM0, 1, d, si.console_port)
            .unwrap();
        wake(&b.kick);
        let mut buf = [0u8; 8];
        rustix::io::read(&*g.wait, &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 1);
        wake(&g.kick);
        rustix::io::read(&*b.wait, &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 1);
    }

    #[test]
    fn closing_one_end_unbinds_the_other_so_the_backend_can_rebind() {
        let (mut hv, d, si) = hv_with_guest();
        let g = hv.adopt_port(d, 7, si.console_port).unwrap();
        let b = hv
            .bind_interdomain(DomId::DOM0, 1, d, si.console_port)
            .unwrap();
        hv.connection_closed(DomId::DOM0, 1);
        assert_eq!(
            hv.port_status(d, si.console_port),
            Ok(PortState::Unbound {
                remote: DomId::DOM0
            })
        );
        assert!(hv.port_status(DomId::DOM0, b.port).is_err());
        let mut buf = [0u8; 8];
        assert!(
            rustix::io::read(&*g.wait, &mut buf).is_ok(),
            "guest was woken"
        );
        hv.bind_interdomain(DomId::DOM0, 2, d, si.console_port)
            .unwrap();
    }

    #[test]
    fn destroying_a_domain_unbinds_its_peers_and_frees_its_id() {
        let (mut hv, d, si) = hv_with_guest();
        let b = hv
            .bind_interdomain(DomId::DOM0, 1, d, si.console_port)
            .unwrap();
        hv.destroy_domain(d).unwrap();
        assert_eq!(
            hv.port_status(DomId::DOM0, b.port),
            Ok(PortState::Unbound { remote: d })
        );
        assert!(hv
            .map_grant(DomId::DOM0, 1, d, GrantRef::CONSOLE, true)
            .is_err());
        assert!(hv.destroy_domain(DomId::DOM0).is_err());
        assert!(!hv.list().iter().any(|i| i.domid == d));
    }

    #[test]
    fn a_page_cannot_be_resized_or_resealed_by_whoever_holds_it() {
        use rustix::fs::SealFlags;
        let (hv, d, si) = hv_with_guest();
        let page = hv.own_page(d, si.console_gfn).unwrap();
        // A guest truncating its ring page would SIGBUS the backend that
        // maps it on its next access.
        assert!(rustix::fs::ftruncate(&*page, 0).is_err());
        assert!(rustix::fs::ftruncate(&*page, 2 * PAGE_SIZE as u64).is_err());
        assert!(rustix::fs::fcntl_add_seals(&*page, SealFlags::WRITE).is_err());
        let size = rustix::fs::fstat(&*page).unwrap().st_size;
        assert_eq!(u64::try_from(size), Ok(PAGE_SIZE as u64));
    }

    #[test]
    fn a_guest_runs_out_of_ports_before_the_emulator_runs_out_of_fds() {
        let (mut hv, d, _) = hv_with_guest();
        assert_eq!(hv.domains[&d].max_ports, MAX_GUEST_PORTS);
        assert_eq!(hv.domains[&DomId::DOM0].max_ports, MAX_DOM0_PORTS);
        // A small limit keeps the test's own fd use small; the console
        // port counts.
        hv.domains.get_mut(&d).unwrap().max_ports = 3;
        hv.alloc_unbound(d, Some(7), d, DomId::DOM0).unwrap();
        let p = hv.alloc_unbound(d, Some(7), d, DomId::DOM0).unwrap();
        let err = hv.alloc_unbound(d, Some(7), d, DomId::DOM0).unwrap_err();
        assert!(err.0.contains("limit"), "{err}");
        let by_toolstack = hv.alloc_unbound(DomId::DOM0, None, d, DomId::DOM0);
        assert!(by_toolstack.is_err());
        // Binding counts too: dom0 offers a port, the full guest cannot bind.
        let offer = hv
            .alloc_unbound(DomId::DOM0, Some(1), DomId::DOM0, d)
            .unwrap();
        assert!(hv.bind_interdomain(d, 7, DomId::DOM0, offer.port).is_err());
        // Closing one makes room again.
        hv.close_port(d, 7, p.port).unwrap();
        hv.bind_interdomain(d, 7, DomId::DOM0, offer.port).unwrap();
    }

    #[test]
    fn a_grant_table_is_bounded() {
        let (mut hv, d, _) = hv_with_guest();
        for _ in 1..MAX_GRANTS {
            hv.grant_access(d, DomId::DOM0, Gfn(0), true).unwrap();
        }
        let err = hv.grant_access(d, DomId::DOM0, Gfn(0), true).unwrap_err();
        assert!(err.0.contains("grant table full"), "{err}");
    }

    #[test]
    fn only_the_connection_holding_a_port_closes_it() {
        let (mut hv, d, si) = hv_with_guest();
        let p = hv.alloc_unbound(d, Some(7), d, DomId::DOM0).unwrap();
        let err = hv.close_port(d, 8, p.port).unwrap_err();
        assert!(err.0.contains("not bound here"), "{err}");
        // Nor the toolstack's console port before a process adopts it.
        assert!(hv.close_port(d, 8, si.console_port).is_err());
        hv.close_port(d, 7, p.port).unwrap();
        assert!(hv.port_status(d, p.port).is_err());
    }

    #[test]
    fn guest_connection_loss_keeps_its_console_port_for_the_next_process() {
        let (mut hv, d, si) = hv_with_guest();
        hv.adopt_port(d, 7, si.console_port).unwrap();
        let extra = hv.alloc_unbound(d, Some(7), d, DomId::DOM0).unwrap();
        hv.connection_closed(d, 7);
        assert!(hv.port_status(d, extra.port).is_err());
        hv.adopt_port(d, 8, si.console_port).unwrap();
    }
}
