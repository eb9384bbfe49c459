//! What a query reads of one segment, and the chunks it searches there.
//!
//! [`Reader::select`] decides, before the answer starts, what a query reads: of a raw segment
//! the `[from, to]` byte range found by binary search, of a compressed one, per group in
//! range, the blocks in range of the selected topics (and the mixed ones) not hidden by their
//! topic's retention and not ruled out by the needle filters. [`Reader::chunks`] cuts that
//! into units of work, which the caller searches in parallel and emits in order (a raw piece
//! of [`PIECE`](super::PIECE) bytes, or a group, whose blocks are decompressed, searched and merged), and
//! [`Reader::lines`] reads it as one merge source for segments that overlap others.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::footer::Footer;
use super::raw::{align, cut_lines, graded_pieces, pieces};
use super::source::Source;
use super::{Needles, Reader, block};
use crate::merge;
use crate::record::ulid_ms;
use crate::search::{Matcher, Matches};

/// What a query asks of a segment: its window, what it matches (expression, topics, hidden
/// expired records), its order and its limit.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// Lower time bound, inclusive, Unix ms.
    pub from_ms: u64,
    /// Upper time bound, inclusive, Unix ms.
    pub to_ms: u64,
    /// The expression, the topics and the expiry.
    pub matcher: &'a Matcher,
    /// Newest first.
    pub desc: bool,
    /// At most this many records in the answer.
    pub limit: Option<u64>,
    /// Set when the answer is no longer wanted (its client left, the node is stopping): the
    /// search stops at its next block or piece, whether or not it has output to write.
    pub cancel: &'a AtomicBool,
}

impl Query<'_> {
    /// Whether the answer is no longer wanted.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// A cancel flag that is never set, for searches nobody cancels.
pub static NEVER: AtomicBool = AtomicBool::new(false);

/// What a query reads of one segment, decided before its answer starts.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Per group in range, the blocks to read; `None` for a raw segment.
    groups: Option<Vec<(usize, Vec<usize>)>>,
    /// Bytes the search reads: the time range of a raw segment, the stored bytes of the blocks
    /// read and the filters consulted of a compressed one.
    pub bytes: u64,
    /// Blocks in the time range ruled out by their needle filter.
    pub blocks_skipped: u64,
    /// Blocks that will be read.
    pub blocks_read: u64,
}

/// What a segment's block filters are asked: for v4, the items each block must hold, the
/// segment's common ones left out; and whether the filters can rule out any block at all.
fn filter_items(footer: &super::Footer, needles: &Needles) -> (Option<Vec<Vec<Vec<u64>>>>, bool) {
    let items = (footer.version >= 4).then(|| needles.items(&footer.common));
    let filtering = match &items {
        Some(items) => !items.is_empty(),
        None => !needles.is_empty(),
    };
    (items, filtering)
}

/// The most bytes of a segment a query asks for all at once.
const PREFETCH_ALL: u64 = 64 << 20;

impl<S: Source> Reader<S> {
    /// Ask the source to start reading this compressed segment's needle filters (they lie
    /// together: one sweep), when `needles` can rule out any of its blocks. A query asks it of
    /// every segment before it selects blocks in any ([`Reader::select`] does not), so a cold
    /// query's filter reads overlap instead of waiting one segment at a time.
    pub fn prefetch_filters(&self, needles: &Needles) {
        if let Some(footer) = self.footer()
            && filter_items(footer, needles).1
            && let (Some(a), Some(z)) = (footer.blocks.first(), footer.blocks.last())
        {
            let end = z.filter_range().end.max(a.filter_offset);
            self.source().will_need(a.filter_offset..end);
        }
    }

