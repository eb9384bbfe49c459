//! Event time: every push protocol files a record under the time its agent sent, whatever the
//! order it arrives in. Records over 7 days are sent shuffled through Loki, OTLP,
//! Elasticsearch bulk, JSON lines and syslog; time windows, newest-first limits and hits per
//! hour are checked against a reference computed here. Entries outside the event bounds are
//! refused in each protocol's own way, counted, and the rest of their requests stored.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use common::*;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const HOUR_MS: i64 = 3_600_000;

/// One entry to send: its number (in its message as `evt-<n>`) and time in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Entry {
    n: usize,
    ns: i128,
}

impl Entry {
    fn ms(&self) -> i64 {
        (self.ns / 1_000_000) as i64
    }
    fn rfc3339(&self) -> String {
        jiff::Timestamp::from_nanosecond(self.ns)
            .unwrap()
            .to_string()
    }
}

/// The stored records: (ULID time in ms, entry number), in the order answered.
fn answered(api: &str, path: &str) -> Vec<(i64, usize)> {
    evt_answer(api, path)
        .into_iter()
        .map(|(ms, n)| (ms as i64, n as usize))
        .collect()
}

fn loki(api: &str, entries: &[Entry]) -> (u16, String) {
    let r = loki_json(
        api,
        "lk",
        entries.iter().map(|e| (e.ns, format!("loki evt-{}", e.n))),
    );
    (r.status, r.text())
}

