//! The user query, `/store/query`: scatter the same request to every store node's
//! `/store/_query`, gather their answers, and merge the bodies lazily by ULID with dedup.
//!
//! Every peer is asked concurrently, with a connect timeout, a response-header timeout and a
//! per-peer body idle timeout: a node that fails or is too slow counts in
//! `X-Oklog-Error-Count` and the answer is a `206` with everything the others had, never a
//! hang. The status is sent once every peer's headers are in; what goes missing after that (a
//! peer's body that breaks off or stalls, compressed blocks a peer could not read) is logged,
//! counted (`oklog_store_query_peer_errors_total`) and reported at the end of the body: as
//! trailers to a client that sent `TE: trailers`, by aborting the body to any other (see
//! [`Late`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::api::params::{ParamError, RawParams, parse_query, stream_matcher};
use super::api::{Late, Output, Stats, stats_headers};
use super::hits::{Buckets, TopicBuckets};
use super::query::QueryParams;
use super::retention::Retention;
use crate::cluster::{Peers, Role};
use crate::http::{self, Client, text, text_body};
use crate::merge::{self, Source};
use crate::metrics::Metrics;
use crate::record::ULID_LEN;
use hyper::body::Frame;

/// How long a peer may take to answer with headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer's body may stall before it is given up.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Output chunk size (256 KiB).
const OUT_CHUNK: usize = 256 << 10;

/// State of the gateway handler.
#[derive(Debug)]
pub struct Gateway {
    peers: Arc<dyn Peers>,
    client: Client,
    metrics: Arc<Metrics>,
    /// This node's API address and store, answered in process rather than over HTTP.
    local: Option<(String, Arc<super::StoreApi>)>,
    /// This node's topic retention, shown by `/store/topics`.
    retention: Option<Arc<Retention>>,
    /// The node's memory budget, which live streams hold their records and IDs against.
    budget: Arc<crate::memory::Budget>,
}

impl Gateway {
    /// A gateway that answers for its own node (API address `me`) in process.
    pub fn with_local(
        peers: Arc<dyn Peers>,
        client: Client,
        metrics: Arc<Metrics>,
        me: String,
        store: Arc<super::StoreApi>,
    ) -> Self {
        Gateway {
            peers,
            client,
            metrics,
            local: Some((me, store)),
            retention: None,
            budget: crate::memory::Budget::new(usize::MAX),
        }
    }

    /// The same gateway showing `retention` in `/store/topics`.
    pub fn with_retention(mut self, retention: Arc<Retention>) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The same gateway holding its live streams against the node's memory `budget`.
    pub fn with_budget(mut self, budget: Arc<crate::memory::Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// `GET|HEAD /store/query`, `/store/hits`, `/store/topics`, and `GET /store/stream`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/store/query", get(query).head(query))
            .route("/store/hits", get(hits).head(hits))
            .route("/store/topics", get(topics).head(topics))
            .route("/store/stream", get(stream))
            .with_state(Arc::clone(self))
    }

    /// The records of `params` over every store node, merged by ULID without duplicates (in
    /// the order and up to the limit `params` asks), as `/store/query` answers them: for the
    /// Loki API, which reads them in process. The body streams; an error is the response to
    /// give (no store node, a bad parameter).
    pub async fn records(&self, params: &QueryParams) -> Result<Gathering, Response> {
        if let Err(e) = params.matcher() {
            return Err(text(StatusCode::BAD_REQUEST, format!("{e}\n")));
        }
        let raw = query_string(params);
        let gathered = scatter(self, &Method::GET, Some(raw), params, Output::Records).await?;
        let errors = gathered.total.errors;
        let late = Arc::new(Late::default());
        let body = merged_body_with(
            gathered.bodies,
            Arc::clone(&self.metrics),
            false,
            params,
            Arc::clone(&late),
        );
        Ok(Gathering { errors, body, late })
    }
}

