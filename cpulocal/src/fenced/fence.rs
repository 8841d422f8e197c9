//! The fenced engine: the user-space equivalent of `cpu_opv`.
//!
//! Every per-CPU slot has a fence word F. An operation on the slot of CPU c
//! that cannot (or may not) run as a critical section does:
//!
//! 1. acquire F (compare-and-swap free -> held by own thread id; spin briefly,
//!    then sleep on a futex, so a preempted holder costs waiters no CPU);
//! 2. `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, c)`, when sections can run
//!    in this process (for a slot numbered by `mm_cid`, the all-CPU form:
//!    membarrier cannot target a concurrency id);
//! 3. the operation, as ordinary code;
//! 4. release F with a store-release, waking a sleeper if one is marked.
//!
//! Every section checks that F is free after arming and before reading data.
//! A section that saw F free either committed before the membarrier's IPI, so
//! its store is visible here, or is aborted by it before step 3 begins. A
//! section that starts later sees F held and leaves for this path. So step 3
//! has the slot to itself, from any CPU, however often it is preempted or
//! single-stepped.
//!
//! On weakly ordered CPUs (aarch64, riscv64) this needs one ordering from the
//! sections themselves: the check's load of F is an acquire, paired with
//! step 4's store-release, so that a section that finds F free again reads
//! what step 3 wrote. The membarrier's full barriers, on the fencer's CPU and
//! on the slot's, give the rest; `rseq/arch/aarch64.rs` has the whole argument.
//!
//! # Encoding
//!
//! A free fence word holds its slot's index c (the CPU number); a held one has
//! [`HELD`] set, the holder's id and fork generation below, and [`WAITERS`]
//! when a thread sleeps on it. A section therefore checks CPU and fence in one comparison,
//! `cpu_id == F[c]`: equal means "on CPU c and F[c] free"; unequal sends it to
//! the abort path, which tells a held fence from a migration by looking at
//! [`HELD`]. This is the protocol's "check F[c] == 0" with c as the free value,
//! so the fast path costs one load more than a section without a fence.
//!
//! # Fork
//!
//! A child of a multithreaded process inherits fence words held by threads
//! that do not exist in it. Holder ids are kernel thread ids, cached per
//! thread; the forking thread keeps its parent-side id in the child, and every
//! fork child starts a new generation (a `pthread_atfork` handler). A held
//! word is *stale* when its generation is not the current one and its holder
//! is not the thread that forked: no thread of this process holds it, and the
//! next acquirer, whichever thread it is, takes it over instead of waiting
//! forever. The forking thread keeps what it held.
//!
//! Limits: the generation wraps after 255, so a chain of 255 nested forks can
//! make a stale word look current again; `vfork`, `_Fork` and raw `clone` run no
//! fork handlers, and fork-child handlers registered before cpulocal's run
//! while the old generation is still current; and if the parent thread whose
//! id the forking thread keeps exits and the kernel reuses that id for a new
//! thread of the child, the two share an id. In each case an operation may
//! wait on a fence no live thread holds.
//! A counter's fenced operation is a single atomic instruction, so its slot is
//! consistent whatever the parent's holder was doing; a [`PerCpu`] slot locked
//! by another thread at the fork may hold a half-done update, as data under
//! any lock does in a fork child.
//!
//! [`PerCpu`]: crate::PerCpu

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::rseq::registration;
use crate::rseq::slice;
use crate::rseq::sys;
use crate::Index;

/// Spins on a held fence before sleeping. A holder's work is a few hundred
/// nanoseconds (a membarrier and one operation), so a short spin usually wins;
/// a preempted holder is waited for on the futex instead.
pub const SPINS_BEFORE_SLEEP: u32 = 100;

/// Set in the fence word while the fence is held.
pub(crate) const HELD: u32 = 1 << 31;
/// Set in a held fence word when a thread sleeps on it.
const WAITERS: u32 = 1 << 30;
/// The fork generation in which the holder took the fence (modulo
/// [`GENERATIONS`]).
const GENERATION: u32 = 0xff << GENERATION_SHIFT;
/// Generations before they wrap: 255, not 256, so that a held word never
/// has bits 22 to 31 all set, and never equals the -1 or -2 (`cpu_id`) of
/// the areas of threads without rseq, which sections compare it with.
const GENERATIONS: u32 = 255;
const GENERATION_SHIFT: u32 = 22;
/// The holder's id: [`holder_id`], 1 to 2^22 - 1.
const ID: u32 = (1 << GENERATION_SHIFT) - 1;

