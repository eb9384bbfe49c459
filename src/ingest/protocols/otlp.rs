//! OTLP/HTTP logs, `POST /v1/logs` (and `/insert/opentelemetry/v1/logs`): protobuf
//! (`ExportLogsServiceRequest`) or JSON (the protobuf JSON mapping: camelCase names, 64-bit
//! integers as strings, IDs as hex), answered with `ExportLogsServiceResponse` in the request's
//! encoding. The topic is the resource attribute `-ingest.otlp-topic-attribute`
//! (`service.name`); the message is the body; resource attributes, the scope's name, the
//! severity, log attributes and trace and span IDs become fields; the time is the record's time
//! (or, when it has none, when it was observed). A record with neither body nor attributes is
//! rejected and reported in `partial_success`.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::Value;

use super::{Batch, Topic, render_fields};
use super::{PushConfig, PushError};

/// The resource attributes that are stream labels (Loki's own default list of resource
/// attributes it indexes); every other attribute is structured metadata.
pub const STREAM_ATTRIBUTES: [&str; 18] = [
    "service.name",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "cloud.region",
    "cloud.availability_zone",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
];

/// `ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceRequest {
    /// Logs by resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

/// `ResourceLogs`.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    /// The resource.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Logs by instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

/// `Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    /// Its attributes.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `ScopeLogs`.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    /// The instrumentation scope.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The records.
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `LogRecord`.
#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    /// When it happened.
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    /// When it was observed.
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    /// `SeverityNumber`.
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    /// The severity as text.
    #[prost(string, tag = "3")]
    pub severity_text: String,
    /// The body.
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    /// Attributes.
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    /// Trace ID (16 bytes).
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    /// Span ID (8 bytes).
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
    /// Event name.
    #[prost(string, tag = "12")]
    pub event_name: String,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    /// One of its kinds.
    #[prost(oneof = "AnyKind", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<AnyKind>,
}

/// `AnyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AnyKind {
    /// Text.
    #[prost(string, tag = "1")]
    String(String),
    /// A boolean.
    #[prost(bool, tag = "2")]
    Bool(bool),
    /// An integer.
    #[prost(int64, tag = "3")]
    Int(i64),
    /// A float.
    #[prost(double, tag = "4")]
    Double(f64),
    /// An array.
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    /// A map.
    #[prost(message, tag = "6")]
    Kvlist(KeyValueList),
    /// Bytes.
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

/// `ArrayValue`.
#[derive(Clone, PartialEq, Message)]
pub struct ArrayValue {
    /// Values.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

/// `KeyValueList`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValueList {
    /// Pairs.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `ExportLogsServiceResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceResponse {
    /// Set when some records were rejected.
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

/// `ExportLogsPartialSuccess`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsPartialSuccess {
    /// Records not stored.
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    /// Why.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `google.rpc.Status`, the body of an OTLP error response.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    /// A gRPC code (3: invalid argument, 8: resource exhausted, 14: unavailable).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What is wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The records of a request, and those rejected (count, reason).
#[derive(Debug)]
pub struct Decoded {
    /// Records to store.
    pub batch: Batch,
    /// Records rejected and why.
    pub rejected: Option<(i64, String)>,
}

/// Decode a protobuf `ExportLogsServiceRequest`.
pub fn decode_protobuf(body: &[u8], cfg: &PushConfig, batch: Batch) -> Result<Decoded, PushError> {
    let req = ExportLogsServiceRequest::decode(body).map_err(|e| {
        PushError::bad(format!("body is not an OTLP ExportLogsServiceRequest: {e}"))
    })?;
    map(req, cfg, body.len(), batch)
}

/// Decode the JSON encoding (the protobuf JSON mapping).
pub fn decode_json(body: &[u8], cfg: &PushConfig, batch: Batch) -> Result<Decoded, PushError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| PushError::bad(format!("body is not OTLP JSON: {e}")))?;
    let req = json::request(&v).map_err(|e| PushError::bad(format!("OTLP JSON: {e}")))?;
    map(req, cfg, body.len(), batch)
}

