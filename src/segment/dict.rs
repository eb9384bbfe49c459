//! A v3 or v4 segment's zstd dictionary: raw content chosen from the segment's own record bodies, so
//! that each small block compresses as if the lines before it in the segment were in its
//! window.
//!
//! The lines that repeat most (by bytes saved: repeats × length) come first; the rest of the
//! budget is filled with lines taken evenly from the whole segment, which carry its templates.
//! zstd reads a dictionary as plain content (no training: choosing costs one hash per record),
//! and its matches are cheapest at the end, where the most repeated lines are put.

use std::collections::HashMap;

/// Choose at most `budget` bytes of dictionary from `bodies` (each a record body without its
/// `\n`, in segment order); each body taken is written with a `\n`.
pub(super) fn choose<'a>(bodies: impl Iterator<Item = &'a [u8]>, budget: usize) -> Vec<u8> {
    // Per distinct body: (times seen, first seen as).
    let mut seen: HashMap<&[u8], (u32, u32), foldhash::fast::FixedState> = HashMap::default();
    let mut all: Vec<&[u8]> = Vec::new();
    for b in bodies {
        let n = all.len() as u32;
        seen.entry(b).or_insert((0, n)).0 += 1;
        all.push(b);
    }
    let mut repeated: Vec<(u64, u32)> = seen
        .values()
        .filter(|(count, _)| *count > 1)
        .map(|&(count, first)| {
            (
                u64::from(count - 1) * (all[first as usize].len() as u64 + 1),
                first,
            )
        })
        .collect();
    repeated.sort_unstable_by(|a, b| b.cmp(a));
    let mut taken: Vec<u32> = Vec::new();
    let mut size = 0usize;
    for &(_, first) in &repeated {
        let len = all[first as usize].len() + 1;
        if size + len > budget {
            continue;
        }
        size += len;
        taken.push(first);
    }
    let mut out = Vec::with_capacity(budget.min(size + budget / 2));
    // The rest: lines seen once, evenly spread, before the repeated ones.
    if size < budget && !all.is_empty() {
        let room = budget - size;
        let total: usize = all.iter().map(|b| b.len() + 1).sum();
        let step = (total / room.max(1)).max(1);
        let mut acc = 0usize;
        for b in &all {
            acc += b.len() + 1;
            if acc >= step {
                acc -= step;
                if seen.get(b).is_some_and(|(c, _)| *c == 1) && out.len() + b.len() < room {
                    out.extend_from_slice(b);
                    out.push(b'\n');
                }
            }
        }
    }
    // Most saved last: nearest the block, cheapest to refer to.
    for &first in taken.iter().rev() {
        out.extend_from_slice(all[first as usize]);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_lines_first_within_the_budget() {
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for i in 0..1000 {
            bodies.push(format!("once {i} of a kind").into_bytes());
            bodies.push(b"health check ok".to_vec());
            if i % 10 == 0 {
                bodies.push(b"disk almost full on /var".to_vec());
            }
        }
        let d = choose(bodies.iter().map(|b| &b[..]), 200);
        assert!(d.len() <= 200);
        let s = String::from_utf8_lossy(&d);
        // The most bytes saved last; each repeated line once; singles fill the rest.
        assert!(
            s.ends_with("disk almost full on /var\nhealth check ok\n")
                || s.ends_with("health check ok\n"),
            "{s}"
        );
        assert_eq!(s.matches("health check ok").count(), 1);
        assert!(s.contains("once "), "{s}");
        assert!(choose(std::iter::empty(), 100).is_empty());
    }
}
