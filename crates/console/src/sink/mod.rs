//! Where a console's output goes and its input comes from.
//!
//! A [`SinkSpec`] is written like a QEMU chardev: `pty`, `file:PATH`,
//! `unix:PATH,server`, `tcp:HOST:PORT,server`, `null`, `stdio`. It comes from
//! the operator (configuration, control socket, or a XenStore node the guest
//! cannot write) — never from a guest, so parsing is strict: an unknown
//! kind, option or a host name (not an IP address) is refused with a message
//! that names the problem. A `,` inside a path is written `,,`, as in QEMU.
//! `tcp::PORT,server` (no host) listens on 127.0.0.1; any other address
//! must be written out, so a console is never exposed on the network by
//! default.
//!
//! Every [`Sink`] is non-blocking: a full sink answers `WouldBlock` and the
//! caller waits for [`Sink::io_fd`] to be writable; a sink nobody is attached
//! to answers `NotConnected`, and the caller keeps the bytes (backlog). The
//! output buffer above decides what is kept, never the sink.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub mod file;
pub mod null;
pub mod pty;
mod server;
pub mod stdio;
pub mod tcp;
pub mod unix;

/// One console's output destination and input source.
pub trait Sink: Send {
    fn spec(&self) -> &SinkSpec;
    /// fd to poll: readable = input waiting (or peer hung up), writable =
    /// room for output. None: always writable, no input (file, null).
    fn io_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Server sockets: readable when a peer waits to connect.
    fn listen_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Takes the waiting peers: the first becomes the client when none is
    /// connected; others are accepted and closed at once (logged). Nothing
    /// waiting is not an error.
    fn accept(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Ok(n) / `WouldBlock` (full) / `NotConnected` (no peer: the caller
    /// keeps the bytes = backlog).
    fn write(&mut self, data: &[u8]) -> io::Result<usize>;
    /// Ok(n) / `WouldBlock` / Ok(0): the input side went away. A socket sink
    /// drops its peer and is `NotConnected` until the next accept; stdio
    /// keeps writing output but stops offering input (`accepts_input()`
    /// turns false and `io_fd()` None). Sinks without input: `WouldBlock`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Output can be delivered now (a peer is attached, or the sink needs
    /// none).
    fn connected(&self) -> bool;
    /// The sink can produce input for the guest.
    fn accepts_input(&self) -> bool;
    /// pty: the slave path to publish in XenStore `tty`.
    fn tty(&self) -> Option<PathBuf> {
        None
    }
    /// file: reopen the same path (log rotation on SIGHUP); others: Ok(()).
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// tcp: the address actually bound (the port, when the spec said 0).
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// Opens the sink a spec describes.
pub fn open(spec: &SinkSpec) -> io::Result<Box<dyn Sink>> {
    Ok(match spec {
        SinkSpec::Pty => Box::new(pty::PtySink::open()?),
        SinkSpec::File(path) => Box::new(file::FileSink::open(path)?),
        SinkSpec::Unix(path) => Box::new(unix::UnixSink::open(path)?),
        SinkSpec::Tcp(addr) => Box::new(tcp::TcpSink::open(*addr)?),
        SinkSpec::Null => Box::new(null::NullSink::new()),
        SinkSpec::Stdio => Box::new(stdio::StdioSink::new()),
    })
}

/// A parsed sink specification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SinkSpec {
    /// A new pseudo-terminal; its slave path is published as `tty`.
    Pty,
    /// A log file, appended to, created 0644.
    File(PathBuf),
    /// A unix stream socket we listen on (`unix:PATH,server`).
    Unix(PathBuf),
    /// A TCP socket we listen on (`tcp:HOST:PORT,server`).
    Tcp(SocketAddr),
    /// Output is discarded, no input.
    Null,
    /// Our own stdout, and stdin for input.
    Stdio,
}

impl SinkSpec {
    fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Pty => "pty",
            SinkSpec::File(_) => "file",
            SinkSpec::Unix(_) => "unix",
            SinkSpec::Tcp(_) => "tcp",
            SinkSpec::Null => "null",
            SinkSpec::Stdio => "stdio",
        }
    }
}

