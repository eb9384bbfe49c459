//! The grep engine over sorted segment bytes: the `[from, to]` byte range found by binary search
//! on line starts, and the matcher that finds matching lines by searching the whole range at
//! once (memmem for literals, `regex::bytes` for regexes) and widening each hit to its line.
//!
//! `q` matches `<topic> <payload>`, the line after its ULID and space and without its `\n`,
//! with grep's line semantics (DESIGN.md §10 "Matching"): `^` is the start of the topic, `$` the
//! end of the payload, and nothing matches inside the ULID. A whole-buffer search may report a
//! candidate line that does not match (a hit inside a ULID, a regex match spanning lines); every
//! candidate is confirmed on its own line before it is returned, so hits are never missed and
//! never false. This module only reads.

pub mod context;

use std::ops::Range;

use memchr::memmem;
use regex::bytes::Regex;
use regex_syntax::hir::{Hir, HirKind, Look};

use crate::record::{BODY_OFFSET, ULID_LEN, ulid_ms};

/// What a query's `q` matches, regardless of topic.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// The empty query: every record.
    All,
    /// Nothing can match (a literal containing a newline).
    Never,
    /// A literal substring.
    Literal(Box<memmem::Finder<'static>>),
    /// A regular expression (Rust `regex` syntax, Unicode classes).
    Regex {
        /// The pattern run over one line's `<topic> <payload>`.
        line: Regex,
        /// The same pattern for whole-buffer candidate search; `None` when it uses line anchors
        /// (`^`, `$`, `\A`, `\z`), which only mean the right thing on a single line.
        candidate: Option<Regex>,
        /// A literal under `(?i)`, searched for without the regex engine.
        folded: Option<Box<Folded>>,
    },
}

/// A regex that is a literal under `(?i)` (`(?i)REQUEST_ID=7C1E5A90`), holding a run of bytes
/// that match only themselves (digits, punctuation, letters outside `(?i)`): every match holds
/// that run, the *anchor*, which memmem finds as fast as a plain literal. A line holding it is
/// confirmed by comparing the literal with ASCII case folding when the line is ASCII (the only
/// way such a line can match), and by the regex otherwise (Unicode folds: `ſ` for `s`, the
/// Kelvin sign for `k`).
#[derive(Clone, Debug)]
pub struct Folded {
    anchor: memmem::Finder<'static>,
    /// Where the anchor starts in the literal.
    at: usize,
    /// The literal: each byte, and whether it matches either ASCII case (lower-cased then).
    bytes: Vec<(u8, bool)>,
}

