//! `cpulocal_domain`: `Domain`, the seven operation shapes on per-CPU words
//! the caller owns, and `cpulocal_percpu_addv`.

use core::ffi::{c_int, c_uint, c_void};

use cpulocal_rs::{Domain, Order};
use libc::{intptr_t, size_t, uintptr_t};

use crate::cpulocal_stats;
use crate::util::{
    c_uint_of, free_object, guard, index_constant, index_of, is_word, new_object, order_of,
    PANICKED,
};
use crate::CPULOCAL_COMPARE_FAILED;

/// A set of per-CPU fence words for per-CPU memory the caller owns
/// (opaque): the operation shapes and operation vectors run on it, each on
/// the data of one slot `cpu` (a CPU number, or a concurrency id).
///
/// Every operation of a domain on slot `cpu` is atomic with respect to every
/// other operation of that domain on slot `cpu`, wherever they run: on that
/// CPU it is a restartable sequence; from any other CPU, after
/// `RSEQ_ATTEMPTS` (8) aborts, or without rseq, it takes the slot's fence,
/// stops the critical sections working on that slot with `membarrier`, and
/// runs as ordinary code. The caller never retries; a failed compare
/// (`CPULOCAL_COMPARE_FAILED`) is the only "no".
///
/// The memory an operation names is the caller's: for each slot, the words
/// that slot's operations touch must be touched by no other code while the
/// domain is in use, except that other threads may read them with atomic
/// loads (`__atomic_load_n(p, __ATOMIC_RELAXED)`) as hints that a later
/// compare confirms. The bytes `cpulocal_domain_cbne_memcpy_store` copies are
/// copied bytewise: nobody may read those while a copy may run. Memory used
/// with one domain must not be used with another. Words are `uintptr_t`,
/// aligned to their size; adds wrap.
///
/// Every operation on a domain is async-signal-safe (no allocation; the
/// fenced path blocks signals while it holds a fence), with the first-call
/// caveat of `cpulocal_counter_add`.
pub struct cpulocal_domain {
    inner: Domain,
}

/// A domain whose slots are numbered by `index` (`CPULOCAL_INDEX_CPU` or
/// `CPULOCAL_INDEX_MM_CID`), with one fence per slot.
///
/// Returns: the domain, to be freed with `cpulocal_domain_free`; NULL with
/// `errno` set to `EINVAL` for another `index`, `ENOMEM` if it cannot be
/// allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_domain_new(index: c_int) -> *mut cpulocal_domain {
    new_object(|| {
        Ok(cpulocal_domain {
            inner: Domain::new(index_of(index)?),
        })
    })
}

/// Frees the domain (the caller's memory is not touched). No other thread
/// may use it meanwhile or after.
///
/// NULL: a no-op.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `d` is NULL or a domain from `cpulocal_domain_new` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_free(d: *mut cpulocal_domain) {
    // SAFETY: the caller's contract.
    unsafe { free_object(d) }
}

/// The number of slots: valid `cpu` arguments are below it.
///
/// Returns: the number of slots; 0 if `d` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_cpus(d: *const cpulocal_domain) -> c_uint {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { d.as_ref() }.map_or(0, |d| c_uint_of(d.inner.cpus()))
    })
}

/// How the slots are numbered: `CPULOCAL_INDEX_CPU`, or
/// `CPULOCAL_INDEX_MM_CID` where asked for and the kernel provides it.
///
/// Returns: the index mode; `-EINVAL` if `d` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_index(d: *const cpulocal_domain) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        unsafe { d.as_ref() }.map_or(-libc::EINVAL, |d| index_constant(d.inner.index()))
    })
}

/// The slot of the calling thread now: its CPU, or its concurrency id. The
/// thread may move right after; an operation on this slot is still correct,
/// only slower (fenced) if it did.
///
/// Returns: the slot, from 0 to `cpulocal_domain_cpus(d) - 1`; `-EINVAL` if
/// `d` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_current(d: *const cpulocal_domain) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        unsafe { d.as_ref() }.map_or(-libc::EINVAL, |d| {
            c_int::try_from(d.inner.current()).unwrap_or(-libc::ERANGE)
        })
    })
}

