//! Receiving a replicated segment: the body is checked while it streams to an `.active` file.
//!
//! A replicate body must be sorted, well-formed record lines (DESIGN.md §10 "Segments"): each
//! line at least `<ULID><SP>`, a valid ULID, ULIDs non-decreasing, and a final `\n`. Only the
//! first 27 bytes of each line are looked at, so memory does not depend on line length.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::record::{BODY_OFFSET, ULID_LEN, check_record};

/// Replicas received at once at most; one more is a 503 (its sender tries again on its next
/// round). Each holds an `.active` file until its body ends or times out.
pub const MAX_RECEIVING: usize = 64;

/// Why a replicate body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The body is not sorted, well-formed record lines.
    #[error("record {line}: {reason}")]
    Malformed {
        /// 1-based record number.
        line: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The request body broke off: malformed chunked encoding, a truncated body, a client that
    /// went away or stopped sending.
    #[error("reading the request body: {0}")]
    Body(String),
    /// Writing the segment failed.
    #[error("writing segment: {0}")]
    Io(#[from] io::Error),
}

/// A validated, complete replica: the file, its path and range.
#[derive(Debug)]
pub struct Replica {
    /// The written `.active` file.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// First ULID.
    pub low: [u8; ULID_LEN],
    /// Last ULID.
    pub high: [u8; ULID_LEN],
    /// Records.
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Streams a replicate body into a file, checking it as it goes.
#[derive(Debug)]
pub struct ReplicaWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// The first bytes of the current line (up to `<ULID><SP>`).
    head: Vec<u8>,
    /// Whether the current line's head was checked and only its `\n` is awaited.
    in_body: bool,
    low: Option<[u8; ULID_LEN]>,
    high: Option<[u8; ULID_LEN]>,
    records: u64,
    bytes: u64,
    /// The latest ULID time accepted (now plus [`crate::ingest::MAX_FUTURE`]): a record
    /// further ahead would outlive any retention.
    latest_ms: u64,
}

impl ReplicaWriter {
    /// Write into `file` at `path`.
    pub fn new(file: File, path: PathBuf) -> Self {
        ReplicaWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            head: Vec::with_capacity(BODY_OFFSET),
            in_body: false,
            low: None,
            high: None,
            records: 0,
            bytes: 0,
            latest_ms: (crate::gotime::now_ms().max(0) as u64)
                .saturating_add(crate::ingest::MAX_FUTURE.as_millis() as u64),
        }
    }

    /// The file being written (to delete it on failure).
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    fn bad(&self, reason: &'static str) -> ReplicaError {
        ReplicaError::Malformed {
            line: self.records + 1,
            reason,
        }
    }

    /// Check and write the next piece of the body.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ReplicaError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.in_body {
                match memchr::memchr(b'\n', &chunk[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.in_body = false;
                        self.head.clear();
                        self.records += 1;
                    }
                    None => pos = chunk.len(),
                }
                continue;
            }
            let want = BODY_OFFSET - self.head.len();
            let take = &chunk[pos..chunk.len().min(pos + want)];
            if memchr::memchr(b'\n', take).is_some() {
                return Err(self.bad("record shorter than a ULID and a space"));
            }
            self.head.extend_from_slice(take);
            pos += take.len();
            if self.head.len() == BODY_OFFSET {
                let id = check_record(&self.head).map_err(|reason| self.bad(reason))?;
                let id: [u8; ULID_LEN] = id.try_into().map_err(|_| self.bad("bad ULID"))?;
                if self.high.is_some_and(|h| id < h) {
                    return Err(self.bad("records are not sorted by ULID"));
                }
                if crate::record::ulid_ms(&id) > self.latest_ms {
                    return Err(self.bad("ULID time more than 30 days after now"));
                }
                self.low.get_or_insert(id);
                self.high = Some(id);
                self.in_body = true;
            }
        }
        self.out.write_all(chunk)?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Write bytes without checking them (after a check failed, to keep the bytes anyway).
    pub fn write_unchecked(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.bytes += chunk.len() as u64;
        self.out.write_all(chunk)
    }

    /// Flush what was written, whatever the check said.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The body ended: `Ok(None)` if it was empty, else the flushed (not yet synced) replica.
    pub fn finish(self) -> Result<Option<Replica>, ReplicaError> {
        if self.in_body || !self.head.is_empty() {
            return Err(self.bad("last record has no newline"));
        }
        let (Some(low), Some(high)) = (self.low, self.high) else {
            return Ok(None);
        };
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Some(Replica {
            file,
            path: self.path,
            low,
            high,
            records: self.records,
            bytes: self.bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8], step: usize) -> Result<Option<(u64, Vec<u8>)>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.active");
        let mut w = ReplicaWriter::new(File::create(&path).unwrap(), path.clone());
        for piece in body.chunks(step) {
            w.push(piece).map_err(|e| e.to_string())?;
        }
        let r = w.finish().map_err(|e| e.to_string())?;
        Ok(r.map(|r| (r.records, std::fs::read(&path).unwrap())))
    }

    #[test]
    fn accepts_sorted_records() {
        let body = b"01BB6RQR190000000000000000 A x\n01BB6RQR190000000000000000 \n01BB6RRTB70000000000000000 B\n";
        for step in [1, 5, 27, 28, 1000] {
            assert_eq!(
                check(body, step),
                Ok(Some((3, body.to_vec()))),
                "step {step}"
            );
        }
        assert_eq!(check(b"", 1), Ok(None));
    }

    #[test]
    fn refuses_malformed_bodies() {
        let cases: &[(&[u8], &str)] = &[
            (b"not a record\n", "record 1: record shorter"),
            (
                b"not a record at all, really: no ULID\n",
                "record 1: record does not start with a valid ULID",
            ),
            (b"01BB6RQR190000000000000000X\n", "record 1: no space"),
            (
                b"01BB6RRTB70000000000000000 B\n01BB6RQR190000000000000000 A\n",
                "record 2: records are not sorted",
            ),
            (
                b"01BB6RQR190000000000000000 A",
                "record 1: last record has no newline",
            ),
            (b"01BB6RQR19", "record 1: last record has no newline"),
            (
                b"01BB6RQR190000000000000000 A\n7ZZZZZZZZZZZZZZZZZZZZZZZZZ B\n",
                "record 2: ULID time more than 30 days after now",
            ),
        ];
        for (body, want) in cases {
            for step in [1, 3, 1000] {
                let got = check(body, step).unwrap_err();
                assert!(got.starts_with(want), "{got:?} vs {want:?}");
            }
        }
    }
}
