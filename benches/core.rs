//! Micro-benchmarks of the hot paths: framing input lines into records (with ULIDs), the
//! k-way merge, the matcher over a segment, and the ingest segment writer.
//!
//! Also the floor under TLS: AES-128-GCM (ring, as rustls uses it) sealing and opening 16 KiB
//! records in place, beside a rustls server and client passing the same bytes in memory.
//!
//! `cargo bench --bench core`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oklog::merge::{self, SliceLines};
use oklog::record::{Framer, FramerConfig, TopicMode, UlidGenerator, encode_ulid};
use oklog::search::{Matcher, Matches};

/// `n` input lines of about 100 bytes, varied.
fn input(n: usize) -> Vec<u8> {
    let words = [
        "GET",
        "POST",
        "/api/v1/users",
        "200",
        "500",
        "ms",
        "user",
        "ERROR",
        "INFO",
        "db",
    ];
    let mut out = Vec::with_capacity(n * 100);
    let mut x = 42u64;
    for i in 0..n {
        let mut line = String::new();
        while line.len() < 90 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push_str(words[(x % words.len() as u64) as usize]);
            line.push(' ');
        }
        line.push_str(&i.to_string());
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A sorted segment of `n` records.
fn segment(n: usize, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in input(n).split_inclusive(|&b| b == b'\n').enumerate() {
        out.extend_from_slice(&encode_ulid(1_000_000 + (i as u64) * 2 + offset, 0));
        out.extend_from_slice(b" app ");
        out.extend_from_slice(line);
    }
    out
}

fn framing(c: &mut Criterion) {
    let data = input(100_000);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("frame 100k lines", |b| {
        b.iter(|| {
            let mut f = Framer::new(FramerConfig {
                topic: "default".into(),
                mode: TopicMode::Static,
                max_record_size: 1 << 20,
            });
            let mut out = Vec::with_capacity(data.len() * 2);
            for chunk in data.chunks(256 << 10) {
                f.push(chunk, 1_000_000, &mut out);
            }
            black_box(out.len())
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("ulid", |b| {
        let mut ids = UlidGenerator::new();
        b.iter(|| black_box(ids.next(1_000_000)))
    });
    g.finish();
}

fn merging(c: &mut Criterion) {
    let segs: Vec<Vec<u8>> = (0..4).map(|i| segment(25_000, i)).collect();
    let total: usize = segs.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("4-way merge, 100k records", |b| {
        b.iter(|| {
            let mut sources: Vec<SliceLines> = segs.iter().map(|s| SliceLines::new(s)).collect();
            let mut n = 0usize;
            merge::merge(&mut sources, |l| {
                n += l.len();
                Ok(true)
            })
            .unwrap();
            black_box(n)
        })
    });
    g.finish();
}

fn matching(c: &mut Criterion) {
    let seg = segment(200_000, 0);
    let mut g = c.benchmark_group("search");
    g.throughput(Throughput::Bytes(seg.len() as u64));
    for (name, q, regex) in [
        ("absent literal", "needle", false),
        ("literal, 10%", "ERROR 500", false),
        ("regex with literal", r"users \d+", true),
        ("regex without literal", r"[A-Z]{4}\s[0-9]{3}", true),
    ] {
        let m = Matcher::new(q, regex).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| black_box(Matches::new(&seg, 0, u64::MAX, &m).count()))
        });
    }
    g.finish();
}

fn filtering(c: &mut Criterion) {
    let records = segment(10_000, 0);
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Bytes(records.len() as u64));
    let mut builder = oklog::segment::FilterBuilder::default();
    let mut out = Vec::new();
    g.bench_function("needle filter of a 1 MiB block", |b| {
        b.iter(|| builder.build(black_box(&records), &mut out))
    });
    g.finish();
}

fn writing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(oklog::ingest::IngestLog::open(dir.path()).unwrap());
    let records = segment(10_000, 0);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(records.len() as u64));
    g.bench_function("segment writer, 1 MiB", |b| {
        let mut w = oklog::ingest::writer::SegmentWriter::new(
            std::sync::Arc::clone(&log),
            oklog::ingest::Rotation {
                flush_size: 64 << 20,
                flush_age: std::time::Duration::from_secs(3600),
            },
        );
        b.iter(|| w.write(&records).unwrap())
    });
    g.finish();
}

/// A CA-signed ECDSA P-256 certificate for 127.0.0.1 made by `openssl` (as the tests do).
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let sh = |args: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl: {args}");
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 1 -subj /CN=bench-ca",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout node.key -out node.csr -subj /CN=node && \
        echo subjectAltName=IP:127.0.0.1 > node.ext && \
        openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out node.pem -days 1 -extfile node.ext",
    );
    (
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    )
}

