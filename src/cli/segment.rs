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
use crate::record::ulid_ms;
use crate::segment::{self, Format, Info, Reader, Records};

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
    for (i, e) in records.corrupt() {
        eprintln!("{}: block {i}: {e}", path.display());
    }
    Ok(records.corrupt_blocks())
}

/// The time of a record's ULID, or `?` when the line does not start with one (a damaged or
/// foreign file: bytes from disk never make it panic).
fn time(id: &[u8]) -> String {
    if crate::record::is_valid_ulid(id) {
        gotime::rfc3339_utc_millis(ulid_ms(id) as i64)
    } else {
        "?".to_string()
    }
}

/// Describe `path`; returns the blocks that fail their checksum.
fn info(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    // An empty file is a raw segment of no records.
    let i = Reader::open_file(path)?.map_or_else(Info::default, |r| r.info());
    writeln!(out, "file      {}", path.display())?;
    match i.format {
        Format::Raw => writeln!(out, "format    raw (v1)")?,
        Format::Compressed if i.version < segment::VERSION => writeln!(
            out,
            "format    compressed (v{}; rewritten as v{} in the background)",
            i.version,
            segment::VERSION
        )?,
        Format::Compressed => writeln!(out, "format    compressed (v{})", i.version)?,
    }
    writeln!(out, "records   {}", i.records)?;
    if let (Some(low), Some(high)) = (&i.low, &i.high) {
        let text = |id: &[u8]| String::from_utf8_lossy(id).into_owned();
        writeln!(out, "ulids     {} .. {}", text(low), text(high))?;
        writeln!(out, "time      {} .. {}", time(low), time(high))?;
    }
    writeln!(out, "raw       {} bytes", i.raw_bytes)?;
    if i.format == Format::Raw {
        writeln!(out, "stored    {} bytes", i.stored_bytes)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(
        out,
        "stored    {} bytes (ratio {:.2}; blocks {} bytes, filters {} bytes, dictionary {} bytes of {})",
        i.stored_bytes,
        i.raw_bytes as f64 / i.stored_bytes.max(1) as f64,
        i.block_bytes,
        i.filter_bytes,
        i.dict_bytes.0,
        i.dict_bytes.1
    )?;
    writeln!(
        out,
        "blocks    {} in {} group(s); {} mixed ({} records); {} corrupt",
        i.blocks, i.groups, i.mixed_blocks, i.mixed_records, i.corrupt_blocks
    )?;
    writeln!(out, "topics    {}", i.topics.len())?;
    for t in &i.topics {
        writeln!(
            out,
            "  {:<24} {:>10} records {:>12} bytes",
            String::from_utf8_lossy(&t.name),
            t.records,
            t.raw_bytes
        )?;
    }
    writeln!(out)?;
    Ok(i.corrupt_blocks)
}
