//! Micro-benchmarks of the hot paths: framing input lines into records (with ULIDs), the
//! k-way merge, the matcher over a segment, and the ingest segment writer.
//!
//! `cargo bench --bench core`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oklog::merge::{self, SliceLines};
use oklog::record::{Framer, FramerConfig, TopicMode, UlidGenerator, encode_ulid};
use oklog::search::{Matcher, Matches};

/// `n` input lines of about 100 bytes, varied.
fn input(n: usize) -> Vec<u8> {
    let words = [
        "GET",
        "POST",
        "/api/v1/users",
        "200",
        "500",
        "ms",
        "user",
        "ERROR",
        "INFO",
        "db",
    ];
    let mut out = Vec::with_capacity(n * 100);
    let mut x = 42u64;
    for i in 0..n {
        let mut line = String::new();
        while line.len() < 90 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push_str(words[(x % words.len() as u64) as usize]);
            line.push(' ');
        }
        line.push_str(&i.to_string());
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A sorted segment of `n` records.
fn segment(n: usize, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in input(n).split_inclusive(|&b| b == b'\n').enumerate() {
        out.extend_from_slice(&encode_ulid(1_000_000 + (i as u64) * 2 + offset, 0));
        out.extend_from_slice(b" app ");
        out.extend_from_slice(line);
    }
    out
}

fn framing(c: &mut Criterion) {
    let data = input(100_000);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("frame 100k lines", |b| {
        b.iter(|| {
            let mut f = Framer::new(FramerConfig {
                topic: "default".into(),
                mode: TopicMode::Static,
                max_record_size: 1 << 20,
            });
            let mut out = Vec::with_capacity(data.len() * 2);
            for chunk in data.chunks(256 << 10) {
                f.push(chunk, 1_000_000, &mut out);
            }
            black_box(out.len())
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("ulid", |b| {
        let mut ids = UlidGenerator::new();
        b.iter(|| black_box(ids.next(1_000_000)))
    });
    g.finish();
}

fn merging(c: &mut Criterion) {
    let segs: Vec<Vec<u8>> = (0..4).map(|i| segment(25_000, i)).collect();
    let total: usize = segs.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("4-way merge, 100k records", |b| {
        b.iter(|| {
            let mut sources: Vec<SliceLines> = segs.iter().map(|s| SliceLines::new(s)).collect();
            let mut n = 0usize;
            merge::merge(&mut sources, |l| {
                n += l.len();
                Ok(true)
            })
            .unwrap();
            black_box(n)
        })
    });
    g.finish();
}

fn matching(c: &mut Criterion) {
    let seg = segment(200_000, 0);
    let mut g = c.benchmark_group("search");
    g.throughput(Throughput::Bytes(seg.len() as u64));
    for (name, q, regex) in [
        ("absent literal", "needle", false),
        ("literal, 10%", "ERROR 500", false),
        ("regex with literal", r"users \d+", true),
        ("regex without literal", r"[A-Z]{4}\s[0-9]{3}", true),
    ] {
        let m = Matcher::new(q, regex).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| black_box(Matches::new(&seg, 0, u64::MAX, &m).count()))
        });
    }
    g.finish();
}

fn writing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(oklog::ingest::IngestLog::open(dir.path()).unwrap());
    let records = segment(10_000, 0);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(records.len() as u64));
    g.bench_function("segment writer, 1 MiB", |b| {
        let mut w = oklog::ingest::writer::SegmentWriter::new(
            std::sync::Arc::clone(&log),
            oklog::ingest::Rotation {
                flush_size: 64 << 20,
                flush_age: std::time::Duration::from_secs(3600),
            },
        );
        b.iter(|| w.write(&records).unwrap())
    });
    g.finish();
}

criterion_group!(benches, framing, merging, matching, writing);
criterion_main!(benches);
