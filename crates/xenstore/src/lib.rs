//! XenStore for xen-console: the wire codec, a client for the system's
//! xenstored (or `/dev/xen/xenbus`), and the embedded server that the
//! emulated Xen runs.
//!
//! Layout: [`wire`] frames messages, [`errno`] names errors, [`path`] and
//! [`perms`] hold the node rules, [`client`] talks to any xenstored, and
//! [`server`] is a xenstored of our own.
#![forbid(unsafe_code)]

pub mod client;
pub mod errno;
pub mod path;
pub mod perms;
pub mod server;
pub mod wire;

pub use errno::XsErrno;
pub use perms::{Access, DomId, Perm, Perms};
pub use wire::{Message, MsgType};
