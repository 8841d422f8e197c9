//! [`PerCpuLock<T>`]: a per-CPU spinlock protecting per-CPU data, taken with
//! the compare-and-store shape (the kernel's rseq `param_test` spinlock).
//!
//! # Safety
//!
//! Each slot is a fence, a lock word and a value. The lock word is 0 when the
//! slot is free and the holder's id ([`owner`]: its thread pointer, never 0
//! and unique among live threads) while it is held. It changes in two ways
//! only:
//!
//! - **0 -> id**, by the compare-and-store shape run through
//!   [`Slots::perform`] on the slot: a critical section on the slot's
//!   CPU, or the shape as ordinary code under the fence after the membarrier.
//!   Whatever the shape read as 0 is still 0 when it stores: another section
//!   on that CPU cannot run between its compare and its commit (rseq aborts a
//!   preempted or migrated section before it commits), a fenced store cannot
//!   either (the membarrier aborts the sections in flight, and later ones see
//!   the fence held), two fenced stores are serialised by the fence, and the
//!   only other writer, the holder's unlock, exists only while the word is
//!   not 0. So the 0 -> id transitions of a slot are totally ordered, each
//!   reads the value the previous unlock (or the constructor) wrote, and at
//!   most one thread holds a slot at any time.
//! - **id -> 0**, by the holder alone, with a store-release when its guard
//!   drops. It needs neither fence nor membarrier: a concurrent section or
//!   fenced store that reads the word sees either the id (its compare fails)
//!   or the 0 (there is then no holder left to write).
//!
//! The value is reached through `&mut T` only by the guard of the thread that
//! made the 0 -> id transition, until its unlock, or through `&mut self`. So
//! `PerCpuLock<T>` is `Sync` when `T: Send`, like a mutex.
//!
//! Ordering: the unlock is a store-release, sequenced after the holder's
//! accesses to the value. The next lock's compare reads that 0, as a plain
//! load in a section's asm (an atomic load for the memory model; x86 orders
//! it before every later access) or as a relaxed load under the fence; after
//! the shape commits, the lock issues `fence(Acquire)`, which synchronises
//! with the unlock because a load sequenced before it read the released
//! value. So the previous holder's writes to the value happen before the new
//! holder's accesses. The commit itself publishes nothing, so it is relaxed.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{self, AtomicUsize, Ordering};

use crate::fenced::fence;
use crate::rseq::abi;
use crate::rseq::registration;
use crate::rseq::slice;
use crate::shape::driver::{At, Follow, Slot, Slots};
use crate::shape::Order;
use crate::shape::Shape;
use crate::stats::PathStats;
use crate::Error;
use crate::Index;

/// Times a waiter re-reads a held lock word, with a spin-loop hint between
/// reads, before it starts yielding its CPU (`sched_yield`) between reads.
const SPINS_BEFORE_YIELD: u32 = 100;

/// The lock word of a free slot.
const FREE: usize = 0;

/// One CPU's lock word and value (after the slot's fence).
struct Locked<T> {
    /// [`FREE`], or the holder's id.
    word: AtomicUsize,
    value: UnsafeCell<T>,
}

