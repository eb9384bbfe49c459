//! The store HTTP API of this node, mounted at `/store`: `GET|HEAD /_query` (this node's
//! segments only), `POST /replicate` (receive an aggregate segment), and the stream endpoints
//! (answered "not implemented" for now). The user query, `/store/query`, is the scatter/gather
//! gateway in [`super::gather`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::log::{ACTIVE, StoreLog};
pub mod params;
pub mod samples;

use super::query::{Plan, QueryParams};
use super::registry::Registry;
use super::replicate::{ReplicaError, ReplicaWriter};
use super::retention::Retention;
use crate::gotime;
use crate::http::{frame_body, text, text_body};
use crate::metrics::Metrics;
use crate::record::{BODY_OFFSET, ULID_LEN};
use crate::search::context::Context;
use crate::search::{Expiry, Matcher};
use crate::segment::Needles;
use hyper::body::Frame;
use params::{RawParams, parse_query, stream_matcher};

/// Query output is sent in chunks of about this size (256 KiB).
const OUT_CHUNK: usize = 256 << 10;
/// Chunk size of an answer sent straight from the segment mappings (1 MiB).
const SHARED_CHUNK: usize = 1 << 20;
/// Chunks in flight between the search thread and the HTTP body.
const OUT_CHUNKS_IN_FLIGHT: usize = 8;

/// State shared by the store API handlers.
#[derive(Debug)]
pub struct StoreApi {
    /// Rate limit of the "replicate body broke off" line (one a second, with the count held
    /// back): a flood of broken uploads cannot flood the log.
    broken_log: crate::throttle::Throttle,
    log: Arc<StoreLog>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    retention: Arc<Retention>,
    /// Turns true when the node stops: every running search gives up.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl StoreApi {
    /// API state over `log`, every record visible until its segment is removed.
    pub fn new(log: Arc<StoreLog>, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_retention(log, metrics, Arc::new(Retention::uniform(Duration::MAX)))
    }

