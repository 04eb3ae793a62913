//! Guest output on its way from the `out` ring to a sink.
//!
//! The buffer is bounded by the console's `limit` (libxl writes 1 MiB into
//! the frontend's `limit` node) and what happens at the bound is the
//! console's [`Overflow`] policy, as in xenconsoled's `--overflow-data`:
//!
//! * [`Overflow::Keep`]: [`OutputBuffer::space`] is `limit - len`; the
//!   device drains at most that much of the ring, and stops draining at 0, so
//!   the guest's ring fills and the guest waits. Nothing is lost.
//! * [`Overflow::Discard`]: every push is accepted, so the ring is always
//!   drained and a guest never blocks on a stalled sink; past the limit the
//!   *oldest* buffered bytes are dropped and counted in
//!   [`OutputBuffer::dropped`].
//!
//! Invariants: `len() <= limit()` after every call; bytes leave in the order
//! they came (minus, with `Discard`, a dropped prefix); the allocation stays
//! below twice the limit plus one push, and shrinks back when the buffer
//! empties after a burst.

use std::fmt;
use std::str::FromStr;

/// Capacity kept by an emptied buffer that had grown past [`SHRINK_ABOVE`].
const IDLE_CAPACITY: usize = 4096;
const SHRINK_ABOVE: usize = 64 * 1024;

/// What to do with guest output that does not fit under the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the oldest buffered bytes (xenconsoled's default).
    #[default]
    Discard,
    /// Stop draining the ring until the sink takes bytes.
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown overflow policy {0:?}: expected `discard` or `keep`")]
pub struct BadOverflow(pub String);

impl FromStr for Overflow {
    type Err = BadOverflow;
    fn from_str(s: &str) -> Result<Overflow, BadOverflow> {
        match s {
            "discard" => Ok(Overflow::Discard),
            "keep" => Ok(Overflow::Keep),
            other => Err(BadOverflow(other.to_owned())),
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overflow::Discard => "discard",
            Overflow::Keep => "keep",
        })
    }
}

/// What one [`OutputBuffer::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// Bytes taken from the argument (less than offered only with `Keep`).
    pub accepted: usize,
    /// Older bytes dropped to make room (only with `Discard`).
    pub dropped: usize,
}

/// A bounded FIFO of bytes with a single contiguous readable front.
#[derive(Debug)]
pub struct OutputBuffer {
    /// Live bytes are `buf[head..]`; the consumed prefix is reclaimed lazily
    /// so that `front` is always one slice (one `write` to the sink).
    buf: Vec<u8>,
    head: usize,
    limit: usize,
    overflow: Overflow,
    dropped: u64,
}

impl OutputBuffer {
    /// A buffer of at most `limit` bytes (at least 1: a zero limit with
    /// `Keep` would stall the guest for ever).
    pub fn new(limit: usize, overflow: Overflow) -> OutputBuffer {
        OutputBuffer {
            buf: Vec::new(),
            head: 0,
            limit: limit.max(1),
            overflow,
            dropped: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How much the next push takes without dropping anything. With `Keep`
    /// the device drains no more than this from the ring.
    pub fn space(&self) -> usize {
        self.limit - self.len()
    }

    /// Bytes dropped so far (`Discard` only).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends guest output. `Keep` takes what fits; `Discard` takes all of
    /// it and drops the oldest bytes beyond the limit.
    pub fn push(&mut self, data: &[u8]) -> Pushed {
        match self.overflow {
            Overflow::Keep => {
                let accepted = data.len().min(self.space());
                self.append(&data[..accepted]);
                Pushed {
                    accepted,
                    dropped: 0,
                }
            }
            Overflow::Discard => {
                let excess = (self.len() + data.len()).saturating_sub(self.limit);
                // Drop from what is buffered first, then from the front of
                // `data` itself if it alone exceeds the limit.
                let from_buffer = excess.min(self.len());
                self.consume(from_buffer);
                let from_data = excess - from_buffer;
                self.append(&data[from_data..]);
                self.dropped += u64::try_from(excess).unwrap_or(u64::MAX);
                Pushed {
                    accepted: data.len(),
                    dropped: excess,
                }
            }
        }
    }

    /// The oldest buffered bytes, as one slice (empty when nothing waits).
    pub fn front(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    /// Removes `n` bytes from the front (what the sink took); more than
    /// `len()` empties the buffer.
    pub fn consume(&mut self, n: usize) {
        self.head += n.min(self.len());
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
            // An idle console should not keep the memory of its last burst.
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf.shrink_to(IDLE_CAPACITY);
            }
        }
    }

    /// Forgets everything buffered (the domain died); returns how much.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        self.consume(n);
        n
    }

