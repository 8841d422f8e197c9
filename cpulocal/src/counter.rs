//! [`PerCpuCounter`]: the seed's `percpu_addv`.
//!
//! # Safety
//!
//! The counter's slots are `PerCpu<AtomicI64>` that are never locked: values
//! are written by the `add` critical section on their CPU, or by atomic
//! read-modify-writes under the slot's fence, and read by atomic loads.
#![allow(unsafe_code)]

use core::fmt;
use core::sync::atomic::{AtomicI64, Ordering};

use crossbeam_utils::CachePadded;

use crate::arch::{self, Outcome};
use crate::fence;
use crate::percpu::{CounterSlot, PerCpu};
use crate::stats::{PathStats, Stats};
use crate::{engine, testing, Index, RSEQ_ATTEMPTS};

/// A counter split into one cache line per CPU: adding is a restartable
/// sequence on the current CPU's slot (about as cheap as a non-atomic add),
/// reading sums the slots.
///
/// Every operation completes without the caller retrying: a section that the
/// kernel aborts [`RSEQ_ATTEMPTS`] times in a row (a debugger single-stepping,
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
    slots: PerCpu<AtomicI64>,
    /// Offset of the slot numbering's field (`cpu_id` or `mm_cid`) in the
    /// rseq area.
    offset: usize,
    /// Out of line, so that the counter holds no interior mutability of its
    /// own and callers' loops keep the slot array's address in a register.
    stats: Box<CachePadded<Stats>>,
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
        let slots = PerCpu::with_index(by, |_| AtomicI64::new(0));
        PerCpuCounter {
            offset: slots.index().field_offset(),
            slots,
            stats: Default::default(),
        }
    }

    /// The number of slots: [`possible_cpus()`](crate::possible_cpus) for
    /// [`Index::Cpu`], fewer for [`Index::MmCid`].
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
        let area = engine::area();
        let cpu = engine::index_in(area, self.offset);
        // No slot for `cpu` means -1 (thread not set up) or -2 (no rseq), or
        // an mm_cid beyond the slots (affinity widened since construction).
        let first = self.slots.slot(cpu as usize).map(|slot| {
            // SAFETY: `area` is this thread's live area and `cpu` its index;
            // `slot` is this counter's.
            unsafe { self.section(slot, area, cpu, n) }
        });
        self.unless_committed(first, None, n);
    }

    /// Adds `n` to the slot of `cpu` (a concurrency id for [`Index::MmCid`]),
    /// from any CPU: the seed's
    /// `percpu_addv(v, count, cpu)`. A critical section when the caller runs on
    /// `cpu`, otherwise the fenced path on that CPU's slot. The caller never
    /// retries.
    ///
    /// Async-signal-safe, as [`add`](Self::add).
    ///
    /// # Panics
    ///
    /// If `cpu >= self.cpus()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add_on(0, 10);
    /// assert_eq!(c.per_cpu()[0], 10);
    /// ```
    #[inline]
    #[track_caller]
    pub fn add_on(&self, cpu: usize, n: i64) {
        let Some(slot) = self.slots.slot(cpu) else {
            panic!(
                "PerCpuCounter::add_on: CPU {cpu} is out of range (slots for CPUs 0..{})",
                self.cpus()
            )
        };
        let area = engine::area();
        let here = engine::index_in(area, self.offset);
        let first = if here as usize == cpu {
            // SAFETY: as in `add`.
            Some(unsafe { self.section(slot, area, here, n) })
        } else {
            None
        };
        self.unless_committed(first, Some(cpu), n);
    }

    /// One critical-section attempt on `slot`.
    ///
    /// # Safety
    ///
    /// `area` is the calling thread's area from `engine::area()` and `cpu` the
    /// slot's index (used only by the `testing` build's broken section).
    #[inline(always)]
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    unsafe fn section(
        &self,
        slot: &CounterSlot,
        area: *mut crate::abi::Rseq,
        cpu: u32,
        n: i64,
    ) -> Outcome {
        if testing::skip_fence_check() {
            #[cfg(feature = "testing")]
            // SAFETY: as below.
            return unsafe { arch::add_without_fence_check(area, self.offset, cpu, slot, n) };
        }
        // SAFETY: the counter never locks its slots, so the value is only
        // reached through atomics and sections; `area` is live (caller).
        unsafe { arch::add(area, self.offset, slot, n) }
    }

    /// Finishes an operation whose inline attempt ended with `first` (None: no
    /// section ran) through the slow path, unless it committed.
    #[inline(always)]
    fn unless_committed(&self, first: Option<Outcome>, target: Option<usize>, n: i64) {
        match first {
            Some(Outcome::Committed) => {}
            Some(Outcome::Aborted | Outcome::CompareFailed) => self.after_abort(target, n),
            Some(Outcome::Fenced) => self.after_fenced(target, n),
            None => self.without_section(target, n),
        }
    }

    // One cold entry per way the inline attempt can fail, so the fast path
    // sets up no arguments for them.
    #[cold]
    #[inline(never)]
    fn after_abort(&self, target: Option<usize>, n: i64) {
        self.add_slow(target, n, Some(Outcome::Aborted));
    }

    #[cold]
    #[inline(never)]
    fn after_fenced(&self, target: Option<usize>, n: i64) {
        self.add_slow(target, n, Some(Outcome::Fenced));
    }

    #[cold]
    #[inline(never)]
    fn without_section(&self, target: Option<usize>, n: i64) {
        self.add_slow(target, n, None);
    }

    /// The slot of `cpu` (in range) and its value.
    fn slot(&self, cpu: usize) -> (&CounterSlot, &AtomicI64) {
        let slot = self.slots.slot(cpu).expect("CPU below the slot count");
        // SAFETY: the counter never locks its slots (module invariant).
        (slot, unsafe { slot.shared() })
    }

    /// Retries a bounded number of times, then takes the fenced path. `first`
    /// is the outcome of the inline attempt, None if no section ran.
    #[inline(always)]
    fn add_slow(&self, target: Option<usize>, n: i64, first: Option<Outcome>) {
        let mut aborts = u64::from(first == Some(Outcome::Aborted));
        let mut fenced = first == Some(Outcome::Fenced);
        while !fenced && aborts < u64::from(RSEQ_ATTEMPTS) {
            let area = engine::area();
            let cpu = engine::index_in(area, self.offset);
            let Some(slot) = self.slots.slot(cpu as usize) else {
                if engine::ensure_thread() {
                    continue; // first operation of this thread: sections now run
                }
                break; // no rseq on this thread
            };
            if target.is_some_and(|t| t != cpu as usize) {
                break; // a remote CPU: only the fenced path reaches it
            }
            // SAFETY: as in `add`.
            match unsafe { self.section(slot, area, cpu, n) } {
                Outcome::Committed => {
                    self.stats.retried(aborts);
                    return;
                }
                Outcome::Fenced => fenced = true,
                Outcome::Aborted | Outcome::CompareFailed => aborts += 1,
            }
        }
        self.stats.fenced(aborts);
        let cpu = target.unwrap_or_else(|| self.index().current(self.cpus()));
        let (slot, value) = self.slot(cpu);
        fence::with_signals_blocked(&slot.fence, cpu, self.index(), || {
            value.fetch_add(n, Ordering::Relaxed)
        });
    }

    /// The sum of all slots (wrapping). Concurrent adds may or may not be
    /// included; each slot is read atomically.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::PerCpuCounter::new();
    /// c.add_on(0, 1);
    /// c.add(2);
    /// assert_eq!(c.sum(), 3);
    /// ```
    pub fn sum(&self) -> i64 {
        self.per_cpu().into_iter().fold(0i64, i64::wrapping_add)
    }

    /// A snapshot of every slot, in CPU order.
    pub fn per_cpu(&self) -> Vec<i64> {
        (0..self.cpus())
            .map(|cpu| self.slot(cpu).1.load(Ordering::Relaxed))
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
                let (slot, value) = self.slot(cpu);
                fence::with_signals_blocked(&slot.fence, cpu, self.index(), || {
                    value.swap(0, Ordering::Relaxed)
                })
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
    /// c.add_on(other, 1);
    /// assert!(c.cpus() == 1 || c.stats().fenced >= 1);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.stats.snapshot()
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
