//! The v4 needle filter: a block's *items* (the word pairs around each short separator, its
//! trigrams), less the segment's *common* items, in a Bloom filter per block.
//!
//! Items of a record body (`<topic> <payload>`, ASCII letters folded to lower case), where a
//! token is a maximal run of word bytes (ASCII letters and digits, `_`, and every byte above
//! ASCII):
//! - a **gram**, for two tokens separated by 1 to 3 other bytes: the first token's last 3 bytes
//!   (or all of it), the separator, the second's first 3 bytes (or all of it):
//!   `Accepted password` gives `ted pas`. This is what rules a block out for a rare phrase of
//!   common words, whose words are everywhere but not side by side, and for a rare identifier
//!   (`req=5e0b1d3c` gives `req=5e0`);
//! - a **trigram slot**: each trigram's 17-bit bucket (`filter.rs`), as the v2 bitmap sets it:
//!   what rules a block out for a needle within one word.
//!
//! Whole tokens are not items: a token a literal holds whole has a separator on each side in
//! it, so its grams are items already (measured: a quarter of the filters' bytes for nothing).
//!
//! A literal a matching line must contain gives the items the line must then hold: its trigram
//! slots, and the grams around each of its separators of 1 to 3 bytes that has word bytes on
//! both sides, where each side holds 3 of them or a whole token. So a filter lacking one of them proves the
//! literal absent, and exact grep semantics stand: a filter only rules out.
//!
//! The items in an eighth or more of a sample of the segment's blocks are its common items,
//! kept once in the footer as a bitmap (16 bits per common item, a power of two from 2^10 to
//! [`COMMON_BITS`] bits; an item sets the bit its hash's top bits name). A block's
//! filter holds its other items: a Bloom filter of [`BITS_PER_ITEM`] bits per item and
//! [`HASHES`] probes. A query drops the items the common bitmap holds (they rule little out,
//! and the blocks' filters lack them) and asks each block's filter for the rest.

use super::filter::{MAX_BITS_LOG2, bit, fold};
use crate::record::BODY_OFFSET;

/// Bits of the largest common-items bitmap (32 KiB).
pub const COMMON_BITS: usize = 1 << 18;
/// Bits of the smallest one (128 bytes).
pub const MIN_COMMON_BITS: usize = 1 << 10;
/// An item in at least 1/COMMON_SHARE of the sampled spans is common.
pub const COMMON_SHARE: u32 = 8;
/// Bloom filter bits per distinct item of a block.
pub const BITS_PER_ITEM: usize = 8;
/// Bloom filter probes per item.
pub const HASHES: u32 = 3;
/// Spans of the segment sampled for the common items, each the size of a typical block.
pub const SAMPLE_BLOCKS: usize = 64;

const GRAM: u8 = 2;
const TRIGRAM: u64 = 3 << 32;

/// Word bytes, by table.
const WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        i += 1;
    }
    t
};

#[inline]
fn is_word(b: u8) -> bool {
    WORD[b as usize]
}

/// A 64-bit finalizer (MurmurHash3's): spreads every input bit over the output.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The hash of a token: up to 6 bytes, [`mix`] of its kind, length and bytes (big-endian) in
/// one word; longer, its bytes taken 8 at a time (little-endian, the last chunk zero-padded),
/// each XORed into the state and mixed, the state starting as the mix of its kind and length.
#[inline]
fn hash(kind: u8, bytes: &[u8]) -> u64 {
    let head = u64::from(kind) << 56 | (bytes.len() as u64) << 48;
    if bytes.len() <= 6 {
        // Most tokens: one mix of the bytes, the kind and the length together.
        let mut v = 0u64;
        for &b in bytes {
            v = v << 8 | u64::from(b);
        }
        return mix(head | v);
    }
    let mut h = mix(head);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = mix(h ^ u64::from_le_bytes(c.try_into().unwrap_or_default()));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = mix(h ^ u64::from_le_bytes(last));
    }
    h
}

