//! Compaction: the segment overlapping the most others merged with them, or a run of small
//! raw neighbours merged up to the target size; every line checked on the way, the output cut
//! at the target size.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::{Compacter, Failure};
use crate::merge::{self, Source};
use crate::record::{ULID_LEN, check_record, ulid_ms};
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
                crate::failpoint::crash("compact-before-remove");
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
            crate::failpoint::crash("compact-after-an-output");
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

/// How much larger than its largest input a merge's output must be: twice for sequential
/// compaction, one and a half for overlapping (a late replica of most of a segment, or a
/// retried one, is merged; a few late records are not worth rewriting a large segment).
pub const SEQUENTIAL_GROWTH: (u64, u64) = (2, 1);
/// See [`SEQUENTIAL_GROWTH`].
pub const OVERLAPPING_GROWTH: (u64, u64) = (3, 2);

/// The overlapping merges worth their writes: a merge may rewrite a segment only if it grows
/// by [`OVERLAPPING_GROWTH`] or takes in as much again within its own time range, so each byte
/// is rewritten once per such growth, never once per small neighbour (a trickle of tiny
/// segments next to a 118 MiB one rewrote it each time: 588 MiB written for 30 lines). A
/// member under half the target grows when its output piece (the merge's total, cut at
/// `target`) is 1.5× it; a member at size (half the target or more, as sequential compaction
/// leaves them) does not grow, so it is rewritten only when the others hold half its size
/// again within its range (a replica, a retried copy), estimated from their sizes in
/// proportion to the share of their time range that falls in its: late records spread over
/// a week never rewrite the week's compressed segments one by one. Members under half the
/// target that have all `settled` (written `-store.segment-settle` ago) merge whatever their
/// growth, as sequential compaction's settled runs do: the small late segments that growth
/// alone leaves beside each other are gathered, each rewritten at most once per settle. `sizes` of the members (in
/// raw bytes); those that fail are left out until the rest qualify. The indices kept, in
/// order; empty when fewer than two remain.
pub fn worth_merging(
    segs: &[Segment],
    members: &[usize],
    sizes: &dyn Fn(usize) -> u64,
    target: u64,
    settled: &dyn Fn(usize) -> bool,
) -> Vec<usize> {
    // Each member's size, time range and settledness, asked once (a size may be read from a
    // footer, settledness from the file's metadata).
    struct Member {
        index: usize,
        size: u64,
        lo: u64,
        hi: u64,
        small_settled: bool,
    }
    let mut kept: Vec<Member> = members
        .iter()
        .map(|&index| {
            let s = &segs[index];
            let (lo, hi) = (ulid_ms(&s.low), ulid_ms(&s.high));
            let size = sizes(index);
            Member {
                index,
                size,
                lo,
                hi: hi.max(lo) + 1,
                small_settled: is_small(size, target) && settled(index),
            }
        })
        .collect();
    let (g_num, g_den) = OVERLAPPING_GROWTH;
    loop {
        if kept.len() < 2 {
            return Vec::new();
        }
        let total: u64 = kept.iter().map(|m| m.size).sum();
        let piece = total.min(target.max(1));
        let gathered = kept.iter().filter(|m| m.small_settled).count() >= 2;
        let fails = |m: &Member| {
            if gathered && m.small_settled {
                return false;
            }
            // A member under half the target grows in the merge's output (made of its
            // overlapping neighbours and their neighbours, as sequential compaction would);
            // one at size does not, whatever the merge's total.
            if is_small(m.size, target)
                && piece.saturating_mul(g_den) >= m.size.saturating_mul(g_num)
            {
                return false;
            }
            let within: u64 = kept
                .iter()
                .filter(|o| o.index != m.index)
                .map(|o| {
                    let shared = m.hi.min(o.hi).saturating_sub(m.lo.max(o.lo));
                    (o.size as u128 * shared as u128 / (o.hi - o.lo) as u128) as u64
                })
                .sum();
            // As much again as half of it: what one and a half times asks of a merge.
            within.saturating_mul(g_den) < m.size.saturating_mul(g_num - g_den)
        };
        // Leaving members out only makes the others fail more (a smaller total, less
        // within their ranges, fewer settled to gather with), so every member failing now
        // is left out at once: the set kept is the same as leaving them out one by one.
        let failing: Vec<bool> = kept.iter().map(fails).collect();
        if !failing.contains(&true) {
            return kept.into_iter().map(|m| m.index).collect();
        }
        let mut at = 0;
        kept.retain(|_| {
            at += 1;
            !failing[at - 1]
        });
    }
}

/// Whether a segment of `size` bytes is under half the `target` size: the segments sequential
/// compaction merges, and those an overlapping merge may grow.
pub fn is_small(size: u64, target: u64) -> bool {
    size < target / 2
}

/// Indices of the segments of `segs` that overlap `a` (`a` among them, if it is in `segs`).
pub fn overlapping(segs: &[Segment], a: &Segment) -> Vec<usize> {
    segs.iter()
        .enumerate()
        .filter(|(_, b)| overlap((a.low, a.high), (b.low, b.high)))
        .map(|(j, _)| j)
        .collect()
}