/// The current fork generation (how many forks led to this process, modulo
/// [`GENERATIONS`]), shifted into place.
static CURRENT_GENERATION: AtomicU32 = AtomicU32::new(0);
/// The id of the thread that forked this process (0: not a fork child).
static FORKER: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's holder id, 0 until it first takes a fence.
    static HOLDER_ID: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread's holder id: its kernel thread id (below 2^22, Linux's
/// `PID_MAX_LIMIT`), so unique among the live threads of the process. Cached;
/// the forking thread keeps its parent-side id in a fork child (see *Fork*).
#[inline]
pub(crate) fn holder_id() -> u32 {
    match HOLDER_ID.with(Cell::get) {
        0 => first_holder_id(),
        id => id,
    }
}

/// [`holder_id`] the first time a thread asks: `gettid`, cached.
#[cold]
#[inline(never)]
fn first_holder_id() -> u32 {
    let id = sys::gettid() & ID;
    HOLDER_ID.with(|c| c.set(id));
    id
}

/// Registers [`after_fork_in_child`] with `pthread_atfork`, once per
/// process. The slot arrays call it as they are built (never in a signal
/// handler), so it is registered before any fence can be held.
pub(crate) fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| sys::in_fork_children(after_fork_in_child));
}

/// `pthread_atfork` child handler: starts a new generation, remembering the
/// forking thread (the child's only thread).
extern "C" fn after_fork_in_child() {
    let me = HOLDER_ID.try_with(Cell::get).unwrap_or(0);
    FORKER.store(me, Ordering::Relaxed);
    let next = next_generation(CURRENT_GENERATION.load(Ordering::Relaxed));
    CURRENT_GENERATION.store(next, Ordering::Relaxed);
}

/// The generation after `now` (both shifted into place).
fn next_generation(now: u32) -> u32 {
    (((now >> GENERATION_SHIFT) + 1) % GENERATIONS) << GENERATION_SHIFT
}

/// The word thread `id` writes to hold a fence.
fn held_by(id: u32) -> u32 {
    HELD | CURRENT_GENERATION.load(Ordering::Relaxed) | id
}

/// Whether a word is held by no live thread of this process (see the module
/// docs, *Fork*).
fn is_stale(word: u32) -> bool {
    stale_in(
        word,
        CURRENT_GENERATION.load(Ordering::Relaxed),
        FORKER.load(Ordering::Relaxed),
    )
}

/// [`is_stale`] for a given current generation and forking thread.
fn stale_in(word: u32, generation: u32, forker: u32) -> bool {
    word & HELD != 0 && word & GENERATION != generation && word & ID != forker
}

/// A fence word: the slot index when free, else [`HELD`] | holder (see the
/// module docs).
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct Fence(AtomicU32);

/// The fence is already held by the calling thread: taking it again would
/// deadlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldByCaller;

impl Fence {
    /// A free fence for slot `index`.
    pub(crate) const fn new(index: usize) -> Self {
        assert!(
            index <= ID as usize,
            "slot index must leave the HELD and WAITERS bits clear"
        );
        Fence(AtomicU32::new(index as u32))
    }

