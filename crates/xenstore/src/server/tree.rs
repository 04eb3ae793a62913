//! The node tree: path → node, with per-owner node counts for quotas.
//!
//! Every node but `/` has a parent, and every parent lists its children by
//! name in creation order (the order DIRECTORY returns). Each modification
//! gives the node a fresh generation from a store-wide counter; transactions
//! detect conflicts by comparing generations.

use std::collections::HashMap;

use crate::path;
use crate::perms::{Access, DomId, Perms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    pub children: Vec<String>,
    pub generation: u64,
}

impl Node {
    pub fn new(perms: Perms) -> Node {
        Node {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            generation: 0,
        }
    }

    /// Bytes of the children list as DIRECTORY sends it (each name + NUL).
    pub fn children_len(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// Rough memory charged to the owner: path, value, names, perms.
    pub fn footprint(&self, path: &str) -> usize {
        path.len() + self.value.len() + self.children_len() + self.perms.entries().len() * 8 + 64
    }
}

#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<String, Node>,
    /// Nodes owned per domain (the node quota counts these).
    owned: HashMap<DomId, usize>,
    next_generation: u64,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// The tree C xenstored starts with: `/`, `/tool`, `/tool/xenstored`,
    /// each owned by dom0 with no access for anyone else.
    pub fn new() -> Tree {
        let mut t = Tree {
            nodes: HashMap::new(),
            owned: HashMap::new(),
            next_generation: 1,
        };
        t.insert("/".into(), Node::new(Perms::owned_by(0, Access::None)));
        for p in ["/tool", "/tool/xenstored"] {
            t.create_child(p, Perms::owned_by(0, Access::None));
        }
        t
    }

    fn create_child(&mut self, p: &str, perms: Perms) {
        let parent = path::parent(p).unwrap_or("/").to_owned();
        if let Some(n) = self.nodes.get(&parent).cloned() {
            let mut n = n;
            n.children.push(path::basename(p).to_owned());
            self.insert(parent, n);
        }
        self.insert(p.to_owned(), Node::new(perms));
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn generation_of(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.generation)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn owned_by(&self, domid: DomId) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Stores `node` at `path` with a fresh generation. The caller keeps the
    /// parent's children list consistent.
    pub fn insert(&mut self, path: String, mut node: Node) {
        node.generation = self.next_generation;
        self.next_generation += 1;
        *self.owned.entry(node.perms.owner()).or_default() += 1;
        if let Some(old) = self.nodes.insert(path, node) {
            self.disown(old.perms.owner());
        }
    }

    /// Removes exactly the node at `path` (not its children).
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let old = self.nodes.remove(path)?;
        self.disown(old.perms.owner());
        Some(old)
    }

    fn disown(&mut self, domid: DomId) {
        if let Some(c) = self.owned.get_mut(&domid) {
            *c -= 1;
            if *c == 0 {
                self.owned.remove(&domid);
            }
        }
    }

    /// Paths of every node owned by `domid`.
    pub fn paths_owned_by(&self, domid: DomId) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.perms.owner() == domid)
            .map(|(p, _)| p.clone())
            .collect()
    }
}