impl Gateway {
    /// The streams of the records in `[from_ms, to_ms]` over every store node (from their
    /// label indexes), merged by topic and labels; and how many nodes did not answer.
    pub async fn streams(&self, from_ms: u64, to_ms: u64) -> (Vec<super::labels::StreamInfo>, u64) {
        let peers = self.peers.current(Role::Store);
        let answers = join_all(peers.iter().map(|p| self.node_streams(p, from_ms, to_ms))).await;
        let mut merged: std::collections::BTreeMap<(String, String), super::labels::StreamInfo> =
            Default::default();
        let mut errors = 0;
        for (peer, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(streams) => {
                    for s in streams {
                        merged
                            .entry((s.topic.clone(), s.labels.clone()))
                            .and_modify(|m| {
                                m.first = m.first.min(s.first);
                                m.last = m.last.max(s.last);
                                // Replicas hold the same records: the most any node saw.
                                m.records = m.records.max(s.records);
                                m.bytes = m.bytes.max(s.bytes);
                            })
                            .or_insert(s);
                    }
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "store node failed to answer for its labels");
                    errors += 1;
                }
            }
        }
        if peers.is_empty() {
            errors += 1;
        }
        (merged.into_values().collect(), errors)
    }

    async fn node_streams(
        &self,
        peer: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> io::Result<Vec<super::labels::StreamInfo>> {
        if let Some((me, store)) = &self.local
            && me == peer
        {
            return store.streams(from_ms, to_ms).await;
        }
        let id = |ms: u64| String::from_utf8_lossy(&crate::record::min_ulid(ms)).into_owned();
        let url = http::url(
            peer,
            &format!("/store/_labels?from={}&to={}", id(from_ms), id(to_ms)),
        );
        let (status, body) = http::call(
            &self.client,
            Method::GET,
            &url,
            http::empty_body(),
            HEADER_TIMEOUT,
        )
        .await?;
        let bytes = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.collect())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{url}: body timed out")))?
            .map_err(io::Error::other)?
            .to_bytes();
        if !status.is_success() {
            return Err(io::Error::other(format!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }
}

impl Gateway {
    /// Follow the records matching `raw` (a `/store/_stream` query string: `q`, `regex`,
    /// `topic`) as the store nodes accept them, deduplicated within `window`: chunks of record
    /// lines, until the receiver is dropped. What the stream holds counts against the node's
    /// memory budget; with no room for it, the budget's refusal.
    pub fn follow(&self, raw: String, window: Duration) -> Result<mpsc::Receiver<Bytes>, String> {
        let hold = self
            .budget
            .try_hold(crate::stream::START_HOLD)
            .map_err(|full| full.to_string())?;
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        tokio::spawn(crate::stream::run(
            Arc::clone(&self.peers),
            self.client.clone(),
            raw,
            window,
            tx,
            hold,
        ));
        Ok(rx)
    }

    /// `params`' needle and topics as a query string for [`Gateway::follow`].
    pub fn stream_query(params: &QueryParams) -> String {
        query_string(params)
    }
}

impl Gateway {
    /// Whether this node is the only store node (then there is nothing to merge: a caller
    /// may read its records directly rather than through [`Gateway::samples`]).
    pub fn alone(&self) -> bool {
        let peers = self.peers.current(Role::Store);
        matches!((&self.local, peers.as_slice()), (Some((me, _)), [only]) if me == only)
    }

    /// A LogQL range function's samples over every store node (each computes them for its
    /// own records: `/store/_samples`, see [`super::api::samples`]), merged by ULID without
    /// duplicates. `params` is the store query (its needle, topics and window), `extra` the
    /// sample parameters (`logql`, `window`, `grouping`, `levels`), form-encoded.
    pub async fn samples(&self, params: &QueryParams, extra: &str) -> Result<Gathering, Response> {
        if let Err(e) = params.matcher() {
            return Err(text(StatusCode::BAD_REQUEST, format!("{e}\n")));
        }
        let peers = self.peers.current(Role::Store);
        if peers.is_empty() {
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no store nodes available\n",
            ));
        }
        let raw = format!("{}&{extra}", pinned_query(&query_string(params), params));
        let answers = join_all(peers.iter().map(|p| self.node_samples(p, &raw))).await;
        let (mut bodies, mut errors) = (Vec::new(), 0);
        for (peer, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(body) => bodies.push((peer.clone(), body)),
                Err(Ok(bad)) => return Err(bad),
                Err(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "store node failed to answer for samples");
                    errors += 1;
                    self.metrics.store_query_peer_errors.inc();
                }
            }
        }
        let late = Arc::new(Late::default());
        let asc = QueryParams {
            desc: false,
            limit: None,
            ..params.clone()
        };
        let body = merged_body_with(
            bodies,
            Arc::clone(&self.metrics),
            false,
            &asc,
            Arc::clone(&late),
        );
        Ok(Gathering { errors, body, late })
    }

    /// One node's samples: its body, a 400 to pass on (a bad query), or why it failed.
    async fn node_samples(
        &self,
        peer: &str,
        raw: &str,
    ) -> Result<Body, Result<Response, io::Error>> {
        let (status, body) = match &self.local {
            Some((me, store)) if me == peer => {
                let pairs: Vec<(String, String)> =
                    serde_urlencoded::from_str(raw).map_err(|e| Err(io::Error::other(e)))?;
                let (parts, body) = store.samples(RawParams(pairs)).await.into_parts();
                (parts.status, body)
            }
            _ => {
                let url = http::url(peer, &format!("/store/_samples?{raw}"));
                let (status, _, body) = http::call_full(
                    &self.client,
                    Method::GET,
                    &url,
                    http::empty_body(),
                    HEADER_TIMEOUT,
                )
                .await
                .map_err(Err)?;
                (status, Body::new(body))
            }
        };
        if status == StatusCode::BAD_REQUEST {
            let msg = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Ok(text(
                StatusCode::BAD_REQUEST,
                String::from_utf8_lossy(&msg).into_owned(),
            )));
        }
        if !status.is_success() {
            return Err(Err(io::Error::other(format!("{peer}: {status}"))));
        }
        Ok(body)
    }
}