fn tls(c: &mut Criterion) {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use std::io::{Read, Write};
    const RECORD: usize = 16 << 10;
    const TOTAL: usize = 64 << 20;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).unwrap());
    let mut g = c.benchmark_group("tls");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    let mut buf = vec![b'x'; RECORD];
    g.bench_function("aes-128-gcm seal, 64 MiB in 16 KiB records", |b| {
        b.iter(|| {
            for i in 0..TOTAL / RECORD {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        &mut buf,
                    )
                    .unwrap();
                black_box(tag.as_ref()[0]);
            }
        })
    });
    let mut sealed = vec![b'x'; RECORD];
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut sealed,
        )
        .unwrap();
    sealed.extend_from_slice(tag.as_ref());
    g.bench_function(
        "aes-128-gcm open, 64 MiB in 16 KiB records (and a copy each)",
        |b| {
            let mut work = sealed.clone();
            b.iter(|| {
                for _ in 0..TOTAL / RECORD {
                    work.copy_from_slice(&sealed);
                    let plain = key
                        .open_in_place(
                            Nonce::assume_unique_for_key([0; 12]),
                            Aad::empty(),
                            &mut work,
                        )
                        .unwrap();
                    black_box(plain.len());
                }
            })
        },
    );

    // rustls end to end in memory: the server writes, the client reads.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file, ca) = pki(dir.path());
    let identity = oklog::security::tls::Identity::load(&cert, &key_file).unwrap();
    let server = oklog::security::tls::ServerTls::new(identity, None, false)
        .unwrap()
        .api;
    let client = oklog::security::tls::client_config(Some(&ca), None, None).unwrap();
    let mut s = rustls::ServerConnection::new(server).unwrap();
    let mut cl = rustls::ClientConnection::new(client, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut wire = Vec::new();
    while cl.is_handshaking() || s.is_handshaking() {
        wire.clear();
        cl.write_tls(&mut wire).unwrap();
        s.read_tls(&mut &wire[..]).unwrap();
        s.process_new_packets().unwrap();
        wire.clear();
        s.write_tls(&mut wire).unwrap();
        cl.read_tls(&mut &wire[..]).unwrap();
        cl.process_new_packets().unwrap();
    }
    s.set_buffer_limit(None);
    let chunk = vec![b'y'; 256 << 10];
    let mut out = vec![0u8; 64 << 10];
    g.bench_function("rustls server to client, 64 MiB", |b| {
        b.iter(|| {
            for _ in 0..TOTAL / chunk.len() {
                s.writer().write_all(&chunk).unwrap();
                wire.clear();
                while s.wants_write() {
                    s.write_tls(&mut wire).unwrap();
                }
                let mut input = &wire[..];
                while !input.is_empty() {
                    cl.read_tls(&mut input).unwrap();
                    cl.process_new_packets().unwrap();
                    while let Ok(n) = cl.reader().read(&mut out) {
                        if n == 0 {
                            break;
                        }
                        black_box(&out[..n]);
                    }
                }
            }
        })
    });
    g.finish();
}

/// A 64-byte aligned buffer.
struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![7u8; len + 64];
        let at = v.as_ptr().align_offset(64);
        Aligned(v, at)
    }
    fn as_ptr(&self) -> *const u8 {
        self.0[self.1..].as_ptr()
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0[self.1..].as_mut_ptr()
    }
}

/// The C library's `memcpy` with the destination aligned like the source and one byte past it:
/// tells whether this machine has glibc bug 30994 (`rep movsb` up to 20x slower on AMD Zen with a
/// misaligned destination, glibc < 2.39), which `docs/operating.md` works around with a tunable.
fn copying(c: &mut Criterion) {
    let mut g = c.benchmark_group("copy");
    for size in [4usize << 10, 16 << 10, 256 << 10, 512 << 10] {
        // Both 64-byte aligned, then the destination one byte further.
        let src = Aligned::new(size);
        let mut dst = Aligned::new(size + 1);
        g.throughput(Throughput::Bytes(size as u64));
        for skew in [0, 1] {
            let (d, s) = (dst.as_mut_ptr().wrapping_add(skew), src.as_ptr());
            g.bench_function(format!("libc {} KiB, skew {skew}", size >> 10), |b| {
                // SAFETY: separate buffers of `size` bytes from the pointers on.
                b.iter(|| unsafe { std::ptr::copy_nonoverlapping(black_box(s), d, size) })
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches, framing, merging, matching, filtering, writing, tls, copying
);
criterion_main!(benches);
