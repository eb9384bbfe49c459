//! Running LogQL over the store: each log expression becomes a store query (its topics from
//! the selector, its first literal line filter as the grep needle, its window, its order),
//! gathered from every store node, merged and deduplicated by the gateway; the records then
//! go through the selector and the pipeline here, on a blocking thread, streaming: a log
//! query keeps at most `limit` entries, a metric query one window of samples per series.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::json::{Stream, Summary};
use super::records::{Entry, Selector, entry, topics};
use crate::logql::ast::{Expr, FilterValue, LineOp, LogExpr, RangeOp, Stage};
use crate::logql::eval::{self, EvalError, RangeEval, Series, Steps, Value};
use crate::logql::labels::{Labels, Origin};
use crate::logql::parse::check_selector;
use crate::logql::pipeline::Pipeline;
use crate::search::Topics;
use crate::store::gather::Gateway;
use crate::store::query::QueryParams;

/// Why a query is not answered: a status and a plain-text reason (Loki's errors are plain
/// text), or a response the gateway already made (no store node, say).
#[derive(Debug)]
pub enum Refusal {
    /// Status and text.
    Text(StatusCode, String),
    /// A response as it is.
    Response(Box<Response>),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Text(status, text) => crate::http::text(status, format!("{text}\n")),
            Refusal::Response(r) => *r,
        }
    }
}

impl From<Response> for Refusal {
    fn from(r: Response) -> Refusal {
        Refusal::Response(Box::new(r))
    }
}

/// A 400.
pub fn bad(message: impl std::fmt::Display) -> Refusal {
    Refusal::Text(StatusCode::BAD_REQUEST, message.to_string())
}

/// What a scan read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scanned {
    /// Records read.
    pub lines: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether a store node did not answer (or broke off).
    pub partial: bool,
}

/// The store query of a log expression over `[from_ms, to_ms]`: the topics the selector names,
/// and the first literal line filter (before any stage that changes the line) as a needle.
/// `None`: no record can match (the selector names only topics that cannot exist).
pub fn plan(
    log: &LogExpr,
    from_ms: u64,
    to_ms: u64,
    desc: bool,
) -> Result<Option<QueryParams>, Refusal> {
    check_selector(&log.selector).map_err(bad)?;
    let topics = match topics(&log.selector) {
        Some(names) if names.is_empty() => return Ok(None),
        Some(names) => Topics::parse(&names).map_err(bad)?,
        None => Topics::default(),
    };
    let (q, regex) = needle(log);
    Ok(Some(QueryParams {
        from_ms,
        to_ms,
        q,
        regex,
        topics,
        desc,
        ..Default::default()
    }))
}

