//! `xen-console daemon`: serves every guest console on the host, as
//! xenconsoled does, with xenconsoled's options where they make sense.
//!
//! It finds domains the xenconsoled way (`@introduceDomain` and
//! `@releaseDomain`, then `/local/domain`) and serves each primary console
//! whose `type` it handles; it serves secondary consoles the XenBus way
//! (its backend directory); it takes hot-plug requests on a control socket.
//! SIGHUP reopens the guest logs (rotate, then HUP); SIGTERM and SIGINT
//! stop it cleanly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use console::backend::ConsoleBackend;
use console::device::ConsoleOptions;
use console::log::LogStyle;
use console::output_buffer::Overflow;
use console::sink::SinkSpec;
use platform::Platform;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::control;

/// xenconsoled's `--log` and `--timestamp` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    None,
    Guest,
    Hv,
    All,
}

impl Which {
    fn guest(self) -> bool {
        matches!(self, Which::Guest | Which::All)
    }
    fn hv(self) -> bool {
        matches!(self, Which::Hv | Which::All)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformKind {
    /// Real Xen, through /dev/xen.
    Linux,
    /// The emulated Xen of `xen-console emu` / `up`.
    Emu,
}

#[derive(clap::Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct Args {
    /// Read options from FILE first: one `option = value` (or `flag`) per
    /// line, named as the long options; `#` starts a comment. Options on
    /// the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stay in the foreground (always the case; accepted for xenconsoled compatibility).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Log more (debug level).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Which logs to keep: guest consoles to files, the hypervisor's console.
    #[arg(long, value_enum, default_value_t = Which::None)]
    pub log: Which,
    /// Where guest logs go (guest-<name>.log).
    #[arg(long, default_value = "/var/log/xen/console")]
    pub log_dir: PathBuf,
    /// Prefix log lines with [YYYY-MM-DD HH:MM:SS].
    #[arg(short = 't', long, value_enum, default_value_t = Which::None)]
    pub timestamp: Which,
    /// When a console's buffer is full: drop the oldest output, or make the guest wait.
    #[arg(short = 'o', long, default_value = "discard")]
    pub overflow_data: Overflow,
    /// Write ESC bytes to log files as '.'.
    #[arg(long)]
    pub replace_escape: bool,
    /// Write our pid here (locked, so a second daemon refuses to start).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// XenStore to use (a socket, or /dev/xen/xenbus); default: as libxenstore.
    #[arg(long)]
    pub xenstore: Option<PathBuf>,
    /// Which Xen.
    #[arg(long, value_enum, default_value_t = PlatformKind::Linux)]
    pub platform: PlatformKind,
    /// The emulator's run directory, for --platform emu.
    #[arg(long, default_value = crate::util::DEFAULT_EMU_DIR)]
    pub emu_dir: PathBuf,
    /// The control socket (JSON lines; see `xen-console ctl`).
    #[arg(long, default_value = "/run/xen-console/control")]
    pub control: PathBuf,
    /// Where every primary console goes (default: what the toolstack's
    /// read-only `output` says, else a pty).
    #[arg(long)]
    pub sink: Option<SinkSpec>,
    /// Console `type` values to serve (repeat); default xenconsoled.
    #[arg(long = "serve-type", default_values_t = vec!["xenconsoled".to_string()])]
    pub serve_types: Vec<String>,
    /// Limit each console's output to this many bytes per second (a flooding
    /// guest waits; its neighbours do not notice). Default: no limit.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub rate_limit: Option<u64>,
    /// Bytes a quiet console may send at once under --rate-limit.
    #[arg(long, default_value_t = 64 * 1024)]
    pub rate_burst: u64,
    /// Do not look for domains; serve only what the control socket adds.
    #[arg(long)]
    pub no_discover: bool,
}

fn open_platform(args: &Args) -> anyhow::Result<Arc<dyn Platform>> {
    Ok(match args.platform {
        PlatformKind::Linux => Arc::new(platform::linux::LinuxPlatform::open()?),
        PlatformKind::Emu => Arc::new(
            platform::emu::EmuPlatform::connect(args.emu_dir.join("xen")).with_context(|| {
                format!("connecting to the emulator in {}", args.emu_dir.display())
            })?,
        ),
    })
}

fn open_store(args: &Args) -> anyhow::Result<xenstore::client::Client> {
    let path = match (&args.xenstore, args.platform) {
        (Some(p), _) => Some(p.clone()),
        (None, PlatformKind::Emu) => Some(args.emu_dir.join("xenstored")),
        (None, PlatformKind::Linux) => None,
    };
    Ok(match path {
        Some(p) => xenstore::client::Client::open_path(&p)
            .with_context(|| format!("opening XenStore at {}", p.display()))?,
        None => xenstore::client::Client::open().context("opening XenStore")?,
    })
}

/// Holds the pid file open and locked while the daemon runs.
struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

fn write_pid_file(path: &PathBuf) -> anyhow::Result<PidFile> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!("another daemon holds {}", path.display());
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(PidFile {
        path: path.clone(),
        _file: file,
    })
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn options(args: &Args) -> ConsoleOptions {
    ConsoleOptions {
        default_sink: SinkSpec::Pty,
        primary_sink: args.sink.clone(),
        overflow: args.overflow_data,
        serve_types: args.serve_types.clone(),
        log_dir: args.log.guest().then(|| args.log_dir.clone()),
        log_style: LogStyle {
            timestamps: args.timestamp.guest(),
            replace_escape: args.replace_escape,
        },
        discover_primaries: !args.no_discover,
        rate_limit: args.rate_limit.map(|r| console::io::RateLimit {
            bytes_per_sec: r,
            burst: args.rate_burst,
        }),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::util::raise_fd_limit().context("raising the open-file limit")?;
    let _pid = args.pid_file.as_ref().map(write_pid_file).transpose()?;
    if args.log.hv() || args.timestamp.hv() {
        tracing::warn!("the hypervisor console log (--log hv) is not implemented; guest logs only");
    }
    if args.log.guest() {
        std::fs::create_dir_all(&args.log_dir)
            .with_context(|| format!("creating {}", args.log_dir.display()))?;
    }
    let platform = open_platform(&args)?;
    let store = open_store(&args)?;
    let backend = Arc::new(
        ConsoleBackend::spawn(store, platform, options(&args))
            .context("starting the console backend")?,
    );
    control::serve(&args.control, backend.clone())
        .with_context(|| format!("control socket {}", args.control.display()))?;
    tracing::info!(control = %args.control.display(), "xen-console daemon running");
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    let asked_to_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let backend = backend.clone();
        let asked = asked_to_stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        tracing::info!("SIGHUP: reopening guest logs");
                        if let Err(e) = backend.reopen_logs() {
                            tracing::warn!(error = %e, "reopening logs failed");
                        }
                        continue;
                    }
                    asked.store(true, std::sync::atomic::Ordering::SeqCst);
                    backend.request_stop();
                    return;
                }
            })?;
    }
    // Ends when a signal stops the loop, or when XenStore goes away (then,
    // as xenconsoled, exit and let the service manager restart us).
    backend.wait_ended();
    let _ = std::fs::remove_file(&args.control);
    if !asked_to_stop.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("the console backend stopped: the XenStore connection was lost");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Turns a config file into command-line words (`log = guest` becomes
/// `--log guest`, `replace-escape` becomes `--replace-escape`).
pub fn config_args(text: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (line, None),
        };
        if name.is_empty()
            || name == "config"
            || !name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        {
            bail!("config line {}: {raw:?} is not `option = value`", n + 1);
        }
        out.push(format!("--{name}"));
        if let Some(v) = value {
            out.push(v.to_owned());
        }
    }
    Ok(out)
}