/// A per-CPU spinlock protecting per-CPU data: [`lock`](Self::lock) takes the
/// current CPU's slot with one restartable sequence (compare-and-store, no
/// atomic instruction) and returns a guard that derefs to `&mut T`;
/// [`lock_on`](Self::lock_on) takes any CPU's slot, through its fence when the
/// caller runs elsewhere. Dropping the guard unlocks with a store-release.
///
/// It is a spinlock: a waiter re-reads the lock word, spinning briefly, then
/// yielding its CPU between reads, since the holder may have been preempted.
/// Keep critical sections short (no blocking I/O, no sleeping). It is not for
/// signal handlers: a handler that interrupts a holder and locks the same
/// slot gets [`Error::HeldByThisThread`] (or a panic from `lock`), and one
/// that waits for another thread cannot make progress.
///
/// A thread holds a slot until its guard drops, wherever the thread runs
/// meanwhile. A guard that is leaked ([`core::mem::forget`]) leaves its slot
/// locked for good, as a leaked mutex guard does (and a later thread that
/// gets the leaker's kernel thread id would be told `HeldByThisThread`); so
/// does a slot held at a `fork` by a thread the child lacks. A panic under a guard unlocks the slot
/// as the guard drops (there is no poisoning). Holding two guards at once is
/// allowed, with the usual lock-ordering care.
///
/// # Examples
///
/// ```
/// use cpulocal::PerCpuLock;
///
/// let queues: PerCpuLock<Vec<u32>> = PerCpuLock::new(|_cpu| Vec::new());
/// queues.lock().push(7);                // the current CPU's slot
/// queues.lock_on(0).unwrap().push(1);   // CPU 0's slot, from anywhere
/// let total: usize = queues.into_vec().iter().map(Vec::len).sum();
/// assert_eq!(total, 2);
/// ```
///
/// The values are handed out as `&mut T` to one thread at a time, so sharing
/// the lock needs `T: Send`, as for a [`Mutex`](std::sync::Mutex):
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// shared(&cpulocal::PerCpuLock::new(|_| std::rc::Rc::new(0u8)));
/// ```
pub struct PerCpuLock<T> {
    slots: Slots<Locked<T>>,
}

// SAFETY: the lock owns its values; moving it moves them.
unsafe impl<T: Send> Send for PerCpuLock<T> {}
// SAFETY: `&PerCpuLock` hands out `&mut T` only through a guard, to one
// thread at a time per slot (module docs), as a Mutex does; so T: Send
// suffices.
unsafe impl<T: Send> Sync for PerCpuLock<T> {}

impl<T> PerCpuLock<T> {
    /// One unlocked slot per possible CPU, each initialised by `init(cpu)`.
    ///
    /// Also makes the process-wide engine decision (rseq and membarrier
    /// registration) if no earlier constructor did.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuLock::new(|cpu| cpu * 2);
    /// assert_eq!(l.cpus(), cpulocal::possible_cpus());
    /// assert_eq!(*l.lock_on(0).unwrap(), 0);
    /// ```
    pub fn new(init: impl FnMut(usize) -> T) -> Self {
        Self::with_index(Index::Cpu, init)
    }

    /// One unlocked slot per CPU or per concurrency id, as `by` says (see
    /// [`Index`] for the slot count and what `MmCid` gives where the kernel
    /// lacks it), each initialised by `init(index)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuLock};
    ///
    /// let l = PerCpuLock::with_index(Index::MmCid, |_| 0u32);
    /// *l.lock() += 1;
    /// assert_eq!(l.into_vec().iter().sum::<u32>(), 1);
    /// ```
    pub fn with_index(by: Index, mut init: impl FnMut(usize) -> T) -> Self {
        PerCpuLock {
            // A lock word is written by the compare-and-store that takes it
            // and the holder's release store only: on node slots the take
            // may be a compare-and-swap.
            slots: Slots::new(by, |i| Locked {
                word: AtomicUsize::new(FREE),
                value: UnsafeCell::new(init(i)),
            })
            .node_atomics(),
        }
    }

