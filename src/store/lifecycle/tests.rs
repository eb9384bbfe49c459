//! The lifecycle's steps against real store directories, and against grep over the raw
//! records.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::segment::CompressConfig;
use crate::store::log::{ACTIVE, CONVERTING, READING};

/// A raw segment of `size` bytes holding records from `low_ms` to `high_ms`.
fn span(low_ms: u64, high_ms: u64, size: u64) -> Segment {
    let mut s = seg("0", "0");
    s.low = crate::record::encode_ulid(low_ms, 0);
    s.high = crate::record::encode_ulid(high_ms, 0);
    s.size = size;
    s.path = format!("{low_ms}-{high_ms}-{size}").into();
    s
}

#[test]
fn sequential_merges_only_what_doubles_or_reaches_size() {
    let t = 100_000;
    // Segments a second apart, of 1,000 ms...
    let run = |v: &[u64]| {
        v.iter()
            .enumerate()
            .map(|(i, &n)| span(1_000 * i as u64, 1_000 * i as u64 + 999, n))
            .collect::<Vec<_>>()
    };
    let choose = |v: &[u64], now: u64, settle: u64| {
        choose_sequential(&run(v), t, now, Duration::from_millis(settle))
    };
    // Settled tiny neighbours spanning the settle time: merged.
    assert_eq!(choose(&[123; 5], 100_000, 2_000), vec![0, 1, 2, 3, 4]);
    // Not yet settled, or spanning less than it: left alone, unless they make half the target.
    assert!(choose(&[123; 5], 3_500, 2_000).is_empty());
    assert!(choose(&[123; 5], 100_000, 9_000).is_empty());
    assert_eq!(choose(&[30_000, 30_000], 0, 2_000), vec![0, 1]);
    // A segment at size (half the target or more) is never rewritten for small neighbours;
    // the original merged [100000, 2000] here, and a trickle rewrote the large one each time.
    assert_eq!(
        choose(&[60_000, 2000, 2000, 2000], 100_000, 1_000),
        vec![1, 2, 3]
    );
    // Nor is a small one for neighbours much smaller than itself: the run starts after it.
    assert_eq!(choose(&[40_000, 1000, 1000], 100_000, 1_000), vec![1, 2]);
    assert!(
        choose(&[40_000, 600, 1000], 100_000, 1_000).is_empty(),
        "1000 does not double"
    );
    assert_eq!(
        choose(&[40_000, 30_000, 20_000], 100_000, 1_000),
        vec![0, 1]
    );
    assert!(choose(&[200_000, 300_000], 100_000, 1_000).is_empty());
    assert!(choose(&[5], 100_000, 1_000).is_empty());
}

/// Run the compaction choices over a simulated trickle: one small segment every `every_s`
/// seconds for `seconds`, next to `big` (ULID-earlier), the lifecycle choosing every 6 s.
/// Returns (bytes ingested, bytes compaction wrote, whether `big` was ever rewritten, files
/// left).
fn trickle(
    big: u64,
    seconds: u64,
    every_s: u64,
    size: u64,
    settle_s: u64,
) -> (u64, u64, bool, usize) {
    let target = 128 << 20;
    let t0 = 1_800_000_000_000u64;
    let mut segs = vec![span(t0 - 7_200_000, t0 - 1, big)];
    let (mut ingested, mut written, mut big_rewritten) = (0u64, 0u64, false);
    for s in 0..=seconds {
        let now = t0 + s * 1000;
        if s % every_s == 0 && s > 0 {
            segs.push(span(now - every_s * 1000, now - 1, size));
            ingested += size;
        }
        if s % 6 != 0 {
            continue;
        }
        segs.sort_by_key(|a| a.low);
        for chosen in [
            choose_overlapping(&segs, &|s| s.size, target, &|_| false),
            choose_sequential(&segs, target, now, Duration::from_secs(settle_s)),
        ] {
            if chosen.is_empty() {
                continue;
            }
            big_rewritten |= chosen.iter().any(|&i| segs[i].size >= big);
            let total: u64 = chosen.iter().map(|&i| segs[i].size).sum();
            let low = chosen.iter().map(|&i| segs[i].low).min().unwrap();
            let high = chosen.iter().map(|&i| segs[i].high).max().unwrap();
            written += total;
            let mut merged = seg("0", "0");
            (merged.low, merged.high, merged.size) = (low, high, total);
            merged.path = format!("merged-{s}-{total}").into();
            for &i in chosen.iter().rev() {
                segs.remove(i);
            }
            segs.push(merged);
            segs.sort_by_key(|a| a.low);
        }
    }
    (ingested, written, big_rewritten, segs.len())
}

