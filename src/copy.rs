//! `memcpy` and `memmove` for copies of 2 to 64 KiB on AMD processors under glibc < 2.39.
//!
//! # Why
//!
//! glibc before 2.39 copies 2 KiB and more with `rep movsb` on every CPU that advertises fast
//! string moves, AMD's Zen included. On Zen 3 and 4 that instruction runs up to 20× slower than a
//! vector loop when the destination is not aligned like the source (glibc bug 30994, fixed in 2.39
//! by never choosing it on AMD). Debian 12 ships 2.36. On this project's machines (AMD EPYC)
//! copying 16 KiB records went at 2.3 GB/s instead of ~50 GB/s: `cargo bench --bench core -- copy`
//! shows it, and `GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=2147483647` made a query that
//! returns 220 MB 14% faster, over TLS 22% (the TLS layers copy each record twice more).
//!
//! The variable has to be set before the process starts, so the binary defines `memcpy` and
//! `memmove` itself (`main.rs`), and they call [`memcpy`] and [`memmove`] here. These hand every
//! copy to glibc (through its exported `__memcpy_chk`/`__memmove_chk`, which are the same code)
//! unless the processor is AMD with AVX2, glibc is older than 2.39, and the copy is between
//! [`FROM`] and [`TO`] bytes: then a loop of unaligned 32-byte loads and aligned stores does it.
//! Smaller copies never reach `rep movsb`; larger ones glibc does well.

use std::sync::atomic::{AtomicU8, Ordering};

/// The smallest copy done here: glibc 2.36 starts `rep movsb` at 2112 bytes on these CPUs.
pub const FROM: usize = 2048;
/// The largest. A TLS record is 16 KiB. Larger copies (the CLI's 512 KiB output chunks, say)
/// measured no faster here, and above about 1 MiB glibc stops using `rep movsb` anyway.
pub const TO: usize = 64 << 10;

const UNKNOWN: u8 = 0;
const DECIDING: u8 = 1;
const GLIBC: u8 = 2;
const OURS: u8 = 3;

static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

unsafe extern "C" {
    fn __memcpy_chk(dst: *mut u8, src: *const u8, n: usize, dst_len: usize) -> *mut u8;
    fn __memmove_chk(dst: *mut u8, src: *const u8, n: usize, dst_len: usize) -> *mut u8;
    fn gnu_get_libc_version() -> *const std::ffi::c_char;
}

type Chk = unsafe extern "C" fn(*mut u8, *const u8, usize, usize) -> *mut u8;

/// A glibc copy function the compiler cannot recognise: it knows what `__memcpy_chk` does, and
/// would turn a call with no bound back into `memcpy`, which is this module: a loop forever.
#[inline(always)]
fn glibc(f: Chk) -> Chk {
    std::hint::black_box(f)
}

/// Whether copies in `FROM..=TO` are done here (decided once, on first use).
pub fn active() -> bool {
    match MODE.load(Ordering::Relaxed) {
        OURS => true,
        GLIBC | DECIDING => false,
        _ => decide(),
    }
}

#[cold]
fn decide() -> bool {
    if MODE
        .compare_exchange(UNKNOWN, DECIDING, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        // Another thread is deciding (or this one, if anything below copies): glibc meanwhile.
        return MODE.load(Ordering::Relaxed) == OURS;
    }
    let ours = amd() && std::arch::is_x86_feature_detected!("avx2") && old_glibc();
    MODE.store(if ours { OURS } else { GLIBC }, Ordering::Relaxed);
    ours
}

fn amd() -> bool {
    // cpuid leaf 0 exists on every x86_64 processor.
    let id = std::arch::x86_64::__cpuid(0);
    // "AuthenticAMD" in EBX, EDX, ECX.
    id.ebx == u32::from_le_bytes(*b"Auth")
        && id.edx == u32::from_le_bytes(*b"enti")
        && id.ecx == u32::from_le_bytes(*b"cAMD")
}

/// glibc older than 2.39, read without allocating (an allocation may copy, and copies come here).
fn old_glibc() -> bool {
    // SAFETY: glibc returns a static NUL-terminated string such as "2.36".
    let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_bytes();
    let mut parts = v.split(|&b| b == b'.').map(|p| {
        p.iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u32, |n, &b| {
                n.saturating_mul(10).saturating_add(u32::from(b - b'0'))
            })
    });
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) < (2, 39)
}

/// `memcpy`: `n` bytes from `src` to `dst`, which do not overlap.
///
/// # Safety
/// As `memcpy`: both ranges valid for `n` bytes, not overlapping.
#[inline]
pub unsafe fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (FROM..=TO).contains(&n) && active() {
        // SAFETY: the caller's contract; `active` checked AVX2.
        unsafe { forward(dst, src, n) };
        return dst;
    }
    // SAFETY: the caller's contract; `usize::MAX` turns the bounds check off.
    unsafe { glibc(__memcpy_chk)(dst, src, n, usize::MAX) }
}

