//! Per-topic retention (`-store.topic-retain`): a segment holding records past their topic's
//! retention is written again without them, or, when they fill whole blocks of a compressed
//! one, without those blocks.

use std::io::{self, BufWriter, Write};

use super::{Compacter, Failure};
use crate::merge::Source;
use crate::segment::{Format, Reader, Records};
use crate::store::log::{ACTIVE, FLUSHED, Segment};
use crate::store::retention::Retention;

impl Compacter {
    /// How long a segment found without expired records is left before it is read again:
    /// a tenth of the shortest topic retention, from 1 s to 1 h.
    pub(super) fn recheck_ms(retention: &Retention) -> u64 {
        (retention.shortest().as_millis() as u64 / 10).clamp(1000, 3_600_000)
    }

    /// Rewrite the oldest segment holding records past their topic's retention without them
    /// (as compaction: outputs closed, then the input removed; a crash in between leaves
    /// copies the queries deduplicate and the next pass rewrites). Returns 1 if one was.
    pub(super) fn expire(&self, live: &dyn Fn(&Segment) -> bool) -> io::Result<usize> {
        let retention = &*self.cfg.retention;
        if !retention.has_rules() {
            return Ok(0);
        }
        let now = crate::gotime::now_ms().max(0) as u64;
        let keep_from = now.saturating_sub(retention.shortest().as_millis() as u64);
        let recheck = Self::recheck_ms(retention);
        let candidates = self.log.scan(&[FLUSHED], |s| {
            live(s) && crate::record::ulid_ms(&s.low) < keep_from
        })?;
        let mut check = ExpiryCheck::new(retention, now);
        let mut chosen = None;
        {
            let mut seen = self.unexpired.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|p, _| candidates.iter().any(|s| &s.path == p));
            for s in &candidates {
                if seen.get(&s.path).is_some_and(|&t| now < t + recheck) {
                    continue;
                }
                match check.action(s)? {
                    Expire::Nothing => {
                        seen.insert(s.path.clone(), now);
                    }
                    action => {
                        chosen = Some((s.clone(), action));
                        break;
                    }
                }
            }
        }
        let Some((chosen, action)) = chosen else {
            return Ok(0);
        };
        let inputs = self.log.claim(std::slice::from_ref(&chosen))?;
        if inputs.len() != 1 {
            self.log.release(&inputs);
            return Ok(0);
        }
        if let Expire::DropBlocks(drop) = action {
            return match self.drop_blocks(&inputs[0], &drop) {
                Ok(dropped) => {
                    crate::failpoint::crash("expire-drop-before-remove");
                    self.log.remove(&inputs)?;
                    self.metrics.store_expired_records.inc_by(dropped);
                    tracing::info!(segment = %chosen.path.display(), records = dropped, "dropped compressed blocks past their topic's retention");
                    Ok(1)
                }
                Err(failure) => self.give_back(inputs, failure),
            };
        }
        let mut dropped = 0u64;
        let mut keep = |line: &[u8]| {
            let gone = check.expired(line);
            dropped += u64::from(gone);
            !gone
        };
        match self.merge_into_outputs(&inputs, &mut keep) {
            Ok(()) => {
                crate::failpoint::crash("expire-rewrite-before-remove");
                self.log.remove(&inputs)?;
                self.metrics.store_expired_records.inc_by(dropped);
                tracing::info!(segment = %chosen.path.display(), records = dropped, "dropped records past their topic's retention");
                Ok(1)
            }
            Err(failure) => self.give_back(inputs, failure),
        }
    }

    /// Write the compressed segment `input` (claimed) again without the blocks `gone` marks,
    /// their bytes copied as they are, under the name of its new range; returns the records
    /// left out. Nothing is written when every block goes.
    pub(super) fn drop_blocks(&self, input: &Segment, gone: &[bool]) -> Result<u64, Failure> {
        // Opened again now that it is claimed: the file looked at before the claim may have
        // been replaced under its name since (a replica merged in), and that one goes.
        let reader = match Reader::open_file(&input.path)? {
            Some(r) if r.format() == Format::Compressed => r,
            Some(_) => return Err(Failure::Bad(input.path.clone(), "not compressed".into())),
            None => return Err(Failure::Bad(input.path.clone(), "empty segment".into())),
        };
        let (file, tmp) = self.log.create(ACTIVE)?;
        let result = (|| -> Result<u64, Failure> {
            let mut w = BufWriter::with_capacity(1 << 20, &file);
            let (written, dropped) = match reader.drop_blocks(gone, &mut w) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(Failure::Damaged(input.path.clone()));
                }
                Err(e) => return Err(Failure::Io(e)),
            };
            w.flush()?;
            drop(w);
            match written {
                Some(sum) => {
                    let (low, high) = (sum.low, sum.high);
                    self.log
                        .close_as(file.try_clone()?, &tmp, &low, &high, Format::Compressed)?;
                }
                None => std::fs::remove_file(&tmp)?,
            }
            Ok(dropped)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// What the expire step does with a segment.
#[derive(Debug)]
enum Expire {
    /// Nothing has expired (or only records in blocks that are not wholly past yet, hidden
    /// from queries until they are).
    Nothing,
    /// A compressed segment whose expired records fill whole topic blocks: those blocks go.
    DropBlocks(Vec<bool>),
    /// Records have expired: the segment is written again without them.
    Rewrite,
}

/// Which records have passed their topic's retention, at one instant (topics' cutoffs
/// remembered).
struct ExpiryCheck<'a> {
    retention: &'a Retention,
    now: u64,
    keep_from: u64,
    cutoffs: std::collections::HashMap<Vec<u8>, u64>,
}