/// Records gathered from every store node ([`Gateway::records`]).
#[derive(Debug)]
pub struct Gathering {
    /// Store nodes that did not answer.
    pub errors: u64,
    /// `<ULID> <topic> <payload>\n` lines, in order, without duplicates; it ends early (an
    /// error) when a node's body broke off.
    pub body: Body,
    /// What went missing after the first answers (a body that broke off, blocks a node could
    /// not read), known once `body` ended.
    pub late: Arc<Late>,
}

/// `params` as a `/store/_query` query string.
fn query_string(p: &QueryParams) -> String {
    let mut s = url_form(&[("q", p.q.as_str())]);
    if p.regex {
        s.push_str("&regex=1");
    }
    for t in p.topics.patterns() {
        s.push('&');
        s.push_str(&url_form(&[("topic", t.as_str())]));
    }
    if p.desc {
        s.push_str("&order=desc");
    }
    if let Some(n) = p.limit {
        s.push_str(&format!("&limit={n}"));
    }
    s
}

/// `k=v` pairs, form-urlencoded.
fn url_form(pairs: &[(&str, &str)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", http::percent_encode(v)))
        .collect();
    encoded.join("&")
}

/// One peer's answer: its stats and, for GET, its body.
struct Answer {
    stats: Stats,
    scanned: Option<u64>,
    skipped: Option<u64>,
    body: Option<Body>,
    peer: String,
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

async fn ask(
    gw: &Gateway,
    method: &Method,
    peer: &str,
    raw: &str,
    params: &QueryParams,
    output: Output,
) -> io::Result<Answer> {
    let url = match output {
        Output::Records => http::url(peer, &format!("/store/_query?{raw}")),
        Output::Ulids => http::url(peer, &format!("/store/_hits?{raw}")),
        Output::UlidTopics => http::url(peer, &format!("/store/_hits?{raw}&by=topic")),
    };
    let (status, headers, body) = match &gw.local {
        Some((me, store)) if me == peer => {
            let (parts, body) = super::api::answer(store, method, params.clone(), output, true)
                .await
                .into_parts();
            (parts.status, parts.headers, body)
        }
        _ => {
            let (status, headers, body) = http::call_full(
                &gw.client,
                method.clone(),
                &url,
                http::empty_body(),
                HEADER_TIMEOUT,
            )
            .await?;
            (status, headers, Body::new(body))
        }
    };
    if !status.is_success() {
        let msg = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(http::CallError::status(&url, status, &msg));
    }
    let stats = Stats {
        nodes: header_u64(&headers, "X-Oklog-Nodes-Queried").unwrap_or(1),
        segments: header_u64(&headers, "X-Oklog-Segments-Queried").unwrap_or(0),
        max_data_set_size: header_u64(&headers, "X-Oklog-Max-Data-Set-Size").unwrap_or(0),
        errors: header_u64(&headers, "X-Oklog-Error-Count").unwrap_or(0),
    };
    Ok(Answer {
        stats,
        scanned: header_u64(&headers, "X-Oklog-Bytes-Scanned"),
        skipped: header_u64(&headers, "X-Oklog-Blocks-Skipped"),
        body: (*method == Method::GET).then_some(body),
        peer: peer.to_string(),
    })
}

/// The query parameters, checked here (regex included) so a bad query is refused with the
/// message a node would give, before any node is asked.
fn checked_params(raw: &RawParams) -> Result<QueryParams, ParamError> {
    let params = parse_query(raw)?;
    params.matcher()?;
    Ok(params)
}

async fn query(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    request: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let trailers = http::accepts_trailers(&request);
    let started = Instant::now();
    let params = match checked_params(&RawParams(params)) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let gathered = match scatter(&gw, &method, raw, &params, Output::Records).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let (status, mut headers) = (gathered.status(), gathered.headers(&params, started));
    if method == Method::HEAD {
        return (status, headers, Body::empty()).into_response();
    }
    if trailers {
        Late::declare(&mut headers);
    }
    (
        status,
        headers,
        merged_body(gathered.bodies, Arc::clone(&gw.metrics), trailers, &params),
    )
        .into_response()
}

/// `GET|HEAD /store/hits?from=&to=&q=&regex=&topic=&step=[&by=topic]`: matching records
/// counted per time bucket (and with `by=topic` per topic), over every store node,
/// deduplicated like a query.
async fn hits(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    RawQuery(raw): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let started = Instant::now();
    let params = RawParams(params);
    let step = params.get("step").map(String::from);
    let by_topic = match Output::of_hits(&params) {
        Ok(output) => output == Output::UlidTopics,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let params = match checked_params(&params) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let buckets = match Buckets::new(params.from_ms, params.to_ms, step.as_deref()) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if by_topic {
        let series = TopicBuckets::new(buckets);
        let counted = counted(
            &gw,
            &method,
            raw,
            &params,
            Output::UlidTopics,
            started,
            series,
            |series, line| series.add(line_topic(line), crate::record::ulid_ms(line)),
        )
        .await;
        return json_answer(counted, |series| series.to_json());
    }
    let counted = counted(
        &gw,
        &method,
        raw,
        &params,
        Output::Ulids,
        started,
        buckets,
        |buckets, line| buckets.add(crate::record::ulid_ms(&merge::key(line))),
    )
    .await;
    json_answer(counted, |buckets| buckets.to_json())
}

/// `GET|HEAD /store/topics?from=&to=[&q=&regex=&topic=]`: the topics of the window's records
/// (those matching the query, if one is given), each with its record count over every store
/// node (replicas counted once), most records first.
async fn topics(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    RawQuery(raw): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let started = Instant::now();
    let params = match checked_params(&RawParams(params)) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let counted = counted(
        &gw,
        &method,
        raw,
        &params,
        Output::UlidTopics,
        started,
        HashMap::<Vec<u8>, u64>::new(),
        |counts, line| {
            let topic = line_topic(line);
            match counts.get_mut(topic) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(topic.to_vec(), 1);
                }
            }
        },
    )
    .await;
    let retain = gw.retention.clone();
    json_answer(counted, move |counts| {
        let mut all: Vec<(Vec<u8>, u64)> = counts.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let topics: Vec<serde_json::Value> = all
            .iter()
            .map(|(t, n)| {
                let mut v = serde_json::json!({
                    "topic": String::from_utf8_lossy(t),
                    "records": n,
                });
                if let Some(r) = &retain {
                    v["retain"] =
                        super::hits::format_step(r.retain_for(t).as_millis() as u64).into();
                }
                v
            })
            .collect();
        serde_json::json!({
            "from": crate::gotime::rfc3339_utc_millis(params.from_ms as i64),
            "to": crate::gotime::rfc3339_utc_millis(params.to_ms as i64),
            "topics": topics,
        })
        .to_string()
    })
}

/// The topic of a `<ULID> <topic>` line.
fn line_topic(line: &[u8]) -> &[u8] {
    let topic = line.get(ULID_LEN + 1..).unwrap_or_default();
    topic.strip_suffix(b"\n").unwrap_or(topic)
}

/// A counted answer: its status, headers and the counter, or the response to send instead
/// (HEAD, errors).
type Counted<S> = Result<(StatusCode, HeaderMap, S), Response>;

/// Scatter `output` for `params`, merge the nodes' lines with dedup and pass each to `count`
/// with `state`, whole before answering: anything missing makes the status a 206.
#[allow(clippy::too_many_arguments)]
async fn counted<S: Send + 'static>(
    gw: &Gateway,
    method: &Method,
    raw: Option<String>,
    params: &QueryParams,
    output: Output,
    started: Instant,
    mut state: S,
    count: fn(&mut S, &[u8]),
) -> Counted<S> {
    let mut gathered = scatter(gw, method, raw, params, output).await?;
    let status = gathered.status();
    if *method == Method::HEAD {
        let headers = gathered.headers(params, started);
        return Err((status, headers, Body::empty()).into_response());
    }
    let bodies = std::mem::take(&mut gathered.bodies);
    let late = Arc::new(Late::default());
    let receivers = body_sources(bodies, Arc::clone(&gw.metrics), Arc::clone(&late));
    let merged = tokio::task::spawn_blocking(move || {
        let mut sources: Vec<ChunkLines> = receivers.into_iter().map(ChunkLines::new).collect();
        merge::merge(&mut sources, |line| {
            count(&mut state, line);
            Ok(true)
        })
        .map(|_| state)
    })
    .await;
    let state = match merged {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
        Err(e) => return Err(text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
    };
    use std::sync::atomic::Ordering::Relaxed;
    gathered.total.errors += late.errors.load(Relaxed);
    let status = if late.is_partial() {
        StatusCode::PARTIAL_CONTENT
    } else {
        status
    };
    let mut headers = gathered.headers(params, started);
    headers.insert(
        "X-Oklog-Corrupt-Blocks",
        axum::http::HeaderValue::from(late.corrupt.load(Relaxed)),
    );
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok((status, headers, state))
}

/// The JSON body `body(state)` under a counted answer's status and headers.
fn json_answer<S>(counted: Counted<S>, body: impl FnOnce(S) -> String) -> Response {
    match counted {
        Ok((status, headers, state)) => {
            let mut body = body(state);
            body.push('\n');
            (status, headers, body).into_response()
        }
        Err(r) => r,
    }
}

/// What every store node answered to one scattered question.
struct Gathered {
    /// Their stats, summed.
    total: Stats,
    /// Bytes they scanned, summed (GET only).
    scanned: Option<u64>,
    /// Blocks their needle filters ruled out, summed (GET only).
    skipped: Option<u64>,
    /// The bodies of those that answered, with their addresses.
    bodies: Vec<(String, Body)>,
}

impl Gathered {
    /// 206 when some node failed, else 200.
    fn status(&self) -> StatusCode {
        if self.total.errors > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        }
    }

    /// The `X-Oklog-*` headers of the gathered answer.
    fn headers(&self, params: &QueryParams, started: Instant) -> HeaderMap {
        let mut headers = stats_headers(params, &self.total, started.elapsed());
        if let Some(n) = self
            .scanned
            .and_then(|n| axum::http::HeaderValue::from_str(&n.to_string()).ok())
        {
            headers.insert("X-Oklog-Bytes-Scanned", n);
        }
        if let Some(n) = self.skipped {
            headers.insert("X-Oklog-Blocks-Skipped", axum::http::HeaderValue::from(n));
        }
        headers
    }
}

