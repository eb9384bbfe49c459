//! The agents' protocols (docs/agents.md): Loki push, Elasticsearch bulk, OTLP/HTTP logs, JSON
//! lines and syslog. Each protocol decodes its input into entries — a topic, a message and
//! fields — and each entry becomes one record line, `<ULID> <topic> <message> k=v k=v ...`,
//! written through one push writer ([`writer::PushWriter`]) into its own ingest segments, which
//! store nodes consume like any other.
//!
//! The mapping, the same for every protocol:
//! - the topic is the value of a configured label, attribute or field (per protocol), else the
//!   static topic; a value that is not a valid topic is normalised ([`normalise_topic`]);
//! - the message comes first, with each newline stored as the two characters `\n`; then the
//!   stream labels, then the structured metadata, each part after a marker byte and in logfmt
//!   `key=value` (quoted when needed), the entry's own time last, as `ts=` (RFC 3339, UTC,
//!   nanoseconds as sent: the sub-millisecond part lives there). [`crate::record::parts`] has
//!   the layout and reads it back; which of a protocol's labels, attributes and fields are
//!   stream labels is said in each protocol and in `docs/agents.md`.
//! - the ULID's time is the entry's own time in milliseconds (event time), with fresh
//!   randomness; an entry without one gets the time of arrival. An entry whose time is outside
//!   the [`EventBounds`] is refused on its own ([`Refusals`]), the rest of its request stored.
//! - the label or field whose value became the topic is written with an empty value when the
//!   topic is that value unchanged (the label's name is kept, its value is the topic).

pub mod elasticsearch;
pub mod http;
pub mod jsonline;
pub mod loki;
pub mod otlp;
pub mod syslog;
pub mod writer;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::ingest::{EventBounds, OutOfBounds};
use crate::memory::Hold;
use crate::record::ULID_LEN;
use writer::Wait;

/// How the push endpoints map and store what they receive.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// The static topic (`-ingest.topic`): records whose protocol names no topic get it.
    pub topic: String,
    /// How far from now an entry's own time may be (`-ingest.max-event-age`,
    /// `-ingest.max-event-future`).
    pub bounds: EventBounds,
    /// Largest request body, before and after decompression (`-ingest.max-push-size`, 64 MiB).
    pub max_body: usize,
    /// Whether a push is answered after fsync (`-ingest.push-sync`, true) or after the write.
    pub wait: Wait,
    /// Loki labels tried in turn for the topic (`-ingest.loki-topic-labels`).
    pub loki_topic_labels: Vec<String>,
    /// The OTLP resource attribute that names the topic (`-ingest.otlp-topic-attribute`).
    pub otlp_topic_attribute: String,
    /// The Elasticsearch document field holding its time, unless a request names another
    /// with `_time_field` (`-ingest.elasticsearch-time-field`, `@timestamp`).
    pub elasticsearch_time_field: String,
}

/// The protocols, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Loki push (JSON or protobuf).
    Loki,
    /// OTLP/HTTP logs (protobuf or JSON).
    Otlp,
    /// Elasticsearch bulk.
    Elasticsearch,
    /// JSON lines.
    Jsonline,
    /// Syslog over TCP.
    SyslogTcp,
    /// Syslog over UDP.
    SyslogUdp,
}

impl Protocol {
    /// The `protocol` label value.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Loki => "loki",
            Protocol::Otlp => "otlp",
            Protocol::Elasticsearch => "elasticsearch",
            Protocol::Jsonline => "jsonline",
            Protocol::SyslogTcp => "syslog-tcp",
            Protocol::SyslogUdp => "syslog-udp",
        }
    }
}

/// Why a push was refused: the status and a message naming what is wrong.
#[derive(Debug)]
pub struct PushError {
    /// 400, 413, 415 or 503.
    pub status: StatusCode,
    /// For the client.
    pub message: String,
}

impl PushError {
    /// A malformed body (400).
    pub fn bad(message: impl Into<String>) -> PushError {
        PushError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 503: the node's memory budget has no room for this request now.
    pub(crate) fn busy_with(message: String) -> PushError {
        PushError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        }
    }

