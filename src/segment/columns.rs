//! The v3 and v4 block layout: a block's records as columns, before zstd (with the segment's
//! dictionary) compresses them.
//!
//! A record line `<ULID> <topic> <payload>\n` is split into what compresses apart: the ULID's
//! milliseconds as a delta from the record before (LEB128), its 80 bits of entropy as a
//! difference from the last entropy with the same top 48 bits (an ingester's count, see
//! `record/ulid.rs`: a few bits), else as they are (random entropy: 10 bytes), the agent's time `ts=` at the end of the
//! payload when it is the ULID's own millisecond written as RFC 3339 (a flag and the digits below
//! the millisecond), and the body: the payload (and the topic, in a block of several topics),
//! each with its `\n`. Decoding writes back exactly the lines encoded; [`encode`] checks every
//! transformation against its inverse as it goes, and leaves anything it cannot restore as it is.
//!
//! ```text
//! u8   layout = 1
//! u32  records (little-endian)
//! records × LEB128     ms − the previous record's ms (the first: its ms)
//! records × u8         entropy tag: i < 8, the i-th most recent entropy with the same top 48
//!                      bits (then moved first); 255, new (then put first, the 8th dropped)
//! per record           entropy value: tag i, LEB128 of the zigzagged difference;
//!                      tag 255, the 10 bytes, big-endian
//! records × u8         ts: 0 = none taken out; d + 1 = `ts=` with d fraction digits taken out
//! LEB128 per record with d > 3: the digits after the millisecond's, as a number
//! records × body       the rest of the line, with its `\n`
//! ```

use crate::record::{BODY_OFFSET, ULID_LEN, encode_ulid, ulid_value};

/// The first byte of a column block.
pub(super) const COLUMNS: u8 = 1;

const ENTROPY_BYTES: usize = 10;
const ENTROPY_MASK: u128 = (1u128 << 80) - 1;
/// Entropies remembered by their top bits.
const RECENT: usize = 8;
/// The tag of an entropy written whole.
const NEW: u8 = 255;

/// The last entropies seen, most recent first, one per value of their top 48 bits.
#[derive(Default)]
struct Recent {
    e: [u128; RECENT],
    n: usize,
}

impl Recent {
    /// The index of an entropy with the same top bits as `e`.
    fn find(&self, e: u128) -> Option<usize> {
        self.e[..self.n].iter().position(|&x| x >> 32 == e >> 32)
    }

