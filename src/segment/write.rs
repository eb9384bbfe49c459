//! Writing a compressed segment (v4, or v3 or v2 when asked) from the bytes of a raw one.

use std::collections::HashMap;
use std::io::{self, Write};

use super::footer::{BLOCK_ENTRY_LEN, INDEX_MAGIC, INDEX_MAGIC_3, INDEX_MAGIC_4};
use super::items::ItemFilters;
use super::{
    Block, DictRef, END_MAGIC, FilterBuilder, Group, HEADER_LEN, MAGIC, MIXED, Source, TopicInfo,
    VERSION, VERSION_2, VERSION_3, columns,
};
use crate::record::{BODY_OFFSET, ULID_LEN, check_record};

/// How a segment is compressed (see FORMAT.md for the measurements behind the defaults).
#[derive(Clone, Debug)]
pub struct CompressConfig {
    /// zstd level (v2; v3 and v4 set zstd's parameters one by one, see `set_params`).
    pub level: i32,
    /// Raw bytes per block at most (a single longer record gets a block of its own).
    pub block_size: usize,
    /// Raw bytes per group at most: the unit cut into per-topic blocks, and what a reader
    /// holds decompressed at once.
    pub group_size: usize,
    /// Topics with blocks of their own, per group, at most; smaller ones share mixed blocks.
    pub max_topics: usize,
    /// The format written: [`VERSION`] (4), [`VERSION_3`] or [`VERSION_2`].
    pub version: u16,
    /// v3, v4: the dictionary's bytes at most (0: none).
    pub dict_size: usize,
    /// v3, v4: the dictionary's bytes at most, as a share of the raw segment (1/n).
    pub dict_share: usize,
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            level: 2,
            block_size: 1 << 20,
            group_size: 8 << 20,
            max_topics: 256,
            version: VERSION,
            dict_size: 8 << 20,
            dict_share: 16,
        }
    }
}

/// What [`compress`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records.
    pub records: u64,
    /// Raw bytes in.
    pub raw_bytes: u64,
    /// Bytes written (the whole file).
    pub file_bytes: u64,
    /// Blocks.
    pub blocks: u64,
    /// First ULID.
    pub low: [u8; ULID_LEN],
    /// Last ULID.
    pub high: [u8; ULID_LEN],
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The topic of a record line: its first word after the ULID.
fn topic_of(line: &[u8]) -> &[u8] {
    let body = line.get(BODY_OFFSET..).unwrap_or_default();
    // Topics are a few bytes: a plain loop beats setting up a vector search.
    let end = body
        .iter()
        .position(|&c| c == b' ' || c == b'\n')
        .unwrap_or(body.len());
    &body[..end]
}

struct Writer<W: Write> {
    w: W,
    at: u64,
    cfg: CompressConfig,
    version: u16,
    zstd: zstd::bulk::Compressor<'static>,
    /// v3, v4: the context compressing with the segment's dictionary.
    cctx: zstd::zstd_safe::CCtx<'static>,
    columns: columns::Encoder,
    cols: Vec<u8>,
    dict: Option<DictRef>,
    filters: FilterBuilder,
    /// v4: the item filters, their common items chosen before the first block.
    items: ItemFilters,
    frame: Vec<u8>,
    filter: Vec<u8>,
    /// Every block's filter, written together after the blocks (a needle query then reads
    /// them in one sequential sweep, not one seek per block).
    filter_region: Vec<u8>,
    blocks: Vec<Block>,
    groups: Vec<Group>,
    /// File-wide topic ids by first appearance: name, records, raw bytes.
    topics: Vec<TopicInfo>,
    topic_ids: HashMap<Vec<u8>, u32>,
    /// The runs of the group being cut, their buffers reused from group to group.
    runs: Vec<Run>,
}

