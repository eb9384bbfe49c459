//! The agents' protocols, end to end with real clients where one can be installed here (the
//! OpenTelemetry Python SDK, the official elasticsearch client, python-logging-loki and rsyslog:
//! `scripts/test` installs them), raw bodies built from the protocols' own definitions, bad
//! input of every kind, and a SIGKILL right after an answered push.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The virtualenv `scripts/test` builds with the pinned Python clients.
fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyclients/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs the pinned Python clients",
        p.display()
    );
    p
}

fn run_client(script: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The records (without ULID) of `topic` stored so far.
fn of_topic(api: &str, topic: &str) -> Vec<String> {
    all_records(api)
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r[27..])
                .trim_end()
                .replace('\x1f', "␟")
        })
        .filter(|r| r.split(' ').next() == Some(topic))
        .collect()
}

fn wait_topic(api: &str, topic: &str, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(30),
        &format!("{n} records of {topic}"),
        || {
            let recs = of_topic(api, topic);
            assert!(recs.len() <= n, "more than {n} of {topic}: {recs:?}");
            (recs.len() == n).then_some(recs)
        },
    )
}

fn metric(api: &str, name: &str, protocol: &str) -> u64 {
    let text = http("GET", api, "/metrics", b"").text();
    let want = format!("{name}{{protocol=\"{protocol}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn real_agents_records_arrive_with_their_mapping() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &ingeststore_args(&[]),
        &["api", "syslog-tcp", "syslog-udp"],
    );
    let api = node.addr("api");

    run_client("otlp_send.py", &[&format!("http://{api}/v1/logs"), "20"]);
    let otlp = wait_topic(api, "checkout", 20);
    let one = otlp
        .iter()
        .find(|r| r.starts_with("checkout payment 7 declined␟"))
        .unwrap_or_else(|| panic!("{otlp:?}"));
    for field in [
        "host.name=web-1",
        "scope=shop.payments",
        "severity=WARN",
        "order_id=o-7",
        "amount=70",
        " ts=20",
    ] {
        assert!(one.contains(field), "{field} in {one}");
    }
    assert!(
        one.contains("␟service.name=␟") || one.contains("␟service.name= "),
        "the topic's attribute is a stream label whose value is the topic: {one}"
    );

    let (_, ts) = an_hour_ago();
    run_client(
        "es_bulk.py",
        &[&format!("http://{api}/insert/elasticsearch"), "50", &ts],
    );
    let es = wait_topic(api, "nginx-access", 50);
    assert!(
        es.contains(&format!(
            "nginx-access GET /item/3 200␟␟host.name=web-2 status=200 ts={ts}"
        )),
        "{es:?}"
    );

    run_client(
        "loki_send.py",
        &[&format!("http://{api}/loki/api/v1/push"), "10"],
    );
    let loki = wait_topic(api, "billing", 10);
    let one = loki
        .iter()
        .find(|r| r.starts_with("billing invoice 3 failed␟"))
        .unwrap_or_else(|| panic!("{loki:?}"));
    for field in ["region=eu-1", "severity=error", "␟ts=20"] {
        assert!(one.contains(field), "{field} in {one}");
    }

    // rsyslog follows a file and forwards each line over TCP (RFC 5424, octet-counted) and
    // UDP (RFC 3164): every line arrives twice, once per transport.
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let file = work.join("app.log");
    let port = |name: &str| node.addr(name).rsplit(':').next().unwrap().to_string();
    let conf = work.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{w}")
module(load="imfile" mode="polling" PollingInterval="1")
input(type="imfile" File="{f}" Tag="myapp" Facility="local0" Severity="warning" ruleset="fwd")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{tcp}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
  action(type="omfwd" target="127.0.0.1" port="{udp}" protocol="udp" template="RSYSLOG_TraditionalForwardFormat")
}}
"#,
            w = work.display(),
            f = file.display(),
            tcp = port("syslog-tcp"),
            udp = port("syslog-udp"),
        ),
    )
    .unwrap();
    let mut lines = std::fs::File::create(&file).unwrap();
    for i in 0..30 {
        writeln!(lines, "line {i} of the app's file").unwrap();
    }
    drop(lines);
    let mut rsyslog = Command::new("/usr/sbin/rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(work.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsyslogd (apt-get install rsyslog; scripts/test does)");
    let syslog = eventually(Duration::from_secs(30), "60 records from rsyslog", || {
        let recs = of_topic(api, "myapp");
        (recs.len() >= 60).then_some(recs)
    });
    let _ = rsyslog.kill();
    let _ = rsyslog.wait();
    assert_eq!(syslog.len(), 60, "{syslog:?}");
    for i in 0..30 {
        let want = format!("myapp line {i} of the app's file␟host=");
        assert_eq!(
            syslog
                .iter()
                .filter(|r| r.starts_with(&want)
                    && r.contains(" app=␟facility=local0 severity=warning ts=20"))
                .count(),
            2,
            "{want} in {syslog:?}"
        );
    }
    assert_eq!(
        metric(api, "oklog_ingest_push_records_total", "syslog-tcp"),
        30
    );
    assert_eq!(
        metric(api, "oklog_ingest_push_records_total", "syslog-udp"),
        30
    );
    assert_eq!(metric(api, "oklog_ingest_push_records_total", "otlp"), 20);
}