    /// Whether the fence is held (by anyone).
    #[inline]
    #[cfg_attr(not(cpulocal_rseq), allow(dead_code))] // asked by sections only
    pub(crate) fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed) & HELD != 0
    }

    /// Sets the word directly, to drive the sections' branches in tests.
    #[cfg(all(test, cpulocal_rseq))]
    pub(crate) fn set_for_test(&self, word: u32) {
        self.0.store(word, Ordering::Relaxed);
    }

    /// Takes the fence of slot `index` for the thread with holder id `me`
    /// ([`holder_id`]), waiting for another holder to finish.
    pub(crate) fn acquire(&self, index: usize, me: u32) -> Result<(), HeldByCaller> {
        let free = index as u32;
        let mine = held_by(me);
        let mut cur =
            match self
                .0
                .compare_exchange(free, mine, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(cur) => cur,
            };
        if cur & HELD != 0 && cur & ID == me && !is_stale(cur) {
            return Err(HeldByCaller);
        }
        for _ in 0..SPINS_BEFORE_SLEEP {
            if cur & HELD == 0 || is_stale(cur) {
                match self.0.compare_exchange_weak(
                    cur,
                    mine | (cur & WAITERS),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(()),
                    Err(c) => cur = c,
                }
            } else {
                core::hint::spin_loop();
                cur = self.0.load(Ordering::Relaxed);
            }
        }
        // Sleep. Once a thread has slept it takes the fence with WAITERS set,
        // since other sleepers may remain and must be woken on release.
        loop {
            if cur & HELD == 0 || is_stale(cur) {
                match self.0.compare_exchange(
                    cur,
                    mine | WAITERS,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(()),
                    Err(c) => {
                        cur = c;
                        continue;
                    }
                }
            }
            if cur & WAITERS == 0 {
                if let Err(c) = self.0.compare_exchange(
                    cur,
                    cur | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    cur = c;
                    continue;
                }
                cur |= WAITERS;
            }
            sys::futex_wait(&self.0, cur);
            cur = self.0.load(Ordering::Relaxed);
        }
    }

    /// Takes the fence of slot `index` for the thread with holder id `me` if
    /// no live thread holds it: `Ok(false)` when another one does.
    pub(crate) fn try_acquire(&self, index: usize, me: u32) -> Result<bool, HeldByCaller> {
        let free = index as u32;
        let mine = held_by(me);
        let mut cur = free;
        loop {
            match self.0.compare_exchange(
                cur,
                mine | (cur & WAITERS),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(true),
                Err(c) if c & HELD == 0 || is_stale(c) => cur = c,
                Err(c) if c & ID == me => return Err(HeldByCaller),
                Err(_) => return Ok(false),
            }
        }
    }

    /// As [`hold`](Self::hold), without waiting: `Ok(None)` when another
    /// thread holds the fence.
    pub(crate) fn try_hold(&self, index: usize) -> Result<Option<Held<'_>>, HeldByCaller> {
        Ok(self.try_acquire(index, holder_id())?.then(|| Held {
            fence: self,
            index,
            slice: slice::request(registration::area),
        }))
    }

    /// Takes the fence of slot `index` for the calling thread, waiting for
    /// another holder, as a guard that releases it when dropped (also when
    /// unwinding).
    pub(crate) fn hold(&self, index: usize) -> Result<Held<'_>, HeldByCaller> {
        self.acquire(index, holder_id())?;
        Ok(Held {
            fence: self,
            index,
            slice: slice::request(registration::area),
        })
    }

    /// Releases the fence of slot `index` (store-release), waking one sleeper
    /// if any.
    pub(crate) fn release(&self, index: usize) {
        if self.0.swap(index as u32, Ordering::Release) & WAITERS != 0 {
            sys::futex_wake(&self.0, 1);
        }
    }
}

/// Aborts every critical section that may be working on slot `index` (step 2),
/// when sections can run: those on CPU `index` for [`Index::Cpu`], those on
/// every CPU for [`Index::MmCid`] (membarrier cannot target a concurrency id);
/// none for [`Index::Node`], whose slots no section touches.
pub(crate) fn barrier(index: usize, by: Index) {
    if !registration::sections_possible() || crate::switches::skip_membarrier() {
        return;
    }
    let targeted = match by {
        Index::Cpu => sys::membarrier_rseq(Some(index)),
        Index::MmCid => sys::membarrier_rseq(None),
        Index::Node => return,
    };
    if targeted.is_err() {
        // Registration succeeded, so this cannot fail for a possible CPU; if it
        // ever does, the all-CPU form gives the same guarantee.
        if let Err(e) = sys::membarrier_rseq(None) {
            panic!(
                "membarrier(PRIVATE_EXPEDITED_RSEQ) failed with {e} after its registration succeeded: \
                 cpulocal cannot protect per-CPU data from critical sections"
            );
        }
    }
}

/// Runs `op` with `fence` (the fence of slot `index`, numbered `by` CPU or
/// concurrency id) held, all signals of the calling thread blocked. Blocking
/// signals is what makes the fenced path async-signal-safe: a handler can
/// never interrupt its own thread while it holds a fence, so it can never wait
/// on itself, nor on a thread that waits on it.
///
/// # Panics
///
/// If membarrier fails although its registration succeeded (a seccomp filter
/// installed later that denies it): the slot could not be protected from
/// critical sections. The fence is released first.
#[inline(never)]
pub(crate) fn with_signals_blocked<R>(
    fence: &Fence,
    index: usize,
    by: Index,
    op: impl FnOnce() -> R,
) -> R {
    let _blocked = sys::SignalsBlocked::new();
    let _held = fence
        .hold(index)
        .expect("a fence cannot be held by a thread whose signals are blocked while it holds it");
    barrier(index, by);
    #[cfg(feature = "inject")]
    crate::inject::point(4);
    let r = op();
    #[cfg(feature = "inject")]
    crate::inject::point(5);
    r
}