/// How many of the domain's shape operations left the fast path so far,
/// into `*out`.
///
/// Returns: 0; `-EINVAL` if `d` or `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_stats(
    d: *const cpulocal_domain,
    out: *mut cpulocal_stats,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(d), Some(out)) = (unsafe { d.as_ref() }, unsafe { out.as_mut() }) else {
            return -libc::EINVAL;
        };
        *out = d.inner.stats().into();
        0
    })
}

/// The domain, if `d` is not NULL and `cpu` is one of its slots.
///
/// # Safety
///
/// `d` is NULL or a live domain.
pub(crate) unsafe fn slot_of<'a>(
    d: *const cpulocal_domain,
    cpu: c_uint,
) -> Result<&'a Domain, c_int> {
    // SAFETY: the caller's contract.
    let d = &unsafe { d.as_ref() }.ok_or(-libc::EINVAL)?.inner;
    if cpu as usize >= d.cpus() {
        return Err(-libc::ERANGE);
    }
    Ok(d)
}

/// The order a C constant names, or `-EINVAL`.
fn order(order: c_int) -> Result<Order, c_int> {
    order_of(order).ok_or(-libc::EINVAL)
}

/// A word pointer, or `-EINVAL` if NULL or misaligned.
fn word<T>(p: *const T) -> Result<(), c_int> {
    if is_word(p) {
        Ok(())
    } else {
        Err(-libc::EINVAL)
    }
}

/// 0 for a commit, `CPULOCAL_COMPARE_FAILED` for a failed compare, or the
/// negative errno of a refused call.
fn outcome(r: Result<Result<(), cpulocal_rs::CompareFailed>, c_int>) -> c_int {
    match r {
        Ok(Ok(())) => 0,
        Ok(Err(cpulocal_rs::CompareFailed)) => CPULOCAL_COMPARE_FAILED,
        Err(e) => e,
    }
}

/// Compare-and-store on slot `cpu`'s word `v`: if `*v == expect`, `*v =
/// newv`. `order`: `CPULOCAL_ORDER_RELAXED` or `CPULOCAL_ORDER_RELEASE`
/// (the store publishes the caller's earlier stores).
///
/// Returns: 0 if stored; `CPULOCAL_COMPARE_FAILED` if `*v != expect`
/// (nothing stored); `-ERANGE` if `cpu >= cpulocal_domain_cpus(d)`;
/// `-EINVAL` if `d` or `v` is NULL, `v` is not aligned, or `order` is
/// neither order.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain; `v` is NULL or valid for reads and writes,
/// and slot `cpu`'s data in the sense of `cpulocal_domain`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_cbne_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    v: *mut uintptr_t,
    expect: uintptr_t,
    newv: uintptr_t,
    order_: c_int,
) -> c_int {
    guard(PANICKED, || {
        outcome((|| {
            // SAFETY: the caller's contract.
            let d = unsafe { slot_of(d, cpu) }?;
            word(v)?;
            let order = order(order_)?;
            // SAFETY: `cpu` is a slot (checked), `v` a word of its data (the
            // caller's contract; NULL and alignment checked).
            Ok(unsafe { d.cbne_store(cpu as usize, v, expect, newv, order) })
        })())
    })
}

/// Add on slot `cpu`'s word `v`: `*v += count` (wrapping).
///
/// Returns: 0; `-ERANGE` if `cpu` is out of range; `-EINVAL` if `d` or `v`
/// is NULL, `v` is not aligned, or `order` is neither order.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_domain_cbne_store`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_add_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    v: *mut uintptr_t,
    count: intptr_t,
    order_: c_int,
) -> c_int {
    guard(PANICKED, || {
        outcome((|| {
            // SAFETY: the caller's contract.
            let d = unsafe { slot_of(d, cpu) }?;
            word(v)?;
            let order = order(order_)?;
            // SAFETY: as in `cpulocal_domain_cbne_store`.
            unsafe { d.add_store(cpu as usize, v, count, order) };
            Ok(Ok(()))
        })())
    })
}

