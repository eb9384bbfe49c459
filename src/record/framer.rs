//! Turning the bytes of an ingest connection into record lines.
//!
//! The rules (DESIGN.md §10 "Lines and records"):
//! - input is split at `\n` (found with `memchr`); a `\r` just before the `\n` is dropped; every
//!   other byte is kept verbatim, `%` and invalid UTF-8 included;
//! - a final line without `\n` is kept when the input ends ([`Framer::finish`]);
//! - a line whose payload is longer than `max_record_size` becomes `ceil(L/N)` records with
//!   consecutive ULIDs, each carrying the line's topic; memory stays bounded by `N` plus one
//!   input chunk however long the line is;
//! - in static mode each line is stored under the configured topic; in dynamic mode the first
//!   word of a line is its topic, and a line whose first word is not a valid topic is stored whole
//!   under the static topic and counted.

use memchr::memchr;

use super::{UlidGenerator, is_valid_topic};

/// How an ingester picks each record's topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicMode {
    /// Every record gets the configured topic.
    Static,
    /// The first word of each line is its topic.
    Dynamic,
}

/// A `-ingest.topic-mode` that is neither `static` nor `dynamic`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("topic mode {0:?} invalid, must be \"static\" or \"dynamic\"")]
pub struct BadTopicMode(pub String);

impl std::str::FromStr for TopicMode {
    type Err = BadTopicMode;
    fn from_str(s: &str) -> Result<Self, BadTopicMode> {
        match s {
            "static" => Ok(TopicMode::Static),
            "dynamic" => Ok(TopicMode::Dynamic),
            _ => Err(BadTopicMode(s.to_string())),
        }
    }
}

/// What a [`Framer`] needs to know.
#[derive(Clone, Debug)]
pub struct FramerConfig {
    /// The static topic (also the fallback for invalid dynamic topics).
    pub topic: String,
    /// Static or dynamic topics.
    pub mode: TopicMode,
    /// Payload bytes per record before a line is split (at least 1).
    pub max_record_size: usize,
}

/// Counts kept by a [`Framer`] since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramerStats {
    /// Records written.
    pub records: u64,
    /// Input lines longer than the limit, split into several records.
    pub split_lines: u64,
    /// Dynamic-mode lines whose first word was not a valid topic.
    pub invalid_topics: u64,
}

/// The topic of the line being assembled, once known.
#[derive(Debug)]
enum LineTopic {
    /// Not decided yet (dynamic mode, first word incomplete).
    Undecided,
    /// The static topic.
    Static,
    /// A dynamic topic taken from the line (already removed from `pending`).
    Dynamic(Vec<u8>),
}

/// Frames one connection's byte stream into stored record lines.
#[derive(Debug)]
pub struct Framer {
    cfg: FramerConfig,
    ids: UlidGenerator,
    /// Bytes of the current line not yet written as a record (after the topic, once decided).
    pending: Vec<u8>,
    topic: LineTopic,
    /// Whether part of the current line was already written as a record.
    continued: bool,
    stats: FramerStats,
}

