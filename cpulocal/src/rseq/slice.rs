//! Time-slice extension (Linux 7.0+): a thread that holds a [`PerCpuLock`]
//! slot or a fence asks the kernel not to preempt it for a few microseconds,
//! so that the threads waiting for what it holds are not left spinning on a
//! holder that is off the CPU.
//!
//! The kernel's side (Linux 7.0 and later):
//!
//! - It needs `CONFIG_RSEQ_SLICE_EXTENSION`, an rseq area registered with
//!   more than the original 32 bytes (the kernel's optimised mode), and the
//!   thread's consent: `prctl(PR_RSEQ_SLICE_EXTENSION, SET, ENABLE)`, or the
//!   registration flag `RSEQ_FLAG_SLICE_EXT_DEFAULT_ON`. A 32-byte
//!   registration gets `ENOTSUPP` from that prctl. The kernel shows the
//!   state in the area's `flags`: [`RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE`] and
//!   [`RSEQ_CS_FLAG_SLICE_EXT_ENABLED`].
//! - The thread stores 1 into the `request` byte before its critical region.
//!   When an interrupt would reschedule it, the kernel may return to it
//!   instead, once, with `request` cleared and `granted` set, and arms a
//!   timer (5 µs by default) after which it preempts anyway.
//! - Leaving the region, the thread clears `request`; if `granted` is set it
//!   calls `rseq_slice_yield()` to give the CPU back. Any other system call
//!   under a grant also ends it and reschedules.
//!
//! What cpulocal does:
//!
//! - At a thread's set-up ([`set_up_thread`]), where the area's `flags` say
//!   the extension is available, it enables it with the prctl, unless the
//!   environment variable `CPULOCAL_NO_SLICE_EXTENSION` is set (to anything
//!   but empty or `0`). It registers its own areas without the
//!   registration flag, which kernels before 7.0 refuse.
//! - A lock guard and a fence guard call [`request`] once they hold, and
//!   [`Request::end`] once they have released. Only the outermost holder of
//!   a thread asks: a request or grant already in progress (a nested guard,
//!   or a signal handler interrupting a holder) is left to the one that made
//!   it, which clears it and yields.
//! - glibc before 2.41 registers every thread's area with 32 bytes, so
//!   those threads cannot have the extension: cpulocal does not replace
//!   glibc's registration (glibc's `sched_getcpu` and every other user of
//!   `__rseq_offset` rely on it). [`status()`](crate::status) says
//!   [`SliceExtension::LegacyArea`]. Starting the process with
//!   `GLIBC_TUNABLES=glibc.pthread.rseq=0` makes cpulocal register its own
//!   area, sized to the kernel's feature size, for each thread.
//!
//! The fast path's cost in a process where no thread has the extension is
//! one load of a read-mostly flag and a branch; elsewhere it also reads the
//! area's `flags`, and writes the request byte where they say enabled.
//!
//! # Safety
//!
//! The `request` byte is written only in the area of the calling thread,
//! and only while its `flags` has [`RSEQ_CS_FLAG_SLICE_EXT_ENABLED`], which
//! the kernel sets only in an area registered with room for `slice_ctrl`.
//! A thread reads and writes its own area's bytes with volatile accesses;
//! the kernel writes them only while the thread is not running user code,
//! as it does `cpu_id`.
//!
//! [`PerCpuLock`]: crate::PerCpuLock
#![allow(unsafe_code)]

use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};

use crate::rseq::abi::{
    self, Rseq, RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE, RSEQ_CS_FLAG_SLICE_EXT_ENABLED,
    SLICE_GRANTED_OFFSET, SLICE_REQUEST_OFFSET,
};
use crate::rseq::sys;

/// The environment variable that stops cpulocal from enabling time-slice
/// extension for its threads: any value but empty or `0`.
pub(crate) const NO_SLICE_VAR: &str = "CPULOCAL_NO_SLICE_EXTENSION";

/// Whether any thread of the process has had the extension enabled by
/// [`set_up_thread`]: until then (on every kernel without the feature) the
/// fast path reads this read-mostly flag and nothing else. Reading the area's
/// `flags` first, just after a section's stores to `rseq_cs` in the same
/// cache line, made a lock and unlock take 1.6 times as long.
static ENABLED_SOMEWHERE: AtomicBool = AtomicBool::new(false);

