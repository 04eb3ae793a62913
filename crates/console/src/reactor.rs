//! The data-plane reactor: one epoll set, level-triggered, for many
//! consoles and a few outside sources (the XenStore watch fd, a wake fd).
//!
//! Tokens pack `{generation, slot, kind}` into epoll's `u64`, so an event
//! still queued for a console that was removed is recognised as stale and
//! never reaches whichever console reuses the slot. Interest follows each
//! console's flow control ([`Interest`]): a source with nothing to do is
//! taken out of the set, so an idle console costs no wake-ups.
//!
//! A sink's peer comes and goes (a pty stays; a socket client reconnects),
//! so the reactor registers its own duplicate of the sink's descriptor:
//! the registration is then tied to a file this reactor owns, and can be
//! removed safely even after the sink closed its copy. A sink changes its
//! descriptor only inside a handler (a peer hangs up, or one is accepted),
//! and the reactor resyncs after every handler, so a descriptor number
//! seen again at the next resync is the same file.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::epoll;

use crate::io::{ConsoleIo, Interest};

const KIND_EXTERNAL: u64 = 0;
const KIND_EVTCHN: u64 = 1;
const KIND_SINK: u64 = 2;
const KIND_LISTEN: u64 = 3;
const KIND_TIMER: u64 = 4;

/// Names a console in the reactor; stale once it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsoleHandle {
    slot: u32,
    generation: u32,
}

/// What became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// An outside source registered with [`Reactor::add_external`].
    External(u32),
    /// A console's sources were serviced.
    Console(ConsoleHandle),
}

struct Registration {
    dup: OwnedFd,
    number: RawFd,
    flags: epoll::EventFlags,
}

struct Slot {
    generation: u32,
    io: Option<ConsoleIo>,
    evtchn_flags: epoll::EventFlags,
    sink: Option<Registration>,
    listen: Option<Registration>,
    timer: Option<Registration>,
}

pub struct Reactor {
    epoll: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Consoles whose drain stopped at its budget ([`ConsoleIo::has_more`]):
    /// served again on the next poll, after whatever else is ready.
    again: Vec<ConsoleHandle>,
}

fn token(h: ConsoleHandle, kind: u64) -> epoll::EventData {
    epoll::EventData::new_u64((u64::from(h.generation) << 40) | (u64::from(h.slot) << 8) | kind)
}

fn flags_for(read: bool, write: bool) -> epoll::EventFlags {
    let mut f = epoll::EventFlags::empty();
    if read {
        f |= epoll::EventFlags::IN;
    }
    if write {
        f |= epoll::EventFlags::OUT;
    }
    f
}

impl Reactor {
    pub fn new() -> std::io::Result<Reactor> {
        Ok(Reactor {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            slots: Vec::new(),
            free: Vec::new(),
            again: Vec::new(),
        })
    }

