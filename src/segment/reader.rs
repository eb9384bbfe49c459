//! [`Reader`]: one segment of either format over a byte source, and what is read from it
//! whole: every record in order ([`Records`], for compaction, conversion, expiry and `oklog
//! segment cat`), a description ([`Info`], for `oklog segment info`), the blocks past their
//! topic's retention and a copy without them (expiry). Queries read through
//! [`Reader::select`] (in `select.rs`).

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use memmap2::Mmap;

use super::block::{self, BlockError};
use super::footer::{Block, Footer, TopicInfo};
use super::source::Source;
use super::write::{self, Summary};
use super::{Format, MIXED};
use crate::merge::{OwnedLines, ReaderLines};
use crate::record::{ULID_LEN, ulid_ms};

/// One segment, raw or compressed, read through its source.
#[derive(Debug)]
pub struct Reader<S> {
    src: S,
    /// The footer of a compressed segment; `None` for a raw one.
    footer: Option<Footer>,
}

/// Fail unless `path` is a regular file, looked at without opening it: a FIFO would block an
/// open, and a device (`/dev/zero`) never ends.
fn regular_file(path: &Path) -> io::Result<()> {
    if std::fs::metadata(path)?.is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// Ask the kernel to start reading what opening the segment file at `path` reads first: its
/// header, and its last 512 KiB, where a compressed segment's trailer and index lie. Without
/// it a cold footer is three reads one after another, and the page faults of several files
/// opened at once wait on each other (they share the process's address-space lock).
pub fn prefetch_footer(path: &Path) {
    use std::os::fd::AsRawFd;
    const TAIL: u64 = 512 << 10;
    let Ok(file) = File::open(path) else { return };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let fd = file.as_raw_fd();
    let tail = len.saturating_sub(TAIL);
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of the calls;
    // posix_fadvise only reads its arguments.
    unsafe {
        libc::posix_fadvise(fd, 0, 4096, libc::POSIX_FADV_WILLNEED);
        libc::posix_fadvise(
            fd,
            tail as libc::off_t,
            (len - tail) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// Map the segment file at `path` read-only; `Ok(None)` if it is empty.
pub(super) fn map_file(path: &Path) -> io::Result<Option<Mmap>> {
    regular_file(path)?;
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    map(&file).map(Some)
}

/// Map an open segment file read-only.
fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: segment files are never modified in place: the store only renames them,
    // replaces them by a rename, or unlinks them, none of which changes the mapped inode's
    // bytes (truncating a mapped file would raise SIGBUS; only the store's start-up recovery
    // truncates, and only `.active` files, which are never mapped). `oklog segment` maps the
    // files a user names, with the same expectation.
    unsafe { Mmap::map(file) }
}

impl Reader<Mmap> {
    /// Map the segment file at `path` and read its footer if it is compressed. `Ok(None)` for
    /// an empty file; an unreadable footer is an `InvalidData` error.
    pub fn open_file(path: &Path) -> io::Result<Option<Reader<Mmap>>> {
        match map_file(path)? {
            Some(map) => Ok(Some(Reader::open(map)?)),
            None => Ok(None),
        }
    }
}

impl<S: Source> Reader<S> {
    /// Read `src`'s format, and its footer if it is compressed. A raw segment is searched in
    /// place, so its source must hold it in memory.
    pub fn open(src: S) -> io::Result<Reader<S>> {
        let head = src.read(0..src.size().min(super::MAGIC.len() as u64))?;
        let footer = match Format::of(&head) {
            Format::Raw if src.whole().is_none() => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a raw segment must be read from memory",
                ));
            }
            Format::Raw => None,
            Format::Compressed => Some(Footer::read(&src)?),
        };
        drop(head);
        Ok(Reader { src, footer })
    }

    /// Raw (v1) or compressed (v2, v3 or v4).
    pub fn format(&self) -> Format {
        match self.footer {
            None => Format::Raw,
            Some(_) => Format::Compressed,
        }
    }

    /// The footer of a compressed segment.
    pub fn footer(&self) -> Option<&Footer> {
        self.footer.as_ref()
    }

    /// The file's bytes.
    pub fn source(&self) -> &S {
        &self.src
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.src.size()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A raw segment's record lines (`None` for a compressed one).
    pub fn raw(&self) -> Option<&[u8]> {
        match self.footer {
            None => self.src.whole(),
            Some(_) => None,
        }
    }

    /// Check and decompress `block` into `out`.
    pub fn read_block(
        &self,
        block: &Block,
        dec: &mut zstd::bulk::Decompressor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        match &self.footer {
            Some(f) => block::read(&self.src, f, block, dec, out),
            None => Err(BlockError::Decompress("not a compressed segment".into())),
        }
    }

    /// The needle filter of `block`, if it passes its checksum.
    pub fn filter(&self, block: &Block) -> Option<std::borrow::Cow<'_, [u8]>> {
        block::filter(&self.src, block)
    }

    /// Per block of a compressed segment, whether it is wholly older than its topic's
    /// `cutoff` (asked once per block with the topic's name), and whether a mixed block (which
    /// may hold any topic) starts before `mixed_from`. `None` for a raw segment.
    pub fn expired_blocks(
        &self,
        cutoff: &mut dyn FnMut(&[u8]) -> u64,
        mixed_from: u64,
    ) -> Option<ExpiredBlocks> {
        let footer = self.footer.as_ref()?;
        let mut mixed_old = false;
        let mut gone = vec![false; footer.blocks.len()];
        for (i, b) in footer.blocks.iter().enumerate() {
            if b.topic == MIXED {
                mixed_old |= ulid_ms(&b.low) < mixed_from;
            } else {
                gone[i] = ulid_ms(&b.high) < cutoff(&footer.topics[b.topic as usize].name);
            }
        }
        Some(ExpiredBlocks { gone, mixed_old })
    }

    /// Write a copy of this compressed segment without the blocks `gone` marks, their bytes
    /// copied as they are (each checked against its CRC first; a bad one is an `InvalidData`
    /// error). Returns what was written (`None`: nothing, every block went) and the records
    /// left out.
    pub fn drop_blocks(&self, gone: &[bool], w: impl Write) -> io::Result<(Option<Summary>, u64)> {
        let Some(footer) = &self.footer else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a compressed segment",
            ));
        };
        let dropped = footer
            .blocks
            .iter()
            .zip(gone)
            .filter(|(_, d)| **d)
            .map(|(b, _)| u64::from(b.records))
            .sum();
        let keep = |i: usize| !gone.get(i).copied().unwrap_or(false);
        Ok((write::copy_blocks(&self.src, footer, &keep, w)?, dropped))
    }

    /// Write this raw segment compressed (v4) to `w`, reading it once front to back. A record
    /// that is not well formed, or a segment already compressed, is an `InvalidData` error.
    pub fn compress(&self, w: impl Write, cfg: &write::CompressConfig) -> io::Result<Summary> {
        let Some(raw) = self.raw() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "already compressed",
            ));
        };
        self.src.will_read_once();
        write::compress(raw, w, cfg)
    }

    /// What the segment holds (for a raw one, read through to count its records).
    pub fn info(&self) -> Info {
        let Some(footer) = &self.footer else {
            let lines = self.src.whole().unwrap_or_default();
            // A line's first ULID_LEN bytes (fewer for a short line).
            let id = |line: &[u8]| {
                let line = line.split(|&c| c == b'\n').next().unwrap_or_default();
                line[..line.len().min(ULID_LEN)].to_vec()
            };
            // The last line starts after the last newline but its own.
            let body = &lines[..lines.len().saturating_sub(1)];
            let last = memchr::memrchr(b'\n', body).map_or(0, |i| i + 1);
            let records = lines.split_inclusive(|&c| c == b'\n').count() as u64;
            return Info {
                format: Format::Raw,
                records,
                low: (records > 0).then(|| id(lines)),
                high: (records > 0).then(|| id(&lines[last..])),
                stored_bytes: self.len(),
                raw_bytes: self.len(),
                ..Default::default()
            };
        };
        let mixed: Vec<&Block> = footer.blocks.iter().filter(|b| b.topic == MIXED).collect();
        let corrupt = footer
            .blocks
            .iter()
            .filter(|b| {
                self.src
                    .read(b.stored())
                    .map_or(true, |d| crc32fast::hash(&d) != b.crc)
            })
            .count() as u64;
        Info {
            format: Format::Compressed,
            version: footer.version,
            dict_bytes: footer
                .dict
                .as_ref()
                .map_or((0, 0), |d| (u64::from(d.stored_len), u64::from(d.raw_len))),
            records: footer.records,
            low: Some(footer.low.to_vec()),
            high: Some(footer.high.to_vec()),
            raw_bytes: footer.raw_bytes,
            stored_bytes: self.len(),
            block_bytes: footer.stored_bytes(),
            filter_bytes: footer.blocks.iter().map(|b| u64::from(b.filter_len)).sum(),
            blocks: footer.blocks.len() as u64,
            groups: footer.groups.len() as u64,
            mixed_blocks: mixed.len() as u64,
            mixed_records: mixed.iter().map(|b| u64::from(b.records)).sum(),
            corrupt_blocks: corrupt,
            topics: footer.topics.clone(),
        }
    }
}

