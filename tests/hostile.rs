//! What an attacker (or an unlucky operator) can do to a node through its ports and its data
//! directory, each a regression test: odd files with segment names, floods of idle ingest
//! connections and of half-sent HTTP requests. Floods stay bounded in count and time, on
//! 127.0.0.1 only.

mod common;

use std::ffi::CString;
use std::path::Path;
use std::time::Duration;

use common::*;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn odd_files_with_segment_names_never_stop_the_node() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/store");
    let ingest = dir.path().join("data/ingest");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&ingest).unwrap();
    // A directory and a FIFO named like store segments: the first made start-up exit 1, the
    // second made it hang with /health unanswered.
    std::fs::create_dir(
        store.join("01ARYZ6S41TSV4RRFFQ69G5FAV-01ARYZ6S41TSV4RRFFQ69G5FAW.flushed"),
    )
    .unwrap();
    mkfifo(&store.join("01ARYZ6S41TSV4RRFFQ69G5FB0-01ARYZ6S41TSV4RRFFQ69G5FB1.flushed"));
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api").to_string();
    assert_eq!(http("GET", &api, "/health", b"").status, 200);
    // A directory named like an ingest segment, made while the node runs: it used to make
    // every consumer fail ten times a second, forever.
    std::fs::create_dir(ingest.join("0b6e2ba2-6a4b-4f4e-9f43-3f0d3c7f1a10.flushed")).unwrap();
    let out = forward(node.addr("fast"), b"one\ntwo\nthree\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = wait_for_records(&api, 3);
    assert!(records[0].ends_with(b" default one\n"));
    let bad = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".bad")
            })
            .count()
    };
    assert_eq!(bad(&store), 2, "both set aside in the store");
    eventually(
        Duration::from_secs(10),
        "the ingest directory set aside",
        || (bad(&ingest) == 1).then_some(()),
    );
    let metrics = http("GET", &api, "/metrics", b"").text();
    assert!(
        metrics.contains(r#"oklog_ingest_segments{state="bad"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("oklog_store_quarantined_files_total 2"),
        "{metrics}"
    );
}
