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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::writer::{PushWriter, Wait};
use super::{Batch, Protocol, PushConfig, PushError, elasticsearch, jsonline, loki, otlp};
use crate::metrics::Metrics;

/// The push endpoints' shared state.
#[derive(Debug)]
pub struct Push {
    /// Mapping and limits.
    pub cfg: PushConfig,
    writer: PushWriter,
    metrics: Arc<Metrics>,
    budget: Arc<Semaphore>,
    budget_kib: u32,
}

impl Push {
    /// Push endpoints writing through `writer`.
    pub fn new(cfg: PushConfig, writer: PushWriter, metrics: Arc<Metrics>) -> Arc<Push> {
        Push::with_budget(cfg, writer, metrics, BODY_BUDGET)
    }

    /// [`Push::new`] with another body budget (tests).
    pub fn with_budget(
        cfg: PushConfig,
        writer: PushWriter,
        metrics: Arc<Metrics>,
        budget: usize,
    ) -> Arc<Push> {
        Arc::new(Push {
            cfg,
            writer,
            metrics,
            budget: Arc::new(Semaphore::new(budget >> 10)),
            budget_kib: (budget >> 10) as u32,
        })
    }

    /// A request's body, read and decompressed within `-ingest.max-push-size` and within the
    /// [`BODY_BUDGET`] all requests share: the room is held (by the returned permit) until the
    /// request is done. `implicit` is the encoding to assume when the request names none.
    pub async fn body(
        &self,
        headers: &HeaderMap,
        body: Body,
        implicit: &str,
    ) -> Result<(Bytes, OwnedSemaphorePermit), PushError> {
        let limit = self.cfg.max_body;
        let expect = content_length(headers).map_or(limit, |n| (n as usize).min(limit));
        let mut room = Arc::clone(&self.budget)
            .acquire_many_owned(kib(expect, self.budget_kib))
            .await
            .map_err(|_| PushError::busy())?;
        let raw = read_raw(headers, body, limit).await?;
        let encoding = match encoding_of(headers) {
            e if e.is_empty() => implicit.to_string(),
            e => e,
        };
        let raw_len = raw.len();
        let decoded = decode(&encoding, raw, limit)?;
        // What was read, the decompressed copy (none without an encoding), and the records
        // decoded from it.
        let copy = if matches!(encoding.as_str(), "" | "identity") {
            0
        } else {
            decoded.len()
        };
        let need = (((raw_len + copy + decoded.len()) >> 10) + 1) as u64;
        if need > room.num_permits() as u64 {
            if need > u64::from(self.budget_kib) {
                // It could never fit, however long it waited.
                return Err(PushError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "request needs {} MiB to decode, more than the {} MiB all pushes share",
                        need >> 10,
                        self.budget_kib >> 10
                    ),
                });
            }
            let need = need as u32;
            let more = Arc::clone(&self.budget)
                .try_acquire_many_owned(need - room.num_permits() as u32)
                .map_err(|_| PushError::busy())?;
            room.merge(more);
        }
        Ok((decoded, room))
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

/// Bytes of request bodies (as sent and decompressed, and the records decoded from them) held
/// by all push requests together at most (256 MiB): past it a request waits for room before
/// it reads its body, or, if its body decompresses to more than the room left, is a 503.
pub const BODY_BUDGET: usize = 256 << 20;

/// `bytes` in KiB permits, at most `cap` (the whole budget: a request bigger than it waits
/// for all of it rather than forever).
fn kib(bytes: usize, cap: u32) -> u32 {
    ((bytes >> 10) + 1).min(cap as usize) as u32
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

/// Read `body` whole, at most `limit` bytes (413 beyond; a `Content-Length` over it is refused
/// before anything is read).
async fn read_raw(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, PushError> {
    if content_length(headers).is_some_and(|len| len > limit as u64) {
        return Err(PushError::too_large(limit));
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(PushError::too_large(limit))
        }
        Err(e) => Err(PushError::bad(format!("reading the request body: {e}"))),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Undo one content encoding, never producing more than `limit` bytes.
pub fn decode(encoding: &str, raw: Bytes, limit: usize) -> Result<Bytes, PushError> {
    match encoding {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, "gzip"),
        "deflate" => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit, "deflate"),
        "snappy" => snappy(&raw, limit),
        other => Err(PushError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "Content-Encoding {other:?} is not supported (gzip, deflate, snappy or none)"
            ),
        }),
    }
}

fn inflate(reader: impl Read, limit: usize, name: &str) -> Result<Bytes, PushError> {
    let mut out = Vec::new();
    match reader.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(PushError::too_large(limit)),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(PushError::bad(format!("body is not valid {name}: {e}"))),
    }
}