    /// 413: a body over `limit` (`-ingest.max-push-size`).
    pub(crate) fn too_large(limit: usize) -> PushError {
        PushError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "request body over the limit of {limit} bytes (-ingest.max-push-size)"
            ),
        }
    }

    /// The error with `at` (where in the request) before its message, when it is about the
    /// request's content (a 400 or 413).
    pub fn at(mut self, at: &str) -> PushError {
        if self.status != StatusCode::SERVICE_UNAVAILABLE {
            self.message = format!("{at}: {}", self.message);
        }
        self
    }

    /// A plain-text response (503s carry `Retry-After`).
    pub fn text_response(&self) -> Response {
        self.finish(crate::http::text(
            self.status,
            format!("{}\n", self.message),
        ))
    }

    /// `response`, the error answered in a protocol's own format, with `Retry-After` when
    /// the error is a 503 (the client should try again).
    pub fn finish(&self, mut response: Response) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Bytes reserved for a record's ULID, filled in by the writer (which alone knows the order in
/// which records reach the segment).
const ULID_SLOT: [u8; ULID_LEN] = [b'0'; ULID_LEN];

/// Labels, attributes and fields one record may carry at most (Loki's own limit on structured
/// metadata entries is 128; an OTLP resource with 100,000 attributes copied into each of its
/// records made one 1.5 MB request hold 446 MB).
pub const MAX_FIELDS: usize = 256;
/// The longest field name, in bytes (Loki's label name limit).
pub const MAX_FIELD_NAME: usize = 1024;
/// The longest field value, in bytes (room for a stack trace in an attribute).
pub const MAX_FIELD_VALUE: usize = 64 << 10;
/// The records decoded from one request may take this many times `-ingest.max-push-size`
/// (a body of tiny JSON lines becomes records several times its size).
pub const RECORDS_PER_BODY: usize = 2;

/// The records decoded from one request (or one read of a syslog connection), waiting for
/// their ULIDs.
#[derive(Debug, Default)]
pub struct Batch {
    /// Record lines, each starting with a [`ULID_SLOT`].
    pub(crate) buf: Vec<u8>,
    /// Where each record starts in `buf`.
    pub(crate) starts: Vec<usize>,
    /// Each record's own time in Unix milliseconds ([`ARRIVAL`]: none, the writer's clock).
    pub(crate) times: Vec<u64>,
    /// The bounds entries' times are checked against, and the time they are checked at.
    bounds: Option<(EventBounds, u64)>,
    /// Entries finished so far, stored or refused.
    entries: usize,
    /// Entries refused for their time.
    refusals: Refusals,
    /// What the batch holds, counted against the node's memory budget, and its own cap.
    counted: Option<(Hold, usize)>,
    /// Why the record being built cannot be stored (a field limit), if it cannot.
    refused: Option<String>,
    /// Fields in the record being built.
    fields: usize,
    /// The part of the record being built, and where in `buf` it starts.
    part: (Part, usize),
}

