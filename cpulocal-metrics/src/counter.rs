//! Counters: one [`PerCpuCounter`] each.

use std::sync::{Mutex, PoisonError};

use cpulocal::{Index, PerCpuCounter};

/// A counter's storage: a [`PerCpuCounter`], whose `add` is one critical
/// section on the current CPU's slot (no lock, no atomic instruction), and
/// a lock that only [`absolute`](Self::absolute) takes.
///
/// The value is the slots' wrapping sum read as a `u64`, so it wraps at
/// 2^64 as the exporter's `AtomicU64` does.
pub(crate) struct CounterCell {
    value: PerCpuCounter,
    absolute: Mutex<()>,
}

impl CounterCell {
    pub(crate) fn new(by: Index) -> Self {
        CounterCell {
            value: PerCpuCounter::with_index(by),
            absolute: Mutex::new(()),
        }
    }

    /// Adds `v`: one per-CPU add (`v as i64` wraps, and so does the sum, so
    /// the `u64` total is exact modulo 2^64).
    #[inline]
    pub(crate) fn increment(&self, v: u64) {
        self.value.add(v as i64);
    }

    /// Raises the counter to at least `v`: under the absolute lock (so two
    /// concurrent calls cannot both add the same gap), reads the sum and
    /// adds the difference if it is below `v`. Increments that run
    /// meanwhile are kept, so the result is at least `v`.
    pub(crate) fn absolute(&self, v: u64) {
        let _serial = self.absolute.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.get();
        if v > now {
            self.value.add(v.wrapping_sub(now) as i64);
        }
    }

    /// The total: the slots' sum (concurrent increments may or may not be in
    /// it).
    pub(crate) fn get(&self) -> u64 {
        self.value.sum() as u64
    }
}