#[test]
fn raw_loki_protobuf_otlp_json_and_gzip_bodies() {
    use oklog::ingest::protocols::loki::{
        EntryAdapter, LabelPair, PushRequest, StreamAdapter, Timestamp,
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let (secs, ts) = an_hour_ago();

    // A Loki protobuf push as Promtail sends it: snappy, no Content-Encoding.
    let req = PushRequest {
        streams: vec![StreamAdapter {
            labels: br#"{container="web", pod="web-7"}"#.to_vec(),
            entries: (0..5)
                .map(|i| EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: secs,
                        nanos: i,
                    }),
                    line: format!("proto line {i}\nwith a second line").into_bytes(),
                    structured_metadata: vec![LabelPair {
                        name: b"trace_id".to_vec(),
                        value: b"t-1".to_vec(),
                    }],
                })
                .collect(),
        }],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&req))
        .unwrap();
    let r = http_with(
        "POST",
        api,
        "/insert/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        &body,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let web = wait_topic(api, "web", 5);
    assert!(
        web.contains(&format!(
            "web proto line 0\\nwith a second line␟container= pod=web-7␟trace_id=t-1 ts={ts}"
        )),
        "{web:?}"
    );

    // OTLP JSON, sent raw.
    let json = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"SECS000000000","severityText":"ERROR","body":{"stringValue":"cart lost"},"attributes":[{"key":"user","value":{"stringValue":"bob"}}]},{}]}]}]}"#
        .replace("SECS", &secs.to_string());
    let r = http_with(
        "POST",
        api,
        "/v1/logs",
        &[("Content-Type", "application/json")],
        json.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "the empty record is rejected: {answer}"
    );
    assert_eq!(
        wait_topic(api, "cart", 1),
        [format!(
            "cart cart lost␟service.name=␟severity=ERROR user=bob ts={ts}"
        )]
    );

    // Loki JSON, gzip-encoded.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        format!(
            r#"{{"streams":[{{"stream":{{"app":"gz"}},"values":[["{secs}000000000","zipped"]]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let r = http_with(
        "POST",
        api,
        "/loki/api/v1/push",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &gz.finish().unwrap(),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        wait_topic(api, "gz", 1),
        [format!("gz zipped␟app=␟ts={ts}")]
    );
}

/// A bad request: path, headers, body, the status and a part of the message it must get.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, u16, &'a str);

