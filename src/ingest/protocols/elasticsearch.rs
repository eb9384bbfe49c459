//! Elasticsearch bulk under `/insert/elasticsearch/` (as VictoriaLogs): `POST .../_bulk` and
//! `POST .../<index>/_bulk` take NDJSON `index`/`create` actions, each followed by its
//! document, and answer the per-item JSON bulk clients read. What clients ask before they send
//! is answered too (`_bulk` takes `PUT` as well, as the Python client sends it): `GET /insert/elasticsearch/` (a version, and the `X-Elastic-Product`
//! header the official clients check on every response), `_license`, `_cluster/health`, and
//! template or lifecycle set-up calls (acknowledged, ignored).
//!
//! The topic is the document's `_topic_field` when given, else the index (from the action, else
//! the URL); the message is the first of `_msg_field` (default `message,msg,_msg`) present;
//! `_time_field` (default `-ingest.elasticsearch-time-field`, `@timestamp`) is the time, the
//! record's ULID time. `delete` and `update` actions, and documents whose time is outside the
//! event bounds, are answered as failed items (400): oklog does not change stored records.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

use super::jsonline::{self, Fields};
use super::{Batch, Finished, PushError};
use crate::ingest::OutOfBounds;

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
/// `message,msg,_msg`; `_time_field`, default `time_field`, from
/// `-ingest.elasticsearch-time-field`; `_topic_field`).
pub fn fields(params: &HashMap<String, String>, time_field: &str) -> Fields {
    Fields::from_params(params, "message,msg,_msg", time_field)
}

/// The answer to a stored bulk request: each item's outcome, written in pieces of about
/// [`ANSWER_PIECE`] bytes as the client reads them.
pub fn bulk_response(items: Items, started: Instant) -> Response {
    let head = format!(
        "{{\"took\":{},\"errors\":{},\"items\":[",
        started.elapsed().as_millis(),
        items.any_failed()
    );
    let pieces = futures_util::stream::unfold(
        (items, 0usize, Some(head)),
        |(items, next, head)| async move {
            let mut out = head?;
            if next > items.len() {
                return None;
            }
            let mut n = next;
            while n < items.len() && out.len() < ANSWER_PIECE {
                if n > 0 {
                    out.push(',');
                }
                items.write_json(n, &mut out);
                n += 1;
            }
            if n == items.len() {
                out.push_str("]}");
                n += 1;
            }
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from(out)),
                (items, n, Some(String::with_capacity(ANSWER_PIECE + 512))),
            ))
        },
    );
    let mut r = (StatusCode::OK, axum::body::Body::from_stream(pieces)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "X-Elastic-Product",
        HeaderValue::from_static("Elasticsearch"),
    );
    r
}

/// The size of a piece of a bulk answer (64 KiB).
const ANSWER_PIECE: usize = 64 << 10;

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

/// A bulk action oklog answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    Index,
    Create,
    Update,
    Delete,
}

impl Action {
    fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "index" => Action::Index,
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    /// The item's status and, for a failed one, why.
    fn outcome(self) -> (u16, Option<&'static str>) {
        match self {
            Action::Index | Action::Create => (201, None),
            Action::Update => (400, Some("oklog does not update stored records")),
            Action::Delete => (400, Some("oklog does not delete stored records")),
        }
    }
}

/// The outcomes of a bulk request's items, a dozen bytes each (the action and index by number,
/// the `_id` as a range of one string), held against the memory budget; the answer is written
/// from them as the client reads it ([`bulk_response`]), never built whole: a million one-line
/// documents in 31 KB of gzip built a 168 MB answer.
#[derive(Debug)]
pub struct Items {
    /// The distinct actions, indexes and refusals (why an item's document was not stored,
    /// if it was not), which entries name by number.
    kinds: Vec<Kind>,
    lookup: HashMap<Kind, u32>,
    /// Every `_id` sent, one after another.
    ids: String,
    /// Per item: its kind, and its `_id`'s start and length in `ids` (`u32::MAX`: none, the
    /// item's number answers).
    entries: Vec<(u32, u32, u32)>,
    hold: Option<crate::memory::Hold>,
}