#[test]
fn a_trickle_next_to_a_large_segment_costs_writes_in_proportion() {
    // An hour of one 100-byte record a second, in a segment each (the default target age is
    // 250 ms), next to 1 GiB: the compaction writes each byte about twice (gathered 64 at a
    // time as they come, then once more when the hour has settled; with the ingest's own
    // segment and the store's replica, 4×), and never the large segment.
    let (ingested, written, big, files) = trickle(1 << 30, 3600 + 600, 1, 100, 3600);
    eprintln!("an hour: {ingested} B ingested, {written} B written by compaction, {files} files");
    assert!(!big, "the large segment was rewritten");
    assert!(written <= 2 * ingested, "{written} > 2 × {ingested}");
    // What waits: at most a gathering's worth of new files, the gathered ones of the last
    // hour and a bit, and the settled ones.
    assert!(files < 64 + 4200 / 64 + 20, "{files} files");
    // A day of it: rounds that at least double keep it logarithmic.
    let (ingested, written, big, files) = trickle(1 << 30, 86_400, 1, 100, 3600);
    eprintln!("a day: {ingested} B ingested, {written} B written by compaction, {files} files");
    assert!(!big);
    assert!(written <= 5 * ingested, "{written} > 5 × {ingested}");
    assert!(files < 64 + 4200 / 64 + 40, "{files} files");
    // The repro: 30 lines in 30 s next to 118 MiB: nothing of it rewritten.
    let (_, written, big, _) = trickle(118 << 20, 30, 1, 100, 3600);
    assert!(!big && written == 0, "{written}");
}

use crate::store::log::test_segment as seg;

#[test]
fn overlapping_merges_leave_a_large_segment_for_a_few_late_records() {
    let size = |s: &Segment| s.size;
    let sized = |low: &str, high: &str, n: u64| {
        let mut s = seg(low, high);
        s.size = n;
        s
    };
    // A few late records inside a large segment: not worth rewriting it.
    assert!(
        choose_overlapping(
            &[sized("A", "Z", 1 << 30), sized("C", "D", 300)],
            &size,
            1 << 40,
            &|_| false
        )
        .is_empty()
    );
    // Two late ones: merged with each other, not with it.
    assert_eq!(
        choose_overlapping(
            &[
                sized("A", "Z", 1 << 30),
                sized("C", "E", 300),
                sized("D", "F", 200)
            ],
            &size,
            1 << 40,
            &|_| false
        ),
        vec![1, 2]
    );
    // A replica sent twice, or a late one of half the size: merged.
    assert_eq!(
        choose_overlapping(
            &[sized("A", "Z", 100), sized("A", "Z", 100)],
            &size,
            1 << 40,
            &|_| false
        ),
        vec![0, 1]
    );
    assert_eq!(
        choose_overlapping(
            &[sized("A", "Z", 100), sized("B", "Y", 50)],
            &size,
            1 << 40,
            &|_| false
        ),
        vec![0, 1]
    );
    // Sizes as raw records: a compressed file counts for what it holds.
    let raw = |s: &Segment| {
        if s.path.to_str() == Some("A-Z") {
            s.size * 5
        } else {
            s.size
        }
    };
    assert!(
        choose_overlapping(
            &[sized("A", "Z", 30), sized("B", "Y", 50)],
            &raw,
            1 << 40,
            &|_| false
        )
        .is_empty()
    );
    assert_eq!(
        choose_overlapping(
            &[sized("A", "Z", 30), sized("B", "Y", 50)],
            &size,
            1 << 40,
            &|_| false
        ),
        vec![0, 1]
    );
}

#[test]
fn late_segments_merge_with_each_other_not_into_the_segments_at_size_they_span() {
    let size = |s: &Segment| s.size;
    let sized = |low: &str, high: &str, n: u64| {
        let mut s = seg(low, high);
        s.size = n;
        s
    };
    // Late records spread over the range of many segments at the target size (a week of
    // compressed ones): each of those gets a few of them, so none is rewritten for them.
    let target = 100;
    let week = [
        ("B", "CZ"),
        ("D", "EZ"),
        ("F", "GZ"),
        ("H", "JZ"),
        ("K", "LZ"),
        ("M", "NZ"),
    ];
    let mut segs: Vec<Segment> = week.iter().map(|(l, h)| sized(l, h, target)).collect();
    segs.push(sized("C", "N", 90));
    segs.sort_by_key(|s| s.low);
    assert!(choose_overlapping(&segs, &size, target, &|_| false).is_empty());
    // A second late segment over the same week: the two merge, the week stays.
    segs.push(sized("C", "M", 60));
    segs.sort_by_key(|s| s.low);
    let chosen = choose_overlapping(&segs, &size, target, &|_| false);
    let names: Vec<&str> = chosen
        .iter()
        .map(|&i| segs[i].path.to_str().unwrap())
        .collect();
    assert_eq!(names, ["C-N", "C-M"]);
    // A small late segment beside a larger one, both under half the target: growth alone
    // leaves them apart; once both have settled they are gathered.
    let pair = [sized("C", "N", 40), sized("K", "L", 2)];
    assert!(choose_overlapping(&pair, &size, target, &|_| false).is_empty());
    assert_eq!(
        choose_overlapping(&pair, &size, target, &|_| true),
        vec![0, 1]
    );
    assert!(
        choose_overlapping(&pair, &size, target, &|s| s.size == 2).is_empty(),
        "only settled ones are gathered"
    );
    // A replica of one of them, late: merged with it alone.
    segs.push(sized("F", "GZ", target));
    segs.sort_by_key(|s| s.low);
    let chosen: Vec<usize> = choose_overlapping(&segs, &size, target, &|_| false)
        .into_iter()
        .filter(|&i| segs[i].size == target)
        .collect();
    assert_eq!(chosen.len(), 2, "{chosen:?}");
}

