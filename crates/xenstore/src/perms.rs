//! Node permissions (`docs/misc/xenstore.txt`, "PERMISSIONS").
//!
//! A node has one or more entries, each a letter and a domid: `n` none,
//! `r` read, `w` write, `b` both. The first entry names the *owner*, who has
//! full access, and its letter is the access of every domain not listed
//! later. Later entries grant a listed domain exactly their letter.
//! Privileged connections (dom0's socket) bypass the check altogether.

use std::fmt;

use crate::errno::XsErrno;

/// A domain identifier (`domid_t`).
pub type DomId = u16;

/// `DOMID_FIRST_RESERVED`: ids from here up are not real domains.
pub const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Access {
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    pub fn from_letter(c: u8) -> Option<Access> {
        match c {
            b'n' => Some(Access::None),
            b'r' => Some(Access::Read),
            b'w' => Some(Access::Write),
            b'b' => Some(Access::Both),
            _ => None,
        }
    }

    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry: a domain and its access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    pub domid: DomId,
    pub access: Access,
}

impl Perm {
    pub fn new(access: Access, domid: DomId) -> Perm {
        Perm { domid, access }
    }

    /// Parses one wire string such as `r5`.
    pub fn parse(s: &[u8]) -> Result<Perm, XsErrno> {
        let (&letter, digits) = s.split_first().ok_or(XsErrno::Inval)?;
        let access = Access::from_letter(letter).ok_or(XsErrno::Inval)?;
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(XsErrno::Inval);
        }
        let n: u32 = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(XsErrno::Inval)?;
        let domid = DomId::try_from(n).map_err(|_| XsErrno::Inval)?;
        Ok(Perm { domid, access })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permission list; never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Owner `owner`, everyone else `others`.
    pub fn owned_by(owner: DomId, others: Access) -> Perms {
        Perms(vec![Perm::new(others, owner)])
    }

    pub fn new(entries: Vec<Perm>) -> Result<Perms, XsErrno> {
        if entries.is_empty() {
            return Err(XsErrno::Inval);
        }
        Ok(Perms(entries))
    }

    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    pub fn owner(&self) -> DomId {
        self.0[0].domid
    }

    pub fn set_owner(&mut self, owner: DomId) {
        self.0[0].domid = owner;
    }

    /// Access for an unprivileged `domid` (and the domain it is a device
    /// model for, if any, as `SET_TARGET` arranged).
    pub fn access_for(&self, domid: DomId, target: Option<DomId>) -> Access {
        let me = |d: DomId| d == domid || Some(d) == target;
        if me(self.0[0].domid) {
            return Access::Both;
        }
        if let Some(p) = self.0[1..].iter().find(|p| me(p.domid)) {
            return p.access;
        }
        self.0[0].access
    }

    /// Parses a `SET_PERMS` argument list (each entry without its NUL).
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Result<Perms, XsErrno> {
        let v = items
            .into_iter()
            .map(Perm::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Perms::new(v)
    }

    /// Wire form: each entry NUL-terminated.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend_from_slice(p.to_string().as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for s in ["n0", "r5", "w32752", "b65535"] {
            assert_eq!(Perm::parse(s.as_bytes()).unwrap().to_string(), s);
        }
    }

    #[test]
    fn malformed_entries_are_einval() {
        for bad in [&b""[..], b"x1", b"r", b"r-1", b"r65536", b"r1a", b"r123456"] {
            assert_eq!(Perm::parse(bad), Err(XsErrno::Inval), "{bad:?}");
        }
        assert_eq!(Perms::parse_list(Vec::<&[u8]>::new()), Err(XsErrno::Inval));
    }

    #[test]
    fn owner_has_full_access_others_get_default_or_their_entry() {
        let p = Perms::parse_list([&b"n5"[..], b"r7", b"w8"]).unwrap();
        assert_eq!(p.access_for(5, None), Access::Both);
        assert_eq!(p.access_for(7, None), Access::Read);
        assert_eq!(p.access_for(8, None), Access::Write);
        assert_eq!(p.access_for(9, None), Access::None);
        // A device model acting for domain 7 gets 7's access.
        assert_eq!(p.access_for(9, Some(7)), Access::Read);
        assert_eq!(p.access_for(9, Some(5)), Access::Both);
    }

    #[test]
    fn wire_form_is_nul_terminated_entries() {
        let p = Perms::parse_list([&b"b0"[..], b"r3"]).unwrap();
        assert_eq!(p.to_wire(), b"b0\0r3\0");
    }
}
