//! [`PerCpu<T>`]: one cache-line-padded slot per possible CPU, each with its
//! fence word.
//!
//! # Safety
//!
//! A slot's value is reached through `&mut T` only while its fence is held
//! (a [`SlotGuard`]) or through `&mut PerCpu<T>`; so `PerCpu<T>` is `Sync`
//! when `T: Send`, like a mutex. No critical section ever touches a
//! `PerCpu`'s values, so the fence alone (no membarrier) excludes every other
//! access.
#![allow(unsafe_code)]

use crate::fenced::opv::{check_count, execute, validate, Op, OpError, SlotOp, MAX_OPS};
use crate::rseq::sys::SignalsBlocked;
use bytemuck::Pod;
use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::fenced::fence;
use crate::shape::driver::{Slot, Slots};
use crate::Error;
use crate::Index;

/// A value per possible CPU, each in its own cache line, reachable from any
/// thread through its CPU's fence.
///
/// It offers exclusive access to any CPU's slot by
/// [`lock_on`](Self::lock_on) (or the current CPU's by [`lock`](Self::lock)),
/// through the slot's fence word, from any thread on any CPU: an uncontended
/// lock is one compare-and-swap (no critical section touches a `PerCpu<T>`,
/// so no membarrier is needed), and batches of updates run as operation
/// vectors ([`run_ops`](Self::run_ops)). For a per-CPU lock taken by a
/// critical section, with no atomic instruction, see
/// [`PerCpuLock`](crate::PerCpuLock).
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
/// hits.lock().push(7);
/// hits.lock_on(0)?.push(1);
/// let total: usize = hits.iter().map(|slot| slot.len()).sum();
/// assert_eq!(total, 2);
/// # Ok::<(), cpulocal::Error>(())
/// ```
pub struct PerCpu<T> {
    slots: Slots<UnsafeCell<T>>,
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
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|cpu| cpu * 10);
    /// assert_eq!(*slots.lock_on(0)?, 0);
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
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
    /// *slots.lock() += 1;
    /// assert_eq!(slots.iter().map(|s| *s).sum::<u32>(), 1);
    /// ```
    pub fn with_index(by: Index, mut init: impl FnMut(usize) -> T) -> Self {
        PerCpu {
            slots: Slots::new(by, |i| UnsafeCell::new(init(i))),
        }
    }

    /// The number of slots: [`possible_cpus()`](crate::possible_cpus) at
    /// construction for [`Index::Cpu`], possibly fewer for [`Index::MmCid`],
    /// [`possible_nodes()`](crate::possible_nodes) for [`Index::Node`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::PerCpu::new(|_| ()).cpus(), cpulocal::possible_cpus());
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How the slots are numbered.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpu};
    /// assert_eq!(PerCpu::new(|_| ()).index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// The slots, for operation vectors.
    pub(crate) fn slots(&self) -> &Slots<UnsafeCell<T>> {
        &self.slots
    }

    /// Locks the slot of the CPU (or concurrency id) the caller runs on,
    /// waiting while another thread holds it (briefly spinning, then
    /// sleeping). The thread may migrate while it holds the guard; the guard
    /// still holds the slot it locked ([`SlotGuard::cpu`]).
    ///
    /// Not async-signal-safe: like a mutex, it may wait for another thread.
    ///
    /// # Panics
    ///
    /// If this thread already holds that slot (waiting would deadlock);
    /// [`try_lock`](Self::try_lock) reports it as an error instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|_| 0u64);
    /// let mut guard = slots.lock();
    /// *guard += 1;
    /// assert!(guard.cpu() < slots.cpus());
    /// ```
    #[track_caller]
    pub fn lock(&self) -> SlotGuard<'_, T> {
        let cpu = self.slots.here().index;
        self.lock_on(cpu)
            .unwrap_or_else(|e| panic!("PerCpu::lock: {e}"))
    }

    /// Locks `cpu`'s slot through its fence, from any thread on any CPU,
    /// waiting while another thread holds it (briefly spinning, then
    /// sleeping). In a fork child, a slot that a thread absent from the child
    /// held at the fork is taken over by whichever thread locks it first (its
    /// value may hold a half-done update, as data under any lock does after
    /// fork); the forking thread still holds what it held.
    ///
    /// Not async-signal-safe: like a mutex, it may wait for another thread.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`;
    /// [`Error::HeldByThisThread`] if this thread already holds the slot
    /// (a nested lock, or a signal handler interrupting its own thread's
    /// lock): waiting would deadlock.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpu};
    ///
    /// let slots = PerCpu::new(|cpu| cpu * 10);
    /// let guard = slots.lock_on(0)?;
    /// assert_eq!(*guard, 0);
    /// assert_eq!(slots.lock_on(0).unwrap_err(), Error::HeldByThisThread { cpu: 0 });
    /// assert!(matches!(slots.lock_on(slots.cpus()), Err(Error::CpuOutOfRange { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn lock_on(&self, cpu: usize) -> Result<SlotGuard<'_, T>, Error> {
        let (slot, held) = self.slots.hold(cpu)?;
        Ok(SlotGuard::new(slot, held))
    }

    /// Locks the current CPU's slot if no other thread holds it, without
    /// waiting.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if another thread holds the slot;
    /// [`Error::HeldByThisThread`] if this thread does.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|_| 0u8);
    /// let guard = slots.try_lock()?;
    /// assert!(guard.cpu() < slots.cpus());
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    pub fn try_lock(&self) -> Result<SlotGuard<'_, T>, Error> {
        self.try_lock_on(self.slots.here().index)
    }

    /// Locks `cpu`'s slot if no other thread holds it, without waiting (as
    /// [`lock_on`](Self::lock_on) otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`], [`Error::HeldByThisThread`] as for
    /// [`lock_on`](Self::lock_on); [`Error::WouldBlock`] if another thread
    /// holds the slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpu};
    ///
    /// let slots = PerCpu::new(|_| 0u8);
    /// let guard = slots.try_lock_on(0)?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| assert_eq!(slots.try_lock_on(0).unwrap_err(), Error::WouldBlock { cpu: 0 }));
    /// });
    /// drop(guard);
    /// assert!(slots.try_lock_on(0).is_ok());
    /// # Ok::<(), Error>(())
    /// ```
    pub fn try_lock_on(&self, cpu: usize) -> Result<SlotGuard<'_, T>, Error> {
        let (slot, held) = self.slots.try_hold(cpu)?;
        Ok(SlotGuard::new(slot, held))
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
    /// assert_eq!(ids, (0..slots.cpus()).collect::<Vec<_>>());
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = SlotGuard<'_, T>> + '_ {
        (0..self.cpus()).map(move |cpu| {
            self.lock_on(cpu)
                .unwrap_or_else(|e| panic!("PerCpu::iter: {e}"))
        })
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
        self.slots.iter_mut().map(UnsafeCell::get_mut)
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
        self.slots.into_data().map(UnsafeCell::into_inner).collect()
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
            .field("cpus", &self.cpus())
            .field("index", &self.index())
            .finish_non_exhaustive()
    }
}

