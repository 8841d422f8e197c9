//! [`PerCpuCounter`]: a counter with one slot per CPU, added to by the add
//! shape.
//!
//! # Safety
//!
//! The counter's slots hold an `AtomicI64` each, written by the add shape
//! only (a critical section on the slot's CPU, or the shape under the slot's
//! fence after the membarrier) and by `take`'s swap under the fence; they are
//! read by atomic loads.
#![allow(unsafe_code)]

use core::fmt;
use core::sync::atomic::{AtomicI64, Ordering};

use crate::shape::driver::{At, Follow, Slots};
use crate::stats::PathStats;
use crate::Error;
use crate::Index;

/// A counter split into one cache line per CPU: adding is a restartable
/// sequence on the current CPU's slot (about as cheap as a non-atomic add),
/// reading sums the slots.
///
/// Every operation completes without the caller retrying: a section that the
/// kernel aborts [`RSEQ_ATTEMPTS`](crate::RSEQ_ATTEMPTS) times in a row (a debugger single-stepping,
/// a preemption storm), a slot that another thread has fenced, a CPU other than
/// the current one, or a thread without rseq all take the fenced path.
///
/// Values wrap on overflow (two's complement), like `i64::wrapping_add`.
///
/// # Examples
///
/// ```
/// use cpulocal::PerCpuCounter;
/// use std::sync::Arc;
///
/// let hits = Arc::new(PerCpuCounter::new());
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let hits = hits.clone();
///         std::thread::spawn(move || (0..1000).for_each(|_| hits.add(1)))
///     })
///     .collect();
/// workers.into_iter().for_each(|w| w.join().unwrap());
/// assert_eq!(hits.sum(), 4000);
/// ```
pub struct PerCpuCounter {
    slots: Slots<AtomicI64>,
}

impl PerCpuCounter {
    /// A counter at zero with one slot per possible CPU.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// assert_eq!(c.sum(), 0);
    /// ```
    pub fn new() -> Self {
        Self::with_index(Index::Cpu)
    }

    /// A counter at zero whose slots are numbered `by` CPU or concurrency id
    /// (see [`Index`] for what `MmCid` gives where the kernel lacks it).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuCounter};
    ///
    /// let c = PerCpuCounter::with_index(Index::MmCid);
    /// c.add(2);
    /// assert_eq!(c.sum(), 2);
    /// assert!(c.cpus() <= cpulocal::possible_cpus());
    /// ```
    pub fn with_index(by: Index) -> Self {
        PerCpuCounter {
            // Every write to a value is the add shape or `take`'s swap: on
            // node slots the add may be a fetch-and-add.
            slots: Slots::new(by, |_| AtomicI64::new(0)).node_atomics(),
        }
    }

    /// The number of slots: [`possible_cpus()`](crate::possible_cpus) for
    /// [`Index::Cpu`], fewer for [`Index::MmCid`],
    /// [`possible_nodes()`](crate::possible_nodes) for [`Index::Node`].
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How the slots are numbered.
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// Adds `n` to the slot of the CPU the caller runs on.
    ///
    /// Async-signal-safe: it may be called from a signal handler, including one
    /// that interrupted an `add` of the same thread, without deadlock or loss.
    /// (A critical section interrupted by a signal is aborted and redone; the
    /// fenced path blocks signals while it holds a fence, so a handler never
    /// waits for its own thread.) One caveat: where cpulocal registers rseq
    /// itself (glibc did not), a thread's *first* operation installs a
    /// thread-exit destructor, which may allocate; call
    /// [`current_cpu()`](crate::current_cpu) once in such threads before
    /// their handlers may run.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add(5);
    /// c.add(-2);
    /// assert_eq!(c.sum(), 3);
    /// ```
    #[inline]
    pub fn add(&self, n: i64) {
        self.add_at(self.slots.here(), Follow::Thread, n);
    }

