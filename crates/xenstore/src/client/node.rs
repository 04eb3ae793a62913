//! Node operations, shared by the client (`tx_id` 0) and transactions.
//!
//! Request payloads: every argument NUL-terminated, except `WRITE`'s value,
//! which runs to the end of the payload. Replies: `READ` is the raw value,
//! `DIRECTORY` and `GET_PERMS` are NUL-terminated lists, acks are `OK\0`
//! (like libxenstore, only the reply type is checked for acks).
//!
//! `DIRECTORY_PART` (Xen `tools/libs/store/xs.c`, `xs_directory_part`): a
//! request is `<path>\0<offset>\0`, the offset counting bytes of the
//! concatenated child list already received; a reply is `<generation>\0`
//! then the next bytes of that list, and the last part ends with one extra
//! `\0`. If the generation differs from the first part's, the directory
//! changed and the listing restarts at offset 0.

use crate::errno::XsErrno;
use crate::perms::Perms;
use crate::wire::{split_strings, MsgType};

use super::conn::Request;
use super::{Client, Error};

/// Restarts of a `DIRECTORY_PART` listing before giving up with `EAGAIN`.
const DIRECTORY_PART_RESTARTS: u32 = 100;
/// Bound on a listing assembled from parts: a peer cannot make us grow
/// without end by never sending the final part.
const DIRECTORY_PART_MAX_BYTES: usize = 16 << 20;

/// Payload of NUL-terminated arguments; an argument that holds a NUL cannot
/// be framed and is refused before anything is sent.
pub(crate) fn nul_args(op: MsgType, path: &str, args: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(args.iter().map(|a| a.len() + 1).sum());
    for arg in args {
        if arg.contains(&0) {
            return Err(Error::InvalidArgument {
                op,
                path: path.to_owned(),
                reason: "argument contains a NUL byte",
            });
        }
        out.extend_from_slice(arg);
        out.push(0);
    }
    Ok(out)
}

/// The NUL-separated names of a `DIRECTORY` reply. Like libxenstore, an
/// unterminated tail counts as one more name; empty names are skipped.
pub(crate) fn parse_names(op: MsgType, path: &str, bytes: &[u8]) -> Result<Vec<String>, Error> {
    let (mut parts, tail) = split_strings(bytes);
    parts.push(tail);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            String::from_utf8(p.to_vec())
                .map_err(|_| Error::Protocol(format!("{op:?} {path:?}: child name is not UTF-8")))
        })
        .collect()
}

/// A client plus the transaction its requests belong to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub client: &'a Client,
    pub tx_id: u32,
}