/// A spec string that does not parse; says which spec and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad sink spec {spec:?}: {problem}")]
pub struct BadSinkSpec {
    pub spec: String,
    pub problem: SpecProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    #[error("the spec is empty")]
    Empty,
    #[error(
        "unknown sink kind {0:?} (expected pty, file:PATH, unix:PATH,server, \
         tcp:HOST:PORT,server, null or stdio)"
    )]
    UnknownKind(String),
    #[error("`{0}` takes no argument")]
    UnexpectedArgument(&'static str),
    #[error("`{0}` needs a path")]
    MissingPath(&'static str),
    #[error("unknown option {option:?} for `{kind}`")]
    UnknownOption { kind: &'static str, option: String },
    #[error("`{0}` is only supported as a listening server: add `,server`")]
    NotServer(&'static str),
    #[error("tcp needs HOST:PORT, e.g. tcp:127.0.0.1:4555,server")]
    MissingPort,
    #[error("{0:?} is not an IP address (host names are not resolved)")]
    BadHost(String),
    #[error("{0:?} is not a port number (0 to 65535)")]
    BadPort(String),
}

/// Splits at single commas; `,,` stands for a literal comma.
fn split_fields(s: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            field.push(c);
        } else if chars.next_if_eq(&',').is_some() {
            field.push(',');
        } else {
            fields.push(std::mem::take(&mut field));
        }
    }
    fields.push(field);
    fields
}

fn escape(field: &str) -> String {
    field.replace(',', ",,")
}

/// `server`, plus the QEMU options that only make sense for a server
/// that never waits for its client (we never do).
fn parse_server_options(kind: &'static str, options: &[String]) -> Result<(), SpecProblem> {
    let mut server = false;
    for option in options {
        match option.as_str() {
            "server" | "server=on" => server = true,
            "nowait" | "wait=off" => {}
            other => {
                return Err(SpecProblem::UnknownOption {
                    kind,
                    option: other.to_owned(),
                })
            }
        }
    }
    if !server {
        return Err(SpecProblem::NotServer(kind));
    }
    Ok(())
}

fn parse_path(kind: &'static str, value: Option<&str>) -> Result<PathBuf, SpecProblem> {
    match value {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(SpecProblem::MissingPath(kind)),
    }
}

/// `HOST:PORT` with HOST an IP literal (`[v6]` in brackets) or empty
/// (127.0.0.1), PORT plain decimal.
fn parse_tcp_addr(value: Option<&str>) -> Result<SocketAddr, SpecProblem> {
    let value = value.ok_or(SpecProblem::MissingPort)?;
    let (host, port) = value.rsplit_once(':').ok_or(SpecProblem::MissingPort)?;
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let port: u16 = port
        .parse()
        .ok()
        .filter(|_| port_ok)
        .ok_or_else(|| SpecProblem::BadPort(port.to_owned()))?;
    let ip = if host.is_empty() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip = v6.parse::<std::net::Ipv6Addr>();
        IpAddr::V6(ip.map_err(|_| SpecProblem::BadHost(host.to_owned()))?)
    } else {
        let ip = host.parse::<Ipv4Addr>();
        IpAddr::V4(ip.map_err(|_| SpecProblem::BadHost(host.to_owned()))?)
    };
    Ok(SocketAddr::new(ip, port))
}

fn parse_spec(s: &str) -> Result<SinkSpec, SpecProblem> {
    if s.is_empty() {
        return Err(SpecProblem::Empty);
    }
    let fields = split_fields(s);
    let (head, options) = fields.split_first().ok_or(SpecProblem::Empty)?;
    let (kind, value) = match head.split_once(':') {
        Some((k, v)) => (k, Some(v)),
        None => (head.as_str(), None),
    };
    let no_argument = |spec: SinkSpec| {
        if value.is_some() || !options.is_empty() {
            return Err(SpecProblem::UnexpectedArgument(spec.kind()));
        }
        Ok(spec)
    };
    match kind {
        "pty" => no_argument(SinkSpec::Pty),
        "null" => no_argument(SinkSpec::Null),
        "stdio" => no_argument(SinkSpec::Stdio),
        "file" => {
            if let Some(option) = options.first() {
                let option = option.clone();
                return Err(SpecProblem::UnknownOption {
                    kind: "file",
                    option,
                });
            }
            Ok(SinkSpec::File(parse_path("file", value)?))
        }
        "unix" => {
            let path = parse_path("unix", value)?;
            parse_server_options("unix", options)?;
            Ok(SinkSpec::Unix(path))
        }
        "tcp" => {
            let addr = parse_tcp_addr(value)?;
            parse_server_options("tcp", options)?;
            Ok(SinkSpec::Tcp(addr))
        }
        other => Err(SpecProblem::UnknownKind(other.to_owned())),
    }
}

impl FromStr for SinkSpec {
    type Err = BadSinkSpec;
    fn from_str(s: &str) -> Result<SinkSpec, BadSinkSpec> {
        parse_spec(s).map_err(|problem| BadSinkSpec {
            spec: s.to_owned(),
            problem,
        })
    }
}