    /// Adds `n` to the slot of `cpu` (a concurrency id for [`Index::MmCid`],
    /// a node for [`Index::Node`], where the add is one atomic instruction),
    /// from any CPU: a critical section when the caller runs on `cpu`,
    /// otherwise the fenced path on that CPU's slot (ordinary code under the
    /// slot's fence word, which first stops any critical section running on
    /// it). The caller never retries.
    ///
    /// Async-signal-safe, as [`add`](Self::add).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`; nothing is added.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add_on(0, 10)?;
    /// assert_eq!(c.per_cpu()[0], 10);
    /// assert!(c.add_on(c.cpus(), 1).is_err());
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    #[inline]
    pub fn add_on(&self, cpu: usize, n: i64) -> Result<(), Error> {
        self.add_at(self.slots.on(cpu)?, Follow::Slot, n);
        Ok(())
    }

    /// The add shape on slot `at`; after a migration, on the thread's new
    /// slot if `follow` says so (a plain `add`).
    #[inline(always)]
    #[cfg(target_pointer_width = "64")]
    fn add_at(&self, at: At<'_, AtomicI64>, follow: Follow, n: i64) {
        use crate::shape::driver::Slot;
        use crate::shape::Order;
        use crate::shape::Shape;
        let shape = move |slot: &Slot<AtomicI64>| Shape::AddStore {
            vo: Shape::offset(&slot.fence, slot.data.as_ptr().cast()),
            count: n as usize,
        };
        // SAFETY: the shape names slot `at`'s value, written only by the add
        // shape and by `take` under the fence (module docs). An add cannot
        // fail a compare.
        let _ = unsafe { self.slots.perform(at, Order::Relaxed, follow, shape) };
    }

    /// Where a word is 32 bits the add shape cannot add an i64: the add runs
    /// under the slot's fence, as `take` does. These targets have no critical
    /// sections, so every add took the fenced path anyway. A node slot, on
    /// which every write is atomic, takes the add as one atomic instruction,
    /// as on 64-bit targets.
    #[cfg(not(target_pointer_width = "64"))]
    fn add_at(&self, at: At<'_, AtomicI64>, _follow: Follow, n: i64) {
        if self.slots.index() == Index::Node {
            at.slot.data.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.slots.fenced_counted(at.index, |value| {
            value.fetch_add(n, Ordering::Relaxed);
        });
    }

    /// The sum of all slots (wrapping). Concurrent adds may or may not be
    /// included; each slot is read atomically.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add_on(0, 1)?;
    /// c.add(2);
    /// assert_eq!(c.sum(), 3);
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    pub fn sum(&self) -> i64 {
        self.per_cpu().into_iter().fold(0i64, i64::wrapping_add)
    }

    /// A snapshot of every slot, in CPU order.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add(3);
    /// assert_eq!(c.per_cpu().iter().sum::<i64>(), 3);
    /// assert_eq!(c.per_cpu().len(), c.cpus());
    /// ```
    pub fn per_cpu(&self) -> Vec<i64> {
        self.slots
            .iter()
            .map(|slot| slot.data.load(Ordering::Relaxed))
            .collect()
    }

    /// Resets every slot to zero and returns what they held (wrapping sum).
    ///
    /// No concurrent add is lost: each slot is swapped to zero under its fence,
    /// so every add lands either before the swap (and is returned) or after it
    /// (and stays in the counter).
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add(7);
    /// assert_eq!(c.take(), 7);
    /// assert_eq!(c.sum(), 0);
    /// ```
    pub fn take(&self) -> i64 {
        (0..self.cpus())
            .map(|cpu| {
                self.slots
                    .fenced(cpu, |value| value.swap(0, Ordering::Relaxed))
            })
            .fold(0i64, i64::wrapping_add)
    }

    /// How many operations left the fast path so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// // A CPU the thread does not run on, or a thread without rseq, is fenced.
    /// let other = (cpulocal::current_cpu() + 1) % c.cpus();
    /// c.add_on(other, 1)?;
    /// assert!(c.cpus() == 1 || c.stats().fenced >= 1);
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }
}

impl Default for PerCpuCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PerCpuCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuCounter")
            .field("sum", &self.sum())
            .field("stats", &self.stats())
            .finish()
    }
}
