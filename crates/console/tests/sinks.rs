//! The sinks against real kernel objects and real peers: a pty opened by
//! path as a user's terminal would, TCP and unix clients connecting, log
//! files renamed under the sink, stdin/stdout pipes of a child process.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use console::sink::{self, Sink, SinkSpec, SpecProblem};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};

const TIMEOUT: Duration = Duration::from_secs(10);

fn spec(s: &str) -> SinkSpec {
    s.parse().unwrap()
}

/// Waits until `fd` reports any of `flags`; false on timeout.
fn wait_for(fd: BorrowedFd<'_>, flags: PollFlags, timeout: Duration) -> bool {
    let ts = Timespec::try_from(timeout).unwrap();
    let mut fds = [PollFd::new(&fd, flags)];
    poll(&mut fds, Some(&ts)).unwrap() > 0
}

fn readable(fd: BorrowedFd<'_>) -> bool {
    wait_for(fd, PollFlags::IN, TIMEOUT)
}

/// Reads from the sink until `n` bytes came, waiting on its `io_fd`.
fn sink_read_exact(s: &mut dyn Sink, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < n {
        assert!(Instant::now() < deadline, "timed out; got {got:?}");
        assert!(readable(s.io_fd().expect("an fd to poll")), "no input");
        match s.read(&mut buf[..n - got.len()]) {
            Ok(0) => panic!("peer went away after {got:?}"),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

/// Reads exactly `n` bytes from a blocking fd, with a timeout.
fn fd_read_exact(fd: BorrowedFd<'_>, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    let mut at = 0;
    while at < n {
        assert!(readable(fd), "timed out after {:?}", &got[..at]);
        let k = rustix::io::read(fd, &mut got[at..]).unwrap();
        assert!(k > 0, "EOF after {:?}", &got[..at]);
        at += k;
    }
    got
}

fn kind(r: io::Result<usize>) -> io::ErrorKind {
    r.expect_err("an error").kind()
}

// --- pty -------------------------------------------------------------------

fn open_client(tty: &Path) -> OwnedFd {
    rustix::fs::open(
        tty,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

#[test]
fn pty_publishes_a_pts_path() {
    let s = sink::open(&SinkSpec::Pty).unwrap();

    let tty = s.tty().unwrap();

    assert!(tty.starts_with("/dev/pts/"), "{}", tty.display());
    assert!(std::fs::metadata(&tty)
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(s.connected() && s.accepts_input());
}

#[test]
fn pty_moves_bytes_both_ways_unchanged_in_raw_mode() {
    let mut s = sink::open(&SinkSpec::Pty).unwrap();
    let client = open_client(&s.tty().unwrap());
    let output = b"line\r\n\x00\xff\x03\x04\x1b[0m\n";
    let input = b"\r\n\x00\xff\x03\x1a\x7f";

    assert_eq!(s.write(output).unwrap(), output.len());
    let client_got = fd_read_exact(client.as_fd(), output.len());
    rustix::io::write(&client, input).unwrap();
    let sink_got = sink_read_exact(&mut *s, input.len());

    assert_eq!(client_got, output);
    assert_eq!(sink_got, input);
    // No echo: what the sink wrote did not come back to it.
    assert_eq!(kind(s.read(&mut [0u8; 64])), io::ErrorKind::WouldBlock);
}

#[test]
fn pty_without_a_reader_fills_up_then_drains_when_a_client_reads() {
    let mut s = sink::open(&SinkSpec::Pty).unwrap();
    let chunk = [b'x'; 4096];
    let mut written = 0usize;
    let full = loop {
        match s.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e.kind(),
        }
        assert!(written < 64 << 20, "a pty that never fills");
    };

    let client = open_client(&s.tty().unwrap());
    fd_read_exact(client.as_fd(), 4096);
    let writable = wait_for(s.io_fd().unwrap(), PollFlags::OUT, TIMEOUT);

    assert_eq!(full, io::ErrorKind::WouldBlock);
    assert!(written > 0);
    assert!(writable);
    assert!(s.write(b"more").unwrap() > 0);
}

#[test]
fn pty_master_sees_no_hang_up_when_a_client_leaves() {
    let mut s = sink::open(&SinkSpec::Pty).unwrap();
    let client = open_client(&s.tty().unwrap());

    drop(client);
    let events = {
        let fd = s.io_fd().unwrap();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        poll(&mut fds, Some(&Timespec::default())).unwrap();
        fds[0].revents()
    };

    assert!(!events.contains(PollFlags::HUP), "{events:?}");
    assert_eq!(kind(s.read(&mut [0u8; 8])), io::ErrorKind::WouldBlock);
    assert_eq!(s.write(b"still here").unwrap(), 10);
}

// --- tcp and unix servers --------------------------------------------------

/// A client end, blocking with a read timeout.
trait Client: Read + Write + AsFd {}
impl Client for TcpStream {}
impl Client for UnixStream {}

fn connect(s: &dyn Sink) -> Box<dyn Client> {
    let c: Box<dyn Client> = match s.spec() {
        SinkSpec::Tcp(_) => Box::new(TcpStream::connect(s.local_addr().unwrap()).unwrap()),
        SinkSpec::Unix(path) => Box::new(UnixStream::connect(path).unwrap()),
        other => panic!("not a server sink: {other}"),
    };
    c
}

/// Connects a client and lets the sink take it.
fn attach(s: &mut dyn Sink) -> Box<dyn Client> {
    let c = connect(s);
    assert!(readable(s.listen_fd().unwrap()), "no connection waiting");
    s.accept().unwrap();
    c
}

fn client_read_exact(c: &mut dyn Client, n: usize) -> Vec<u8> {
    assert!(readable(c.as_fd()), "client got nothing");
    let mut got = vec![0u8; n];
    c.read_exact(&mut got).unwrap();
    got
}

fn server_serves_one_client_at_a_time(mut s: Box<dyn Sink>) {
    assert!(!s.connected());
    assert!(s.io_fd().is_none());
    assert_eq!(kind(s.write(b"early")), io::ErrorKind::NotConnected);
    assert_eq!(kind(s.read(&mut [0u8; 8])), io::ErrorKind::NotConnected);
    s.accept().unwrap(); // nobody waiting: not an error

    let mut first = attach(&mut *s);
    assert!(s.connected());
    assert_eq!(s.write(b"to client\x00\xff").unwrap(), 11);
    assert_eq!(client_read_exact(&mut *first, 11), b"to client\x00\xff");
    first.write_all(b"\r\nfrom client").unwrap();
    assert_eq!(sink_read_exact(&mut *s, 13), b"\r\nfrom client");

    // A second client is taken off the queue and closed at once.
    let mut second = attach(&mut *s);
    assert!(readable(second.as_fd()));
    assert_eq!(second.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(s.write(b"still first").unwrap(), 11);
    assert_eq!(client_read_exact(&mut *first, 11), b"still first");

    // The client hangs up: Ok(0), then NotConnected until the next accept.
    drop(first);
    assert!(readable(s.io_fd().unwrap()));
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(!s.connected());
    assert_eq!(kind(s.write(b"backlog")), io::ErrorKind::NotConnected);

    let mut again = attach(&mut *s);
    assert_eq!(s.write(b"welcome back").unwrap(), 12);
    assert_eq!(client_read_exact(&mut *again, 12), b"welcome back");
}

#[test]
fn tcp_sink_on_port_0_reports_the_port_it_bound() {
    let s = sink::open(&spec("tcp:127.0.0.1:0,server")).unwrap();

    let addr = s.local_addr().unwrap();

    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(s.spec(), &spec("tcp:127.0.0.1:0,server"));
}

#[test]
fn tcp_sink_serves_one_client_at_a_time_and_takes_reconnects() {
    let s = sink::open(&spec("tcp:127.0.0.1:0,server")).unwrap();

    server_serves_one_client_at_a_time(s);
}

#[test]
fn tcp_sink_without_host_listens_on_loopback_only() {
    let s = sink::open(&spec("tcp::0,server")).unwrap();

    assert!(s.local_addr().unwrap().ip().is_loopback());
}

#[test]
fn tcp_write_to_a_client_that_reset_reports_not_connected() {
    let mut s = sink::open(&spec("tcp:127.0.0.1:0,server")).unwrap();
    let client = attach(&mut *s);

    drop(client);
    // The first write may still be taken by the kernel; the peer's RST then
    // makes a later one fail.
    let deadline = Instant::now() + TIMEOUT;
    let err = loop {
        match s.write(&[0u8; 1024]) {
            Ok(_) => assert!(Instant::now() < deadline, "writes never failed"),
            Err(e) => break e.kind(),
        }
        std::thread::sleep(Duration::from_millis(5));
    };

    assert_eq!(err, io::ErrorKind::NotConnected);
    assert!(!s.connected());
}

#[test]
fn unix_sink_serves_one_client_at_a_time_and_takes_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let s = sink::open(&SinkSpec::Unix(path)).unwrap();

    server_serves_one_client_at_a_time(s);
}

#[test]
fn unix_socket_is_private_and_removed_with_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");

    let s = sink::open(&SinkSpec::Unix(path.clone())).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    drop(s);

    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!path.exists());
}

#[test]
fn unix_sink_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();

    let from_stale = sink::open(&SinkSpec::Unix(stale));
    let on_live = sink::open(&SinkSpec::Unix(live)).err().unwrap();
    let on_file = sink::open(&SinkSpec::Unix(file.clone())).err().unwrap();

    assert!(from_stale.is_ok());
    assert_eq!(on_live.kind(), io::ErrorKind::AddrInUse);
    assert_eq!(on_file.kind(), io::ErrorKind::AlreadyExists);
    assert!(on_file.to_string().contains("file"), "{on_file}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

// --- file ------------------------------------------------------------------

#[test]
fn file_sink_appends_to_an_existing_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.log");
    std::fs::write(&path, "old\n").unwrap();

    let mut s = sink::open(&SinkSpec::File(path.clone())).unwrap();
    s.write(b"new\r\n\x00").unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew\r\n\x00");
    assert!(s.io_fd().is_none() && s.listen_fd().is_none());
    assert!(s.connected() && !s.accepts_input());
    assert_eq!(kind(s.read(&mut [0u8; 8])), io::ErrorKind::WouldBlock);
}

#[test]
fn file_sink_creates_the_log_without_group_or_other_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.log");

    sink::open(&SinkSpec::File(path.clone())).unwrap();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o133, 0, "{mode:o}");
}

#[test]
fn file_sink_reopen_after_rename_starts_a_new_file_at_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.log");
    let rotated = dir.path().join("guest.log.1");
    let mut s = sink::open(&SinkSpec::File(path.clone())).unwrap();
    s.write(b"before\n").unwrap();

    std::fs::rename(&path, &rotated).unwrap();
    s.write(b"late\n").unwrap();
    s.reopen().unwrap();
    s.write(b"after\n").unwrap();

    assert_eq!(std::fs::read(&rotated).unwrap(), b"before\nlate\n");
    assert_eq!(std::fs::read(&path).unwrap(), b"after\n");
}

