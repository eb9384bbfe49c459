//! Local query execution: select the segments whose names overlap `[from, to]`, map them,
//! search each one's time range, merge overlapping segments by ULID with dedup, and push the
//! matching lines into a sink. Nothing is collected: memory is bounded by the sink's buffer.

use std::io;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use super::log::{Opened, Segment, StoreLog};
use crate::gotime;
use crate::merge;
use crate::record::{parse_ulid, ulid_ms};
use crate::search::{MatchSource, Matcher, Matches, Topics};
use crate::segment::{self, Needles};

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
    /// Topic names and globs selecting records (none: every topic).
    pub topics: Vec<String>,
    /// Newest first (`order=desc`).
    pub desc: bool,
    /// At most this many records (`limit=N`): the first N in the answer's order.
    pub limit: Option<u64>,
    /// Records of the same topic before each match (`before=N`).
    pub before: u32,
    /// Records of the same topic after each match (`after=N`).
    pub after: u32,
}

/// The largest `limit` accepted.
pub const MAX_LIMIT: u64 = 1_000_000;
/// The largest `before`/`after` accepted.
pub const MAX_CONTEXT: u32 = 1000;

/// Query-string parameters in their order, repeated keys kept (`topic=a&topic=b`).
#[derive(Clone, Debug, Default)]
pub struct RawParams(pub Vec<(String, String)>);

impl RawParams {
    /// The value of `key` (the last one when repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for RawParams {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        RawParams(
            iter.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// Read a decimal count parameter in `1..=max` (`0..=max` when `zero` is allowed).
fn parse_count(name: &str, value: &str, max: u64, zero: bool) -> Result<u64, String> {
    let low = u64::from(!zero);
    match value.parse::<u64>() {
        Ok(n) if (low..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "parsing '{name}': {value:?}: must be a whole number from {low} to {max}"
        )),
    }
}

/// Read a `from`/`to` value: an RFC 3339 time or a ULID (its millisecond).
pub fn parse_time(name: &str, value: &str) -> Result<u64, String> {
    if let Some(id) = parse_ulid(value) {
        return Ok(ulid_ms(&id));
    }
    match gotime::parse_rfc3339_ms(value) {
        Some(ms) if ms >= 0 => Ok(ms as u64),
        Some(_) => Err(format!(
            "parsing '{name}': {value}: times before 1970 are not supported"
        )),
        None => Err(format!(
            "parsing '{name}': {value}: can't parse as ULID or RFC3339 time"
        )),
    }
}

/// Read the `regex` parameter: absent, `false` or `0` → literal; empty, `true` or `1` → regex.
pub fn parse_regex_flag(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(v) => Err(format!(
            "parsing 'regex': {v:?}: must be true, false, 1, 0 or empty"
        )),
    }
}

impl QueryParams {
    /// Parse query-string parameters. A missing `to` is now; a missing `from` is an hour
    /// before `to`.
    pub fn parse(params: &RawParams) -> Result<QueryParams, String> {
        let to_ms = match params.get("to") {
            Some(v) => parse_time("to", v)?,
            None => gotime::now_ms().max(0) as u64,
        };
        let from_ms = match params.get("from") {
            Some(v) => parse_time("from", v)?,
            None => to_ms.saturating_sub(3_600_000),
        };
        if from_ms > to_ms {
            // One rule for every endpoint that takes a window (query, hits, their local forms).
            return Err("'from' is after 'to'".to_string());
        }
        let topics: Vec<String> = params.all("topic").into_iter().map(String::from).collect();
        Topics::parse(&topics)?;
        let desc = match params.get("order") {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(v) => return Err(format!("parsing 'order': {v:?}: must be asc or desc")),
        };
        let limit = match params.get("limit") {
            None => None,
            Some(v) => Some(parse_count("limit", v, MAX_LIMIT, false)?),
        };
        let context = |name: &str| -> Result<u32, String> {
            match params.get(name) {
                None => Ok(0),
                Some(v) => Ok(parse_count(name, v, u64::from(MAX_CONTEXT), true)? as u32),
            }
        };
        let (before, after) = (context("before")?, context("after")?);
        Ok(QueryParams {
            from_ms,
            to_ms,
            q: params.get("q").unwrap_or_default().to_string(),
            regex: parse_regex_flag(params.get("regex"))?,
            topics,
            desc,
            limit,
            before,
            after,
        })
    }

