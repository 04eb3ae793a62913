//! `bench daemon`: one `xen-console daemon` process serving 1, 100 and
//! 1,000 guest consoles on the emulated Xen. For each count it prints the
//! time to discover and connect them all at start-up, the daemon's wake-ups
//! and CPU while every guest is idle (aim: zero), its memory per console
//! (aim: under 64 KiB idle), and the aggregate throughput with every guest
//! printing.
//!
//! The guests are a swarm in this process: each is a real emulated domain
//! with its own console page and port, written from one thread, so that a
//! thousand of them do not need a thousand processes.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use console::ring::{FrontendRing, CONNECTION_OFFSET};
use platform::emu::{EmuEventChannels, EmuGuest, Emulator};
use platform::{EventChannels, EvtchnPort, GuestPlatform};

use super::tempfile_dir;

struct SwarmGuest {
    _plat: EmuGuest,
    evt: EmuEventChannels,
    port: EvtchnPort,
    ring: FrontendRing,
}

fn swarm(emu: &Emulator, n: usize) -> anyhow::Result<Vec<SwarmGuest>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let d = emu
            .create_domain(&format!("g{i}"), 2)
            .map_err(anyhow::Error::msg)?;
        let plat = EmuGuest::connect(emu.paths().xen_domain(d))?;
        let si = plat.start_info()?;
        let mut evt = plat.open_event_channels()?;
        let port = evt.adopt(si.console_port)?;
        let ring = FrontendRing::new(plat.map_own_page(si.console_gfn)?)?;
        out.push(SwarmGuest {
            _plat: plat,
            evt,
            port,
            ring,
        });
    }
    Ok(out)
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(emu_dir: &Path, control: &Path) -> anyhow::Result<Daemon> {
    let child = Command::new(std::env::current_exe()?)
        .args(["daemon", "--platform", "emu", "--sink", "null"])
        .arg("--emu-dir")
        .arg(emu_dir)
        .arg("--control")
        .arg(control)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    Ok(Daemon { child })
}

/// Sum over the daemon's threads of context switches (each is a wake-up
/// or a preemption) and of CPU ticks.
fn activity(pid: u32) -> (u64, u64) {
    let mut switches = 0;
    let mut ticks = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches")
                || line.starts_with("nonvoluntary_ctxt_switches")
            {
                switches += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command name: utime and stime are 14 and 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += get(11) + get(12);
        }
    }
    (switches, ticks)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn all_connected(guests: &[SwarmGuest]) -> bool {
    guests.iter().all(|g| {
        g.ring
            .pages()
            .load_u8(CONNECTION_OFFSET, Ordering::Acquire)
            .ok()
            == Some(0)
    })
}

/// Every guest prints `per_guest` bytes; returns the time until the daemon
/// has taken all of them out of the rings.
fn flood(guests: &mut [SwarmGuest], per_guest: usize) -> anyhow::Result<Duration> {
    let chunk = vec![b'x'; 2048];
    let mut left: Vec<usize> = vec![per_guest; guests.len()];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    loop {
        let mut busy = false;
        for (g, l) in guests.iter_mut().zip(left.iter_mut()) {
            if *l > 0 {
                let n = g.ring.write_out(&chunk[..(*l).min(chunk.len())])?;
                if n > 0 {
                    *l -= n;
                    g.evt.notify(g.port)?;
                }
                busy = true;
            } else if g.ring.out_free()? < console::ring::OUT_SIZE {
                busy = true;
            }
            let mut fired = Vec::new();
            g.evt.pending(&mut fired)?;
        }
        if !busy {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the daemon did not drain the rings in time");
        }
        std::thread::yield_now();
    }
}

struct Row {
    consoles: usize,
    discover: Duration,
    wakeups_per_s: f64,
    cpu_pct: f64,
    rss_kib: u64,
    mb_per_s: f64,
}

fn measure(n: usize, idle: Duration) -> anyhow::Result<Row> {
    let dir = tempfile_dir()?.join(format!("daemon-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let emu = Emulator::start(dir.join("emu"))?;
    let mut guests = swarm(&emu, n)?;
    let daemon = start_daemon(&dir.join("emu"), &dir.join("control"))?;
    let pid = daemon.child.id();
    let start = Instant::now();
    while !all_connected(&guests) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the daemon did not connect all {n} consoles");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let discover = start.elapsed();
    // Let start-up settle, then watch an idle daemon.
    std::thread::sleep(Duration::from_millis(500));
    let (s0, t0) = activity(pid);
    std::thread::sleep(idle);
    let (s1, t1) = activity(pid);
    let ticks_per_s = rustix::param::clock_ticks_per_second() as f64;
    let secs = idle.as_secs_f64();
    let rss = rss_kib(pid);
    let per_guest = (64usize << 20) / n.max(1);
    let per_guest = per_guest.clamp(64 << 10, 4 << 20);
    let took = flood(&mut guests, per_guest)?;
    let mb_per_s = (per_guest * n) as f64 / took.as_secs_f64() / 1e6;
    drop(daemon);
    for g in &guests {
        let _ = g.evt.as_fd();
    }
    Ok(Row {
        consoles: n,
        discover,
        wakeups_per_s: (s1 - s0) as f64 / secs,
        cpu_pct: (t1 - t0) as f64 / ticks_per_s / secs * 100.0,
        rss_kib: rss,
        mb_per_s,
    })
}

pub fn run(counts: &[usize], idle_seconds: u64) -> anyhow::Result<()> {
    crate::util::raise_fd_limit()?;
    let idle = Duration::from_secs(idle_seconds);
    let mut rows = Vec::new();
    for &n in counts {
        rows.push(measure(n, idle)?);
    }
    let base = rows.iter().find(|r| r.consoles == 1).map(|r| r.rss_kib);
    println!("One daemon serving N consoles (emulated Xen, null sinks; idle measured over {idle_seconds} s)");
    println!(
        "{:>8} {:>14} {:>14} {:>10} {:>12} {:>16} {:>14}",
        "consoles",
        "discover all",
        "idle wakeup/s",
        "idle CPU",
        "daemon RSS",
        "RSS per console",
        "throughput"
    );
    for r in &rows {
        let per = match base {
            Some(b) if r.consoles > 1 => format!(
                "{:.1} KiB",
                (r.rss_kib.saturating_sub(b)) as f64 / (r.consoles - 1) as f64
            ),
            _ => "-".into(),
        };
        println!(
            "{:>8} {:>14} {:>14.1} {:>9.2}% {:>9} KiB {:>16} {:>9.0} MB/s",
            r.consoles,
            format!("{:.1} ms", r.discover.as_secs_f64() * 1e3),
            r.wakeups_per_s,
            r.cpu_pct,
            r.rss_kib,
            per,
            r.mb_per_s
        );
    }
    Ok(())
}
