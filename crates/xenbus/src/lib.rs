//! XenBus backend framework (being written).
#![forbid(unsafe_code)]
