//! Hostile clients (issue 23), each attack as a client on loopback would make it: what a
//! request names cannot grow the node's metrics or its topics; a query that cannot be
//! searched for cheaply is refused at once instead of burning CPU after its client left;
//! everything a client makes the node hold counts against one memory budget (RSS from
//! `/proc`), bodies and answers have deadlines, bulk ULIDs have time bounds, a trickle does
//! not rewrite large segments (bytes from `/proc/<pid>/io`), and a block's declared size is
//! capped. Each prints its figures.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The node's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn made_up_methods_do_not_grow_the_metrics() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let before = http("GET", api, "/metrics", b"").body.len();
    for i in 0..2000 {
        let r = http(&format!("X{i:06}"), api, "/health", b"");
        assert!(r.status >= 400, "X{i:06}: {}", r.status);
    }
    let metrics = http("GET", api, "/metrics", b"").text();
    assert!(
        !metrics.contains("X000"),
        "a client's method became a label"
    );
    assert!(
        metrics.contains(r#"method="other""#),
        "made-up methods are counted as other"
    );
    assert!(
        metrics.len() < before + 16 * 1024,
        "/metrics grew from {before} to {} bytes",
        metrics.len()
    );
}

#[test]
fn a_topic_bomb_is_refused_at_once_and_costs_no_cpu_after() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let out = forward(node.addr("fast"), b"honest record\n", &[]);
    assert!(out.status.success());
    wait_for_records(api, 1);
    let pid = node.child.id();
    let bomb = format!("{}a", "*".repeat(60_000));
    for path in [
        "/store/query",
        "/store/_query",
        "/store/hits",
        "/store/topics",
    ] {
        let started = Instant::now();
        let r = http(
            "GET",
            api,
            &format!("{path}?from=2000-01-01T00:00:00Z&limit=1&topic={bomb}"),
            b"",
        );
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("at most 256"), "{path}: {}", r.text());
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    let many: String = (0..100).map(|i| format!("&topic=t{i}")).collect();
    let r = http("GET", api, &format!("/store/query?q=x{many}"), b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("at most 64"), "{}", r.text());
    // Nothing is left running: the node is idle a moment later, and honest queries answer.
    let idle_from = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2)); // measuring idleness: nothing to wait for
    let spent = cpu_ticks(pid) - idle_from;
    assert!(spent < 50, "{spent} ticks of CPU in 2 s after the bombs");
    assert_eq!(all_records(api).len(), 1);
}

#[test]
fn a_bad_stream_window_is_a_400_and_a_huge_topic_value_is_cut() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let r = http("GET", api, "/store/stream?q=x&window=abc", b"");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("parsing 'window'"), "{}", r.text());
    // A Loki stream whose topic label is 60 KB: the record's topic is cut to 256 bytes. A
    // label of a megabyte is refused whole, naming the limit.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let push = |job: &str| {
        let body = format!(
            r#"{{"streams":[{{"stream":{{"job":"{job}"}},"values":[["{now}","big topic"]]}}]}}"#
        );
        http_with(
            "POST",
            api,
            "/loki/api/v1/push",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let r = push(&"j".repeat(1 << 20));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("value of 1048576 bytes (at most 65536)"),
        "{}",
        r.text()
    );
    let r = push(&"j".repeat(60_000));
    assert_eq!(r.status, 204, "{}", r.text());
    let records = wait_for_records(api, 1);
    assert_eq!(records.len(), 1, "nothing of the refused push was stored");
    let topic = records[0][27..].split(|&b| b == b' ').next().unwrap();
    assert_eq!(topic.len(), 256, "the topic is cut to 256 bytes");
    assert!(topic.iter().all(|&b| b == b'j'));
}

#[test]
fn oklog_segment_reads_regular_files_only() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.flushed");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (cmd, file) in [
        ("cat", "/dev/zero"),
        ("info", "/dev/zero"),
        ("cat", fifo.to_str().unwrap()),
        ("info", fifo.to_str().unwrap()),
    ] {
        let started = Instant::now();
        let mut child = std::process::Command::new(BIN)
            .args(["segment", cmd, file])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = eventually(Duration::from_secs(10), "oklog segment to give up", || {
            child.try_wait().unwrap()
        });
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{cmd} {file}: {err}");
        assert!(err.contains("not a regular file"), "{cmd} {file}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{cmd} {file}");
    }
    // A regular file that is no segment: described, not a panic.
    let junk = dir.path().join("junk.flushed");
    std::fs::write(&junk, b"a\nb").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["segment", "info", junk.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("records   2") && text.contains("time      ? .. ?"),
        "{text}"
    );
}

