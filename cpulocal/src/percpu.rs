//! [`PerCpu<T>`]: one cache-line-padded slot per possible CPU, each with its
//! fence word.
//!
//! # Safety
//!
//! A slot's value is reached through `&mut T` only while its fence is held
//! (a [`SlotGuard`]) or through `&mut PerCpu<T>`; so `PerCpu<T>` is `Sync`
//! when `T: Send`, like a mutex. Structures of this crate that run critical
//! sections on a slot (such as [`PerCpuCounter`](crate::PerCpuCounter)) never
//! lock it, and touch the value only through atomics or sections.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use crossbeam_utils::CachePadded;

use crate::fence::Fence;
use crate::{fence, Error, Index};

/// One CPU's slot: the fence word, then the value, in one padded line.
#[repr(C)]
pub(crate) struct Slot<T> {
    pub(crate) fence: Fence,
    value: UnsafeCell<T>,
}

/// A counter's slot, as the `add` section addresses it.
pub(crate) type CounterSlot = Slot<core::sync::atomic::AtomicI64>;
/// Offset of the fence word in every slot: sections address it from the slot.
pub(crate) const FENCE_OFFSET: usize = core::mem::offset_of!(CounterSlot, fence);
/// Offset of a counter slot's value.
#[cfg_attr(not(cpulocal_rseq), allow(dead_code))] // used by sections only
pub(crate) const COUNTER_VALUE_OFFSET: usize = core::mem::offset_of!(CounterSlot, value);
const _: () = assert!(FENCE_OFFSET == 0, "the fence opens every slot");

/// A free-standing counter slot (fence word, value) for the asm unit tests.
#[cfg(all(test, cpulocal_rseq))]
pub(crate) fn test_slot(fence_word: u32, value: i64) -> CounterSlot {
    let slot = Slot {
        fence: Fence::new(0),
        value: UnsafeCell::new(core::sync::atomic::AtomicI64::new(value)),
    };
    slot.fence.set_for_test(fence_word);
    slot
}

#[cfg(all(test, cpulocal_rseq))]
impl CounterSlot {
    pub(crate) fn value(&self) -> i64 {
        // SAFETY: test slots are never locked.
        unsafe { self.shared() }.load(core::sync::atomic::Ordering::Relaxed)
    }
}

impl<T> Slot<T> {
    /// A raw pointer to the value, for operations under the fence.
    pub(crate) fn value_ptr(&self) -> *mut T {
        self.value.get()
    }

    /// The value, for structures that only use atomics or sections on it.
    ///
    /// # Safety
    ///
    /// No `&mut T` to this value may exist while the reference lives: the
    /// caller never locks this slot.
    #[inline(always)]
    pub(crate) unsafe fn shared(&self) -> &T {
        // SAFETY: by the caller's promise no exclusive reference exists.
        unsafe { &*self.value.get() }
    }
}

/// A value per possible CPU, each in its own cache line, reachable from any
/// thread through its CPU's fence.
///
/// `PerCpu` is the storage under cpulocal's structures. On its own it offers
/// exclusive access to any CPU's slot by [`lock`](Self::lock), through the
/// slot's fence word, from any thread on any CPU: an uncontended lock is one
/// compare-and-swap (no critical section touches a `PerCpu<T>` of yours, so no
/// membarrier is needed). The rseq fast path belongs to the operations built
/// on it, such as [`PerCpuCounter::add`](crate::PerCpuCounter::add).
///
/// Slots are sized by [`possible_cpus()`](crate::possible_cpus), so a CPU that
/// comes online later still has one.
///
/// # Examples
///
/// ```
/// use cpulocal::PerCpu;
///
/// let hits: PerCpu<Vec<u32>> = PerCpu::new(|_cpu| Vec::new());
/// hits.lock_current().push(7);
/// hits.lock(0).push(1);
/// let total: usize = hits.iter().map(|slot| slot.len()).sum();
/// assert_eq!(total, 2);
/// ```
pub struct PerCpu<T> {
    slots: Box<[CachePadded<Slot<T>>]>,
    by: Index,
}

// SAFETY: a PerCpu owns its values; moving it moves them.
unsafe impl<T: Send> Send for PerCpu<T> {}
// SAFETY: shared access hands out `&mut T` only under the slot's fence, one
// holder at a time, as a Mutex does; so T: Send suffices.
unsafe impl<T: Send> Sync for PerCpu<T> {}

impl<T> PerCpu<T> {
    /// One slot per possible CPU, each initialised by `init(cpu)`.
    ///
    /// Also makes the process-wide engine decision (rseq and membarrier
    /// registration) if no earlier constructor did, so that operations, which
    /// may run in signal handlers, never have to.
    pub fn new(init: impl FnMut(usize) -> T) -> Self {
        Self::with_index(Index::Cpu, init)
    }

    /// One slot per CPU or per concurrency id, as `by` says (see [`Index`] for
    /// the slot count and what `MmCid` gives where the kernel lacks it), each
    /// initialised by `init(index)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpu};
    ///
    /// let slots = PerCpu::with_index(Index::MmCid, |_| 0u32);
    /// *slots.lock_current() += 1;
    /// assert_eq!(slots.iter().map(|s| *s).sum::<u32>(), 1);
    /// ```
    pub fn with_index(by: Index, mut init: impl FnMut(usize) -> T) -> Self {
        let (by, slots) = by.padded_slots(|cpu| Slot {
            fence: Fence::new(cpu),
            value: UnsafeCell::new(init(cpu)),
        });
        PerCpu { slots, by }
    }

    /// The number of slots: [`possible_cpus()`](crate::possible_cpus) at
    /// construction for [`Index::Cpu`], possibly fewer for [`Index::MmCid`].
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// How the slots are numbered.
    pub fn index(&self) -> Index {
        self.by
    }

