//! Local query execution (the query's HTTP parameters are parsed in `api/params.rs`): select the segments whose names overlap `[from, to]`, map them,
//! search each one's time range, merge overlapping segments by ULID with dedup, and push the
//! matching lines into a sink. Nothing is collected: memory is bounded by the sink's buffer.

use std::borrow::Cow;
use std::io;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::Mmap;

use super::log::{Segment, StoreLog};
use crate::merge;
use crate::search::{Matcher, Topics};
use crate::segment::{self, Chunk, Needles, Reader, Selection};

/// A parsed query (the `from`, `to`, `q`, `regex`, `topic`, `order`, `limit`, `before` and
/// `after` parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// Lower time bound, inclusive, Unix ms.
    pub from_ms: u64,
    /// Upper time bound, inclusive, Unix ms.
    pub to_ms: u64,
    /// The query expression.
    pub q: String,
    /// Whether `q` is a regex.
    pub regex: bool,
    /// Topic names and globs selecting records (none: every topic), parsed once.
    pub topics: Topics,
    /// Newest first (`order=desc`).
    pub desc: bool,
    /// At most this many records (`limit=N`): the first N in the answer's order.
    pub limit: Option<u64>,
    /// Records of the same topic before each match (`before=N`).
    pub before: u32,
    /// Records of the same topic after each match (`after=N`).
    pub after: u32,
}

impl QueryParams {
    /// The matcher of `q`, `regex` and `topic`.
    pub fn matcher(&self) -> Result<Matcher, crate::search::QueryError> {
        Ok(Matcher::new(&self.q, self.regex)?.with_topics(self.topics.clone()))
    }

    /// What a query with context lines reads: every record of its topics in its window
    /// widened by a quarter of its span (10 s to 1 h) on each side, where the first and last
    /// matches' neighbours are looked for.
    pub fn context_scan(&self) -> QueryParams {
        let margin = ((self.to_ms - self.from_ms) / 4).clamp(10_000, 3_600_000);
        QueryParams {
            from_ms: self.from_ms.saturating_sub(margin),
            to_ms: self.to_ms.saturating_add(margin),
            topics: self.topics.clone(),
            desc: self.desc,
            ..Default::default()
        }
    }

    /// Whether the answer is every record of the window in ULID order, whole.
    pub fn is_plain_dump(&self) -> bool {
        self.q.is_empty()
            && self.topics.is_all()
            && !self.desc
            && self.limit.is_none()
            && self.before == 0
            && self.after == 0
    }
}

/// The segments a query will read: named (for planning headers) or also opened (to search).
#[derive(Debug, Default)]
pub struct Plan {
    /// Selected segments, sorted by low ULID.
    pub segments: Vec<Segment>,
    /// Their readers, when opened (`None` for an empty or unreadable file).
    opened: Vec<Option<Arc<Reader<Mmap>>>>,
    /// Compressed segments whose footer could not be read: each counts as a corrupt block.
    unreadable: u64,
}

/// What a query reads, decided before its answer starts (the headers report it).
#[derive(Debug, Default)]
pub struct Scan {
    /// Per opened segment, what is read of it.
    selections: Vec<Selection>,
    /// What every match must contain (time slices of a batch select with them again).
    needles: Needles,
    /// Bytes the search reads: the time range of raw segments, the stored bytes of the blocks
    /// read and the filters consulted of compressed ones (`X-Oklog-Bytes-Scanned`).
    pub bytes: u64,
    /// Blocks in the time range ruled out by their needle filter (`X-Oklog-Blocks-Skipped`).
    pub blocks_skipped: u64,
    /// Blocks that will be read.
    pub blocks_read: u64,
}

/// What a search did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes read (as [`Scan::bytes`]).
    pub scanned: u64,
    /// Blocks (or whole compressed segments) that could not be read: the answer lacks their
    /// records.
    pub corrupt_blocks: u64,
}