/// Extensions the kernel granted to cpulocal's holders in this process.
static GRANTED: AtomicU64 = AtomicU64::new(0);
/// Of those, the ones whose `rseq_slice_yield` gave the CPU back within the
/// grant (the others had been revoked or had expired by then).
static YIELDED: AtomicU64 = AtomicU64::new(0);

/// Whether time-slice extension works for the calling thread: see
/// [`Status::slice_extension`](crate::Status::slice_extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SliceExtension {
    /// Enabled: [`PerCpuLock`](crate::PerCpuLock) guards and fenced
    /// operations ask the kernel to defer preemption while they hold.
    On,
    /// The kernel offers it to this thread, but cpulocal does not use it:
    /// `CPULOCAL_NO_SLICE_EXTENSION` is set (cpulocal then makes no request
    /// even where another library enabled the extension), or the prctl that
    /// enables it failed.
    NotEnabled,
    /// The kernel has it, but this thread's rseq area is registered with the
    /// original 32 bytes, which keeps the kernel's original mode (glibc
    /// before 2.41 registers every thread so). `GLIBC_TUNABLES=glibc.pthread.rseq=0`
    /// lets cpulocal register areas that can have it.
    LegacyArea,
    /// The kernel lacks it: before Linux 7.0, built without
    /// `CONFIG_RSEQ_SLICE_EXTENSION` (Debian's 7.x kernels), turned off at
    /// boot (`rseq_slice_ext=0`), or an architecture without the kernel's
    /// optimised rseq mode.
    Unsupported,
    /// This thread uses no rseq area (the fenced engine), so it has no
    /// `slice_ctrl` to ask with.
    NoRseq,
}

impl core::fmt::Display for SliceExtension {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SliceExtension::On => {
                "on (lock holders and fence holders ask the kernel to defer preemption)"
            }
            SliceExtension::NotEnabled => {
                "offered by the kernel but not enabled (CPULOCAL_NO_SLICE_EXTENSION, or the prctl failed)"
            }
            SliceExtension::LegacyArea => {
                "unavailable to this thread: its rseq area is registered with 32 bytes \
                 (glibc before 2.41); GLIBC_TUNABLES=glibc.pthread.rseq=0 lets cpulocal register one that can"
            }
            SliceExtension::Unsupported => {
                "not in this kernel (before Linux 7.0, or built without CONFIG_RSEQ_SLICE_EXTENSION)"
            }
            SliceExtension::NoRseq => "unavailable: this thread uses no rseq area",
        })
    }
}

/// The area's `flags`, which the kernel writes while the thread is off the
/// CPU.
#[inline(always)]
fn flags(area: *const Rseq) -> u32 {
    // SAFETY: `area` comes from `registration::area()`, a live area (the
    // registration's invariant); a volatile read as for `cpu_id`.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area).flags)) }
}

/// Enables the extension for the calling thread, whose area is `area`
/// (just set up), where the kernel offers it and the process `allowed` it.
/// Where it is not allowed, cpulocal's holders make no requests, even if
/// another library of the process enabled the extension.
pub(crate) fn set_up_thread(area: *const Rseq, allowed: bool) {
    if !allowed {
        return;
    }
    let f = flags(area);
    // Enabled already (by another library of the process), or by us now.
    let on = f & RSEQ_CS_FLAG_SLICE_EXT_ENABLED != 0
        || (f & RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE != 0
            && sys::slice_extension_enable().is_ok()
            && flags(area) & RSEQ_CS_FLAG_SLICE_EXT_ENABLED != 0);
    if on {
        ENABLED_SOMEWHERE.store(true, Ordering::Relaxed);
    }
}