/// The per-CPU add of librseq's `rseq_load_add_store__ptr` on an array of
/// per-CPU words: adds `count` (wrapping) to the word at `base + stride *
/// slot`, for the slot the calling thread runs on (`cpulocal_domain_current`).
/// If the thread migrates before the add commits, the add still goes to the
/// word of the slot it read, through the fenced path.
///
/// Returns: 0; `-EINVAL` if `d` or `base` is NULL, or `base` or `stride` is
/// not a multiple of `sizeof(uintptr_t)`; `-ERANGE` if `stride * slot`
/// overflows.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain; for every slot `i`, the word at `base +
/// stride * i` is valid for reads and writes and is slot `i`'s data in the
/// sense of `cpulocal_domain`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_percpu_addv(
    d: *const cpulocal_domain,
    base: *mut c_void,
    stride: size_t,
    count: intptr_t,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(d) = (unsafe { d.as_ref() }) else {
            return -libc::EINVAL;
        };
        if !is_word(base) || !stride.is_multiple_of(core::mem::size_of::<usize>()) {
            return -libc::EINVAL;
        }
        let slot = d.inner.current();
        let Some(offset) = stride.checked_mul(slot) else {
            return -libc::ERANGE;
        };
        let v = base.cast::<u8>().wrapping_add(offset).cast::<usize>();
        // SAFETY: `slot` is the domain's (from `current`), `v` its aligned
        // word (the caller's contract; alignment checked).
        unsafe { d.inner.add_store(slot, v, count, Order::Relaxed) };
        0
    })
}

/// List pop on slot `cpu`'s word `v`: if `*v == expectnot`, nothing;
/// otherwise `*load = *v` (the head) and `*v = *(uintptr_t *)(*v +
/// offset)` (its link). Always relaxed: the store unlinks a node and
/// publishes nothing.
///
/// Returns: 0 if a head was popped into `*load`; `CPULOCAL_COMPARE_FAILED`
/// if `*v == expectnot` (the list is empty; `*load` untouched); `-ERANGE` if
/// `cpu` is out of range; `-EINVAL` if `d`, `v` or `load` is NULL or `v` is
/// not aligned.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_domain_cbne_store` for `v`; `load` is NULL or valid for
/// writing; and whenever `*v != expectnot`, `*v + offset` is a valid,
/// aligned `uintptr_t` that stays valid while any operation of this domain
/// may read it (nodes are freed only after they are popped).
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_cbeq_store_add_load_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    v: *mut uintptr_t,
    expectnot: uintptr_t,
    offset: size_t,
    load: *mut uintptr_t,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let d = match unsafe { slot_of(d, cpu) } {
            Ok(d) => d,
            Err(e) => return e,
        };
        if !is_word(v) || load.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: as in `cpulocal_domain_cbne_store`, and the links as the
        // caller promises.
        match unsafe { d.cbeq_store_add_load_store(cpu as usize, v, expectnot, offset) } {
            Some(head) => {
                // SAFETY: `load` is valid for writing (the caller).
                unsafe { load.write(head) };
                0
            }
            None => CPULOCAL_COMPARE_FAILED,
        }
    })
}

/// Store-store on slot `cpu`'s data: if `*v == expect`, `*v2 = newv2` then
/// `*v = newv` (with `CPULOCAL_ORDER_RELEASE`, a reader that acquires `v`
/// sees `v2`).
///
/// Returns: 0 if stored; `CPULOCAL_COMPARE_FAILED` if `*v != expect`
/// (nothing stored); `-ERANGE` if `cpu` is out of range; `-EINVAL` if `d`,
/// `v` or `v2` is NULL or misaligned, or `order` is neither order.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_domain_cbne_store`, for `v` and `v2`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_cbne_store_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    v: *mut uintptr_t,
    expect: uintptr_t,
    v2: *mut uintptr_t,
    newv2: uintptr_t,
    newv: uintptr_t,
    order_: c_int,
) -> c_int {
    guard(PANICKED, || {
        outcome((|| {
            // SAFETY: the caller's contract.
            let d = unsafe { slot_of(d, cpu) }?;
            word(v)?;
            word(v2)?;
            let order = order(order_)?;
            // SAFETY: as in `cpulocal_domain_cbne_store`, for both words.
            Ok(unsafe { d.cbne_store_store(cpu as usize, v, expect, v2, newv2, newv, order) })
        })())
    })
}