/// Snappy's block format (what Promtail, Alloy and Prometheus send), checked against the
/// limit before anything is allocated.
pub fn snappy(raw: &[u8], limit: usize) -> Result<Bytes, PushError> {
    let len = snap::raw::decompress_len(raw)
        .map_err(|e| PushError::bad(format!("body is not valid snappy: {e}")))?;
    if len > limit {
        return Err(PushError::too_large(limit));
    }
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
    decode: impl FnOnce(&Bytes) -> Result<(Batch, T), PushError>,
    respond: impl FnOnce(T) -> Response,
    refuse: impl FnOnce(&PushError) -> Response,
) -> Response {
    let result = async {
        let (raw, _room) = push.body(headers, body, implicit).await?;
        let (batch, answer) = decode(&raw)?;
        push.store(protocol, batch, raw.len(), push.cfg.wait)
            .await?;
        Ok::<_, PushError>(answer)
    }
    .await;
    match result {
        Ok(answer) => respond(answer),
        Err(e) => {
            push.rejected(protocol, &e);
            refuse(&e)
        }
    }
}

async fn loki_push(State(push): State<Arc<Push>>, headers: HeaderMap, body: Body) -> Response {
    let protobuf = content_type_has(&headers, "protobuf");
    // Promtail and Alloy send snappy-compressed protobuf without a Content-Encoding.
    let implicit = if protobuf { "snappy" } else { "" };
    let cfg = &push.cfg;
    let decode = |raw: &Bytes| {
        let batch = if protobuf {
            loki::decode_protobuf(raw, cfg)?
        } else {
            loki::decode_json(raw, cfg)?
        };
        Ok((batch, ()))
    };
    let respond = |()| StatusCode::NO_CONTENT.into_response();
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
    let decode = |raw: &Bytes| {
        let decoded = if json {
            otlp::decode_json(raw, cfg)?
        } else {
            otlp::decode_protobuf(raw, cfg)?
        };
        Ok((decoded.batch, decoded.rejected))
    };
    let respond = |rejected| otlp::response(json, rejected);
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
    let decode = |raw: &Bytes| Ok((jsonline::decode(raw, &fields, topic)?, ()));
    let respond = |()| StatusCode::OK.into_response();
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
    let fields = elasticsearch::fields(&params);
    let topic = &push.cfg.topic;
    let decode = |raw: &Bytes| elasticsearch::decode(raw, index.as_deref(), &fields, topic);
    let respond = |items: Vec<elasticsearch::Item>| elasticsearch::bulk_response(&items, started);
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
        Push::with_budget(
            crate::ingest::protocols::test_config(),
            writer,
            metrics,
            budget,
        )
    }

    #[tokio::test]
    async fn bodies_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let push = push_with_budget(dir.path(), 1 << 20);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'x'; 4 << 20]).unwrap();
        let gz = gz.finish().unwrap();
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
        // While another request holds most of the room, one that would need more is a 503.
        let held = Arc::clone(&push.budget)
            .try_acquire_many_owned(900)
            .unwrap();
        let mut small = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        small.write_all(&vec![b'x'; 100 << 10]).unwrap();
        let small = small.finish().unwrap();
        let mut sized = headers.clone();
        sized.insert(header::CONTENT_LENGTH, small.len().into());
        let e = push.body(&sized, Body::from(small), "").await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{}", e.message);
        assert!(e.message.contains("busy"), "{}", e.message);
        drop(held);
        // A body that fits is read, and its room is given back when the request is done.
        for _ in 0..3 {
            let (body, room) = push
                .body(&HeaderMap::new(), Body::from(vec![b'y'; 200 << 10]), "")
                .await
                .unwrap();
            assert_eq!(body.len(), 200 << 10);
            assert!(room.num_permits() >= 400, "{}", room.num_permits());
        }
        assert_eq!(push.budget.available_permits(), 1024);
    }

    #[test]
    fn the_routes_build() {
        // Route conflicts panic when the router is built: build it.
        let dir = tempfile::tempdir().unwrap();
        let _ = push_with_budget(dir.path(), BODY_BUDGET).router();
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        assert!(gz.len() < 100 << 10);
        let e = decode("gzip", gz.clone(), 1 << 20).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(decode("gzip", gz, 10 << 20).unwrap().len(), 10 << 20);
        let sn = Bytes::from(snap::raw::Encoder::new().compress_vec(&zeros).unwrap());
        assert_eq!(
            decode("snappy", sn, 1 << 20).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let e = decode("gzip", Bytes::from_static(b"not gzip"), 1 << 20).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("gzip"), "{}", e.message);
        assert_eq!(
            decode("br", Bytes::new(), 1).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
