//! Query power with real processes: topics as a key, newest first with a limit, topic counts,
//! hits by topic and per-topic retention, each checked against a reference computed here from
//! the records sent, on a 2-store cluster where one node keeps raw segments and the other
//! compressed ones, some records on both (replicas) and some on one.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

fn ulid_text(ms: u64, entropy: u128) -> String {
    String::from_utf8(oklog::record::encode_ulid(ms, entropy).to_vec()).unwrap()
}

fn now_ms() -> u64 {
    oklog::gotime::now_ms() as u64
}

const TOPICS: [&str; 6] = ["web", "web-api", "db", "auth", "kernel", "debug"];

/// Segment `k` of `n` records, 2 h old, `k` minutes apart: topics in turn, payloads with a
/// level and a sequence number.
fn segment(base: u64, k: u64, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = ulid_text(base + k * 60_000 + i * 10, u128::from(k * n + i));
            let topic = TOPICS[((i * 7 + k) % TOPICS.len() as u64) as usize];
            let level = ["info", "warn", "error"][(i % 3) as usize];
            format!("{id} {topic} level={level} seq={k}-{i}\n")
        })
        .collect()
}

fn post(api: &str, lines: &[String]) {
    let r = http("POST", api, "/store/replicate", lines.concat().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// What a query must answer: records in `[from, to]` of the topics (exact or `*` prefix
/// globs) containing `q`, in order, cut at `limit`.
fn reference(
    all: &[String],
    (from, to): (u64, u64),
    topics: &[&str],
    q: &str,
    desc: bool,
    limit: Option<usize>,
) -> Vec<String> {
    let mut out: Vec<String> = all
        .iter()
        .filter(|l| {
            let ms = oklog::record::ulid_ms(l.as_bytes());
            let topic = l[27..].split(' ').next().unwrap();
            let wanted = topics.is_empty()
                || topics.iter().any(|t| match t.strip_suffix('*') {
                    Some(prefix) => topic.starts_with(prefix),
                    None => topic == *t,
                });
            ms >= from && ms <= to && wanted && l[27..].contains(q)
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    if desc {
        out.reverse();
    }
    out.truncate(limit.unwrap_or(usize::MAX));
    out
}

/// What a query with context must answer (oldest first): per topic, grep's `-B`/`-A` over
/// that topic's records, kept in ULID order, each with its kind byte after the ULID (` `
/// match, `-` context, `+`/`~` the same starting a group).
fn context_reference(
    all: &[String],
    (from, to): (u64, u64),
    topics: &[&str],
    q: &str,
    before: usize,
    after: usize,
) -> Vec<String> {
    let mut recs: Vec<String> = all.to_vec();
    recs.sort();
    recs.dedup();
    let recs: Vec<String> = recs
        .into_iter()
        .filter(|l| {
            !reference(
                std::slice::from_ref(l),
                (0, u64::MAX),
                topics,
                "",
                false,
                None,
            )
            .is_empty()
        })
        .collect();
    let topic = |l: &String| l[27..].split(' ').next().unwrap().to_string();
    let mut keep: Vec<Option<bool>> = vec![None; recs.len()];
    let mut by_topic: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, l) in recs.iter().enumerate() {
        by_topic.entry(topic(l)).or_default().push(i);
    }
    for idx in by_topic.values() {
        for (k, &i) in idx.iter().enumerate() {
            let ms = oklog::record::ulid_ms(recs[i].as_bytes());
            if ms >= from && ms <= to && recs[i][27..].contains(q) {
                for &j in &idx[k.saturating_sub(before)..=(k + after).min(idx.len() - 1)] {
                    keep[j].get_or_insert(false);
                }
                keep[i] = Some(true);
            }
        }
    }
    let mut prev_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut kept_before: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, l) in recs.iter().enumerate() {
        let t = topic(l);
        let prev = prev_of.insert(t.clone(), i);
        if let Some(m) = keep[i] {
            let start = prev.is_none() || kept_before.get(&t) != prev.as_ref();
            let k = match (m, start, prev.is_none()) {
                (true, false, _) => ' ',
                (false, false, _) => '-',
                (true, true, false) => '+',
                (false, true, false) => '~',
                (true, true, true) => ':',
                (false, true, true) => '=',
            };
            out.push(format!("{}{k}{}", &l[..26], &l[27..]));
            kept_before.insert(t, i);
        }
    }
    out
}

/// A JSON answer of a GET, which must be a 200.
fn get_json(api: &str, path: &str) -> serde_json::Value {
    let r = http("GET", api, path, b"");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn lines(r: &Response) -> Vec<String> {
    r.text().split_inclusive('\n').map(String::from).collect()
}

/// Two `ingeststore` nodes in one cluster, `a` keeping its segments raw and `b` compressing
/// them, with four segments of 600 records over the topics: 0..2 on a, 1..3 on b (1 and 2
/// replicas on both); `window` runs from the middle of segment 0 (only on a) to the middle of
/// segment 3 (only on b).
struct TwoNodes {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    a: Node,
    b: Node,
    /// The four segments' records.
    segs: Vec<Vec<String>>,
    /// Every record, in order.
    all: Vec<String>,
    window: (u64, u64),
    /// The window's bounds as ULIDs.
    wf: String,
    wt: String,
}

impl TwoNodes {
    /// `a`, `b`, every record, the window and its bounds as ULIDs.
    fn parts(&self) -> (&Node, &Node, &[String], (u64, u64), &str, &str) {
        (&self.a, &self.b, &self.all, self.window, &self.wf, &self.wt)
    }
}

fn two_nodes() -> TwoNodes {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_role(
        "ingeststore",
        da.path(),
        None,
        &["-store.segment-compress-after", "off"],
    );
    let b = start_role(
        "ingeststore",
        db.path(),
        Some(a.addr("cluster")),
        &["-store.segment-compress-after", "0"],
    );
    eventually(Duration::from_secs(20), "the cluster to form", || {
        (metric(a.addr("api"), "oklog_cluster_size") == Some(2.0)
            && metric(b.addr("api"), "oklog_cluster_size") == Some(2.0))
        .then_some(())
    });
    // Segments 0..2 on a, 1..3 on b: 1 and 2 are replicas on both.
    let base = now_ms() - 2 * 3_600_000;
    let segs: Vec<Vec<String>> = (0..4).map(|k| segment(base, k, 600)).collect();
    for seg in &segs[0..3] {
        post(a.addr("api"), seg);
    }
    for seg in &segs[1..4] {
        post(b.addr("api"), seg);
    }
    let all: Vec<String> = segs.concat();
    eventually(Duration::from_secs(60), "b's segments compressed", || {
        (metric(b.addr("api"), "oklog_store_raw_segments") == Some(0.0)).then_some(())
    });
    // From the middle of segment 0 (only on a) to the middle of segment 3 (only on b).
    let window = (base + 3_000, base + 183_000);
    let (wf, wt) = (ulid_text(window.0, 0), ulid_text(window.1, u128::MAX >> 48));
    TwoNodes {
        _dirs: (da, db),
        a,
        b,
        segs,
        all,
        window,
        wf,
        wt,
    }
}

#[test]
fn topics_newest_first_and_limits_answer_as_grep_across_a_raw_and_a_compressed_node() {
    let _serial = serial();
    let nodes = two_nodes();
    let (a, b, all, window, wf, wt) = nodes.parts();
    let segs = &nodes.segs;
    type Case<'a> = (&'a [&'a str], &'a str, bool, Option<usize>);
    let cases: &[Case] = &[
        (&["db"], "", false, None),
        (&["web"], "", true, None),
        (&["web*"], "error", false, None),
        (&["web*", "kernel"], "", true, Some(25)),
        (&[], "warn", true, Some(1)),
        (&[], "", true, Some(700)),
        (&["auth"], "", false, Some(10)),
        (&["nothing-*"], "", true, None),
    ];
    let path = |base: &str, (topics, q, desc, limit): Case| {
        let mut path = format!("{base}?from={wf}&to={wt}&q={q}");
        for t in topics {
            path.push_str(&format!("&topic={t}"));
        }
        if desc {
            path.push_str("&order=desc");
        }
        if let Some(n) = limit {
            path.push_str(&format!("&limit={n}"));
        }
        path
    };
    for node in [&a, &b] {
        for &(topics, q, desc, limit) in cases {
            let path = path("/store/query", (topics, q, desc, limit));
            let r = http("GET", node.addr("api"), &path, b"");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let want = reference(all, window, topics, q, desc, limit);
            let got = lines(&r);
            assert!(
                got == want,
                "{path}: {} records, want {}",
                got.len(),
                want.len()
            );
        }
    }
    // Each node on its own (`/store/_query`): the same over the records it holds.
    for (node, own) in [(&a, segs[0..3].concat()), (&b, segs[1..4].concat())] {
        for &(topics, q, desc, limit) in cases {
            let path = path("/store/_query", (topics, q, desc, limit));
            let r = http("GET", node.addr("api"), &path, b"");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert!(
                lines(&r) == reference(&own, window, topics, q, desc, limit),
                "{path} on one node"
            );
        }
    }
}

#[test]
fn context_lines_per_topic_merge_across_a_raw_and_a_compressed_node() {
    let _serial = serial();
    let nodes = two_nodes();
    let (a, b, all, window, wf, wt) = nodes.parts();
    // Context lines: grep's -B/-A per topic, merged across the nodes, oldest or newest first.
    type Ctx<'a> = (&'a [&'a str], &'a str, usize, usize);
    let contexts: &[Ctx] = &[
        (&["db"], "level=error", 1, 1),
        (&[], "seq=2-1", 2, 3),
        (&["web*"], "seq=1-", 0, 2),
        (&[], "level=warn", 3, 0),
    ];
    for node in [&a, &b] {
        for &(topics, q, before, after) in contexts {
            let mut path =
                format!("/store/query?from={wf}&to={wt}&q={q}&before={before}&after={after}");
            for t in topics {
                path.push_str(&format!("&topic={t}"));
            }
            let want = context_reference(all, window, topics, q, before, after);
            let r = http("GET", node.addr("api"), &path, b"");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let got = lines(&r);
            let diff = got.iter().zip(&want).position(|(g, w)| g != w);
            assert!(
                got == want,
                "{path}: {} lines, want {}; first difference: {:?}",
                got.len(),
                want.len(),
                diff.map(|i| (
                    &got[i.saturating_sub(1)..=i],
                    &want[i.saturating_sub(1)..=i]
                ))
            );
            // Newest first: the same records and kinds (group starts aside), reversed.
            let r = http("GET", node.addr("api"), &format!("{path}&order=desc"), b"");
            let plain = |l: &String| {
                let k = if matches!(&l[26..27], " " | "+") {
                    ' '
                } else {
                    '-'
                };
                format!("{}{k}{}", &l[..26], &l[27..])
            };
            let mut got: Vec<String> = lines(&r).iter().map(plain).collect();
            got.reverse();
            let want: Vec<String> = want.iter().map(plain).collect();
            assert!(got == want, "{path}&order=desc");
        }
    }
    // The CLI prints grep's `--` between groups, and JSON says each record's kind.
    let out = oklog(&[
        "query",
        "-store",
        a.addr("api"),
        "-from",
        wf,
        "-to",
        wt,
        "-topic",
        "db",
        "-q",
        "level=error",
        "-C",
        "1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want = context_reference(all, window, &["db"], "level=error", 1, 1);
    let groups = want
        .iter()
        .filter(|l| matches!(&l[26..27], "+" | "~"))
        .count();
    assert_eq!(text.lines().filter(|l| *l == "--").count(), groups - 1);
    assert_eq!(text.lines().filter(|l| *l != "--").count(), want.len());
    assert!(
        text.lines().all(|l| l == "--" || l.starts_with("db ")),
        "{text}"
    );
    let out = oklog(&[
        "query",
        "-store",
        a.addr("api"),
        "-from",
        wf,
        "-to",
        wt,
        "-topic",
        "db",
        "-q",
        "level=error",
        "-B",
        "1",
        "-output",
        "json",
    ]);
    let kinds: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want = context_reference(all, window, &["db"], "level=error", 1, 0);
    let want_kinds: Vec<&str> = want
        .iter()
        .map(|l| {
            if matches!(&l[26..27], " " | "+") {
                "match"
            } else {
                "context"
            }
        })
        .collect();
    assert_eq!(kinds, want_kinds);
}

#[test]
fn topic_blocks_counts_hits_and_bad_parameters_across_a_raw_and_a_compressed_node() {
    let _serial = serial();
    let nodes = two_nodes();
    let (a, b, all, window, wf, wt) = nodes.parts();
    // Only the selected topic's blocks are read on the compressed node.
    let one = http(
        "GET",
        b.addr("api"),
        &format!("/store/_query?from={wf}&to={wt}&topic=kernel"),
        b"",
    );
    let every = http(
        "GET",
        b.addr("api"),
        &format!("/store/_query?from={wf}&to={wt}"),
        b"",
    );
    let scanned =
        |r: &Response| -> u64 { r.header("X-Oklog-Bytes-Scanned").unwrap().parse().unwrap() };
    assert!(
        scanned(&one) * 3 < scanned(&every),
        "one topic of six read {} of {} bytes",
        scanned(&one),
        scanned(&every)
    );
    // The CLI, newest first.
    let out = oklog(&[
        "query",
        "-store",
        a.addr("api"),
        "-from",
        wf,
        "-to",
        wt,
        "-topic",
        "web-api",
        "-order",
        "desc",
        "-limit",
        "5",
        "-ulid",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        reference(all, window, &["web-api"], "", true, Some(5)).concat()
    );
    // Topic counts, replicas counted once.
    let j = get_json(a.addr("api"), &format!("/store/topics?from={wf}&to={wt}"));
    let got: BTreeMap<String, u64> = j["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().unwrap().to_string(),
                t["records"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for l in reference(all, window, &[], "", false, None) {
        *want
            .entry(l[27..].split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(got, want);
    assert_eq!(j["topics"][0]["retain"], "168h", "{j}");
    // Hits by topic: one series per topic, summing to the total.
    let j = get_json(
        b.addr("api"),
        &format!("/store/hits?from={wf}&to={wt}&by=topic&step=1m"),
    );
    let series: BTreeMap<String, u64> = j["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let counts: u64 = s["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .sum();
            assert_eq!(Some(counts), s["count"].as_u64());
            (s["topic"].as_str().unwrap().to_string(), counts)
        })
        .collect();
    assert_eq!(series, want);
    assert_eq!(j["other"]["count"], 0);
    // Bad parameters are 400s that say why, on the gateway and the node-local forms.
    for (path, why) in [
        ("/store/query?topic=a/b", "topic"),
        ("/store/query?topic=", "topic"),
        ("/store/_query?topic=x%20y", "topic"),
        ("/store/query?limit=-1", "limit"),
        ("/store/query?limit=0", "limit"),
        ("/store/query?limit=99999999999", "limit"),
        ("/store/query?order=sideways", "order"),
        ("/store/_query?order=", "order"),
        ("/store/query?before=-2", "before"),
        ("/store/query?after=100000", "after"),
        ("/store/hits?by=node", "by"),
        ("/store/topics?topic=*/x", "topic"),
        ("/store/stream?topic=%2e%2e", "topic"),
    ] {
        let r = http("GET", a.addr("api"), path, b"");
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(why), "{path}: {}", r.text());
    }
    let out = oklog(&["query", "-store", a.addr("api"), "-order", "up"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_short_topic_retention_removes_that_topic_only_and_stays_removed_across_a_restart() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "-store.topic-retain",
        "debug=1h",
        "-store.topic-retain",
        "kern*=90m",
        "-store.segment-compress-after",
        "off",
    ];
    let node = start_role("ingeststore", dir.path(), None, &flags);
    // Two hours old: debug (1 h) and kernel (90 min) are past their retention, the rest (the
    // default, 168 h) are not.
    let base = now_ms() - 2 * 3_600_000;
    let seg = segment(base, 0, 600);
    post(node.addr("api"), &seg);
    let kept: Vec<String> = seg
        .iter()
        .filter(|l| !l[27..].starts_with("debug ") && !l[27..].starts_with("kernel "))
        .cloned()
        .collect();
    assert!(kept.len() < seg.len() && !kept.is_empty());
    let all = |node: &Node| -> Vec<String> {
        records_at(node.addr("api"), "/store/query")
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    };
    // Hidden from queries at once (whether or not the lifecycle has run yet).
    assert_eq!(all(&node), kept);
    let j = get_json(node.addr("api"), "/store/topics?from=2000-01-01T00:00:00Z");
    let names: Vec<&str> = j["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"debug") && names.contains(&"db"), "{j}");
    // Reclaimed on disk by the lifecycle.
    let expired = (seg.len() - kept.len()) as f64;
    eventually(
        Duration::from_secs(30),
        "the expired records dropped",
        || {
            (metric(node.addr("api"), "oklog_store_expired_records_total") == Some(expired))
                .then_some(())
        },
    );
    drop(node);
    let store = dir.path().join("data/store");
    let files: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "flushed"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["segment", "cat"];
    args.extend(files.iter().map(String::as_str));
    let out = oklog(&args);
    assert!(out.status.success());
    let on_disk = String::from_utf8(out.stdout).unwrap();
    assert_eq!(on_disk.split_inclusive('\n').count(), kept.len());
    // Across a restart (retention given again): the same answer, nothing back.
    let node = start_role("ingeststore", dir.path(), None, &flags);
    assert_eq!(all(&node), kept);
    let j = get_json(
        node.addr("api"),
        "/store/topics?from=2000-01-01T00:00:00Z&topic=web*",
    );
    assert_eq!(j["topics"][0]["retain"], "168h", "{j}");
    let j = get_json(
        node.addr("api"),
        "/store/topics?from=2000-01-01T00:00:00Z&topic=kernel",
    );
    assert_eq!(j["topics"].as_array().unwrap().len(), 0, "{j}");
    // A bad rule stops the node at start with the reason.
    let bad = oklog(&[
        "ingeststore",
        "-store.path",
        dir.path().join("other").to_str().unwrap(),
        "-store.topic-retain",
        "debug",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("PATTERN=DURATION"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn a_stream_follows_only_its_topics() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start_role(
        "ingeststore",
        dir.path(),
        None,
        &["-ingest.topic-mode", "dynamic"],
    );
    let mut stream = std::process::Command::new(BIN)
        .args([
            "stream",
            "-store",
            node.addr("api"),
            "-topic",
            "web*",
            "-topic",
            "auth",
            "-q",
            "wanted",
            "-window",
            "300ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut stream);
    wait_for_streams(node.addr("api"), 1);
    let input: String = (0..60)
        .map(|i| format!("{} wanted {i}\n", TOPICS[i % TOPICS.len()]))
        .collect();
    assert!(
        forward(node.addr("fast"), input.as_bytes(), &[])
            .status
            .success()
    );
    let want: Vec<String> = input
        .lines()
        .filter(|l| l.starts_with("web") || l.starts_with("auth "))
        .map(String::from)
        .collect();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(line);
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    while let Ok(line) = rx.try_recv() {
        got.push(line);
    }
    let _ = stream.kill();
    let _ = stream.wait();
    assert_eq!(got, want);
    // A bad topic is refused before the stream starts.
    let out = oklog(&["stream", "-store", node.addr("api"), "-topic", "a b"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic"));
}

#[test]
fn a_sigkill_between_expiring_and_removing_the_input_loses_nothing_and_repeats_nothing() {
    let _serial = serial();
    // A raw segment (rewritten without its expired records) and a compressed one (its expired
    // topic blocks dropped), each killed after the output is in and before the input goes.
    for (point, compress_after) in [
        ("expire-rewrite-before-remove", "off"),
        ("expire-drop-before-remove", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Written before the node starts, so the lifecycle converts it before it expires.
        let store = dir.path().join("data/store");
        std::fs::create_dir_all(&store).unwrap();
        let seg = segment(now_ms() - 2 * 3_600_000, 0, 3000);
        let name = format!("{}-{}.flushed", &seg[0][..26], &seg[seg.len() - 1][..26]);
        std::fs::write(store.join(name), seg.concat()).unwrap();
        let kept: Vec<String> = seg
            .iter()
            .filter(|l| !l[27..].starts_with("debug "))
            .cloned()
            .collect();
        let args = ingeststore_args(&[
            "-store.topic-retain",
            "debug=1h",
            "-store.segment-compress-after",
            compress_after,
        ]);
        let mut node = Node::start_env(dir.path(), &args, &["api"], &[("OKLOG_FAILPOINT", point)]);
        let status = eventually(Duration::from_secs(60), "the failpoint", || {
            node.child.try_wait().unwrap()
        });
        assert!(!status.success(), "{point}: {status}");
        drop(node);
        // Both the input and its rewritten copy are on disk; queries show each record once.
        let node = Node::start(dir.path(), &args, &["api"]);
        let all = |node: &Node| -> Vec<String> {
            records_at(node.addr("api"), "/store/query")
                .into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect()
        };
        assert_eq!(all(&node), kept, "{point}");
        // The lifecycle finishes the job: on disk, each kept record once, nothing expired.
        eventually(Duration::from_secs(60), "the store to settle", || {
            let files: Vec<String> = std::fs::read_dir(&store)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "flushed"))
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let mut args = vec!["segment", "cat"];
            args.extend(files.iter().map(String::as_str));
            let out = oklog(&args);
            let mut on_disk: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .split_inclusive('\n')
                .map(String::from)
                .collect();
            on_disk.sort();
            (on_disk == kept).then_some(())
        });
        assert_eq!(all(&node), kept, "{point}, settled");
    }
}
