//! Crash safety: SIGKILL an `ingeststore` while it ingests and while it compacts, restart it on
//! the same ports, and check that nothing acknowledged is lost, no ULID is answered twice, and
//! every segment on disk is well formed. A few kill points per scenario in CI; set
//! `OKLOG_CRASH_ITERS` for more.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

fn iterations() -> u64 {
    std::env::var("OKLOG_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Restart flags: the same API and ingest ports as `old`, so clients reconnect to it.
fn same_ports(old: &Node) -> Vec<String> {
    // Later flags win, as in Go's flag package.
    ingeststore_args(&[
        "-store.segment-target-size",
        "65536",
        "-api",
        old.addr("api"),
        "-ingest.fast",
        old.addr("fast"),
        "-ingest.durable",
        old.addr("durable"),
    ])
}

/// Every `.flushed` store segment parses: a name matching its first and last ULID, records
/// with valid ULIDs, strictly increasing, each ending in `\n`.
fn assert_segments_well_formed(store: &Path) {
    for entry in std::fs::read_dir(store).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            !name.ends_with(".bad"),
            "nothing should need quarantine: {name}"
        );
        if !name.ends_with(".flushed") {
            continue;
        }
        let (low, high) = name.trim_end_matches(".flushed").split_once('-').unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data.ends_with(b"\n"), "{name}: torn last record");
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(&lines[0][..26], low.as_bytes(), "{name}");
        assert_eq!(&lines[lines.len() - 1][..26], high.as_bytes(), "{name}");
        for w in lines.windows(2) {
            assert!(
                w[0][..26] < w[1][..26],
                "{name}: unsorted or duplicate ULID"
            );
        }
        for l in lines {
            assert!(l.len() >= 28 && l[26] == b' ', "{name}: malformed record");
        }
    }
}

/// Run `oklog forward` on `input` to `addr`; true if it exited 0 (acknowledged).
fn forward_ok(addr: &str, input: Vec<u8>) -> bool {
    let mut child = Command::new(BIN)
        .args(["forward", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &input);
    });
    let status = child.wait().unwrap();
    writer.join().unwrap();
    status.success()
}

#[test]
fn sigkill_while_ingesting_loses_nothing_acknowledged() {
    let _serial = serial();
    for iter in 0..iterations() {
        let dir = tempfile::tempdir().unwrap();
        let args = ingeststore_args(&["-store.segment-target-size", "65536"]);
        let mut node = Node::start(dir.path(), &args, &["api", "fast", "durable"]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for (mode, addr) in [
            ("durable", node.addr("durable")),
            ("fast", node.addr("fast")),
        ] {
            let (stop, addr) = (Arc::clone(&stop), addr.to_string());
            producers.push(std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                let mut batch = 0;
                // Bounded, so the checks after the restart stay quick.
                while !stop.load(Ordering::SeqCst) && batch < 40 {
                    let lines: Vec<String> = (0..400)
                        .map(|n| format!("{mode} iter {iter} batch {batch} line {n}"))
                        .collect();
                    let input: Vec<u8> = lines
                        .iter()
                        .flat_map(|l| format!("{l}\n").into_bytes())
                        .collect();
                    if forward_ok(&addr, input) {
                        acknowledged.extend(lines);
                    }
                    batch += 1;
                }
                acknowledged
            }));
        }
        std::thread::sleep(Duration::from_millis(400 + 350 * iter));
        let _ = node.child.kill();
        let _ = node.child.wait();
        // Restart on the same ports: forwarders caught mid-send reconnect and send again.
        let restart = same_ports(&node);
        drop(node);
        let node = Node::start(dir.path(), &restart, &["api", "fast", "durable"]);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let acknowledged: Vec<String> = producers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        assert!(
            !acknowledged.is_empty(),
            "iteration {iter}: something was acknowledged"
        );
        let want: HashSet<String> = acknowledged
            .iter()
            .map(|l| format!("default {l}"))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let records = loop {
            let recs = all_records(node.addr("api"));
            let have: HashSet<String> = recs
                .iter()
                .map(|r| String::from_utf8_lossy(&r[27..r.len() - 1]).into_owned())
                .collect();
            let missing: Vec<&String> = want.difference(&have).collect();
            if missing.is_empty() {
                break recs;
            }
            if std::time::Instant::now() > deadline {
                let mut sample: Vec<&&String> = missing.iter().take(5).collect();
                sample.sort();
                let files: Vec<String> = ["data/ingest", "data/store"]
                    .iter()
                    .flat_map(|d| std::fs::read_dir(dir.path().join(d)).unwrap())
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                panic!(
                    "iteration {iter}: {} of {} acknowledged records missing, e.g. {sample:?}; files {files:?}; log:\n{}",
                    missing.len(),
                    want.len(),
                    node.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            records.windows(2).all(|w| w[0][..26] < w[1][..26]),
            "iteration {iter}: no ULID answered twice"
        );
        assert_segments_well_formed(&dir.path().join("data/store"));
        eprintln!(
            "iteration {iter}: {} acknowledged records all present after SIGKILL",
            want.len()
        );
    }
}

#[test]
fn sigkill_while_compacting_keeps_every_record_once() {
    let _serial = serial();
    for iter in 0..iterations() {
        let dir = tempfile::tempdir().unwrap();
        let args = ingeststore_args(&["-store.segment-target-size", "16384"]);
        let node = Node::start(dir.path(), &args, &["api"]);
        // Many small overlapping replicas with duplicates: work for the compacter.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut ids = HashSet::new();
        for k in 0..60u64 {
            let mut body = Vec::new();
            for i in 0..60u64 {
                let n = (k / 2) * 45 + i; // neighbours overlap, pairs repeat
                let id = ulid_text(now + n, u128::from(n));
                ids.insert(id.clone());
                body.extend_from_slice(format!("{id} default record {n}\n").as_bytes());
            }
            let r = http("POST", node.addr("api"), "/store/replicate", &body);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        std::thread::sleep(Duration::from_millis(900 + 700 * iter));
        let restart = args.clone();
        let mut node = node;
        let _ = node.child.kill();
        let _ = node.child.wait();
        drop(node);
        let node = Node::start(dir.path(), &restart, &["api"]);
        let records = all_records(node.addr("api"));
        let got: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(&r[..26]).into_owned())
            .collect();
        assert_eq!(
            got.len(),
            ids.len(),
            "iteration {iter}: every record exactly once"
        );
        assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), ids);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_segments_well_formed(&dir.path().join("data/store"));
        // The compacter goes on from where it was killed and still keeps everything once.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(all_records(node.addr("api")).len(), ids.len());
        assert_segments_well_formed(&dir.path().join("data/store"));
    }
}

/// ULID text for `ms` and `entropy` (Crockford base32).
fn ulid_text(ms: u64, entropy: u128) -> String {
    const A: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut v = (u128::from(ms) << 80) | entropy;
    let mut out = [0u8; 26];
    for c in out.iter_mut().rev() {
        *c = A[(v & 31) as usize];
        v >>= 5;
    }
    String::from_utf8(out.to_vec()).unwrap()
}
