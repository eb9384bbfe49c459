//! Write pre-built request bodies for the push benchmark (`bench/protocols`), each holding
//! `LINES` LogHub sample lines, in every protocol's encoding, built from the same protocol
//! definitions the node decodes with.
//!
//! `cargo run --release --example push_bodies -- OUT_DIR LOGHUB_DIR [LINES=5000]`
//!
//! Writes `loki.pb` (protobuf, snappy), `loki.json`, `otlp.pb`, `es.ndjson`, `jsonline.ndjson`
//! and `syslog.txt` (RFC 5424, octet-counted frames), and prints each file's size.

use std::path::Path;

use oklog::ingest::protocols::loki::{EntryAdapter, PushRequest, StreamAdapter, Timestamp};
use oklog::ingest::protocols::otlp::{
    AnyKind, AnyValue, ExportLogsServiceRequest, KeyValue, LogRecord, Resource, ResourceLogs,
    ScopeLogs,
};
use prost::Message;
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, loghub) = (Path::new(&args[0]), Path::new(&args[1]));
    let n: usize = args.get(2).map_or(5000, |s| s.parse().unwrap());
    let mut files: Vec<_> = std::fs::read_dir(loghub)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    let lines: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .cycle()
        .take(n)
        .collect();
    std::fs::create_dir_all(out).unwrap();
    // An hour ago (entries are filed under their own time, within -ingest.max-event-age).
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let ns = secs * 1_000_000_000;
    let rfc3339 = jiff::Timestamp::from_second(secs as i64)
        .unwrap()
        .to_string();
    let write = |name: &str, body: Vec<u8>| {
        println!("{name} {} bytes", body.len());
        std::fs::write(out.join(name), body).unwrap();
    };

    let loki = PushRequest {
        streams: vec![StreamAdapter {
            labels: br#"{job="bench", host="web-1", env="prod"}"#.to_vec(),
            entries: lines
                .iter()
                .enumerate()
                .map(|(i, l)| EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: secs as i64,
                        nanos: i as i32,
                    }),
                    line: l.as_bytes().to_vec(),
                    structured_metadata: vec![],
                })
                .collect(),
        }],
    };
    write(
        "loki.pb",
        snap::raw::Encoder::new()
            .compress_vec(&loki.encode_to_vec())
            .unwrap(),
    );
    let values: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| json!([(ns + i as u64).to_string(), l]))
        .collect();
    write(
        "loki.json",
        json!({"streams": [{"stream": {"job": "bench", "host": "web-1", "env": "prod"}, "values": values}]})
            .to_string()
            .into_bytes(),
    );

    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(AnyKind::String(v.into())),
        }),
    };
    let otlp = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "bench"), kv("host.name", "web-1")],
            }),
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| LogRecord {
                        time_unix_nano: ns + i as u64,
                        severity_text: "INFO".into(),
                        body: Some(AnyValue {
                            value: Some(AnyKind::String(l.clone())),
                        }),
                        attributes: vec![kv("env", "prod")],
                        ..Default::default()
                    })
                    .collect(),
            }],
        }],
    };
    write("otlp.pb", otlp.encode_to_vec());

    let mut es = String::new();
    let mut jl = String::new();
    for (i, l) in lines.iter().enumerate() {
        let doc = json!({"@timestamp": rfc3339, "message": l, "host": {"name": "web-1"}, "n": i});
        es.push_str("{\"create\":{\"_index\":\"bench\"}}\n");
        es.push_str(&doc.to_string());
        es.push('\n');
        let doc = json!({"_time": rfc3339, "_msg": l, "app": "bench", "host": "web-1"});
        jl.push_str(&doc.to_string());
        jl.push('\n');
    }
    write("es.ndjson", es.into_bytes());
    write("jsonline.ndjson", jl.into_bytes());

    let mut syslog = Vec::new();
    for l in &lines {
        let frame = format!("<134>1 {rfc3339} web-1 bench 4242 - - {l}");
        syslog.extend_from_slice(format!("{} {frame}", frame.len()).as_bytes());
    }
    write("syslog.txt", syslog);
    write("lines.txt", (lines.join("\n") + "\n").into_bytes());
}
