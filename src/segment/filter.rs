//! The needle filter of a compressed block: a bitmap of the block's trigrams, and the literals a
//! query needs, checked against it.
//!
//! Every trigram (three consecutive bytes, ASCII letters folded to lower case) of every record
//! body (`<topic> <payload>`, the part a query matches: never the ULID, never across a newline)
//! sets one bit, `hash(trigram) mod 2^k`, where the bitmap has `2^k` bits, at least twice the
//! block's distinct trigrams. A query is reduced to literals that any matching line must contain
//! ([`Needles`]); a block whose bitmap lacks any trigram of every alternative of a required
//! literal cannot hold a match and is not read. A missing bit is proof; a set bit is only a
//! maybe, so the filter never changes an answer, only the bytes read.

use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::record::BODY_OFFSET;

/// Smallest bitmap (bits, as a power of two): 1 KiB.
const MIN_BITS_LOG2: u32 = 13;
/// Largest bitmap: 128 KiB.
const MAX_BITS_LOG2: u32 = 20;

#[inline]
fn fold(b: u8) -> u8 {
    b.to_ascii_lowercase()
}

#[inline]
fn trigram(a: u8, b: u8, c: u8) -> u32 {
    u32::from(fold(a)) | (u32::from(fold(b)) << 8) | (u32::from(fold(c)) << 16)
}

#[inline]
fn bit(t: u32, log2: u32) -> usize {
    (t.wrapping_mul(0x9E37_79B1) >> (32 - log2)) as usize
}

/// Builds bitmaps for blocks, reusing its exact trigram set between blocks.
#[derive(Debug)]
pub struct FilterBuilder {
    /// One bit per possible trigram (2^24 bits): the block's exact set.
    seen: Vec<u64>,
    /// The distinct trigrams of the current block, to build the bitmap and clear `seen`.
    distinct: Vec<u32>,
}

impl Default for FilterBuilder {
    fn default() -> Self {
        FilterBuilder {
            seen: vec![0; (1 << 24) / 64],
            distinct: Vec::new(),
        }
    }
}

impl FilterBuilder {
    /// The bitmap of the records in `lines` (complete lines, each with its `\n`), written into
    /// `out` (cleared first).
    pub fn build(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', lines) {
            let body = lines.get(start + BODY_OFFSET..end).unwrap_or_default();
            for w in body.windows(3) {
                let t = trigram(w[0], w[1], w[2]);
                let (word, mask) = ((t >> 6) as usize, 1u64 << (t & 63));
                if self.seen[word] & mask == 0 {
                    self.seen[word] |= mask;
                    self.distinct.push(t);
                }
            }
            start = end + 1;
        }
        let want = (self.distinct.len() * 2).max(1);
        let log2 = (usize::BITS - (want - 1).leading_zeros()).clamp(MIN_BITS_LOG2, MAX_BITS_LOG2);
        out.clear();
        out.resize(1 << (log2 - 3), 0);
        for &t in &self.distinct {
            let b = bit(t, log2);
            out[b >> 3] |= 1 << (b & 7);
            self.seen[(t >> 6) as usize] = 0;
        }
        self.distinct.clear();
    }
}

/// Whether `filter` (a bitmap from [`FilterBuilder`]) may hold `literal` (any case of its
/// ASCII letters). Literals shorter than a trigram always may.
pub fn may_contain(filter: &[u8], literal: &[u8]) -> bool {
    let bits = filter.len() * 8;
    if !bits.is_power_of_two() || bits < 8 {
        return true; // not a bitmap we wrote: never skip on it
    }
    let log2 = bits.trailing_zeros();
    literal.windows(3).all(|w| {
        let b = bit(trigram(w[0], w[1], w[2]), log2);
        filter[b >> 3] & (1 << (b & 7)) != 0
    })
}

/// What a query needs a block to contain: every entry is a set of alternatives, one of which a
/// matching line must contain. Empty: no filtering possible (every block may match).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needles {
    required: Vec<Vec<Vec<u8>>>,
}

