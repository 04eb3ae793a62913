//! `xen-console`: the Xen PV console backend and its tools.

mod cmd;
mod control;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xen-console",
    version,
    about = "Xen paravirtual console backend"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Start the emulated Xen, the daemon and a few guests: the whole system here.
    Up(cmd::up::Args),
    /// Attach to a guest's console (like `xl console`).
    Attach(cmd::attach::Args),
    /// Create, destroy and list domains on the emulated Xen.
    Domain(cmd::domain::Args),
    /// Serve every guest console on the host (a xenconsoled replacement).
    Daemon(cmd::daemon::Args),
    /// Talk to a running daemon: add, del, list, stats.
    Ctl(cmd::ctl::Args),
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
    let argv = cmd::daemon::expand_config(std::env::args().collect())?;
    let cli = Cli::parse_from(argv);
    let default_level = match &cli.command {
        Command::Daemon(a) if a.verbose => "debug",
        Command::Up(_) | Command::Attach(_) | Command::Domain(_) | Command::Bench(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Up(a) => cmd::up::run(a),
        Command::Attach(a) => cmd::attach::run(a),
        Command::Domain(a) => cmd::domain::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Ctl(a) => cmd::ctl::run(a),
        Command::Xenstored(a) => cmd::xenstored::run(a),
        Command::Emu(a) => cmd::emu::run(a),
        Command::Guest(a) => cmd::guest::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    }
}
