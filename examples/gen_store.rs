//! Write a store directory of realistic records straight in the on-disk format, for the query
//! benchmark (ingest can only stamp the current time).
//!
//! `cargo run --release --example gen_store -- OUT_DIR [GIB=2] [SEGMENTS=2] [DAYS=7] [SEED=42]`
//!
//! Records are LogHub sample lines (16 systems) with their digits re-drawn from a fixed-seed
//! generator, under 100 topics of about 1% each (`web-00` … `app-19`), spread evenly over
//! DAYS ending now. Planted for the queries:
//! `tag=hot` on 10% of records, `needle-7f3a9` on about one record in two million, and
//! `request_id=7c1e5a90` on one record in ten thousand: one request's burst, on a tenth of the
//! records of the ten minutes from the middle of the span.

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
    std::fs::create_dir_all(&out).unwrap();
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
    while written < total_bytes {
        let ms = start_ms + (i.min(n) * span_ms) / n.max(1);
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
        line.push(b'\n');
        let s = seg.get_or_insert_with(|| {
            let p = out.join(format!("gen-{i}.active"));
            (
                BufWriter::with_capacity(8 << 20, File::create(&p).unwrap()),
                p,
                id,
                id,
            )
        });
        s.0.write_all(&line).unwrap();
        s.3 = id;
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
    eprintln!("wrote {i} records, {written} bytes, in {}", out.display());
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
