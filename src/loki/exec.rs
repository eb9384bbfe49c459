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
use crate::logql::ast::{Expr, FilterValue, LineOp, LogExpr, Stage};
use crate::logql::eval::{self, EvalError, RangeEval, Series, Steps, Value};
use crate::logql::labels::{Labels, Origin};
use crate::logql::parse::check_selector;
use crate::logql::pipeline::Pipeline;
use crate::logql::record::{Entry, Selector, entry, topics};
use crate::logql::sample::{Sampled, Sampler};
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
        None => match logfmt_needle(log) {
            Some(key) => (key, false),
            None => (String::new(), false),
        },
    }
}

/// For `| logfmt | name >= 500` (a label filter that needs `name`, after a plain `logfmt`
/// and nothing else that makes labels): `name=`, which a record holding the label has in its
/// text whether the label is a field of its line, a stream label or metadata (a name with no
/// `_` is its key as written: names are made valid by turning other characters into `_`).
fn logfmt_needle(log: &LogExpr) -> Option<String> {
    use crate::logql::ast::{LabelFilter, Parser};
    let mut parsed = false;
    for stage in &log.pipeline {
        match stage {
            Stage::Line(_) | Stage::Drop(_) => {}
            Stage::Parser(Parser::Logfmt { params, .. }) if params.is_empty() && !parsed => {
                parsed = true;
            }
            Stage::Label(f) if parsed => {
                if let Some(name) = required(f)
                    && !name.is_empty()
                    && name.bytes().all(|c| c.is_ascii_alphanumeric())
                {
                    return Some(format!("{name}="));
                }
            }
            _ => return None,
        }
    }
    return None;

    /// A label the filter cannot pass without.
    fn required(f: &LabelFilter) -> Option<&str> {
        use crate::logql::ast::{CmpOp, Value};
        match f {
            LabelFilter::And(a, b) => required(a).or_else(|| required(b)),
            LabelFilter::Compare { name, op, value } => match (op, value) {
                (CmpOp::Ne | CmpOp::Nre, _) => None,
                (CmpOp::Eq, Value::Str(v)) if v.is_empty() => None,
                (CmpOp::Re, Value::Str(v))
                    if regex::Regex::new(&format!("^(?:{v})$")).is_ok_and(|r| r.is_match("")) =>
                {
                    None
                }
                _ => Some(name),
            },
            LabelFilter::Or(..) | LabelFilter::Ip { .. } => None,
        }
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
    each: F,
) -> Result<(S, Scanned), Refusal>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8]) -> bool + Send + 'static,
{
    let gathering = gw.records(&params).await?;
    consume(gathering, state, each).await
}