#[test]
fn a_node_open_beyond_loopback_without_credentials_says_so() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Bound to every interface (nothing is sent there: only the start-up log is read).
    let open = Node::ingeststore(&dir.path().join("open"), &["-api", "0.0.0.0:0"]);
    let warning = "the API listens beyond loopback with no credentials configured";
    eventually(Duration::from_secs(10), "the warning", || {
        open.log_text().contains(warning).then_some(())
    });
    let local = Node::ingeststore(&dir.path().join("local"), &[]);
    assert!(!local.log_text().contains(warning), "{}", local.log_text());
}

/// A store directory holding one raw segment of about `mib` MiB of lines in the last hour.
fn big_store(store: &std::path::Path, mib: usize) {
    std::fs::create_dir_all(store).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let n = (mib << 20) / 100;
    let mut body = Vec::with_capacity(mib << 20);
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = oklog::record::encode_ulid(
            now - 3_000_000 + (i as u64 * 3_000_000 / n as u64),
            i as u128,
        );
        if i == 0 {
            first = id.to_vec();
        }
        last = id.to_vec();
        body.extend_from_slice(&id);
        body.extend_from_slice(
            format!(
                " app worker {i:09} handled request in {} ms with status ok\n",
                i % 997
            )
            .as_bytes(),
        );
    }
    let name = format!(
        "{}-{}.flushed",
        String::from_utf8(first).unwrap(),
        String::from_utf8(last).unwrap()
    );
    std::fs::write(store.join(name), body).unwrap();
}

/// Start a query that finds nothing in a big store (a regex the engine must try on every
/// line), and leave it unread.
fn start_slow_query(api: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    let q =
        "/store/query?from=2000-01-01T00:00:00Z&regex=1&q=%5BA-Z%5D%5Ba-z%5D%2B%5B0-9%5D%7B5%7DQ";
    std::io::Write::write_all(
        &mut s,
        format!("GET {q} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s
}

#[test]
fn a_search_stops_when_its_client_leaves_and_when_the_node_stops() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    big_store(&dir.path().join("data/store"), 200);
    let mut node = Node::ingeststore(dir.path(), &["-store.segment-compress-after", "off"]);
    let api = node.addr("api").to_string();
    let pid = node.child.id();
    // A client that leaves: the search behind it stops, though it never had output to write.
    let busy_from = cpu_ticks(pid);
    let client = start_slow_query(&api);
    std::thread::sleep(Duration::from_millis(500)); // the search is under way
    assert!(
        cpu_ticks(pid) - busy_from > 10,
        "the query keeps the node busy (else this test shows nothing)"
    );
    drop(client);
    std::thread::sleep(Duration::from_millis(300)); // the node notices, within 100 ms
    let idle_from = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2)); // measuring idleness
    let spent = cpu_ticks(pid) - idle_from;
    assert!(
        spent < 30,
        "{spent} ticks of CPU in 2 s after the client left"
    );
    // A search under way when the node is told to stop: the node ends all the same.
    let _client = start_slow_query(&api);
    std::thread::sleep(Duration::from_millis(500)); // the search is under way
    let started = Instant::now();
    let status = node
        .terminate(Duration::from_secs(15))
        .expect("the node ends");
    assert!(status.success(), "{}", node.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped after {:?}",
        started.elapsed()
    );
}

#[test]
fn relative_and_far_times_and_broken_uploads_are_answered_sensibly() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    let out = forward(node.addr("fast"), b"recent record\n", &[]);
    assert!(out.status.success());
    wait_for_records(api, 1);
    // The docs' `from=2h`: two hours ago, as the CLI reads it.
    let r = http("GET", api, "/store/query?from=2h&q=recent", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("recent record"));
    // The last day RFC 3339 can name is written back as it is, not as 1970; a ULID past it
    // (the year 10889) is a 400.
    let r = http("HEAD", api, "/store/query?to=9999-12-31T00:00:00Z", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Oklog-To"), Some("9999-12-31T00:00:00Z"));
    let r = http(
        "GET",
        api,
        "/store/query?to=7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("9999-12-31"), "{}", r.text());
    // Fifty uploads that break off: each refused, the log line written once a second at most.
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(api).unwrap();
        std::io::Write::write_all(
            &mut s,
            b"POST /store/replicate HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    }
    eventually(Duration::from_secs(10), "the refusals counted", || {
        (metric(api, "oklog_store_rejected_replicas_total") == Some(50.0)).then_some(())
    });
    let lines = node
        .log_text()
        .lines()
        .filter(|l| l.contains("replicate body broke off"))
        .count();
    assert!(
        (1..=10).contains(&lines),
        "{lines} log lines for 50 broken uploads"
    );
}

#[test]
fn a_request_head_over_256_kib_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    for (kib, want) in [(100, 200), (300, 431), (420, 431), (1024, 431)] {
        let value = "a".repeat(kib << 10);
        let r = http_with("GET", api, "/health", &[("X-Big", &value)], b"");
        assert_eq!(r.status, want, "a {kib} KiB header");
    }
    assert_eq!(http("GET", api, "/health", b"").status, 200, "unhurt");
}

/// `n` lines `rec <n> xxx...` of 93 bytes, to forward.
fn rec_lines(n: usize) -> Vec<u8> {
    let mut input = Vec::with_capacity(n * 93);
    for i in 0..n {
        input.extend_from_slice(format!("rec {i:07} {}\n", "x".repeat(80)).as_bytes());
    }
    input
}

/// `data` gzipped.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, data).unwrap();
    gz.finish().unwrap()
}