/// The parts of a pushed record, in the order they are written ([`crate::record::parts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    #[default]
    Message,
    Labels,
    Metadata,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch with room for about `bytes` of records (decoders pass a guess from
    /// their body's size, so the buffer is not copied as it grows).
    pub fn with_capacity(bytes: usize) -> Batch {
        let mut b = Batch::new();
        b.reserve(bytes);
        b
    }

    /// An empty batch whose memory is counted in `hold` as it grows, up to `cap` bytes: a
    /// record that would take it past either is refused ([`RecordBuilder::finish`]).
    pub fn counted(hold: Hold, cap: usize) -> Batch {
        Batch {
            counted: Some((hold, cap)),
            ..Batch::default()
        }
    }

    /// Entries whose time is outside `bounds` at `now_ms` are refused one by one
    /// ([`Batch::refusals`]).
    pub fn bounded(mut self, bounds: EventBounds, now_ms: u64) -> Batch {
        self.bounds = Some((bounds, now_ms));
        self
    }

    /// The entries refused for their time.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Room for about `bytes` more of records, as far as the batch's budget allows now (the
    /// buffer grows as it must past that).
    pub fn reserve(&mut self, bytes: usize) {
        let bytes = match &self.counted {
            Some((hold, cap)) => bytes
                .min(cap.saturating_sub(self.held()))
                .min(hold.budget().limit().saturating_sub(hold.budget().held()) / 2),
            None => bytes,
        };
        self.buf.reserve(bytes);
        self.starts.reserve(bytes / 128);
        self.times.reserve(bytes / 128);
        if let Some((hold, _)) = &mut self.counted {
            // What was just reserved fitted in the budget a moment ago; if another request
            // took it since, the next record finds out.
            let _ = hold.set(self.buf.capacity() + self.starts.capacity() * 16);
        }
    }

    /// The memory budget the batch counts against, if it does.
    pub fn budget(&self) -> Option<&std::sync::Arc<crate::memory::Budget>> {
        self.counted.as_ref().map(|(hold, _)| hold.budget())
    }

    /// Bytes the batch's buffers take.
    fn held(&self) -> usize {
        self.buf.capacity()
            + self.starts.capacity() * std::mem::size_of::<usize>()
            + self.times.capacity() * std::mem::size_of::<u64>()
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Bytes the records will take in the segment.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Start a record under `topic` (already valid: see [`normalise_topic`]).
    pub fn record(&mut self, topic: &[u8]) -> RecordBuilder<'_> {
        self.refused = None;
        self.fields = 0;
        let start = self.buf.len();
        self.starts.push(start);
        self.times.push(ARRIVAL);
        self.buf.extend_from_slice(&ULID_SLOT);
        self.buf.push(b' ');
        self.buf.extend_from_slice(topic);
        self.buf.push(b' ');
        let line_start = self.buf.len();
        self.part = (Part::Message, line_start);
        RecordBuilder { batch: self, start }
    }

    /// The record lines with their ULID slots unfilled, the parts' marker shown as `␟`
    /// (tests).
    #[cfg(test)]
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.buf)
            .lines()
            .map(|l| l[ULID_LEN + 1..].replace('\x1f', "␟"))
            .collect()
    }
}

/// One record being written into a [`Batch`]: the message, then fields, then [`RecordBuilder::finish`].
#[derive(Debug)]
pub struct RecordBuilder<'a> {
    batch: &'a mut Batch,
    start: usize,
}