    /// The number of slots: [`possible_cpus()`](crate::possible_cpus) at
    /// construction for [`Index::Cpu`], possibly fewer for [`Index::MmCid`],
    /// [`possible_nodes()`](crate::possible_nodes) for [`Index::Node`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(cpulocal::PerCpuLock::new(|_| ()).cpus() >= 1);
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How the slots are numbered.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuLock};
    /// assert_eq!(PerCpuLock::new(|_| ()).index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// How many lock attempts left the fast path so far: a lock on another
    /// CPU's slot is a fenced operation (a `membarrier` on that CPU), a local
    /// one after aborts is retried. An attempt whose first load found the slot
    /// held waits without being counted; one that lost the race after that
    /// load is counted (as fenced, if it ran on the fenced path).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuLock::new(|_| 0u8);
    /// let here = cpulocal::current_cpu();
    /// let elsewhere = (here + 1) % l.cpus();
    /// drop(l.lock_on(elsewhere).unwrap());
    /// if elsewhere != here {
    ///     // Fenced, unless this thread migrated onto that CPU meanwhile.
    ///     assert!(l.stats().fenced <= 1);
    /// }
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }

    /// Locks the slot of the CPU (or concurrency id) the caller runs on,
    /// waiting while another thread holds it: a critical section on that CPU
    /// compares the lock word with 0 and stores this thread's id. The
    /// uncontended case is inlined into the caller; waiting, retries and the
    /// fenced path are out of line.
    ///
    /// The current CPU is read again before each attempt, so a thread that
    /// migrates while waiting locks its new CPU's slot instead: the guard
    /// holds the slot of the CPU the thread ran on when the lock succeeded
    /// ([`PerCpuLockGuard::cpu`]), and keeps holding it if the thread then
    /// migrates.
    ///
    /// Not async-signal-safe: it may wait for another thread.
    ///
    /// # Panics
    ///
    /// If this thread already holds the slot it would lock (a nested `lock`
    /// on the same CPU, or a signal handler interrupting its own thread's
    /// guard): waiting would deadlock. [`try_lock`](Self::try_lock) reports
    /// that case as [`Error::HeldByThisThread`] instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuLock::new(|_| 0u64);
    /// let mut guard = l.lock();
    /// *guard += 1;
    /// let cpu = guard.cpu();
    /// drop(guard);
    /// assert_eq!(*l.lock_on(cpu).unwrap(), 1);
    /// ```
    #[inline]
    #[track_caller]
    pub fn lock(&self) -> PerCpuLockGuard<'_, T> {
        let me = owner();
        let at = self.slots.here();
        // SAFETY: `at` is a slot of this lock. A held slot fails the shape's
        // compare; the slow path tells this thread's hold from another's.
        if unsafe { self.take(at, me) } {
            return PerCpuLockGuard::new(at);
        }
        self.lock_slow(me)
    }

    /// [`lock`](Self::lock) after its first attempt found the slot held or
    /// lost the race: waits, trying the current CPU's slot again each time.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn lock_slow(&self, me: usize) -> PerCpuLockGuard<'_, T> {
        let mut waited = 0;
        loop {
            match self.attempt(self.slots.here(), me) {
                Ok(guard) => return guard,
                Err(Error::WouldBlock { .. }) => wait(&mut waited),
                Err(e) => panic!("PerCpuLock::lock: {e}"),
            }
        }
    }

    /// Locks the current CPU's slot if it is free, without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if another thread holds that slot;
    /// [`Error::HeldByThisThread`] if this thread does.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuLock};
    ///
    /// let l = PerCpuLock::new(|_| 'x');
    /// let guard = l.try_lock()?;
    /// // Refused if still on the same CPU, else the new CPU's slot.
    /// match l.try_lock() {
    ///     Err(e) => assert_eq!(e, Error::HeldByThisThread { cpu: guard.cpu() }),
    ///     Ok(other) => assert_ne!(other.cpu(), guard.cpu()),
    /// }
    /// # Ok::<(), Error>(())
    /// ```
    pub fn try_lock(&self) -> Result<PerCpuLockGuard<'_, T>, Error> {
        self.attempt(self.slots.here(), owner())
    }

    /// Locks `cpu`'s slot, from any thread on any CPU, waiting while another
    /// thread holds it: the same compare-and-store as [`lock`](Self::lock), a
    /// critical section if the caller runs on `cpu`, the fenced path (fence
    /// and `membarrier` on `cpu`) otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`;
    /// [`Error::HeldByThisThread`] if this thread already holds the slot
    /// (waiting would deadlock).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuLock};
    ///
    /// let l = PerCpuLock::new(|cpu| cpu);
    /// let guard = l.lock_on(0)?;
    /// assert_eq!((*guard, guard.cpu()), (0, 0));
    /// assert_eq!(l.lock_on(0).unwrap_err(), Error::HeldByThisThread { cpu: 0 });
    /// assert!(matches!(l.lock_on(l.cpus()), Err(Error::CpuOutOfRange { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn lock_on(&self, cpu: usize) -> Result<PerCpuLockGuard<'_, T>, Error> {
        let at = self.slots.on(cpu)?;
        let me = owner();
        let mut waited = 0;
        loop {
            match self.attempt(at, me) {
                Err(Error::WouldBlock { .. }) => wait(&mut waited),
                done => return done,
            }
        }
    }

    /// Locks `cpu`'s slot if it is free, without waiting (as
    /// [`lock_on`](Self::lock_on) otherwise).
    ///
    /// # Errors
    ///
    /// As [`lock_on`](Self::lock_on); [`Error::WouldBlock`] if another
    /// thread holds the slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuLock};
    ///
    /// let l = PerCpuLock::new(|_| 0u8);
    /// let guard = l.try_lock_on(0)?;
    /// assert_eq!(l.try_lock_on(0).unwrap_err(), Error::HeldByThisThread { cpu: 0 });
    /// std::thread::scope(|s| {
    ///     s.spawn(|| assert_eq!(l.try_lock_on(0).unwrap_err(), Error::WouldBlock { cpu: 0 }));
    /// });
    /// drop(guard);
    /// assert!(l.try_lock_on(0).is_ok());
    /// # Ok::<(), Error>(())
    /// ```
    pub fn try_lock_on(&self, cpu: usize) -> Result<PerCpuLockGuard<'_, T>, Error> {
        self.attempt(self.slots.on(cpu)?, owner())
    }

    /// Every value, exclusively (no locking: `&mut self` excludes others).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut l = cpulocal::PerCpuLock::new(|_| 1u32);
    /// l.iter_mut().for_each(|v| *v += 1);
    /// assert!(l.iter_mut().all(|v| *v == 2));
    /// ```
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.slots.iter_mut().map(|s| s.value.get_mut())
    }

    /// The values, in slot order.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuLock::new(|cpu| cpu as u8);
    /// let values = l.into_vec();
    /// assert_eq!(values[0], 0);
    /// assert_eq!(values.len(), cpulocal::possible_cpus());
    /// ```
    pub fn into_vec(self) -> Vec<T> {
        self.slots
            .into_data()
            .map(|s| s.value.into_inner())
            .collect()
    }

    /// One attempt to lock slot `at` for the thread with holder id `me`.
    fn attempt<'a>(
        &'a self,
        at: At<'a, Locked<T>>,
        me: usize,
    ) -> Result<PerCpuLockGuard<'a, T>, Error> {
        // Only this thread writes `me` into the word, and only it clears it,
        // so a relaxed load tells whether this thread holds the slot.
        match at.slot.data.word.load(Ordering::Relaxed) {
            FREE => {}
            holder if holder == me => return Err(Error::HeldByThisThread { cpu: at.index }),
            _ => return Err(Error::WouldBlock { cpu: at.index }), // spin on the load
        }
        // SAFETY: `at` is a slot of this lock.
        if unsafe { self.take(at, me) } {
            Ok(PerCpuLockGuard::new(at))
        } else {
            // Another thread took it between the load and the shape.
            Err(Error::WouldBlock { cpu: at.index })
        }
    }

    /// The compare-and-store 0 -> `me` on slot `at`'s lock word; on success,
    /// the acquire fence that makes the previous holder's writes visible.
    ///
    /// # Safety
    ///
    /// `at` is a slot of this lock.
    #[inline(always)]
    unsafe fn take(&self, at: At<'_, Locked<T>>, me: usize) -> bool {
        let shape = move |slot: &Slot<Locked<T>>| Shape::CbneStore {
            vo: Shape::offset(&slot.fence, slot.data.word.as_ptr()),
            expect: FREE,
            newv: me,
        };
        // SAFETY: the shape names slot `at`'s lock word, written only as the
        // module docs say. Relaxed: the commit publishes nothing.
        if unsafe { self.slots.perform(at, Order::Relaxed, Follow::Slot, shape) }.is_err() {
            return false;
        }
        // The shape's compare read the previous holder's release store of 0:
        // this fence makes its writes to the value visible (module docs).
        atomic::fence(Ordering::Acquire);
        true
    }
}

