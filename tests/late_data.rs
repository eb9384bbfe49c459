//! Late records into ranges that are already compressed: they are gathered into late segments
//! of their own and merged with each other, never by rewriting the compressed segments they
//! fall among; queries stay exact throughout; a SIGKILL while late segments are merged leaves
//! every record exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use oklog::record::encode_ulid;
use oklog::segment::{Format, Reader};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    oklog::gotime::now_ms() as u64
}

fn args() -> Vec<String> {
    ingeststore_args(&[
        "-store.segment-compress-after",
        "1h",
        "-store.segment-target-size",
        "1000000",
        "-store.segment-settle",
        "3s",
    ])
}

/// The store's `.flushed` segments: path, format and records.
fn segments(store: &Path) -> Vec<(PathBuf, Format, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "flushed"))
        .filter_map(|p| {
            let r = Reader::open_file(&p).ok()??;
            let info = r.info();
            Some((p, info.format, info.records))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// 4 days of records, from 6 to 2 days ago, in time order, handed to the store as `parts`
/// segments (as a consumer would): (time in ms, entry number) of each.
fn in_order(api: &str, parts: u64, n: u64) -> Vec<(u64, u64)> {
    let start = now_ms() - 6 * DAY_MS;
    let step = 4 * DAY_MS / (parts * n);
    let mut sent = Vec::new();
    for k in 0..parts {
        let mut body = String::new();
        for i in 0..n {
            let e = k * n + i;
            let ms = start + e * step;
            let id = String::from_utf8(encode_ulid(ms, u128::from(e) << 40).to_vec()).unwrap();
            body.push_str(&format!(
                "{id} svc GET /item/{} status={} evt-{e}\n",
                e % 97,
                [200, 404, 500][(e % 3) as usize]
            ));
            sent.push((ms, e));
        }
        let r = http("POST", api, "/store/replicate", body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    sent
}

/// `n` records with times spread at random over the same 4 days, pushed through Loki in a
/// random order, numbered from `first`.
fn late(api: &str, first: u64, n: u64, rng: &mut rand::rngs::StdRng) -> Vec<(u64, u64)> {
    let start = now_ms() - 6 * DAY_MS;
    let mut entries: Vec<(u64, u64)> = (0..n)
        .map(|i| (start + rng.random_range(0..4 * DAY_MS), first + i))
        .collect();
    entries.shuffle(rng);
    for batch in entries.chunks(400) {
        let r = loki_json(
            api,
            "svc",
            batch.iter().map(|(ms, e)| {
                (
                    i128::from(*ms) * 1_000_000,
                    format!("GET /late/{} status=200 evt-{e}", e % 89),
                )
            }),
        );
        assert_eq!(r.status, 204, "{}", r.text());
    }
    entries
}

const ALL: &str = "/store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";

/// Every record once, in time order; random windows and a newest-first limit exact.
fn check_answers(api: &str, want: &[(u64, u64)], rng: &mut rand::rngs::StdRng) {
    let mut sorted = want.to_vec();
    sorted.sort();
    let got = evt_answer(api, ALL);
    assert_eq!(got.len(), sorted.len(), "every record once");
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
    let mut ids: Vec<u64> = got.iter().map(|g| g.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sorted.len(), "no record twice");
    let (lo, hi) = (sorted[0].0, sorted[sorted.len() - 1].0);
    for _ in 0..8 {
        let a = rng.random_range(lo..=hi);
        let b = (a + rng.random_range(0..DAY_MS / 2)).min(hi);
        let path = format!(
            "/store/query?from={}&to={}",
            ms_text(a as i64),
            ms_text(b as i64)
        );
        let got: BTreeSet<u64> = evt_answer(api, &path).into_iter().map(|g| g.1).collect();
        let want: BTreeSet<u64> = sorted
            .iter()
            .filter(|(ms, _)| (a..=b).contains(ms))
            .map(|g| g.1)
            .collect();
        assert_eq!(got, want, "{path}");
    }
    let newest: Vec<u64> = evt_answer(api, &format!("{ALL}&order=desc&limit=25"))
        .into_iter()
        .map(|g| g.0)
        .collect();
    let want: Vec<u64> = sorted.iter().rev().take(25).map(|g| g.0).collect();
    assert_eq!(newest, want);
}

/// Wait until every segment is compressed and the set of segments holds still for a whole
/// turn of the lifecycle's steps.
fn settled(store: &Path) -> Vec<(PathBuf, Format, u64)> {
    let mut last = Vec::new();
    let mut same = 0;
    eventually(Duration::from_secs(90), "the store to settle", || {
        let now = segments(store);
        same = if now == last { same + 1 } else { 0 };
        last = now.clone();
        let compressed = now.iter().all(|s| s.1 == Format::Compressed);
        std::thread::sleep(Duration::from_millis(500));
        (compressed && !now.is_empty() && same >= 16).then_some(now)
    })
}

#[test]
fn late_records_into_compressed_ranges_leave_the_compressed_segments_alone() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &args(), &["api"]);
    let api = node.addr("api");
    let store = dir.path().join("data/store");
    let mut rng = rand::rngs::StdRng::seed_from_u64(26);
    // Four segments of about 540 kB, each at size (over half the target): sequential
    // compaction leaves them apart.
    let mut want = in_order(api, 4, 9_000);
    let before = settled(&store);
    assert!(before.len() >= 3, "{before:?}");
    check_answers(api, &want, &mut rng);

    // 10% more, late, spread over the same days, in random order.
    want.extend(late(api, 1_000_000, 3_600, &mut rng));
    eventually(Duration::from_secs(30), "the late records stored", || {
        (evt_answer(api, ALL).len() == want.len()).then_some(())
    });
    check_answers(api, &want, &mut rng);
    let after = settled(&store);
    // The compressed segments are as they were; the late records are gathered into one more
    // (at most 1.5 times the segments of the store taken in order).
    let kept: Vec<&PathBuf> = before.iter().map(|s| &s.0).collect();
    let now: Vec<&PathBuf> = after.iter().map(|s| &s.0).collect();
    assert!(
        kept.iter().all(|p| now.contains(p)),
        "{before:?} → {after:?}"
    );
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    let records: u64 = after.iter().map(|s| s.2).sum();
    assert_eq!(records as usize, want.len());
    check_answers(api, &want, &mut rng);
}

#[test]
fn a_sigkill_while_late_segments_merge_keeps_every_record_once() {
    let _serial = serial();
    for point in ["compact-after-an-output", "compact-before-remove"] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data/store");
        let mut rng = rand::rngs::StdRng::seed_from_u64(27);
        let mut node = Node::start(dir.path(), &args(), &["api"]);
        let mut want = in_order(node.addr("api"), 3, 9_000);
        let before = settled(&store);
        assert!(node.terminate(Duration::from_secs(20)).is_some());
        drop(node);

        // Late records come in; the first merge of them dies at `point`.
        let mut node =
            Node::start_env(dir.path(), &args(), &["api"], &[("OKLOG_FAILPOINT", point)]);
        want.extend(late(node.addr("api"), 1_000_000, 2_700, &mut rng));
        let status = eventually(Duration::from_secs(60), "the node to die", || {
            node.child.try_wait().unwrap()
        });
        assert!(!status.success(), "{point}: {status}");
        drop(node);

        let node = Node::start(dir.path(), &args(), &["api"]);
        check_answers(node.addr("api"), &want, &mut rng);
        let after = settled(&store);
        let records: u64 = after.iter().map(|s| s.2).sum();
        assert_eq!(
            records as usize,
            want.len(),
            "{point}: each record once on disk"
        );
        let kept: Vec<&PathBuf> = before.iter().map(|s| &s.0).collect();
        assert!(
            kept.iter().all(|p| after.iter().any(|s| &&s.0 == p)),
            "{point}: {before:?} → {after:?}"
        );
        check_answers(node.addr("api"), &want, &mut rng);
    }
}
