//! A single `ingeststore` node end to end: real processes on 127.0.0.1, real log files.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const ALL_TIME: [&str; 4] = [
    "-from",
    "2000-01-01T00:00:00Z",
    "-to",
    "2100-01-01T00:00:00Z",
];

/// The lines of a file as the ingester stores them: split at `\n`, a `\r` before it dropped, a
/// final line without `\n` kept.
fn lines_of(data: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = data
        .split_inclusive(|&b| b == b'\n')
        .map(|l| {
            let l = l.strip_suffix(b"\n").unwrap_or(l);
            if data.ends_with(l) && !data.ends_with(b"\n") {
                l.to_vec() // the final unterminated line keeps a trailing \r
            } else {
                l.strip_suffix(b"\r").unwrap_or(l).to_vec()
            }
        })
        .collect();
    if data.is_empty() {
        lines.clear();
    }
    lines
}

fn body(record: &[u8]) -> &[u8] {
    &record[27..record.len() - 1]
}

fn query_cli(api: &str, q: &str, regex: bool) -> std::process::Output {
    let mut args = vec!["query", "-store", api];
    args.extend(ALL_TIME);
    args.extend(["-q", q]);
    if regex {
        args.push("-regex");
    }
    oklog(&args)
}

#[test]
fn loghub_forwarded_then_grepped_like_grep() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for file in loghub_files() {
        let data = std::fs::read(&file).unwrap();
        let out = forward(node.addr("fast"), &data, &[]);
        assert!(
            out.status.success(),
            "forward {file:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in lines_of(&data) {
            let mut b = b"default ".to_vec();
            b.extend_from_slice(&line);
            expected.push(b);
        }
    }
    assert_eq!(expected.len(), 32_000);
    let records = wait_for_records(node.addr("api"), expected.len());
    // Every record, in order, byte for byte; ULIDs strictly increasing.
    let bodies: Vec<&[u8]> = records.iter().map(|r| body(r)).collect();
    assert_eq!(
        bodies,
        expected.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    assert!(
        records.windows(2).all(|w| w[0][..26] < w[1][..26]),
        "ULIDs increase"
    );

    // Each query against a plain grep over `<topic> <line>`: a literal substring, or the
    // same pattern with the `regex` crate, line by line.
    let queries: &[(&str, bool)] = &[
        ("error", false),
        ("ERROR", false),
        ("Failed password", false),
        ("%", false),
        ("default 2015", false),
        ("blk_-", false),
        (r"^default \d{4}-\d{2}-\d{2}", true),
        (r"(?i)fail(ed|ure)", true),
        (r"error$", true),
        (r"\bsshd\[\d+\]", true),
        (r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:\d+", true),
    ];
    for &(q, regex) in queries {
        let re = regex::bytes::Regex::new(&if regex {
            q.to_string()
        } else {
            regex::escape(q)
        })
        .unwrap();
        let want: Vec<u8> = expected
            .iter()
            .filter(|l| re.is_match(l))
            .flat_map(|l| [l.as_slice(), b"\n"].concat())
            .collect();
        assert!(!want.is_empty(), "{q} should match something");
        let out = query_cli(node.addr("api"), q, regex);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{q}: {err}");
        assert!(
            out.stdout == want,
            "{q:?} (regex {regex}): {} bytes vs {} expected",
            out.stdout.len(),
            want.len()
        );
    }
    // The ULID is never searched; no match exits 1.
    let id = String::from_utf8(records[100][..26].to_vec()).unwrap();
    let out = query_cli(node.addr("api"), &id, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    // -ulid prints whole stored lines.
    let mut args = vec![
        "query",
        "-store",
        node.addr("api"),
        "-ulid",
        "-q",
        "Failed password",
    ];
    args.extend(ALL_TIME);
    let out = oklog(&args);
    let want: Vec<u8> = records
        .iter()
        .filter(|r| r.windows(15).any(|w| w == b"Failed password"))
        .flatten()
        .copied()
        .collect();
    assert_eq!(out.stdout, want);
}

#[test]
fn special_bytes_and_long_lines_round_trip() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let long: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let huge: Vec<u8> = (0..(2 * (1 << 20) + 5))
        .map(|i: u32| b'A' + (i % 26) as u8)
        .collect();
    let mut input = Vec::new();
    input.extend_from_slice(b"100% done %s %d %% %!\n");
    input.extend_from_slice(b"crlf line\r\n");
    input.extend_from_slice(b"bad utf8 \xff\xfe\xc3\x28 end\n");
    input.extend_from_slice(&long);
    input.push(b'\n');
    input.extend_from_slice(&huge);
    input.push(b'\n');
    input.extend_from_slice(b"tab\there\n\nlast line without newline");
    let out = forward(node.addr("fast"), &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 8 input lines, the 2 MiB + 5 one split into 3 records of at most 1 MiB payload.
    let records = wait_for_records(node.addr("api"), 10);
    let bodies: Vec<&[u8]> = records.iter().map(|r| body(r)).collect();
    assert_eq!(bodies[0], b"default 100% done %s %d %% %!");
    assert_eq!(bodies[1], b"default crlf line");
    assert_eq!(bodies[2], b"default bad utf8 \xff\xfe\xc3\x28 end");
    assert_eq!(bodies[3], [b"default ".as_slice(), &long].concat());
    let pieces: Vec<u8> = bodies[4..7]
        .iter()
        .flat_map(|b| {
            assert!(b.starts_with(b"default "));
            assert!(b.len() - 8 <= 1 << 20);
            b[8..].to_vec()
        })
        .collect();
    assert_eq!(pieces, huge, "a long line is split, never dropped");
    assert_eq!(bodies[7], b"default tab\there");
    assert_eq!(bodies[8], b"default ");
    assert_eq!(bodies[9], b"default last line without newline");
    // `%` is found by a literal query and printed verbatim.
    let out = query_cli(node.addr("api"), "%s %d %%", false);
    assert_eq!(out.stdout, b"default 100% done %s %d %% %!\n");
    let metrics = http("GET", node.addr("api"), "/metrics", b"").text();
    assert!(
        metrics.contains("oklog_ingest_split_lines_total 1"),
        "{metrics}"
    );
}

#[test]
fn durable_port_dynamic_topics_and_prefixes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(
        dir.path(),
        &["-ingest.topic-mode", "dynamic", "-ingest.topic", "misc"],
    );
    let out = forward(
        node.addr("durable"),
        b"web GET /index 200\ndb slow query\nno_space\n~bad topic\n",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = forward(
        node.addr("fast"),
        b"one\ntwo\n",
        &["-prefix", "api", "-prefix", "v1"],
    );
    assert!(out.status.success());
    let records = wait_for_records(node.addr("api"), 6);
    let bodies: Vec<&[u8]> = records.iter().map(|r| body(r)).collect();
    assert_eq!(
        bodies,
        vec![
            b"web GET /index 200".as_slice(),
            b"db slow query",
            b"misc no_space",
            b"misc ~bad topic",
            b"api v1 one",
            b"api v1 two",
        ]
    );
    // `^` anchors at the topic.
    let out = query_cli(node.addr("api"), "^misc ", true);
    assert_eq!(out.stdout, b"misc no_space\nmisc ~bad topic\n");
    let metrics = http("GET", node.addr("api"), "/metrics", b"").text();
    assert!(
        metrics.contains("oklog_ingest_invalid_topics_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("oklog_ingest_writer_syncs_total"),
        "{metrics}"
    );
}

/// An `ingeststore` holding two forwarded records (returned as stored).
fn node_with_two_records() -> (tempfile::TempDir, Node, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let out = forward(node.addr("fast"), b"keep me 1\nkeep me 2\n", &[]);
    assert!(out.status.success());
    let records = wait_for_records(node.addr("api"), 2);
    (dir, node, records)
}

#[test]
fn bad_requests_are_refused_and_touch_nothing() {
    let _serial = serial();
    let (dir, node, before) = node_with_two_records();
    let api = node.addr("api");
    let store_files = || {
        let mut v: Vec<_> = std::fs::read_dir(dir.path().join("data/store"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let files_before = store_files();

    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        (
            "GET",
            "/store/query?from=yesterday",
            b"",
            400,
            "parsing 'from': yesterday: can't parse as ULID or RFC3339 time",
        ),
        (
            "GET",
            "/store/query?to=0123456789ABCDEFGHJKMNPQRU",
            b"",
            400,
            "parsing 'to'",
        ),
        (
            "GET",
            "/store/query?q=(&regex=true",
            b"",
            400,
            "compiling regex",
        ),
        (
            "GET",
            "/store/query?q=a&regex=maybe",
            b"",
            400,
            "parsing 'regex'",
        ),
        (
            "GET",
            "/store/_query?q=%5B&regex",
            b"",
            400,
            "compiling regex",
        ),
        (
            "GET",
            "/ingest/read?id=../../../etc/passwd",
            b"",
            400,
            "invalid id",
        ),
        ("GET", "/ingest/read", b"", 400, "missing id"),
        (
            "POST",
            "/ingest/commit?id=..%2Fstore%2FLOCK",
            b"",
            400,
            "invalid id",
        ),
        ("POST", "/ingest/failed?id=ZZZ", b"", 400, "invalid id"),
        (
            "GET",
            "/ingest/read?id=6f1c2a9e-4b7d-4e8a-9c3b-0123456789ab",
            b"",
            404,
            "not found",
        ),
        (
            "POST",
            "/ingest/commit?id=6f1c2a9e-4b7d-4e8a-9c3b-0123456789ab",
            b"",
            404,
            "not found",
        ),
        (
            "POST",
            "/ingest/failed?id=6f1c2a9e-4b7d-4e8a-9c3b-0123456789ab",
            b"",
            404,
            "not found",
        ),
        (
            "POST",
            "/store/replicate",
            b"not a record\n",
            400,
            "record 1: record shorter",
        ),
        (
            "POST",
            "/store/replicate",
            b"01BB6RRTB70000000000000000 B\n01BB6RQR190000000000000000 A\n",
            400,
            "record 2: records are not sorted",
        ),
        (
            "POST",
            "/store/replicate",
            b"01BB6RQR190000000000000000 A",
            400,
            "no newline",
        ),
        ("POST", "/store/replicate", b"", 200, "No records"),
        ("GET", "/nowhere/../../etc/passwd", b"", 404, ""),
        (
            "GET",
            "/store/hits?step=1ms&from=2000-01-01T00:00:00Z",
            b"",
            400,
            "at most 10000 are allowed",
        ),
        ("GET", "/store/hits?step=soon", b"", 400, "parsing 'step'"),
        (
            "GET",
            "/store/hits?q=(&regex=1",
            b"",
            400,
            "compiling regex",
        ),
        (
            "GET",
            "/store/hits?from=tomorrow",
            b"",
            400,
            "parsing 'from'",
        ),
        // One rule for every windowed endpoint: a window that ends before it starts is a 400.
        (
            "GET",
            "/store/query?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            b"",
            400,
            "'from' is after 'to'",
        ),
        (
            "GET",
            "/store/hits?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            b"",
            400,
            "'from' is after 'to'",
        ),
        (
            "GET",
            "/store/_query?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            b"",
            400,
            "'from' is after 'to'",
        ),
        // The last second RFC 3339 can name is a valid bound (ULIDs reach the year 10889).
        (
            "GET",
            "/store/query?from=9999-12-30T23:59:59Z&to=9999-12-31T23:59:59.999Z",
            b"",
            200,
            "",
        ),
        ("GET", "/ui/../../etc/passwd", b"", 404, ""),
        ("GET", "/ui/nothing.js", b"", 404, "not found"),
    ];
    for (method, path, body, status, message) in cases {
        let r = http(method, api, path, body);
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        assert!(
            r.text().contains(message),
            "{method} {path}: {:?} lacks {message:?}",
            r.text()
        );
    }
    assert_eq!(
        store_files(),
        files_before,
        "refused requests store nothing"
    );
    assert_eq!(all_records(api), before, "nothing lost");
    let metrics = http("GET", api, "/metrics", b"").text();
    assert!(
        metrics.contains("oklog_store_rejected_replicas_total 3"),
        "{metrics}"
    );
    // Per-route request counts and latencies, segment files per state, the cluster, the lag.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert!(
        value(
            r#"oklog_api_request_duration_seconds_count{method="GET",path="/store/query",status_code="400"}"#
        ) >= 2.0
    );
    assert!(
        value(
            r#"oklog_api_request_duration_seconds_count{method="POST",path="/store/replicate",status_code="400"}"#
        ) == 3.0
    );
    assert!(
        value(
            r#"oklog_api_request_duration_seconds_bucket{method="POST",path="/store/replicate",status_code="400",le="+Inf"}"#
        ) == 3.0
    );
    assert_eq!(value("oklog_cluster_size"), 1.0);
    assert!(value(r#"oklog_store_segments{state="flushed"}"#) >= 1.0);
    assert!(value(r#"oklog_store_segment_bytes{state="flushed"}"#) > 0.0);
    assert_eq!(value(r#"oklog_store_segments{state="bad"}"#), 0.0);
    assert_eq!(value(r#"oklog_ingest_segments{state="flushed"}"#), 0.0);
    let lag = value("oklog_store_consumer_lag_seconds");
    assert!((0.0..60.0).contains(&lag), "lag {lag}");
    let r = http("GET", api, "/ready", b"");
    assert_eq!((r.status, r.text().contains("\"ready\":true")), (200, true));
}

#[test]
fn planning_headers_health_and_replicas_sent_twice() {
    let _serial = serial();
    let (_dir, node, _) = node_with_two_records();
    let api = node.addr("api");

    // HEAD plans without a body; GET /health answers JSON.
    let r = http(
        "HEAD",
        api,
        "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Oklog-Segments-Queried"), Some("1"));
    assert_eq!(r.header("X-Oklog-Nodes-Queried"), Some("1"));
    assert_eq!(r.header("X-Oklog-Error-Count"), Some("0"));
    assert_eq!(r.header("X-Oklog-Regex"), Some("false"));
    assert!(
        r.header("X-Oklog-Max-Data-Set-Size")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let r = http("GET", api, "/health", b"");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("\"role\":\"ingeststore\""),
        "{}",
        r.text()
    );

    // A valid replica is stored, and sending it again is idempotent.
    let replica = b"01BB6RQR190000000000000000 test A\n01BB6RRTB70000000000000000 test B\n";
    for _ in 0..2 {
        let r = http("POST", api, "/store/replicate", replica);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = http(
        "GET",
        api,
        "/store/_query?from=01BB6RQR190000000000000000&to=01BB6RRTB70000000000000000",
        b"",
    );
    assert_eq!(r.body, replica);
}

#[test]
fn query_reads_only_the_time_window() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api");
    // TestAPIInternalQueryFromULID: three replicated segments, a query across their edges.
    let rec = |id: &str, s: &str| format!("{id}0000000000000000 {s} 2017-03-14T16:59:40+01:00\n");
    let ids = [
        "01BB6RQR19",
        "01BB6RRTB7",
        "01BB6RT5GS",
        "01BB6RV5R0",
        "01BB6RVR49",
        "01BB6RW6C6",
        "01BB6RWTY6",
        "01BB6RX9D3",
        "01BB6RXQ09",
    ];
    let names = ["A", "B", "C", "D", "E", "F", "G", "H", "I"];
    let recs: Vec<String> = ids.iter().zip(names).map(|(i, n)| rec(i, n)).collect();
    for chunk in recs.chunks(3) {
        let r = http("POST", api, "/store/replicate", chunk.concat().as_bytes());
        assert_eq!(r.status, 200);
    }
    let r = http(
        "GET",
        api,
        "/store/_query?from=01BB6RT5GR0000000000000000&to=01BB6RWTY70000000000000000",
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), recs[2..7].concat());
    let r = http(
        "HEAD",
        api,
        "/store/query?from=01BB6RX9D30000000000000000&to=01BB6RXQ090000000000000000",
        b"",
    );
    assert_eq!(
        r.header("X-Oklog-Segments-Queried"),
        Some("1"),
        "only the overlapping segment"
    );
    let r = http(
        "GET",
        api,
        "/store/query?from=2017-03-14T00:00:00Z&to=2017-03-14T23:59:59Z&q=E+2017",
        b"",
    );
    assert_eq!(r.text(), recs[4], "`+` in a query string is a space");
}

#[test]
fn second_process_on_a_locked_directory_fails() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let _node = Node::ingeststore(dir.path(), &[]);
    let mut args = vec!["ingeststore".to_string()];
    args.extend(quick_flags());
    let out = std::process::Command::new(BIN)
        .args(&args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data/ingest/LOCK") && err.contains("locked"),
        "{err}"
    );
}

#[test]
fn recovery_and_graceful_restart_lose_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Leftovers of a crashed ingester: an active segment with a torn tail, a pending one.
    let ingest = dir.path().join("data/ingest");
    std::fs::create_dir_all(&ingest).unwrap();
    std::fs::write(
        ingest.join("0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d.active"),
        b"01BB6RQR190000000000000000 default crashed 1\n01BB6RQR190000000000000001 default crashed 2\n01BB6RQR19000000000000",
    )
    .unwrap();
    std::fs::write(
        ingest.join("1a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d.pending"),
        b"01BB6RRTB70000000000000000 default pending 1\n",
    )
    .unwrap();
    let mut node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api").to_string();
    let got = wait_for_records(&api, 3);
    assert_eq!(body(&got[0]), b"default crashed 1");
    assert_eq!(body(&got[2]), b"default pending 1");
    // Forward, then stop gracefully while another client is still connected
    // (TestHandleConnectionsCleanup): everything sent is there after a restart, and the open
    // connection is closed.
    let out = forward(node.addr("fast"), b"before restart\n", &[]);
    assert!(out.status.success());
    let mut open = std::net::TcpStream::connect(node.addr("fast")).unwrap();
    open.write_all(b"still connected\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = node
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", node.log_text());
    let closed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        open.write_all(b"more\n").is_err()
    });
    assert!(closed, "writes to a stopped ingester fail");
    drop(node);
    let node = Node::ingeststore(dir.path(), &[]);
    let got = wait_for_records(node.addr("api"), 5);
    let mut tail: Vec<&[u8]> = got[3..].iter().map(|r| body(r)).collect();
    tail.sort();
    assert_eq!(
        tail,
        vec![
            b"default before restart".as_slice(),
            b"default still connected"
        ]
    );
}

#[test]
fn retention_trashes_old_segments_and_purge_deletes_them() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(
        dir.path(),
        &["-store.segment-retain", "1h", "-store.segment-purge", "2s"],
    );
    let api = node.addr("api");
    // One segment two hours old, written straight to the store; one fresh, forwarded.
    let old_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 2 * 3_600_000;
    let id = |ms: u64, e: u128| {
        const A: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut v = (u128::from(ms) << 80) | e;
        let mut out = [0u8; 26];
        for c in out.iter_mut().rev() {
            *c = A[(v & 31) as usize];
            v >>= 5;
        }
        String::from_utf8(out.to_vec()).unwrap()
    };
    let old = format!(
        "{} default old record\n{} default old record 2\n",
        id(old_ms, 1),
        id(old_ms, 2)
    );
    assert_eq!(
        http("POST", api, "/store/replicate", old.as_bytes()).status,
        200
    );
    assert!(
        forward(node.addr("fast"), b"fresh record\n", &[])
            .status
            .success()
    );
    wait_for_records(api, 3);
    let store = dir.path().join("data/store");
    let names = || -> Vec<String> {
        std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let old_name = format!("{}-{}", id(old_ms, 1), id(old_ms, 2));
    eventually(
        Duration::from_secs(15),
        "the old segment in the trash",
        || {
            names()
                .contains(&format!("{old_name}.trashed"))
                .then_some(())
        },
    );
    let bodies: Vec<Vec<u8>> = all_records(api).iter().map(|r| body(r).to_vec()).collect();
    assert_eq!(
        bodies,
        vec![b"default fresh record".to_vec()],
        "trash is not queried"
    );
    eventually(Duration::from_secs(15), "the trash purged", || {
        (!names().iter().any(|n| n.starts_with(&old_name))).then_some(())
    });
    assert_eq!(all_records(api).len(), 1, "fresh data is kept");
}

/// Ingest segments the consumer gathers in an awkward order: in-order ones (appended into one
/// aggregate), one that overlaps (merged, duplicates dropped), one with a bad line in the
/// middle and one with a torn last line (their good records kept, the rest dropped).
#[test]
fn the_consumer_keeps_every_good_record_of_awkward_segments() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ingest = dir.path().join("data/ingest");
    std::fs::create_dir_all(&ingest).unwrap();
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let rec = |ms: u64, text: &str| -> String {
        let id = oklog::record::encode_ulid(base + ms, u128::from(ms) * 7919);
        format!("{} default {text}\n", String::from_utf8_lossy(&id))
    };
    let a: String = (0..10).map(|i| rec(i, &format!("a{i}"))).collect();
    let c = rec(20, "c0") + "garbage line\n" + &rec(21, "c1");
    let d = rec(30, "d0") + &rec(31, "d1") + &rec(32, "d2") + rec(33, "torn").trim_end();
    let b = rec(5, "a5") + &rec(40, "b0");
    let mtime = std::time::SystemTime::now() - Duration::from_secs(60);
    for (i, body) in [&a, &c, &d, &b].iter().enumerate() {
        let path = ingest.join(format!("{}.flushed", oklog::disk::new_uuid()));
        std::fs::write(&path, body).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(mtime + Duration::from_secs(i as u64))
            .unwrap();
    }
    let node = Node::ingeststore(dir.path(), &[]);
    let got = wait_for_records(node.addr("api"), 16);
    let mut want: Vec<String> = a.lines().map(|l| format!("{l}\n")).collect();
    want.extend([rec(20, "c0"), rec(21, "c1")]);
    want.extend([rec(30, "d0"), rec(31, "d1"), rec(32, "d2")]);
    want.push(rec(40, "b0"));
    let got: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.clone()).unwrap())
        .collect();
    assert_eq!(got, want);
    // Nothing left behind: every ingest segment was committed.
    eventually(Duration::from_secs(10), "ingest segments committed", || {
        (std::fs::read_dir(&ingest).unwrap().count() <= 1).then_some(()) // LOCK
    });
}
