//! Bulk ingest: `oklog forward -bulk` returns only after its records are stored N ways, retries
//! without duplicating, and the bulk port refuses bad input without storing any of it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn lines(n: usize, tag: &str) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{tag} line {i}\n").into_bytes())
        .collect()
}

#[test]
fn forward_bulk_returns_after_commit() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    // Small batches: several round trips.
    let out = forward(
        node.addr("bulk"),
        &lines(5000, "bulk"),
        &["-bulk", "-bulk.size", "65536"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No waiting: an acknowledged batch is already committed on a store node.
    let records = all_records(node.addr("api"));
    assert_eq!(records.len(), 5000);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(&r[27..], format!("default bulk line {i}\n").as_bytes());
    }
}

#[test]
fn bulk_port_refuses_bad_input_and_stores_nothing_of_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let bulk = node.addr("bulk").to_string();
    let talk = |frames: &[&[u8]]| -> Vec<String> {
        let mut s = TcpStream::connect(&bulk).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut answers = Vec::new();
        for f in frames {
            s.write_all(f).unwrap();
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                answers.push("<closed>".to_string());
                break;
            }
            answers.push(line.trim_end().to_string());
        }
        answers
    };
    let frame =
        |batch: &[u8]| -> Vec<u8> { [&(batch.len() as u32).to_be_bytes()[..], batch].concat() };
    // A bad greeting closes the connection.
    assert!(talk(&[b"GET / HTTP/1.1\r\n"])[0].starts_with("ERR not an OKLOG-BULK/1"));
    // An oversize length is refused.
    let oversize = [&b"OKLOG-BULK/1\n"[..], &u32::MAX.to_be_bytes()].concat();
    assert!(talk(&[&oversize])[0].contains("over the limit"));
    // Malformed batches are refused one by one; the connection stays usable.
    let bad_ulid = frame(b"0123456789ABCDEFGHJKMNPQRU x\n");
    let unsorted = frame(b"01BB6RRTB70000000000000000 b\n01BB6RQR190000000000000000 a\n");
    let torn = frame(b"01BB6RQR190000000000000000 a");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = oklog::record::encode_ulid(now, 0);
    let good_line = [&id[..], b" fine\n"].concat();
    let good = frame(&good_line);
    let greeting_and_bad = [&b"OKLOG-BULK/1\n"[..], &bad_ulid].concat();
    let answers = talk(&[&greeting_and_bad, &unsorted, &torn, &good]);
    assert!(answers[0].starts_with("ERR record 1"), "{answers:?}");
    assert!(
        answers[1].starts_with("ERR record 2: records are not sorted"),
        "{answers:?}"
    );
    assert!(
        answers[2].starts_with("ERR last record has no newline"),
        "{answers:?}"
    );
    assert_eq!(answers[3], "OK 1", "{answers:?}");
    let r = http(
        "GET",
        node.addr("api"),
        "/store/query?from=2017-01-01T00:00:00Z",
        b"",
    );
    assert_eq!(
        r.text(),
        format!("{} default fine\n", String::from_utf8_lossy(&id)),
        "only the good batch"
    );
}

#[test]
fn bulk_waits_for_a_store_and_never_reports_unstored_records() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let rf1 = ["-store.segment-replication-factor", "1"];
    let store = start_role("store", &root.path().join("s1"), None, &rf1);
    let peer = store.addr("cluster").to_string();
    let ing = start_role("ingest", &root.path().join("i1"), Some(&peer), &[]);
    eventually(Duration::from_secs(5), "join", || {
        let r = http("GET", ing.addr("api"), "/ingest/_clusterstate", b"");
        (serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["n"] == 2).then_some(())
    });
    // The only store node dies before anything is committed.
    drop(store);
    eventually(
        Duration::from_secs(15),
        "the dead store to be noticed",
        || {
            let r = http("GET", ing.addr("api"), "/ingest/_clusterstate", b"");
            (serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["n"] == 1).then_some(())
        },
    );
    let mut child = Command::new(BIN)
        .args(["forward", "-bulk", ing.addr("bulk")])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&lines(300, "waiting"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "no success while nothing is stored"
    );
    // A store node joins: the batch is committed and the forwarder succeeds.
    let started = Instant::now();
    let store2 = start_role(
        "store",
        &root.path().join("s2"),
        Some(ing.addr("cluster")),
        &rf1,
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "forward -bulk never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let records = all_records(store2.addr("api"));
    assert_eq!(records.len(), 300, "each record once");
}
