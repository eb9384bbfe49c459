//! The Loki query API, checked by a strict client built from Loki's specification (the
//! shapes of `pkg/util/marshal`, the parameters of its HTTP API) and from the requests
//! Grafana's Loki data source sends. What [`check_answer`] checks of every answer:
//! - `Content-Type: application/json`, `status: "success"`, `data.resultType` one of
//!   `streams`, `matrix`, `vector`, `scalar`, `data.result` of that shape, and
//!   `data.stats.summary` with Loki's counters as numbers;
//! - streams: `stream` an object of strings; each value `[<ns as a decimal string>, <line>]`,
//!   or with `categorize-labels` exactly three elements, the third an object holding only
//!   `structuredMetadata` and `parsed` (each an object of strings), and
//!   `data.encodingFlags == ["categorize-labels"]` (absent otherwise);
//! - matrix: `metric` an object of strings, `values` `[<seconds as a number>, <value as a
//!   string>]` in time order; vector: `value` one such pair; scalar: one such pair;
//! - errors: a 4xx with a plain-text reason, never a 5xx for a bad query.

mod common;

use common::*;
use serde_json::{Value, json};

/// Nanoseconds `secs_ago` seconds before now.
fn ago(secs_ago: i64) -> i128 {
    i128::from(jiff::Timestamp::now().as_second() - secs_ago) * 1_000_000_000
}

fn push(api: &str, streams: Value) {
    let r = http(
        "POST",
        api,
        "/loki/api/v1/push",
        streams.to_string().as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.text());
}

fn get(api: &str, path: &str, params: &[(&str, String)], headers: &[(&str, &str)]) -> Response {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", oklog::http::percent_encode(v)))
        .collect();
    http_with("GET", api, &format!("{path}?{}", q.join("&")), headers, b"")
}

fn is_string_object(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.values().all(Value::is_string))
}

fn is_sample(v: &Value) -> bool {
    matches!(v.as_array().map(Vec::as_slice), Some([t, x]) if t.is_number() && x.as_str().is_some_and(|s| s.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&s)))
}

/// Check an answer's shape as the module doc says; the parsed body.
fn check_answer(r: &Response, categorize: bool) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.header("content-type")
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    assert_eq!(v["status"], "success", "{v}");
    let data = &v["data"];
    let summary = &data["stats"]["summary"];
    for k in [
        "bytesProcessedPerSecond",
        "linesProcessedPerSecond",
        "totalBytesProcessed",
        "totalLinesProcessed",
        "execTime",
        "totalEntriesReturned",
    ] {
        assert!(summary[k].is_number(), "stats.summary.{k} in {v}");
    }
    let result = &data["result"];
    match data["resultType"].as_str().unwrap() {
        "streams" => {
            if categorize {
                assert_eq!(data["encodingFlags"], json!(["categorize-labels"]), "{v}");
            } else {
                assert!(data.get("encodingFlags").is_none(), "{v}");
            }
            for s in result.as_array().unwrap() {
                assert!(is_string_object(&s["stream"]), "{s}");
                for e in s["values"].as_array().unwrap() {
                    let e = e.as_array().unwrap();
                    assert_eq!(e.len(), if categorize { 3 } else { 2 }, "{e:?}");
                    let ns = e[0].as_str().unwrap();
                    assert!(
                        !ns.is_empty() && ns.bytes().all(|c| c.is_ascii_digit()),
                        "{ns}"
                    );
                    assert!(e[1].is_string());
                    if categorize {
                        let extra = e[2].as_object().unwrap();
                        for (k, m) in extra {
                            assert!(
                                ["structuredMetadata", "parsed"].contains(&k.as_str()),
                                "{k}"
                            );
                            assert!(
                                is_string_object(m) && !m.as_object().unwrap().is_empty(),
                                "{m}"
                            );
                        }
                    }
                }
            }
        }
        "matrix" => {
            for s in result.as_array().unwrap() {
                assert!(is_string_object(&s["metric"]), "{s}");
                let values = s["values"].as_array().unwrap();
                assert!(values.iter().all(is_sample), "{s}");
                let times: Vec<f64> = values.iter().map(|p| p[0].as_f64().unwrap()).collect();
                assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
            }
        }
        "vector" => {
            for s in result.as_array().unwrap() {
                assert!(
                    is_string_object(&s["metric"]) && is_sample(&s["value"]),
                    "{s}"
                );
            }
        }
        "scalar" => assert!(is_sample(result), "{result}"),
        other => panic!("resultType {other}"),
    }
    v
}

