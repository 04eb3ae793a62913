//! The watch-event queue.
//!
//! The reader thread pushes every `WATCH_EVENT` here in arrival order; a
//! consumer takes them with [`WatchEvents`]. Invariant, kept under the queue
//! lock: the eventfd counter is non-zero exactly while events are queued or
//! the connection is closed, so an epoll reactor can wait on
//! [`WatchEvents::as_fd`] level-triggered and never miss or spin.
//!
//! The queue is bounded ([`MAX_QUEUED_EVENTS`]): guests can make events by
//! writing under watched paths, and a stalled consumer must not turn that
//! into unbounded memory. Overflowing events are dropped and counted; a
//! consumer that sees [`WatchEvents::dropped`] grow must rescan (re-watching
//! fires every watch once).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};

use super::Error;
use crate::wire::split_strings;

/// Events held before new ones are dropped.
pub const MAX_QUEUED_EVENTS: usize = 65536;

/// One fired watch: the node that changed and the token given to `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: Vec<u8>,
}

impl WatchEvent {
    /// Parses a `WATCH_EVENT` payload, `<path>\0<token>\0`.
    pub fn parse(payload: &[u8]) -> Option<WatchEvent> {
        let (parts, _) = split_strings(payload);
        let (path, token) = (parts.first()?, parts.get(1)?);
        Some(WatchEvent {
            path: String::from_utf8(path.to_vec()).ok()?,
            token: token.to_vec(),
        })
    }
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<WatchEvent>,
    closed: bool,
    dropped: u64,
}

/// Shared between the reader thread and every [`WatchEvents`] handle.
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: Mutex<Queue>,
    ready: Condvar,
    fd: OwnedFd,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventQueue {
    pub(crate) fn new() -> io::Result<EventQueue> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventQueue {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            fd,
        })
    }

    pub(crate) fn push(&self, event: WatchEvent) {
        let mut q = lock(&self.queue);
        if q.events.len() >= MAX_QUEUED_EVENTS {
            q.dropped += 1;
            let path = &event.path;
            tracing::warn!(%path, dropped = q.dropped, "watch event queue full, dropped");
            return;
        }
        if q.events.is_empty() && !q.closed {
            self.signal();
        }
        q.events.push_back(event);
        self.ready.notify_all();
    }

    /// No more events will come; wakes every waiter and the eventfd.
    pub(crate) fn close(&self) {
        let mut q = lock(&self.queue);
        if !q.closed && q.events.is_empty() {
            self.signal();
        }
        q.closed = true;
        self.ready.notify_all();
    }

    fn signal(&self) {
        if let Err(e) = rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            tracing::warn!(error = %e, "cannot signal watch eventfd");
        }
    }

    /// Takes the next event, keeping the eventfd invariant.
    fn pop(&self, q: &mut Queue) -> Option<Result<WatchEvent, Error>> {
        let Some(event) = q.events.pop_front() else {
            return q.closed.then_some(Err(Error::Closed));
        };
        if q.events.is_empty() && !q.closed {
            // EAGAIN just means the counter is already zero.
            let _ = rustix::io::read(&self.fd, &mut [0u8; 8]);
        }
        Some(Ok(event))
    }
}

/// A consumer's handle on the watch events of one client. Several handles
/// share one queue: each event goes to exactly one of them. A handle may
/// outlive its client; it then yields the events already queued, then
/// [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct WatchEvents {
    queue: Arc<EventQueue>,
}

impl WatchEvents {
    pub(crate) fn new(queue: Arc<EventQueue>) -> WatchEvents {
        WatchEvents { queue }
    }

    /// The next event if one is queued; `Ok(None)` if none is;
    /// `Err(Closed)` once the connection is gone and the queue is empty.
    pub fn try_recv(&self) -> Result<Option<WatchEvent>, Error> {
        let mut q = lock(&self.queue.queue);
        self.queue.pop(&mut q).transpose()
    }

    /// Waits up to `timeout` for an event; `Ok(None)` when it expires.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        let deadline = Instant::now().checked_add(timeout);
        let mut q = lock(&self.queue.queue);
        loop {
            if let Some(r) = self.queue.pop(&mut q) {
                return r.map(Some);
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if wait.is_zero() {
                return Ok(None);
            }
            q = self
                .queue
                .ready
                .wait_timeout(q, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Events lost because the queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.queue.queue).dropped
    }

    /// An fd that polls readable while events are queued or the connection
    /// is closed. Do not read it: the handle drains it itself.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.fd.as_fd()
    }
}

impl AsFd for WatchEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{poll, PollFd, PollFlags};

    fn readable(events: &WatchEvents) -> bool {
        let mut fds = [PollFd::new(events, PollFlags::IN)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    fn event(path: &str) -> WatchEvent {
        WatchEvent {
            path: path.into(),
            token: b"t".to_vec(),
        }
    }

    #[test]
    fn parse_takes_path_and_token() {
        assert_eq!(
            WatchEvent::parse(b"/a/b\0tok\0"),
            Some(event_tok("/a/b", b"tok"))
        );
        assert_eq!(WatchEvent::parse(b"/a/b\0"), None);
        assert_eq!(WatchEvent::parse(b"\xff\0t\0"), None);
    }

    fn event_tok(path: &str, token: &[u8]) -> WatchEvent {
        WatchEvent {
            path: path.into(),
            token: token.to_vec(),
        }
    }

    #[test]
    fn fd_is_readable_exactly_while_events_are_queued() {
        let events = WatchEvents::new(Arc::new(EventQueue::new().unwrap()));
        assert!(!readable(&events));
        events.queue.push(event("/a"));
        events.queue.push(event("/b"));
        assert!(readable(&events));
        assert_eq!(events.try_recv().unwrap(), Some(event("/a")));
        assert!(readable(&events));
        assert_eq!(events.try_recv().unwrap(), Some(event("/b")));
        assert!(!readable(&events));
        assert_eq!(events.try_recv().unwrap(), None);
    }

    #[test]
    fn close_delivers_queued_events_then_closed_and_stays_readable() {
        let events = WatchEvents::new(Arc::new(EventQueue::new().unwrap()));
        events.queue.push(event("/a"));
        events.queue.close();
        assert_eq!(events.try_recv().unwrap(), Some(event("/a")));
        assert!(readable(&events));
        assert!(matches!(events.try_recv(), Err(Error::Closed)));
        assert!(matches!(
            events.recv_timeout(Duration::from_secs(5)),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn recv_timeout_expires_with_none() {
        let events = WatchEvents::new(Arc::new(EventQueue::new().unwrap()));
        let start = Instant::now();
        assert_eq!(
            events.recv_timeout(Duration::from_millis(50)).unwrap(),
            None
        );
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let events = WatchEvents::new(Arc::new(EventQueue::new().unwrap()));
        for _ in 0..MAX_QUEUED_EVENTS + 3 {
            events.queue.push(event("/a"));
        }
        assert_eq!(events.dropped(), 3);
    }
}
