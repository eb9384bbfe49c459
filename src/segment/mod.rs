//! Store segment formats, as a library of their own: the raw format (v1, the original's: sorted
//! record lines) and the compressed format (v2: records in zstd blocks grouped by topic, each
//! block with its ULID range, a CRC-32 and a trigram needle filter, indexed by a footer). The
//! byte layout, and why it is so, is in `FORMAT.md` beside this file.
//!
//! Both formats hold the same thing, ULID-sorted record lines; a v2 file decompresses to
//! exactly the bytes of the raw segment it was made from. The query path, compaction and
//! `oklog segment` read either through this module. A file's format is told by its first
//! bytes: a raw segment starts with a ULID, whose first character is a digit; a v2 file starts
//! with `OKLOGSEG`.

pub mod filter;
mod write;

use std::fmt;
use std::io;

pub use filter::{FilterBuilder, Needles};
pub use write::{CompressConfig, Summary, compress, copy_blocks};

use crate::record::{ULID_LEN, is_valid_ulid};

/// First bytes of a v2 file.
pub const MAGIC: &[u8; 8] = b"OKLOGSEG";
/// Last bytes of a v2 file.
pub const END_MAGIC: &[u8; 8] = b"OKLOGEND";
/// The compressed format's version.
pub const VERSION: u16 = 2;
/// Header bytes: magic, version, reserved.
pub const HEADER_LEN: usize = 16;
/// Trailer bytes: index offset, index length, index CRC, version, reserved, end magic.
pub const TRAILER_LEN: usize = 32;
/// Topic index of a block holding records of several small topics.
pub const MIXED: u32 = u32::MAX;
/// The index's own magic, first bytes of the index.
const INDEX_MAGIC: &[u8; 4] = b"IDX2";
/// Encoded size of one block entry in the index.
const BLOCK_ENTRY_LEN: usize = 8 + 4 + 4 + 4 + 4 + ULID_LEN * 2 + 4 + 8 + 4 + 4;

/// A segment file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// v1: record lines, as the original writes them.
    Raw,
    /// v2: compressed blocks with a footer index.
    Compressed,
}

impl Format {
    /// The format of a file starting with `head` (its first bytes, any length).
    pub fn of(head: &[u8]) -> Format {
        if head.starts_with(MAGIC) {
            Format::Compressed
        } else {
            Format::Raw
        }
    }

    /// `raw` or `compressed`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Compressed => "compressed",
        }
    }
}

/// Why a v2 file's index cannot be read (the file is then unusable as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn bad(why: impl Into<String>) -> FormatError {
    FormatError(why.into())
}

/// Why one block cannot be read (the rest of the file still can).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// The stored bytes do not match the block's CRC-32.
    Checksum,
    /// The bytes pass the CRC but do not decompress to the recorded length.
    Decompress(String),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Checksum => f.write_str("block checksum mismatch"),
            BlockError::Decompress(e) => write!(f, "block does not decompress: {e}"),
        }
    }
}

/// A topic with blocks of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic (the record's first word after the ULID).
    pub name: Vec<u8>,
    /// Records.
    pub records: u64,
    /// Raw bytes of those records.
    pub raw_bytes: u64,
}

/// A group: a contiguous ULID range of the segment, whose records are cut into per-topic
/// blocks. Every record of group `g` sorts before every record of group `g + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// First ULID.
    pub low: [u8; ULID_LEN],
    /// Last ULID.
    pub high: [u8; ULID_LEN],
    /// Its blocks: `blocks[first..first + count]`.
    pub first: u32,
    /// How many.
    pub count: u32,
}

/// One compressed block: records of one topic (or of the mixed small topics), ULID-sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// File offset of the zstd frame.
    pub offset: u64,
    /// Stored (compressed) bytes.
    pub stored_len: u32,
    /// Raw bytes once decompressed.
    pub raw_len: u32,
    /// Records.
    pub records: u32,
    /// Index into the topic table, or [`MIXED`].
    pub topic: u32,
    /// First ULID.
    pub low: [u8; ULID_LEN],
    /// Last ULID.
    pub high: [u8; ULID_LEN],
    /// CRC-32 (IEEE) of the stored bytes.
    pub crc: u32,
    /// File offset of the needle filter.
    pub filter_offset: u64,
    /// Its length in bytes.
    pub filter_len: u32,
    /// CRC-32 of the filter: a damaged filter is never trusted to skip a block.
    pub filter_crc: u32,
}

/// The parsed footer of a v2 file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Records in the file.
    pub records: u64,
    /// Bytes of the raw segment the file decompresses to.
    pub raw_bytes: u64,
    /// First ULID.
    pub low: [u8; ULID_LEN],
    /// Last ULID.
    pub high: [u8; ULID_LEN],
    /// Topics with blocks of their own, in name order.
    pub topics: Vec<TopicInfo>,
    /// Groups, in ULID order.
    pub groups: Vec<Group>,
    /// Blocks, group by group.
    pub blocks: Vec<Block>,
}