/// The lines of one topic (or the mixed ones) in a group, in order.
#[derive(Default)]
struct Run {
    lines: Vec<u8>,
    /// Where each line ends in `lines`.
    ends: Vec<u32>,
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// The v3 and v4 compression parameters (FORMAT.md has the measurements): zstd's double-fast
/// search, its hash table large enough to index the whole dictionary, which every block refers
/// to in place (attached, not copied: a copy of the tables per block halved the speed), and a
/// window that reaches across it.
fn set_params(cctx: &mut zstd::zstd_safe::CCtx<'static>, dict_len: usize) -> io::Result<()> {
    use zstd::zstd_safe::{CParameter as P, DictAttachPref, Strategy};
    let log = (usize::BITS - dict_len.max(1 << 16).leading_zeros()).clamp(17, 23);
    for p in [
        P::Strategy(Strategy::ZSTD_dfast),
        P::WindowLog(log + 1),
        P::HashLog(log),
        P::ChainLog(16),
        P::SearchLog(1),
        P::MinMatch(5),
        P::ForceAttachDict(DictAttachPref::ForceAttach),
    ] {
        cctx.set_parameter(p).map_err(zstd_error)?;
    }
    Ok(())
}

/// A dictionary as written: its stored frame and its length once decompressed.
pub(super) struct DictFrame<'a> {
    stored: std::borrow::Cow<'a, [u8]>,
    raw: &'a [u8],
    raw_len: u32,
}