#[test]
fn overlapping_choice_needs_only_two() {
    assert_eq!(
        choose_overlapping(
            &[seg("A", "B"), seg("C", "D")],
            &|s| s.size,
            1 << 40,
            &|_| false
        ),
        Vec::<usize>::new()
    );
    assert_eq!(
        choose_overlapping(
            &[seg("A", "C"), seg("B", "D")],
            &|s| s.size,
            1 << 40,
            &|_| false
        ),
        vec![0, 1]
    );
    assert_eq!(
        choose_overlapping(
            &[
                seg("A", "B"),
                seg("C", "M"),
                seg("D", "E"),
                seg("F", "G"),
                seg("N", "P")
            ],
            &|s| s.size,
            1 << 40,
            &|_| false
        ),
        vec![1, 2, 3]
    );
}

use crate::record::encode_ulid;
use std::fs;

fn write_segment(log: &StoreLog, records: &[(u64, u128, &str)]) {
    let (mut f, p) = log.create(ACTIVE).unwrap();
    let mut low = None;
    let mut high = [0u8; 26];
    for (ms, e, body) in records {
        let id = encode_ulid(*ms, *e);
        f.write_all(&id).unwrap();
        f.write_all(format!(" {body}\n").as_bytes()).unwrap();
        low.get_or_insert(id);
        high = id;
    }
    log.close(f, &p, &low.unwrap(), &high).unwrap();
}

fn compacter(log: &Arc<StoreLog>, target: u64, retain: Duration, purge: Duration) -> Compacter {
    Compacter::new(
        Arc::clone(log),
        CompactConfig {
            target_size: target,
            settle: Duration::ZERO,
            retention: Arc::new(Retention::uniform(retain)),
            purge,
            format: Format::Compressed,
            compress_after: Some(Duration::ZERO),
            compress: CompressConfig {
                block_size: 4096,
                group_size: 64 << 10,
                ..CompressConfig::default()
            },
        },
        Metrics::new(),
    )
}

fn all(log: &StoreLog) -> Vec<Vec<u8>> {
    let p = crate::store::query::QueryParams {
        from_ms: 0,
        to_ms: u64::MAX >> 16,
        q: String::new(),
        regex: false,
        ..Default::default()
    };
    let plan = crate::store::query::Plan::open(log, &p).unwrap();
    let m = crate::search::Matcher::new("", false).unwrap();
    let mut out = Vec::new();
    plan.execute(&p, &m, &mut |lines| {
        out.extend(lines.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
        true
    })
    .unwrap();
    out
}

#[test]
fn overlapping_duplicates_end_as_few_sorted_unique_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let now = crate::gotime::now_ms() as u64;
    // 20 segments, each record 1..=200 in steps, every record in two segments.
    for k in 0..20u64 {
        let recs: Vec<(u64, u128, String)> = (0..50u64)
            .map(|i| {
                let n = (k / 2) * 50 + i;
                (
                    now + n,
                    u128::from(n),
                    format!("record {n:06} from pass {k}"),
                )
            })
            .collect();
        let r: Vec<(u64, u128, &str)> = recs.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
        write_segment(&log, &r);
    }
    let before = all(&log);
    assert_eq!(before.len(), 500, "queries already deduplicate");
    let c = compacter(
        &log,
        8 << 10,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    for _ in 0..50 {
        let a = c.step(Kind::Overlapping).unwrap();
        let b = c.step(Kind::Sequential).unwrap();
        if a + b == 0 {
            break;
        }
    }
    let segs = log.scan(&[FLUSHED], |_| true).unwrap();
    let total: u64 = segs.iter().map(|s| s.size).sum();
    assert!(
        segs.len() <= (total / (8 << 10)) as usize + 2,
        "{} segments for {total} bytes",
        segs.len()
    );
    let mut seen = std::collections::HashSet::new();
    for s in &segs {
        let data = fs::read(&s.path).unwrap();
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
        assert!(
            lines.windows(2).all(|w| w[0][..26] < w[1][..26]),
            "sorted, unique"
        );
        assert_eq!(&lines[0][..26], &s.low[..]);
        assert_eq!(&lines[lines.len() - 1][..26], &s.high[..]);
        for l in lines {
            assert!(seen.insert(l[..26].to_vec()), "a ULID in two segments");
        }
    }
    assert_eq!(seen.len(), 500);
    assert_eq!(
        all(&log),
        before,
        "every record still queryable exactly once"
    );
}

#[test]
fn retention_trashes_and_purge_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let now = crate::gotime::now_ms() as u64;
    write_segment(&log, &[(now - 7_200_000, 1, "old")]);
    write_segment(&log, &[(now, 2, "new")]);
    let c = compacter(&log, 1 << 20, Duration::from_secs(3600), Duration::ZERO);
    assert_eq!(c.step(Kind::Trash).unwrap(), 1);
    assert_eq!(log.scan(&[FLUSHED], |_| true).unwrap().len(), 1);
    assert_eq!(
        log.scan(&[super::super::log::TRASHED], |_| true)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(all(&log).len(), 1, "trashed segments are not queried");
    assert_eq!(c.step(Kind::Purge).unwrap(), 1);
    assert!(
        log.scan(&[super::super::log::TRASHED], |_| true)
            .unwrap()
            .is_empty()
    );
    let keep = compacter(
        &log,
        1 << 20,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    assert_eq!(keep.step(Kind::Trash).unwrap(), 0);
}

#[test]
fn corrupt_segments_are_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let now = crate::gotime::now_ms() as u64;
    write_segment(&log, &[(now, 1, "a"), (now + 10, 2, "b")]);
    // An overlapping segment whose content is out of order, and one with a bad name.
    let (lo, hi) = (encode_ulid(now + 1, 0), encode_ulid(now + 5, 0));
    let name = super::super::log::build_name(&lo, &hi, FLUSHED);
    let mut body = hi.to_vec();
    body.extend_from_slice(b" late\n");
    body.extend_from_slice(&lo);
    body.extend_from_slice(b" early\n");
    fs::write(dir.path().join(&name), &body).unwrap();
    fs::write(
        dir.path().join("01BB6RQR190000000000000000-xxx.flushed"),
        b"junk\n",
    )
    .unwrap();
    let c = compacter(
        &log,
        1 << 20,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    // The purge step sets the bad name aside and indexes the segment copied in.
    c.step(Kind::Purge).unwrap();
    assert_eq!(c.step(Kind::Overlapping).unwrap(), 0);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("-xxx.bad")), "{names:?}");
    assert!(
        names.contains(&name.replace(".flushed", ".bad")),
        "{names:?}"
    );
    assert_eq!(
        log.scan(&[FLUSHED], |_| true).unwrap().len(),
        1,
        "the good one is released"
    );
    assert_eq!(all(&log).len(), 2);
    assert_eq!(c.metrics.store_quarantined_files.get(), 2);
}

