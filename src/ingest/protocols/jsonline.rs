//! JSON lines, `POST /insert/jsonline` (as VictoriaLogs): one JSON object per line. Query
//! parameters name the fields: `_msg_field` (the message; a comma-separated list, the first
//! present wins; default `_msg`), `_time_field` (default `_time`) and `_topic_field` (none by
//! default: the static topic). Nested objects are flattened with dotted keys (`{"a":{"b":1}}`
//! → `a.b=1`); arrays are kept as their JSON text. The same document mapping serves
//! Elasticsearch bulk.

use std::borrow::Cow;
use std::collections::HashMap;

use super::PushError;
use super::{Batch, Finished, Topic};

/// Which fields of a document are the message, the time and the topic.
#[derive(Debug, Clone)]
pub struct Fields {
    /// Candidates for the message, first present wins.
    pub msg: Vec<String>,
    /// The time field.
    pub time: String,
    /// The topic field, if any.
    pub topic: Option<String>,
}

impl Fields {
    /// From `_msg_field`, `_time_field` and `_topic_field`, with these defaults.
    pub fn from_params(params: &HashMap<String, String>, msg: &str, time: &str) -> Fields {
        let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        Fields {
            msg: get("_msg_field")
                .unwrap_or(msg)
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            time: get("_time_field").unwrap_or(time).to_string(),
            topic: get("_topic_field").map(str::to_string),
        }
    }
}

