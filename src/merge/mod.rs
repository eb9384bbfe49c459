//! k-way merge of ULID-sorted record sources, dropping records whose ULID equals the one just
//! emitted (dedup by ID only; the first source wins a tie, as in the original).
//!
//! Sources lend their current line (`&[u8]`, including its `\n` if it has one), so the merge
//! copies nothing but a 26-byte key per step: a binary heap keyed by `(ULID, source index)`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead};

use crate::record::ULID_LEN;

/// A sorted sequence of record lines, consumed one at a time.
pub trait Source {
    /// The current line, or `None` when exhausted.
    fn current(&self) -> Option<&[u8]>;
    /// Move to the next line.
    fn advance(&mut self) -> io::Result<()>;
}

/// What a merge wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// ULID of the first record emitted.
    pub low: Option<[u8; ULID_LEN]>,
    /// ULID of the last record emitted.
    pub high: Option<[u8; ULID_LEN]>,
    /// Records emitted.
    pub records: u64,
    /// Bytes emitted.
    pub bytes: u64,
}

/// The first 26 bytes of a line as a key (a shorter line is zero-padded: it sorts first and
/// never panics).
#[inline]
pub fn key(line: &[u8]) -> [u8; ULID_LEN] {
    let mut k = [0u8; ULID_LEN];
    let n = line.len().min(ULID_LEN);
    k[..n].copy_from_slice(&line[..n]);
    k
}

/// Merge `sources` in ULID order with dedup, passing each line to `emit`; `emit` returns
/// `Ok(false)` to stop early.
pub fn merge<S: Source>(
    sources: &mut [S],
    emit: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<Merged> {
    merge_ordered(sources, false, emit)
}

/// [`merge`], or with `desc` the same over sources each in descending ULID order, newest
/// first (`low` is then the first emitted, the highest ID).
pub fn merge_ordered<S: Source>(
    sources: &mut [S],
    desc: bool,
    emit: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<Merged> {
    merge_with(sources, desc, true, emit)
}

/// [`merge_ordered`], without dropping repeated IDs when `dedup` is false (every source's
/// copy is emitted, in source order).
pub fn merge_with<S: Source>(
    sources: &mut [S],
    desc: bool,
    dedup: bool,
    mut emit: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<Merged> {
    // Descending order is ascending order of the complemented keys.
    let order = |line: &[u8]| {
        let mut k = key(line);
        if desc {
            k.iter_mut().for_each(|b| *b = !*b);
        }
        k
    };
    let mut heap = BinaryHeap::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        if let Some(line) = s.current() {
            heap.push(Reverse((order(line), i)));
        }
    }
    let mut out = Merged::default();
    let mut last = None;
    while let Some(Reverse((k, i))) = heap.pop() {
        if !dedup || last != Some(k) {
            // The heap only holds indices of sources with a current line.
            let line = sources[i].current().unwrap_or_default();
            if !emit(line)? {
                return Ok(out);
            }
            last = Some(k);
            out.low.get_or_insert(key(line));
            out.high = Some(key(line));
            out.records += 1;
            out.bytes += line.len() as u64;
        }
        sources[i].advance()?;
        if let Some(line) = sources[i].current() {
            heap.push(Reverse((order(line), i)));
        }
    }
    Ok(out)
}

/// The lines of `buf` (each ending in `\n`, the last one possibly not) in reverse order,
/// each given its `\n`.
pub fn reverse_lines(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 1);
    if buf.is_empty() {
        return out;
    }
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut end = body.len();
    for i in memchr::memrchr_iter(b'\n', body) {
        out.extend_from_slice(&body[i + 1..end]);
        out.push(b'\n');
        end = i;
    }
    out.extend_from_slice(&body[..end]);
    out.push(b'\n');
    out
}

/// Lines of an in-memory (or mmapped) buffer.
#[derive(Debug)]
pub struct SliceLines<'a> {
    rest: &'a [u8],
    cur: Option<&'a [u8]>,
}

impl<'a> SliceLines<'a> {
    /// Lines of `buf`; a final line without `\n` is one line too.
    pub fn new(buf: &'a [u8]) -> Self {
        let mut s = SliceLines {
            rest: buf,
            cur: None,
        };
        s.step();
        s
    }

    fn step(&mut self) {
        if self.rest.is_empty() {
            self.cur = None;
            return;
        }
        let end = memchr::memchr(b'\n', self.rest).map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(end);
        self.cur = Some(line);
        self.rest = rest;
    }
}

impl Source for SliceLines<'_> {
    fn current(&self) -> Option<&[u8]> {
        self.cur
    }
    fn advance(&mut self) -> io::Result<()> {
        self.step();
        Ok(())
    }
}

/// Lines of an owned buffer that is replaced whole when it runs out (one decompressed group at
/// a time): the cursor the sources over compressed segments share.
#[derive(Debug, Default)]
pub struct OwnedLines {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl OwnedLines {
    /// Whether every line of the buffer has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Take the buffer out (to refill it without a new allocation); the cursor is then empty.
    pub fn take(&mut self) -> Vec<u8> {
        self.pos = 0;
        self.end = 0;
        std::mem::take(&mut self.buf)
    }

    /// Position on the first line of `buf`.
    pub fn set(&mut self, buf: Vec<u8>) {
        self.buf = buf;
        self.pos = 0;
        self.locate();
    }

    /// The current line, with its `\n`.
    pub fn current(&self) -> Option<&[u8]> {
        (self.pos < self.end).then(|| &self.buf[self.pos..self.end])
    }

