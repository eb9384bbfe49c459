//! Monotonic ULID generation, one generator per ingest connection.
//!
//! Entropy is a count, not fresh random bits: each process draws one random 79-bit base at its
//! first ID, and every ID it makes takes the next number above it (generators reserve runs of
//! [`RUN`] numbers, so connections do not share a counter's cache line per record). IDs from
//! two processes differ with overwhelming probability (two random bases 2^79 apart at most, a
//! process counts far fewer than 2^64), and within a process they never repeat. The random
//! bits that a fresh draw per record would add cannot be compressed (10 bytes per record, most
//! of a compressed record); a count stored as its difference from the record before is a few
//! bits (the v4 segment format, `segment/columns.rs`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ULID_LEN, encode_ulid};

/// The process's base entropy: top bit clear, leaving 2^79 numbers above it.
fn base() -> u128 {
    static BASE: OnceLock<u128> = OnceLock::new();
    *BASE.get_or_init(|| rand::random::<u128>() & ((1u128 << 79) - 1))
}

/// Numbers handed out so far by this process.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Numbers a generator reserves at once.
const RUN: u64 = 4096;

/// Generates strictly increasing ULIDs for one connection.
///
/// Within a millisecond, or when the clock goes backwards, the previous millisecond is kept
/// and the entropy (always growing) orders the IDs, so a connection's segment is always sorted.
#[derive(Debug, Default)]
pub struct UlidGenerator {
    last_ms: u64,
    /// The next number of the reserved run, and its end.
    next: u64,
    end: u64,
}

impl UlidGenerator {
    /// A generator with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next entropy: one above the last this generator made.
    #[inline]
    fn entropy(&mut self) -> u128 {
        if self.next == self.end {
            self.next = COUNT.fetch_add(RUN, Ordering::Relaxed);
            self.end = self.next + RUN;
        }
        let n = self.next;
        self.next += 1;
        base() + u128::from(n)
    }

    /// The next ULID, at `now_ms` or just after the previous one, whichever is later.
    #[inline]
    pub fn next(&mut self, now_ms: u64) -> [u8; ULID_LEN] {
        self.last_ms = self.last_ms.max(now_ms);
        let e = self.entropy();
        encode_ulid(self.last_ms, e)
    }

    /// A ULID at exactly `ms` (an event's own time, which may be earlier than the previous
    /// one); a run of entries in one millisecond keeps its order.
    #[inline]
    pub fn at(&mut self, ms: u64) -> [u8; ULID_LEN] {
        self.last_ms = ms;
        let e = self.entropy();
        encode_ulid(ms, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{is_valid_ulid, ulid_ms};

    #[test]
    fn strictly_increasing_within_and_across_milliseconds() {
        let mut g = UlidGenerator::new();
        let mut prev = g.next(1000);
        for i in 0..10_000u64 {
            // Same millisecond, a later one, and a clock that goes backwards.
            let now = match i % 3 {
                0 => 1000 + i / 3,
                1 => 1000 + i / 3,
                _ => 900,
            };
            let next = g.next(now);
            assert!(is_valid_ulid(&next));
            assert!(next > prev, "{:?} !> {:?}", next, prev);
            prev = next;
        }
    }

    #[test]
    fn at_keeps_the_time_given_and_orders_a_run_of_one_millisecond() {
        let mut g = UlidGenerator::new();
        let a = g.at(5000);
        let b = g.at(5000);
        let c = g.at(4000);
        let d = g.at(4000);
        assert_eq!((ulid_ms(&a), ulid_ms(&c)), (5000, 4000));
        assert!(a < b && c < d && d < a);
        assert_ne!(g.at(5000)[10..], a[10..], "never the same entropy twice");
    }

    #[test]
    fn a_process_entropy_stays_close_together() {
        use crate::record::ulid_value;
        let mut gens: Vec<UlidGenerator> = (0..8).map(|_| UlidGenerator::new()).collect();
        let mut seen = std::collections::HashSet::new();
        let (mut low, mut high) = (u128::MAX, 0u128);
        for i in 0..100_000u64 {
            let id = gens[(i % 8) as usize].at(1000 + i % 3);
            assert!(seen.insert(id), "no ID twice");
            let e = ulid_value(&id) & ((1u128 << 80) - 1);
            (low, high) = (low.min(e), high.max(e));
        }
        // A few runs apart: the difference of two IDs' entropy takes a few bytes, not ten.
        assert!(high - low < 1 << 24, "{}", high - low);
    }

    #[test]
    fn connections_differ() {
        let a = UlidGenerator::new().next(7);
        let b = UlidGenerator::new().next(7);
        assert_ne!(a, b);
        assert_eq!(a[..10], b[..10]);
    }
}