/// Ask every store node the same (pinned) question and sum their stats. No store node at all
/// is a 503.
async fn scatter(
    gw: &Gateway,
    method: &Method,
    raw: Option<String>,
    params: &QueryParams,
    output: Output,
) -> Result<Gathered, Response> {
    let peers = gw.peers.current(Role::Store);
    if peers.is_empty() {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no store nodes available\n",
        ));
    }
    // Pin the time range so every peer answers for the same window.
    let raw = pinned_query(raw.as_deref().unwrap_or(""), params);
    let answers = join_all(
        peers
            .iter()
            .map(|p| ask(gw, method, p, &raw, params, output)),
    )
    .await;
    let mut total = Stats::default();
    let mut scanned: Option<u64> = None;
    let mut skipped: Option<u64> = None;
    let mut bodies = Vec::new();
    for (peer, answer) in peers.iter().zip(answers) {
        match answer {
            Ok(a) => {
                total.nodes += a.stats.nodes;
                total.segments += a.stats.segments;
                total.max_data_set_size = total.max_data_set_size.max(a.stats.max_data_set_size);
                total.errors += a.stats.errors;
                if let Some(n) = a.scanned {
                    *scanned.get_or_insert(0) += n;
                }
                if let Some(n) = a.skipped {
                    *skipped.get_or_insert(0) += n;
                }
                if let Some(b) = a.body {
                    bodies.push((a.peer, b));
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "store node failed to answer a query");
                total.errors += 1;
                gw.metrics.store_query_peer_errors.inc();
            }
        }
    }
    Ok(Gathered {
        total,
        scanned,
        skipped,
        bodies,
    })
}

