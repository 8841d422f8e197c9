//! `cpulocal_counter`: `PerCpuCounter`.

use core::ffi::{c_int, c_uint};

use cpulocal_rs::PerCpuCounter;
use libc::size_t;

use crate::cpulocal_stats;
use crate::util::{
    c_uint_of, errno_of, free_object, guard, index_constant, index_of, new_object, PANICKED,
};

/// A counter with one slot per CPU (opaque). Adding is one restartable
/// sequence on the current CPU's slot, with no atomic instruction; reading
/// sums the slots. Values wrap on overflow (two's complement). Every
/// function may be called from any number of threads at once, except
/// `cpulocal_counter_free`.
pub struct cpulocal_counter {
    inner: PerCpuCounter,
}

/// A counter at zero, with one slot per possible CPU
/// (`cpulocal_counter_new_with_index(CPULOCAL_INDEX_CPU)`). The first
/// constructor of the process also decides the engine (rseq and membarrier
/// registration), so that operations, which may run in signal handlers,
/// never have to.
///
/// Returns: the counter, to be freed with `cpulocal_counter_free`; NULL if it
/// cannot be allocated, with `errno` set to `ENOMEM`.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_counter_new() -> *mut cpulocal_counter {
    cpulocal_counter_new_with_index(crate::CPULOCAL_INDEX_CPU)
}

/// A counter at zero whose slots are numbered by `index`:
/// `CPULOCAL_INDEX_CPU` or `CPULOCAL_INDEX_MM_CID`.
///
/// Returns: the counter, or NULL with `errno` set: `EINVAL` for another
/// `index`, `ENOMEM` if it cannot be allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_counter_new_with_index(index: c_int) -> *mut cpulocal_counter {
    new_object(|| {
        let by = index_of(index)?;
        Ok(cpulocal_counter {
            inner: PerCpuCounter::with_index(by),
        })
    })
}

/// Frees the counter. No other thread may use it meanwhile or after.
///
/// NULL: a no-op.
///
/// Async-signal-safe: no (it frees memory).
///
/// # Safety
///
/// `c` is NULL or a counter from `cpulocal_counter_new*` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_free(c: *mut cpulocal_counter) {
    // SAFETY: the caller's contract.
    unsafe { free_object(c) }
}

/// Adds `n` to the slot of the CPU the calling thread runs on: one critical
/// section, or the fenced path after `RSEQ_ATTEMPTS` (8) aborts in a row (a
/// debugger single-stepping it, a preemption storm), on a slot another thread
/// has fenced, or without rseq. The caller never retries.
///
/// NULL: `c` NULL is a no-op.
///
/// Async-signal-safe: yes. It may be called from a signal handler, also one
/// that interrupted an add of the same thread, without deadlock or loss. One
/// caveat: where cpulocal registers rseq itself (glibc did not), a thread's
/// first cpulocal call may allocate: call `cpulocal_current_cpu()` once in
/// such threads before their handlers may run.
///
/// # Safety
///
/// `c` is NULL or a live counter.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_add(c: *mut cpulocal_counter, n: i64) {
    guard((), || {
        // SAFETY: the caller's contract.
        if let Some(c) = unsafe { c.as_ref() } {
            c.inner.add(n);
        }
    })
}

/// Adds `n` to the slot of `cpu` (a concurrency id for
/// `CPULOCAL_INDEX_MM_CID`), from any CPU: a critical section when the caller
/// runs on `cpu`, otherwise the fenced path on that slot (ordinary code under
/// the slot's fence word, after a `membarrier` that stops the critical
/// sections running on it). The caller never retries.
///
/// Returns: 0; `-ERANGE` if `cpu >= cpulocal_counter_cpus(c)` (nothing
/// added); `-EINVAL` if `c` is NULL.
///
/// Async-signal-safe: yes, as `cpulocal_counter_add`.
///
/// # Safety
///
/// `c` is NULL or a live counter.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_add_on(
    c: *mut cpulocal_counter,
    cpu: c_uint,
    n: i64,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(c) = (unsafe { c.as_ref() }) else {
            return -libc::EINVAL;
        };
        match c.inner.add_on(cpu as usize, n) {
            Ok(()) => 0,
            Err(e) => errno_of(&e),
        }
    })
}

/// The sum of all slots (wrapping). Concurrent adds may or may not be
/// included; each slot is read atomically.
///
/// Returns: the sum; 0 if `c` is NULL.
///
/// Async-signal-safe: no (it allocates a snapshot of the slots).
///
/// # Safety
///
/// `c` is NULL or a live counter.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_sum(c: *const cpulocal_counter) -> i64 {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { c.as_ref() }.map_or(0, |c| c.inner.sum())
    })
}

/// Resets every slot to zero and returns what they held (wrapping sum). No
/// concurrent add is lost: each slot is swapped to zero under its fence, so
/// every add lands either before the swap (and is returned) or after it (and
/// stays in the counter).
///
/// Returns: the sum taken; 0 if `c` is NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `c` is NULL or a live counter.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_take(c: *mut cpulocal_counter) -> i64 {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { c.as_ref() }.map_or(0, |c| c.inner.take())
    })
}

/// The number of slots: `cpulocal_possible_cpus()` for `CPULOCAL_INDEX_CPU`,
/// possibly fewer for `CPULOCAL_INDEX_MM_CID`.
///
/// Returns: the number of slots; 0 if `c` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `c` is NULL or a live counter.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_cpus(c: *const cpulocal_counter) -> c_uint {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { c.as_ref() }.map_or(0, |c| c_uint_of(c.inner.cpus()))
    })
}

/// How the slots are numbered: `CPULOCAL_INDEX_CPU`, or
/// `CPULOCAL_INDEX_MM_CID` where asked for and the kernel provides it.
///
/// Returns: the index mode; `-EINVAL` if `c` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `c` is NULL or a live counter.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_index(c: *const cpulocal_counter) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        unsafe { c.as_ref() }.map_or(-libc::EINVAL, |c| index_constant(c.inner.index()))
    })
}

/// A snapshot of the slots: writes the first `min(n, slots)` of them, in
/// CPU order, to `out`.
///
/// Returns: the number of slots (as `snprintf` returns the length it needed);
/// 0 if `c` is NULL, or if `out` is NULL while `n > 0`.
///
/// Async-signal-safe: no (it allocates).
///
/// # Safety
///
/// `c` is NULL or a live counter; `out` is valid for writing `n` values.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_per_cpu(
    c: *const cpulocal_counter,
    out: *mut i64,
    n: size_t,
) -> size_t {
    guard(0, || {
        // SAFETY: the caller's contract.
        let Some(c) = (unsafe { c.as_ref() }) else {
            return 0;
        };
        if out.is_null() && n > 0 {
            return 0;
        }
        let values = c.inner.per_cpu();
        for (i, v) in values.iter().take(n).enumerate() {
            // SAFETY: `i < n`, and `out` holds `n` values (the caller).
            unsafe { out.add(i).write(*v) };
        }
        values.len()
    })
}

/// How many of the counter's operations left the fast path so far, into
/// `*out`.
///
/// Returns: 0; `-EINVAL` if `c` or `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `c` is NULL or a live counter; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_counter_stats(
    c: *const cpulocal_counter,
    out: *mut cpulocal_stats,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(c), Some(out)) = (unsafe { c.as_ref() }, unsafe { out.as_mut() }) else {
            return -libc::EINVAL;
        };
        *out = c.inner.stats().into();
        0
    })
}