#[test]
fn queries_during_compaction_see_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let now = crate::gotime::now_ms() as u64 - 60_000; // old enough to be compressed
    for k in 0..30u64 {
        let recs: Vec<(u64, u128, String)> = (0..40u64)
            .map(|i| {
                let n = (k % 10) * 40 + i;
                (now + n, u128::from(n), format!("record {n}"))
            })
            .collect();
        let r: Vec<(u64, u128, &str)> = recs.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
        write_segment(&log, &r);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                let got = all(&log);
                assert_eq!(got.len(), 400, "run {runs}");
                assert!(got.windows(2).all(|w| w[0][..26] < w[1][..26]));
                runs += 1;
            }
            runs
        })
    };
    let c = compacter(
        &log,
        4 << 10,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    for _ in 0..40 {
        c.step(Kind::Overlapping).unwrap();
        c.step(Kind::Sequential).unwrap();
        c.step(Kind::Convert).unwrap();
    }
    assert_eq!(log.raw_segments(), 0, "every segment converted meanwhile");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = reader
        .join()
        .expect("every concurrent query saw every record once");
    assert!(runs > 0);
}

/// Records of `n` random bodies: topics, words that repeat, rare ids, mixed case, and
/// bytes that are not UTF-8.
fn random_records(rng: &mut rand::rngs::StdRng, start_ms: u64, n: usize) -> Vec<Vec<u8>> {
    use rand::RngExt;
    let words = [
        "GET",
        "post",
        "Error",
        "timeout",
        "user=alice",
        "USER=BOB",
        "ok",
        "é",
    ];
    let mut ms = start_ms;
    let mut out: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            ms += rng.random_range(0..40u64);
            let mut line = encode_ulid(ms, rng.random_range(0..1u128 << 80)).to_vec();
            let topic = rng.random_range(0..6);
            // Some topics too small for blocks of their own: they share mixed blocks.
            if i % 31 == 0 {
                line.extend_from_slice(format!(" rare-{} ", (i / 31) % 40).as_bytes());
            } else {
                line.extend_from_slice(format!(" topic-{topic} ").as_bytes());
            }
            for _ in 0..rng.random_range(0..8) {
                line.extend_from_slice(words[rng.random_range(0..words.len())].as_bytes());
                line.push(b' ');
            }
            if rng.random_bool(0.05) {
                line.extend_from_slice(&[0xff, b'z', 0xc3]);
            }
            if rng.random_bool(0.01) {
                line.extend_from_slice(format!("req-{i:05}x").as_bytes());
            }
            line.extend_from_slice(format!("n={}", rng.random_range(0..10_000)).as_bytes());
            line.push(b'\n');
            line
        })
        .collect();
    out.sort();
    out
}

fn write_lines(log: &StoreLog, lines: &[Vec<u8>]) {
    let (mut f, p) = log.create(ACTIVE).unwrap();
    for l in lines {
        f.write_all(l).unwrap();
    }
    let id = |l: &Vec<u8>| -> [u8; 26] { l[..26].try_into().unwrap() };
    log.close(f, &p, &id(&lines[0]), &id(&lines[lines.len() - 1]))
        .unwrap();
}

