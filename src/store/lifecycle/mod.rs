//! The store's background lifecycle: compaction, conversion, per-topic expiry, retention, purge
//! and quarantine, one step per second in turn (six steps: each gets a turn every 6 s), on one
//! blocking thread, so none ever blocks ingest or queries. A step that fails is logged and
//! counted; one that panics too (`result="Panic"`), and the next step runs as usual.
//!
//! - **Overlapping compaction**: the segment overlapping the most others is merged with them
//!   (deduplicated by ULID, split at `-store.segment-target-size`). Two segments are enough: a
//!   retried replication leaves pairs of duplicates, which the original (three needed) kept
//!   forever.
//! - **Sequential compaction**: small raw neighbours merged up to the target size, once they
//!   make half of it or have settled (`-store.segment-settle`).
//! - Either merges only sets in which no segment is more than half the output: a segment is
//!   rewritten when it at least doubles, never for one small neighbour (write amplification is
//!   logarithmic, not one rewrite of a large segment per trickled record). A segment at size
//!   is rewritten by an overlapping merge only when the others hold half its size again within
//!   its time range, so late records (event time, split off by the consumer into late
//!   segments) merge with each other, never into the compressed segments they fall among;
//!   small segments that have all settled are gathered whatever their growth.
//! - **Conversion**: segments whose newest record is older than `-store.segment-compress-after`
//!   are compressed (segment format v2), oldest first, one at a time on this one thread, for up
//!   to 3 s per step; `-store.segment-format raw` turns compressed ones back. The output is
//!   written as `<uuid>.converting` (deleted at start-up), synced and renamed in under the
//!   input's name, then the claimed input is removed.
//! - **Expiry**: records past their topic's `-store.topic-retain` are dropped from the
//!   segments that hold them (whole blocks of a compressed segment, or a rewrite).
//! - **Retention**: segments whose newest record is older than `-store.segment-retain` go to
//!   the trash; **purge** deletes trash older than `-store.segment-purge`.
//! - **Quarantine**: a file that cannot be read as a segment (malformed name, a line without a
//!   ULID, records out of order, a torn last record) is renamed `.bad`, logged and counted; never
//!   deleted, never retried.
//!
//! Inputs are claimed (`.flushed` → `.reading`, still queried), outputs are renamed in as
//! `.flushed`, then the inputs are removed: a query in between sees both and deduplicates.
//!
//! Each step has its file: `compact.rs` (overlapping and sequential compaction), `convert.rs`,
//! `expire.rs` (per-topic retention), `retain.rs` (retention to the trash) and `purge.rs`
//! (purge, quarantine of malformed names, reconciliation).

mod compact;
mod convert;
mod expire;
mod purge;
mod retain;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::log::{FLUSHED, Segment, StoreLog};
use super::retention::Retention;
use crate::metrics::Metrics;
use crate::segment::{CompressConfig, Format};

pub use compact::{MAX_RUN, choose_overlapping, choose_sequential};

/// How often the compacter takes a step.
const STEP: Duration = Duration::from_secs(1);
/// How long one conversion step goes on converting segments while more are due.
const CONVERT_BUDGET: Duration = Duration::from_secs(3);