fn map(
    req: ExportLogsServiceRequest,
    cfg: &PushConfig,
    size: usize,
    mut batch: Batch,
) -> Result<Decoded, PushError> {
    batch.reserve(size + size / 2);
    let mut rejected = 0i64;
    for (n, rl) in req.resource_logs.iter().enumerate() {
        let attrs = rl
            .resource
            .as_ref()
            .map_or(&[][..], |r| r.attributes.as_slice());
        let topic_value = attrs
            .iter()
            .find(|kv| kv.key == cfg.otlp_topic_attribute)
            .map(|kv| text(kv.value.as_ref()));
        let topic = Topic::pick(
            &cfg.otlp_topic_attribute,
            topic_value.as_deref(),
            &cfg.topic,
        );
        // The resource's attributes are the same for all its records: rendered once, those
        // Loki indexes by default as stream labels, the others as metadata.
        let resource_texts: Vec<(&str, Cow<'_, str>)> = attrs
            .iter()
            .filter(|kv| !topic.is_source(&kv.key))
            .map(|kv| (kv.key.as_str(), text(kv.value.as_ref())))
            .collect();
        let render = |labels: bool| {
            render_fields(
                resource_texts
                    .iter()
                    .filter(|(k, _)| STREAM_ATTRIBUTES.contains(k) == labels)
                    .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            )
        };
        let (resource_labels, resource) = (render(true), render(false));
        for sl in &rl.scope_logs {
            for rec in &sl.log_records {
                if rec.body.as_ref().is_none_or(|b| b.value.is_none()) && rec.attributes.is_empty()
                {
                    rejected += 1;
                    continue;
                }
                let mut r = batch.record(topic.name.as_bytes());
                if let Some(body) = &rec.body {
                    r.message(text(Some(body)).as_bytes());
                }
                if let Some(key) = &topic.from_key {
                    r.source_label(key.as_bytes());
                }
                r.rendered_labels(&resource_labels);
                r.rendered(&resource);
                if let Some(scope) = &sl.scope
                    && !scope.name.is_empty()
                {
                    r.field(b"scope", scope.name.as_bytes());
                }
                if !rec.severity_text.is_empty() {
                    r.field(b"severity", rec.severity_text.as_bytes());
                } else if rec.severity_number > 0 {
                    r.field(b"severity", severity_name(rec.severity_number).as_bytes());
                }
                if !rec.event_name.is_empty() {
                    r.field(b"event", rec.event_name.as_bytes());
                }
                for kv in &rec.attributes {
                    r.field(kv.key.as_bytes(), text(kv.value.as_ref()).as_bytes());
                }
                if !rec.trace_id.is_empty() {
                    r.field(b"trace_id", hex(&rec.trace_id).as_bytes());
                }
                if !rec.span_id.is_empty() {
                    r.field(b"span_id", hex(&rec.span_id).as_bytes());
                }
                let t = if rec.time_unix_nano != 0 {
                    rec.time_unix_nano
                } else {
                    rec.observed_time_unix_nano
                };
                if t != 0 {
                    r.time(i128::from(t));
                }
                r.finish()
                    .map_err(|e| e.at(&format!("resource_logs[{n}]")))?;
            }
        }
    }
    Ok(Decoded {
        batch,
        rejected: (rejected > 0).then(|| {
            (
                rejected,
                "log records with neither body nor attributes".to_string(),
            )
        }),
    })
}

/// `SeverityNumber` as its short name (`INFO`, `WARN2`, ...).
fn severity_name(n: i32) -> String {
    let names = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    let i = ((n - 1) / 4) as usize;
    match names.get(i) {
        Some(name) if (n - 1) % 4 == 0 => name.to_string(),
        Some(name) => format!("{name}{}", (n - 1) % 4 + 1),
        None => n.to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An `AnyValue` as text: strings as they are, scalars as text, bytes as hex, arrays and maps
/// as JSON.
fn text(v: Option<&AnyValue>) -> Cow<'_, str> {
    match v.and_then(|v| v.value.as_ref()) {
        None => Cow::Borrowed(""),
        Some(AnyKind::String(s)) => Cow::Borrowed(s),
        Some(AnyKind::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(AnyKind::Int(i)) => Cow::Owned(i.to_string()),
        Some(AnyKind::Double(d)) => Cow::Owned(d.to_string()),
        Some(AnyKind::Bytes(b)) => Cow::Owned(hex(b)),
        Some(other) => Cow::Owned(to_json(other).to_string()),
    }
}

fn to_json(v: &AnyKind) -> Value {
    match v {
        AnyKind::String(s) => Value::String(s.clone()),
        AnyKind::Bool(b) => Value::Bool(*b),
        AnyKind::Int(i) => Value::from(*i),
        AnyKind::Double(d) => Value::from(*d),
        AnyKind::Bytes(b) => Value::String(hex(b)),
        AnyKind::Array(a) => Value::Array(
            a.values
                .iter()
                .map(|x| x.value.as_ref().map_or(Value::Null, to_json))
                .collect(),
        ),
        AnyKind::Kvlist(l) => Value::Object(
            l.values
                .iter()
                .map(|kv| {
                    let v = kv
                        .value
                        .as_ref()
                        .and_then(|x| x.value.as_ref())
                        .map_or(Value::Null, to_json);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
    }
}

/// The answer to a stored request, in the request's encoding.
pub fn response(json: bool, rejected: Option<(i64, String)>) -> Response {
    let partial = rejected.map(|(n, why)| ExportLogsPartialSuccess {
        rejected_log_records: n,
        error_message: why,
    });
    if json {
        let body = match &partial {
            Some(p) => serde_json::json!({"partialSuccess": {
                "rejectedLogRecords": p.rejected_log_records.to_string(),
                "errorMessage": p.error_message,
            }}),
            None => serde_json::json!({}),
        };
        with_type(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        )
    } else {
        let resp = ExportLogsServiceResponse {
            partial_success: partial,
        };
        with_type(
            StatusCode::OK,
            "application/x-protobuf",
            resp.encode_to_vec(),
        )
    }
}

/// An error answer: a `google.rpc.Status` in the request's encoding (503s with `Retry-After`).
pub fn error_response(json: bool, e: &PushError) -> Response {
    let code = match e.status {
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        _ => 3,
    };
    e.finish(if json {
        let body = serde_json::json!({"code": code, "message": e.message});
        with_type(e.status, "application/json", body.to_string().into_bytes())
    } else {
        let status = Status {
            code,
            message: e.message.clone(),
        };
        with_type(e.status, "application/x-protobuf", status.encode_to_vec())
    })
}

fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// The OTLP JSON mapping, read into the protobuf types.
mod json {
    use super::*;

    /// Why an OTLP JSON body does not map to the protobuf types.
    #[derive(Debug, thiserror::Error)]
    pub(super) enum JsonError {
        /// The body is not an object.
        #[error("not an object")]
        Object,
        /// A field that must be an array.
        #[error("{0:?} is not an array")]
        Array(String),
        /// A field that must be a 64-bit integer.
        #[error("{key:?}: {value} is not an integer")]
        Integer {
            /// The field.
            key: String,
            /// Its value, as JSON.
            value: String,
        },
        /// An `intValue` or `doubleValue` that is no number.
        #[error("{kind} {value}")]
        Number {
            /// `intValue` or `doubleValue`.
            kind: &'static str,
            /// The value, as JSON.
            value: String,
        },
        /// A value that is not an `AnyValue` object.
        #[error("value {0} is not an AnyValue object")]
        AnyValue(String),
    }

    fn arr<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], JsonError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(JsonError::Array(key.to_string())),
        }
    }

    fn string(v: &Value, key: &str) -> String {
        v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
    }

    /// A 64-bit integer: a string of digits or a number.
    fn u64_of(v: &Value, key: &str) -> Result<u64, JsonError> {
        let bad = |value: &Value| JsonError::Integer {
            key: key.to_string(),
            value: value.to_string(),
        };
        match v.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(value @ Value::String(s)) => s.parse().map_err(|_| bad(value)),
            Some(value @ Value::Number(n)) => n.as_u64().ok_or_else(|| bad(value)),
            Some(value) => Err(bad(value)),
        }
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()
    }

    pub(super) fn request(v: &Value) -> Result<ExportLogsServiceRequest, JsonError> {
        if !v.is_object() {
            return Err(JsonError::Object);
        }
        let mut out = ExportLogsServiceRequest::default();
        for rl in arr(v, "resourceLogs")? {
            let resource = rl
                .get("resource")
                .map(|r| {
                    Ok::<_, JsonError>(Resource {
                        attributes: attributes(r)?,
                    })
                })
                .transpose()?;
            let mut scope_logs = Vec::new();
            for sl in arr(rl, "scopeLogs")? {
                let scope = sl.get("scope").map(|s| InstrumentationScope {
                    name: string(s, "name"),
                });
                let mut log_records = Vec::new();
                for r in arr(sl, "logRecords")? {
                    log_records.push(LogRecord {
                        time_unix_nano: u64_of(r, "timeUnixNano")?,
                        observed_time_unix_nano: u64_of(r, "observedTimeUnixNano")?,
                        severity_number: match r.get("severityNumber") {
                            Some(Value::Number(n)) => n.as_i64().unwrap_or(0) as i32,
                            _ => 0,
                        },
                        severity_text: string(r, "severityText"),
                        body: r.get("body").map(any).transpose()?,
                        attributes: attributes(r)?,
                        trace_id: hex_bytes(&string(r, "traceId")),
                        span_id: hex_bytes(&string(r, "spanId")),
                        event_name: string(r, "eventName"),
                    });
                }
                scope_logs.push(ScopeLogs { scope, log_records });
            }
            out.resource_logs.push(ResourceLogs {
                resource,
                scope_logs,
            });
        }
        Ok(out)
    }

    fn attributes(v: &Value) -> Result<Vec<KeyValue>, JsonError> {
        arr(v, "attributes")?.iter().map(key_value).collect()
    }

    fn key_value(kv: &Value) -> Result<KeyValue, JsonError> {
        Ok(KeyValue {
            key: string(kv, "key"),
            value: kv.get("value").map(any).transpose()?,
        })
    }

    fn any(v: &Value) -> Result<AnyValue, JsonError> {
        let Some(obj) = v.as_object() else {
            return Err(JsonError::AnyValue(v.to_string()));
        };
        let kind = if let Some(s) = obj.get("stringValue") {
            Some(AnyKind::String(s.as_str().unwrap_or("").to_string()))
        } else if let Some(b) = obj.get("boolValue") {
            Some(AnyKind::Bool(b.as_bool().unwrap_or(false)))
        } else if obj.contains_key("intValue") {
            let v = &obj["intValue"];
            let bad = || JsonError::Number {
                kind: "intValue",
                value: v.to_string(),
            };
            Some(AnyKind::Int(match v {
                Value::String(s) => s.parse().map_err(|_| bad())?,
                n => n.as_i64().ok_or_else(bad)?,
            }))
        } else if let Some(d) = obj.get("doubleValue") {
            Some(AnyKind::Double(match d {
                Value::String(s) => s.parse().map_err(|_| JsonError::Number {
                    kind: "doubleValue",
                    value: d.to_string(),
                })?,
                n => n.as_f64().unwrap_or(0.0),
            }))
        } else if let Some(a) = obj.get("arrayValue") {
            Some(AnyKind::Array(ArrayValue {
                values: arr(a, "values")?
                    .iter()
                    .map(any)
                    .collect::<Result<_, _>>()?,
            }))
        } else if let Some(l) = obj.get("kvlistValue") {
            Some(AnyKind::Kvlist(KeyValueList {
                values: arr(l, "values")?
                    .iter()
                    .map(key_value)
                    .collect::<Result<_, _>>()?,
            }))
        } else {
            obj.get("bytesValue")
                .map(|b| AnyKind::Bytes(b.as_str().and_then(base64_decode).unwrap_or_default()))
        };
        Ok(AnyValue { value: kind })
    }

    /// Standard base64 (the JSON mapping of `bytes`).
    fn base64_decode(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: AnyKind) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    #[test]
    fn protobuf_and_json_map_alike() {
        let cfg = crate::ingest::protocols::test_config();
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", AnyKind::String("checkout".into())),
                        kv("host.name", AnyKind::String("web-1".into())),
                    ],
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.log".into(),
                    }),
                    log_records: vec![
                        LogRecord {
                            time_unix_nano: 1_764_410_400_000_000_001,
                            severity_number: 9,
                            body: Some(AnyValue {
                                value: Some(AnyKind::String("paid\norder 7".into())),
                            }),
                            attributes: vec![
                                kv("order", AnyKind::Int(7)),
                                kv("ok", AnyKind::Bool(true)),
                            ],
                            trace_id: vec![0xab; 16],
                            ..Default::default()
                        },
                        LogRecord::default(),
                    ],
                }],
            }],
        };
        let p = decode_protobuf(&req.encode_to_vec(), &cfg, Batch::new()).unwrap();
        let json = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}},{"key":"host.name","value":{"stringValue":"web-1"}}]},"scopeLogs":[{"scope":{"name":"app.log"},"logRecords":[{"timeUnixNano":"1764410400000000001","severityNumber":9,"body":{"stringValue":"paid\norder 7"},"attributes":[{"key":"order","value":{"intValue":"7"}},{"key":"ok","value":{"boolValue":true}}],"traceId":"abababababababababababababababab"},{}]}]}]}"#;
        let j = decode_json(json, &cfg, Batch::new()).unwrap();
        let want = [
            "checkout paid\\norder 7␟service.name=␟host.name=web-1 scope=app.log severity=INFO order=7 ok=true trace_id=abababababababababababababababab ts=2025-11-29T10:00:00.000000001Z",
        ];
        assert_eq!(p.batch.lines(), want);
        assert_eq!(j.batch.lines(), want);
        assert_eq!(p.rejected.as_ref().map(|r| r.0), Some(1));
        assert_eq!(j.rejected.map(|r| r.0), Some(1));
    }

    #[test]
    fn severities_and_bad_bodies() {
        assert_eq!(severity_name(9), "INFO");
        assert_eq!(severity_name(14), "WARN2");
        assert_eq!(severity_name(24), "FATAL4");
        let cfg = crate::ingest::protocols::test_config();
        assert!(decode_protobuf(b"\x0a\x05\x0a", &cfg, Batch::new()).is_err());
        assert!(decode_json(b"[]", &cfg, Batch::new()).is_err());
        assert!(decode_json(br#"{"resourceLogs":{}}"#, &cfg, Batch::new()).is_err());
    }
}
