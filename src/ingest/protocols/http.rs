//! The push endpoints on the API listener of every ingest node, and what they share: reading a
//! body within the size limit, undoing its `Content-Encoding` within the same limit (so a
//! compression bomb stops there), counting, and answering a failed write with 503.
//!
//! Paths (VictoriaLogs' `/insert/...` scheme, and Loki's and OTLP's own):
//! `POST /loki/api/v1/push`, `/insert/loki/api/v1/push`; `POST /v1/logs`,
//! `/insert/opentelemetry/v1/logs`; `POST /insert/jsonline`; `/insert/elasticsearch/...`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::writer::{PushWriter, Wait};
use super::{
    Batch, Protocol, PushConfig, PushError, RECORDS_PER_BODY, Refusals, elasticsearch, jsonline,
    loki, otlp,
};
use crate::memory::{Budget, Hold};
use crate::metrics::Metrics;

/// The push endpoints' shared state.
#[derive(Debug)]
pub struct Push {
    /// Mapping and limits.
    pub cfg: PushConfig,
    writer: PushWriter,
    metrics: Arc<Metrics>,
    budget: Arc<Budget>,
}

impl Push {
    /// Push endpoints writing through `writer`, holding what they read and decode against
    /// `budget` (the node's memory budget).
    pub fn new(
        cfg: PushConfig,
        writer: PushWriter,
        metrics: Arc<Metrics>,
        budget: Arc<Budget>,
    ) -> Arc<Push> {
        Arc::new(Push {
            cfg,
            writer,
            metrics,
            budget,
        })
    }

    /// The memory budget pushes hold against.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// A request's body, read and decompressed within `-ingest.max-push-size`, held against
    /// the memory budget as it arrives (a request holds only what it has sent) and as it is
    /// decompressed; the returned hold covers the body until it is dropped. `implicit` is the
    /// encoding to assume when the request names none.
    pub async fn body(
        &self,
        headers: &HeaderMap,
        body: Body,
        implicit: &str,
    ) -> Result<(Bytes, Hold), PushError> {
        let limit = self.cfg.max_body;
        if content_length(headers).is_some_and(|len| len > limit as u64) {
            return Err(PushError::too_large(limit));
        }
        let mut hold = self.budget.hold();
        let raw = read_raw(body, limit, &mut hold).await?;
        let encoding = match encoding_of(headers) {
            e if e.is_empty() => implicit.to_string(),
            e => e,
        };
        // Inflating is CPU work: off the runtime's workers, so other connections go on.
        let decoded = tokio::task::block_in_place(|| decode(&encoding, raw, limit, &mut hold))?;
        Ok((decoded, hold))
    }

    /// An empty batch for the records of one request, counted against the memory budget and
    /// capped at [`RECORDS_PER_BODY`] times `-ingest.max-push-size`.
    pub fn batch(&self) -> Batch {
        Batch::counted(self.budget.hold(), self.cfg.max_body * RECORDS_PER_BODY)
            .bounded(self.cfg.bounds, crate::gotime::now_ms() as u64)
    }

    /// The push writer (for syslog listeners and the run group).
    pub fn writer(&self) -> &PushWriter {
        &self.writer
    }