/// The blocks of a compressed segment past their topic's retention.
#[derive(Debug)]
pub struct ExpiredBlocks {
    /// Per block: wholly past its topic's cutoff.
    pub gone: Vec<bool>,
    /// Some mixed block starts before the shortest retention's cutoff: its records must be
    /// read one by one.
    pub mixed_old: bool,
}

/// What a segment holds (`oklog segment info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// Its format.
    pub format: Format,
    /// Compressed: the format's version (2, 3 or 4).
    pub version: u16,
    /// Compressed: bytes of the dictionary as stored (v3, v4), and once decompressed.
    pub dict_bytes: (u64, u64),
    /// Records.
    pub records: u64,
    /// First ULID (`None`: no records).
    pub low: Option<Vec<u8>>,
    /// Last ULID.
    pub high: Option<Vec<u8>>,
    /// Bytes of the records as raw lines.
    pub raw_bytes: u64,
    /// Bytes of the file.
    pub stored_bytes: u64,
    /// Compressed: bytes of the blocks.
    pub block_bytes: u64,
    /// Compressed: bytes of the needle filters.
    pub filter_bytes: u64,
    /// Compressed: blocks.
    pub blocks: u64,
    /// Compressed: groups.
    pub groups: u64,
    /// Compressed: blocks of the mixed small topics.
    pub mixed_blocks: u64,
    /// Compressed: records in them.
    pub mixed_records: u64,
    /// Compressed: blocks that fail their checksum.
    pub corrupt_blocks: u64,
    /// Compressed: topics with blocks of their own.
    pub topics: Vec<TopicInfo>,
}

