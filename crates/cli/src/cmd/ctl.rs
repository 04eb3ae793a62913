//! `xen-console ctl`: the daemon's control socket from the shell.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::control::{self, Request};

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's control socket.
    #[arg(long, default_value = "/run/xen-console/control")]
    pub control: PathBuf,
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand)]
pub enum What {
    /// Hot-plug a secondary console into a domain.
    Add {
        domid: u16,
        /// Console index (default: the first free one, 1 and up).
        #[arg(long)]
        index: Option<u32>,
        /// Where it goes: pty, file:PATH, unix:PATH,server, tcp:127.0.0.1:PORT,server, null.
        #[arg(long, default_value = "pty")]
        sink: String,
    },
    /// Hot-unplug a secondary console.
    Del { domid: u16, index: u32 },
    /// List the consoles served.
    List,
    /// Per-console counters, as JSON.
    Stats,
    /// Reopen the guest logs (after rotating them).
    ReopenLogs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let req = match args.what {
        What::Add { domid, index, sink } => Request::Add {
            domid,
            index,
            sink: Some(sink),
        },
        What::Del { domid, index } => Request::Del { domid, index },
        What::List => Request::List,
        What::Stats => Request::Stats,
        What::ReopenLogs => Request::ReopenLogs,
    };
    let reply = control::request(&args.control, &req)
        .with_context(|| format!("talking to the daemon at {}", args.control.display()))?;
    if !reply.ok {
        bail!(
            "{}",
            reply.error.unwrap_or_else(|| "the daemon refused".into())
        );
    }
    match (&req, reply.consoles) {
        (Request::List, Some(list)) => {
            println!(
                "{:>6} {:>6} {:<10} {:<28} tty / log",
                "domid", "index", "state", "sink"
            );
            for c in list {
                let state = if c.connected { "connected" } else { "waiting" };
                let reach = c.tty.or(c.log).unwrap_or_default();
                println!(
                    "{:>6} {:>6} {:<10} {:<28} {}",
                    c.domid, c.index, state, c.sink, reach
                );
            }
        }
        (_, Some(list)) => println!("{}", serde_json::to_string_pretty(&list)?),
        (_, None) => match reply.index {
            Some(i) => println!("{i}"),
            None => println!("ok"),
        },
    }
    Ok(())
}