impl Folded {
    /// The literal a regex is under `(?i)`, if it is one with an anchor worth searching for.
    fn of(hir: &Hir) -> Option<Folded> {
        use regex_syntax::hir::Class;
        let items = match hir.kind() {
            HirKind::Concat(v) => &v[..],
            _ => std::slice::from_ref(hir),
        };
        let mut bytes = Vec::new();
        for h in items {
            match h.kind() {
                HirKind::Literal(l) if l.0.is_ascii() => {
                    bytes.extend(l.0.iter().map(|&b| (b, false)))
                }
                HirKind::Class(c) => {
                    // Its ASCII members must be one letter's two cases.
                    let mut ascii: Vec<u8> = Vec::new();
                    match c {
                        Class::Unicode(u) => {
                            for r in u.ranges() {
                                for ch in r.start()..=r.end().min('\x7f') {
                                    ascii.push(ch as u8);
                                }
                            }
                        }
                        Class::Bytes(b) => {
                            for r in b.ranges() {
                                if r.end() > 0x7f {
                                    return None;
                                }
                                ascii.extend(r.start()..=r.end());
                            }
                        }
                    }
                    match ascii[..] {
                        [a, b] if a.is_ascii_uppercase() && b == a.to_ascii_lowercase() => {
                            bytes.push((b, true))
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        if !bytes.iter().any(|&(_, f)| f) {
            return None; // a plain literal: the regex engine's own memmem does it
        }
        // The longest run of bytes that match only themselves, not only spaces.
        let (mut best, mut run) = ((0, 0), (0, 0));
        for (i, &(_, f)) in bytes.iter().enumerate() {
            if f {
                run = (i + 1, i + 1);
                continue;
            }
            run.1 = i + 1;
            let all_space = bytes[run.0..run.1].iter().all(|&(b, _)| b == b' ');
            if run.1 - run.0 > best.1 - best.0 && !all_space {
                best = run;
            }
        }
        if best.1 == best.0 {
            return None;
        }
        let anchor: Vec<u8> = bytes[best.0..best.1].iter().map(|&(b, _)| b).collect();
        Some(Folded {
            anchor: memmem::Finder::new(&anchor).into_owned(),
            at: best.0,
            bytes,
        })
    }

    /// Whether the ASCII `body` holds the literal.
    fn ascii_match(&self, body: &[u8]) -> bool {
        self.anchor.find_iter(body).any(|i| {
            i.checked_sub(self.at)
                .and_then(|s| body.get(s..s + self.bytes.len()))
                .is_some_and(|w| {
                    w.iter().zip(&self.bytes).all(|(&c, &(b, fold))| {
                        if fold {
                            c.to_ascii_lowercase() == b
                        } else {
                            c == b
                        }
                    })
                })
        })
    }
}

/// The most `topic=` values one query may have.
pub const MAX_TOPIC_PATTERNS: usize = 64;

/// Why a query expression or a topic selection cannot be searched for (a 400 to a client).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `q` is not a regex the engine compiles (the parser's message).
    #[error("compiling regex: {0}")]
    Regex(String),
    /// A `topic=` value holds something other than a name or a glob.
    #[error("parsing 'topic': {0:?}: a topic or glob is letters, digits, '_', '-', '*' and '?'")]
    Topic(String),
    /// The topic globs do not compile together.
    #[error("parsing 'topic': {0}")]
    Globs(String),
    /// A `topic=` value longer than a topic may be.
    #[error("parsing 'topic': a pattern of {0} bytes; at most {max} are allowed", max = crate::record::MAX_TOPIC_LEN)]
    TopicTooLong(usize),
    /// More `topic=` values than a query may have.
    #[error("parsing 'topic': {0} patterns; at most {MAX_TOPIC_PATTERNS} are allowed")]
    TooManyTopics(usize),
}

impl Pattern {
    /// Build the pattern for `q`; `regex` selects regex syntax.
    pub fn new(q: &str, regex: bool) -> Result<Pattern, QueryError> {
        if q.is_empty() {
            return Ok(Pattern::All);
        }
        if !regex {
            if q.contains('\n') {
                return Ok(Pattern::Never);
            }
            return Ok(Pattern::Literal(Box::new(
                memmem::Finder::new(q.as_bytes()).into_owned(),
            )));
        }
        let line = Regex::new(q).map_err(|e| QueryError::Regex(e.to_string()))?;
        let hir = regex_syntax::ParserBuilder::new()
            .utf8(false) // as `regex::bytes`: `(?-u:\xff)` searches for that byte
            .build()
            .parse(q)
            .map_err(|e| QueryError::Regex(e.to_string()))?;
        let candidate = if uses_line_anchors(&hir) {
            None
        } else {
            Some(line.clone())
        };
        let folded = Folded::of(&hir).map(Box::new);
        Ok(Pattern::Regex {
            line,
            candidate,
            folded,
        })
    }

    /// Whether a record body (`<topic> <payload>`, no newline) matches.
    pub fn is_match(&self, body: &[u8]) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Never => false,
            Pattern::Literal(f) => f.find(body).is_some(),
            Pattern::Regex {
                folded: Some(f), ..
            } if body.is_ascii() => f.ascii_match(body),
            Pattern::Regex { line, .. } => line.is_match(body),
        }
    }
}

/// The `topic=` parameters of a query: exact names and `*`/`?` globs, any of which selects a
/// record; none selects every topic.
#[derive(Clone, Debug, Default)]
pub struct Topics {
    /// The patterns as given.
    patterns: Vec<String>,
    /// The exact names among them.
    exact: Vec<Vec<u8>>,
    /// The globs among them, as one anchored regex.
    globs: Option<Regex>,
    /// For one exact name: ` <name> `, searched for to find its records.
    finder: Option<std::sync::Arc<memmem::Finder<'static>>>,
}

/// Two selections are equal when they were given the same patterns.
impl PartialEq for Topics {
    fn eq(&self, other: &Topics) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Topics {}

impl Topics {
    /// Read `topic=` values. A topic is `[A-Za-z0-9][A-Za-z0-9_-]*`; a glob may also hold `*`
    /// (any run of characters) and `?` (one character).
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Topics, QueryError> {
        if patterns.len() > MAX_TOPIC_PATTERNS {
            return Err(QueryError::TooManyTopics(patterns.len()));
        }
        let mut t = Topics::default();
        let mut globs = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let ok = !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'*' | b'?'));
            if p.len() > crate::record::MAX_TOPIC_LEN {
                return Err(QueryError::TopicTooLong(p.len()));
            }
            if !ok {
                return Err(QueryError::Topic(p.to_string()));
            }
            t.patterns.push(p.to_string());
            if p.contains(['*', '?']) {
                let mut re = String::new();
                for (i, c) in p.chars().enumerate() {
                    match c {
                        // `**` is `*`: one run of any characters.
                        '*' if i > 0 && p.as_bytes()[i - 1] == b'*' => {}
                        '*' => re.push_str("[A-Za-z0-9_-]*"),
                        '?' => re.push_str("[A-Za-z0-9_-]"),
                        c => re.push(c),
                    }
                }
                globs.push(re);
            } else {
                t.exact.push(p.as_bytes().to_vec());
            }
        }
        if !globs.is_empty() {
            let re = format!("^(?:{})$", globs.join("|"));
            t.globs = Some(Regex::new(&re).map_err(|e| QueryError::Globs(e.to_string()))?);
        } else if let [name] = &t.exact[..] {
            let needle = [&b" "[..], name, b" "].concat();
            t.finder = Some(std::sync::Arc::new(
                memmem::Finder::new(&needle).into_owned(),
            ));
        }
        Ok(t)
    }

