//! `xen-console bench`: performance figures, each printed next to the bound
//! it is measured against in the same run.

mod console;
mod daemon;
mod evtchn;
mod xenstore;

use std::io;
use std::time::Duration;

use crate::util::raise_fd_limit;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// XenStore server: latency, throughput, memory, idle connections.
    Xenstore {
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Round trips per latency measurement.
        #[arg(long, default_value_t = 50_000)]
        round_trips: usize,
        /// Do not pin the latency runs to CPU 0.
        #[arg(long)]
        no_pin: bool,
    },
    /// Emulated event channels between two processes, against bare eventfds;
    /// grant map/unmap rate.
    Evtchn {
        /// Round trips per measurement.
        #[arg(long, default_value_t = 50_000)]
        round_trips: usize,
        /// Do not pin both processes to CPU 0.
        #[arg(long)]
        no_pin: bool,
    },
    /// One console's guest->sink throughput against a minimal copy loop, and
    /// keystroke latency through a pty.
    Console {
        /// MiB to move per throughput run.
        #[arg(long, default_value_t = 64)]
        megabytes: usize,
        /// Keystrokes to time.
        #[arg(long, default_value_t = 5000)]
        keystrokes: usize,
        /// Do not pin to CPU 0.
        #[arg(long)]
        no_pin: bool,
    },
    /// One daemon with 1, 100 and 1,000 consoles: discovery time, idle
    /// wake-ups and CPU, memory per console, aggregate throughput.
    Daemon {
        /// Console counts to measure (comma-separated; include 1 for the per-console memory).
        #[arg(long, value_delimiter = ',', default_values_t = vec![1, 100, 1000])]
        consoles: Vec<usize>,
        /// Seconds to watch the idle daemon.
        #[arg(long, default_value_t = 5)]
        idle_seconds: u64,
    },
    /// The other process of `bench evtchn` (started by it).
    #[command(hide = true)]
    EvtchnPeer(evtchn::PeerArgs),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Xenstore {
            seconds,
            round_trips,
            no_pin,
        } => xenstore::run(Duration::from_secs_f64(seconds), round_trips, !no_pin),
        What::Evtchn {
            round_trips,
            no_pin,
        } => evtchn::run(round_trips, !no_pin),
        What::EvtchnPeer(a) => evtchn::peer(a),
        What::Daemon {
            consoles,
            idle_seconds,
        } => daemon::run(&consoles, idle_seconds),
        What::Console {
            megabytes,
            keystrokes,
            no_pin,
        } => console::run(megabytes, keystrokes, !no_pin),
    }
}

/// Pins the calling thread (and threads it starts later) to CPU 0: on
/// these VMs waking an idle CPU costs more than the work measured.
fn pin_to_cpu0() -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

fn unpin() -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    for cpu in 0..n {
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

fn fmt_us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// p50, p99 and mean of a set of samples.
struct Percentiles {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort();
        let total: Duration = samples.iter().sum();
        let n = samples.len().max(1);
        Percentiles {
            p50: samples.get(n / 2).copied().unwrap_or_default(),
            p99: samples.get(n * 99 / 100).copied().unwrap_or_default(),
            mean: total / u32::try_from(n).unwrap_or(u32::MAX),
        }
    }
}

fn row(name: &str, a: String, b: String, r: String) {
    println!("{name:<44} {a:>14} {b:>14} {r:>8}");
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
}

fn tempfile_dir() -> io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("xen-console-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
