//! Memory a node holds for its clients: the allocator tamed (few arenas, free pages handed
//! back), and the one budget every client-driven buffer is counted in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Set when a large buffer was freed: the trimming thread hands free pages back at its next
/// tick (within 200 ms) instead of its next period.
static TRIM_SOON: AtomicBool = AtomicBool::new(false);

/// A budget that falls this far below its peak since the last nudge asks for a trim soon
/// (64 MiB): a flood ended. Steady traffic, whose requests come and go, does not (a trim per
/// request gave back pages the next request faulted in again: 10% off push throughput).
pub const TRIM_AFTER_FREEING: usize = 64 << 20;

/// Ask the trimming thread to hand free memory back to the kernel within 200 ms: a client
/// that held many megabytes in small allocations (a stream's deduplication sets, a decoded
/// push) leaves them in the allocator's arenas, where only a trim returns them.
pub fn trim_soon() {
    TRIM_SOON.store(true, Ordering::Relaxed);
}

/// How often the trimming thread looks for a nudge, and how many of those ticks make its
/// regular period (10 s).
const TICK: Duration = Duration::from_millis(200);
const TICKS_PER_TRIM: u32 = 50;

/// Allocations of this size or more are mapped on their own and handed back to the kernel as
/// soon as they are freed (4 MiB: request bodies, decoded copies, batches of records). glibc
/// raises its own threshold to the largest block freed (up to 32 MiB), after which such
/// buffers come from, and fragment, the arenas; a fixed threshold keeps them out. Query
/// blocks (1 MiB) stay below it.
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free bytes at the top of a heap before `free` itself shrinks it (4 MiB).
const TRIM_THRESHOLD: i32 = MMAP_THRESHOLD;

/// Keep the allocator from holding on to memory a flood of clients used: at most a few malloc
/// arenas (glibc makes up to 8 per core, one per busy thread, and a freed buffer stays in the
/// arena of the thread that freed it), buffers of 4 MiB and more mapped on their own, and free
/// pages handed back to the kernel every 10 s, or within 200 ms of a [`trim_soon`], by a thread that ends when the returned guard is
/// dropped (with the node). Call it before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tame_the_allocator() -> std::sync::mpsc::Sender<()> {
    // SAFETY: mallopt is called before any thread but this one exists (the caller's promise).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        // A fixed mmap threshold also fixes the trim threshold at its 128 KiB default (glibc
        // keeps it at twice the dynamic mmap threshold otherwise): every free at the top of
        // a heap then shrank it, and the next allocation grew it again (7-16% of push
        // throughput). The mmap threshold (glibc would set twice it). Not more: only a free
        // shrinks the top of a thread's heap (`malloc_trim` does not), so a larger threshold
        // kept the tops of the heaps a flood had grown (50 MiB after it ended).
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
    let (guard, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(move || {
            let mut ticks = 0;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                ticks += 1;
                if TRIM_SOON.swap(false, Ordering::Relaxed) || ticks >= TICKS_PER_TRIM {
                    ticks = 0;
                    // SAFETY: malloc_trim only releases free memory.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            }
        })
        .ok();
    guard
}

/// Elsewhere the allocator is left as it is.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tame_the_allocator() -> std::sync::mpsc::Sender<()> {
    std::sync::mpsc::channel().0
}

/// The bytes all clients together may make the node hold (`-api.memory-budget`, 256 MiB):
/// push bodies as they arrive, their decompressed copies and the records decoded from them,
/// live streams' held records and remembered IDs, the ingest connections' buffers. What is
/// counted is what is held, as it is held; past the budget a request is refused (503, with a
/// reason) rather than waited for.
pub const DEFAULT_BUDGET: usize = 256 << 20;

/// A shared count of bytes held against a limit. Cheap to take from and give back to from any
/// thread (an atomic), so synchronous decoders count as they build.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: AtomicUsize,
    /// The most held since the last trim it asked for.
    peak: AtomicUsize,
}

/// Bytes held against a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Arc<Budget>,
    bytes: usize,
}

/// A budget had no room for what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "busy: clients hold {held_mib} MiB of the node's {limit_mib} MiB memory budget (-api.memory-budget); {want_kib} KiB more did not fit"
)]
pub struct Full {
    /// MiB held when it was refused.
    pub held_mib: usize,
    /// The budget, in MiB.
    pub limit_mib: usize,
    /// What was asked, in KiB.
    pub want_kib: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty hold, to grow as its owner takes memory.
    pub fn hold(self: &Arc<Self>) -> Hold {
        Hold {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// A hold of `bytes`, if they fit.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Result<Hold, Full> {
        let mut hold = self.hold();
        hold.grow(bytes)?;
        Ok(hold)
    }

    fn take(&self, bytes: usize) -> Result<(), Full> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&h| h <= self.limit)
            })
            .map(|before| {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
            })
            .map_err(|held| Full {
                held_mib: held >> 20,
                limit_mib: self.limit >> 20,
                want_kib: bytes.div_ceil(1024),
            })
    }
}

impl Hold {
    /// Hold `bytes` more, if they fit in the budget.
    pub fn grow(&mut self, bytes: usize) -> Result<(), Full> {
        self.budget.take(bytes)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Hold exactly `bytes`: more if they fit, or give back what is over.
    pub fn set(&mut self, bytes: usize) -> Result<(), Full> {
        if bytes > self.bytes {
            self.grow(bytes - self.bytes)
        } else {
            self.budget
                .held
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            self.bytes = bytes;
            Ok(())
        }
    }

    /// Hold exactly `bytes`, past the budget if need be: for memory its owner already holds
    /// and cannot give up (records taken for a client, not yet sent). Until it is given back,
    /// the budget refuses everyone else.
    pub fn force(&mut self, bytes: usize) {
        if bytes > self.bytes {
            let before = self
                .budget
                .held
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
            self.budget
                .peak
                .fetch_max(before + bytes - self.bytes, Ordering::Relaxed);
            self.bytes = bytes;
        } else {
            let _ = self.set(bytes);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The budget this hold counts against.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let now = self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        if self.budget.peak.load(Ordering::Relaxed) >= now + TRIM_AFTER_FREEING {
            self.budget.peak.store(now, Ordering::Relaxed);
            trim_soon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_count_against_one_limit_and_give_back_when_dropped() {
        let budget = Budget::new(10 << 20);
        let mut a = budget.try_hold(6 << 20).unwrap();
        let err = budget.try_hold(5 << 20).unwrap_err();
        assert_eq!((err.held_mib, err.limit_mib), (6, 10));
        assert!(err.to_string().contains("-api.memory-budget"), "{err}");
        let mut b = budget.hold();
        b.grow(4 << 20).unwrap();
        assert!(b.grow(1).is_err(), "full");
        assert_eq!(b.bytes(), 4 << 20, "a refused grow holds nothing more");
        a.set(1 << 20).unwrap();
        assert_eq!(budget.held(), 5 << 20);
        b.set(9 << 20).unwrap();
        assert!(a.set(2 << 20).is_err());
        a.force(3 << 20);
        assert_eq!(budget.held(), 12 << 20, "forced past the limit");
        assert!(budget.try_hold(1).is_err());
        a.force(1 << 20);
        drop(b);
        assert_eq!(budget.held(), 1 << 20);
        drop(a);
        assert_eq!(budget.held(), 0);
    }
}