    /// Whether every topic is selected (no `topic=` given).
    pub fn is_all(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `topic` is selected.
    #[inline]
    pub fn matches(&self, topic: &[u8]) -> bool {
        self.is_all()
            || self.exact.iter().any(|e| e == topic)
            || self.globs.as_ref().is_some_and(|g| g.is_match(topic))
    }

    /// Whether the record body `<topic> <payload>` is of a selected topic.
    #[inline]
    pub fn matches_body(&self, body: &[u8]) -> bool {
        self.is_all() || self.matches(topic_of(body))
    }
}

/// The topic of a record body `<topic> <payload>`.
#[inline]
pub fn topic_of(body: &[u8]) -> &[u8] {
    memchr::memchr(b' ', body).map_or(body, |i| &body[..i])
}

/// A topic's oldest kept millisecond.
pub type Cutoff = Box<dyn Fn(&[u8]) -> u64 + Send + Sync>;

/// Records hidden because their topic's retention has passed (`-store.topic-retain`).
pub struct Expiry {
    /// Records at or after this millisecond are kept whatever their topic.
    pub keep_from_ms: u64,
    /// The oldest millisecond kept for a topic.
    pub cutoff: Cutoff,
}

impl std::fmt::Debug for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiry")
            .field("keep_from_ms", &self.keep_from_ms)
            .finish_non_exhaustive()
    }
}

impl Expiry {
    /// Whether the stored line (`<ULID> <topic> <payload>`) has expired.
    #[inline]
    pub fn expired(&self, line: &[u8]) -> bool {
        let ms = ulid_ms(line);
        ms < self.keep_from_ms && ms < (self.cutoff)(topic_of(body(line)))
    }
}

/// What a query selects: records of the selected topics whose `<topic> <payload>` matches
/// the pattern, less the expired ones.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// What `q` matches.
    pub pattern: Pattern,
    /// The topics selected.
    pub topics: Topics,
    /// Records hidden by their topic's retention (none: every record is visible).
    pub expiry: Option<std::sync::Arc<Expiry>>,
}

impl Matcher {
    /// The matcher for `q` over every topic; `regex` selects regex syntax.
    pub fn new(q: &str, regex: bool) -> Result<Matcher, QueryError> {
        Ok(Matcher {
            pattern: Pattern::new(q, regex)?,
            topics: Topics::default(),
            expiry: None,
        })
    }

