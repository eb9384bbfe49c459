//! Records as Loki sees them: a line, a time in nanoseconds and labels (the topic as
//! `service_name`, the stream labels and the structured metadata the agent sent), read from
//! the record's parts ([`crate::record::parts`]).

use super::ast::{MatchOp, Matcher};
use super::labels::{Labels, Origin, sanitize};
use super::pipeline;
use crate::record::{BODY_OFFSET, ULID_LEN, parts, ulid_ms};

/// One record, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its time, Unix nanoseconds.
    pub ns: i128,
    /// The line.
    pub line: Vec<u8>,
    /// Its labels.
    pub labels: Labels,
}

/// The label the topic is answered under.
pub const TOPIC_LABEL: &str = "service_name";

/// A stored record line (`<ULID> <topic> <payload>`, without its newline) as an entry.
pub fn entry(record: &[u8]) -> Option<Entry> {
    if record.len() < BODY_OFFSET || record.get(ULID_LEN) != Some(&b' ') {
        return None;
    }
    let ms = ulid_ms(&record[..ULID_LEN]);
    let body = &record[BODY_OFFSET..];
    let (topic, payload) = crate::record::topic_and_payload(body);
    let topic = String::from_utf8_lossy(topic);
    let p = parts::split(payload);
    let mut labels = stream_labels(&topic, p.labels);
    let mut ns = i128::from(ms) * 1_000_000;
    let mut meta: Vec<(String, String)> = parts::pairs(p.metadata)
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    // The agent's own time is the last metadata pair.
    if let Some((k, v)) = meta.last()
        && k == "ts"
    {
        if let Some(t) = agent_ns(v.as_bytes(), ms) {
            ns = t;
        }
        meta.pop();
    }
    for (k, v) in meta {
        let name = sanitize(&k);
        if !name.is_empty()
            && labels
                .label(&name)
                .is_none_or(|l| l.origin != Origin::Stream)
        {
            labels.set(&name, v, Origin::Metadata);
        }
    }
    Some(Entry {
        ns,
        line: p.message.to_vec(),
        labels,
    })
}

/// The nanoseconds of a record's `ts=` value, when they fall in the record's millisecond `ms`
/// (its ULID's; else the ULID's time stands).
pub fn agent_ns(ts: &[u8], ms: u64) -> Option<i128> {
    let t = std::str::from_utf8(ts)
        .ok()?
        .parse::<jiff::Timestamp>()
        .ok()?;
    let t = t.as_nanosecond();
    (t.div_euclid(1_000_000) == i128::from(ms)).then_some(t)
}

/// Whether a query (its syntax tree, any part of it) names `detected_level`: then each record
/// gets one before its pipeline.
pub fn names_level(query: &impl std::fmt::Debug) -> bool {
    format!("{query:?}").contains(DETECTED_LEVEL)
}

/// A record's stream labels: its topic as `service_name`, and the labels part of its payload
/// (names made valid, an empty value meaning the topic).
pub fn stream_labels(topic: &str, part: &[u8]) -> Labels {
    let mut labels = Labels::new();
    labels.set(TOPIC_LABEL, topic, Origin::Stream);
    for (k, v) in parts::pairs(part) {
        let name = sanitize(&String::from_utf8_lossy(k));
        if name.is_empty() {
            continue;
        }
        let value = if v.is_empty() {
            topic.to_string()
        } else {
            String::from_utf8_lossy(&v).into_owned()
        };
        labels.set(&name, value, Origin::Stream);
    }
    labels
}

/// The label Loki (3) sets to each entry's level, and Grafana groups the log volume by.
pub const DETECTED_LEVEL: &str = "detected_level";

/// Set `detected_level` (as structured metadata) as Loki does: from a `level`, `lvl` or
/// `severity` label or metadata, else from a `level=`/`"level":` field in the line, else
/// from a level word in it (`error`, `WARN`, ...); `unknown` when none is found.
pub fn detect_level(labels: &mut Labels, line: &[u8]) {
    if labels.get(DETECTED_LEVEL).is_some() {
        return;
    }
    const NAMES: [&str; 6] = [
        "level",
        "lvl",
        "severity",
        "severity_text",
        "LEVEL",
        "Level",
    ];
    let from_label = NAMES.iter().find_map(|n| labels.get(n)).map(normal_level);
    let level = from_label
        .or_else(|| level_field(line).map(normal_level))
        .unwrap_or_else(|| level_word(line));
    labels.set(DETECTED_LEVEL, level, Origin::Metadata);
}