    /// Decide what `q` reads of this segment (`needles`: what every match must contain).
    pub fn select(&self, q: &Query<'_>, needles: &Needles) -> Selection {
        let Some(footer) = self.footer() else {
            let bytes = self.raw().map_or(0, |m| {
                crate::search::time_range(m, q.from_ms, q.to_ms).len() as u64
            });
            return Selection {
                bytes,
                ..Default::default()
            };
        };
        let (items, filtering) = filter_items(footer, needles);
        let topics = &q.matcher.topics;
        // Per topic of the table: whether the query selects it, and its oldest visible ms.
        let wanted: Vec<bool> = footer
            .topics
            .iter()
            .map(|t| topics.matches(&t.name))
            .collect();
        let cutoffs: Vec<u64> = footer
            .topics
            .iter()
            .map(|t| q.matcher.expiry.as_ref().map_or(0, |e| (e.cutoff)(&t.name)))
            .collect();
        let mut sel = Selection::default();
        let mut chosen = Vec::new();
        let first = footer
            .groups
            .partition_point(|g| ulid_ms(&g.high) < q.from_ms);
        for (gi, g) in footer.groups.iter().enumerate().skip(first) {
            if ulid_ms(&g.low) > q.to_ms {
                break;
            }
            let mut blocks = Vec::new();
            for (bi, b) in footer.group_blocks(g).iter().enumerate() {
                let in_range = ulid_ms(&b.high) >= q.from_ms && ulid_ms(&b.low) <= q.to_ms;
                let own = b.topic as usize;
                if !in_range
                    || (b.topic != super::MIXED
                        && (!wanted[own] || ulid_ms(&b.high) < cutoffs[own]))
                {
                    continue;
                }
                if filtering {
                    sel.bytes += u64::from(b.filter_len);
                    let may = |f: &[u8]| match &items {
                        Some(items) => super::items::may_match(items, f),
                        None => needles.may_match(f),
                    };
                    if self.filter(b).is_some_and(|f| !may(&f)) {
                        sel.blocks_skipped += 1;
                        continue;
                    }
                }
                sel.bytes += u64::from(b.stored_len);
                sel.blocks_read += 1;
                blocks.push(g.first as usize + bi);
            }
            if !blocks.is_empty() {
                chosen.push((gi, blocks));
            }
        }
        // A cold query waits on its reads: ask for every chosen block (and the dictionary) now,
        // all at once, when the filters left few (a needle's), so the disk serves them in parallel
        // rather than group after group as decompression reaches them.
        if sel.blocks_read > 0 && sel.blocks_skipped > sel.blocks_read && sel.bytes <= PREFETCH_ALL
        {
            if let Some(d) = &footer.dict {
                self.source()
                    .will_need(d.offset..d.offset + u64::from(d.stored_len));
            }
            for (_, blocks) in &chosen {
                for &bi in blocks {
                    self.source().will_need(footer.blocks[bi].stored());
                }
            }
        }
        sel.groups = Some(chosen);
        sel
    }

    /// The selection cut into chunks, in ULID order: pieces of a raw segment's range, or the
    /// selected groups of a compressed one (`label` names the segment in logs).
    pub fn chunks<'a>(
        &'a self,
        sel: &'a Selection,
        q: &Query<'_>,
        label: &'a Path,
    ) -> Vec<Chunk<'a>>
    where
        S: 'a,
    {
        match (self.footer(), &sel.groups) {
            (None, _) => {
                let Some(m) = self.raw() else {
                    return Vec::new();
                };
                let r = crate::search::time_range(m, q.from_ms, q.to_ms);
                pieces(r).into_iter().map(|r| Chunk::Piece(m, r)).collect()
            }
            (Some(footer), Some(groups)) => groups
                .iter()
                .map(|(g, blocks)| {
                    Chunk::Group(GroupChunk {
                        footer,
                        src: self.source(),
                        label,
                        group: *g,
                        blocks,
                    })
                })
                .collect(),
            (Some(_), None) => Vec::new(),
        }
    }

    /// The selection's matching lines as one merge source, in the query's order: chunk by
    /// chunk (a raw segment in pieces too), so that a cancelled search stops within a piece,
    /// not at the end of a segment with no match in it.
    pub fn lines<'a>(
        &'a self,
        sel: &'a Selection,
        q: Query<'a>,
        label: &'a Path,
        corrupt: &'a AtomicU64,
    ) -> io::Result<ChunkSource<'a>>
    where
        S: 'a,
    {
        ChunkSource::new(self.chunks(sel, &q, label), q, corrupt)
    }
}

