//! Histograms: per-CPU bucket rows on the recorder's [`Domain`], updated by
//! the add shape.
//!
//! # Safety
//!
//! The rows are this module's memory, used with one domain only (the
//! recorder's, which every histogram of that recorder shares; each
//! histogram's rows are a separate allocation). Slot `cpu`'s row is written
//! only by that domain's operations on slot `cpu` ([`HistogramCell::record_n`]
//! and [`HistogramCell::add_sum`]) and read elsewhere with atomic loads
//! only, as [`Domain`]'s contract asks. The rows outlive every operation on
//! them: operations run through `&self`, and the cell is dropped only when
//! its last handle is.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cpulocal::{Domain, Order};

/// Words per 128-byte line.
const LINE_WORDS: usize = 16;

/// One 128-byte line of words: each CPU's row starts on one, so no two CPUs'
/// rows share a cache line (or an adjacent-line prefetch pair).
#[repr(C, align(128))]
struct Line([AtomicUsize; LINE_WORDS]);

/// A histogram's storage: for each slot of the recorder's [`Domain`], one
/// row of words, `bounds.len() + 1` bucket counts (the last one is the
/// `+Inf` bucket, for samples above every bound and NaN) and then the sum of
/// the samples as `f64` bits, padded to whole cache lines.
///
/// Recording a sample is two critical sections on the current CPU's row,
/// no lock and no atomic instruction: the add shape
/// ([`Domain::add_store`]) adds 1 to the sample's bucket, and a
/// compare-and-store ([`Domain::cbne_store`]) adds the sample to the row's
/// sum (the sum is a float, which the integer add shape cannot add; the
/// compare fails only if another thread recorded on the same CPU in
/// between, and then it is tried again). Counts are kept per bucket, not
/// cumulatively, so one add suffices; rendering sums the rows and makes the
/// `le` counts cumulative. `_count` is the sum of all buckets, so it always
/// equals the `+Inf` bucket; `_sum` may lag or lead the counts by the
/// samples being recorded during the render.
///
/// # Why one `Domain` over a bucket array, not a `PerCpuCounter` per bucket
///
/// A [`PerCpuCounter`](cpulocal::PerCpuCounter) is one 128-byte slot per
/// possible CPU, fence word included: with the 11 default buckets, the
/// `+Inf` bucket and the sum that is 13 counters, 1664 bytes per CPU per
/// histogram, and a render reads 13 cache lines per CPU. A `Domain` keeps
/// one fence per CPU for any amount of data, and the recorder shares one
/// among all its histograms: each histogram costs only its rows, 13 words
/// in one 128-byte line per CPU with the default buckets, and a render
/// reads that one line per CPU. The add is the same critical section
/// either way (a per-CPU counter's `add` is this very add shape). The cost
/// is `unsafe` code at the raw-pointer level, confined to this module.
pub(crate) struct HistogramCell {
    domain: Arc<Domain>,
    bounds: Arc<[f64]>,
    rows: Box<[Line]>,
    /// Words per row: a whole number of lines.
    stride: usize,
}

impl HistogramCell {
    /// Zeroed rows for `bounds`, one per slot of `domain`.
    pub(crate) fn new(domain: Arc<Domain>, bounds: Arc<[f64]>) -> Self {
        let stride = (bounds.len() + 2).div_ceil(LINE_WORDS) * LINE_WORDS;
        let lines = domain.cpus() * stride / LINE_WORDS;
        let rows = (0..lines)
            .map(|_| Line([const { AtomicUsize::new(0) }; LINE_WORDS]))
            .collect();
        HistogramCell {
            domain,
            bounds,
            rows,
            stride,
        }
    }

    /// The bucket bounds.
    pub(crate) fn bounds(&self) -> &Arc<[f64]> {
        &self.bounds
    }

    /// Word `j` of slot `cpu`'s row.
    #[inline(always)]
    fn word(&self, cpu: usize, j: usize) -> &AtomicUsize {
        let w = cpu * self.stride + j;
        &self.rows[w / LINE_WORDS].0[w % LINE_WORDS]
    }

