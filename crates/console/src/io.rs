//! [`ConsoleIo`]: the data plane of one connected console, as a state
//! machine the reactor drives. It never blocks and never panics on what a
//! guest or a sink does.
//!
//! * Guest output: on an event, drain `out` into the [`OutputBuffer`],
//!   publish `out_cons`, notify; then write the buffer to the sink. With
//!   [`Overflow::Keep`] the ring is drained only while the buffer has room,
//!   so a stalled sink makes the guest wait instead of losing bytes.
//! * Guest input: read the sink only while `in` has room (never overwrite
//!   what the guest has not consumed); when it is full, stop watching the
//!   sink and look again after the guest's next event.
//! * A sink that blocks is retried when it becomes writable; a sink with no
//!   peer puts the console in backlog (logged once, counted) until a peer
//!   connects.
//! * Bad ring indices are ignored and logged once per console.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use platform::{EventChannels, EvtchnPort};

use crate::log::GuestLog;
use crate::metrics::ConsoleCounters;
use crate::output_buffer::{OutputBuffer, Overflow};
use crate::ring::{ConsoleRing, RingError};
use crate::sink::Sink;

/// Identifies a console: a domain and a device index (0 = primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsoleId {
    pub domid: platform::DomId,
    pub devid: u32,
}

impl std::fmt::Display for ConsoleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "d{}/console/{}", self.domid, self.devid)
    }
}

/// Which of a console's descriptors the reactor should watch, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    pub evtchn: bool,
    pub sink_read: bool,
    pub sink_write: bool,
    pub listen: bool,
    /// Throttled: wait for the rate limiter's timer.
    pub timer: bool,
}

/// A per-console limit on guest output, in bytes (not events: a guest that
/// writes a byte at a time is not slowed down by it, unlike xenconsoled's
/// event-count limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub bytes_per_sec: u64,
    /// Bytes a quiet console may send at once.
    pub burst: u64,
}

/// Token bucket, and the timer that ends a throttled spell. The timer
/// exists only while the console is throttled.
struct Bucket {
    limit: RateLimit,
    tokens: u64,
    last: Instant,
    timer: Option<OwnedFd>,
    throttled_since: Option<Instant>,
}

impl Bucket {
    fn new(limit: RateLimit) -> Bucket {
        let limit = RateLimit {
            bytes_per_sec: limit.bytes_per_sec.max(1),
            burst: limit.burst.max(1),
        };
        Bucket {
            limit,
            tokens: limit.burst,
            last: Instant::now(),
            timer: None,
            throttled_since: None,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let add = now.duration_since(self.last).as_nanos() * u128::from(self.limit.bytes_per_sec)
            / 1_000_000_000;
        if add > 0 {
            self.tokens = self.limit.burst.min(
                self.tokens
                    .saturating_add(u64::try_from(add).unwrap_or(u64::MAX)),
            );
            self.last = now;
        }
    }

    /// Arms the timer for when `want` bytes will be allowed.
    fn throttle(&mut self, want: u64) -> std::io::Result<()> {
        let missing = want
            .min(self.limit.burst)
            .saturating_sub(self.tokens)
            .max(1);
        let ns = u128::from(missing) * 1_000_000_000 / u128::from(self.limit.bytes_per_sec);
        let ns = i64::try_from(ns.max(1_000_000)).unwrap_or(i64::MAX);
        if self.timer.is_none() {
            use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
            self.timer = Some(timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
            )?);
        }
        if let Some(t) = &self.timer {
            use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: ns / 1_000_000_000,
                    tv_nsec: ns % 1_000_000_000,
                },
            };
            timerfd_settime(t, TimerfdTimerFlags::empty(), &spec)?;
        }
        self.throttled_since.get_or_insert_with(Instant::now);
        Ok(())
    }
}

/// Largest chunk moved per step; the `out` ring is 2 KiB, the sink read
/// keeps a little more in flight.
const CHUNK: usize = 4096;

/// Most bytes moved each way per wakeup. A guest on another vCPU can refill
/// `out` as fast as we drain it (and a sink peer can type as fast as the
/// guest reads), so a drain that ran until the ring stayed empty could hold
/// the loop, and every other console, for ever. Output cut short here is
/// picked up again by the reactor ([`ConsoleIo::has_more`]); input left in
/// the sink keeps its descriptor readable.
const BUDGET: usize = 32 * CHUNK;