/// The store's needle for a log expression: its first literal `|=` filter (before any stage
/// that changes the line), else its first positive filter that the store's grep can run as a
/// regex (`|~` without anchors or word boundaries, or `|=` alternatives), `("", false)` for
/// none. The store matches `<topic> <payload>`, which holds the line: a needle may select
/// more records than the filter (the filter then runs on each), never fewer.
fn needle(log: &LogExpr) -> (String, bool) {
    let mut regex: Option<String> = None;
    for stage in &log.pipeline {
        match stage {
            Stage::Line(f) if !f.op.is_negative() => {
                let texts: Option<Vec<&str>> = f
                    .values
                    .iter()
                    .map(|v| match v {
                        FilterValue::Text(t) if !t.is_empty() && !t.contains('\n') => {
                            Some(t.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                let Some(texts) = texts else { continue };
                match f.op {
                    LineOp::Contains if texts.len() == 1 => return (texts[0].to_string(), false),
                    LineOp::Contains => {
                        let alts: Vec<String> = texts.iter().map(|t| regex::escape(t)).collect();
                        regex.get_or_insert_with(|| alts.join("|"));
                    }
                    LineOp::Match if texts.len() == 1 && free_of_looks(texts[0]) => {
                        regex.get_or_insert_with(|| texts[0].to_string());
                    }
                    _ => {}
                }
            }
            Stage::LineFormat(_)
            | Stage::Decolorize
            | Stage::Parser(crate::logql::ast::Parser::Unpack) => break,
            _ => {}
        }
    }
    match regex {
        Some(r) => (r, true),
        None => (String::new(), false),
    }
}

/// Whether a regex has no anchor or word boundary (`^`, `$`, `\b`, ...): only then does it
/// match a record wherever it matches the record's line.
fn free_of_looks(re: &str) -> bool {
    regex_syntax::Parser::new()
        .parse(re)
        .is_ok_and(|hir| hir.properties().look_set().is_empty())
}

/// Read the records of `params` from every store node, handing each to `each` as an entry on
/// a blocking thread until it says stop; `state` comes back with what it gathered.
pub async fn scan<S, F>(
    gw: &Gateway,
    params: QueryParams,
    state: S,
    mut each: F,
) -> Result<(S, Scanned), Refusal>
where
    S: Send + 'static,
    F: FnMut(&mut S, Entry) -> bool + Send + 'static,
{
    scan_lines(gw, params, state, move |st, line| match entry(line) {
        Some(e) => each(st, e),
        None => true,
    })
    .await
}

/// [`scan`], handing each stored record line (without its newline) as it is.
pub async fn scan_lines<S, F>(
    gw: &Gateway,
    params: QueryParams,
    state: S,
    mut each: F,
) -> Result<(S, Scanned), Refusal>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8]) -> bool + Send + 'static,
{
    let gathering = gw.records(&params).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let worker = tokio::task::spawn_blocking(move || {
        let mut state = state;
        let mut scanned = Scanned::default();
        let mut carry: Vec<u8> = Vec::new();
        'chunks: while let Some(chunk) = rx.blocking_recv() {
            let mut data: &[u8] = &chunk;
            let joined;
            if !carry.is_empty() {
                carry.extend_from_slice(&chunk);
                joined = std::mem::take(&mut carry);
                data = &joined;
            }
            let mut at = 0;
            while let Some(n) = memchr::memchr(b'\n', &data[at..]) {
                let line = &data[at..at + n];
                at += n + 1;
                scanned.lines += 1;
                scanned.bytes += line.len() as u64 + 1;
                if !each(&mut state, line) {
                    break 'chunks;
                }
            }
            carry = data[at..].to_vec();
        }
        (state, scanned)
    });
    let mut body = gathering.body;
    let mut broke = false;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && tx.send(data).await.is_err()
                {
                    break;
                }
            }
            Some(Err(_)) => {
                broke = true;
                break;
            }
            None => break,
        }
    }
    drop(tx);
    let (state, mut scanned) = worker.await.map_err(|e| {
        Refusal::Text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query worker failed: {e}"),
        )
    })?;
    scanned.partial = gathering.errors > 0 || broke || gathering.late.is_partial();
    Ok((state, scanned))
}

/// The first and last millisecond of records in `[start, end)` nanoseconds.
fn ms_window(start: i128, end_exclusive: i128) -> (u64, u64) {
    let from = start.div_euclid(1_000_000).max(0) as u64;
    let to = (end_exclusive - 1).div_euclid(1_000_000).max(0) as u64;
    (from, to.max(from))
}

/// Whether a log expression asks for `detected_level` (then each entry gets one).
fn mentions_level(log: &LogExpr) -> bool {
    format!("{log:?}").contains(super::records::DETECTED_LEVEL)
}

/// A log query: the entries of `[start, end)` through the pipeline, newest first when
/// `backward`, at most `limit`, grouped in streams (by stream labels only when `categorize`).
pub async fn logs(
    gw: &Arc<Gateway>,
    log: &LogExpr,
    (start, end): (i128, i128),
    limit: u64,
    backward: bool,
    categorize: bool,
) -> Result<(Vec<Stream>, Scanned), Refusal> {
    if end <= start {
        return Ok((Vec::new(), Scanned::default()));
    }
    let pipeline = Pipeline::new(&log.pipeline).map_err(bad)?;
    let selector = Selector::new(&log.selector).map_err(bad)?;
    let (from_ms, to_ms) = ms_window(start, end);
    let levels = mentions_level(log);
    let Some(params) = plan(log, from_ms, to_ms, backward)? else {
        return Ok((Vec::new(), Scanned::default()));
    };
    struct State {
        streams: std::collections::HashMap<Labels, Stream>,
        left: u64,
    }
    let state = State {
        streams: std::collections::HashMap::new(),
        left: limit,
    };
    let (state, scanned) = scan(gw, params, state, move |st, e| {
        if e.ns < start || e.ns >= end || !selector.matches(&e.labels) {
            return true;
        }
        let Entry {
            ns,
            mut line,
            mut labels,
        } = e;
        if levels {
            super::records::detect_level(&mut labels, &line);
        }
        let mut sample = None;
        if !pipeline.run(&mut line, &mut labels, ns, &mut sample) {
            return true;
        }
        // Every entry answered has a level, as Loki 3 gives it (Grafana colours by it).
        super::records::detect_level(&mut labels, &line);
        let (key, rest) = if categorize {
            let mut stream = labels.clone();
            stream.retain(|l| l.origin == Origin::Stream);
            let mut rest = labels;
            rest.retain(|l| l.origin != Origin::Stream);
            (stream, rest)
        } else {
            (labels, Labels::new())
        };
        st.streams
            .entry(key.clone())
            .or_insert_with(|| Stream {
                labels: key,
                entries: Vec::new(),
            })
            .entries
            .push((ns, line, rest));
        st.left -= 1;
        st.left > 0
    })
    .await?;
    let mut streams: Vec<Stream> = state.streams.into_values().collect();
    for s in &mut streams {
        if backward {
            s.entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        } else {
            s.entries.sort_by_key(|e| e.0);
        }
    }
    streams.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok((streams, scanned))
}