impl Scope<'_> {
    fn call(&self, op: MsgType, path: &str, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.client.request(Request {
            op,
            tx_id: self.tx_id,
            path,
            payload,
        })
    }

    fn on_path(&self, op: MsgType, path: &str) -> Result<Vec<u8>, Error> {
        self.call(op, path, nul_args(op, path, &[path.as_bytes()])?)
    }

    pub(crate) fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.on_path(MsgType::Read, path)
    }

    pub(crate) fn write(&self, path: &str, value: &[u8]) -> Result<(), Error> {
        let mut payload = nul_args(MsgType::Write, path, &[path.as_bytes()])?;
        payload.extend_from_slice(value);
        self.call(MsgType::Write, path, payload).map(drop)
    }

    pub(crate) fn mkdir(&self, path: &str) -> Result<(), Error> {
        self.on_path(MsgType::Mkdir, path).map(drop)
    }

    pub(crate) fn rm(&self, path: &str) -> Result<(), Error> {
        self.on_path(MsgType::Rm, path).map(drop)
    }

    pub(crate) fn get_perms(&self, path: &str) -> Result<Perms, Error> {
        let reply = self.on_path(MsgType::GetPerms, path)?;
        let (parts, _) = split_strings(&reply);
        Perms::parse_list(parts).map_err(|_| {
            Error::Protocol(format!("GetPerms {path:?}: bad permission list {reply:?}"))
        })
    }

    pub(crate) fn set_perms(&self, path: &str, perms: &Perms) -> Result<(), Error> {
        let mut payload = nul_args(MsgType::SetPerms, path, &[path.as_bytes()])?;
        payload.extend_from_slice(&perms.to_wire());
        self.call(MsgType::SetPerms, path, payload).map(drop)
    }

    /// `DIRECTORY`, falling back to `DIRECTORY_PART` when the list is too
    /// big for one reply (`E2BIG`).
    pub(crate) fn directory(&self, path: &str) -> Result<Vec<String>, Error> {
        match self.on_path(MsgType::Directory, path) {
            Ok(reply) => parse_names(MsgType::Directory, path, &reply),
            Err(Error::Xs {
                errno: XsErrno::TooBig,
                ..
            }) => self.directory_part(path),
            Err(e) => Err(e),
        }
    }

    fn directory_part(&self, path: &str) -> Result<Vec<String>, Error> {
        for _ in 0..DIRECTORY_PART_RESTARTS {
            if let Some(list) = self.directory_part_once(path)? {
                return parse_names(MsgType::DirectoryPart, path, &list);
            }
        }
        Err(Error::Xs {
            op: MsgType::DirectoryPart,
            path: path.to_owned(),
            errno: XsErrno::Again,
        })
    }

    /// One pass over the parts; `None` if the generation changed under us.
    fn directory_part_once(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut generation: Option<Vec<u8>> = None;
        let mut list = Vec::new();
        loop {
            let reply = self.part(path, list.len())?;
            let (gen, chunk) = split_generation(path, &reply)?;
            match &generation {
                Some(first) if first.as_slice() != gen => return Ok(None),
                Some(_) => {}
                None => generation = Some(gen.to_vec()),
            }
            list.extend_from_slice(chunk);
            if list.len() <= 1 || list.ends_with(&[0, 0]) {
                list.pop();
                return Ok(Some(list));
            }
            check_progress(path, chunk, list.len())?;
        }
    }

    fn part(&self, path: &str, offset: usize) -> Result<Vec<u8>, Error> {
        let op = MsgType::DirectoryPart;
        let offset = offset.to_string();
        let payload = nul_args(op, path, &[path.as_bytes(), offset.as_bytes()])?;
        self.call(op, path, payload).map_err(|e| match e {
            // Servers without DIRECTORY_PART: the listing is simply too big.
            Error::Xs {
                errno: XsErrno::NoSys,
                ..
            } => Error::Xs {
                op: MsgType::Directory,
                path: path.to_owned(),
                errno: XsErrno::TooBig,
            },
            e => e,
        })
    }
}

fn split_generation<'r>(path: &str, reply: &'r [u8]) -> Result<(&'r [u8], &'r [u8]), Error> {
    let nul = reply.iter().position(|&b| b == 0).ok_or_else(|| {
        Error::Protocol(format!("DirectoryPart {path:?}: reply without generation"))
    })?;
    Ok((&reply[..nul], &reply[nul + 1..]))
}

fn check_progress(path: &str, chunk: &[u8], total: usize) -> Result<(), Error> {
    if chunk.is_empty() {
        return Err(Error::Protocol(format!(
            "DirectoryPart {path:?}: empty part before the end"
        )));
    }
    if total > DIRECTORY_PART_MAX_BYTES {
        return Err(Error::Protocol(format!(
            "DirectoryPart {path:?}: listing exceeds {DIRECTORY_PART_MAX_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_nul_terminated_and_nul_inside_is_refused() {
        assert_eq!(
            nul_args(MsgType::Watch, "/a", &[b"/a", b"tok"]).unwrap(),
            b"/a\0tok\0"
        );
        let err = nul_args(MsgType::Watch, "/a", &[b"/a", b"t\0k"]).unwrap_err();
        assert_eq!(err.errno(), Some(XsErrno::Inval));
    }

    #[test]
    fn names_skip_empties_and_keep_an_unterminated_tail() {
        let names = parse_names(MsgType::Directory, "/", b"a\0b\0\0c").unwrap();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(parse_names(MsgType::Directory, "/", b"")
            .unwrap()
            .is_empty());
        assert!(parse_names(MsgType::Directory, "/", b"\0")
            .unwrap()
            .is_empty());
        assert!(matches!(
            parse_names(MsgType::Directory, "/", b"\xff\0"),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn generation_is_the_first_string() {
        assert_eq!(
            split_generation("/", b"12\0a\0b\0").unwrap(),
            (&b"12"[..], &b"a\0b\0"[..])
        );
        assert!(split_generation("/", b"12").is_err());
    }
}