/// A whole Elasticsearch bulk request of gzipped `body`, as bytes to send.
fn es_bulk_request(api: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /insert/elasticsearch/_bulk HTTP/1.1\r\nHost: {api}\r\nContent-Encoding: gzip\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// An OTLP protobuf request: one resource with `attrs` attributes and `records` records.
fn otlp_bomb(attrs: usize, records: usize) -> Vec<u8> {
    use oklog::ingest::protocols::otlp::*;
    use prost::Message;
    let text = |s: String| {
        Some(AnyValue {
            value: Some(AnyKind::String(s)),
        })
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: (0..attrs)
                    .map(|i| KeyValue {
                        key: format!("a{i}"),
                        value: text("x".into()),
                    })
                    .collect(),
            }),
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: (0..records)
                    .map(|i| LogRecord {
                        body: text(format!("record {i}")),
                        ..Default::default()
                    })
                    .collect(),
            }],
        }],
    }
    .encode_to_vec()
}

/// A Loki JSON push: one stream with `labels` labels and `entries` entries.
fn loki_bomb(labels: usize, entries: usize) -> Vec<u8> {
    let labels: Vec<String> = (0..labels).map(|i| format!(r#""l{i}":"v""#)).collect();
    let values: Vec<String> = (0..entries)
        .map(|i| {
            format!(
                r#"["{}","line {i}"]"#,
                1_700_000_000_000_000_000u64 + i as u64
            )
        })
        .collect();
    format!(
        r#"{{"streams":[{{"stream":{{{}}},"values":[{}]}}]}}"#,
        labels.join(","),
        values.join(",")
    )
    .into_bytes()
}

/// 60 MB of tiny JSON lines, gzipped (about 85 KB).
fn tiny_lines_bomb() -> Vec<u8> {
    gzip(&b"{\"a\":1}\n".repeat(60_000_000 / 8))
}

/// [`at_once`], each answered with one of `allowed`: the statuses.
fn at_once_answered(
    api: &str,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    allowed: &[u16],
) -> Vec<u16> {
    let statuses = at_once(api, n, path, headers, body);
    assert!(
        statuses.iter().all(|s| allowed.contains(s)),
        "{path}: {statuses:?}, each one of {allowed:?}"
    );
    statuses
}

/// `n` copies of a request sent at once; their statuses.
fn at_once(api: &str, n: usize, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u16> {
    let body = std::sync::Arc::new(body.to_vec());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (api, path, body, headers) = (
                api.to_string(),
                path.to_string(),
                body.clone(),
                headers.clone(),
            );
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                http_partial("POST", &api, &path, &h, &body).status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// An honest agent pushing one small Loki request every 100 ms until `stop`; each push is
/// retried after a 503 as agents do (Retry-After: 1). Returns (pushed, 503s seen, failures).
fn honest_pusher(
    api: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u32, u32, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut pushed, mut busy, mut failed) = (0, 0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let body = format!(
                r#"{{"streams":[{{"stream":{{"job":"honest"}},"values":[["{now}","honest {pushed}"]]}}]}}"#
            );
            let started = Instant::now();
            loop {
                let r = http_with(
                    "POST",
                    &api,
                    "/loki/api/v1/push",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                );
                match r.status {
                    204 => break,
                    503 if started.elapsed() < Duration::from_secs(10) => {
                        busy += 1;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    s => {
                        failed.push(format!("{s} after {:?}: {}", started.elapsed(), r.text()));
                        break;
                    }
                }
            }
            pushed += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (pushed, busy, failed)
    })
}

#[test]
fn push_bombs_stay_within_the_memory_budget_and_honest_pushes_go_on() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api").to_string();
    let pid = node.child.id();
    let (_, rss_start) = threads_and_rss(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let honest = honest_pusher(api.clone(), std::sync::Arc::clone(&stop));
    let peak = PeakRss::start(pid);

    // OTLP requests of 100,000 resource attributes × 300 records (1.5 MB each; they held
    // 446 MB each, six at once 1.6 GB): a 400 naming the limit, at once; 32 at once (as many as
    // are served) hold their parse trees within the budget, the rest a 503.
    let otlp = otlp_bomb(100_000, 300);
    eprintln!("OTLP bomb: {} KB", otlp.len() >> 10);
    let r = http_with(
        "POST",
        &api,
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        &otlp,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("more than 256"), "{}", r.text());
    at_once_answered(
        &api,
        32,
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        &otlp,
        &[400, 503],
    );

    // Loki requests of 100,000 labels × 300 entries (384 MB each).
    let loki = loki_bomb(100_000, 300);
    let statuses = at_once_answered(
        &api,
        32,
        "/loki/api/v1/push",
        &[("Content-Type", "application/json")],
        &loki,
        &[400, 503],
    );
    assert!(statuses.contains(&400), "{statuses:?}");

    // Thirty gzip bodies of 60 MB of tiny JSON lines (about 120 KB each as sent).
    let gz = tiny_lines_bomb();
    eprintln!("tiny-lines bomb: {} KB of gzip", gz.len() >> 10);
    let statuses = at_once_answered(
        &api,
        30,
        "/insert/jsonline",
        &[("Content-Encoding", "gzip")],
        &gz,
        &[413, 503],
    );
    assert!(statuses.contains(&413), "{statuses:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (pushed, busy, failed) = honest.join().unwrap();
    let peak = peak.stop();
    eprintln!(
        "RssAnon: start {} MiB, peak {} MiB; honest pushes: {pushed}, {busy} retried after a 503",
        rss_start >> 10,
        peak >> 10,
    );
    assert!(failed.is_empty(), "honest pushes failed: {failed:?}");
    assert!(pushed >= 5, "{pushed} honest pushes");
    assert!(peak < 512 << 10, "peak RssAnon {} MiB", peak >> 10);
    // Nothing of a refused request was stored; every honest push was.
    let records = wait_for_records(&api, pushed as usize);
    assert_eq!(records.len() as u32, pushed, "only the honest records");
    assert!(
        records
            .iter()
            .all(|r| r.windows(7).any(|w| w == b"honest "))
    );
    // Memory goes back once the bombs are over.
    let (_, after) = settled(pid, rss_start.max(16 << 10) * 2);
    eprintln!("RssAnon after: {} MiB", after >> 10);
    assert!(
        after < rss_start.max(16 << 10) * 2,
        "{} MiB after, {} MiB at the start",
        after >> 10,
        rss_start >> 10
    );
}

/// A request whose head is sent, then its body one byte every `every` from a thread, until the
/// server answers or closes; returns the socket's reader end for the answer.
fn trickle(api: &str, head: &str, every: Duration) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(every);
            if std::io::Write::write_all(&mut w, b"1\r\n{\r\n").is_err() {
                return;
            }
        }
    });
    s
}

