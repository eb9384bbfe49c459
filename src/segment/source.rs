//! The bytes of one segment file, read by range.
//!
//! A [`Reader`](super::Reader) asks its source for the footer's bytes, then for the filters
//! and blocks a query needs, and nothing else, so a source can be a mapped file (today: every
//! range is borrowed, nothing is copied) or a remote object read by ranged requests through a
//! block cache (object storage). Raw segments are searched in place with a binary search over
//! their lines, so they need the whole file in memory: a mapping.

use std::borrow::Cow;
use std::io;
use std::ops::Range;
use std::sync::Arc;

/// A segment file's bytes.
pub trait Source: Send + Sync {
    /// The file's length in bytes.
    fn size(&self) -> u64;

    /// Bytes `range` of the file. A range past the end is an `UnexpectedEof` error.
    fn read(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>>;

    /// A hint that `range` will be read soon (the kernel may start reading it now).
    fn will_need(&self, _range: Range<u64>) {}

    /// A hint that the whole file will be read once, front to back (read ahead, and drop
    /// what is behind).
    fn will_read_once(&self) {}

    /// The whole file, when the source holds it in memory (a mapping); `None` for a source
    /// read by ranges.
    fn whole(&self) -> Option<&[u8]>;
}

/// The bytes of an in-memory file at `range`.
fn slice(bytes: &[u8], range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
    usize::try_from(range.start)
        .ok()
        .zip(usize::try_from(range.end).ok())
        .and_then(|(a, z)| bytes.get(a..z))
        .map(Cow::Borrowed)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {}..{} lie outside a {}-byte segment",
                    range.start,
                    range.end,
                    bytes.len()
                ),
            )
        })
}

impl Source for memmap2::Mmap {
    fn size(&self) -> u64 {
        self[..].len() as u64
    }
    fn read(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        slice(self, range)
    }
    fn will_need(&self, range: Range<u64>) {
        if range.end > range.start {
            let _ = self.advise_range(
                memmap2::Advice::WillNeed,
                range.start as usize,
                (range.end - range.start) as usize,
            );
        }
    }
    fn will_read_once(&self) {
        let _ = self.advise(memmap2::Advice::Sequential);
    }
    fn whole(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        slice(self, range)
    }
    fn whole(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        slice(self, range)
    }
    fn whole(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<S: Source + ?Sized> Source for Arc<S> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        (**self).read(range)
    }
    fn will_need(&self, range: Range<u64>) {
        (**self).will_need(range)
    }
    fn will_read_once(&self) {
        (**self).will_read_once()
    }
    fn whole(&self) -> Option<&[u8]> {
        (**self).whole()
    }
}
