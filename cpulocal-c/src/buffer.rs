//! `cpulocal_buffer`: `PerCpuBuffer` of `void *`.

use core::ffi::{c_int, c_uint, c_void};
use core::ptr::NonNull;

use cpulocal_rs::{PerCpuBuffer, PushError};
use libc::size_t;

use crate::cpulocal_stats;
use crate::util::{c_uint_of, errno_of, free_object, guard, index_of, new_object, PANICKED};

/// A bounded per-CPU stack of pointers (opaque): push and pop work on the
/// current CPU's buffer with one restartable sequence each (no atomic
/// instruction, no allocation); the `_on` forms and the drain reach any
/// CPU's buffer, through its fence when the caller runs elsewhere. Order is
/// last-in first-out per CPU; across CPUs there is none. A push onto a full
/// buffer is refused rather than look at other CPUs' buffers, so the caller
/// chooses where the pointer goes instead (a global pool, say). The buffer
/// stores pointers only: what they point to is the caller's. Every function
/// may be called from any number of threads at once, except
/// `cpulocal_buffer_free`.
pub struct cpulocal_buffer {
    inner: PerCpuBuffer<NonNull<c_void>>,
}

/// Called by `cpulocal_buffer_drain` with each pointer taken.
pub type cpulocal_buffer_item_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, item: *mut c_void)>;

/// An empty buffer of `capacity` pointers per possible CPU
/// (`cpulocal_buffer_new_with_index(CPULOCAL_INDEX_CPU, capacity)`).
///
/// Returns: the buffer, to be freed with `cpulocal_buffer_free`; NULL with
/// `errno` set to `EINVAL` if `capacity` is 0, `ENOMEM` if the entries
/// (`capacity` × slots pointers, zeroed lazily by the kernel) cannot be
/// allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_buffer_new(capacity: size_t) -> *mut cpulocal_buffer {
    cpulocal_buffer_new_with_index(crate::CPULOCAL_INDEX_CPU, capacity)
}

/// An empty buffer of `capacity` pointers per slot, the slots numbered by
/// `index` (`CPULOCAL_INDEX_CPU` or `CPULOCAL_INDEX_MM_CID`).
///
/// Returns: the buffer, or NULL with `errno` set: `EINVAL` if `capacity` is
/// 0 or `index` is neither mode, `ENOMEM` as for `cpulocal_buffer_new`.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_buffer_new_with_index(
    index: c_int,
    capacity: size_t,
) -> *mut cpulocal_buffer {
    new_object(|| {
        let by = index_of(index)?;
        PerCpuBuffer::try_with_index(by, capacity)
            .map(|inner| cpulocal_buffer { inner })
            .map_err(|e| -errno_of(&e))
    })
}

/// Frees the buffer. Pointers still in it are forgotten, not freed (what
/// they point to is the caller's): drain it first to get them back. No other
/// thread may use the buffer meanwhile or after.
///
/// NULL: a no-op.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `b` is NULL or a buffer from `cpulocal_buffer_new*` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_free(b: *mut cpulocal_buffer) {
    // SAFETY: the caller's contract.
    unsafe { free_object(b) }
}

/// Pushes `item` on the current CPU's buffer: one critical section.
///
/// Returns: 0; `-ENOSPC` if that buffer is full (the item stays the
/// caller's; other CPUs' buffers are not looked at); `-EINVAL` if `b` or
/// `item` is NULL.
///
/// Async-signal-safe: no (the fenced path may wait for another thread).
///
/// # Safety
///
/// `b` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_push(
    b: *const cpulocal_buffer,
    item: *mut c_void,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(b), Some(item)) = (unsafe { b.as_ref() }, NonNull::new(item)) else {
            return -libc::EINVAL;
        };
        match b.inner.push(item) {
            Ok(()) => 0,
            Err(_) => -libc::ENOSPC,
        }
    })
}

