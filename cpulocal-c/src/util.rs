//! What every entry point shares: the panic guard, errno values, argument
//! checks and fallible boxes.

use core::ffi::c_int;
use core::panic::AssertUnwindSafe;

use cpulocal_rs::{Error, Index, Order};

use crate::{
    CPULOCAL_INDEX_CPU, CPULOCAL_INDEX_MM_CID, CPULOCAL_ORDER_RELAXED, CPULOCAL_ORDER_RELEASE,
};

/// Runs `f`, or returns `on_panic` if it panics: no panic unwinds into C
/// (which would abort the process at the `extern "C"` boundary). Arguments
/// are checked before every Rust call that documents a panic for them, so
/// a panic here is a broken invariant inside cpulocal (such as `membarrier`
/// failing after its registration succeeded), reported by Rust's panic
/// message on stderr.
#[inline(always)]
pub(crate) fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => on_panic,
    }
}

/// The value an entry point returns when a panic was caught.
pub(crate) const PANICKED: c_int = -libc::ENOTRECOVERABLE;

/// The negative errno value of a cpulocal error.
pub(crate) fn errno_of(e: &Error) -> c_int {
    -match e {
        Error::CpuOutOfRange { .. } => libc::ERANGE,
        Error::HeldByThisThread { .. } => libc::EDEADLK,
        Error::Full { .. } => libc::ENOSPC,
        Error::WouldBlock { .. } => libc::EAGAIN,
        Error::Alloc { .. } => libc::ENOMEM,
        Error::InvalidArgument { .. } => libc::EINVAL,
        _ => libc::EINVAL,
    }
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(value: c_int) {
    // SAFETY: glibc's errno location is the calling thread's, always valid.
    unsafe { *libc::__errno_location() = value };
}

/// A constructor's result for C: the object, or NULL with `errno` set to the
/// (positive) error value.
pub(crate) fn new_object<T>(make: impl FnOnce() -> Result<T, c_int>) -> *mut T {
    let made = guard(Err(libc::ENOMEM), || make().and_then(try_box));
    match made {
        Ok(p) => p,
        Err(e) => {
            set_errno(e);
            core::ptr::null_mut()
        }
    }
}

/// `value` in a box of its own, or `ENOMEM` if the allocator refuses (a
/// plain `Box::new` would abort the process).
fn try_box<T>(value: T) -> Result<*mut T, c_int> {
    let layout = std::alloc::Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(Box::into_raw(Box::new(value)));
    }
    // SAFETY: the layout's size is not zero.
    let p = unsafe { std::alloc::alloc(layout) }.cast::<T>();
    if p.is_null() {
        return Err(libc::ENOMEM);
    }
    // SAFETY: `p` is fresh memory of `T`'s layout; writing moves `value`
    // in, after which `Box::from_raw` (in the `_free` functions) owns it.
    unsafe { p.write(value) };
    Ok(p)
}

/// Frees an object made by [`new_object`]; NULL is a no-op.
///
/// # Safety
///
/// `p` is NULL or came from [`new_object`] and is not used again.
pub(crate) unsafe fn free_object<T>(p: *mut T) {
    if !p.is_null() {
        guard((), || {
            // SAFETY: allocated with `T`'s layout by the global allocator
            // and initialised (`try_box`), so a `Box<T>` may own it.
            drop(unsafe { Box::from_raw(p) })
        });
    }
}

/// The index mode a C constant names.
pub(crate) fn index_of(index: c_int) -> Result<Index, c_int> {
    match index {
        CPULOCAL_INDEX_CPU => Ok(Index::Cpu),
        CPULOCAL_INDEX_MM_CID => Ok(Index::MmCid),
        _ => Err(libc::EINVAL),
    }
}

/// The C constant of an index mode.
pub(crate) fn index_constant(index: Index) -> c_int {
    match index {
        Index::MmCid => CPULOCAL_INDEX_MM_CID,
        _ => CPULOCAL_INDEX_CPU,
    }
}

/// The order a C constant names.
pub(crate) fn order_of(order: c_int) -> Option<Order> {
    match order {
        CPULOCAL_ORDER_RELAXED => Some(Order::Relaxed),
        CPULOCAL_ORDER_RELEASE => Some(Order::Release),
        _ => None,
    }
}

/// Whether `p` may name a word: not NULL, and aligned as a `uintptr_t`.
pub(crate) fn is_word<T>(p: *const T) -> bool {
    !p.is_null() && (p as usize).is_multiple_of(core::mem::align_of::<usize>())
}

/// A count as C's `unsigned` (saturating: counts never come near it).
pub(crate) fn c_uint_of(n: usize) -> core::ffi::c_uint {
    core::ffi::c_uint::try_from(n).unwrap_or(core::ffi::c_uint::MAX)
}
