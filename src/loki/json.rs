//! Loki's JSON answers, written as its marshaller writes them (`pkg/util/marshal`): streams,
//! matrix, vector and scalar results with `stats`, and `encodingFlags` when the client asked
//! for `categorize-labels`.

use std::fmt::Write as _;

use crate::logql::eval::{Series, Steps};
use crate::logql::labels::{Labels, Origin};

/// What a query cost, for `stats.summary`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Bytes of records read.
    pub bytes: u64,
    /// Records read.
    pub lines: u64,
    /// Entries (or samples) returned.
    pub returned: u64,
    /// Seconds the query took.
    pub secs: f64,
}

/// One stream of a log answer.
#[derive(Debug, Default)]
pub struct Stream {
    /// The stream's labels (with categorize-labels: its stream labels only).
    pub labels: Labels,
    /// `(ns, line, labels that are not stream labels)`.
    pub entries: Vec<(i128, Vec<u8>, Labels)>,
}

/// A JSON string.
pub fn string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn labels_object(out: &mut String, labels: impl Iterator<Item = (String, String)>) {
    out.push('{');
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, &k);
        out.push(':');
        string(out, &v);
    }
    out.push('}');
}

fn all(l: &Labels) -> impl Iterator<Item = (String, String)> + '_ {
    l.iter().map(|l| (l.name.clone(), l.value.clone()))
}

/// A sample value as Prometheus writes it: shortest decimal, `NaN`, `+Inf`, `-Inf`.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A time as Prometheus writes it: Unix seconds with the milliseconds, shortest.
fn seconds(ns: i128) -> String {
    let ms = ns.div_euclid(1_000_000);
    format!("{}", ms as f64 / 1000.0)
}

fn stats(out: &mut String, s: &Summary) {
    let per_sec = |n: u64| {
        if s.secs > 0.0 {
            (n as f64 / s.secs) as u64
        } else {
            0
        }
    };
    let _ = write!(
        out,
        r#""stats":{{"summary":{{"bytesProcessedPerSecond":{},"linesProcessedPerSecond":{},"totalBytesProcessed":{},"totalLinesProcessed":{},"execTime":{},"queueTime":0,"subqueries":0,"totalEntriesReturned":{},"splits":0,"shards":0,"totalPostFilterLines":{},"totalStructuredMetadataBytesProcessed":0}},"querier":{{"store":{{"totalChunksRef":0,"totalChunksDownloaded":0,"chunksDownloadTime":0,"chunk":{{"headChunkBytes":0,"headChunkLines":0,"decompressedBytes":{},"decompressedLines":{},"compressedBytes":0,"totalDuplicates":0}}}}}},"ingester":{{"totalReached":0,"totalChunksMatched":0,"totalBatches":0,"totalLinesSent":0,"store":{{"totalChunksRef":0,"totalChunksDownloaded":0,"chunksDownloadTime":0,"chunk":{{"headChunkBytes":0,"headChunkLines":0,"decompressedBytes":0,"decompressedLines":0,"compressedBytes":0,"totalDuplicates":0}}}}}}}}"#,
        per_sec(s.bytes),
        per_sec(s.lines),
        s.bytes,
        s.lines,
        s.secs,
        s.returned,
        s.returned,
        s.bytes,
        s.lines,
    );
}