/// What a trickling client reads: its status, or 0 when the connection just closed.
fn answer_status(s: &mut std::net::TcpStream, within: Duration) -> u16 {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    match std::io::Read::read(s, &mut buf) {
        Ok(0) => 0,
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            text.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        }
        Err(e) => panic!("no answer within {within:?}: {e}"),
    }
}

#[test]
fn trickled_bodies_hold_nothing_and_end_at_their_deadline() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &["-api.body-timeout", "3s"]);
    let api = node.addr("api").to_string();
    // Chunked pushes that send a byte a second (each under the idle timeout), and one that
    // declares 64 MiB: they held the whole 256 MiB push budget and every other push waited.
    let started = Instant::now();
    let mut trickles: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            trickle(
                &api,
                "POST /insert/jsonline HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Duration::from_millis(700),
            )
        })
        .collect();
    trickles.push(trickle(
        &api,
        "POST /insert/jsonline HTTP/1.1\r\nHost: a\r\nContent-Length: 67108863\r\n\r\n",
        Duration::from_millis(700),
    ));
    std::thread::sleep(Duration::from_millis(500));
    let held = metric(&api, "oklog_memory_budget_held_bytes").unwrap();
    assert!(held < (1 << 20) as f64, "trickles hold {held} bytes");
    // Honest pushes meanwhile: answered at once.
    for i in 0..5 {
        let t = Instant::now();
        let body = format!("{{\"_msg\":\"honest {i}\"}}\n");
        let r = http("POST", &api, "/insert/jsonline", body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // Each trickle ends at its deadline (3 s; the 64 MiB one has 64 s more for its size),
    // not when it stops trickling.
    for (n, s) in trickles.iter_mut().enumerate().take(4) {
        let status = answer_status(s, Duration::from_secs(10));
        assert!(status == 400 || status == 0, "trickle {n}: {status}");
    }
    let ended = started.elapsed();
    eprintln!("chunked trickles ended after {ended:?}");
    assert!(
        ended >= Duration::from_secs(3) && ended < Duration::from_secs(8),
        "{ended:?}"
    );
    assert_eq!(all_records(&api).len(), 5, "only the honest records");

    // Replica uploads that trickle: at most 64 are received at once (one more is a 503 at
    // once), and each ends at its deadline with its `.active` file removed.
    let head = "POST /store/replicate HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let uploads: Vec<std::net::TcpStream> = (0..64)
        .map(|_| trickle(&api, head, Duration::from_millis(700)))
        .collect();
    let active = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("data/store"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".active")
            })
            .count()
    };
    eventually(Duration::from_secs(5), "64 uploads received", || {
        (active(dir.path()) == 64).then_some(())
    });
    let mut extra = trickle(&api, head, Duration::from_millis(700));
    assert_eq!(answer_status(&mut extra, Duration::from_secs(3)), 503);
    drop(uploads);
    eventually(
        Duration::from_secs(10),
        "the uploads' files removed",
        || (active(dir.path()) == 0).then_some(()),
    );
}

