//! Per-domain quotas, with C xenstored's defaults (`xenstored_domain.c`).
//!
//! They bind unprivileged domains only; dom0's socket is exempt, as in C
//! xenstored. Which error a hit answers follows C xenstored too: node count,
//! node size, transactions and transaction nodes answer `ENOSPC`; watches and
//! permission entries answer `E2BIG`; an over-long path is `EINVAL`.

/// Limits for one unprivileged domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`nodes`, default 1000).
    pub nodes: usize,
    /// Watches per domain (`watches`, default 128).
    pub watches: usize,
    /// Open transactions per domain (`transactions`, default 10).
    pub transactions: usize,
    /// Nodes one transaction may touch (`transaction-nodes`, default 1024).
    pub transaction_nodes: usize,
    /// Entries in one node's permission list (`node-permissions`, default 5).
    pub node_permissions: usize,
    /// Path length without the `/local/domain/<id>/` prefix (`path-length`, 2048).
    pub path_length: usize,
    /// Value plus children-list bytes of one node (`node-size`, default 2048).
    pub node_size: usize,
    /// Bytes of nodes a domain may own (`memory`, hard limit 2.5 MB).
    pub memory: usize,
    /// Bytes of unread replies and watch events queued for one connection
    /// before further watch events to it are dropped.
    pub output_queue: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            watches: 128,
            transactions: 10,
            transaction_nodes: 1024,
            node_permissions: 5,
            path_length: 2048,
            node_size: 2048,
            memory: 2_500_000,
            output_queue: 2_500_000,
        }
    }
}