/// A level's usual spellings as Loki's names for them.
fn normal_level(v: &str) -> &'static str {
    let v = v.trim().to_ascii_lowercase();
    match v.as_str() {
        s if s.starts_with("crit")
            || s.starts_with("fatal")
            || s.starts_with("panic")
            || s.starts_with("emerg")
            || s.starts_with("alert") =>
        {
            "critical"
        }
        s if s.starts_with("err") || s == "e" => "error",
        s if s.starts_with("warn") || s == "w" => "warn",
        s if s.starts_with("info") || s.starts_with("notice") || s == "i" => "info",
        s if s.starts_with("debug") || s == "dbg" || s == "d" => "debug",
        s if s.starts_with("trace") => "trace",
        _ => "unknown",
    }
}

/// The value of a `level=`, `lvl=`, `severity=` or `"level":"..."` field in a line.
fn level_field(line: &[u8]) -> Option<&str> {
    for key in [
        &b"level="[..],
        b"lvl=",
        b"severity=",
        b"\"level\":\"",
        b"\"severity\":\"",
    ] {
        let mut at = 0;
        while let Some(i) = memchr::memmem::find(&line[at..], key) {
            let start = at + i;
            // A whole key: at the start or after a separator.
            if start == 0 || matches!(line[start - 1], b' ' | b'{' | b',' | b'\t') {
                let v = &line[start + key.len()..];
                let v = v.strip_prefix(b"\"").unwrap_or(v);
                let end = v
                    .iter()
                    .position(|c| matches!(c, b' ' | b'"' | b',' | b'}' | b'\t'))
                    .unwrap_or(v.len());
                return std::str::from_utf8(&v[..end])
                    .ok()
                    .filter(|s| !s.is_empty());
            }
            at = start + 1;
        }
    }
    None
}

/// A level named by a word in the line, most severe first.
fn level_word(line: &[u8]) -> &'static str {
    for (words, level) in [
        (
            &["CRITICAL", "critical", "FATAL", "fatal", "PANIC"][..],
            "critical",
        ),
        (&["ERROR", "error", "Error", "ERR"][..], "error"),
        (&["WARN", "warn", "Warn"][..], "warn"),
        (&["DEBUG", "debug"][..], "debug"),
        (&["TRACE", "trace"][..], "trace"),
        (&["INFO", "info", "Info"][..], "info"),
    ] {
        if words
            .iter()
            .any(|w| memchr::memmem::find(line, w.as_bytes()).is_some())
        {
            return level;
        }
    }
    "unknown"
}

/// A stream selector compiled: it matches a record's stream labels.
#[derive(Debug)]
pub struct Selector(Vec<(String, pipeline::Matcher)>);

impl Selector {
    /// Compile `matchers`.
    pub fn new(matchers: &[Matcher]) -> Result<Selector, pipeline::Unsupported> {
        let mut out = Vec::new();
        for m in matchers {
            out.push((m.name.clone(), pipeline::Matcher::new(m.op, &m.value)?));
        }
        Ok(Selector(out))
    }

    /// Whether a record with `labels` is selected (only stream labels count).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(name, m)| {
            let v = labels
                .label(name)
                .filter(|l| l.origin == Origin::Stream)
                .map_or("", |l| l.value.as_str());
            m.matches(v)
        })
    }
}