/// Send a request and never read its answer: the socket, to hold open.
fn never_read(api: &str, request: &[u8]) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    std::io::Write::write_all(&mut s, request).unwrap();
    s
}

#[test]
fn clients_that_never_read_give_back_their_answers_and_query_slots() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &["-api.write-timeout", "2s"]);
    let api = node.addr("api").to_string();
    let pid = node.child.id();
    let input = rec_lines(200_000);
    assert!(forward(node.addr("fast"), &input, &[]).status.success());
    wait_for_records(&api, 200_000);
    let (_, rss_start) = threads_and_rss(pid);

    // As many query clients as there are query slots, asking for 20 MB and reading nothing:
    // every other query was a 503 for 50 s. Now each loses its connection, and its slot,
    // after 2 s of taking nothing.
    let query =
        format!("GET /store/query?from=2000-01-01T00:00:00Z&q=rec HTTP/1.1\r\nHost: {api}\r\n\r\n");
    let stuck: Vec<_> = (0..32)
        .map(|_| never_read(&api, query.as_bytes()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let r = http(
        "GET",
        &api,
        "/store/query?from=2000-01-01T00:00:00Z&q=rec+0000001",
        b"",
    );
    assert_eq!(r.status, 503, "all slots are taken: {}", r.text());
    let t = Instant::now();
    let lines = eventually(Duration::from_secs(10), "a query answered", || {
        let r = http(
            "GET",
            &api,
            "/store/query?from=2000-01-01T00:00:00Z&q=rec+0000001",
            b"",
        );
        (r.status == 200).then(|| r.text().lines().count())
    });
    eprintln!(
        "a query was answered {:?} after the slots were taken",
        t.elapsed()
    );
    assert_eq!(lines, 1);
    drop(stuck);

    // Eight Elasticsearch bulk clients sending a million one-line documents each (about
    // 30 KB of gzip) and never reading the answer (168 MB each, built whole, held 1.34 GB
    // for 45 s): answers are written as they are read, and dropped with their connections.
    let docs = b"{\"create\":{}}\n{\"m\":1}\n".repeat(1_000_000);
    let gz = gzip(&docs);
    eprintln!("bulk body: {} KB of gzip", gz.len() >> 10);
    let request = es_bulk_request(&api, &gz);
    let peak = PeakRss::start(pid);
    let bulks: Vec<_> = (0..8).map(|_| never_read(&api, &request)).collect();
    // Honest traffic goes on meanwhile.
    for i in 0..10 {
        let body = format!("{{\"_msg\":\"honest {i}\"}}\n");
        let r = http("POST", &api, "/insert/jsonline", body.as_bytes());
        assert!(r.status == 200 || r.status == 503, "{}", r.text());
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = http(
        "GET",
        &api,
        "/store/query?from=2000-01-01T00:00:00Z&q=rec+0000002",
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Each bulk is stored (or refused for want of memory), answered in part, and cut off.
    std::thread::sleep(Duration::from_secs(6));
    let peak = peak.stop();
    drop(bulks);
    let (_, after) = settled(pid, rss_start.max(16 << 10) * 2);
    eprintln!(
        "RssAnon: {} MiB before, peak {} MiB, {} MiB after",
        rss_start >> 10,
        peak >> 10,
        after >> 10
    );
    assert!(peak < 512 << 10, "peak RssAnon {} MiB", peak >> 10);
    assert!(
        after < rss_start.max(16 << 10) * 2,
        "{} MiB after",
        after >> 10
    );
    assert_eq!(metric(&api, "oklog_memory_budget_held_bytes"), Some(0.0));
}

/// A connection that writes `head` and then `body` in 1 MiB pieces from a thread, until a
/// write fails or stays blocked for 2 s (the server stopped reading).
fn flood_conn(addr: &str, head: Vec<u8>, body_len: usize) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        if std::io::Write::write_all(&mut w, &head).is_err() {
            return;
        }
        let piece = vec![b'a'; 1 << 20];
        let mut sent = 0;
        while sent < body_len {
            let n = piece.len().min(body_len - sent);
            if std::io::Write::write_all(&mut w, &piece[..n]).is_err() {
                return;
            }
            sent += n;
        }
    });
    s
}

