//! The store's background lifecycle: compaction, retention, purge and quarantine, one step per
//! second in turn, so each gets a turn every 4 s and none ever blocks ingest or queries.
//!
//! - **Overlapping compaction**: the segment overlapping the most others is merged with them
//!   (deduplicated by ULID, split at `-store.segment-target-size`). Two segments are enough: a
//!   retried replication leaves pairs of duplicates, which the original (three needed) kept
//!   forever.
//! - **Sequential compaction**: small neighbours merged up to the target size (the original's
//!   `chooseFirstSequential`).
//! - **Retention**: segments whose newest record is older than `-store.segment-retain` go to
//!   the trash; **purge** deletes trash older than `-store.segment-purge`.
//! - **Quarantine**: a file that cannot be read as a segment (malformed name, a line without a
//!   ULID, records out of order, a torn last record) is renamed `.bad`, logged and counted; never
//!   deleted, never retried.
//!
//! Inputs are claimed (`.flushed` → `.reading`, still queried), outputs are renamed in as
//! `.flushed`, then the inputs are removed: a query in between sees both and deduplicates.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::log::{ACTIVE, FLUSHED, Segment, StoreLog, overlap};
use crate::merge::{self, ReaderLines, Source};
use crate::metrics::Metrics;
use crate::record::{ULID_LEN, check_record, min_ulid};

/// How often the compacter takes a step.
const STEP: Duration = Duration::from_secs(1);

/// Lifecycle settings (the `-store.segment-*` flags).
#[derive(Clone, Debug)]
pub struct CompactConfig {
    /// Compaction output size, and the bound for sequential compaction.
    pub target_size: u64,
    /// Keep segments whose newest record is younger than this.
    pub retain: Duration,
    /// Delete trashed segments this long after trashing.
    pub purge: Duration,
}

/// Runs the lifecycle steps over one store directory.
#[derive(Debug)]
pub struct Compacter {
    log: Arc<StoreLog>,
    cfg: CompactConfig,
    metrics: Arc<Metrics>,
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
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Overlapping => "Overlapping",
            Kind::Sequential => "Sequential",
            Kind::Trash => "Trash",
            Kind::Purge => "Purge",
        }
    }
}

impl Compacter {
    /// A compacter for `log`.
    pub fn new(log: Arc<StoreLog>, cfg: CompactConfig, metrics: Arc<Metrics>) -> Self {
        Compacter { log, cfg, metrics }
    }

    /// Take one step per second in turn until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let kinds = [
            Kind::Overlapping,
            Kind::Sequential,
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
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.step(kind)).await {
                tracing::error!(step = kind.name(), error = %e, "store lifecycle step failed");
            }
        }
    }

    /// Run one step now; returns how many segments it affected.
    pub fn step(&self, kind: Kind) -> io::Result<usize> {
        // Segments past retention are left for the trash, not merged with younger ones (which
        // would keep their records alive as long as the youngest).
        let cutoff = self.retention_cutoff();
        let live = |s: &Segment| s.high >= cutoff;
        let result = match kind {
            Kind::Overlapping => {
                let segs = self.log.scan(&[FLUSHED], live)?;
                let chosen = choose_overlapping(&segs);
                self.compact(chosen.into_iter().map(|i| segs[i].clone()).collect())
            }
            Kind::Sequential => {
                let segs = self.log.scan(&[FLUSHED], live)?;
                let sizes: Vec<u64> = segs.iter().map(|s| s.size).collect();
                let chosen = choose_first_sequential(&sizes, 2, self.cfg.target_size);
                self.compact(chosen.into_iter().map(|i| segs[i].clone()).collect())
            }
            Kind::Trash => self.trash(),
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
        min_ulid(now.saturating_sub(self.cfg.retain.as_millis() as u64))
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
        match self.merge_into_outputs(&inputs) {
            Ok(()) => {
                self.log.remove(&inputs)?;
                Ok(inputs.len())
            }
            Err(Failure::Bad(path, reason)) => {
                let (bad, good): (Vec<Segment>, Vec<Segment>) =
                    inputs.into_iter().partition(|s| s.path == path);
                self.log.release(&good);
                for s in bad {
                    self.log.quarantine(&s.path, &reason)?;
                    self.metrics.store_quarantined_files.inc();
                }
                Ok(0)
            }
            Err(Failure::Io(e)) => {
                self.log.release(&inputs);
                Err(e)
            }
        }
    }

    fn merge_into_outputs(&self, inputs: &[Segment]) -> Result<(), Failure> {
        let mut sources = inputs
            .iter()
            .map(|s| {
                let f = File::open(&s.path)?;
                Ok(Checked::new(
                    ReaderLines::new(BufReader::with_capacity(256 << 10, f))?,
                    s.path.clone(),
                ))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut out = Output::new(&self.log, self.cfg.target_size);
        let merged = merge::merge(&mut sources, |line| out.write(line).map(|_| true));
        if let Some(bad) = sources.iter().find_map(|s| s.bad.clone()) {
            out.abandon();
            return Err(Failure::Bad(bad.0, bad.1));
        }
        if let Err(e) = merged {
            out.abandon();
            return Err(Failure::Io(e));
        }
        out.finish().map_err(Failure::Io)
    }
}

enum Failure {
    /// An input is not a well-formed segment: its path and why.
    Bad(PathBuf, String),
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
                retain,
                purge,
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
        let now = crate::gotime::now_ms() as u64;
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
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = reader
            .join()
            .expect("every concurrent query saw every record once");
        assert!(runs > 0);
    }
}
