//! What a backend implements: a [`BackendType`] (one per device class,
//! e.g. `console`) that creates [`BackendDevice`] instances, and the
//! lifecycle callbacks the bus calls on each instance.
//!
//! The bus does the common XenBus work (backend/frontend directories,
//! `state`, `hotplug-status`, watches, the handshake); a device only
//! acquires and releases its own resources:
//!
//! ```text
//!   create ──► realize ──► connect ◄──► disconnect ──► unrealize
//!   (may       (after      (frontend    (frontend       (device
//!   decline)   InitWait    Initialised/ Closed/Unknown, goes away)
//!              is written) Connected)   or teardown)
//! ```
//!
//! `connect` and `disconnect` alternate: `disconnect` is only called after a
//! `connect` that succeeded, and a reconnecting frontend (guest resume) gets
//! a new `connect` without a new `realize`. `unrealize` is called once, for
//! every device whose `realize` succeeded, after a final `disconnect` if it
//! was connected. A device whose `realize` fails is dropped without
//! `unrealize`: it must release what it took before returning the error.

use std::collections::BTreeMap;

use platform::DomId;
use xenstore::client::Client;

/// What the bus knows about one device when it calls back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub backend_type: &'static str,
    /// The domain this backend runs in (the bus's domid).
    pub backend_id: DomId,
    pub frontend_id: DomId,
    pub devid: u32,
    /// `/local/domain/<be>/backend/<type>/<fe>/<devid>`.
    pub backend_path: String,
    /// From [`BackendType::frontend_path`]; never read from a node.
    pub frontend_path: String,
    /// The backend directory's keys except `state`, `online`, `frontend`,
    /// `frontend-id` and `hotplug-status`, read in one transaction when the
    /// device is created. Values that are not UTF-8 are left out (and
    /// logged).
    pub options: BTreeMap<String, String>,
}

/// How a device's frontend takes part in the XenBus handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The normal handshake: the bus watches the frontend `state` and
    /// connects on Initialised/Connected, disconnects on Closed/Unknown.
    Xenbus,
    /// The frontend never writes a `state` (the primary console, set up by
    /// the domain builder). The bus calls `connect` right after `realize`
    /// and again on every change below the frontend directory until it
    /// succeeds ([`DeviceError::NotReady`] means "wait", anything else fails
    /// the device); once connected, such changes go to
    /// [`BackendDevice::frontend_changed`].
    Direct,
}

/// One device class (`console`, ...), registered with the bus by name.
pub trait BackendType: Send {
    /// The backend directory name, `backend/<name>/...`.
    fn name(&self) -> &'static str;

    /// The frontend directory of device `devid` of domain `fe`. Default:
    /// `/local/domain/<fe>/device/<name>/<devid>`.
    fn frontend_path(&self, fe: DomId, devid: u32) -> String {
        crate::paths::frontend_path(fe, self.name(), devid)
    }

    /// How device `devid` handshakes. Default: [`Handshake::Xenbus`].
    fn handshake(&self, devid: u32) -> Handshake {
        let _ = devid;
        Handshake::Xenbus
    }

    /// A new instance for a device the toolstack (or `plug`) added. Nothing
    /// has been written yet: an error, e.g. [`DeviceError::Declined`] for a
    /// console another daemon serves, leaves XenStore untouched. The device
    /// is then remembered as failed and not retried until its backend
    /// directory is removed and added again.
    fn create(
        &mut self,
        store: &Client,
        info: &DeviceInfo,
    ) -> Result<Box<dyn BackendDevice>, DeviceError>;
}

/// One device instance; see the module documentation for the call order.
pub trait BackendDevice: Send {
    /// Called after the backend `state` is InitWait and the frontend is
    /// watched. An error sets the backend Closing and fails the device.
    fn realize(&mut self, store: &Client, info: &DeviceInfo) -> Result<(), DeviceError>;

    /// The frontend is Initialised or Connected (or, for
    /// [`Handshake::Direct`], its directory changed). Ok sets the backend
    /// Connected; an error sets it Closing and is logged.
    fn connect(&mut self, store: &Client, info: &DeviceInfo) -> Result<(), DeviceError>;

    /// Undo `connect`: the frontend closed, went away, or the device is
    /// being torn down.
    fn disconnect(&mut self, info: &DeviceInfo);

    /// Undo `realize`; the bus forgets the device afterwards.
    fn unrealize(&mut self, info: &DeviceInfo);

    /// [`Handshake::Direct`] only: something at or below the frontend
    /// directory (`path`) changed while the device is connected, e.g. a
    /// primary console's `ring-ref` after a soft reset. An error sets the
    /// backend Closing, disconnects and fails the device. Default: ignore.
    fn frontend_changed(
        &mut self,
        store: &Client,
        info: &DeviceInfo,
        path: &str,
    ) -> Result<(), DeviceError> {
        let _ = (store, info, path);
        Ok(())
    }
}

/// Why a device callback failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A feature the device does not have (yet).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// Not ours to serve (e.g. a console whose `type` names another daemon).
    /// Logged at info level, not as an error.
    #[error("declined: {0}")]
    Declined(String),
    /// [`Handshake::Direct`]: the frontend has not written everything
    /// `connect` needs yet; the bus tries again when the frontend changes.
    #[error("frontend not ready: {0}")]
    NotReady(String),
    /// A XenStore request on the device's nodes failed.
    #[error("XenStore {op} of {path} failed")]
    XenStore {
        op: &'static str,
        path: String,
        #[source]
        source: xenstore::client::Error,
    },
    /// A node holds a value the device cannot accept (guest-controlled data
    /// is validated; this is the usual answer to a hostile value).
    #[error("bad value in {path}: {reason}")]
    BadNode { path: String, reason: String },
    /// The device's directory disappeared while it was being set up.
    #[error("{path} was removed")]
    Removed { path: String },
    /// Anything else: a platform call, a sink, ...
    #[error("{op} failed")]
    Failed {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DeviceError {
    /// A [`DeviceError::XenStore`] for `op` on `path`.
    pub fn xenstore(op: &'static str, path: &str, source: xenstore::client::Error) -> DeviceError {
        DeviceError::XenStore {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T;
    impl BackendType for T {
        fn name(&self) -> &'static str {
            "vfoo"
        }
        fn create(
            &mut self,
            _: &Client,
            _: &DeviceInfo,
        ) -> Result<Box<dyn BackendDevice>, DeviceError> {
            Err(DeviceError::NotImplemented("vfoo"))
        }
    }

    #[test]
    fn defaults_are_the_generic_layout_and_handshake() {
        assert_eq!(
            T.frontend_path(DomId(3), 4),
            "/local/domain/3/device/vfoo/4"
        );
        assert_eq!(T.handshake(0), Handshake::Xenbus);
    }

    #[test]
    fn errors_read_as_sentences_without_their_source() {
        let e = DeviceError::xenstore("read", "/a/b", xenstore::client::Error::Closed);
        assert_eq!(e.to_string(), "XenStore read of /a/b failed");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            DeviceError::NotImplemented("input").to_string(),
            "not implemented: input"
        );
    }
}