/// A piece of work whose matching lines are produced whole.
pub enum Chunk<'a> {
    /// Lines `range` of a raw segment (moved to line boundaries when searched).
    Piece(&'a [u8], Range<usize>),
    /// Selected blocks of a compressed segment's group.
    Group(GroupChunk<'a>),
}

/// One group of a compressed segment, with the blocks to read.
pub struct GroupChunk<'a> {
    footer: &'a Footer,
    src: &'a dyn Source,
    label: &'a Path,
    group: usize,
    blocks: &'a [usize],
}

impl<'a> Chunk<'a> {
    /// Whether it is a raw segment's piece.
    pub fn is_piece(&self) -> bool {
        matches!(self, Chunk::Piece(..))
    }

    /// For a query with a limit, which may be done within its first few records: a piece cut
    /// finer (1, 1, 2, 4 MiB … from the end it is read from), so the search stops early. Any
    /// other chunk is returned as it is.
    pub fn graded(self, from_end: bool) -> Vec<Chunk<'a>> {
        match self {
            Chunk::Piece(m, r) => graded_pieces(m, align(m, r), from_end)
                .into_iter()
                .map(|r| Chunk::Piece(m, r))
                .collect(),
            other => vec![other],
        }
    }

    /// Ask the source to start reading a group's blocks now (`MADV_WILLNEED` on a mapping), so
    /// a cold query's reads overlap the decompression of the groups before it. (Not for raw
    /// pieces: walking 8 MiB of cached pages cost a warm query more than it saved a cold one.)
    pub fn prefetch(&self) {
        if let Chunk::Group(g) = self {
            for &bi in g.blocks {
                g.src.will_need(g.footer.blocks[bi].stored());
            }
        }
    }

    /// The chunk's matching lines in the query's order (newest first for `desc`). A group is
    /// decompressed with `dec`, made here the first time one is needed; its unreadable blocks
    /// are logged, left out and counted in `corrupt`.
    pub fn output(
        &self,
        dec: &mut Option<zstd::bulk::Decompressor<'static>>,
        q: &Query<'_>,
        corrupt: &AtomicU64,
    ) -> io::Result<Vec<u8>> {
        let out = match self {
            Chunk::Piece(m, r) => piece_matches(m, r.clone(), q.matcher),
            Chunk::Group(g) => {
                let d = match dec {
                    Some(d) => d,
                    None => dec.insert(block::decompressor()?),
                };
                g.run(d, q, corrupt)
            }
        };
        Ok(if q.desc {
            merge::reverse_lines(&out)
        } else {
            out
        })
    }

    /// Search the chunk straight into `sink` (an oldest-first piece line by line, without a
    /// copy); false if the sink said stop.
    pub fn search_into(
        &self,
        q: &Query<'_>,
        corrupt: &AtomicU64,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<bool> {
        if q.cancelled() {
            return Ok(false);
        }
        if let (Chunk::Piece(m, r), false) = (self, q.desc) {
            let r = align(m, r.clone());
            if q.matcher.is_all() {
                // Every line of a piece is an answer: hand the range over whole.
                return Ok(sink(&m[r]));
            }
            for line in Matches::in_range(m, r, q.matcher) {
                if !sink(line) {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        let out = self.output(&mut None, q, corrupt)?;
        Ok(out.is_empty() || sink(&out))
    }
}

/// The matching lines of `m` starting in `r`, copied.
fn piece_matches(m: &[u8], r: Range<usize>, matcher: &Matcher) -> Vec<u8> {
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

/// Threads available to one search.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl GroupChunk<'_> {
    /// The matching lines of each of `blocks`, in ULID order; with a limit of N, only the
    /// first N of each (the last N newest first), as no more can be in the answer.
    fn parts(
        &self,
        blocks: &[usize],
        dec: &mut zstd::bulk::Decompressor<'static>,
        q: &Query<'_>,
        corrupt: &AtomicU64,
    ) -> Vec<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(blocks.len());
        let mut buf = Vec::new();
        for &bi in blocks {
            if q.cancelled() {
                break;
            }
            let b = &self.footer.blocks[bi];
            if let Err(e) = block::read(self.src, self.footer, b, dec, &mut buf) {
                tracing::error!(segment = %self.label.display(), group = self.group, block = bi, error = %e, "skipping a corrupt block");
                corrupt.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut r = crate::search::time_range(&buf, q.from_ms, q.to_ms);
            let mut out = Vec::new();
            if q.matcher.is_all() {
                if let Some(n) = q.limit {
                    r = cut_lines(&buf, r, n as usize, q.desc);
                }
                out.extend_from_slice(&buf[r]);
            } else {
                for line in Matches::in_range(&buf, r, q.matcher) {
                    out.extend_from_slice(line);
                }
                if let Some(n) = q.limit {
                    let keep = cut_lines(&out, 0..out.len(), n as usize, q.desc);
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
        q: &Query<'_>,
        corrupt: &AtomicU64,
    ) -> Vec<u8> {
        let mut parts = if q.limit.is_some() && self.blocks.len() >= 4 && parallelism() > 1 {
            // A query with a limit often needs only this group: both cores decompress it.
            let (left, right) = self.blocks.split_at(self.blocks.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| match block::decompressor() {
                    Ok(mut d) => self.parts(right, &mut d, q, corrupt),
                    Err(_) => {
                        corrupt.fetch_add(right.len() as u64, Ordering::Relaxed);
                        Vec::new()
                    }
                });
                let mut parts = self.parts(left, dec, q, corrupt);
                parts.extend(other.join().unwrap_or_default());
                parts
            })
        } else {
            self.parts(self.blocks, dec, q, corrupt)
        };
        if parts.len() == 1 {
            return parts.pop().unwrap_or_default();
        }
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        let refs: Vec<&[u8]> = parts.iter().map(|v| &v[..]).collect();
        block::merge_lines(&refs, &mut out);
        out
    }
}

/// One segment's matching lines as a merge source, one chunk (a compressed group, or a piece
/// of a raw segment read newest first) at a time, in the query's order.
pub struct ChunkSource<'a> {
    chunks: std::vec::IntoIter<Chunk<'a>>,
    dec: Option<zstd::bulk::Decompressor<'static>>,
    lines: merge::OwnedLines,
    q: Query<'a>,
    corrupt: &'a AtomicU64,
}

impl<'a> ChunkSource<'a> {
    /// Positioned on the first matching line of `chunks` (reversed for a newest-first query).
    pub fn new(
        mut chunks: Vec<Chunk<'a>>,
        q: Query<'a>,
        corrupt: &'a AtomicU64,
    ) -> io::Result<Self> {
        if q.desc {
            chunks.reverse();
        }
        let mut s = ChunkSource {
            chunks: chunks.into_iter(),
            dec: Some(block::decompressor()?),
            lines: Default::default(),
            q,
            corrupt,
        };
        s.fill()?;
        Ok(s)
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.lines.is_empty() && !self.q.cancelled() {
            let Some(c) = self.chunks.next() else { break };
            self.lines
                .set(c.output(&mut self.dec, &self.q, self.corrupt)?);
        }
        Ok(())
    }
}

impl merge::Source for ChunkSource<'_> {
    fn current(&self) -> Option<&[u8]> {
        self.lines.current()
    }
    fn advance(&mut self) -> io::Result<()> {
        self.lines.advance();
        self.fill()
    }
}