/// Why a write to the sink stopped.
enum SinkStop {
    /// All of it was taken (or the sink took nothing without saying why).
    Took,
    /// The sink would block: wait for it to become writable.
    Full,
    /// The sink has no peer or failed: hold the bytes (backlog).
    Failed(std::io::Error),
}

/// Writes as much of `data` as the sink takes right now.
fn write_some(sink: &mut dyn Sink, data: &[u8]) -> (usize, SinkStop) {
    let mut done = 0;
    while done < data.len() {
        match sink.write(&data[done..]) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (done, SinkStop::Full),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return (done, SinkStop::Failed(e)),
        }
    }
    (done, SinkStop::Took)
}

pub struct ConsoleIo {
    pub id: ConsoleId,
    ring: ConsoleRing,
    evtchn: Box<dyn EventChannels>,
    port: EvtchnPort,
    out: OutputBuffer,
    sink: Box<dyn Sink>,
    counters: Arc<ConsoleCounters>,
    /// Bad indices were seen (and logged) on this connection.
    bad_indices_logged: bool,
    backlog_since: Option<Instant>,
    /// The sink would block: wait for it to become writable.
    sink_full: bool,
    /// `in` was full at the last look: the sink is not read until the
    /// guest consumes.
    in_full: bool,
    /// The last drain stopped at [`BUDGET`] with output still in the ring.
    more: bool,
    /// The rate limiter, if the operator set one.
    bucket: Option<Bucket>,
    /// The last accept on a server sink failed: look again after the
    /// guest's next event.
    listen_failed: bool,
    /// The guest log, written before output is consumed from the ring.
    log: Option<GuestLog>,
    log_failed: bool,
    scratch: Vec<u8>,
}

impl ConsoleIo {
    pub fn new(
        id: ConsoleId,
        ring: ConsoleRing,
        evtchn: Box<dyn EventChannels>,
        port: EvtchnPort,
        out: OutputBuffer,
        sink: Box<dyn Sink>,
        counters: Arc<ConsoleCounters>,
    ) -> ConsoleIo {
        ConsoleIo {
            id,
            ring,
            evtchn,
            port,
            out,
            sink,
            counters,
            bad_indices_logged: false,
            backlog_since: None,
            sink_full: false,
            in_full: false,
            more: false,
            bucket: None,
            listen_failed: false,
            log: None,
            log_failed: false,
            scratch: vec![0; CHUNK],
        }
    }

