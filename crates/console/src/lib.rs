//! The Xen PV console device.
//!
//! [`ring`] is the shared `xencons_interface` page, [`output_buffer`] holds
//! guest output on its way to a sink, [`sink`] is where it goes (pty, log
//! file, unix/tcp socket, null, stdio) and where input comes from,
//! [`metrics`] counts what happened. [`io`] is the data plane of one
//! console, [`reactor`] drives many on one epoll set, [`device`] ties a
//! console to XenBus (and serves the primary console), and [`backend`] is
//! the loop that owns them all.
#![forbid(unsafe_code)]

pub mod backend;
pub mod device;
pub mod io;
pub mod log;
pub mod metrics;
pub mod output_buffer;
pub mod reactor;
pub mod ring;
pub mod sink;