/// An item's action, index, and why its document was refused (its time), if it was.
type Kind = (Action, String, Option<String>);

/// Items whose memory is counted at once, at most.
const COUNT_EVERY: usize = 1024;

impl Items {
    /// No items yet, counted in `hold` (when given) as they come.
    pub fn new(hold: Option<crate::memory::Hold>) -> Items {
        Items {
            kinds: Vec::new(),
            lookup: HashMap::new(),
            ids: String::new(),
            entries: Vec::new(),
            hold,
        }
    }

    fn push(
        &mut self,
        action: Action,
        index: &str,
        id: Option<&str>,
        refused: Option<&str>,
    ) -> Result<(), PushError> {
        let last = self.kinds.len().wrapping_sub(1);
        let kind = match self.kinds.get(last) {
            // Most requests name one action and index for all their items.
            Some((a, i, r)) if *a == action && i == index && r.as_deref() == refused => last as u32,
            _ => {
                let key = (action, index.to_string(), refused.map(String::from));
                match self.lookup.get(&key) {
                    Some(&k) => k,
                    None => {
                        let k = self.kinds.len() as u32;
                        self.kinds.push(key.clone());
                        self.lookup.insert(key, k);
                        k
                    }
                }
            }
        };
        let (start, len) = match id {
            Some(id) => {
                let start = self.ids.len() as u32;
                self.ids.push_str(id);
                (start, id.len() as u32)
            }
            None => (0, u32::MAX),
        };
        self.entries.push((kind, start, len));
        if self.entries.len().is_multiple_of(COUNT_EVERY) {
            self.count()?;
        }
        Ok(())
    }