#[test]
fn ingest_buffers_and_streams_share_one_budget() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let budget = 64usize << 20;
    let node = Node::ingeststore(
        dir.path(),
        &[
            "-api.memory-budget",
            &budget.to_string(),
            "-api.body-timeout",
            "4s",
        ],
    );
    let api = node.addr("api").to_string();
    let syslog = listening(&node.log_text())["syslog-tcp"].clone();
    let pid = node.child.id();
    let (_, rss_start) = threads_and_rss(pid);
    let peak = PeakRss::start(pid);

    // Ten syslog connections, each in the middle of a 60 MB frame (they held 41 MB each), and
    // five bulk connections in the middle of a 64 MiB batch (64 MiB each).
    let syslogs: Vec<_> = (0..10)
        .map(|_| flood_conn(&syslog, b"60000000 ".to_vec(), 30 << 20))
        .collect();
    let mut bulk_head = b"OKLOG-BULK/1\n".to_vec();
    bulk_head.extend_from_slice(&((64u32 << 20) - 1).to_be_bytes());
    let bulks: Vec<_> = (0..5)
        .map(|_| flood_conn(node.addr("bulk"), bulk_head.clone(), 60 << 20))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let held = metric(&api, "oklog_memory_budget_held_bytes").unwrap();
    let (_, rss) = threads_and_rss(pid);
    eprintln!(
        "syslog and bulk floods: {} MiB held of the budget, RssAnon {} MiB",
        held as u64 >> 20,
        rss >> 10
    );
    assert!(held <= budget as f64, "{held}");
    // A push finds no room now: a 503 with the reason. Once the unfinished frames and
    // batches reach their deadline (4 s), their connections are closed and pushes go on.
    let r = http("POST", &api, "/insert/jsonline", b"{\"_msg\":\"early\"}\n");
    assert!(r.status == 200 || r.status == 503, "{}", r.text());
    if r.status == 503 {
        assert!(r.text().contains("-api.memory-budget"), "{}", r.text());
    }
    eventually(Duration::from_secs(10), "a push stored", || {
        let r = http("POST", &api, "/insert/jsonline", b"{\"_msg\":\"honest\"}\n");
        (r.status == 200).then_some(())
    });
    eventually(
        Duration::from_secs(10),
        "the floods' memory given back",
        || {
            let held = metric(&api, "oklog_memory_budget_held_bytes").unwrap();
            (held < (1 << 20) as f64).then_some(())
        },
    );
    drop((syslogs, bulks));

    // Forty live streams that never read (they reached 570 MB): each holds room in the
    // budget to start, and sheds what it would hold past it; those that find no room get a
    // 503. A reading stream still sees every record.
    let stream_req = "GET /store/stream?q=rec HTTP/1.1\r\nHost: a\r\n\r\n";
    let stuck: Vec<_> = (0..40)
        .map(|_| never_read(&api, stream_req.as_bytes()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let streams = metric(&api, "oklog_store_streams").unwrap();
    eprintln!("{streams} of 40 stuck streams started");
    assert!((10.0..40.0).contains(&streams), "{streams}");
    let input = rec_lines(400_000);
    assert!(forward(node.addr("fast"), &input, &[]).status.success());
    wait_for_records(&api, 400_002);
    std::thread::sleep(Duration::from_secs(1));
    let held = metric(&api, "oklog_memory_budget_held_bytes").unwrap();
    let peak = peak.stop();
    eprintln!(
        "RssAnon: {} MiB at the start, peak {} MiB; streams hold {} MiB of the budget",
        rss_start >> 10,
        peak >> 10,
        held as u64 >> 20
    );
    // What a stream took for its client and could not yet send is counted past the budget
    // (a chunk or two each).
    assert!(held <= (budget + (16 << 20)) as f64, "{held}");
    // The budget, the ingest's own buffers and the reading side: well under the 570 MB.
    assert!(
        peak < (budget as u64 >> 10) + (128 << 10),
        "peak RssAnon {} MiB",
        peak >> 10
    );
    drop(stuck);
    let (_, after) = settled(pid, rss_start.max(16 << 10) * 2);
    eprintln!("RssAnon after: {} MiB", after >> 10);
    assert!(after < rss_start.max(16 << 10) * 2, "{} MiB", after >> 10);
}

/// Bytes the process has caused to be written to storage so far (`write_bytes` in
/// `/proc/<pid>/io`).
fn written_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn bulk_ulids_outside_the_event_bounds_are_refused_and_rewrite_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &["-store.segment-compress-after", "0s"]);
    let api = node.addr("api").to_string();
    let pid = node.child.id();
    let input = rec_lines(20_000);
    assert!(forward(node.addr("fast"), &input, &[]).status.success());
    wait_for_records(&api, 20_000);
    eventually(Duration::from_secs(60), "the store compressed", || {
        (metric(&api, "oklog_store_raw_segments") == Some(0.0)).then_some(())
    });
    let before = written_bytes(pid);
    // One batch holding the smallest and the largest ULID (it made compaction rewrite every
    // compressed segment, and left a record in the year 10889, never expired): refused with
    // the reason, nothing stored.
    let talk = |batch: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(node.addr("bulk")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let frame = [
            &b"OKLOG-BULK/1\n"[..],
            &(batch.len() as u32).to_be_bytes(),
            batch,
        ]
        .concat();
        std::io::Write::write_all(&mut s, &frame).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
        line.trim_end().to_string()
    };
    let answer = talk(b"00000000000000000000000000 a\n7ZZZZZZZZZZZZZZZZZZZZZZZZZ b\n");
    assert!(
        answer.starts_with("ERR the first record's ULID: its time 1970-01-01T00:00:00.000Z is more than 168h0m0s before now (-ingest.max-event-age)"),
        "{answer}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let now_id = oklog::record::encode_ulid(now, 0);
    let ahead = [&now_id[..], b" a\n7ZZZZZZZZZZZZZZZZZZZZZZZZZ b\n"].concat();
    let answer = talk(&ahead);
    assert!(
        answer.contains("the last record's ULID: its time past 9999-12-31T23:59:59.999Z")
            && answer.contains("more than 10m0s after now (-ingest.max-event-future)"),
        "{answer}"
    );
    // The same straight to a store's replicate endpoint: refused too.
    let r = http("POST", &api, "/store/replicate", &ahead);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("more than 30 days after now"),
        "{}",
        r.text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let written = written_bytes(pid) - before;
    eprintln!("written after the refused batches: {written} bytes");
    assert!(written < 1 << 20, "{written} bytes written");
    assert_eq!(all_records(&api).len(), 20_000, "nothing of them stored");
    // A batch within the bounds is stored.
    let good = [&now_id[..], b" fine\n"].concat();
    assert_eq!(talk(&good), "OK 1");
}

