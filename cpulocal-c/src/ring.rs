//! `cpulocal_ring`: `PerCpuRing`, the tracer's ring: reserve, commit,
//! consume. The reservation lives in the caller's
//! `cpulocal_ring_reservation`.

use core::ffi::{c_int, c_uint, c_void};
use core::mem::{align_of, size_of};
use std::time::Duration;

use cpulocal_rs::{PerCpuRing, Reservation, RingConfig, RingError, RingMode};
use libc::{size_t, uintptr_t};

use crate::cpulocal_stats;
use crate::util::{c_uint_of, errno_of, free_object, guard, index_of, new_object, PANICKED};

/// A full buffer refuses the new record and counts it lost.
pub const CPULOCAL_RING_DISCARD: c_int = 0;
/// A full buffer overwrites its oldest complete sub-buffer, counting its
/// records as overwritten (a flight recorder keeping the latest events).
pub const CPULOCAL_RING_OVERWRITE: c_int = 1;

/// How a ring is built (`cpulocal_ring_new`). A field left 0 takes its
/// default.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cpulocal_ring_config {
    /// `CPULOCAL_RING_DISCARD` (0, the default) or `CPULOCAL_RING_OVERWRITE`.
    pub mode: c_int,
    /// `CPULOCAL_INDEX_CPU` (0, the default) or `CPULOCAL_INDEX_MM_CID`.
    pub index: c_int,
    /// Bytes per sub-buffer: a power of two from 16 to 2^24; 0: 4096. The
    /// largest record payload is this minus 8.
    pub sub_buffer_size: size_t,
    /// Sub-buffers per CPU: a power of two, at least 2; 0: 8.
    pub sub_buffers: size_t,
    /// How long the consumer waits on an uncommitted record before counting
    /// it in `cpulocal_ring_summary.stuck`, in milliseconds; 0: 1000.
    pub stuck_after_ms: u64,
}

/// A per-CPU ring buffer of variable-length records (opaque), for tracers:
/// a writer reserves room on its CPU's buffer with one restartable sequence,
/// writes the payload in place, and commits with one store, from whatever
/// CPU it runs on by then (the record stays on the buffer it was reserved
/// on). A consumer reads complete sub-buffers, per CPU in order, each record
/// once and never before its commit. Records refused (full) or reserved and
/// discarded are counted lost, exactly; in overwrite mode, records
/// overwritten unread are counted too. Every function may be called from
/// any number of threads at once, except `cpulocal_ring_free`.
pub struct cpulocal_ring {
    inner: PerCpuRing,
}

/// Room for one record, in the caller's memory (a local variable,
/// typically): filled by `cpulocal_ring_reserve`, emptied by
/// `cpulocal_ring_commit` or `cpulocal_ring_discard`. It may be committed
/// from any thread, on any CPU, but must be committed or discarded before
/// the ring is freed, once: commit the reservation `cpulocal_ring_reserve`
/// filled (or a copy of it), never both. A reservation held for ever keeps its sub-buffer, and
/// those after it on that CPU, from the consumer.
#[repr(C)]
#[derive(Debug)]
pub struct cpulocal_ring_reservation {
    /// The record's `len` payload bytes, the holder's alone until the
    /// commit (contents unspecified until written); NULL when the
    /// reservation holds nothing.
    pub data: *mut c_void,
    /// The payload length asked for.
    pub len: size_t,
    /// The buffer (CPU or concurrency id) the record was reserved on.
    pub cpu: c_uint,
    /// The record's absolute offset in that buffer (what the consumer's
    /// callback will be told).
    pub offset: u64,
    /// The library's; do not touch.
    pub opaque: [uintptr_t; 6],
}

/// The Rust reservation kept in `opaque`.
type Held = Reservation<'static>;

const _: () = assert!(size_of::<Held>() <= size_of::<[uintptr_t; 6]>());
const _: () = assert!(align_of::<Held>() <= align_of::<uintptr_t>());

/// What one `cpulocal_ring_consume` did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cpulocal_ring_summary {
    /// Records handed to the callback.
    pub records: size_t,
    /// Sub-buffers read and released.
    pub sub_buffers: size_t,
    /// Reservations blocking the consumer for longer than the stuck timeout
    /// (at most one per CPU).
    pub stuck: size_t,
    /// Records lost on every CPU so far (`cpulocal_ring_lost`).
    pub lost: u64,
    /// Records overwritten on every CPU so far (`cpulocal_ring_overwritten`).
    pub overwritten: u64,
}

