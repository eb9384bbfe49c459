//! The command line as a user meets it: help, flag errors, exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_exits_zero_and_lists_flags_with_env_names() {
    for mode in [
        "forward",
        "ingest",
        "store",
        "ingeststore",
        "query",
        "stream",
        "testsvc",
    ] {
        let out = oklog(&[mode, "-h"]);
        assert_eq!(out.status.code(), Some(0), "{mode}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("USAGE\n  oklog {mode}")),
            "{mode}: {text}"
        );
    }
    let text = String::from_utf8_lossy(&oklog(&["ingeststore", "--help"]).stdout).into_owned();
    for needle in [
        "-store.segment-retain 168h",
        "$OKLOG_STORE_SEGMENT_RETAIN",
        "-ingest.topic default",
        "-api tcp://0.0.0.0:7650",
        "default 1 without -peer, 2 with",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert_eq!(oklog(&[]).status.code(), Some(1), "no mode is an error");
    assert_eq!(oklog(&["frobnicate"]).status.code(), Some(1));
}

#[test]
fn bad_flags_exit_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["ingest", "-nope"], 1, "-nope"),
        (
            &["ingeststore", "-ingest.segment-flush-age", "3d"],
            1,
            "-ingest.segment-flush-age",
        ),
        (
            &["store", "-store.segment-target-size=big"],
            1,
            "-store.segment-target-size",
        ),
        (
            &["ingeststore", "-ingest.topic", "bad topic"],
            1,
            "-ingest.topic",
        ),
        (&["ingest", "-topic-mode", "prefix"], 1, "-topic-mode"),
        (&["ingeststore", "-api", "tcp://host:notaport"], 1, "-api"),
        (&["ingeststore", "-filesystem", "virtual"], 1, "-filesystem"),
        (&["query", "-from", "yesterday"], 2, "-from"),
        (&["query", "-bogus"], 2, "-bogus"),
        (&["query", "-regex=perhaps"], 2, "-regex"),
        (&["forward"], 1, "specify at least one ingest address"),
        (&["forward", "host:port:x"], 1, "unsupported address format"),
        (&["testsvc", "-size", "10"], 1, "minimum -size"),
        (&["stream", "-store", "127.0.0.1:1"], 1, "127.0.0.1:1"),
        (&["stream", "-window", "soon"], 1, "-window"),
        (&["ingeststore", "-log.format", "xml"], 1, "-log.format"),
        (&["forward", "-log.format=yaml", "x"], 1, "-log.format"),
    ];
    for (args, code, needle) in cases {
        let out = oklog(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err:?}"
        );
    }
}

#[test]
fn environment_variables_set_flags() {
    let out = Command::new(BIN)
        .args(["ingeststore"])
        .env("OKLOG_INGEST_SEGMENT_FLUSH_AGE", "3 days")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("OKLOG_INGEST_SEGMENT_FLUSH_AGE") && err.contains("-ingest.segment-flush-age"),
        "{err}"
    );
}

#[test]
fn query_against_nothing_fails_with_exit_2() {
    // Port 1 on loopback: nothing listens there.
    let out = oklog(&["query", "-store", "127.0.0.1:1", "-q", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
}

#[test]
fn testsvc_emits_lines_of_the_requested_size() {
    let mut child = Command::new(BIN)
        .args(["testsvc", "-id", "svc1", "-size", "100", "-rate", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 1..=20u32 {
        let line = lines.next().unwrap().unwrap();
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(fields[1], "svc1");
        assert_eq!(fields[2], format!("{i:09}"));
        assert!(line.len() < 100 && line.len() > 60, "{line:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn forward_to_nowhere_keeps_retrying_until_an_ingester_appears() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port, then start forwarding to it before anything listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["forward", &addr])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"waited for the ingester\n").unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still retrying");
    let mut args = vec!["ingeststore".to_string()];
    args.extend(quick_flags());
    let fast_at = args.iter().position(|a| a == "-ingest.fast").unwrap() + 1;
    args[fast_at] = addr.clone();
    let node = Node::start(dir.path(), &args, &["api", "fast"]);
    let status = child.wait().unwrap();
    assert!(status.success());
    let recs = wait_for_records(node.addr("api"), 1);
    assert!(recs[0].ends_with(b" default waited for the ingester\n"));
}

#[test]
fn logs_are_logfmt_by_default_and_json_on_request() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::ingeststore(dir.path(), &[]);
    let log = node.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("msg=listening name=api"))
        .unwrap_or_else(|| panic!("no logfmt listening line in\n{log}"));
    assert!(
        line.starts_with("ts=20") && line.contains(" level=info "),
        "{line}"
    );
    node.terminate(Duration::from_secs(10));

    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::ingeststore(dir.path().join("json").as_path(), &["-log.format", "json"]);
    let log = node.log_text();
    let mut listening = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        assert!(
            v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(),
            "{line}"
        );
        if v["msg"] == "listening" {
            listening += 1;
            assert!(
                v["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{line}"
            );
        }
    }
    assert!(listening >= 4, "{log}");
    node.terminate(Duration::from_secs(10));
}

#[test]
fn query_colours_matches_only_when_asked_or_on_a_terminal() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let out = forward(node.addr("fast"), b"an error here\nall fine\n", &[]);
    assert!(out.status.success());
    wait_for_records(node.addr("api"), 2);
    let api = node.addr("api");
    let run = |extra: &[&str]| {
        let mut args = vec!["query", "-store", api, "-q", "error"];
        args.extend_from_slice(extra);
        let out = oklog(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&[]), "default an error here\n", "piped: no colour");
    assert_eq!(
        run(&["-color", "always"]),
        "default an \x1b[01;31merror\x1b[0m here\n"
    );
    assert!(!run(&["-color", "always", "-output", "json"]).contains('\x1b'));
    let out = oklog(&["query", "-store", api, "-color", "rainbow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("-color"));
}
