//! `xen-console`: the Xen PV console backend and its tools.

mod cmd;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xen-console",
    version,
    about = "Xen paravirtual console backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded XenStore server in the foreground.
    Xenstored(cmd::xenstored::Args),
    /// Run the emulated Xen (hypervisor and XenStore) in the foreground.
    Emu(cmd::emu::Args),
    /// Run a simulated guest (hvc_xen-like consoles) on the emulated Xen.
    Guest(cmd::guest::Args),
    /// Show a part of the project working on this machine.
    Demo(cmd::demo::Args),
    /// Measure performance against bounds taken in the same run.
    Bench(cmd::bench::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Xenstored(a) => cmd::xenstored::run(a),
        Command::Emu(a) => cmd::emu::run(a),
        Command::Guest(a) => cmd::guest::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    }
}
