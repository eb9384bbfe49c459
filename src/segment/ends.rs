//! A segment's first and last record checked against the ULID range its name claims, reading
//! only the ends of the file: what a store does with every segment it finds at start-up.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::{Format, Reader};
use crate::record::ULID_LEN;

/// Check that the segment at `path` (in `format`) holds records from `low` to `high`: a raw
/// segment starts with `<low><SP>` and ends with a complete record whose ULID is `high`; a
/// compressed one's footer names that range. `Ok(Err(reason))` for a bad segment; `Err` for
/// a failed read.
pub fn check_ends(
    path: &Path,
    format: Format,
    low: &[u8; ULID_LEN],
    high: &[u8; ULID_LEN],
) -> io::Result<Result<(), &'static str>> {
    match format {
        Format::Compressed => compressed_ends(path, low, high),
        Format::Raw => raw_ends(path, low, high),
    }
}

fn compressed_ends(
    path: &Path,
    low: &[u8; ULID_LEN],
    high: &[u8; ULID_LEN],
) -> io::Result<Result<(), &'static str>> {
    Ok(match Reader::open_file(path) {
        Ok(None) => Err("empty file"),
        Ok(Some(r)) => match r.footer() {
            Some(f) if f.low == *low && f.high == *high => Ok(()),
            Some(_) => Err("compressed segment's range does not match its name"),
            None => Err("compressed segment's footer or index is unreadable"),
        },
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(segment = %path.display(), error = %e, "compressed segment footer");
            Err("compressed segment's footer or index is unreadable")
        }
        Err(e) => return Err(e),
    })
}

fn raw_ends(
    path: &Path,
    low: &[u8; ULID_LEN],
    high: &[u8; ULID_LEN],
) -> io::Result<Result<(), &'static str>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < ULID_LEN as u64 + 2 {
        return Ok(Err("segment too short to hold a record"));
    }
    let mut head = [0u8; ULID_LEN + 1];
    f.read_exact(&mut head)?;
    if head[..ULID_LEN] != *low || head[ULID_LEN] != b' ' {
        return Ok(Err("first record does not match the segment's name"));
    }
    // Read backwards until the start of the last line.
    let mut end = len;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let start = end.saturating_sub(64 << 10);
        let mut chunk = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if end == len && tail.last() != Some(&b'\n') {
            return Ok(Err("last record is torn (no newline)"));
        }
        let body = &tail[..tail.len() - 1];
        if let Some(i) = memchr::memrchr(b'\n', body) {
            let last = &body[i + 1..];
            return Ok(
                if last.len() > ULID_LEN && last[..ULID_LEN] == *high && last[ULID_LEN] == b' ' {
                    Ok(())
                } else {
                    Err("last record does not match the segment's name")
                },
            );
        }
        if start == 0 {
            // One record only.
            return Ok(if low == high {
                Ok(())
            } else {
                Err("last record does not match the segment's name")
            });
        }
        end = start;
    }
}
