//! Monotonic ULID generation, one generator per ingest connection.

use super::{ULID_LEN, encode_ulid};

/// Entropy is drawn with its top bit clear, leaving 2^79 increments before an overflow.
const FRESH_MASK: u128 = (1u128 << 79) - 1;
const ENTROPY_LIMIT: u128 = 1u128 << 80;

/// Generates strictly increasing ULIDs for one connection.
///
/// A new millisecond draws fresh random entropy (so IDs from different connections differ with
/// overwhelming probability); within a millisecond, or when the clock goes backwards, the
/// previous entropy is incremented, so a connection's segment is always sorted. If the entropy
/// would overflow, the timestamp moves one millisecond ahead.
#[derive(Debug, Default)]
pub struct UlidGenerator {
    last_ms: u64,
    last_entropy: u128,
}

impl UlidGenerator {
    /// A generator with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next ULID, at `now_ms` or just after the previous one, whichever is later.
    #[inline]
    pub fn next(&mut self, now_ms: u64) -> [u8; ULID_LEN] {
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.last_entropy = rand::random::<u128>() & FRESH_MASK;
        } else {
            self.last_entropy += 1;
            if self.last_entropy >= ENTROPY_LIMIT {
                self.last_ms += 1;
                self.last_entropy = rand::random::<u128>() & FRESH_MASK;
            }
        }
        encode_ulid(self.last_ms, self.last_entropy)
    }

    /// A ULID at exactly `ms` (an event's own time, which may be earlier than the previous
    /// one): the previous entropy incremented when `ms` is the previous call's millisecond (so
    /// a run of entries in one millisecond keeps its order), else fresh entropy.
    #[inline]
    pub fn at(&mut self, ms: u64) -> [u8; ULID_LEN] {
        if ms == self.last_ms && self.last_entropy + 1 < ENTROPY_LIMIT {
            self.last_entropy += 1;
        } else {
            self.last_ms = ms;
            self.last_entropy = rand::random::<u128>() & FRESH_MASK;
        }
        encode_ulid(ms, self.last_entropy)
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
        assert_ne!(g.at(5000)[10..], a[10..], "a new run draws fresh entropy");
    }

    #[test]
    fn overflow_moves_to_the_next_millisecond() {
        let mut g = UlidGenerator::new();
        g.next(5);
        g.last_entropy = ENTROPY_LIMIT - 1;
        let next = g.next(5);
        assert_eq!(ulid_ms(&next), 6);
    }

    #[test]
    fn connections_differ() {
        let a = UlidGenerator::new().next(7);
        let b = UlidGenerator::new().next(7);
        assert_ne!(a, b);
        assert_eq!(a[..10], b[..10]);
    }
}
