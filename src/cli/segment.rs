//! `oklog segment cat FILE...` and `oklog segment info FILE...`: read store segment files of
//! either format with standard tools in mind. `cat` prints the records as raw lines (so
//! `oklog segment cat x | grep` works on compressed segments too); `info` describes a file.
//!
//! Exit codes: 0 all read; 1 a file could not be read at all (or bad usage); 3 some blocks
//! failed their checksum and were left out (the rest was printed), as `oklog query` does for a
//! partial answer.

use std::io::{self, Write};
use std::path::Path;

use crate::gotime;
use crate::merge::Source;
use crate::record::{ULID_LEN, ulid_ms};
use crate::segment::{Footer, Format, MIXED};
use crate::store::log::{Records, format_of, map_segment};

const USAGE: &str = "USAGE
  oklog segment cat FILE...    print the records of raw or compressed segments as raw lines
  oklog segment info FILE...   describe segments: format, records, ranges, topics, blocks, sizes
";

/// Run `oklog segment`; returns the exit code.
pub fn run(argv: &[String]) -> i32 {
    let (cmd, files) = match argv.split_first() {
        Some((c, f)) if !f.is_empty() && (c == "cat" || c == "info") => (c.as_str(), f),
        Some((c, _)) if matches!(c.as_str(), "-h" | "-help" | "--help" | "help") => {
            print!("{USAGE}");
            return 0;
        }
        _ => {
            eprint!("{USAGE}");
            return 1;
        }
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut code = 0;
    for f in files {
        let path = Path::new(f);
        let result = match cmd {
            "cat" => cat(path, &mut out),
            _ => info(path, &mut out),
        };
        match result {
            Ok(0) => {}
            Ok(corrupt) => {
                eprintln!("warning: {f}: {corrupt} corrupt block(s) left out");
                code = code.max(3);
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return code,
            Err(e) => {
                let _ = out.flush();
                eprintln!("{f}: {e}");
                code = 1;
            }
        }
    }
    if let Err(e) = out.flush()
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("{e}");
        return 1;
    }
    code
}

/// Print every record of `path`; returns the blocks left out.
fn cat(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let mut records = Records::open(path)?;
    while let Some(line) = records.current() {
        out.write_all(line)?;
        records.advance()?;
    }
    if let Records::Compressed(g) = &records {
        for (i, e) in &g.corrupt {
            eprintln!("{}: block {i}: {e}", path.display());
        }
    }
    Ok(records.corrupt_blocks())
}

fn time(id: &[u8]) -> String {
    gotime::rfc3339_utc_millis(ulid_ms(id) as i64)
}

/// Describe `path`; returns the blocks that fail their checksum.
fn info(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let size = std::fs::metadata(path)?.len();
    writeln!(out, "file      {}", path.display())?;
    match format_of(path) {
        Format::Raw => {
            let mut records = Records::open(path)?;
            let (mut n, mut low, mut high) = (0u64, None, Vec::new());
            while let Some(line) = records.current() {
                n += 1;
                let id = &line[..line.len().min(ULID_LEN)];
                low.get_or_insert_with(|| id.to_vec());
                high.clear();
                high.extend_from_slice(id);
                records.advance()?;
            }
            let low = low.unwrap_or_default();
            writeln!(out, "format    raw (v1)")?;
            writeln!(out, "records   {n}")?;
            if n > 0 {
                writeln!(
                    out,
                    "ulids     {} .. {}",
                    String::from_utf8_lossy(&low),
                    String::from_utf8_lossy(&high)
                )?;
                writeln!(out, "time      {} .. {}", time(&low), time(&high))?;
            }
            writeln!(out, "raw       {size} bytes")?;
            writeln!(out, "stored    {size} bytes")?;
            writeln!(out)?;
            Ok(0)
        }
        Format::Compressed => {
            let map = map_segment(path)?.ok_or_else(|| io::Error::other("empty file"))?;
            let footer = Footer::parse(&map)?;
            let corrupt = footer
                .blocks
                .iter()
                .filter(|b| {
                    let s = b.offset as usize;
                    map.get(s..s + b.stored_len as usize)
                        .is_none_or(|d| crc32fast::hash(d) != b.crc)
                })
                .count() as u64;
            let mixed: Vec<_> = footer.blocks.iter().filter(|b| b.topic == MIXED).collect();
            writeln!(out, "format    compressed (v{})", crate::segment::VERSION)?;
            writeln!(out, "records   {}", footer.records)?;
            writeln!(
                out,
                "ulids     {} .. {}",
                String::from_utf8_lossy(&footer.low),
                String::from_utf8_lossy(&footer.high)
            )?;
            writeln!(
                out,
                "time      {} .. {}",
                time(&footer.low),
                time(&footer.high)
            )?;
            writeln!(out, "raw       {} bytes", footer.raw_bytes)?;
            writeln!(
                out,
                "stored    {size} bytes (ratio {:.2}; blocks {} bytes, filters {} bytes)",
                footer.raw_bytes as f64 / size.max(1) as f64,
                footer.stored_bytes(),
                footer
                    .blocks
                    .iter()
                    .map(|b| u64::from(b.filter_len))
                    .sum::<u64>()
            )?;
            writeln!(
                out,
                "blocks    {} in {} group(s); {} mixed ({} records); {corrupt} corrupt",
                footer.blocks.len(),
                footer.groups.len(),
                mixed.len(),
                mixed.iter().map(|b| u64::from(b.records)).sum::<u64>()
            )?;
            writeln!(out, "topics    {}", footer.topics.len())?;
            for t in &footer.topics {
                writeln!(
                    out,
                    "  {:<24} {:>10} records {:>12} bytes",
                    String::from_utf8_lossy(&t.name),
                    t.records,
                    t.raw_bytes
                )?;
            }
            writeln!(out)?;
            Ok(corrupt)
        }
    }
}
