use rand::{RngExt, SeedableRng};

use std::io;

use super::block::{filter, read as read_block};
use super::*;
use crate::record::encode_ulid;

/// A raw segment of `n` records over `topics` topics, with some lines long, some with bytes
/// that are not UTF-8, sorted and unique.
pub(crate) fn raw_segment(seed: u64, n: usize, topics: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut ms = 1_600_000_000_000u64;
    for i in 0..n {
        ms += rng.random_range(0..3u64);
        out.extend_from_slice(&encode_ulid(
            ms,
            (i as u128) << 20 | rng.random_range(0..1u128 << 20),
        ));
        out.push(b' ');
        let t = rng.random_range(0..topics.max(1));
        // A few topics dominate, as in real stores.
        let t = if rng.random_bool(0.7) { t % 3 } else { t };
        out.extend_from_slice(format!("topic-{t} ").as_bytes());
        match rng.random_range(0..20) {
            0 => out.extend_from_slice(&[0xff, 0xfe, b'x', 0xc3]),
            1 => out.extend(std::iter::repeat_n(b'L', rng.random_range(0..5000))),
            _ => {}
        }
        out.extend_from_slice(
            format!(
                "GET /api/v{} user={} status={} took={}ms",
                rng.random_range(1..4),
                rng.random_range(0..500),
                [200, 404, 500][rng.random_range(0..3)],
                rng.random_range(0..2000)
            )
            .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

fn small() -> CompressConfig {
    CompressConfig {
        level: 1,
        block_size: 4096,
        group_size: 64 << 10,
        max_topics: 8,
        ..CompressConfig::default()
    }
}

/// Every record of `file` through [`GroupLines`], and the blocks it could not read.
fn read_all(file: &[u8]) -> (Vec<u8>, Vec<(usize, BlockError)>) {
    use crate::merge::Source;
    let mut g = GroupLines::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(l) = g.current() {
        out.extend_from_slice(l);
        g.advance().unwrap();
    }
    (out, g.corrupt)
}

fn decompress_all(file: &[u8]) -> Vec<u8> {
    let (out, corrupt) = read_all(file);
    assert!(corrupt.is_empty(), "{corrupt:?}");
    out
}

#[test]
fn round_trips_are_exact_for_any_shape() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for case in 0..40 {
        let n = rng.random_range(1..3000);
        let topics = rng.random_range(1..40);
        let raw = raw_segment(case, n, topics);
        let cfg = CompressConfig {
            level: rng.random_range(1..4),
            block_size: rng.random_range(1..20_000),
            group_size: rng.random_range(1..200_000),
            max_topics: rng.random_range(0..10),
            version: if case % 3 == 0 { VERSION_2 } else { VERSION },
            dict_size: [0, 100, 100_000][case as usize % 3],
            dict_share: rng.random_range(1..40),
        };
        let mut file = Vec::new();
        let sum = compress(&raw, &mut file, &cfg).unwrap();
        assert_eq!(sum.records, n as u64);
        assert_eq!(sum.file_bytes, file.len() as u64);
        assert_eq!(Format::of(&file), Format::Compressed);
        let footer = Footer::parse(&file).unwrap();
        assert_eq!(footer.records, n as u64);
        assert_eq!(footer.raw_bytes, raw.len() as u64);
        assert_eq!(&footer.low[..], &raw[..26]);
        assert_eq!(
            decompress_all(&file),
            raw,
            "case {case}: {cfg:?}, {} blocks",
            footer.blocks.len()
        );
        // Every block holds one topic (or is mixed), sorted, within its group's range.
        for g in &footer.groups {
            for b in footer.group_blocks(g) {
                assert!(g.low <= b.low && b.high <= g.high);
                if b.topic != MIXED {
                    let mut dec = decompressor().unwrap();
                    let mut lines = Vec::new();
                    read_block(&file, &footer, b, &mut dec, &mut lines).unwrap();
                    let want = footer.topic_name(b);
                    for l in lines.split_inclusive(|&c| c == b'\n') {
                        assert!(l[27..].starts_with(want), "block of {want:?}");
                    }
                }
            }
        }
        let topic_records: u64 = footer.topics.iter().map(|t| t.records).sum();
        let mixed: u64 = footer
            .blocks
            .iter()
            .filter(|b| b.topic == MIXED)
            .map(|b| u64::from(b.records))
            .sum();
        assert_eq!(topic_records + mixed, n as u64);
    }
}

#[test]
fn bad_input_is_refused() {
    let cfg = small();
    for (raw, why) in [
        (&b""[..], "no records"),
        (b"01BB6RQR190000000000000000 a", "no newline"),
        (b"not a record, though long enough\n", "valid ULID"),
        (
            b"01BB6RQR190000000000000001 a\n01BB6RQR190000000000000000 b\n",
            "not after",
        ),
    ] {
        let e = compress(raw, Vec::new(), &cfg).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn a_block_declaring_more_than_a_block_holds_is_refused_unread_and_long_records_stay_raw() {
    let raw = raw_segment(6, 200, 2);
    let mut file = Vec::new();
    compress(&raw, &mut file, &small()).unwrap();
    let footer = Footer::parse(&file).unwrap();
    let mut block = footer.blocks[0].clone();
    block.raw_len = 1 << 30;
    let mut dec = block::decompressor().unwrap();
    let mut out = Vec::new();
    let e = read_block(&&file[..], &footer, &block, &mut dec, &mut out).unwrap_err();
    assert!(
        matches!(&e, BlockError::Decompress(m) if m.contains("declares 1073741824")),
        "{e:?}"
    );
    assert!(out.capacity() < 1 << 20, "nothing allocated for it");
    // A record longer than a block may hold: the writer refuses it (the segment stays raw).
    let mut long = b"01BB6RQR190000000000000000 ".to_vec();
    long.extend(std::iter::repeat_n(b'x', MAX_BLOCK_RAW));
    long.push(b'\n');
    let e = compress(&long, Vec::new(), &small()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("stays raw"), "{e}");
}

#[test]
fn a_repeated_id_is_left_out_as_a_merge_would() {
    let raw = b"01BB6RQR190000000000000001 t a\n01BB6RQR190000000000000001 t b\n01BB6RQR190000000000000002 u c\n01BB6RQR190000000000000002 u d\n";
    let mut file = Vec::new();
    let sum = compress(raw, &mut file, &small()).unwrap();
    assert_eq!(sum.records, 2);
    assert_eq!(
        decompress_all(&file),
        b"01BB6RQR190000000000000001 t a\n01BB6RQR190000000000000002 u c\n"
    );
}

#[test]
fn a_flipped_byte_costs_one_block_and_a_torn_footer_the_file() {
    let raw = raw_segment(5, 2000, 5);
    let mut file = Vec::new();
    compress(&raw, &mut file, &small()).unwrap();
    let footer = Footer::parse(&file).unwrap();
    assert!(footer.blocks.len() > 10);
    // Flip one byte inside block 3's stored bytes.
    let victim = &footer.blocks[3];
    let mut bad_file = file.clone();
    bad_file[victim.offset as usize + victim.stored_len as usize / 2] ^= 0x40;
    let (out, corrupt) = read_all(&bad_file);
    assert_eq!(corrupt, vec![(3, BlockError::Checksum)]);
    assert_eq!(
        out.split_inclusive(|&c| c == b'\n').count(),
        2000 - victim.records as usize,
        "every other record is still read"
    );
    // Any byte of the index or trailer flipped, or the file cut short: the footer is refused.
    let last = footer.blocks.last().unwrap();
    let index_at = (last.filter_offset + u64::from(last.filter_len)) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let mut f = file.clone();
        let i = rng.random_range(index_at..f.len());
        f[i] ^= 1 << rng.random_range(0..8);
        assert!(Footer::parse(&f).is_err(), "flip at {i} of {}", f.len());
    }
    for cut in [1, 10, 31, 32, 100, file.len() / 2, file.len() - 1] {
        assert!(
            Footer::parse(&file[..file.len() - cut]).is_err(),
            "cut {cut}"
        );
    }
}

#[test]
fn filters_never_rule_out_a_block_that_holds_the_needle() {
    let raw = raw_segment(11, 3000, 6);
    let mut file = Vec::new();
    compress(&raw, &mut file, &small()).unwrap();
    let footer = Footer::parse(&file).unwrap();
    let mut dec = decompressor().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (mut skipped, mut checked) = (0, 0);
    for b in &footer.blocks {
        let mut lines = Vec::new();
        read_block(&file, &footer, b, &mut dec, &mut lines).unwrap();
        let f = filter(&file, b).unwrap();
        for _ in 0..30 {
            // A needle cut from some body of this block, or made up.
            let needle: Vec<u8> = if rng.random_bool(0.5) {
                let l: Vec<&[u8]> = lines.split_inclusive(|&c| c == b'\n').collect();
                let l = &l[rng.random_range(0..l.len())];
                let body = &l[27..l.len() - 1];
                let s = rng.random_range(0..body.len());
                let e = (s + rng.random_range(1..12)).min(body.len());
                body[s..e].to_vec()
            } else {
                format!("user={}", rng.random_range(0..100_000)).into_bytes()
            };
            let present = lines
                .split(|&c| c == b'\n')
                .any(|l| l.len() > 27 && memchr::memmem::find(&l[27..], &needle).is_some());
            let q = String::from_utf8_lossy(&needle).into_owned();
            let needles = Needles::new(&q, false);
            let maybe = if footer.version >= 4 {
                items::may_match(&needles.items(&footer.common), &f)
            } else {
                needles.may_match(&f)
            };
            if present && q.as_bytes() == needle {
                assert!(maybe, "{q:?} is in the block but was ruled out");
            }
            checked += 1;
            if !maybe {
                skipped += 1;
            }
        }
    }
    assert!(
        skipped > checked / 10,
        "the filter rules out absent needles ({skipped}/{checked})"
    );
}
