//! `bench evtchn`: event-channel ping-pong between two processes on the
//! emulated Xen, against the same ping-pong over two bare eventfds with no
//! project code (the bound: a notify there is one `write`, a wake-up one
//! `poll` and one `read`), and the grant map/unmap rate.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use platform::emu::{proto, EmuGuest, EmuPlatform, Emulator};
use platform::{DomId, EvtchnPort, GrantRef, GuestPlatform, Platform};

use super::{fmt_us, pin_to_cpu0, ratio, row, tempfile_dir, Percentiles};

#[derive(clap::Args)]
pub struct PeerArgs {
    /// `bare` or `emu`.
    #[arg(long)]
    mode: String,
    /// Where the benchmark hands over descriptors and port numbers.
    #[arg(long)]
    socket: PathBuf,
    /// The guest's hypervisor socket (emu mode).
    #[arg(long)]
    xen: Option<PathBuf>,
}

fn wait_readable(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn kick(fd: &OwnedFd) -> std::io::Result<()> {
    rustix::io::write(fd, &1u64.to_ne_bytes())?;
    Ok(())
}

fn drain(fd: &OwnedFd) -> std::io::Result<()> {
    let mut buf = [0u8; 8];
    rustix::io::read(fd, &mut buf)?;
    Ok(())
}

/// The peer process: echoes every event straight back.
pub fn peer(a: PeerArgs) -> anyhow::Result<()> {
    let sock = proto::connect(&a.socket).context("connecting to the benchmark")?;
    match a.mode.as_str() {
        "bare" => {
            let pkt = proto::recv(sock.as_fd())?.context("no descriptors")?;
            let [to_me, to_parent]: [OwnedFd; 2] = pkt
                .fds
                .try_into()
                .map_err(|_| anyhow::anyhow!("want 2 fds"))?;
            loop {
                wait_readable(to_me.as_fd())?;
                drain(&to_me)?;
                kick(&to_parent)?;
            }
        }
        "emu" => {
            let guest = EmuGuest::connect(a.xen.context("--xen is required")?)?;
            let mut evt = guest.event_channels()?;
            let port = evt.alloc_unbound(DomId::DOM0)?;
            let gref = guest.grant_access(DomId::DOM0, platform::Gfn(0), false)?;
            proto::send(sock.as_fd(), &format!("{port} {gref}"), &[])?;
            let mut fired = Vec::new();
            loop {
                wait_readable(evt.as_fd())?;
                fired.clear();
                evt.pending(&mut fired)?;
                for p in &fired {
                    evt.unmask(*p)?;
                }
                evt.notify(port)?;
            }
        }
        m => bail!("unknown mode {m}"),
    }
}

struct Peer {
    child: Child,
    sock: OwnedFd,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_peer(dir: &std::path::Path, mode: &str, xen: Option<PathBuf>) -> anyhow::Result<Peer> {
    let path = dir.join(format!("{mode}.sock"));
    let listener = proto::listen(&path)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench", "evtchn-peer", "--mode", mode, "--socket"])
        .arg(&path);
    if let Some(x) = xen {
        cmd.arg("--xen").arg(x);
    }
    let child = cmd.spawn().context("starting the peer process")?;
    let sock = proto::accept(listener.as_fd())?;
    Ok(Peer { child, sock })
}

fn ping_pong(
    n: usize,
    mut round_trip: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<(Percentiles, f64)> {
    for _ in 0..n / 10 {
        round_trip()?;
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        round_trip()?;
        samples.push(t.elapsed());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    Ok((Percentiles::of(samples), rate))
}

fn bare(dir: &std::path::Path, n: usize) -> anyhow::Result<(Percentiles, f64)> {
    let peer = spawn_peer(dir, "bare", None)?;
    let flags = rustix::event::EventfdFlags::CLOEXEC;
    let to_peer = rustix::event::eventfd(0, flags)?;
    let to_me = rustix::event::eventfd(0, flags)?;
    proto::send(peer.sock.as_fd(), "fds", &[to_peer.as_fd(), to_me.as_fd()])?;
    Ok(ping_pong(n, || {
        kick(&to_peer)?;
        wait_readable(to_me.as_fd())?;
        drain(&to_me)
    })?)
}

struct EmuResult {
    latency: Percentiles,
    rate: f64,
    maps_per_sec: f64,
}

fn emulated(dir: &std::path::Path, n: usize) -> anyhow::Result<EmuResult> {
    let emu = Emulator::start(dir.join("run"))?;
    let d = emu
        .create_domain("bench-peer", 2)
        .map_err(anyhow::Error::msg)?;
    let peer = spawn_peer(dir, "emu", Some(emu.paths().xen_domain(d)))?;
    let hello = proto::recv(peer.sock.as_fd())?.context("peer sent nothing")?;
    let words = hello.words();
    let (Some(port), Some(gref)) = (words.first(), words.get(1)) else {
        bail!("bad hello {:?}", hello.text);
    };
    let (port, gref) = (EvtchnPort(port.parse()?), GrantRef(gref.parse()?));
    let dom0 = EmuPlatform::connect(emu.paths().xen())?;
    let mut evt = dom0.event_channels()?;
    let local = evt.bind_interdomain(d, port)?;
    let mut fired = Vec::new();
    let (latency, rate) = ping_pong(n, || {
        evt.notify(local).map_err(std::io::Error::other)?;
        wait_readable(evt.as_fd())?;
        fired.clear();
        evt.pending(&mut fired).map_err(std::io::Error::other)?;
        for p in &fired {
            evt.unmask(*p).map_err(std::io::Error::other)?;
        }
        Ok(())
    })?;
    let maps = (n / 10).max(100);
    let start = Instant::now();
    for _ in 0..maps {
        drop(dom0.grant_mapper().map_grant_refs(d, &[gref], true)?);
    }
    let maps_per_sec = maps as f64 / start.elapsed().as_secs_f64();
    drop(peer);
    Ok(EmuResult {
        latency,
        rate,
        maps_per_sec,
    })
}

pub fn run(n: usize, pin: bool) -> anyhow::Result<()> {
    if pin {
        // The peer inherits the mask through exec.
        pin_to_cpu0()?;
    }
    let dir = tempfile_dir()?;
    let (bare_lat, bare_rate) = bare(&dir, n)?;
    let emu = emulated(&dir, n)?;
    println!(
        "Event-channel ping-pong between two processes ({n} round trips; bound = bare eventfds)"
    );
    if pin {
        println!("both processes pinned to CPU 0");
    }
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "measure", "emulated Xen", "bare eventfd", "ratio"
    );
    row(
        "round trip p50",
        fmt_us(emu.latency.p50),
        fmt_us(bare_lat.p50),
        ratio(emu.latency.p50, bare_lat.p50),
    );
    row(
        "round trip p99",
        fmt_us(emu.latency.p99),
        fmt_us(bare_lat.p99),
        ratio(emu.latency.p99, bare_lat.p99),
    );
    row(
        "round trip mean",
        fmt_us(emu.latency.mean),
        fmt_us(bare_lat.mean),
        ratio(emu.latency.mean, bare_lat.mean),
    );
    row(
        "round trips per second",
        format!("{:.0}/s", emu.rate),
        format!("{:.0}/s", bare_rate),
        format!("{:.2}", emu.rate / bare_rate),
    );
    println!(
        "{:<44} {:>14}",
        "grant map + unmap of one page",
        format!("{:.0}/s", emu.maps_per_sec)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Duration::ZERO;
    Ok(())
}