    /// The same matcher restricted to `topics`.
    pub fn with_topics(mut self, topics: Topics) -> Matcher {
        self.topics = topics;
        self
    }

    /// The same matcher hiding expired records.
    pub fn with_expiry(mut self, expiry: Option<std::sync::Arc<Expiry>>) -> Matcher {
        self.expiry = expiry;
        self
    }

    /// Whether every record matches (no pattern, every topic, none expired).
    pub fn is_all(&self) -> bool {
        matches!(self.pattern, Pattern::All) && self.topics.is_all() && self.expiry.is_none()
    }

    /// Whether a record body (`<topic> <payload>`, no newline) matches.
    pub fn is_match(&self, body: &[u8]) -> bool {
        self.topics.matches_body(body) && self.pattern.is_match(body)
    }

    /// The next matching line in `buf[pos..end]`, where `pos` is a line start and `end` a line
    /// end: returns the line's range including its `\n` (if any).
    pub fn find_line(&self, buf: &[u8], pos: usize, end: usize) -> Option<Range<usize>> {
        let mut p = pos;
        while p < end {
            let hit = match &self.pattern {
                // One topic: its records are where ` <topic> ` follows a ULID.
                Pattern::All => match &self.topics.finder {
                    Some(f) => {
                        let mut at = p;
                        loop {
                            let i = at + f.find(&buf[at..end])?;
                            let start = i.saturating_sub(ULID_LEN);
                            if i >= ULID_LEN
                                && (start == p || buf[start - 1] == b'\n')
                                && start >= p
                            {
                                break i;
                            }
                            at = i + 1;
                        }
                    }
                    None => p,
                },
                Pattern::Never => return None,
                Pattern::Literal(f) => p + f.find(&buf[p..end])?,
                Pattern::Regex {
                    folded: Some(f), ..
                } => p + f.anchor.find(&buf[p..end])?,
                // The earliest match *end* is enough to find a candidate line, and cheaper than
                // a match's start (no reverse scan): no line with a match can end before it.
                Pattern::Regex {
                    candidate: Some(re),
                    ..
                } => re
                    .shortest_match_at(&buf[..end], p)?
                    .saturating_sub(1)
                    .max(p),
                Pattern::Regex {
                    candidate: None, ..
                } => p,
            };
            if hit >= end {
                return None; // an empty regex match after the last line
            }
            let start = memchr::memrchr(b'\n', &buf[p..hit]).map_or(p, |i| p + i + 1);
            let line_end = memchr::memchr(b'\n', &buf[hit..end]).map_or(end, |i| hit + i + 1);
            let line_body = body(&buf[start..line_end]);
            let confirmed = self.topics.matches_body(line_body)
                && self
                    .expiry
                    .as_ref()
                    .is_none_or(|e| !e.expired(&buf[start..line_end]))
                && match &self.pattern {
                    Pattern::All => true,
                    Pattern::Literal(_) if hit >= start + BODY_OFFSET => true,
                    pattern => pattern.is_match(line_body),
                };
            if confirmed {
                return Some(start..line_end);
            }
            p = line_end;
        }
        None
    }
}

/// `<topic> <payload>` of a stored line (with or without its `\n`).
#[inline]
pub fn body(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.get(BODY_OFFSET..).unwrap_or_default()
}

fn uses_line_anchors(hir: &Hir) -> bool {
    match hir.kind() {
        HirKind::Look(look) => !matches!(
            look,
            Look::WordAscii
                | Look::WordAsciiNegate
                | Look::WordUnicode
                | Look::WordUnicodeNegate
                | Look::WordStartAscii
                | Look::WordEndAscii
                | Look::WordStartUnicode
                | Look::WordEndUnicode
                | Look::WordStartHalfAscii
                | Look::WordEndHalfAscii
                | Look::WordStartHalfUnicode
                | Look::WordEndHalfUnicode
        ),
        HirKind::Repetition(r) => uses_line_anchors(&r.sub),
        HirKind::Capture(c) => uses_line_anchors(&c.sub),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().any(uses_line_anchors),
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) => false,
    }
}