/// A fence held by this thread ([`Fence::hold`]); releases it when dropped,
/// also when unwinding.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    fence: &'a Fence,
    index: usize,
    /// The time-slice extension this holder asked for, ended after the
    /// release.
    slice: slice::Request,
}

impl Held<'_> {
    /// The slot index the fence belongs to.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.fence.release(self.index);
        self.slice.end(registration::area);
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reentry_is_refused() {
        let f = Fence::new(3);
        assert!(!f.is_held());
        f.acquire(3, 7).unwrap();
        assert!(f.is_held());
        assert_eq!(f.acquire(3, 7), Err(HeldByCaller));
        f.release(3);
        assert_eq!(
            f.0.load(Ordering::Relaxed),
            3,
            "a free fence holds its slot index"
        );
        f.acquire(3, 7).unwrap();
        f.release(3);
    }

    #[test]
    fn stale_words_after_fork() {
        let generation = |g: u32| (g << GENERATION_SHIFT) & GENERATION;
        let word = |g: u32, id: u32| HELD | generation(g) | id;
        // Generation 1, forked by thread 7 of generation 0.
        let (now, forker) = (generation(1), 7);
        assert!(!stale_in(word(1, 9), now, forker), "taken in this process");
        assert!(
            !stale_in(word(0, 7), now, forker),
            "held by the forking thread"
        );
        assert!(
            stale_in(word(0, 9), now, forker),
            "held by a thread the child lacks"
        );
        assert!(
            stale_in(word(0, 9) | WAITERS, now, forker),
            "with sleepers marked"
        );
        assert!(!stale_in(3, now, forker), "a free word is never stale");
        // A grandchild forked by thread 9 of generation 1.
        let (now, forker) = (generation(2), 9);
        assert!(
            stale_in(word(0, 7), now, forker),
            "the first forker is gone"
        );
        assert!(
            !stale_in(word(1, 9), now, forker),
            "the second forker's own"
        );
        assert!(
            stale_in(word(1, 8), now, forker),
            "another thread of generation 1"
        );
        // The generation wraps at 255 (documented limit): no held word has
        // bits 22 to 31 all set, so none equals a dummy area's -1 or -2.
        let mut g = generation(0);
        for _ in 0..2 * GENERATIONS {
            let held = HELD | WAITERS | g | ID;
            assert!(held != u32::MAX && held != u32::MAX - 1, "{held:#x}");
            g = next_generation(g);
        }
        assert_eq!(next_generation(generation(254)), generation(0));
    }

    #[test]
    fn holder_ids_are_thread_ids() {
        let here = holder_id();
        assert_eq!(here, sys::gettid());
        let there = std::thread::spawn(holder_id).join().unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn a_panic_under_the_fence_releases_it() {
        let f = Fence::new(0);
        let r = std::panic::catch_unwind(|| {
            with_signals_blocked(&f, 0, Index::Cpu, || panic!("inside"))
        });
        assert!(r.is_err());
        assert!(!f.is_held(), "the fence must be released on unwind");
        assert_eq!(with_signals_blocked(&f, 0, Index::Cpu, || 5), 5);
    }

    #[test]
    fn excludes_and_wakes_sleepers() {
        struct Shared(Fence, core::cell::UnsafeCell<u64>);
        // SAFETY: the u64 is only touched with the fence held.
        unsafe impl Sync for Shared {}
        let s = Arc::new(Shared(Fence::new(1), core::cell::UnsafeCell::new(0)));
        let threads: Vec<_> = (0..8u32)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        s.0.acquire(1, 1000 + i).unwrap();
                        // SAFETY: exclusive under the fence.
                        unsafe {
                            let v = *s.1.get();
                            if v.is_multiple_of(997) {
                                std::thread::yield_now(); // let others sleep on it
                            }
                            *s.1.get() = v + 1;
                        }
                        s.0.release(1);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // SAFETY: all threads joined.
        assert_eq!(unsafe { *s.1.get() }, 8 * 20_000);
        assert_eq!(s.0 .0.load(Ordering::Relaxed), 1);
    }
}