fn path_text(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Pty | SinkSpec::Null | SinkSpec::Stdio => f.write_str(self.kind()),
            SinkSpec::File(p) => write!(f, "file:{}", path_text(p)),
            SinkSpec::Unix(p) => write!(f, "unix:{},server", path_text(p)),
            SinkSpec::Tcp(addr) => write!(f, "tcp:{addr},server"),
        }
    }
}

/// Retries a syscall interrupted by a signal.
fn retry_eintr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other,
        }
    }
}

fn not_connected() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(s: &str) -> SpecProblem {
        s.parse::<SinkSpec>().unwrap_err().problem
    }

    #[test]
    fn every_kind_parses() {
        let tcp = SocketAddr::from(([127, 0, 0, 1], 4555));
        let cases = [
            ("pty", SinkSpec::Pty),
            ("null", SinkSpec::Null),
            ("stdio", SinkSpec::Stdio),
            (
                "file:/var/log/g.log",
                SinkSpec::File("/var/log/g.log".into()),
            ),
            (
                "unix:/run/c.sock,server",
                SinkSpec::Unix("/run/c.sock".into()),
            ),
            (
                "unix:/run/c.sock,server=on,wait=off",
                SinkSpec::Unix("/run/c.sock".into()),
            ),
            (
                "unix:/run/c.sock,server,nowait",
                SinkSpec::Unix("/run/c.sock".into()),
            ),
            ("tcp:127.0.0.1:4555,server", SinkSpec::Tcp(tcp)),
            ("tcp::4555,server", SinkSpec::Tcp(tcp)),
            (
                "tcp:[::1]:0,server",
                SinkSpec::Tcp("[::1]:0".parse().unwrap()),
            ),
            (
                "tcp:0.0.0.0:23,server",
                SinkSpec::Tcp("0.0.0.0:23".parse().unwrap()),
            ),
            ("file:/a,,b", SinkSpec::File("/a,b".into())),
        ];
        for (text, spec) in cases {
            assert_eq!(text.parse::<SinkSpec>(), Ok(spec), "{text}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert_eq!(problem(""), SpecProblem::Empty);
        assert_eq!(problem("serial"), SpecProblem::UnknownKind("serial".into()));
        assert_eq!(problem("pty:x"), SpecProblem::UnexpectedArgument("pty"));
        assert_eq!(
            problem("null,server"),
            SpecProblem::UnexpectedArgument("null")
        );
        assert_eq!(problem("file:"), SpecProblem::MissingPath("file"));
        assert_eq!(problem("file"), SpecProblem::MissingPath("file"));
        let opt = |kind, o: &str| SpecProblem::UnknownOption {
            kind,
            option: o.into(),
        };
        assert_eq!(problem("file:/a,b"), opt("file", "b"));
        assert_eq!(problem("unix:/s"), SpecProblem::NotServer("unix"));
        assert_eq!(problem("unix:/s,server,telnet"), opt("unix", "telnet"));
        assert_eq!(problem("tcp:127.0.0.1:80"), SpecProblem::NotServer("tcp"));
        assert_eq!(
            problem("tcp:localhost:80,server"),
            SpecProblem::BadHost("localhost".into())
        );
        assert_eq!(
            problem("tcp:::1:80,server"),
            SpecProblem::BadHost("::1".into())
        );
        assert_eq!(
            problem("tcp:127.0.0.1:+80,server"),
            SpecProblem::BadPort("+80".into())
        );
        assert_eq!(
            problem("tcp:127.0.0.1:65536,server"),
            SpecProblem::BadPort("65536".into())
        );
        assert_eq!(problem("tcp:127.0.0.1,server"), SpecProblem::MissingPort);
    }

    #[test]
    fn the_error_message_names_the_spec_and_the_problem() {
        let err = "tcp:example.org:23,server".parse::<SinkSpec>().unwrap_err();

        let msg = err.to_string();

        assert!(msg.contains("\"tcp:example.org:23,server\""), "{msg}");
        assert!(msg.contains("not an IP address"), "{msg}");
    }

    fn any_spec() -> impl Strategy<Value = SinkSpec> {
        let path = "[a-z/,. ]{1,20}".prop_map(PathBuf::from);
        prop_oneof![
            Just(SinkSpec::Pty),
            Just(SinkSpec::Null),
            Just(SinkSpec::Stdio),
            path.clone().prop_map(SinkSpec::File),
            path.prop_map(SinkSpec::Unix),
            any::<SocketAddr>().prop_map(|mut a| {
                if let SocketAddr::V6(v6) = &mut a {
                    // Scope and flow info are not part of the spec syntax.
                    *v6 = std::net::SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0);
                }
                SinkSpec::Tcp(a)
            }),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_spec(spec in any_spec()) {
            prop_assert_eq!(spec.to_string().parse::<SinkSpec>(), Ok(spec));
        }
    }
}
