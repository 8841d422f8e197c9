//! Which engine runs: the process-wide decision and each thread's rseq area.
//!
//! The process runs critical sections only when the architecture has them,
//! rseq works, and `membarrier(PRIVATE_EXPEDITED_RSEQ)` is registered (without
//! it a fence cannot stop a section on another CPU). Otherwise every thread
//! takes the fenced path without membarrier. The environment variable
//! `CPULOCAL_NO_RSEQ` (any value but empty or `0`, read at the first use)
//! turns sections off too ([`RseqOff::Disabled`]).
//!
//! Each thread finds its area lazily on its first operation: glibc's when glibc
//! registered one (any nonzero `__rseq_size`), else its own, registered here and
//! unregistered by a thread-local destructor before the memory can be freed.
//! The fast path reads one thread-local pointer; before set-up it points to an
//! area whose `cpu_id` is -1, for threads without rseq to one whose `cpu_id` is
//! -2, so a single unsigned bound check sends both to the slow path (and a
//! section run on such an area aborts at its check: see [`Dummy`]).
//!
//! # Safety
//!
//! The thread-local area pointer always points to a live `struct rseq`: a
//! static dummy, glibc's area of this thread, or this thread's own area, which
//! stays registered only while its thread-local storage lives.
#![allow(unsafe_code)]

use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::rseq::abi::{self, OwnArea, Rseq, CPU_ID_REGISTRATION_FAILED};
use crate::rseq::slice;
use crate::rseq::sys::{self, Errno};
use crate::Index;

/// Who registered rseq for the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Registration {
    /// glibc (>= 2.35) registered the thread; cpulocal runs its sections in
    /// glibc's area unless `Status::fenced_because` says otherwise.
    Glibc,
    /// glibc did not register rseq (an older or other libc, or
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0`), so cpulocal registered its own
    /// area for this thread and unregisters it when the thread exits.
    Cpulocal,
    /// No rseq area is used by this thread; operations take the fenced path.
    Nobody(RseqOff),
}

/// Why the rseq fast path is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RseqOff {
    /// cpulocal has no critical sections for this target architecture.
    NoArchSupport,
    /// The kernel refused to register rseq: ENOSYS means a kernel older than
    /// 4.18, a seccomp filter, or a tool that does not support rseq
    /// (valgrind; older rr releases).
    Refused(Errno),
    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)` is unavailable, so a
    /// fenced operation could not stop a section on another CPU; for
    /// correctness no thread of the process runs sections.
    NoMembarrier(Errno),
    /// glibc registered rseq for the process but not for this thread
    /// (`cpu_id` = -2). glibc 2.35+ registers a new thread only when the thread
    /// that created it had rseq, so this follows a creator whose area was
    /// unregistered. (A registration that fails in a new thread, e.g. under a
    /// seccomp filter installed after start-up, is fatal in glibc itself.)
    GlibcFailedForThread,
    /// Another rseq area is registered for this thread that glibc does not
    /// publish (the kernel answered EINVAL): another library registered one,
    /// or glibc is linked statically (its variables cannot be looked up).
    /// cpulocal cannot know where that area is.
    ForeignRegistration,
    /// The thread is running its thread-local destructors; cpulocal's own area
    /// was unregistered.
    ThreadExiting,
    /// The environment variable `CPULOCAL_NO_RSEQ` was set (to anything but
    /// empty or `0`) when the process first used cpulocal: every operation
    /// takes the fenced path, without membarrier. For debugging and for
    /// comparing the two engines.
    Disabled,
    /// cpulocal's code is in a shared library that could not be kept loaded
    /// (marked `RTLD_NODELETE`). The kernel reads the descriptor of the last
    /// section a thread ran whenever the thread is preempted, so that code
    /// must stay mapped until the process exits; where it cannot be sure of
    /// that, no thread runs sections.
    CannotPinLibrary,
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registration::Glibc => f.write_str("glibc"),
            Registration::Cpulocal => f.write_str(
                "cpulocal (glibc did not register rseq; cpulocal registered its own area)",
            ),
            Registration::Nobody(why) => write!(f, "nobody: {why}"),
        }
    }
}