    fn append(&mut self, data: &[u8]) {
        // Reclaim the consumed prefix rather than grow, and once it is at
        // least as long as what is live: each live byte then moves at most
        // once per byte consumed before it (amortised O(1) per byte).
        let must_grow = self.buf.len() + data.len() > self.buf.capacity();
        if self.head > 0 && (must_grow || self.head >= self.len()) {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn keep_takes_only_what_fits_and_reports_no_space_when_full() {
        let mut b = OutputBuffer::new(8, Overflow::Keep);

        let first = b.push(b"hello");
        let second = b.push(b"world");

        assert_eq!(first.accepted, 5);
        assert_eq!(
            second,
            Pushed {
                accepted: 3,
                dropped: 0
            }
        );
        assert_eq!(b.front(), b"hellowor");
        assert_eq!(b.space(), 0);
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn discard_drops_the_oldest_bytes_and_counts_them() {
        let mut b = OutputBuffer::new(8, Overflow::Discard);

        b.push(b"hello");
        let second = b.push(b"world");

        assert_eq!(
            second,
            Pushed {
                accepted: 5,
                dropped: 2
            }
        );
        assert_eq!(b.front(), b"lloworld");
        assert_eq!(b.dropped(), 2);
    }

    #[test]
    fn discard_keeps_the_tail_of_a_push_larger_than_the_limit() {
        let mut b = OutputBuffer::new(4, Overflow::Discard);
        b.push(b"ab");

        let p = b.push(b"0123456789");

        assert_eq!(
            p,
            Pushed {
                accepted: 10,
                dropped: 8
            }
        );
        assert_eq!(b.front(), b"6789");
        assert_eq!(b.dropped(), 8);
    }

    #[test]
    fn consume_frees_space_and_front_stays_contiguous() {
        let mut b = OutputBuffer::new(6, Overflow::Keep);
        b.push(b"abcdef");

        b.consume(4);
        b.push(b"ghij");

        assert_eq!(b.front(), b"efghij");
        assert_eq!(b.len(), 6);
    }

    #[test]
    fn a_zero_limit_is_raised_to_one_byte() {
        let b = OutputBuffer::new(0, Overflow::Keep);

        assert_eq!((b.limit(), b.space()), (1, 1));
    }

    #[test]
    fn overflow_policies_round_trip_as_text() {
        assert_eq!("keep".parse(), Ok(Overflow::Keep));
        assert_eq!("discard".parse(), Ok(Overflow::Discard));
        assert_eq!(Overflow::Keep.to_string(), "keep");
        let err = "drop".parse::<Overflow>().unwrap_err().to_string();
        assert!(err.contains("\"drop\""), "{err}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(Vec<u8>),
        Consume(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Push),
            (0usize..400).prop_map(Op::Consume),
        ];
        proptest::collection::vec(op, 0..200)
    }

    proptest! {
        #[test]
        fn keep_moves_every_accepted_byte_in_order(limit in 1usize..700, ops in ops()) {
            let mut b = OutputBuffer::new(limit, Overflow::Keep);
            let (mut accepted, mut out) = (Vec::new(), Vec::new());
            for op in ops {
                match op {
                    Op::Push(data) => {
                        let space = b.space();
                        let p = b.push(&data);
                        prop_assert_eq!(p.accepted, data.len().min(space));
                        prop_assert_eq!(p.dropped, 0);
                        accepted.extend_from_slice(&data[..p.accepted]);
                    }
                    Op::Consume(n) => {
                        let n = n.min(b.front().len());
                        out.extend_from_slice(&b.front()[..n]);
                        b.consume(n);
                    }
                }
                prop_assert!(b.len() <= limit);
                prop_assert_eq!(b.space(), limit - b.len());
            }
            out.extend_from_slice(b.front());
            prop_assert_eq!(out, accepted);
            prop_assert_eq!(b.dropped(), 0);
        }

        #[test]
        fn discard_keeps_the_newest_bytes_and_accounts_for_every_byte(
            limit in 1usize..700,
            ops in ops(),
        ) {
            let mut b = OutputBuffer::new(limit, Overflow::Discard);
            let mut model: VecDeque<u8> = VecDeque::new();
            let (mut pushed, mut consumed) = (0usize, 0usize);
            for op in ops {
                match op {
                    Op::Push(data) => {
                        let p = b.push(&data);
                        prop_assert_eq!(p.accepted, data.len());
                        model.extend(&data);
                        let excess = model.len().saturating_sub(limit);
                        model.drain(..excess);
                        prop_assert_eq!(p.dropped, excess);
                        pushed += data.len();
                    }
                    Op::Consume(n) => {
                        let n = n.min(b.len());
                        model.drain(..n);
                        b.consume(n);
                        consumed += n;
                    }
                }
                prop_assert!(b.len() <= limit);
                prop_assert!(b.front().iter().eq(model.iter()));
                let dropped = usize::try_from(b.dropped()).unwrap();
                prop_assert_eq!(pushed, consumed + dropped + b.len());
                prop_assert!(b.buf.capacity() <= 2 * (limit + 300));
            }
        }
    }
}