    /// The matcher of `q`, `regex` and `topic`; a bad regex is an error message.
    pub fn matcher(&self) -> Result<Matcher, String> {
        Ok(Matcher::new(&self.q, self.regex)
            .map_err(|e| format!("compiling regex: {e}"))?
            .with_topics(Topics::parse(&self.topics)?))
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
            && self.topics.is_empty()
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
    /// Their mappings (and footers), when opened (`None` for an empty or unreadable file).
    opened: Vec<Option<Arc<Opened>>>,
    /// Compressed segments whose footer could not be read: each counts as a corrupt block.
    unreadable: u64,
}

/// The blocks of a compressed segment a query reads: per group in range, the blocks in range
/// that the needle filter did not rule out.
type Selection = Vec<(usize, Vec<usize>)>;

/// What a query reads, decided before its answer starts (the headers report it).
#[derive(Debug, Default)]
pub struct Scan {
    /// Per opened segment: `None` for a raw one, the blocks to read for a compressed one.
    selections: Vec<Option<Selection>>,
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

    /// Decide what the search reads: for raw segments the `[from, to]` byte range found by
    /// binary search, for compressed ones the blocks in range of the selected `topics` (and
    /// the mixed ones) that `needles` do not rule out.
    pub fn scan(&self, p: &QueryParams, needles: &Needles, matcher: &Matcher) -> Scan {
        let topics = &matcher.topics;
        let mut scan = Scan::default();
        for o in &self.opened {
            let Some(o) = o else {
                scan.selections.push(None);
                continue;
            };
            let Some(footer) = &o.footer else {
                scan.bytes += crate::search::time_range(&o.map, p.from_ms, p.to_ms).len() as u64;
                scan.selections.push(None);
                continue;
            };
            let in_range =
                |low: &[u8], high: &[u8]| ulid_ms(high) >= p.from_ms && ulid_ms(low) <= p.to_ms;
            if !needles.is_empty()
                && let (Some(a), Some(z)) = (footer.blocks.first(), footer.blocks.last())
            {
                // The filters lie together: read them in one sweep.
                let end = (z.filter_offset + u64::from(z.filter_len)).max(a.filter_offset);
                let _ = o.map.advise_range(
                    memmap2::Advice::WillNeed,
                    a.filter_offset as usize,
                    (end - a.filter_offset) as usize,
                );
            }
            let first = footer
                .groups
                .partition_point(|g| ulid_ms(&g.high) < p.from_ms);
            // Per topic of the table: whether the query selects it, and its oldest visible
            // millisecond.
            let wanted: Vec<bool> = footer
                .topics
                .iter()
                .map(|t| topics.matches(&t.name))
                .collect();
            let cutoffs: Vec<u64> = footer
                .topics
                .iter()
                .map(|t| matcher.expiry.as_ref().map_or(0, |e| (e.cutoff)(&t.name)))
                .collect();
            let mut sel = Vec::new();
            for (gi, g) in footer.groups.iter().enumerate().skip(first) {
                if ulid_ms(&g.low) > p.to_ms {
                    break;
                }
                let mut blocks = Vec::new();
                for (bi, b) in footer.group_blocks(g).iter().enumerate() {
                    if !in_range(&b.low, &b.high)
                        || (b.topic != segment::MIXED
                            && (!wanted[b.topic as usize]
                                || ulid_ms(&b.high) < cutoffs[b.topic as usize]))
                    {
                        continue;
                    }
                    if !needles.is_empty() {
                        scan.bytes += u64::from(b.filter_len);
                        if segment::filter(&o.map, b).is_some_and(|f| !needles.may_match(f)) {
                            scan.blocks_skipped += 1;
                            continue;
                        }
                    }
                    scan.bytes += u64::from(b.stored_len);
                    scan.blocks_read += 1;
                    blocks.push(g.first as usize + bi);
                }
                if !blocks.is_empty() {
                    sel.push((gi, blocks));
                }
            }
            scan.selections.push(Some(sel));
        }
        scan
    }

