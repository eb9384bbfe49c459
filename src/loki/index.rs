//! The Loki API's answers about labels and streams, from the store nodes' label indexes
//! ([`crate::store::labels`]), never by reading records: `labels`, `label/<name>/values`,
//! `series`, `index/stats`, `index/volume`, `detected_labels`. (`index/volume_range` is a
//! metric query; `detected_fields` samples lines.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::exec::{Refusal, bad};
use super::json;
use super::params;
use crate::logql::labels::Labels;
use crate::logql::record::{Selector, stream_labels};
use crate::store::api::params::RawParams;
use crate::store::gather::Gateway;
use crate::store::labels::StreamInfo;

/// Loki's default window for label queries: the 6 hours before `end`.
const LABELS_SINCE: i128 = 6 * 3_600_000_000_000;

/// A stream from the index: its labels, records and bytes.
pub struct IndexedStream {
    /// Stream labels.
    pub labels: Labels,
    /// Records (the most any replica holds).
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The window of a label query (`start`, `end`, or `since` before `end`), in ms.
fn window(p: &RawParams) -> Result<(u64, u64), Refusal> {
    let end = params::time("end", p.get("end"), params::now_ns()).map_err(bad)?;
    let since = match p.get("since").filter(|s| !s.is_empty()) {
        Some(v) => params::duration("since", v).map_err(bad)?,
        None => LABELS_SINCE,
    };
    let start = params::time("start", p.get("start"), end - since).map_err(bad)?;
    if end < start {
        return Err(bad(
            "end timestamp must not be before or equal to start time",
        ));
    }
    let ms = |ns: i128| ns.div_euclid(1_000_000).max(0) as u64;
    Ok((ms(start), ms(end)))
}

/// The streams of the window that match any of `selectors` (every stream when there is none),
/// and whether a store node did not answer.
pub async fn streams(
    gw: &Arc<Gateway>,
    (from, to): (u64, u64),
    selectors: &[String],
) -> Result<(Vec<IndexedStream>, bool), Refusal> {
    let mut compiled = Vec::new();
    for q in selectors.iter().filter(|q| !q.trim().is_empty()) {
        let log = crate::logql::parse::parse_log(q).map_err(bad)?;
        compiled.push(Selector::new(&log.selector).map_err(bad)?);
    }
    let (found, errors) = gw.streams(from, to).await;
    let mut out = Vec::new();
    for StreamInfo {
        topic,
        labels,
        records,
        bytes,
        ..
    } in found
    {
        let labels = stream_labels(&topic, labels.as_bytes());
        if compiled.is_empty() || compiled.iter().any(|s| s.matches(&labels)) {
            out.push(IndexedStream {
                labels,
                records,
                bytes,
            });
        }
    }
    Ok((out, errors > 0))
}

fn answer(r: Result<Response, Refusal>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The streams of a label query's window that its `query` selectors pick.
async fn asked(gw: &Arc<Gateway>, p: &RawParams) -> Result<(Vec<IndexedStream>, bool), Refusal> {
    let selectors: Vec<String> = p.all("query").iter().map(|s| s.to_string()).collect();
    streams(gw, window(p)?, &selectors).await
}

fn json_ok(body: String, partial: bool) -> Response {
    super::json_response(StatusCode::OK, body, partial)
}

/// `GET /loki/api/v1/labels?start=&end=&query=`.
pub async fn labels(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    answer(
        async {
            let (found, partial) = asked(&gw, &p).await?;
            let names: BTreeSet<String> = found
                .iter()
                .flat_map(|s| s.labels.iter().map(|l| l.name.clone()))
                .collect();
            Ok(json_ok(
                json::list(&names.into_iter().collect::<Vec<_>>()),
                partial,
            ))
        }
        .await,
    )
}

/// `GET /loki/api/v1/label/<name>/values?start=&end=&query=`.
pub async fn label_values(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    answer(
        async {
            let (found, partial) = asked(&gw, &p).await?;
            let values: BTreeSet<String> = found
                .iter()
                .filter_map(|s| s.labels.get(&name).map(String::from))
                .collect();
            Ok(json_ok(
                json::list(&values.into_iter().collect::<Vec<_>>()),
                partial,
            ))
        }
        .await,
    )
}

/// `GET|POST /loki/api/v1/series?match[]=&start=&end=`.
pub async fn series(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    answer(
        async {
            let mut selectors: Vec<String> =
                p.all("match[]").iter().map(|s| s.to_string()).collect();
            selectors.extend(p.all("match").iter().map(|s| s.to_string()));
            let (found, partial) = streams(&gw, window(&p)?, &selectors).await?;
            let mut out = String::from(r#"{"status":"success","data":["#);
            let mut seen = BTreeSet::new();
            for s in &found {
                let text = s.labels.text();
                if !seen.insert(text) {
                    continue;
                }
                if seen.len() > 1 {
                    out.push(',');
                }
                out.push_str(&labels_json(&s.labels));
            }
            out.push_str("]}");
            Ok(json_ok(out, partial))
        }
        .await,
    )
}

fn labels_json(l: &Labels) -> String {
    let map: BTreeMap<&str, &str> = l
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

/// `GET /loki/api/v1/index/stats?query=&start=&end=`: streams, chunks (segments' worth of a
/// stream: one per stream here), bytes and entries of the streams the query selects.
pub async fn stats(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    answer(
        async {
            let query = p.get("query").unwrap_or("").to_string();
            let (found, partial) = streams(&gw, window(&p)?, &[query]).await?;
            let body = serde_json::json!({
                "streams": found.len(),
                "chunks": found.len(),
                "bytes": found.iter().map(|s| s.bytes).sum::<u64>(),
                "entries": found.iter().map(|s| s.records).sum::<u64>(),
            });
            Ok(json_ok(body.to_string(), partial))
        }
        .await,
    )
}

/// `GET /loki/api/v1/index/volume?query=&start=&end=&limit=&targetLabels=&aggregateBy=`:
/// bytes per group of streams, most first, as an instant vector. Streams are grouped by the
/// selector's label names (or `targetLabels`), or not at all with `aggregateBy=series`.
pub async fn volume(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    answer(
        async {
            let query = p.get("query").unwrap_or("").to_string();
            let log = crate::logql::parse::parse_log(&query).map_err(bad)?;
            let (from, to) = window(&p)?;
            let (found, partial) = streams(&gw, (from, to), &[query]).await?;
            let limit = match p.get("limit").filter(|s| !s.is_empty()) {
                Some(v) => v
                    .parse::<usize>()
                    .map_err(|_| bad(format!("invalid parameter \"limit\": {v:?}")))?,
                None => 100,
            };
            let targets: Vec<String> = match p.get("targetLabels").filter(|s| !s.is_empty()) {
                Some(t) => t.split(',').map(|s| s.trim().to_string()).collect(),
                None => log.selector.iter().map(|m| m.name.clone()).collect(),
            };
            let by_series =
                p.get("aggregateBy") == Some("series") && p.get("targetLabels").is_none();
            let mut groups: BTreeMap<Labels, u64> = BTreeMap::new();
            for s in found {
                let mut key = s.labels;
                if !by_series {
                    key.retain(|l| targets.contains(&l.name));
                }
                *groups.entry(key).or_default() += s.bytes;
            }
            let mut ranked: Vec<(Labels, u64)> = groups.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.truncate(limit);
            let series: Vec<crate::logql::eval::Series> = ranked
                .into_iter()
                .map(|(labels, bytes)| crate::logql::eval::Series {
                    labels,
                    points: vec![Some(bytes as f64)],
                })
                .collect();
            let end = i128::from(to) * 1_000_000;
            Ok(json_ok(
                json::vector(&series, end, &json::Summary::default()),
                partial,
            ))
        }
        .await,
    )
}

/// `GET /loki/api/v1/detected_labels?query=&start=&end=`: each stream label with its number
/// of values.
pub async fn detected_labels(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    answer(
        async {
            let query = p.get("query").unwrap_or("").to_string();
            let (found, partial) = streams(&gw, window(&p)?, &[query]).await?;
            let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in &found {
                for l in s.labels.iter() {
                    values
                        .entry(l.name.clone())
                        .or_default()
                        .insert(l.value.clone());
                }
            }
            let list: Vec<serde_json::Value> = values
                .into_iter()
                .map(|(label, v)| serde_json::json!({"label": label, "cardinality": v.len()}))
                .collect();
            Ok(json_ok(
                serde_json::json!({ "detectedLabels": list }).to_string(),
                partial,
            ))
        }
        .await,
    )
}

/// `GET /loki/api/v1/patterns`: none (oklog does not mine patterns).
pub async fn patterns() -> Response {
    json_ok(r#"{"status":"success","data":[]}"#.to_string(), false)
}
