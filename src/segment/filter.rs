//! The needle filter of a compressed block: a bitmap of the block's trigrams, and the literals a
//! query needs, checked against it.
//!
//! Every trigram (three consecutive bytes, ASCII letters folded to lower case) of every record
//! body (`<topic> <payload>`, the part a query matches: never the ULID, never across a newline)
//! sets one bit, the top `k` bits of `trigram × 0x9E3779B1` (32-bit), where the bitmap has `2^k`
//! bits, at least three times
//! the block's distinct trigrams. A query is reduced to literals that any matching line must
//! contain ([`Needles`]); a block whose bitmap lacks any trigram of every alternative of a
//! required literal cannot hold a match and is not read. A missing bit is proof; a set bit is
//! only a maybe, so the filter never changes an answer, only the bytes read.
//!
//! Building: bits are set in a 2^17-bit bitmap (16 KiB, which stays in the L1 cache), the
//! distinct trigrams are estimated from its fill, and it is shrunk to the size they need: bit
//! `i` of the big one becomes bit `i >> (17 - k)`, the top `k` bits of the same hash.

use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::record::BODY_OFFSET;

/// Smallest bitmap (bits, as a power of two): 1 KiB.
const MIN_BITS_LOG2: u32 = 13;
/// Largest bitmap, the one built first: 16 KiB.
pub(super) const MAX_BITS_LOG2: u32 = 17;

/// ASCII lower case, by table.
const FOLD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).to_ascii_lowercase();
        i += 1;
    }
    t
};

#[inline]
pub(super) fn fold(b: u8) -> u32 {
    u32::from(FOLD[b as usize])
}

/// Bit `log2` bits wide of trigram `t`.
#[inline]
pub(super) fn bit(t: u32, log2: u32) -> u32 {
    t.wrapping_mul(0x9E37_79B1) >> (32 - log2)
}

/// Builds bitmaps for blocks.
#[derive(Debug, Default)]
pub struct FilterBuilder {
    bits: Vec<u64>,
    /// The block folded to lower case, reused.
    folded: Vec<u8>,
}

impl FilterBuilder {
    /// The full-size bitmap of the last block built (2^17 bits: bit `i` is set when a trigram
    /// of the block falls in bucket `i`).
    pub(super) fn full_bits(&self) -> &[u64] {
        &self.bits
    }

    /// The last block built, folded to lower case.
    pub(super) fn folded(&self) -> &[u8] {
        &self.folded
    }

    /// The bitmap of the records in `lines` (complete lines, each with its `\n`), written into
    /// `out` (cleared first).
    pub fn build(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        self.build_full(lines);
        self.shrink(out);
    }

    /// Set the full-size bitmap ([`FilterBuilder::full_bits`]) of the records in `lines`.
    pub(super) fn build_full(&mut self, lines: &[u8]) {
        const WORDS: usize = (1 << MAX_BITS_LOG2) / 64;
        self.bits.clear();
        self.bits.resize(WORDS, 0);
        let bits = &mut self.bits[..WORDS];
        // Folded once for the whole block (a vector loop), each trigram is then one 4-byte
        // load of its bytes and the next: no chain from one trigram to the next, which made the
        // rolling version half of the conversion's time outside zstd.
        self.folded.clear();
        self.folded.extend_from_slice(lines);
        self.folded.make_ascii_lowercase();
        let folded = &self.folded[..];
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', lines) {
            // The body and its newline: a window of 4 starting at each trigram.
            if let Some(body) = folded.get(start + BODY_OFFSET..=end) {
                for w in body.windows(4) {
                    let t = u32::from_be_bytes([w[0], w[1], w[2], w[3]]) >> 8;
                    let h = bit(t, MAX_BITS_LOG2);
                    bits[(h >> 6) as usize] |= 1 << (h & 63);
                }
            }
            start = end + 1;
        }
    }

    /// The bitmap as stored: the full one shrunk to the size its distinct trigrams need.
    fn shrink(&self, out: &mut Vec<u8>) {
        let bits = &self.bits[..];
        // Distinct trigrams from the fill: n = -m ln(1 - fill).
        let m = f64::from(1u32 << MAX_BITS_LOG2);
        let set = f64::from(bits.iter().map(|w| w.count_ones()).sum::<u32>());
        let n = -m * (1.0 - (set / m).min(0.999_999)).ln();
        let mut log2 = MAX_BITS_LOG2;
        while log2 > MIN_BITS_LOG2 && f64::from(1u32 << (log2 - 1)) >= 3.0 * n {
            log2 -= 1;
        }
        out.clear();
        out.resize(1 << (log2 - 3), 0);
        let shift = MAX_BITS_LOG2 - log2;
        for (wi, &w) in bits.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let i = (wi as u32) * 64 + w.trailing_zeros();
                let j = i >> shift;
                out[(j >> 3) as usize] |= 1 << (j & 7);
                w &= w - 1;
            }
        }
    }
}