/// Exclusive access to one CPU's slot; releases the fence when dropped.
///
/// Returned by [`PerCpu::lock`] and its relatives. It is not `Send`: the
/// thread that took the fence releases it (the compiler's refusal names the
/// guard: "required because it appears within the type `SlotGuard<'_, u8>`").
///
/// ```compile_fail
/// let slots = cpulocal::PerCpu::new(|_| 0u8);
/// let guard = slots.lock();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
#[must_use = "the slot is unlocked as soon as the guard is dropped"]
pub struct SlotGuard<'a, T> {
    /// The locked slot: a pointer, which makes the guard neither `Send` nor
    /// `Sync` (a reference would make the compiler's refusal name the
    /// value's `UnsafeCell` instead of the guard).
    slot: NonNull<Slot<UnsafeCell<T>>>,
    /// The slot's fence, released when the guard is dropped.
    held: fence::Held<'a>,
    _borrows: PhantomData<&'a ()>,
}

// SAFETY: `&SlotGuard` gives only `&T`, so sharing the guard shares the value,
// which T: Sync permits (as for a MutexGuard).
unsafe impl<T: Sync> Sync for SlotGuard<'_, T> {}

impl<'a, T> SlotGuard<'a, T> {
    fn new(slot: &'a Slot<UnsafeCell<T>>, held: fence::Held<'a>) -> Self {
        SlotGuard {
            slot: NonNull::from(slot),
            held,
            _borrows: PhantomData,
        }
    }

    /// The locked slot's value cell.
    fn cell(&self) -> &'a UnsafeCell<T> {
        // SAFETY: from a `&'a Slot` (`new`), valid for the guard's life.
        unsafe { &self.slot.as_ref().data }
    }

    /// The CPU whose slot this guard holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let slots = cpulocal::PerCpu::new(|cpu| cpu);
    /// let guard = slots.lock();
    /// assert_eq!(guard.cpu(), *guard);
    /// ```
    pub fn cpu(&self) -> usize {
        self.held.index()
    }
}

impl<T> Deref for SlotGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the slot's fence, so no other reference to
        // the value exists (module invariant).
        unsafe { &*self.cell().get() }
    }
}

impl<T> DerefMut for SlotGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this borrow unique.
        unsafe { &mut *self.cell().get() }
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