/// Called by `cpulocal_ring_consume` with each record: the buffer it was
/// reserved on, its offset there (growing with each record of that CPU), and
/// its payload, valid only during the call.
pub type cpulocal_ring_record_fn = Option<
    unsafe extern "C" fn(
        arg: *mut c_void,
        cpu: c_uint,
        offset: u64,
        payload: *const c_void,
        len: size_t,
    ),
>;

/// A ring built as `config` says (NULL: every default: 8 sub-buffers of 4 KiB
/// per CPU, discard mode, slots by CPU). The buffers are zeroed lazily: memory
/// is committed as records are written.
///
/// Returns: the ring, to be freed with `cpulocal_ring_free`; NULL with
/// `errno` set to `EINVAL` for a mode or index other than the constants,
/// sizes that are not powers of two, fewer than two sub-buffers, or too many
/// bytes per CPU; `ENOMEM` if the buffers cannot be allocated.
///
/// Async-signal-safe: no (it allocates).
///
/// # Safety
///
/// `config` is NULL or valid for reading.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_new(
    config: *const cpulocal_ring_config,
) -> *mut cpulocal_ring {
    new_object(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { config.as_ref() }.copied().unwrap_or_default();
        let mode = match c.mode {
            CPULOCAL_RING_DISCARD => RingMode::Discard,
            CPULOCAL_RING_OVERWRITE => RingMode::Overwrite,
            _ => return Err(libc::EINVAL),
        };
        let or = |v: usize, default: usize| if v == 0 { default } else { v };
        let stuck = if c.stuck_after_ms == 0 {
            RingConfig::DEFAULT_STUCK_AFTER
        } else {
            Duration::from_millis(c.stuck_after_ms)
        };
        let config = RingConfig::new()
            .mode(mode)
            .index(index_of(c.index)?)
            .sub_buffer_size(or(c.sub_buffer_size, RingConfig::DEFAULT_SUB_BUFFER_SIZE))
            .sub_buffers(or(c.sub_buffers, RingConfig::DEFAULT_SUB_BUFFERS))
            .stuck_after(stuck);
        PerCpuRing::with_config(config)
            .map(|inner| cpulocal_ring { inner })
            .map_err(|e| -errno_of(&e))
    })
}

/// Frees the ring. Every reservation must have been committed or discarded,
/// and no other thread may use the ring meanwhile or after. Records not
/// consumed are dropped.
///
/// NULL: a no-op.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `r` is NULL or a ring from `cpulocal_ring_new` not freed yet, with no
/// reservation held.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_free(r: *mut cpulocal_ring) {
    // SAFETY: the caller's contract.
    unsafe { free_object(r) }
}

/// The ring, with the lifetime reservations are kept with.
///
/// # Safety
///
/// `r` is NULL or a live ring, which outlives the reservations taken from
/// it (the C contract).
unsafe fn ring_of(r: *const cpulocal_ring) -> Option<&'static PerCpuRing> {
    // SAFETY: the caller's contract.
    unsafe { r.as_ref() }.map(|r| &r.inner)
}

/// The negative errno value of a refused reservation.
fn ring_errno(e: RingError) -> c_int {
    -match e {
        RingError::Empty => libc::EINVAL,
        RingError::TooLarge { .. } => libc::EMSGSIZE,
        RingError::Full { .. } => libc::ENOSPC,
        RingError::OldestBusy { .. } => libc::EBUSY,
        _ => libc::EINVAL,
    }
}