/// Indices of the largest set of segments worth merging ([`worth_merging`]) among one that
/// overlaps others and those others; empty when there is none. `segs` must be sorted by low
/// ULID; `raw_size` gives a segment's size as raw records (a compressed file is several times
/// smaller than what a merge reads and writes); outputs are cut at `target`; `settled` tells
/// a segment written long enough ago.
pub fn choose_overlapping(
    segs: &[Segment],
    raw_size: &dyn Fn(&Segment) -> u64,
    target: u64,
    settled: &dyn Fn(&Segment) -> bool,
) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    let size = |i: usize| raw_size(&segs[i]);
    // A segment that overlaps nothing (none before it reaches its low, the next starts after
    // its high) is passed over without a scan: a store of thousands of them costs O(n).
    let mut reach = [0u8; ULID_LEN];
    for (i, a) in segs.iter().enumerate() {
        let before = reach;
        reach = reach.max(a.high);
        let alone = (i == 0 || before < a.low) && segs.get(i + 1).is_none_or(|b| b.low > a.high);
        if alone {
            continue;
        }
        let group = overlapping(segs, a);
        if group.len() <= best.len() {
            continue;
        }
        let kept = worth_merging(segs, &group, &size, target, &|i| settled(&segs[i]));
        if kept.len() > best.len() {
            best = kept;
        }
    }
    best
}

/// Sequential compaction's choice among `segs` (ULID-sorted raw neighbours): the first run of
/// at least two consecutive segments under half of `target`, adding up to at most `target`
/// (and [`MAX_RUN`] members), that is worth merging: because it makes a segment of at least
/// half the target (each byte rewritten once to reach size), or because every member has
/// settled (its newest record is older than `settle` at `now_ms`), the run spans `settle` of
/// time or more (or has [`MAX_RUN`] members), and no member is more than half the run; or
/// because it has [`GATHER`] members or more, settled or not, and none is more than a
/// sixteenth of the run (a level of like sizes). The small segments of a trickle (one per `-store.segment-target-age`, four a
/// second) are gathered [`GATHER`] at a time as they come, and those in rounds that at least
/// double them, so the files of the last hour stay a few hundred at most; a segment at size is
/// never rewritten by this.
///
/// The original (`chooseFirstSequential`) merged the first run that fit in the target,
/// whatever its sizes.
pub fn choose_sequential(
    segs: &[Segment],
    target: u64,
    now_ms: u64,
    settle: std::time::Duration,
) -> Vec<usize> {
    let settle_ms = settle.as_millis() as u64;
    let small = |s: &Segment| is_small(s.size, target);
    let settled = |s: &Segment| crate::record::ulid_ms(&s.high) + settle_ms < now_ms;
    // Sizes summed, and where each stretch of small segments ends: a start whose members are
    // not settled and cannot add up to half the target is passed over without a scan (a
    // store of many fresh small segments costs O(n), not O(n²)).
    let mut sums = vec![0u64; segs.len() + 1];
    for (i, s) in segs.iter().enumerate() {
        sums[i + 1] = sums[i] + s.size;
    }
    // Where each stretch of small segments, and of settled small segments, ends.
    let mut stretch_end = vec![segs.len(); segs.len()];
    let mut settled_end = vec![segs.len(); segs.len()];
    for i in (0..segs.len()).rev() {
        let next = |v: &[usize]| v.get(i + 1).copied().unwrap_or(segs.len());
        stretch_end[i] = if small(&segs[i]) {
            next(&stretch_end)
        } else {
            i
        };
        settled_end[i] = if small(&segs[i]) && settled(&segs[i]) {
            next(&settled_end)
        } else {
            i
        };
    }
    for start in 0..segs.len() {
        let end = stretch_end[start].min(start + MAX_RUN);
        let settled_to = settled_end[start].min(end);
        // No rule can hold from here: pass over it without a scan.
        let many = end - start >= GATHER;
        let spans = settled_to > start + 1
            && (settled_to - start >= MAX_RUN
                || crate::record::ulid_ms(&segs[settled_to - 1].high)
                    .saturating_sub(crate::record::ulid_ms(&segs[start].low))
                    >= settle_ms);
        if !spans && !many && sums[end] - sums[start] < target / 2 {
            continue;
        }
        let (mut total, mut largest) = (0u64, 0u64);
        let mut all_settled = true;
        let mut best = None;
        for (j, s) in segs.iter().enumerate().skip(start).take(MAX_RUN) {
            if !small(s) || total + s.size > target {
                break;
            }
            total += s.size;
            largest = largest.max(s.size);
            all_settled &= settled(s);
            if j == start {
                continue;
            }
            if total >= target / 2 {
                return (start..=j).collect();
            }
            let span = crate::record::ulid_ms(&s.high)
                .saturating_sub(crate::record::ulid_ms(&segs[start].low));
            let grown = largest * SEQUENTIAL_GROWTH.0 <= total * SEQUENTIAL_GROWTH.1;
            let long = span >= settle_ms || j + 1 - start == MAX_RUN;
            // Gathered: many segments of about one size (a level), not one merged earlier
            // with a few new ones (that would rewrite it every GATHER segments).
            let gathered = j + 1 - start >= GATHER && largest * (GATHER as u64 / 4) <= total;
            if grown && (gathered || (all_settled && long)) {
                best = Some(j);
            }
        }
        if let Some(j) = best {
            return (start..=j).collect();
        }
    }
    Vec::new()
}

/// The most segments one sequential compaction merges.
pub const MAX_RUN: usize = 1000;

/// Small neighbours merged as soon as there are this many, settled or not (and they at least
/// double the largest of them).
pub const GATHER: usize = 64;
