//! The Xen PV console device.
//!
//! [`ring`] is the shared `xencons_interface` page, [`output_buffer`] holds
//! guest output on its way to a sink, [`sink`] is where it goes (pty, log
//! file, unix/tcp socket, null, stdio) and where input comes from,
//! [`metrics`] counts what happened.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod output_buffer;
pub mod ring;
pub mod sink;
