//! Loki push, `POST /loki/api/v1/push` (and `/insert/loki/api/v1/push`): JSON (optionally
//! gzip) and `application/x-protobuf` (snappy-compressed `logproto.PushRequest`, as Promtail and
//! Alloy send it). The topic is the first of `-ingest.loki-topic-labels` present among a
//! stream's labels; the stream's labels are the record's labels and each entry's structured
//! metadata its metadata.

use serde::Deserialize;

use super::jsonline::Json;
use super::{Batch, Topic};
use super::{PushConfig, PushError};

/// `logproto.PushRequest` (Loki's `pkg/push/push.proto`); strings are read as bytes so that
/// a line that is not UTF-8 is kept, not refused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    /// The streams.
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// One stream: its labels in Prometheus text form (`{job="api", host="web-1"}`) and entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// `{k="v", ...}`.
    #[prost(bytes = "vec", tag = "1")]
    pub labels: Vec<u8>,
    /// The entries.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
}

/// One log entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    /// When it happened.
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    /// The line.
    #[prost(bytes = "vec", tag = "2")]
    pub line: Vec<u8>,
    /// Structured metadata.
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPair>,
}

/// A structured-metadata pair.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    /// Name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// Value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Decode a (decompressed) protobuf push.
pub fn decode_protobuf(
    body: &[u8],
    cfg: &PushConfig,
    mut batch: Batch,
) -> Result<Batch, PushError> {
    let req = <PushRequest as prost::Message>::decode(body)
        .map_err(|e| PushError::bad(format!("body is not a Loki PushRequest: {e}")))?;
    batch.reserve(body.len() * 2);
    for (n, stream) in req.streams.iter().enumerate() {
        let labels = parse_labels(&String::from_utf8_lossy(&stream.labels))
            .map_err(|e| PushError::bad(format!("stream {}: labels: {e}", n + 1)))?;
        let topic = topic(&labels, cfg);
        for (i, e) in stream.entries.iter().enumerate() {
            let mut r = batch.record(topic.name.as_bytes());
            r.message(&e.line);
            for (k, v) in &labels {
                if topic.is_source(k) {
                    r.source_label(k.as_bytes());
                } else {
                    r.label(k.as_bytes(), v.as_bytes());
                }
            }
            for m in &e.structured_metadata {
                r.field(&m.name, &m.value);
            }
            if let Some(t) = e.timestamp {
                r.time(i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos));
            }
            r.finish()
                .map_err(|e| e.at(&format!("stream {} entry {}", n + 1, i + 1)))?;
        }
    }
    Ok(batch)
}

#[derive(Deserialize)]
struct JsonPush<'a> {
    #[serde(borrow)]
    streams: Vec<JsonStream<'a>>,
}

#[derive(Deserialize)]
struct JsonStream<'a> {
    #[serde(default = "empty_object", borrow)]
    stream: Json<'a>,
    #[serde(default, borrow)]
    values: Vec<Vec<Json<'a>>>,
}

fn empty_object<'a>() -> Json<'a> {
    Json::Object(Vec::new())
}

/// Decode a JSON push: `{"streams":[{"stream":{labels},"values":[["<ns>","line",{meta}]]}]}`.
pub fn decode_json(body: &[u8], cfg: &PushConfig, mut batch: Batch) -> Result<Batch, PushError> {
    let req: JsonPush = serde_json::from_str(super::jsonline::utf8(body)?)
        .map_err(|e| PushError::bad(format!("body is not a Loki JSON push: {e}")))?;
    batch.reserve(body.len() * 2);
    for (n, stream) in req.streams.iter().enumerate() {
        let Json::Object(pairs) = &stream.stream else {
            return Err(PushError::bad(format!(
                "stream {}: \"stream\" is not an object of labels",
                n + 1
            )));
        };
        let labels: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.text().into_owned()))
            .collect();
        let topic = topic(&labels, cfg);
        for (i, value) in stream.values.iter().enumerate() {
            let at = || format!("stream {} value {}", n + 1, i + 1);
            let (ts, line, meta) = match value.as_slice() {
                [ts, Json::String(line)] => (ts, line, None),
                [ts, Json::String(line), Json::Object(m)] => (ts, line, Some(m)),
                _ => {
                    return Err(PushError::bad(format!(
                        "{}: not [\"<unix nanoseconds>\", \"<line>\"] or with a metadata object",
                        at()
                    )));
                }
            };
            let nanos = match ts {
                Json::String(s) => s.parse::<i128>().ok(),
                Json::Number(n) => n.as_i64().map(i128::from),
                _ => None,
            }
            .ok_or_else(|| {
                PushError::bad(format!("{}: timestamp is not Unix nanoseconds", at()))
            })?;
            let mut r = batch.record(topic.name.as_bytes());
            r.message(line.as_bytes());
            for (k, v) in &labels {
                if topic.is_source(k) {
                    r.source_label(k.as_bytes());
                } else {
                    r.label(k.as_bytes(), v.as_bytes());
                }
            }
            for (k, v) in meta.into_iter().flatten() {
                r.field(k.as_bytes(), v.text().as_bytes());
            }
            r.time(nanos);
            r.finish().map_err(|e| e.at(&at()))?;
        }
    }
    Ok(batch)
}

