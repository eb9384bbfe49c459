//! Clusters of real processes on 127.0.0.1: gossip membership, replication, scatter/gather.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Members (by API address) that `node` currently sees, self included.
fn members(node: &Node) -> Vec<String> {
    let r = http("GET", node.addr("api"), "/store/_clusterstate", b"");
    let r = if r.status == 404 {
        http("GET", node.addr("api"), "/ingest/_clusterstate", b"")
    } else {
        r
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["n"].as_u64().unwrap() as usize,
        v["members"].as_array().unwrap().len()
    );
    let mut out: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["api_addr"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn wait_members(nodes: &[&Node], want: &[&Node], timeout: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let mut want: Vec<String> = want.iter().map(|n| n.addr("api").to_string()).collect();
    want.sort();
    eventually(timeout, what, || {
        nodes.iter().all(|n| members(n) == want).then_some(())
    });
    started.elapsed()
}

fn local_records(node: &Node) -> Vec<Vec<u8>> {
    records_at(node.addr("api"), "/store/_query")
}

fn query_all(node: &Node) -> Response {
    http(
        "GET",
        node.addr("api"),
        "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        b"",
    )
}

#[test]
fn two_ingesters_three_stores_replicate_twice_and_answer_everything() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let seed = start_role("store", &root.path().join("s1"), None, &[]);
    let peer = seed.addr("cluster").to_string();
    let s2 = start_role("store", &root.path().join("s2"), Some(&peer), &[]);
    let s3 = start_role("store", &root.path().join("s3"), Some(&peer), &[]);
    let i1 = start_role("ingest", &root.path().join("i1"), Some(&peer), &[]);
    let i2 = start_role("ingest", &root.path().join("i2"), Some(&peer), &[]);
    let all = [&seed, &s2, &s3, &i1, &i2];
    let join = wait_members(&all, &all, Duration::from_secs(5), "everyone to join");
    eprintln!("5 nodes joined in {join:?}");

    // Forward the LogHub samples, alternating ingesters.
    let mut sent = 0;
    for (i, file) in loghub_files().iter().enumerate() {
        let data = std::fs::read(file).unwrap();
        let ingester = if i % 2 == 0 { &i1 } else { &i2 };
        let out = forward(ingester.addr("fast"), &data, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sent += data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    assert_eq!(sent, 32_000);
    // Every store node answers every record exactly once, in ULID order.
    for node in [&seed, &s2, &s3] {
        let records = wait_for_records(node.addr("api"), sent);
        assert!(
            records.windows(2).all(|w| w[0][..26] < w[1][..26]),
            "sorted, no duplicates"
        );
    }
    // Every record is on at least two store nodes.
    let mut copies: HashMap<Vec<u8>, usize> = HashMap::new();
    for node in [&seed, &s2, &s3] {
        for r in local_records(node) {
            *copies.entry(r).or_default() += 1;
        }
    }
    assert_eq!(copies.len(), sent);
    assert!(
        copies.values().all(|&n| n >= 2),
        "every record replicated twice"
    );
    let r = http(
        "HEAD",
        seed.addr("api"),
        "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        b"",
    );
    assert_eq!(r.header("X-Oklog-Nodes-Queried"), Some("3"));
    assert_eq!(r.header("X-Oklog-Error-Count"), Some("0"));

    // Hits over time count every record once, although each is on two or three nodes.
    for node in [&seed, &s2, &s3] {
        let (status, buckets) = hits(node, "step=1s");
        assert_eq!(status, 200);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), sent as u64);
    }
    let want = copies
        .keys()
        .filter(|r| r[27..].windows(5).any(|w| w == b"error"))
        .count() as u64;
    assert!(want > 0);
    let (_, buckets) = hits(&s2, "q=error");
    assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), want);
}

