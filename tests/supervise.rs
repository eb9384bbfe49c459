//! The run group: when any long-running part of a node fails (here injected through the
//! test-only `OKLOG_FAILPOINT` hook), the node says which, shuts down in order and exits
//! non-zero, so a supervisor restarts it; `/health` lists every part's state.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn health_lists_every_part_running() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let health: serde_json::Value =
        serde_json::from_slice(&http("GET", node.addr("api"), "/health", b"").body).unwrap();
    let parts = health["parts"].as_object().expect("parts");
    for part in PARTS.iter().filter(|p| **p != "connection") {
        assert_eq!(parts[*part], "running", "{part}: {health}");
    }
}

#[test]
fn a_panicking_lifecycle_step_is_logged_and_counted_and_the_node_goes_on() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_env(
        dir.path(),
        &ingeststore_args(&[]),
        &["api"],
        &[("OKLOG_FAILPOINT", "lifecycle-step")],
    );
    let counted = |kind: &str| {
        let name = format!("oklog_store_compactions_total{{kind=\"{kind}\",result=\"Panic\"}}");
        metric(node.addr("api"), &name).is_some_and(|n| n >= 1.0)
    };
    // Steps take turns, one a second: two of them have panicked by now, and were counted.
    eventually(
        Duration::from_secs(10),
        "two panicked steps counted",
        || (counted("Overlapping") && counted("Sequential")).then_some(()),
    );
    let log = node.log_text();
    assert!(
        log.contains("store lifecycle step panicked") && log.contains("injected failure"),
        "{log}"
    );
    let health: serde_json::Value =
        serde_json::from_slice(&http("GET", node.addr("api"), "/health", b"").body).unwrap();
    assert_eq!(health["parts"]["lifecycle"], "running", "{health}");
}

/// Every kind of part of an `ingeststore`.
const PARTS: &[&str] = &[
    "api",
    "fast",
    "durable",
    "bulk",
    "connection",
    "ingest-sync",
    "ingest-timeouts",
    "consumer-0",
    "lifecycle",
    "gossip",
    "gossip-receive",
    "push-writer",
    "syslog-tcp",
    "syslog-udp",
    "security-reload",
];

#[test]
fn a_failing_part_stops_the_node_with_a_non_zero_exit() {
    let _serial = serial();
    for part in PARTS {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        let mut child = Command::new(BIN)
            .args(ingeststore_args(&[]))
            .current_dir(dir.path())
            .env("OKLOG_FAILPOINT", part)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        if *part == "connection" {
            // A connection has to exist to fail.
            let fast = eventually(Duration::from_secs(10), "the fast listener", || {
                listening(&std::fs::read_to_string(&log).unwrap_or_default())
                    .get("fast")
                    .cloned()
            });
            let _ = std::net::TcpStream::connect(fast);
        }
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!(
                    "{part}: the node kept running: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.code(), Some(1), "{part}: {text}");
        let named = if *part == "connection" {
            "part=fast"
        } else {
            &format!("part={part}")
        };
        assert!(
            text.contains("a part of the node ended unexpectedly") && text.contains(named),
            "{part}: {text}"
        );
        assert!(
            text.contains("msg=stopped"),
            "{part}: ordered shutdown: {text}"
        );
    }
}