/// The topics a selector can only be about: `service_name="x"` or `service_name=~"a|b"` (a
/// plain alternation of topic names); `None` when any topic may match.
pub fn topics(matchers: &[Matcher]) -> Option<Vec<String>> {
    let valid = |t: &str| crate::record::is_valid_topic(t.as_bytes());
    for m in matchers {
        if m.name != TOPIC_LABEL {
            continue;
        }
        match m.op {
            MatchOp::Eq => {
                return Some(
                    vec![m.value.clone()]
                        .into_iter()
                        .filter(|t| valid(t))
                        .collect(),
                );
            }
            MatchOp::Re => {
                let names: Vec<&str> = m.value.split('|').collect();
                if names.iter().all(|n| {
                    !n.is_empty()
                        && n.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                }) {
                    return Some(
                        names
                            .into_iter()
                            .filter(|t| valid(t))
                            .map(String::from)
                            .collect(),
                    );
                }
            }
            MatchOp::Ne | MatchOp::Nre => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_as_loki_entries() {
        let e = entry(b"01KBX000000000000000000000 api GET /a\x1fjob= host=web-1 service_name=\x1ftrace_id=abc ts=2025-11-29T10:00:00.000000001Z").unwrap();
        assert_eq!(e.line, b"GET /a");
        assert_eq!(
            e.labels.text(),
            r#"{host="web-1", job="api", service_name="api", trace_id="abc"}"#
        );
        assert_eq!(e.labels.label("trace_id").unwrap().origin, Origin::Metadata);
        // The ULID's millisecond is not the ts's: the ULID's time is kept.
        assert_eq!(e.ns % 1_000_000, 0);
        let id = crate::record::encode_ulid(1_764_410_400_000, 7);
        let mut rec = id.to_vec();
        rec.extend_from_slice(b" api x\x1fjob=\x1fts=2025-11-29T10:00:00.000000001Z");
        let e = entry(&rec).unwrap();
        assert_eq!(e.ns, 1_764_410_400_000_000_001);
        let e = entry(b"01KBX000000000000000000000 nginx GET / 200 a=b").unwrap();
        assert_eq!(e.line, b"GET / 200 a=b");
        assert_eq!(e.labels.text(), r#"{service_name="nginx"}"#);
        assert!(entry(b"short").is_none());
    }

    #[test]
    fn levels_are_detected_as_loki_does() {
        let level = |labels: &[(&str, &str)], line: &str| {
            let mut l = Labels::new();
            for (k, v) in labels {
                l.set(k, v.to_string(), Origin::Metadata);
            }
            detect_level(&mut l, line.as_bytes());
            l.get(DETECTED_LEVEL).unwrap().to_string()
        };
        assert_eq!(level(&[("severity", "WARNING")], "x"), "warn");
        assert_eq!(level(&[], "ts=1 level=ERROR msg=x"), "error");
        assert_eq!(level(&[], r#"{"msg":"a","level":"debug"}"#), "debug");
        assert_eq!(level(&[], "GET /a failed with an error"), "error");
        assert_eq!(level(&[], "all good"), "unknown");
        assert_eq!(
            level(&[], "loglevel=info ok"),
            "info",
            "loglevel= is not level=, the word still counts"
        );
    }

    #[test]
    fn selectors_match_stream_labels_and_name_topics() {
        let m = |name: &str, op, value: &str| Matcher {
            name: name.into(),
            op,
            value: value.into(),
        };
        let e = entry(b"01KBX000000000000000000000 api x\x1fjob=\x1flevel=warn").unwrap();
        let sel =
            Selector::new(&[m("job", MatchOp::Eq, "api"), m("env", MatchOp::Ne, "dev")]).unwrap();
        assert!(sel.matches(&e.labels));
        let meta = Selector::new(&[m("level", MatchOp::Eq, "warn")]).unwrap();
        assert!(!meta.matches(&e.labels), "metadata is not a stream label");
        assert_eq!(
            topics(&[m("service_name", MatchOp::Eq, "api")]),
            Some(vec!["api".to_string()])
        );
        assert_eq!(
            topics(&[m("service_name", MatchOp::Re, "api|web-1")]),
            Some(vec!["api".to_string(), "web-1".to_string()])
        );
        assert_eq!(topics(&[m("service_name", MatchOp::Re, "api.*")]), None);
        assert_eq!(
            topics(&[m("service_name", MatchOp::Eq, "no such!")]),
            Some(vec![])
        );
        assert_eq!(topics(&[m("job", MatchOp::Eq, "api")]), None);
    }
}