/// `GET /store/hits` over the last hour (the default window): the status and `(time, count)`
/// per bucket.
fn hits(node: &Node, params: &str) -> (u16, Vec<(String, u64)>) {
    let r = http(
        "GET",
        node.addr("api"),
        &format!("/store/hits?{params}"),
        b"",
    );
    if r.status >= 300 {
        return (r.status, Vec::new());
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let buckets = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["time"].as_str().unwrap().to_string(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    (r.status, buckets)
}

#[test]
fn store_failures_degrade_to_partial_answers_and_new_stores_take_new_data() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let seed = start_role("store", &root.path().join("s1"), None, &[]);
    let peer = seed.addr("cluster").to_string();
    let s2 = start_role("store", &root.path().join("s2"), Some(&peer), &[]);
    let mut s3 = start_role("store", &root.path().join("s3"), Some(&peer), &[]);
    let ing = start_role("ingest", &root.path().join("i1"), Some(&peer), &[]);
    wait_members(
        &[&seed, &s2, &s3, &ing],
        &[&seed, &s2, &s3, &ing],
        Duration::from_secs(5),
        "join",
    );
    let first: Vec<u8> = (0..500)
        .flat_map(|i| format!("first batch {i}\n").into_bytes())
        .collect();
    assert!(forward(ing.addr("fast"), &first, &[]).status.success());
    wait_for_records(seed.addr("api"), 500);

    // A hung node (SIGSTOP) makes queries answer 206 within the timeout, with everything.
    let pid = s3.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let r = query_all(&seed);
    let took = started.elapsed();
    assert_eq!(r.status, 206, "{}", r.text());
    assert!(took < Duration::from_secs(9), "answered in {took:?}");
    assert_eq!(r.header("X-Oklog-Error-Count"), Some("1"));
    assert_eq!(
        r.body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        500,
        "RF 2: the others have it all"
    );
    let (status, buckets) = hits(&seed, "q=first");
    assert_eq!(status, 206, "hits are partial too");
    assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 500);

    // Killed (SIGKILL): queries still return everything, and the cluster notices.
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    let _ = s3.child.kill();
    let _ = s3.child.wait();
    let started = Instant::now();
    wait_members(
        &[&seed, &s2, &ing],
        &[&seed, &s2, &ing],
        Duration::from_secs(15),
        "the dead node to be removed",
    );
    eprintln!("SIGKILLed node removed after {:?}", started.elapsed());
    let r = query_all(&seed);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        500
    );

    // Records forwarded afterwards are still replicated twice (on the two live stores).
    let second: Vec<u8> = (0..300)
        .flat_map(|i| format!("second batch {i}\n").into_bytes())
        .collect();
    assert!(forward(ing.addr("fast"), &second, &[]).status.success());
    for node in [&seed, &s2] {
        eventually(
            Duration::from_secs(30),
            "second batch on both stores",
            || {
                (local_records(node)
                    .iter()
                    .filter(|r| r.windows(6).any(|w| w == b"second"))
                    .count()
                    == 300)
                    .then_some(())
            },
        );
    }

    // A new store node joins and receives new segments.
    let s4 = start_role("store", &root.path().join("s4"), Some(&peer), &[]);
    wait_members(
        &[&seed, &s2, &ing, &s4],
        &[&seed, &s2, &ing, &s4],
        Duration::from_secs(5),
        "the new store to join",
    );
    eventually(
        Duration::from_secs(60),
        "a segment on the new store",
        || {
            let batch: Vec<u8> = (0..50)
                .flat_map(|i| format!("third batch {i}\n").into_bytes())
                .collect();
            assert!(forward(ing.addr("fast"), &batch, &[]).status.success());
            std::thread::sleep(Duration::from_millis(500));
            local_records(&s4)
                .iter()
                .any(|r| r.windows(5).any(|w| w == b"third"))
                .then_some(())
        },
    );
    drop(s3);
}

#[test]
fn membership_join_leave_and_restart_on_the_same_address() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let seed = start_role("store", &root.path().join("s1"), None, &[]);
    let peer = seed.addr("cluster").to_string();
    let mut other = start_role("ingeststore", &root.path().join("s2"), Some(&peer), &[]);
    let join = wait_members(
        &[&seed, &other],
        &[&seed, &other],
        Duration::from_secs(5),
        "join",
    );
    eprintln!("join visible everywhere after {join:?}");
    // Graceful leave (SIGTERM).
    let other_cluster = other.addr("cluster").to_string();
    let started = Instant::now();
    let status = other.terminate(Duration::from_secs(10)).expect("exits");
    assert!(status.success());
    wait_members(
        &[&seed],
        &[&seed],
        Duration::from_secs(5),
        "the leave to be seen",
    );
    eprintln!("graceful leave seen after {:?}", started.elapsed());
    drop(other);
    // Restarted on the same cluster address: rejoins at once.
    let again = start_role(
        "ingeststore",
        &root.path().join("s2"),
        Some(&peer),
        &["-cluster", &other_cluster],
    );
    assert_eq!(again.addr("cluster"), other_cluster);
    wait_members(
        &[&seed, &again],
        &[&seed, &again],
        Duration::from_secs(5),
        "the restarted node to rejoin",
    );
    // And a SIGKILLed one is declared dead.
    drop(again);
    let started = Instant::now();
    wait_members(
        &[&seed],
        &[&seed],
        Duration::from_secs(15),
        "death detection",
    );
    eprintln!("SIGKILLed node removed after {:?}", started.elapsed());
}

