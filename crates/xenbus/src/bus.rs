//! The XenBus: discovers devices under `/local/domain/<be>/backend/<type>`,
//! creates and destroys their instances and drives the handshake through
//! the backend and frontend `state` nodes (QEMU `hw/xen/xen-bus.c`, minus
//! the three behaviours `xen-console-facts.md` §2.1 warns about: it never
//! re-permissions a frontend directory, never deletes one it did not write,
//! and a frontend without a `state` can still be connected, see
//! [`Handshake::Direct`]).
//!
//! Event-driven, for a reactor to own: [`XenBus::start`] sets one watch per
//! backend type, each device adds one on its frontend, and
//! [`XenBus::handle_event`] takes the fired watches. Every decision is made
//! from the nodes as they are when the event is handled (level, not edge),
//! so coalesced or reordered events converge on the same result, and
//! [`XenBus::rescan`] recovers from dropped ones.
//!
//! Invariants:
//! * One device's trouble stays with it: a bad value, a XenStore error on
//!   its nodes or a failing callback is logged once, marks that device
//!   failed (and its backend Closing where that means something), and
//!   `handle_event` carries on with the others. Nothing here panics on
//!   store contents.
//! * A device whose `create` or `realize` failed stays recorded, inert,
//!   until its backend directory disappears: no retry loop.
//! * Backend writes check, in the same transaction, that the backend
//!   directory still exists, so a late write never resurrects a directory
//!   the toolstack removed.
//! * The bus removes only what it wrote itself ([`XenBus::plug`] records
//!   what that is). For devices the toolstack created it writes only the
//!   backend `state` and `hotplug-status` and deletes nothing; it never
//!   changes permissions of anything it did not create.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use platform::DomId;
use xenstore::client::{Client, Error as XsError, Transaction, WatchEvent, XenStore};
use xenstore::{Access, Perm, Perms, XsErrno};

use crate::backend::{BackendDevice, BackendType, DeviceError, DeviceInfo, Handshake};
use crate::paths;
use crate::state::XenbusState;

/// Every watch token the bus sets starts with this.
pub const TOKEN_PREFIX: &str = "xenbus:";

/// Backend keys that are the bus's business, not a device option.
const NOT_OPTIONS: [&str; 5] = [
    "state",
    "online",
    "frontend",
    "frontend-id",
    "hotplug-status",
];
/// Frontend keys `plug` writes itself.
const BUS_FRONTEND_NODES: [&str; 3] = ["backend", "backend-id", "state"];

/// Identifies a device on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceKey {
    pub backend_type: &'static str,
    pub frontend_id: DomId,
    pub devid: u32,
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.backend_type, self.frontend_id, self.devid
        )
    }
}

/// One line of [`XenBus::devices`], for a `list` control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub backend_type: &'static str,
    pub frontend_id: DomId,
    pub devid: u32,
    /// The backend `state` as last read or written.
    pub backend_state: XenbusState,
    /// `connect` succeeded and no `disconnect` followed.
    pub connected: bool,
    pub failed: bool,
    /// Why it failed (the error chain), while failed.
    pub error: Option<String>,
    /// Created by [`XenBus::plug`] rather than the toolstack.
    pub plugged: bool,
}