impl fmt::Display for RseqOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RseqOff::NoArchSupport => f.write_str("cpulocal has no rseq critical sections for this architecture"),
            RseqOff::Refused(e) if e.0 == libc::ENOSYS => write!(
                f,
                "the kernel refused rseq with {e}: a kernel older than 4.18, a seccomp filter, or a tool without rseq support (valgrind; older rr releases)"
            ),
            RseqOff::Refused(e) => write!(f, "the kernel refused rseq registration with {e}"),
            RseqOff::NoMembarrier(e) => write!(
                f,
                "membarrier(PRIVATE_EXPEDITED_RSEQ) is unavailable ({e}), so no thread runs rseq sections (remote operations could not stop them)"
            ),
            RseqOff::GlibcFailedForThread => f.write_str(
                "glibc did not register rseq for this thread (cpu_id = -2): the thread that created it had no rseq area",
            ),
            RseqOff::ForeignRegistration => f.write_str(
                "an rseq area cpulocal cannot locate is registered for this thread (EINVAL): another library's, or a statically linked glibc's",
            ),
            RseqOff::ThreadExiting => f.write_str("the thread is exiting; cpulocal's own rseq area was unregistered"),
            RseqOff::Disabled => f.write_str("CPULOCAL_NO_RSEQ is set: critical sections are off for this process"),
            RseqOff::CannotPinLibrary => f.write_str(
                "cpulocal is in a shared library that could not be marked RTLD_NODELETE, and sections need their code to stay mapped",
            ),
        }
    }
}

/// What the whole process can do, decided once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Process {
    /// Critical sections may run (some threads may be inside one).
    pub sections: bool,
    /// Why sections are off for the whole process.
    pub off: Option<RseqOff>,
    /// glibc's published registration, if any.
    pub glibc: Option<sys::GlibcRseq>,
    /// Result of registering membarrier `PRIVATE_EXPEDITED_RSEQ`.
    pub membarrier: Result<(), Errno>,
    /// `AT_RSEQ_FEATURE_SIZE`, when the kernel supplies it.
    pub feature_size: Option<u64>,
    /// Whether threads enable time-slice extension where the kernel offers
    /// it (not when `CPULOCAL_NO_SLICE_EXTENSION` is set: see [`slice`]).
    pub slice_allowed: bool,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

/// The environment variable that turns critical sections off for the
/// process: any value but empty or `0` (read once, at the first use).
pub(crate) const NO_RSEQ_VAR: &str = "CPULOCAL_NO_RSEQ";

/// Whether a fenced operation must issue membarrier: true exactly when
/// sections can run in this process. Read on every fenced operation.
static SECTIONS: AtomicBool = AtomicBool::new(false);

/// The process-wide decision; made on first call (data-structure constructors
/// call it, so operations, which may run in signal handlers, find it made).
pub(crate) fn process() -> &'static Process {
    PROCESS.get_or_init(decide)
}