/// A little-endian cursor over the index bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(bad("index is truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn ulid(&mut self) -> Result<[u8; ULID_LEN], FormatError> {
        let b = self.take(ULID_LEN)?;
        if !is_valid_ulid(b) {
            return Err(bad("index holds an invalid ULID"));
        }
        Ok(b.try_into().unwrap_or([b'0'; ULID_LEN]))
    }
}

impl Footer {
    /// Read the footer of a whole v2 file. Every offset and length is checked against the
    /// file, so a reader never slices out of bounds whatever the bytes.
    pub fn parse(file: &[u8]) -> Result<Footer, FormatError> {
        let len = file.len();
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(bad("too short for a compressed segment"));
        }
        if &file[..8] != MAGIC {
            return Err(bad("no compressed-segment magic"));
        }
        let version = u16::from_le_bytes([file[8], file[9]]);
        if version != VERSION {
            return Err(bad(format!("unknown segment format version {version}")));
        }
        let t = &file[len - TRAILER_LEN..];
        if &t[24..32] != END_MAGIC {
            return Err(bad("trailer is missing (torn file?)"));
        }
        let mut c = Cursor(t);
        let (index_offset, index_len, index_crc) = (c.u64()?, c.u64()?, c.u32()?);
        let index_end = index_offset.checked_add(index_len);
        if index_offset < HEADER_LEN as u64
            || index_end.is_none_or(|e| e > (len - TRAILER_LEN) as u64)
        {
            return Err(bad("index lies outside the file"));
        }
        let index = &file[index_offset as usize..(index_offset + index_len) as usize];
        if crc32fast::hash(index) != index_crc {
            return Err(bad("index checksum mismatch"));
        }
        let mut c = Cursor(index);
        if c.take(4)? != INDEX_MAGIC {
            return Err(bad("index magic missing"));
        }
        let records = c.u64()?;
        let raw_bytes = c.u64()?;
        let low = c.ulid()?;
        let high = c.ulid()?;
        let n_topics = c.u32()? as usize;
        let mut topics = Vec::with_capacity(n_topics.min(c.0.len() / 18));
        for _ in 0..n_topics {
            let n = c.u16()? as usize;
            let name = c.take(n)?.to_vec();
            topics.push(TopicInfo {
                name,
                records: c.u64()?,
                raw_bytes: c.u64()?,
            });
        }
        let n_groups = c.u32()? as usize;
        let mut groups = Vec::with_capacity(n_groups.min(c.0.len() / 60));
        for _ in 0..n_groups {
            groups.push(Group {
                low: c.ulid()?,
                high: c.ulid()?,
                first: c.u32()?,
                count: c.u32()?,
            });
        }
        let n_blocks = c.u32()? as usize;
        if c.0.len() != n_blocks.saturating_mul(BLOCK_ENTRY_LEN) {
            return Err(bad("index block table has the wrong size"));
        }
        let mut blocks = Vec::with_capacity(n_blocks);
        for _ in 0..n_blocks {
            let b = Block {
                offset: c.u64()?,
                stored_len: c.u32()?,
                raw_len: c.u32()?,
                records: c.u32()?,
                topic: c.u32()?,
                low: c.ulid()?,
                high: c.ulid()?,
                crc: c.u32()?,
                filter_offset: c.u64()?,
                filter_len: c.u32()?,
                filter_crc: c.u32()?,
            };
            let inside = |off: u64, n: u32| {
                off >= HEADER_LEN as u64 && off.saturating_add(u64::from(n)) <= index_offset
            };
            if !inside(b.offset, b.stored_len) || !inside(b.filter_offset, b.filter_len) {
                return Err(bad("a block lies outside the file's data"));
            }
            if b.topic != MIXED && b.topic as usize >= topics.len() {
                return Err(bad("a block names a topic that is not in the table"));
            }
            if b.low > b.high || b.records == 0 {
                return Err(bad("a block's range is empty or reversed"));
            }
            blocks.push(b);
        }
        let mut next = 0u64;
        for g in &groups {
            if u64::from(g.first) != next || g.count == 0 || g.low > g.high {
                return Err(bad("groups do not cover the blocks in order"));
            }
            next += u64::from(g.count);
        }
        if next != blocks.len() as u64 {
            return Err(bad("groups do not cover every block"));
        }
        Ok(Footer {
            records,
            raw_bytes,
            low,
            high,
            topics,
            groups,
            blocks,
        })
    }

    /// The blocks of group `g`.
    pub fn group_blocks(&self, g: &Group) -> &[Block] {
        let start = g.first as usize;
        &self.blocks[start..start + g.count as usize]
    }

    /// Stored bytes of all blocks.
    pub fn stored_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.stored_len)).sum()
    }

    /// The topic of a block, for display: its name, or `*mixed*`.
    pub fn topic_name(&self, b: &Block) -> &[u8] {
        match self.topics.get(b.topic as usize) {
            Some(t) => &t.name,
            None => b"*mixed*",
        }
    }
}

