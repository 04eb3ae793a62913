//! Transactions, the way C xenstored does them (`xenstored_transaction.c`).
//!
//! The first time a transaction touches a path — to read or to write, and
//! whether or not a node is there — it takes a private copy of the node and
//! remembers the node's generation. From then on it sees only its copy, so
//! changes made outside do not leak in. Commit succeeds only if none of the
//! touched nodes changed meanwhile; otherwise it answers `EAGAIN`, applies
//! nothing, and the client retries. Watch events are held until commit.

use std::collections::HashMap;

use super::tree::{Node, Tree};
use super::watch::Event;
use crate::perms::DomId;

/// A path as one transaction sees it.
#[derive(Debug)]
pub struct Entry {
    /// The node (`None`: absent, or removed by this transaction).
    pub node: Option<Node>,
    /// Its generation in the store when first touched.
    pub first_generation: Option<u64>,
    /// Changed by this transaction, so commit must write it.
    pub dirty: bool,
}

#[derive(Debug, Default)]
pub struct Txn {
    pub entries: HashMap<String, Entry>,
    /// Watch events to fire if the commit succeeds.
    pub events: Vec<Event>,
    /// Change in nodes owned per domain, for the node quota.
    pub owned_delta: HashMap<DomId, isize>,
    /// Set when a request inside it failed for lack of resources; commit
    /// then answers `ENOMEM`, as C xenstored does.
    pub failed: bool,
}

impl Txn {
    /// The transaction's view of `path`, copying it in on first touch.
    pub fn entry(&mut self, tree: &Tree, path: &str) -> &mut Entry {
        self.entries.entry(path.to_owned()).or_insert_with(|| {
            let node = tree.get(path).cloned();
            Entry {
                first_generation: node.as_ref().map(|n| n.generation),
                node,
                dirty: false,
            }
        })
    }

    pub fn touched(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing this transaction touched has changed since.
    pub fn is_current(&self, tree: &Tree) -> bool {
        self.entries
            .iter()
            .all(|(path, e)| tree.generation_of(path) == e.first_generation)
    }

    /// Writes the changed nodes to `tree` and returns the held events: one
    /// per node, as C xenstored queues them, a subtree event winning over an
    /// exact one for the same node.
    pub fn apply(self, tree: &mut Tree) -> Vec<Event> {
        for (path, e) in self.entries {
            if !e.dirty {
                continue;
            }
            match e.node {
                Some(n) => tree.insert(path, n),
                None => {
                    tree.remove(&path);
                }
            }
        }
        let mut events: Vec<Event> = Vec::with_capacity(self.events.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for e in self.events {
            match index.get(&e.path) {
                Some(&i) => {
                    events[i].exact &= e.exact;
                    events[i].perms.extend(e.perms);
                }
                None => {
                    index.insert(e.path.clone(), events.len());
                    events.push(e);
                }
            }
        }
        events
    }
}