/// Inserts a daemon config file's options before the command line's.
pub fn expand_config(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(daemon_at) = argv.iter().position(|a| a == "daemon") else {
        return Ok(argv);
    };
    let path = argv
        .iter()
        .enumerate()
        .skip(daemon_at + 1)
        .find_map(|(i, a)| {
            a.strip_prefix("--config=").map(str::to_owned).or_else(|| {
                (a == "--config")
                    .then(|| argv.get(i + 1).cloned())
                    .flatten()
            })
        });
    let Some(path) = path else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {path}"))?;
    let mut out = argv[..=daemon_at].to_vec();
    out.extend(config_args(&text)?);
    out.extend_from_slice(&argv[daemon_at + 1..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_become_long_options_that_the_command_line_overrides() {
        let words = config_args(
            "# xenconsoled-like\nlog = guest\nlog-dir = \"/var/log/xen/console\"\nreplace-escape\n",
        )
        .unwrap();
        assert_eq!(
            words,
            [
                "--log",
                "guest",
                "--log-dir",
                "/var/log/xen/console",
                "--replace-escape"
            ]
        );
        assert!(config_args("log guest extra").is_err());
        assert!(config_args("config = /etc/loop").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.conf");
        std::fs::write(&file, "log = guest\noverflow-data = keep\n").unwrap();
        let argv: Vec<String> = [
            "xen-console",
            "daemon",
            "--config",
            file.to_str().unwrap(),
            "--log",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let expanded = expand_config(argv).unwrap();
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(expanded).unwrap();
        let crate::Command::Daemon(a) = cli.command else {
            panic!("not the daemon")
        };
        assert_eq!(a.log, Which::None, "the command line wins");
        assert_eq!(a.overflow_data, Overflow::Keep, "the file applies");
    }
}
