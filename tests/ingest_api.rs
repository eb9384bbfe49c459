//! The ingest API as store consumers drive it, against a real `oklog ingest` process, and a
//! lone `oklog store` that cannot reach its replication factor.

mod common;

use std::time::Duration;

use common::*;

fn ingest_node(dir: &std::path::Path) -> Node {
    start_role(
        "ingest",
        dir,
        None,
        &["-ingest.segment-pending-timeout", "1s"],
    )
}

fn next(api: &str) -> Option<String> {
    let r = http("GET", api, "/ingest/next", b"");
    match r.status {
        200 => Some(r.text()),
        404 => None,
        s => panic!("/ingest/next: {s} {}", r.text()),
    }
}

#[test]
fn next_read_commit_failed_and_pending_timeout() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = ingest_node(dir.path());
    let api = node.addr("api");
    assert_eq!(next(api), None, "nothing flushed yet");
    let out = forward(node.addr("fast"), b"first segment\n", &[]);
    assert!(out.status.success());
    let id = eventually(Duration::from_secs(10), "a flushed segment", || next(api));
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // Committing before reading is refused.
    let r = http("POST", api, &format!("/ingest/commit?id={id}"), b"");
    assert_eq!(r.status, 428, "{}", r.text());
    let r = http("GET", api, &format!("/ingest/read?id={id}"), b"");
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with(" default first segment\n"),
        "{}",
        r.text()
    );
    let r = http("GET", api, &format!("/ingest/read?id={id}"), b"");
    assert_eq!(r.status, 500, "a second reader is refused");
    // Failing puts it back; the next claim gets it again under a new id.
    let r = http("POST", api, &format!("/ingest/failed?id={id}"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "Failed OK\n"));
    let id2 = next(api).expect("failed segment is flushed again");
    assert_ne!(id, id2);
    let r = http("POST", api, &format!("/ingest/commit?id={id}"), b"");
    assert_eq!(r.status, 404, "the old id is gone");
    // Not committed in time: it times out back to flushed.
    std::thread::sleep(Duration::from_millis(2500));
    let id3 = next(api).expect("timed-out segment is flushed again");
    let r = http("GET", api, &format!("/ingest/read?id={id3}"), b"");
    assert!(r.text().ends_with(" default first segment\n"));
    let r = http("POST", api, &format!("/ingest/commit?id={id3}"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "Commit OK\n"));
    assert_eq!(next(api), None, "committed segments are gone");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("data/ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["LOCK".to_string()]);
    let metrics = http("GET", api, "/metrics", b"").text();
    assert!(
        metrics.contains("oklog_ingest_committed_segments_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("oklog_ingest_failed_segments_total 2"),
        "{metrics}"
    );
    let r = http("GET", api, "/health", b"");
    assert!(r.text().contains("\"role\":\"ingest\""));
}

#[test]
fn lone_store_warns_that_the_replication_factor_is_out_of_reach() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start_role("store", dir.path(), None, &[]);
    let line = eventually(Duration::from_secs(10), "the RF warning", || {
        node.log_text()
            .lines()
            .find(|l| l.contains("replication factor exceeds"))
            .map(str::to_string)
    });
    assert!(
        line.contains("replication_factor=2") && line.contains("store_nodes=1"),
        "{line}"
    );
    let r = http("GET", node.addr("api"), "/health", b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"role\":\"store\""));
}
