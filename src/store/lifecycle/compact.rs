//! Compaction: the segment overlapping the most others merged with them, or a run of small
//! raw neighbours merged up to the target size; every line checked on the way, the output cut
//! at the target size.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::{Compacter, Failure};
use crate::merge::{self, Source};
use crate::record::{ULID_LEN, check_record};
use crate::segment::Records;
use crate::store::log::{ACTIVE, Segment, StoreLog, overlap};

impl Compacter {
    /// Merge `chosen` into new segments of about the target size; returns inputs compacted.
    pub(super) fn compact(&self, chosen: Vec<Segment>) -> io::Result<usize> {
        if chosen.len() < 2 {
            return Ok(0);
        }
        let inputs = self.log.claim(&chosen)?;
        if inputs.len() < 2 {
            self.log.release(&inputs);
            return Ok(0);
        }
        match self.merge_into_outputs(&inputs, &mut |_| true) {
            Ok(()) => {
                self.log.remove(&inputs)?;
                Ok(inputs.len())
            }
            Err(failure) => self.give_back(inputs, failure),
        }
    }

    /// Merge `inputs` into new segments, the records `keep` refuses left out.
    pub(super) fn merge_into_outputs(
        &self,
        inputs: &[Segment],
        keep: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), Failure> {
        let mut sources = inputs
            .iter()
            .map(|s| Ok(Checked::new(Records::open(&s.path)?, s.path.clone())))
            .collect::<io::Result<Vec<_>>>()?;
        let mut out = Output::new(&self.log, self.cfg.target_size);
        let merged = merge::merge(&mut sources, |line| {
            if keep(line) {
                out.write(line)?;
            }
            Ok(true)
        });
        if let Some(bad) = sources.iter().find_map(|s| s.bad.clone()) {
            out.abandon();
            return Err(Failure::Bad(bad.0, bad.1));
        }
        if let Some(s) = sources.iter().find(|s| s.inner.corrupt_blocks() > 0) {
            out.abandon();
            return Err(Failure::Damaged(s.path.clone()));
        }
        if let Err(e) = merged {
            out.abandon();
            return Err(Failure::Io(e));
        }
        out.finish().map_err(Failure::Io)
    }
}

/// A merge source that checks every line of a segment: a record with a ULID, in order, ending
/// in `\n`. The first bad line ends the source and records why.
struct Checked<S> {
    inner: S,
    path: PathBuf,
    last: Option<[u8; ULID_LEN]>,
    bad: Option<(PathBuf, String)>,
}

impl<S: Source> Checked<S> {
    fn new(inner: S, path: PathBuf) -> Self {
        let mut c = Checked {
            inner,
            path,
            last: None,
            bad: None,
        };
        c.check();
        c
    }

    fn check(&mut self) {
        let Some(line) = self.inner.current() else {
            return;
        };
        let reason = match line.strip_suffix(b"\n") {
            None => Some("last record has no newline".to_string()),
            Some(body) => match check_record(body) {
                Err(r) => Some(r.to_string()),
                Ok(id) if self.last.is_some_and(|l| id < &l[..]) => {
                    Some("records are not sorted by ULID".to_string())
                }
                Ok(id) => {
                    self.last = id.try_into().ok();
                    None
                }
            },
        };
        if let Some(r) = reason {
            self.bad = Some((self.path.clone(), r));
        }
    }
}

impl<S: Source> Source for Checked<S> {
    fn current(&self) -> Option<&[u8]> {
        if self.bad.is_some() {
            None
        } else {
            self.inner.current()
        }
    }
    fn advance(&mut self) -> io::Result<()> {
        self.inner.advance()?;
        self.check();
        Ok(())
    }
}

/// Compaction output: `.active` files closed as `<LOW>-<HIGH>.flushed` at the target size.
struct Output<'a> {
    log: &'a StoreLog,
    target: u64,
    cur: Option<OpenOutput>,
}

/// The output file being written.
struct OpenOutput {
    w: BufWriter<File>,
    path: PathBuf,
    low: [u8; ULID_LEN],
    high: [u8; ULID_LEN],
    size: u64,
}

impl<'a> Output<'a> {
    fn new(log: &'a StoreLog, target: u64) -> Self {
        Output {
            log,
            target,
            cur: None,
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        let id = merge::key(line);
        let cur = match &mut self.cur {
            Some(c) => c,
            None => {
                let (f, path) = self.log.create(ACTIVE)?;
                self.cur.insert(OpenOutput {
                    w: BufWriter::with_capacity(1 << 20, f),
                    path,
                    low: id,
                    high: id,
                    size: 0,
                })
            }
        };
        cur.w.write_all(line)?;
        cur.high = id;
        cur.size += line.len() as u64;
        if cur.size >= self.target {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        if let Some(c) = self.cur.take() {
            let file = c.w.into_inner().map_err(|e| e.into_error())?;
            self.log.close(file, &c.path, &c.low, &c.high)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.close()
    }

    /// Drop the unfinished output file. Outputs already closed stay: they hold only records
    /// also in the inputs, so queries deduplicate them and the next compaction merges them.
    fn abandon(mut self) {
        if let Some(c) = self.cur.take() {
            let _ = std::fs::remove_file(c.path);
        }
    }
}

/// Indices of the segment that overlaps the most others, and of those others; empty when no
/// two segments overlap. `segs` must be sorted by low ULID.
pub fn choose_overlapping(segs: &[Segment]) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    for (i, a) in segs.iter().enumerate() {
        let group: Vec<usize> = segs
            .iter()
            .enumerate()
            .filter(|(_, b)| overlap((a.low, a.high), (b.low, b.high)))
            .map(|(j, _)| j)
            .collect();
        if group.len() > best.len() {
            debug_assert!(group.contains(&i));
            best = group;
        }
    }
    if best.len() < 2 { Vec::new() } else { best }
}

/// The original's `chooseFirstSequential`: the first run of at least `min` consecutive
/// segments whose sizes add up to at most `target`.
pub fn choose_first_sequential(sizes: &[u64], min: usize, target: u64) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::new();
    let mut total = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if total + size <= target {
            chosen.push(i);
            total += size;
        } else if chosen.len() >= min {
            break;
        } else if size <= target {
            chosen = vec![i];
            total = size;
        } else {
            chosen.clear();
            total = 0;
        }
    }
    if chosen.len() < min {
        Vec::new()
    } else {
        chosen
    }
}