impl<W: Write> Writer<W> {
    /// A writer into `w` of a file of `version`, the file header written, and `dict` after it.
    fn start(
        w: W,
        cfg: &CompressConfig,
        version: u16,
        dict: Option<DictFrame<'_>>,
    ) -> io::Result<Self> {
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(cfg.level))
            .map_err(zstd_error)?;
        if version != VERSION_2 {
            set_params(&mut cctx, dict.as_ref().map_or(0, |d| d.raw_len as usize))?;
        }
        let mut wr = Writer {
            w,
            at: 0,
            zstd: zstd::bulk::Compressor::new(cfg.level)?,
            version,
            cctx,
            columns: columns::Encoder::default(),
            cols: Vec::new(),
            dict: None,
            cfg: cfg.clone(),
            filters: FilterBuilder::default(),
            items: ItemFilters::default(),
            frame: Vec::new(),
            filter: Vec::new(),
            filter_region: Vec::new(),
            blocks: Vec::new(),
            groups: Vec::new(),
            topics: Vec::new(),
            topic_ids: HashMap::new(),
            runs: Vec::new(),
        };
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&version.to_le_bytes());
        wr.put(&header)?;
        if let Some(d) = dict {
            wr.dict = Some(DictRef {
                offset: wr.at,
                stored_len: d.stored.len() as u32,
                raw_len: d.raw_len,
                crc: crc32fast::hash(&d.stored),
            });
            wr.put(&d.stored)?;
            if !d.raw.is_empty() {
                wr.cctx.load_dictionary(d.raw).map_err(zstd_error)?;
            }
        }
        Ok(wr)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// Compress `lines` (ULID-sorted records of one topic, or mixed) as one block.
    fn block(&mut self, lines: &[u8], records: u32, topic: u32) -> io::Result<()> {
        self.frame.clear();
        self.frame
            .reserve(zstd::zstd_safe::compress_bound(lines.len()));
        if self.version == VERSION_2 {
            self.zstd.compress_to_buffer(lines, &mut self.frame)?;
        } else {
            let name = self.topics.get(topic as usize).map(|t| &t.name[..]);
            self.columns.encode(lines, name, &mut self.cols);
            self.cctx
                .compress2(&mut self.frame, &self.cols)
                .map_err(zstd_error)?;
        }
        if self.version >= 4 {
            self.items.build(lines, &mut self.filter);
        } else {
            self.filters.build(lines, &mut self.filter);
        }
        let last = memchr::memrchr(b'\n', &lines[..lines.len() - 1]).map_or(0, |i| i + 1);
        let offset = self.at;
        let frame = std::mem::take(&mut self.frame);
        self.put(&frame)?;
        self.frame = frame;
        // Relative to the filter region until it is written.
        let filter_offset = self.filter_region.len() as u64;
        self.filter_region.extend_from_slice(&self.filter);
        self.blocks.push(Block {
            offset,
            stored_len: self.frame.len() as u32,
            raw_len: lines.len() as u32,
            records,
            topic,
            low: lines[..ULID_LEN].try_into().unwrap_or([b'0'; ULID_LEN]),
            high: lines[last..last + ULID_LEN]
                .try_into()
                .unwrap_or([b'0'; ULID_LEN]),
            crc: crc32fast::hash(&self.frame),
            filter_offset,
            filter_len: self.filter.len() as u32,
            filter_crc: crc32fast::hash(&self.filter),
        });
        Ok(())
    }

    /// A block of one run, counted in its topic.
    fn run_block(&mut self, lines: &[u8], records: u32, topic: u32) -> io::Result<()> {
        if let Some(t) = self.topics.get_mut(topic as usize) {
            t.records += u64::from(records);
            t.raw_bytes += lines.len() as u64;
        }
        self.block(lines, records, topic)
    }

    /// Cut one group (`raw`, holding the checked lines at `spans`) into per-topic blocks.
    fn group(&mut self, raw: &[u8], spans: &[(u32, u32)]) -> io::Result<()> {
        let starts = spans;
        let line = |i: usize| {
            let (s, e) = spans[i];
            &raw[s as usize..e as usize]
        };
        // Bytes per topic in this group.
        // One lookup per line: foldhash, seeded at random (topics come from clients), costs
        // a fraction of SipHash on keys of a few bytes.
        let mut local: HashMap<&[u8], (usize, u64), foldhash::fast::RandomState> =
            HashMap::with_hasher(foldhash::fast::RandomState::default());
        let mut topic_of_line = Vec::with_capacity(starts.len());
        for i in 0..starts.len() {
            let l = line(i);
            let next = local.len();
            let e = local.entry(topic_of(l)).or_insert((next, 0));
            e.1 += l.len() as u64;
            topic_of_line.push(e.0 as u32);
        }
        let mut by_size: Vec<(&[u8], usize, u64)> =
            local.iter().map(|(t, &(id, n))| (*t, id, n)).collect();
        by_size.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
        let min_own = (raw.len() / 512) as u64;
        let mut own: Vec<(&[u8], usize)> = by_size
            .iter()
            .take(self.cfg.max_topics)
            .filter(|(_, _, n)| *n >= min_own)
            .map(|(t, id, _)| (*t, *id))
            .collect();
        own.sort();
        // Local id → file-wide topic id, or MIXED.
        let mut file_id = vec![MIXED; local.len()];
        for (name, id) in &own {
            let next = self.topics.len() as u32;
            let fid = *self.topic_ids.entry(name.to_vec()).or_insert_with(|| {
                self.topics.push(TopicInfo {
                    name: name.to_vec(),
                    records: 0,
                    raw_bytes: 0,
                });
                next
            });
            file_id[*id] = fid;
        }
        let first = self.blocks.len() as u32;
        // The lines of each run: own topics in name order, then the mixed run.
        let mut run_of = vec![own.len(); local.len()];
        for (r, (_, id)) in own.iter().enumerate() {
            run_of[*id] = r;
        }
        // Each run's lines, gathered in one pass over the group in order: read once,
        // sequentially, rather than once per run by jumps (a third less time copying).
        let mut runs = std::mem::take(&mut self.runs);
        runs.resize_with(own.len() + 1, Run::default);
        for run in &mut runs {
            run.lines.clear();
            run.ends.clear();
        }
        for (i, &t) in topic_of_line.iter().enumerate() {
            let run = &mut runs[run_of[t as usize]];
            run.lines.extend_from_slice(line(i));
            run.ends.push(run.lines.len() as u32);
        }
        for (r, run) in runs.iter().enumerate() {
            let fid = own.get(r).map_or(MIXED, |(_, id)| file_id[*id]);
            // Blocks of whole lines, cut before the line that would take one past the size.
            let (mut from, mut to, mut records) = (0usize, 0usize, 0u32);
            for &end in &run.ends {
                let end = end as usize;
                if records > 0 && end - from > self.cfg.block_size {
                    self.run_block(&run.lines[from..to], records, fid)?;
                    (from, records) = (to, 0);
                }
                records += 1;
                to = end;
            }
            if records > 0 {
                self.run_block(&run.lines[from..to], records, fid)?;
            }
        }
        self.runs = runs;
        let last = line(starts.len() - 1);
        self.groups.push(Group {
            low: line(0)[..ULID_LEN].try_into().unwrap_or([b'0'; ULID_LEN]),
            high: last[..ULID_LEN].try_into().unwrap_or([b'0'; ULID_LEN]),
            first,
            count: self.blocks.len() as u32 - first,
        });
        Ok(())
    }
}