    /// The routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/loki/api/v1/push", post(loki_push))
            .route("/insert/loki/api/v1/push", post(loki_push))
            .route("/v1/logs", post(otlp_push))
            .route("/insert/opentelemetry/v1/logs", post(otlp_push))
            .route("/insert/jsonline", post(jsonline_push))
            .route(
                elasticsearch::BULK,
                post(elasticsearch_bulk).put(elasticsearch_bulk),
            )
            .route(
                elasticsearch::BULK_INDEX,
                post(elasticsearch_bulk_index).put(elasticsearch_bulk_index),
            )
            .merge(elasticsearch::router())
            .with_state(Arc::clone(self))
    }

    /// Count the entries of a `protocol` request refused for their time.
    fn refused(&self, protocol: Protocol, refusals: &Refusals) {
        for (reason, n) in [("too_old", refusals.too_old), ("too_new", refusals.too_new)] {
            if n > 0 {
                self.metrics
                    .ingest_refused_entries
                    .get_or_create(&vec![("protocol", protocol.name()), ("reason", reason)])
                    .inc_by(n as u64);
            }
        }
    }

    /// Count a request of `protocol` that failed with `e`.
    pub fn rejected(&self, protocol: Protocol, e: &PushError) {
        let labels = vec![("protocol", protocol.name())];
        self.metrics
            .ingest_push_requests
            .get_or_create(&labels)
            .inc();
        self.metrics
            .ingest_push_rejected
            .get_or_create(&labels)
            .inc();
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(protocol = protocol.name(), error = %e.message, "push not stored");
        } else {
            tracing::debug!(protocol = protocol.name(), error = %e.message, "push refused");
        }
    }

    /// Store `batch` (decoded from `bytes` of request body) and count it; 503 when the write or
    /// the sync fails.
    pub async fn store(
        &self,
        protocol: Protocol,
        batch: Batch,
        bytes: usize,
        wait: Wait,
    ) -> Result<(), PushError> {
        let records = batch.len() as u64;
        let labels = vec![("protocol", protocol.name())];
        self.refused(protocol, batch.refusals());
        if let Err(e) = self.writer.write(batch, wait).await {
            let err = PushError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("records not stored: {e}"),
            };
            self.rejected(protocol, &err);
            return Err(err);
        }
        self.metrics
            .ingest_push_requests
            .get_or_create(&labels)
            .inc();
        self.metrics
            .ingest_push_records
            .get_or_create(&labels)
            .inc_by(records);
        self.metrics
            .ingest_push_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
        Ok(())
    }
}

/// `hold` grown to `bytes` in all, or the error that refuses the request: a 413 when the
/// request alone needs more than the whole budget, else a 503 (it may fit later).
fn hold_to(hold: &mut Hold, bytes: usize) -> Result<(), PushError> {
    hold.set(bytes).map_err(|full| {
        if bytes > hold.budget().limit() {
            PushError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "request needs {} MiB to decode, more than the node's memory budget of {} MiB (-api.memory-budget)",
                    bytes >> 20,
                    hold.budget().limit() >> 20
                ),
            }
        } else {
            PushError::busy_with(full.to_string())
        }
    })
}