/// Whether `filter` (a bitmap from [`FilterBuilder`]) may hold `literal` (any case of its
/// ASCII letters). Literals shorter than a trigram always may.
pub fn may_contain(filter: &[u8], literal: &[u8]) -> bool {
    let bits = filter.len() * 8;
    if !bits.is_power_of_two() || bits < 64 {
        return true; // not a bitmap we wrote: never skip on it
    }
    let log2 = bits.trailing_zeros();
    literal.windows(3).all(|w| {
        let t = fold(w[0]) << 16 | fold(w[1]) << 8 | fold(w[2]);
        let b = bit(t, log2);
        filter[(b >> 3) as usize] & (1 << (b & 7)) != 0
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

    /// The items (v4 filters, `items.rs`) each block must hold, per required set: sets with an
    /// alternative left without items once the segment's `common` ones are dropped can rule
    /// nothing out, and are left out.
    pub fn items(&self, common: &[u8]) -> Vec<Vec<Vec<u64>>> {
        self.required
            .iter()
            .map(|alts| {
                alts.iter()
                    .map(|a| {
                        super::items::literal_items(a)
                            .into_iter()
                            .filter(|&h| !super::items::is_common(common, h))
                            .collect::<Vec<u64>>()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|alts| alts.iter().all(|a| !a.is_empty()))
            .collect()
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

    /// The bits as FORMAT.md defines them, computed the plain way: a filter on disk means the
    /// same whatever version wrote it.
    fn reference(lines: &[u8]) -> Vec<u64> {
        let mut bits = vec![0u64; (1 << MAX_BITS_LOG2) / 64];
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let body = line[..line.len() - 1]
                .get(BODY_OFFSET..)
                .unwrap_or_default();
            for w in body.windows(3) {
                let t = fold(w[0]) << 16 | fold(w[1]) << 8 | fold(w[2]);
                let h = bit(t, MAX_BITS_LOG2);
                bits[(h >> 6) as usize] |= 1 << (h & 63);
            }
        }
        bits
    }

    #[test]
    fn the_bitmap_is_the_formats_whatever_the_lines() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            let mut lines = Vec::new();
            for _ in 0..(next() % 40) {
                // Short lines too: no body, a body of 1, 2 and 3 bytes.
                let len = (next() % if round % 2 == 0 { 34 } else { 300 }) as usize;
                for _ in 0..len {
                    // Letters of both cases, digits, spaces, and bytes above ASCII.
                    let b = match next() % 5 {
                        0 => b'A' + (next() % 26) as u8,
                        1 => b'a' + (next() % 26) as u8,
                        2 => b' ',
                        3 => (next() % 256) as u8,
                        _ => b'0' + (next() % 10) as u8,
                    };
                    lines.push(if b == b'\n' { b'x' } else { b });
                }
                lines.push(b'\n');
            }
            let mut builder = FilterBuilder::default();
            let mut out = Vec::new();
            builder.build(&lines, &mut out);
            assert_eq!(builder.bits, reference(&lines), "round {round}");
        }
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