#[test]
fn file_sink_reports_the_path_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/guest.log");

    let err = sink::open(&SinkSpec::File(path.clone())).err().unwrap();

    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}

// --- null ------------------------------------------------------------------

#[test]
fn null_swallows_everything_and_offers_no_input() {
    let mut s = sink::open(&SinkSpec::Null).unwrap();

    let n = s.write(&vec![7u8; 1 << 20]).unwrap();

    assert_eq!(n, 1 << 20);
    assert!(s.connected() && !s.accepts_input());
    assert!(s.io_fd().is_none() && s.tty().is_none());
    assert_eq!(kind(s.read(&mut [0u8; 8])), io::ErrorKind::WouldBlock);
}

// --- stdio, in a child process whose stdin and stdout are pipes -------------

const STDIO_CHILD: &str = "XEN_CONSOLE_SINKS_STDIO_CHILD";

/// The child: echoes stdin through a stdio sink between markers, then
/// reports EOF. A no-op in the normal test run.
#[test]
fn stdio_child_main() {
    if std::env::var_os(STDIO_CHILD).is_none() {
        return;
    }
    let mut s = sink::open(&SinkSpec::Stdio).unwrap();
    let mut buf = [0u8; 64];
    loop {
        assert!(readable(s.io_fd().unwrap()));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let framed = [b"<<", &buf[..n], b">>"].concat();
                assert_eq!(s.write(&framed).unwrap(), framed.len());
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
        }
    }
    let after = format!(
        "<<EOF input={} fd={}>>",
        s.accepts_input(),
        s.io_fd().is_some()
    );
    s.write(after.as_bytes()).unwrap();
}