/// `memmove`: `n` bytes from `src` to `dst`, which may overlap.
///
/// # Safety
/// As `memmove`: both ranges valid for `n` bytes.
#[inline]
pub unsafe fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (FROM..=TO).contains(&n) && active() {
        // A forward copy is right unless the destination starts inside the source.
        let (d, s) = (dst as usize, src as usize);
        // SAFETY: the caller's contract; `active` checked AVX2; the direction suits the overlap.
        unsafe {
            if d > s && d - s < n {
                backward(dst, src, n)
            } else {
                forward(dst, src, n)
            }
        }
        return dst;
    }
    // SAFETY: the caller's contract; `usize::MAX` turns the bounds check off.
    unsafe { glibc(__memmove_chk)(dst, src, n, usize::MAX) }
}

// Both loops load the first and the last 128 bytes before anything is stored and store them
// last, so the unaligned ends need no byte loop and an overlap never reads a byte already
// overwritten: going forward (destination below the source), each 128-byte block is loaded
// before any store reaches it; going backward, the mirror image. The blocks in between are
// stored at 32-byte aligned destinations. The loops are assembly so that the compiler cannot
// turn them back into a call to `memcpy`.

/// The first and last 128 bytes of `src` into `h0..h3` and `t0..t3`.
macro_rules! load_ends {
    () => {
        concat!(
            "vmovdqu {h0}, [{src}]\n",
            "vmovdqu {h1}, [{src} + 32]\n",
            "vmovdqu {h2}, [{src} + 64]\n",
            "vmovdqu {h3}, [{src} + 96]\n",
            "vmovdqu {t0}, [{src} + {n} - 128]\n",
            "vmovdqu {t1}, [{src} + {n} - 96]\n",
            "vmovdqu {t2}, [{src} + {n} - 64]\n",
            "vmovdqu {t3}, [{src} + {n} - 32]",
        )
    };
}

/// `h0..h3` and `t0..t3` into the first and last 128 bytes of `dst`.
macro_rules! store_ends {
    () => {
        concat!(
            "vmovdqu [{dst}], {h0}\n",
            "vmovdqu [{dst} + 32], {h1}\n",
            "vmovdqu [{dst} + 64], {h2}\n",
            "vmovdqu [{dst} + 96], {h3}\n",
            "vmovdqu [{dst} + {n} - 128], {t0}\n",
            "vmovdqu [{dst} + {n} - 96], {t1}\n",
            "vmovdqu [{dst} + {n} - 64], {t2}\n",
            "vmovdqu [{dst} + {n} - 32], {t3}",
        )
    };
}

/// Copy ascending. `n >= 256`; the ranges may overlap only with `dst < src`.
#[target_feature(enable = "avx2")]
unsafe fn forward(dst: *mut u8, src: *const u8, n: usize) {
    debug_assert!(n >= 256);
    // The first block: the one whose destination is aligned, in (96, 128].
    let start = 128 - ((dst as usize + 128) & 31);
    // SAFETY: every address is within [src, src + n) and [dst, dst + n), n >= 256.
    unsafe {
        std::arch::asm!(
            load_ends!(),
            "lea {end}, [{n} - 128]",
            "2:",
            "vmovdqu {v0}, [{src} + {off}]",
            "vmovdqu {v1}, [{src} + {off} + 32]",
            "vmovdqu {v2}, [{src} + {off} + 64]",
            "vmovdqu {v3}, [{src} + {off} + 96]",
            "vmovdqa [{dst} + {off}], {v0}",
            "vmovdqa [{dst} + {off} + 32], {v1}",
            "vmovdqa [{dst} + {off} + 64], {v2}",
            "vmovdqa [{dst} + {off} + 96], {v3}",
            "add {off}, 128",
            "cmp {off}, {end}",
            "jb 2b",
            store_ends!(),
            "vzeroupper",
            dst = in(reg) dst,
            src = in(reg) src,
            n = in(reg) n,
            off = inout(reg) start => _,
            end = out(reg) _,
            h0 = out(ymm_reg) _, h1 = out(ymm_reg) _, h2 = out(ymm_reg) _, h3 = out(ymm_reg) _,
            t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _, t3 = out(ymm_reg) _,
            v0 = out(ymm_reg) _, v1 = out(ymm_reg) _, v2 = out(ymm_reg) _, v3 = out(ymm_reg) _,
            options(nostack),
        );
    }
}

