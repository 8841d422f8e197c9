//! `cpulocal_lock`: `PerCpuLock` around per-CPU bytes the library
//! allocates; the guard lives in the caller's `cpulocal_lock_guard`.

use core::ffi::{c_int, c_uint, c_void};
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use cpulocal_rs::{Error, PerCpuLock, PerCpuLockGuard};
use libc::{size_t, uintptr_t};

use crate::cpulocal_stats;
use crate::util::{c_uint_of, errno_of, free_object, guard, index_of, new_object, PANICKED};

/// Alignment (and size granularity) of each slot's data: a cache line pair,
/// so no two slots' data share a line or an adjacent-line prefetch.
pub const CPULOCAL_LOCK_DATA_ALIGN: c_uint = 128;

/// One slot's data: `layout.size()` zeroed bytes.
struct Data {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the bytes are owned by the lock and reached through its guard, one
// thread at a time, as a `Box<[u8]>` would be.
unsafe impl Send for Data {}

impl Drop for Data {
    fn drop(&mut self) {
        // SAFETY: allocated with `layout` by `alloc_zeroed` (`Data::new`).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl Data {
    /// `size` zeroed bytes (at least one, rounded up to the alignment), or
    /// `ENOMEM` / `EINVAL` (a size that overflows).
    fn new(size: usize) -> Result<Data, c_int> {
        let align = CPULOCAL_LOCK_DATA_ALIGN as usize;
        let rounded = size
            .max(1)
            .checked_next_multiple_of(align)
            .ok_or(libc::ENOMEM)?;
        let layout =
            std::alloc::Layout::from_size_align(rounded, align).map_err(|_| libc::ENOMEM)?;
        // SAFETY: the layout's size is not zero.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(libc::ENOMEM)?;
        Ok(Data { ptr, layout })
    }
}

/// A per-CPU spinlock around per-CPU data (opaque): each slot holds
/// `data_size` bytes the library allocates, zeroed, aligned to
/// `CPULOCAL_LOCK_DATA_ALIGN`, reached only through a guard. Locking the
/// current CPU's slot is one restartable sequence (compare-and-store, no
/// atomic instruction); any CPU's slot can be locked through its fence. It
/// is a spinlock: a waiter spins briefly, then yields its CPU; keep held
/// sections short. A thread holds a slot until it releases the guard,
/// wherever the thread runs meanwhile. Every function may be called from
/// any number of threads at once, except `cpulocal_lock_free`.
pub struct cpulocal_lock {
    /// Every slot's data is `Some` (checked at construction).
    inner: PerCpuLock<Option<Data>>,
}

/// A held slot of a `cpulocal_lock`, in the caller's memory (a local
/// variable, typically). Filled by the `_acquire` functions, emptied by
/// `cpulocal_lock_release`. Only the thread that acquired it may release it,
/// and it must be released before the lock is freed. Release the guard the
/// `_acquire` call filled, not a copy of it (a copy released as well would
/// unlock the slot under its next holder).
#[repr(C)]
#[derive(Debug)]
pub struct cpulocal_lock_guard {
    /// The held slot's `data_size` bytes; NULL when the guard holds nothing.
    pub data: *mut c_void,
    /// The CPU (or concurrency id) whose slot is held.
    pub cpu: c_uint,
    /// The library's; do not touch.
    pub opaque: [uintptr_t; 3],
}

/// The Rust guard kept in `opaque`.
type Held = PerCpuLockGuard<'static, Option<Data>>;

const _: () = assert!(size_of::<Held>() <= size_of::<[uintptr_t; 3]>());
const _: () = assert!(align_of::<Held>() <= align_of::<uintptr_t>());

impl cpulocal_lock_guard {
    /// Keeps `held` in the guard.
    fn fill(&mut self, held: Held) {
        self.data = held
            .as_ref()
            .map_or(core::ptr::null_mut(), |d| d.ptr.as_ptr().cast());
        self.cpu = c_uint_of(held.cpu());
        // SAFETY: `opaque` is large and aligned enough (checked above); the
        // guard moves in and is read back once, by `release`.
        unsafe { self.opaque.as_mut_ptr().cast::<Held>().write(held) };
    }
}

/// A lock with one slot per possible CPU, each with `data_size` zeroed bytes
/// (`cpulocal_lock_new_with_index(CPULOCAL_INDEX_CPU, data_size)`). A size
/// of 0 gives a pure lock (the data pointer is still valid, for 0 bytes).
///
/// Returns: the lock, to be freed with `cpulocal_lock_free`; NULL with
/// `errno` set to `ENOMEM` if it cannot be allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_lock_new(data_size: size_t) -> *mut cpulocal_lock {
    cpulocal_lock_new_with_index(crate::CPULOCAL_INDEX_CPU, data_size)
}

/// As `cpulocal_lock_new`, the slots numbered by `index`
/// (`CPULOCAL_INDEX_CPU` or `CPULOCAL_INDEX_MM_CID`).
///
/// Returns: the lock, or NULL with `errno` set: `EINVAL` for another
/// `index`, `ENOMEM` if it cannot be allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_lock_new_with_index(
    index: c_int,
    data_size: size_t,
) -> *mut cpulocal_lock {
    new_object(|| {
        let by = index_of(index)?;
        let mut inner = PerCpuLock::with_index(by, |_| Data::new(data_size).ok());
        // Dropping the lock frees the slots' data that was allocated.
        if !inner.iter_mut().all(|d| d.is_some()) {
            return Err(libc::ENOMEM);
        }
        Ok(cpulocal_lock { inner })
    })
}