    /// When every selected segment is raw and overlaps no other, the `[from, to]` byte range
    /// of each, in order, as shareable bytes of the mapping (no copy): with an empty query,
    /// that is the whole answer. `None` when some segments must be merged or decompressed.
    pub fn shared_ranges(&self, p: &QueryParams) -> Option<Vec<bytes::Bytes>> {
        let mut out = Vec::new();
        for batch in batches(&self.segments) {
            let opened: Vec<&Arc<Opened>> = self.opened[batch].iter().flatten().collect();
            match opened[..] {
                [] => {}
                [o] if o.footer.is_none() && self.unreadable == 0 => {
                    let r = crate::search::time_range(&o.map, p.from_ms, p.to_ms);
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
        self.execute_scan(&scan, p, matcher, sink)
    }

    /// Run the search over an opened plan, pushing matching lines (each with its `\n`, possibly
    /// several per call) into `sink` in ULID order; `sink` returns false to stop (the client
    /// went away).
    ///
    /// A raw segment that overlaps no other is cut into pieces of [`PIECE`] bytes at line
    /// boundaries, a compressed one into its groups; both are searched in parallel on up to
    /// [`MAX_WORKERS`] threads and emitted in order; workers run at most [`LOOKAHEAD`] tasks
    /// ahead of the output, so memory stays bounded whatever the result size. Overlapping
    /// segments are merged with dedup, in order. A compressed block that cannot be read is
    /// logged, left out and counted in the outcome.
    pub fn execute_scan(
        &self,
        scan: &Scan,
        p: &QueryParams,
        matcher: &Matcher,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<Outcome> {
        let corrupt = AtomicU64::new(self.unreadable);
        let mut tasks: Vec<Task> = Vec::new();
        for batch in batches(&self.segments) {
            let mut sources: Vec<Src> = Vec::new();
            for i in batch {
                let Some(o) = &self.opened[i] else {
                    continue;
                };
                let path = self.segments[i].path.as_path();
                match (&o.footer, scan.selections.get(i)) {
                    (None, _) => sources.push(Src::Raw(&o.map)),
                    (Some(_), Some(Some(sel))) => sources.push(Src::Compressed(o, path, sel)),
                    (Some(_), _) => {}
                }
            }
            match sources.pop() {
                None => {}
                Some(only) if sources.is_empty() => match only {
                    Src::Raw(m) => {
                        let r = crate::search::time_range(m, p.from_ms, p.to_ms);
                        tasks.extend(pieces(r).into_iter().map(|r| Task::One(Chunk::Piece(m, r))));
                    }
                    Src::Compressed(o, path, sel) => {
                        for (g, blocks) in sel {
                            tasks.push(Task::One(Chunk::Group(GroupTask {
                                seg: o,
                                path,
                                group: *g,
                                blocks,
                            })));
                        }
                    }
                },
                Some(last) => {
                    sources.push(last);
                    tasks.push(Task::Merge(sources));
                }
            }
        }
        if p.desc {
            // Newest first: the last task first, each one's lines reversed.
            tasks.reverse();
        }
        if p.limit.is_some()
            && let Some(Task::One(Chunk::Piece(m, r))) = tasks.first()
        {
            // A query with a limit may be done within its first few records: its first piece
            // is cut finer (1, 1, 2, 4 MiB … from the end it starts at), so it stops early.
            let (m, r) = (*m, r.clone());
            let mut graded: Vec<Task> = graded_pieces(m, align(m, r), p.desc)
                .into_iter()
                .map(|r| Task::One(Chunk::Piece(m, r)))
                .collect();
            graded.extend(tasks.drain(1..));
            tasks = graded;
        }
        let workers = parallelism();
        let parallel = tasks.iter().filter(|t| t.in_parallel(matcher)).count();
        // A query with a limit may need only its first tasks: ask for little ahead.
        let prefetch = if p.limit.is_some() { 1 } else { PREFETCH };
        for t in tasks.iter().take(prefetch) {
            t.prefetch();
        }
        if workers < 2 || parallel < 2 {
            for (i, task) in tasks.iter().enumerate() {
                if let Some(t) = tasks.get(i + prefetch) {
                    t.prefetch();
                }
                if !run_inline(task, p, matcher, &corrupt, sink)? {
                    break;
                }
            }
        } else {
            run_parallel(&tasks, workers, prefetch, p, matcher, &corrupt, sink)?;
        }
        Ok(Outcome {
            scanned: scan.bytes,
            corrupt_blocks: corrupt.load(Ordering::Relaxed),
        })
    }
}

/// A segment mapping owned by `Bytes` slices handed to the HTTP body. Segment files are
/// never written after they are named, only renamed or unlinked, so the bytes stay valid.
struct SharedMap(Arc<Opened>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

/// Bytes of a raw segment searched as one unit of parallel work (8 MiB).
pub const PIECE: usize = 8 << 20;
/// Search threads per query at most.
pub const MAX_WORKERS: usize = 8;
/// Tasks searched ahead of the output, per worker.
pub const LOOKAHEAD: usize = 2;
/// Tasks whose bytes are asked for ahead of the one being started.
const PREFETCH: usize = 8;

/// One segment of an overlapping batch.
enum Src<'a> {
    Raw(&'a Mmap),
    Compressed(&'a Opened, &'a std::path::Path, &'a Selection),
}

/// One group of a compressed segment, with the blocks to read.
struct GroupTask<'a> {
    seg: &'a Opened,
    path: &'a std::path::Path,
    group: usize,
    blocks: &'a [usize],
}

impl GroupTask<'_> {
    /// The matching lines of each of `blocks`, in ULID order; with a limit of N, only the
    /// first N of each (the last N newest first), as no more can be in the answer.
    fn parts(
        &self,
        blocks: &[usize],
        dec: &mut zstd::bulk::Decompressor<'static>,
        p: &QueryParams,
        matcher: &Matcher,
        corrupt: &AtomicU64,
    ) -> Vec<Vec<u8>> {
        let Some(footer) = &self.seg.footer else {
            return Vec::new();
        };
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(blocks.len());
        let mut buf = Vec::new();
        for &bi in blocks {
            let b = &footer.blocks[bi];
            if let Err(e) = segment::read_block(&self.seg.map, b, dec, &mut buf) {
                tracing::error!(segment = %self.path.display(), group = self.group, block = bi, error = %e, "skipping a corrupt block");
                corrupt.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut r = crate::search::time_range(&buf, p.from_ms, p.to_ms);
            let mut out = Vec::new();
            if matcher.is_all() {
                if let Some(n) = p.limit {
                    r = cut_lines(&buf, r, n as usize, p.desc);
                }
                out.extend_from_slice(&buf[r]);
            } else {
                for line in Matches::in_range(&buf, r, matcher) {
                    out.extend_from_slice(line);
                }
                if let Some(n) = p.limit {
                    let all = 0..out.len();
                    let keep = cut_lines(&out, all, n as usize, p.desc);
                    out.truncate(keep.end);
                    out.drain(..keep.start);
                }
            }
            parts.push(out);
        }
        parts
    }

    /// Decompress and search the selected blocks; the matching lines of the group, in ULID
    /// order. Unreadable blocks are logged and counted.
    fn run(
        &self,
        dec: &mut zstd::bulk::Decompressor<'static>,
        p: &QueryParams,
        matcher: &Matcher,
        corrupt: &AtomicU64,
    ) -> Vec<u8> {
        let mut parts = if p.limit.is_some() && self.blocks.len() >= 4 && parallelism() > 1 {
            // A query with a limit often needs only this group: both cores decompress it.
            let (left, right) = self.blocks.split_at(self.blocks.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| match segment::decompressor() {
                    Ok(mut d) => self.parts(right, &mut d, p, matcher, corrupt),
                    Err(_) => {
                        corrupt.fetch_add(right.len() as u64, Ordering::Relaxed);
                        Vec::new()
                    }
                });
                let mut parts = self.parts(left, dec, p, matcher, corrupt);
                parts.extend(other.join().unwrap_or_default());
                parts
            })
        } else {
            self.parts(self.blocks, dec, p, matcher, corrupt)
        };
        if parts.len() == 1 {
            return parts.pop().unwrap_or_default();
        }
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        let refs: Vec<&[u8]> = parts.iter().map(|v| &v[..]).collect();
        segment::merge_lines(&refs, &mut out);
        out
    }
}

/// Threads available to a query.
fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS)
}

/// The first `n` lines of `buf[r]` (the last `n` when `from_end`), `r` being whole lines.
fn cut_lines(
    buf: &[u8],
    r: std::ops::Range<usize>,
    n: usize,
    from_end: bool,
) -> std::ops::Range<usize> {
    if from_end {
        // The n-th newline from the end, not counting the last line's own.
        let body = &buf[r.start..r.end.saturating_sub(1).max(r.start)];
        match memchr::memrchr_iter(b'\n', body).nth(n.saturating_sub(1)) {
            Some(i) if n > 0 => r.start + i + 1..r.end,
            _ if n == 0 => r.end..r.end,
            _ => r,
        }
    } else {
        match memchr::memchr_iter(b'\n', &buf[r.clone()]).nth(n.saturating_sub(1)) {
            Some(i) if n > 0 => r.start..r.start + i + 1,
            _ if n == 0 => r.start..r.start,
            _ => r,
        }
    }
}

/// One unit of search work.
enum Task<'a> {
    /// A raw segment's piece or a compressed segment's group, of a segment that overlaps no
    /// other.
    One(Chunk<'a>),
    /// Overlapping segments, merged with dedup.
    Merge(Vec<Src<'a>>),
}

impl Task<'_> {
    /// Ask the kernel to start reading a compressed group's blocks now (`MADV_WILLNEED`), so a
    /// cold query's reads overlap the decompression of the groups before it. (Not for raw
    /// pieces: walking 8 MiB of cached pages cost a warm query more than it saved a cold one.)
    fn prefetch(&self) {
        use memmap2::Advice::WillNeed;
        if let Task::One(Chunk::Group(g)) = self
            && let Some(footer) = &g.seg.footer
        {
            for &bi in g.blocks {
                let b = &footer.blocks[bi];
                let _ = g
                    .seg
                    .map
                    .advise_range(WillNeed, b.offset as usize, b.stored_len as usize);
            }
        }
    }

    /// Whether workers run it (the emitting thread runs the rest in order).
    fn in_parallel(&self, matcher: &Matcher) -> bool {
        match self {
            Task::One(Chunk::Piece(..)) => !matcher.is_all(),
            Task::One(Chunk::Group(_)) => true,
            Task::Merge(_) => false,
        }
    }
}

/// A piece of work whose matching lines are produced whole.
enum Chunk<'a> {
    /// Lines `range` of a raw segment (moved to line boundaries when searched).
    Piece(&'a Mmap, std::ops::Range<usize>),
    /// Selected blocks of a compressed segment's group.
    Group(GroupTask<'a>),
}

impl Chunk<'_> {
    /// The chunk's matching lines in the query's order (newest first for `order=desc`). A
    /// group is decompressed with `dec`, made here the first time one is needed.
    fn output(
        &self,
        dec: &mut Option<zstd::bulk::Decompressor<'static>>,
        p: &QueryParams,
        matcher: &Matcher,
        corrupt: &AtomicU64,
    ) -> io::Result<Vec<u8>> {
        let out = match self {
            Chunk::Piece(m, r) => piece_matches(m, r.clone(), matcher),
            Chunk::Group(g) => {
                let d = match dec {
                    Some(d) => d,
                    None => dec.insert(segment::decompressor()?),
                };
                g.run(d, p, matcher, corrupt)
            }
        };
        Ok(if p.desc {
            merge::reverse_lines(&out)
        } else {
            out
        })
    }
}

/// The matching lines of `m` starting in `r`, copied.
fn piece_matches(m: &[u8], r: std::ops::Range<usize>, matcher: &Matcher) -> Vec<u8> {
    let r = align(m, r);
    if matcher.is_all() {
        return m[r].to_vec();
    }
    let mut out = Vec::new();
    for line in Matches::in_range(m, r, matcher) {
        out.extend_from_slice(line);
    }
    out
}

/// Cut `r` (a line start and a line end of a mapping) into pieces of [`PIECE`] bytes. The cuts
/// fall anywhere: a piece is moved to line boundaries by [`align`] only when it is searched,
/// so cutting touches no page (on a cold file each first touch reads megabytes around it).
fn pieces(r: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
    (r.start..r.end)
        .step_by(PIECE)
        .map(|start| start..(start + PIECE).min(r.end))
        .collect()
}

/// The lines of `m` that start in `r`: `r` moved forward to line boundaries (each line then
/// belongs to exactly one of a run of adjoining ranges).
fn align(m: &[u8], r: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let boundary = |at: usize| {
        if at == 0 || at >= m.len() || m[at - 1] == b'\n' {
            at.min(m.len())
        } else {
            memchr::memchr(b'\n', &m[at..]).map_or(m.len(), |i| at + i + 1)
        }
    };
    let start = boundary(r.start);
    start..boundary(r.end).max(start)
}

/// `r` (whole lines of `m`) cut into pieces of 1, 1, 2, 4 … MiB (up to [`PIECE`]) from its
/// start, or from its end when `from_end`; returned in that reading order.
fn graded_pieces(
    m: &[u8],
    r: std::ops::Range<usize>,
    from_end: bool,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (r.start, r.end);
    let mut size = 1 << 20;
    let mut k = 0;
    while lo < hi {
        if from_end {
            let mut start = hi.saturating_sub(size).max(lo);
            if start > lo {
                // Back to a line start.
                start = memchr::memrchr(b'\n', &m[lo..start]).map_or(lo, |i| lo + i + 1);
            }
            out.push(start..hi);
            hi = start;
        } else {
            let mut end = (lo + size).min(hi);
            if end < hi {
                end = memchr::memchr(b'\n', &m[end..hi]).map_or(hi, |i| end + i + 1);
            }
            out.push(lo..end);
            lo = end;
        }
        k += 1;
        if k > 1 {
            size = (size * 2).min(PIECE);
        }
    }
    out
}

/// One segment's matching lines as a merge source, one chunk (a compressed group, or a piece
/// of a raw segment read newest first) at a time, in the query's order.
struct ChunkSource<'a> {
    chunks: std::vec::IntoIter<Chunk<'a>>,
    dec: Option<zstd::bulk::Decompressor<'static>>,
    lines: merge::OwnedLines,
}

impl<'a> ChunkSource<'a> {
    fn new(
        mut chunks: Vec<Chunk<'a>>,
        p: &QueryParams,
        matcher: &Matcher,
        corrupt: &AtomicU64,
    ) -> io::Result<Self> {
        if p.desc {
            chunks.reverse();
        }
        let mut s = ChunkSource {
            chunks: chunks.into_iter(),
            dec: Some(segment::decompressor()?),
            lines: Default::default(),
        };
        s.fill(p, matcher, corrupt)?;
        Ok(s)
    }

