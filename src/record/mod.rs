//! The record line and its parts: ULIDs, topics, and the framing of input lines into records.
//!
//! A stored record is one line:
//!
//! ```text
//! 01BB6RQR190000000000000000 default GET /index.html 200\n
//! └──────── ULID (26) ─────┘^└topic┘^└──── payload ─────┘
//! ```
//!
//! The 26-character Crockford base32 ULID sorts as text in time order; its first 10 characters
//! are the millisecond timestamp. Everything after byte 27 is opaque to the store. This module
//! owns those facts; nothing else hard-codes them.

mod framer;
pub mod parts;
mod ulid;

pub use framer::{BadTopicMode, Framer, FramerConfig, FramerStats, TopicMode};
pub use ulid::UlidGenerator;

/// Length of a ULID in text form.
pub const ULID_LEN: usize = 26;
/// Offset of the first byte after `<ULID><SP>`: where the topic starts.
pub const BODY_OFFSET: usize = ULID_LEN + 1;
/// The Crockford base32 alphabet, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// A record body `<topic> <payload>` split at its first space (a body without one is all
/// topic).
#[inline]
pub fn topic_and_payload(body: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', body) {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[]),
    }
}

/// The default static topic.
pub const DEFAULT_TOPIC: &str = "default";
/// Default limit on the payload bytes of one record (1 MiB); longer lines are split.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 1 << 20;

/// Each byte's Crockford base32 value, or 0xFF for anything else (lower case included: stored
/// ULIDs are upper case so that text order is time order).
const DIGITS: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Value of a Crockford base32 character, or `None` for anything else.
#[inline]
fn digit(c: u8) -> Option<u8> {
    let v = DIGITS[c as usize];
    (v != 0xFF).then_some(v)
}

/// Whether `b` is exactly a canonical ULID: 26 upper-case Crockford characters, the first one
/// at most `7` (a larger one would overflow 128 bits).
pub fn is_valid_ulid(b: &[u8]) -> bool {
    // Branch-free: valid values are below 32, an invalid byte ORs in 0xFF.
    b.len() == ULID_LEN
        && b[0] <= b'7'
        && b.iter().fold(0u8, |acc, &c| acc | DIGITS[c as usize]) < 32
}

/// Parse a ULID given by a user (any case) into its canonical upper-case text.
pub fn parse_ulid(s: &str) -> Option<[u8; ULID_LEN]> {
    let b = s.as_bytes();
    if b.len() != ULID_LEN {
        return None;
    }
    let mut out = [0u8; ULID_LEN];
    for (o, c) in out.iter_mut().zip(b) {
        *o = c.to_ascii_uppercase();
    }
    is_valid_ulid(&out).then_some(out)
}

/// The millisecond timestamp of a ULID text (its first 10 characters). Characters outside the
/// alphabet count as zero: callers validate first where it matters.
#[inline]
pub fn ulid_ms(b: &[u8]) -> u64 {
    b[..10].iter().fold(0u64, |acc, &c| {
        (acc << 5) | u64::from(digit(c).unwrap_or(0))
    })
}

/// The 128-bit value of a ULID text (its first 26 characters), which orders as the text does.
/// Characters outside the alphabet count as zero: callers validate first where it matters.
#[inline]
pub fn ulid_value(b: &[u8]) -> u128 {
    b.iter().take(ULID_LEN).fold(0u128, |acc, &c| {
        (acc << 5) | u128::from(digit(c).unwrap_or(0))
    })
}

/// Encode a timestamp and 80 bits of entropy as ULID text, without allocating.
#[inline]
pub fn encode_ulid(ms: u64, entropy: u128) -> [u8; ULID_LEN] {
    let mut value = (u128::from(ms) << 80) | (entropy & ((1u128 << 80) - 1));
    let mut out = [0u8; ULID_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    out
}

/// The smallest ULID text of a millisecond (zero entropy).
pub fn min_ulid(ms: u64) -> [u8; ULID_LEN] {
    encode_ulid(ms, 0)
}

/// The longest topic (bytes): longer first words are not topics, longer topic values of the
/// agents' protocols are cut, longer topic patterns in a query are refused. A client cannot
/// make a record's topic, or a query's topic matcher, arbitrarily large.
pub const MAX_TOPIC_LEN: usize = 256;

/// Whether `t` is a valid topic: `[A-Za-z0-9][A-Za-z0-9_-]*`, at most [`MAX_TOPIC_LEN`] bytes.
pub fn is_valid_topic(t: &[u8]) -> bool {
    if t.len() > MAX_TOPIC_LEN {
        return false;
    }
    match t.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        }
        None => false,
    }
}

/// Check one stored record line (without its `\n`): at least `<ULID><SP>`, a valid ULID.
/// Returns the ULID bytes.
pub fn check_record(line: &[u8]) -> Result<&[u8], &'static str> {
    if line.len() < BODY_OFFSET {
        return Err("record shorter than a ULID and a space");
    }
    if !is_valid_ulid(&line[..ULID_LEN]) {
        return Err("record does not start with a valid ULID");
    }
    if line[ULID_LEN] != b' ' {
        return Err("no space after the record's ULID");
    }
    Ok(&line[..ULID_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_text_and_time() {
        // TestULIDOrTimeParse: 01BC3NABW2… is 2017-03-25T21:17:54.946Z.
        let ms = crate::gotime::parse_rfc3339_ms("2017-03-25T21:17:54.946Z").unwrap() as u64;
        assert_eq!(&min_ulid(ms), b"01BC3NABW20000000000000000");
        assert_eq!(ulid_ms(b"01BC3NABW21234567890123456"), ms);
        let ms2 = crate::gotime::parse_rfc3339_ms("2017-03-25T21:18:20.05731891Z").unwrap();
        assert_eq!(&min_ulid(ms2 as u64), b"01BC3NB4CS0000000000000000");
        assert_eq!(
            &encode_ulid(u64::MAX >> 16, u128::MAX),
            b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
    }

    #[test]
    fn ulid_validity() {
        assert!(is_valid_ulid(b"01BC3NABW20000000000000000"));
        assert!(!is_valid_ulid(b"01BC3NABW2000000000000000"), "short");
        assert!(!is_valid_ulid(b"01bc3nabw20000000000000000"), "lower case");
        assert!(
            !is_valid_ulid(b"01BC3NABW2000000000000000U"),
            "U is not Crockford"
        );
        assert!(!is_valid_ulid(b"81BC3NABW20000000000000000"), "overflow");
        assert_eq!(
            parse_ulid("01bc3nabw20000000000000000"),
            Some(*b"01BC3NABW20000000000000000")
        );
        assert_eq!(parse_ulid("2017-03-25T21:18:20.12345Z"), None);
    }

    #[test]
    fn topics() {
        for ok in ["default", "a", "topic_A", "0-x", "Z9_-"] {
            assert!(is_valid_topic(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "_a", "-a", "to~pic", "a b", "é"] {
            assert!(!is_valid_topic(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn record_checks() {
        assert!(check_record(b"01BC3NABW20000000000000000 x").is_ok());
        assert!(check_record(b"01BC3NABW20000000000000000 ").is_ok());
        assert!(check_record(b"01BC3NABW20000000000000000").is_err());
        assert!(check_record(b"01BC3NABW20000000000000000x y").is_err());
        assert!(check_record(b"not a record at all, no no no").is_err());
    }
}
