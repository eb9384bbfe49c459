//! The measurements behind the v3 format's choices (FORMAT.md): block size, dictionary size and
//! zstd level against stored bytes, conversion and read speed, on raw segment files.
//!
//! `cargo run --release --example format_study -- RAW_SEGMENT... [-- CONFIG...]`
//!
//! A CONFIG is `v<version>:<level>:<block KiB>:<dictionary KiB>[:<1/share of raw>[:<group MiB>]]`
//! (default: a grid).

use std::time::Instant;

use oklog::segment::{CompressConfig, GroupLines, compress};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let files = &args[..split];
    let mut configs: Vec<String> = args.get(split + 1..).unwrap_or_default().to_vec();
    if configs.is_empty() {
        for v in [
            "v2:2:1024:0",
            "v3:2:1024:0",
            "v3:2:1024:4096",
            "v3:2:256:4096",
            "v3:2:64:4096",
            "v3:3:256:4096",
            "v3:2:256:1024",
        ] {
            configs.push(v.to_string());
        }
    }
    let raws: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let raw_total: usize = raws.iter().map(Vec::len).sum();
    println!("{} files, {raw_total} raw bytes", raws.len());
    println!(
        "| config | stored | ratio | compress MB/s | read MB/s | filters | dictionary | blocks |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in &configs {
        let p: Vec<&str> = c.split(':').collect();
        let cfg = CompressConfig {
            version: p[0][1..].parse().unwrap(),
            level: p[1].parse().unwrap(),
            block_size: p[2].parse::<usize>().unwrap() << 10,
            dict_size: p[3].parse::<usize>().unwrap() << 10,
            dict_share: p.get(4).map_or(16, |v| v.parse().unwrap()),
            group_size: p.get(5).map_or(32, |v| v.parse::<usize>().unwrap()) << 20,
            ..CompressConfig::default()
        };
        let (mut stored, mut ct, mut rt) = (0usize, 0f64, 0f64);
        let (mut filters, mut dict, mut blocks) = (0u64, 0u64, 0usize);
        for raw in &raws {
            let mut file = Vec::with_capacity(raw.len() / 3);
            let t = Instant::now();
            compress(raw, &mut file, &cfg).unwrap();
            ct += t.elapsed().as_secs_f64();
            stored += file.len();
            let f = oklog::segment::Footer::parse(&file).unwrap();
            filters += f
                .blocks
                .iter()
                .map(|b| u64::from(b.filter_len))
                .sum::<u64>();
            dict += f.dict.as_ref().map_or(0, |d| u64::from(d.stored_len));
            blocks += f.blocks.len();
            let t = Instant::now();
            let mut g = GroupLines::new(&file[..]).unwrap();
            let mut n = 0usize;
            use oklog::merge::Source;
            while let Some(l) = g.current() {
                n += l.len();
                g.advance().unwrap();
            }
            rt += t.elapsed().as_secs_f64();
            assert_eq!(n, raw.len());
        }
        println!(
            "| {c} | {stored} | {:.2} | {:.0} | {:.0} | {filters} | {dict} | {blocks} |",
            raw_total as f64 / stored as f64,
            raw_total as f64 / 1e6 / ct,
            raw_total as f64 / 1e6 / rt
        );
    }
}