fn entries(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for e in s["values"].as_array().unwrap() {
            out.push((
                e[0].as_str().unwrap().to_string(),
                e[1].as_str().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn log_and_metric_queries_answer_as_loki_does() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let t = ago(600);
    let ns = |k: i128| (t + k * 1_000_000_000 + 123).to_string();
    push(
        api,
        json!({"streams": [
            {"stream": {"job": "api", "env": "prod"}, "values": [
                [ns(0), "GET /a status=200 took=5ms", {"trace_id": "t1"}],
                [ns(1), "GET /b status=500 took=1.5s", {"trace_id": "t2"}],
                [ns(2), "POST /c status=503 took=20ms"]
            ]},
            {"stream": {"job": "web"}, "values": [[ns(3), "{\"msg\":\"hello\",\"level\":\"warn\"}"]]}
        ]}),
    );
    forward(node.addr("fast"), b"a line from forward\n", &[]);
    wait_for_records(api, 5);
    let window = [
        ("start", (t - 60_000_000_000).to_string()),
        ("end", (t + 60_000_000_000).to_string()),
    ];
    let range = |q: &str, extra: &[(&str, &str)], headers: &[(&str, &str)]| {
        let mut p: Vec<(&str, String)> = window.to_vec();
        p.push(("query", q.to_string()));
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        get(api, "/loki/api/v1/query_range", &p, headers)
    };

    // A selector: the stream's labels, the topic as service_name, metadata among the labels.
    let v = check_answer(&range(r#"{job="api"}"#, &[], &[]), false);
    let got = entries(&v);
    assert_eq!(got.len(), 3, "{v}");
    assert_eq!(
        got[0],
        (ns(0), "GET /a status=200 took=5ms".to_string()),
        "nanoseconds kept"
    );
    let streams = v["data"]["result"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["stream"]
            == json!({"detected_level": "unknown", "env": "prod", "job": "api", "service_name": "api", "trace_id": "t1"})),
        "{v}"
    );
    assert!(
        streams
            .iter()
            .any(|s| s["stream"] == json!({"detected_level": "unknown", "env": "prod", "job": "api", "service_name": "api"})),
        "{v}"
    );
    // Newest first by default, `limit` across streams; forward is oldest first.
    let v = check_answer(&range(r#"{job="api"}"#, &[("limit", "2")], &[]), false);
    assert_eq!(
        entries(&v).iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
        [ns(1), ns(2)]
    );
    let v = check_answer(
        &range(
            r#"{job="api"}"#,
            &[("limit", "1"), ("direction", "forward")],
            &[],
        ),
        false,
    );
    assert_eq!(entries(&v)[0].0, ns(0));
    // Line filters match the line only, never the labels.
    let v = check_answer(
        &range(
            r#"{service_name=~"api|web"} |= "status=5" != "POST""#,
            &[],
            &[],
        ),
        false,
    );
    assert_eq!(entries(&v).len(), 1, "{v}");
    let v = check_answer(&range(r#"{job="api"} |= "prod""#, &[], &[]), false);
    assert_eq!(
        entries(&v).len(),
        0,
        "a label value is not in the line: {v}"
    );
    // Parsers and label filters with numbers and durations; a forwarded record's only label.
    let v = check_answer(
        &range(
            r#"{job="api"} | logfmt | status >= 500 and took > 1s"#,
            &[],
            &[],
        ),
        false,
    );
    assert_eq!(entries(&v).len(), 1, "{v}");
    assert_eq!(v["data"]["result"][0]["stream"]["status"], "500");
    let v = check_answer(
        &get(
            api,
            "/loki/api/v1/query_range",
            &[("query", r#"{service_name="default"}"#.into())],
            &[],
        ),
        false,
    );
    assert_eq!(
        v["data"]["result"][0]["stream"],
        json!({"detected_level": "unknown", "service_name": "default"})
    );
    let v = check_answer(
        &range(
            r#"{job="web"} | json | line_format "{{.level}}: {{.msg}}""#,
            &[],
            &[],
        ),
        false,
    );
    assert_eq!(entries(&v)[0].1, "warn: hello");
    assert_eq!(
        v["data"]["result"][0]["stream"]["detected_level"], "warn",
        "from the JSON line's level"
    );

    // categorize-labels: stream labels in `stream`, the rest per entry.
    let v = check_answer(
        &range(
            r#"{job="api"} | logfmt"#,
            &[("limit", "1"), ("direction", "forward")],
            &[("X-Loki-Response-Encoding-Flags", "categorize-labels")],
        ),
        true,
    );
    let s = &v["data"]["result"][0];
    assert_eq!(
        s["stream"],
        json!({"env": "prod", "job": "api", "service_name": "api"})
    );
    assert_eq!(
        s["values"][0][2]["structuredMetadata"],
        json!({"detected_level": "unknown", "trace_id": "t1"})
    );
    assert_eq!(s["values"][0][2]["parsed"]["status"], "200");

    // `interval`: a stream's entries at least that far apart.
    let v = check_answer(
        &range(
            r#"{job="api"}"#,
            &[("direction", "forward"), ("interval", "1.5")],
            &[("X-Loki-Response-Encoding-Flags", "categorize-labels")],
        ),
        true,
    );
    assert_eq!(
        entries(&v).iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
        [ns(0), ns(2)]
    );

    // Metric queries: a range query is a matrix; an instant one a vector or scalar.
    let instant = |q: &str| {
        get(
            api,
            "/loki/api/v1/query",
            &[
                ("query", q.to_string()),
                ("time", (t + 60_000_000_000).to_string()),
            ],
            &[],
        )
    };
    let v = check_answer(&instant("vector(1)+vector(1)"), false);
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(
        v["data"]["result"][0]["value"][1], "2",
        "Grafana's Save & test: {v}"
    );
    let v = check_answer(&instant("1 + 1"), false);
    assert_eq!(v["data"]["result"][1], "2");
    let v = check_answer(
        &instant(r#"sum by (job) (count_over_time({job=~"api|web"}[5m]))"#),
        false,
    );
    let mut got: Vec<(String, String)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["job"].as_str().unwrap().to_string(),
                s["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("api".into(), "3".into()), ("web".into(), "1".into())],
        "{v}"
    );
    let v = check_answer(
        &range(
            r#"sum(count_over_time({job="api"}[1s]))"#,
            &[("step", "1")],
            &[],
        ),
        false,
    );
    assert_eq!(v["data"]["resultType"], "matrix");
    let points: Vec<String> = v["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        points,
        ["1", "1", "1"],
        "one record a second, each in one 1 s window: {v}"
    );
    let v = check_answer(
        &range(
            r#"sum(rate({job="api"} | logfmt | unwrap duration(took) [1m]))"#,
            &[("step", "60")],
            &[],
        ),
        false,
    );
    assert!(!v["data"]["result"].as_array().unwrap().is_empty(), "{v}");

    // Grafana's log volume histogram: its own query, as it sends it.
    let v = check_answer(
        &range(
            r#"sum by (level, detected_level) (count_over_time({job=~"api|web"} | drop __error__ [1m]))"#,
            &[("step", "60")],
            &[],
        ),
        false,
    );
    let mut levels: Vec<String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"]["detected_level"].as_str().unwrap().to_string())
        .collect();
    levels.sort();
    assert_eq!(levels, ["unknown", "warn"], "{v}");
    // Log context around the second api line: backward before it, forward from it.
    let context = |direction: &str, edge: &str| {
        let mut p = vec![
            (
                "query",
                r#"{env="prod", job="api", service_name="api"}"#.to_string(),
            ),
            ("limit", "10".to_string()),
            ("direction", direction.to_string()),
        ];
        if direction == "backward" {
            p.push(("start", (t - 3_600_000_000_000).to_string()));
            p.push(("end", edge.to_string()));
        } else {
            p.push(("start", edge.to_string()));
            p.push(("end", (t + 3_600_000_000_000).to_string()));
        }
        let v = check_answer(
            &get(
                api,
                "/loki/api/v1/query_range",
                &p,
                &[("X-Loki-Response-Encoding-Flags", "categorize-labels")],
            ),
            true,
        );
        entries(&v).into_iter().map(|e| e.1).collect::<Vec<_>>()
    };
    assert_eq!(context("backward", &ns(1)), ["GET /a status=200 took=5ms"]);
    assert_eq!(
        context("forward", &ns(1)),
        [
            "GET /b status=500 took=1.5s",
            "POST /c status=503 took=20ms"
        ]
    );

    // A metric query over records a parser fails on is refused, as Loki refuses it, unless
    // the errors are filtered out.
    let r = range(
        r#"sum(count_over_time({job="api"} | json [1h]))"#,
        &[("step", "60")],
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("JSONParserErr"), "{}", r.text());
    let v = check_answer(
        &range(
            r#"sum(count_over_time({job="api"} | json | __error__="" [1h]))"#,
            &[("step", "60")],
            &[],
        ),
        false,
    );
    assert!(v["data"]["result"].as_array().unwrap().is_empty(), "{v}");

    // The same under the VictoriaLogs-style prefix; buildinfo.
    let r = get(
        api,
        "/select/loki/api/v1/query",
        &[("query", "vector(1)+vector(1)".into())],
        &[],
    );
    check_answer(&r, false);
    let r = http("GET", api, "/loki/api/v1/status/buildinfo", b"");
    assert_eq!(r.status, 200);
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(b["version"].is_string(), "{b}");
}

#[test]
fn bad_queries_are_400s_that_say_what_and_where() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    for (q, want) in [
        (r#"{job="api""#, "parse error at line 1, col 11"),
        (
            r#"{job="api"} |= "a" | status >"#,
            "parse error at line 1, col 30",
        ),
        (r#"sum_over_time({job="api"}[5m])"#, "without unwrap"),
        (r#"{job=~".*"}"#, "at least one"),
        (r#"{job="api"} |= ip("10.0.0.0/8")"#, "ip()"),
        (
            r#"{job="api"} | line_format "{{ printf \"%s\" .a }}""#,
            "not supported",
        ),
        ("", "empty query"),
    ] {
        for path in ["/loki/api/v1/query_range", "/loki/api/v1/query"] {
            let r = get(api, path, &[("query", q.into())], &[]);
            assert_eq!(r.status, 400, "{q}: {}", r.text());
            assert!(r.text().contains(want), "{q}: {}", r.text());
        }
    }
    for (params, want) in [
        (vec![("start", "yesterday")], "\"start\""),
        (vec![("limit", "100000")], "max entries limit"),
        (vec![("direction", "up")], "direction"),
        (
            vec![("start", "1700000000"), ("end", "1600000000")],
            "end timestamp",
        ),
    ] {
        let mut p: Vec<(&str, String)> = params
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        p.push(("query", r#"{job="api"}"#.into()));
        let r = get(api, "/loki/api/v1/query_range", &p, &[]);
        assert_eq!(r.status, 400, "{p:?}: {}", r.text());
        assert!(r.text().contains(want), "{p:?}: {}", r.text());
    }
    let r = get(
        api,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"count_over_time({job="api"}[1m])"#.into()),
            ("start", "0".into()),
            ("end", "1700000000".into()),
            ("step", "1".into()),
        ],
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("11,000 points"), "{}", r.text());
}

#[test]
fn labels_series_stats_and_fields_as_grafana_asks_them() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let t = ago(600);
    let ns = |k: i128| (t + k * 1_000_000_000).to_string();
    push(
        api,
        json!({"streams": [
            {"stream": {"job": "api", "env": "prod"}, "values": [
                [ns(0), "GET /a status=200 took=5ms", {"trace_id": "t1"}],
                [ns(1), "GET /b status=500 took=1.5s", {"trace_id": "t2"}],
                [ns(2), "POST /c status=503 took=20ms"]
            ]},
            {"stream": {"job": "web"}, "values": [[ns(3), "{\"msg\":\"hello\",\"level\":\"warn\"}"]]}
        ]}),
    );
    forward(node.addr("fast"), b"a line from forward\n", &[]);
    wait_for_records(api, 5);
    let list = |path: &str, params: &[(&str, String)]| -> Vec<String> {
        let r = get(api, path, params, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    // Stream labels only (metadata is not a label), from the index, over the last 6 hours.
    assert_eq!(
        list("/loki/api/v1/labels", &[]),
        ["env", "job", "service_name"]
    );
    assert_eq!(list("/loki/api/v1/label/job/values", &[]), ["api", "web"]);
    assert_eq!(
        list("/loki/api/v1/label/service_name/values", &[]),
        ["api", "default", "web"]
    );
    assert_eq!(
        list("/loki/api/v1/labels", &[("query", r#"{job="web"}"#.into())]),
        ["job", "service_name"]
    );
    assert_eq!(
        list(
            "/select/loki/api/v1/label/job/values",
            &[("start", (t + 10_000_000_000).to_string())]
        ),
        Vec::<String>::new(),
        "no stream has records after start"
    );
    let r = get(
        api,
        "/loki/api/v1/series",
        &[("match[]", r#"{job="api"}"#.into())],
        &[],
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["data"],
        json!([{"env": "prod", "job": "api", "service_name": "api"}]),
        "{v}"
    );
    let r = get(
        api,
        "/loki/api/v1/index/stats",
        &[("query", r#"{job="api"}"#.into())],
        &[],
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["streams"].as_u64(), v["entries"].as_u64()),
        (Some(1), Some(3)),
        "{v}"
    );
    assert!(
        v["bytes"].as_u64().unwrap() > 0 && v["chunks"].is_number(),
        "{v}"
    );
    let r = get(
        api,
        "/loki/api/v1/index/volume",
        &[("query", r#"{job=~"api|web"}"#.into())],
        &[],
    );
    let v = check_answer(&r, false);
    assert_eq!(v["data"]["resultType"], "vector");
    let jobs: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"]["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["api", "web"], "most bytes first: {v}");
    let r = get(
        api,
        "/loki/api/v1/index/volume_range",
        &[
            ("query", r#"{job="api"}"#.into()),
            ("start", ns(-60)),
            ("end", ns(60)),
            ("step", "60".into()),
        ],
        &[],
    );
    let v = check_answer(&r, false);
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(
        v["data"]["result"][0]["metric"],
        json!({"job": "api"}),
        "{v}"
    );
    let r = get(
        api,
        "/loki/api/v1/detected_labels",
        &[("query", r#"{job=~".+"}"#.into())],
        &[],
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        v["detectedLabels"]
            .as_array()
            .unwrap()
            .contains(&json!({"label": "job", "cardinality": 2})),
        "{v}"
    );
    let window = [("start", ns(-60)), ("end", ns(60))];
    let mut p = window.to_vec();
    p.push(("query", r#"{job="api"}"#.into()));
    let r = get(api, "/loki/api/v1/detected_fields", &p, &[]);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let field = |name: &str| {
        v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["label"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    assert_eq!(field("status")["type"], "int");
    assert_eq!(field("status")["cardinality"], 3);
    assert_eq!(field("status")["parsers"], json!(["logfmt"]));
    assert_eq!(field("took")["type"], "duration");
    assert_eq!(
        field("trace_id")["parsers"],
        Value::Null,
        "structured metadata"
    );
    let r = get(api, "/loki/api/v1/detected_field/status/values", &p, &[]);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["values"], json!(["200", "500", "503"]));
    assert_eq!(list("/loki/api/v1/patterns", &[]), Vec::<String>::new());
    // The index outlives a restart: its files are read back, not the segments.
    assert!(
        dir.path()
            .join("data/store/labels")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
    );
}

#[test]
fn live_tail_over_websocket_sends_the_past_then_what_arrives() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let t = ago(120);
    push(
        api,
        json!({"streams": [{"stream": {"job": "api"}, "values": [
            [(t).to_string(), "past one"], [(t + 1).to_string(), "past two"]
        ]}]}),
    );
    wait_for_records(api, 2);
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyclients/bin/python");
    assert!(
        python.exists(),
        "run scripts/test, which installs the pinned Python clients"
    );
    let url = format!(
        "ws://{api}/loki/api/v1/tail?query={}&start={}&limit=10",
        oklog::http::percent_encode(r#"{job="api"} != "skip""#),
        t - 60_000_000_000
    );
    /// The client process, killed when the test ends (even on failure).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/loki_tail.py"))
        .args([&url, "4", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut child);
    let mut child = Kill(child);
    let first = lines
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("READY");
    assert_eq!(first, "READY");
    let past = lines
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the past frame");
    let past: Value = serde_json::from_str(&past).unwrap();
    assert_eq!(past["streams"][0]["stream"]["job"], "api", "{past}");
    assert_eq!(
        past["streams"][0]["values"],
        json!([
            [t.to_string(), "past one"],
            [(t + 1).to_string(), "past two"]
        ]),
        "oldest first"
    );
    let now = ago(0);
    push(
        api,
        json!({"streams": [
            {"stream": {"job": "api"}, "values": [[now.to_string(), "live one"], [(now + 1).to_string(), "skip me"], [(now + 2).to_string(), "live two"]]},
            {"stream": {"job": "other"}, "values": [[now.to_string(), "not selected"]]}
        ]}),
    );
    let mut live = Vec::new();
    while live.len() < 2 {
        let frame = lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("live entries, got {live:?}"));
        let frame: Value = serde_json::from_str(&frame).unwrap();
        for s in frame["streams"].as_array().unwrap() {
            assert_eq!(s["stream"]["job"], "api", "{frame}");
            for v in s["values"].as_array().unwrap() {
                live.push(v[1].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(live, ["live one", "live two"]);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "the client ends once it has 4 entries");
}

#[test]
fn three_store_nodes_with_two_copies_count_each_record_once() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let s1 = start_role("store", &root.path().join("s1"), None, &[]);
    let peer = s1.addr("cluster").to_string();
    let s2 = start_role("store", &root.path().join("s2"), Some(&peer), &[]);
    let s3 = start_role("store", &root.path().join("s3"), Some(&peer), &[]);
    let ingester = start_role("ingest", &root.path().join("i1"), Some(&peer), &[]);
    // 600 entries over the last 50 minutes in three streams, one in four a 500.
    let now = ago(0);
    let minute = 60_000_000_000i128;
    let entries: Vec<(String, i128, String)> = (0..600)
        .map(|i| {
            let job = ["a", "b", "c"][i % 3].to_string();
            let ns = now - 50 * minute + (i as i128) * 5_000_000_000 + 7;
            let status = if i % 4 == 0 { 500 } else { 200 };
            (job, ns, format!("req {i} status={status}"))
        })
        .collect();
    for chunk in entries.chunks(100) {
        let streams: Vec<Value> = ["a", "b", "c"]
            .iter()
            .map(|job| {
                let values: Vec<Value> = chunk
                    .iter()
                    .filter(|e| e.0 == *job)
                    .map(|e| json!([e.1.to_string(), e.2]))
                    .collect();
                json!({"stream": {"job": job}, "values": values})
            })
            .collect();
        eventually(
            std::time::Duration::from_secs(20),
            "the ingester to take a push",
            || {
                let r = http(
                    "POST",
                    ingester.addr("api"),
                    "/loki/api/v1/push",
                    json!({ "streams": streams }).to_string().as_bytes(),
                );
                (r.status == 204).then_some(())
            },
        );
    }
    for node in [&s1, &s2, &s3] {
        wait_for_records(node.addr("api"), entries.len());
    }
    let five_hundreds = entries.iter().filter(|e| e.2.ends_with("=500")).count();
    for node in [&s1, &s2, &s3] {
        let api = node.addr("api");
        // Log queries: each entry once, though it is on two or three nodes.
        let v = check_answer(
            &get(
                api,
                "/loki/api/v1/query_range",
                &[
                    ("query", r#"{job=~"a|b|c"} |= "status=500""#.into()),
                    ("start", (now - 60 * minute).to_string()),
                    ("end", (now + minute).to_string()),
                    ("limit", "5000".into()),
                ],
                &[],
            ),
            false,
        );
        let got = crate::entries(&v);
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!((got.len(), distinct.len()), (five_hundreds, five_hundreds));
        // Metric queries: counts per stream over the hour, and per 10-minute window.
        let v = check_answer(
            &get(
                api,
                "/loki/api/v1/query",
                &[
                    (
                        "query",
                        r#"sum by (job) (count_over_time({job=~".+"}[1h]))"#.into(),
                    ),
                    ("time", (now + minute).to_string()),
                ],
                &[],
            ),
            false,
        );
        for s in v["data"]["result"].as_array().unwrap() {
            assert_eq!(s["value"][1], "200", "{v}");
        }
        assert_eq!(v["data"]["result"].as_array().unwrap().len(), 3);
        let (start, step) = (now - 40 * minute, 10 * minute);
        let v = check_answer(
            &get(
                api,
                "/loki/api/v1/query_range",
                &[
                    (
                        "query",
                        r#"sum(count_over_time({job="a"} |= "status=500" [10m]))"#.into(),
                    ),
                    ("start", start.to_string()),
                    ("end", now.to_string()),
                    ("step", "600".into()),
                ],
                &[],
            ),
            false,
        );
        let want: Vec<(f64, String)> = (0..=4)
            .map(|k| start + k * step)
            .filter_map(|t| {
                let n = entries
                    .iter()
                    .filter(|e| e.0 == "a" && e.2.ends_with("=500") && e.1 > t - step && e.1 <= t)
                    .count();
                (n > 0).then(|| ((t / 1_000_000) as f64 / 1000.0, n.to_string()))
            })
            .collect();
        let got: Vec<(f64, String)> = v["data"]["result"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(got, want, "windows (t - 10m, t] at each step");
        // Labels from every node's index, merged.
        let r = get(api, "/loki/api/v1/label/job/values", &[], &[]);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["data"], json!(["a", "b", "c"]), "{v}");
    }
}
