//! Store segment formats, and the only code that knows them: the raw format (v1, the
//! original's: sorted record lines) and the compressed format (v2: records in zstd blocks
//! grouped by topic, each block with its ULID range, a CRC-32 and a trigram needle filter,
//! indexed by a footer). The byte layout, and why it is so, is in `FORMAT.md` beside this file.
//!
//! Both formats hold the same thing, ULID-sorted record lines; a v2 file decompresses to
//! exactly the bytes of the raw segment it was made from. Everything that reads a segment (the
//! query path, compaction, conversion, expiry, `oklog segment`) goes through a [`Reader`] over
//! a byte [`Source`] (a mapped file today; a ranged remote object tomorrow); nothing outside
//! this module knows a byte offset. A file's format is told by its first bytes: a raw segment
//! starts with a ULID, whose first character is a digit; a v2 file starts with `OKLOGSEG`.
//!
//! # Layout
//! - `source`: the byte source a reader reads by range.
//! - `footer`: the v2 index (topics, groups, blocks), parsed and checked.
//! - `block`: one v2 block: checked, decompressed, its filter.
//! - `reader`: [`Reader`]: opens either format; what compaction, expiry and `oklog segment`
//!   need (every record in order, dropping blocks, a description).
//! - `select`: [`Reader::select`] and the chunks a query searches, in its order.
//! - `raw`: cutting a raw segment's lines into pieces.
//! - `ends`: a segment's first and last record checked against its name, at start-up.
//! - `filter` (needle filters), `write` (compression and block copies).

mod block;
mod columns;
mod dict;
mod ends;
pub mod filter;
mod footer;
pub mod items;
mod raw;
mod reader;
mod select;
mod source;
mod write;

pub use block::{BlockError, decompressor, merge_lines};
pub use ends::check_ends;
pub use filter::{FilterBuilder, Needles};
pub use footer::{Block, DictCache, DictRef, Footer, FormatError, Group, TopicInfo};
pub use raw::PIECE;
pub use reader::{ExpiredBlocks, GroupLines, Info, Reader, Records, prefetch_footer};
pub use select::{Chunk, ChunkSource, NEVER, Query, Selection};
pub use source::Source;
pub use write::{CompressConfig, Summary, compress};

/// First bytes of a v2 file.
pub const MAGIC: &[u8; 8] = b"OKLOGSEG";
/// Last bytes of a v2 file.
pub const END_MAGIC: &[u8; 8] = b"OKLOGEND";
/// The compressed format's version, as written.
pub const VERSION: u16 = 4;
/// The first compressed format, still read (and rewritten as [`VERSION`] in the
/// background).
pub const VERSION_2: u16 = 2;
/// v4 with v2's trigram bitmaps for filters: still read (and rewritten).
pub const VERSION_3: u16 = 3;
/// The largest dictionary a v3 or v4 file may declare.
pub const MAX_DICT: usize = 16 << 20;
/// Header bytes: magic, version, reserved.
pub const HEADER_LEN: usize = 16;
/// The most bytes of records one compressed block holds (64 MiB): a writer leaves a segment
/// with a longer record raw, and a reader refuses to decompress a block that declares more
/// (a hand-made block declaring 1 GiB made every query allocate it).
pub const MAX_BLOCK_RAW: usize = 64 << 20;
/// Trailer bytes: index offset, index length, index CRC, version, reserved, end magic.
pub const TRAILER_LEN: usize = 32;
/// Topic index of a block holding records of several small topics.
pub const MIXED: u32 = u32::MAX;

/// A segment file's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// v1: record lines, as the original writes them.
    #[default]
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

    /// The format of what `r` reads next (a file's first bytes).
    pub fn read_from(r: &mut impl std::io::Read) -> std::io::Result<Format> {
        let mut head = [0u8; MAGIC.len()];
        let n = read_head(r, &mut head)?;
        Ok(Format::of(&head[..n]))
    }

    /// The format of the file at `path`, and whether it is a compressed one of an older
    /// version than [`VERSION`] (to be rewritten), from its first bytes (raw if it cannot be
    /// read).
    pub fn of_file_stale(path: &std::path::Path) -> (Format, bool) {
        let mut head = [0u8; MAGIC.len() + 2];
        let n = std::fs::File::open(path)
            .and_then(|mut f| read_head(&mut f, &mut head))
            .unwrap_or(0);
        let format = Format::of(&head[..n]);
        let stale = format == Format::Compressed
            && n == head.len()
            && u16::from_le_bytes([head[8], head[9]]) < VERSION;
        (format, stale)
    }

    /// `raw` or `compressed`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Compressed => "compressed",
        }
    }
}

/// Fill `head` from `r` as far as it goes; the bytes read.
fn read_head(r: &mut impl std::io::Read, head: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