/// The byte range of the lines of a ULID-sorted `buf` whose timestamps fall in
/// `[from_ms, to_ms]` (both inclusive, millisecond precision as in the original).
pub fn time_range(buf: &[u8], from_ms: u64, to_ms: u64) -> Range<usize> {
    let start = partition(buf, |ms| ms < from_ms);
    let end = partition(buf, |ms| ms <= to_ms);
    start..end.max(start)
}

/// The first line start whose timestamp fails `before`, for a `before` that is true for a
/// prefix of the lines. Binary search on bytes: each probe widens to the line around it.
fn partition(buf: &[u8], before: impl Fn(u64) -> bool) -> usize {
    let ms_at = |line: &[u8]| if line.len() >= 10 { ulid_ms(line) } else { 0 };
    // A window that takes in a whole end of the segment (the usual case when a query spans
    // several) is settled by its first or last line alone: no probes in between, each of
    // which reads megabytes around it from a cold file.
    if buf.is_empty() || !before(ms_at(buf)) {
        return 0;
    }
    let body = &buf[..buf.len() - 1];
    let last = memchr::memrchr(b'\n', body).map_or(0, |i| i + 1);
    if before(ms_at(&buf[last..])) {
        return buf.len();
    }
    let (mut lo, mut hi) = (0, buf.len());
    // Invariant: lo and hi are line starts (or buf.len()); lines before lo are `before`,
    // lines at or after hi are not.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let start = memchr::memrchr(b'\n', &buf[lo..mid]).map_or(lo, |i| lo + i + 1);
        let end = memchr::memchr(b'\n', &buf[start..hi]).map_or(hi, |i| start + i + 1);
        let line = &buf[start..end];
        let ms = if line.len() >= 10 { ulid_ms(line) } else { 0 };
        if before(ms) {
            lo = end;
        } else {
            hi = start;
        }
    }
    lo
}

/// Matching lines of one segment's `[from, to]` range, in order.
#[derive(Debug)]
pub struct Matches<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    matcher: &'a Matcher,
}

impl<'a> Matches<'a> {
    /// Matching lines of `buf` with timestamps in `[from_ms, to_ms]`.
    pub fn new(buf: &'a [u8], from_ms: u64, to_ms: u64, matcher: &'a Matcher) -> Self {
        Self::in_range(buf, time_range(buf, from_ms, to_ms), matcher)
    }

    /// Matching lines of `buf[range]`, where `range` starts at a line start and ends at a line
    /// end (a piece of a segment's time range).
    pub fn in_range(buf: &'a [u8], range: Range<usize>, matcher: &'a Matcher) -> Self {
        Matches {
            buf,
            pos: range.start,
            end: range.end,
            matcher,
        }
    }
}

impl<'a> Iterator for Matches<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let r = self.matcher.find_line(self.buf, self.pos, self.end)?;
        self.pos = r.end;
        Some(&self.buf[r])
    }
}

/// [`Matches`] as a merge source.
#[derive(Debug)]
pub struct MatchSource<'a> {
    matches: Matches<'a>,
    cur: Option<&'a [u8]>,
}

impl<'a> MatchSource<'a> {
    /// Positioned on the first match.
    pub fn new(mut matches: Matches<'a>) -> Self {
        let cur = matches.next();
        MatchSource { matches, cur }
    }
}

