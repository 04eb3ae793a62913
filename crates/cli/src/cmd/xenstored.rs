//! `xen-console xenstored`: the embedded XenStore server, in the foreground.

use std::path::PathBuf;

use anyhow::Context;
use xenstore::server::{Quotas, Server, ServerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The privileged (dom0) socket; point Xen's tools at it with XENSTORED_PATH.
    #[arg(long, default_value = "/var/run/xenstored/socket")]
    pub socket: PathBuf,
    /// Give each introduced domain N an unprivileged socket DIR/N.
    #[arg(long, value_name = "DIR")]
    pub domain_sockets: Option<PathBuf>,
    /// Nodes an unprivileged domain may own.
    #[arg(long, default_value_t = Quotas::default().nodes)]
    pub quota_nodes: usize,
    /// Watches an unprivileged domain may hold.
    #[arg(long, default_value_t = Quotas::default().watches)]
    pub quota_watches: usize,
    /// Transactions an unprivileged domain may have open.
    #[arg(long, default_value_t = Quotas::default().transactions)]
    pub quota_transactions: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(parent) = args.socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let config = ServerConfig {
        socket: args.socket.clone(),
        domain_socket_dir: args.domain_sockets,
        quotas: Quotas {
            nodes: args.quota_nodes,
            watches: args.quota_watches,
            transactions: args.quota_transactions,
            ..Quotas::default()
        },
    };
    let (server, _control) =
        Server::bind(config).with_context(|| format!("binding {}", args.socket.display()))?;
    server.run().context("xenstored stopped")
}