/// A metric query at `steps`: each range function scans its records (in time order), then
/// the expression is evaluated step by step.
pub async fn metric(
    gw: &Arc<Gateway>,
    expr: &Expr,
    steps: Steps,
) -> Result<(Value, Scanned), Refusal> {
    let mut all = Vec::new();
    let mut total = Scanned::default();
    for (agg, grouping) in eval::range_aggs(expr) {
        let pipeline = Pipeline::new(&agg.log.pipeline).map_err(bad)?;
        let selector = Selector::new(&agg.log.selector).map_err(bad)?;
        let (from, to) = RangeEval::span(agg, steps);
        let (from_ms, to_ms) = ms_window(from + 1, to + 1);
        let Some(params) = plan(&agg.log, from_ms, to_ms, false)? else {
            all.push(RangeEval::new(agg, steps, grouping).finish());
            continue;
        };
        let state = RangeScan {
            op: agg.op,
            unwrapped: agg.unwrap().is_some(),
            levels: format!("{expr:?}").contains(super::records::DETECTED_LEVEL),
            window: (from, to),
            fast: pipeline.only_line_filters()
                && !format!("{expr:?}").contains(super::records::DETECTED_LEVEL),
            pipeline,
            selector,
            range: RangeEval::new(agg, steps, grouping),
            streams: HashMap::new(),
            failed: None,
        };
        let (state, scanned) = scan_lines(gw, params, state, RangeScan::record).await?;
        let (range, failed) = (state.range, state.failed);
        if let Some(e) = failed {
            return Err(bad(e));
        }
        total.lines += scanned.lines;
        total.bytes += scanned.bytes;
        total.partial |= scanned.partial;
        all.push(range.finish());
    }
    struct Done(Vec<Vec<Series>>);
    impl eval::Ranges for Done {
        fn series(&mut self, n: usize) -> Vec<Series> {
            std::mem::take(&mut self.0[n])
        }
    }
    let v = eval::evaluate(expr, steps, &mut Done(all)).map_err(bad)?;
    Ok((v, total))
}

/// A range function's scan: each record through the selector and pipeline into the
/// [`RangeEval`].
struct RangeScan {
    op: RangeOp,
    unwrapped: bool,
    levels: bool,
    /// `(from, to]`, nanoseconds.
    window: (i128, i128),
    /// Only line filters: a record's series is its stream's (and metadata's), found once per
    /// stream ([`RangeScan::streams`]).
    fast: bool,
    pipeline: Pipeline,
    selector: Selector,
    range: RangeEval,
    /// Per stream (topic and labels part): its series key, or `None` when the selector does
    /// not take it.
    streams: HashMap<Vec<u8>, Option<Labels>>,
    failed: Option<EvalError>,
}

impl RangeScan {
    /// Take one stored record; `false` once the query failed.
    fn record(&mut self, line: &[u8]) -> bool {
        if self.fast
            && let Some(done) = self.fast_record(line)
        {
            return done;
        }
        let Some(e) = entry(line) else { return true };
        let (from, to) = self.window;
        if e.ns <= from || e.ns > to || !self.selector.matches(&e.labels) {
            return true;
        }
        let Entry {
            ns,
            mut line,
            mut labels,
        } = e;
        if self.levels {
            super::records::detect_level(&mut labels, &line);
        }
        let mut sample = None;
        if !self.pipeline.run(&mut line, &mut labels, ns, &mut sample) {
            return true;
        }
        let value = self.value(sample, line.len());
        let pushed = self.range.push(ns, &labels, value);
        self.pushed(pushed)
    }

