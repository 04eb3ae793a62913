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
}

/// Largest chunk moved per step; the `out` ring is 2 KiB, the sink read
/// keeps a little more in flight.
const CHUNK: usize = 4096;

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
            log: None,
            log_failed: false,
            scratch: vec![0; CHUNK],
        }
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
        if let Err(e) = log.write(&self.scratch[..n]) {
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

    pub fn interest(&self) -> Interest {
        let keep_full = self.out.overflow() == Overflow::Keep && self.out.space() == 0;
        Interest {
            evtchn: !keep_full,
            sink_read: self.sink.accepts_input() && self.sink.connected() && !self.in_full,
            sink_write: self.sink_full && !self.out.is_empty(),
            listen: self.sink.listen_fd().is_some(),
        }
    }

    /// The guest signalled: output to drain, or input consumed.
    pub fn on_event(&mut self) {
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

    /// Moves guest output from the ring through the buffer to the sink.
    pub fn drain(&mut self) {
        loop {
            let room = match self.out.overflow() {
                Overflow::Keep => self.out.space().min(CHUNK),
                Overflow::Discard => CHUNK,
            };
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
            self.notify();
        }
        self.flush();
    }

    /// Writes `scratch[..n]` to the sink without buffering; returns how
    /// much it took.
    fn write_sink_direct(&mut self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            match self.sink.write(&self.scratch[done..n]) {
                Ok(0) => break,
                Ok(k) => {
                    done += k;
                    self.counters.add_bytes_out(k);
                    self.leave_backlog();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.sink_full = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.enter_backlog(&e);
                    break;
                }
            }
        }
        done
    }

    fn notify(&self) {
        if let Err(e) = self.evtchn.notify(self.port) {
            tracing::debug!(console = %self.id, error = %e, "notify failed");
        }
    }

    /// Writes buffered output to the sink until it is empty or would block.
    pub fn flush(&mut self) {
        let mut freed = false;
        while !self.out.is_empty() {
            match self.sink.write(self.out.front()) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.consume(n);
                    self.counters.add_bytes_out(n);
                    self.sink_full = false;
                    freed = true;
                    self.leave_backlog();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.sink_full = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.enter_backlog(&e);
                    break;
                }
            }
        }
        // With `keep`, room in the buffer means the ring can move again.
        if freed
            && self.out.overflow() == Overflow::Keep
            && self.ring.out_pending().unwrap_or(0) > 0
        {
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
        self.flush();
    }

    /// The sink has input (or its peer hung up).
    pub fn on_sink_readable(&mut self) {
        loop {
            let free = match self.ring.in_free() {
                Ok(f) => f,
                Err(e) => {
                    self.bad_indices(&e);
                    return;
                }
            };
            if free == 0 {
                self.in_full = true;
                return;
            }
            let want = free.min(self.scratch.len());
            match self.sink.read(&mut self.scratch[..want]) {
                Ok(0) => return self.enter_backlog(&std::io::ErrorKind::NotConnected.into()),
                Ok(n) => {
                    match self.ring.write_in(&self.scratch[..n]) {
                        Ok(w) => {
                            self.counters.add_bytes_in(w);
                            if w < n {
                                // Cannot happen: we read no more than was free.
                                tracing::warn!(console = %self.id, lost = n - w, "input did not fit the ring");
                            }
                        }
                        Err(e) => return self.bad_indices(&e),
                    }
                    self.notify();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return self.enter_backlog(&e),
            }
        }
    }

    /// A peer is waiting on a server sink.
    pub fn on_listen(&mut self) {
        match self.sink.accept() {
            Ok(()) => self.flush(),
            Err(e) => tracing::debug!(console = %self.id, error = %e, "accept failed"),
        }
    }

    /// Bytes held for the sink.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }
}