fn otlp(api: &str, entries: &[Entry]) -> serde_json::Value {
    let records: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "timeUnixNano": e.ns.to_string(),
                "body": {"stringValue": format!("otlp evt-{}", e.n)},
            })
        })
        .collect();
    let body = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ot"}}]},
        "scopeLogs": [{"logRecords": records}],
    }]});
    let r = http_with(
        "POST",
        api,
        "/v1/logs",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn bulk(api: &str, entries: &[Entry]) -> serde_json::Value {
    let mut body = String::new();
    for e in entries {
        body.push_str("{\"create\":{\"_index\":\"es\"}}\n");
        body.push_str(
            &serde_json::json!({"@timestamp": e.rfc3339(), "message": format!("bulk evt-{}", e.n)})
                .to_string(),
        );
        body.push('\n');
    }
    let r = http_with(
        "POST",
        api,
        "/insert/elasticsearch/_bulk",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn jsonlines(api: &str, entries: &[Entry]) -> (u16, String) {
    let mut body = String::new();
    for e in entries {
        body.push_str(
            &serde_json::json!({"_time": e.rfc3339(), "_msg": format!("jsonl evt-{}", e.n)})
                .to_string(),
        );
        body.push('\n');
    }
    let r = http("POST", api, "/insert/jsonline", body.as_bytes());
    (r.status, r.text())
}

fn syslog(addr: &str, entries: &[Entry]) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for e in entries {
        // RFC 5424 allows six digits of a second's fraction.
        let t = jiff::Timestamp::from_nanosecond(e.ns)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S.%6fZ");
        writeln!(s, "<14>1 {t} host sl - - - syslog evt-{}", e.n).unwrap();
    }
    s.flush().unwrap();
}

fn refused(api: &str, protocol: &str, reason: &str) -> f64 {
    metric(
        api,
        &format!(
            "oklog_ingest_refused_entries_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

#[test]
fn records_sent_in_any_order_are_filed_under_their_own_time() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &ingeststore_args(&[]), &["api", "syslog-tcp"]);
    let api = node.addr("api");
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let now_ns = jiff::Timestamp::now().as_nanosecond();
    // 7 days back (within the 168h bound, with room for the test's own minutes) to a minute
    // ahead; every time with a sub-millisecond part.
    let span_ns: i128 = 166 * 3_600 * 1_000_000_000;
    let protocols = ["loki", "otlp", "elasticsearch", "jsonline", "syslog-tcp"];
    let per = 600;
    let mut all: Vec<Entry> = (0..per * protocols.len())
        .map(|n| Entry {
            n,
            ns: now_ns - span_ns + rng.random_range(0..span_ns + 60_000_000_000),
        })
        .collect();
    all.shuffle(&mut rng);
    let old = Entry {
        n: 1_000_000,
        ns: now_ns - 200 * 3_600 * 1_000_000_000,
    };
    let ahead = Entry {
        n: 1_000_001,
        ns: now_ns + 3_600 * 1_000_000_000,
    };
    for (p, entries) in protocols.iter().zip(all.chunks(per)) {
        for (k, batch) in entries.chunks(100).enumerate() {
            // The first batch of each protocol also carries one entry too old and one too far
            // ahead, among the others.
            let mut batch = batch.to_vec();
            if k == 0 {
                batch.insert(3, old);
                batch.insert(50, ahead);
            }
            match *p {
                "loki" => {
                    let (status, text) = loki(api, &batch);
                    if k == 0 {
                        assert_eq!(status, 400, "{text}");
                        assert!(
                            text.starts_with("2 entries refused for their time (1 too old, 1 too far ahead), the rest stored; the first, entry 4: its time ")
                                && text.contains("(-ingest.max-event-age)"),
                            "{text}"
                        );
                    } else {
                        assert_eq!(status, 204, "{text}");
                    }
                }
                "otlp" => {
                    let answer = otlp(api, &batch);
                    if k == 0 {
                        let partial = &answer["partialSuccess"];
                        assert_eq!(partial["rejectedLogRecords"], "2", "{answer}");
                        let why = partial["errorMessage"].as_str().unwrap();
                        assert!(why.contains("the first, log record 4"), "{why}");
                    } else {
                        assert_eq!(answer, serde_json::json!({}));
                    }
                }
                "elasticsearch" => {
                    let answer = bulk(api, &batch);
                    let items = answer["items"].as_array().unwrap();
                    assert_eq!(items.len(), batch.len());
                    assert_eq!(answer["errors"], k == 0, "{answer}");
                    for (i, item) in items.iter().enumerate() {
                        let status = item["create"]["status"].as_u64().unwrap();
                        let reason = item["create"]["error"]["reason"].as_str();
                        match (k, i) {
                            (0, 3) => {
                                assert_eq!(status, 400);
                                assert!(reason.unwrap().contains("-ingest.max-event-age"));
                            }
                            (0, 50) => {
                                assert_eq!(status, 400);
                                assert!(reason.unwrap().contains("-ingest.max-event-future"));
                            }
                            _ => assert_eq!(status, 201, "{item}"),
                        }
                    }
                }
                "jsonline" => {
                    let (status, text) = jsonlines(api, &batch);
                    if k == 0 {
                        assert_eq!(status, 400, "{text}");
                        assert!(text.contains("the first, line 4: its time"), "{text}");
                    } else {
                        assert_eq!(status, 200, "{text}");
                    }
                }
                _ => syslog(node.addr("syslog-tcp"), &batch),
            }
        }
    }
    let total = all.len();
    let stored = eventually(Duration::from_secs(60), "every record stored", || {
        let got = answered(
            api,
            "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        );
        assert!(got.len() <= total, "{} stored of {total}", got.len());
        (got.len() == total).then_some(got)
    });
    // Each record's ULID holds its own time, and the answer is in ULID order.
    let time_of: BTreeMap<usize, i64> = all.iter().map(|e| (e.n, e.ms())).collect();
    for (ms, n) in &stored {
        assert_eq!(*ms, time_of[n], "evt-{n}");
    }
    assert!(stored.windows(2).all(|w| w[0].0 <= w[1].0));
    for p in protocols {
        assert_eq!(refused(api, p, "too_old"), 1.0, "{p}");
        assert_eq!(refused(api, p, "too_new"), 1.0, "{p}");
    }

    // Random windows, in milliseconds, both ends included.
    let mut by_time: Vec<(i64, usize)> = all.iter().map(|e| (e.ms(), e.n)).collect();
    by_time.sort();
    let lo = by_time[0].0;
    let hi = by_time[total - 1].0;
    for _ in 0..12 {
        let a = rng.random_range(lo..=hi);
        let b = (a + rng.random_range(0..30 * HOUR_MS)).min(hi);
        let path = format!("/store/query?from={}&to={}", ms_text(a), ms_text(b));
        let mut got: Vec<usize> = answered(api, &path).into_iter().map(|(_, n)| n).collect();
        let mut want: Vec<usize> = by_time
            .iter()
            .filter(|(ms, _)| (a..=b).contains(ms))
            .map(|(_, n)| *n)
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{path}");
    }
    // Context: a record's neighbours are those of its topic in event-time order.
    let everything = http(
        "GET",
        api,
        "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        b"",
    )
    .text();
    let topic_of = |l: &str| l.split(' ').nth(1).unwrap().to_string();
    let n_of = |l: &str| {
        l.split("evt-")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .to_string()
    };
    for pick in [11, 1500, 2999] {
        let line = everything.lines().nth(pick).unwrap();
        let (topic, n) = (topic_of(line), n_of(line));
        let same: Vec<&str> = everything
            .lines()
            .filter(|l| topic_of(l) == topic)
            .collect();
        let at = same.iter().position(|l| *l == line).unwrap();
        let want: Vec<String> = same[at.saturating_sub(2)..(at + 3).min(same.len())]
            .iter()
            .map(|l| n_of(l))
            .collect();
        let r = http(
            "GET",
            api,
            &format!(
                "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&q=evt-{n}%28%5CD%7C%24%29&regex=1&before=2&after=2"
            ),
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let got: Vec<String> = r.text().lines().map(n_of).collect();
        assert_eq!(got, want, "context of evt-{n} in {topic}");
    }
    // `oklog query -time` prints each record's own time.
    let e = all[7];
    let out = std::process::Command::new(BIN)
        .args([
            "query",
            "-store",
            api,
            "-from",
            &ms_text(e.ms() - 1000),
            "-to",
            &ms_text(e.ms() + 1000),
            "-regex",
            "-q",
            &format!("evt-{}(\\D|$)", e.n),
            "-time",
        ])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let when = jiff::Timestamp::from_millisecond(e.ms())
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ ")
        .to_string();
    assert!(
        out.status.success() && text.starts_with(&when),
        "{when} in {text}"
    );
    // Newest first, with a limit: the latest event times, not the latest arrivals.
    let path = "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&order=desc&limit=40";
    let got: Vec<i64> = answered(api, path).into_iter().map(|(ms, _)| ms).collect();
    let want: Vec<i64> = by_time.iter().rev().take(40).map(|(ms, _)| *ms).collect();
    assert_eq!(got, want);

    // Hits per hour over the week spread the records over their hours.
    let (from, to) = (ms_text(lo - 8 * HOUR_MS), ms_text(hi + HOUR_MS));
    let r = http(
        "GET",
        api,
        &format!("/store/hits?from={from}&to={to}&step=1h"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let hits: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let buckets = hits["buckets"].as_array().unwrap();
    let mut counted = 0;
    let mut busy = 0;
    for b in buckets {
        let start = b["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let want = by_time
            .iter()
            .filter(|(ms, _)| (start..start + HOUR_MS).contains(ms))
            .count() as u64;
        assert_eq!(b["count"].as_u64().unwrap(), want, "{b}");
        counted += want as usize;
        busy += usize::from(want > 0);
    }
    assert_eq!(counted, total);
    assert!(busy > 150, "the records fall in {busy} hours of the week");
}
