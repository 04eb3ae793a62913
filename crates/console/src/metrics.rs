//! Per-console counters.
//!
//! Each console owns one [`ConsoleCounters`], shared as
//! `Arc<ConsoleCounters>` with whatever collects them (the registry behind
//! `ctl stats`); there are no process-wide statics, so a test reads absolute
//! values. Counters only grow, each independently: `Relaxed` is enough, and a
//! [`snapshot`](ConsoleCounters::snapshot) is a set of values each read
//! atomically, not one atomic picture of all of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Live counters of one console.
#[derive(Debug, Default)]
pub struct ConsoleCounters {
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    dropped: AtomicU64,
    bad_index_events: AtomicU64,
    backlog_events: AtomicU64,
    backlog_ns: AtomicU64,
    throttled_ns: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Guest output bytes delivered to the sink.
    pub bytes_out: u64,
    /// Input bytes put into the guest's `in` ring.
    pub bytes_in: u64,
    /// Guest output bytes discarded (overflow policy `discard`).
    pub dropped: u64,
    /// Times the ring indices were found corrupt.
    pub bad_index_events: u64,
    /// Times output started to pile up because the sink was absent or full.
    pub backlog_events: u64,
    /// Total time spent in backlog.
    pub backlog_ns: u64,
    /// Total time the guest's event channel was left masked by rate limiting.
    pub throttled_ns: u64,
}

fn saturating_u64(n: impl TryInto<u64>) -> u64 {
    n.try_into().unwrap_or(u64::MAX)
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl ConsoleCounters {
    /// Fresh zeroed counters, ready to share.
    pub fn shared() -> Arc<ConsoleCounters> {
        Arc::new(ConsoleCounters::default())
    }

    pub fn add_bytes_out(&self, n: usize) {
        add(&self.bytes_out, saturating_u64(n));
    }

    pub fn add_bytes_in(&self, n: usize) {
        add(&self.bytes_in, saturating_u64(n));
    }

    pub fn add_dropped(&self, n: usize) {
        add(&self.dropped, saturating_u64(n));
    }

    pub fn bad_index_event(&self) {
        add(&self.bad_index_events, 1);
    }

    pub fn backlog_event(&self) {
        add(&self.backlog_events, 1);
    }

    pub fn add_backlog_time(&self, d: Duration) {
        add(&self.backlog_ns, saturating_u64(d.as_nanos()));
    }

    pub fn add_throttled_time(&self, d: Duration) {
        add(&self.throttled_ns, saturating_u64(d.as_nanos()));
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            bytes_out: get(&self.bytes_out),
            bytes_in: get(&self.bytes_in),
            dropped: get(&self.dropped),
            bad_index_events: get(&self.bad_index_events),
            backlog_events: get(&self.backlog_events),
            backlog_ns: get(&self.backlog_ns),
            throttled_ns: get(&self.throttled_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reports_what_was_counted() {
        let c = ConsoleCounters::shared();
        let writer = Arc::clone(&c);

        writer.add_bytes_out(100);
        writer.add_bytes_out(20);
        writer.add_bytes_in(3);
        writer.add_dropped(7);
        writer.bad_index_event();
        writer.backlog_event();
        writer.backlog_event();
        writer.add_backlog_time(Duration::from_micros(5));
        writer.add_throttled_time(Duration::from_nanos(9));

        let expected = CounterSnapshot {
            bytes_out: 120,
            bytes_in: 3,
            dropped: 7,
            bad_index_events: 1,
            backlog_events: 2,
            backlog_ns: 5_000,
            throttled_ns: 9,
        };
        assert_eq!(c.snapshot(), expected);
    }

    #[test]
    fn two_consoles_count_separately() {
        let a = ConsoleCounters::shared();
        let b = ConsoleCounters::shared();

        a.add_bytes_out(1);

        assert_eq!(a.snapshot().bytes_out, 1);
        assert_eq!(b.snapshot(), CounterSnapshot::default());
    }

    #[test]
    fn counts_from_many_threads_all_land() {
        let c = ConsoleCounters::shared();

        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| c.add_bytes_in(2)));
            }
        });

        assert_eq!(c.snapshot().bytes_in, 8000);
    }
}
