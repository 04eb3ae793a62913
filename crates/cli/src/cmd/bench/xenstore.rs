//! `bench xenstore` compares our XenStore server with a bare Unix-socket
//! echo server (one epoll thread, no protocol work: the floor for any
//! xenstored) on the same small request, and measures memory per node and
//! latency with many idle connections open.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{fmt_us, pin_to_cpu0, raise_fd_limit, ratio, row, tempfile_dir, unpin, Percentiles};
use rustix::event::epoll;
use xenstore::server::{Core, Quotas, ServerConfig, ServerHandle};
use xenstore::wire::{Header, Message, MsgType};

const NODE: &str = "/bench/node";

fn read_request(req_id: u32) -> Vec<u8> {
    Message::new(MsgType::Read, req_id, 0, format!("{NODE}\0").into_bytes()).encode()
}

/// Reads one whole message (header and payload) from a blocking stream.
fn read_message(s: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<Header> {
    let mut head = [0u8; 16];
    s.read_exact(&mut head)?;
    let h = Header::decode(&head);
    buf.resize(h.len as usize, 0);
    s.read_exact(buf)?;
    Ok(h)
}

fn measure_latency(socket: &Path, n: usize) -> io::Result<Percentiles> {
    let mut s = UnixStream::connect(socket)?;
    let req = read_request(1);
    let mut buf = Vec::new();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.write_all(&req)?;
        read_message(&mut s, &mut buf)?;
        if i >= n / 10 {
            samples.push(t.elapsed());
        }
    }
    Ok(Percentiles::of(samples))
}

/// Requests per second with `clients` connections, each keeping
/// `in_flight` requests outstanding.
fn measure_throughput(
    socket: &Path,
    clients: usize,
    in_flight: usize,
    dur: Duration,
) -> io::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let socket = socket.to_path_buf();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> io::Result<u64> {
            let mut s = UnixStream::connect(&socket)?;
            let req = read_request(2);
            let mut buf = Vec::new();
            for _ in 0..in_flight {
                s.write_all(&req)?;
            }
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                read_message(&mut s, &mut buf)?;
                done += 1;
                s.write_all(&req)?;
            }
            for _ in 0..in_flight {
                read_message(&mut s, &mut buf)?;
            }
            Ok(done)
        }));
    }
    let start = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| io::Error::other("client panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The bound: an epoll echo server that sends every byte back, with no
/// parsing at all.
fn spawn_echo_server(path: &Path) -> io::Result<Arc<AtomicBool>> {
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            if let Err(e) = echo_loop(listener, &stop2) {
                eprintln!("echo server: {e}");
            }
        })?;
    Ok(stop)
}

fn echo_loop(listener: UnixListener, stop: &AtomicBool) -> io::Result<()> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    )?;
    let mut conns: HashMap<u64, UnixStream> = HashMap::new();
    let mut next = 1u64;
    let mut events = Vec::with_capacity(256);
    let mut buf = vec![0u8; 16 * 1024];
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        events.clear();
        epoll::wait(
            &ep,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        )?;
        for ev in &events {
            let id = ev.data.u64();
            if id == 0 {
                while let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true)?;
                    epoll::add(
                        &ep,
                        &s,
                        epoll::EventData::new_u64(next),
                        epoll::EventFlags::IN,
                    )?;
                    conns.insert(next, s);
                    next += 1;
                }
                continue;
            }
            let Some(s) = conns.get_mut(&id) else {
                continue;
            };
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    conns.remove(&id);
                }
                Ok(n) => {
                    // Replies are tiny; a blocking write-all is what a real
                    // server's buffered write costs here.
                    s.set_nonblocking(false)?;
                    s.write_all(&buf[..n])?;
                    s.set_nonblocking(true)?;
                }
            }
        }
    }
    Ok(())
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident memory for 100,000 nodes in a fresh store.
fn memory_per_100k_nodes() -> usize {
    let mut core = Core::new(Quotas::default());
    core.connect(1, 0, true);
    let before = rss_bytes();
    for i in 0..100_000u32 {
        let payload = format!("/local/domain/{}/device/vif/{}/state\04", i / 100, i % 100);
        core.handle(1, &Message::new(MsgType::Write, i, 0, payload.into_bytes()));
        core.out.clear();
    }
    let after = rss_bytes();
    std::hint::black_box(&core);
    after.saturating_sub(before)
}

pub fn run(dur: Duration, round_trips: usize, pin: bool) -> anyhow::Result<()> {
    raise_fd_limit().context("raising the fd limit")?;
    // Both servers (and the latency client, this thread) share CPU 0: a
    // wake-up of an idle CPU on these VMs costs more than the work itself.
    // Threads inherit the mask, so pin before spawning the servers.
    if pin {
        pin_to_cpu0()?;
    }
    let dir = tempfile_dir()?;
    let xs_sock = dir.join("xenstored");
    let echo_sock = dir.join("echo");
    let server = ServerHandle::spawn(ServerConfig::new(&xs_sock)).context("starting xenstored")?;
    let mut s = UnixStream::connect(&xs_sock)?;
    s.write_all(
        &Message::new(MsgType::Write, 1, 0, format!("{NODE}\0value").into_bytes()).encode(),
    )?;
    read_message(&mut s, &mut Vec::new())?;
    let echo_stop = spawn_echo_server(&echo_sock)?;

    println!("XenStore server benchmark (small READ of {NODE}; bound = bare epoll echo server)");
    if pin {
        println!("servers and the latency client pinned to CPU 0; throughput clients on all CPUs");
    }
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "measure", "xen-console", "echo bound", "ratio"
    );
    let xs = measure_latency(&xs_sock, round_trips)?;
    let echo = measure_latency(&echo_sock, round_trips)?;
    row(
        "latency p50, 1 client",
        fmt_us(xs.p50),
        fmt_us(echo.p50),
        ratio(xs.p50, echo.p50),
    );
    row(
        "latency p99, 1 client",
        fmt_us(xs.p99),
        fmt_us(echo.p99),
        ratio(xs.p99, echo.p99),
    );
    row(
        "latency mean, 1 client",
        fmt_us(xs.mean),
        fmt_us(echo.mean),
        ratio(xs.mean, echo.mean),
    );

    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&xs_sock))
        .collect::<Result<_, _>>()?;
    let echo_idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&echo_sock))
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(200));
    let xs_idle = measure_latency(&xs_sock, round_trips)?;
    let echo_idle_lat = measure_latency(&echo_sock, round_trips)?;
    row(
        "latency p50, 1,000 idle connections open",
        fmt_us(xs_idle.p50),
        fmt_us(echo_idle_lat.p50),
        ratio(xs_idle.p50, echo_idle_lat.p50),
    );
    row(
        "  same, against our p50 with none open",
        fmt_us(xs_idle.p50),
        fmt_us(xs.p50),
        ratio(xs_idle.p50, xs.p50),
    );
    drop(idle);
    drop(echo_idle);

    if pin {
        unpin()?;
    }
    let xs_tput = measure_throughput(&xs_sock, 8, 4, dur)?;
    let echo_tput = measure_throughput(&echo_sock, 8, 4, dur)?;
    row(
        "throughput, 8 clients x 4 in flight",
        format!("{:.0}/s", xs_tput),
        format!("{:.0}/s", echo_tput),
        format!("{:.2}", xs_tput / echo_tput),
    );

    let mem = memory_per_100k_nodes();
    println!(
        "{:<44} {:>14}",
        "memory per 100k nodes (RSS growth)",
        format!("{:.1} MiB", mem as f64 / (1024.0 * 1024.0))
    );
    echo_stop.store(true, Ordering::Relaxed);
    server.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
