//! [`PerCpuCounter`]: the seed's `percpu_addv`.
//!
//! # Safety
//!
//! The counter's slots are `PerCpu<AtomicI64>` that are never locked: values
//! are written by the `add` critical section on their CPU, or by atomic
//! read-modify-writes under the slot's fence, and read by atomic loads.
#![allow(unsafe_code)]

use core::fmt;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::arch::{self, Outcome};
use crate::fence;
use crate::percpu::{CounterSlot, PerCpu};
use crate::{engine, testing, RSEQ_ATTEMPTS};

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
    /// Out of line, so that the counter holds no interior mutability of its
    /// own and callers' loops keep the slot array's address in a register.
    stats: Box<CachePadded<Stats>>,
}

#[derive(Default)]
struct Stats {
    retried: AtomicU64,
    aborts: AtomicU64,
    fenced: AtomicU64,
}

/// How many operations left the fast path, for [`PerCpuCounter::stats`].
///
/// Only slow-path events are counted, so the fast path stays a single critical
/// section: operations that committed at the first attempt are
/// `total - retried - fenced`, where the caller knows the total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathStats {
    /// Operations that committed on the fast path after one or more aborts.
    pub retried: u64,
    /// Aborted critical-section attempts, in all.
    pub aborts: u64,
    /// Operations that completed on the fenced path.
    pub fenced: u64,
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
        PerCpuCounter {
            slots: PerCpu::new(|_| AtomicI64::new(0)),
            stats: Default::default(),
        }
    }

    /// The number of per-CPU slots ([`possible_cpus()`](crate::possible_cpus)).
    pub fn cpus(&self) -> usize {
        self.slots.len()
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
        let cpu = engine::cpu_id(area);
        // No slot for `cpu` means -1 (thread not set up) or -2 (no rseq).
        let first = self.slots.slot(cpu as usize).map(|slot| {
            // SAFETY: `area` is this thread's live area and `cpu` its CPU
            // number; `slot` is this counter's.
            unsafe { Self::section(slot, area, cpu, n) }
        });
        self.unless_committed(first, None, n);
    }

    /// Adds `n` to the slot of `cpu`, from any CPU: the seed's
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
        let here = engine::cpu_id(area);
        let first = if here as usize == cpu {
            // SAFETY: as in `add`.
            Some(unsafe { Self::section(slot, area, here, n) })
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
    /// slot's CPU (used only by the `testing` build's broken section).
    #[inline(always)]
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    unsafe fn section(
        slot: &CounterSlot,
        area: *mut crate::abi::Rseq,
        cpu: u32,
        n: i64,
    ) -> Outcome {
        if testing::skip_fence_check() {
            #[cfg(feature = "testing")]
            // SAFETY: as below.
            return unsafe { arch::add_without_fence_check(area, cpu, slot, n) };
        }
        // SAFETY: the counter never locks its slots, so the value is only
        // reached through atomics and sections; `area` is live (caller).
        unsafe { arch::add(area, slot, n) }
    }

    /// Finishes an operation whose inline attempt ended with `first` (None: no
    /// section ran) through the slow path, unless it committed.
    #[inline(always)]
    fn unless_committed(&self, first: Option<Outcome>, target: Option<usize>, n: i64) {
        match first {
            Some(Outcome::Committed) => {}
            Some(Outcome::Aborted) => self.after_abort(target, n),
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
            let cpu = engine::cpu_id(area);
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
            match unsafe { Self::section(slot, area, cpu, n) } {
                Outcome::Committed => {
                    if aborts > 0 {
                        self.stats.retried.fetch_add(1, Ordering::Relaxed);
                        self.stats.aborts.fetch_add(aborts, Ordering::Relaxed);
                    }
                    return;
                }
                Outcome::Fenced => fenced = true,
                Outcome::Aborted => aborts += 1,
            }
        }
        if aborts > 0 {
            self.stats.aborts.fetch_add(aborts, Ordering::Relaxed);
        }
        self.stats.fenced.fetch_add(1, Ordering::Relaxed);
        let cpu = target.unwrap_or_else(|| engine::current_cpu() % self.cpus());
        let (slot, value) = self.slot(cpu);
        fence::with_signals_blocked(&slot.fence, cpu, || value.fetch_add(n, Ordering::Relaxed));
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
                fence::with_signals_blocked(&slot.fence, cpu, || value.swap(0, Ordering::Relaxed))
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
        PathStats {
            retried: self.stats.retried.load(Ordering::Relaxed),
            aborts: self.stats.aborts.load(Ordering::Relaxed),
            fenced: self.stats.fenced.load(Ordering::Relaxed),
        }
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