/// What grep over the raw records answers: every distinct record (by ULID) in the window
/// whose `<topic> <payload>` matches, in ULID order.
fn grep(all: &[Vec<u8>], from: u64, to: u64, q: &str, regex: bool) -> Vec<Vec<u8>> {
    let re = regex.then(|| regex::bytes::Regex::new(q).unwrap());
    let mut out: Vec<Vec<u8>> = all
        .iter()
        .filter(|l| {
            let ms = crate::record::ulid_ms(l);
            let body = &l[27..l.len() - 1];
            ms >= from
                && ms <= to
                && match &re {
                    Some(re) => re.is_match(body),
                    None => memchr::memmem::find(body, q.as_bytes()).is_some(),
                }
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup_by(|a, b| a[..26] == b[..26]);
    out
}

fn query(log: &StoreLog, from: u64, to: u64, q: &str, regex: bool) -> (Vec<Vec<u8>>, u64) {
    let p = crate::store::query::QueryParams {
        from_ms: from,
        to_ms: to,
        q: q.to_string(),
        regex,
        ..Default::default()
    };
    query_with(log, &p)
}

/// Run `p` as a node does (the first `limit` lines of the answer, then stop).
fn query_with(log: &StoreLog, p: &crate::store::query::QueryParams) -> (Vec<Vec<u8>>, u64) {
    let plan = crate::store::query::Plan::open(log, p).unwrap();
    let m = p.matcher().unwrap();
    let mut out = Vec::new();
    let limit = p.limit.unwrap_or(u64::MAX) as usize;
    let outcome = plan
        .execute(p, &m, &mut |lines| {
            out.extend(lines.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
            out.truncate(limit);
            out.len() < limit
        })
        .unwrap();
    assert_eq!(outcome.corrupt_blocks, 0);
    (out, outcome.scanned)
}

/// [`grep`] of the selected topics, newest first for `order=desc`, cut at `limit`.
fn reference(all: &[Vec<u8>], p: &crate::store::query::QueryParams) -> Vec<Vec<u8>> {
    let topics = &p.topics;
    let mut out: Vec<Vec<u8>> = grep(all, p.from_ms, p.to_ms, &p.q, p.regex)
        .into_iter()
        .filter(|l| topics.matches(crate::search::topic_of(&l[27..])))
        .collect();
    if p.desc {
        out.reverse();
    }
    out.truncate(p.limit.unwrap_or(u64::MAX) as usize);
    out
}

/// Query shapes the grep-equivalence test tries: literals (common, rare, absent, non-ASCII,
/// case) and regexes (case-insensitive, anchored, classes, alternations, a non-UTF-8 byte).
const SHAPES: &[(&str, bool)] = &[
    ("", false),
    ("GET", false),
    ("user=alice", false),
    ("req-00", false),
    ("req-00042x", false),
    ("absent-needle", false),
    ("é", false),
    ("o", false),
    ("USER=bob", false),
    ("(?i)user=BOB", true),
    ("(?i)TIMEOUT", true),
    ("^topic-3 ", true),
    ("ok $", true),
    ("n=[0-9]{4}$", true),
    ("[0-9]{3}", true),
    ("Error.*timeout", true),
    ("(post|Error) user", true),
    ("(?-u:\\xff)z", true),
    ("\\bok\\b", true),
    ("req-[0-9]+x", true),
    ("^$", true),
];

/// Twelve segments of random records an hour old, every fourth one a replica of part of the
/// one before (overlapping, with duplicates); every record written, in order.
fn overlapping_store(rng: &mut rand::rngs::StdRng, log: &StoreLog, base: u64) -> Vec<Vec<u8>> {
    use rand::RngExt;
    let mut all: Vec<Vec<u8>> = Vec::new();
    for k in 0..12u64 {
        let n = rng.random_range(200..1500);
        let recs = random_records(rng, base + k * 40_000, n);
        if k % 4 == 3 {
            // A replica of part of the segment before: overlapping, with duplicates.
            let prev = &all[all.len() - 100..];
            let mut both: Vec<Vec<u8>> = prev.iter().chain(recs.iter()).cloned().collect();
            both.sort();
            write_lines(log, &both);
        } else {
            write_lines(log, &recs);
        }
        all.extend(recs);
    }
    all
}

/// Six random windows, each queried with every shape, plain and then with topics, newest
/// first and a limit: each answer exactly the reference's.
fn answers_as_grep(
    rng: &mut rand::rngs::StdRng,
    log: &StoreLog,
    all: &[Vec<u8>],
    base: u64,
    phase: &str,
) {
    use rand::RngExt;
    for _ in 0..6 {
        let from = base + rng.random_range(0..480_000);
        let to = from + rng.random_range(0..300_000);
        for &(q, regex) in SHAPES {
            let want = grep(all, from, to, q, regex);
            let (got, _) = query(log, from, to, q, regex);
            assert!(
                got == want,
                "{phase}: q={q:?} regex={regex} [{from}, {to}]: {} records, want {}",
                got.len(),
                want.len()
            );
            // The same with topics, newest first, a limit.
            let topics: &[&[&str]] = &[&[], &["topic-3"], &["topic-1", "rare-*"], &["rare-1?"]];
            let p = crate::store::query::QueryParams {
                from_ms: from,
                to_ms: to,
                q: q.to_string(),
                regex,
                topics: crate::search::Topics::parse(topics[rng.random_range(0..topics.len())])
                    .unwrap(),
                desc: rng.random_bool(0.7),
                limit: rng.random_bool(0.5).then(|| rng.random_range(1..60)),
                ..Default::default()
            };
            let want = reference(all, &p);
            let (got, _) = query_with(log, &p);
            assert!(
                got == want,
                "{phase}: {p:?}: {} records, want {}",
                got.len(),
                want.len()
            );
        }
    }
}

#[test]
fn raw_and_compressed_segments_answer_exactly_as_grep_over_the_raw_records() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    let all = overlapping_store(&mut rng, &log, base);
    let c = compacter(
        &log,
        1 << 30,
        Duration::from_secs(1 << 30),
        Duration::from_secs(3600),
    );
    for phase in ["raw", "mixed", "compressed"] {
        answers_as_grep(&mut rng, &log, &all, base, phase);
        // Convert some, then the rest (overlapping ones after compaction).
        if phase == "raw" {
            for _ in 0..3 {
                assert_eq!(c.convert(&|_| true).unwrap(), 1);
            }
        } else {
            for _ in 0..20 {
                c.step(Kind::Convert).unwrap();
                c.step(Kind::Overlapping).unwrap();
            }
        }
    }
    assert_eq!(log.raw_segments(), 0);
    // A needle query reads only the blocks whose filter may hold it.
    let p = crate::store::query::QueryParams {
        from_ms: 0,
        to_ms: u64::MAX >> 16,
        q: "req-00042x".into(),
        regex: false,
        ..Default::default()
    };
    let plan = crate::store::query::Plan::open(&log, &p).unwrap();
    let scan = plan.scan(
        &p,
        &crate::segment::Needles::new(&p.q, p.regex),
        &p.matcher().unwrap(),
    );
    assert!(
        scan.blocks_read <= 3 && scan.blocks_skipped > 20,
        "read {} skipped {}",
        scan.blocks_read,
        scan.blocks_skipped
    );
}

/// Records arriving in a random order, most a little late and some very late, as a consumer
/// would write them: aggregates of random sizes, each sorted, with its records more than a
/// minute older than its newest split off into a segment of their own.
fn arrive(rng: &mut rand::rngs::StdRng, log: &StoreLog, records: &[Vec<u8>], span_ms: u64) {
    use rand::RngExt;
    let mut order: Vec<(u64, &Vec<u8>)> = records
        .iter()
        .map(|r| {
            let late = if rng.random_bool(0.1) {
                rng.random_range(0..span_ms)
            } else {
                rng.random_range(0..2_000)
            };
            (crate::record::ulid_ms(r) + late, r)
        })
        .collect();
    order.sort_by_key(|o| o.0);
    let mut at = 0;
    while at < order.len() {
        let n = rng.random_range(50..800).min(order.len() - at);
        let mut batch: Vec<Vec<u8>> = order[at..at + n].iter().map(|o| o.1.clone()).collect();
        at += n;
        batch.sort();
        let cut = crate::record::ulid_ms(&batch[batch.len() - 1]).saturating_sub(60_000);
        let split = batch.partition_point(|r| crate::record::ulid_ms(r) < cut);
        for part in [&batch[..split], &batch[split..]] {
            if !part.is_empty() {
                write_lines(log, part);
            }
        }
    }
}

#[test]
fn late_arrivals_answer_exactly_as_grep_over_raw_and_compressed_segments() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    let records = random_records(&mut rng, base, 12_000);
    let span = crate::record::ulid_ms(&records[records.len() - 1]) - base;
    // Two waves: the first stored, compacted and compressed; then the second arrives late
    // into those compressed ranges.
    let (first, second): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
        records.iter().cloned().partition(|_| rng.random_bool(0.8));
    arrive(&mut rng, &log, &first, span);
    let c = compacter(
        &log,
        256 << 10,
        Duration::from_secs(1 << 30),
        Duration::from_secs(3600),
    );
    answers_as_grep(&mut rng, &log, &first, base, "late, raw");
    for _ in 0..40 {
        c.step(Kind::Overlapping).unwrap();
        c.step(Kind::Sequential).unwrap();
        c.step(Kind::Convert).unwrap();
    }
    assert_eq!(log.raw_segments(), 0);
    answers_as_grep(&mut rng, &log, &first, base, "late, compressed");
    let compressed: Vec<PathBuf> = log
        .scan(&[FLUSHED], |_| true)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    arrive(&mut rng, &log, &second, span);
    answers_as_grep(&mut rng, &log, &records, base, "later, mixed");
    for _ in 0..40 {
        c.step(Kind::Overlapping).unwrap();
        c.step(Kind::Sequential).unwrap();
        c.step(Kind::Convert).unwrap();
    }
    answers_as_grep(&mut rng, &log, &records, base, "later, settled");
    let now: Vec<Segment> = log.scan(&[FLUSHED], |_| true).unwrap();
    assert_eq!(all(&log).len(), records.len());
    eprintln!(
        "{} segments before the late wave, {} after; {} of them kept",
        compressed.len(),
        now.len(),
        compressed
            .iter()
            .filter(|p| now.iter().any(|s| &s.path == *p))
            .count()
    );
}

#[test]
fn small_raw_neighbours_are_merged_before_they_are_compressed() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    // Three small raw neighbours (an import of old records, due for compression at once)
    // that together make more than half the target.
    let recs = random_records(&mut rng, base, 600);
    for part in recs.chunks(200) {
        write_lines(&log, part);
    }
    let size: u64 = recs.iter().map(|r| r.len() as u64).sum();
    let c = compacter(
        &log,
        size,
        Duration::from_secs(1 << 30),
        Duration::from_secs(3600),
    );
    assert_eq!(c.convert(&|_| true).unwrap(), 0, "merged first");
    assert!(c.step(Kind::Sequential).unwrap() >= 2);
    // What is left: at size, or small and alone (nothing to merge it with): compressed.
    while c.convert(&|_| true).unwrap() > 0 {}
    assert_eq!(log.raw_segments(), 0);
    assert_eq!(all(&log), recs);
}