/// Frees the lock and every slot's data. No slot may be held, and no other
/// thread may use the lock meanwhile or after.
///
/// NULL: a no-op.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `l` is NULL or a lock from `cpulocal_lock_new*` not freed yet, none of
/// whose slots is held.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_free(l: *mut cpulocal_lock) {
    // SAFETY: the caller's contract.
    unsafe { free_object(l) }
}

/// The lock, with the lifetime its guards are kept with.
///
/// # Safety
///
/// `l` is NULL or a live lock, which outlives the guards taken from it (the
/// C contract: guards are released before the lock is freed).
unsafe fn lock_of(l: *const cpulocal_lock) -> Option<&'static PerCpuLock<Option<Data>>> {
    // SAFETY: the caller's contract.
    unsafe { l.as_ref() }.map(|l| &l.inner)
}

/// Fills `g` from a lock attempt's result.
fn fill(g: &mut cpulocal_lock_guard, r: Result<Held, Error>) -> c_int {
    match r {
        Ok(held) => {
            g.fill(held);
            0
        }
        Err(e) => errno_of(&e),
    }
}

/// Waits after an attempt found the slot held: spins briefly, then yields
/// the CPU (the holder may be preempted), as `PerCpuLock::lock` does.
fn wait(waited: &mut u32) {
    if *waited < 100 {
        *waited += 1;
        core::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Locks the slot of the CPU the calling thread runs on, waiting while
/// another thread holds it, and fills `*g`. The current CPU is read again
/// before each attempt, so a thread that migrates while waiting locks its
/// new CPU's slot: `g->cpu` says which slot is held.
///
/// Returns: 0; `-EDEADLK` if this thread already holds that slot (waiting
/// would deadlock); `-EINVAL` if `l` or `g` is NULL. `*g` is filled only
/// when 0 is returned.
///
/// Async-signal-safe: no (it may wait for another thread).
///
/// # Safety
///
/// `l` is NULL or a live lock; `g` is NULL or valid for writing and not
/// holding a slot.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_acquire(
    l: *const cpulocal_lock,
    g: *mut cpulocal_lock_guard,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(l), Some(g)) = (unsafe { lock_of(l) }, unsafe { g.as_mut() }) else {
            return -libc::EINVAL;
        };
        let mut waited = 0;
        loop {
            match l.try_lock() {
                Err(Error::WouldBlock { .. }) => wait(&mut waited),
                r => return fill(g, r),
            }
        }
    })
}