/// A segment's records in ULID order, whatever its format: a merge source.
pub enum Records {
    /// Lines of a raw file, read through a buffer (compaction reads each once, front to back).
    Raw(ReaderLines<BufReader<File>>),
    /// Groups of a compressed file, one decompressed at a time.
    Compressed(Box<GroupLines<Mmap>>),
}

impl Records {
    /// Open the segment file at `path`.
    pub fn open(path: &Path) -> io::Result<Records> {
        regular_file(path)?;
        let mut file = File::open(path)?;
        if Format::read_from(&mut file)? == Format::Compressed {
            return Ok(Records::Compressed(Box::new(GroupLines::new(map(&file)?)?)));
        }
        file.seek(SeekFrom::Start(0))?;
        Ok(Records::Raw(ReaderLines::new(BufReader::with_capacity(
            256 << 10,
            file,
        ))?))
    }

    /// Blocks that could not be read so far, with why (none for a raw file).
    pub fn corrupt(&self) -> &[(usize, BlockError)] {
        match self {
            Records::Raw(_) => &[],
            Records::Compressed(g) => &g.corrupt,
        }
    }

    /// How many blocks could not be read so far.
    pub fn corrupt_blocks(&self) -> u64 {
        self.corrupt().len() as u64
    }
}

impl crate::merge::Source for Records {
    fn current(&self) -> Option<&[u8]> {
        match self {
            Records::Raw(r) => r.current(),
            Records::Compressed(g) => g.current(),
        }
    }
    fn advance(&mut self) -> io::Result<()> {
        match self {
            Records::Raw(r) => r.advance(),
            Records::Compressed(g) => g.advance(),
        }
    }
}

/// Every record of a v2 file as a merge source, one group decompressed at a time. Blocks that
/// cannot be read are left out and listed in `corrupt` (index, error).
pub struct GroupLines<S> {
    reader: Reader<S>,
    next_group: usize,
    dec: zstd::bulk::Decompressor<'static>,
    bufs: Vec<Vec<u8>>,
    lines: OwnedLines,
    /// Blocks that failed their checksum or did not decompress.
    pub corrupt: Vec<(usize, BlockError)>,
}

impl<S: Source> GroupLines<S> {
    /// Read the footer of `src` and position on the first record.
    pub fn new(src: S) -> io::Result<Self> {
        let reader = Reader::open(src)?;
        if reader.footer.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a compressed segment",
            ));
        }
        let mut g = GroupLines {
            reader,
            next_group: 0,
            dec: block::decompressor()?,
            bufs: Vec::new(),
            lines: Default::default(),
            corrupt: Vec::new(),
        };
        g.fill();
        Ok(g)
    }

    /// Load groups until one has records (or none are left).
    fn fill(&mut self) {
        let Some(footer) = &self.reader.footer else {
            return;
        };
        while self.lines.is_empty() && self.next_group < footer.groups.len() {
            let g = &footer.groups[self.next_group];
            self.next_group += 1;
            let blocks = footer.group_blocks(g);
            self.bufs
                .resize_with(blocks.len().max(self.bufs.len()), Vec::new);
            for (i, b) in blocks.iter().enumerate() {
                if let Err(e) = block::read(
                    &self.reader.src,
                    footer,
                    b,
                    &mut self.dec,
                    &mut self.bufs[i],
                ) {
                    self.corrupt.push((g.first as usize + i, e));
                    self.bufs[i].clear();
                }
            }
            let mut lines = self.lines.take();
            lines.clear();
            let parts: Vec<&[u8]> = self.bufs[..blocks.len()].iter().map(|b| &b[..]).collect();
            block::merge_lines(&parts, &mut lines);
            self.lines.set(lines);
        }
    }
}

impl<S: Source> crate::merge::Source for GroupLines<S> {
    fn current(&self) -> Option<&[u8]> {
        self.lines.current()
    }
    fn advance(&mut self) -> io::Result<()> {
        self.lines.advance();
        self.fill();
        Ok(())
    }
}
