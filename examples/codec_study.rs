//! The measurements behind the compressed segment format's choices (FORMAT.md): zstd level and
//! block size (ratio, compression and decompression speed), and the needle filter (trigram
//! bitmap against a token bloom filter: size and blocks skipped on the bench's query set).
//!
//! `cargo run --release --example codec_study -- RAW_SEGMENT [MIB=256]`

use std::time::Instant;

use oklog::segment::{CompressConfig, FilterBuilder, Footer, Needles, compress};

fn blocks(raw: &[u8], size: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < raw.len() {
        let mut end = (start + size).min(raw.len());
        if end < raw.len() {
            end = memchr::memrchr(b'\n', &raw[start..end]).map_or(end, |i| start + i + 1);
        }
        out.push(&raw[start..end]);
        start = end;
    }
    out
}

/// A token bloom filter: tokens are runs of ASCII letters and digits (lower-cased), 10 bits
/// per distinct token and 3 hash functions (about 1% false positives).
fn token_bloom(block: &[u8]) -> Vec<u8> {
    let mut tokens = std::collections::HashSet::new();
    for line in block.split(|&b| b == b'\n') {
        for t in line
            .get(27..)
            .unwrap_or_default()
            .split(|b| !b.is_ascii_alphanumeric())
        {
            if !t.is_empty() {
                tokens.insert(t.to_ascii_lowercase());
            }
        }
    }
    let bits = (tokens.len() * 10).next_power_of_two().max(64);
    let mut f = vec![0u8; bits / 8];
    for t in &tokens {
        for k in hashes(t, bits) {
            f[k / 8] |= 1 << (k % 8);
        }
    }
    f
}