/// What the bus cannot do for a caller.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no backend type {0:?} is registered")]
    UnknownType(String),
    #[error("backend type {0:?} is already registered")]
    DuplicateType(&'static str),
    #[error("{0:?} cannot be a backend type name")]
    InvalidTypeName(&'static str),
    #[error("domain {0} cannot have devices")]
    InvalidDomId(DomId),
    #[error("{0:?} cannot be a frontend node name")]
    InvalidNodeName(String),
    #[error("{path} already exists")]
    Exists { path: String },
    #[error("no free device id for {backend_type} devices of domain {frontend_id}")]
    NoFreeDevid {
        backend_type: String,
        frontend_id: DomId,
    },
    #[error("no device {backend_type}/{frontend_id}/{devid}")]
    NoSuchDevice {
        backend_type: String,
        frontend_id: DomId,
        devid: u32,
    },
    #[error("XenStore {op} of {path} failed")]
    XenStore {
        op: &'static str,
        path: String,
        #[source]
        source: XsError,
    },
    /// Starting, committing or retrying a transaction failed.
    #[error("XenStore transaction failed")]
    Transaction(#[source] XsError),
    /// A plugged device's `create` or `realize` failed; what `plug` wrote
    /// has been removed again.
    #[error("device {key} did not start")]
    Device {
        key: DeviceKey,
        #[source]
        source: DeviceError,
    },
}

impl From<XsError> for BusError {
    fn from(e: XsError) -> BusError {
        BusError::Transaction(e)
    }
}

fn xs<'a>(op: &'static str, path: &'a str) -> impl FnOnce(XsError) -> BusError + 'a {
    move |source| BusError::XenStore {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What `plug` created, so teardown removes exactly that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owned {
    /// `backend/<type>/<fe>` did not exist before.
    backend_parent: bool,
    /// The frontend directory was written by `plug` (false when `plug`
    /// adopted a frontend directory the toolstack had made).
    frontend_dir: bool,
}

struct Device {
    info: DeviceInfo,
    handshake: Handshake,
    /// `None` once `create` or `realize` failed: the device is inert.
    instance: Option<Box<dyn BackendDevice>>,
    connected: bool,
    failure: Option<String>,
    backend_state: XenbusState,
    /// The last frontend state seen, for tracing changes only.
    frontend_state: Option<XenbusState>,
    /// The frontend path watched, if any.
    watching: Option<String>,
    owned: Option<Owned>,
}

impl Device {
    fn key(&self) -> DeviceKey {
        DeviceKey {
            backend_type: self.info.backend_type,
            frontend_id: self.info.frontend_id,
            devid: self.info.devid,
        }
    }

    /// Marks the device failed; logs only when it was not failed already.
    fn fail(&mut self, what: &str, detail: String) {
        if self.failure.is_none() {
            tracing::warn!(
                device = %self.key(),
                error = %detail,
                "xen_device_failed: {what}"
            );
        }
        self.failure = Some(format!("{what}: {detail}"));
    }
}

/// The error and its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What `drive` wants done with a device.
enum Next {
    Stay,
    /// Tear the device down; first write backend Closed if asked.
    Teardown {
        write_closed: bool,
    },
    /// The backend directory is gone.
    Gone,
}

/// A parsed watch token of this bus.
enum Token {
    Type(String),
    Frontend(String, DomId, u32),
}

/// The XenBus backend framework; see the module documentation.
pub struct XenBus {
    store: Arc<Client>,
    backend: DomId,
    types: BTreeMap<&'static str, Box<dyn BackendType>>,
    devices: BTreeMap<DeviceKey, Device>,
    started: bool,
}

fn read_opt(store: &impl XenStore, path: &str) -> Result<Option<Vec<u8>>, XsError> {
    match store.read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `online`: canonical decimal, non-zero means online (QEMU reads `%u`).
fn parse_online(v: &[u8]) -> Option<bool> {
    let s = std::str::from_utf8(v).ok()?;
    paths::parse_devid(s).map(|n| n != 0)
}

fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::new(entries.iter().map(|(a, d)| Perm::new(*a, d.0)).collect())
        .unwrap_or_else(|_| Perms::owned_by(0, Access::None))
}

fn put(tx: &Transaction<'_>, path: &str, value: &str, p: &Perms) -> Result<(), BusError> {
    tx.write(path, value.as_bytes())
        .map_err(xs("write", path))?;
    tx.set_perms(path, p).map_err(xs("set_perms", path))
}

/// Writes `nodes` below `dir` in one transaction if `dir` still exists;
/// `Ok(false)` if it does not.
fn write_if_present(store: &Client, dir: &str, nodes: &[(&str, &str)]) -> Result<bool, XsError> {
    store.transaction(|tx| {
        if !tx.exists(dir)? {
            return Ok(false);
        }
        for (name, value) in nodes {
            tx.write(&format!("{dir}/{name}"), value.as_bytes())?;
        }
        Ok(true)
    })
}

fn rm_if_present(tx: &Transaction<'_>, path: &str) -> Result<(), XsError> {
    match tx.rm(path) {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

/// The backend keys of a device except the bus's own, in one transaction.
fn read_options(store: &Client, dir: &str) -> Result<BTreeMap<String, String>, XsError> {
    store.transaction(|tx| {
        let mut options = BTreeMap::new();
        for key in tx.directory(dir)? {
            if NOT_OPTIONS.contains(&key.as_str()) {
                continue;
            }
            let path = format!("{dir}/{key}");
            let Some(value) = read_opt(tx, &path)? else {
                continue;
            };
            match String::from_utf8(value) {
                Ok(v) => {
                    options.insert(key, v);
                }
                Err(_) => tracing::warn!(%path, "backend option is not UTF-8, ignored"),
            }
        }
        Ok(options)
    })
}

/// Sets the backend `state` if the backend directory still exists.
/// `Ok(false)`: it is gone.
fn set_backend_state(store: &Client, dev: &mut Device, s: XenbusState) -> Result<bool, XsError> {
    let node = s.to_node();
    if !write_if_present(store, &dev.info.backend_path, &[("state", &node)])? {
        return Ok(false);
    }
    if dev.backend_state != s {
        tracing::info!(
            device = %dev.key(),
            from = dev.backend_state.name(),
            to = s.name(),
            "xen_device_backend_state"
        );
    }
    dev.backend_state = s;
    Ok(true)
}

/// `set_backend_state` where a failure only fails the device.
fn set_state_or_fail(store: &Client, dev: &mut Device, s: XenbusState) -> Next {
    match set_backend_state(store, dev, s) {
        Ok(true) => Next::Stay,
        Ok(false) => Next::Gone,
        Err(e) => {
            let path = format!("{}/state", dev.info.backend_path);
            dev.fail(&format!("cannot write {path}"), error_chain(&e));
            Next::Stay
        }
    }
}

/// Calls `connect`; Connected on success, Closing and failed on error
/// (`NotReady` on a direct device just waits).
fn try_connect(store: &Client, dev: &mut Device) -> Next {
    let Some(inst) = dev.instance.as_mut() else {
        return Next::Stay;
    };
    if dev.connected {
        inst.disconnect(&dev.info);
        dev.connected = false;
    }
    match inst.connect(store, &dev.info) {
        Ok(()) => {
            dev.connected = true;
            tracing::info!(device = %dev.key(), "xen_device_connect");
            set_state_or_fail(store, dev, XenbusState::Connected)
        }
        Err(DeviceError::NotReady(why)) if dev.handshake == Handshake::Direct => {
            tracing::debug!(device = %dev.key(), %why, "frontend not ready yet");
            Next::Stay
        }
        Err(e) => {
            dev.fail("connect failed", error_chain(&e));
            set_state_or_fail(store, dev, XenbusState::Closing)
        }
    }
}

/// The frontend `state`: missing is Unknown; a garbled value fails the
/// device and counts as Unknown. `Err` only for a XenStore error.
fn frontend_state(store: &Client, dev: &mut Device) -> Result<XenbusState, XsError> {
    let path = format!("{}/state", dev.info.frontend_path);
    let s = match read_opt(store, &path)? {
        None => XenbusState::Unknown,
        Some(v) => match XenbusState::parse(&v) {
            Some(s) => s,
            None => {
                let shown = String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned();
                dev.fail(
                    "bad frontend state",
                    format!("{path} holds {shown:?}, not a xenbus state"),
                );
                XenbusState::Unknown
            }
        },
    };
    if dev.frontend_state != Some(s) {
        tracing::debug!(
            device = %dev.key(),
            state = s.name(),
            "xen_device_frontend_state"
        );
        dev.frontend_state = Some(s);
    }
    Ok(s)
}

/// Brings one device in line with its nodes (the state machine).
fn drive(store: &Client, dev: &mut Device) -> Next {
    let be = dev.info.backend_path.clone();
    let state_path = format!("{be}/state");
    let be_state = match read_opt(store, &state_path) {
        Ok(Some(v)) => XenbusState::parse(&v).unwrap_or_else(|| {
            tracing::warn!(device = %dev.key(), value = ?String::from_utf8_lossy(&v),
                "backend state is not a xenbus state, taken as Unknown");
            XenbusState::Unknown
        }),
        Ok(None) => match store.exists(&be) {
            Ok(false) => return Next::Gone,
            Ok(true) => XenbusState::Unknown,
            Err(e) => {
                dev.fail(&format!("cannot read {be}"), error_chain(&e));
                return Next::Stay;
            }
        },
        Err(e) => {
            dev.fail(&format!("cannot read {state_path}"), error_chain(&e));
            return Next::Stay;
        }
    };
    if be_state != dev.backend_state {
        tracing::info!(
            device = %dev.key(),
            from = dev.backend_state.name(),
            to = be_state.name(),
            "xen_device_backend_changed"
        );
        dev.backend_state = be_state;
    }
    let online_path = format!("{be}/online");
    let online = match read_opt(store, &online_path) {
        Ok(Some(v)) => parse_online(&v).unwrap_or_else(|| {
            tracing::warn!(device = %dev.key(), "backend online is not a number, taken as 0");
            false
        }),
        Ok(None) => false,
        Err(e) => {
            dev.fail(&format!("cannot read {online_path}"), error_chain(&e));
            return Next::Stay;
        }
    };

    if dev.instance.is_none() {
        // Create or realize failed: inert until the directory goes, except
        // that an unplugged device of ours is cleaned up.
        return if !online && dev.owned.is_some() {
            Next::Teardown {
                write_closed: false,
            }
        } else {
            Next::Stay
        };
    }

    if !online {
        return match be_state {
            XenbusState::Closing => {
                let fe = match dev.handshake {
                    Handshake::Direct => XenbusState::Unknown,
                    // Cannot read it: the toolstack wants the device gone,
                    // do not let the frontend hold it.
                    Handshake::Xenbus => frontend_state(store, dev).unwrap_or(XenbusState::Unknown),
                };
                if fe.is_active() {
                    Next::Stay
                } else {
                    Next::Teardown { write_closed: true }
                }
            }
            XenbusState::Closed
            | XenbusState::Initialising
            | XenbusState::InitWait
            | XenbusState::Unknown => Next::Teardown {
                write_closed: false,
            },
            _ => Next::Stay,
        };
    }

    if dev.handshake == Handshake::Direct {
        if !dev.connected && dev.failure.is_none() {
            return try_connect(store, dev);
        }
        return Next::Stay;
    }

    let previous = dev.frontend_state;
    let fe = match frontend_state(store, dev) {
        Ok(s) => s,
        Err(e) => {
            let path = format!("{}/state", dev.info.frontend_path);
            dev.fail(&format!("cannot read {path}"), error_chain(&e));
            if !matches!(be_state, XenbusState::Closing | XenbusState::Closed) {
                return set_state_or_fail(store, dev, XenbusState::Closing);
            }
            return Next::Stay;
        }
    };
    // The frontend closed and started over faster than we saw each step
    // (Closing, Closed, Initialising, Initialised in a row): catch up by
    // closing our side and waiting for it again.
    let started_over = matches!(be_state, XenbusState::Closing | XenbusState::Closed)
        && matches!(
            previous,
            Some(XenbusState::Closing) | Some(XenbusState::Closed)
        )
        && matches!(fe, XenbusState::Initialising | XenbusState::Initialised);
    if started_over {
        if dev.connected {
            if let Some(inst) = dev.instance.as_mut() {
                inst.disconnect(&dev.info);
            }
            dev.connected = false;
            tracing::info!(device = %dev.key(), "xen_device_disconnect");
        }
        tracing::info!(device = %dev.key(), "xen_device_reinit: frontend starts over");
        dev.failure = None;
        return set_state_or_fail(store, dev, XenbusState::InitWait);
    }
    match fe {
        XenbusState::Initialised | XenbusState::Connected => {
            if be_state == XenbusState::InitWait {
                return try_connect(store, dev);
            }
            // Connected, then Initialised again: the frontend reconnected
            // with a new ring and port (Linux `xencons_resume` after a
            // suspend that did not close the device). QEMU misses this.
            if fe == XenbusState::Initialised
                && be_state == XenbusState::Connected
                && dev.connected
                && previous == Some(XenbusState::Connected)
            {
                tracing::info!(device = %dev.key(), "xen_device_reconnect: frontend resumed");
                return try_connect(store, dev);
            }
        }
        XenbusState::Closing => {
            if !matches!(be_state, XenbusState::Closing | XenbusState::Closed) {
                return set_state_or_fail(store, dev, XenbusState::Closing);
            }
        }
        XenbusState::Closed | XenbusState::Unknown => {
            if dev.connected {
                if let Some(inst) = dev.instance.as_mut() {
                    inst.disconnect(&dev.info);
                }
                dev.connected = false;
                tracing::info!(device = %dev.key(), "xen_device_disconnect");
            }
            if be_state != XenbusState::Closed {
                return set_state_or_fail(store, dev, XenbusState::Closed);
            }
        }
        XenbusState::Initialising => {
            if be_state == XenbusState::Closed {
                tracing::info!(device = %dev.key(), "xen_device_reinit: frontend starts over");
                dev.failure = None;
                return set_state_or_fail(store, dev, XenbusState::InitWait);
            }
        }
        XenbusState::InitWait | XenbusState::Reconfiguring | XenbusState::Reconfigured => {}
    }
    Next::Stay
}

impl XenBus {
    /// A bus for backends running in domain `backend`.
    pub fn new(store: Arc<Client>, backend: DomId) -> XenBus {
        XenBus {
            store,
            backend,
            types: BTreeMap::new(),
            devices: BTreeMap::new(),
            started: false,
        }
    }

    pub fn store(&self) -> &Arc<Client> {
        &self.store
    }

    pub fn backend_id(&self) -> DomId {
        self.backend
    }

    /// Whether a watch token belongs to a bus (so a reactor can route the
    /// events of a shared client).
    pub fn is_bus_token(token: &[u8]) -> bool {
        token.starts_with(TOKEN_PREFIX.as_bytes())
    }

    /// Adds a backend type; after [`XenBus::start`] its directory is
    /// watched at once.
    pub fn register(&mut self, ty: Box<dyn BackendType>) -> Result<(), BusError> {
        let name = ty.name();
        if !paths::is_node_name(name) {
            return Err(BusError::InvalidTypeName(name));
        }
        if self.types.contains_key(name) {
            return Err(BusError::DuplicateType(name));
        }
        if self.started {
            self.watch_type(name)?;
        }
        self.types.insert(name, ty);
        Ok(())
    }

    /// Watches every registered type's backend directory; the watches fire
    /// at once, and handling those events enumerates what already exists.
    pub fn start(&mut self) -> Result<(), BusError> {
        let names: Vec<&'static str> = self.types.keys().copied().collect();
        for name in names {
            self.watch_type(name)?;
        }
        self.started = true;
        tracing::info!(backend = %self.backend, "xen_bus_realize");
        Ok(())
    }

    fn type_token(&self, name: &str) -> String {
        format!("{TOKEN_PREFIX}{}:type:{name}", self.backend)
    }

    fn frontend_token(&self, key: &DeviceKey) -> String {
        format!(
            "{TOKEN_PREFIX}{}:fe:{}:{}:{}",
            self.backend, key.backend_type, key.frontend_id, key.devid
        )
    }

    fn parse_token(&self, token: &[u8]) -> Option<Token> {
        let t = std::str::from_utf8(token).ok()?;
        let rest = t
            .strip_prefix(TOKEN_PREFIX)?
            .strip_prefix(&format!("{}:", self.backend))?;
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.as_slice() {
            ["type", name] => Some(Token::Type((*name).to_owned())),
            ["fe", name, fe, devid] => Some(Token::Frontend(
                (*name).to_owned(),
                paths::parse_domid(fe)?,
                paths::parse_devid(devid)?,
            )),
            _ => None,
        }
    }

    fn watch_type(&self, name: &str) -> Result<(), BusError> {
        let dir = paths::backend_type_dir(self.backend, name);
        let token = self.type_token(name);
        match self.store.watch(&dir, &token) {
            Err(e) if e.errno() != Some(XsErrno::Exist) => Err(xs("watch", &dir)(e)),
            _ => {
                tracing::debug!(%dir, "xen_bus_add_watch");
                Ok(())
            }
        }
    }

    /// Takes one fired watch. Returns false if the token is not this bus's
    /// (the event is left for whoever else watches on the same client).
    pub fn handle_event(&mut self, ev: &WatchEvent) -> bool {
        let Some(token) = self.parse_token(&ev.token) else {
            return false;
        };
        if !self.started {
            return true; // queued before shutdown
        }
        match token {
            Token::Type(name) => {
                let Some((&name, _)) = self.types.get_key_value(name.as_str()) else {
                    return true;
                };
                self.backend_event(name, &ev.path);
            }
            Token::Frontend(name, fe, devid) => {
                let Some((&name, _)) = self.types.get_key_value(name.as_str()) else {
                    return true;
                };
                let key = DeviceKey {
                    backend_type: name,
                    frontend_id: fe,
                    devid,
                };
                self.frontend_event(key, &ev.path);
            }
        }
        true
    }

    /// Something at or below `backend/<type>` changed.
    fn backend_event(&mut self, name: &'static str, path: &str) {
        let dir = paths::backend_type_dir(self.backend, name);
        let Some(parts) = paths::components_below(&dir, path) else {
            return;
        };
        match parts.as_slice() {
            [] => self.enumerate_type(name),
            [fe] => {
                if let Some(fe) = paths::parse_domid(fe) {
                    self.enumerate_frontend(name, fe);
                }
            }
            [fe, devid, ..] => {
                if let (Some(frontend_id), Some(devid)) =
                    (paths::parse_domid(fe), paths::parse_devid(devid))
                {
                    self.consider(DeviceKey {
                        backend_type: name,
                        frontend_id,
                        devid,
                    });
                }
            }
        }
    }

    fn frontend_event(&mut self, key: DeviceKey, path: &str) {
        let store = Arc::clone(&self.store);
        let Some(dev) = self.devices.get_mut(&key) else {
            return; // a watch of a device already gone
        };
        if dev.handshake == Handshake::Direct && dev.connected {
            let Some(inst) = dev.instance.as_mut() else {
                return;
            };
            if let Err(e) = inst.frontend_changed(&store, &dev.info, path) {
                inst.disconnect(&dev.info);
                dev.connected = false;
                dev.fail("frontend change refused", error_chain(&e));
                if let Next::Gone = set_state_or_fail(&store, dev, XenbusState::Closing) {
                    self.destroy(key);
                }
            }
            return;
        }
        self.reconcile(key);
    }

    /// Enumerates every frontend domain under `backend/<type>`.
    fn enumerate_type(&mut self, name: &'static str) {
        tracing::debug!(backend_type = name, "xen_bus_type_enumerate");
        let dir = paths::backend_type_dir(self.backend, name);
        let mut seen = BTreeSet::new();
        match self.store.directory(&dir) {
            Ok(children) => {
                for child in children {
                    match paths::parse_domid(&child) {
                        Some(fe) => {
                            seen.insert(fe);
                            self.enumerate_frontend(name, fe);
                        }
                        None => tracing::debug!(%dir, %child, "not a domain id, ignored"),
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(%dir, error = %error_chain(&e), "xen_bus_enumerate failed");
                return;
            }
        }
        let stale: Vec<DeviceKey> = self
            .devices
            .keys()
            .filter(|k| k.backend_type == name && !seen.contains(&k.frontend_id))
            .copied()
            .collect();
        for key in stale {
            self.reconcile(key);
        }
    }

    /// Enumerates `backend/<type>/<fe>`.
    fn enumerate_frontend(&mut self, name: &'static str, fe: DomId) {
        let dir = paths::backend_frontend_dir(self.backend, name, fe);
        let mut keys = BTreeSet::new();
        match self.store.directory(&dir) {
            Ok(children) => {
                for child in children {
                    match paths::parse_devid(&child) {
                        Some(devid) => {
                            keys.insert(DeviceKey {
                                backend_type: name,
                                frontend_id: fe,
                                devid,
                            });
                        }
                        None => tracing::debug!(%dir, %child, "not a device id, ignored"),
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(%dir, error = %error_chain(&e), "xen_bus_enumerate failed");
                return;
            }
        }
        keys.extend(
            self.devices
                .keys()
                .filter(|k| k.backend_type == name && k.frontend_id == fe)
                .copied(),
        );
        for key in keys {
            self.consider(key);
        }
    }

    /// A known device is reconciled; an unknown one may be created.
    fn consider(&mut self, key: DeviceKey) {
        if self.devices.contains_key(&key) {
            self.reconcile(key);
        } else {
            self.maybe_create(key);
        }
    }

    /// Creates an instance if the toolstack says `online` 1, `state` 1.
    fn maybe_create(&mut self, key: DeviceKey) {
        let be = paths::backend_path(self.backend, key.backend_type, key.frontend_id, key.devid);
        let state = read_opt(&*self.store, &format!("{be}/state"));
        let online = read_opt(&*self.store, &format!("{be}/online"));
        match (state, online) {
            (Ok(Some(s)), Ok(Some(o)))
                if XenbusState::parse(&s) == Some(XenbusState::Initialising)
                    && parse_online(&o) == Some(true) =>
            {
                let _ = self.create_device(key, None);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(device = %key, error = %error_chain(&e), "cannot read backend state");
            }
            _ => {}
        }
    }

    /// Creates, announces (InitWait), watches and realizes a device, then
    /// drives it once. The record is kept (failed) on any error, except
    /// when the backend directory vanished meanwhile.
    fn create_device(&mut self, key: DeviceKey, owned: Option<Owned>) -> Result<(), DeviceError> {
        let store = Arc::clone(&self.store);
        let Some(ty) = self.types.get_mut(key.backend_type) else {
            return Err(DeviceError::NotImplemented("unregistered backend type"));
        };
        let backend_path =
            paths::backend_path(self.backend, key.backend_type, key.frontend_id, key.devid);
        let info = DeviceInfo {
            backend_type: key.backend_type,
            backend_id: self.backend,
            frontend_id: key.frontend_id,
            devid: key.devid,
            frontend_path: ty.frontend_path(key.frontend_id, key.devid),
            backend_path,
            options: BTreeMap::new(),
        };
        let mut dev = Device {
            handshake: ty.handshake(key.devid),
            info,
            instance: None,
            connected: false,
            failure: None,
            backend_state: XenbusState::Initialising,
            frontend_state: None,
            watching: None,
            owned,
        };
        tracing::info!(device = %key, frontend = %dev.info.frontend_path, "xen_bus_backend_create");

        match read_options(&store, &dev.info.backend_path) {
            Ok(options) => dev.info.options = options,
            Err(e) => {
                let err = DeviceError::xenstore("read options", &dev.info.backend_path, e);
                dev.fail("cannot read options", error_chain(&err));
                self.devices.insert(key, dev);
                return Err(err);
            }
        }

        let mut instance = match ty.create(&store, &dev.info) {
            Ok(i) => i,
            Err(e) => {
                if let DeviceError::Declined(why) = &e {
                    tracing::info!(device = %key, %why, "xen_bus_backend_create declined");
                    dev.failure = Some(error_chain(&e));
                } else {
                    dev.fail("create failed", error_chain(&e));
                }
                self.devices.insert(key, dev);
                return Err(e);
            }
        };

        let initwait = XenbusState::InitWait.to_node();
        match write_if_present(
            &store,
            &dev.info.backend_path,
            &[("hotplug-status", "connected"), ("state", &initwait)],
        ) {
            Ok(true) => {
                dev.backend_state = XenbusState::InitWait;
                tracing::info!(device = %key, to = "InitWait", "xen_device_backend_state");
            }
            Ok(false) => {
                tracing::info!(device = %key, "backend directory vanished during create");
                return Err(DeviceError::Removed {
                    path: dev.info.backend_path.clone(),
                });
            }
            Err(e) => {
                let err = DeviceError::xenstore("write", &dev.info.backend_path, e);
                dev.fail("cannot announce InitWait", error_chain(&err));
                self.devices.insert(key, dev);
                return Err(err);
            }
        }

        let watch_path = match dev.handshake {
            Handshake::Xenbus => format!("{}/state", dev.info.frontend_path),
            Handshake::Direct => dev.info.frontend_path.clone(),
        };
        let token = self.frontend_token(&key);
        match store.watch(&watch_path, &token) {
            Err(e) if e.errno() != Some(XsErrno::Exist) => {
                let err = DeviceError::xenstore("watch", &watch_path, e);
                dev.fail("cannot watch the frontend", error_chain(&err));
                let _ = set_backend_state(&store, &mut dev, XenbusState::Closing);
                self.devices.insert(key, dev);
                return Err(err);
            }
            _ => {
                tracing::debug!(device = %key, path = %watch_path, "xen_device_add_watch");
                dev.watching = Some(watch_path);
            }
        }

        if let Err(e) = instance.realize(&store, &dev.info) {
            dev.fail("realize failed", error_chain(&e));
            self.unwatch(&mut dev);
            let _ = set_backend_state(&store, &mut dev, XenbusState::Closing);
            self.devices.insert(key, dev);
            return Err(e);
        }
        tracing::info!(device = %key, "xen_device_realize");
        dev.instance = Some(instance);
        self.devices.insert(key, dev);
        self.reconcile(key);
        Ok(())
    }

    fn unwatch(&self, dev: &mut Device) {
        if let Some(path) = dev.watching.take() {
            let token = self.frontend_token(&dev.key());
            if let Err(e) = self.store.unwatch(&path, &token) {
                tracing::debug!(%path, error = %e, "xen_device_remove_watch failed");
            }
        }
    }

    /// Drives one known device and carries out what it asks for.
    fn reconcile(&mut self, key: DeviceKey) {
        let store = Arc::clone(&self.store);
        let Some(dev) = self.devices.get_mut(&key) else {
            return;
        };
        match drive(&store, dev) {
            Next::Stay => {}
            Next::Gone => self.destroy(key),
            Next::Teardown { write_closed } => self.teardown(key, write_closed),
        }
    }

    /// The backend directory is gone: release the device, remove what
    /// else of ours is left, forget it.
    fn destroy(&mut self, key: DeviceKey) {
        tracing::info!(device = %key, "backend directory removed");
        self.teardown(key, false);
    }

    /// Unplug / offline: optionally backend Closed, then disconnect,
    /// unrealize, unwatch, and remove what `plug` wrote.
    fn teardown(&mut self, key: DeviceKey, write_closed: bool) {
        let Some(mut dev) = self.devices.remove(&key) else {
            return;
        };
        let store = Arc::clone(&self.store);
        if write_closed {
            if let Err(e) = set_backend_state(&store, &mut dev, XenbusState::Closed) {
                tracing::warn!(device = %key, error = %error_chain(&e), "cannot write backend Closed");
            }
        }
        if let Some(mut inst) = dev.instance.take() {
            if dev.connected {
                inst.disconnect(&dev.info);
                dev.connected = false;
                tracing::info!(device = %key, "xen_device_disconnect");
            }
            inst.unrealize(&dev.info);
            tracing::info!(device = %key, "xen_device_unrealize");
        }
        self.unwatch(&mut dev);
        if let Some(owned) = dev.owned {
            if let Err(e) = self.remove_owned(&dev.info, owned) {
                tracing::warn!(device = %key, error = %error_chain(&e), "cannot remove the device's nodes");
            }
        }
        tracing::info!(device = %key, "xen_bus_device_cleanup");
    }

    /// Removes what `plug` wrote, in one transaction.
    fn remove_owned(&self, info: &DeviceInfo, owned: Owned) -> Result<(), XsError> {
        let parent = paths::backend_frontend_dir(self.backend, info.backend_type, info.frontend_id);
        self.store.transaction(|tx| {
            if owned.frontend_dir {
                rm_if_present(tx, &info.frontend_path)?;
            }
            rm_if_present(tx, &info.backend_path)?;
            if owned.backend_parent {
                match tx.directory(&parent) {
                    Ok(children) if children.is_empty() => rm_if_present(tx, &parent)?,
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// Re-enumerates every type and re-drives every device: for a reactor
    /// that saw [`xenstore::client::WatchEvents::dropped`] grow.
    pub fn rescan(&mut self) {
        let names: Vec<&'static str> = self.types.keys().copied().collect();
        for name in names {
            self.enumerate_type(name);
        }
        let keys: Vec<DeviceKey> = self.devices.keys().copied().collect();
        for key in keys {
            self.reconcile(key);
        }
    }

    /// Hot-plugs a device as a toolstack would: in ONE transaction, the
    /// backend directory (owner = backend, frontend may read) with
    /// `frontend`, `frontend-id`, `online` = 1, `state` = 1, and the
    /// frontend directory (owner = frontend, backend may read) with
    /// `backend`, `backend-id`, `state` = 1 (for [`Handshake::Xenbus`]
    /// types) and `frontend_nodes`, and `read_only_nodes` created with
    /// their final permissions (owner = backend, frontend may read), so a
    /// guest can never race a value into them. Then creates and realizes
    /// the device; if that fails, removes what it wrote and says why.
    ///
    /// `devid`: `None` takes the first index ≥ 1 free in both the backend
    /// and the frontend directories. An explicit index whose backend
    /// directory exists is refused; an existing frontend directory (e.g.
    /// the toolstack's primary console) is adopted untouched when no nodes
    /// are given, refused otherwise.
    pub fn plug(
        &mut self,
        backend_type: &str,
        frontend_id: DomId,
        devid: Option<u32>,
        frontend_nodes: &[(&str, String)],
        read_only_nodes: &[(&str, String)],
    ) -> Result<u32, BusError> {
        let Some((&name, ty)) = self.types.get_key_value(backend_type) else {
            return Err(BusError::UnknownType(backend_type.to_owned()));
        };
        if !frontend_id.is_valid() {
            return Err(BusError::InvalidDomId(frontend_id));
        }
        let mut names = BTreeSet::new();
        for (n, _) in frontend_nodes.iter().chain(read_only_nodes) {
            if !paths::is_node_name(n) || BUS_FRONTEND_NODES.contains(n) || !names.insert(*n) {
                return Err(BusError::InvalidNodeName((*n).to_owned()));
            }
        }
        let handshake_of = |d: u32| ty.handshake(d);
        let frontend_of = |d: u32| ty.frontend_path(frontend_id, d);
        let (be, fe) = (self.backend, frontend_id);
        let taken: BTreeSet<u32> = self
            .devices
            .keys()
            .filter(|k| k.backend_type == name && k.frontend_id == fe)
            .map(|k| k.devid)
            .collect();
        let be_perms = perms(&[(Access::None, be), (Access::Read, fe)]);
        let fe_perms = perms(&[(Access::None, fe), (Access::Read, be)]);
        let parent = paths::backend_frontend_dir(be, name, fe);

        let (devid, owned) = self.store.transaction(|tx| -> Result<_, BusError> {
            let devid = match devid {
                Some(d) => {
                    if taken.contains(&d) {
                        return Err(BusError::Exists {
                            path: paths::backend_path(be, name, fe, d),
                        });
                    }
                    d
                }
                None => first_free_devid(tx, &parent, &taken, &frontend_of).and_then(|d| {
                    d.ok_or_else(|| BusError::NoFreeDevid {
                        backend_type: name.to_owned(),
                        frontend_id: fe,
                    })
                })?,
            };
            let be_path = paths::backend_path(be, name, fe, devid);
            let fe_path = frontend_of(devid);
            if tx.exists(&be_path).map_err(xs("read", &be_path))? {
                return Err(BusError::Exists { path: be_path });
            }
            let fe_exists = tx.exists(&fe_path).map_err(xs("read", &fe_path))?;
            if fe_exists && !(frontend_nodes.is_empty() && read_only_nodes.is_empty()) {
                return Err(BusError::Exists { path: fe_path });
            }
            let backend_parent = !tx.exists(&parent).map_err(xs("read", &parent))?;

            put(tx, &be_path, "", &be_perms)?;
            let state1 = XenbusState::Initialising.to_node();
            for (node, value) in [
                ("frontend", fe_path.as_str()),
                ("frontend-id", &fe.to_string()),
                ("online", "1"),
                ("state", &state1),
            ] {
                put(tx, &format!("{be_path}/{node}"), value, &be_perms)?;
            }
            if !fe_exists {
                put(tx, &fe_path, "", &fe_perms)?;
                put(tx, &format!("{fe_path}/backend"), &be_path, &fe_perms)?;
                put(
                    tx,
                    &format!("{fe_path}/backend-id"),
                    &be.to_string(),
                    &fe_perms,
                )?;
                if handshake_of(devid) == Handshake::Xenbus {
                    put(tx, &format!("{fe_path}/state"), &state1, &fe_perms)?;
                }
                for (node, value) in frontend_nodes {
                    put(tx, &format!("{fe_path}/{node}"), value, &fe_perms)?;
                }
                for (node, value) in read_only_nodes {
                    put(tx, &format!("{fe_path}/{node}"), value, &be_perms)?;
                }
            }
            Ok((
                devid,
                Owned {
                    backend_parent,
                    frontend_dir: !fe_exists,
                },
            ))
        })?;

        let key = DeviceKey {
            backend_type: name,
            frontend_id: fe,
            devid,
        };
        tracing::info!(device = %key, "xen_device_plug");
        if let Err(source) = self.create_device(key, Some(owned)) {
            // Not kept as failed: the caller is told, and what we wrote goes.
            let mut dev = self.devices.remove(&key);
            if let Some(dev) = dev.as_mut() {
                self.unwatch(dev);
            }
            let info = match dev {
                Some(d) => d.info,
                None => DeviceInfo {
                    backend_type: name,
                    backend_id: be,
                    frontend_id: fe,
                    devid,
                    backend_path: paths::backend_path(be, name, fe, devid),
                    frontend_path: self
                        .types
                        .get(name)
                        .map(|t| t.frontend_path(fe, devid))
                        .unwrap_or_default(),
                    options: BTreeMap::new(),
                },
            };
            if let Err(e) = self.remove_owned(&info, owned) {
                tracing::warn!(device = %key, error = %error_chain(&e), "cannot remove the device's nodes");
            }
            return Err(BusError::Device { key, source });
        }
        Ok(devid)
    }

    /// Unplugs a device as a toolstack does: backend `online` = 0 and
    /// `state` = Closing in one transaction. The device then closes with
    /// its frontend and is torn down (see the module documentation).
    pub fn unplug(
        &mut self,
        backend_type: &str,
        frontend_id: DomId,
        devid: u32,
    ) -> Result<(), BusError> {
        let missing = || BusError::NoSuchDevice {
            backend_type: backend_type.to_owned(),
            frontend_id,
            devid,
        };
        let Some(&name) = self.types.keys().find(|n| **n == backend_type) else {
            return Err(missing());
        };
        let key = DeviceKey {
            backend_type: name,
            frontend_id,
            devid,
        };
        if !self.devices.contains_key(&key) {
            return Err(missing());
        }
        let be_path = paths::backend_path(self.backend, name, frontend_id, devid);
        let closing = XenbusState::Closing.to_node();
        let present = write_if_present(
            &self.store,
            &be_path,
            &[("online", "0"), ("state", &closing)],
        )?;
        tracing::info!(device = %key, "xen_device_unplug");
        if present {
            self.reconcile(key);
            Ok(())
        } else {
            self.destroy(key);
            Err(missing())
        }
    }

    /// Releases every device: disconnect, unrealize, unwatch; later events
    /// are ignored. Plugged devices are removed; online toolstack devices
    /// that were realized get their backend `state` set back to
    /// Initialising, so the next backend to run
    /// takes them over (a Linux frontend ignores Initialising and the new
    /// backend reconnects to its unchanged ring and port).
    pub fn shutdown(&mut self) {
        let keys: Vec<DeviceKey> = self.devices.keys().copied().collect();
        let store = Arc::clone(&self.store);
        for key in keys {
            if let Some(dev) = self.devices.get_mut(&key) {
                let online = read_opt(&*store, &format!("{}/online", dev.info.backend_path))
                    .ok()
                    .flatten()
                    .and_then(|v| parse_online(&v))
                    == Some(true);
                // Not while a toolstack is taking it away (online 0).
                if dev.owned.is_none() && dev.instance.is_some() && online {
                    let _ = set_backend_state(&store, dev, XenbusState::Initialising);
                }
            }
            self.teardown(key, false);
        }
        let names: Vec<&'static str> = self.types.keys().copied().collect();
        if self.started {
            for name in names {
                let dir = paths::backend_type_dir(self.backend, name);
                let _ = self.store.unwatch(&dir, self.type_token(name));
            }
        }
        self.started = false;
        tracing::info!(backend = %self.backend, "xen_bus_unrealize");
    }

    /// Every device the bus knows, in key order.
    pub fn devices(&self) -> Vec<DeviceSummary> {
        self.devices
            .values()
            .map(|d| DeviceSummary {
                backend_type: d.info.backend_type,
                frontend_id: d.info.frontend_id,
                devid: d.info.devid,
                backend_state: d.backend_state,
                connected: d.connected,
                failed: d.failure.is_some() || d.instance.is_none(),
                error: d.failure.clone(),
                plugged: d.owned.is_some(),
            })
            .collect()
    }

    /// The [`DeviceInfo`] of a known device.
    pub fn device_info(&self, key: &DeviceKey) -> Option<&DeviceInfo> {
        self.devices.get(key).map(|d| &d.info)
    }
}

/// The first devid ≥ 1 used neither under `backend/<type>/<fe>` (nor by a
/// device the bus knows) nor as a frontend directory. Each distinct
/// frontend parent directory is listed once.
fn first_free_devid(
    tx: &Transaction<'_>,
    backend_dir: &str,
    taken: &BTreeSet<u32>,
    frontend_of: &dyn Fn(u32) -> String,
) -> Result<Option<u32>, BusError> {
    let mut used = taken.clone();
    match tx.directory(backend_dir) {
        Ok(children) => used.extend(children.iter().filter_map(|c| paths::parse_devid(c))),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(xs("directory", backend_dir)(e)),
    }
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut n: u32 = 1;
    loop {
        if !used.contains(&n) {
            let path = frontend_of(n);
            let (parent, base) = match path.rsplit_once('/') {
                Some((p, b)) if !p.is_empty() => (p.to_owned(), b.to_owned()),
                _ => return Ok(Some(n)),
            };
            if !listed.contains_key(&parent) {
                let children = match tx.directory(&parent) {
                    Ok(c) => c.into_iter().collect(),
                    Err(e) if e.is_not_found() => BTreeSet::new(),
                    Err(e) => return Err(xs("directory", &parent)(e)),
                };
                listed.insert(parent.clone(), children);
            }
            if !listed.get(&parent).is_some_and(|c| c.contains(&base)) {
                return Ok(Some(n));
            }
        }
        n = match n.checked_add(1) {
            Some(n) => n,
            None => return Ok(None),
        };
    }
}
