//! XenBus backend framework: the xenbus state machine, device discovery
//! from XenStore, hot-plug, and the device lifecycle a backend implements.
//!
//! * [`state`]: `enum xenbus_state`, parsed strictly.
//! * [`paths`]: where backend and frontend directories live.
//! * [`backend`]: what a backend implements ([`BackendType`],
//!   [`BackendDevice`]).
//! * [`bus`]: [`XenBus`], which discovers devices, runs the handshake and
//!   plugs/unplugs devices; a reactor feeds it the client's watch events.
#![forbid(unsafe_code)]

pub mod backend;
pub mod bus;
pub mod paths;
pub mod state;

pub use backend::{BackendDevice, BackendType, DeviceError, DeviceInfo, Handshake};
pub use bus::{BusError, DeviceKey, DeviceSummary, XenBus, TOKEN_PREFIX};
pub use state::XenbusState;