impl Framer {
    /// A framer with a fresh ULID generator.
    pub fn new(cfg: FramerConfig) -> Self {
        assert!(cfg.max_record_size > 0, "max_record_size must be positive");
        Framer {
            cfg,
            ids: UlidGenerator::new(),
            pending: Vec::new(),
            topic: LineTopic::Undecided,
            continued: false,
            stats: FramerStats::default(),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> FramerStats {
        self.stats
    }

    /// Whether a partial line is buffered.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty() || self.continued || !matches!(self.topic, LineTopic::Undecided)
    }

    /// Frame `input`, appending complete records to `out`, stamped at `now_ms`.
    pub fn push(&mut self, mut input: &[u8], now_ms: u64, out: &mut Vec<u8>) {
        while let Some(i) = memchr(b'\n', input) {
            let mut line = &input[..i];
            input = &input[i + 1..];
            if self.pending.is_empty() && matches!(self.topic, LineTopic::Undecided) {
                if let [head @ .., b'\r'] = line {
                    line = head;
                }
                self.emit_line(line, now_ms, out);
            } else {
                self.pending.extend_from_slice(line);
                if self.pending.last() == Some(&b'\r') {
                    self.pending.pop();
                }
                let mut pending = std::mem::take(&mut self.pending);
                self.emit_line(&pending, now_ms, out);
                pending.clear();
                self.pending = pending;
            }
        }
        if !input.is_empty() {
            self.pending.extend_from_slice(input);
            self.drain_long(now_ms, out);
        }
    }

    /// End of input: keep a final line that had no `\n`.
    pub fn finish(&mut self, now_ms: u64, out: &mut Vec<u8>) {
        if self.has_partial() {
            let pending = std::mem::take(&mut self.pending);
            self.emit_line(&pending, now_ms, out);
        }
    }

    /// Write one complete line (without `\n` and `\r`); `line` is `pending` or borrowed input.
    fn emit_line(&mut self, line: &[u8], now_ms: u64, out: &mut Vec<u8>) {
        let topic = std::mem::replace(&mut self.topic, LineTopic::Undecided);
        let continued = std::mem::take(&mut self.continued);
        let (topic, payload): (&[u8], &[u8]) = match &topic {
            LineTopic::Static => (self.cfg.topic.as_bytes(), line),
            LineTopic::Dynamic(t) => (t, line),
            LineTopic::Undecided => match self.cfg.mode {
                TopicMode::Static => (self.cfg.topic.as_bytes(), line),
                TopicMode::Dynamic => match split_topic(line) {
                    Some((t, p)) => (t, p),
                    None => {
                        self.stats.invalid_topics += 1;
                        (self.cfg.topic.as_bytes(), line)
                    }
                },
            },
        };
        let max = self.cfg.max_record_size;
        if payload.is_empty() && continued {
            return;
        }
        if payload.len() > max && !continued {
            self.stats.split_lines += 1;
        }
        let mut chunks = payload.chunks(max);
        let first = chunks.next().unwrap_or(&[]);
        write_record(&mut self.ids, now_ms, topic, first, out);
        self.stats.records += 1;
        for chunk in chunks {
            write_record(&mut self.ids, now_ms, topic, chunk, out);
            self.stats.records += 1;
        }
    }

    /// While the unfinished line is longer than the limit, write its first `max` payload bytes.
    fn drain_long(&mut self, now_ms: u64, out: &mut Vec<u8>) {
        let max = self.cfg.max_record_size;
        if matches!(self.topic, LineTopic::Undecided) {
            match self.cfg.mode {
                TopicMode::Static => {
                    if self.pending.len() < max + 2 {
                        return;
                    }
                    self.topic = LineTopic::Static;
                }
                TopicMode::Dynamic => match decide_topic(&self.pending, max) {
                    None => return,
                    Some(Some(tlen)) => {
                        let topic = self.pending[..tlen].to_vec();
                        self.pending.drain(..=tlen);
                        self.topic = LineTopic::Dynamic(topic);
                    }
                    Some(None) => {
                        self.stats.invalid_topics += 1;
                        self.topic = LineTopic::Static;
                    }
                },
            }
        }
        // Keep at least two bytes back: the line may end in `\r\n`, and a payload of exactly
        // `max` bytes is one record, not two.
        if self.pending.len() < max + 2 {
            return;
        }
        let topic: &[u8] = match &self.topic {
            LineTopic::Dynamic(t) => t,
            _ => self.cfg.topic.as_bytes(),
        };
        let mut start = 0;
        while self.pending.len() - start >= max + 2 {
            if !self.continued {
                self.stats.split_lines += 1;
                self.continued = true;
            }
            let chunk = &self.pending[start..start + max];
            write_record(&mut self.ids, now_ms, topic, chunk, out);
            self.stats.records += 1;
            start += max;
        }
        self.pending.drain(..start);
    }
}

/// In dynamic mode, split `<topic> <payload>`; `None` if the first word is not a valid topic.
fn split_topic(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp = memchr(b' ', line)?;
    let (topic, rest) = (&line[..sp], &line[sp + 1..]);
    is_valid_topic(topic).then_some((topic, rest))
}

/// Decide the topic of an unfinished dynamic line from its first bytes: `None` if more bytes are
/// needed, `Some(Some(len))` for a valid topic of `len` bytes followed by a space, `Some(None)`
/// if the first word is not a valid topic (or is longer than a record may be).
fn decide_topic(pending: &[u8], max: usize) -> Option<Option<usize>> {
    match memchr(b' ', pending) {
        Some(sp) => Some(is_valid_topic(&pending[..sp]).then_some(sp)),
        None if !is_valid_topic(pending) || pending.len() >= max + 2 => Some(None),
        None => None,
    }
}

#[inline]
fn write_record(
    ids: &mut UlidGenerator,
    now_ms: u64,
    topic: &[u8],
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(super::BODY_OFFSET + topic.len() + 2 + payload.len());
    out.extend_from_slice(&ids.next(now_ms));
    out.push(b' ');
    out.extend_from_slice(topic);
    out.push(b' ');
    out.extend_from_slice(payload);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BODY_OFFSET, check_record};