    fn fill(&mut self, p: &QueryParams, matcher: &Matcher, corrupt: &AtomicU64) -> io::Result<()> {
        while self.lines.is_empty() {
            let Some(c) = self.chunks.next() else { break };
            self.lines
                .set(c.output(&mut self.dec, p, matcher, corrupt)?);
        }
        Ok(())
    }
}

/// A source of an overlapping batch.
enum BatchSource<'a, 'q> {
    Raw(MatchSource<'a>),
    Chunked(
        Box<ChunkSource<'a>>,
        &'q QueryParams,
        &'q Matcher,
        &'q AtomicU64,
    ),
}

impl merge::Source for BatchSource<'_, '_> {
    fn current(&self) -> Option<&[u8]> {
        match self {
            BatchSource::Raw(m) => m.current(),
            BatchSource::Chunked(g, ..) => g.lines.current(),
        }
    }
    fn advance(&mut self) -> io::Result<()> {
        match self {
            BatchSource::Raw(m) => m.advance(),
            BatchSource::Chunked(g, p, matcher, corrupt) => {
                g.lines.advance();
                g.fill(p, matcher, corrupt)
            }
        }
    }
}

/// Run a task straight into the sink; false if the sink said stop.
fn run_inline(
    task: &Task,
    p: &QueryParams,
    matcher: &Matcher,
    corrupt: &AtomicU64,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<bool> {
    match task {
        Task::One(Chunk::Piece(m, r)) if !p.desc => {
            let r = align(m, r.clone());
            if matcher.is_all() {
                // Every line of a piece is an answer: hand the range over whole.
                return Ok(sink(&m[r]));
            }
            for line in Matches::in_range(m, r, matcher) {
                if !sink(line) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Task::One(c) => {
            let out = c.output(&mut None, p, matcher, corrupt)?;
            Ok(out.is_empty() || sink(&out))
        }
        Task::Merge(srcs) => {
            let mut sources = Vec::with_capacity(srcs.len());
            for s in srcs {
                sources.push(match s {
                    Src::Raw(m) if !p.desc => BatchSource::Raw(MatchSource::new(Matches::new(
                        m, p.from_ms, p.to_ms, matcher,
                    ))),
                    Src::Raw(m) => {
                        let r = crate::search::time_range(m, p.from_ms, p.to_ms);
                        let chunks = pieces(r).into_iter().map(|r| Chunk::Piece(m, r));
                        BatchSource::Chunked(
                            Box::new(ChunkSource::new(chunks.collect(), p, matcher, corrupt)?),
                            p,
                            matcher,
                            corrupt,
                        )
                    }
                    Src::Compressed(o, path, sel) => {
                        let chunks = sel.iter().map(|(g, blocks)| {
                            Chunk::Group(GroupTask {
                                seg: o,
                                path,
                                group: *g,
                                blocks,
                            })
                        });
                        BatchSource::Chunked(
                            Box::new(ChunkSource::new(chunks.collect(), p, matcher, corrupt)?),
                            p,
                            matcher,
                            corrupt,
                        )
                    }
                });
            }
            let mut open = true;
            merge::merge_ordered(&mut sources, p.desc, |line| {
                open = sink(line);
                Ok(open)
            })?;
            Ok(open)
        }
    }
}

/// Search tasks on `workers` threads and emit every task's output in order.
#[allow(clippy::too_many_arguments)]
fn run_parallel(
    tasks: &[Task],
    workers: usize,
    prefetch: usize,
    p: &QueryParams,
    matcher: &Matcher,
    corrupt: &AtomicU64,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
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
                    if !tasks[i].in_parallel(matcher) {
                        continue; // run in order on the emitting thread
                    }
                    // Stay within the look-ahead of the output. A query with a limit may
                    // be done after its first task: it starts one task ahead and widens by
                    // one per task emitted.
                    let ahead = |done: usize| {
                        if p.limit.is_some() {
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
                        Task::One(c) => c.output(&mut dec, p, matcher, corrupt).unwrap_or_default(),
                        Task::Merge(_) => Vec::new(),
                    };
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                    ready.notify_all();
                }
            });
        }
        let result = (|| -> io::Result<()> {
            for (i, task) in tasks.iter().enumerate() {
                let open = if task.in_parallel(matcher) {
                    let mut slot = slots[i].lock().unwrap_or_else(|e| e.into_inner());
                    while slot.is_none() {
                        slot = ready.wait(slot).unwrap_or_else(|e| e.into_inner());
                    }
                    let out = slot.take().unwrap_or_default();
                    drop(slot);
                    out.is_empty() || sink(&out)
                } else {
                    run_inline(task, p, matcher, corrupt, sink)?
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

    fn params(pairs: &[(&str, &str)]) -> Result<QueryParams, String> {
        QueryParams::parse(&pairs.iter().copied().collect())
    }

    use super::super::log::test_segment as seg;

    #[test]
    fn pieces_aligned_when_searched_hold_every_line_once() {
        let mut m = Vec::new();
        let mut i = 0;
        while m.len() < 18 << 20 {
            m.extend_from_slice(format!("line {i} {}\n", "y".repeat(i % 500)).as_bytes());
            if i == 1000 {
                // A line longer than a piece.
                m.extend_from_slice(&vec![b'z'; PIECE + 100]);
                m.push(b'\n');
            }
            i += 1;
        }
        let first = memchr::memchr(b'\n', &m).unwrap() + 1;
        let r = first..m.len();
        let parts: Vec<std::ops::Range<usize>> = pieces(r.clone())
            .into_iter()
            .map(|p| align(&m, p))
            .collect();
        assert!(parts.len() >= 3);
        let mut at = r.start;
        for p in &parts {
            assert_eq!(p.start, at, "adjoining");
            assert!(p.is_empty() || m[p.start - 1] == b'\n');
            at = p.end;
        }
        assert_eq!(at, r.end);
    }

    #[test]
    fn graded_pieces_cover_the_range_at_line_boundaries() {
        let mut m = Vec::new();
        let mut i = 0;
        while m.len() < 20 << 20 {
            m.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 300)).as_bytes());
            i += 1;
        }
        for from_end in [false, true] {
            let r = 5..m.len();
            let r = memchr::memchr(b'\n', &m[..])
                .map_or(0, |i| i + 1)
                .max(r.start)..r.end;
            let mut pieces = graded_pieces(&m, r.clone(), from_end);
            assert!(pieces[0].len() <= (1 << 20) + 400 && pieces.len() > 4);
            if from_end {
                pieces.reverse();
            }
            assert_eq!(pieces.first().unwrap().start, r.start);
            assert_eq!(pieces.last().unwrap().end, r.end);
            for w in pieces.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert_eq!(m[w[0].end - 1], b'\n');
            }
        }
    }

    #[test]
    fn cutting_lines_from_either_end() {
        let b = b"a\nbb\nccc\n";
        let all = 0..b.len();
        let text = |r: std::ops::Range<usize>| String::from_utf8(b[r].to_vec()).unwrap();
        assert_eq!(text(cut_lines(b, all.clone(), 2, false)), "a\nbb\n");
        assert_eq!(text(cut_lines(b, all.clone(), 2, true)), "bb\nccc\n");
        assert_eq!(text(cut_lines(b, all.clone(), 1, true)), "ccc\n");
        assert_eq!(text(cut_lines(b, all.clone(), 5, true)), "a\nbb\nccc\n");
        assert_eq!(text(cut_lines(b, all.clone(), 5, false)), "a\nbb\nccc\n");
        assert_eq!(text(cut_lines(b, 2..5, 1, true)), "bb\n");
        assert_eq!(text(cut_lines(b, all, 0, true)), "");
    }

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
    fn parallel_pieces_come_out_in_order_and_can_stop_early() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        // One segment of three pieces and more, plus a separate small one after it.
        let mut big = Vec::new();
        let mut n = 0u64;
        while big.len() < 2 * PIECE + PIECE / 2 {
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
            asc.topics = topic.into_iter().map(String::from).collect();
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

    #[test]
    fn parameters() {
        let p = params(&[
            ("from", "01BC3NABW20000000000000000"),
            ("to", "2017-03-25T21:18:20.05731891Z"),
            ("q", "a b"),
        ])
        .unwrap();
        assert_eq!(p.from_ms, 1490476674946);
        assert_eq!(p.to_ms, 1490476700057);
        assert!(!p.regex);
        assert!(params(&[("regex", "")]).unwrap().regex);
        assert!(params(&[("regex", "true")]).unwrap().regex);
        assert!(
            !params(&[("regex", "false")]).unwrap().regex,
            "regex=false means false"
        );
        assert!(params(&[("regex", "yes")]).is_err());
        let e = params(&[("from", "yesterday")]).unwrap_err();
        assert_eq!(
            e,
            "parsing 'from': yesterday: can't parse as ULID or RFC3339 time"
        );
        assert!(params(&[("to", "0123456789012345678901234U")]).is_err());
        assert!(
            params(&[("to", "2017-03-25T21:18:20.12345Z")]).is_ok(),
            "26 chars, a time"
        );
    }
}