#[test]
fn stdio_reads_stdin_and_writes_stdout_until_stdin_ends() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stdio_child_main",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STDIO_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hi\x00\xff")
        .unwrap();
    let out = child.wait_with_output().unwrap();

    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.stdout.windows(8).any(|w| w == b"<<hi\x00\xff>>"),
        "{text}"
    );
    assert!(text.contains("<<EOF input=false fd=false>>"), "{text}");
}

// --- specs -----------------------------------------------------------------

#[test]
fn bad_spec_strings_name_the_spec_and_the_problem() {
    let cases = [
        ("tcp:localhost:4555,server", "not an IP address"),
        ("tcp:127.0.0.1:4555", "add `,server`"),
        ("unix:/run/x.sock,client", "unknown option \"client\""),
        ("serial:/dev/ttyS0", "unknown sink kind \"serial\""),
        ("file:", "needs a path"),
        ("pty:/dev/pts/3", "takes no argument"),
        ("tcp:127.0.0.1:99999,server", "not a port number"),
    ];
    for (text, problem) in cases {
        let msg = text.parse::<SinkSpec>().unwrap_err().to_string();
        assert!(msg.contains(&format!("{text:?}")), "{msg}");
        assert!(msg.contains(problem), "{msg}");
    }
}

#[test]
fn specs_display_in_their_canonical_form() {
    let canonical = |s: &str| s.parse::<SinkSpec>().unwrap().to_string();

    assert_eq!(
        canonical("tcp::23,server,nowait"),
        "tcp:127.0.0.1:23,server"
    );
    assert_eq!(canonical("unix:/a,,b,server=on"), "unix:/a,,b,server");
    assert_eq!(canonical("file:/var/log/x.log"), "file:/var/log/x.log");
    let err = "".parse::<SinkSpec>().unwrap_err();
    assert_eq!(err.problem, SpecProblem::Empty);
}
