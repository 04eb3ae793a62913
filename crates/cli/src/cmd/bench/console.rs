//! `bench console`: guest→sink throughput of one console through the
//! backend, next to the bound — the same bytes through the same kind of
//! ring page and event channel, drained by a minimal copy loop with no
//! framework — and keystroke→guest latency through a real pty.
//!
//! The guest is a thread of this process using the emulated Xen's guest
//! API (its own page, its own port), so both runs feed the ring the same
//! way; the backend is the real `ConsoleBackend` on its own thread.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use console::backend::ConsoleBackend;
use console::device::ConsoleOptions;
use console::ring::{FrontendRing, OUT_CONS_OFFSET, OUT_OFFSET, OUT_PROD_OFFSET, OUT_SIZE};
use console::sink::SinkSpec;
use platform::emu::{EmuGuest, EmuPlatform, Emulator};
use platform::{DomId, EventChannels, GuestPlatform, Platform};

use super::{fmt_us, pin_to_cpu0, tempfile_dir, Percentiles};

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(1),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A guest thread that writes `total` bytes into its primary console as
/// fast as the ring takes them (as hvc_xen's write loop does).
fn guest_writer(
    emu_xen: std::path::PathBuf,
    total: usize,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let g = EmuGuest::connect(&emu_xen)?;
        let si = g.start_info()?;
        let mut evt = g.open_event_channels()?;
        let port = evt.adopt(si.console_port)?;
        let ring = FrontendRing::new(g.map_own_page(si.console_gfn)?)?;
        let chunk: Vec<u8> = (0..4096u32)
            .map(|i| b"0123456789abcdef"[(i % 16) as usize])
            .collect();
        let mut sent = 0;
        let mut fired = Vec::new();
        while sent < total {
            let want = (total - sent).min(chunk.len());
            let n = ring.write_out(&chunk[..want])?;
            sent += n;
            if n > 0 {
                evt.notify(port)?;
                continue;
            }
            wait_readable(evt.as_fd(), Duration::from_millis(100))?;
            fired.clear();
            evt.pending(&mut fired)?;
            for p in &fired {
                evt.unmask(*p)?;
            }
        }
        Ok(())
    })
}

/// Our backend: console served to a unix socket this thread reads.
fn through_backend(
    emu: &Emulator,
    dir: &std::path::Path,
    total: usize,
) -> anyhow::Result<Duration> {
    let d = emu
        .create_domain("bench-tput", 4)
        .map_err(anyhow::Error::msg)?;
    let store = xenstore::client::Client::connect_unix(emu.paths().xenstored())?;
    let plat = Arc::new(EmuPlatform::connect(emu.paths().xen())?);
    let backend = ConsoleBackend::spawn(store, plat, ConsoleOptions::default())?;
    let sock = dir.join("tput.sock");
    backend
        .serve_primary(d, Some(SinkSpec::Unix(sock.clone())))
        .map_err(anyhow::Error::msg)?;
    let reader = connect_retry(&sock)?;
    let start = Instant::now();
    let counter = count_reader(reader, total);
    let writer = guest_writer(emu.paths().xen_domain(d), total);
    counter
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let elapsed = start.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("guest panicked"))??;
    backend.stop();
    Ok(elapsed)
}

fn connect_retry(path: &std::path::Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    for _ in 0..200 {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(path) {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("sink socket {} never appeared", path.display())
}

/// Reads `total` bytes from `s` on a thread; returns when they are in.
fn count_reader(
    mut s: std::os::unix::net::UnixStream,
    total: usize,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok(())
    })
}

/// The bound: map the ring, bind the port, and copy `out` straight into
/// the same kind of sink (a unix socket read by the same kind of reader),
/// with nothing else in the way.
fn minimal_loop(emu: &Emulator, total: usize) -> anyhow::Result<Duration> {
    let d = emu
        .create_domain("bench-bound", 4)
        .map_err(anyhow::Error::msg)?;
    let plat = EmuPlatform::connect(emu.paths().xen())?;
    let si_port: u32 = {
        let store = xenstore::client::Client::connect_unix(emu.paths().xenstored())?;
        use xenstore::client::XenStore;
        let v = store.read(&format!("/local/domain/{d}/console/port"))?;
        String::from_utf8_lossy(&v).parse()?
    };
    let page = plat
        .grant_mapper()
        .map_grant_refs(d, &[platform::GrantRef::CONSOLE], true)?;
    page.store_u8(console::ring::CONNECTION_OFFSET, 0, Ordering::Release)?;
    let mut evt = plat.event_channels()?;
    let local = evt.bind_interdomain(d, platform::EvtchnPort(si_port))?;
    let (mut sink, far) = std::os::unix::net::UnixStream::pair()?;
    let start = Instant::now();
    let reader = count_reader(far, total);
    let writer = guest_writer(emu.paths().xen_domain(d), total);
    let mut buf = vec![0u8; OUT_SIZE];
    let mut got = 0;
    let mut fired = Vec::new();
    while got < total {
        let prod = page.load_u32(OUT_PROD_OFFSET, Ordering::Acquire)?;
        let cons = page.load_u32(OUT_CONS_OFFSET, Ordering::Relaxed)?;
        let avail = prod.wrapping_sub(cons) as usize;
        if avail == 0 {
            wait_readable(evt.as_fd(), Duration::from_millis(100))?;
            fired.clear();
            evt.pending(&mut fired)?;
            for p in &fired {
                evt.unmask(*p)?;
            }
            continue;
        }
        let pos = (cons as usize) & (OUT_SIZE - 1);
        let first = avail.min(OUT_SIZE - pos);
        page.read_into(OUT_OFFSET + pos, &mut buf[..first])?;
        page.read_into(OUT_OFFSET, &mut buf[first..avail])?;
        page.store_u32(OUT_CONS_OFFSET, prod, Ordering::Release)?;
        evt.notify(local)?;
        sink.write_all(&buf[..avail])?;
        got += avail;
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let elapsed = start.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("guest panicked"))??;
    Ok(elapsed)
}