/// The calling thread's id in a lock word: its thread pointer (the address
/// of its thread control block, nonzero, unique among the live threads, one
/// instruction to read); its kernel thread id where there is no rseq engine.
#[inline(always)]
fn owner() -> usize {
    if abi::HAS_SECTIONS {
        abi::thread_pointer() as usize
    } else {
        fence::holder_id() as usize
    }
}

/// Waits after an attempt found the slot held: a spin-loop hint for the first
/// [`SPINS_BEFORE_YIELD`] rounds, then `sched_yield` (the holder may be
/// preempted, and may need this CPU to finish).
#[inline]
fn wait(waited: &mut u32) {
    if *waited < SPINS_BEFORE_YIELD {
        *waited += 1;
        core::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl<T: Default> Default for PerCpuLock<T> {
    fn default() -> Self {
        PerCpuLock::new(|_| T::default())
    }
}

impl<T> fmt::Debug for PerCpuLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuLock")
            .field("cpus", &self.cpus())
            .field("index", &self.index())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One CPU's slot of a [`PerCpuLock`], locked: derefs to its value and
/// unlocks (a store-release) when dropped.
///
/// It is not `Send`: the lock word names the thread that holds the slot, so
/// that thread unlocks it (the compiler's refusal names the guard: "required
/// because it appears within the type `PerCpuLockGuard<'_, u8>`").
///
/// ```compile_fail
/// let l = cpulocal::PerCpuLock::new(|_| 0u8);
/// let guard = l.lock();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
#[must_use = "the slot is unlocked as soon as the guard is dropped"]
pub struct PerCpuLockGuard<'a, T> {
    /// The locked slot's word and value: a pointer, which makes the guard
    /// neither `Send` nor `Sync` (a reference would make the compiler's
    /// refusal name the value's `UnsafeCell` instead of the guard).
    locked: NonNull<Locked<T>>,
    /// The slot's index and the time-slice extension request the holder made
    /// (ended after the unlock), in one word, so that the guard is a pair of
    /// scalars, which the compiler returns in registers.
    held: slice::Tagged,
    _borrows: PhantomData<&'a ()>,
}

// SAFETY: `&PerCpuLockGuard` gives only `&T`, so sharing the guard shares the
// value, which T: Sync permits (as for a MutexGuard).
unsafe impl<T: Sync> Sync for PerCpuLockGuard<'_, T> {}

impl<'a, T> PerCpuLockGuard<'a, T> {
    /// The guard of slot `at`, which this thread has just locked.
    #[inline(always)]
    fn new(at: At<'a, Locked<T>>) -> Self {
        PerCpuLockGuard {
            locked: NonNull::from(&at.slot.data),
            held: slice::Tagged::new(at.index, slice::request(registration::area)),
            _borrows: PhantomData,
        }
    }

    /// The locked slot.
    #[inline(always)]
    fn locked(&self) -> &'a Locked<T> {
        // SAFETY: from a `&'a Locked<T>` (`new`), valid for the guard's life.
        unsafe { self.locked.as_ref() }
    }

    /// The CPU (or concurrency id) whose slot this guard holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuLock::new(|cpu| cpu);
    /// let guard = l.lock();
    /// assert_eq!(*guard, guard.cpu());
    /// ```
    pub fn cpu(&self) -> usize {
        self.held.value()
    }
}

impl<T> Deref for PerCpuLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this thread holds the slot, so no other reference to the
        // value exists (module docs).
        unsafe { &*self.locked().value.get() }
    }
}

impl<T> DerefMut for PerCpuLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this borrow unique.
        unsafe { &mut *self.locked().value.get() }
    }
}

impl<T> Drop for PerCpuLockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // id -> 0 by the holder: orders its accesses to the value before the
        // next holder's (module docs).
        self.locked().word.store(FREE, Ordering::Release);
        // Then gives the CPU back if the kernel deferred a preemption.
        self.held.request().end(registration::area);
    }
}

impl<T: fmt::Debug> fmt::Debug for PerCpuLockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuLockGuard")
            .field("cpu", &self.cpu())
            .field("value", &**self)
            .finish()
    }
}