/// `GET /store/stream?q=&regex=&window=`: live records from every store node, deduplicated
/// and ordered within the window.
async fn stream(
    State(gw): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let params = RawParams(params);
    if let Err(e) = stream_matcher(&params) {
        return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    let window = match crate::stream::parse_window(params.get("window")) {
        Ok(w) => w,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("parsing 'window': {e}\n")),
    };
    // What the stream holds (its records within the window, the IDs it remembers) is held
    // against the memory budget; a stream starts only with room for its first chunks.
    let hold = match gw.budget.try_hold(crate::stream::START_HOLD) {
        Ok(h) => h,
        Err(full) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, format!("{full}\n"));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    // A few chunks of about 256 KiB: a client that stops reading holds no more than that here
    // (and its peers drop it once their queues are full).
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(crate::stream::run(
        Arc::clone(&gw.peers),
        gw.client.clone(),
        raw.unwrap_or_default(),
        window,
        tx,
        hold,
    ));
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<_, io::Error>))
    });
    text_body(StatusCode::OK, HeaderMap::new(), Body::from_stream(body))
}

/// The raw query string with `from` and `to` replaced by the gateway's parse (as ULIDs of
/// their milliseconds), so a missing `to` ("now") means the same instant on every node.
fn pinned_query(raw: &str, p: &QueryParams) -> String {
    let mut parts: Vec<String> = raw
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            k != "from" && k != "to" && k != "by"
        })
        .map(str::to_string)
        .collect();
    let id = |ms: u64| String::from_utf8_lossy(&crate::record::min_ulid(ms)).into_owned();
    parts.push(format!("from={}", id(p.from_ms)));
    parts.push(format!("to={}", id(p.to_ms)));
    parts.join("&")
}