fn head(out: &mut String, result_type: &str, categorize: bool) {
    out.push_str(r#"{"status":"success","data":{"resultType":"#);
    string(out, result_type);
    if categorize {
        out.push_str(r#","encodingFlags":["categorize-labels"]"#);
    }
    out.push_str(r#","result":"#);
}

fn tail(out: &mut String, s: &Summary) {
    out.push(',');
    stats(out, s);
    out.push_str("}}");
}

/// A log answer: `resultType: "streams"`. With `categorize`, each value has a third element
/// with the entry's `structuredMetadata` and `parsed` labels (empty ones left out).
pub fn streams(streams: &[Stream], categorize: bool, s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, "streams", categorize);
    streams_array(&mut out, streams, categorize);
    tail(&mut out, s);
    out
}

/// The streams as a JSON array, as a streams answer's `result` and a tail frame's `streams`.
fn streams_array(out: &mut String, streams: &[Stream], categorize: bool) {
    out.push('[');
    for (i, st) in streams.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"stream":"#);
        labels_object(out, all(&st.labels));
        out.push_str(r#","values":["#);
        for (j, (ns, line, rest)) in st.entries.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, r#"["{ns}","#);
            string(out, &String::from_utf8_lossy(line));
            if categorize {
                out.push_str(",{");
                let mut first = true;
                for (key, origin) in [
                    ("structuredMetadata", Origin::Metadata),
                    ("parsed", Origin::Parsed),
                ] {
                    let mut it = rest.of(origin).peekable();
                    if it.peek().is_none() {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    string(out, key);
                    out.push(':');
                    labels_object(out, it.map(|l| (l.name.clone(), l.value.clone())));
                }
                out.push('}');
            }
            out.push(']');
        }
        out.push_str("]}");
    }
    out.push(']');
}

/// A tail frame: `{"streams": [...]}`, with `dropped_entries` (the labels and time of each
/// entry dropped for a slow client) when there are any, and `encodingFlags` with
/// `categorize`.
pub fn tail_frame(streams: &[Stream], dropped: &[(Labels, i128)], categorize: bool) -> String {
    let mut out = String::from(r#"{"streams":"#);
    streams_array(&mut out, streams, categorize);
    if !dropped.is_empty() {
        out.push_str(r#","dropped_entries":["#);
        for (i, (labels, ns)) in dropped.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(r#"{"labels":"#);
            labels_object(&mut out, all(labels));
            let _ = write!(out, r#","timestamp":"{ns}"}}"#);
        }
        out.push(']');
    }
    if categorize {
        out.push_str(r#","encodingFlags":["categorize-labels"]"#);
    }
    out.push('}');
    out
}

/// A range metric answer: `resultType: "matrix"`.
pub fn matrix(series: &[Series], steps: Steps, s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, "matrix", false);
    out.push('[');
    for (i, se) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"metric":"#);
        labels_object(&mut out, all(&se.labels));
        out.push_str(r#","values":["#);
        let mut first = true;
        for (k, p) in se.points.iter().enumerate() {
            if let Some(v) = p {
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = write!(out, "[{},", seconds(steps.at(k)));
                string(&mut out, &number(*v));
                out.push(']');
            }
        }
        out.push_str("]}");
    }
    out.push(']');
    tail(&mut out, s);
    out
}

/// An instant metric answer: `resultType: "vector"` (series' one point at `ns`).
pub fn vector(series: &[Series], ns: i128, s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, "vector", false);
    out.push('[');
    let mut first = true;
    for se in series {
        let Some(Some(v)) = se.points.first() else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(r#"{"metric":"#);
        labels_object(&mut out, all(&se.labels));
        let _ = write!(out, r#","value":[{},"#, seconds(ns));
        string(&mut out, &number(*v));
        out.push_str("]}");
    }
    out.push(']');
    tail(&mut out, s);
    out
}

/// An instant answer that is a number: `resultType: "scalar"`.
pub fn scalar(v: f64, ns: i128, s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, "scalar", false);
    let _ = write!(out, "[{},", seconds(ns));
    string(&mut out, &number(v));
    out.push(']');
    tail(&mut out, s);
    out
}

/// A list answer: `{"status":"success","data":[...]}`.
pub fn list(items: &[String]) -> String {
    let mut out = String::from(r#"{"status":"success","data":["#);
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(&mut out, it);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn shapes_as_loki_writes_them() {
        let mut labels = Labels::new();
        labels.set("app", "a", Origin::Stream);
        let mut rest = Labels::new();
        rest.set("trace", "t1", Origin::Metadata);
        rest.set("status", "500", Origin::Parsed);
        let st = [Stream {
            labels: labels.clone(),
            entries: vec![
                (1_700_000_000_000_000_001, b"GET <a>".to_vec(), rest),
                (2, b"x".to_vec(), Labels::new()),
            ],
        }];
        let s = Summary::default();
        let v = parsed(&streams(&st, false, &s));
        assert_eq!(v["status"], "success");
        assert_eq!(v["data"]["resultType"], "streams");
        assert_eq!(
            v["data"]["result"][0]["stream"],
            serde_json::json!({"app": "a"})
        );
        assert_eq!(
            v["data"]["result"][0]["values"][0],
            serde_json::json!(["1700000000000000001", "GET <a>"])
        );
        assert!(v["data"].get("encodingFlags").is_none());
        assert!(v["data"]["stats"]["summary"]["execTime"].is_number());
        let v = parsed(&streams(&st, true, &s));
        assert_eq!(
            v["data"]["encodingFlags"],
            serde_json::json!(["categorize-labels"])
        );
        assert_eq!(
            v["data"]["result"][0]["values"][0][2],
            serde_json::json!({"structuredMetadata": {"trace": "t1"}, "parsed": {"status": "500"}})
        );
        assert_eq!(
            v["data"]["result"][0]["values"][1],
            serde_json::json!(["2", "x", {}])
        );
        let series = [Series {
            labels,
            points: vec![Some(1.0), None, Some(0.5)],
        }];
        let steps = Steps {
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_002_000_000_000,
            step: 1_000_000_000,
        };
        let v = parsed(&matrix(&series, steps, &s));
        assert_eq!(v["data"]["resultType"], "matrix");
        assert_eq!(
            v["data"]["result"][0]["values"],
            serde_json::json!([[1700000000, "1"], [1700000002, "0.5"]])
        );
        let v = parsed(&vector(&series, 1_700_000_000_123_000_000, &s));
        assert_eq!(
            v["data"]["result"][0]["value"],
            serde_json::json!([1700000000.123, "1"])
        );
        let v = parsed(&scalar(2.0, 1_700_000_000_000_000_000, &s));
        assert_eq!(v["data"]["result"], serde_json::json!([1700000000, "2"]));
        let v = parsed(&tail_frame(&st, &[(st[0].labels.clone(), 5)], true));
        assert_eq!(
            v["streams"][0]["values"][1],
            serde_json::json!(["2", "x", {}])
        );
        assert_eq!(
            v["dropped_entries"],
            serde_json::json!([{"labels": {"app": "a"}, "timestamp": "5"}])
        );
        assert_eq!(v["encodingFlags"], serde_json::json!(["categorize-labels"]));
        let v = parsed(&tail_frame(&st, &[], false));
        assert!(
            v.get("dropped_entries").is_none() && v.get("encodingFlags").is_none(),
            "{v}"
        );
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1e21), "1000000000000000000000");
    }
}
