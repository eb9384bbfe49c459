//! The cold tier with real processes: segments compressed by the lifecycle survive a SIGKILL
//! at any point of a conversion, corrupt blocks make a partial answer that clients are told
//! about (trailers, or an aborted body, and `oklog query` exit 3), a segment whose footer is
//! gone is quarantined at start-up, a raw and a compressed node answer alike, and
//! `-store.segment-format raw` keeps a directory the original can read.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use oklog::segment::{Footer, Format};

/// ULID text for `ms` and `entropy`.
fn ulid_text(ms: u64, entropy: u128) -> String {
    String::from_utf8(oklog::record::encode_ulid(ms, entropy).to_vec()).unwrap()
}

fn now_ms() -> u64 {
    oklog::gotime::now_ms() as u64
}

/// Replicate `segments` segments of `n` records each, two hours old and not overlapping, into
/// the node at `api`; returns their ULIDs.
fn replicate_old(api: &str, segments: u64, n: u64) -> HashSet<String> {
    let base = now_ms() - 2 * 3_600_000;
    let mut ids = HashSet::new();
    for k in 0..segments {
        let mut body = Vec::new();
        for i in 0..n {
            let id = ulid_text(base + k * 60_000 + i, u128::from(k * n + i));
            body.extend_from_slice(
                format!(
                    "{id} svc-{} GET /api/items/{} status={} request_id=req-{k}-{i}\n",
                    i % 4,
                    i % 97,
                    [200, 404, 500][(i % 3) as usize]
                )
                .as_bytes(),
            );
            ids.insert(id);
        }
        let r = http("POST", api, "/store/replicate", &body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    ids
}

fn store_dir(node: &Node) -> std::path::PathBuf {
    node.dir.join("data/store")
}

/// The `.flushed` segments of a store directory and their formats.
fn segments(store: &Path) -> Vec<(std::path::PathBuf, Format)> {
    let mut out: Vec<_> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "flushed"))
        .map(|p| {
            let head = std::fs::read(&p).unwrap();
            let f = Format::of(&head);
            (p, f)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn wait_all_compressed(api: &str) {
    eventually(Duration::from_secs(60), "every segment compressed", || {
        (metric(api, "oklog_store_raw_segments") == Some(0.0)
            && metric(api, "oklog_store_segments{state=\"flushed\"}").is_none_or(|n| n > 0.0))
        .then_some(())
    });
}

fn ids_of(records: &[Vec<u8>]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r[..26]).into_owned())
        .collect()
}

#[test]
fn sigkill_at_any_point_of_a_conversion_keeps_every_record_once() {
    let _serial = serial();
    let args = ingeststore_args(&["-store.segment-compress-after", "1h"]);
    // Two exact points (the output written but not renamed in; renamed in but the input not
    // removed), a SIGKILL while the output is being written, and one at a fixed moment.
    let points: Vec<(&str, u64)> = vec![
        ("convert-before-rename", 0),
        ("convert-before-remove", 0),
        ("", 0),
        ("", 3000),
    ];
    for (point, kill_after_ms) in points {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::start_env(dir.path(), &args, &["api"], &[("OKLOG_FAILPOINT", point)]);
        let ids = replicate_old(node.addr("api"), 6, 4000);
        assert_eq!(all_records(node.addr("api")).len(), ids.len());
        if point.is_empty() && kill_after_ms == 0 {
            // While a `.converting` file is being written.
            let store = store_dir(&node);
            eventually(Duration::from_secs(30), "a conversion to start", || {
                std::fs::read_dir(&store)
                    .unwrap()
                    .any(|e| {
                        e.unwrap()
                            .file_name()
                            .to_string_lossy()
                            .ends_with(".converting")
                    })
                    .then_some(())
            });
            let _ = node.child.kill();
        } else if point.is_empty() {
            std::thread::sleep(Duration::from_millis(kill_after_ms));
            let _ = node.child.kill();
        }
        let status = eventually(Duration::from_secs(30), "the node to die", || {
            node.child.try_wait().unwrap()
        });
        assert!(!status.success(), "{point}: {status}");
        drop(node);
        let node = Node::start(dir.path(), &args, &["api"]);
        let got = ids_of(&all_records(node.addr("api")));
        assert_eq!(
            got.len(),
            ids.len(),
            "{point}@{kill_after_ms}: every record once"
        );
        assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), ids);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        // Conversion goes on after the restart and finishes with the same records.
        wait_all_compressed(node.addr("api"));
        let again = ids_of(&all_records(node.addr("api")));
        assert_eq!(again, got, "{point}: the same answer once compressed");
        for (p, f) in segments(&store_dir(&node)) {
            assert_eq!(f, Format::Compressed, "{}", p.display());
            Footer::parse(&std::fs::read(&p).unwrap()).expect("a whole footer");
        }
        let leftovers: Vec<_> = std::fs::read_dir(store_dir(&node))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| {
                n.ends_with(".converting") || n.ends_with(".reading") || n.ends_with(".bad")
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// A GET that keeps a body that broke off, asking for trailers or not.
fn get_raw(addr: &str, path: &str, te_trailers: bool) -> Response {
    let te: &[(&str, &str)] = if te_trailers {
        &[("TE", "trailers")]
    } else {
        &[]
    };
    http_partial("GET", addr, path, te, b"")
}

#[test]
fn corrupt_blocks_make_a_partial_answer_that_every_client_is_told_about() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Segments of about 2.7 MB: three that sequential compaction leaves apart.
    let args = ingeststore_args(&[
        "-store.segment-compress-after",
        "1h",
        "-store.segment-target-size",
        "4000000",
    ]);
    let mut node = Node::start(dir.path(), &args, &["api"]);
    let ids = replicate_old(node.addr("api"), 3, 30_000);
    wait_all_compressed(node.addr("api"));
    assert!(node.terminate(Duration::from_secs(20)).is_some());
    drop(node);
    let segs = segments(&dir.path().join("data/store"));
    assert_eq!(segs.len(), 3, "{segs:?}");
    // Flip a byte in the first block of the first segment; cut the last one's footer off.
    let first = std::fs::read(&segs[0].0).unwrap();
    let footer = Footer::parse(&first).unwrap();
    assert!(footer.blocks.len() > 1);
    let victim = &footer.blocks[0];
    let lost = victim.records as usize;
    let mut bytes = first.clone();
    bytes[victim.offset as usize + 100] ^= 0x20;
    std::fs::write(&segs[0].0, &bytes).unwrap();
    let last = std::fs::read(&segs[2].0).unwrap();
    std::fs::write(&segs[2].0, &last[..last.len() - 10]).unwrap();
    let third = Footer::parse(&last).unwrap().records as usize;

    let node = Node::start(dir.path(), &args, &["api"]);
    let api = node.addr("api").to_string();
    let bad = segs[2].0.with_extension("bad");
    assert!(bad.exists(), "a segment without its footer is quarantined");
    assert_eq!(
        metric(&api, "oklog_store_quarantined_files_total"),
        Some(1.0)
    );
    let all = "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";

    // A client that takes trailers gets every readable record and the count of what is not.
    let with = get_raw(&api, all, true);
    assert_eq!(with.status, 200);
    assert!(with.complete);
    assert_eq!(
        with.trailers
            .get("x-oklog-corrupt-blocks")
            .map(String::as_str),
        Some("1")
    );
    let n = with.body.split_inclusive(|&b| b == b'\n').count();
    assert_eq!(n, ids.len() - third - lost, "everything else is served");
    // Any other client sees the body break off at the end rather than a whole-looking answer,
    // and still gets every readable record first, even one slow to read: the node's own
    // buffers are full when the end comes, and they are sent before the connection is cut.
    let without = get_raw(&api, all, false);
    assert!(!without.complete, "a partial answer is aborted");
    assert_eq!(without.body, with.body);
    let slow = http_partial_after("GET", &api, all, &[], b"", Duration::from_secs(1));
    assert!(!slow.complete, "a partial answer is aborted");
    assert_eq!(slow.body.len(), with.body.len());
    assert!(slow.body == with.body);
    // The node-local form says the same.
    let local = get_raw(&api, &all.replace("/store/query", "/store/_query"), true);
    assert_eq!(
        local
            .trailers
            .get("x-oklog-corrupt-blocks")
            .map(String::as_str),
        Some("1")
    );
    // oklog query prints what there is, warns, and exits 3.
    let out = oklog(&[
        "query",
        "-store",
        &api,
        "-from",
        "2000-01-01T00:00:00Z",
        "-ulid",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 corrupt block(s)"));
    assert_eq!(
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        n
    );
    assert!(metric(&api, "oklog_store_corrupt_blocks_total").unwrap() >= 3.0);
    // A query that needs no damaged block is whole.
    let later = format!(
        "/store/query?from={}&to=2100-01-01T00:00:00Z",
        String::from_utf8_lossy(&segs[1].0.file_name().unwrap().as_encoded_bytes()[..26])
    );
    let fine = get_raw(&api, &later, false);
    assert!(fine.complete && !fine.body.is_empty());
    // `oklog segment` reads the rest of it, says what it left out, and exits 3.
    let cat = oklog(&["segment", "cat", segs[0].0.to_str().unwrap()]);
    assert_eq!(cat.status.code(), Some(3));
    let info = oklog(&["segment", "info", segs[0].0.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("format    compressed (v4)"), "{text}");
    assert!(text.contains("1 corrupt"), "{text}");
}

#[test]
fn a_raw_node_and_a_compressed_node_answer_alike() {
    let _serial = serial();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_role(
        "ingeststore",
        da.path(),
        None,
        &[
            "-store.segment-format",
            "raw",
            "-store.segment-compress-after",
            "0",
            "-store.segment-replication-factor",
            "2",
        ],
    );
    let b = start_role(
        "ingeststore",
        db.path(),
        Some(a.addr("cluster")),
        &[
            "-store.segment-compress-after",
            "0",
            "-store.segment-replication-factor",
            "2",
        ],
    );
    eventually(Duration::from_secs(20), "the cluster to form", || {
        let r = http(
            "GET",
            a.addr("api"),
            "/store/_query?from=2000-01-01T00:00:00Z",
            b"",
        );
        (r.status == 200 && metric(b.addr("api"), "oklog_cluster_size") == Some(2.0)).then_some(())
    });
    let mut input = Vec::new();
    for f in loghub_files() {
        input.extend(std::fs::read(f).unwrap());
    }
    let sent = input
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let out = forward(a.addr("fast"), &input, &[]);
    assert!(out.status.success());
    // Replication factor 2: both nodes hold every record, one raw, one compressed.
    for node in [&a, &b] {
        eventually(
            Duration::from_secs(60),
            "every record on both nodes",
            || (records_at(node.addr("api"), "/store/_query").len() == sent).then_some(()),
        );
    }
    wait_all_compressed(b.addr("api"));
    assert!(
        segments(&store_dir(&a))
            .iter()
            .all(|(_, f)| *f == Format::Raw)
    );
    assert!(
        segments(&store_dir(&b))
            .iter()
            .all(|(_, f)| *f == Format::Compressed)
    );
    let queries = [
        "",
        "q=error",
        "q=Exception",
        "q=blk_-1608999687919862906",
        "q=(%3Fi)fail&regex=true",
        "q=%5Edefault%20%5B0-9%5D%7B4%7D&regex=true",
        "q=no-such-needle-anywhere",
    ];
    for q in queries {
        let path = |p: &str| format!("{p}?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&{q}");
        let ra = http("GET", a.addr("api"), &path("/store/_query"), b"");
        let rb = http("GET", b.addr("api"), &path("/store/_query"), b"");
        assert_eq!(ra.status, 200);
        assert!(
            ra.body == rb.body,
            "{q}: {} vs {} bytes",
            ra.body.len(),
            rb.body.len()
        );
        let ga = http("GET", a.addr("api"), &path("/store/query"), b"");
        let gb = http("GET", b.addr("api"), &path("/store/query"), b"");
        assert!(
            ga.body == ra.body && gb.body == ra.body,
            "{q}: the gateways agree"
        );
    }
    let needle = "q=blk_-1608999687919862906";
    let r = http(
        "GET",
        b.addr("api"),
        &format!("/store/_query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&{needle}"),
        b"",
    );
    let scanned: u64 = r.header("X-Oklog-Bytes-Scanned").unwrap().parse().unwrap();
    let stored: u64 = segments(&store_dir(&b))
        .iter()
        .map(|(p, _)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        scanned < stored,
        "a needle reads less than the store: {scanned} of {stored}"
    );
    assert!(r.header("X-Oklog-Blocks-Skipped").is_some());
    // The raw node's directory is what the original writes: record lines.
    for (p, _) in segments(&store_dir(&a)) {
        let data = std::fs::read(&p).unwrap();
        assert!(data.ends_with(b"\n"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(&data[..26], &name.as_bytes()[..26]);
    }
    // And `oklog segment cat` gives the same records from either.
    let cat = |d: &Path| -> Vec<u8> {
        let mut out = Vec::new();
        for (p, _) in segments(d) {
            out.extend(oklog(&["segment", "cat", p.to_str().unwrap()]).stdout);
        }
        out
    };
    let (ca, cb) = (cat(&store_dir(&a)), cat(&store_dir(&b)));
    assert_eq!(ca.len(), cb.len());
}

#[test]
fn older_compressed_segments_are_served_and_rewritten_in_the_background() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/store");
    std::fs::create_dir_all(&store).unwrap();
    // A v2 and a v3 file as earlier versions wrote them: LogHub lines, two hours old.
    let base = now_ms() - 2 * 3_600_000;
    let mut all = Vec::new();
    let mut files = Vec::new();
    let mut n = 0u64;
    for version in [oklog::segment::VERSION_2, oklog::segment::VERSION_3] {
        let mut raw = Vec::new();
        let first = n;
        for (k, f) in loghub_files().iter().enumerate() {
            for line in std::fs::read_to_string(f).unwrap().lines().take(150) {
                let id = ulid_text(base + n * 7, u128::from(n) << 40 | 0xabc);
                raw.extend_from_slice(format!("{id} sys-{k} {line}\n").as_bytes());
                n += 1;
            }
        }
        let cfg = oklog::segment::CompressConfig {
            version,
            ..Default::default()
        };
        let mut file = Vec::new();
        oklog::segment::compress(&raw, &mut file, &cfg).unwrap();
        assert_eq!(Footer::parse(&file).unwrap().version, version);
        let name = format!(
            "{}-{}.flushed",
            ulid_text(base + first * 7, u128::from(first) << 40 | 0xabc),
            ulid_text(base + (n - 1) * 7, u128::from(n - 1) << 40 | 0xabc)
        );
        let path = store.join(&name);
        std::fs::write(&path, &file).unwrap();
        let info = oklog(&["segment", "info", path.to_str().unwrap()]);
        let want = format!("compressed (v{version}; rewritten as v4");
        assert!(String::from_utf8_lossy(&info.stdout).contains(&want));
        files.push(path);
        all.extend(raw);
    }
    let queries = [
        "",
        "q=error",
        "q=(%3Fi)failed%20password&regex=true",
        "q=session%20opened",
        "q=no-such-needle",
    ];
    let answers = |api: &str| -> Vec<Vec<u8>> {
        queries
            .iter()
            .map(|q| {
                let p =
                    format!("/store/_query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&{q}");
                let r = http("GET", api, &p, b"");
                assert_eq!(r.status, 200);
                r.body
            })
            .collect()
    };
    // Compression off: the files are served as they are.
    let node = start_role(
        "ingeststore",
        dir.path(),
        None,
        &["-store.segment-compress-after", "off"],
    );
    let before = answers(node.addr("api"));
    assert_eq!(before[0], all, "every record, as written");
    assert!(!before[3].is_empty(), "the phrase is in the data");
    drop(node);
    std::fs::remove_file(store.join("LOCK")).ok();
    // Compression on: rewritten as v4 in the background, the same answers.
    let node = start_role(
        "ingeststore",
        dir.path(),
        None,
        &["-store.segment-compress-after", "0"],
    );
    for path in &files {
        eventually(
            Duration::from_secs(60),
            "the segment rewritten as v4",
            || {
                std::fs::read(path)
                    .ok()
                    .and_then(|b| Footer::parse(&b).ok())
                    .filter(|f| f.version == oklog::segment::VERSION)
                    .map(|_| ())
            },
        );
    }
    assert_eq!(answers(node.addr("api")), before);
    let stray: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".converting"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