/// Merge the peers' bodies (each sorted, newest first when `desc`) by ULID with dedup,
/// streaming, up to `limit` records. What the peers report missing at the end of their
/// bodies (or a body that breaks off) ends this body too, as trailers or an abort (see
/// [`Late`]).
fn merged_body(
    bodies: Vec<(String, Body)>,
    metrics: Arc<Metrics>,
    trailers: bool,
    params: &QueryParams,
) -> Body {
    merged_body_with(bodies, metrics, trailers, params, Arc::new(Late::default()))
}

/// [`merged_body`], telling what goes missing to `late`.
fn merged_body_with(
    mut bodies: Vec<(String, Body)>,
    metrics: Arc<Metrics>,
    trailers: bool,
    params: &QueryParams,
    late: Arc<Late>,
) -> Body {
    if bodies.len() == 1 {
        // One answer is already in order and without duplicates: pass its chunks through,
        // with the same idle timeout, instead of splitting it into lines to merge.
        let (peer, body) = bodies.pop().expect("one body");
        return passed_through(PeerBody::new(peer, body, metrics, late), trailers);
    }
    let receivers = body_sources(bodies, metrics, Arc::clone(&late));
    let (tx, rx) = mpsc::channel::<io::Result<Frame<Bytes>>>(8);
    let merge = LineMerge::new(params);
    tokio::task::spawn_blocking(move || {
        let sources: Vec<ChunkLines> = receivers.into_iter().map(ChunkLines::new).collect();
        if merge.run(sources, &tx).is_ok() {
            // Every source ended, so every body's reader is done counting.
            if let Some(last) = late.last_frame(trailers) {
                let _ = tx.blocking_send(last);
            }
        }
    });
    http::frame_body(rx)
}

