//! The store's background lifecycle: compaction, conversion, retention, purge and quarantine,
//! one step per second in turn, so each gets a turn every 5 s and none ever blocks ingest or
//! queries.
//!
//! - **Overlapping compaction**: the segment overlapping the most others is merged with them
//!   (deduplicated by ULID, split at `-store.segment-target-size`). Two segments are enough: a
//!   retried replication leaves pairs of duplicates, which the original (three needed) kept
//!   forever.
//! - **Sequential compaction**: small raw neighbours merged up to the target size (the
//!   original's `chooseFirstSequential`).
//! - **Conversion**: segments whose newest record is older than `-store.segment-compress-after`
//!   are compressed (segment format v2), oldest first, one at a time on this one thread, for up
//!   to 3 s per step; `-store.segment-format raw` turns compressed ones back. The output is
//!   written as `<uuid>.converting` (deleted at start-up), synced and renamed in under the
//!   input's name, then the claimed input is removed.
//! - **Retention**: segments whose newest record is older than `-store.segment-retain` go to
//!   the trash; **purge** deletes trash older than `-store.segment-purge`.
//! - **Quarantine**: a file that cannot be read as a segment (malformed name, a line without a
//!   ULID, records out of order, a torn last record) is renamed `.bad`, logged and counted; never
//!   deleted, never retried.
//!
//! Inputs are claimed (`.flushed` → `.reading`, still queried), outputs are renamed in as
//! `.flushed`, then the inputs are removed: a query in between sees both and deduplicates.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::log::{ACTIVE, CONVERTING, FLUSHED, READING, Segment, StoreLog, overlap};
use super::retention::Retention;
use crate::merge::{self, Source};
use crate::metrics::Metrics;
use crate::record::{ULID_LEN, check_record, min_ulid};
use crate::segment::{CompressConfig, Format, Reader, Records};

/// How often the compacter takes a step.
const STEP: Duration = Duration::from_secs(1);
/// How long one conversion step goes on converting segments while more are due.
const CONVERT_BUDGET: Duration = Duration::from_secs(3);

/// Lifecycle settings (the `-store.segment-*` flags).
#[derive(Clone, Debug)]
pub struct CompactConfig {
    /// Compaction output size, and the bound for sequential compaction.
    pub target_size: u64,
    /// Retention (`-store.segment-retain`, and `-store.topic-retain` per topic): segments are
    /// kept while their newest record is younger than the longest, and records of topics kept
    /// for less are dropped from them.
    pub retention: Arc<Retention>,
    /// Delete trashed segments this long after trashing.
    pub purge: Duration,
    /// The format segments are converted to: compressed ones once older than
    /// `compress_after`; raw ones at once (`-store.segment-format raw` turns a store back).
    pub format: Format,
    /// Compress segments whose newest record is older than this; `None`: never.
    pub compress_after: Option<Duration>,
    /// How segments are compressed.
    pub compress: CompressConfig,
}

/// Runs the lifecycle steps over one store directory.
#[derive(Debug)]
pub struct Compacter {
    log: Arc<StoreLog>,
    cfg: CompactConfig,
    metrics: Arc<Metrics>,
    /// Compressed segments found with unreadable blocks: never compacted or converted (that
    /// would hide the damage in a new file), only queried, reported and in time trashed.
    damaged: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    /// Set at shutdown: a conversion under way gives up (its input stays as it was).
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Segments found without expired records, and when (Unix ms): looked at again only
    /// after [`Compacter::recheck_ms`].
    unexpired: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Overlapping compaction.
    Overlapping,
    /// Sequential compaction.
    Sequential,
    /// Retention.
    Trash,
    /// Purge.
    Purge,
    /// Conversion between formats (compression of old segments).
    Convert,
    /// Per-topic retention: segments rewritten without their expired records.
    Expire,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Overlapping => "Overlapping",
            Kind::Sequential => "Sequential",
            Kind::Trash => "Trash",
            Kind::Purge => "Purge",
            Kind::Convert => "Convert",
            Kind::Expire => "Expire",
        }
    }
}

impl Compacter {
    /// A compacter for `log`.
    pub fn new(log: Arc<StoreLog>, cfg: CompactConfig, metrics: Arc<Metrics>) -> Self {
        Compacter {
            log,
            cfg,
            metrics,
            damaged: Default::default(),
            stop: Default::default(),
            unexpired: Default::default(),
        }
    }

