//! The v2 footer: the header's magic and version, the trailer at the end of the file, and the
//! index it points to (topic table, groups, block table). Every offset and length is checked
//! against the file here, once, so no reader ever slices out of bounds whatever the bytes.

use std::io;

use super::source::Source;
use super::{END_MAGIC, HEADER_LEN, MAGIC, MIXED, TRAILER_LEN, VERSION, VERSION_2, VERSION_3};
use crate::record::{ULID_LEN, is_valid_ulid};

/// The index's own magic, first bytes of the index (v2).
pub(super) const INDEX_MAGIC: &[u8; 4] = b"IDX2";
/// The v3 index's magic.
pub(super) const INDEX_MAGIC_3: &[u8; 4] = b"IDX3";
/// The v4 index's magic.
pub(super) const INDEX_MAGIC_4: &[u8; 4] = b"IDX4";
/// Encoded size of one block entry in the index.
pub(super) const BLOCK_ENTRY_LEN: usize = 8 + 4 + 4 + 4 + 4 + ULID_LEN * 2 + 4 + 8 + 4 + 4;

/// Why a v2 file's footer cannot be read (the file is then unusable as a whole).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Shorter than a header and a trailer.
    #[error("too short for a compressed segment")]
    TooShort,
    /// The first bytes are not [`MAGIC`].
    #[error("no compressed-segment magic")]
    NoMagic,
    /// A version this build does not read.
    #[error("unknown segment format version {0}")]
    Version(u16),
    /// The last bytes are not [`END_MAGIC`].
    #[error("trailer is missing (torn file?)")]
    NoTrailer,
    /// The index's bytes do not match its CRC.
    #[error("index checksum mismatch")]
    IndexChecksum,
    /// The index passes its CRC but says something impossible.
    #[error("{0}")]
    Index(&'static str),
    /// The source could not be read.
    #[error("reading the segment: {0}")]
    Io(#[from] io::Error),
}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> io::Error {
        match e {
            FormatError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
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

impl Block {
    /// The file range of its stored (compressed) bytes.
    pub fn stored(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.stored_len)
    }

    /// The file range of its needle filter.
    pub fn filter_range(&self) -> std::ops::Range<u64> {
        self.filter_offset..self.filter_offset + u64::from(self.filter_len)
    }
}

/// Where a v3 or v4 file keeps its zstd dictionary (one zstd frame, compressed without one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DictRef {
    /// File offset of the frame.
    pub offset: u64,
    /// Stored bytes.
    pub stored_len: u32,
    /// The dictionary's bytes.
    pub raw_len: u32,
    /// CRC-32 of the stored bytes.
    pub crc: u32,
}

/// A segment's key in the process's cache of loaded dictionaries ([`DICT_CACHE_BYTES`] at
/// most, least recently used dropped first): a store with thousands of segments never holds
/// all their dictionaries, and a dictionary dropped is read again when next needed.
#[derive(Clone)]
pub struct DictCache(u64);

impl Default for DictCache {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        DictCache(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// The most bytes of dictionaries the process keeps loaded.
pub const DICT_CACHE_BYTES: usize = 256 << 20;

type LoadedDict = std::sync::Arc<zstd::zstd_safe::DDict<'static>>;

/// The loaded dictionaries, least recently used first: (key, dictionary, bytes).
static LOADED: std::sync::Mutex<Vec<(u64, LoadedDict, usize)>> = std::sync::Mutex::new(Vec::new());

impl DictCache {
    /// The dictionary under this key, loaded by `load` (its bytes, the dictionary) if it is
    /// not in the cache.
    fn get(&self, load: impl FnOnce() -> Option<(usize, LoadedDict)>) -> Option<LoadedDict> {
        self.get_within(DICT_CACHE_BYTES, load)
    }

    /// [`DictCache::get`], the cache kept within `budget` bytes.
    fn get_within(
        &self,
        budget: usize,
        load: impl FnOnce() -> Option<(usize, LoadedDict)>,
    ) -> Option<LoadedDict> {
        {
            let mut cache = LOADED.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|e| e.0 == self.0) {
                let e = cache.remove(i);
                let d = e.1.clone();
                cache.push(e);
                return Some(d);
            }
        }
        // Loaded outside the lock: two queries may both load it; one copy stays.
        let (bytes, d) = load()?;
        let mut cache = LOADED.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.iter().any(|e| e.0 == self.0) {
            cache.push((self.0, d.clone(), bytes));
        }
        let mut total: usize = cache.iter().map(|e| e.2).sum();
        while total > budget && cache.len() > 1 {
            total -= cache.remove(0).2;
        }
        Some(d)
    }
}

#[cfg(test)]
mod dict_cache_tests {
    use super::*;

    #[test]
    fn loaded_dictionaries_stay_within_the_budget_least_recently_used_first() {
        let keys: Vec<DictCache> = (0..5).map(|_| DictCache::default()).collect();
        let loads = std::cell::Cell::new(0);
        let get = |k: &DictCache| {
            k.get_within(250, || {
                loads.set(loads.get() + 1);
                Some((
                    100,
                    std::sync::Arc::new(zstd::zstd_safe::DDict::create(b"some words")),
                ))
            })
            .is_some()
        };
        for k in &keys {
            assert!(get(k));
        }
        assert_eq!(loads.get(), 5);
        // The last two fit in 250 bytes and are kept; the first was dropped.
        assert!(get(&keys[4]) && get(&keys[3]));
        assert_eq!(loads.get(), 5);
        assert!(get(&keys[0]));
        assert_eq!(loads.get(), 6);
        let mine: usize = {
            let cache = LOADED.lock().unwrap();
            let ids: Vec<u64> = keys.iter().map(|k| k.0).collect();
            cache
                .iter()
                .filter(|e| ids.contains(&e.0))
                .map(|e| e.2)
                .sum()
        };
        assert!(mine <= 250, "{mine}");
    }
}

impl std::fmt::Debug for DictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DictCache")
    }
}