fn decide() -> Process {
    own_len(); // chosen here, outside any signal handler
    let glibc = sys::glibc_rseq();
    let feature_size = sys::getauxval(abi::AT_RSEQ_FEATURE_SIZE);
    let membarrier = sys::membarrier_register_rseq();
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0");
    let slice_allowed = !set(slice::NO_SLICE_VAR);
    let off = if set(NO_RSEQ_VAR) {
        Some(RseqOff::Disabled)
    } else if !abi::HAS_SECTIONS {
        Some(RseqOff::NoArchSupport)
    } else {
        None
    };
    if off.is_some() {
        return Process {
            sections: false,
            off,
            glibc,
            membarrier,
            feature_size,
            slice_allowed,
        };
    }
    // Does rseq work at all? glibc's registration answers for it; otherwise
    // this thread registers its own area now (kept for the thread).
    let probe = match glibc {
        Some(g) if g.size != 0 => Ok(()),
        // EINVAL: this thread has an area cpulocal cannot locate, so rseq
        // works; the thread itself finds out in `ensure_thread`.
        _ => match register_own() {
            Err(Errno(libc::EINVAL)) => Ok(()),
            r => r.map(drop),
        },
    };
    let off = match (probe, membarrier) {
        (Err(e), _) => Some(RseqOff::Refused(e)),
        (Ok(()), Err(e)) => Some(RseqOff::NoMembarrier(e)),
        // Sections leave `rseq_cs` armed: their code must never be unmapped.
        (Ok(()), Ok(())) if !(crate::switches::skip_pin() || sys::pin_own_object()) => {
            Some(RseqOff::CannotPinLibrary)
        }
        (Ok(()), Ok(())) => None,
    };
    let sections = off.is_none() && !cfg!(miri);
    if !sections {
        unregister_own(); // the probe's area would only be in others' way
    }
    SECTIONS.store(sections, Ordering::SeqCst);
    Process {
        sections,
        off,
        glibc,
        membarrier,
        feature_size,
        slice_allowed,
    }
}

/// Whether fenced operations must abort sections with membarrier.
#[inline]
pub(crate) fn sections_possible() -> bool {
    SECTIONS.load(Ordering::Relaxed)
}

/// An area no kernel writes, shared by threads: one not set up yet
/// ([`UNSET`]), or one without rseq ([`NO_RSEQ`]). A critical section may
/// run on it: it arms `rseq_cs` (the only field anything writes here, with
/// whole-word stores), finds `cpu_id` (-1 or -2) unequal to every fence word
/// (a free one holds its slot's index, a held one never has all of bits 22
/// to 31 set: see [`fence`]), and leaves for the slow path, which looks at
/// `cpu_id` and takes the fenced path. So the fast path needs no test of
/// its own for "no rseq".
struct Dummy(UnsafeCell<Rseq>);

// SAFETY: threads only store whole words into `rseq_cs` (from sections'
// asm) and read the other fields, which nothing writes.
unsafe impl Sync for Dummy {}

/// The area of a thread that has not looked for one yet.
static UNSET: Dummy = Dummy(UnsafeCell::new(Rseq::unregistered()));
/// The area of a thread without rseq: `cpu_id` = -2.
static NO_RSEQ: Dummy = Dummy(UnsafeCell::new({
    let mut a = Rseq::unregistered();
    a.cpu_id = CPU_ID_REGISTRATION_FAILED;
    a.mm_cid = CPU_ID_REGISTRATION_FAILED;
    a
}));

thread_local! {
    /// The area sections use; see the module docs.
    static AREA: Cell<*const Rseq> = const { Cell::new(UNSET.0.get()) };
    /// Who registered rseq for this thread, and why its operations are fenced
    /// (None: they are not), for `status()`.
    static THREAD: Cell<Option<(Registration, Option<RseqOff>)>> = const { Cell::new(None) };
    /// The area cpulocal registers when glibc did not, [`own_len`] bytes of it.
    static OWN_AREA: UnsafeCell<OwnArea> = const { UnsafeCell::new(OwnArea::unregistered()) };
    /// Whether `OWN_AREA` is registered with the kernel.
    static OWN_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Unregisters `OWN_AREA` when the thread exits.
    static OWN_GUARD: OwnRegistration = const { OwnRegistration };
}

/// The calling thread's area pointer for the fast path. Its `cpu_id` is a valid
/// CPU only when sections may run on this thread.
#[inline(always)]
pub(crate) fn area() -> *mut Rseq {
    AREA.with(Cell::get).cast_mut()
}

/// Reads `cpu_id` from an area returned by [`area`].
#[inline(always)]
pub(crate) fn cpu_id(area: *const Rseq) -> u32 {
    // SAFETY: `area` comes from `area()`, which always points to a live area
    // (module invariant); the kernel writes it only while this thread is not
    // running user code, so a volatile read sees the current value.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area).cpu_id)) }
}