/// The hash of trigram slot `slot`.
#[inline]
fn slot_hash(slot: u32) -> u64 {
    mix(TRIGRAM | u64::from(slot))
}

/// The hash of a gram: its bytes (a token's last 3 bytes or all of it, the separator, the
/// next token's first 3 bytes or all of it), which lie side by side in the body.
#[inline]
fn gram(bytes: &[u8]) -> u64 {
    hash(GRAM, bytes)
}

/// Call `f` with the hash of every gram of `body` (folded).
fn word_items(body: &[u8], f: &mut impl FnMut(u64)) {
    let mut i = 0;
    let mut prev: Option<(usize, usize)> = None;
    while i < body.len() {
        let Some(s) = body[i..].iter().position(|&b| is_word(b)) else {
            break;
        };
        let start = i + s;
        i = start
            + body[start..]
                .iter()
                .position(|&b| !is_word(b))
                .unwrap_or(body.len() - start);
        if let Some((ps, pe)) = prev
            && start - pe <= 3
        {
            f(gram(&body[ps.max(pe.saturating_sub(3))..i.min(start + 3)]));
        }
        prev = Some((start, i));
    }
}

/// The items a line must hold to contain `lit` (any case), as hashes.
pub fn literal_items(lit: &[u8]) -> Vec<u64> {
    let lit = &lit.to_ascii_lowercase()[..];
    let mut out = Vec::new();
    for w in lit.windows(3) {
        let t = fold(w[0]) << 16 | fold(w[1]) << 8 | fold(w[2]);
        out.push(slot_hash(bit(t, MAX_BITS_LOG2)));
    }
    // Word runs: (start, end).
    let mut runs = Vec::new();
    let mut i = 0;
    while i < lit.len() {
        if is_word(lit[i]) {
            let s = i;
            while i < lit.len() && is_word(lit[i]) {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    for pair in runs.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.0 - a.1 > 3 {
            continue;
        }
        let left_ok = a.1 - a.0 >= 3 || a.0 > 0;
        let right_ok = b.1 - b.0 >= 3 || b.1 < lit.len();
        if left_ok && right_ok {
            out.push(gram(&lit[a.0.max(a.1.saturating_sub(3))..b.1.min(b.0 + 3)]));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether item `h` is in the common bitmap `common` (empty: none is).
#[inline]
pub fn is_common(common: &[u8], h: u64) -> bool {
    let bits = common.len() * 8;
    if !bits.is_power_of_two() || !(MIN_COMMON_BITS..=COMMON_BITS).contains(&bits) {
        return false;
    }
    let b = (h >> (64 - bits.trailing_zeros())) as usize;
    common[b >> 3] & (1 << (b & 7)) != 0
}

/// The Bloom probes of item `h` in a filter of `bits` bits.
#[inline]
fn probes(h: u64, bits: usize) -> impl Iterator<Item = usize> {
    let (h1, h2) = (h as u32, (h >> 32) as u32 | 1);
    (0..HASHES).map(move |i| {
        let x = h1.wrapping_add(i.wrapping_mul(h2));
        ((u64::from(x) * bits as u64) >> 32) as usize
    })
}

/// Whether a block filter may hold every one of `items`.
pub fn may_hold(filter: &[u8], items: &[u64]) -> bool {
    let bits = filter.len() * 8;
    if bits == 0 {
        return items.is_empty();
    }
    items
        .iter()
        .all(|&h| probes(h, bits).all(|p| filter[p >> 3] & (1 << (p & 7)) != 0))
}

/// Whether a block filter may hold a match of a query whose items are `required` (from
/// [`super::Needles::items`]): for each set, some alternative's items all.
pub fn may_match(required: &[Vec<Vec<u64>>], filter: &[u8]) -> bool {
    required
        .iter()
        .all(|alts| alts.iter().any(|a| may_hold(filter, a)))
}

/// Builds a segment's common bitmap and its blocks' filters.
#[derive(Debug, Default)]
pub struct ItemFilters {
    /// The common bitmap (empty until [`ItemFilters::sample`]).
    pub common: Vec<u8>,
    /// The block's trigram slots (distinct), then its word items (repeats included).
    items: Vec<u64>,
    /// Where the word items start in `items`.
    words: usize,
    trigrams: super::FilterBuilder,
    /// Scratch bitmap estimating the distinct word items.
    fill: Vec<u64>,
}

/// Bits of the scratch bitmap that estimates a block's distinct word items (32 KiB).
const FILL_BITS: usize = 1 << 18;

impl ItemFilters {
    /// The item hashes of `lines` (record lines with their `\n`): each trigram slot once, and
    /// every word item as often as it occurs.
    fn block_items(&mut self, lines: &[u8]) {
        self.items.clear();
        // Trigram slots: the v2 bitmap's set bits, each once.
        self.trigrams.build_full(lines);
        for (wi, &w) in self.trigrams.full_bits().iter().enumerate() {
            let mut w = w;
            while w != 0 {
                self.items
                    .push(slot_hash(wi as u32 * 64 + w.trailing_zeros()));
                w &= w - 1;
            }
        }
        self.words = self.items.len();
        let folded = self.trigrams.folded();
        let items = &mut self.items;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', folded) {
            if let Some(body) = folded.get(start + BODY_OFFSET..end) {
                word_items(body, &mut |h| items.push(h));
            }
            start = end + 1;
        }
    }

    /// Choose the common items from `samples` (blocks' lines spread over the segment).
    pub fn sample<'a>(&mut self, samples: impl Iterator<Item = &'a [u8]>) {
        let mut count: std::collections::HashMap<u64, u32, foldhash::fast::FixedState> =
            Default::default();
        let mut n = 0u32;
        for lines in samples {
            n += 1;
            self.block_items(lines);
            let words = &mut self.items[self.words..];
            words.sort_unstable();
            let mut prev = None;
            for &h in self.items[..self.words]
                .iter()
                .chain(&self.items[self.words..])
            {
                if prev != Some(h) {
                    *count.entry(h).or_insert(0) += 1;
                }
                prev = Some(h);
            }
        }
        if n < 8 {
            self.common = Vec::new(); // too few spans to call anything common
            return;
        }
        let common: Vec<u64> = count
            .iter()
            .filter(|&(_, &c)| c * COMMON_SHARE >= n)
            .map(|(&h, _)| h)
            .collect();
        let bits = (common.len() * 16)
            .next_power_of_two()
            .clamp(MIN_COMMON_BITS, COMMON_BITS);
        self.common = vec![0u8; bits / 8];
        let shift = 64 - bits.trailing_zeros();
        for h in common {
            let b = (h >> shift) as usize;
            self.common[b >> 3] |= 1 << (b & 7);
        }
    }

    /// The filter of a block of `lines`, into `out` (cleared first).
    pub fn build(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        self.block_items(lines);
        // The items that are not common, slots first; the distinct word items among them
        // estimated from the fill of a scratch bitmap.
        let common = &self.common[..];
        let mut kept = 0;
        let mut slots = 0;
        self.fill.clear();
        self.fill.resize(FILL_BITS / 64, 0);
        for i in 0..self.items.len() {
            let h = self.items[i];
            if is_common(common, h) {
                continue;
            }
            self.items[kept] = h;
            kept += 1;
            if i < self.words {
                slots += 1;
            } else {
                let b = (h as usize) & (FILL_BITS - 1);
                self.fill[b >> 6] |= 1 << (b & 63);
            }
        }
        self.items.truncate(kept);
        let n_words = kept - slots;
        let set: u32 = self.fill.iter().map(|w| w.count_ones()).sum();
        let m = FILL_BITS as f64;
        let est = (-m * (1.0 - (f64::from(set) / m).min(0.999_999)).ln()).ceil() as usize;
        let distinct = slots + est.min(n_words);
        let bits = (distinct * BITS_PER_ITEM).div_ceil(64).max(1) * 64;
        out.clear();
        out.resize(bits / 8, 0);
        for &h in &self.items {
            for p in probes(h, bits) {
                out[p >> 3] |= 1 << (p & 7);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bodies: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            out.extend_from_slice(b"01BB6RQR190000000000000000 ");
            out.extend_from_slice(b.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn may(f: &[u8], common: &[u8], lit: &str) -> bool {
        let items: Vec<u64> = literal_items(lit.to_ascii_lowercase().as_bytes())
            .into_iter()
            .filter(|&h| !is_common(common, h))
            .collect();
        may_hold(f, &items)
    }

    #[test]
    fn a_phrase_of_common_words_is_ruled_out_where_its_words_are_apart() {
        let mut b = ItemFilters::default();
        let common_block = lines(&[
            "sshd Failed password for root",
            "zk Accepted socket connection",
        ]);
        let blocks: Vec<Vec<u8>> = (0..16).map(|_| common_block.clone()).collect();
        b.sample(blocks.iter().map(|v| &v[..]));
        let mut f = Vec::new();
        b.build(&common_block, &mut f);
        assert!(!may(&f, &b.common, "Accepted password"));
        assert!(!may(&f, &b.common, "req=5e0b1d3c"));
        for present in [
            "Accepted",
            "password",
            "Failed password",
            "ssword for ro",
            "d socket",
            "sshd Fa",
            "ccepted",
        ] {
            assert!(may(&f, &b.common, present), "{present}");
        }
        let with = lines(&["sshd Accepted password for root", "x req=5e0b1d3c y"]);
        b.build(&with, &mut f);
        for present in [
            "Accepted password",
            "ACCEPTED PASSWORD",
            "ted pas",
            "req=5e0b1d3c",
            "q=5e0b",
            "=5e0b1d3c y",
        ] {
            assert!(may(&f, &b.common, present), "{present}");
        }
    }

    #[test]
    fn never_rules_out_a_block_that_holds_the_literal() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"aAbBcz09_ -=.:/\x1f\xc3\xa9";
        for round in 0..300 {
            let mut bodies = Vec::new();
            for _ in 0..(1 + next() % 30) {
                let n = (next() % 60) as usize;
                let s: Vec<u8> = (0..n)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                bodies.push(s);
            }
            let mut block = Vec::new();
            for b in &bodies {
                block.extend_from_slice(b"01BB6RQR190000000000000000 t ");
                block.extend_from_slice(b);
                block.push(b'\n');
            }
            let mut f = ItemFilters::default();
            if round % 2 == 0 {
                let other = lines(&["aaa bbb ccc", "a-b c=d"]);
                let samples: Vec<&[u8]> = (0..10)
                    .map(|i| if i % 3 == 0 { &block[..] } else { &other[..] })
                    .collect();
                f.sample(samples.into_iter());
            }
            let mut filter = Vec::new();
            f.build(&block, &mut filter);
            for _ in 0..40 {
                let b = &bodies[(next() % bodies.len() as u64) as usize];
                let mut full = b"t ".to_vec();
                full.extend_from_slice(b);
                if full.len() < 3 {
                    continue;
                }
                let s = (next() as usize) % (full.len() - 2);
                let e = s + 3 + (next() as usize) % (full.len() - s - 2);
                let lit = full[s..e].to_ascii_lowercase();
                let items: Vec<u64> = literal_items(&lit)
                    .into_iter()
                    .filter(|&h| !is_common(&f.common, h))
                    .collect();
                assert!(
                    may_hold(&filter, &items),
                    "round {round}: {:?} in {:?}",
                    String::from_utf8_lossy(&lit),
                    String::from_utf8_lossy(b)
                );
            }
        }
    }
}