impl PartialEq for DictCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for DictCache {}

/// The parsed footer of a compressed (v2, v3 or v4) file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// The format's version: 2, 3 or 4.
    pub version: u16,
    /// v4: the segment's common items (`items.rs`); empty before v4.
    pub common: Vec<u8>,
    /// A v3 or v4 file's dictionary, if it has one.
    pub dict: Option<DictRef>,
    /// The dictionary once loaded.
    pub dict_cache: DictCache,
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
            return Err(FormatError::Index("index is truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn ulid(&mut self) -> Result<[u8; ULID_LEN], FormatError> {
        let b = self.array::<ULID_LEN>()?;
        if !is_valid_ulid(&b) {
            return Err(FormatError::Index("index holds an invalid ULID"));
        }
        Ok(b)
    }
}

impl Footer {
    /// Read the footer of a whole v2 file held in memory.
    pub fn parse(file: &[u8]) -> Result<Footer, FormatError> {
        Footer::read(&file)
    }

    /// Read the footer of the v2 file `src`: its header, its trailer and the index the
    /// trailer points to (three reads, whatever the file's size).
    pub fn read(src: &(impl Source + ?Sized)) -> Result<Footer, FormatError> {
        let len = src.size();
        if len < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(FormatError::TooShort);
        }
        let head = src.read(0..HEADER_LEN as u64)?;
        if &head[..8] != MAGIC {
            return Err(FormatError::NoMagic);
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if !(VERSION_2..=VERSION).contains(&version) {
            return Err(FormatError::Version(version));
        }
        let data_end = len - TRAILER_LEN as u64;
        let t = src.read(data_end..len)?;
        if &t[24..32] != END_MAGIC {
            return Err(FormatError::NoTrailer);
        }
        let mut c = Cursor(&t);
        let (index_offset, index_len, index_crc) = (c.u64()?, c.u64()?, c.u32()?);
        let index_end = index_offset.checked_add(index_len);
        if index_offset < HEADER_LEN as u64 || index_end.is_none_or(|e| e > data_end) {
            return Err(FormatError::Index("index lies outside the file"));
        }
        let index = src.read(index_offset..index_offset + index_len)?;
        if crc32fast::hash(&index) != index_crc {
            return Err(FormatError::IndexChecksum);
        }
        Footer::parse_index(&index, index_offset, version)
    }