#[test]
fn a_crash_at_any_point_of_a_conversion_leaves_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(4);
    let recs = random_records(&mut rng, base, 3000);
    {
        let log = StoreLog::open(&d).unwrap();
        write_lines(&log, &recs);
    }
    let seg = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "flushed"))
        .unwrap();
    let raw = fs::read(&seg).unwrap();
    let mut compressed = Vec::new();
    crate::segment::compress(&raw, &mut compressed, &CompressConfig::default()).unwrap();
    let reading = seg.with_extension(READING);
    let converting = d.join(format!("{}.{CONVERTING}", crate::disk::new_uuid()));
    // (files present at the crash): claimed; half written; written but not renamed;
    // renamed in but the input not removed yet; done.
    let states: Vec<Vec<(PathBuf, Vec<u8>)>> = vec![
        vec![(reading.clone(), raw.clone())],
        vec![
            (reading.clone(), raw.clone()),
            (
                converting.clone(),
                compressed[..compressed.len() / 2].to_vec(),
            ),
        ],
        vec![
            (reading.clone(), raw.clone()),
            (converting.clone(), compressed.clone()),
        ],
        vec![
            (reading.clone(), raw.clone()),
            (seg.clone(), compressed.clone()),
        ],
        vec![(seg.clone(), compressed.clone())],
    ];
    for (i, files) in states.iter().enumerate() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else if p.file_name().is_some_and(|n| n != "LOCK") {
                fs::remove_file(p).unwrap();
            }
        }
        for (p, bytes) in files {
            fs::write(p, bytes).unwrap();
        }
        let log = Arc::new(StoreLog::open(&d).unwrap());
        let got = all(&log);
        assert_eq!(got.len(), recs.len(), "state {i}");
        assert!(got.iter().zip(&recs).all(|(a, b)| a == b), "state {i}");
        assert!(!converting.exists(), "state {i}: partial output removed");
        // And the conversion then completes.
        let c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
        c.step(Kind::Convert).unwrap();
        assert_eq!(log.raw_segments(), 0, "state {i}");
        assert_eq!(all(&log), got, "state {i}");
    }
}