/// Read a gathered body's lines, handing each (without its newline) to `each` on a blocking
/// thread until it says stop.
async fn consume<S, F>(
    gathering: crate::store::gather::Gathering,
    state: S,
    mut each: F,
) -> Result<(S, Scanned), Refusal>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8]) -> bool + Send + 'static,
{
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

/// An entry's labels as its stream's key and the rest: with `categorize`, the stream labels
/// apart from the metadata and parsed ones; without, all of them are the stream's.
pub fn split_labels(labels: Labels, categorize: bool) -> (Labels, Labels) {
    if !categorize {
        return (labels, Labels::new());
    }
    let mut stream = labels.clone();
    stream.retain(|l| l.origin == Origin::Stream);
    let mut rest = labels;
    rest.retain(|l| l.origin != Origin::Stream);
    (stream, rest)
}

/// What a log query asks.
#[derive(Clone, Copy, Debug)]
pub struct LogAsk {
    /// `[start, end)`, nanoseconds.
    pub window: (i128, i128),
    /// At most this many entries, over every stream.
    pub limit: u64,
    /// Newest first.
    pub backward: bool,
    /// Stream labels apart from the rest (`categorize-labels`).
    pub categorize: bool,
    /// Loki's `interval`: a stream's entries at least this far apart (nanoseconds).
    pub interval: Option<i128>,
}

/// A log query: the entries of `[start, end)` through the pipeline, newest first when
/// `backward`, at most `limit`, grouped in streams (by stream labels only when `categorize`).
pub async fn logs(
    gw: &Arc<Gateway>,
    log: &LogExpr,
    ask: LogAsk,
) -> Result<(Vec<Stream>, Scanned), Refusal> {
    let LogAsk {
        window: (start, end),
        limit,
        backward,
        categorize,
        interval,
    } = ask;
    if end <= start {
        return Ok((Vec::new(), Scanned::default()));
    }
    let pipeline = Pipeline::new(&log.pipeline).map_err(bad)?;
    let selector = Selector::new(&log.selector).map_err(bad)?;
    let (from_ms, to_ms) = ms_window(start, end);
    let levels = crate::logql::record::names_level(log);
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
    // With `interval`, a stream's entry is answered only that long after (or before, going
    // backward) the last one answered.
    let spaced = move |last: Option<&(i128, Vec<u8>, Labels)>, ns: i128| match (interval, last) {
        (Some(iv), Some((prev, _, _))) => (ns - prev).abs() >= iv,
        _ => true,
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
            crate::logql::record::detect_level(&mut labels, &line);
        }
        let mut sample = None;
        if !pipeline.run(&mut line, &mut labels, ns, &mut sample) {
            return true;
        }
        // Every entry answered has a level, as Loki 3 gives it (Grafana colours by it).
        crate::logql::record::detect_level(&mut labels, &line);
        let (key, rest) = split_labels(labels, categorize);
        let stream = st.streams.entry(key.clone()).or_insert_with(|| Stream {
            labels: key,
            entries: Vec::new(),
        });
        if !spaced(stream.entries.last(), ns) {
            return true;
        }
        stream.entries.push((ns, line, rest));
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
    text: &str,
    expr: &Expr,
    steps: Steps,
) -> Result<(Value, Scanned), Refusal> {
    let mut all = Vec::new();
    let mut total = Scanned::default();
    for (n, (agg, grouping)) in eval::range_aggs(expr).into_iter().enumerate() {
        let (from, to) = RangeEval::span(agg, steps);
        let (from_ms, to_ms) = ms_window(from + 1, to + 1);
        let Some(params) = plan(&agg.log, from_ms, to_ms, false)? else {
            all.push(RangeEval::new(agg, steps).finish());
            continue;
        };
        let (range, failed, scanned) = if gw.alone() {
            // One store node: its records are sampled here, without a line per sample.
            let levels = crate::logql::record::names_level(expr);
            let state = RangeScan {
                sampler: Sampler::new(agg, (from, to), grouping, levels).map_err(bad)?,
                range: RangeEval::new(agg, steps),
                failed: None,
            };
            let (state, scanned) = scan_lines(gw, params, state, RangeScan::record).await?;
            (state.range, state.failed, scanned)
        } else {
            // Each store node samples its own records; the merge counts each record once.
            let extra = format!(
                "logql={}&n={n}&window={from},{to}",
                crate::http::percent_encode(text)
            );
            let gathering = gw.samples(&params, &extra).await?;
            let state = SampleScan {
                range: RangeEval::new(agg, steps),
                keys: HashMap::new(),
                failed: None,
            };
            let (state, scanned) = consume(gathering, state, SampleScan::line).await?;
            (state.range, state.failed, scanned)
        };
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

/// A range function's samples from records read here, into the [`RangeEval`].
struct RangeScan {
    sampler: Sampler,
    range: RangeEval,
    failed: Option<EvalError>,
}

impl RangeScan {
    /// Take one stored record; `false` once the query failed.
    fn record(&mut self, line: &[u8]) -> bool {
        let pushed = match self.sampler.sample(line) {
            Sampled::Skip => return true,
            Sampled::Error(e) => Err(e),
            Sampled::Sample { ns, key, value, .. } => self.range.push_key(ns, &key, value),
        };
        match pushed {
            Ok(()) => true,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }
}

/// A range function's samples, gathered from the store nodes, into the [`RangeEval`].
struct SampleScan {
    range: RangeEval,
    /// Series labels by their JSON text, as the nodes send them.
    keys: HashMap<Vec<u8>, Labels>,
    failed: Option<EvalError>,
}

impl SampleScan {
    /// Take one line `<ULID> <ns> <value> <labels JSON>`; `false` once the query failed.
    fn line(&mut self, line: &[u8]) -> bool {
        use crate::store::api::samples::FAILED;
        if let Some(why) = line.strip_prefix(FAILED.as_bytes()) {
            self.failed = Some(EvalError(String::from_utf8_lossy(why).into_owned()));
            return false;
        }
        let mut fields = line.get(27..).unwrap_or_default().splitn(3, |&b| b == b' ');
        let (Some(ns), Some(value), Some(json)) = (fields.next(), fields.next(), fields.next())
        else {
            return true;
        };
        let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<f64>().ok();
        let (Some(ns), Some(value)) = (
            std::str::from_utf8(ns)
                .ok()
                .and_then(|n| n.parse::<i128>().ok()),
            number(value),
        ) else {
            return true;
        };
        if !self.keys.contains_key(json) {
            let map: std::collections::BTreeMap<String, String> =
                serde_json::from_slice(json).unwrap_or_default();
            let mut labels = Labels::new();
            for (k, v) in map {
                labels.set(&k, v, Origin::Stream);
            }
            self.keys.insert(json.to_vec(), labels);
        }
        let key = &self.keys[json];
        match self.range.push_key(ns, key, value) {
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
        assert_eq!(
            needle_of(r#"{a="b"} | logfmt | status >= 500"#),
            ("status=".into(), false)
        );
        assert_eq!(
            needle_of(r#"{a="b"} | logfmt | x="" or status > 1"#),
            (String::new(), false)
        );
        assert_eq!(
            needle_of(r#"{a="b"} | logfmt | status != 500"#),
            (String::new(), false)
        );
        assert_eq!(
            needle_of(r#"{a="b"} | logfmt | http_status > 1"#),
            (String::new(), false)
        );
        assert_eq!(
            needle_of(r#"{a="b"} | json | status > 1"#),
            (String::new(), false)
        );
    }
}
