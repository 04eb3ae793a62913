//! `enum xenbus_state` (`xen/include/public/io/xenbus.h`): the handshake
//! each end of a PV device writes, as decimal text, into its `state` node.
//!
//! Either end may be hostile or confused, so parsing is strict: plain
//! decimal digits naming one of the nine states, with no sign, no
//! whitespace, no leading zeros beyond `0` itself and no trailing NUL.
//! Anything else is `None`; callers treat it as [`XenbusState::Unknown`]
//! and log it.

use std::fmt;

/// The state of one end of a XenBus device; values pinned against
/// `xenbus.h` by a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    /// Early init done, waiting for the peer or hotplug scripts.
    InitWait = 2,
    /// Waiting for a connection from the peer.
    Initialised = 3,
    Connected = 4,
    /// Closing because of an error or an unplug.
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The numeric value written to XenStore.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> Option<XenbusState> {
        XenbusState::ALL.get(usize::from(v)).copied()
    }

    /// Parses a `state` node's value strictly (see the module doc).
    pub fn parse(value: &[u8]) -> Option<XenbusState> {
        match value {
            [d @ b'0'..=b'8'] => XenbusState::from_u8(d - b'0'),
            _ => None,
        }
    }

    /// The name `xenbus.h` gives the state, without its `XenbusState`
    /// prefix.
    pub fn name(self) -> &'static str {
        match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        }
    }

    /// The value for a `state` node: the decimal number.
    pub fn to_node(self) -> String {
        self.to_string()
    }

    /// A frontend in one of these states is still using the device: a
    /// toolstack's Closing must wait for it (QEMU's `xen_device_state_is_active`).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            XenbusState::InitWait
                | XenbusState::Initialised
                | XenbusState::Connected
                | XenbusState::Closing
        )
    }
}

/// A `state` value that is not one of the nine states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a xenbus state: {0:?}")]
pub struct InvalidState(pub String);

impl std::str::FromStr for XenbusState {
    type Err = InvalidState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        XenbusState::parse(s.as_bytes()).ok_or_else(|| InvalidState(s.to_owned()))
    }
}

/// Decimal, as XenStore holds it (`{:?}` gives the name).
impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_headers() {
        let want = [
            (XenbusState::Unknown, 0),
            (XenbusState::Initialising, 1),
            (XenbusState::InitWait, 2),
            (XenbusState::Initialised, 3),
            (XenbusState::Connected, 4),
            (XenbusState::Closing, 5),
            (XenbusState::Closed, 6),
            (XenbusState::Reconfiguring, 7),
            (XenbusState::Reconfigured, 8),
        ];
        for (s, v) in want {
            assert_eq!(s.as_u8(), v);
            assert_eq!(XenbusState::from_u8(v), Some(s));
            assert_eq!(s.to_string(), v.to_string());
            assert_eq!(XenbusState::parse(s.to_node().as_bytes()), Some(s));
        }
        assert_eq!(XenbusState::from_u8(9), None);
        assert_eq!("6".parse::<XenbusState>(), Ok(XenbusState::Closed));
        assert!("x".parse::<XenbusState>().is_err());
    }

    #[test]
    fn parse_is_strict() {
        for bad in [
            &b""[..],
            b"9",
            b"10",
            b"04",
            b"00",
            b"+4",
            b"-1",
            b" 4",
            b"4 ",
            b"4\n",
            b"4\0",
            b"garbage",
            b"0x4",
            b"\xff",
            b"\xd9\xa4", // ARABIC-INDIC DIGIT FOUR
        ] {
            assert_eq!(XenbusState::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn active_states_are_qemus() {
        let active: Vec<_> = XenbusState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(
            active,
            [
                XenbusState::InitWait,
                XenbusState::Initialised,
                XenbusState::Connected,
                XenbusState::Closing
            ]
        );
    }
}