/// Compress the raw segment `raw` (ULID-sorted record lines, each ending in `\n`) into `w` as
/// a v2 file. A record repeating the ULID of the one before it is left out (a query would never
/// return it: merges keep the first of equal IDs). A record that is not well formed, or before
/// the one before it, is an `InvalidData` error naming it (nothing useful has been written
/// then). A record longer than [`super::MAX_BLOCK_RAW`] is an `InvalidInput` error: such a
/// segment stays raw.
pub fn compress(raw: &[u8], w: impl Write, cfg: &CompressConfig) -> io::Result<Summary> {
    let dict = (cfg.version != VERSION_2)
        .then(|| dictionary(raw, cfg.dict_size.min(raw.len() / cfg.dict_share.max(1))))
        .filter(|d| !d.is_empty());
    let frame = match &dict {
        Some(d) => Some(DictFrame {
            stored: zstd::bulk::compress(d, DICT_LEVEL)?.into(),
            raw: d,
            raw_len: d.len() as u32,
        }),
        None => None,
    };
    let version = match cfg.version {
        VERSION_2 | VERSION_3 => cfg.version,
        _ => VERSION,
    };
    let mut wr = Writer::start(w, cfg, version, frame)?;
    if version >= 4 {
        wr.items.sample(samples(raw, typical_block(raw, cfg)));
    }
    let mut records = 0u64;
    let mut prev: Option<&[u8]> = None;
    let mut group_start = 0usize;
    let mut starts: Vec<(u32, u32)> = Vec::new();
    let mut pos = 0usize;
    while pos < raw.len() {
        let Some(nl) = memchr::memchr(b'\n', &raw[pos..]) else {
            return Err(invalid(format!("record {records} has no newline")));
        };
        let end = pos + nl + 1;
        if end - pos > super::MAX_BLOCK_RAW {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "record {records} is {} bytes, more than a compressed block holds ({} MiB): the segment stays raw",
                    end - pos,
                    super::MAX_BLOCK_RAW >> 20
                ),
            ));
        }
        let id = check_record(&raw[pos..end - 1])
            .map_err(|e| invalid(format!("record {records}: {e}")))?;
        if prev.is_some_and(|p| id < p) {
            return Err(invalid(format!(
                "record {records} is not after the one before it"
            )));
        }
        if prev == Some(id) {
            pos = end; // the same ID again: the first one stands
            continue;
        }
        prev = Some(id);
        if !starts.is_empty() && end - group_start > cfg.group_size {
            wr.group(&raw[group_start..pos], &starts)?;
            starts.clear();
            group_start = pos;
        }
        starts.push(((pos - group_start) as u32, (end - group_start) as u32));
        records += 1;
        pos = end;
    }
    if !starts.is_empty() {
        wr.group(&raw[group_start..], &starts)?;
    }
    let (Some(first), Some(last)) = (wr.groups.first(), wr.groups.last()) else {
        return Err(invalid("no records".to_string()));
    };
    let (low, high) = (first.low, last.high);
    finish(wr, records, raw.len() as u64, low, high)
}

/// The raw size of a typical block of `raw`: a group's bytes shared by the topics that get
/// runs of their own in the first group (at least 4 KiB, at most a block).
fn typical_block(raw: &[u8], cfg: &CompressConfig) -> usize {
    let group = &raw[..raw.len().min(cfg.group_size)];
    let mut bytes: HashMap<&[u8], usize, foldhash::fast::RandomState> = HashMap::default();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', group) {
        *bytes.entry(topic_of(&group[start..end])).or_insert(0) += end + 1 - start;
        start = end + 1;
    }
    let own = bytes
        .values()
        .filter(|&&n| n >= group.len() / 512)
        .count()
        .min(cfg.max_topics);
    (group.len() / (own + 1)).clamp(4 << 10, cfg.block_size.max(4 << 10))
}

/// Up to [`super::items::SAMPLE_BLOCKS`] spans of `raw`'s lines, each about a block's size,
/// spread evenly over it: the blocks the common items are chosen from.
fn samples(raw: &[u8], block_size: usize) -> impl Iterator<Item = &[u8]> {
    let n = (raw.len() / block_size.max(1)).min(super::items::SAMPLE_BLOCKS);
    let step = raw.len() / n.max(1);
    (0..n).filter_map(move |i| {
        let at = i * step;
        let start = if at == 0 {
            0
        } else {
            at + memchr::memchr(b'\n', &raw[at..])? + 1
        };
        let end = (start + block_size).min(raw.len());
        let end = start + memchr::memrchr(b'\n', &raw[start..end])? + 1;
        Some(&raw[start..end])
    })
}