/// The needle filter bytes of `block` in `file`; `None` if they fail their checksum (then
/// the block must be read).
pub fn filter<'a>(file: &'a [u8], block: &Block) -> Option<&'a [u8]> {
    let start = block.filter_offset as usize;
    let f = file.get(start..start + block.filter_len as usize)?;
    (crc32fast::hash(f) == block.filter_crc).then_some(f)
}

/// Check and decompress `block` of `file` into `out` (cleared first): the block's record lines.
pub fn read_block(
    file: &[u8],
    block: &Block,
    dec: &mut zstd::bulk::Decompressor<'_>,
    out: &mut Vec<u8>,
) -> Result<(), BlockError> {
    let start = block.offset as usize;
    let Some(stored) = file.get(start..start + block.stored_len as usize) else {
        return Err(BlockError::Checksum);
    };
    if crc32fast::hash(stored) != block.crc {
        return Err(BlockError::Checksum);
    }
    out.clear();
    out.reserve(block.raw_len as usize);
    match dec.decompress_to_buffer(stored, out) {
        Ok(n) if n == block.raw_len as usize && out.last() == Some(&b'\n') => Ok(()),
        Ok(n) => Err(BlockError::Decompress(format!(
            "{n} bytes, expected {}",
            block.raw_len
        ))),
        Err(e) => Err(BlockError::Decompress(e.to_string())),
    }
}

/// A new zstd decompression context.
pub fn decompressor() -> io::Result<zstd::bulk::Decompressor<'static>> {
    zstd::bulk::Decompressor::new()
}

/// Merge the record lines of several ULID-sorted buffers (the blocks of one group) into `out`,
/// in ULID order. Lines are whole records with their `\n`; no two buffers share a ULID.
pub fn merge_lines(parts: &[&[u8]], out: &mut Vec<u8>) {
    let nonempty: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    match nonempty[..] {
        [] => {}
        [one] => out.extend_from_slice(one),
        _ => {
            let mut sources: Vec<crate::merge::SliceLines> = nonempty
                .iter()
                .map(|p| crate::merge::SliceLines::new(p))
                .collect();
            let _ = crate::merge::merge(&mut sources, |l| {
                out.extend_from_slice(l);
                Ok(true)
            });
        }
    }
}

/// Every record of a v2 file as a merge source, one group decompressed at a time. Blocks that
/// cannot be read are left out and listed in `corrupt` (index, error).
pub struct GroupLines<B> {
    file: B,
    footer: Footer,
    next_group: usize,
    dec: zstd::bulk::Decompressor<'static>,
    bufs: Vec<Vec<u8>>,
    lines: crate::merge::OwnedLines,
    /// Blocks that failed their checksum or did not decompress.
    pub corrupt: Vec<(usize, BlockError)>,
}

impl<B: AsRef<[u8]>> GroupLines<B> {
    /// Read the footer of `file` and position on the first record.
    pub fn new(file: B) -> io::Result<Self> {
        let footer = Footer::parse(file.as_ref())?;
        let mut g = GroupLines {
            file,
            footer,
            next_group: 0,
            dec: decompressor()?,
            bufs: Vec::new(),
            lines: Default::default(),
            corrupt: Vec::new(),
        };
        g.fill();
        Ok(g)
    }

    /// The footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Load groups until one has records (or none are left).
    fn fill(&mut self) {
        while self.lines.is_empty() && self.next_group < self.footer.groups.len() {
            let g = &self.footer.groups[self.next_group];
            self.next_group += 1;
            let blocks = self.footer.group_blocks(g);
            self.bufs
                .resize_with(blocks.len().max(self.bufs.len()), Vec::new);
            for (i, b) in blocks.iter().enumerate() {
                if let Err(e) = read_block(self.file.as_ref(), b, &mut self.dec, &mut self.bufs[i])
                {
                    self.corrupt.push((g.first as usize + i, e));
                    self.bufs[i].clear();
                }
            }
            let mut lines = self.lines.take();
            lines.clear();
            let parts: Vec<&[u8]> = self.bufs[..blocks.len()].iter().map(|b| &b[..]).collect();
            merge_lines(&parts, &mut lines);
            self.lines.set(lines);
        }
    }
}

impl<B: AsRef<[u8]>> crate::merge::Source for GroupLines<B> {
    fn current(&self) -> Option<&[u8]> {
        self.lines.current()
    }
    fn advance(&mut self) -> io::Result<()> {
        self.lines.advance();
        self.fill();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