    /// A record whose series is its stream's: `None` when it is not one (metadata the
    /// grouping may keep), to be read whole.
    fn fast_record(&mut self, line: &[u8]) -> Option<bool> {
        use crate::record::{BODY_OFFSET, ULID_LEN, parts, ulid_ms};
        if line.len() < BODY_OFFSET {
            return Some(true);
        }
        let body = &line[BODY_OFFSET..];
        let (topic, payload) = match memchr::memchr(b' ', body) {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, &[][..]),
        };
        let p = parts::split(payload);
        let mut ns = i128::from(ulid_ms(&line[..ULID_LEN])) * 1_000_000;
        if !p.metadata.is_empty() {
            // Metadata is part of a record's series unless the grouping keeps only named
            // labels none of which it holds; the agent's time is read for the nanoseconds.
            let names = match self.range.grouping() {
                Some(g) if !g.without => &g.labels,
                _ => return None,
            };
            for (k, v) in parts::pairs(p.metadata) {
                if k == b"ts" {
                    if let Some(t) = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|v| v.parse::<jiff::Timestamp>().ok())
                        .map(|t| t.as_nanosecond())
                        .filter(|t| t.div_euclid(1_000_000) == ns / 1_000_000)
                    {
                        ns = t;
                    }
                } else if names.iter().any(|n| n.as_bytes() == k) {
                    return None;
                }
            }
        }
        let (from, to) = self.window;
        if ns <= from || ns > to || !self.pipeline.keeps_line(p.message) {
            return Some(true);
        }
        let mut stream = Vec::with_capacity(topic.len() + p.labels.len() + 1);
        stream.extend_from_slice(topic);
        stream.push(parts::MARK);
        stream.extend_from_slice(p.labels);
        if !self.streams.contains_key(&stream) {
            let labels = super::records::stream_labels(&String::from_utf8_lossy(topic), p.labels);
            let key = self
                .selector
                .matches(&labels)
                .then(|| self.range.key(&labels));
            self.streams.insert(stream.clone(), key);
        }
        let Some(key) = self.streams.get(&stream).and_then(Option::as_ref) else {
            return Some(true);
        };
        let value = self.value(None, p.message.len());
        let pushed = self.range.push_key(ns, key, value);
        Some(self.pushed(pushed))
    }

    fn value(&self, sample: Option<f64>, line_len: usize) -> f64 {
        match (self.op, self.unwrapped) {
            (_, true) => sample.unwrap_or(0.0),
            (RangeOp::Bytes | RangeOp::BytesRate, _) => line_len as f64,
            _ => 1.0,
        }
    }

    fn pushed(&mut self, r: Result<(), EvalError>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }
}

/// The summary of a scan that took `secs` and returned `returned`.
pub fn summary(s: &Scanned, returned: u64, secs: f64) -> Summary {
    Summary {
        bytes: s.bytes,
        lines: s.lines,
        returned,
        secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needle_of(q: &str) -> (String, bool) {
        needle(&crate::logql::parse::parse_log(q).unwrap())
    }

    #[test]
    fn needles_select_at_least_what_the_filters_keep() {
        assert_eq!(
            needle_of(r#"{a="b"} |~ "x.y" |= "lit""#),
            ("lit".into(), false)
        );
        assert_eq!(
            needle_of(r#"{a="b"} |~ "(?i)err(or)?""#),
            ("(?i)err(or)?".into(), true)
        );
        assert_eq!(
            needle_of(r#"{a="b"} |= "a.b" or "c""#),
            (r"a\.b|c".into(), true)
        );
        assert_eq!(
            needle_of(r#"{a="b"} |~ "^GET""#),
            (String::new(), false),
            "anchored"
        );
        assert_eq!(
            needle_of(r#"{a="b"} |~ "\\bx\\b""#),
            (String::new(), false),
            "boundaries"
        );
        assert_eq!(needle_of(r#"{a="b"} != "x""#), (String::new(), false));
        assert_eq!(
            needle_of(r#"{a="b"} | line_format "x" |= "y""#),
            (String::new(), false)
        );
        assert_eq!(needle_of(r#"{a="b"} | logfmt |= "y""#), ("y".into(), false));
    }
}
