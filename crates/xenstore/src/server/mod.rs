//! An embedded XenStore server (`xen-console xenstored`).
//!
//! [`core`] implements the protocol with no I/O; [`reactor`] serves it on
//! Unix sockets from one epoll thread. Connections on the main socket act as
//! privileged dom0; connections on a domain's own socket act as that domain.

pub mod core;
pub mod quota;
pub mod reactor;
pub mod tree;
pub mod txn;
pub mod watch;

pub use self::core::{Core, Effect};
pub use quota::Quotas;
pub use reactor::{Server, ServerConfig, ServerControl, ServerHandle};

/// Identifies one client connection for the lifetime of the server; never
/// reused, so a late event cannot reach a newer connection by mistake.
pub type ConnId = u64;

#[cfg(test)]
mod tests;
