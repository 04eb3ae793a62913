//! XenStore error names.
//!
//! Errors travel on the wire as the *name* of a POSIX errno (`"ENOENT\0"` in an
//! `ERROR` reply), never as a number, so that guests of any OS agree. The table
//! order and contents are Xen's `xsd_errors[]` in `xs_wire.h`; new names are
//! only ever appended there.

use std::fmt;

/// One entry of Xen's `xsd_errors[]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XsErrno {
    Inval,
    Acces,
    Exist,
    IsDir,
    NoEnt,
    NoMem,
    NoSpc,
    Io,
    NotEmpty,
    NoSys,
    RoFs,
    Busy,
    Again,
    IsConn,
    TooBig,
    Perm,
}

impl XsErrno {
    /// Every name in `xsd_errors[]` order.
    pub const ALL: [XsErrno; 16] = [
        XsErrno::Inval,
        XsErrno::Acces,
        XsErrno::Exist,
        XsErrno::IsDir,
        XsErrno::NoEnt,
        XsErrno::NoMem,
        XsErrno::NoSpc,
        XsErrno::Io,
        XsErrno::NotEmpty,
        XsErrno::NoSys,
        XsErrno::RoFs,
        XsErrno::Busy,
        XsErrno::Again,
        XsErrno::IsConn,
        XsErrno::TooBig,
        XsErrno::Perm,
    ];

    /// The name as it appears on the wire.
    pub fn name(self) -> &'static str {
        match self {
            XsErrno::Inval => "EINVAL",
            XsErrno::Acces => "EACCES",
            XsErrno::Exist => "EEXIST",
            XsErrno::IsDir => "EISDIR",
            XsErrno::NoEnt => "ENOENT",
            XsErrno::NoMem => "ENOMEM",
            XsErrno::NoSpc => "ENOSPC",
            XsErrno::Io => "EIO",
            XsErrno::NotEmpty => "ENOTEMPTY",
            XsErrno::NoSys => "ENOSYS",
            XsErrno::RoFs => "EROFS",
            XsErrno::Busy => "EBUSY",
            XsErrno::Again => "EAGAIN",
            XsErrno::IsConn => "EISCONN",
            XsErrno::TooBig => "E2BIG",
            XsErrno::Perm => "EPERM",
        }
    }

    /// Parses a wire name. libxenstore maps unknown names to `EINVAL`; we
    /// keep that as `None` so the caller can say what it saw.
    pub fn from_name(name: &str) -> Option<XsErrno> {
        XsErrno::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The Linux errno number, for callers that hand errors to C code.
    pub fn raw_os_error(self) -> i32 {
        match self {
            XsErrno::Inval => 22,
            XsErrno::Acces => 13,
            XsErrno::Exist => 17,
            XsErrno::IsDir => 21,
            XsErrno::NoEnt => 2,
            XsErrno::NoMem => 12,
            XsErrno::NoSpc => 28,
            XsErrno::Io => 5,
            XsErrno::NotEmpty => 39,
            XsErrno::NoSys => 38,
            XsErrno::RoFs => 30,
            XsErrno::Busy => 16,
            XsErrno::Again => 11,
            XsErrno::IsConn => 106,
            XsErrno::TooBig => 7,
            XsErrno::Perm => 1,
        }
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for XsErrno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_xen_table_order() {
        let names: Vec<&str> = XsErrno::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "EINVAL",
                "EACCES",
                "EEXIST",
                "EISDIR",
                "ENOENT",
                "ENOMEM",
                "ENOSPC",
                "EIO",
                "ENOTEMPTY",
                "ENOSYS",
                "EROFS",
                "EBUSY",
                "EAGAIN",
                "EISCONN",
                "E2BIG",
                "EPERM"
            ]
        );
        for e in XsErrno::ALL {
            assert_eq!(XsErrno::from_name(e.name()), Some(e));
        }
        assert_eq!(XsErrno::from_name("EWHATEVER"), None);
    }

    #[test]
    fn os_numbers_match_linux() {
        use rustix::io::Errno;
        let expect = [
            Errno::INVAL,
            Errno::ACCESS,
            Errno::EXIST,
            Errno::ISDIR,
            Errno::NOENT,
            Errno::NOMEM,
            Errno::NOSPC,
            Errno::IO,
            Errno::NOTEMPTY,
            Errno::NOSYS,
            Errno::ROFS,
            Errno::BUSY,
            Errno::AGAIN,
            Errno::ISCONN,
            Errno::TOOBIG,
            Errno::PERM,
        ];
        for (e, os) in XsErrno::ALL.into_iter().zip(expect) {
            assert_eq!(e.raw_os_error(), os.raw_os_error(), "{e}");
        }
    }
}
