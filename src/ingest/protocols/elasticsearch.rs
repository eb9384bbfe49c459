//! Elasticsearch bulk under `/insert/elasticsearch/` (as VictoriaLogs): `POST .../_bulk` and
//! `POST .../<index>/_bulk` take NDJSON `index`/`create` actions, each followed by its
//! document, and answer the per-item JSON bulk clients read. What clients ask before they send
//! is answered too (`_bulk` takes `PUT` as well, as the Python client sends it): `GET /insert/elasticsearch/` (a version, and the `X-Elastic-Product`
//! header the official clients check on every response), `_license`, `_cluster/health`, and
//! template or lifecycle set-up calls (acknowledged, ignored).
//!
//! The topic is the document's `_topic_field` when given, else the index (from the action, else
//! the URL); the message is the first of `_msg_field` (default `message,msg,_msg`) present;
//! `_time_field` (default `@timestamp`) is the time. `delete` and `update` actions are answered
//! as failed items (400): oklog does not change stored records.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

use super::jsonline::{self, Fields};
use super::{Batch, PushError};

/// The Elasticsearch version reported to clients that ask (8.x: what current clients and
/// Filebeat expect).
pub const VERSION: &str = "8.9.0";
const PREFIX: &str = "/insert/elasticsearch";

/// The bulk route (its handler is the push endpoints', in `http.rs`).
pub const BULK: &str = "/insert/elasticsearch/_bulk";
/// The bulk route with an index.
pub const BULK_INDEX: &str = "/insert/elasticsearch/{index}/_bulk";

/// The routes under [`PREFIX`] that store nothing: what clients ask before they send.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PREFIX, get(info).head(info))
        .route(&format!("{PREFIX}/"), get(info).head(info))
        .route(&format!("{PREFIX}/_license"), get(license))
        .route(&format!("{PREFIX}/_cluster/health"), get(health))
        .route(&format!("{PREFIX}/_xpack"), get(xpack))
        .route(&format!("{PREFIX}/{{index}}"), any(acknowledge))
        .route(
            &format!("{PREFIX}/_index_template/{{name}}"),
            any(acknowledge),
        )
        .route(&format!("{PREFIX}/_template/{{name}}"), any(acknowledge))
        .route(&format!("{PREFIX}/_ilm/policy/{{name}}"), any(acknowledge))
        .route(&format!("{PREFIX}/_data_stream/{{name}}"), any(acknowledge))
        .route(
            &format!("{PREFIX}/_ingest/pipeline/{{name}}"),
            any(acknowledge),
        )
}

fn es(status: StatusCode, body: Value) -> Response {
    es_text(status, body.to_string())
}

fn es_text(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    r
}