/// The `Content-Encoding` of a request, lower-cased (`""` when none).
fn encoding_of(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Read `body` whole, at most `limit` bytes (413 beyond), holding what it takes in `hold` as
/// it arrives. A body that comes in one frame is kept as it came.
async fn read_raw(body: Body, limit: usize, hold: &mut Hold) -> Result<Bytes, PushError> {
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PushError::bad(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let have = first.as_ref().map_or(buf.len(), Bytes::len);
        if have + data.len() > limit {
            return Err(PushError::too_large(limit));
        }
        if first.is_none() && buf.is_empty() {
            hold_to(hold, data.len())?;
            first = Some(data);
            continue;
        }
        if let Some(f) = first.take() {
            buf.reserve(f.len() + data.len());
            hold_to(hold, buf.capacity())?;
            buf.extend_from_slice(&f);
        } else if buf.capacity() - buf.len() < data.len() {
            // Grow as Vec would (doubling), but count the room before taking it.
            let want = (buf.len() + data.len()).max(buf.capacity() * 2).min(limit);
            hold_to(hold, want)?;
            buf.reserve_exact(want - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buf)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Undo one content encoding, never producing more than `limit` bytes, holding the input and
/// the output in `hold` while both live, and then the output alone.
pub fn decode(
    encoding: &str,
    raw: Bytes,
    limit: usize,
    hold: &mut Hold,
) -> Result<Bytes, PushError> {
    let out = match encoding {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => inflate(
            flate2::read::MultiGzDecoder::new(&raw[..]),
            limit,
            "gzip",
            raw.len(),
            hold,
        )?,
        "deflate" => inflate(
            flate2::read::ZlibDecoder::new(&raw[..]),
            limit,
            "deflate",
            raw.len(),
            hold,
        )?,
        "snappy" => snappy(&raw, limit, hold)?,
        other => {
            return Err(PushError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: format!(
                    "Content-Encoding {other:?} is not supported (gzip, deflate, snappy or none)"
                ),
            });
        }
    };
    drop(raw);
    hold_to(hold, out.len())?;
    Ok(out)
}

/// Read `reader` to its end in steps, holding `input` bytes and what is out so far.
fn inflate(
    mut reader: impl Read,
    limit: usize,
    name: &str,
    input: usize,
    hold: &mut Hold,
) -> Result<Bytes, PushError> {
    const STEP: usize = 256 << 10;
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.capacity() - out.len() < STEP {
            let want = (out.capacity() * 2).max(STEP).min(limit + 1);
            hold_to(hold, input + want)?;
            out.reserve_exact(want - out.len());
        }
        let room = (out.capacity() - out.len()).min(limit + 1 - out.len());
        let at = out.len();
        out.resize(at + room, 0);
        match reader.read(&mut out[at..]) {
            Ok(0) => {
                out.truncate(at);
                return Ok(Bytes::from(out));
            }
            Ok(n) => out.truncate(at + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => out.truncate(at),
            Err(e) => return Err(PushError::bad(format!("body is not valid {name}: {e}"))),
        }
        if out.len() > limit {
            return Err(PushError::too_large(limit));
        }
    }
}

/// Snappy's block format (what Promtail, Alloy and Prometheus send), checked against the
/// limit and held before anything is allocated.
pub fn snappy(raw: &[u8], limit: usize, hold: &mut Hold) -> Result<Bytes, PushError> {
    let len = snap::raw::decompress_len(raw)
        .map_err(|e| PushError::bad(format!("body is not valid snappy: {e}")))?;
    if len > limit {
        return Err(PushError::too_large(limit));
    }
    hold_to(hold, raw.len() + len)?;
    snap::raw::Decoder::new()
        .decompress_vec(raw)
        .map(Bytes::from)
        .map_err(|e| PushError::bad(format!("body is not valid snappy: {e}")))
}

/// Whether the request's `Content-Type` names `what` (`json`, `protobuf`).
pub fn content_type_has(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains(what))
}

/// One push request, the shape every push endpoint shares: read the body within the limits,
/// `decode` it into records (and what the answer needs), store them, and answer with `respond`,
/// or with `refuse` in the protocol's own format (the refusal counted).
#[allow(clippy::too_many_arguments)]
async fn handle<T>(
    push: &Push,
    protocol: Protocol,
    headers: &HeaderMap,
    body: Body,
    implicit: &str,
    decode: impl FnOnce(&Bytes, Batch) -> Result<(Batch, T), PushError>,
    respond: impl FnOnce(T, &Refusals) -> Response,
    refuse: impl FnOnce(&PushError) -> Response,
) -> Response {
    let result = async {
        let (raw, mut room) = push.body(headers, body, implicit).await?;
        // What decoding builds before the records (a parse tree: a protobuf attribute of a
        // dozen bytes becomes a hundred) is held too, as a multiple of the body.
        hold_to(&mut room, raw.len() * (1 + parse_factor(protocol, headers)))?;
        let (batch, answer) = tokio::task::block_in_place(|| decode(&raw, push.batch()))?;
        // The body is not needed once decoded: the records (held in their batch's own hold)
        // are all that waits for the writer.
        let size = raw.len();
        drop((raw, room));
        let refusals = batch.refusals().clone();
        push.store(protocol, batch, size, push.cfg.wait).await?;
        Ok::<_, PushError>((answer, refusals))
    }
    .await;
    match result {
        Ok((answer, refusals)) => respond(answer, &refusals),
        Err(e) => {
            push.rejected(protocol, &e);
            refuse(&e)
        }
    }
}

/// About how many times its body's size a request's parse tree takes while it is decoded
/// (measured on requests of many tiny attributes, the worst case: a 13-byte protobuf
/// attribute is a 64-byte struct and two allocations).
fn parse_factor(protocol: Protocol, headers: &HeaderMap) -> usize {
    match protocol {
        Protocol::Loki if content_type_has(headers, "protobuf") => 12,
        Protocol::Loki => 6,
        Protocol::Otlp if content_type_has(headers, "json") => 24,
        Protocol::Otlp => 12,
        // Elasticsearch and JSON lines parse one line at a time.
        _ => 1,
    }
}

async fn loki_push(State(push): State<Arc<Push>>, headers: HeaderMap, body: Body) -> Response {
    let protobuf = content_type_has(&headers, "protobuf");
    // Promtail and Alloy send snappy-compressed protobuf without a Content-Encoding.
    let implicit = if protobuf { "snappy" } else { "" };
    let cfg = &push.cfg;
    let decode = |raw: &Bytes, batch| {
        let batch = if protobuf {
            loki::decode_protobuf(raw, cfg, batch)?
        } else {
            loki::decode_json(raw, cfg, batch)?
        };
        Ok((batch, ()))
    };
    // Loki's own answer when some entries fail validation: a 400 naming them, the others
    // stored.
    let respond = |(), refusals: &Refusals| match refusals.message(|e| format!("entry {}", e + 1)) {
        Some(why) => crate::http::text(StatusCode::BAD_REQUEST, format!("{why}\n")),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    handle(
        &push,
        Protocol::Loki,
        &headers,
        body,
        implicit,
        decode,
        respond,
        PushError::text_response,
    )
    .await
}

async fn otlp_push(State(push): State<Arc<Push>>, headers: HeaderMap, body: Body) -> Response {
    let json = content_type_has(&headers, "json");
    let cfg = &push.cfg;
    let decode = |raw: &Bytes, batch| {
        let decoded = if json {
            otlp::decode_json(raw, cfg, batch)?
        } else {
            otlp::decode_protobuf(raw, cfg, batch)?
        };
        Ok((decoded.batch, decoded.rejected))
    };
    let respond = |rejected: Option<(i64, String)>, refusals: &Refusals| {
        let why = refusals.message(|e| format!("log record {}", e + 1));
        let rejected = match (rejected, why) {
            (Some((n, a)), Some(b)) => Some((n + refusals.count() as i64, format!("{a}; {b}"))),
            (None, Some(b)) => Some((refusals.count() as i64, b)),
            (r, None) => r,
        };
        otlp::response(json, rejected)
    };
    let refuse = |e: &PushError| otlp::error_response(json, e);
    handle(
        &push,
        Protocol::Otlp,
        &headers,
        body,
        "",
        decode,
        respond,
        refuse,
    )
    .await
}

async fn jsonline_push(
    State(push): State<Arc<Push>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let fields = jsonline::Fields::from_params(&params, "_msg", "_time");
    let topic = &push.cfg.topic;
    let decode = |raw: &Bytes, batch| jsonline::decode(raw, &fields, topic, batch);
    let respond = |first: Option<usize>, refusals: &Refusals| match first
        .and_then(|line| refusals.message(|_| format!("line {line}")))
    {
        Some(why) => crate::http::text(StatusCode::BAD_REQUEST, format!("{why}\n")),
        None => StatusCode::OK.into_response(),
    };
    handle(
        &push,
        Protocol::Jsonline,
        &headers,
        body,
        "",
        decode,
        respond,
        PushError::text_response,
    )
    .await
}

async fn elasticsearch_bulk(
    State(push): State<Arc<Push>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    elasticsearch_push(push, None, params, headers, body).await
}

async fn elasticsearch_bulk_index(
    State(push): State<Arc<Push>>,
    axum::extract::Path(index): axum::extract::Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    elasticsearch_push(push, Some(index), params, headers, body).await
}

async fn elasticsearch_push(
    push: Arc<Push>,
    index: Option<String>,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let fields = elasticsearch::fields(&params, &push.cfg.elasticsearch_time_field);
    let topic = &push.cfg.topic;
    let decode =
        |raw: &Bytes, batch| elasticsearch::decode(raw, index.as_deref(), &fields, topic, batch);
    // Documents refused for their time are failed items of their own.
    let respond = |items, _: &Refusals| elasticsearch::bulk_response(items, started);
    handle(
        &push,
        Protocol::Elasticsearch,
        &headers,
        body,
        "",
        decode,
        respond,
        elasticsearch::error_response,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn push_with_budget(dir: &std::path::Path, budget: usize) -> Arc<Push> {
        let log = Arc::new(crate::ingest::IngestLog::open(dir).unwrap());
        let metrics = Metrics::new();
        let writer = PushWriter::start(
            log,
            crate::ingest::Rotation {
                flush_size: 1 << 20,
                flush_age: std::time::Duration::from_secs(1),
            },
            crate::ingest::sync::SyncGroup::start().unwrap(),
            Arc::clone(&metrics),
        )
        .unwrap();
        Push::new(
            crate::ingest::protocols::test_config(),
            writer,
            metrics,
            Budget::new(budget),
        )
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bodies_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let push = push_with_budget(dir.path(), 1 << 20);
        let gz = gzip(&vec![b'x'; 4 << 20]);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
        // Small as sent, but more than the whole budget once decompressed: refused, not a
        // wait.
        let e = push
            .body(&headers, Body::from(gz.clone()), "")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.message);
        assert_eq!(push.budget.held(), 0, "a refused body holds nothing");
        // While another request holds most of the room, one that would need more is a 503.
        let held = push.budget.try_hold(900 << 10).unwrap();
        let small = gzip(&vec![b'x'; 300 << 10]);
        let e = push
            .body(&headers, Body::from(small), "")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{}", e.message);
        assert!(e.message.contains("busy"), "{}", e.message);
        // A declared length holds nothing before the bytes come.
        let mut sized = HeaderMap::new();
        sized.insert(header::CONTENT_LENGTH, (900usize << 10).into());
        let (body, room) = push
            .body(&sized, Body::from(vec![b'z'; 100 << 10]), "")
            .await
            .unwrap();
        assert_eq!((body.len(), room.bytes()), (100 << 10, 100 << 10));
        drop((room, held));
        // A body that fits is read, and its room is given back when the request is done.
        for _ in 0..3 {
            let (body, room) = push
                .body(&HeaderMap::new(), Body::from(vec![b'y'; 200 << 10]), "")
                .await
                .unwrap();
            assert_eq!(body.len(), 200 << 10);
            assert!(room.bytes() >= 200 << 10, "{}", room.bytes());
        }
        assert_eq!(push.budget.held(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_count_against_the_budget_and_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let push = push_with_budget(dir.path(), 8 << 20);
        // Tiny lines become records larger than the body: capped at twice the body limit.
        let cap = (1 << 20) * RECORDS_PER_BODY;
        let body: Vec<u8> = b"{}\n".repeat(cap / 3);
        let batch = Batch::counted(push.budget.hold(), cap);
        let fields = jsonline::Fields::from_params(&HashMap::new(), "_msg", "_time");
        let e = jsonline::decode(&body, &fields, "t", batch).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.message);
        assert!(e.message.contains("send smaller requests"), "{}", e.message);
        assert_eq!(
            push.budget.held(),
            0,
            "the refused batch gave its room back"
        );
        // A batch the budget cannot hold is a 503, and what it built is given back.
        let held = push.budget.try_hold(7 << 20).unwrap();
        let e = jsonline::decode(&body, &fields, "t", push.batch()).unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{}", e.message);
        drop(held);
        let (ok, _) = jsonline::decode(&body[..3000], &fields, "t", push.batch()).unwrap();
        assert_eq!(ok.len(), 1000);
        assert!(push.budget.held() >= ok.bytes());
        drop(ok);
        assert_eq!(push.budget.held(), 0);
    }

    #[test]
    fn the_routes_build() {
        // Route conflicts panic when the router is built: build it.
        let dir = tempfile::tempdir().unwrap();
        let _ = push_with_budget(dir.path(), 1 << 20).router();
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let budget = Budget::new(64 << 20);
        let hold = &mut budget.hold();
        let zeros = vec![0u8; 10 << 20];
        let gz = Bytes::from(gzip(&zeros));
        assert!(gz.len() < 100 << 10);
        let e = decode("gzip", gz.clone(), 1 << 20, hold).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(decode("gzip", gz, 10 << 20, hold).unwrap().len(), 10 << 20);
        assert_eq!(
            hold.bytes(),
            10 << 20,
            "the output held, the input given back"
        );
        let sn = Bytes::from(snap::raw::Encoder::new().compress_vec(&zeros).unwrap());
        assert_eq!(
            decode("snappy", sn, 1 << 20, hold).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let e = decode("gzip", Bytes::from_static(b"not gzip"), 1 << 20, hold).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("gzip"), "{}", e.message);
        assert_eq!(
            decode("br", Bytes::new(), 1, hold).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