#[test]
fn bad_input_is_refused_with_a_reason_and_stores_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &ingeststore_args(&["-ingest.max-push-size", "1048576"]),
        &["api", "syslog-tcp"],
    );
    let api = node.addr("api");
    let good = http("POST", api, "/insert/jsonline", br#"{"_msg":"kept"}"#);
    assert_eq!(good.status, 200, "{}", good.text());
    wait_for_records(api, 1);

    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b'{'; 64 << 20]).unwrap();
    let bomb = bomb.finish().unwrap();
    let proto = [("Content-Type", "application/x-protobuf")];
    let json = [("Content-Type", "application/json")];
    let cases: Vec<Case> = vec![
        (
            "/loki/api/v1/push",
            &proto,
            snap::raw::Encoder::new()
                .compress_vec(b"\x0a\xff\x01")
                .unwrap(),
            400,
            "PushRequest",
        ),
        (
            "/loki/api/v1/push",
            &proto,
            b"not snappy".to_vec(),
            400,
            "snappy",
        ),
        (
            "/loki/api/v1/push",
            &json,
            b"[1,2]".to_vec(),
            400,
            "Loki JSON",
        ),
        (
            "/v1/logs",
            &proto,
            b"\x0a\x05\x0a".to_vec(),
            400,
            "ExportLogsServiceRequest",
        ),
        (
            "/v1/logs",
            &json,
            b"\"a string\"".to_vec(),
            400,
            "OTLP JSON",
        ),
        (
            "/insert/jsonline",
            &[],
            b"{\"a\":1}\n[\"not an object\"]\n".to_vec(),
            400,
            "line 2: not a JSON object",
        ),
        (
            "/insert/elasticsearch/_bulk",
            &[],
            b"{\"index\":{\"_index\":\"x\"}}\n{\"message\":\"ok\"}\n{\"create\":{}}\n".to_vec(),
            400,
            "line 3: create action without its document",
        ),
        (
            "/insert/jsonline",
            &[("Content-Encoding", "gzip")],
            bomb,
            413,
            "-ingest.max-push-size",
        ),
        (
            "/insert/jsonline",
            &[],
            vec![b' '; 2 << 20],
            413,
            "over the limit",
        ),
        (
            "/insert/jsonline",
            &[("Content-Encoding", "br")],
            b"x".to_vec(),
            415,
            "br",
        ),
    ];
    for (path, headers, body, status, message) in &cases {
        let r = http_with("POST", api, path, headers, body);
        assert_eq!(r.status, *status, "{path} {message}: {}", r.text());
        assert!(
            r.text().contains(message),
            "{path}: {:?} lacks {message:?}",
            r.text()
        );
    }

    // A syslog connection whose octet count is over the limit is closed after the frames
    // before it are stored.
    let mut s = std::net::TcpStream::connect(node.addr("syslog-tcp")).unwrap();
    s.write_all(b"20 <13>1 - h a - - - ok9999999 <13>1 - h a - - - never\n")
        .unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);

    std::thread::sleep(Duration::from_millis(500));
    let recs = wait_for_records(api, 2);
    let text: Vec<String> = recs
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r[27..])
                .trim_end()
                .replace('\x1f', "␟")
        })
        .collect();
    assert_eq!(
        text,
        [
            "default kept",
            "a ok␟host=h app=␟facility=user severity=notice"
        ]
    );
    assert_eq!(http("GET", api, "/health", b"").status, 200);
    assert!(metric(api, "oklog_ingest_push_rejected_total", "loki") >= 3);
}

#[test]
fn an_answered_push_survives_a_sigkill() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::ingeststore(dir.path(), &["-ingest.segment-flush-age", "1h"]);
    let api = node.addr("api").to_string();
    let mut sent = 0;
    for batch in 0..10 {
        let body: String = (0..100)
            .map(|i| format!("{{\"_msg\":\"batch {batch} record {i}\"}}\n"))
            .collect();
        let r = http("POST", &api, "/insert/jsonline", body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        sent += 100;
    }
    // Killed right after the last answer: the segment is still active (flush age 1h).
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let restarted = Node::ingeststore(dir.path(), &[]);
    let recs = wait_for_records(restarted.addr("api"), sent);
    assert!(
        recs.iter()
            .any(|r| r.ends_with(b" default batch 9 record 99\n")),
        "the last answered record is there"
    );
}

#[test]
fn a_stopping_node_hands_over_what_was_pushed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::ingeststore(dir.path(), &["-ingest.segment-flush-age", "1h"]);
    let api = node.addr("api").to_string();
    let r = http(
        "POST",
        &api,
        "/insert/jsonline",
        b"{\"_msg\":\"pushed before the stop\"}\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let status = node
        .terminate(Duration::from_secs(20))
        .expect("the node stops");
    assert!(status.success(), "{status}: {}", node.log_text());
    // The push segment was closed as the stop began, so the drain handed it to the store
    // before the node exited (not left to the next start).
    let stored = std::fs::read_dir(dir.path().join("data/store"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".flushed"))
        .any(|e| {
            std::fs::read(e.path())
                .unwrap_or_default()
                .windows(10)
                .any(|w| w == b"before the")
        });
    assert!(
        stored,
        "the store holds the pushed record: {}",
        node.log_text()
    );
    let restarted = Node::ingeststore(dir.path(), &[]);
    let recs = wait_for_records(restarted.addr("api"), 1);
    assert!(recs[0].ends_with(b" default pushed before the stop\n"));
}