    fn framer(mode: TopicMode, max: usize) -> Framer {
        Framer::new(FramerConfig {
            topic: "topic_A".into(),
            mode,
            max_record_size: max,
        })
    }

    /// Frame `input` fed in pieces of `step` bytes; return record bodies (after the ULID).
    fn frame(f: &mut Framer, input: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            f.push(piece, 1, &mut out);
        }
        f.finish(2, &mut out);
        let mut bodies = Vec::new();
        let mut prev: Option<Vec<u8>> = None;
        for line in out.split_inclusive(|&b| b == b'\n') {
            let id = check_record(&line[..line.len() - 1]).unwrap().to_vec();
            if let Some(p) = &prev {
                assert!(id > *p, "ULIDs increase");
            }
            prev = Some(id);
            bodies.push(line[BODY_OFFSET..].to_vec());
        }
        bodies
    }

    fn strs(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn static_reader() {
        for step in [1, 2, 3, 7, 100] {
            let mut f = framer(TopicMode::Static, 1 << 20);
            let got = frame(&mut f, b"foo1\nfoo2\n\nlast", step);
            assert_eq!(
                got,
                strs(&[
                    "topic_A foo1\n",
                    "topic_A foo2\n",
                    "topic_A \n",
                    "topic_A last\n"
                ]),
                "step {step}"
            );
        }
    }

    #[test]
    fn crlf_and_bytes_kept() {
        let mut f = framer(TopicMode::Static, 1 << 20);
        let got = frame(&mut f, b"100%s %%\r\n\xff\xfe\rx\r\nlast\r", 3);
        assert_eq!(
            got,
            vec![
                b"topic_A 100%s %%\n".to_vec(),
                b"topic_A \xff\xfe\rx\n".to_vec(),
                b"topic_A last\r\n".to_vec(),
            ]
        );
    }

    #[test]
    fn dynamic_reader() {
        let mut f = framer(TopicMode::Dynamic, 1 << 20);
        let got = frame(
            &mut f,
            b"topic_B foo1\nabcdef\n\nto~pic foo\ntopic_C foo2",
            4,
        );
        assert_eq!(
            got,
            strs(&[
                "topic_B foo1\n",
                "topic_A abcdef\n",
                "topic_A \n",
                "topic_A to~pic foo\n",
                "topic_C foo2\n",
            ])
        );
        assert_eq!(f.stats().invalid_topics, 3);
        assert_eq!(f.stats().records, 5);
    }

    #[test]
    fn long_lines_split_with_exact_counts() {
        let max = 10;
        for step in [1, 3, 10, 11, 12, 1000] {
            for len in [0usize, 1, 9, 10, 11, 12, 19, 20, 21, 35] {
                for crlf in [false, true] {
                    let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    let mut input = payload.clone();
                    input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                    let mut f = framer(TopicMode::Static, max);
                    let got = frame(&mut f, &input, step);
                    let want_n = len.div_ceil(max).max(1);
                    assert_eq!(got.len(), want_n, "len {len} step {step} crlf {crlf}");
                    let joined: Vec<u8> = got
                        .iter()
                        .flat_map(|b| b[8..b.len() - 1].to_vec())
                        .collect();
                    assert_eq!(joined, payload, "len {len} step {step}");
                    assert!(got.iter().all(|b| b.starts_with(b"topic_A ")));
                    assert_eq!(f.stats().split_lines, u64::from(len > max));
                }
            }
        }
    }

    #[test]
    fn long_dynamic_lines_keep_their_topic() {
        let mut f = framer(TopicMode::Dynamic, 4);
        let got = frame(&mut f, b"web abcdefghij\nxyzxyzxyz\n", 2);
        assert_eq!(
            got,
            strs(&[
                "web abcd\n",
                "web efgh\n",
                "web ij\n",
                "topic_A xyzx\n",
                "topic_A yzxy\n",
                "topic_A z\n",
            ])
        );
        assert_eq!(f.stats().split_lines, 2);
        assert_eq!(f.stats().invalid_topics, 1);
    }
}
