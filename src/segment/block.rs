//! One v2 block: its stored bytes checked against their CRC and decompressed, and its needle
//! filter checked before it is trusted to rule the block out.

use std::io;

use std::cell::RefCell;

use super::footer::{Block, Footer};
use super::source::Source;

/// Why one block cannot be read (the rest of the file still can).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The stored bytes do not match the block's CRC-32 (or could not be read).
    #[error("block checksum mismatch")]
    Checksum,
    /// The bytes pass the CRC but do not decompress to the recorded length.
    #[error("block does not decompress: {0}")]
    Decompress(String),
}

/// The needle filter bytes of `block`; `None` if they cannot be read or fail their checksum
/// (then the block must be read).
pub(super) fn filter<'a>(
    src: &'a (impl Source + ?Sized),
    block: &Block,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    let f = src.read(block.filter_range()).ok()?;
    (crc32fast::hash(&f) == block.filter_crc).then_some(f)
}

thread_local! {
    /// A v3 or v4 block's columns before they are decoded, and the context that decompresses them
    /// with the segment's dictionary.
    static COLUMNS: RefCell<(Vec<u8>, zstd::zstd_safe::DCtx<'static>)> =
        RefCell::new((Vec::new(), zstd::zstd_safe::DCtx::create()));
}

/// Check and decompress `block` of `src` (whose footer is `footer`) into `out` (cleared
/// first): the block's record lines.
pub(super) fn read(
    src: &(impl Source + ?Sized),
    footer: &Footer,
    block: &Block,
    dec: &mut zstd::bulk::Decompressor<'_>,
    out: &mut Vec<u8>,
) -> Result<(), BlockError> {
    let Ok(stored) = src.read(block.stored()) else {
        return Err(BlockError::Checksum);
    };
    if crc32fast::hash(&stored) != block.crc {
        return Err(BlockError::Checksum);
    }
    if block.raw_len as usize > super::MAX_BLOCK_RAW {
        return Err(BlockError::Decompress(format!(
            "the block declares {} bytes, more than a block holds",
            block.raw_len
        )));
    }
    out.clear();
    out.reserve(block.raw_len as usize);
    if footer.version >= 3 {
        return read_columns(src, footer, block, &stored, dec, out);
    }
    match dec.decompress_to_buffer(&stored[..], out) {
        Ok(n) if n == block.raw_len as usize && out.last() == Some(&b'\n') => Ok(()),
        Ok(n) => Err(BlockError::Decompress(format!(
            "{n} bytes, expected {}",
            block.raw_len
        ))),
        Err(e) => Err(BlockError::Decompress(e.to_string())),
    }
}

/// Decompress a v3 or v4 block's `stored` bytes (checked) and decode its columns into `out`.
fn read_columns(
    src: &(impl Source + ?Sized),
    footer: &Footer,
    block: &Block,
    stored: &[u8],
    dec: &mut zstd::bulk::Decompressor<'_>,
    out: &mut Vec<u8>,
) -> Result<(), BlockError> {
    let bad = |why: String| Err(BlockError::Decompress(why));
    let ddict = match &footer.dict {
        Some(_) => match footer.ddict(src) {
            Some(d) => Some(d),
            None => return bad("the segment's dictionary cannot be read".into()),
        },
        None => None,
    };
    // The columns are never longer than the lines they hold (a ULID's 26 characters and its
    // space become at most 21 bytes).
    let cap = block.raw_len as usize + 64;
    COLUMNS.with_borrow_mut(|(cols, dctx)| {
        cols.clear();
        cols.reserve(cap);
        let n = match &ddict {
            Some(d) => dctx
                .decompress_using_ddict(cols, stored, d)
                .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string()),
            None => dec
                .decompress_to_buffer(stored, cols)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = n {
            return bad(e);
        }
        let topic = footer.topics.get(block.topic as usize).map(|t| &t.name[..]);
        if super::columns::decode(cols, topic, out).is_none() {
            return bad("the block's columns are malformed".into());
        }
        if out.len() != block.raw_len as usize || out.last() != Some(&b'\n') {
            return bad(format!("{} bytes, expected {}", out.len(), block.raw_len));
        }
        Ok(())
    })
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
