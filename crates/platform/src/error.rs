//! Errors of the platform layer.

use std::io;
use std::path::PathBuf;

use crate::mapping::AccessError;
use crate::types::EvtchnPort;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `/dev/xen` device is missing: this machine runs no Xen.
    #[error("no Xen: {} not found; use the emulated platform", path.display())]
    NoXen { path: PathBuf },
    /// An operation on a Xen device failed.
    #[error("{op} on {device} failed")]
    Device {
        op: &'static str,
        device: &'static str,
        #[source]
        source: io::Error,
    },
    /// Xen's rules (or the emulator enforcing them) refused the operation.
    #[error("{op} refused: {reason}")]
    Refused { op: &'static str, reason: String },
    /// The emulated hypervisor could not be reached or answered badly.
    #[error("emulated Xen: {op}")]
    Emulator {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The port is not bound on this handle.
    #[error("event channel port {0} is not bound on this handle")]
    NotBound(EvtchnPort),
    /// A mapping access outside the mapped pages, or a write to pages
    /// mapped read-only.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Not built yet; says what.
    #[error("{0} is not implemented")]
    NotImplemented(&'static str),
}

impl Error {
    pub(crate) fn device(
        op: &'static str,
        device: &'static str,
        source: impl Into<io::Error>,
    ) -> Error {
        Error::Device {
            op,
            device,
            source: source.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
