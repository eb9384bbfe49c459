//! One v2 block: its stored bytes checked against their CRC and decompressed, and its needle
//! filter checked before it is trusted to rule the block out.

use std::io;

use super::footer::Block;
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

/// Check and decompress `block` of `src` into `out` (cleared first): the block's record lines.
pub(super) fn read(
    src: &(impl Source + ?Sized),
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
    match dec.decompress_to_buffer(&stored[..], out) {
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
