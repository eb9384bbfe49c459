//! Write a store directory of realistic records straight in the on-disk format, for the query
//! benchmark (ingest can only stamp the current time).
//!
//! `cargo run --release --example gen_store -- OUT_DIR [GIB=2] [SEGMENTS=2] [DAYS=7] [SEED=42] [KIND=bench]`
//!
//! KIND `bench` (the default): records are LogHub sample lines (16 systems) with their digits re-drawn from a fixed-seed
//! generator, under 100 topics of about 1% each (`web-00` … `app-19`), spread evenly over
//! DAYS ending now. Planted for the queries:
//! `tag=hot` on 10% of records, `needle-7f3a9` on about one record in two million, and
//! `request_id=7c1e5a90` on one record in ten thousand: one request's burst, on a tenth of the
//! records of the ten minutes from the middle of the span.
//!
//! KIND `loghub`: LogHub sample lines as they are, each drawn at random from all 16 systems,
//! under one of the same 100 topics drawn at random, with 80 fresh random bits of ULID entropy
//! on every record (as the original's ingesters make them), spread evenly over DAYS. Planted:
//! `req=5e0b1d3c` on one record in ten thousand, spread evenly. The phrase `Accepted password`
//! comes from the data itself (one LogHub line in 32,000).
//!
//! KIND `loghub-json`: the same records (same seed, same count) as JSON lines in
//! `OUT_DIR/lines.jsonl`, `{"_time":"<RFC 3339, ms>","service":"<topic>","_msg":"<line>"}`, for
//! `/insert/jsonline?_topic_field=service` (and other systems' JSON line APIs).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A segment being written: file, path, first and last ULID.
type Open = (BufWriter<File>, PathBuf, [u8; 26], [u8; 26]);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn templates() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/loghub-2k");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("../shared/datasets/loghub-2k beside the checkout")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read(f).unwrap().split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                out.push(line.to_vec());
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .expect("usage: gen_store OUT_DIR [GIB] [SEGMENTS] [DAYS] [SEED]"),
    );
    let gib: f64 = args.get(1).map_or(2.0, |v| v.parse().unwrap());
    let segments: u64 = args.get(2).map_or(2, |v| v.parse().unwrap());
    let days: u64 = args.get(3).map_or(7, |v| v.parse().unwrap());
    let seed: u64 = args.get(4).map_or(42, |v| v.parse().unwrap());
    let kind = args.get(5).map_or("bench", String::as_str);
    let (loghub, json) = match kind {
        "bench" => (false, false),
        "loghub" => (true, false),
        "loghub-json" => (true, true),
        k => panic!("unknown KIND {k}: bench, loghub or loghub-json"),
    };
    std::fs::create_dir_all(&out).unwrap();
    let mut json_out = json
        .then(|| BufWriter::with_capacity(8 << 20, File::create(out.join("lines.jsonl")).unwrap()));
    let templates = templates();
    let topics: Vec<Vec<u8>> = ["web", "db", "auth", "kernel", "app"]
        .iter()
        .flat_map(|t| (0..20).map(move |i| format!("{t}-{i:02}").into_bytes()))
        .collect();
    let mut rng = Rng(seed.max(1));
    let total_bytes = (gib * (1u64 << 30) as f64) as u64;
    // Average record ~ 150 bytes: estimate the count to spread timestamps evenly.
    let avg =
        27 + 5 + templates.iter().map(|t| t.len() as u64).sum::<u64>() / templates.len() as u64 + 2;
    let n = total_bytes / avg;
    let span_ms = days * 86_400_000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start_ms = now_ms - span_ms;
    let per_segment = total_bytes / segments;
    let mut seg_bytes = 0u64;
    let mut written = 0u64;
    let mut i = 0u64;
    let mut seg: Option<Open> = None;
    let mut line = Vec::with_capacity(4096);
    let mut prev = (0u64, 0u128);
    while written < total_bytes {
        let ms = start_ms + (i.min(n) * span_ms) / n.max(1);
        if loghub {
            // Fresh entropy on every record; within a millisecond, above the one before.
            let mut e = (u128::from(rng.next()) << 16 | u128::from(rng.next() & 0xffff)) >> 1;
            if ms == prev.0 && e <= prev.1 {
                e = prev.1 + 1;
            }
            prev = (ms, e);
            let topic = &topics[rng.below(topics.len() as u64) as usize];
            let mut msg = templates[rng.below(templates.len() as u64) as usize].clone();
            if rng.below(10_000) == 0 {
                msg.extend_from_slice(b" req=5e0b1d3c");
            }
            line.clear();
            if let Some(j) = json_out.as_mut() {
                let t = oklog::gotime::rfc3339_utc_millis(ms as i64);
                let v = format!(
                    "{{\"_time\":\"{t}\",\"service\":\"{}\",\"_msg\":{}}}\n",
                    String::from_utf8_lossy(topic),
                    json_string(&msg)
                );
                j.write_all(v.as_bytes()).unwrap();
                written += (ULID_TEXT + 3 + topic.len() + msg.len()) as u64;
                i += 1;
                continue;
            }
            line.extend_from_slice(&encode(ms, e));
            line.push(b' ');
            line.extend_from_slice(topic);
            line.push(b' ');
            line.extend_from_slice(&msg);
        } else {
            bench_line(
                &mut line,
                &mut rng,
                ms,
                i,
                (start_ms, span_ms),
                &topics,
                &templates,
            );
        }
        line.push(b'\n');
        let id: [u8; 26] = line[..26].try_into().unwrap();
        emit(&mut seg, &out, &line, id, i);
        seg_bytes += line.len() as u64;
        written += line.len() as u64;
        i += 1;
        if seg_bytes >= per_segment {
            finish(seg.take().unwrap(), &out);
            seg_bytes = 0;
        }
    }
    if let Some(s) = seg.take() {
        finish(s, &out);
    }
    if let Some(mut j) = json_out {
        j.flush().unwrap();
    }
    eprintln!("wrote {i} records, {written} bytes, in {}", out.display());
}