/// Reads the u32 at `offset` (`cpu_id` or `mm_cid`: see
/// [`Index::field_offset`](crate::Index)) of an area returned by [`area`]:
/// the fast path's index. An `mm_cid` read here may be stale (an area that
/// foreign code unregistered keeps `mm_cid` 0 but gets `cpu_id` -1): the
/// sections check `cpu_id` themselves; the slow path uses
/// [`valid_index_in`].
#[inline(always)]
pub(crate) fn index_in(area: *const Rseq, offset: usize) -> u32 {
    debug_assert!(offset + 4 <= core::mem::size_of::<Rseq>());
    // SAFETY: as in `cpu_id`; `offset` is that of a u32 field of the area.
    unsafe { core::ptr::read_volatile(area.cast::<u8>().add(offset).cast::<u32>()) }
}

/// [`index_in`] where `mm_cid` also requires a valid `cpu_id`, else
/// [`abi::CPU_ID_UNINITIALIZED`] (no slot), so that an area foreign code
/// unregistered under us never looks like a slot's.
#[inline]
pub(crate) fn valid_index_in(area: *const Rseq, offset: usize) -> u32 {
    let index = index_in(area, offset);
    if offset == core::mem::offset_of!(Rseq, cpu_id) || (cpu_id(area) as i32) >= 0 {
        index
    } else {
        abi::CPU_ID_UNINITIALIZED
    }
}

/// Sets up the calling thread if it has not been; returns true when sections
/// may now run on it. Called from the slow path when `cpu_id` is not a CPU.
#[cold]
pub(crate) fn ensure_thread() -> bool {
    if cpu_id(area()) != abi::CPU_ID_UNINITIALIZED {
        return false; // set up already; no rseq on this thread
    }
    let p = process();
    let (who, off) = if !p.sections {
        // No thread runs sections; still say truthfully who registered.
        let off = p.off.unwrap_or(RseqOff::NoArchSupport);
        let who = match p.glibc {
            Some(g) if g.size != 0 && glibc_registered_thread(g) => Registration::Glibc,
            _ if OWN_REGISTERED.with(Cell::get) => Registration::Cpulocal,
            _ => Registration::Nobody(off),
        };
        (who, Some(off))
    } else {
        match p.glibc {
            Some(g) if g.size != 0 => {
                if glibc_registered_thread(g) {
                    AREA.with(|c| c.set(glibc_area(g)));
                    (Registration::Glibc, None)
                } else {
                    let off = RseqOff::GlibcFailedForThread;
                    (Registration::Nobody(off), Some(off))
                }
            }
            _ => match register_own() {
                Ok(a) => {
                    AREA.with(|c| c.set(a));
                    (Registration::Cpulocal, None)
                }
                Err(e) => {
                    // The kernel answers EINVAL when another area is registered.
                    let off = if e.0 == libc::EINVAL {
                        RseqOff::ForeignRegistration
                    } else {
                        RseqOff::Refused(e)
                    };
                    (Registration::Nobody(off), Some(off))
                }
            },
        }
    };
    // The state first: a signal handler that runs once AREA is set finds the
    // thread set up and reads THREAD.
    THREAD.with(|c| c.set(Some((who, off))));
    if off.is_some() {
        AREA.with(|c| c.set(NO_RSEQ.0.get()));
    } else {
        slice::set_up_thread(area(), process().slice_allowed);
    }
    cpu_id(area()) as i32 >= 0
}

/// glibc's area of the calling thread.
fn glibc_area(g: sys::GlibcRseq) -> *const Rseq {
    abi::thread_pointer().wrapping_offset(g.offset) as *const Rseq
}

