//! Restarts that repeat nothing: forwarders stream numbered lines through two ingesters into a
//! store while the ingesters are restarted, gracefully (SIGTERM, as in a rolling restart) and
//! by SIGKILL. Every line must be stored; a graceful restart may store none twice, a kill at
//! most about one second of a forwarder's traffic.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

/// Lines per second each forwarder is fed.
const RATE: u64 = 2000;

/// An `oklog forward` fed numbered lines (`<name> <n>`) at [`RATE`] lines a second until stopped.
struct Producer {
    name: String,
    /// The forwarder (taken by `finish`).
    child: Option<Child>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(name: &str, ingesters: &[&str]) -> Producer {
        let mut child = Command::new(BIN)
            .arg("forward")
            .args(ingesters)
            .env("OKLOG_DEBUG", "false")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start forward");
        let mut stdin = child.stdin.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n, tag) = (Arc::clone(&stop), Arc::clone(&sent), name.to_string());
        let feeder = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut next = 0u64;
            while !s.load(Ordering::SeqCst) {
                let due = started.elapsed().as_millis() as u64 * RATE / 1000;
                let mut chunk = String::new();
                while next < due {
                    chunk.push_str(&format!("{tag} {next}\n"));
                    next += 1;
                }
                if stdin.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
                n.store(next, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            // Dropping stdin is the forwarder's EOF.
        });
        Producer {
            name: name.to_string(),
            child: Some(child),
            stop,
            sent,
            feeder: Some(feeder),
        }
    }

    /// Stop feeding, wait for the forwarder to confirm everything; returns the lines sent.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.feeder.take().unwrap().join().unwrap();
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "forwarder {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How many times each `<name> <n>` line is stored, counted over every record the store has.
fn copies(api: &str) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for r in all_records(api) {
        // <ULID> <topic> <name> <n>\n
        let text = String::from_utf8_lossy(&r[27..r.len() - 1]).into_owned();
        let payload = text.split_once(' ').map(|(_, p)| p.to_string()).unwrap();
        *counts.entry(payload).or_insert(0) += 1;
    }
    counts
}

/// Wait until every line of every producer is stored; returns (missing, duplicates) per producer.
fn settle(api: &str, sent: &[(String, u64)]) -> (u64, HashMap<String, u64>) {
    let total: u64 = sent.iter().map(|(_, n)| n).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = copies(api);
        let mut missing = 0;
        let mut dups = HashMap::new();
        for (name, n) in sent {
            let mut d = 0;
            for i in 0..*n {
                match counts.get(&format!("{name} {i}")) {
                    None => missing += 1,
                    Some(c) => d += u64::from(c - 1),
                }
            }
            dups.insert(name.clone(), d);
        }
        if missing == 0 || std::time::Instant::now() > deadline {
            eprintln!("{total} lines sent; {missing} missing; duplicates {dups:?}");
            return (missing, dups);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start an ingest node joining `peer`, on the ports of `old` if given.
fn ingester(dir: &std::path::Path, peer: &str, old: Option<&Node>) -> Node {
    let mut extra = vec!["-shutdown-timeout", "3s"];
    if let Some(old) = old {
        for (flag, name) in [
            ("-api", "api"),
            ("-ingest.fast", "fast"),
            ("-ingest.durable", "durable"),
            ("-ingest.bulk", "bulk"),
            ("-cluster", "cluster"),
        ] {
            extra.extend([flag, old.addr(name)]);
        }
    }
    start_role("ingest", dir, Some(peer), &extra)
}

/// A store node of its own (replication factor 1) under `root`.
fn lone_store(root: &std::path::Path) -> Node {
    start_role(
        "store",
        &root.join("s"),
        None,
        &["-store.segment-replication-factor", "1"],
    )
}

#[test]
fn a_rolling_restart_of_the_ingesters_stores_every_line_once() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let store = lone_store(root.path());
    let peer = store.addr("cluster").to_string();
    let mut ings = [
        ingester(&root.path().join("i1"), &peer, None),
        ingester(&root.path().join("i2"), &peer, None),
    ];
    let fast: Vec<String> = ings.iter().map(|n| n.addr("fast").to_string()).collect();
    let durable: Vec<String> = ings
        .iter()
        .map(|n| format!("tcp://{}", n.addr("durable")))
        .collect();
    let producers = vec![
        Producer::start("fast", &[&fast[0], &fast[1]]),
        Producer::start("durable", &[&durable[0], &durable[1]]),
    ];
    std::thread::sleep(Duration::from_millis(1000));
    for (i, dir) in ["i1", "i2"].iter().enumerate() {
        let status = ings[i].terminate(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "graceful stop: {status:?}\n{}",
            ings[i].log_text()
        );
        let again = ingester(&root.path().join(dir), &peer, Some(&ings[i]));
        ings[i] = again;
        std::thread::sleep(Duration::from_millis(1500));
    }
    let sent: Vec<(String, u64)> = producers
        .into_iter()
        .map(|p| (p.name.clone(), p.finish()))
        .collect();
    assert!(sent.iter().all(|(_, n)| *n > RATE * 3), "{sent:?}");
    let (missing, dups) = settle(store.addr("api"), &sent);
    assert_eq!(missing, 0, "no line lost");
    assert!(
        dups.values().all(|d| *d == 0),
        "a graceful restart repeats nothing: {dups:?}"
    );
}

#[test]
fn a_killed_ingester_costs_at_most_about_a_second_of_resends() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let store = lone_store(root.path());
    let peer = store.addr("cluster").to_string();
    let mut ing = ingester(&root.path().join("i1"), &peer, None);
    let fast = ing.addr("fast").to_string();
    let durable = format!("tcp://{}", ing.addr("durable"));
    let producers = vec![
        Producer::start("fast", &[&fast]),
        Producer::start("durable", &[&durable]),
    ];
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        let _ = ing.child.kill();
        let _ = ing.child.wait();
        let again = ingester(&root.path().join("i1"), &peer, Some(&ing));
        ing = again;
    }
    std::thread::sleep(Duration::from_millis(1000));
    let sent: Vec<(String, u64)> = producers
        .into_iter()
        .map(|p| (p.name.clone(), p.finish()))
        .collect();
    let (missing, dups) = settle(store.addr("api"), &sent);
    assert_eq!(missing, 0, "no line lost");
    for (name, d) in &dups {
        // Two kills, each allowed about a second of this forwarder's traffic.
        assert!(
            *d <= 2 * RATE,
            "{name}: {d} duplicates for two kills at {RATE} lines/s"
        );
    }
}