/// Reserves room for a record of `len` payload bytes on the current CPU's
/// buffer (one critical section) and fills `*res`: write the payload to
/// `res->data`, then `cpulocal_ring_commit(res)`.
///
/// Returns: 0; `-EINVAL` if `len` is 0 or `r` or `res` is NULL; `-EMSGSIZE`
/// if `len > cpulocal_ring_max_record_len(r)`; `-ENOSPC` (discard mode) if
/// the buffer is full, or `-EBUSY` (overwrite mode) if it is full and its
/// oldest sub-buffer holds an uncommitted record: both counted lost. `*res`
/// is filled only when 0 is returned.
///
/// Async-signal-safe: yes, with the first-call caveat of
/// `cpulocal_counter_add`. A handler may write records while its thread holds
/// a reservation.
///
/// # Safety
///
/// `r` is NULL or a live ring; `res` is NULL or valid for writing and not
/// holding a reservation.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_reserve(
    r: *const cpulocal_ring,
    len: size_t,
    res: *mut cpulocal_ring_reservation,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(r), Some(res)) = (unsafe { ring_of(r) }, unsafe { res.as_mut() }) else {
            return -libc::EINVAL;
        };
        match r.reserve(len) {
            Ok(mut held) => {
                res.data = held.as_mut_ptr().cast();
                res.len = held.len();
                res.cpu = c_uint_of(held.cpu());
                res.offset = held.offset();
                // SAFETY: `opaque` is large and aligned enough (checked
                // above); read back once, by commit or discard.
                unsafe { res.opaque.as_mut_ptr().cast::<Held>().write(held) };
                0
            }
            Err(e) => ring_errno(e),
        }
    })
}

/// The reservation `res` holds, which it gives up.
///
/// # Safety
///
/// `res` is NULL, empty or filled by `cpulocal_ring_reserve`.
unsafe fn take(res: *mut cpulocal_ring_reservation) -> Option<Held> {
    // SAFETY: the caller's contract.
    let res = unsafe { res.as_mut() }?;
    if res.data.is_null() {
        return None;
    }
    res.data = core::ptr::null_mut();
    // SAFETY: a filled reservation holds the `Held` that reserve wrote, read
    // back once (`data` is NULL from now on).
    Some(unsafe { res.opaque.as_ptr().cast::<Held>().read() })
}

/// Publishes the record `res` holds (one store-release of its header, into
/// the buffer it was reserved on, from any thread and CPU) and empties
/// `res`.
///
/// Returns: 0; `-EINVAL` if `res` is NULL or holds nothing.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `res` is NULL, empty, or filled by `cpulocal_ring_reserve` on a ring that
/// is still live.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_commit(res: *mut cpulocal_ring_reservation) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        match unsafe { take(res) } {
            Some(held) => {
                held.commit();
                0
            }
            None => -libc::EINVAL,
        }
    })
}

/// Gives the reservation `res` holds up without publishing it: the record
/// becomes padding the consumer skips, counted lost. Empties `res`.
///
/// Returns: 0; `-EINVAL` if `res` is NULL or holds nothing.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_ring_commit`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_discard(res: *mut cpulocal_ring_reservation) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        match unsafe { take(res) } {
            Some(held) => {
                drop(held);
                0
            }
            None => -libc::EINVAL,
        }
    })
}

/// Reserves, copies `len` bytes from `payload` and commits: a record in one
/// call.
///
/// Returns: as `cpulocal_ring_reserve`; also `-EINVAL` if `payload` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring; `payload` is NULL or valid for reading `len`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_write(
    r: *const cpulocal_ring,
    payload: *const c_void,
    len: size_t,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(r) = (unsafe { ring_of(r) }) else {
            return -libc::EINVAL;
        };
        if payload.is_null() || len == 0 {
            return -libc::EINVAL;
        }
        if len > r.max_record_len() {
            return -libc::EMSGSIZE;
        }
        // SAFETY: valid for `len` bytes (the caller), at most a sub-buffer.
        let bytes = unsafe { core::slice::from_raw_parts(payload.cast::<u8>(), len) };
        match r.write(bytes) {
            Ok(()) => 0,
            Err(e) => ring_errno(e),
        }
    })
}

/// Closes every CPU's partly filled sub-buffer with padding, so that the
/// records reserved so far can be consumed once committed (a tracer's
/// periodic or final flush). Records reserved later go to the next
/// sub-buffer.
///
/// NULL: a no-op.
///
/// Async-signal-safe: yes, but it visits every CPU: not for hot paths.
///
/// # Safety
///
/// `r` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_flush(r: *const cpulocal_ring) {
    guard((), || {
        // SAFETY: the caller's contract.
        if let Some(r) = unsafe { r.as_ref() } {
            r.inner.flush();
        }
    })
}