/// Copy descending. `n >= 256`; the ranges may overlap only with `dst > src`.
#[target_feature(enable = "avx2")]
unsafe fn backward(dst: *mut u8, src: *const u8, n: usize) {
    debug_assert!(n >= 256);
    // Where the first block ends: the lowest offset >= n - 128 with an aligned destination, so
    // that it meets the last 128 bytes; in [n - 128, n - 97].
    let top = n - 128 + ((32 - ((dst as usize + n - 128) & 31)) & 31);
    // SAFETY: every address is within [src, src + n) and [dst, dst + n), n >= 256.
    unsafe {
        std::arch::asm!(
            load_ends!(),
            "2:",
            "cmp {off}, 128",
            "jbe 3f",
            "sub {off}, 128",
            "vmovdqu {v0}, [{src} + {off} + 96]",
            "vmovdqu {v1}, [{src} + {off} + 64]",
            "vmovdqu {v2}, [{src} + {off} + 32]",
            "vmovdqu {v3}, [{src} + {off}]",
            "vmovdqa [{dst} + {off} + 96], {v0}",
            "vmovdqa [{dst} + {off} + 64], {v1}",
            "vmovdqa [{dst} + {off} + 32], {v2}",
            "vmovdqa [{dst} + {off}], {v3}",
            "jmp 2b",
            "3:",
            store_ends!(),
            "vzeroupper",
            dst = in(reg) dst,
            src = in(reg) src,
            n = in(reg) n,
            off = inout(reg) top => _,
            h0 = out(ymm_reg) _, h1 = out(ymm_reg) _, h2 = out(ymm_reg) _, h3 = out(ymm_reg) _,
            t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _, t3 = out(ymm_reg) _,
            v0 = out(ymm_reg) _, v1 = out(ymm_reg) _, v2 = out(ymm_reg) _, v3 = out(ymm_reg) _,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer of distinct-looking bytes.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn sizes() -> Vec<usize> {
        let mut v = vec![
            256,
            257,
            300,
            383,
            384,
            385,
            511,
            1000,
            FROM - 1,
            FROM,
            FROM + 1,
        ];
        v.extend([4095, 4096, 4097, 16384, 16389, 65536 + 77, TO - 1, TO]);
        v
    }

    #[test]
    fn forward_copies_every_size_and_alignment() {
        for n in sizes() {
            let src = pattern(n + 64, n as u64);
            for s_off in [0, 1, 7, 31, 32, 33] {
                for d_off in [0, 1, 5, 31, 32, 63] {
                    let mut dst = vec![0xAAu8; n + 128];
                    // SAFETY: both ranges in bounds, separate buffers; n >= 256.
                    unsafe { forward(dst.as_mut_ptr().add(d_off), src.as_ptr().add(s_off), n) };
                    assert_eq!(&dst[d_off..d_off + n], &src[s_off..s_off + n], "n={n}");
                    assert!(dst[..d_off].iter().all(|&b| b == 0xAA), "before, n={n}");
                    assert!(dst[d_off + n..].iter().all(|&b| b == 0xAA), "after, n={n}");
                }
            }
        }
    }

    #[test]
    fn overlapping_moves_match_copy_within() {
        for n in sizes() {
            // Distances both ways, small (inside one 128-byte block) and large.
            for dist in [1usize, 2, 31, 32, 33, 127, 128, 129, 200, n / 2, n - 1] {
                for (from, to) in [(dist, 0), (0, dist)] {
                    let buf = pattern(n + dist + 40, (n * 31 + dist) as u64);
                    for base in [0usize, 3, 32] {
                        let mut want = buf.clone();
                        want.copy_within(base + from..base + from + n, base + to);
                        let mut got = buf.clone();
                        let p = got.as_mut_ptr();
                        // SAFETY: both ranges within `got`; the direction suits the overlap.
                        unsafe {
                            if to > from {
                                backward(p.add(base + to), p.add(base + from), n)
                            } else {
                                forward(p.add(base + to), p.add(base + from), n)
                            }
                        }
                        assert!(got == want, "n={n} from={from} to={to} base={base}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_entry_points_agree_with_std_whichever_path_they_take() {
        for n in [0usize, 1, 100, FROM - 1, FROM, 9000, TO, TO + 1, 3 << 20] {
            let src = pattern(n + 1, 7);
            let mut dst = vec![0u8; n + 1];
            // SAFETY: separate buffers of at least n bytes.
            unsafe { memcpy(dst.as_mut_ptr().add(1), src.as_ptr(), n) };
            assert_eq!(&dst[1..], &src[..n]);
            let mut m = pattern(n + 300, 9);
            let mut want = m.clone();
            want.copy_within(0..n, 300);
            // SAFETY: both ranges within `m`.
            unsafe { memmove(m.as_mut_ptr().add(300), m.as_ptr(), n) };
            assert!(m == want, "memmove n={n}");
        }
    }

    #[test]
    fn the_glibc_version_is_read() {
        // Whatever the machine: deciding twice gives the same answer, and agrees with the parts.
        let first = active();
        assert_eq!(active(), first);
        assert_eq!(
            first,
            amd() && std::arch::is_x86_feature_detected!("avx2") && old_glibc()
        );
    }
}