impl RecordBuilder<'_> {
    /// Start a pair of `part` (after its marker, or after a space within the part).
    fn separate(&mut self, part: Part) {
        let buf = &mut self.batch.buf;
        let (at, start) = &mut self.batch.part;
        debug_assert!(part >= *at, "a record's parts are written in order");
        if part > *at {
            // Labels follow the message after one marker, metadata after two.
            let marks = if *at == Part::Message {
                part as usize
            } else {
                1
            };
            buf.extend(std::iter::repeat_n(crate::record::parts::MARK, marks));
            *at = part;
            *start = buf.len();
        } else if buf.len() > *start {
            buf.push(b' ');
        }
    }

    /// Count `n` fields in the record, and check a field's name and value sizes; `false` when
    /// the record is refused (nothing more is written into it).
    fn admit(&mut self, n: usize, name: usize, value: usize) -> bool {
        if self.batch.refused.is_some() {
            return false;
        }
        self.batch.fields += n;
        self.batch.refused = if self.batch.fields > MAX_FIELDS {
            Some(format!(
                "an entry has more than {MAX_FIELDS} labels, attributes and fields together (the limit per record)"
            ))
        } else if name > MAX_FIELD_NAME {
            Some(format!(
                "a label, attribute or field name of {name} bytes (at most {MAX_FIELD_NAME})"
            ))
        } else if value > MAX_FIELD_VALUE {
            Some(format!(
                "a label, attribute or field value of {value} bytes (at most {MAX_FIELD_VALUE})"
            ))
        } else {
            None
        };
        self.batch.refused.is_none()
    }

    /// The entry's message, newlines escaped as `\n` (a `\r` before one is dropped).
    pub fn message(&mut self, msg: &[u8]) -> &mut Self {
        let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
        let msg = msg.strip_suffix(b"\r").unwrap_or(msg);
        if msg.is_empty() || self.batch.refused.is_some() {
            return self;
        }
        debug_assert_eq!(self.batch.part.0, Part::Message, "the message comes first");
        self.separate(Part::Message);
        let buf = &mut self.batch.buf;
        let mut rest = msg;
        while let Some(i) = memchr::memchr2(b'\n', crate::record::parts::MARK, rest) {
            let line = &rest[..i];
            if rest[i] == b'\n' {
                buf.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                buf.extend_from_slice(b"\\n");
            } else {
                // The marker cannot be in a message: it would end it.
                buf.extend_from_slice(line);
                buf.extend_from_slice(b"\\u001f");
            }
            rest = &rest[i + 1..];
        }
        buf.extend_from_slice(rest);
        self
    }

    /// A stream label, `key=value` in logfmt (the key cleaned, the value quoted when needed).
    /// Labels come after the message and before any metadata.
    pub fn label(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.pair(Part::Labels, key, value)
    }

    /// The stream label the topic was taken from unchanged: its name, with an empty value
    /// that means "the topic" ([`crate::record::parts`]).
    pub fn source_label(&mut self, key: &[u8]) -> &mut Self {
        if self.admit(1, key.len(), 0) {
            self.separate(Part::Labels);
            logfmt_key(&mut self.batch.buf, key);
            self.batch.buf.push(b'=');
        }
        self
    }

    /// A structured-metadata field, `key=value` in logfmt (the key cleaned, the value quoted
    /// when needed).
    pub fn field(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.pair(Part::Metadata, key, value)
    }

    fn pair(&mut self, part: Part, key: &[u8], value: &[u8]) -> &mut Self {
        if self.admit(1, key.len(), value.len()) {
            self.separate(part);
            logfmt_key(&mut self.batch.buf, key);
            self.batch.buf.push(b'=');
            logfmt_value(&mut self.batch.buf, value);
        }
        self
    }

    /// Metadata fields rendered once with [`render_fields`] for many records (an OTLP
    /// resource's attributes, say).
    pub fn rendered(&mut self, fields: &Rendered) -> &mut Self {
        self.rendered_as(Part::Metadata, fields)
    }

    /// Stream labels rendered once with [`render_fields`] for many records.
    pub fn rendered_labels(&mut self, fields: &Rendered) -> &mut Self {
        self.rendered_as(Part::Labels, fields)
    }

    fn rendered_as(&mut self, part: Part, fields: &Rendered) -> &mut Self {
        if self.admit(fields.count, fields.longest_name, fields.longest_value)
            && !fields.text.is_empty()
        {
            self.separate(part);
            self.batch.buf.extend_from_slice(&fields.text);
        }
        self
    }

    /// The entry's own time, from nanoseconds since the Unix epoch: the record's ULID time (in
    /// milliseconds, checked against the batch's bounds when it is finished), and `ts=<RFC
    /// 3339>` with every digit sent. A time before 1970 is checked as 0 (too old); one
    /// outside what RFC 3339 can write is refused as too far ahead or too old.
    pub fn time(&mut self, nanos: i128) -> &mut Self {
        let ms = (nanos.div_euclid(1_000_000)).clamp(0, i128::from(u64::MAX >> 16)) as u64;
        if let Some(t) = self.batch.times.last_mut() {
            // 0 is ARRIVAL: an entry at the epoch itself is as old as it gets anyway.
            *t = ms.max(1);
        }
        self.noted_time(nanos)
    }

    /// The entry's time as `ts=` only, the ULID keeping the time of arrival (an RFC 3164
    /// syslog timestamp, which has neither year nor zone).
    pub fn noted_time(&mut self, nanos: i128) -> &mut Self {
        if let Ok(t) = jiff::Timestamp::from_nanosecond(nanos) {
            let text = t.to_string();
            self.field(b"ts", text.as_bytes());
        }
        self
    }

    /// End the record. A record over a field limit, or one that takes the batch past its cap
    /// or the memory budget, is taken out again and refused (400, 413 or 503): the batch is
    /// as it was before it. A record whose time is outside the batch's bounds is taken out
    /// and counted in its [`Refusals`], the request going on ([`Finished::OutOfBounds`]).
    pub fn finish(&mut self) -> Result<Finished, PushError> {
        self.batch.buf.push(b'\n');
        let entry = self.batch.entries;
        self.batch.entries += 1;
        let time = self.batch.times.last().copied().unwrap_or(ARRIVAL);
        if let Some((bounds, now)) = &self.batch.bounds
            && time != ARRIVAL
            && self.batch.refused.is_none()
            && let Err(e) = bounds.check(time, *now)
        {
            self.take_out();
            self.batch.refusals.add(entry, &e);
            return Ok(Finished::OutOfBounds(e));
        }
        let refusal = if let Some(why) = self.batch.refused.take() {
            Some(PushError::bad(why))
        } else {
            let held = self.batch.held();
            match &mut self.batch.counted {
                Some((_, cap)) if held > *cap => Some(PushError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "the records decoded from this request take more than {} MiB ({RECORDS_PER_BODY}× -ingest.max-push-size); send smaller requests",
                        *cap >> 20
                    ),
                }),
                Some((hold, _)) if held > hold.bytes() => hold
                    .set(held)
                    .err()
                    .map(|full| PushError::busy_with(full.to_string())),
                _ => None,
            }
        };
        match refusal {
            None => Ok(Finished::Stored),
            Some(e) => {
                self.take_out();
                Err(e)
            }
        }
    }

    fn take_out(&mut self) {
        self.batch.buf.truncate(self.start);
        self.batch.starts.pop();
        self.batch.times.pop();
        self.batch.refused = None;
    }
}