    /// Limits guest output to `limit`.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> ConsoleIo {
        self.bucket = Some(Bucket::new(limit));
        self
    }

    /// The rate limiter's timer, while the console is throttled.
    pub fn timer_fd(&self) -> Option<BorrowedFd<'_>> {
        self.bucket.as_ref()?.timer.as_ref().map(|t| t.as_fd())
    }

    fn throttled(&self) -> bool {
        self.bucket
            .as_ref()
            .is_some_and(|b| b.throttled_since.is_some())
    }

    /// The throttle timer fired: the guest may send again.
    pub fn on_timer(&mut self) {
        if let Some(b) = self.bucket.as_mut() {
            if let Some(t) = &b.timer {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(t, &mut buf);
            }
            if let Some(since) = b.throttled_since.take() {
                self.counters.add_throttled_time(since.elapsed());
            }
        }
        self.drain();
    }

    /// Also writes guest output to `log`, before consuming it.
    pub fn with_log(mut self, log: GuestLog) -> ConsoleIo {
        self.log = Some(log);
        self
    }

    pub fn log_path(&self) -> Option<&std::path::Path> {
        self.log.as_ref().map(GuestLog::path)
    }

    /// Reopens the log at its path (rotation on SIGHUP).
    pub fn reopen_log(&mut self) {
        if let Some(log) = self.log.as_mut() {
            match log.reopen() {
                Ok(()) => self.log_failed = false,
                Err(e) => {
                    tracing::warn!(console = %self.id, path = %log.path().display(), error = %e, "reopening the log failed")
                }
            }
        }
    }

    fn write_log(&mut self, n: usize) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        // Where the ring's consumer index will be once this chunk is
        // consumed: recorded before consuming, for crash recovery.
        let out_cons = self.ring.out_cons().unwrap_or(0);
        let n32 = u32::try_from(n).unwrap_or(0);
        let result = log
            .write(&self.scratch[..n])
            .and_then(|()| log.commit(out_cons.wrapping_add(n32)));
        if let Err(e) = result {
            if !self.log_failed {
                self.log_failed = true;
                tracing::warn!(console = %self.id, path = %log.path().display(), error = %e, "writing the guest log failed; output still goes to the sink");
            }
        } else {
            self.log_failed = false;
        }
    }

    pub fn evtchn(&self) -> &dyn EventChannels {
        self.evtchn.as_ref()
    }

    pub fn sink(&self) -> &dyn Sink {
        self.sink.as_ref()
    }

    pub fn sink_mut(&mut self) -> &mut dyn Sink {
        self.sink.as_mut()
    }

    pub fn counters(&self) -> &Arc<ConsoleCounters> {
        &self.counters
    }

    /// Takes the sink back (to keep it across a reconnect).
    pub fn into_sink(self) -> Box<dyn Sink> {
        self.sink
    }

    /// Puts `sink` in place of the current one, which it returns (a
    /// reconnect hands the console's sink to its new ring).
    pub fn replace_sink(&mut self, sink: Box<dyn Sink>) -> Box<dyn Sink> {
        std::mem::replace(&mut self.sink, sink)
    }

    pub fn interest(&self) -> Interest {
        let keep_full = self.out.overflow() == Overflow::Keep && self.out.space() == 0;
        let throttled = self.throttled();
        Interest {
            evtchn: !keep_full && !throttled,
            timer: throttled,
            sink_read: self.sink.accepts_input() && self.sink.connected() && !self.in_full,
            sink_write: self.sink_full && !self.out.is_empty(),
            listen: self.sink.listen_fd().is_some() && !self.listen_failed,
        }
    }

    /// The guest signalled: output to drain, or input consumed.
    pub fn on_event(&mut self) {
        self.listen_failed = false;
        let mut fired = Vec::new();
        if let Err(e) = self.evtchn.pending(&mut fired) {
            tracing::warn!(console = %self.id, error = %e, "reading pending ports failed");
        }
        for p in fired {
            let _ = self.evtchn.unmask(p);
        }
        // The guest may have consumed input: look at `in` again.
        self.in_full = false;
        self.drain();
    }

    fn bad_indices(&mut self, e: &RingError) {
        self.counters.bad_index_event();
        if !self.bad_indices_logged {
            self.bad_indices_logged = true;
            tracing::warn!(console = %self.id, error = %e, "guest ring indices are corrupt; ignoring the ring");
        }
    }

    /// How much of the ring the buffer can take now.
    fn room(&self) -> usize {
        let room = match self.out.overflow() {
            Overflow::Keep => self.out.space().min(CHUNK),
            Overflow::Discard => CHUNK,
        };
        match &self.bucket {
            Some(b) => room.min(usize::try_from(b.tokens).unwrap_or(usize::MAX)),
            None => room,
        }
    }

    /// The last drain was cut short at its budget: drain again (without
    /// waiting for an event, which may never come) once others are served.
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Moves guest output from the ring through the buffer to the sink, at
    /// most [`BUDGET`] bytes of it.
    pub fn drain(&mut self) {
        self.more = false;
        if self.throttled() {
            return;
        }
        if let Some(b) = self.bucket.as_mut() {
            b.refill();
        }
        let mut moved = 0;
        loop {
            if moved >= BUDGET {
                self.more = self.ring.out_pending().is_ok_and(|n| n > 0);
                break;
            }
            let mut room = self.room();
            // `keep` with a full buffer: make room by writing to the sink.
            if room == 0 && self.flush() {
                room = self.room();
            }
            if room == 0 {
                break;
            }
            let n = match self.ring.read_out(&mut self.scratch[..room]) {
                Ok(n) => n,
                Err(e) => {
                    self.bad_indices(&e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.write_log(n);
            // With nothing queued, hand the bytes to the sink directly and
            // buffer only what it does not take.
            let direct = if self.out.is_empty() && !self.sink_full {
                self.write_sink_direct(n)
            } else {
                0
            };
            let pushed = self.out.push(&self.scratch[direct..n]);
            if pushed.dropped > 0 {
                self.counters.add_dropped(pushed.dropped);
            }
            if let Err(e) = self.ring.consume_out(n) {
                self.bad_indices(&e);
                break;
            }
            moved += n;
            if let Some(b) = self.bucket.as_mut() {
                b.tokens = b.tokens.saturating_sub(n as u64);
            }
            self.notify();
        }
        self.limit_rate();
        self.flush();
    }

    /// Out of tokens with output waiting: stop listening to the guest until
    /// the timer says it may send again.
    fn limit_rate(&mut self) {
        let Some(b) = self.bucket.as_mut() else {
            return;
        };
        if b.tokens > 0 {
            return;
        }
        let pending = self.ring.out_pending().unwrap_or(0);
        if pending == 0 {
            return;
        }
        self.more = false;
        if let Err(e) = b.throttle(pending as u64) {
            tracing::warn!(console = %self.id, error = %e, "cannot arm the rate-limit timer");
        }
    }

    /// Writes `scratch[..n]` to the sink without buffering; returns how
    /// much it took.
    fn write_sink_direct(&mut self, n: usize) -> usize {
        let (took, stop) = write_some(self.sink.as_mut(), &self.scratch[..n]);
        self.account(took, stop);
        took
    }

    /// Counts what the sink took and follows why it stopped.
    fn account(&mut self, took: usize, stop: SinkStop) {
        if took > 0 {
            self.counters.add_bytes_out(took);
            self.sink_full = false;
            self.leave_backlog();
        }
        match stop {
            SinkStop::Took => {}
            SinkStop::Full => self.sink_full = true,
            SinkStop::Failed(e) => self.enter_backlog(&e),
        }
    }

    fn notify(&self) {
        if let Err(e) = self.evtchn.notify(self.port) {
            tracing::debug!(console = %self.id, error = %e, "notify failed");
        }
    }

    /// Writes buffered output to the sink until it is empty or would block;
    /// true if the sink took anything.
    pub fn flush(&mut self) -> bool {
        let mut freed = false;
        while !self.out.is_empty() {
            let (took, stop) = write_some(self.sink.as_mut(), self.out.front());
            self.out.consume(took);
            freed |= took > 0;
            let go_on = took > 0 && matches!(stop, SinkStop::Took);
            self.account(took, stop);
            if !go_on {
                break;
            }
        }
        freed
    }

    /// Flushes; with `keep`, room made in the buffer lets the ring move
    /// again (the guest may be waiting for it and will not signal).
    fn flush_and_resume(&mut self) {
        if self.flush() && self.out.overflow() == Overflow::Keep {
            self.drain();
        }
    }

    fn enter_backlog(&mut self, why: &std::io::Error) {
        if self.backlog_since.is_none() {
            self.backlog_since = Some(Instant::now());
            self.counters.backlog_event();
            tracing::info!(console = %self.id, reason = %why, buffered = self.out.len(), "sink unavailable: output is held in backlog");
        }
    }

    fn leave_backlog(&mut self) {
        if let Some(t) = self.backlog_since.take() {
            self.counters.add_backlog_time(t.elapsed());
            tracing::info!(console = %self.id, "sink back: backlog flushed");
        }
    }

    /// The sink became writable.
    pub fn on_sink_writable(&mut self) {
        self.sink_full = false;
        self.flush_and_resume();
    }

    /// The sink has input (or its peer hung up).
    pub fn on_sink_readable(&mut self) {
        let mut moved = 0;
        while moved < BUDGET {
            let free = match self.ring.in_free() {
                Ok(f) => f,
                Err(e) => return self.bad_in_ring(&e),
            };
            if free == 0 {
                self.in_full = true;
                return;
            }
            let want = free.min(self.scratch.len());
            match self.sink.read(&mut self.scratch[..want]) {
                Ok(0) => return self.enter_backlog(&std::io::ErrorKind::NotConnected.into()),
                Ok(n) => {
                    moved += n;
                    match self.ring.write_in(&self.scratch[..n]) {
                        Ok(w) => {
                            self.counters.add_bytes_in(w);
                            if w < n {
                                // Cannot happen: we read no more than was free.
                                tracing::warn!(console = %self.id, lost = n - w, "input did not fit the ring");
                            }
                        }
                        Err(e) => return self.bad_in_ring(&e),
                    }
                    self.notify();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return self.enter_backlog(&e),
            }
        }
    }

    /// `in` cannot be written: stop reading the sink (it would stay
    /// readable and wake the loop for ever) until the guest signals.
    fn bad_in_ring(&mut self, e: &RingError) {
        self.bad_indices(e);
        self.in_full = true;
    }

    /// A peer is waiting on a server sink.
    pub fn on_listen(&mut self) {
        match self.sink.accept() {
            Ok(()) => self.flush_and_resume(),
            Err(e) => {
                // The peer is still waiting (out of fds, say), so the
                // listener stays readable: stop watching it until the
                // guest's next event, or the loop would spin.
                tracing::warn!(console = %self.id, error = %e, "accepting a sink client failed");
                self.listen_failed = true;
            }
        }
    }

    /// Bytes held for the sink.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use platform::emu::{EmuGuest, EmuPlatform, Emulator};
    use platform::{DomId, GuestPlatform, Platform};

    use crate::reactor::Reactor;
    use crate::ring::{FrontendRing, IN_CONS_OFFSET, IN_PROD_OFFSET, OUT_SIZE};
    use crate::sink::null::NullSink;
    use crate::sink::SinkSpec;

    /// The event channel of a guest that writes again the moment it is told
    /// there is room in `out` (another vCPU in a tight loop), until it has
    /// written `left` more bytes. Nothing ever signals its fd.
    struct EagerGuest {
        fd: OwnedFd,
        ring: FrontendRing,
        left: AtomicUsize,
    }

    impl EagerGuest {
        fn refill(&self) {
            let left = self.left.load(Ordering::Relaxed);
            let n = self
                .ring
                .write_out(&[b'x'; OUT_SIZE][..left.min(OUT_SIZE)])
                .unwrap();
            self.left.fetch_sub(n, Ordering::Relaxed);
        }
    }

    impl AsFd for EagerGuest {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }

    impl EventChannels for EagerGuest {
        fn bind_interdomain(&mut self, _: DomId, p: EvtchnPort) -> platform::Result<EvtchnPort> {
            Ok(p)
        }
        fn alloc_unbound(&mut self, _: DomId) -> platform::Result<EvtchnPort> {
            Ok(EvtchnPort(1))
        }
        fn unbind(&mut self, _: EvtchnPort) -> platform::Result<()> {
            Ok(())
        }
        fn notify(&self, _: EvtchnPort) -> platform::Result<()> {
            self.refill();
            Ok(())
        }
        fn pending(&mut self, _: &mut Vec<EvtchnPort>) -> platform::Result<()> {
            Ok(())
        }
        fn unmask(&mut self, _: EvtchnPort) -> platform::Result<()> {
            Ok(())
        }
    }

    /// A sink someone keeps typing into.
    struct Typist(SinkSpec);

    impl Sink for Typist {
        fn spec(&self) -> &SinkSpec {
            &self.0
        }
        fn io_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            Ok(data.len())
        }
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(b'k');
            Ok(buf.len())
        }
        fn connected(&self) -> bool {
            true
        }
        fn accepts_input(&self) -> bool {
            true
        }
    }

    /// A console page mapped by an emulated guest (twice: one view for the
    /// eager writer, one for the test) and foreign-mapped by dom0.
    struct Fixture {
        backend: Option<ConsoleRing>,
        eager: Option<FrontendRing>,
        guest: FrontendRing,
        _clients: (EmuGuest, EmuPlatform),
        _emu: Emulator,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(dir.path().join("run")).unwrap();
        let d = emu.create_domain("io", 1).unwrap();
        let guest = EmuGuest::connect(emu.paths().xen_domain(d)).unwrap();
        let gfn = guest.start_info().unwrap().console_gfn;
        let eager = FrontendRing::new(guest.map_own_page(gfn).unwrap()).unwrap();
        let view = FrontendRing::new(guest.map_own_page(gfn).unwrap()).unwrap();
        let dom0 = EmuPlatform::connect(emu.paths().xen()).unwrap();
        let page = dom0.foreign_mapper().map_foreign(d, &[gfn], true).unwrap();
        Fixture {
            backend: Some(ConsoleRing::new(page).unwrap()),
            eager: Some(eager),
            guest: view,
            _clients: (guest, dom0),
            _emu: emu,
            _dir: dir,
        }
    }

    impl Fixture {
        /// A console whose guest keeps refilling `out` until it has
        /// written `total` bytes (the first ring-full is there already).
        fn eager_console(&mut self, total: usize, sink: Box<dyn Sink>) -> ConsoleIo {
            let evtchn = EagerGuest {
                fd: rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap(),
                ring: self.eager.take().unwrap(),
                left: AtomicUsize::new(total),
            };
            evtchn.refill();
            ConsoleIo::new(
                ConsoleId {
                    domid: DomId(1),
                    devid: 0,
                },
                self.backend.take().unwrap(),
                Box::new(evtchn),
                EvtchnPort(1),
                OutputBuffer::new(crate::device::DEFAULT_LIMIT, Overflow::Discard),
                sink,
                ConsoleCounters::shared(),
            )
        }
    }

    const FLOOD: usize = 8 << 20;

    #[test]
    fn a_guest_that_refills_its_ring_at_once_cannot_hold_the_loop() {
        let mut f = fixture();
        let mut io = f.eager_console(FLOOD, Box::new(NullSink::new()));

        io.drain();

        let moved = io.counters().snapshot().bytes_out;
        assert!(moved < 1 << 20, "one wakeup drained {moved} bytes");
    }

    #[test]
    fn the_reactor_comes_back_to_a_console_whose_drain_was_cut_short() {
        let mut f = fixture();
        let io = f.eager_console(FLOOD, Box::new(NullSink::new()));
        let counters = io.counters().clone();
        let mut reactor = Reactor::new().unwrap();
        reactor.add(io).unwrap();

        // No event ever comes from this guest's event channel: only the
        // reactor can finish the job.
        for _ in 0..10_000 {
            if counters.snapshot().bytes_out == FLOOD as u64 {
                break;
            }
            reactor.poll(Some(Duration::ZERO)).unwrap();
        }

        assert_eq!(counters.snapshot().bytes_out, FLOOD as u64);
    }

    #[test]
    fn corrupt_in_indices_stop_the_sink_being_watched_until_the_guest_signals() {
        let mut f = fixture();
        let typist = Box::new(Typist(SinkSpec::Null));
        let mut io = f.eager_console(0, typist);
        let raw = f.guest.pages();
        raw.store_u32(IN_CONS_OFFSET, 0, Ordering::Release).unwrap();
        raw.store_u32(IN_PROD_OFFSET, 5000, Ordering::Release)
            .unwrap();

        io.on_sink_readable();

        // Still watching a readable sink would wake the loop for ever.
        assert!(!io.interest().sink_read);
        io.on_event();
        assert!(io.interest().sink_read);
    }

    /// A server sink whose peer cannot be accepted (as when out of fds).
    struct Unacceptable {
        spec: SinkSpec,
        waiting: OwnedFd,
    }

    impl Sink for Unacceptable {
        fn spec(&self) -> &SinkSpec {
            &self.spec
        }
        fn io_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn listen_fd(&self) -> Option<BorrowedFd<'_>> {
            Some(self.waiting.as_fd())
        }
        fn accept(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(24))
        }
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::NotConnected.into())
        }
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::NotConnected.into())
        }
        fn connected(&self) -> bool {
            false
        }
        fn accepts_input(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_failing_accept_stops_the_listener_being_watched_until_the_guest_signals() {
        let mut f = fixture();
        let waiting = rustix::event::eventfd(1, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let sink = Box::new(Unacceptable {
            spec: SinkSpec::Null,
            waiting,
        });
        let mut io = f.eager_console(0, sink);
        assert!(io.interest().listen);

        io.on_listen();

        // The listener is still readable; watching it would spin the loop.
        assert!(!io.interest().listen);
        io.on_event();
        assert!(io.interest().listen);
    }
}