/// The state for `status()`, given the calling thread's area (None: it uses
/// none), the length that area is registered with, where known, and whether
/// the process `allowed` cpulocal to use the extension.
pub(crate) fn state(area: Option<*const Rseq>, len: Option<u32>, allowed: bool) -> SliceExtension {
    let Some(area) = area else {
        return SliceExtension::NoRseq;
    };
    let f = flags(area);
    if f & RSEQ_CS_FLAG_SLICE_EXT_ENABLED != 0 {
        // Enabled by another library where cpulocal was told not to use it.
        return if allowed {
            SliceExtension::On
        } else {
            SliceExtension::NotEnabled
        };
    }
    if f & RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE != 0 {
        return SliceExtension::NotEnabled;
    }
    // Not offered to this area: does the kernel have it at all? (EINVAL
    // before 7.0, ENOTSUPP when built without; GET answers for any area.)
    match sys::slice_extension_get() {
        Ok(_) if len.is_none_or(|l| l <= abi::RSEQ_ORIG_SIZE) => SliceExtension::LegacyArea,
        _ => SliceExtension::Unsupported,
    }
}

/// An extension request made by [`request`]: whether this holder asked (and
/// so must clear the request and yield on a grant).
#[derive(Debug, Clone, Copy)]
#[must_use = "a request must be ended when the holder releases"]
pub(crate) struct Request(bool);

/// Asks the kernel to defer the calling thread's preemption, where the
/// extension is on for it and no request or grant of this thread is in
/// progress; `area` is the thread's area, read only when some thread has the
/// extension. Call it once a lock or fence is held; end the request once it
/// is released.
#[inline(always)]
pub(crate) fn request(area: impl FnOnce() -> *mut Rseq) -> Request {
    if !ENABLED_SOMEWHERE.load(Ordering::Relaxed) {
        return Request(false);
    }
    let area = area();
    if flags(area) & RSEQ_CS_FLAG_SLICE_EXT_ENABLED == 0 {
        return Request(false);
    }
    request_in(area)
}

/// The `slice_ctrl` bytes of an area.
#[inline(always)]
fn ctrl(area: *mut Rseq) -> *mut u8 {
    area.cast::<u8>().wrapping_add(SLICE_REQUEST_OFFSET)
}

/// [`request`] in an area whose `flags` has the extension enabled.
#[inline(always)]
fn request_in(area: *mut Rseq) -> Request {
    let ctrl = ctrl(area);
    // SAFETY: the calling thread's own area, with the extension enabled
    // (module docs); `request` and `granted` are two bytes at an even offset.
    let in_progress = unsafe { core::ptr::read_volatile(ctrl.cast::<u16>()) };
    if in_progress != 0 {
        return Request(false); // an outer holder's request or grant
    }
    // SAFETY: as above; the thread writes only its request byte.
    unsafe { core::ptr::write_volatile(ctrl, 1) };
    // Keeps the holder's accesses after the request (for the compiler: the
    // kernel and this thread are one CPU).
    compiler_fence(Ordering::SeqCst);
    Request(true)
}

/// A value below 2^63 and a [`Request`] in one word (for guards that must
/// stay two words).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tagged(usize);

impl Tagged {
    /// `value` (below 2^63: a slot index) with `request`.
    #[inline(always)]
    pub(crate) fn new(value: usize, request: Request) -> Self {
        debug_assert!(value <= usize::MAX >> 1);
        Tagged(value << 1 | usize::from(request.0))
    }

    /// The value.
    #[inline(always)]
    pub(crate) fn value(self) -> usize {
        self.0 >> 1
    }

    /// The request.
    #[inline(always)]
    pub(crate) fn request(self) -> Request {
        Request(self.0 & 1 != 0)
    }
}

impl Request {
    /// Ends the request once the holder has released: clears the `request`
    /// byte in `area`, the thread's area (read only for a request it made),
    /// and if the kernel granted an extension meanwhile gives the CPU back
    /// with `rseq_slice_yield`. Async-signal-safe. End it once: its holder's
    /// guard does, as it drops.
    #[inline(always)]
    pub(crate) fn end(self, area: impl FnOnce() -> *mut Rseq) {
        if self.0 {
            end_in(area());
        }
    }
}