/// Reads the complete sub-buffers of every CPU's buffer (at most a buffer's
/// worth per CPU and call) and calls `f(arg, cpu, offset, payload, len)` for
/// each record: CPU after CPU, each CPU's records in the order they were
/// reserved. A record is handed over after its commit, and once. A
/// sub-buffer with an uncommitted record stops that CPU's reading until the
/// record is committed or discarded. Consumers serialize on an internal
/// mutex: `f` must not call `cpulocal_ring_consume` (it may write records).
/// If `summary` is not NULL, what the call did is written there.
///
/// Returns: 0; `-EINVAL` if `r` or `f` is NULL.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `r` is NULL or a live ring; `f` is safe to call with `arg` and each
/// record, and does not unwind; `summary` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_consume(
    r: *const cpulocal_ring,
    f: cpulocal_ring_record_fn,
    arg: *mut c_void,
    summary: *mut cpulocal_ring_summary,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(r), Some(f)) = (unsafe { r.as_ref() }, f) else {
            return -libc::EINVAL;
        };
        let s = r.inner.consume(|rec| {
            let payload = rec.payload();
            // SAFETY: the caller's contract for `f`; the payload is valid
            // for the call.
            unsafe {
                f(
                    arg,
                    c_uint_of(rec.cpu()),
                    rec.offset(),
                    payload.as_ptr().cast(),
                    payload.len(),
                )
            };
        });
        // SAFETY: the caller's contract.
        if let Some(out) = unsafe { summary.as_mut() } {
            *out = cpulocal_ring_summary {
                records: s.records,
                sub_buffers: s.sub_buffers,
                stuck: s.stuck.len(),
                lost: s.lost,
                overwritten: s.overwritten,
            };
        }
        0
    })
}

/// Records lost on every CPU so far: refused because the buffer was full
/// (or, in overwrite mode, its oldest sub-buffer busy), or reserved and
/// discarded. Exact.
///
/// Returns: the count; 0 if `r` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_lost(r: *const cpulocal_ring) -> u64 {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { r.as_ref() }.map_or(0, |r| r.inner.lost())
    })
}

/// Records overwritten unread on every CPU so far (overwrite mode). Exact.
///
/// Returns: the count; 0 if `r` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_overwritten(r: *const cpulocal_ring) -> u64 {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { r.as_ref() }.map_or(0, |r| r.inner.overwritten())
    })
}

/// The lost and overwritten counts of `cpu`'s buffer, into `*lost` and
/// `*overwritten` (either may be NULL).
///
/// Returns: 0; `-ERANGE` if `cpu >= cpulocal_ring_cpus(r)`; `-EINVAL` if
/// `r` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring; `lost` and `overwritten` are NULL or valid
/// for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_counts_on(
    r: *const cpulocal_ring,
    cpu: c_uint,
    lost: *mut u64,
    overwritten: *mut u64,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(r) = (unsafe { r.as_ref() }) else {
            return -libc::EINVAL;
        };
        match r.inner.counts_on(cpu as usize) {
            Ok((l, o)) => {
                // SAFETY: NULL or valid for writing (the caller).
                unsafe {
                    if let Some(lost) = lost.as_mut() {
                        *lost = l;
                    }
                    if let Some(overwritten) = overwritten.as_mut() {
                        *overwritten = o;
                    }
                }
                0
            }
            Err(e) => errno_of(&e),
        }
    })
}

/// The largest payload a record may have: the sub-buffer size minus its
/// 8-byte header.
///
/// Returns: the length; 0 if `r` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_max_record_len(r: *const cpulocal_ring) -> size_t {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { r.as_ref() }.map_or(0, |r| r.inner.max_record_len())
    })
}

/// Bytes per CPU buffer (sub-buffers × sub-buffer size).
///
/// Returns: the size; 0 if `r` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_bytes_per_cpu(r: *const cpulocal_ring) -> size_t {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { r.as_ref() }.map_or(0, |r| r.inner.bytes_per_cpu())
    })
}

/// The number of per-CPU buffers.
///
/// Returns: the number of slots; 0 if `r` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_cpus(r: *const cpulocal_ring) -> c_uint {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { r.as_ref() }.map_or(0, |r| c_uint_of(r.inner.cpus()))
    })
}

/// How many of the ring's operations (reserve, lost counts, flush) left the
/// fast path so far, into `*out`.
///
/// Returns: 0; `-EINVAL` if `r` or `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `r` is NULL or a live ring; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_ring_stats(
    r: *const cpulocal_ring,
    out: *mut cpulocal_stats,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(r), Some(out)) = (unsafe { r.as_ref() }, unsafe { out.as_mut() }) else {
            return -libc::EINVAL;
        };
        *out = r.inner.stats().into();
        0
    })
}
