//! Conversion: segments older than `-store.segment-compress-after` compressed (v4), oldest
//! first, one at a time; compressed segments of an older version (v2, v3) rewritten as v4; and
//! `-store.segment-format raw` turns compressed ones back.

use std::io::{self, BufWriter, Write};

use super::{Compacter, Failure};
use crate::merge::Source;
use crate::record::min_ulid;
use crate::segment::{Format, Reader, Records};
use crate::store::log::{CONVERTING, FLUSHED, READING, Segment, overlap};

impl Compacter {
    /// Convert the oldest segment due for it (see [`CompactConfig::format`]) that overlapping
    /// compaction will not merge (one that overlaps others too little to be merged is
    /// converted as it is): claimed, written as `<uuid>.converting`, synced, renamed in under the same name
    /// with the input removed. A crash before the rename leaves the input (the partial file is
    /// deleted at start-up); after it, either copy alone or both (then queries deduplicate and
    /// start-up keeps the raw one). Returns how many segments were converted (0 or 1).
    pub(super) fn convert(&self, live: &dyn Fn(&Segment) -> bool) -> io::Result<usize> {
        let target = self.cfg.format;
        let due = match (target, self.cfg.compress_after) {
            (Format::Raw, _) => None,
            (Format::Compressed, Some(after)) => {
                let now = crate::gotime::now_ms().max(0) as u64;
                Some(min_ulid(now.saturating_sub(after.as_millis() as u64)))
            }
            (Format::Compressed, None) => return Ok(0),
        };
        let all = self.log.scan(&[FLUSHED, READING], |_| true)?;
        let gathering = if target == Format::Compressed {
            sequential_pending(&all, self.cfg.target_size)
        } else {
            Default::default()
        };
        let candidate = all.iter().find(|s| {
            s.path.extension().and_then(|e| e.to_str()) == Some(FLUSHED)
                && (s.format != target || (target == Format::Compressed && s.stale))
                && due.is_none_or(|d| s.high < d)
                && live(s)
                && !gathering.contains(&s.path)
                && !(all
                    .iter()
                    .any(|o| o.path != s.path && overlap((o.low, o.high), (s.low, s.high)))
                    && self.merge_pending(s, &all))
        });
        let Some(candidate) = candidate else {
            return Ok(0);
        };
        let inputs = self.log.claim(std::slice::from_ref(candidate))?;
        let [input] = &inputs[..] else {
            self.log.release(&inputs);
            return Ok(0);
        };
        let started = std::time::Instant::now();
        match self.convert_one(input, target) {
            Ok(bytes) => {
                let to = vec![("to", target.name())];
                self.metrics
                    .store_converted_segments
                    .get_or_create(&to)
                    .inc();
                self.metrics
                    .store_converted_bytes
                    .get_or_create(&to)
                    .inc_by(bytes);
                tracing::info!(segment = %candidate.path.display(), to = target.name(), raw_bytes = bytes, took = ?started.elapsed(), "converted a segment");
                Ok(1)
            }
            Err(failure) => self.give_back(inputs, failure),
        }
    }

    /// The records of the compressed segment `input`, written raw to a new `.converting` file
    /// (removed when the result is dropped, or at start-up after a crash).
    fn unpack(&self, input: &Segment) -> Result<Unpacked, Failure> {
        let (file, tmp) = self.log.create(CONVERTING)?;
        let unpacked = Unpacked(tmp);
        let mut w = BufWriter::with_capacity(
            1 << 20,
            Stoppable {
                inner: &file,
                stop: &self.stop,
            },
        );
        write_records(input, &mut w)?;
        w.flush()?;
        Ok(unpacked)
    }

    /// Write `input` (claimed) in `target` format and swap it in; returns its raw bytes.
    pub(super) fn convert_one(&self, input: &Segment, target: Format) -> Result<u64, Failure> {
        let (file, tmp) = self.log.create(CONVERTING)?;
        let result = (|| -> Result<u64, Failure> {
            let mut w = BufWriter::with_capacity(
                1 << 20,
                Stoppable {
                    inner: &file,
                    stop: &self.stop,
                },
            );
            let raw_bytes = match target {
                Format::Compressed => {
                    // A compressed segment of an older version is written raw to a file of
                    // its own first (memory stays bounded), and compressed from there.
                    let unpacked = match input.format {
                        Format::Compressed => Some(self.unpack(input)?),
                        Format::Raw => None,
                    };
                    let path = unpacked.as_ref().map_or(&input.path, |u| &u.0);
                    let Some(reader) = Reader::open_file(path)? else {
                        return Err(Failure::Bad(input.path.clone(), "empty segment".into()));
                    };
                    match reader.compress(&mut w, &self.cfg.compress) {
                        Ok(sum) => sum.raw_bytes,
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            return Err(Failure::Bad(input.path.clone(), e.to_string()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                            return Err(Failure::StaysRaw(input.path.clone(), e.to_string()));
                        }
                        Err(e) => return Err(Failure::Io(e)),
                    }
                }
                Format::Raw => write_records(input, &mut w)?,
            };
            w.flush()?;
            drop(w);
            file.sync_all()?;
            self.log.replace(input, &tmp, target)?;
            Ok(raw_bytes)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Every record of `input` into `w` as raw lines; the bytes written. A compressed input with
/// unreadable blocks is [`Failure::Damaged`].
fn write_records(input: &Segment, w: &mut impl Write) -> Result<u64, Failure> {
    let mut records = Records::open(&input.path)?;
    let mut n = 0u64;
    while let Some(line) = records.current() {
        w.write_all(line)?;
        n += line.len() as u64;
        records.advance()?;
    }
    if records.corrupt_blocks() > 0 {
        return Err(Failure::Damaged(input.path.clone()));
    }
    Ok(n)
}

/// A temporary file, removed when dropped.
struct Unpacked(std::path::PathBuf);

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A writer that fails once `stop` is set: a conversion at shutdown gives up at its next
/// write instead of running to the end of its segment.
struct Stoppable<'a, W> {
    inner: W,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl<W: Write> Write for Stoppable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Not `Interrupted`: `write_all` would retry that forever.
            return Err(io::Error::other("shutting down: conversion abandoned"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Raw segments that sequential compaction is about to merge: the members of each stretch of
/// small (under half of `target`) raw neighbours that adds up to half the target or more.
/// Converting one first would leave it small for good (compressed segments are not merged
/// sequentially): an import of old records, due for conversion as soon as it lands, would
/// end as many small compressed segments.
fn sequential_pending(
    all: &[Segment],
    target: u64,
) -> std::collections::HashSet<std::path::PathBuf> {
    let mut raw: Vec<&Segment> = all
        .iter()
        .filter(|s| {
            s.format == Format::Raw && s.path.extension().and_then(|e| e.to_str()) == Some(FLUSHED)
        })
        .collect();
    raw.sort_by_key(|s| s.low);
    let mut pending = std::collections::HashSet::new();
    for stretch in raw.split(|s| !super::compact::is_small(s.size, target)) {
        if stretch.len() > 1 && stretch.iter().map(|s| s.size).sum::<u64>() >= target / 2 {
            pending.extend(stretch.iter().map(|s| s.path.clone()));
        }
    }
    pending
}
