//! Memory a node holds for its clients: the allocator tamed (few arenas, free pages handed
//! back), and the one budget every client-driven buffer is counted in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set when a large buffer was freed: the trimming thread hands free pages back at its next
/// tick (within a second) instead of its next period.
static TRIM_SOON: AtomicBool = AtomicBool::new(false);

/// Freed allocations of this many bytes or more ask for a trim soon (8 MiB).
pub const TRIM_AFTER_FREEING: usize = 8 << 20;

/// Ask the trimming thread to hand free memory back to the kernel within a second: a client
/// that held many megabytes in small allocations (a stream's deduplication sets, a decoded
/// push) leaves them in the allocator's arenas, where only a trim returns them.
pub fn trim_soon() {
    TRIM_SOON.store(true, Ordering::Relaxed);
}

/// How often the trimming thread looks for a nudge, and how many of those ticks make its
/// regular period (10 s).
const TICK: Duration = Duration::from_secs(1);
const TICKS_PER_TRIM: u32 = 10;

/// Keep the allocator from holding on to memory a flood of clients used: at most a few malloc
/// arenas (glibc makes up to 8 per core, one per busy thread, and a freed buffer stays in the
/// arena of the thread that freed it), and free pages handed back to the kernel every 10 s, or
/// within a second of a [`trim_soon`], by a thread that ends when the returned guard is
/// dropped (with the node). Call it before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tame_the_allocator() -> std::sync::mpsc::Sender<()> {
    // SAFETY: mallopt is called before any thread but this one exists (the caller's promise).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
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