impl Needles {
    /// The needles of query `q` (`regex` selects regex syntax, as in the query API). A regex
    /// that does not parse gets no needles (the query fails before it reads anything).
    pub fn new(q: &str, regex: bool) -> Needles {
        if q.is_empty() {
            return Needles::default();
        }
        if !regex {
            return Needles::of(vec![vec![q.as_bytes().to_vec()]]);
        }
        let Ok(hir) = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(q)
        else {
            return Needles::default();
        };
        let mut required = Vec::new();
        for kind in [ExtractKind::Prefix, ExtractKind::Suffix] {
            let seq = Extractor::new().kind(kind).extract(&hir);
            if let Some(lits) = seq.literals() {
                // The bitmap folds ASCII case: `(?i)` variants collapse into one.
                let mut alts: Vec<Vec<u8>> = lits
                    .iter()
                    .map(|l| l.as_bytes().to_ascii_lowercase())
                    .collect();
                alts.sort();
                alts.dedup();
                required.push(alts);
            }
        }
        Needles::of(required)
    }

    /// Keep only sets that can rule a block out: every alternative at least a trigram long
    /// (an empty or short alternative may match anywhere) and not more than 64 of them.
    fn of(required: Vec<Vec<Vec<u8>>>) -> Needles {
        let required = required
            .into_iter()
            .filter(|alts| {
                !alts.is_empty() && alts.len() <= 64 && alts.iter().all(|a| a.len() >= 3)
            })
            .collect();
        Needles { required }
    }

    /// Whether no block can be ruled out.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
    }

    /// Whether a block with this bitmap may hold a match.
    pub fn may_match(&self, filter: &[u8]) -> bool {
        self.required
            .iter()
            .all(|alts| alts.iter().any(|a| may_contain(filter, a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_of(bodies: &[&str]) -> Vec<u8> {
        let mut lines = Vec::new();
        for b in bodies {
            lines.extend_from_slice(b"01BB6RQR190000000000000000 ");
            lines.extend_from_slice(b.as_bytes());
            lines.push(b'\n');
        }
        let mut out = Vec::new();
        FilterBuilder::default().build(&lines, &mut out);
        out
    }

    #[test]
    fn present_literals_always_pass_and_absent_ones_mostly_fail() {
        let f = filter_of(&["app GET /index.html 200", "db query took 12ms user=Alice"]);
        for present in [
            "GET",
            "index.html",
            "user=alice",
            "USER=ALICE",
            "app GET",
            "12ms",
        ] {
            assert!(may_contain(&f, present.as_bytes()), "{present}");
        }
        // The ULID is not indexed, nor are trigrams across lines.
        let absent = [
            "01BB6RQR19",
            "zebra-crossing",
            "200\n01",
            "request_id=7f3a9c",
        ];
        let skipped = absent
            .iter()
            .filter(|a| !may_contain(&f, a.as_bytes()))
            .count();
        assert!(skipped >= 3, "{skipped} of {}", absent.len());
        assert!(may_contain(&f, b"zz"), "shorter than a trigram: maybe");
    }

    #[test]
    fn needles_of_query_shapes() {
        let f = filter_of(&["api error: connection refused (errno=111)"]);
        let yes = [
            ("connection", false),
            ("refused", true),
            ("(?i)CONNECTION REFUSED", true),
            ("errno=1[0-9]+", true),
            ("^api", true),
            ("(timeout|refused)", true),
            (".*", true),
            ("", false),
            ("[a-z]+", true),
            ("ab", false),
        ];
        for (q, regex) in yes {
            assert!(Needles::new(q, regex).may_match(&f), "{q} {regex}");
        }
        for (q, regex) in [
            ("timeout", false),
            ("(timeout|unreachable)", true),
            ("(?i)TIMEOUT", true),
            ("panic.*refused", true),
        ] {
            assert!(!Needles::new(q, regex).may_match(&f), "{q} {regex}");
        }
        assert!(Needles::new("", false).is_empty());
        assert!(Needles::new(".*", true).is_empty());
    }
}