/// A JSON value whose objects keep their keys in the order they were sent (serde_json's own
/// map sorts them), so fields come out as the agent wrote them.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// A string (borrowed from the body when it has no escapes).
    String(Cow<'a, str>),
    /// An array (kept as JSON text when written).
    Array(Vec<serde_json::Value>),
    /// An object, keys in order.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Json<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json<'a>, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Json<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json<'a>, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json<'a>, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json<'a>, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json<'a>, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json<'a>, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Json<'a>, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'a>, E> {
                Ok(Json::String(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json<'a>, E> {
                Ok(Json::String(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Json<'a>, E> {
                Ok(Json::String(Cow::Owned(s)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Json<'a>, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element::<serde_json::Value>()? {
                    v.push(x);
                }
                Ok(Json::Array(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Json<'a>, A::Error> {
                let mut v = Vec::new();
                while let Some((Key(k), x)) = map.next_entry::<Key<'a>, Json<'a>>()? {
                    v.push((k, x));
                }
                Ok(Json::Object(v))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'a>, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl Json<'_> {
    /// The value as text: strings as they are, `null` empty, everything else as JSON.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Json::String(s) => Cow::Borrowed(s.as_ref()),
            Json::Null => "".into(),
            Json::Bool(b) => if *b { "true" } else { "false" }.into(),
            Json::Number(n) => n.to_string().into(),
            Json::Array(a) => serde_json::Value::Array(a.clone()).to_string().into(),
            Json::Object(o) => {
                let m: serde_json::Map<String, serde_json::Value> = o
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect();
                serde_json::Value::Object(m).to_string().into()
            }
        }
    }

    fn to_value(&self) -> serde_json::Value {
        match self {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            Json::Number(n) => serde_json::Value::Number(n.clone()),
            Json::String(s) => serde_json::Value::String(s.to_string()),
            Json::Array(a) => serde_json::Value::Array(a.clone()),
            Json::Object(o) => serde_json::Value::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// A JSON object's keys and values, in order.
pub type Object<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

/// Decode a JSON-lines body; a line that is not a JSON object is a 400 naming the line, and
/// then nothing is stored. Also the number of the first line refused for its time, if any
/// (the others are stored, and the answer names it).
pub fn decode(
    body: &[u8],
    fields: &Fields,
    static_topic: &str,
    mut batch: Batch,
) -> Result<(Batch, Option<usize>), PushError> {
    batch.reserve(body.len());
    let mut first_refused = None;
    for (n, line) in lines(utf8(body)?).enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let doc = parse_object(line).map_err(|e| PushError::bad(format!("line {}: {e}", n + 1)))?;
        let topic = doc_topic(&doc, fields, static_topic, None);
        let finished = document(&mut batch, &topic, doc, fields)
            .map_err(|e| e.at(&format!("line {}", n + 1)))?;
        if finished != Finished::Stored {
            first_refused.get_or_insert(n + 1);
        }
    }
    Ok((batch, first_refused))
}

/// `body` as text: JSON is UTF-8, and checking the whole body once is cheaper than each string.
pub fn utf8(body: &[u8]) -> Result<&str, PushError> {
    std::str::from_utf8(body).map_err(|e| {
        PushError::bad(format!(
            "body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// The lines of `body` (split with memchr; the last one may lack its `\n`).
pub fn lines(body: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', body.as_bytes());
    std::iter::from_fn(move || {
        if start > body.len() {
            return None;
        }
        let end = ends.next().unwrap_or(body.len());
        let line = &body[start..end];
        start = end + 1;
        Some(line)
    })
}

/// Parse one JSON object.
pub fn parse_object(text: &str) -> Result<Object<'_>, String> {
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object".to_string()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// The topic of a document: its topic field (flattened key), else `fallback` (an index name),
/// else the static topic.
pub fn doc_topic(
    doc: &Object<'_>,
    fields: &Fields,
    static_topic: &str,
    fallback: Option<&str>,
) -> Topic {
    if let Some(key) = &fields.topic
        && let Some(v) = lookup(doc, key)
    {
        let t = Topic::pick(key, Some(&v.text()), static_topic);
        if t.name != static_topic || t.from_key.is_some() {
            return t;
        }
    }
    match fallback {
        Some(f) => Topic {
            name: super::normalise_topic(f).unwrap_or_else(|| static_topic.to_string()),
            from_key: None,
        },
        None => Topic::pick("", None, static_topic),
    }
}

/// A (possibly dotted) key's value: `a.b` is `{"a":{"b":..}}` or `{"a.b":..}`.
fn lookup<'a, 'b>(doc: &'a Object<'b>, key: &str) -> Option<&'a Json<'b>> {
    if let Some((_, v)) = doc.iter().find(|(k, _)| k.as_ref() == key) {
        return Some(v);
    }
    let (head, rest) = key.split_once('.')?;
    match doc.iter().find(|(k, _)| k.as_ref() == head)? {
        (_, Json::Object(m)) => lookup(m, rest),
        _ => None,
    }
}

/// Write one document as a record: the message field, the other fields flattened, the time
/// (refused as [`super::RecordBuilder::finish`] says).
pub fn document(
    batch: &mut Batch,
    topic: &Topic,
    doc: Object<'_>,
    fields: &Fields,
) -> Result<Finished, PushError> {
    let mut flat: Vec<(Cow<'_, str>, Json<'_>)> = Vec::with_capacity(doc.len());
    flatten("", doc, &mut flat);
    let msg_at = fields
        .msg
        .iter()
        .find_map(|m| flat.iter().position(|(k, _)| k.as_ref() == m.as_str()));
    let mut r = batch.record(topic.name.as_bytes());
    if let Some(i) = msg_at {
        r.message(flat[i].1.text().as_bytes());
    }
    // The topic's field is the record's stream label (empty when it is the topic unchanged);
    // every other field is metadata.
    let label_at = fields
        .topic
        .as_ref()
        .and_then(|t| flat.iter().position(|(k, _)| k.as_ref() == t.as_str()));
    if let Some(i) = label_at.filter(|&i| Some(i) != msg_at) {
        let (k, v) = &flat[i];
        if topic.is_source(k) {
            r.source_label(k.as_bytes());
        } else {
            r.label(k.as_bytes(), v.text().as_bytes());
        }
    }
    let mut time = None;
    for (i, (k, v)) in flat.iter().enumerate() {
        if Some(i) == msg_at || Some(i) == label_at {
            continue;
        }
        if k.as_ref() == fields.time
            && time.is_none()
            && let Some(ns) = time_nanos(v)
        {
            time = Some(ns);
            continue;
        }
        r.field(k.as_bytes(), v.text().as_bytes());
    }
    if let Some(ns) = time {
        r.time(ns);
    }
    r.finish()
}

fn flatten<'a>(prefix: &str, doc: Object<'a>, out: &mut Vec<(Cow<'a, str>, Json<'a>)>) {
    for (k, v) in doc {
        let key = if prefix.is_empty() {
            k
        } else {
            Cow::Owned(format!("{prefix}.{k}"))
        };
        match v {
            Json::Object(m) if !m.is_empty() => flatten(&key, m, out),
            v => out.push((key, v)),
        }
    }
}

/// A time field's value as nanoseconds since the epoch: RFC 3339 text, or a Unix timestamp
/// (number or numeric text) in seconds, milliseconds, microseconds or nanoseconds, told apart
/// by magnitude. `None` when it is neither (the field is then kept as it is).
pub fn time_nanos(v: &Json<'_>) -> Option<i128> {
    match v {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(unix_nanos(i as f64, Some(i)))
            } else {
                n.as_f64().map(|f| unix_nanos(f, None))
            }
        }
        Json::String(s) => {
            if let Ok(t) = s.parse::<jiff::Timestamp>() {
                return Some(t.as_nanosecond());
            }
            if let Ok(i) = s.parse::<i64>() {
                return Some(unix_nanos(i as f64, Some(i)));
            }
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| unix_nanos(f, None))
        }
        _ => None,
    }
}

fn unix_nanos(f: f64, exact: Option<i64>) -> i128 {
    let a = f.abs();
    let scale: i128 = if a < 1e11 {
        1_000_000_000
    } else if a < 1e14 {
        1_000_000
    } else if a < 1e17 {
        1_000
    } else {
        1
    };
    match exact {
        Some(i) => i128::from(i) * scale,
        None => (f * scale as f64) as i128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(msg: &str, topic: Option<&str>) -> Fields {
        let mut p = HashMap::new();
        p.insert("_msg_field".to_string(), msg.to_string());
        if let Some(t) = topic {
            p.insert("_topic_field".to_string(), t.to_string());
        }
        Fields::from_params(&p, "_msg", "_time")
    }

    #[test]
    fn documents_become_message_fields_and_time() {
        let body = br#"{"_time":"2026-11-29T10:00:00.5Z","log":{"msg":"GET /a\nsecond"},"app":"api","n":3,"ok":true,"tags":["a","b"],"nil":null}

{"message":"no time","app":"web.front","level":"info"}
"#;
        let (b, _) = decode(
            body,
            &fields("log.msg,message", Some("app")),
            "default",
            Batch::new(),
        )
        .unwrap();
        assert_eq!(
            b.lines(),
            [
                "api GET /a\\nsecond␟app=␟n=3 ok=true tags=\"[\\\"a\\\",\\\"b\\\"]\" nil=\"\" ts=2026-11-29T10:00:00.5Z",
                "web_front no time␟app=web.front␟level=info",
            ]
        );
        let (b, _) = decode(
            br#"{"x":1}"#,
            &fields("_msg", None),
            "default",
            Batch::new(),
        )
        .unwrap();
        assert_eq!(b.lines(), ["default ␟␟x=1"]);
    }

    #[test]
    fn a_line_that_is_not_an_object_names_its_line() {
        for (body, want) in [
            (&b"{\"a\":1}\n[1,2]\n"[..], "line 2: not a JSON object"),
            (b"{\"a\":1}\n{\"a\":\n", "line 2: invalid JSON"),
        ] {
            let e = decode(body, &fields("_msg", None), "default", Batch::new()).unwrap_err();
            assert!(e.message.starts_with(want), "{}", e.message);
        }
    }

    #[test]
    fn times_in_any_unit() {
        let want = 1_764_410_400_000_000_000i128;
        let j = |v: serde_json::Value| -> Json<'static> {
            let text: &'static str = Box::leak(v.to_string().into_boxed_str());
            serde_json::from_str(text).unwrap()
        };
        for v in [
            serde_json::json!(1_764_410_400),
            serde_json::json!(1_764_410_400_000i64),
            serde_json::json!(1_764_410_400_000_000i64),
            serde_json::json!(1_764_410_400_000_000_000i64),
            serde_json::json!("1764410400"),
            serde_json::json!("2025-11-29T10:00:00Z"),
        ] {
            assert_eq!(time_nanos(&j(v.clone())), Some(want), "{v}");
        }
        assert_eq!(time_nanos(&j(serde_json::json!(1.5))), Some(1_500_000_000));
        assert_eq!(time_nanos(&j(serde_json::json!("soon"))), None);
    }
}