/// Locks the current CPU's slot if no thread holds it, without waiting.
///
/// Returns: 0; `-EAGAIN` (`-EWOULDBLOCK`) if another thread holds it;
/// `-EDEADLK` if this thread does; `-EINVAL` if `l` or `g` is NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// As `cpulocal_lock_acquire`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_try_acquire(
    l: *const cpulocal_lock,
    g: *mut cpulocal_lock_guard,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(l), Some(g)) = (unsafe { lock_of(l) }, unsafe { g.as_mut() }) else {
            return -libc::EINVAL;
        };
        fill(g, l.try_lock())
    })
}

/// Locks `cpu`'s slot, from any thread on any CPU, waiting while another
/// thread holds it: a critical section if the caller runs on `cpu`, the
/// fenced path otherwise.
///
/// Returns: 0; `-ERANGE` if `cpu >= cpulocal_lock_cpus(l)`; `-EDEADLK` if
/// this thread already holds the slot; `-EINVAL` if `l` or `g` is NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// As `cpulocal_lock_acquire`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_acquire_on(
    l: *const cpulocal_lock,
    cpu: c_uint,
    g: *mut cpulocal_lock_guard,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(l), Some(g)) = (unsafe { lock_of(l) }, unsafe { g.as_mut() }) else {
            return -libc::EINVAL;
        };
        fill(g, l.lock_on(cpu as usize))
    })
}

/// Locks `cpu`'s slot if no thread holds it, without waiting.
///
/// Returns: 0; `-EAGAIN` (`-EWOULDBLOCK`) if another thread holds it;
/// `-ERANGE` if `cpu` is out of range; `-EDEADLK` if this thread holds it;
/// `-EINVAL` if `l` or `g` is NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// As `cpulocal_lock_acquire`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_try_acquire_on(
    l: *const cpulocal_lock,
    cpu: c_uint,
    g: *mut cpulocal_lock_guard,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(l), Some(g)) = (unsafe { lock_of(l) }, unsafe { g.as_mut() }) else {
            return -libc::EINVAL;
        };
        fill(g, l.try_lock_on(cpu as usize))
    })
}

/// Unlocks the slot `g` holds (a store-release: the next holder sees the
/// data as this one left it) and empties `g` (`g->data` becomes NULL).
///
/// Returns: 0; `-EINVAL` if `g` is NULL or holds nothing.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `g` is NULL, empty, or filled by an `_acquire` function of the calling
/// thread on a lock that is still live.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_release(g: *mut cpulocal_lock_guard) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(g) = (unsafe { g.as_mut() }) else {
            return -libc::EINVAL;
        };
        if g.data.is_null() {
            return -libc::EINVAL;
        }
        g.data = core::ptr::null_mut();
        // SAFETY: a filled guard holds the `Held` that `fill` wrote, read
        // back once (`data` is NULL from now on); this thread took it.
        drop(unsafe { g.opaque.as_ptr().cast::<Held>().read() });
        0
    })
}

/// The number of slots.
///
/// Returns: the number of slots; 0 if `l` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live lock.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_cpus(l: *const cpulocal_lock) -> c_uint {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { l.as_ref() }.map_or(0, |l| c_uint_of(l.inner.cpus()))
    })
}

/// How many of the lock's attempts left the fast path so far, into `*out`.
///
/// Returns: 0; `-EINVAL` if `l` or `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live lock; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_lock_stats(
    l: *const cpulocal_lock,
    out: *mut cpulocal_stats,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(l), Some(out)) = (unsafe { l.as_ref() }, unsafe { out.as_mut() }) else {
            return -libc::EINVAL;
        };
        *out = l.inner.stats().into();
        0
    })
}