#[test]
fn a_block_that_declares_a_gigabyte_is_refused_without_allocating_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flags = ["-store.segment-compress-after", "0s"];
    let mut node = Node::ingeststore(dir.path(), &flags);
    let input = rec_lines(20_000);
    assert!(forward(node.addr("fast"), &input, &[]).status.success());
    let api = node.addr("api").to_string();
    wait_for_records(&api, 20_000);
    eventually(Duration::from_secs(60), "the store compressed", || {
        (metric(&api, "oklog_store_raw_segments") == Some(0.0)).then_some(())
    });
    assert!(node.terminate(Duration::from_secs(20)).is_some());
    drop(node);
    // Make the last block of a compressed segment declare 1 GiB, its index checksum made
    // right again, as a hand-made file would.
    let store = dir.path().join("data/store");
    let path = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "flushed")
                && std::fs::read(p).unwrap().starts_with(b"OKLOGSEG")
        })
        .expect("a compressed segment");
    let mut file = std::fs::read(&path).unwrap();
    let trailer = file.len() - 32;
    let index_at = u64::from_le_bytes(file[trailer..trailer + 8].try_into().unwrap()) as usize;
    let index_len =
        u64::from_le_bytes(file[trailer + 8..trailer + 16].try_into().unwrap()) as usize;
    let last_block = index_at + index_len - 98;
    file[last_block + 12..last_block + 16].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let crc = crc32fast::hash(&file[index_at..index_at + index_len]);
    file[trailer + 16..trailer + 20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &file).unwrap();

    let node = Node::ingeststore(dir.path(), &flags);
    let api = node.addr("api").to_string();
    let pid = node.child.id();
    let peak = PeakRss::start(pid);
    for _ in 0..3 {
        let r = http_partial(
            "GET",
            &api,
            "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
            &[("TE", "trailers")],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.trailers.get("x-oklog-corrupt-blocks").map(String::as_str),
            Some("1"),
            "the block is reported, not read"
        );
        let n = r.body.split(|&b| b == b'\n').count() - 1;
        assert!(
            n > 0 && n < 20_000,
            "{n} records: every other block is served"
        );
    }
    let peak = peak.stop();
    eprintln!("peak RssAnon while querying: {} MiB", peak >> 10);
    assert!(peak < 128 << 10, "{} MiB", peak >> 10);
}