/// The zstd level of a stored dictionary: written once per segment, read once per segment
/// opened.
const DICT_LEVEL: i32 = 9;

/// The dictionary of the raw segment `raw`: at most `budget` bytes of its bodies, as a v3 or v4
/// block holds them (see `dict.rs`).
fn dictionary(raw: &[u8], budget: usize) -> Vec<u8> {
    if budget == 0 {
        return Vec::new();
    }
    let mut start = 0;
    let bodies = memchr::memchr_iter(b'\n', raw).filter_map(move |end| {
        let line = &raw[start..end];
        start = end + 1;
        columns::dict_body(line)
    });
    super::dict::choose(bodies, budget)
}

/// Write the filters, the index and the trailer after the blocks.
fn finish<W: Write>(
    mut wr: Writer<W>,
    records: u64,
    raw_bytes: u64,
    low: [u8; ULID_LEN],
    high: [u8; ULID_LEN],
) -> io::Result<Summary> {
    let filters_at = wr.at;
    let region = std::mem::take(&mut wr.filter_region);
    wr.put(&region)?;
    for b in &mut wr.blocks {
        b.filter_offset += filters_at;
    }
    // Topics in name order; blocks renumbered to match.
    let mut order: Vec<usize> = (0..wr.topics.len()).collect();
    order.sort_by(|&a, &b| wr.topics[a].name.cmp(&wr.topics[b].name));
    let mut renumber = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        renumber[old] = new as u32;
    }
    let mut index = Vec::with_capacity(64 + wr.blocks.len() * BLOCK_ENTRY_LEN);
    let has_dict = wr.version != VERSION_2;
    index.extend_from_slice(match wr.version {
        VERSION_2 => INDEX_MAGIC,
        VERSION_3 => INDEX_MAGIC_3,
        _ => INDEX_MAGIC_4,
    });
    index.extend_from_slice(&records.to_le_bytes());
    index.extend_from_slice(&raw_bytes.to_le_bytes());
    index.extend_from_slice(&low);
    index.extend_from_slice(&high);
    if has_dict {
        let d = wr.dict.clone().unwrap_or_default();
        index.extend_from_slice(&d.offset.to_le_bytes());
        index.extend_from_slice(&d.stored_len.to_le_bytes());
        index.extend_from_slice(&d.raw_len.to_le_bytes());
        index.extend_from_slice(&d.crc.to_le_bytes());
    }
    if wr.version >= 4 {
        index.extend_from_slice(&(wr.items.common.len() as u32).to_le_bytes());
        index.extend_from_slice(&wr.items.common);
    }
    index.extend_from_slice(&(order.len() as u32).to_le_bytes());
    for &i in &order {
        let t = &wr.topics[i];
        let name = &t.name[..t.name.len().min(u16::MAX as usize)];
        index.extend_from_slice(&(name.len() as u16).to_le_bytes());
        index.extend_from_slice(name);
        index.extend_from_slice(&t.records.to_le_bytes());
        index.extend_from_slice(&t.raw_bytes.to_le_bytes());
    }
    index.extend_from_slice(&(wr.groups.len() as u32).to_le_bytes());
    for g in &wr.groups {
        index.extend_from_slice(&g.low);
        index.extend_from_slice(&g.high);
        index.extend_from_slice(&g.first.to_le_bytes());
        index.extend_from_slice(&g.count.to_le_bytes());
    }
    index.extend_from_slice(&(wr.blocks.len() as u32).to_le_bytes());
    for b in &wr.blocks {
        let topic = if b.topic == MIXED {
            MIXED
        } else {
            renumber[b.topic as usize]
        };
        index.extend_from_slice(&b.offset.to_le_bytes());
        index.extend_from_slice(&b.stored_len.to_le_bytes());
        index.extend_from_slice(&b.raw_len.to_le_bytes());
        index.extend_from_slice(&b.records.to_le_bytes());
        index.extend_from_slice(&topic.to_le_bytes());
        index.extend_from_slice(&b.low);
        index.extend_from_slice(&b.high);
        index.extend_from_slice(&b.crc.to_le_bytes());
        index.extend_from_slice(&b.filter_offset.to_le_bytes());
        index.extend_from_slice(&b.filter_len.to_le_bytes());
        index.extend_from_slice(&b.filter_crc.to_le_bytes());
    }
    let index_offset = wr.at;
    wr.put(&index)?;
    let mut trailer = [0u8; super::TRAILER_LEN];
    trailer[..8].copy_from_slice(&index_offset.to_le_bytes());
    trailer[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    trailer[16..20].copy_from_slice(&crc32fast::hash(&index).to_le_bytes());
    trailer[20..22].copy_from_slice(&wr.version.to_le_bytes());
    trailer[24..32].copy_from_slice(END_MAGIC);
    wr.put(&trailer)?;
    wr.w.flush()?;
    Ok(Summary {
        records,
        raw_bytes,
        file_bytes: wr.at,
        blocks: wr.blocks.len() as u64,
        low,
        high,
    })
}