impl QueryParams {
    /// What the query asks of each segment, with `matcher` (built once per query), stopped
    /// when `cancel` is set.
    pub fn segment_query<'a>(
        &self,
        matcher: &'a Matcher,
        cancel: &'a AtomicBool,
    ) -> segment::Query<'a> {
        segment::Query {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            matcher,
            desc: self.desc,
            limit: self.limit,
            cancel,
        }
    }
}

impl Plan {
    /// Select the segments of `log` overlapping the query's time range, opening none (HEAD).
    pub fn new(log: &StoreLog, p: &QueryParams) -> io::Result<Plan> {
        Ok(Plan {
            segments: log.overlapping(p.from_ms, p.to_ms)?,
            opened: Vec::new(),
            unreadable: 0,
        })
    }

    /// Select and map the segments, under the segment set's read lock, so compaction cannot
    /// remove one between selection and reading.
    pub fn open(log: &StoreLog, p: &QueryParams) -> io::Result<Plan> {
        let (list, unreadable) = log.open_overlapping(p.from_ms, p.to_ms)?;
        let (segments, opened) = list.into_iter().unzip();
        Ok(Plan {
            segments,
            opened,
            unreadable,
        })
    }

    /// Sum of the selected segments' sizes (`X-Oklog-Max-Data-Set-Size`).
    pub fn data_set_size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Decide what the search reads of each segment ([`Reader::select`]).
    pub fn scan(&self, p: &QueryParams, needles: &Needles, matcher: &Matcher) -> Scan {
        let q = p.segment_query(matcher, &segment::NEVER);
        let mut scan = Scan {
            needles: needles.clone(),
            ..Scan::default()
        };
        for r in self.opened.iter().flatten() {
            r.prefetch_filters(needles);
        }
        for o in &self.opened {
            let sel = o
                .as_ref()
                .map(|r| r.select(&q, needles))
                .unwrap_or_default();
            scan.bytes += sel.bytes;
            scan.blocks_skipped += sel.blocks_skipped;
            scan.blocks_read += sel.blocks_read;
            scan.selections.push(sel);
        }
        scan
    }