#[test]
fn a_trickle_next_to_a_large_segment_does_not_rewrite_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // A target of 80 MiB: the 45 MB below are merged into one segment of half of it or more.
    let node = Node::ingeststore(
        dir.path(),
        &[
            "-store.segment-settle",
            "2s",
            "-store.segment-target-size",
            "83886080",
        ],
    );
    let api = node.addr("api").to_string();
    let pid = node.child.id();
    let input = rec_lines(400_000);
    assert!(forward(node.addr("fast"), &input, &[]).status.success());
    wait_for_records(&api, 400_000);
    let store = dir.path().join("data/store");
    let largest = || {
        std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "flushed"))
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .max()
            .unwrap_or(0)
    };
    let big = eventually(Duration::from_secs(60), "a large segment", || {
        let n = largest();
        (n >= 40 << 20).then_some(n)
    });
    eprintln!("the large segment: {} MiB", big >> 20);
    // Let the lifecycle finish what it does with the rest.
    std::thread::sleep(Duration::from_secs(7));
    let before = written_bytes(pid);
    // Thirty lines over 15 s, each its own small segment (a forwarder that stays connected).
    let mut fwd = std::process::Command::new(BIN)
        .args(["forward", node.addr("fast")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = fwd.stdin.take().unwrap();
    for i in 0..30 {
        std::io::Write::write_all(&mut stdin, format!("trickle {i}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(stdin);
    assert!(fwd.wait().unwrap().success());
    wait_for_records(&api, 400_030);
    // Time for the lifecycle to merge what it would (steps come every 6 s).
    std::thread::sleep(Duration::from_secs(13));
    let written = written_bytes(pid) - before;
    eprintln!(
        "written while 30 lines trickled in next to the large segment: {} KiB",
        written >> 10
    );
    assert!(written < 4 << 20, "{} KiB written", written >> 10);
    assert_eq!(all_records(&api).len(), 400_030);
}

#[test]
fn every_attack_at_once_stays_under_512_mib_and_honest_clients_are_answered() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // The defaults, but for deadlines short enough for a test.
    let node = Node::ingeststore(
        dir.path(),
        &["-api.body-timeout", "5s", "-api.write-timeout", "5s"],
    );
    let api = node.addr("api").to_string();
    let syslog = listening(&node.log_text())["syslog-tcp"].clone();
    let pid = node.child.id();
    let (_, rss_start) = threads_and_rss(pid);
    let peak = PeakRss::start(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let honest = honest_pusher(api.clone(), std::sync::Arc::clone(&stop));
    let querier = {
        let (api, stop) = (api.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut answered, mut busy) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http("GET", &api, "/store/query?from=1h&q=honest", b"");
                match r.status {
                    200 => answered += 1,
                    503 => busy += 1,
                    s => panic!("an honest query: {s} {}", r.text()),
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (answered, busy)
        })
    };
    // Stuck streams, ingest floods, and clients that never read their answers.
    let stream_req = "GET /store/stream?q=rec HTTP/1.1\r\nHost: a\r\n\r\n";
    let streams: Vec<_> = (0..40)
        .map(|_| never_read(&api, stream_req.as_bytes()))
        .collect();
    let syslogs: Vec<_> = (0..10)
        .map(|_| flood_conn(&syslog, b"60000000 ".to_vec(), 30 << 20))
        .collect();
    let mut bulk_head = b"OKLOG-BULK/1\n".to_vec();
    bulk_head.extend_from_slice(&((64u32 << 20) - 1).to_be_bytes());
    let bulks: Vec<_> = (0..5)
        .map(|_| flood_conn(node.addr("bulk"), bulk_head.clone(), 60 << 20))
        .collect();
    let docs = b"{\"create\":{}}\n{\"m\":1}\n".repeat(300_000);
    let gz = gzip(&docs);
    let es = es_bulk_request(&api, &gz);
    let es_clients: Vec<_> = (0..8).map(|_| never_read(&api, &es)).collect();
    let input = rec_lines(200_000);
    assert!(forward(node.addr("fast"), &input, &[]).status.success());
    // Push bombs on top.
    let otlp = otlp_bomb(100_000, 300);
    at_once_answered(
        &api,
        16,
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        &otlp,
        &[400, 503],
    );
    let gz = tiny_lines_bomb();
    at_once_answered(
        &api,
        16,
        "/insert/jsonline",
        &[("Content-Encoding", "gzip")],
        &gz,
        &[413, 503],
    );
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (pushed, busy, failed) = honest.join().unwrap();
    let (answered, queries_busy) = querier.join().unwrap();
    let peak = peak.stop();
    drop((streams, syslogs, bulks, es_clients));
    eprintln!(
        "all at once: RssAnon peak {} MiB (start {} MiB); honest pushes {pushed} ({busy} retried after a 503), queries {answered} answered, {queries_busy} busy",
        peak >> 10,
        rss_start >> 10
    );
    assert!(failed.is_empty(), "honest pushes failed: {failed:?}");
    assert!(
        pushed >= 5 && answered >= 5,
        "{pushed} pushes, {answered} queries"
    );
    assert!(peak < 512 << 10, "peak RssAnon {} MiB", peak >> 10);
    let (_, after) = settled(pid, rss_start.max(16 << 10) * 2);
    eprintln!("RssAnon after: {} MiB", after >> 10);
    assert!(
        after < rss_start.max(16 << 10) * 2,
        "{} MiB after",
        after >> 10
    );
}
