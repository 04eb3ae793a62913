//! `xen-console emu`: the emulated Xen (hypervisor and XenStore) in the
//! foreground, for backends and guests in other processes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use platform::emu::Emulator;

#[derive(clap::Args)]
pub struct Args {
    /// Run directory for the sockets (`xen`, `xenstored`, per-domain ones).
    #[arg(long, default_value = crate::util::DEFAULT_EMU_DIR)]
    pub dir: PathBuf,
    /// Create this many guest domains at start (named guest1, guest2, ...).
    #[arg(long, default_value_t = 0)]
    pub domains: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::util::raise_fd_limit().context("raising the open-file limit")?;
    let emu = Emulator::start(&args.dir)
        .with_context(|| format!("starting the emulator in {}", args.dir.display()))?;
    for i in 1..=args.domains {
        let d = emu
            .create_domain(&format!("guest{i}"), 16)
            .map_err(anyhow::Error::msg)?;
        println!("created domain {d} (guest{i})");
    }
    println!("emulated Xen running in {}", args.dir.display());
    println!(
        "export XENSTORED_PATH={}",
        emu.paths().xenstored().display()
    );
    println!(
        "hypervisor socket for dom0: {}",
        emu.paths().xen().display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
