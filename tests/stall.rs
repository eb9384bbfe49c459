//! Stopped peers (SIGSTOP: the kernel still accepts connections and ACKs data, the process
//! answers nothing) hold up no other node's work for longer than a timeout.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn signal(node: &Node, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every payload the store answers for an all-time query.
fn payloads(api: &str) -> Vec<String> {
    all_records(api)
        .iter()
        .map(|r| String::from_utf8_lossy(&r[27..r.len() - 1]).into_owned())
        .collect()
}

#[test]
fn a_stopped_ingester_or_store_holds_up_the_others_no_longer_than_a_timeout() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let s1 = start_role(
        "store",
        &root.path().join("s1"),
        None,
        &["-store.segment-replication-factor", "1"],
    );
    let peer = s1.addr("cluster").to_string();
    let s2 = start_role(
        "store",
        &root.path().join("s2"),
        Some(&peer),
        &["-store.segment-replication-factor", "1"],
    );
    let a = start_role("ingest", &root.path().join("a"), Some(&peer), &[]);
    let b = start_role("ingest", &root.path().join("b"), Some(&peer), &[]);
    for n in [&s1, &s2, &a, &b] {
        eventually(Duration::from_secs(10), "the cluster to form", || {
            let r = http("GET", n.addr("api"), "/store/_clusterstate", b"");
            let r = if r.status == 200 {
                r
            } else {
                http("GET", n.addr("api"), "/ingest/_clusterstate", b"")
            };
            (r.text().matches("\"api_addr\"").count() >= 4).then_some(())
        });
    }
    assert!(forward(a.addr("fast"), b"from a\n", &[]).status.success());
    eventually(Duration::from_secs(20), "a's record", || {
        payloads(s1.addr("api"))
            .contains(&"default from a".to_string())
            .then_some(())
    });

    // Ingester a stops answering. What goes through b is stored all the same, within about
    // one call timeout (10 s), not one per attempt on a.
    signal(&a, "-STOP");
    let started = Instant::now();
    let lines: String = (0..50).map(|i| format!("from b {i}\n")).collect();
    assert!(
        forward(b.addr("fast"), lines.as_bytes(), &[])
            .status
            .success()
    );
    eventually(Duration::from_secs(40), "b's records despite a", || {
        let got = payloads(s1.addr("api"));
        (got.iter()
            .filter(|p| p.starts_with("default from b"))
            .count()
            == 50)
            .then_some(())
    });
    let took = started.elapsed();
    eprintln!("b's records stored {took:?} after a stopped");
    assert!(took < Duration::from_secs(30), "{took:?}");

    // Store s2 stops answering: a query on s1 answers within the gather timeout, with what s1
    // holds (RF 1: the rest lives on s2 only), as a partial answer.
    let on_s1 = records_at(s1.addr("api"), "/store/_query");
    signal(&s2, "-STOP");
    let started = Instant::now();
    let r = http(
        "GET",
        s1.addr("api"),
        "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        b"",
    );
    let took = started.elapsed();
    eprintln!("query with s2 stopped: {} in {took:?}", r.status);
    assert_eq!(r.status, 206);
    assert!(took < Duration::from_secs(12), "{took:?}");
    let answered: Vec<&[u8]> = r.body.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(
        answered,
        on_s1.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        "everything s1 holds"
    );
    // And new records still reach a store (the consumers replicate to s1 or s2; RF 1 needs
    // one copy, and a stopped target is given up after its timeout).
    assert!(
        forward(b.addr("fast"), b"after s2 stopped\n", &[])
            .status
            .success()
    );
    eventually(
        Duration::from_secs(40),
        "a record while s2 is stopped",
        || {
            let r = http(
                "GET",
                s1.addr("api"),
                "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&q=after",
                b"",
            );
            r.text().contains("after s2 stopped").then_some(())
        },
    );
    signal(&a, "-CONT");
    signal(&s2, "-CONT");
}
