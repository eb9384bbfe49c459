//! A raw segment's lines cut into pieces for parallel search, and lines counted from either
//! end of a range.

use std::ops::Range;

/// Bytes of a raw segment searched as one unit of parallel work (8 MiB).
pub const PIECE: usize = 8 << 20;

/// Cut `r` (a line start and a line end of a mapping) into pieces of [`PIECE`] bytes. The cuts
/// fall anywhere: a piece is moved to line boundaries by [`align`] only when it is searched,
/// so cutting touches no page (on a cold file each first touch reads megabytes around it).
pub(super) fn pieces(r: Range<usize>) -> Vec<Range<usize>> {
    (r.start..r.end)
        .step_by(PIECE)
        .map(|start| start..(start + PIECE).min(r.end))
        .collect()
}

/// The lines of `m` that start in `r`: `r` moved forward to line boundaries (each line then
/// belongs to exactly one of a run of adjoining ranges).
pub(super) fn align(m: &[u8], r: Range<usize>) -> Range<usize> {
    let boundary = |at: usize| {
        if at == 0 || at >= m.len() || m[at - 1] == b'\n' {
            at.min(m.len())
        } else {
            memchr::memchr(b'\n', &m[at..]).map_or(m.len(), |i| at + i + 1)
        }
    };
    let start = boundary(r.start);
    start..boundary(r.end).max(start)
}

/// `r` (whole lines of `m`) cut into pieces of 1, 1, 2, 4 … MiB (up to [`PIECE`]) from its
/// start, or from its end when `from_end`; returned in that reading order.
pub(super) fn graded_pieces(m: &[u8], r: Range<usize>, from_end: bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (r.start, r.end);
    let mut size = 1 << 20;
    let mut k = 0;
    while lo < hi {
        if from_end {
            let mut start = hi.saturating_sub(size).max(lo);
            if start > lo {
                // Back to a line start.
                start = memchr::memrchr(b'\n', &m[lo..start]).map_or(lo, |i| lo + i + 1);
            }
            out.push(start..hi);
            hi = start;
        } else {
            let mut end = (lo + size).min(hi);
            if end < hi {
                end = memchr::memchr(b'\n', &m[end..hi]).map_or(hi, |i| end + i + 1);
            }
            out.push(lo..end);
            lo = end;
        }
        k += 1;
        if k > 1 {
            size = (size * 2).min(PIECE);
        }
    }
    out
}

/// The first `n` lines of `buf[r]` (the last `n` when `from_end`), `r` being whole lines.
pub(super) fn cut_lines(buf: &[u8], r: Range<usize>, n: usize, from_end: bool) -> Range<usize> {
    if from_end {
        // The n-th newline from the end, not counting the last line's own.
        let body = &buf[r.start..r.end.saturating_sub(1).max(r.start)];
        match memchr::memrchr_iter(b'\n', body).nth(n.saturating_sub(1)) {
            Some(i) if n > 0 => r.start + i + 1..r.end,
            _ if n == 0 => r.end..r.end,
            _ => r,
        }
    } else {
        match memchr::memchr_iter(b'\n', &buf[r.clone()]).nth(n.saturating_sub(1)) {
            Some(i) if n > 0 => r.start..r.start + i + 1,
            _ if n == 0 => r.start..r.start,
            _ => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_aligned_when_searched_hold_every_line_once() {
        let mut m = Vec::new();
        let mut i = 0;
        while m.len() < 18 << 20 {
            m.extend_from_slice(format!("line {i} {}\n", "y".repeat(i % 500)).as_bytes());
            if i == 1000 {
                // A line longer than a piece.
                m.extend_from_slice(&vec![b'z'; PIECE + 100]);
                m.push(b'\n');
            }
            i += 1;
        }
        let first = memchr::memchr(b'\n', &m).unwrap() + 1;
        let r = first..m.len();
        let parts: Vec<Range<usize>> = pieces(r.clone())
            .into_iter()
            .map(|p| align(&m, p))
            .collect();
        assert!(parts.len() >= 3);
        let mut at = r.start;
        for p in &parts {
            assert_eq!(p.start, at, "adjoining");
            assert!(p.is_empty() || m[p.start - 1] == b'\n');
            at = p.end;
        }
        assert_eq!(at, r.end);
    }

    #[test]
    fn graded_pieces_cover_the_range_at_line_boundaries() {
        let mut m = Vec::new();
        let mut i = 0;
        while m.len() < 20 << 20 {
            m.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 300)).as_bytes());
            i += 1;
        }
        for from_end in [false, true] {
            let r = 5..m.len();
            let r = memchr::memchr(b'\n', &m[..])
                .map_or(0, |i| i + 1)
                .max(r.start)..r.end;
            let mut pieces = graded_pieces(&m, r.clone(), from_end);
            assert!(pieces[0].len() <= (1 << 20) + 400 && pieces.len() > 4);
            if from_end {
                pieces.reverse();
            }
            assert_eq!(pieces.first().unwrap().start, r.start);
            assert_eq!(pieces.last().unwrap().end, r.end);
            for w in pieces.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert_eq!(m[w[0].end - 1], b'\n');
            }
        }
    }

    #[test]
    fn cutting_lines_from_either_end() {
        let b = b"a\nbb\nccc\n";
        let all = 0..b.len();
        let text = |r: Range<usize>| String::from_utf8(b[r].to_vec()).unwrap();
        assert_eq!(text(cut_lines(b, all.clone(), 2, false)), "a\nbb\n");
        assert_eq!(text(cut_lines(b, all.clone(), 2, true)), "bb\nccc\n");
        assert_eq!(text(cut_lines(b, all.clone(), 1, true)), "ccc\n");
        assert_eq!(text(cut_lines(b, all.clone(), 5, true)), "a\nbb\nccc\n");
        assert_eq!(text(cut_lines(b, all.clone(), 5, false)), "a\nbb\nccc\n");
        assert_eq!(text(cut_lines(b, 2..5, 1, true)), "bb\n");
        assert_eq!(text(cut_lines(b, all, 0, true)), "");
    }
}