/// Write a copy of the v2 segment `src` (whose index is `footer`) holding only the blocks that
/// `keep` accepts (given each block's index): their compressed bytes and filters are copied as
/// they are, each checked against its CRC first. Returns what was written (with the new first
/// and last ULID), or `None` (nothing written) when no block is kept. A block that fails its
/// CRC is an `InvalidData` error.
pub(super) fn copy_blocks(
    src: &(impl Source + ?Sized),
    footer: &super::Footer,
    keep: &dyn Fn(usize) -> bool,
    w: impl Write,
) -> io::Result<Option<Summary>> {
    let kept: Vec<usize> = (0..footer.blocks.len()).filter(|&i| keep(i)).collect();
    if kept.is_empty() {
        return Ok(None);
    }
    // Nothing is compressed here: the blocks (and the dictionary) go as they are.
    let frame = match &footer.dict {
        Some(d) => {
            let stored = src.read(d.offset..d.offset + u64::from(d.stored_len))?;
            if crc32fast::hash(&stored) != d.crc {
                return Err(invalid("the dictionary fails its checksum".to_string()));
            }
            Some(DictFrame {
                stored,
                raw: &[],
                raw_len: d.raw_len,
            })
        }
        None => None,
    };
    let mut wr = Writer::start(w, &CompressConfig::default(), footer.version, frame)?;
    // The blocks' filters were made against this segment's common items: they go too.
    wr.items.common = footer.common.clone();
    let (mut records, mut raw_bytes) = (0u64, 0u64);
    for g in &footer.groups {
        let first = wr.blocks.len() as u32;
        let (mut low, mut high) = ([b'Z'; ULID_LEN], [b'0'; ULID_LEN]);
        for i in g.first as usize..(g.first + g.count) as usize {
            if kept.binary_search(&i).is_err() {
                continue;
            }
            let b = &footer.blocks[i];
            let frame = src.read(b.stored())?;
            if crc32fast::hash(&frame) != b.crc {
                return Err(invalid(format!("block {i} fails its checksum")));
            }
            let filter = src.read(b.filter_range())?;
            let topic = if b.topic == MIXED {
                MIXED
            } else {
                let name = &footer.topics[b.topic as usize].name;
                let next = wr.topics.len() as u32;
                let id = *wr.topic_ids.entry(name.clone()).or_insert(next);
                if id == next {
                    wr.topics.push(TopicInfo {
                        name: name.clone(),
                        records: 0,
                        raw_bytes: 0,
                    });
                }
                let t = &mut wr.topics[id as usize];
                t.records += u64::from(b.records);
                t.raw_bytes += u64::from(b.raw_len);
                id
            };
            let offset = wr.at;
            wr.put(&frame)?;
            let filter_offset = wr.filter_region.len() as u64;
            wr.filter_region.extend_from_slice(&filter);
            wr.blocks.push(Block {
                offset,
                topic,
                filter_offset,
                ..b.clone()
            });
            low = low.min(b.low);
            high = high.max(b.high);
            records += u64::from(b.records);
            raw_bytes += u64::from(b.raw_len);
        }
        let count = wr.blocks.len() as u32 - first;
        if count > 0 {
            wr.groups.push(Group {
                low,
                high,
                first,
                count,
            });
        }
    }
    let low = wr.groups.first().map(|g| g.low).unwrap_or_default();
    let high = wr.groups.last().map(|g| g.high).unwrap_or_default();
    finish(wr, records, raw_bytes, low, high).map(Some)
}