impl<T: Pod> PerCpu<T> {
    /// Runs the operation vector `ops` on `cpu`'s slot, atomically with
    /// respect to every lock of that slot and every other vector on it: a
    /// batch of compares, copies and integer updates at byte offsets of the
    /// slot's value, from any thread on any CPU.
    ///
    /// The whole vector is checked first, including every offset against
    /// `size_of::<T>()`; a bad one is refused before any byte is written.
    /// Then the slot's fence is taken, as [`lock`](Self::lock) takes it but
    /// with all signals of the thread blocked from before the wait until the
    /// release (so a handler never finds the slot held by its own thread;
    /// signals are deferred while another thread's guard keeps the slot),
    /// and the operations run in order. `T: Pod` makes any bytes a vector
    /// leaves a valid `T`: integers, floats, arrays of them, and `#[repr(C)]`
    /// structs of them without padding, marked with [`crate::Zeroable`] and
    /// [`crate::Pod`] (bytemuck's traits, re-exported):
    ///
    /// ```
    /// use cpulocal::{opv::SlotOp, PerCpu, Pod, Zeroable};
    ///
    /// #[derive(Clone, Copy)]
    /// #[repr(C)]
    /// struct Totals {
    ///     hits: u64,
    ///     bytes: u64,
    /// }
    /// // SAFETY: two u64s, no padding: any bytes are a valid `Totals`.
    /// unsafe impl Zeroable for Totals {}
    /// // SAFETY: as above; `Totals` is `Copy + 'static`.
    /// unsafe impl Pod for Totals {}
    ///
    /// let t = PerCpu::new(|_| Totals { hits: 0, bytes: 0 });
    /// let ops = [
    ///     SlotOp::Add { at: 0, size: 8, count: 1 },
    ///     SlotOp::Add { at: 8, size: 8, count: 512 },
    /// ];
    /// t.run_ops(0, &ops)?;
    /// assert_eq!(t.lock_on(0)?.bytes, 512);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Not async-signal-safe: like [`lock`](Self::lock), it may wait for
    /// another thread that holds the slot.
    ///
    /// # Errors
    ///
    /// Refusals, nothing written (the first one found, in this order):
    /// [`OpError::TooManyOps`]; [`OpError::CpuOutOfRange`] if `cpu >=
    /// self.cpus()`; then, operation by operation, [`OpError::TooLong`],
    /// [`OpError::BadSize`], [`OpError::ShiftTooWide`],
    /// [`OpError::OutOfBounds`]; last [`OpError::HeldByThisThread`] if this
    /// thread holds the slot already (a [`SlotGuard`](crate::SlotGuard), or a
    /// signal handler interrupting its own thread's lock).
    ///
    /// [`OpError::CompareFailed`] if a compare failed: the operations before
    /// it ran, none after it.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::opv::{OpError, SlotOp};
    /// use cpulocal::PerCpu;
    ///
    /// // Per CPU: [sequence, sum].
    /// let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [0, 0]);
    /// let zero = 0u64.to_ne_bytes();
    /// let ops = [
    ///     SlotOp::CompareEq { at: 0, expect: &zero },
    ///     SlotOp::Add { at: 8, size: 8, count: 40 },
    ///     SlotOp::Add { at: 0, size: 8, count: 1 },
    /// ];
    /// slots.run_ops(0, &ops)?;
    /// // The sequence is 1 now: the compare stops the vector.
    /// assert_eq!(slots.run_ops(0, &ops), Err(OpError::CompareFailed { op: 0 }));
    ///
    /// // An 8-byte add at offset 12 would reach past the 16-byte value.
    /// let past = [SlotOp::Add { at: 12, size: 8, count: 1 }];
    /// assert_eq!(
    ///     slots.run_ops(0, &past),
    ///     Err(OpError::OutOfBounds { op: 0, at: 12, end: 20, slot_size: 16 })
    /// );
    /// // A held slot is refused rather than deadlocking.
    /// let guard = slots.lock_on(0).unwrap();
    /// assert_eq!(slots.run_ops(0, &ops), Err(OpError::HeldByThisThread { cpu: 0 }));
    /// assert_eq!(*guard, [1, 40]);
    /// # Ok::<(), OpError>(())
    /// ```
    pub fn run_ops(&self, cpu: usize, ops: &[SlotOp<'_>]) -> Result<(), OpError> {
        check_count(ops.len())?;
        let slot = self.slots().get(cpu).ok_or(OpError::CpuOutOfRange {
            cpu,
            slots: self.cpus(),
        })?;
        let slot_size = core::mem::size_of::<T>();
        let base = slot.data.get().cast::<u8>();
        let mut raw = [Op::Mb; MAX_OPS];
        for (r, op) in raw.iter_mut().zip(ops) {
            *r = op.translate(base);
        }
        let raw = &raw[..ops.len()];
        validate(raw, |i, _| ops[i].check_bounds(i, slot_size))?;

        // Signals first, as `with_signals_blocked` does: a handler then never
        // runs while this thread holds the fence.
        let _blocked = SignalsBlocked::new();
        let _held = slot
            .fence
            .hold(cpu)
            .map_err(|_| OpError::HeldByThisThread { cpu })?;
        // No membarrier: critical sections run only on the slots of this
        // crate's own structures (such as a counter's `PerCpu<AtomicI64>`,
        // neither `Pod` nor reachable by users), never on a `PerCpu<T: Pod>`
        // of the caller's; so the fence alone excludes every other access to
        // the value, as for `lock`.
        //
        // SAFETY: `validate` accepted the vector, so every slot range lies
        // within the value (`check_bounds`), where `translate` pointed it;
        // the other operands are the caller's slices, valid for their length
        // and disjoint from the value, which no reference can reach while the
        // fence is held (or `&mut self` is borrowed). The fence is ours, so
        // the value's bytes are ours alone, and `T: Pod` makes them
        // initialised before and a valid `T` after.
        unsafe { execute(raw) }
    }
}