    /// Bring the hold up to what the items take.
    fn count(&mut self) -> Result<(), PushError> {
        let bytes = self.entries.capacity() * 12
            + self.ids.capacity()
            + self
                .kinds
                .iter()
                .map(|(_, i, r)| 2 * (i.len() + r.as_ref().map_or(0, |r| r.len()) + 72))
                .sum::<usize>();
        match &mut self.hold {
            Some(h) => h
                .set(bytes)
                .map_err(|full| PushError::busy_with(full.to_string())),
            None => Ok(()),
        }
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any item failed.
    fn any_failed(&self) -> bool {
        self.kinds
            .iter()
            .any(|(a, _, r)| r.is_some() || a.outcome().0 >= 300)
    }

    /// Append item `n`'s JSON to `out`.
    fn write_json(&self, n: usize, out: &mut String) {
        use std::fmt::Write;
        let (kind, start, len) = self.entries[n];
        let (action, index, refused) = &self.kinds[kind as usize];
        out.push('{');
        quote(out, action.name());
        out.push_str(":{\"_index\":");
        quote(out, index);
        out.push_str(",\"_id\":");
        if len == u32::MAX {
            let _ = write!(out, "\"{}\"", n + 1);
        } else {
            quote(out, &self.ids[start as usize..(start + len) as usize]);
        }
        let (status, error) = match refused {
            Some(why) => (400, Some(why.as_str())),
            None => action.outcome(),
        };
        let _ = write!(out, ",\"status\":{status}");
        match error {
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
    mut batch: Batch,
) -> Result<(Batch, Items), PushError> {
    batch.reserve(body.len());
    let mut items = Items::new(batch.budget().map(|b| b.hold()));
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
        let Some(action) = Action::parse(name) else {
            return Err(PushError::bad(format!(
                "line {at}: unknown bulk action {name:?}"
            )));
        };
        let index = meta
            .index
            .or_else(|| url_index.map(Cow::Borrowed))
            .unwrap_or(Cow::Borrowed(static_topic));
        match action {
            Action::Index | Action::Create => {
                let Some((dn, doc_line)) = lines.next() else {
                    return Err(PushError::bad(format!(
                        "line {at}: {name} action without its document"
                    )));
                };
                let doc = jsonline::parse_object(doc_line)
                    .map_err(|e| PushError::bad(format!("line {}: document: {e}", dn + 1)))?;
                let topic = jsonline::doc_topic(&doc, fields, static_topic, Some(&index));
                let finished = jsonline::document(&mut batch, &topic, doc, fields)
                    .map_err(|e| e.at(&format!("line {}", dn + 1)))?;
                if let Finished::OutOfBounds(why) = finished {
                    let why = refusal(&why);
                    items.push(action, &index, meta.id.as_deref(), Some(&why))?;
                    continue;
                }
            }
            Action::Update => {
                lines.next();
            }
            Action::Delete => {}
        }
        items.push(action, &index, meta.id.as_deref(), None)?;
    }
    Ok((batch, items))
}

/// A failed item's reason for a document refused for its time: the bound, not the time (so
/// that the items of one request share a few reasons).
fn refusal(why: &OutOfBounds) -> String {
    match why {
        OutOfBounds::TooOld { age, .. } => format!(
            "the document's time is more than {age} before now (-ingest.max-event-age); not stored"
        ),
        OutOfBounds::TooNew { ahead, .. } => format!(
            "the document's time is more than {ahead} after now (-ingest.max-event-future); not stored"
        ),
    }
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
        let (batch, items) =
            decode(body, Some("app-logs"), &fields(), "default", Batch::new()).unwrap();
        assert_eq!(
            batch.lines(),
            [
                "nginx GET / 200␟␟host.name=web-1 ts=2026-11-29T10:00:00Z",
                "app-logs from the url index",
            ]
        );
        let json = |n: usize| {
            let mut out = String::new();
            items.write_json(n, &mut out);
            serde_json::from_str::<Value>(&out).unwrap()
        };
        let statuses: Vec<(String, u64)> = (0..items.len())
            .map(|n| {
                let v = json(n);
                let (action, item) = v.as_object().unwrap().iter().next().unwrap();
                (action.clone(), item["status"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(
            statuses,
            [
                ("index".into(), 201),
                ("create".into(), 201),
                ("delete".into(), 400)
            ]
        );
        let v = json(0);
        assert_eq!(v["index"]["result"], "created");
        assert_eq!(v["index"]["_index"], "nginx");
        assert_eq!(v["index"]["_id"], "1");
        assert_eq!(json(1)["create"]["_index"], "app-logs");
        let v = json(2);
        assert_eq!(v["delete"]["status"], 400);
        assert_eq!(v["delete"]["_id"], "1");
        assert!(
            v["delete"]["error"]["reason"]
                .as_str()
                .unwrap()
                .contains("delete")
        );
        let mut odd = Items::new(None);
        odd.push(Action::Create, "q\"x\u{e9}", Some("a\\b"), None)
            .unwrap();
        let mut out = String::new();
        odd.write_json(0, &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["create"]["_index"], "q\"x\u{e9}");
        assert_eq!(v["create"]["_id"], "a\\b");
    }

    #[tokio::test]
    async fn the_answer_is_written_in_pieces_and_parses_whole() {
        use http_body_util::BodyExt;
        let mut items = Items::new(None);
        for n in 0..5000 {
            let id = format!("id-{n}");
            let action = if n % 1000 == 7 {
                Action::Delete
            } else {
                Action::Index
            };
            items
                .push(action, "logs", (n % 2 == 0).then_some(id.as_str()), None)
                .unwrap();
        }
        let mut body = bulk_response(items, Instant::now()).into_body();
        let mut pieces = 0;
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() < ANSWER_PIECE + 1024, "{}", data.len());
            all.extend_from_slice(&data);
            pieces += 1;
        }
        assert!(pieces > 5, "{pieces} pieces");
        let v: Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(v["errors"], true);
        let list = v["items"].as_array().unwrap();
        assert_eq!(list.len(), 5000);
        assert_eq!(list[0]["index"]["_id"], "id-0");
        assert_eq!(list[1]["index"]["_id"], "2");
        assert_eq!(list[7]["delete"]["status"], 400);
        assert_eq!(list[4999]["index"]["_id"], "5000");
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
            let e = decode(body, None, &fields(), "default", Batch::new()).unwrap_err();
            assert!(e.message.contains(want), "{}", e.message);
        }
    }
}
