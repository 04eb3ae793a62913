//! An emulated Xen: a hypervisor that really shares pages and really
//! signals between separate processes, on a machine with no Xen.
//!
//! [`hypervisor`] holds the state and Xen's rules; [`server`] serves it on
//! Unix sockets beside the project's XenStore server, with a toolstack
//! ([`toolstack`]) that builds domains as `xl` does; [`client`] implements
//! the platform traits over those sockets for backends and guests;
//! [`proto`] is the wire between them.
//!
//! The emulator is one process (or an in-process instance in tests) that
//! plays hypervisor and xenstored together, because the toolstack's work
//! touches both at once; guests and backends are separate processes.

pub mod client;
pub mod hypervisor;
pub mod proto;
pub mod server;
pub mod toolstack;

pub use client::{EmuEventChannels, EmuGuest, EmuPlatform};
pub use hypervisor::{PortState, StartInfo};
pub use server::{EmuPaths, Emulator};
pub use toolstack::ConsoleSpec;