/// Keystroke latency: a byte written into the console's pty until the
/// guest reads it from `in`.
fn keystrokes(emu: &Emulator, n: usize) -> anyhow::Result<Percentiles> {
    let d = emu
        .create_domain("bench-keys", 4)
        .map_err(anyhow::Error::msg)?;
    let store = xenstore::client::Client::connect_unix(emu.paths().xenstored())?;
    let plat = Arc::new(EmuPlatform::connect(emu.paths().xen())?);
    let backend = ConsoleBackend::spawn(store, plat, ConsoleOptions::default())?;
    backend
        .serve_primary(d, Some(SinkSpec::Pty))
        .map_err(anyhow::Error::msg)?;
    let tty = wait_for_tty(emu, d)?;
    let (tx, rx) = mpsc::channel::<Instant>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let xen = emu.paths().xen_domain(d);
    let reader = std::thread::spawn(move || -> anyhow::Result<()> {
        let g = EmuGuest::connect(&xen)?;
        let si = g.start_info()?;
        let mut evt = g.open_event_channels()?;
        let port = evt.adopt(si.console_port)?;
        let ring = FrontendRing::new(g.map_own_page(si.console_gfn)?)?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 64];
        let mut fired = Vec::new();
        let mut seen = 0;
        while seen < n {
            wait_readable(evt.as_fd(), Duration::from_secs(5))?;
            fired.clear();
            evt.pending(&mut fired)?;
            for p in &fired {
                evt.unmask(*p)?;
            }
            let k = ring.read_in(&mut buf)?;
            if k > 0 {
                evt.notify(port)?;
                for _ in 0..k {
                    let _ = tx.send(Instant::now());
                }
                seen += k;
            }
        }
        Ok(())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("guest thread did not start")?;
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tty)?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        pty.write_all(b"k")?;
        let t1 = rx
            .recv_timeout(Duration::from_secs(5))
            .context("keystroke never reached the guest")?;
        samples.push(t1 - t0);
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("guest panicked"))??;
    backend.stop();
    Ok(Percentiles::of(samples))
}

fn wait_for_tty(emu: &Emulator, d: DomId) -> anyhow::Result<String> {
    use xenstore::client::XenStore;
    let store = xenstore::client::Client::connect_unix(emu.paths().xenstored())?;
    for _ in 0..500 {
        if let Ok(v) = store.read(&format!("/local/domain/{d}/console/tty")) {
            if !v.is_empty() {
                return Ok(String::from_utf8_lossy(&v).into_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("tty never published")
}

pub fn run(megabytes: usize, keystrokes_n: usize, pin: bool) -> anyhow::Result<()> {
    crate::util::raise_fd_limit()?;
    if pin {
        pin_to_cpu0()?;
    }
    let dir = tempfile_dir()?;
    let emu = Emulator::start(dir.join("run"))?;
    let total = megabytes << 20;
    // Warm both paths once, then measure.
    through_backend(&emu, &dir, 1 << 20)?;
    minimal_loop(&emu, 1 << 20)?;
    let ours = through_backend(&emu, &dir, total)?;
    let bound = minimal_loop(&emu, total)?;
    let mbps = |d: Duration| total as f64 / d.as_secs_f64() / 1e6;
    println!("Console throughput, guest -> sink, {megabytes} MiB through one ring (bound = minimal copy loop on the same ring and event channel)");
    if pin {
        println!("all threads pinned to CPU 0");
    }
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "measure", "xen-console", "bound", "ratio"
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "throughput",
        format!("{:.1} MB/s", mbps(ours)),
        format!("{:.1} MB/s", mbps(bound)),
        format!("{:.2}", mbps(ours) / mbps(bound))
    );
    let keys = keystrokes(&emu, keystrokes_n)?;
    println!(
        "{:<44} {:>14}",
        "keystroke -> guest latency p50 (pty)",
        fmt_us(keys.p50)
    );
    println!(
        "{:<44} {:>14}",
        "keystroke -> guest latency p99 (pty)",
        fmt_us(keys.p99)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
