//! LogQL's semantics against a reference computed here over generated data: log queries with
//! `limit` and `direction`, parsers and label filters, every range function and aggregation
//! at several steps, on raw segments and again once the store has compressed them.
//!
//! The reference is written from Loki's documented semantics, independently of oklog's
//! evaluator: a log window is `[start, end)`; a range window at step `t` is `(t − range, t]`
//! and gives no point when empty; steps are `start, start+step, … ≤ end`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Entry {
    job: &'static str,
    env: &'static str,
    ns: i128,
    status: u32,
    latency_ms: u32,
    size: u32,
    line: String,
}

fn generate(now: i128) -> Vec<Entry> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(25);
    let minute = 60_000_000_000i128;
    (0..1500)
        .map(|i| {
            let job = ["api", "web", "db"][rng.random_range(0..3)];
            let env = ["prod", "dev"][rng.random_range(0..2)];
            // Distinct times over the last 100 minutes, in no order.
            let ns =
                now - 100 * minute + rng.random_range(0..6_000_000i128) * 1_000_000 + i as i128;
            let status = [200, 200, 200, 404, 500][rng.random_range(0..5)];
            let latency_ms = rng.random_range(1..2000u32);
            let size = rng.random_range(10..100_000u32);
            let line = format!(
                "method=GET status={status} latency={latency_ms}ms size={size} msg=\"req {i}\""
            );
            Entry {
                job,
                env,
                ns,
                status,
                latency_ms,
                size,
                line,
            }
        })
        .collect()
}

fn query(api: &str, path: &str, params: &[(&str, String)]) -> Value {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", oklog::http::percent_encode(v)))
        .collect();
    let r = http("GET", api, &format!("{path}?{}", q.join("&")), b"");
    assert_eq!(r.status, 200, "{params:?}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// A range function over the values of a window.
fn fold(f: &str, vals: &[f64], secs: f64) -> f64 {
    let n = vals.len() as f64;
    let sum: f64 = vals.iter().sum();
    let mean = sum / n;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    match f {
        "count_over_time" => n,
        "rate" => n / secs,
        "bytes_over_time" | "sum_over_time" => sum,
        "bytes_rate" => sum / secs,
        "avg_over_time" => mean,
        "min_over_time" => vals.iter().copied().fold(f64::INFINITY, f64::min),
        "max_over_time" => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "stddev_over_time" => var.sqrt(),
        "stdvar_over_time" => var,
        "first_over_time" => vals[0],
        "last_over_time" => vals[vals.len() - 1],
        "quantile_over_time" => {
            let mut v = vals.to_vec();
            v.sort_by(f64::total_cmp);
            let rank = 0.9 * (v.len() - 1) as f64;
            let (lo, w) = (rank.floor() as usize, rank - rank.floor());
            v[lo] * (1.0 - w) + v[(lo + 1).min(v.len() - 1)] * w
        }
        _ => unreachable!("{f}"),
    }
}

/// The reference matrix of `by (job)` function `f` over the entries `keep` selects, with
/// `value` per entry: job → [(step seconds, value)].
fn reference(
    entries: &[Entry],
    keep: &dyn Fn(&Entry) -> bool,
    value: &dyn Fn(&Entry) -> f64,
    f: &str,
    (start, end, step, range): (i128, i128, i128, i128),
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        let mut by_job: BTreeMap<&str, Vec<(i128, f64)>> = BTreeMap::new();
        for e in entries
            .iter()
            .filter(|e| keep(e) && e.ns > t - range && e.ns <= t)
        {
            by_job.entry(e.job).or_default().push((e.ns, value(e)));
        }
        for (job, mut samples) in by_job {
            samples.sort_by_key(|s| s.0);
            let vals: Vec<f64> = samples.iter().map(|s| s.1).collect();
            let v = fold(f, &vals, range as f64 / 1e9);
            out.entry(job.to_string())
                .or_default()
                .push(((t / 1_000_000) as f64 / 1000.0, v));
        }
        t += step;
    }
    out
}

fn matrix(v: &Value) -> BTreeMap<String, Vec<(f64, f64)>> {
    assert_eq!(v["data"]["resultType"], "matrix", "{v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let job = s["metric"]["job"].as_str().unwrap_or("").to_string();
            let points = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap(),
                        p[1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect();
            (job, points)
        })
        .collect()
}

fn close(a: &BTreeMap<String, Vec<(f64, f64)>>, b: &BTreeMap<String, Vec<(f64, f64)>>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && va.len() == vb.len()
                && va.iter().zip(vb).all(|(x, y)| {
                    (x.0 - y.0).abs() < 1e-6 && (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(1.0)
                })
        })
}