    /// Take one step per second in turn until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let kinds = [
            Kind::Overlapping,
            Kind::Sequential,
            Kind::Convert,
            Kind::Expire,
            Kind::Trash,
            Kind::Purge,
        ];
        let mut tick = tokio::time::interval(STEP);
        for kind in kinds.iter().cycle() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let c = Arc::clone(&this);
            let kind = *kind;
            let mut step = tokio::task::spawn_blocking(move || c.step(kind));
            let done = tokio::select! {
                done = &mut step => done,
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
                    // A long conversion stops at its next write; wait for that, not its end.
                    this.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = step.await;
                    return;
                }
            };
            if let Ok(Err(e)) = done {
                tracing::error!(step = kind.name(), error = %e, "store lifecycle step failed");
            }
        }
    }

    /// Run one step now; returns how many segments it affected.
    pub fn step(&self, kind: Kind) -> io::Result<usize> {
        // Segments past retention are left for the trash, not merged with younger ones (which
        // would keep their records alive as long as the youngest).
        let cutoff = self.retention_cutoff();
        let damaged = self
            .damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let live = |s: &Segment| s.high >= cutoff && !damaged.contains(&s.path);
        let result = match kind {
            Kind::Overlapping => {
                let segs = self.log.scan(&[FLUSHED], live)?;
                let chosen = choose_overlapping(&segs);
                self.compact(chosen.into_iter().map(|i| segs[i].clone()).collect())
            }
            Kind::Sequential => {
                // Raw segments only: compressed ones are old and already at size, and merging
                // them would only make raw files to compress again.
                let segs = self
                    .log
                    .scan(&[FLUSHED], |s| live(s) && s.format == Format::Raw)?;
                let sizes: Vec<u64> = segs.iter().map(|s| s.size).collect();
                let chosen = choose_first_sequential(&sizes, 2, self.cfg.target_size);
                self.compact(chosen.into_iter().map(|i| segs[i].clone()).collect())
            }
            Kind::Trash => self.trash(),
            Kind::Convert => {
                // A backlog (an upgraded store, a burst of old data) is worked through a few
                // seconds at a time, on this one thread.
                let started = std::time::Instant::now();
                let mut n = 0;
                while started.elapsed() < CONVERT_BUDGET {
                    match self.convert(&live)? {
                        0 => break,
                        k => n += k,
                    }
                }
                Ok(n)
            }
            Kind::Expire => {
                let started = std::time::Instant::now();
                let mut n = 0;
                while started.elapsed() < CONVERT_BUDGET {
                    match self.expire(&live)? {
                        0 => break,
                        k => n += k,
                    }
                }
                Ok(n)
            }
            Kind::Purge => {
                // The directory is listed here anyway: also set aside what cannot be a segment
                // and index segments an operator copied in.
                self.quarantine_malformed_names()?;
                self.log.reconcile()?;
                let n = self.log.purge(self.cfg.purge)?;
                self.metrics.store_purged_segments.inc_by(n as u64);
                Ok(n)
            }
        };
        let label = match &result {
            Ok(0) => "NoSegmentsAvailable",
            Ok(_) => "OK",
            Err(_) => "Error",
        };
        self.metrics
            .store_compactions
            .get_or_create(&vec![("kind", kind.name()), ("result", label)])
            .inc();
        result
    }

    fn quarantine_malformed_names(&self) -> io::Result<()> {
        for (path, reason) in self.log.malformed_names()? {
            self.log.quarantine(&path, reason)?;
            self.metrics.store_quarantined_files.inc();
        }
        Ok(())
    }

    /// Segments whose newest record is older than this ULID are past retention.
    fn retention_cutoff(&self) -> [u8; ULID_LEN] {
        let now = crate::gotime::now_ms().max(0) as u64;
        let longest = self.cfg.retention.longest();
        min_ulid(now.saturating_sub(longest.as_millis() as u64))
    }

    fn trash(&self) -> io::Result<usize> {
        let cutoff = self.retention_cutoff();
        let old = self.log.scan(&[FLUSHED], |s| s.high < cutoff)?;
        for s in &old {
            self.log.trash(s)?;
            tracing::info!(segment = %s.path.display(), "segment past retention moved to trash");
        }
        self.metrics.store_trashed_segments.inc_by(old.len() as u64);
        Ok(old.len())
    }

    /// Merge `chosen` into new segments of about the target size; returns inputs compacted.
    fn compact(&self, chosen: Vec<Segment>) -> io::Result<usize> {
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

    /// How long a segment found without expired records is left before it is read again:
    /// a tenth of the shortest topic retention, from 1 s to 1 h.
    fn recheck_ms(retention: &Retention) -> u64 {
        (retention.shortest().as_millis() as u64 / 10).clamp(1000, 3_600_000)
    }

    /// Rewrite the oldest segment holding records past their topic's retention without them
    /// (as compaction: outputs closed, then the input removed; a crash in between leaves
    /// copies the queries deduplicate and the next pass rewrites). Returns 1 if one was.
    fn expire(&self, live: &dyn Fn(&Segment) -> bool) -> io::Result<usize> {
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

    /// After a failed compaction or conversion: quarantine a bad input, remember a damaged
    /// one, release the rest (claimed `.reading` back to `.flushed`). An I/O error is returned.
    fn give_back(&self, inputs: Vec<Segment>, failure: Failure) -> io::Result<usize> {
        match failure {
            Failure::Bad(path, reason) => {
                let (bad, good): (Vec<Segment>, Vec<Segment>) =
                    inputs.into_iter().partition(|s| s.path == path);
                self.log.release(&good);
                for s in bad {
                    self.log.quarantine(&s.path, &reason)?;
                    self.metrics.store_quarantined_files.inc();
                }
                Ok(0)
            }
            Failure::Damaged(path) => {
                self.log.release(&inputs);
                self.set_damaged(&path);
                Ok(0)
            }
            Failure::Io(e) => {
                self.log.release(&inputs);
                Err(e)
            }
        }
    }

    fn set_damaged(&self, path: &std::path::Path) {
        tracing::error!(segment = %path.display(), "segment has unreadable blocks: left as it is (queries report it); it is no longer compacted or converted");
        // The claimed name was `.reading`; it is released as `.flushed`.
        let flushed = path.with_extension(FLUSHED);
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flushed);
    }

    /// Convert the oldest segment due for it (see [`CompactConfig::format`]) that overlaps no
    /// other: claimed, written as `<uuid>.converting`, synced, renamed in under the same name
    /// with the input removed. A crash before the rename leaves the input (the partial file is
    /// deleted at start-up); after it, either copy alone or both (then queries deduplicate and
    /// start-up keeps the raw one). Returns how many segments were converted (0 or 1).
    fn convert(&self, live: &dyn Fn(&Segment) -> bool) -> io::Result<usize> {
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
        let candidate = all.iter().find(|s| {
            s.path.extension().and_then(|e| e.to_str()) == Some(FLUSHED)
                && s.format != target
                && due.is_none_or(|d| s.high < d)
                && live(s)
                && !all
                    .iter()
                    .any(|o| o.path != s.path && overlap((o.low, o.high), (s.low, s.high)))
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

    /// Write `input` (claimed) in `target` format and swap it in; returns its raw bytes.
    fn convert_one(&self, input: &Segment, target: Format) -> Result<u64, Failure> {
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
                    let Some(reader) = Reader::open_file(&input.path)? else {
                        return Err(Failure::Bad(input.path.clone(), "empty segment".into()));
                    };
                    match reader.compress(&mut w, &self.cfg.compress) {
                        Ok(sum) => sum.raw_bytes,
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            return Err(Failure::Bad(input.path.clone(), e.to_string()));
                        }
                        Err(e) => return Err(Failure::Io(e)),
                    }
                }
                Format::Raw => {
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
                    n
                }
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

    /// Write the compressed segment `input` (claimed) again without the blocks `gone` marks,
    /// their bytes copied as they are, under the name of its new range; returns the records
    /// left out. Nothing is written when every block goes.
    fn drop_blocks(&self, input: &Segment, gone: &[bool]) -> Result<u64, Failure> {
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

    /// Merge `inputs` into new segments, the records `keep` refuses left out.
    fn merge_into_outputs(
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

enum Failure {
    /// An input is not a well-formed segment: its path and why.
    Bad(PathBuf, String),
    /// A compressed input has blocks that cannot be read.
    Damaged(PathBuf),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sequential() {
        // TestChooseFirstSequential (target 100 KiB, min 2).
        let t = 102_400;
        assert_eq!(
            choose_first_sequential(&[123; 5], 2, t),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(
            choose_first_sequential(&[100_000, 2000, 2000, 2000], 2, t),
            vec![0, 1]
        );
        assert_eq!(
            choose_first_sequential(&[118_401, 623, 1000], 2, t),
            vec![1, 2]
        );
        assert!(choose_first_sequential(&[200_000, 300_000], 2, t).is_empty());
        assert!(choose_first_sequential(&[5], 2, t).is_empty());
    }

    use super::super::log::test_segment as seg;

    #[test]
    fn overlapping_choice_needs_only_two() {
        assert_eq!(
            choose_overlapping(&[seg("A", "B"), seg("C", "D")]),
            Vec::<usize>::new()
        );
        assert_eq!(
            choose_overlapping(&[seg("A", "C"), seg("B", "D")]),
            vec![0, 1]
        );
        assert_eq!(
            choose_overlapping(&[
                seg("A", "B"),
                seg("C", "M"),
                seg("D", "E"),
                seg("F", "G"),
                seg("N", "P")
            ]),
            vec![1, 2, 3]
        );
    }

    use crate::record::encode_ulid;
    use std::fs;

    fn write_segment(log: &StoreLog, records: &[(u64, u128, &str)]) {
        let (mut f, p) = log.create(ACTIVE).unwrap();
        let mut low = None;
        let mut high = [0u8; 26];
        for (ms, e, body) in records {
            let id = encode_ulid(*ms, *e);
            f.write_all(&id).unwrap();
            f.write_all(format!(" {body}\n").as_bytes()).unwrap();
            low.get_or_insert(id);
            high = id;
        }
        log.close(f, &p, &low.unwrap(), &high).unwrap();
    }

    fn compacter(log: &Arc<StoreLog>, target: u64, retain: Duration, purge: Duration) -> Compacter {
        Compacter::new(
            Arc::clone(log),
            CompactConfig {
                target_size: target,
                retention: Arc::new(Retention::uniform(retain)),
                purge,
                format: Format::Compressed,
                compress_after: Some(Duration::ZERO),
                compress: CompressConfig {
                    block_size: 4096,
                    group_size: 64 << 10,
                    ..CompressConfig::default()
                },
            },
            Metrics::new(),
        )
    }

    fn all(log: &StoreLog) -> Vec<Vec<u8>> {
        let p = crate::store::query::QueryParams {
            from_ms: 0,
            to_ms: u64::MAX >> 16,
            q: String::new(),
            regex: false,
            ..Default::default()
        };
        let plan = crate::store::query::Plan::open(log, &p).unwrap();
        let m = crate::search::Matcher::new("", false).unwrap();
        let mut out = Vec::new();
        plan.execute(&p, &m, &mut |lines| {
            out.extend(lines.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn overlapping_duplicates_end_as_few_sorted_unique_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let now = crate::gotime::now_ms() as u64;
        // 20 segments, each record 1..=200 in steps, every record in two segments.
        for k in 0..20u64 {
            let recs: Vec<(u64, u128, String)> = (0..50u64)
                .map(|i| {
                    let n = (k / 2) * 50 + i;
                    (
                        now + n,
                        u128::from(n),
                        format!("record {n:06} from pass {k}"),
                    )
                })
                .collect();
            let r: Vec<(u64, u128, &str)> =
                recs.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
            write_segment(&log, &r);
        }
        let before = all(&log);
        assert_eq!(before.len(), 500, "queries already deduplicate");
        let c = compacter(
            &log,
            8 << 10,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        );
        for _ in 0..50 {
            let a = c.step(Kind::Overlapping).unwrap();
            let b = c.step(Kind::Sequential).unwrap();
            if a + b == 0 {
                break;
            }
        }
        let segs = log.scan(&[FLUSHED], |_| true).unwrap();
        let total: u64 = segs.iter().map(|s| s.size).sum();
        assert!(
            segs.len() <= (total / (8 << 10)) as usize + 2,
            "{} segments for {total} bytes",
            segs.len()
        );
        let mut seen = std::collections::HashSet::new();
        for s in &segs {
            let data = fs::read(&s.path).unwrap();
            let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
            assert!(
                lines.windows(2).all(|w| w[0][..26] < w[1][..26]),
                "sorted, unique"
            );
            assert_eq!(&lines[0][..26], &s.low[..]);
            assert_eq!(&lines[lines.len() - 1][..26], &s.high[..]);
            for l in lines {
                assert!(seen.insert(l[..26].to_vec()), "a ULID in two segments");
            }
        }
        assert_eq!(seen.len(), 500);
        assert_eq!(
            all(&log),
            before,
            "every record still queryable exactly once"
        );
    }

    #[test]
    fn retention_trashes_and_purge_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let now = crate::gotime::now_ms() as u64;
        write_segment(&log, &[(now - 7_200_000, 1, "old")]);
        write_segment(&log, &[(now, 2, "new")]);
        let c = compacter(&log, 1 << 20, Duration::from_secs(3600), Duration::ZERO);
        assert_eq!(c.step(Kind::Trash).unwrap(), 1);
        assert_eq!(log.scan(&[FLUSHED], |_| true).unwrap().len(), 1);
        assert_eq!(
            log.scan(&[super::super::log::TRASHED], |_| true)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(all(&log).len(), 1, "trashed segments are not queried");
        assert_eq!(c.step(Kind::Purge).unwrap(), 1);
        assert!(
            log.scan(&[super::super::log::TRASHED], |_| true)
                .unwrap()
                .is_empty()
        );
        let keep = compacter(
            &log,
            1 << 20,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        );
        assert_eq!(keep.step(Kind::Trash).unwrap(), 0);
    }

    #[test]
    fn corrupt_segments_are_quarantined_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let now = crate::gotime::now_ms() as u64;
        write_segment(&log, &[(now, 1, "a"), (now + 10, 2, "b")]);
        // An overlapping segment whose content is out of order, and one with a bad name.
        let (lo, hi) = (encode_ulid(now + 1, 0), encode_ulid(now + 5, 0));
        let name = super::super::log::build_name(&lo, &hi, FLUSHED);
        let mut body = hi.to_vec();
        body.extend_from_slice(b" late\n");
        body.extend_from_slice(&lo);
        body.extend_from_slice(b" early\n");
        fs::write(dir.path().join(&name), &body).unwrap();
        fs::write(
            dir.path().join("01BB6RQR190000000000000000-xxx.flushed"),
            b"junk\n",
        )
        .unwrap();
        let c = compacter(
            &log,
            1 << 20,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        );
        // The purge step sets the bad name aside and indexes the segment copied in.
        c.step(Kind::Purge).unwrap();
        assert_eq!(c.step(Kind::Overlapping).unwrap(), 0);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("-xxx.bad")), "{names:?}");
        assert!(
            names.contains(&name.replace(".flushed", ".bad")),
            "{names:?}"
        );
        assert_eq!(
            log.scan(&[FLUSHED], |_| true).unwrap().len(),
            1,
            "the good one is released"
        );
        assert_eq!(all(&log).len(), 2);
        assert_eq!(c.metrics.store_quarantined_files.get(), 2);
    }

    #[test]
    fn queries_during_compaction_see_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let now = crate::gotime::now_ms() as u64 - 60_000; // old enough to be compressed
        for k in 0..30u64 {
            let recs: Vec<(u64, u128, String)> = (0..40u64)
                .map(|i| {
                    let n = (k % 10) * 40 + i;
                    (now + n, u128::from(n), format!("record {n}"))
                })
                .collect();
            let r: Vec<(u64, u128, &str)> =
                recs.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
            write_segment(&log, &r);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                    let got = all(&log);
                    assert_eq!(got.len(), 400, "run {runs}");
                    assert!(got.windows(2).all(|w| w[0][..26] < w[1][..26]));
                    runs += 1;
                }
                runs
            })
        };
        let c = compacter(
            &log,
            4 << 10,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        );
        for _ in 0..40 {
            c.step(Kind::Overlapping).unwrap();
            c.step(Kind::Sequential).unwrap();
            c.step(Kind::Convert).unwrap();
        }
        assert_eq!(log.raw_segments(), 0, "every segment converted meanwhile");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = reader
            .join()
            .expect("every concurrent query saw every record once");
        assert!(runs > 0);
    }

    /// Records of `n` random bodies: topics, words that repeat, rare ids, mixed case, and
    /// bytes that are not UTF-8.
    fn random_records(rng: &mut rand::rngs::StdRng, start_ms: u64, n: usize) -> Vec<Vec<u8>> {
        use rand::RngExt;
        let words = [
            "GET",
            "post",
            "Error",
            "timeout",
            "user=alice",
            "USER=BOB",
            "ok",
            "é",
        ];
        let mut ms = start_ms;
        let mut out: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                ms += rng.random_range(0..40u64);
                let mut line = encode_ulid(ms, rng.random_range(0..1u128 << 80)).to_vec();
                let topic = rng.random_range(0..6);
                // Some topics too small for blocks of their own: they share mixed blocks.
                if i % 31 == 0 {
                    line.extend_from_slice(format!(" rare-{} ", (i / 31) % 40).as_bytes());
                } else {
                    line.extend_from_slice(format!(" topic-{topic} ").as_bytes());
                }
                for _ in 0..rng.random_range(0..8) {
                    line.extend_from_slice(words[rng.random_range(0..words.len())].as_bytes());
                    line.push(b' ');
                }
                if rng.random_bool(0.05) {
                    line.extend_from_slice(&[0xff, b'z', 0xc3]);
                }
                if rng.random_bool(0.01) {
                    line.extend_from_slice(format!("req-{i:05}x").as_bytes());
                }
                line.extend_from_slice(format!("n={}", rng.random_range(0..10_000)).as_bytes());
                line.push(b'\n');
                line
            })
            .collect();
        out.sort();
        out
    }

    fn write_lines(log: &StoreLog, lines: &[Vec<u8>]) {
        let (mut f, p) = log.create(ACTIVE).unwrap();
        for l in lines {
            f.write_all(l).unwrap();
        }
        let id = |l: &Vec<u8>| -> [u8; 26] { l[..26].try_into().unwrap() };
        log.close(f, &p, &id(&lines[0]), &id(&lines[lines.len() - 1]))
            .unwrap();
    }

    /// What grep over the raw records answers: every distinct record (by ULID) in the window
    /// whose `<topic> <payload>` matches, in ULID order.
    fn grep(all: &[Vec<u8>], from: u64, to: u64, q: &str, regex: bool) -> Vec<Vec<u8>> {
        let re = regex.then(|| regex::bytes::Regex::new(q).unwrap());
        let mut out: Vec<Vec<u8>> = all
            .iter()
            .filter(|l| {
                let ms = crate::record::ulid_ms(l);
                let body = &l[27..l.len() - 1];
                ms >= from
                    && ms <= to
                    && match &re {
                        Some(re) => re.is_match(body),
                        None => memchr::memmem::find(body, q.as_bytes()).is_some(),
                    }
            })
            .cloned()
            .collect();
        out.sort();
        out.dedup_by(|a, b| a[..26] == b[..26]);
        out
    }

    fn query(log: &StoreLog, from: u64, to: u64, q: &str, regex: bool) -> (Vec<Vec<u8>>, u64) {
        let p = crate::store::query::QueryParams {
            from_ms: from,
            to_ms: to,
            q: q.to_string(),
            regex,
            ..Default::default()
        };
        query_with(log, &p)
    }

    /// Run `p` as a node does (the first `limit` lines of the answer, then stop).
    fn query_with(log: &StoreLog, p: &crate::store::query::QueryParams) -> (Vec<Vec<u8>>, u64) {
        let plan = crate::store::query::Plan::open(log, p).unwrap();
        let m = p.matcher().unwrap();
        let mut out = Vec::new();
        let limit = p.limit.unwrap_or(u64::MAX) as usize;
        let outcome = plan
            .execute(p, &m, &mut |lines| {
                out.extend(lines.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
                out.truncate(limit);
                out.len() < limit
            })
            .unwrap();
        assert_eq!(outcome.corrupt_blocks, 0);
        (out, outcome.scanned)
    }

    /// [`grep`] of the selected topics, newest first for `order=desc`, cut at `limit`.
    fn reference(all: &[Vec<u8>], p: &crate::store::query::QueryParams) -> Vec<Vec<u8>> {
        let topics = &p.topics;
        let mut out: Vec<Vec<u8>> = grep(all, p.from_ms, p.to_ms, &p.q, p.regex)
            .into_iter()
            .filter(|l| topics.matches(crate::search::topic_of(&l[27..])))
            .collect();
        if p.desc {
            out.reverse();
        }
        out.truncate(p.limit.unwrap_or(u64::MAX) as usize);
        out
    }

    #[test]
    fn raw_and_compressed_segments_answer_exactly_as_grep_over_the_raw_records() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let base = crate::gotime::now_ms() as u64 - 3_600_000;
        let mut all: Vec<Vec<u8>> = Vec::new();
        for k in 0..12u64 {
            let n = rng.random_range(200..1500);
            let recs = random_records(&mut rng, base + k * 40_000, n);
            if k % 4 == 3 {
                // A replica of part of the segment before: overlapping, with duplicates.
                let prev = &all[all.len() - 100..];
                let mut both: Vec<Vec<u8>> = prev.iter().chain(recs.iter()).cloned().collect();
                both.sort();
                write_lines(&log, &both);
            } else {
                write_lines(&log, &recs);
            }
            all.extend(recs);
        }
        let shapes: &[(&str, bool)] = &[
            ("", false),
            ("GET", false),
            ("user=alice", false),
            ("req-00", false),
            ("req-00042x", false),
            ("absent-needle", false),
            ("é", false),
            ("o", false),
            ("USER=bob", false),
            ("(?i)user=BOB", true),
            ("(?i)TIMEOUT", true),
            ("^topic-3 ", true),
            ("ok $", true),
            ("n=[0-9]{4}$", true),
            ("[0-9]{3}", true),
            ("Error.*timeout", true),
            ("(post|Error) user", true),
            ("(?-u:\\xff)z", true),
            ("\\bok\\b", true),
            ("req-[0-9]+x", true),
            ("^$", true),
        ];
        let c = compacter(
            &log,
            1 << 30,
            Duration::from_secs(1 << 30),
            Duration::from_secs(3600),
        );
        for phase in ["raw", "mixed", "compressed"] {
            for _ in 0..6 {
                let from = base + rng.random_range(0..480_000);
                let to = from + rng.random_range(0..300_000);
                for &(q, regex) in shapes {
                    let want = grep(&all, from, to, q, regex);
                    let (got, _) = query(&log, from, to, q, regex);
                    assert!(
                        got == want,
                        "{phase}: q={q:?} regex={regex} [{from}, {to}]: {} records, want {}",
                        got.len(),
                        want.len()
                    );
                    // The same with topics, newest first, a limit.
                    let topics: &[&[&str]] =
                        &[&[], &["topic-3"], &["topic-1", "rare-*"], &["rare-1?"]];
                    let p = crate::store::query::QueryParams {
                        from_ms: from,
                        to_ms: to,
                        q: q.to_string(),
                        regex,
                        topics: crate::search::Topics::parse(
                            topics[rng.random_range(0..topics.len())],
                        )
                        .unwrap(),
                        desc: rng.random_bool(0.7),
                        limit: rng.random_bool(0.5).then(|| rng.random_range(1..60)),
                        ..Default::default()
                    };
                    let want = reference(&all, &p);
                    let (got, _) = query_with(&log, &p);
                    assert!(
                        got == want,
                        "{phase}: {p:?}: {} records, want {}",
                        got.len(),
                        want.len()
                    );
                }
            }
            // Convert some, then the rest (overlapping ones after compaction).
            if phase == "raw" {
                for _ in 0..3 {
                    assert_eq!(c.convert(&|_| true).unwrap(), 1);
                }
            } else {
                for _ in 0..20 {
                    c.step(Kind::Convert).unwrap();
                    c.step(Kind::Overlapping).unwrap();
                }
            }
        }
        assert_eq!(log.raw_segments(), 0);
        // A needle query reads only the blocks whose filter may hold it.
        let p = crate::store::query::QueryParams {
            from_ms: 0,
            to_ms: u64::MAX >> 16,
            q: "req-00042x".into(),
            regex: false,
            ..Default::default()
        };
        let plan = crate::store::query::Plan::open(&log, &p).unwrap();
        let scan = plan.scan(
            &p,
            &crate::segment::Needles::new(&p.q, p.regex),
            &p.matcher().unwrap(),
        );
        assert!(
            scan.blocks_read <= 3 && scan.blocks_skipped > 20,
            "read {} skipped {}",
            scan.blocks_read,
            scan.blocks_skipped
        );
    }

    #[test]
    fn a_crash_at_any_point_of_a_conversion_leaves_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let base = crate::gotime::now_ms() as u64 - 3_600_000;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(4);
        let recs = random_records(&mut rng, base, 3000);
        {
            let log = StoreLog::open(&d).unwrap();
            write_lines(&log, &recs);
        }
        let seg = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "flushed"))
            .unwrap();
        let raw = fs::read(&seg).unwrap();
        let mut compressed = Vec::new();
        crate::segment::compress(&raw, &mut compressed, &CompressConfig::default()).unwrap();
        let reading = seg.with_extension(READING);
        let converting = d.join(format!("{}.{CONVERTING}", crate::disk::new_uuid()));
        // (files present at the crash): claimed; half written; written but not renamed;
        // renamed in but the input not removed yet; done.
        let states: Vec<Vec<(PathBuf, Vec<u8>)>> = vec![
            vec![(reading.clone(), raw.clone())],
            vec![
                (reading.clone(), raw.clone()),
                (
                    converting.clone(),
                    compressed[..compressed.len() / 2].to_vec(),
                ),
            ],
            vec![
                (reading.clone(), raw.clone()),
                (converting.clone(), compressed.clone()),
            ],
            vec![
                (reading.clone(), raw.clone()),
                (seg.clone(), compressed.clone()),
            ],
            vec![(seg.clone(), compressed.clone())],
        ];
        for (i, files) in states.iter().enumerate() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().is_some_and(|n| n != "LOCK") {
                    fs::remove_file(p).unwrap();
                }
            }
            for (p, bytes) in files {
                fs::write(p, bytes).unwrap();
            }
            let log = Arc::new(StoreLog::open(&d).unwrap());
            let got = all(&log);
            assert_eq!(got.len(), recs.len(), "state {i}");
            assert!(got.iter().zip(&recs).all(|(a, b)| a == b), "state {i}");
            assert!(!converting.exists(), "state {i}: partial output removed");
            // And the conversion then completes.
            let c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
            c.step(Kind::Convert).unwrap();
            assert_eq!(log.raw_segments(), 0, "state {i}");
            assert_eq!(all(&log), got, "state {i}");
        }
    }

    #[test]
    fn the_raw_format_turns_a_compressed_store_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let base = crate::gotime::now_ms() as u64 - 3_600_000;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(8);
        for k in 0..3 {
            write_lines(&log, &random_records(&mut rng, base + k * 200_000, 500));
        }
        let files = |log: &StoreLog| -> Vec<Vec<u8>> {
            log.scan(&[FLUSHED], |_| true)
                .unwrap()
                .iter()
                .map(|s| fs::read(&s.path).unwrap())
                .collect()
        };
        let before = files(&log);
        let mut c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
        assert_eq!(c.step(Kind::Convert).unwrap(), 3, "a backlog in one step");
        assert_eq!(c.step(Kind::Convert).unwrap(), 0);
        assert!(
            files(&log)
                .iter()
                .all(|f| f.starts_with(crate::segment::MAGIC))
        );
        c.cfg.format = Format::Raw;
        assert_eq!(c.step(Kind::Convert).unwrap(), 3);
        assert_eq!(files(&log), before);
        // Never converted: compression off.
        c.cfg.format = Format::Compressed;
        c.cfg.compress_after = None;
        assert_eq!(c.step(Kind::Convert).unwrap(), 0);
        // Not yet due.
        c.cfg.compress_after = Some(Duration::from_secs(7200));
        assert_eq!(c.step(Kind::Convert).unwrap(), 0);
        assert_eq!(log.raw_segments(), 3);
    }

    #[test]
    fn retention_trashes_and_purges_compressed_segments_too() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let now = crate::gotime::now_ms() as u64;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
        write_lines(&log, &random_records(&mut rng, now - 7_200_000, 300)); // 2h old
        write_lines(&log, &random_records(&mut rng, now - 600_000, 300)); // 10 min old
        let c = compacter(&log, 1 << 30, Duration::from_secs(3600), Duration::ZERO);
        assert_eq!(
            c.step(Kind::Convert).unwrap(),
            1,
            "not the one past retention: it is about to go"
        );
        let c = compacter(&log, 1 << 30, Duration::from_secs(4 * 3600), Duration::ZERO);
        assert_eq!(c.step(Kind::Convert).unwrap(), 1);
        assert_eq!(log.raw_segments(), 0);
        let c = compacter(&log, 1 << 30, Duration::from_secs(3600), Duration::ZERO);
        assert_eq!(c.step(Kind::Trash).unwrap(), 1);
        assert_eq!(
            all(&log).len(),
            300,
            "only the young segment's records are left"
        );
        assert_eq!(c.step(Kind::Purge).unwrap(), 1);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "LOCK")
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn a_late_replica_overlapping_a_compressed_segment_is_merged_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let base = crate::gotime::now_ms() as u64 - 3_600_000;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12);
        let old = random_records(&mut rng, base, 2000);
        write_lines(&log, &old);
        let c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
        assert_eq!(c.step(Kind::Convert).unwrap(), 1);
        // A replica arrives late: half the same records and some new ones in the same range.
        let mut late: Vec<Vec<u8>> = old.iter().step_by(2).cloned().collect();
        late.extend(random_records(&mut rng, base + 1, 500));
        late.sort();
        late.dedup_by(|a, b| a[..26] == b[..26]);
        write_lines(&log, &late);
        let mut want: Vec<Vec<u8>> = old.iter().chain(late.iter()).cloned().collect();
        want.sort();
        want.dedup_by(|a, b| a[..26] == b[..26]);
        // Queried together (a compressed and a raw segment merged), then compacted, then
        // compressed again: the same records every time.
        assert_eq!(all(&log), want);
        let (hits, _) = query(&log, 0, u64::MAX >> 16, "user=alice", false);
        assert_eq!(hits, grep(&want, 0, u64::MAX >> 16, "user=alice", false));
        assert_eq!(c.step(Kind::Overlapping).unwrap(), 2);
        assert_eq!(log.raw_segments(), 1, "the merged output is raw");
        assert_eq!(all(&log), want);
        assert_eq!(c.step(Kind::Convert).unwrap(), 1);
        assert_eq!(log.raw_segments(), 0);
        assert_eq!(all(&log), want);
    }

    #[test]
    fn a_conversion_stopped_by_shutdown_leaves_its_input_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let base = crate::gotime::now_ms() as u64 - 3_600_000;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(13);
        let recs = random_records(&mut rng, base, 3000);
        write_lines(&log, &recs);
        let c = compacter(&log, 1 << 30, Duration::from_secs(1 << 30), Duration::ZERO);
        c.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(c.step(Kind::Convert).is_err(), "abandoned");
        assert_eq!(log.raw_segments(), 1, "the input is back, raw");
        assert_eq!(all(&log), recs);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n == "LOCK" || n.ends_with(".flushed")),
            "{names:?}"
        );
    }

    #[test]
    fn a_topic_past_its_retention_is_dropped_from_raw_and_compressed_segments_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(StoreLog::open(dir.path()).unwrap());
        let now = crate::gotime::now_ms() as u64;
        // Three segments of records 3 h to 1.5 h old, of topics debug-a, debug-b and app; the
        // second also with small debug topics that share mixed blocks once compressed.
        let mut all = Vec::new();
        for seg in 0..3u64 {
            let mut lines = Vec::new();
            let (n, gap) = if seg == 1 { (3000, 100) } else { (300, 1000) };
            for i in 0..n {
                let ms = now - 3 * 3_600_000 + seg * 1_800_000 + i * gap;
                let topic = if seg == 1 && i % 50 == 7 {
                    format!("debug-small-{}", i / 50)
                } else {
                    ["debug-a", "app", "debug-b"][(i % 3) as usize].to_string()
                };
                let mut l = encode_ulid(ms, u128::from(i)).to_vec();
                l.extend_from_slice(format!(" {topic} record {seg} {i}\n").as_bytes());
                lines.push(l);
            }
            write_lines(&log, &lines);
            all.extend(lines);
        }
        let retention =
            Arc::new(Retention::parse(&["debug-*=1h"], Duration::from_secs(7 * 86400)).unwrap());
        let mut c = compacter(
            &log,
            1 << 30,
            Duration::from_secs(7 * 86400),
            Duration::from_secs(3600),
        );
        c.cfg.retention = Arc::clone(&retention);
        // Two segments compressed, one raw.
        assert_eq!(c.convert(&|_| true).unwrap(), 1);
        assert_eq!(c.convert(&|_| true).unwrap(), 1);
        assert_eq!(log.raw_segments(), 1);
        assert_eq!(c.step(Kind::Expire).unwrap(), 3);
        let kept: Vec<Vec<u8>> = all
            .iter()
            .filter(|l| crate::search::topic_of(&l[27..]) == b"app")
            .cloned()
            .collect();
        assert_eq!(super::tests::all(&log), kept, "only app's records are left");
        assert_eq!(
            c.metrics.store_expired_records.get(),
            (all.len() - kept.len()) as u64
        );
        // The first compressed segment lost whole topic blocks, copied as they were: it is
        // still compressed. The one with mixed blocks was written again (raw, to be compressed
        // again when due), as was the raw one.
        let segs = log.scan(&[FLUSHED], |_| true).unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(log.raw_segments(), 2);
        assert_eq!(segs[0].format, Format::Compressed);
        // Nothing more to drop: the segments are not read again for a while.
        assert_eq!(c.step(Kind::Expire).unwrap(), 0);
        // Queries hide expired records at once, before any rewrite.
        let dir2 = tempfile::tempdir().unwrap();
        let log2 = StoreLog::open(dir2.path()).unwrap();
        write_lines(&log2, &all);
        let p = crate::store::query::QueryParams {
            from_ms: 0,
            to_ms: now,
            ..Default::default()
        };
        let expiry = crate::search::Expiry {
            keep_from_ms: now - 3_600_000,
            cutoff: Box::new(move |t| retention.cutoff_for(t, now)),
        };
        let m = p.matcher().unwrap().with_expiry(Some(Arc::new(expiry)));
        let plan = crate::store::query::Plan::open(&log2, &p).unwrap();
        let mut out = Vec::new();
        plan.execute(&p, &m, &mut |b| {
            out.extend(b.split_inclusive(|&c| c == b'\n').map(<[u8]>::to_vec));
            true
        })
        .unwrap();
        assert_eq!(out, kept);
    }
}