impl crate::merge::Source for MatchSource<'_> {
    fn current(&self) -> Option<&[u8]> {
        self.cur
    }
    fn advance(&mut self) -> std::io::Result<()> {
        self.cur = self.matches.next();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_ulid;

    /// A segment of lines `<ulid(ms)> <body>`.
    fn segment(lines: &[(u64, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (ms, body)) in lines.iter().enumerate() {
            out.extend_from_slice(&encode_ulid(*ms, i as u128));
            out.push(b' ');
            out.extend_from_slice(body.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn grep(buf: &[u8], from: u64, to: u64, q: &str, regex: bool) -> Vec<String> {
        let m = Matcher::new(q, regex).unwrap();
        Matches::new(buf, from, to, &m)
            .map(|l| String::from_utf8_lossy(body(l)).into_owned())
            .collect()
    }

    /// The reference: test each line on its own.
    fn naive(lines: &[(u64, &str)], from: u64, to: u64, q: &str, regex: bool) -> Vec<String> {
        let re = regex::Regex::new(q).unwrap();
        lines
            .iter()
            .filter(|(ms, _)| *ms >= from && *ms <= to)
            .filter(|(_, b)| if regex { re.is_match(b) } else { b.contains(q) })
            .map(|(_, b)| b.to_string())
            .collect()
    }

    #[test]
    fn filtering_reader_cases() {
        // TestConcurrentFilteringReadCloser: lines `<ulid(i)> i`.
        let lines: Vec<(u64, String)> = (0..5).map(|i| (i, i.to_string())).collect();
        let refs: Vec<(u64, &str)> = lines.iter().map(|(m, s)| (*m, s.as_str())).collect();
        let buf = segment(&refs);
        assert_eq!(grep(&buf, 0, 4, "", true), ["0", "1", "2", "3", "4"]);
        assert_eq!(grep(&buf, 1, 3, "", true), ["1", "2", "3"]);
        assert_eq!(grep(&buf, 0, 4, "1|3", true), ["1", "3"]);
        assert!(grep(&buf, 0, 4, "6", true).is_empty());
        let id = String::from_utf8(encode_ulid(2, 2).to_vec()).unwrap();
        assert!(
            grep(&buf, 0, 4, &id, false).is_empty(),
            "the ULID is not searched"
        );
        assert!(grep(&buf, 0, 4, &id[..5], true).is_empty());
    }

    #[test]
    fn anchors_mean_topic_start_and_payload_end() {
        let lines = [
            (1, "web GET /a 200"),
            (2, "db slow query"),
            (3, "web POST /b 500"),
            (4, "weba nothing"),
        ];
        let buf = segment(&lines);
        assert_eq!(
            grep(&buf, 0, 9, "^web ", true),
            ["web GET /a 200", "web POST /b 500"]
        );
        assert_eq!(grep(&buf, 0, 9, "500$", true), ["web POST /b 500"]);
        assert_eq!(grep(&buf, 0, 9, "^db slow query$", true), ["db slow query"]);
        assert_eq!(grep(&buf, 0, 9, r"\bweb\b", true).len(), 2);
        assert!(
            grep(&buf, 0, 9, r"200\s+db", true).is_empty(),
            "no match across lines"
        );
        assert!(grep(&buf, 0, 9, "200\ndb", false).is_empty());
        assert!(Matcher::new("(", true).is_err());
    }

    #[test]
    fn agrees_with_line_by_line_matching() {
        let words = [
            "alpha",
            "beta",
            "gamma",
            "ERROR",
            "warn",
            "0",
            "7Z",
            "a b",
            "ü",
            "id=7c",
            "ID=7C",
            "iD=7",
            "s=1",
            "S=1",
            "\u{17f}=1",
            "K=2",
            "\u{212a}=2",
            "k=2x",
            "Error",
        ];
        let mut lines = Vec::new();
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut ms = 1000;
        for _ in 0..500 {
            ms += rnd() % 3;
            let n = 1 + rnd() % 4;
            let body: Vec<&str> = (0..n)
                .map(|_| words[(rnd() % words.len() as u64) as usize])
                .collect();
            lines.push((ms, body.join(" ")));
        }
        let refs: Vec<(u64, &str)> = lines.iter().map(|(m, s)| (*m, s.as_str())).collect();
        let buf = segment(&refs);
        let last = lines.last().unwrap().0;
        for (from, to) in [
            (0, u64::MAX),
            (1100, 1300),
            (last, last),
            (0, 999),
            (1200, 1100),
        ] {
            for (q, regex) in [
                ("", false),
                ("ERROR", false),
                ("0", false),
                ("a b", false),
                ("7Z", false),
                ("^alpha", true),
                ("beta$", true),
                ("(?i)error|ü", true),
                ("(?i)ID=7c", true),
                ("(?i)s=1", true),
                ("(?i)K=2", true),
                ("(?i)e(?-i:RROR)", true),
                ("(?i)=7", true),
                ("(?i)a b", true),
                (r"\s", true),
                ("a.*a", true),
                ("^$", true),
                ("x*", true),
            ] {
                assert_eq!(
                    grep(&buf, from, to, q, regex),
                    naive(&refs, from, to, q, regex),
                    "q={q:?} regex={regex} [{from},{to}]"
                );
            }
        }
    }

    #[test]
    fn a_literal_under_case_folding_is_searched_by_its_caseless_run() {
        let folded = |q: &str| match Pattern::new(q, true).unwrap() {
            Pattern::Regex { folded, .. } => folded.map(|f| {
                let anchor: Vec<u8> = f.bytes[f.at..].iter().map(|b| b.0).collect();
                String::from_utf8(anchor).unwrap()
            }),
            _ => None,
        };
        assert!(folded("(?i)REQUEST_ID=7C1E5A90").unwrap().starts_with("=7"));
        assert_eq!(
            folded("(?i)failed password"),
            None,
            "only a space: the regex's own search"
        );
        assert_eq!(folded("(?i)a.c"), None);
        assert_eq!(folded("(?i)ab|cd"), None);
        assert_eq!(folded("=7"), None, "a plain literal");
        assert_eq!(folded("(?i)ü=7"), None);
        let p = Pattern::new("(?i)REQUEST_ID=7C1E5A90", true).unwrap();
        assert!(p.is_match(b"web x request_Id=7c1e5a90 y"));
        assert!(!p.is_match(b"web x request_Id=7c1e5a9 y"));
        assert!(p.is_match("web reque\u{17f}t_id=7c1e5a90".as_bytes()));
    }

    #[test]
    fn topics_select_by_name_and_glob() {
        let t = Topics::parse(&["web", "api-*", "db?"]).unwrap();
        for (topic, want) in [
            ("web", true),
            ("webx", false),
            ("api-", true),
            ("api-v2", true),
            ("xapi-v2", false),
            ("db1", true),
            ("db", false),
            ("db12", false),
        ] {
            assert_eq!(t.matches(topic.as_bytes()), want, "{topic}");
        }
        assert!(Topics::parse::<&str>(&[]).unwrap().matches(b"anything"));
        for bad in ["", "a b", "a/b", "..", "a.*", "(x)"] {
            assert!(Topics::parse(&[bad]).is_err(), "{bad:?}");
        }
        // With a pattern: both must hold, on the line's own topic.
        let lines = [(1, "web GET /a"), (2, "api-v1 GET /b"), (3, "db1 web GET")];
        let buf = segment(&lines);
        for (q, want) in [("", 2), ("GET", 2), ("web", 1), ("/b", 1), ("db1", 0)] {
            let m = Matcher::new(q, false)
                .unwrap()
                .with_topics(Topics::parse(&["web", "api-*"]).unwrap());
            assert_eq!(Matches::new(&buf, 0, 9, &m).count(), want, "q={q:?}");
            assert!(!m.is_all());
        }
        // One exact topic (searched for as ` web `): not where the name is in a payload.
        for (q, want) in [("", 1), ("GET", 1), ("/a", 1), ("/b", 0)] {
            let m = Matcher::new(q, false)
                .unwrap()
                .with_topics(Topics::parse(&["web"]).unwrap());
            let got: Vec<&[u8]> = Matches::new(&buf, 0, 9, &m).collect();
            assert_eq!(got.len(), want, "q={q:?}");
            assert!(got.iter().all(|l| body(l).starts_with(b"web ")));
        }
        let m = Matcher::new("GET", false)
            .unwrap()
            .with_topics(Topics::parse(&["db?"]).unwrap());
        assert!(m.is_match(b"db1 web GET") && !m.is_match(b"web GET"));
    }

    #[test]
    fn time_range_bounds() {
        let lines = [(5, "a"), (5, "b"), (6, "c"), (8, "d")];
        let buf = segment(&lines);
        let line_len = 29;
        assert_eq!(time_range(&buf, 0, 100), 0..buf.len());
        assert_eq!(time_range(&buf, 5, 5), 0..2 * line_len);
        assert_eq!(time_range(&buf, 6, 7), 2 * line_len..3 * line_len);
        assert_eq!(time_range(&buf, 7, 7).len(), 0);
        assert_eq!(time_range(&buf, 9, 10).len(), 0);
        assert_eq!(time_range(&[], 0, 10), 0..0);
    }
}