/// Lifecycle settings (the `-store.segment-*` flags).
#[derive(Clone, Debug)]
pub struct CompactConfig {
    /// Compaction output size, and the bound for sequential compaction.
    pub target_size: u64,
    /// Small raw segments are merged once their newest record is this old, sooner when they
    /// add up to half the target size (`-store.segment-settle`, 1h).
    pub settle: Duration,
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
    /// Compressed segments' sizes as raw records, read from their footers once.
    raw_sizes: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
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
            raw_sizes: Default::default(),
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
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(step = kind.name(), error = %e, "store lifecycle step failed");
                }
                Err(e) => {
                    // A bug, not a state of the data: the next turn tries again, and the
                    // count (`result="Panic"`) shows it.
                    let why = if e.is_panic() {
                        crate::supervise::panic_message(e.into_panic())
                    } else {
                        "cancelled".to_string()
                    };
                    tracing::error!(step = kind.name(), panic = %why, "store lifecycle step panicked");
                    this.count(kind, "Panic");
                }
            }
        }
    }

    /// Run one step now; returns how many segments it affected.
    pub fn step(&self, kind: Kind) -> io::Result<usize> {
        if crate::failpoint::armed("lifecycle-step") {
            panic!("injected failure of a lifecycle step (OKLOG_FAILPOINT)");
        }
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
                let chosen =
                    choose_overlapping(&segs, &|s| self.raw_size(s), self.cfg.target_size, &|s| {
                        self.written_long_ago(s)
                    });
                self.compact(chosen.into_iter().map(|i| segs[i].clone()).collect())
            }
            Kind::Sequential => {
                // Raw segments only: compressed ones are old and already at size, and merging
                // them would only make raw files to compress again.
                let segs = self
                    .log
                    .scan(&[FLUSHED], |s| live(s) && s.format == Format::Raw)?;
                let now = crate::gotime::now_ms().max(0) as u64;
                let chosen = choose_sequential(&segs, self.cfg.target_size, now, self.cfg.settle);
                self.compact(chosen.into_iter().map(|i| segs[i].clone()).collect())
            }
            Kind::Trash => self.trash(),
            // A backlog (an upgraded store, a burst of old data) is worked through a few
            // seconds at a time, on this one thread.
            Kind::Convert => for_a_while(|| self.convert(&live)),
            Kind::Expire => for_a_while(|| self.expire(&live)),
            Kind::Purge => self.purge(),
        };
        let label = match &result {
            Ok(0) => "NoSegmentsAvailable",
            Ok(_) => "OK",
            Err(_) => "Error",
        };
        self.count(kind, label);
        result
    }

    /// Count a step of `kind` that ended as `result`.
    fn count(&self, kind: Kind, result: &'static str) {
        self.metrics
            .store_compactions
            .get_or_create(&vec![("kind", kind.name()), ("result", result)])
            .inc();
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
                tracing::error!(segment = %path.display(), "segment has unreadable blocks: left as it is (queries report it); it is no longer compacted or converted");
                self.set_damaged(&path);
                Ok(0)
            }
            Failure::StaysRaw(path, why) => {
                self.log.release(&inputs);
                tracing::warn!(segment = %path.display(), reason = %why, "segment left raw");
                self.set_damaged(&path);
                Ok(0)
            }
            Failure::Io(e) => {
                self.log.release(&inputs);
                Err(e)
            }
        }
    }

    /// A segment's size as raw records: its file size, or for a compressed one the raw size
    /// its footer gives (read once; four times the file if it cannot be read).
    fn raw_size(&self, seg: &Segment) -> u64 {
        if seg.format != Format::Compressed {
            return seg.size;
        }
        let mut sizes = self.raw_sizes.lock().unwrap_or_else(|p| p.into_inner());
        if sizes.len() > 100_000 {
            sizes.clear();
        }
        *sizes.entry(seg.path.clone()).or_insert_with(|| {
            match crate::segment::Reader::open_file(&seg.path) {
                Ok(Some(r)) => r.info().raw_bytes,
                _ => seg.size * 4,
            }
        })
    }

    /// Whether `seg`'s file was written `-store.segment-settle` ago or more.
    fn written_long_ago(&self, seg: &Segment) -> bool {
        std::fs::metadata(&seg.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= self.cfg.settle)
    }

    /// Whether `seg` is among segments that overlapping compaction would merge (so converting
    /// it first would be undone).
    fn merge_pending(&self, seg: &Segment, all: &[Segment]) -> bool {
        let group = compact::overlapping(all, seg);
        let size = |i: usize| self.raw_size(&all[i]);
        compact::worth_merging(all, &group, &size, self.cfg.target_size, &|i| {
            self.written_long_ago(&all[i])
        })
        .iter()
        .any(|&i| all[i].path == seg.path)
    }

    /// Leave the segment at `path` alone from now on: no more compaction or conversion.
    fn set_damaged(&self, path: &std::path::Path) {
        // The claimed name was `.reading`; it is released as `.flushed`.
        let flushed = path.with_extension(FLUSHED);
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flushed);
    }
}

/// Run `work` again while it finds something to do, for up to [`CONVERT_BUDGET`]; the
/// segments it affected.
fn for_a_while(mut work: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < CONVERT_BUDGET {
        match work()? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

enum Failure {
    /// An input is not a well-formed segment: its path and why.
    Bad(PathBuf, String),
    /// A compressed input has blocks that cannot be read.
    Damaged(PathBuf),
    /// A raw input cannot be compressed (a record longer than a block holds): why.
    StaysRaw(PathBuf, String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}