#[test]
fn the_raw_format_turns_a_compressed_store_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(8);
    for k in 0..3 {
        write_lines(&log, &random_records(&mut rng, base + k * 200_000, 500));
    }
    let files = |log: &StoreLog| -> Vec<Vec<u8>> {
        log.scan(&[FLUSHED], |_| true)
            .unwrap()
            .iter()
            .map(|s| fs::read(&s.path).unwrap())
            .collect()
    };
    let before = files(&log);
    let mut c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
    assert_eq!(c.step(Kind::Convert).unwrap(), 3, "a backlog in one step");
    assert_eq!(c.step(Kind::Convert).unwrap(), 0);
    assert!(
        files(&log)
            .iter()
            .all(|f| f.starts_with(crate::segment::MAGIC))
    );
    c.cfg.format = Format::Raw;
    assert_eq!(c.step(Kind::Convert).unwrap(), 3);
    assert_eq!(files(&log), before);
    // Never converted: compression off.
    c.cfg.format = Format::Compressed;
    c.cfg.compress_after = None;
    assert_eq!(c.step(Kind::Convert).unwrap(), 0);
    // Not yet due.
    c.cfg.compress_after = Some(Duration::from_secs(7200));
    assert_eq!(c.step(Kind::Convert).unwrap(), 0);
    assert_eq!(log.raw_segments(), 3);
}

#[test]
fn retention_trashes_and_purges_compressed_segments_too() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let now = crate::gotime::now_ms() as u64;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
    write_lines(&log, &random_records(&mut rng, now - 7_200_000, 300)); // 2h old
    write_lines(&log, &random_records(&mut rng, now - 600_000, 300)); // 10 min old
    let c = compacter(&log, 1 << 30, Duration::from_secs(3600), Duration::ZERO);
    assert_eq!(
        c.step(Kind::Convert).unwrap(),
        1,
        "not the one past retention: it is about to go"
    );
    let c = compacter(&log, 1 << 30, Duration::from_secs(4 * 3600), Duration::ZERO);
    assert_eq!(c.step(Kind::Convert).unwrap(), 1);
    assert_eq!(log.raw_segments(), 0);
    let c = compacter(&log, 1 << 30, Duration::from_secs(3600), Duration::ZERO);
    assert_eq!(c.step(Kind::Trash).unwrap(), 1);
    assert_eq!(
        all(&log).len(),
        300,
        "only the young segment's records are left"
    );
    assert_eq!(c.step(Kind::Purge).unwrap(), 1);
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "LOCK" && n != "labels")
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn a_late_replica_overlapping_a_compressed_segment_is_merged_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12);
    let old = random_records(&mut rng, base, 2000);
    write_lines(&log, &old);
    let c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
    assert_eq!(c.step(Kind::Convert).unwrap(), 1);
    // A replica arrives late: half the same records and some new ones in the same range.
    let mut late: Vec<Vec<u8>> = old.iter().step_by(2).cloned().collect();
    late.extend(random_records(&mut rng, base + 1, 500));
    late.sort();
    late.dedup_by(|a, b| a[..26] == b[..26]);
    write_lines(&log, &late);
    let mut want: Vec<Vec<u8>> = old.iter().chain(late.iter()).cloned().collect();
    want.sort();
    want.dedup_by(|a, b| a[..26] == b[..26]);
    // Queried together (a compressed and a raw segment merged), then compacted, then
    // compressed again: the same records every time.
    assert_eq!(all(&log), want);
    let (hits, _) = query(&log, 0, u64::MAX >> 16, "user=alice", false);
    assert_eq!(hits, grep(&want, 0, u64::MAX >> 16, "user=alice", false));
    assert_eq!(c.step(Kind::Overlapping).unwrap(), 2);
    assert_eq!(log.raw_segments(), 1, "the merged output is raw");
    assert_eq!(all(&log), want);
    assert_eq!(c.step(Kind::Convert).unwrap(), 1);
    assert_eq!(log.raw_segments(), 0);
    assert_eq!(all(&log), want);
}

