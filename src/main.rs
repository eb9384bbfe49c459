//! The `oklog` binary: pick the mode, run it, exit with its code.

fn main() {
    std::process::exit(oklog::cli::main(std::env::args().collect()));
}

/// The binary's own `memcpy` and `memmove`: glibc's, except for the copies
/// [`oklog::copy`] does itself on AMD processors under glibc < 2.39 (why: see there).
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod copy {
    /// `memcpy(3)`.
    ///
    /// # Safety
    /// As `memcpy`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { oklog::copy::memcpy(dst, src, n) }
    }

    /// `memmove(3)`.
    ///
    /// # Safety
    /// As `memmove`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract is memmove's.
        unsafe { oklog::copy::memmove(dst, src, n) }
    }
}