/// Pushes `item` on `cpu`'s buffer, from any CPU (a critical section if the
/// caller runs on `cpu`, the fenced path otherwise).
///
/// Returns: 0; `-ENOSPC` if that buffer is full; `-ERANGE` if `cpu >=
/// cpulocal_buffer_cpus(b)`; `-EINVAL` if `b` or `item` is NULL. When refused
/// the item stays the caller's.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `b` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_push_on(
    b: *const cpulocal_buffer,
    cpu: c_uint,
    item: *mut c_void,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(b), Some(item)) = (unsafe { b.as_ref() }, NonNull::new(item)) else {
            return -libc::EINVAL;
        };
        match b.inner.push_on(cpu as usize, item) {
            Ok(()) => 0,
            Err(PushError { error, .. }) => errno_of(&error),
        }
    })
}

/// Pops the pointer last pushed on the current CPU's buffer: one critical
/// section. Other CPUs' buffers are not looked at.
///
/// Returns: the pointer; NULL if that buffer is empty or `b` is NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `b` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_pop(b: *const cpulocal_buffer) -> *mut c_void {
    guard(core::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        unsafe { b.as_ref() }
            .and_then(|b| b.inner.pop())
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    })
}

/// Pops the pointer last pushed on `cpu`'s buffer, from any CPU, into
/// `*out` (NULL if that buffer is empty).
///
/// Returns: 0; `-ERANGE` if `cpu` is out of range; `-EINVAL` if `b` or `out`
/// is NULL. `*out` is written only when 0 is returned.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `b` is NULL or a live buffer; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_pop_on(
    b: *const cpulocal_buffer,
    cpu: c_uint,
    out: *mut *mut c_void,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(b) = (unsafe { b.as_ref() }) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return -libc::EINVAL;
        }
        match b.inner.pop_on(cpu as usize) {
            Ok(item) => {
                // SAFETY: valid for writing (the caller).
                unsafe { out.write(item.map_or(core::ptr::null_mut(), NonNull::as_ptr)) };
                0
            }
            Err(e) => errno_of(&e),
        }
    })
}

/// Takes every CPU's pointers, one CPU after the other (each buffer emptied
/// whole under its fence), and calls `f(arg, item)` for each, outside any
/// fence: `f` may use the buffer. Pointers pushed meanwhile on a buffer
/// already emptied stay for a later call.
///
/// Returns: the number of pointers handed to `f`; `-EINVAL` if `b` or `f` is
/// NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `b` is NULL or a live buffer; `f` is safe to call with `arg` and each
/// pointer, and does not unwind.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_drain(
    b: *const cpulocal_buffer,
    f: cpulocal_buffer_item_fn,
    arg: *mut c_void,
) -> isize {
    guard(PANICKED as isize, || {
        // SAFETY: the caller's contract.
        let (Some(b), Some(f)) = (unsafe { b.as_ref() }, f) else {
            return -libc::EINVAL as isize;
        };
        let mut n = 0isize;
        for item in b.inner.drain() {
            // SAFETY: the caller's contract for `f`.
            unsafe { f(arg, item.as_ptr()) };
            n += 1;
        }
        n
    })
}

/// How many pointers the buffers hold: a snapshot, one load of each CPU's
/// count.
///
/// Returns: the count; 0 if `b` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `b` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_len(b: *const cpulocal_buffer) -> size_t {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { b.as_ref() }.map_or(0, |b| b.inner.len())
    })
}

/// How many pointers each CPU's buffer holds at most.
///
/// Returns: the capacity per slot; 0 if `b` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `b` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_capacity(b: *const cpulocal_buffer) -> size_t {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { b.as_ref() }.map_or(0, |b| b.inner.capacity())
    })
}

/// The number of per-CPU buffers.
///
/// Returns: the number of slots; 0 if `b` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `b` is NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_cpus(b: *const cpulocal_buffer) -> c_uint {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { b.as_ref() }.map_or(0, |b| c_uint_of(b.inner.cpus()))
    })
}

/// How many of the buffer's operations left the fast path so far, into
/// `*out`.
///
/// Returns: 0; `-EINVAL` if `b` or `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `b` is NULL or a live buffer; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_buffer_stats(
    b: *const cpulocal_buffer,
    out: *mut cpulocal_stats,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(b), Some(out)) = (unsafe { b.as_ref() }, unsafe { out.as_mut() }) else {
            return -libc::EINVAL;
        };
        *out = b.inner.stats().into();
        0
    })
}
