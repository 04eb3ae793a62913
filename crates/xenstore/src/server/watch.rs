//! Watches (`xenstored_watch.c`).
//!
//! A watch on P fires for every change at or below P. When a subtree is
//! removed, each removed node fires the watches set exactly on it (so a
//! watch below the removed node reports its own path), and the top node
//! fires the watches at or above it. An event goes only to connections that
//! may read the node (special `@` paths: those the special node's
//! permissions allow). A watch set with a relative path reports relative
//! paths.

use std::collections::HashMap;

use super::ConnId;
use crate::path;
use crate::perms::Perms;

/// One change to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub path: String,
    /// Permissions that decide who may see it (for SET_PERMS, the old ones
    /// and the new ones both count).
    pub perms: Vec<Perms>,
    /// Fire only watches set exactly on `path` (removal of a descendant).
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub conn: ConnId,
    pub token: Vec<u8>,
    /// Strip this domain path from reported paths.
    pub relative_to: Option<String>,
}

/// All watches, indexed by their absolute path, so that firing costs one
/// lookup per ancestor of the changed node rather than a scan.
#[derive(Debug, Default)]
pub struct WatchTable {
    by_path: HashMap<String, Vec<Watch>>,
}

impl WatchTable {
    pub fn contains(&self, path: &str, conn: ConnId, token: &[u8]) -> bool {
        self.by_path
            .get(path)
            .is_some_and(|v| v.iter().any(|w| w.conn == conn && w.token == token))
    }

    pub fn add(&mut self, path: String, watch: Watch) {
        self.by_path.entry(path).or_default().push(watch);
    }

    /// Removes one watch; false if there was none.
    pub fn remove(&mut self, path: &str, conn: ConnId, token: &[u8]) -> bool {
        let Some(v) = self.by_path.get_mut(path) else {
            return false;
        };
        let before = v.len();
        v.retain(|w| !(w.conn == conn && w.token == token));
        let removed = v.len() != before;
        if v.is_empty() {
            self.by_path.remove(path);
        }
        removed
    }

    /// Removes every watch of `conn`.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.by_path.retain(|_, v| {
            v.retain(|w| w.conn != conn);
            !v.is_empty()
        });
    }

    /// Watches that `event` fires, with the path each should report.
    pub fn matching<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = (&'a Watch, &'a str)> {
        let exact = self.by_path.get(&event.path).into_iter().flatten();
        let above = if event.exact || !event.path.starts_with('/') {
            None
        } else {
            Some(
                ancestors(&event.path)
                    .filter_map(|p| self.by_path.get(p))
                    .flatten(),
            )
        };
        exact
            .chain(above.into_iter().flatten())
            .map(move |w| (w, reported_path(w, &event.path)))
    }
}

/// Strict ancestors of an absolute path, nearest first, ending with `/`.
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(path::parent(p), |q| path::parent(q))
}

fn reported_path<'a>(w: &Watch, p: &'a str) -> &'a str {
    w.relative_to
        .as_deref()
        .and_then(|d| path::relative_to(d, p))
        .unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::{Access, Perms};

    fn ev(p: &str, exact: bool) -> Event {
        Event {
            path: p.into(),
            perms: vec![Perms::owned_by(0, Access::None)],
            exact,
        }
    }

    fn w(conn: ConnId, tok: &str) -> Watch {
        Watch {
            conn,
            token: tok.as_bytes().to_vec(),
            relative_to: None,
        }
    }

    #[test]
    fn change_fires_watches_at_and_above_but_not_below() {
        let mut t = WatchTable::default();
        t.add("/a".into(), w(1, "above"));
        t.add("/a/b".into(), w(1, "at"));
        t.add("/a/b/c".into(), w(1, "below"));
        t.add("/".into(), w(1, "root"));
        let e = ev("/a/b", false);
        let mut got: Vec<&[u8]> = t.matching(&e).map(|(w, _)| &w.token[..]).collect();
        got.sort();
        assert_eq!(got, vec![&b"above"[..], b"at", b"root"]);
    }

    #[test]
    fn exact_event_fires_only_the_watch_on_that_path() {
        let mut t = WatchTable::default();
        t.add("/a".into(), w(1, "above"));
        t.add("/a/b".into(), w(1, "at"));
        let e = ev("/a/b", true);
        let got: Vec<&[u8]> = t.matching(&e).map(|(w, _)| &w.token[..]).collect();
        assert_eq!(got, vec![&b"at"[..]]);
    }

    #[test]
    fn relative_watch_reports_relative_path() {
        let mut t = WatchTable::default();
        t.add(
            "/local/domain/3/data".into(),
            Watch {
                conn: 1,
                token: b"t".to_vec(),
                relative_to: Some("/local/domain/3".into()),
            },
        );
        let e = ev("/local/domain/3/data/x", false);
        let got: Vec<&str> = t.matching(&e).map(|(_, p)| p).collect();
        assert_eq!(got, vec!["data/x"]);
    }

    #[test]
    fn removing_a_connection_removes_its_watches_only() {
        let mut t = WatchTable::default();
        t.add("/a".into(), w(1, "x"));
        t.add("/a".into(), w(2, "x"));
        t.remove_conn(1);
        assert!(!t.contains("/a", 1, b"x"));
        assert!(t.contains("/a", 2, b"x"));
        assert!(t.remove("/a", 2, b"x"));
        assert!(!t.remove("/a", 2, b"x"));
    }
}