#[test]
fn a_conversion_stopped_by_shutdown_leaves_its_input_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let base = crate::gotime::now_ms() as u64 - 3_600_000;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(13);
    let recs = random_records(&mut rng, base, 3000);
    write_lines(&log, &recs);
    let c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
    c.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(c.step(Kind::Convert).is_err(), "abandoned");
    assert_eq!(log.raw_segments(), 1, "the input is back, raw");
    assert_eq!(all(&log), recs);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "LOCK" || n == "labels" || n.ends_with(".flushed")),
        "{names:?}"
    );
}

#[test]
fn a_topic_past_its_retention_is_dropped_from_raw_and_compressed_segments_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(StoreLog::open(dir.path()).unwrap());
    let now = crate::gotime::now_ms() as u64;
    // Three segments of records 3 h to 1.5 h old, of topics debug-a, debug-b and app; the
    // second also with small debug topics that share mixed blocks once compressed.
    let mut all = Vec::new();
    for seg in 0..3u64 {
        let mut lines = Vec::new();
        let (n, gap) = if seg == 1 { (3000, 100) } else { (300, 1000) };
        for i in 0..n {
            let ms = now - 3 * 3_600_000 + seg * 1_800_000 + i * gap;
            let topic = if seg == 1 && i % 50 == 7 {
                format!("debug-small-{}", i / 50)
            } else {
                ["debug-a", "app", "debug-b"][(i % 3) as usize].to_string()
            };
            let mut l = encode_ulid(ms, u128::from(i)).to_vec();
            l.extend_from_slice(format!(" {topic} record {seg} {i}\n").as_bytes());
            lines.push(l);
        }
        write_lines(&log, &lines);
        all.extend(lines);
    }
    let retention =
        Arc::new(Retention::parse(&["debug-*=1h"], Duration::from_secs(7 * 86400)).unwrap());
    let mut c = compacter(
        &log,
        1 << 30,
        Duration::from_secs(7 * 86400),
        Duration::from_secs(3600),
    );
    c.cfg.retention = Arc::clone(&retention);
    // Two segments compressed, one raw.
    assert_eq!(c.convert(&|_| true).unwrap(), 1);
    assert_eq!(c.convert(&|_| true).unwrap(), 1);
    assert_eq!(log.raw_segments(), 1);
    assert_eq!(c.step(Kind::Expire).unwrap(), 3);
    let kept: Vec<Vec<u8>> = all
        .iter()
        .filter(|l| crate::search::topic_of(&l[27..]) == b"app")
        .cloned()
        .collect();
    assert_eq!(super::tests::all(&log), kept, "only app's records are left");
    assert_eq!(
        c.metrics.store_expired_records.get(),
        (all.len() - kept.len()) as u64
    );
    // The first compressed segment lost whole topic blocks, copied as they were: it is
    // still compressed. The one with mixed blocks was written again (raw, to be compressed
    // again when due), as was the raw one.
    let segs = log.scan(&[FLUSHED], |_| true).unwrap();
    assert_eq!(segs.len(), 3);
    assert_eq!(log.raw_segments(), 2);
    assert_eq!(segs[0].format, Format::Compressed);
    // Nothing more to drop: the segments are not read again for a while.
    assert_eq!(c.step(Kind::Expire).unwrap(), 0);
    // Queries hide expired records at once, before any rewrite.
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = StoreLog::open(dir2.path()).unwrap();
    write_lines(&log2, &all);
    let p = crate::store::query::QueryParams {
        from_ms: 0,
        to_ms: now,
        ..Default::default()
    };
    let expiry = crate::search::Expiry {
        keep_from_ms: now - 3_600_000,
        cutoff: Box::new(move |t| retention.cutoff_for(t, now)),
    };
    let m = p.matcher().unwrap().with_expiry(Some(Arc::new(expiry)));
    let plan = crate::store::query::Plan::open(&log2, &p).unwrap();
    let mut out = Vec::new();
    plan.execute(&p, &m, &mut |b| {
        out.extend(b.split_inclusive(|&c| c == b'\n').map(<[u8]>::to_vec));
        true
    })
    .unwrap();
    assert_eq!(out, kept);
}