    /// Records `n` samples of value `x`.
    #[inline]
    pub(crate) fn record_n(&self, x: f64, n: usize) {
        if n == 0 {
            return;
        }
        // The first bound `x` is at most; none (or NaN): the +Inf bucket.
        let bucket = self.bounds.partition_point(|b| *b < x || x.is_nan());
        let cpu = self.domain.current();
        let count = self.word(cpu, bucket);
        // SAFETY: `count` is a live, aligned word of slot `cpu`'s row, which
        // only this domain's operations on slot `cpu` write (module docs);
        // `cpu` is below `domain.cpus()`, as `current()` returns. `n as
        // isize` may wrap, and so does the add: the count stays exact
        // modulo 2^64.
        unsafe {
            self.domain
                .add_store(cpu, count.as_ptr(), n as isize, Order::Relaxed)
        };
        let add = if n == 1 { x } else { x * n as f64 };
        self.add_sum(cpu, add);
    }

    /// Adds `x` to the sum of the row of `cpu` (the current CPU's, unless the
    /// thread has moved), as a compare-and-store on its bits.
    #[inline]
    fn add_sum(&self, mut cpu: usize, x: f64) {
        let sum_word = self.bounds.len() + 1;
        loop {
            let sum = self.word(cpu, sum_word);
            let old = sum.load(Ordering::Relaxed);
            let new = (f64::from_bits(old as u64) + x).to_bits() as usize;
            if new == old {
                return;
            }
            // SAFETY: as for the bucket word in `record_n`: `sum` is slot
            // `cpu`'s row's sum word, and `cpu` is in range.
            match unsafe {
                self.domain
                    .cbne_store(cpu, sum.as_ptr(), old, new, Order::Relaxed)
            } {
                Ok(()) => return,
                // Another sample landed on this row in between: read again,
                // on the CPU the thread runs on now.
                Err(cpulocal::CompareFailed) => cpu = self.domain.current(),
            }
        }
    }

    /// Every slot's bucket counts added up (per bucket, not cumulative;
    /// the last is `+Inf`) and the sum of the samples.
    pub(crate) fn snapshot(&self) -> (Vec<u64>, f64) {
        let buckets = self.bounds.len() + 1;
        let mut counts = vec![0u64; buckets];
        let mut sum = 0.0f64;
        for cpu in 0..self.domain.cpus() {
            for (j, c) in counts.iter_mut().enumerate() {
                *c = c.wrapping_add(self.word(cpu, j).load(Ordering::Relaxed) as u64);
            }
            let s = f64::from_bits(self.word(cpu, buckets).load(Ordering::Relaxed) as u64);
            if s != 0.0 {
                sum += s;
            }
        }
        (counts, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(bounds: &[f64]) -> HistogramCell {
        HistogramCell::new(Arc::new(Domain::new(cpulocal::Index::Cpu)), bounds.into())
    }

    #[test]
    fn samples_land_in_their_bucket() {
        let h = cell(&[1.0, 2.0, 4.0]);
        for x in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 100.0, f64::NEG_INFINITY] {
            h.record_n(x, 1);
        }
        h.record_n(f64::NAN, 1);
        let (counts, sum) = h.snapshot();
        // <=1: 0.5, 1, -inf; <=2: 1.5, 2; <=4: 3, 4; +Inf: 100, NaN.
        assert_eq!(counts, vec![3, 2, 2, 2]);
        assert!(sum.is_nan());
    }

    #[test]
    fn record_many_and_rows_on_other_lines() {
        // 20 bounds: a row of 22 words spans two lines.
        let bounds: Vec<f64> = (1..=20).map(f64::from).collect();
        let h = cell(&bounds);
        assert_eq!(h.stride, 32);
        h.record_n(20.0, 3);
        h.record_n(21.0, 2);
        h.record_n(f64::INFINITY, 0); // nothing, not even a NaN sum
        let (counts, sum) = h.snapshot();
        assert_eq!(counts[19], 3);
        assert_eq!(counts[20], 2);
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert_eq!(sum, 102.0);
    }

    #[test]
    fn concurrent_records_are_exact() {
        let h = cell(&[0.25, 0.5]);
        std::thread::scope(|s| {
            for t in 0..4 {
                let h = &h;
                s.spawn(move || {
                    for i in 0..10_000 {
                        h.record_n([0.25, 0.5, 0.75][(i + t) % 3], 1);
                    }
                });
            }
        });
        let (counts, sum) = h.snapshot();
        assert_eq!(counts.iter().sum::<u64>(), 40_000);
        assert_eq!(counts, vec![13_334, 13_333, 13_333]);
        // Multiples of 0.25 add exactly in f64.
        assert_eq!(sum, 13_334.0 * 0.25 + 13_333.0 * 0.5 + 13_333.0 * 0.75);
    }
}