/// [`Request::end`] of a request this holder made, in the thread's area,
/// which is the one it asked in unless the thread has since given its area
/// up (its thread-local destructors run): then that area's `flags` no longer
/// say enabled, and nothing is written.
#[inline(always)]
fn end_in(area: *mut Rseq) {
    compiler_fence(Ordering::SeqCst);
    if flags(area) & RSEQ_CS_FLAG_SLICE_EXT_ENABLED == 0 {
        return;
    }
    let ctrl = ctrl(area);
    // SAFETY: the request byte of this thread's area, with the extension
    // enabled (module docs); `granted` is the next byte.
    let granted = unsafe {
        core::ptr::write_volatile(ctrl, 0);
        core::ptr::read_volatile(ctrl.add(SLICE_GRANTED_OFFSET - SLICE_REQUEST_OFFSET))
    };
    if granted != 0 {
        give_back();
    }
}

/// The kernel deferred a preemption for this holder: give the CPU back.
#[cold]
#[inline(never)]
fn give_back() {
    GRANTED.fetch_add(1, Ordering::Relaxed);
    if sys::rseq_slice_yield() {
        YIELDED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Extensions granted to this process's holders so far, and how many of them
/// were ended by the holder's `rseq_slice_yield` within the grant.
pub(crate) fn counts() -> (u64, u64) {
    (
        GRANTED.load(Ordering::Relaxed),
        YIELDED.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An area whose `flags` say the extension is enabled, as the kernel
    /// leaves it after the prctl.
    fn enabled_area() -> Box<Rseq> {
        let mut area = Box::new(Rseq::unregistered());
        area.flags = RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE | RSEQ_CS_FLAG_SLICE_EXT_ENABLED;
        area
    }

    /// [`Request::end`] in the fake area `a`.
    fn end_if(r: Request, a: *mut Rseq) {
        if r.0 {
            end_in(a);
        }
    }

    #[test]
    fn a_tagged_index_keeps_both() {
        for (v, r) in [(0, false), (0, true), (5, true), (usize::MAX >> 1, false)] {
            let t = Tagged::new(v, Request(r));
            assert_eq!((t.value(), t.request().0), (v, r));
        }
    }

    fn bytes(area: &Rseq) -> [u8; 2] {
        let all = area.slice_ctrl.to_ne_bytes();
        [all[0], all[1]]
    }

    #[test]
    fn the_outermost_holder_asks_and_clears() {
        let mut area = enabled_area();
        let a: *mut Rseq = &mut *area;
        let outer = request_in(a);
        assert_eq!(bytes(&area), [1, 0], "request byte set");
        // A nested holder (or a signal handler) leaves the request alone.
        let inner = request_in(a);
        assert!(!inner.0);
        end_if(inner, a);
        assert_eq!(
            bytes(&area),
            [1, 0],
            "the inner end must not clear the outer request"
        );
        end_if(outer, a);
        assert_eq!(bytes(&area), [0, 0]);
    }

    #[test]
    fn a_grant_is_given_back_and_counted() {
        let mut area = enabled_area();
        let a: *mut Rseq = &mut *area;
        let req = request_in(a);
        // The kernel grants: clears the request, sets granted.
        area.slice_ctrl = u32::from_ne_bytes([0, 1, 0, 0]);
        // While the grant runs, a nested holder does not ask again (a request
        // beside a grant is an inconsistency the kernel may punish).
        assert!(!request_in(a).0);
        assert_eq!(bytes(&area), [0, 1]);
        let (before, _) = counts();
        end_if(req, a);
        // rseq_slice_yield ran (on a kernel without it, ENOSYS: not yielded).
        assert!(counts().0 > before, "the grant was not counted");
        // A grant is cleared by the kernel, never by the thread.
        assert_eq!(bytes(&area), [0, 1]);
    }

    #[test]
    fn nothing_is_written_where_the_extension_is_off() {
        // This thread's real area: on a kernel without the extension (or with
        // glibc's 32-byte area) the request writes nothing.
        let area = crate::rseq::registration::area();
        if flags(area) & RSEQ_CS_FLAG_SLICE_EXT_ENABLED == 0 {
            // SAFETY: the thread's live area; a volatile read.
            let before =
                unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area).slice_ctrl)) };
            let r = request(|| area);
            assert!(!r.0);
            r.end(|| area);
            // SAFETY: as above.
            let after =
                unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area).slice_ctrl)) };
            assert_eq!(before, after);
        }
    }
}