const ULID_TEXT: usize = 26;

/// A `bench` record at `ms` (the `i`-th), without its newline, into `line` (cleared first).
fn bench_line(
    line: &mut Vec<u8>,
    rng: &mut Rng,
    ms: u64,
    i: u64,
    (start_ms, span_ms): (u64, u64),
    topics: &[Vec<u8>],
    templates: &[Vec<u8>],
) {
    // Entropy grows with every record, so a segment stays sorted within a millisecond too.
    let id = encode(
        ms,
        (u128::from(i) << 24) | u128::from(rng.next() & 0xff_ffff),
    );
    line.clear();
    line.extend_from_slice(&id);
    line.push(b' ');
    line.extend_from_slice(&topics[rng.below(topics.len() as u64) as usize]);
    line.push(b' ');
    for &c in &templates[rng.below(templates.len() as u64) as usize] {
        line.push(if c.is_ascii_digit() && rng.below(2) == 0 {
            b'0' + rng.below(10) as u8
        } else {
            c
        });
    }
    if rng.below(10) == 0 {
        line.extend_from_slice(b" tag=hot");
    }
    if rng.below(2_000_000) == 0 {
        line.extend_from_slice(b" needle-7f3a9");
    }
    let mid = start_ms + span_ms / 2;
    if (mid..mid + 600_000).contains(&ms) && rng.below(10) == 0 {
        line.extend_from_slice(b" request_id=7c1e5a90");
    }
}

/// Append `line` (whose ULID is `id`) to the open segment, opening one if none is.
fn emit(seg: &mut Option<Open>, out: &Path, line: &[u8], id: [u8; 26], i: u64) {
    let s = seg.get_or_insert_with(|| {
        let p = out.join(format!("gen-{i}.active"));
        (
            BufWriter::with_capacity(8 << 20, File::create(&p).unwrap()),
            p,
            id,
            id,
        )
    });
    s.0.write_all(line).unwrap();
    s.3 = id;
}

/// `b` as a JSON string literal.
fn json_string(b: &[u8]) -> String {
    serde_json::to_string(&String::from_utf8_lossy(b)).unwrap()
}

fn finish(s: Open, out: &Path) {
    let (mut w, p, low, high) = s;
    w.flush().unwrap();
    let name = format!(
        "{}-{}.flushed",
        String::from_utf8_lossy(&low),
        String::from_utf8_lossy(&high)
    );
    std::fs::rename(p, out.join(name)).unwrap();
}

fn encode(ms: u64, entropy: u128) -> [u8; 26] {
    const A: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut v = (u128::from(ms) << 80) | (entropy & ((1u128 << 80) - 1));
    let mut out = [0u8; 26];
    for c in out.iter_mut().rev() {
        *c = A[(v & 31) as usize];
        v >>= 5;
    }
    out
}