    /// Always false: a machine has at least one CPU.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of `cpu`, if in range.
    #[inline(always)]
    pub(crate) fn slot(&self, cpu: usize) -> Option<&Slot<T>> {
        self.slots.get(cpu).map(|s| &**s)
    }

    /// Locks `cpu`'s slot through its fence: waits for another holder (briefly
    /// spinning, then sleeping), and returns a guard that gives `&mut T` until
    /// dropped. Works from any thread on any CPU. In a fork child, a slot
    /// that a thread absent from the child held at the fork is taken over by
    /// whichever thread locks it first (its value may hold a half-done
    /// update, as data under any lock does after fork); the forking thread
    /// still holds what it held.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.len()`;
    /// [`Error::HeldByThisThread`] if this thread already holds the slot
    /// (a nested lock, or a signal handler interrupting its own thread's lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cpulocal::{Error, PerCpu};
    /// let slots = PerCpu::new(|cpu| cpu * 10);
    /// let guard = slots.try_lock(0)?;
    /// assert_eq!(*guard, 0);
    /// assert_eq!(slots.try_lock(0).unwrap_err(), Error::HeldByThisThread { cpu: 0 });
    /// assert!(matches!(slots.try_lock(slots.len()), Err(Error::CpuOutOfRange { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn try_lock(&self, cpu: usize) -> Result<SlotGuard<'_, T>, Error> {
        let slot = self.slot(cpu).ok_or(Error::CpuOutOfRange {
            cpu,
            slots: self.len(),
        })?;
        let held = slot
            .fence
            .hold(cpu)
            .map_err(|_| Error::HeldByThisThread { cpu })?;
        // No membarrier: no critical section touches a PerCpu<T>'s values;
        // structures whose sections do use the fenced engine instead.
        Ok(SlotGuard {
            slot,
            held,
            _not_send: PhantomData,
        })
    }

    /// Like [`try_lock`](Self::try_lock), for callers that know `cpu` is in
    /// range and not held.
    ///
    /// Not async-signal-safe: like a mutex, it may wait for another thread.
    ///
    /// # Panics
    ///
    /// If `cpu >= self.len()`, or this thread already holds the slot.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|_| 0u64);
    /// *slots.lock(0) += 5;
    /// assert_eq!(*slots.lock(0), 5);
    /// ```
    #[track_caller]
    pub fn lock(&self, cpu: usize) -> SlotGuard<'_, T> {
        self.try_lock(cpu)
            .unwrap_or_else(|e| panic!("PerCpu::lock: {e}"))
    }

    /// Locks the slot of the CPU (or concurrency id) the caller runs on. The
    /// thread may migrate
    /// while it holds the guard; the guard still holds the slot it locked
    /// ([`SlotGuard::cpu`]).
    ///
    /// # Panics
    ///
    /// If this thread already holds that slot.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|_| 0u64);
    /// let mut guard = slots.lock_current();
    /// *guard += 1;
    /// assert!(guard.cpu() < slots.len());
    /// ```
    #[track_caller]
    pub fn lock_current(&self) -> SlotGuard<'_, T> {
        self.lock(self.by.current(self.len()))
    }

    /// Locks each slot in turn, in CPU order; each guard holds its slot until
    /// dropped.
    ///
    /// # Panics
    ///
    /// When it reaches a slot this thread already holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|cpu| cpu);
    /// let ids: Vec<usize> = slots.iter().map(|g| *g).collect();
    /// assert_eq!(ids, (0..slots.len()).collect::<Vec<_>>());
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = SlotGuard<'_, T>> + '_ {
        (0..self.len()).map(move |cpu| self.lock(cpu))
    }

    /// Every slot, exclusively (no fence needed: `&mut self` excludes others).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut slots = cpulocal::PerCpu::new(|_| 1u32);
    /// slots.iter_mut().for_each(|v| *v += 1);
    /// assert!(slots.iter_mut().all(|v| *v == 2));
    /// ```
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.slots.iter_mut().map(|s| s.value.get_mut())
    }

    /// The values, in CPU order.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|cpu| cpu as u8);
    /// assert_eq!(slots.into_vec()[0], 0);
    /// ```
    pub fn into_vec(self) -> Vec<T> {
        self.slots
            .into_vec()
            .into_iter()
            .map(|s| CachePadded::into_inner(s).value.into_inner())
            .collect()
    }
}

impl<T: Default> Default for PerCpu<T> {
    fn default() -> Self {
        PerCpu::new(|_| T::default())
    }
}

impl<T> fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpu")
            .field("slots", &self.len())
            .finish_non_exhaustive()
    }
}

/// Exclusive access to one CPU's slot; releases the fence when dropped.
///
/// Returned by [`PerCpu::lock`]. It is not `Send`: the thread that took the
/// fence releases it.
#[must_use = "the slot is unlocked as soon as the guard is dropped"]
pub struct SlotGuard<'a, T> {
    slot: &'a Slot<T>,
    /// The slot's fence, released when the guard is dropped.
    held: fence::Held<'a>,
    _not_send: PhantomData<*const ()>,
}

impl<T> SlotGuard<'_, T> {
    /// The CPU whose slot this guard holds.
    pub fn cpu(&self) -> usize {
        self.held.index()
    }
}

impl<T> Deref for SlotGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the slot's fence, so no other reference to
        // the value exists (module invariant).
        unsafe { &*self.slot.value.get() }
    }
}

impl<T> DerefMut for SlotGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this borrow unique.
        unsafe { &mut *self.slot.value.get() }
    }
}

impl<T: fmt::Debug> fmt::Debug for SlotGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotGuard")
            .field("cpu", &self.cpu())
            .field("value", &**self)
            .finish()
    }
}