    /// Make `e` the most recent, replacing entry `i` (or the least recent one).
    fn promote(&mut self, i: Option<usize>, e: u128) {
        let i = match i {
            Some(i) => i,
            None => {
                self.n = (self.n + 1).min(RECENT);
                self.n - 1
            }
        };
        self.e.copy_within(0..i, 1);
        self.e[0] = e;
    }
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*at)?;
        *at += 1;
        v |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            return Some(v);
        }
    }
    None
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS` (UTC).
fn datetime(ms: u64) -> [u8; 19] {
    let (y, m, d, h, mi, sec, _) = crate::gotime::civil(ms.min(i64::MAX as u64) as i64);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, v: i64, n: usize| {
        let mut v = v;
        for i in (0..n).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, h, 2);
    put(14, mi, 2);
    put(17, sec, 2);
    out
}

/// The `ts=` value a body (without its `\n`) ends with, if it is `ms` itself written as
/// `YYYY-MM-DDTHH:MM:SS[.d digits]Z` after a space or the parts marker: (bytes from `ts=` to
/// the end, d, the digits after the millisecond's as a number).
fn agent_time(body: &[u8], ms: u64) -> Option<(usize, u8, u64)> {
    let b = body.strip_suffix(b"Z")?;
    let digits = b
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .count()
        .min(9);
    let (head, d) = if digits > 0 && b.len() > digits && b[b.len() - digits - 1] == b'.' {
        (&b[..b.len() - digits - 1], digits)
    } else {
        (b, 0)
    };
    let dt = head.len().checked_sub(19)?;
    let ts = dt.checked_sub(3)?;
    if &head[ts..dt] != b"ts=" || (ts > 0 && !matches!(head[ts - 1], b' ' | 0x1f)) {
        return None;
    }
    if head[dt..] != datetime(ms) {
        return None;
    }
    let frac = &b[b.len() - d..];
    // The millisecond's digits: as many as were written, the rest zero.
    let milli = ms % 1000;
    let mut want = [
        b'0' + (milli / 100) as u8,
        b'0' + (milli / 10 % 10) as u8,
        b'0' + (milli % 10) as u8,
    ];
    for w in want.iter_mut().skip(d) {
        if *w != b'0' {
            return None;
        }
        *w = b'0';
    }
    if frac[..d.min(3)] != want[..d.min(3)] {
        return None;
    }
    let extra = frac
        .get(3..)
        .unwrap_or_default()
        .iter()
        .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
    Some((body.len() - ts, d as u8, extra))
}

/// Append `ts=<ms as RFC 3339 with d fraction digits, extra below the millisecond>Z`.
fn put_agent_time(out: &mut Vec<u8>, ms: u64, d: u8, extra: u64) {
    out.extend_from_slice(b"ts=");
    out.extend_from_slice(&datetime(ms));
    if d > 0 {
        out.push(b'.');
        let milli = ms % 1000;
        let mut frac = [0u8; 9];
        let mut e = extra;
        for i in (3..9).rev() {
            frac[i] = b'0' + (e % 10) as u8;
            e /= 10;
        }
        // The extra digits are the last d − 3 of the six.
        let mut digits = [b'0'; 9];
        digits[0] = b'0' + (milli / 100) as u8;
        digits[1] = b'0' + (milli / 10 % 10) as u8;
        digits[2] = b'0' + (milli % 10) as u8;
        let n = usize::from(d);
        if n > 3 {
            digits[3..n].copy_from_slice(&frac[9 - (n - 3)..]);
        }
        out.extend_from_slice(&digits[..n]);
    }
    out.push(b'Z');
}

/// What of a record line a block's body column holds, less the topic (a dictionary's
/// content): its payload without the agent's time taken out. `None` for a line too short.
pub(super) fn dict_body(line: &[u8]) -> Option<&[u8]> {
    let body = line.get(BODY_OFFSET..)?;
    let sp = memchr::memchr(b' ', body).map_or(body.len(), |i| i + 1);
    let payload = &body[sp..];
    let ms = crate::record::ulid_ms(line);
    Some(match agent_time(payload, ms) {
        Some((len, ..)) => &payload[..payload.len() - len],
        None => payload,
    })
}

/// Reused buffers of an encoder.
#[derive(Debug, Default)]
pub(super) struct Encoder {
    times: Vec<u8>,
    tags: Vec<u8>,
    entropy: Vec<u8>,
    flags: Vec<u8>,
    extras: Vec<u8>,
    bodies: Vec<u8>,
}

impl Encoder {
    /// Encode `lines` (ULID-sorted record lines, each with its `\n`) into `out` (cleared
    /// first). In a block of one topic, `topic` is it: each line's `<topic> ` is left out.
    pub(super) fn encode(&mut self, lines: &[u8], topic: Option<&[u8]>, out: &mut Vec<u8>) {
        let (times, tags, entropy, flags, extras, bodies) = (
            &mut self.times,
            &mut self.tags,
            &mut self.entropy,
            &mut self.flags,
            &mut self.extras,
            &mut self.bodies,
        );
        for b in [
            &mut *times,
            &mut *tags,
            &mut *entropy,
            &mut *flags,
            &mut *extras,
            &mut *bodies,
        ] {
            b.clear();
        }
        let skip = topic.map_or(0, |t| t.len() + 1);
        let (mut prev_ms, mut records) = (0u64, 0u32);
        let mut recent = Recent::default();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', lines) {
            let line = &lines[start..end];
            start = end + 1;
            let v = ulid_value(&line[..ULID_LEN]);
            let (ms, e) = ((v >> 80) as u64, v & ENTROPY_MASK);
            put_varint(times, ms.wrapping_sub(prev_ms));
            let i = recent.find(e);
            match i {
                Some(i) => {
                    tags.push(i as u8);
                    put_varint(entropy, zigzag(e.wrapping_sub(recent.e[i]) as i64));
                }
                None => {
                    tags.push(NEW);
                    entropy.extend_from_slice(&e.to_be_bytes()[16 - ENTROPY_BYTES..]);
                }
            }
            recent.promote(i, e);
            prev_ms = ms;
            let body = &line[BODY_OFFSET + skip..];
            match agent_time(body, ms) {
                Some((len, d, extra)) => {
                    flags.push(d + 1);
                    if d > 3 {
                        put_varint(extras, extra);
                    }
                    bodies.extend_from_slice(&body[..body.len() - len]);
                }
                None => {
                    flags.push(0);
                    bodies.extend_from_slice(body);
                }
            }
            bodies.push(b'\n');
            records += 1;
        }
        out.clear();
        out.push(COLUMNS);
        out.extend_from_slice(&records.to_le_bytes());
        for b in [&*times, &*tags, &*entropy, &*flags, &*extras, &*bodies] {
            out.extend_from_slice(b);
        }
    }
}

/// Decode a column block `enc` into its record lines, appended to `out`. `topic` as given to
/// [`Encoder::encode`]. `None` if `enc` is not a well-formed column block.
pub(super) fn decode(enc: &[u8], topic: Option<&[u8]>, out: &mut Vec<u8>) -> Option<()> {
    if enc.first() != Some(&COLUMNS) {
        return None;
    }
    let records = u32::from_le_bytes(enc.get(1..5)?.try_into().ok()?) as usize;
    let mut at = 5;
    let times_at = at;
    for _ in 0..records {
        get_varint(enc, &mut at)?;
    }
    let tags = enc.get(at..at.checked_add(records)?)?;
    at += records;
    let mut entropy_at = at;
    for &t in tags {
        if t == NEW {
            at = at.checked_add(ENTROPY_BYTES)?;
        } else {
            get_varint(enc, &mut at)?;
        }
    }
    let flags = enc.get(at..at.checked_add(records)?)?;
    at += records;
    let mut extras_at = at;
    for &f in flags {
        if f > 4 {
            get_varint(enc, &mut at)?;
        }
    }
    let mut bodies = enc.get(at..)?;
    let (mut t, mut ms) = (times_at, 0u64);
    let mut recent = Recent::default();
    for (&f, &tag) in flags.iter().zip(tags) {
        ms = ms.wrapping_add(get_varint(enc, &mut t)?);
        let (i, e) = if tag == NEW {
            let mut d = [0u8; 16];
            d[16 - ENTROPY_BYTES..]
                .copy_from_slice(enc.get(entropy_at..entropy_at + ENTROPY_BYTES)?);
            entropy_at += ENTROPY_BYTES;
            (None, u128::from_be_bytes(d))
        } else {
            let i = usize::from(tag);
            if i >= recent.n {
                return None;
            }
            let d = unzigzag(get_varint(enc, &mut entropy_at)?);
            (
                Some(i),
                recent.e[i].wrapping_add(d as i128 as u128) & ENTROPY_MASK,
            )
        };
        recent.promote(i, e);
        if ms >> 48 != 0 {
            return None;
        }
        out.extend_from_slice(&encode_ulid(ms, e));
        out.push(b' ');
        if let Some(topic) = topic {
            out.extend_from_slice(topic);
            out.push(b' ');
        }
        let nl = memchr::memchr(b'\n', bodies)?;
        out.extend_from_slice(&bodies[..nl]);
        bodies = &bodies[nl + 1..];
        match f {
            0 => {}
            1..=10 => {
                let extra = if f > 4 {
                    get_varint(enc, &mut extras_at)?
                } else {
                    0
                };
                put_agent_time(out, ms, f - 1, extra);
            }
            _ => return None,
        }
        out.push(b'\n');
    }
    bodies.is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(lines: &[u8], topic: Option<&[u8]>) -> Vec<u8> {
        let mut enc = Vec::new();
        Encoder::default().encode(lines, topic, &mut enc);
        let mut out = Vec::new();
        decode(&enc, topic, &mut out).expect("decodes");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(lines)
        );
        enc
    }

    #[test]
    fn lines_come_back_exactly() {
        let a = encode_ulid(1_764_000_000_123, 5);
        let b = encode_ulid(1_764_000_000_123, 6);
        let c = encode_ulid(1_764_000_001_000, (1 << 80) - 1);
        let mut lines = Vec::new();
        for (id, body) in [
            (a, "web GET /a 200"),
            (b, "web x\x1fapp=\x1fts=2025-11-24T16:00:00.123Z"),
            (c, "web x\x1f\x1fn=1 ts=2025-11-24T16:00:01.000123456Z"),
        ] {
            lines.extend_from_slice(&id);
            lines.push(b' ');
            lines.extend_from_slice(body.as_bytes());
            lines.push(b'\n');
        }
        let enc = roundtrip(&lines, None);
        // Two agent times taken out: 24 and 30 bytes less than the text.
        assert!(
            enc.len() < lines.len() - 60,
            "{} vs {}",
            enc.len(),
            lines.len()
        );
        roundtrip(&lines, Some(b"web"));
    }

    #[test]
    fn counted_entropy_takes_a_few_bits_and_any_entropy_comes_back() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Three ingesters' counts interleaved, each growing, the records in time order; then
        // random entropy.
        let bases: Vec<u128> = (0..3)
            .map(|_| rng.random::<u128>() & ((1 << 79) - 1))
            .collect();
        let mut counts = [0u128; 3];
        let mut counted = Vec::new();
        let mut random = Vec::new();
        for i in 0..2000u64 {
            let k = rng.random_range(0..3);
            counts[k] += rng.random_range(1..50);
            for (out, e) in [
                (&mut counted, bases[k] + counts[k]),
                (&mut random, rng.random::<u128>() & ENTROPY_MASK),
            ] {
                out.extend_from_slice(&encode_ulid(1_764_000_000_000 + i, e));
                out.extend_from_slice(b" t x\n");
            }
        }
        let small = roundtrip(&counted, None);
        let big = roundtrip(&random, None);
        assert!(
            big.len() > small.len() + 2000 * 8,
            "{} vs {}",
            small.len(),
            big.len()
        );
        // Twelve top-bit values cycling through eight slots: always new, still exact.
        let mut many = Vec::new();
        for i in 0..200u64 {
            let e = (u128::from(i % 12) << 60) + u128::from(i);
            many.extend_from_slice(&encode_ulid(1_764_000_000_000 + i, e));
            many.extend_from_slice(b" t x\n");
        }
        roundtrip(&many, Some(b"t"));
    }

    #[test]
    fn times_that_are_not_the_ulids_stay_in_the_body() {
        let ms = 1_764_000_000_123;
        let id = encode_ulid(ms, 1);
        for ts in [
            "ts=2025-11-24T16:00:00.124Z", // another millisecond
            "ts=2025-11-24T16:00:00.12Z",  // digits dropped, the last not zero
            "ts=2025-11-24T16:00:00Z",     // no fraction, not zero
            "ts=2025-11-24T16:00:00.123+00:00",
            "xts=2025-11-24T16:00:00.123Z", // not a pair of its own
            "ts=2025-11-24T16:00:00.1230000000Z",
            "ts=",
            "Z",
        ] {
            let mut line = id.to_vec();
            line.extend_from_slice(b" t m ");
            line.extend_from_slice(ts.as_bytes());
            line.push(b'\n');
            roundtrip(&line, None);
            roundtrip(&line, Some(b"t"));
        }
        let whole = encode_ulid(1_764_000_000_000, 1);
        let mut line = whole.to_vec();
        line.extend_from_slice(b" t m\x1f\x1fts=2025-11-24T16:00:00Z\n");
        let enc = roundtrip(&line, None);
        assert!(enc.len() < line.len() - 20);
        let mut line = whole.to_vec();
        line.extend_from_slice(b" t m ts=2025-11-24T16:00:00.5Z\n");
        roundtrip(&line, None);
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let mut lines = encode_ulid(7, 7).to_vec();
        lines.extend_from_slice(b" t m\n");
        let mut enc = Vec::new();
        Encoder::default().encode(&lines, None, &mut enc);
        for cut in 0..enc.len() {
            assert!(
                decode(&enc[..cut], None, &mut Vec::new()).is_none(),
                "{cut}"
            );
        }
        let mut bad = enc.clone();
        bad[0] = 9;
        assert!(decode(&bad, None, &mut Vec::new()).is_none());
    }
}