    /// Move to the next line of the buffer.
    pub fn advance(&mut self) {
        self.pos = self.end;
        self.locate();
    }

    fn locate(&mut self) {
        self.end = if self.pos < self.buf.len() {
            memchr::memchr(b'\n', &self.buf[self.pos..])
                .map_or(self.buf.len(), |i| self.pos + i + 1)
        } else {
            self.pos
        };
    }
}

/// Lines of a reader (files, spools), one line buffered at a time.
#[derive(Debug)]
pub struct ReaderLines<R> {
    reader: R,
    line: Vec<u8>,
    done: bool,
}

impl<R: BufRead> ReaderLines<R> {
    /// Lines of `reader`, positioned on the first.
    pub fn new(reader: R) -> io::Result<Self> {
        let mut s = ReaderLines {
            reader,
            line: Vec::new(),
            done: false,
        };
        s.advance()?;
        Ok(s)
    }
}

impl<R: BufRead> Source for ReaderLines<R> {
    fn current(&self) -> Option<&[u8]> {
        (!self.done).then_some(self.line.as_slice())
    }
    fn advance(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            self.done = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reverse() {
        assert_eq!(reverse_lines(b""), b"");
        assert_eq!(reverse_lines(b"a\n"), b"a\n");
        assert_eq!(reverse_lines(b"a\nbb\nccc\n"), b"ccc\nbb\na\n");
        assert_eq!(reverse_lines(b"a\nbb"), b"bb\na\n");
    }

    #[test]
    fn descending_merge_dedups_newest_first() {
        let a = b"00000000000000000000000003 a\n00000000000000000000000001 a\n";
        let b = b"00000000000000000000000003 b\n00000000000000000000000002 b\n";
        let mut sources = [SliceLines::new(a), SliceLines::new(b)];
        let mut out = Vec::new();
        let m = merge_ordered(&mut sources, true, |l| {
            out.extend_from_slice(l);
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            out,
            b"00000000000000000000000003 a\n00000000000000000000000002 b\n00000000000000000000000001 a\n"
        );
        assert_eq!(m.records, 3);
    }

    fn u(n: u32) -> String {
        format!("{:026}", n)
    }

    fn run(inputs: &[Vec<String>]) -> Vec<String> {
        let bufs: Vec<String> = inputs
            .iter()
            .map(|v| v.iter().map(|l| format!("{l}\n")).collect())
            .collect();
        let mut sources: Vec<SliceLines> =
            bufs.iter().map(|b| SliceLines::new(b.as_bytes())).collect();
        let mut out = Vec::new();
        merge(&mut sources, |l| {
            out.push(String::from_utf8(l[..l.len() - 1].to_vec()).unwrap());
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn merge_records() {
        // TestMergeRecords.
        assert!(run(&[]).is_empty());
        assert!(run(&[vec![], vec![]]).is_empty());
        assert_eq!(run(&[vec![u(1), u(2)]]), vec![u(1), u(2)]);
        assert_eq!(
            run(&[vec![u(1), u(4)], vec![u(2), u(3), u(5)]]),
            vec![u(1), u(2), u(3), u(4), u(5)]
        );
        let a = |n, s: &str| format!("{} {s}", u(n));
        assert_eq!(
            run(&[
                vec![u(100)],
                vec![a(150, "A"), u(151)],
                vec![u(101), u(149), a(150, "B")]
            ]),
            vec![u(100), u(101), u(149), a(150, "A"), u(151)],
            "first reader wins a tie"
        );
        assert_eq!(
            run(&[
                vec![a(100, "A"), a(101, "A")],
                vec![a(101, "B"), a(149, "B")],
                vec![a(149, "C"), a(150, "C")]
            ]),
            vec![a(100, "A"), a(101, "A"), a(149, "B"), a(150, "C")]
        );
    }

    #[test]
    fn short_lines_do_not_panic_and_stats_are_right() {
        let bufs = [
            b"x\n0000000000000000000000000B b\n".to_vec(),
            b"0000000000000000000000000A a".to_vec(),
        ];
        let mut sources: Vec<SliceLines> = bufs.iter().map(|b| SliceLines::new(b)).collect();
        let mut out = Vec::new();
        let m = merge(&mut sources, |l| {
            out.extend_from_slice(l);
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            out,
            b"0000000000000000000000000A ax\n0000000000000000000000000B b\n"
        );
        assert_eq!(m.records, 3);
        assert_eq!(m.bytes, out.len() as u64);
        assert_eq!(m.high, Some(*b"0000000000000000000000000B"));
    }

    #[test]
    fn reader_and_slice_sources_agree() {
        let a = b"00000000000000000000000001 a\n00000000000000000000000003 c\n";
        let b = b"00000000000000000000000002 b\n00000000000000000000000003 c\n";
        let mut s1 = vec![SliceLines::new(a), SliceLines::new(b)];
        let mut r1 = vec![
            ReaderLines::new(&a[..]).unwrap(),
            ReaderLines::new(&b[..]).unwrap(),
        ];
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        merge(&mut s1, |l| {
            o1.extend_from_slice(l);
            Ok(true)
        })
        .unwrap();
        merge(&mut r1, |l| {
            o2.extend_from_slice(l);
            Ok(true)
        })
        .unwrap();
        assert_eq!(o1, o2);
        assert_eq!(o1.len(), 3 * 29);
    }
}