#[test]
fn a_node_given_an_unreachable_peer_says_it_is_alone() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    // A port nothing listens on (UDP datagrams there are simply dropped).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = start_role(
        "store",
        &root.path().join("s1"),
        Some(&format!("127.0.0.1:{port}")),
        &[],
    );
    eventually(Duration::from_secs(12), "the alone warning", || {
        node.log_text()
            .contains("I appear to be alone in the cluster")
            .then_some(())
    });
    // Without -peer it defaults to RF 2 as a store, and says the factor is out of reach.
    assert!(node.log_text().contains("replication_factor=2"));
}

#[test]
fn a_stream_sees_each_new_matching_record_once() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let seed = start_role("store", &root.path().join("s1"), None, &[]);
    let peer = seed.addr("cluster").to_string();
    let s2 = start_role("store", &root.path().join("s2"), Some(&peer), &[]);
    let ing = start_role("ingest", &root.path().join("i1"), Some(&peer), &[]);
    wait_members(
        &[&seed, &s2, &ing],
        &[&seed, &s2, &ing],
        Duration::from_secs(5),
        "join",
    );
    let mut stream = std::process::Command::new(BIN)
        .args([
            "stream",
            "-store",
            seed.addr("api"),
            "-q",
            "wanted",
            "-window",
            "500ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut stream);
    // The gateway registers the stream on both store nodes.
    wait_for_streams(seed.addr("api"), 1);
    wait_for_streams(s2.addr("api"), 1);
    let input: Vec<u8> = (0..200)
        .flat_map(|i| format!("{} {i}\n", if i % 2 == 0 { "wanted" } else { "other" }).into_bytes())
        .collect();
    assert!(forward(ing.addr("fast"), &input, &[]).status.success());
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 100 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(line);
        }
    }
    // Nothing more arrives: each record exactly once though both stores hold it.
    std::thread::sleep(Duration::from_secs(2));
    while let Ok(line) = rx.try_recv() {
        got.push(line);
    }
    let want: Vec<String> = (0..200)
        .step_by(2)
        .map(|i| format!("default wanted {i}"))
        .collect();
    assert_eq!(got, want);
    // SIGTERM ends the stream cleanly.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &stream.id().to_string()])
        .status();
    let status = stream.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_stopping_ingester_hands_its_records_to_the_store_before_it_leaves() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let store = start_role(
        "store",
        &root.path().join("s1"),
        None,
        &["-store.segment-replication-factor", "1"],
    );
    let peer = store.addr("cluster").to_string();
    // Segments would sit in the active file for a minute: only the shutdown flushes them.
    let mut ing = start_role(
        "ingest",
        &root.path().join("i1"),
        Some(&peer),
        &["-ingest.segment-flush-age", "1m"],
    );
    wait_members(
        &[&store, &ing],
        &[&store, &ing],
        Duration::from_secs(5),
        "join",
    );
    let input: Vec<u8> = (0..1000)
        .flat_map(|i| format!("handed over {i}\n").into_bytes())
        .collect();
    // A producer that stays connected: its records sit in the connection's active segment.
    let mut producer = std::net::TcpStream::connect(ing.addr("fast")).unwrap();
    std::io::Write::write_all(&mut producer, &input).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        all_records(store.addr("api")).is_empty(),
        "still in the ingester's active segment"
    );
    let started = Instant::now();
    let status = ing.terminate(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{}", ing.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "within -shutdown-timeout: {:?}",
        started.elapsed()
    );
    // Everything was consumed before it left: nothing is left behind on the ingester.
    assert_eq!(all_records(store.addr("api")).len(), 1000);
    let left: Vec<_> = std::fs::read_dir(root.path().join("i1/data/ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "LOCK")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    wait_members(
        &[&store],
        &[&store],
        Duration::from_secs(5),
        "the ingester to leave",
    );
}