fn check_everything(api: &str, entries: &[Entry], now: i128, what: &str) {
    let minute = 60_000_000_000i128;
    let (start, end) = (now - 110 * minute, now + minute);
    // Log queries: limit across streams, both directions, parsers and label filters.
    for (q, keep) in [
        (
            r#"{job="api"} |= "status=500""#,
            &(|e: &Entry| e.job == "api" && e.status == 500) as &dyn Fn(&Entry) -> bool,
        ),
        (
            r#"{job=~"api|db", env!="dev"} | logfmt | latency > 1s or status = 404"#,
            &|e: &Entry| {
                (e.job == "api" || e.job == "db")
                    && e.env != "dev"
                    && (e.latency_ms > 1000 || e.status == 404)
            },
        ),
        (
            r#"{env="prod"} |~ "status=(404|500)" | logfmt | size <= 50KB"#,
            &|e: &Entry| e.env == "prod" && e.status >= 404 && e.size <= 50_000,
        ),
        (r#"{job="web"} | logfmt | status >= 500"#, &|e: &Entry| {
            e.job == "web" && e.status >= 500
        }),
    ] {
        let mut want: Vec<&Entry> = entries.iter().filter(|e| keep(e)).collect();
        want.sort_by_key(|e| e.ns);
        for (direction, limit) in [("backward", 7usize), ("forward", 5), ("backward", 5000)] {
            let v = query(
                api,
                "/loki/api/v1/query_range",
                &[
                    ("query", q.into()),
                    ("start", start.to_string()),
                    ("end", end.to_string()),
                    ("limit", limit.to_string()),
                    ("direction", direction.into()),
                ],
            );
            let mut got: Vec<(i128, String)> = v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["values"].as_array().unwrap().iter())
                .map(|p| {
                    (
                        p[0].as_str().unwrap().parse().unwrap(),
                        p[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            got.sort();
            let mut expect: Vec<(i128, String)> = if direction == "backward" {
                want.iter()
                    .rev()
                    .take(limit)
                    .map(|e| (e.ns, e.line.clone()))
                    .collect()
            } else {
                want.iter()
                    .take(limit)
                    .map(|e| (e.ns, e.line.clone()))
                    .collect()
            };
            expect.sort();
            assert!(!expect.is_empty(), "{q}");
            assert_eq!(got, expect, "{what}: {q} {direction} limit {limit}");
        }
    }
    // Every range function, by job, at several steps and ranges.
    let all = |_: &Entry| true;
    let errors = |e: &Entry| e.status >= 500;
    let one = |_: &Entry| 1.0;
    let bytes = |e: &Entry| e.line.len() as f64;
    let size = |e: &Entry| e.size as f64;
    let latency = |e: &Entry| e.latency_ms as f64 / 1000.0;
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a dyn Fn(&Entry) -> bool,
        &'a dyn Fn(&Entry) -> f64,
    );
    let cases: Vec<Case> = vec![
        (
            "count_over_time",
            r#"sum by (job) (count_over_time({env=~".+"} [R]))"#,
            &all,
            &one,
        ),
        (
            "rate",
            r#"sum by (job) (rate({env=~".+"} |= "status=500" [R]))"#,
            &errors,
            &one,
        ),
        (
            "bytes_over_time",
            r#"sum by (job) (bytes_over_time({env=~".+"} [R]))"#,
            &all,
            &bytes,
        ),
        (
            "bytes_rate",
            r#"sum by (job) (bytes_rate({env=~".+"} [R]))"#,
            &all,
            &bytes,
        ),
        (
            "sum_over_time",
            r#"sum_over_time({env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
        (
            "avg_over_time",
            r#"avg_over_time({env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
        (
            "min_over_time",
            r#"min_over_time({env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
        (
            "max_over_time",
            r#"max_over_time({env=~".+"} | logfmt | unwrap duration(latency) [R]) by (job)"#,
            &all,
            &latency,
        ),
        (
            "stddev_over_time",
            r#"stddev_over_time({env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
        (
            "quantile_over_time",
            r#"quantile_over_time(0.9, {env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
        (
            "first_over_time",
            r#"first_over_time({env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
        (
            "last_over_time",
            r#"last_over_time({env=~".+"} | logfmt | unwrap size [R]) by (job)"#,
            &all,
            &size,
        ),
    ];
    for (step_s, range_s) in [(60i128, 300i128), (300, 600), (37, 60)] {
        let (qs, qe) = (now - 100 * minute, now);
        for (f, q, keep, value) in &cases {
            let q = q.replace("[R]", &format!("[{range_s}s]"));
            let v = query(
                api,
                "/loki/api/v1/query_range",
                &[
                    ("query", q.clone()),
                    ("start", qs.to_string()),
                    ("end", qe.to_string()),
                    ("step", step_s.to_string()),
                ],
            );
            let want = reference(
                entries,
                *keep,
                *value,
                f,
                (qs, qe, step_s * 1_000_000_000, range_s * 1_000_000_000),
            );
            assert!(
                want.values().map(Vec::len).sum::<usize>() > 20,
                "{q}: {want:?}"
            );
            let got = matrix(&v);
            assert!(
                close(&got, &want),
                "{what}: {q} step {step_s}s\n got {got:?}\nwant {want:?}"
            );
        }
    }
    // Aggregations over series, at one instant.
    let at = now;
    let counts: BTreeMap<(&str, &str), f64> = entries
        .iter()
        .filter(|e| e.ns > at - 60 * minute && e.ns <= at)
        .fold(BTreeMap::new(), |mut m, e| {
            *m.entry((e.job, e.env)).or_default() += 1.0;
            m
        });
    let instant = |q: &str| {
        query(
            api,
            "/loki/api/v1/query",
            &[("query", q.into()), ("time", at.to_string())],
        )
    };
    let values = |v: &Value| -> Vec<f64> {
        let mut out: Vec<f64> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
            .collect();
        out.sort_by(f64::total_cmp);
        out
    };
    let per_stream: Vec<f64> = {
        let mut v: Vec<f64> = counts.values().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let inner = r#"sum by (job, env) (count_over_time({env=~".+"}[1h]))"#;
    assert_eq!(
        values(&instant(&format!("max({inner})"))),
        [*per_stream.last().unwrap()],
        "{what}"
    );
    assert_eq!(
        values(&instant(&format!("min({inner})"))),
        [per_stream[0]],
        "{what}"
    );
    assert_eq!(
        values(&instant(&format!("count({inner})"))),
        [per_stream.len() as f64],
        "{what}"
    );
    let total: f64 = per_stream.iter().sum();
    let v = values(&instant(&format!("avg({inner})")));
    assert!(
        (v[0] - total / per_stream.len() as f64).abs() < 1e-9,
        "{what}"
    );
    assert_eq!(
        values(&instant(&format!("topk(2, {inner})"))),
        per_stream[per_stream.len() - 2..].to_vec()
    );
    assert_eq!(
        values(&instant(&format!("bottomk(1, {inner})"))),
        [per_stream[0]]
    );
    assert_eq!(
        values(&instant(&format!("sum({inner}) / count({inner})"))),
        [total / per_stream.len() as f64]
    );
    let over: Vec<f64> = per_stream.iter().copied().filter(|c| *c > 100.0).collect();
    assert_eq!(values(&instant(&format!("{inner} > 100"))), over, "{what}");
}

#[test]
fn logql_answers_match_a_reference_on_raw_and_compressed_segments() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::ingeststore(dir.path(), &["-store.segment-compress-after", "off"]);
    let api = node.addr("api").to_string();
    let now = i128::from(jiff::Timestamp::now().as_second()) * 1_000_000_000;
    let entries = generate(now);
    for chunk in entries.chunks(250) {
        let streams: Vec<Value> = chunk
            .iter()
            .map(|e| json!({"stream": {"job": e.job, "env": e.env}, "values": [[e.ns.to_string(), e.line]]}))
            .collect();
        let r = http(
            "POST",
            &api,
            "/loki/api/v1/push",
            json!({ "streams": streams }).to_string().as_bytes(),
        );
        assert_eq!(r.status, 204, "{}", r.text());
    }
    wait_for_records(&api, entries.len());
    check_everything(&api, &entries, now, "raw");
    // The same store, compressed by a node that converts at once.
    assert!(
        node.terminate(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
    let node = Node::ingeststore(dir.path(), &["-store.segment-compress-after", "0"]);
    let api = node.addr("api");
    eventually(Duration::from_secs(60), "every segment compressed", || {
        (metric(api, "oklog_store_raw_segments")? == 0.0).then_some(())
    });
    check_everything(api, &entries, now, "compressed");
}