/// A record's time that is none: the writer stamps the time of arrival.
pub const ARRIVAL: u64 = 0;

/// What became of a finished record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// It is in the batch.
    Stored,
    /// Its time is outside the bounds: it is not in the batch, and counted.
    OutOfBounds(OutOfBounds),
}

/// The entries of a request refused for their time, counted by reason, with the first one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Older than `-ingest.max-event-age`.
    pub too_old: usize,
    /// Further ahead than `-ingest.max-event-future`.
    pub too_new: usize,
    /// The first refused entry (0-based, counting every entry of the request) and why.
    pub first: Option<(usize, OutOfBounds)>,
}

impl Refusals {
    fn add(&mut self, entry: usize, why: &OutOfBounds) {
        match why {
            OutOfBounds::TooOld { .. } => self.too_old += 1,
            OutOfBounds::TooNew { .. } => self.too_new += 1,
        }
        self.first.get_or_insert_with(|| (entry, why.clone()));
    }

    /// How many entries were refused.
    pub fn count(&self) -> usize {
        self.too_old + self.too_new
    }

    /// "2 entries refused for their time (1 too old, 1 too far ahead); the first, entry 3: its
    /// time … (-ingest.max-event-age)", naming entries with `name` (a protocol's own word and
    /// numbering); `None` when nothing was refused.
    pub fn message(&self, name: impl Fn(usize) -> String) -> Option<String> {
        let (entry, why) = self.first.as_ref()?;
        let n = self.count();
        let plural = if n == 1 { "entry" } else { "entries" };
        Some(format!(
            "{n} {plural} refused for their time ({} too old, {} too far ahead), the rest stored; the first, {}: {why}",
            self.too_old,
            self.too_new,
            name(*entry)
        ))
    }
}

/// Fields rendered once for many records ([`render_fields`]), with what the limits check.
#[derive(Debug, Default)]
pub struct Rendered {
    /// `key=value` pairs, space-separated.
    pub text: Vec<u8>,
    /// How many.
    pub count: usize,
    longest_name: usize,
    longest_value: usize,
}

/// `key=value` pairs rendered as [`RecordBuilder::field`] would write them, space-separated,
/// for [`RecordBuilder::rendered`]. Rendering stops at one pair past [`MAX_FIELDS`] (a record
/// given them is refused anyway).
pub fn render_fields<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Rendered {
    let mut out = Rendered::default();
    for (k, v) in pairs.into_iter().take(MAX_FIELDS + 1) {
        if !out.text.is_empty() {
            out.text.push(b' ');
        }
        logfmt_key(&mut out.text, k);
        out.text.push(b'=');
        logfmt_value(&mut out.text, v);
        out.count += 1;
        out.longest_name = out.longest_name.max(k.len());
        out.longest_value = out.longest_value.max(v.len());
    }
    out
}

/// Write `key` as a logfmt key: bytes that would end or break it (space, `=`, `"`, control
/// characters) become `_`; an empty key is `_`.
fn logfmt_key(out: &mut Vec<u8>, key: &[u8]) {
    if key.is_empty() {
        out.push(b'_');
        return;
    }
    out.extend(key.iter().map(|&c| {
        if c <= b' ' || c == b'=' || c == b'"' || c == 0x7f {
            b'_'
        } else {
            c
        }
    }));
}

