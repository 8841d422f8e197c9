//! Safe wrappers for the hand-written C rseq increment in `c/rseq_baseline.c`:
//! the fair baseline for [`PerCpuCounter::add`](cpulocal::PerCpuCounter::add).
//!
//! Compiled only on Linux x86_64 with glibc (`cfg(cpulocal_c_baseline)`, set by
//! `build.rs`). The C code uses glibc's rseq area of the calling thread; where
//! glibc did not register one, [`CSlots::add_loop`] returns [`NoRseq`].

use core::ffi::c_int;
use core::ptr::NonNull;

/// The C side's `struct cl_slots` (opaque here).
#[repr(C)]
struct RawSlots {
    _private: [u8; 0],
}

extern "C" {
    fn cl_c_rseq_available() -> c_int;
    fn cl_c_slots_new(ncpus: usize) -> *mut RawSlots;
    fn cl_c_slots_free(s: *mut RawSlots);
    fn cl_c_slots_sum(s: *const RawSlots) -> i64;
    fn cl_c_rseq_add_loop(s: *mut RawSlots, iters: u64) -> u64;
    fn cl_c_rseq_add_fence_loop(s: *mut RawSlots, iters: u64) -> u64;
}

/// What the C loops return when the calling thread has no rseq area.
const C_NO_RSEQ: u64 = u64::MAX;

/// The calling thread has no glibc-registered rseq area (glibc older than
/// 2.35, `GLIBC_TUNABLES=glibc.pthread.rseq=0`, seccomp ...), so the C baseline
/// cannot run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRseq;

impl core::fmt::Display for NoRseq {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the calling thread has no glibc-registered rseq area")
    }
}

impl std::error::Error for NoRseq {}

/// Whether the calling thread has a glibc-registered rseq area, which the C
/// baseline needs.
pub fn rseq_available() -> bool {
    // SAFETY: the C function only reads glibc's published symbols and this
    // thread's own rseq area.
    unsafe { cl_c_rseq_available() != 0 }
}

/// The C baseline's per-CPU array: one 128-byte slot per possible CPU, each
/// holding an `i64` that only rseq critical sections on that CPU write.
#[derive(Debug)]
pub struct CSlots {
    raw: NonNull<RawSlots>,
}

// SAFETY: the array is heap memory owned by this value; nothing in it is tied
// to the thread that allocated it.
unsafe impl Send for CSlots {}
// SAFETY: from shared references the C code only writes a slot inside an rseq
// critical section on that slot's CPU (so never two writers at once: the
// kernel aborts a section before another thread runs on that CPU) and reads
// slots with atomic loads.
unsafe impl Sync for CSlots {}

impl CSlots {
    /// A zeroed array with a slot for each of [`cpulocal::possible_cpus()`],
    /// the bound the kernel keeps every `cpu_id` below.
    ///
    /// # Panics
    ///
    /// If the allocation fails.
    pub fn new() -> Self {
        let ncpus = cpulocal::possible_cpus();
        // SAFETY: no preconditions; the result is checked for NULL.
        let raw = unsafe { cl_c_slots_new(ncpus) };
        let raw = NonNull::new(raw).expect("cl_c_slots_new: out of memory");
        CSlots { raw }
    }

    /// Adds 1 to the current CPU's slot `iters` times, entirely in C (one FFI
    /// call), retrying aborted sections. Returns the number of aborts.
    ///
    /// # Errors
    ///
    /// [`NoRseq`] (and nothing is added) if the calling thread has no
    /// glibc-registered rseq area.
    #[inline(never)]
    pub fn add_loop(&self, iters: u64) -> Result<u64, NoRseq> {
        // SAFETY: `raw` is a live array from `cl_c_slots_new` with a slot per
        // possible CPU; the C loop writes slots only inside rseq sections of
        // the calling thread (see the `Sync` impl).
        match unsafe { cl_c_rseq_add_loop(self.raw.as_ptr(), iters) } {
            C_NO_RSEQ => Err(NoRseq),
            aborts => Ok(aborts),
        }
    }

    /// As [`add_loop`](Self::add_loop), with cpulocal's extra fence check in
    /// the critical section (the fence words stay 0): isolates what the fence
    /// protocol costs the fast path.
    ///
    /// # Errors
    ///
    /// As [`add_loop`](Self::add_loop).
    #[inline(never)]
    pub fn add_fence_loop(&self, iters: u64) -> Result<u64, NoRseq> {
        // SAFETY: as in `add_loop`.
        match unsafe { cl_c_rseq_add_fence_loop(self.raw.as_ptr(), iters) } {
            C_NO_RSEQ => Err(NoRseq),
            aborts => Ok(aborts),
        }
    }

    /// The sum of all slots (each read atomically).
    pub fn sum(&self) -> i64 {
        // SAFETY: `raw` is a live array; the C function only loads from it.
        unsafe { cl_c_slots_sum(self.raw.as_ptr()) }
    }
}

impl Default for CSlots {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CSlots {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `cl_c_slots_new` and is freed exactly once;
        // `&mut self` means no loop is running on it.
        unsafe { cl_c_slots_free(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_across_threads() {
        if !rseq_available() {
            eprintln!("skipped: no glibc rseq area");
            return;
        }
        let slots = CSlots::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| slots.add_loop(100_000).unwrap());
                s.spawn(|| slots.add_fence_loop(100_000).unwrap());
            }
        });
        assert_eq!(slots.sum(), 800_000);
    }
}