/// One peer's answer body, read frame by frame with the idle timeout: its trailers, and a
/// failure or a stall, are told to `late` (and a failure counted).
struct PeerBody {
    peer: String,
    body: Body,
    metrics: Arc<Metrics>,
    late: Arc<Late>,
}

impl PeerBody {
    fn new(peer: String, body: Body, metrics: Arc<Metrics>, late: Arc<Late>) -> Self {
        PeerBody {
            peer,
            body,
            metrics,
            late,
        }
    }

    /// The next chunk of records; `None` once the body ended, failed or stalled.
    async fn next_data(&mut self) -> Option<Bytes> {
        loop {
            let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, self.body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    let peer = &self.peer;
                    tracing::warn!(%peer, error = %e, "store node's query body failed");
                    return self.failed();
                }
                Err(_) => {
                    let peer = &self.peer;
                    tracing::warn!(%peer, "store node's query body stalled; giving up on it");
                    return self.failed();
                }
            };
            match frame.into_data() {
                Ok(data) => return Some(data),
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        self.late.add_trailers(t);
                    }
                }
            }
        }
    }

    fn failed(&self) -> Option<Bytes> {
        self.metrics.store_query_peer_errors.inc();
        self.late
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
}

/// One peer's body passed through as it comes, ended as [`Late`] says.
fn passed_through(body: PeerBody, trailers: bool) -> Body {
    let stream = futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        if let Some(data) = body.next_data().await {
            return Some((Ok(Frame::data(data)), Some(body)));
        }
        let last = body.late.last_frame(trailers)?;
        if last.is_err() {
            // An abort drops what hyper still holds: send it all first.
            http::flush::flushed().await;
        }
        Some((last, None))
    });
    Body::new(http_body_util::StreamBody::new(stream))
}

/// The merge of several peers' lines into one answer: by ULID with dedup, up to a limit, or
/// with context chosen again over the union.
struct LineMerge {
    desc: bool,
    limit: Option<u64>,
    /// With context lines, the nodes' answers (each the matches and context of its own
    /// records) are merged and the context chosen again over the union.
    context: Option<crate::search::context::Context>,
}

impl LineMerge {
    fn new(params: &QueryParams) -> Self {
        let (desc, limit) = (params.desc, params.limit);
        let context = (params.before + params.after > 0).then(|| {
            crate::search::context::Context::new(
                params.before as usize,
                params.after as usize,
                desc,
                limit,
            )
        });
        LineMerge {
            desc,
            limit,
            context,
        }
    }

    /// Merge `sources` into chunks sent on `tx` (blocking), the last one too when the merge
    /// ended well.
    fn run(
        mut self,
        mut sources: Vec<ChunkLines>,
        tx: &mpsc::Sender<io::Result<Frame<Bytes>>>,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(OUT_CHUNK * 2);
        let mut left = self.limit.unwrap_or(u64::MAX);
        // With context, every node's copy of a record is seen (no dedup in the merge): the
        // record follows a gap if any node says so. Each is held until its last copy passed.
        let mut held: Option<(Vec<u8>, bool)> = None;
        let dedup = self.context.is_none();
        let result = merge::merge_with(&mut sources, self.desc, dedup, |line| {
            let more = if let Some(ctx) = &mut self.context {
                let gap = crate::search::context::kind(line)
                    .is_some_and(crate::search::context::after_gap);
                match &mut held {
                    Some((h, g)) if merge::key(h) == merge::key(line) => {
                        *g |= gap;
                        return Ok(true);
                    }
                    _ => {
                        push_held(&mut held, ctx, &mut buf);
                        held = Some((line.to_vec(), gap));
                    }
                }
                !ctx.done()
            } else {
                buf.extend_from_slice(line);
                left -= 1;
                left > 0
            };
            if buf.len() >= OUT_CHUNK {
                let chunk = Bytes::from(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(OUT_CHUNK * 2),
                ));
                return Ok(tx.blocking_send(Ok(Frame::data(chunk))).is_ok() && more);
            }
            Ok(more)
        });
        if let Some(ctx) = &mut self.context {
            push_held(&mut held, ctx, &mut buf);
            ctx.finish(&mut buf);
        }
        result?;
        if !buf.is_empty() {
            let _ = tx.blocking_send(Ok(Frame::data(Bytes::from(buf))));
        }
        Ok(())
    }
}