    /// When every selected segment is raw and overlaps no other, the `[from, to]` byte range
    /// of each, in order, as shareable bytes of the mapping (no copy): with an empty query,
    /// that is the whole answer. `None` when some segments must be merged or decompressed.
    pub fn shared_ranges(&self, p: &QueryParams) -> Option<Vec<bytes::Bytes>> {
        let mut out = Vec::new();
        for batch in batches(&self.segments) {
            let opened: Vec<&Arc<Reader<Mmap>>> = self.opened[batch].iter().flatten().collect();
            match opened[..] {
                [] => {}
                [o] if self.unreadable == 0
                    && let Some(m) = o.raw() =>
                {
                    let r = crate::search::time_range(m, p.from_ms, p.to_ms);
                    if !r.is_empty() {
                        out.push(bytes::Bytes::from_owner(SharedMap(Arc::clone(o))).slice(r));
                    }
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// [`Plan::execute_scan`] with the scan decided here.
    pub fn execute(
        &self,
        p: &QueryParams,
        matcher: &Matcher,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<Outcome> {
        let scan = self.scan(p, &Needles::new(&p.q, p.regex), matcher);
        self.execute_scan(&scan, p, matcher, &segment::NEVER, sink)
    }

    /// The units of work of a scan, in ULID order: the chunks of each segment that overlaps
    /// no other, and one merge per batch of overlapping segments.
    fn tasks<'a>(&'a self, scan: &'a Scan, q: &segment::Query<'_>) -> Vec<Task<'a>> {
        let mut tasks: Vec<Task> = Vec::new();
        for batch in batches(&self.segments) {
            let mut sources: Vec<Src> = Vec::new();
            let (mut low, mut high) = (u64::MAX, 0);
            for i in batch {
                let (Some(reader), Some(sel)) = (&self.opened[i], scan.selections.get(i)) else {
                    continue;
                };
                if reader.raw().is_some() || sel.blocks_read > 0 {
                    low = low.min(crate::record::ulid_ms(&self.segments[i].low));
                    high = high.max(crate::record::ulid_ms(&self.segments[i].high));
                    sources.push(Src {
                        reader,
                        sel: Cow::Borrowed(sel),
                        label: &self.segments[i].path,
                    });
                }
            }
            match sources.pop() {
                None => {}
                Some(Src {
                    reader,
                    sel: Cow::Borrowed(sel),
                    label,
                }) if sources.is_empty() => {
                    tasks.extend(reader.chunks(sel, q, label).into_iter().map(Task::One))
                }
                Some(last) => {
                    sources.push(last);
                    let bytes: u64 = sources.iter().map(|s| s.sel.bytes).sum();
                    let window = (low.max(q.from_ms), high.min(q.to_ms));
                    let slices = time_slices(window, bytes);
                    if slices.len() < 2 {
                        tasks.push(Task::Merge(sources, None));
                        continue;
                    }
                    // A large batch (late records spanning days make one of a whole store) is
                    // merged in time slices, searched in parallel like pieces; each slice
                    // selects the blocks of its own window.
                    for (from_ms, to_ms) in slices {
                        let sq = segment::Query {
                            from_ms,
                            to_ms,
                            ..*q
                        };
                        let part = sources
                            .iter()
                            .map(|s| Src {
                                reader: s.reader,
                                sel: Cow::Owned(s.reader.select(&sq, &scan.needles)),
                                label: s.label,
                            })
                            .collect();
                        tasks.push(Task::Merge(part, Some((from_ms, to_ms))));
                    }
                }
            }
        }
        if q.desc {
            // Newest first: the last task first, each one's lines reversed.
            tasks.reverse();
        }
        if q.limit.is_some() && matches!(tasks.first(), Some(Task::One(c)) if c.is_piece()) {
            // A query with a limit may be done within its first few records: its first piece
            // is cut finer, so it stops early.
            let rest = tasks.split_off(1);
            if let Some(Task::One(first)) = tasks.pop() {
                tasks.extend(first.graded(q.desc).into_iter().map(Task::One));
            }
            tasks.extend(rest);
        }
        tasks
    }

    /// Run the search over an opened plan, pushing matching lines (each with its `\n`, possibly
    /// several per call) into `sink` in ULID order; `sink` returns false to stop (the client
    /// went away).
    ///
    /// A raw segment that overlaps no other is cut into pieces of [`segment::PIECE`] bytes at
    /// line boundaries, a compressed one into its groups; both are searched in parallel on up
    /// to [`MAX_WORKERS`] threads and emitted in order; workers run at most [`LOOKAHEAD`] tasks
    /// ahead of the output, so memory stays bounded whatever the result size. Overlapping
    /// segments are merged with dedup, in order. A compressed block that cannot be read is
    /// logged, left out and counted in the outcome. When `cancel` is set (the client left,
    /// the node is stopping) the search stops within a piece or a block, output or not.
    pub fn execute_scan(
        &self,
        scan: &Scan,
        p: &QueryParams,
        matcher: &Matcher,
        cancel: &AtomicBool,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<Outcome> {
        let corrupt = AtomicU64::new(self.unreadable);
        let q = p.segment_query(matcher, cancel);
        let tasks = self.tasks(scan, &q);
        let workers = parallelism();
        let parallel = tasks.iter().filter(|t| t.in_parallel(matcher)).count();
        // A query with a limit may need only its first tasks: ask for little ahead.
        let prefetch = if p.limit.is_some() { 1 } else { PREFETCH };
        for t in tasks.iter().take(prefetch) {
            t.prefetch();
        }
        if workers < 2 || parallel < 2 {
            for (i, task) in tasks.iter().enumerate() {
                if q.cancelled() {
                    break;
                }
                if let Some(t) = tasks.get(i + prefetch) {
                    t.prefetch();
                }
                if !run_inline(task, q, &corrupt, sink)? {
                    break;
                }
            }
        } else {
            run_parallel(&tasks, workers, prefetch, q, &corrupt, sink)?;
        }
        Ok(Outcome {
            scanned: scan.bytes,
            corrupt_blocks: corrupt.load(Ordering::Relaxed),
        })
    }
}

/// A segment mapping owned by `Bytes` slices handed to the HTTP body. Segment files are
/// never written after they are named, only renamed or unlinked, so the bytes stay valid.
struct SharedMap(Arc<Reader<Mmap>>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        self.0.raw().unwrap_or_default()
    }
}

/// Search threads per query at most.
pub const MAX_WORKERS: usize = 8;
/// Tasks searched ahead of the output, per worker.
pub const LOOKAHEAD: usize = 2;
/// Tasks whose bytes are asked for ahead of the one being started.
const PREFETCH: usize = 8;

/// One segment of an overlapping batch, with what is read of it.
struct Src<'a> {
    reader: &'a Reader<Mmap>,
    sel: Cow<'a, Selection>,
    label: &'a std::path::Path,
}

/// Selected bytes of an overlapping batch per time slice searched in parallel (a test makes
/// them small so that its stores are sliced too).
const SLICE_BYTES: u64 = if cfg!(test) { 4 << 10 } else { 8 << 20 };
/// Time slices of one batch, at most.
const MAX_SLICES: u64 = 256;

/// `window` (inclusive Unix ms) cut into slices of about [`SLICE_BYTES`] of `bytes`, by time;
/// one slice (or none) when the batch is small.
fn time_slices((lo, hi): (u64, u64), bytes: u64) -> Vec<(u64, u64)> {
    if hi < lo {
        return Vec::new();
    }
    let k = (bytes / SLICE_BYTES).clamp(1, MAX_SLICES).min(hi - lo + 1);
    let span = hi - lo + 1;
    (0..k)
        .map(|i| {
            let a = lo + (u128::from(span) * u128::from(i) / u128::from(k)) as u64;
            let b = lo + (u128::from(span) * u128::from(i + 1) / u128::from(k)) as u64 - 1;
            (a, b)
        })
        .collect()
}

/// Threads available to a query.
fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS)
}

