//! `GET /store/_samples`: a LogQL range function's samples from this node's records, for the
//! Loki API's metric queries (`loki/`): the node runs the selector and pipeline over its own
//! records and sends one line per sample, in ULID order,
//!
//! ```text
//! <ULID> <nanoseconds> <value> <series labels as a JSON object>
//! ```
//!
//! so the node asked merges every node's lines by ULID, counting each record once however
//! many replicas hold it. Parameters: the store query's (`from`, `to`, `q`, `regex`,
//! `topic`), and `logql` (the whole metric query), `n` (which of its range functions, in
//! [`crate::logql::eval::range_aggs`] order), `window` (`<from ns>,<to ns>`: the samples'
//! `(from, to]`). A query that fails on a record (`__error__`) ends the answer with the line
//! [`FAILED`]` <why>`, which sorts after every sample.

use std::io::{self, Write};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::params::{RawParams, parse_query};
use super::{Output, StoreApi, answer};
use crate::http::text;
use crate::logql::sample::{Sampled, Sampler};

/// The "ULID" of the line that says the query failed: after every real ULID.
pub const FAILED: &str = "ZZZZZZZZZZZZZZZZZZZZZZZZZZ !";

/// A sampler's parameters from a request.
fn sampler(raw: &RawParams) -> Result<Sampler, String> {
    let q = raw.get("logql").unwrap_or("");
    let expr = crate::logql::parse(q).map_err(|e| e.to_string())?;
    let n: usize = raw
        .get("n")
        .and_then(|n| n.parse().ok())
        .ok_or("n: wanted the number of the range function")?;
    let aggs = crate::logql::eval::range_aggs(&expr);
    let (agg, grouping) = aggs
        .get(n)
        .ok_or_else(|| format!("n: {q:?} has {} range functions", aggs.len()))?;
    let window = raw
        .get("window")
        .and_then(|w| w.split_once(','))
        .and_then(|(a, b)| Some((a.parse::<i128>().ok()?, b.parse::<i128>().ok()?)))
        .ok_or("window: wanted <from ns>,<to ns>")?;
    let levels = crate::logql::record::names_level(&expr);
    Sampler::new(agg, window, grouping.clone(), levels).map_err(|e| e.to_string())
}

/// Series labels as a JSON object.
fn labels_json(key: &crate::logql::labels::Labels) -> String {
    let labels: std::collections::BTreeMap<&str, &str> = key
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    serde_json::to_string(&labels).unwrap_or_default()
}

/// `GET /store/_samples?...`.
pub async fn local_samples(
    State(api): State<Arc<StoreApi>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    api.samples(RawParams(raw)).await
}

impl StoreApi {
    /// This node's samples for the request's parameters (see the module docs).
    pub async fn samples(self: &Arc<Self>, raw: RawParams) -> Response {
        let (mut params, sampler) = match parse_query(&raw)
            .map_err(|e| e.to_string())
            .and_then(|p| Ok((p, sampler(&raw)?)))
        {
            Ok(x) => x,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        (params.desc, params.limit) = (false, None);
        let records = answer(self, &Method::GET, params, Output::Records, false).await;
        if !records.status().is_success() {
            return records;
        }
        let (parts, mut body) = records.into_parts();
        let (in_tx, in_rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let (out_tx, out_rx) = mpsc::channel::<io::Result<hyper::body::Frame<Bytes>>>(4);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let data = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue,
                    },
                    // The records broke off (a block that could not be read, a stop): so do
                    // the samples, and the node asked counts this node as failed.
                    Err(e) => Err(io::Error::other(e)),
                };
                let failed = data.is_err();
                if in_tx.send(data).await.is_err() || failed {
                    return;
                }
            }
        });
        tokio::task::spawn_blocking(move || write_samples(sampler, in_rx, out_tx));
        let mut headers = HeaderMap::new();
        for (k, v) in parts.headers.iter() {
            if k.as_str().starts_with("x-oklog-") {
                headers.insert(k.clone(), v.clone());
            }
        }
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        (StatusCode::OK, headers, crate::http::frame_body(out_rx)).into_response()
    }
}

/// Turn the records arriving on `records` into sample lines sent on `out` (blocking: a
/// thread of its own), ending with [`FAILED`] when the query fails on a record and with an
/// error when the records broke off.
fn write_samples(
    mut sampler: Sampler,
    mut records: mpsc::Receiver<io::Result<Bytes>>,
    out_tx: mpsc::Sender<io::Result<hyper::body::Frame<Bytes>>>,
) {
    let mut carry: Vec<u8> = Vec::new();
    let mut out = Vec::with_capacity(64 << 10);
    // Each stream's series as JSON, once.
    let mut json: Vec<Option<String>> = Vec::new();
    while let Some(chunk) = records.blocking_recv() {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = out_tx.blocking_send(Err(e));
                return;
            }
        };
        // Whole lines are read where they are; only a line cut between chunks is
        // copied.
        let joined;
        let data: &[u8] = if carry.is_empty() {
            &chunk
        } else {
            carry.extend_from_slice(&chunk);
            joined = std::mem::take(&mut carry);
            &joined
        };
        let end = memchr::memrchr(b'\n', data).map_or(0, |i| i + 1);
        for line in data[..end].split(|&b| b == b'\n').filter(|l| l.len() > 26) {
            match sampler.sample(line) {
                Sampled::Skip => {}
                Sampled::Sample {
                    ns,
                    key,
                    value,
                    stream,
                } => {
                    out.extend_from_slice(&line[..26]);
                    let _ = write!(out, " {ns} {value} ");
                    match stream {
                        Some(i) => {
                            if json.len() <= i {
                                json.resize(i + 1, None);
                            }
                            let text = json[i].get_or_insert_with(|| labels_json(&key));
                            out.extend_from_slice(text.as_bytes());
                        }
                        None => out.extend_from_slice(labels_json(&key).as_bytes()),
                    }
                    out.push(b'\n');
                }
                Sampled::Error(e) => {
                    out.extend_from_slice(
                        format!("{FAILED}{}\n", e.0.replace('\n', " ")).as_bytes(),
                    );
                    let _ = out_tx.blocking_send(Ok(hyper::body::Frame::data(Bytes::from(out))));
                    return;
                }
            }
        }
        carry = data[end..].to_vec();
        if out.len() >= 64 << 10 {
            let chunk = Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(64 << 10)));
            if out_tx
                .blocking_send(Ok(hyper::body::Frame::data(chunk)))
                .is_err()
            {
                return;
            }
        }
    }
    if !out.is_empty() {
        let _ = out_tx.blocking_send(Ok(hyper::body::Frame::data(Bytes::from(out))));
    }
}