    /// Parse the index, which starts at `index_offset` (every block lies before it).
    fn parse_index(index: &[u8], index_offset: u64, version: u16) -> Result<Footer, FormatError> {
        let mut c = Cursor(index);
        let magic = match version {
            VERSION_2 => INDEX_MAGIC,
            VERSION_3 => INDEX_MAGIC_3,
            _ => INDEX_MAGIC_4,
        };
        if c.take(4)? != magic {
            return Err(FormatError::Index("index magic missing"));
        }
        let records = c.u64()?;
        let raw_bytes = c.u64()?;
        let low = c.ulid()?;
        let high = c.ulid()?;
        let dict = if version == VERSION_2 {
            None
        } else {
            let d = DictRef {
                offset: c.u64()?,
                stored_len: c.u32()?,
                raw_len: c.u32()?,
                crc: c.u32()?,
            };
            let end = d.offset.saturating_add(u64::from(d.stored_len));
            if d.stored_len > 0 && (d.offset < HEADER_LEN as u64 || end > index_offset) {
                return Err(FormatError::Index(
                    "the dictionary lies outside the file's data",
                ));
            }
            if d.raw_len as usize > super::MAX_DICT {
                return Err(FormatError::Index(
                    "the dictionary is larger than a dictionary may be",
                ));
            }
            (d.stored_len > 0).then_some(d)
        };
        let common = if version >= 4 {
            let n = c.u32()? as usize;
            let bits = n * 8;
            if n != 0
                && (!bits.is_power_of_two()
                    || !(super::items::MIN_COMMON_BITS..=super::items::COMMON_BITS).contains(&bits))
            {
                return Err(FormatError::Index(
                    "the common items' bitmap has the wrong size",
                ));
            }
            c.take(n)?.to_vec()
        } else {
            Vec::new()
        };
        let topics = topic_table(&mut c)?;
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
        let blocks = block_table(&mut c, topics.len(), index_offset)?;
        let mut next = 0u64;
        for g in &groups {
            if u64::from(g.first) != next || g.count == 0 || g.low > g.high {
                return Err(FormatError::Index(
                    "groups do not cover the blocks in order",
                ));
            }
            next += u64::from(g.count);
        }
        if next != blocks.len() as u64 {
            return Err(FormatError::Index("groups do not cover every block"));
        }
        Ok(Footer {
            version,
            common,
            dict,
            dict_cache: DictCache::default(),
            records,
            raw_bytes,
            low,
            high,
            topics,
            groups,
            blocks,
        })
    }

    /// The dictionary's decompression form, from the process's cache or read and checked;
    /// `None` when the file has none, or it cannot be read (then every block fails).
    pub(super) fn ddict(
        &self,
        src: &(impl Source + ?Sized),
    ) -> Option<std::sync::Arc<zstd::zstd_safe::DDict<'static>>> {
        let d = self.dict.as_ref()?;
        self.dict_cache.get(|| {
            let stored = src
                .read(d.offset..d.offset + u64::from(d.stored_len))
                .ok()?;
            if crc32fast::hash(&stored) != d.crc {
                return None;
            }
            let raw = zstd::bulk::decompress(&stored, d.raw_len as usize).ok()?;
            (raw.len() == d.raw_len as usize).then(|| {
                (
                    raw.len(),
                    std::sync::Arc::new(zstd::zstd_safe::DDict::create(&raw)),
                )
            })
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

/// The topic table: a count, then each topic's name, records and raw bytes.
fn topic_table(c: &mut Cursor<'_>) -> Result<Vec<TopicInfo>, FormatError> {
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
    Ok(topics)
}

/// The block table, the rest of the index: each block checked to lie in the file's data
/// (before `index_offset`) and to name a topic of the table.
fn block_table(
    c: &mut Cursor<'_>,
    n_topics: usize,
    index_offset: u64,
) -> Result<Vec<Block>, FormatError> {
    let n_blocks = c.u32()? as usize;
    if c.0.len() != n_blocks.saturating_mul(BLOCK_ENTRY_LEN) {
        return Err(FormatError::Index("index block table has the wrong size"));
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
            return Err(FormatError::Index("a block lies outside the file's data"));
        }
        if b.topic != MIXED && b.topic as usize >= n_topics {
            return Err(FormatError::Index(
                "a block names a topic that is not in the table",
            ));
        }
        if b.low > b.high || b.records == 0 {
            return Err(FormatError::Index("a block's range is empty or reversed"));
        }
        blocks.push(b);
    }
    Ok(blocks)
}