/// Write `value` as a logfmt value: bare when it is non-empty and has no space, `=`, `"`, `\`
/// or control character; otherwise in double quotes with `\\`, `\"`, `\n`, `\r`, `\t` escaped.
fn logfmt_value(out: &mut Vec<u8>, value: &[u8]) {
    let bare = !value.is_empty()
        && value
            .iter()
            .all(|&c| c > b' ' && c != b'=' && c != b'"' && c != b'\\' && c != 0x7f);
    if bare {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &c in value {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < b' ' || c == 0x7f => {
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// A topic from an agent's value: characters other than ASCII letters, digits, `_` and `-`
/// become `_`, and leading characters that are not a letter or digit are dropped (a topic
/// starts with one). `None` when nothing is left (the static topic applies).
pub fn normalise_topic(value: &str) -> Option<String> {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let t = mapped.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    // Every character is ASCII now: cut at MAX_TOPIC_LEN bytes.
    let t = &t[..t.len().min(crate::record::MAX_TOPIC_LEN)];
    (!t.is_empty()).then(|| t.to_string())
}

/// Where a record's topic came from: a field's value (left out of the fields when the topic
/// is that value unchanged), or the static topic.
#[derive(Debug)]
pub struct Topic {
    /// The topic.
    pub name: String,
    /// The key of the field it came from, when that field's value is the topic exactly.
    pub from_key: Option<String>,
}

impl Topic {
    /// The topic for `value` of field `key`, or `fallback` (the static topic).
    pub fn pick(key: &str, value: Option<&str>, fallback: &str) -> Topic {
        match value.and_then(|v| normalise_topic(v).map(|t| (v, t))) {
            Some((v, t)) => Topic {
                from_key: (t == v).then(|| key.to_string()),
                name: t,
            },
            None => Topic {
                name: fallback.to_string(),
                from_key: None,
            },
        }
    }

    /// Whether field `key` is the one the topic was taken from unchanged (so it is left out).
    pub fn is_source(&self, key: &str) -> bool {
        self.from_key.as_deref() == Some(key)
    }
}

/// The default push configuration (tests).
#[cfg(test)]
pub(crate) fn test_config() -> PushConfig {
    PushConfig {
        bounds: EventBounds::default(),
        topic: "default".into(),
        max_body: 64 << 20,
        wait: writer::Wait::Synced,
        loki_topic_labels: ["service_name", "job", "app", "container"]
            .map(String::from)
            .to_vec(),
        otlp_topic_attribute: "service.name".into(),
        elasticsearch_time_field: "@timestamp".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_out_of_bounds_are_refused_one_by_one() {
        let now: u64 = 1_800_000_000_000;
        let ns = |ms: u64| i128::from(ms) * 1_000_000 + 123_456;
        let mut b = Batch::new().bounded(EventBounds::default(), now);
        let hour = 3_600_000;
        for (msg, ms) in [
            ("day old", Some(now - 24 * hour)),
            ("too old", Some(now - 169 * hour)),
            ("no time", None),
            ("too new", Some(now + hour)),
            ("ancient", Some(0)),
            ("soon", Some(now + 60_000)),
        ] {
            let mut r = b.record(b"t");
            r.message(msg.as_bytes());
            if let Some(ms) = ms {
                r.time(ns(ms));
            }
            let stored = r.finish().unwrap();
            assert_eq!(
                stored == Finished::Stored,
                !msg.starts_with("too") && msg != "ancient"
            );
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.times, [now - 24 * hour, ARRIVAL, now + 60_000]);
        let lines = b.lines();
        assert!(lines[0].starts_with("t day old␟␟ts=") && lines[0].ends_with(".000123456Z"));
        assert_eq!(lines[1], "t no time");
        let r = b.refusals();
        assert_eq!((r.too_old, r.too_new), (2, 1));
        let m = r.message(|e| format!("entry {}", e + 1)).unwrap();
        assert!(
            m.starts_with("3 entries refused for their time (2 too old, 1 too far ahead), the rest stored; the first, entry 2: its time ")
                && m.ends_with("more than 168h0m0s before now (-ingest.max-event-age)"),
            "{m}"
        );
        // An unbounded batch (tests, tools) takes any time.
        let mut b = Batch::new();
        b.record(b"t").message(b"x").time(0).finish().unwrap();
        assert_eq!((b.len(), b.times[0]), (1, 1));
    }

    #[test]
    fn records_over_a_field_limit_are_refused_and_taken_out() {
        let mut b = Batch::new();
        b.record(b"t").message(b"kept").finish().unwrap();
        let before = (b.len(), b.bytes());
        let mut r = b.record(b"t");
        for i in 0..=MAX_FIELDS {
            r.field(format!("k{i}").as_bytes(), b"v");
        }
        let e = r.finish().unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("more than 256"), "{}", e.message);
        assert_eq!(
            (b.len(), b.bytes()),
            before,
            "the refused record is taken out"
        );
        let long = vec![b'n'; MAX_FIELD_NAME + 1];
        let e = b.record(b"t").field(&long, b"v").finish().unwrap_err();
        assert!(e.message.contains("name of 1025 bytes"), "{}", e.message);
        let big = vec![b'v'; MAX_FIELD_VALUE + 1];
        let e = b.record(b"t").field(b"k", &big).finish().unwrap_err();
        assert!(e.message.contains("value of 65537 bytes"), "{}", e.message);
        // Fields rendered once count as the fields they are.
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..100_000)
            .map(|i| (format!("a{i}").into_bytes(), b"x".to_vec()))
            .collect();
        let pre = render_fields(many.iter().map(|(k, v)| (&k[..], &v[..])));
        assert_eq!(pre.count, MAX_FIELDS + 1, "rendering stops past the limit");
        assert!(b.record(b"t").rendered(&pre).finish().is_err());
        let few = render_fields([(&b"a"[..], &b"1"[..])]);
        b.record(b"t").rendered(&few).finish().unwrap();
        assert_eq!(b.lines(), ["t kept", "t ␟␟a=1"]);
        // A refusal is for the one record: the next starts clean.
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn records_are_message_then_labels_then_metadata_then_time() {
        let mut b = Batch::new();
        b.record(b"api")
            .message(b"GET /x 200\n")
            .field(b"host", b"web-1")
            .field(b"path", b"/a b")
            .field(b"q", b"say \"hi\"\\now")
            .field(b"empty", b"")
            .field(b"bad key=", b"v")
            .time(1_700_000_000_123_456_789)
            .finish()
            .unwrap();
        b.record(b"default")
            .message(b"first\r\nsecond\nthird")
            .finish()
            .unwrap();
        b.record(b"default")
            .field(b"only", b"field")
            .finish()
            .unwrap();
        let pre = render_fields([(&b"a"[..], &b"1"[..]), (b"b c", b"x y")]);
        b.record(b"default")
            .message(b"after\x1fmark")
            .rendered_labels(&pre)
            .label(b"job", b"api")
            .source_label(b"app")
            .rendered(&pre)
            .finish()
            .unwrap();
        b.record(b"t")
            .message(b"m")
            .label(b"a", b"1")
            .field(b"ctl", b"\x01\x1f")
            .finish()
            .unwrap();
        assert_eq!(
            b.lines(),
            [
                "api GET /x 200␟␟host=web-1 path=\"/a b\" q=\"say \\\"hi\\\"\\\\now\" empty=\"\" bad_key_=v ts=2023-11-14T22:13:20.123456789Z",
                "default first\\nsecond\\nthird",
                "default ␟␟only=field",
                "default after\\u001fmark␟a=1 b_c=\"x y\" job=api app=␟a=1 b_c=\"x y\"",
                "t m␟a=1␟ctl=\"\\u0001\\u001f\"",
            ]
        );
        assert_eq!(b.len(), 5);
    }

    #[test]
    fn topics_are_normalised_never_refused() {
        assert_eq!(normalise_topic("nginx").as_deref(), Some("nginx"));
        assert_eq!(normalise_topic("my.svc/v2").as_deref(), Some("my_svc_v2"));
        assert_eq!(normalise_topic("_internal").as_deref(), Some("internal"));
        assert_eq!(normalise_topic("Ünï").as_deref(), Some("n_"));
        assert_eq!(normalise_topic("..."), None);
        assert_eq!(normalise_topic(""), None);
        let long = "a".repeat(1 << 20);
        assert_eq!(
            normalise_topic(&long).map(|t| t.len()),
            Some(crate::record::MAX_TOPIC_LEN),
            "a 1 MB topic value is cut, not stored whole"
        );
        let t = Topic::pick("job", Some("api"), "default");
        assert!(t.is_source("job") && t.name == "api");
        let t = Topic::pick("job", Some("my.api"), "default");
        assert!(!t.is_source("job") && t.name == "my_api");
        assert_eq!(Topic::pick("job", None, "default").name, "default");
    }
}