/// Hand the record held back (with whether it follows a gap) to the context.
fn push_held(
    held: &mut Option<(Vec<u8>, bool)>,
    ctx: &mut crate::search::context::Context,
    buf: &mut Vec<u8>,
) {
    if let Some((line, gap)) = held.take() {
        let is_match =
            crate::search::context::kind(&line).is_some_and(crate::search::context::is_match_kind);
        ctx.push_hinted(&line, is_match, gap, buf);
    }
}

/// Channels of the peers' bodies for a blocking merge: each body is read by a task (with the
/// idle timeout) into a small channel the merge pulls from through [`ChunkLines`]. Trailers
/// and failures are added to `late`.
fn body_sources(
    bodies: Vec<(String, Body)>,
    metrics: Arc<Metrics>,
    late: Arc<Late>,
) -> Vec<mpsc::Receiver<Bytes>> {
    let mut receivers = Vec::new();
    for (peer, body) in bodies {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        receivers.push(rx);
        let mut body = PeerBody::new(peer, body, Arc::clone(&metrics), Arc::clone(&late));
        tokio::spawn(async move {
            while let Some(data) = body.next_data().await {
                // The merge thread takes chunks as it needs them.
                if tx.send(data).await.is_err() {
                    return; // the client went away
                }
            }
        });
    }
    receivers
}

/// Lines of a body arriving as chunks over a channel (a line may span chunks).
struct ChunkLines {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    pos: usize,
    line: Vec<u8>,
    done: bool,
}

impl ChunkLines {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        let mut s = ChunkLines {
            rx,
            chunk: Bytes::new(),
            pos: 0,
            line: Vec::new(),
            done: false,
        };
        s.step();
        s
    }

    fn step(&mut self) {
        self.line.clear();
        loop {
            if self.pos >= self.chunk.len() {
                match self.rx.blocking_recv() {
                    Some(c) => {
                        self.chunk = c;
                        self.pos = 0;
                        continue;
                    }
                    None => {
                        // End of the body: a final line without `\\n` still counts.
                        self.done = self.line.is_empty();
                        return;
                    }
                }
            }
            let rest = &self.chunk[self.pos..];
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.line.extend_from_slice(&rest[..=i]);
                    self.pos += i + 1;
                    return;
                }
                None => {
                    self.line.extend_from_slice(rest);
                    self.pos = self.chunk.len();
                }
            }
        }
    }
}

impl Source for ChunkLines {
    fn current(&self) -> Option<&[u8]> {
        (!self.done).then_some(self.line.as_slice())
    }
    fn advance(&mut self) -> io::Result<()> {
        self.step();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lines_reassemble_lines_across_chunks() {
        let (tx, rx) = mpsc::channel(16);
        for c in [
            "0000000000000000000000000A a\n00000",
            "00000000000000000000B b",
            "\n",
            "0000000000000000000000000C c",
        ] {
            tx.try_send(Bytes::from(c)).unwrap();
        }
        drop(tx);
        let mut s = ChunkLines::new(rx);
        let mut out = Vec::new();
        while let Some(l) = s.current() {
            out.push(String::from_utf8(l.to_vec()).unwrap());
            s.advance().unwrap();
        }
        assert_eq!(
            out,
            [
                "0000000000000000000000000A a\n",
                "0000000000000000000000000B b\n",
                "0000000000000000000000000C c"
            ]
        );
    }

    #[test]
    fn pinned_query_fixes_the_window() {
        let p = QueryParams {
            from_ms: 0,
            to_ms: 1,
            q: "x".into(),
            regex: true,
            ..Default::default()
        };
        assert_eq!(
            pinned_query("q=x&from=1h&regex&to=now", &p),
            "q=x&regex&from=00000000000000000000000000&to=00000000010000000000000000"
        );
    }
}