/// One unit of search work.
enum Task<'a> {
    /// A raw segment's piece or a compressed segment's group, of a segment that overlaps no
    /// other.
    One(Chunk<'a>),
    /// Overlapping segments, merged with dedup (within one time slice of their batch, when
    /// given).
    Merge(Vec<Src<'a>>, Option<(u64, u64)>),
}

impl Task<'_> {
    /// Ask for a compressed group's blocks ahead ([`Chunk::prefetch`]).
    fn prefetch(&self) {
        if let Task::One(c) = self {
            c.prefetch();
        }
    }

    /// Whether workers run it (the emitting thread runs the rest in order).
    fn in_parallel(&self, matcher: &Matcher) -> bool {
        match self {
            Task::One(c) => !c.is_piece() || !matcher.is_all(),
            // A merge runs in order on the emitting thread, unless it is one time slice of a
            // larger batch (its output is bounded by the slice).
            Task::Merge(_, window) => window.is_some(),
        }
    }
}

/// Run a task straight into the sink; false if the sink said stop.
fn run_inline(
    task: &Task,
    q: segment::Query<'_>,
    corrupt: &AtomicU64,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<bool> {
    match task {
        Task::One(c) => c.search_into(&q, corrupt, sink),
        Task::Merge(srcs, window) => {
            let q = match window {
                Some((from_ms, to_ms)) => segment::Query {
                    from_ms: *from_ms,
                    to_ms: *to_ms,
                    ..q
                },
                None => q,
            };
            let mut sources = Vec::with_capacity(srcs.len());
            for s in srcs {
                sources.push(s.reader.lines(&s.sel, q, s.label, corrupt)?);
            }
            let mut open = true;
            merge::merge_ordered(&mut sources, q.desc, |line| {
                open = sink(line);
                Ok(open)
            })?;
            Ok(open)
        }
    }
}

/// A time slice's merged lines, for a worker to hand over whole; one that cannot be read is
/// left out and counted, so the answer says it is partial.
fn slice_output(task: &Task, q: segment::Query<'_>, corrupt: &AtomicU64) -> Vec<u8> {
    let mut out = Vec::new();
    let merged = run_inline(task, q, corrupt, &mut |lines| {
        out.extend_from_slice(lines);
        true
    });
    if let Err(e) = merged {
        tracing::error!(error = %e, "merging a time slice");
        corrupt.fetch_add(1, Ordering::Relaxed);
        out.clear();
    }
    out
}

/// Search tasks on `workers` threads and emit every task's output in order.
fn run_parallel(
    tasks: &[Task],
    workers: usize,
    prefetch: usize,
    q: segment::Query<'_>,
    corrupt: &AtomicU64,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Condvar, Mutex};

    let slots: Vec<Mutex<Option<Vec<u8>>>> = tasks.iter().map(|_| Mutex::new(None)).collect();
    let ready = Condvar::new();
    let next = AtomicUsize::new(0);
    let emitted = Mutex::new(0usize);
    let progress = Condvar::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut dec = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= tasks.len() || stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(t) = tasks.get(i + prefetch) {
                        t.prefetch();
                    }
                    if !tasks[i].in_parallel(q.matcher) {
                        continue; // run in order on the emitting thread
                    }
                    // Stay within the look-ahead of the output. A query with a limit may
                    // be done after its first task: it starts one task ahead and widens by
                    // one per task emitted.
                    let ahead = |done: usize| {
                        if q.limit.is_some() {
                            (done + 1).min(LOOKAHEAD * workers)
                        } else {
                            LOOKAHEAD * workers
                        }
                    };
                    let mut done = emitted.lock().unwrap_or_else(|e| e.into_inner());
                    while i >= *done + ahead(*done) && !stop.load(Ordering::SeqCst) {
                        done = progress.wait(done).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(done);
                    if stop.load(Ordering::SeqCst) {
                        return; // the output has all it wants (or its reader went away)
                    }
                    let out = match &tasks[i] {
                        // A group whose decompressor cannot be made is left out.
                        Task::One(c) => c.output(&mut dec, &q, corrupt).unwrap_or_default(),
                        Task::Merge(..) => slice_output(&tasks[i], q, corrupt),
                    };
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                    ready.notify_all();
                }
            });
        }
        let result = (|| -> io::Result<()> {
            for (i, task) in tasks.iter().enumerate() {
                if q.cancelled() {
                    break;
                }
                let open = if task.in_parallel(q.matcher) {
                    let mut slot = slots[i].lock().unwrap_or_else(|e| e.into_inner());
                    while slot.is_none() {
                        slot = ready.wait(slot).unwrap_or_else(|e| e.into_inner());
                    }
                    let out = slot.take().unwrap_or_default();
                    drop(slot);
                    out.is_empty() || sink(&out)
                } else {
                    run_inline(task, q, corrupt, sink)?
                };
                *emitted.lock().unwrap_or_else(|e| e.into_inner()) = i + 1;
                progress.notify_all();
                if !open {
                    break;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        progress.notify_all();
        result
    })
}

/// Split segments sorted by low ULID into batches whose ranges chain-overlap (equal bounds
/// overlap): each batch is merged, consecutive batches are simply concatenated.
pub fn batches(segments: &[Segment]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let mut j = i + 1;
        let mut high = segments[i].high;
        while j < segments.len() && segments[j].low <= high {
            high = high.max(segments[j].high);
            j += 1;
        }
        out.push(i..j);
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        pairs: &[(&str, &str)],
    ) -> Result<QueryParams, super::super::api::params::ParamError> {
        super::super::api::params::parse_query(&pairs.iter().copied().collect())
    }

    use super::super::log::test_segment as seg;

    #[test]
    fn batch_segments() {
        // TestBatchSegments.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (
                &[("A", "M"), ("N", "R"), ("O", "S"), ("W", "Z")],
                &[(0, 1), (1, 3), (3, 4)],
            ),
            (&[("A", "M"), ("L", "R"), ("O", "S"), ("Q", "Z")], &[(0, 4)]),
            (
                &[("A", "B"), ("B", "C"), ("C", "D"), ("E", "F"), ("F", "G")],
                &[(0, 3), (3, 5)],
            ),
            (&[], &[]),
        ];
        for (input, want) in cases {
            let segs: Vec<Segment> = input.iter().map(|(l, h)| seg(l, h)).collect();
            let want: Vec<_> = want.iter().map(|&(a, b)| a..b).collect();
            assert_eq!(batches(&segs), want, "{input:?}");
        }
    }

    #[test]
    fn overlapping_segments_merge_with_dedup_and_bad_names_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
        write(
            "01BB6RQR190000000000000000-01BB6RT5GS0000000000000000.flushed",
            "01BB6RQR190000000000000000 a\n01BB6RT5GS0000000000000000 c\n",
        );
        write(
            "01BB6RRTB70000000000000000-01BB6RT5GS0000000000000000.flushed",
            "01BB6RRTB70000000000000000 b\n01BB6RT5GS0000000000000000 c\n",
        );
        write("01BB6RQR190000000000000000-xxx.flushed", "junk\n");
        // Copied in while the store runs: indexed by the next reconciliation.
        assert_eq!(log.reconcile().unwrap(), 2);
        let p = params(&[
            ("from", "2017-01-01T00:00:00Z"),
            ("to", "2018-01-01T00:00:00Z"),
        ])
        .unwrap();
        let plan = Plan::open(&log, &p).unwrap();
        assert_eq!(plan.segments.len(), 2, "the malformed name is skipped");
        let m = Matcher::new("", false).unwrap();
        let mut out = Vec::new();
        plan.execute(&p, &m, &mut |l| {
            out.extend_from_slice(l);
            true
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "01BB6RQR190000000000000000 a\n01BB6RRTB70000000000000000 b\n01BB6RT5GS0000000000000000 c\n"
        );
        assert!(
            dir.path()
                .join("01BB6RQR190000000000000000-xxx.flushed")
                .exists(),
            "never deleted"
        );
    }

    #[test]
    fn a_large_overlapping_batch_is_merged_in_time_slices_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        // An on-time segment and a late one spanning it, sharing some records (a replica).
        let id = |ms: u64, e: u128| {
            String::from_utf8(crate::record::encode_ulid(ms, e).to_vec()).unwrap()
        };
        let base = 1_500_000_000_000u64;
        let mut all: Vec<String> = Vec::new();
        let (mut a, mut b) = (String::new(), String::new());
        for i in 0..4000u64 {
            let line = format!(
                "{} t record {i} {}\n",
                id(base + i * 7, u128::from(i)),
                "x".repeat(i as usize % 50)
            );
            if i % 3 == 0 {
                b.push_str(&line);
            }
            if i % 3 != 0 || i % 9 == 0 {
                a.push_str(&line);
            }
            all.push(line);
        }
        for body in [&a, &b] {
            let first = &body[..26];
            let last_line = body.trim_end().rsplit('\n').next().unwrap();
            std::fs::write(
                dir.path()
                    .join(format!("{first}-{}.flushed", &last_line[..26])),
                body,
            )
            .unwrap();
        }
        assert_eq!(log.reconcile().unwrap(), 2);
        for (q, desc) in [("", false), ("record 1", false), ("", true)] {
            let mut pairs = vec![
                ("from", "2017-01-01T00:00:00Z"),
                ("to", "2018-01-01T00:00:00Z"),
                ("q", q),
            ];
            if desc {
                pairs.push(("order", "desc"));
            }
            let p = params(&pairs).unwrap();
            let plan = Plan::open(&log, &p).unwrap();
            let m = p.matcher().unwrap();
            let scan = plan.scan(&p, &Needles::new(&p.q, p.regex), &m);
            let cancel = AtomicBool::new(false);
            let sq = p.segment_query(&m, &cancel);
            let tasks = plan.tasks(&scan, &sq);
            let slices = tasks
                .iter()
                .filter(|t| matches!(t, Task::Merge(_, Some(_))))
                .count();
            assert!(slices > 4, "{slices} slices");
            let mut out = Vec::new();
            plan.execute(&p, &m, &mut |l| {
                out.extend_from_slice(l);
                true
            })
            .unwrap();
            let mut want: Vec<&String> = all.iter().filter(|l| l.contains(q)).collect();
            if desc {
                want.reverse();
            }
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want.into_iter().cloned().collect::<String>(),
                "q={q:?} desc={desc}"
            );
        }
        assert_eq!(time_slices((10, 9), 1 << 30), vec![]);
        assert_eq!(
            time_slices((10, 12), 1 << 30),
            vec![(10, 10), (11, 11), (12, 12)]
        );
        assert_eq!(
            time_slices((0, 99), SLICE_BYTES * 2),
            vec![(0, 49), (50, 99)]
        );
    }

    #[test]
    fn parallel_pieces_come_out_in_order_and_can_stop_early() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        // One segment of three pieces and more, plus a separate small one after it.
        let mut big = Vec::new();
        let mut n = 0u64;
        while big.len() < 2 * segment::PIECE + segment::PIECE / 2 {
            let id = crate::record::encode_ulid(1_000_000 + n / 100, u128::from(n));
            big.extend_from_slice(&id);
            big.extend_from_slice(
                format!(
                    " app line {n} {}\n",
                    if n.is_multiple_of(7) {
                        "seven"
                    } else {
                        "other"
                    }
                )
                .as_bytes(),
            );
            n += 1;
        }
        let name = |b: &[u8]| {
            let first = &b[..26];
            let last_start = b[..b.len() - 1]
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |i| i + 1);
            super::super::log::build_name(
                first.try_into().unwrap(),
                b[last_start..last_start + 26].try_into().unwrap(),
                "flushed",
            )
        };
        std::fs::write(dir.path().join(name(&big)), &big).unwrap();
        let small = format!(
            "{} app tail seven\n",
            String::from_utf8_lossy(&crate::record::encode_ulid(9_000_000, 0))
        );
        std::fs::write(dir.path().join(name(small.as_bytes())), &small).unwrap();
        log.reconcile().unwrap();
        let p = params(&[
            ("from", "1970-01-01T00:00:00Z"),
            ("to", "1970-01-02T00:00:00Z"),
        ])
        .unwrap();
        let plan = Plan::open(&log, &p).unwrap();
        for (q, want) in [("seven", n.div_ceil(7) + 1), ("", n + 1), ("nothing", 0)] {
            let m = Matcher::new(q, false).unwrap();
            let mut out = Vec::new();
            let scanned = plan
                .execute(&p, &m, &mut |b| {
                    out.extend_from_slice(b);
                    true
                })
                .unwrap();
            assert_eq!(scanned.scanned as usize, big.len() + small.len());
            let lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
            assert_eq!(lines.len() as u64, want, "q={q:?}");
            assert!(
                lines.windows(2).all(|w| w[0][..26] < w[1][..26]),
                "in order"
            );
        }
        // Newest first: the same lines reversed, over pieces read from the end; and a topic
        // selection.
        for (q, topic) in [
            ("seven", None),
            ("", None),
            ("line 1", Some("a*")),
            ("", Some("b")),
        ] {
            let mut asc = p.clone();
            asc.q = q.to_string();
            asc.topics = Topics::parse(&topic.into_iter().collect::<Vec<_>>()).unwrap();
            let mut desc = asc.clone();
            desc.desc = true;
            let run = |p: &QueryParams| {
                let mut out = Vec::new();
                plan.execute(p, &p.matcher().unwrap(), &mut |b| {
                    out.extend_from_slice(b);
                    true
                })
                .unwrap();
                out
            };
            let (a, d) = (run(&asc), run(&desc));
            assert_eq!(d, merge::reverse_lines(&a), "q={q:?} topic={topic:?}");
            let want = if topic == Some("b") { 0 } else { 1 };
            assert_eq!(a.is_empty(), want == 0, "q={q:?} topic={topic:?}");
        }
        // A sink that stops after the first chunk ends the search (no hang, no more output).
        let m = Matcher::new("", false).unwrap();
        let mut calls = 0;
        plan.execute(&p, &m, &mut |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
    }
}