/// Copy-and-store on slot `cpu`'s data: if `*v == expect`, copy `len` bytes
/// from `src` to `dst`, then `*v = newv`.
///
/// Returns: 0 if copied and stored; `CPULOCAL_COMPARE_FAILED` if `*v !=
/// expect` (nothing stored, nothing copied); `-ERANGE` if `cpu` is out of
/// range; `-EINVAL` if `d`, `v`, `dst` or `src` is NULL, `v` is misaligned,
/// or `order` is neither order.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_domain_cbne_store` for `v`; `src` is valid for reads and
/// `dst` for writes of `len` bytes, and they do not overlap. Each is either
/// slot `cpu`'s data or memory private to the caller (a push copies an item
/// into the slot, a pop copies it out into a local whose bytes count only
/// once the call returns 0). No other thread may access the copied bytes
/// while the call may run, except through this domain's operations.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_cbne_memcpy_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    v: *mut uintptr_t,
    expect: uintptr_t,
    dst: *mut c_void,
    src: *const c_void,
    len: size_t,
    newv: uintptr_t,
    order_: c_int,
) -> c_int {
    guard(PANICKED, || {
        outcome((|| {
            // SAFETY: the caller's contract.
            let d = unsafe { slot_of(d, cpu) }?;
            word(v)?;
            if dst.is_null() || src.is_null() {
                return Err(-libc::EINVAL);
            }
            let order = order(order_)?;
            // SAFETY: as in `cpulocal_domain_cbne_store`, and the copy's ends
            // as the caller promises.
            Ok(unsafe {
                d.cbne_memcpy_store(
                    cpu as usize,
                    v,
                    expect,
                    dst.cast(),
                    src.cast(),
                    len,
                    newv,
                    order,
                )
            })
        })())
    })
}

/// Double compare on slot `cpu`'s data: if `*v == expect && *v2 ==
/// expect2`, `*v = newv`.
///
/// Returns: 0 if stored; `CPULOCAL_COMPARE_FAILED` if either compare failed
/// (nothing stored); `-ERANGE` if `cpu` is out of range; `-EINVAL` if `d`,
/// `v` or `v2` is NULL or misaligned, or `order` is neither order.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_domain_cbne_store` for `v`; `v2` is valid for reads, and
/// written meanwhile only with atomic stores or through this domain's
/// operations on slot `cpu`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_cbne_load_cbne_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    v: *mut uintptr_t,
    expect: uintptr_t,
    v2: *const uintptr_t,
    expect2: uintptr_t,
    newv: uintptr_t,
    order_: c_int,
) -> c_int {
    guard(PANICKED, || {
        outcome((|| {
            // SAFETY: the caller's contract.
            let d = unsafe { slot_of(d, cpu) }?;
            word(v)?;
            word(v2)?;
            let order = order(order_)?;
            // SAFETY: as in `cpulocal_domain_cbne_store`, `v2` as promised.
            Ok(
                unsafe {
                    d.cbne_load_cbne_store(cpu as usize, v, expect, v2, expect2, newv, order)
                },
            )
        })())
    })
}

/// Add through a pointer on slot `cpu`'s data: `*(uintptr_t *)(*ptr +
/// offset) += inc` (wrapping), where another operation may swap `*ptr`.
///
/// Returns: 0; `-ERANGE` if `cpu` is out of range; `-EINVAL` if `d` or `ptr`
/// is NULL or `ptr` is misaligned, or `order` is neither order.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain; `ptr` is NULL or valid for reads, slot
/// `cpu`'s data, changed only through this domain's operations on that slot;
/// `*ptr + offset` is a valid, aligned `uintptr_t` of slot `cpu`'s data, and
/// a target `*ptr` no longer points to stays valid while an operation that
/// read the old pointer may still run (free it only after a later operation
/// of this domain on the slot has completed).
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_add_load_add_store(
    d: *const cpulocal_domain,
    cpu: c_uint,
    ptr: *const uintptr_t,
    offset: size_t,
    inc: intptr_t,
    order_: c_int,
) -> c_int {
    guard(PANICKED, || {
        outcome((|| {
            // SAFETY: the caller's contract.
            let d = unsafe { slot_of(d, cpu) }?;
            word(ptr)?;
            let order = order(order_)?;
            // SAFETY: `cpu` is a slot (checked); the pointers as promised.
            unsafe { d.add_load_add_store(cpu as usize, ptr, offset, inc, order) };
            Ok(Ok(()))
        })())
    })
}
