//! What a XenStore client call can fail with.

use std::io;
use std::path::PathBuf;

use crate::errno::XsErrno;
use crate::wire::MsgType;

/// A failed client call. `path` fields hold the node path the caller named
/// (as sent, relative or absolute), or for domain requests the domid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// xenstored answered with an `ERROR` reply.
    #[error("XenStore {op:?} {path:?} failed: {errno}")]
    Xs {
        op: MsgType,
        path: String,
        errno: XsErrno,
    },
    /// The request does not fit the transport; it was never sent.
    #[error(
        "XenStore {op:?} {path:?}: request payload of {len} bytes exceeds the {max}-byte limit"
    )]
    TooBig {
        op: MsgType,
        path: String,
        len: usize,
        max: usize,
    },
    /// An argument cannot be framed (a NUL inside a path or token); never sent.
    #[error("XenStore {op:?} {path:?}: {reason}")]
    InvalidArgument {
        op: MsgType,
        path: String,
        reason: &'static str,
    },
    /// No reply within the client's timeout.
    #[error("XenStore {op:?} {path:?}: no reply in time")]
    Timeout { op: MsgType, path: String },
    /// The connection is gone (peer closed it, it broke, or the client is
    /// shutting down).
    #[error("XenStore connection closed")]
    Closed,
    /// The peer sent something the protocol does not allow.
    #[error("malformed XenStore reply: {0}")]
    Protocol(String),
    /// A local I/O step failed.
    #[error("XenStore {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A socket or device exists but could not be opened.
    #[error("cannot open XenStore at {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// None of the candidate sockets or devices exists.
    #[error("no XenStore: tried {}", join_paths(tried))]
    NotFound { tried: Vec<PathBuf> },
}

fn join_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

impl Error {
    /// The XenStore error name behind this error: the server's answer, or
    /// the name libxenstore uses for the same local refusal (`E2BIG` for an
    /// oversized request, `EINVAL` for an unframeable argument).
    pub fn errno(&self) -> Option<XsErrno> {
        match self {
            Error::Xs { errno, .. } => Some(*errno),
            Error::TooBig { .. } => Some(XsErrno::TooBig),
            Error::InvalidArgument { .. } => Some(XsErrno::Inval),
            _ => None,
        }
    }

    /// The server answered `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(XsErrno::NoEnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xs_error_names_operation_path_and_errno() {
        let e = Error::Xs {
            op: MsgType::Read,
            path: "/local/domain/1/x".into(),
            errno: XsErrno::NoEnt,
        };
        assert_eq!(
            e.to_string(),
            "XenStore Read \"/local/domain/1/x\" failed: ENOENT"
        );
        assert!(e.is_not_found());
    }

    #[test]
    fn not_found_lists_every_candidate() {
        let e = Error::NotFound {
            tried: vec!["/run/a/socket".into(), "/dev/xen/xenbus".into()],
        };
        assert_eq!(
            e.to_string(),
            "no XenStore: tried /run/a/socket, /dev/xen/xenbus"
        );
        assert_eq!(e.errno(), None);
    }

    #[test]
    fn local_refusals_map_to_libxenstore_errnos() {
        let big = Error::TooBig {
            op: MsgType::Write,
            path: "/a".into(),
            len: 5000,
            max: 4096,
        };
        let bad = Error::InvalidArgument {
            op: MsgType::Watch,
            path: "/a".into(),
            reason: "token contains a NUL byte",
        };
        assert_eq!(big.errno(), Some(XsErrno::TooBig));
        assert_eq!(bad.errno(), Some(XsErrno::Inval));
        assert_eq!(Error::Closed.errno(), None);
    }
}
