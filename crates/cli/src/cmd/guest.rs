//! `xen-console guest`: a simulated guest on the emulated Xen, whose
//! consoles behave like Linux hvc_xen. Commands on stdin, `@` lines out.

use std::path::PathBuf;

use anyhow::Context;
use guest::{Guest, GuestConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The domain's hypervisor socket (`<emu dir>/xen-domains/<domid>`).
    #[arg(long)]
    pub xen: PathBuf,
    /// The domain's XenStore socket (`<emu dir>/xenstore-domains/<domid>`).
    #[arg(long)]
    pub xenstore: PathBuf,
    /// Do not echo console input back.
    #[arg(long)]
    pub no_echo: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = GuestConfig {
        xen: args.xen,
        xenstore: args.xenstore,
        echo: !args.no_echo,
    };
    let g = Guest::connect(cfg).context("connecting the guest to the emulated Xen")?;
    g.run().context("guest stopped")
}
