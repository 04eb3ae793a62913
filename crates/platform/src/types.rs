//! Newtypes for the numbers Xen hands around, so a port is never passed
//! where a grant reference was meant.

use std::fmt;

macro_rules! xen_number {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            /// Decimal only, as XenStore writes these numbers.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.starts_with('+') {
                    // Rust's parser takes a leading '+'; Xen's values never have one.
                    return "x".parse::<$inner>().map($name);
                }
                s.parse::<$inner>().map($name)
            }
        }
    };
}

xen_number!(
    /// A domain id (`domid_t`).
    DomId(u16)
);
xen_number!(
    /// An event channel port (`evtchn_port_t`).
    EvtchnPort(u32)
);
xen_number!(
    /// A grant reference (`grant_ref_t`).
    GrantRef(u32)
);
xen_number!(
    /// A guest frame number (`xen_pfn_t`).
    Gfn(u64)
);

impl DomId {
    /// dom0, the usual backend domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_FIRST_RESERVED`: ids from here on are not domains.
    pub const FIRST_RESERVED: u16 = 0x7ff0;

    /// True for an id a real domain can have.
    pub fn is_valid(self) -> bool {
        self.0 < Self::FIRST_RESERVED
    }
}

impl GrantRef {
    /// `GNTTAB_RESERVED_CONSOLE`: the domain builder grants the primary
    /// console ring to the console backend under this reference.
    pub const CONSOLE: GrantRef = GrantRef(0);
    /// `GNTTAB_RESERVED_XENSTORE`.
    pub const XENSTORE: GrantRef = GrantRef(1);
    /// References below this are reserved for the toolstack.
    pub const FIRST_FREE: u32 = 8;
}

/// Size of a Xen page.
pub const PAGE_SIZE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_strictly_as_decimal() {
        assert_eq!("42".parse::<EvtchnPort>(), Ok(EvtchnPort(42)));
        assert!("+42".parse::<EvtchnPort>().is_err());
        assert!("0x10".parse::<GrantRef>().is_err());
        assert!("-1".parse::<GrantRef>().is_err());
        assert!("65536".parse::<DomId>().is_err());
        assert!(" 1".parse::<DomId>().is_err());
    }

    #[test]
    fn reserved_grant_refs_match_grant_table_h() {
        assert_eq!(GrantRef::CONSOLE.0, 0);
        assert_eq!(GrantRef::XENSTORE.0, 1);
        assert!(!DomId(0x7ff0).is_valid());
        assert!(DomId(0x7fef).is_valid());
    }
}
