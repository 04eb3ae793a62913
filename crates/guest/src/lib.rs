//! A simulated guest on the emulated Xen whose consoles behave like Linux's
//! `hvc_xen` frontend — the other end of every ring the backend serves.
//!
//! * Primary console: frame and port from the domain builder's start info;
//!   no XenStore handshake; output is held while the ring's `connection`
//!   byte says disconnected (as hvc_xen with the connection-flag patch).
//! * Secondary consoles: the xenbus way. A `device/console/<n>` whose
//!   `state` is Initialising is probed: a page is granted to the backend,
//!   an unbound port allocated for it, `ring-ref` and `port` written in one
//!   transaction, then Initialised; Connected when the backend is; on the
//!   backend's Closing the device goes away and the frontend is Closed.
//! * Writes loop until everything is in the ring, waiting for the backend
//!   between chunks; input is echoed back.
//! * It can misbehave on purpose: corrupt indices, flood, close and
//!   reconnect, resume with a new ring and port, die mid-write.
//!
//! [`Guest::run`] reads one command per line and answers with `@` lines,
//! which is how tests and `xen-console up` drive it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use console::ring::{FrontendRing, OUT_CONS_OFFSET, OUT_PROD_OFFSET};
use platform::emu::{EmuEventChannels, EmuGuest};
use platform::{DomId, EventChannels, EvtchnPort, Gfn, GrantRef, GuestPlatform, MappedPages};
use xenstore::client::{Client, XenStore};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("platform: {0}")]
    Platform(#[from] platform::Error),
    #[error("xenstore: {0}")]
    XenStore(#[from] xenstore::client::Error),
    #[error("console ring: {0}")]
    Ring(#[from] console::ring::RingError),
    #[error("{0}")]
    Usage(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, GuestError>;

/// Where the guest connects.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// The domain's hypervisor socket.
    pub xen: PathBuf,
    /// The domain's XenStore socket.
    pub xenstore: PathBuf,
    /// Echo console input back as output.
    pub echo: bool,
}

struct Frontend {
    ring: FrontendRing,
    port: EvtchnPort,
    /// Grant and page of a secondary console (the primary's are the
    /// builder's).
    grant: Option<(GrantRef, Gfn)>,
    pending: VecDeque<u8>,
    received: Vec<u8>,
    backend_state_path: Option<String>,
    connected: bool,
    /// The backend was seen ready (InitWait or Connected) since this
    /// frontend attached: only then does its Closing/Closed mean us, not a
    /// state left over from before a reconnect.
    backend_seen_ready: bool,
}

/// A numbered sequence being printed a few lines at a time.
struct Counter {
    devid: u32,
    next: u64,
    last: u64,
    per_tick: u64,
    last_tick: std::time::Instant,
}

pub struct Guest {
    cfg: GuestConfig,
    counter: Option<Counter>,
    plat: EmuGuest,
    store: Client,
    evt: EmuEventChannels,
    fronts: BTreeMap<u32, Frontend>,
    free_gfns: Vec<Gfn>,
    console_gfn: Gfn,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let val = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(GuestError::Usage(format!("bad hex {s:?}"))),
    };
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(GuestError::Usage(format!("odd-length hex {s:?}")));
    }
    b.chunks(2)
        .map(|p| Ok(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

impl Guest {
    pub fn connect(cfg: GuestConfig) -> Result<Guest> {
        let plat = EmuGuest::connect(&cfg.xen)?;
        let store = Client::connect_unix(&cfg.xenstore)?;
        let evt = plat.open_event_channels()?;
        let si = plat.start_info()?;
        let mut g = Guest {
            cfg,
            counter: None,
            plat,
            store,
            evt,
            fronts: BTreeMap::new(),
            free_gfns: Vec::new(),
            console_gfn: si.console_gfn,
        };
        // Every page but the console's can carry a secondary ring.
        g.free_gfns = (0..si.console_gfn.0).rev().map(Gfn).collect();
        let port = g.evt.adopt(si.console_port)?;
        let ring = FrontendRing::new(g.plat.map_own_page(si.console_gfn)?)?;
        g.fronts.insert(0, Frontend::new(0, ring, port, None));
        g.store.watch("device/console", b"consoles")?;
        Ok(g)
    }

    pub fn domid(&self) -> DomId {
        self.plat.domid()
    }

    /// Queues bytes for console `devid`.
    pub fn print(&mut self, devid: u32, data: &[u8]) -> Result<()> {
        let f = self.front(devid)?;
        f.pending.extend(data);
        self.pump(devid)
    }

    fn front(&mut self, devid: u32) -> Result<&mut Frontend> {
        self.fronts
            .get_mut(&devid)
            .ok_or_else(|| GuestError::Usage(format!("no console {devid}")))
    }

    /// Writes as much pending output as the ring takes.
    fn pump(&mut self, devid: u32) -> Result<()> {
        let Some(f) = self.fronts.get_mut(&devid) else {
            return Ok(());
        };
        // hvc_xen refuses to write while the backend says disconnected.
        if devid == 0 && !f.ring.is_connected()? {
            return Ok(());
        }
        if devid != 0 && !f.connected {
            return Ok(());
        }
        let mut wrote = false;
        while !f.pending.is_empty() {
            let (a, _) = f.pending.as_slices();
            let n = f.ring.write_out(a)?;
            if n == 0 {
                break;
            }
            f.pending.drain(..n);
            wrote = true;
        }
        if wrote {
            self.evt.notify(f.port)?;
        }
        Ok(())
    }

    /// Handles ring events: reads input (echoing it) and writes more output.
    fn on_event(&mut self) -> Result<Vec<String>> {
        let mut fired = Vec::new();
        self.evt.pending(&mut fired)?;
        for p in &fired {
            self.evt.unmask(*p)?;
        }
        let mut notes = Vec::new();
        let devids: Vec<u32> = self.fronts.keys().copied().collect();
        for devid in devids {
            let mut buf = [0u8; 1024];
            let (n, port) = {
                let f = self.front(devid)?;
                (f.ring.read_in(&mut buf)?, f.port)
            };
            if n > 0 {
                self.evt.notify(port)?;
                notes.push(format!("in {devid} {}", hex(&buf[..n])));
                let echo = self.cfg.echo;
                let f = self.front(devid)?;
                f.received.extend_from_slice(&buf[..n]);
                if echo {
                    f.pending.extend(&buf[..n]);
                }
            }
            self.pump(devid)?;
        }
        Ok(notes)
    }

    /// Probes new `device/console/<n>` nodes and follows backend states.
    fn on_xenstore(&mut self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let events = self.store.watch_events();
        while let Some(ev) = events.try_recv()? {
            let token = String::from_utf8_lossy(&ev.token).into_owned();
            if token == "consoles" {
                notes.extend(self.probe()?);
            } else if let Some(d) = token.strip_prefix("backend-") {
                let devid: u32 = d.parse().map_err(|_| GuestError::Usage(token.clone()))?;
                notes.extend(self.backend_changed(devid)?);
            }
        }
        Ok(notes)
    }

    fn probe(&mut self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let names = match self.store.directory("device/console") {
            Ok(n) => n,
            Err(e) if e.errno() == Some(xenstore::XsErrno::NoEnt) => return Ok(notes),
            Err(e) => return Err(e.into()),
        };
        for name in names {
            let Ok(devid) = name.parse::<u32>() else {
                continue;
            };
            if devid == 0 || self.fronts.contains_key(&devid) {
                continue;
            }
            let state = read_str(&self.store, &format!("device/console/{devid}/state"));
            if state.as_deref() != Some("1") {
                continue;
            }
            self.attach(devid)?;
            notes.push(format!("probed {devid}"));
        }
        Ok(notes)
    }

    /// The hvc_xen handshake for a secondary console.
    fn attach(&mut self, devid: u32) -> Result<()> {
        let fe = format!("device/console/{devid}");
        let backend_id: u16 = read_str(&self.store, &format!("{fe}/backend-id"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let backend = read_str(&self.store, &format!("{fe}/backend")).unwrap_or_default();
        let mut f = self.offer_ring(devid, DomId(backend_id))?;
        if !backend.is_empty() {
            let path = format!("{backend}/state");
            self.store
                .watch(&path, format!("backend-{devid}").as_bytes())?;
            f.backend_state_path = Some(path);
        }
        self.fronts.insert(devid, f);
        Ok(())
    }

    /// Grants a fresh page and allocates a port for the backend, writes
    /// `ring-ref` and `port` and says Initialised, in one transaction.
    fn offer_ring(&mut self, devid: u32, backend_id: DomId) -> Result<Frontend> {
        let fe = format!("device/console/{devid}");
        let gfn = self
            .free_gfns
            .pop()
            .ok_or_else(|| GuestError::Usage("out of pages for consoles".into()))?;
        let page = self.plat.map_own_page(gfn)?;
        // A fresh ring: zero the indices a previous user left.
        for off in [3072, 3076, OUT_CONS_OFFSET, OUT_PROD_OFFSET] {
            page.store_u32(off, 0, Ordering::Release)
                .map_err(platform::Error::from)?;
        }
        let ring = FrontendRing::new(page)?;
        let gref = self.plat.grant_access(backend_id, gfn, false)?;
        let port = self.evt.alloc_unbound(backend_id)?;
        self.store.transaction(|tx| {
            tx.write(&format!("{fe}/ring-ref"), gref.to_string().as_bytes())?;
            tx.write(&format!("{fe}/port"), port.to_string().as_bytes())?;
            tx.write(&format!("{fe}/state"), b"3")
        })?;
        Ok(Frontend::new(devid, ring, port, Some((gref, gfn))))
    }

    /// What Linux `xencons_resume` does when the device outlived a suspend:
    /// drops the old ring and port, offers a new page and port and says
    /// Initialised again, without closing first.
    fn resume(&mut self, devid: u32) -> Result<()> {
        if devid == 0 {
            return Err(GuestError::Usage(
                "the primary console has no handshake".into(),
            ));
        }
        let old = self
            .fronts
            .remove(&devid)
            .ok_or_else(|| GuestError::Usage(format!("no console {devid}")))?;
        let fe = format!("device/console/{devid}");
        let backend_id: u16 = read_str(&self.store, &format!("{fe}/backend-id"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let Frontend {
            port,
            grant,
            pending,
            received,
            backend_state_path,
            backend_seen_ready,
            ..
        } = old;
        let _ = self.evt.unbind(port);
        if let Some((gref, gfn)) = grant {
            if self.plat.end_access(gref).is_ok() {
                self.free_gfns.push(gfn);
            }
        }
        let mut f = self.offer_ring(devid, DomId(backend_id))?;
        f.pending = pending;
        f.received = received;
        f.backend_state_path = backend_state_path;
        f.backend_seen_ready = backend_seen_ready;
        self.fronts.insert(devid, f);
        Ok(())
    }

    fn backend_changed(&mut self, devid: u32) -> Result<Vec<String>> {
        let Some(path) = self
            .fronts
            .get(&devid)
            .and_then(|f| f.backend_state_path.clone())
        else {
            return Ok(Vec::new());
        };
        let state = read_str(&self.store, &path);
        let fe = format!("device/console/{devid}");
        if matches!(state.as_deref(), Some("2") | Some("4")) {
            self.front(devid)?.backend_seen_ready = true;
        }
        match state.as_deref() {
            Some("4") => {
                let f = self.front(devid)?;
                if !f.connected {
                    f.connected = true;
                    self.store.write(&format!("{fe}/state"), b"4")?;
                    self.pump(devid)?;
                    return Ok(vec![format!("connected {devid}")]);
                }
            }
            // Closing (or Closed without Closing): hvc_xen removes the
            // device and closes the frontend.
            Some("5") | Some("6") | None if self.front(devid)?.backend_seen_ready => {
                self.detach(devid)?;
                let _ = self.store.write(&format!("{fe}/state"), b"6");
                return Ok(vec![format!("closed {devid}")]);
            }
            _ => {}
        }
        Ok(Vec::new())
    }

    fn detach(&mut self, devid: u32) -> Result<()> {
        let Some(f) = self.fronts.remove(&devid) else {
            return Ok(());
        };
        if let Some(path) = &f.backend_state_path {
            let _ = self
                .store
                .unwatch(path, format!("backend-{devid}").as_bytes());
        }
        let _ = self.evt.unbind(f.port);
        drop(f.ring);
        if let Some((gref, gfn)) = f.grant {
            // The backend unmaps when it disconnects; until it has, the
            // grant cannot end, and the page is not reused.
            if self.plat.end_access(gref).is_ok() {
                self.free_gfns.push(gfn);
            }
        }
        Ok(())
    }

    /// Closes a secondary console from the guest side, then probes it again
    /// as a fresh frontend, stepping as Linux `xenbus_reset_frontend` does:
    /// each state waits for the backend to follow. (Without the waits the
    /// whole cycle can end, at Connected again, before the backend looks,
    /// and it goes on serving the old ring.)
    fn reconnect(&mut self, devid: u32) -> Result<()> {
        let fe = format!("device/console/{devid}");
        let backend = self.front(devid)?.backend_state_path.clone();
        self.store.write(&format!("{fe}/state"), b"5")?;
        self.wait_for_backend(backend.as_deref(), &["5", "6"]);
        self.detach(devid)?;
        self.store.write(&format!("{fe}/state"), b"6")?;
        self.wait_for_backend(backend.as_deref(), &["6"]);
        self.store.write(&format!("{fe}/state"), b"1")?;
        self.wait_for_backend(backend.as_deref(), &["2"]);
        Ok(())
    }

    /// Up to 5 s, like Linux's `xenbus_reset_wait_for_backend`, then goes
    /// on regardless.
    fn wait_for_backend(&self, state_path: Option<&str>, want: &[&str]) {
        let Some(path) = state_path else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if read_str(&self.store, path).is_some_and(|s| want.contains(&s.as_str())) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Writes corrupt indices into a console's ring.
    fn corrupt(&mut self, devid: u32) -> Result<()> {
        let gfn = match devid {
            0 => self.console_gfn,
            d => self
                .front(d)?
                .grant
                .map(|(_, g)| g)
                .ok_or_else(|| GuestError::Usage("no page".into()))?,
        };
        let page: MappedPages = self.plat.map_own_page(gfn)?;
        let cons = page
            .load_u32(OUT_CONS_OFFSET, Ordering::Acquire)
            .map_err(platform::Error::from)?;
        page.store_u32(
            OUT_PROD_OFFSET,
            cons.wrapping_add(100_000),
            Ordering::Release,
        )
        .map_err(platform::Error::from)?;
        let port = self.front(devid)?.port;
        self.evt.notify(port)?;
        Ok(())
    }

    /// Queues the next few lines of a running count; says when it is done.
    fn tick_counter(&mut self) -> Result<Option<String>> {
        let Some(c) = self.counter.as_mut() else {
            return Ok(None);
        };
        // A steady pace, however often the backend wakes us.
        if c.last_tick.elapsed() < std::time::Duration::from_millis(5) {
            return Ok(None);
        }
        c.last_tick = std::time::Instant::now();
        let mut text = String::new();
        let end = (c.next + c.per_tick).min(c.last + 1);
        for i in c.next..end {
            text.push_str(&format!("line {i:08}\n"));
        }
        c.next = end;
        let (devid, done, last) = (c.devid, c.next > c.last, c.last);
        self.front(devid)?.pending.extend(text.as_bytes());
        if done {
            self.counter = None;
            return Ok(Some(format!("counted {devid} {last}")));
        }
        Ok(None)
    }

    fn command(&mut self, words: &[&str]) -> Result<String> {
        let devid = |i: usize| -> Result<u32> {
            words.get(i).and_then(|w| w.parse().ok()).ok_or_else(|| {
                GuestError::Usage(format!("{words:?}: argument {i} must be a console number"))
            })
        };
        match words.first().copied() {
            Some("print") => {
                let text = words[2..].join(" ") + "\n";
                self.print(devid(1)?, text.as_bytes())?;
            }
            Some("write-hex") => {
                let data = unhex(words.get(2).copied().unwrap_or(""))?;
                self.print(devid(1)?, &data)?;
            }
            Some("write-file") => {
                let data = std::fs::read(words.get(2).copied().unwrap_or(""))?;
                self.print(devid(1)?, &data)?;
            }
            Some("flood") => {
                let n: usize = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(1 << 20);
                let data: Vec<u8> = (0..n)
                    .map(|i| b'a' + u8::try_from(i % 26).unwrap_or(0))
                    .collect();
                self.print(devid(1)?, &data)?;
            }
            Some("boot") => {
                let log = boot_log(self.domid(), words.get(1).copied().unwrap_or("guest"));
                self.print(0, log.as_bytes())?;
            }
            Some("count") => {
                let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
                let (n, per_tick) = (num(2).unwrap_or(1000), num(3).unwrap_or(1).max(1));
                self.counter = Some(Counter {
                    devid: devid(1)?,
                    next: 1,
                    last: n,
                    per_tick,
                    last_tick: std::time::Instant::now(),
                });
            }
            Some("pending") => return Ok(self.front(devid(1)?)?.pending.len().to_string()),
            Some("received") => return Ok(hex(&self.front(devid(1)?)?.received)),
            Some("consoles") => {
                let list: Vec<String> = self.fronts.keys().map(u32::to_string).collect();
                return Ok(list.join(" "));
            }
            Some("connected") => {
                let d = devid(1)?;
                let f = self.front(d)?;
                let up = if d == 0 {
                    f.ring.is_connected()?
                } else {
                    f.connected
                };
                return Ok(u8::from(up).to_string());
            }
            Some("bad-indices") => self.corrupt(devid(1)?)?,
            Some("reconnect") => self.reconnect(devid(1)?)?,
            Some("resume") => self.resume(devid(1)?)?,
            Some("die") => std::process::exit(3),
            Some(other) => return Err(GuestError::Usage(format!("unknown command {other:?}"))),
            None => {}
        }
        Ok(String::new())
    }

    /// Serves commands from stdin until it closes or says `exit`; events
    /// and results go to stdout as `@` lines.
    pub fn run(mut self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(std::io::Error::from)?;
        let wake2 = wake.try_clone()?;
        std::thread::spawn(move || {
            for line in std::io::stdin()
                .lock()
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
                let _ = rustix::io::write(&wake2, &1u64.to_ne_bytes());
            }
            drop(tx);
            let _ = rustix::io::write(&wake2, &1u64.to_ne_bytes());
        });
        let out = std::io::stdout();
        let say = |line: String| {
            let mut o = out.lock();
            let _ = writeln!(o, "@{line}");
            let _ = o.flush();
        };
        say(format!("ready {}", self.domid()));
        loop {
            let watch = self.store.watch_events();
            let mut fds = [
                rustix::event::PollFd::new(&self.evt, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&watch, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&wake, rustix::event::PollFlags::IN),
            ];
            // Output held for a disconnected primary is retried on a timer;
            // a running count ticks every 5 ms.
            let timeout = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: if self.counter.is_some() {
                    5_000_000
                } else {
                    50_000_000
                },
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
            for note in self.on_event()? {
                say(note);
            }
            for note in self.on_xenstore()? {
                say(note);
            }
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&wake, &mut buf);
            loop {
                match rx.try_recv() {
                    Ok(line) => {
                        let words: Vec<&str> = line.split_whitespace().collect();
                        if words.first() == Some(&"exit") {
                            return Ok(());
                        }
                        match self.command(&words) {
                            Ok(r) => say(format!("ok {r}").trim_end().to_owned()),
                            Err(e) => say(format!("err {e}")),
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            if let Some(note) = self.tick_counter()? {
                say(note);
            }
            let devids: Vec<u32> = self.fronts.keys().copied().collect();
            for d in devids {
                self.pump(d)?;
            }
        }
    }
}

impl Frontend {
    fn new(
        devid: u32,
        ring: FrontendRing,
        port: EvtchnPort,
        grant: Option<(GrantRef, Gfn)>,
    ) -> Frontend {
        Frontend {
            ring,
            port,
            grant,
            pending: VecDeque::new(),
            received: Vec::new(),
            backend_state_path: None,
            connected: devid == 0,
            backend_seen_ready: false,
        }
    }
}

fn read_str(store: &Client, path: &str) -> Option<String> {
    store
        .read(path)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// A boot log like a small Linux PV guest's, ending at a login prompt.
pub fn boot_log(domid: DomId, name: &str) -> String {
    let lines = [
        "[    0.000000] Linux version 6.1.0-xen (builder@xen-console) #1 SMP PREEMPT_DYNAMIC"
            .to_string(),
        "[    0.000000] Command line: root=/dev/xvda1 ro console=hvc0".to_string(),
        "[    0.000000] Booting paravirtualized kernel on Xen".to_string(),
        format!("[    0.000000] Xen version: 4.17 (preserve-AD), domid {domid}"),
        "[    0.012345] Memory: 121344K/131072K available".to_string(),
        "[    0.104512] xen:events: Using FIFO-based ABI".to_string(),
        "[    0.212001] Console: colour dummy device 80x25".to_string(),
        "[    0.212019] printk: console [hvc0] enabled".to_string(),
        "[    0.480377] xen_netfront: Initialising Xen virtual ethernet driver".to_string(),
        "[    0.633012] blkfront: xvda: flush diskcache: enabled; persistent grants: enabled"
            .to_string(),
        "[    0.701554] EXT4-fs (xvda1): mounted filesystem with ordered data mode".to_string(),
        "[    0.912211] systemd[1]: Hostname set to <guest>.".to_string(),
        "[    1.402945] systemd[1]: Reached target Multi-User System.".to_string(),
        String::new(),
        format!("Debian GNU/Linux 12 {name} hvc0"),
        String::new(),
        format!("{name} login: "),
    ];
    // A console's tty turns LF into CR LF; the guest sends what a
    // terminal expects.
    let mut out = lines.join("\r\n");
    out = out.replace("<guest>", name);
    out
}
