//! XenStore path rules (`docs/misc/xenstore.txt`, C xenstored `is_valid_nodename`).
//!
//! * An absolute path starts with `/`; a relative one is resolved under the
//!   caller's domain path (`/local/domain/<domid>`). Special watch paths start
//!   with `@` and are allowed only where the request permits them.
//! * Allowed characters: ASCII letters and digits and `-/_@`.
//! * No `//`, and no trailing `/` except for the root itself.
//! * An absolute path is at most [`ABS_PATH_MAX`] bytes. The per-domain
//!   path-length quota counts the bytes after a `/local/domain/<id>/` prefix
//!   (see [`quota_length`]).

use crate::errno::XsErrno;
use crate::wire::ABS_PATH_MAX;

/// `/local/domain/<domid>`: where a domain's relative paths resolve.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Resolves `raw` (as sent by a client, without its NUL) against
/// `domain_path` and checks it. Returns the absolute path.
pub fn canonicalize(domain_path: &str, raw: &[u8], allow_special: bool) -> Result<String, XsErrno> {
    let s = std::str::from_utf8(raw).map_err(|_| XsErrno::Inval)?;
    let abs = match s.as_bytes().first() {
        Some(b'/') => s.to_owned(),
        Some(b'@') if allow_special => s.to_owned(),
        Some(b'@') => return Err(XsErrno::Inval),
        Some(_) => format!("{domain_path}/{s}"),
        None => return Err(XsErrno::Inval),
    };
    validate(&abs)?;
    Ok(abs)
}

/// Checks an absolute (or `@` special) path against the syntax rules.
pub fn validate(path: &str) -> Result<(), XsErrno> {
    let b = path.as_bytes();
    if b.is_empty() || !(b[0] == b'/' || b[0] == b'@') {
        return Err(XsErrno::Inval);
    }
    if b.len() > ABS_PATH_MAX {
        return Err(XsErrno::Inval);
    }
    if path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        return Err(XsErrno::Inval);
    }
    if !b.iter().all(|&c| valid_char(c)) {
        return Err(XsErrno::Inval);
    }
    Ok(())
}

/// The length counted against the path-length quota: C xenstored leaves out
/// a leading `/local/domain/<id>/` so every domain gets the same budget.
pub fn quota_length(path: &str) -> usize {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return path.len();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return path.len();
    }
    path.len() - ("/local/domain/".len() + digits + 1)
}

/// The path as the caller named it: relative paths lose the domain prefix
/// again (watch events for a relative watch are reported relative).
pub fn relative_to<'a>(domain_path: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(domain_path)?.strip_prefix('/')
}

/// Parent of an absolute path; `None` for `/` and special paths.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" || !path.starts_with('/') {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last component of an absolute path (`""` for the root).
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `child` is `ancestor` itself or lies below it.
pub fn is_at_or_below(child: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return child.starts_with('/');
    }
    match child.strip_prefix(ancestor) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// `parent` joined with one child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D0: &str = "/local/domain/0";

    #[test]
    fn relative_paths_resolve_under_the_domain_path() {
        assert_eq!(
            canonicalize(D0, b"backend/console", false),
            Ok("/local/domain/0/backend/console".into())
        );
        assert_eq!(canonicalize(D0, b"/tool", false), Ok("/tool".into()));
    }

    #[test]
    fn bad_paths_are_einval() {
        for bad in [
            &b""[..],
            b"/a//b",
            b"/a/",
            b"/a b",
            b"/a\xff",
            b"/a.b",
            b"/a:b",
        ] {
            assert_eq!(canonicalize(D0, bad, false), Err(XsErrno::Inval), "{bad:?}");
        }
        assert_eq!(canonicalize(D0, b"/", false), Ok("/".into()));
    }

    #[test]
    fn special_paths_only_where_allowed() {
        assert_eq!(
            canonicalize(D0, b"@releaseDomain", false),
            Err(XsErrno::Inval)
        );
        assert_eq!(
            canonicalize(D0, b"@releaseDomain", true),
            Ok("@releaseDomain".into())
        );
    }

    #[test]
    fn absolute_length_limit_is_3072() {
        let ok = format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert!(validate(&ok).is_ok());
        assert_eq!(validate(&long), Err(XsErrno::Inval));
    }

    #[test]
    fn quota_length_skips_the_domain_prefix() {
        assert_eq!(quota_length("/local/domain/12/data/x"), "data/x".len());
        assert_eq!(quota_length("/local/domain/12"), "/local/domain/12".len());
        assert_eq!(quota_length("/tool/x"), 7);
    }

    #[test]
    fn tree_helpers() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(is_at_or_below("/a", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
        assert!(is_at_or_below("/x", "/"));
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(relative_to(D0, "/local/domain/0/x/y"), Some("x/y"));
        assert_eq!(relative_to(D0, "/local/domain/01"), None);
    }
}