/// Whether glibc (which registered rseq for the process) registered the
/// calling thread. Without rseq asm the area cannot be located, and glibc's
/// process-wide answer stands.
fn glibc_registered_thread(g: sys::GlibcRseq) -> bool {
    !abi::HAS_SECTIONS || cpu_id(glibc_area(g)) as i32 >= 0
}

/// The length cpulocal registers its own areas with (0: not chosen yet).
static OWN_LEN: AtomicU32 = AtomicU32::new(0);

/// The length cpulocal registers its own areas with: sized from the
/// kernel's `AT_RSEQ_FEATURE_SIZE` and `AT_RSEQ_ALIGN`
/// ([`abi::own_area_len`]), the same for every thread of the process.
pub(crate) fn own_len() -> u32 {
    match OWN_LEN.load(Ordering::Relaxed) {
        0 => {
            let feature = crate::switches::own_feature_size()
                .or_else(|| sys::getauxval(abi::AT_RSEQ_FEATURE_SIZE));
            let len = abi::own_area_len(feature, sys::getauxval(abi::AT_RSEQ_ALIGN));
            OWN_LEN.store(len, Ordering::Relaxed);
            len
        }
        len => len,
    }
}

/// This thread's own area, as the `struct rseq` the sections read.
fn own_area() -> *mut Rseq {
    OWN_AREA.with(UnsafeCell::get).cast()
}

/// Registers this thread's own area; returns it.
fn register_own() -> Result<*const Rseq, Errno> {
    let own = own_area();
    if OWN_REGISTERED.with(Cell::get) {
        return Ok(own); // the probe in `decide` registered this thread already
    }
    // Install the destructor before registering, so no registered area can
    // outlive the thread's storage.
    OWN_GUARD.with(|_| ());
    // SAFETY: OWN_AREA (256 bytes, at least `own_len()`) lives as long as
    // this thread's TLS; OwnRegistration's destructor unregisters it before
    // that storage is freed.
    match unsafe { sys::rseq_register(own, own_len()) } {
        // EBUSY: this same area is registered already, by a signal handler
        // that interrupted this function between the check above and here.
        Ok(()) | Err(Errno(libc::EBUSY)) => {
            OWN_REGISTERED.with(|c| c.set(true));
            Ok(own)
        }
        Err(e) => Err(e),
    }
}

/// Unregisters this thread's own area, if it is registered.
fn unregister_own() {
    if OWN_REGISTERED
        .try_with(|c| c.replace(false))
        .unwrap_or(false)
    {
        // SAFETY: this thread's registered area, with its length.
        let r = unsafe { sys::rseq_unregister(own_area(), own_len()) };
        if r.is_err() {
            crate::switches::unregister_failed();
        }
        debug_assert!(r.is_ok(), "rseq unregistration failed: {r:?}");
    }
}

struct OwnRegistration;

impl Drop for OwnRegistration {
    fn drop(&mut self) {
        // Later destructors of this thread must not use the area.
        let _ = AREA.try_with(|c| c.set(NO_RSEQ.0.get()));
        let exiting = RseqOff::ThreadExiting;
        let _ = THREAD.try_with(|c| c.set(Some((Registration::Nobody(exiting), Some(exiting)))));
        if !crate::switches::skip_unregister() {
            unregister_own();
        }
        // Poisoned, so a test can see that the kernel no longer writes it.
        #[cfg(feature = "testing")]
        {
            let own = own_area();
            // SAFETY: the area is ours; once unregistered nothing else writes
            // it (with `SkipUnregister` the kernel still may: what the test
            // detects).
            unsafe {
                core::ptr::write_volatile(
                    core::ptr::addr_of_mut!((*own).cpu_id_start),
                    crate::switches::POISON,
                );
                core::ptr::write_volatile(
                    core::ptr::addr_of_mut!((*own).cpu_id),
                    crate::switches::POISON,
                );
            }
        }
    }
}