fn topic(labels: &[(String, String)], cfg: &PushConfig) -> Topic {
    for want in &cfg.loki_topic_labels {
        if let Some((k, v)) = labels.iter().find(|(k, _)| k == want) {
            let t = Topic::pick(k, Some(v), &cfg.topic);
            if t.name != cfg.topic || t.from_key.is_some() {
                return t;
            }
        }
    }
    Topic::pick("", None, &cfg.topic)
}

/// Parse Prometheus-style labels, `{job="api", host="web-1"}` (values with `\"`, `\\`, `\n`
/// escapes), in order.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let s = text.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("{s:?} is not {{name=\"value\", ...}}"))?;
    let mut out = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("no '=' after label name in {s:?}"))?;
        let name = rest[..eq].trim();
        if name.is_empty() {
            return Err(format!("empty label name in {s:?}"));
        }
        let after = rest[eq + 1..].trim_start();
        let body = after
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value is not quoted in {s:?}"))?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label {name}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("label {name}: unterminated value")),
            }
        };
        out.push((name.to_string(), value));
        rest = body[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("expected ',' between labels in {s:?}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PushConfig {
        crate::ingest::protocols::test_config()
    }

    #[test]
    fn labels_parse_in_order_with_escapes() {
        assert_eq!(
            parse_labels(r#"{job="api", host="web \"1\"", path="C:\\x",}"#).unwrap(),
            [
                ("job".into(), "api".into()),
                ("host".into(), "web \"1\"".into()),
                ("path".into(), "C:\\x".into())
            ]
        );
        assert_eq!(parse_labels("{}").unwrap(), []);
        for bad in [
            "job=\"a\"",
            "{job=a}",
            "{job=\"a}",
            "{=\"a\"}",
            "{a=\"1\" b=\"2\"}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_and_protobuf_map_alike() {
        let json = br#"{"streams":[{"stream":{"host":"web-1","job":"api"},"values":[["1764410400000000001","GET /a",{"trace_id":"abc"}],["1764410400000000002","multi\nline"]]}]}"#;
        let from_json = decode_json(json, &cfg(), Batch::new()).unwrap().lines();
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: br#"{host="web-1", job="api"}"#.to_vec(),
                entries: vec![
                    EntryAdapter {
                        timestamp: Some(Timestamp {
                            seconds: 1_764_410_400,
                            nanos: 1,
                        }),
                        line: b"GET /a".to_vec(),
                        structured_metadata: vec![LabelPair {
                            name: b"trace_id".to_vec(),
                            value: b"abc".to_vec(),
                        }],
                    },
                    EntryAdapter {
                        timestamp: Some(Timestamp {
                            seconds: 1_764_410_400,
                            nanos: 2,
                        }),
                        line: b"multi\nline".to_vec(),
                        structured_metadata: vec![],
                    },
                ],
            }],
        };
        let from_proto =
            decode_protobuf(&prost::Message::encode_to_vec(&req), &cfg(), Batch::new())
                .unwrap()
                .lines();
        assert_eq!(
            from_json,
            [
                "api GET /a␟host=web-1 job=␟trace_id=abc ts=2025-11-29T10:00:00.000000001Z",
                "api multi\\nline␟host=web-1 job=␟ts=2025-11-29T10:00:00.000000002Z",
            ]
        );
        assert_eq!(from_proto, from_json);
    }

    #[test]
    fn malformed_pushes_say_what_is_wrong() {
        for (body, want) in [
            (
                &br#"{"streams":[{"stream":{},"values":[["x","a"]]}]}"#[..],
                "timestamp",
            ),
            (br#"{"streams":[{"stream":{},"values":[[1]]}]}"#, "value 1"),
            (br#"{"streams":[{"stream":[],"values":[]}]}"#, "labels"),
            (br#"[1]"#, "not a Loki JSON push"),
        ] {
            let e = decode_json(body, &cfg(), Batch::new()).unwrap_err();
            assert!(e.message.contains(want), "{}", e.message);
        }
        let e = decode_protobuf(b"\x0a\xff\xff", &cfg(), Batch::new()).unwrap_err();
        assert!(e.message.contains("PushRequest"), "{}", e.message);
    }
}