async fn info() -> Response {
    es(
        StatusCode::OK,
        json!({
            "name": "oklog",
            "cluster_name": "oklog",
            "cluster_uuid": "oklog",
            "version": {
                "number": VERSION,
                "build_flavor": "default",
                "build_type": "oklog",
                "lucene_version": "9.7.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        }),
    )
}

async fn license() -> Response {
    es(
        StatusCode::OK,
        json!({"license": {"uid": "oklog", "type": "basic", "status": "active", "expiry_date_in_millis": 4_000_000_000_000u64}}),
    )
}

async fn xpack() -> Response {
    es(
        StatusCode::OK,
        json!({"build": {}, "features": {}, "license": {"mode": "basic", "status": "active", "type": "basic"}}),
    )
}

async fn health() -> Response {
    es(
        StatusCode::OK,
        json!({"cluster_name": "oklog", "status": "green", "number_of_nodes": 1}),
    )
}

async fn acknowledge() -> Response {
    es(StatusCode::OK, json!({"acknowledged": true}))
}

/// The document fields a bulk request's parameters name (`_msg_field`, default
/// `message,msg,_msg`; `_time_field`, default `@timestamp`; `_topic_field`).
pub fn fields(params: &HashMap<String, String>) -> Fields {
    Fields::from_params(params, "message,msg,_msg", "@timestamp")
}

/// The answer to a stored bulk request: each item's outcome.
pub fn bulk_response(items: &[Item], started: Instant) -> Response {
    let errors = items.iter().any(|i| i.status >= 300);
    // Written directly: a `Value` per item cost more than decoding the documents.
    let mut body = format!(
        "{{\"took\":{},\"errors\":{errors},\"items\":[",
        started.elapsed().as_millis()
    );
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        item.write_json(&mut body);
    }
    body.push_str("]}");
    es_text(StatusCode::OK, body)
}

/// A refused bulk request, as Elasticsearch answers one.
pub fn error_response(e: &PushError) -> Response {
    e.finish(es(
        e.status,
        json!({"error": {"type": "parse_exception", "reason": e.message}, "status": e.status.as_u16()}),
    ))
}

/// An action's metadata (the fields oklog reads; others are ignored).
#[derive(serde::Deserialize)]
struct Meta<'a> {
    #[serde(rename = "_index", borrow, default)]
    index: Option<Cow<'a, str>>,
    #[serde(rename = "_id", borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// One bulk item's outcome.
#[derive(Debug)]
pub struct Item {
    action: String,
    index: String,
    /// The action's `_id`, else the item's number.
    id: Option<String>,
    n: usize,
    status: u16,
    error: Option<String>,
}

impl Item {
    /// Append the item's JSON to `out`.
    fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        out.push('{');
        quote(out, &self.action);
        out.push_str(":{\"_index\":");
        quote(out, &self.index);
        out.push_str(",\"_id\":");
        match &self.id {
            Some(id) => quote(out, id),
            None => {
                let _ = write!(out, "\"{}\"", self.n);
            }
        }
        let _ = write!(out, ",\"status\":{}", self.status);
        match &self.error {
            None => out.push_str(
                ",\"result\":\"created\",\"_version\":1,\"_seq_no\":0,\"_primary_term\":1,\"_shards\":{\"total\":1,\"successful\":1,\"failed\":0}}}",
            ),
            Some(reason) => {
                out.push_str(",\"error\":{\"type\":\"illegal_argument_exception\",\"reason\":");
                quote(out, reason);
                out.push_str("}}}");
            }
        }
    }
}

/// Append `s` as a JSON string (plain ASCII as it is; anything else through serde_json).
fn quote(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// Decode a bulk body into records and the items to answer. A structural error (an action
/// that is not JSON, an `index` without its document, a document that is not an object) is a
/// 400 naming the line, and nothing is stored.
pub fn decode(
    body: &[u8],
    url_index: Option<&str>,
    fields: &Fields,
    static_topic: &str,
) -> Result<(Batch, Vec<Item>), PushError> {
    let mut batch = Batch::with_capacity(body.len());
    let mut items = Vec::new();
    let mut lines = jsonline::lines(jsonline::utf8(body)?)
        .enumerate()
        .filter(|(_, l)| !l.bytes().all(|b| b.is_ascii_whitespace()));
    while let Some((n, line)) = lines.next() {
        let at = n + 1;
        let action: HashMap<&str, Meta> = serde_json::from_str(line).map_err(|e| {
            PushError::bad(format!(
                "line {at}: action: not {{\"index\"|\"create\"|\"delete\"|\"update\": {{...}}}}: {e}"
            ))
        })?;
        let mut entries = action.into_iter();
        let (Some((name, meta)), None) = (entries.next(), entries.next()) else {
            return Err(PushError::bad(format!(
                "line {at}: an action is one key (index, create, delete, update) with an object"
            )));
        };
        let name = name.to_string();
        let index = meta
            .index
            .map(Cow::into_owned)
            .or_else(|| url_index.map(str::to_string))
            .unwrap_or_else(|| static_topic.to_string());
        let id = meta.id.map(Cow::into_owned);
        let mut item = Item {
            action: name.clone(),
            index: index.clone(),
            id,
            n: items.len() + 1,
            status: 201,
            error: None,
        };
        match name.as_str() {
            "index" | "create" => {
                let Some((dn, doc_line)) = lines.next() else {
                    return Err(PushError::bad(format!(
                        "line {at}: {name} action without its document"
                    )));
                };
                let doc = jsonline::parse_object(doc_line)
                    .map_err(|e| PushError::bad(format!("line {}: document: {e}", dn + 1)))?;
                let topic = jsonline::doc_topic(&doc, fields, static_topic, Some(&index));
                jsonline::document(&mut batch, &topic, doc, fields);
            }
            "update" => {
                lines.next();
                item.status = 400;
                item.error = Some("oklog does not update stored records".into());
            }
            "delete" => {
                item.status = 400;
                item.error = Some("oklog does not delete stored records".into());
            }
            other => {
                return Err(PushError::bad(format!(
                    "line {at}: unknown bulk action {other:?}"
                )));
            }
        }
        items.push(item);
    }
    Ok((batch, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields::from_params(&HashMap::new(), "message,msg,_msg", "@timestamp")
    }

    #[test]
    fn actions_and_documents() {
        let body = br#"{"index":{"_index":"nginx"}}
{"@timestamp":"2026-11-29T10:00:00Z","message":"GET / 200","host":{"name":"web-1"}}
{"create":{}}
{"msg":"from the url index"}
{"delete":{"_index":"x","_id":"1"}}
"#;
        let (batch, items) = decode(body, Some("app-logs"), &fields(), "default").unwrap();
        assert_eq!(
            batch.lines(),
            [
                "nginx GET / 200 host.name=web-1 ts=2026-11-29T10:00:00Z",
                "app-logs from the url index",
            ]
        );
        let statuses: Vec<(String, u16)> =
            items.iter().map(|i| (i.action.clone(), i.status)).collect();
        assert_eq!(
            statuses,
            [
                ("index".into(), 201),
                ("create".into(), 201),
                ("delete".into(), 400)
            ]
        );
        let mut out = String::new();
        items[0].write_json(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["index"]["result"], "created");
        assert_eq!(v["index"]["_index"], "nginx");
        assert_eq!(v["index"]["_id"], "1");
        let odd = Item {
            action: "create".into(),
            index: "q\"x\u{e9}".into(),
            id: Some("a\\b".into()),
            n: 2,
            status: 201,
            error: None,
        };
        let mut out = String::new();
        odd.write_json(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["create"]["_index"], "q\"x\u{e9}");
        assert_eq!(v["create"]["_id"], "a\\b");
        let mut out = String::new();
        items[2].write_json(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["delete"]["status"], 400);
        assert!(
            v["delete"]["error"]["reason"]
                .as_str()
                .unwrap()
                .contains("delete")
        );
    }

    #[test]
    fn structural_errors_name_the_line() {
        for (body, want) in [
            (
                &b"{\"index\":{}}\n"[..],
                "line 1: index action without its document",
            ),
            (
                b"{\"index\":{}}\n[1]\n",
                "line 2: document: not a JSON object",
            ),
            (b"not json\n", "line 1: action"),
            (b"{\"index\":{},\"create\":{}}\n{}\n", "one key"),
            (b"{\"upsert\":{}}\n{}\n", "unknown bulk action"),
        ] {
            let e = decode(body, None, &fields(), "default").unwrap_err();
            assert!(e.message.contains(want), "{}", e.message);
        }
    }
}