/// Who registered rseq for the calling thread, and why its operations are
/// fenced (None: they run sections); sets the thread up if needed.
pub(crate) fn thread_state() -> (Registration, Option<RseqOff>) {
    ensure_thread();
    THREAD.with(Cell::get).unwrap_or((
        Registration::Nobody(RseqOff::NoArchSupport),
        Some(RseqOff::NoArchSupport),
    ))
}

/// The CPU the caller runs on: `cpu_id` where sections run, else
/// `sched_getcpu()`.
#[inline]
pub(crate) fn current_cpu() -> usize {
    let cpu = cpu_id(area());
    if cpu as i32 >= 0 {
        cpu as usize
    } else {
        sys::sched_getcpu()
    }
}

/// `cpu_id_start` where sections run, else `sched_getcpu()`.
#[inline]
pub(crate) fn cpu_start() -> usize {
    let a = area();
    if cpu_id(a) as i32 >= 0 {
        // SAFETY: `a` is a live area (module invariant).
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*a).cpu_id_start)) as usize }
    } else {
        sys::sched_getcpu()
    }
}

/// Reads the u32 field at `offset` of the thread's area, if sections run on
/// this thread and the kernel's feature size covers the field.
pub(crate) fn area_u32(offset: usize) -> Option<usize> {
    ensure_thread();
    let a = area();
    let covered = process()
        .feature_size
        .is_some_and(|f| f.min(32) as usize >= offset + 4);
    if !covered || (cpu_id(a) as i32) < 0 {
        return None;
    }
    // SAFETY: `a` is a live area (module invariant) and `offset + 4` is within
    // its 32 bytes; a volatile read as for `cpu_id`.
    Some(unsafe { core::ptr::read_volatile(a.cast::<u8>().add(offset).cast::<u32>()) } as usize)
}

/// `(cpu_id_start, cpu_id)` of the calling thread's own area (for tests).
#[cfg(feature = "testing")]
pub(crate) fn own_area_cpu_ids() -> (u32, u32) {
    let own = own_area();
    // SAFETY: our own area, alive as long as the thread's TLS; volatile reads
    // of fields the kernel may write between our instructions.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*own).cpu_id_start)),
            core::ptr::read_volatile(core::ptr::addr_of!((*own).cpu_id)),
        )
    }
}

/// What a structure asking for `by` gets in this process: `MmCid` where
/// structures may index by concurrency id ([`mm_cid_indexing`]), else `Cpu`;
/// `Cpu` and `Node` as they are.
pub(crate) fn effective(by: Index) -> Index {
    match by {
        Index::MmCid if mm_cid_indexing() => Index::MmCid,
        Index::Node => Index::Node,
        _ => Index::Cpu,
    }
}

/// Whether structures may index by `mm_cid` in this process: sections run and
/// the kernel's feature size covers the field.
pub(crate) fn mm_cid_indexing() -> bool {
    let p = process();
    p.sections
        && p.feature_size.is_some_and(|f| {
            f.min(u64::from(abi::RSEQ_ORIG_SIZE)) as usize >= offset_of!(Rseq, mm_cid) + 4
        })
}

/// Reads the CPU-to-node table [`current_node`] may need (from sysfs, once
/// per process), so that no later call, perhaps in a signal handler,
/// allocates or reads a file.
pub(crate) fn prepare_current_node() {
    let _ = sys::node_of_cpu(0);
}

/// The node of the CPU the calling thread runs on: rseq's `node_id` where the
/// thread runs sections and the kernel fills the field, else the node of
/// `sched_getcpu()`'s CPU (from the table [`prepare_current_node`] reads).
pub(crate) fn current_node() -> usize {
    let area = area();
    let p = process();
    let covered = p.feature_size.is_some_and(|f| {
        f.min(u64::from(abi::RSEQ_ORIG_SIZE)) as usize >= offset_of!(Rseq, node_id) + 4
    });
    if covered && (cpu_id(area) as i32) >= 0 {
        index_in(area, offset_of!(Rseq, node_id)) as usize
    } else {
        sys::node_of_cpu(current_cpu())
    }
}
