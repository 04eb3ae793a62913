//! `xen-console attach <domid> [--num N]`: the user's way into a console,
//! like `xl console`. Finds the pty through the console's `tty` node
//! (waiting briefly for it, and following it if a restarted daemon
//! publishes a new one), puts the terminal in raw mode, relays both ways,
//! and leaves on the escape character (Ctrl-] by default). It takes the
//! same per-domain lock as Xen's `xenconsole`, so two clients never share
//! a console.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::event::{PollFd, PollFlags};
use rustix::termios::{self, OptionalActions, Termios};
use xenstore::client::{Client, XenStore};

#[derive(clap::Args)]
pub struct Args {
    pub domid: u16,
    /// Console index (0 is the primary console).
    #[arg(long, short = 'n', default_value_t = 0)]
    pub num: u32,
    /// Leave on this character: a single character or ^X caret notation.
    #[arg(long, short = 'e', default_value = "^]")]
    pub escape: String,
    /// XenStore to read `tty` from (default: $XENSTORED_PATH, the emulator's, or the system's).
    #[arg(long)]
    pub xenstore: Option<PathBuf>,
    /// Directory for the per-domain lock (Xen's xenconsole uses /var/lock).
    #[arg(long, default_value = "/var/lock")]
    pub lock_dir: PathBuf,
}

/// Parses `^]` or a single character into the byte that ends a session.
pub fn parse_escape(s: &str) -> anyhow::Result<u8> {
    let b = s.as_bytes();
    match b {
        [c] => Ok(*c),
        [b'^', c] if (b'@'..=b'_').contains(&c.to_ascii_uppercase()) => {
            Ok(c.to_ascii_uppercase() - b'@')
        }
        _ => bail!("escape {s:?}: give one character or ^X"),
    }
}

fn open_store(args: &Args) -> anyhow::Result<Client> {
    if let Some(p) = &args.xenstore {
        return Client::open_path(p)
            .with_context(|| format!("opening XenStore at {}", p.display()));
    }
    if std::env::var_os("XENSTORED_PATH").is_none() {
        let emu = Path::new(crate::util::DEFAULT_EMU_DIR).join("xenstored");
        if emu.exists() {
            if let Ok(c) = Client::connect_unix(&emu) {
                return Ok(c);
            }
        }
    }
    Client::open().context("opening XenStore")
}

fn tty_node(domid: u16, num: u32) -> String {
    match num {
        0 => format!("/local/domain/{domid}/console/tty"),
        n => format!("/local/domain/{domid}/device/console/{n}/tty"),
    }
}

fn read_tty(store: &Client, node: &str) -> Option<String> {
    store
        .read(node)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .filter(|s| !s.is_empty())
}

/// Holds the terminal's original settings and puts them back on drop.
struct RawTerminal<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawTerminal<'a> {
    fn enter(fd: BorrowedFd<'a>) -> Option<RawTerminal<'a>> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, OptionalActions::Now, &self.saved);
    }
}

fn lock(dir: &Path, domid: u16) -> anyhow::Result<File> {
    let path = dir.join(format!("xenconsole.{domid}"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "the console of domain {domid} is already attached elsewhere (lock {} is held)",
            path.display()
        );
    }
    Ok(f)
}

fn open_pty(path: &str) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let escape = parse_escape(&args.escape)?;
    if args.domid == 0 {
        bail!("domain 0's console is the host's own");
    }
    let _lock = lock(&args.lock_dir, args.domid)?;
    let store = open_store(&args)?;
    let node = tty_node(args.domid, args.num);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tty = loop {
        if let Some(t) = read_tty(&store, &node) {
            break t;
        }
        if Instant::now() > deadline {
            bail!(
                "no console for domain {} (index {}): {node} is not set",
                args.domid,
                args.num
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let events = store.watch_events();
    store.watch(&node, "tty")?;
    let mut pty = open_pty(&tty)?;
    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_fd();
    let _raw = termios::isatty(stdin_fd)
        .then(|| RawTerminal::enter(stdin_fd))
        .flatten();
    eprint!(
        "[attached to domain {} console {}; {} leaves]\r\n",
        args.domid, args.num, args.escape
    );
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        let mut fds = vec![
            PollFd::new(&pty, PollFlags::IN),
            PollFd::new(&events, PollFlags::IN),
        ];
        if stdin_open {
            fds.push(PollFd::new(&stdin_fd, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let (pty_ready, watch_ready) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        let stdin_ready = stdin_open && !fds[2].revents().is_empty();
        drop(fds);
        if watch_ready {
            while events.try_recv()?.is_some() {}
            match read_tty(&store, &node) {
                None => {
                    eprint!(
                        "\r\n[domain {} console {} went away]\r\n",
                        args.domid, args.num
                    );
                    return Ok(());
                }
                Some(t) if t != tty => {
                    pty = open_pty(&t)?;
                    tty = t;
                }
                Some(_) => {}
            }
        }
        if pty_ready {
            match pty.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // The daemon closed the pty (it is restarting): wait
                    // for it to publish a new one.
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
            }
        }
        if stdin_ready {
            let n = stdin.lock().read(&mut buf)?;
            if n == 0 {
                stdin_open = false;
                continue;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == escape) {
                pty.write_all(&buf[..i])?;
                eprint!("\r\n");
                return Ok(());
            }
            pty.write_all(&buf[..n])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_characters_parse_like_xenconsole() {
        assert_eq!(parse_escape("^]").unwrap(), 0x1d);
        assert_eq!(parse_escape("^a").unwrap(), 0x01);
        assert_eq!(parse_escape("q").unwrap(), b'q');
        assert!(parse_escape("^").is_ok());
        assert!(parse_escape("abc").is_err());
    }
}
