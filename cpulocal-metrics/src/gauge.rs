//! Gauges: an absolute base plus per-CPU deltas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use cpulocal::{Index, PerCpuCounter};

/// 2^53: every integer of at most this magnitude is an exact `f64`.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// A gauge's storage.
///
/// The value is `base.value + (Σ deltas − base.offset) + fraction`:
///
/// - `deltas`, a [`PerCpuCounter`], takes every increment or decrement by a
///   whole number of magnitude at most 2^53 (the usual `+1`/`-1` of an
///   in-flight count): one per-CPU add, no lock, no atomic instruction. The
///   net delta is summed in integers, so it is exact.
/// - `fraction`, one shared `f64` (in an `AtomicU64`, added to by a
///   compare-exchange loop), takes any other increment: non-integers, huge
///   values, infinities and NaN. This is the one shared word of the gauge,
///   and only such increments touch it.
/// - `base`, under a lock that only `set` and reads take, is the last value
///   set and the deltas' sum at that set.
///
/// `set(v)` takes the lock, reads the deltas' sum into `base.offset` (one
/// relaxed load per slot, no fence, no membarrier: the deltas are never
/// reset), swaps `fraction` to zero, and stores `v`. So with no increment
/// after it, the gauge reads back exactly `v`.
///
/// What is guaranteed with increments concurrent with a `set`:
///
/// - an increment that completed before `set` began is replaced by it;
/// - an increment that begins after `set` returned is added to `v`;
/// - an increment that overlaps the `set` is either replaced or kept,
///   exactly once: never lost halfway, never counted twice (each slot is
///   read once; an add to a slot lands before that read, and is cancelled
///   by the offset, or after it, and counts). Overlapping increments on
///   different CPUs may fall on different sides of the `set`, so the
///   result need not match any one order of the operations;
/// - concurrent `set`s take effect one at a time, in the order they take
///   the lock;
/// - a read never sees a `set` halfway (it takes the same lock); concurrent
///   increments may or may not be in it, as for a counter. A read sums the
///   slots one after another, not at one instant: with increments and
///   decrements in flight on several CPUs it may show a value the gauge
///   did not hold at any one instant (an in-flight count that a thread
///   raised on one CPU and lowered on another can read `-1` for a moment).
pub(crate) struct GaugeCell {
    deltas: PerCpuCounter,
    fraction: AtomicU64,
    base: Mutex<Base>,
}

/// The last `set`: its value, and the deltas' sum when it ran.
#[derive(Debug, Clone, Copy)]
struct Base {
    value: f64,
    offset: i64,
}

impl GaugeCell {
    pub(crate) fn new(by: Index) -> Self {
        GaugeCell {
            deltas: PerCpuCounter::with_index(by),
            fraction: AtomicU64::new(0.0f64.to_bits()),
            base: Mutex::new(Base {
                value: 0.0,
                offset: 0,
            }),
        }
    }

    /// Adds `v` (negative to decrement).
    #[inline]
    pub(crate) fn add(&self, v: f64) {
        match whole(v) {
            Some(n) => self.deltas.add(n),
            None => self.add_fraction(v),
        }
    }

    /// Adds `v` to the shared fraction word.
    #[cold]
    fn add_fraction(&self, v: f64) {
        let _ = self
            .fraction
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some((f64::from_bits(old) + v).to_bits())
            });
    }

    /// Sets the gauge to `v` (see the type's docs for what concurrent
    /// increments see).
    pub(crate) fn set(&self, v: f64) {
        let mut base = self.base.lock().unwrap_or_else(PoisonError::into_inner);
        let offset = self.deltas.sum();
        self.fraction.swap(0.0f64.to_bits(), Ordering::Relaxed);
        *base = Base { value: v, offset };
    }

    /// The value.
    pub(crate) fn get(&self) -> f64 {
        let base = self.base.lock().unwrap_or_else(PoisonError::into_inner);
        let net = self.deltas.sum().wrapping_sub(base.offset);
        let fraction = f64::from_bits(self.fraction.load(Ordering::Relaxed));
        let mut value = base.value;
        drop(base);
        // Terms that are exactly zero are skipped, so a gauge set to -0.0
        // reads -0.0 and one set to v reads v bit for bit.
        if net != 0 {
            value += net as f64;
        }
        if fraction != 0.0 {
            value += fraction;
        }
        value
    }
}

/// `v` as an `i64` if it is a whole number of magnitude at most 2^53
/// (so the conversion is exact both ways).
#[inline]
fn whole(v: f64) -> Option<i64> {
    if v.abs() <= EXACT {
        let n = v as i64;
        if n as f64 == v {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_take_the_per_cpu_path() {
        assert_eq!(whole(1.0), Some(1));
        assert_eq!(whole(-3.0), Some(-3));
        assert_eq!(whole(-0.0), Some(0));
        assert_eq!(whole(EXACT), Some(1 << 53));
        assert_eq!(whole(0.5), None);
        assert_eq!(whole(EXACT * 2.0), None);
        assert_eq!(whole(f64::INFINITY), None);
        assert_eq!(whole(f64::NAN), None);
        assert_eq!(whole(9.3e18), None);
    }

    #[test]
    fn set_replaces_deltas_and_fraction() {
        let g = GaugeCell::new(Index::Cpu);
        g.add(5.0);
        g.add(0.5);
        assert_eq!(g.get(), 5.5);
        g.set(0.1);
        assert_eq!(g.get(), 0.1);
        g.add(-2.0);
        assert_eq!(g.get(), 0.1 - 2.0);
        g.add(f64::NAN);
        assert!(g.get().is_nan());
        g.set(-0.0);
        assert!(g.get() == 0.0 && g.get().is_sign_negative());
    }
}