    /// Watches an outside descriptor for input; `Ready::External(token)`.
    pub fn add_external(&mut self, fd: BorrowedFd<'_>, token: u32) -> std::io::Result<()> {
        let data = epoll::EventData::new_u64((u64::from(token) << 8) | KIND_EXTERNAL);
        epoll::add(&self.epoll, fd, data, epoll::EventFlags::IN)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts serving a console.
    pub fn add(&mut self, io: ConsoleIo) -> std::io::Result<ConsoleHandle> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    io: None,
                    evtchn_flags: epoll::EventFlags::empty(),
                    sink: None,
                    listen: None,
                    timer: None,
                });
                u32::try_from(self.slots.len() - 1)
                    .map_err(|_| std::io::Error::other("too many consoles"))?
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = (s.generation + 1) & 0x00ff_ffff;
        let h = ConsoleHandle {
            slot,
            generation: s.generation,
        };
        epoll::add(
            &self.epoll,
            io.evtchn().as_fd(),
            token(h, KIND_EVTCHN),
            epoll::EventFlags::IN,
        )?;
        s.evtchn_flags = epoll::EventFlags::IN;
        s.io = Some(io);
        self.resync(h);
        // Output the guest wrote before we connected is waiting already.
        if let Some(io) = self.get_mut(h) {
            io.drain();
        }
        self.resync(h);
        Ok(h)
    }

    /// Stops serving a console and hands it back.
    pub fn remove(&mut self, h: ConsoleHandle) -> Option<ConsoleIo> {
        let s = self.slots.get_mut(h.slot as usize)?;
        if s.generation != h.generation {
            return None;
        }
        let io = s.io.take()?;
        let _ = epoll::delete(&self.epoll, io.evtchn().as_fd());
        for r in [s.sink.take(), s.listen.take(), s.timer.take()]
            .into_iter()
            .flatten()
        {
            let _ = epoll::delete(&self.epoll, &r.dup);
        }
        self.free.push(h.slot);
        Some(io)
    }

    pub fn get(&self, h: ConsoleHandle) -> Option<&ConsoleIo> {
        let s = self.slots.get(h.slot as usize)?;
        (s.generation == h.generation)
            .then_some(s.io.as_ref())
            .flatten()
    }

    pub fn get_mut(&mut self, h: ConsoleHandle) -> Option<&mut ConsoleIo> {
        let s = self.slots.get_mut(h.slot as usize)?;
        if s.generation != h.generation {
            return None;
        }
        s.io.as_mut()
    }

    pub fn handles(&self) -> Vec<ConsoleHandle> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.io.is_some())
            .filter_map(|(i, s)| {
                Some(ConsoleHandle {
                    slot: u32::try_from(i).ok()?,
                    generation: s.generation,
                })
            })
            .collect()
    }

    /// Waits for events (forever if `timeout` is `None`), services the
    /// consoles they concern, and returns what was ready.
    pub fn poll(&mut self, timeout: Option<Duration>) -> std::io::Result<Vec<Ready>> {
        // Allocated per wait: epoll's event type holds a pointer and so
        // cannot live in a reactor that moves to its thread.
        let mut buf: Vec<epoll::Event> = Vec::with_capacity(256);
        let again = std::mem::take(&mut self.again);
        // Work is waiting already: only look at what else is ready.
        let timeout = if again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut buf),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {
                self.again = again;
                return Ok(Vec::new());
            }
            Err(e) => {
                self.again = again;
                return Err(e.into());
            }
        }
        let events: Vec<(u64, epoll::EventFlags)> =
            buf.iter().map(|e| (e.data.u64(), e.flags)).collect();
        let mut ready = Vec::with_capacity(events.len());
        for (data, flags) in events {
            let kind = data & 0xff;
            if kind == KIND_EXTERNAL {
                ready.push(Ready::External(
                    u32::try_from(data >> 8).unwrap_or(u32::MAX),
                ));
                continue;
            }
            let h = ConsoleHandle {
                slot: u32::try_from((data >> 8) & 0xffff_ffff).unwrap_or(u32::MAX),
                generation: u32::try_from(data >> 40).unwrap_or(u32::MAX),
            };
            let Some(io) = self.get_mut(h) else {
                continue; // stale: the console went away
            };
            match kind {
                KIND_EVTCHN => io.on_event(),
                KIND_SINK => {
                    if flags.intersects(epoll::EventFlags::OUT) {
                        io.on_sink_writable();
                    }
                    if flags.intersects(
                        epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
                    ) {
                        io.on_sink_readable();
                    }
                }
                KIND_LISTEN => io.on_listen(),
                KIND_TIMER => io.on_timer(),
                _ => {}
            }
            self.resync(h);
            ready.push(Ready::Console(h));
        }
        for h in again {
            let Some(io) = self.get_mut(h) else {
                continue; // went away meanwhile
            };
            if io.has_more() {
                io.drain();
            }
            self.resync(h);
            ready.push(Ready::Console(h));
        }
        Ok(ready)
    }

    /// Brings the epoll set in line with what the console wants now.
    pub fn resync(&mut self, h: ConsoleHandle) {
        let Some(s) = self.slots.get_mut(h.slot as usize) else {
            return;
        };
        let Some(io) = s.io.as_ref() else {
            return;
        };
        if s.generation != h.generation {
            return;
        }
        if io.has_more() && !self.again.contains(&h) {
            self.again.push(h);
        }
        let want: Interest = io.interest();
        let ev_flags = flags_for(want.evtchn, false);
        if ev_flags != s.evtchn_flags
            && epoll::modify(
                &self.epoll,
                io.evtchn().as_fd(),
                token(h, KIND_EVTCHN),
                ev_flags,
            )
            .is_ok()
        {
            s.evtchn_flags = ev_flags;
        }
        let sink_fd = io.sink().io_fd();
        sync_one(
            &self.epoll,
            &mut s.sink,
            sink_fd,
            flags_for(want.sink_read, want.sink_write),
            token(h, KIND_SINK),
        );
        let listen_fd = io.sink().listen_fd();
        sync_one(
            &self.epoll,
            &mut s.listen,
            listen_fd,
            flags_for(want.listen, false),
            token(h, KIND_LISTEN),
        );
        sync_one(
            &self.epoll,
            &mut s.timer,
            io.timer_fd(),
            flags_for(want.timer, false),
            token(h, KIND_TIMER),
        );
    }
}

/// Keeps one registration matching `fd` and `flags`: none when there is
/// nothing to wait for (so a hung-up socket cannot spin the loop).
fn sync_one(
    epfd: &OwnedFd,
    reg: &mut Option<Registration>,
    fd: Option<BorrowedFd<'_>>,
    flags: epoll::EventFlags,
    data: epoll::EventData,
) {
    let same_file = |r: &Registration, fd: BorrowedFd<'_>| r.number == fd.as_raw_fd();
    match (reg.as_mut(), fd) {
        (Some(r), Some(fd)) if same_file(r, fd) => {
            if flags.is_empty() {
                let _ = epoll::delete(epfd, &r.dup);
                *reg = None;
            } else if r.flags != flags && epoll::modify(epfd, &r.dup, data, flags).is_ok() {
                r.flags = flags;
            }
        }
        (old, fd) => {
            if let Some(r) = old {
                let _ = epoll::delete(epfd, &r.dup);
            }
            *reg = None;
            let Some(fd) = fd else {
                return;
            };
            if flags.is_empty() {
                return;
            }
            let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else {
                return;
            };
            if epoll::add(epfd, &dup, data, flags).is_ok() {
                *reg = Some(Registration {
                    number: fd.as_raw_fd(),
                    dup,
                    flags,
                });
            }
        }
    }
}
