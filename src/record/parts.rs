//! The parts of a pushed record's payload: the agent's line, its stream labels and its
//! structured metadata, told apart by a marker byte.
//!
//! ```text
//! <message>␟<stream labels, logfmt>␟<structured metadata, logfmt>
//! GET /a 200␟job= host=web-1␟trace_id=abc ts=2026-12-07T10:00:00.000000001Z
//! ```
//!
//! `␟` is the ASCII unit separator, `0x1f` ([`MARK`]). A push protocol writes the first one
//! after the message when the record has labels or metadata, the second one when it has
//! metadata; neither the message nor a logfmt pair can hold the byte (the writer escapes it).
//! A payload without the marker (a record from `forward`, the raw ports, or one pushed before
//! the marker existed) is all message. A label with an empty value is the label the topic was
//! taken from unchanged: its value is the topic. The time the agent sent is the last metadata
//! pair, `ts=` (RFC 3339, every digit sent).

/// The byte between a payload's parts.
pub const MARK: u8 = 0x1f;

/// A payload split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The agent's line (newlines stored as `\n`).
    pub message: &'a [u8],
    /// Stream labels, logfmt.
    pub labels: &'a [u8],
    /// Structured metadata, logfmt.
    pub metadata: &'a [u8],
}

/// Split `payload` (a record after `<ULID> <topic> `, without its newline) into its parts.
/// The parts follow the message, so they are found from the end: the cost is the parts'
/// length, not the message's.
pub fn split(payload: &[u8]) -> Parts<'_> {
    let Some(last) = memchr::memrchr(MARK, payload) else {
        return Parts {
            message: payload,
            labels: &[],
            metadata: &[],
        };
    };
    match memchr::memrchr(MARK, &payload[..last]) {
        Some(first) => Parts {
            message: &payload[..first],
            labels: &payload[first + 1..last],
            metadata: &payload[last + 1..],
        },
        None => Parts {
            message: &payload[..last],
            labels: &payload[last + 1..],
            metadata: &[],
        },
    }
}

/// The `key=value` pairs of a logfmt text as written by the push protocols: values bare or
/// double-quoted with `\"`, `\\`, `\n`, `\r`, `\t` and `\u00XX` escapes. A key without `=`
/// has an empty value.
pub fn pairs(text: &[u8]) -> Pairs<'_> {
    Pairs { rest: text }
}

/// Iterator of [`pairs`].
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], std::borrow::Cow<'a, [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.rest.iter().position(|&c| c != b' ')?;
        let rest = &self.rest[start..];
        let key_end = rest
            .iter()
            .position(|&c| c == b'=' || c == b' ')
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        if rest.get(key_end) != Some(&b'=') {
            self.rest = &rest[key_end..];
            return Some((key, std::borrow::Cow::Borrowed(&[])));
        }
        let value = &rest[key_end + 1..];
        if value.first() != Some(&b'"') {
            let end = memchr::memchr(b' ', value).unwrap_or(value.len());
            self.rest = &value[end..];
            return Some((key, std::borrow::Cow::Borrowed(&value[..end])));
        }
        let mut out = Vec::new();
        let mut i = 1;
        while i < value.len() {
            match value[i] {
                b'"' => {
                    i += 1;
                    break;
                }
                b'\\' if i + 1 < value.len() => {
                    i += 1;
                    match value[i] {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => match value.get(i + 1..i + 5).and_then(control) {
                            Some(c) => {
                                out.push(c);
                                i += 4;
                            }
                            None => out.extend_from_slice(b"\\u"),
                        },
                        c => out.push(c),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        self.rest = &value[i.min(value.len())..];
        Some((key, std::borrow::Cow::Owned(out)))
    }
}

/// The byte of a `00XX` escape (hex digits).
fn control(hex: &[u8]) -> Option<u8> {
    let digits = hex.strip_prefix(b"00")?;
    u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_from_the_end() {
        let p = split(b"GET /a b=c\x1fjob= host=web-1\x1ftrace_id=abc ts=1");
        assert_eq!(p.message, b"GET /a b=c");
        assert_eq!(p.labels, b"job= host=web-1");
        assert_eq!(p.metadata, b"trace_id=abc ts=1");
        let p = split(b"only labels\x1fa=1");
        assert_eq!(
            (p.message, p.labels, p.metadata),
            (&b"only labels"[..], &b"a=1"[..], &b""[..])
        );
        let p = split(b"\x1f\x1fts=1");
        assert_eq!(
            (p.message, p.labels, p.metadata),
            (&b""[..], &b""[..], &b"ts=1"[..])
        );
        let p = split(b"plain line a=b");
        assert_eq!(p.message, b"plain line a=b");
        assert!(p.labels.is_empty() && p.metadata.is_empty());
    }

    #[test]
    fn logfmt_pairs_unescape() {
        let got: Vec<(String, String)> = pairs(br#"a=1  b="x \"y\"\\z\n" job= c="\u001f" flag d="#)
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("a", "1"),
            ("b", "x \"y\"\\z\n"),
            ("job", ""),
            ("c", "\x1f"),
            ("flag", ""),
            ("d", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