    /// API state over `log` hiding records past their topic's `retention`.
    pub fn with_retention(
        log: Arc<StoreLog>,
        metrics: Arc<Metrics>,
        retention: Arc<Retention>,
    ) -> Arc<Self> {
        let registry = Registry::new(Arc::clone(&metrics));
        Arc::new(StoreApi {
            broken_log: crate::throttle::Throttle::new(Duration::from_secs(1)),
            log,
            metrics,
            registry,
            retention,
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    /// What a query over `params` must hide: records of topics whose retention has passed
    /// (none when no topic's retention is shorter than the window's age).
    fn expiry(&self, params: &QueryParams) -> Option<Arc<Expiry>> {
        if !self.retention.has_rules() {
            return None;
        }
        let now = gotime::now_ms().max(0) as u64;
        let keep_from_ms = now.saturating_sub(self.retention.shortest().as_millis() as u64);
        if params.from_ms >= keep_from_ms {
            return None;
        }
        let retention = Arc::clone(&self.retention);
        Some(Arc::new(Expiry {
            keep_from_ms,
            cutoff: Box::new(move |topic| retention.cutoff_for(topic, now)),
        }))
    }

    /// The `/store/*` routes.
    pub fn router(self: &Arc<Self>) -> Router {
        // HEAD gets its own route: axum would otherwise run the GET handler (the full query)
        // and drop the body.
        Router::new()
            .route("/store/_query", get(query).head(query))
            .route("/store/_hits", get(hits).head(hits))
            .route("/store/replicate", post(replicate))
            .route("/store/_stream", get(local_stream))
            .route("/store/_labels", get(local_labels))
            .route("/store/_samples", get(samples::local_samples))
            .with_state(Arc::clone(self))
    }

    /// The streams of this node's records in `[from_ms, to_ms]`, from the label index.
    pub async fn streams(
        self: &Arc<Self>,
        from_ms: u64,
        to_ms: u64,
    ) -> io::Result<Vec<super::labels::StreamInfo>> {
        let api = Arc::clone(self);
        tokio::task::spawn_blocking(move || api.log.labels().streams(&api.log, from_ms, to_ms))
            .await
            .map_err(io::Error::other)?
    }
}

/// `GET /store/_labels?from=&to=`: the streams of this node's records in the window (times as
/// `/store/query` takes them), as JSON.
async fn local_labels(
    State(api): State<Arc<StoreApi>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let raw = RawParams(raw);
    let window = (|| -> Result<(u64, u64), params::ParamError> {
        let to = match raw.get("to") {
            Some(v) => params::parse_time("to", v)?,
            None => gotime::now_ms().max(0) as u64,
        };
        let from = match raw.get("from") {
            Some(v) => params::parse_time("from", v)?,
            None => to.saturating_sub(3_600_000),
        };
        Ok((from, to))
    })();
    let (from, to) = match window {
        Ok(w) => w,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match api.streams(from, to).await {
        Ok(streams) => {
            let body = serde_json::to_string(&streams).unwrap_or_else(|_| "[]".into());
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the label index: {e}\n"),
        ),
    }
}

impl StoreApi {
    /// The node is stopping: every running search gives up at its next piece or block (and
    /// frees its thread, so the process can end).
    pub fn stop_searches(&self) {
        self.stopping.send_replace(true);
    }

    /// A flag set once `tx`'s reader (the answer's body) is gone or the node stops, until
    /// `done` resolves (the search ended): what a search checks to give up early.
    fn cancel_when_gone(
        &self,
        tx: &mpsc::Sender<io::Result<Frame<Bytes>>>,
        done: tokio::sync::oneshot::Receiver<()>,
    ) -> Arc<std::sync::atomic::AtomicBool> {
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, tx, mut stopping) = (Arc::clone(&cancel), tx.clone(), self.stopping.subscribe());
        tokio::spawn(async move {
            let gone = tokio::select! {
                _ = tx.closed() => true,
                _ = stopping.wait_for(|s| *s) => true,
                _ = done => false,
            };
            if gone {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        cancel
    }

    /// Store an aggregate segment this node's consumer built (`spool`, already checked: valid
    /// records, sorted, deduplicated) as an accepted replica, without the HTTP round trip and
    /// its second copy: adopted into the store, published to live streams, counted as ingress.
    pub fn accept_local(
        &self,
        spool: &std::path::Path,
        low: &[u8; ULID_LEN],
        high: &[u8; ULID_LEN],
        bytes: u64,
    ) -> io::Result<()> {
        let for_streams = if self.registry.is_empty() {
            None
        } else {
            std::fs::File::open(spool).ok().and_then(|f| {
                // SAFETY: the spool is complete and never written again (only unlinked), so
                // the mapping stays valid.
                unsafe { memmap2::Mmap::map(&f) }.ok()
            })
        };
        self.log.adopt(spool, low, high)?;
        if let Some(map) = for_streams {
            self.registry.publish(Bytes::from_owner(map));
        }
        self.count_ingress(bytes);
        Ok(())
    }

    /// Count one accepted replica of `bytes`.
    fn count_ingress(&self, bytes: u64) {
        let m = &self.metrics;
        m.store_replicated_segments
            .get_or_create(&vec![("direction", "ingress")])
            .inc();
        m.store_replicated_bytes
            .get_or_create(&vec![("direction", "ingress")])
            .inc_by(bytes);
    }
}

/// `GET /store/_stream?q=&regex=`: records matching `q` from segments this node accepts from
/// now on, as they arrive.
async fn local_stream(
    State(api): State<Arc<StoreApi>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let matcher = match stream_matcher(&RawParams(raw)) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let sub = api.registry.register(matcher);
    // The subscription lives in the body stream: when the client goes away, it is dropped
    // and deregistered.
    let body = futures_util::stream::unfold(sub, |mut sub| async move {
        sub.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), sub))
    });
    text_body(StatusCode::OK, HeaderMap::new(), Body::from_stream(body))
}

/// Trailer of a query answer: store nodes whose answer broke off after the headers went out.
pub const LATE_ERRORS: &str = "x-oklog-late-errors";
/// Trailer of a query answer: compressed blocks that could not be read, whose records are
/// missing from the answer.
pub const CORRUPT_BLOCKS: &str = "x-oklog-corrupt-blocks";

/// The error that aborts a partial answer's body for a client without trailers.
#[derive(Debug, thiserror::Error)]
#[error("partial answer: {errors} store node(s) failed, {corrupt} corrupt block(s) skipped")]
pub struct Partial {
    /// Store nodes whose body failed or stalled.
    pub errors: u64,
    /// Blocks that could not be read.
    pub corrupt: u64,
}

/// What went missing from a query answer after its headers went out. A client that sent
/// `TE: trailers` gets both counts as trailers at the end of the body; to any other client a
/// partial answer is aborted (the body ends without its last chunk), so it can never be taken
/// for a whole one.
#[derive(Debug, Default)]
pub struct Late {
    /// Store nodes whose body failed or stalled.
    pub errors: std::sync::atomic::AtomicU64,
    /// Blocks that could not be read.
    pub corrupt: std::sync::atomic::AtomicU64,
}

impl Late {
    /// Add the counts of a store node's trailers.
    pub fn add_trailers(&self, t: &HeaderMap) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = |k: &str| -> u64 {
            t.get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        self.errors.fetch_add(n(LATE_ERRORS), Relaxed);
        self.corrupt.fetch_add(n(CORRUPT_BLOCKS), Relaxed);
    }

    /// Whether anything went missing.
    pub fn is_partial(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.errors.load(Relaxed) + self.corrupt.load(Relaxed) > 0
    }

    /// The last frame of the body: the trailers, or for a client without them an error that
    /// aborts a partial answer (`None`: end normally).
    pub fn last_frame(&self, trailers: bool) -> Option<io::Result<hyper::body::Frame<Bytes>>> {
        use std::sync::atomic::Ordering::Relaxed;
        if trailers {
            let mut t = HeaderMap::new();
            t.insert(LATE_ERRORS, HeaderValue::from(self.errors.load(Relaxed)));
            t.insert(
                CORRUPT_BLOCKS,
                HeaderValue::from(self.corrupt.load(Relaxed)),
            );
            return Some(Ok(hyper::body::Frame::trailers(t)));
        }
        self.is_partial().then(|| {
            Err(io::Error::other(Partial {
                errors: self.errors.load(Relaxed),
                corrupt: self.corrupt.load(Relaxed),
            }))
        })
    }

    /// Declare the trailers in a response's headers (hyper sends only declared ones).
    pub fn declare(headers: &mut HeaderMap) {
        headers.insert(
            axum::http::header::TRAILER,
            HeaderValue::from_static("X-Oklog-Late-Errors, X-Oklog-Corrupt-Blocks"),
        );
    }
}

/// What a query answer reports in its `X-Oklog-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Nodes that answered.
    pub nodes: u64,
    /// Segments selected (summed over nodes).
    pub segments: u64,
    /// Bytes of the selected segments (the largest node's, as the original).
    pub max_data_set_size: u64,
    /// Nodes that failed.
    pub errors: u64,
}

/// The `X-Oklog-*` headers of a query answer.
pub fn stats_headers(params: &QueryParams, stats: &Stats, took: std::time::Duration) -> HeaderMap {
    let mut h = HeaderMap::new();
    header(
        &mut h,
        "X-Oklog-From",
        gotime::rfc3339_utc_secs(params.from_ms as i64),
    );
    header(
        &mut h,
        "X-Oklog-To",
        gotime::rfc3339_utc_secs(params.to_ms as i64),
    );
    header(&mut h, "X-Oklog-Q", params.q.clone());
    header(&mut h, "X-Oklog-Regex", params.regex.to_string());
    header(&mut h, "X-Oklog-Nodes-Queried", stats.nodes.to_string());
    header(
        &mut h,
        "X-Oklog-Segments-Queried",
        stats.segments.to_string(),
    );
    header(
        &mut h,
        "X-Oklog-Max-Data-Set-Size",
        stats.max_data_set_size.to_string(),
    );
    header(&mut h, "X-Oklog-Error-Count", stats.errors.to_string());
    header(&mut h, "X-Oklog-Duration", gotime::format_duration(took));
    h
}

fn header(h: &mut HeaderMap, name: &'static str, value: String) {
    // Header values come from parsed numbers, times and the query; a `q` with bytes a header
    // cannot carry is percent-encoded rather than dropped.
    let v = HeaderValue::from_str(&value).unwrap_or_else(|_| {
        HeaderValue::from_str(&value.escape_default().to_string())
            .unwrap_or(HeaderValue::from_static(""))
    });
    h.insert(name, v);
}

/// `GET|HEAD /store/_query` (records) and `/store/_hits` (their ULIDs, one per line, which
/// the gateway's `/store/hits` buckets): this node's answer.
async fn local(
    api: Arc<StoreApi>,
    method: Method,
    headers: HeaderMap,
    raw: RawParams,
    output: Output,
) -> Response {
    let trailers = crate::http::accepts_trailers(&headers);
    match parse_query(&raw) {
        Ok(mut params) => {
            if output != Output::Records {
                // Hits are counted, not listed: every match, in the order the gateway merges.
                (params.desc, params.limit) = (false, None);
            }
            answer(&api, &method, params, output, trailers).await
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

async fn query(
    State(api): State<Arc<StoreApi>>,
    method: Method,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    local(api, method, headers, RawParams(raw), Output::Records).await
}

async fn hits(
    State(api): State<Arc<StoreApi>>,
    method: Method,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let raw = RawParams(raw);
    match Output::of_hits(&raw) {
        Ok(output) => local(api, method, headers, raw, output).await,
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// What a local answer's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The matching records, whole (`/store/_query`).
    Records,
    /// Only their ULIDs, one per line (`/store/_hits`).
    Ulids,
    /// Their ULIDs and topics, `<ULID> <topic>` per line (`/store/_hits?by=topic`).
    UlidTopics,
}

impl Output {
    /// What a hits request asks for: its `by` parameter (absent, or `topic`).
    pub fn of_hits(raw: &RawParams) -> Result<Output, params::ParamError> {
        match raw.get("by") {
            None | Some("") => Ok(Output::Ulids),
            Some("topic") => Ok(Output::UlidTopics),
            Some(v) => Err(params::ParamError::By(v.to_string())),
        }
    }
}

/// This node's answer to a parsed query: the planning headers, and for GET the matching
/// records (or their ULIDs), streamed, ending with trailers when `trailers` (see [`Late`]).
/// The gateway calls it directly for its own node.
pub async fn answer(
    api: &Arc<StoreApi>,
    method: &Method,
    params: QueryParams,
    output: Output,
    trailers: bool,
) -> Response {
    let started = Instant::now();
    let matcher = match params.matcher() {
        Ok(m) => m.with_expiry(api.expiry(&params)),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // With context lines, every record of the selected topics around the window is read
    // (the margins hold the first and last matches' neighbours); matches are told apart here.
    let context = output == Output::Records && params.before + params.after > 0;
    let (scan_params, scan_matcher) = if context {
        let all = Matcher::new("", false)
            .unwrap_or_else(|_| unreachable!("the empty query compiles"))
            .with_topics(matcher.topics.clone())
            .with_expiry(matcher.expiry.clone());
        (params.context_scan(), all)
    } else {
        (params.clone(), matcher.clone())
    };
    let head = *method == Method::HEAD;
    let plan = match plan(api, &scan_params, head).await {
        Ok(plan) => plan,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let stats = Stats {
        nodes: 1,
        segments: plan.segments.len() as u64,
        max_data_set_size: plan.data_set_size(),
        errors: 0,
    };
    let mut headers = stats_headers(&params, &stats, started.elapsed());
    if head {
        return (StatusCode::OK, headers, Body::empty()).into_response();
    }
    if params.is_plain_dump()
        && matcher.is_all()
        && output == Output::Records
        && let Some(ranges) = plan.shared_ranges(&params)
    {
        return shared_answer(ranges, headers);
    }
    let needles = Needles::new(&scan_params.q, scan_params.regex);
    let scan = plan.scan(&scan_params, &needles, &scan_matcher);
    header(
        &mut headers,
        "X-Oklog-Bytes-Scanned",
        scan.bytes.to_string(),
    );
    header(
        &mut headers,
        "X-Oklog-Blocks-Skipped",
        scan.blocks_skipped.to_string(),
    );
    if trailers {
        Late::declare(&mut headers);
    }
    let metrics = Arc::clone(&api.metrics);
    let encoder = Encoder::new(&params, matcher, output, context);
    let (tx, rx) = mpsc::channel::<io::Result<Frame<Bytes>>>(OUT_CHUNKS_IN_FLIGHT);
    // The search gives up as soon as its client is gone or the node stops, whether or not it
    // has output to write (the watcher lets go of its sender once the search is done).
    let (done, search_done) = tokio::sync::oneshot::channel::<()>();
    let cancel = api.cancel_when_gone(&tx, search_done);
    tokio::task::spawn_blocking(move || {
        let _done = done;
        let mut out = Out {
            tx,
            buf: Vec::with_capacity(OUT_CHUNK * 2),
            open: true,
        };
        let mut encoder = encoder;
        let result = plan.execute_scan(&scan, &scan_params, &scan_matcher, &cancel, &mut |lines| {
            let more = encoder.push(lines, &mut out.buf);
            out.flush_full() && more
        });
        encoder.finish(&mut out.buf);
        out.end(result, &metrics, trailers);
    });
    text_body(StatusCode::OK, headers, frame_body(rx))
}

/// The segments a query reads: named only for HEAD, opened for GET.
async fn plan(api: &StoreApi, p: &QueryParams, head: bool) -> io::Result<Plan> {
    let (log, p) = (Arc::clone(&api.log), p.clone());
    tokio::task::spawn_blocking(move || {
        if head {
            Plan::new(&log, &p)
        } else {
            Plan::open(&log, &p)
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// Every record in range is the answer: the mapped bytes themselves, in chunks.
fn shared_answer(ranges: Vec<Bytes>, mut headers: HeaderMap) -> Response {
    header(
        &mut headers,
        "X-Oklog-Bytes-Scanned",
        ranges
            .iter()
            .map(|r| r.len() as u64)
            .sum::<u64>()
            .to_string(),
    );
    let chunks = ranges.into_iter().flat_map(|r| {
        (0..r.len())
            .step_by(SHARED_CHUNK)
            .map(move |at| Ok::<_, io::Error>(r.slice(at..(at + SHARED_CHUNK).min(r.len()))))
            .collect::<Vec<_>>()
    });
    text_body(
        StatusCode::OK,
        headers,
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
}

/// What a local answer writes for the matching lines the search pushes: the records (up to
/// the limit), with context chosen around the matches, or only their ULIDs (and topics).
struct Encoder {
    output: Output,
    /// Records still wanted, with a `limit`.
    left: Option<u64>,
    /// With context lines: the context, and what tells a match from context.
    ctx: Option<(Context, Matcher, u64, u64)>,
}

impl Encoder {
    fn new(params: &QueryParams, matcher: Matcher, output: Output, context: bool) -> Self {
        let ctx = context.then(|| {
            let ctx = Context::new(
                params.before as usize,
                params.after as usize,
                params.desc,
                params.limit,
            );
            (ctx, matcher, params.from_ms, params.to_ms)
        });
        Encoder {
            output,
            left: params.limit,
            ctx,
        }
    }

    /// Encode `lines` (whole records) into `buf`; false once nothing more is wanted.
    fn push(&mut self, lines: &[u8], buf: &mut Vec<u8>) -> bool {
        if let Some((ctx, matcher, from_ms, to_ms)) = &mut self.ctx {
            for line in lines.split_inclusive(|&b| b == b'\n') {
                let ms = crate::record::ulid_ms(line);
                let is_match =
                    ms >= *from_ms && ms <= *to_ms && matcher.is_match(crate::search::body(line));
                ctx.push(line, is_match, buf);
            }
            return !ctx.done();
        }
        let lines = match &mut self.left {
            Some(left) => take_lines(lines, left),
            None => lines,
        };
        match self.output {
            Output::Records => buf.extend_from_slice(lines),
            Output::Ulids => {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', lines) {
                    buf.extend_from_slice(&lines[start..end.min(start + ULID_LEN)]);
                    buf.push(b'\n');
                    start = end + 1;
                }
            }
            Output::UlidTopics => {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', lines) {
                    let line = &lines[start..end];
                    let topic =
                        crate::search::topic_of(line.get(BODY_OFFSET..).unwrap_or_default());
                    buf.extend_from_slice(&line[..line.len().min(ULID_LEN)]);
                    buf.push(b' ');
                    buf.extend_from_slice(topic);
                    buf.push(b'\n');
                    start = end + 1;
                }
            }
        }
        self.left != Some(0)
    }

    /// Write what the context still holds.
    fn finish(&mut self, buf: &mut Vec<u8>) {
        if let Some((ctx, ..)) = &mut self.ctx {
            ctx.finish(buf);
        }
    }
}

/// A local answer's body as it is written: chunks of [`OUT_CHUNK`] bytes sent as they fill.
struct Out {
    tx: mpsc::Sender<io::Result<Frame<Bytes>>>,
    buf: Vec<u8>,
    /// False once the body's reader went away.
    open: bool,
}

impl Out {
    /// Send the buffer if it is full; false if the reader went away.
    fn flush_full(&mut self) -> bool {
        if self.buf.len() >= OUT_CHUNK {
            let chunk = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(OUT_CHUNK * 2),
            ));
            self.open = self.tx.blocking_send(Ok(Frame::data(chunk))).is_ok();
        }
        self.open
    }

    /// End the body after the search's `result`: the rest of the buffer and the trailers
    /// (corrupt blocks counted), or the error that aborts it.
    fn end(
        self,
        result: io::Result<crate::store::query::Outcome>,
        metrics: &Metrics,
        trailers: bool,
    ) {
        match result {
            Ok(outcome) if self.open => {
                if !self.buf.is_empty() {
                    let _ = self
                        .tx
                        .blocking_send(Ok(Frame::data(Bytes::from(self.buf))));
                }
                let late = Late::default();
                if outcome.corrupt_blocks > 0 {
                    metrics.store_corrupt_blocks.inc_by(outcome.corrupt_blocks);
                    late.corrupt
                        .store(outcome.corrupt_blocks, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(last) = late.last_frame(trailers) {
                    let _ = self.tx.blocking_send(last);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "query failed while streaming");
                let _ = self.tx.blocking_send(Err(e));
            }
        }
    }
}

/// The first `left` lines of `lines` (all of them if fewer), counted off `left`.
fn take_lines<'a>(lines: &'a [u8], left: &mut u64) -> &'a [u8] {
    let mut n = 0;
    for end in memchr::memchr_iter(b'\n', lines) {
        n += 1;
        if n == *left {
            *left = 0;
            return &lines[..=end];
        }
    }
    *left -= n;
    lines
}

async fn replicate(State(api): State<Arc<StoreApi>>, body: Body) -> Response {
    let log = Arc::clone(&api.log);
    let created = tokio::task::spawn_blocking(move || log.create(ACTIVE)).await;
    let (file, path) = match created {
        Ok(Ok(fp)) => fp,
        Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut writer = ReplicaWriter::new(file, path.clone());
    let mut stream = body.into_data_stream();
    let mut result: Result<(), ReplicaError> = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                // Page-cache writes of one body chunk; fsync happens off this worker below.
                if let Err(e) = writer.push(&chunk) {
                    result = Err(e);
                    break;
                }
            }
            Err(e) => {
                // hyper's message for a malformed chunk is its Display plus the source.
                let why = match std::error::Error::source(&e) {
                    Some(src) => format!("{e}: {src}"),
                    None => e.to_string(),
                };
                result = Err(ReplicaError::Body(why));
                break;
            }
        }
    }
    let log = Arc::clone(&api.log);
    let registry = Arc::clone(&api.registry);
    let done = tokio::task::spawn_blocking(move || -> Result<Option<(u64, u64)>, ReplicaError> {
        let outcome = result.and_then(|()| writer.finish());
        match outcome {
            Ok(Some(r)) => {
                // Keep the accepted bytes reachable for live streams whatever the close does
                // with the name (an open handle keeps the inode).
                let for_streams = if registry.is_empty() {
                    None
                } else {
                    std::fs::File::open(&r.path).ok()
                };
                log.close(r.file, &r.path, &r.low, &r.high)?;
                if let Some(f) = for_streams {
                    // SAFETY: the inode is never truncated or written after validation; it
                    // is only renamed or unlinked, which keeps the mapping valid.
                    if let Ok(map) = unsafe { memmap2::Mmap::map(&f) } {
                        registry.publish(Bytes::from_owner(map));
                    }
                }
                Ok(Some((r.records, r.bytes)))
            }
            Ok(None) => {
                std::fs::remove_file(&path)?;
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    })
    .await;
    match done {
        Ok(Ok(Some((_records, bytes)))) => {
            api.count_ingress(bytes);
            text(StatusCode::OK, "OK\n")
        }
        Ok(Ok(None)) => text(StatusCode::OK, "No records\n"),
        Ok(Err(e @ ReplicaError::Malformed { .. })) => {
            api.metrics.store_rejected_replicas.inc();
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
        Ok(Err(e @ ReplicaError::Body(_))) => {
            // The partial file is gone; a client that vanished never reads this answer.
            api.metrics.store_rejected_replicas.inc();
            if let Some(held) = api.broken_log.allow() {
                tracing::warn!(error = %e, suppressed = held, "replicate body broke off; nothing stored");
            }
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