impl<'a> ExpiryCheck<'a> {
    fn new(retention: &'a Retention, now: u64) -> Self {
        ExpiryCheck {
            retention,
            now,
            keep_from: now.saturating_sub(retention.shortest().as_millis() as u64),
            cutoffs: Default::default(),
        }
    }

    /// The oldest millisecond kept for `topic`.
    fn cutoff(&mut self, topic: &[u8]) -> u64 {
        match self.cutoffs.get(topic) {
            Some(&c) => c,
            None => {
                let c = self.retention.cutoff_for(topic, self.now);
                self.cutoffs.insert(topic.to_vec(), c);
                c
            }
        }
    }

    /// Whether the stored line's record has passed its topic's retention.
    fn expired(&mut self, line: &[u8]) -> bool {
        let ms = crate::record::ulid_ms(line);
        if ms >= self.keep_from {
            return false;
        }
        ms < self.cutoff(crate::search::topic_of(crate::search::body(line)))
    }

    /// What to do with segment `s`: for a compressed one, its topic blocks wholly past their
    /// topic's retention are dropped as they are (its mixed blocks, which may hold any topic,
    /// are read when old enough to hold expired records); a raw one is read up to the
    /// shortest retention's cutoff.
    fn action(&mut self, s: &Segment) -> io::Result<Expire> {
        if s.format == Format::Compressed {
            let reader = match Reader::open_file(&s.path) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(Expire::Nothing),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Expire::Nothing),
                Err(e) => return Err(e),
            };
            let keep_from = self.keep_from;
            if let Some(blocks) = reader.expired_blocks(&mut |topic| self.cutoff(topic), keep_from)
            {
                if blocks.mixed_old && self.any_expired(&s.path, keep_from)? {
                    return Ok(Expire::Rewrite);
                }
                return Ok(if blocks.gone.contains(&true) {
                    Expire::DropBlocks(blocks.gone)
                } else {
                    Expire::Nothing
                });
            }
        }
        Ok(if self.any_expired(&s.path, self.keep_from)? {
            Expire::Rewrite
        } else {
            Expire::Nothing
        })
    }

    /// Whether the segment at `path` holds an expired record (read up to `keep_from`).
    fn any_expired(&mut self, path: &std::path::Path, keep_from: u64) -> io::Result<bool> {
        let mut records = match Records::open(path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        while let Some(line) = records.current() {
            if crate::record::ulid_ms(line) >= keep_from {
                break;
            }
            if self.expired(line) {
                return Ok(true);
            }
            records.advance()?;
        }
        Ok(false)
    }
}