fn hashes(t: &[u8], bits: usize) -> [usize; 3] {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in t {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let (a, b) = (h as u32 as usize, (h >> 32) as usize);
    [
        a % bits,
        (a.wrapping_add(b)) % bits,
        (a.wrapping_add(2 * b)) % bits,
    ]
}

/// Whether a token bloom may hold a match of `needle`: only tokens inside the needle (bounded
/// by separators on both sides within it) can be looked up; none, and the block must be read.
fn token_may(f: &[u8], needle: &[u8]) -> bool {
    let parts: Vec<&[u8]> = needle.split(|b| !b.is_ascii_alphanumeric()).collect();
    if parts.len() < 3 {
        return true; // no token is whole: the first and last may be parts of longer ones
    }
    parts[1..parts.len() - 1]
        .iter()
        .filter(|t| !t.is_empty())
        .all(|t| {
            hashes(&t.to_ascii_lowercase(), f.len() * 8)
                .iter()
                .all(|&k| f[k / 8] & (1 << (k % 8)) != 0)
        })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().expect("usage: codec_study RAW_SEGMENT [MIB]");
    let mib: usize = args.get(1).map_or(256, |v| v.parse().unwrap());
    let data = std::fs::read(path).unwrap();
    let mut end = (mib << 20).min(data.len());
    end = memchr::memrchr(b'\n', &data[..end]).map_or(end, |i| i + 1);
    let raw = &data[..end];
    println!("{} MiB of {path}\n", raw.len() >> 20);
    if std::env::var_os("ONLY_FORMAT").is_some() {
        let t = Instant::now();
        let sum = compress(raw, std::io::sink(), &CompressConfig::default()).unwrap();
        let mbs = sum.raw_bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
        println!("format v2: {mbs:.0} MB/s");
        return;
    }
    println!("| codec | block | ratio | compress MB/s | decompress MB/s |");
    println!("|---|---|---|---|---|");
    for (level, size) in [
        (1, 256 << 10),
        (1, 1 << 20),
        (2, 1 << 20),
        (3, 256 << 10),
        (3, 1 << 20),
        (3, 4 << 20),
        (6, 1 << 20),
    ] {
        let bs = blocks(raw, size);
        let mut c = zstd::bulk::Compressor::new(level).unwrap();
        let t = Instant::now();
        let frames: Vec<Vec<u8>> = bs.iter().map(|b| c.compress(b).unwrap()).collect();
        let ct = t.elapsed().as_secs_f64();
        let stored: usize = frames.iter().map(Vec::len).sum();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let mut buf = Vec::with_capacity(size * 2);
        let t = Instant::now();
        for (f, b) in frames.iter().zip(&bs) {
            buf.clear();
            d.decompress_to_buffer(f, &mut buf).unwrap();
            assert_eq!(buf.len(), b.len());
        }
        let dt = t.elapsed().as_secs_f64();
        let mb = raw.len() as f64 / 1e6;
        println!(
            "| zstd {level} | {} KiB | {:.2} | {:.0} | {:.0} |",
            size >> 10,
            raw.len() as f64 / stored as f64,
            mb / ct,
            mb / dt
        );
    }
    // The whole format, as the store writes it (topic runs, groups, filters, footer).
    let t = Instant::now();
    let mut file = Vec::new();
    let sum = compress(raw, &mut file, &CompressConfig::default()).unwrap();
    let ct = t.elapsed().as_secs_f64();
    let footer = Footer::parse(&file).unwrap();
    let filters: u64 = footer.blocks.iter().map(|b| u64::from(b.filter_len)).sum();
    println!(
        "\nformat v2 (defaults): ratio {:.2} (filters {:.1}% of the file), {} blocks, {:.0} MB/s of raw input on one core",
        sum.raw_bytes as f64 / sum.file_bytes as f64,
        100.0 * filters as f64 / file.len() as f64,
        sum.blocks,
        sum.raw_bytes as f64 / 1e6 / ct
    );
    // Filters: the bench's literal needles, and made-up absent ones.
    let needles: &[(&str, bool)] = &[
        ("needle-7f3a9", false),
        (" session opened", false),
        ("Failed password for \\w+ from", true),
        ("(?i)failed password", true),
        ("tag=hot", false),
        ("request_id=4f9c2a7e", false),
        ("user=zq81xk", false),
        ("ERROR 4711 payment", false),
    ];
    let bs = blocks(raw, 1 << 20);
    let mut fb = FilterBuilder::default();
    let mut tri = Vec::new();
    let (mut tri_bytes, mut tok_bytes) = (0usize, 0usize);
    let mut tri_skip = vec![0usize; needles.len()];
    let mut tok_skip = vec![0usize; needles.len()];
    let mut present = vec![0usize; needles.len()];
    for b in &bs {
        fb.build(b, &mut tri);
        let tok = token_bloom(b);
        tri_bytes += tri.len();
        tok_bytes += tok.len();
        for (i, (q, regex)) in needles.iter().enumerate() {
            let n = Needles::new(q, *regex);
            if !n.may_match(&tri) {
                tri_skip[i] += 1;
            }
            // The token filter on the query's longest literal (as the trigram one uses).
            let lit: &str = if *regex {
                q.trim_start_matches("(?i)")
                    .split("\\w+")
                    .next()
                    .unwrap_or("")
            } else {
                q
            };
            if !token_may(&tok, lit.as_bytes()) {
                tok_skip[i] += 1;
            }
            let re = regex::bytes::Regex::new(&if *regex {
                q.to_string()
            } else {
                regex::escape(q)
            })
            .unwrap();
            if re.is_match(b) {
                present[i] += 1;
            }
        }
    }
    println!(
        "\nneedle filters over {} blocks of 1 MiB: trigram bitmaps {:.1}% of raw, token blooms {:.1}% of raw",
        bs.len(),
        100.0 * tri_bytes as f64 / raw.len() as f64,
        100.0 * tok_bytes as f64 / raw.len() as f64
    );
    println!("\n| query | blocks holding it | skipped by trigrams | skipped by tokens |");
    println!("|---|---|---|---|");
    for (i, (q, _)) in needles.iter().enumerate() {
        println!(
            "| `{q}` | {} | {} | {} |",
            present[i], tri_skip[i], tok_skip[i]
        );
    }
}
