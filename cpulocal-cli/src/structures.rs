//! The structures `cpulocal bench` compares: cpulocal's per-CPU list and
//! buffers against the concurrent queues Rust users pick today (crossbeam's
//! `SegQueue` and `ArrayQueue`, a `Mutex<Vec>`), as [`Workload`]s that a
//! [`Runner`](crate::Runner) drives on T threads.
//!
//! One operation is a *pair*: each thread loops `push(x); pop()`, so every
//! structure holds about one value per thread and the time measured is the
//! cost of the two calls, contended as the structure is (the per-CPU ones not
//! at all, pinned; the shared ones by every thread). None of them is used as
//! a FIFO here: the pair measures hand-over cost, not ordering.
//!
//! Every workload tallies what its threads pushed and popped (counts and sums
//! of the values), and [`Workload::check`] drains what is left: nothing may
//! be lost or duplicated, whatever the timing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use cpulocal::{PerCpuBuffer, PerCpuList, PerCpuMemcpyBuffer};
use crossbeam_queue::{ArrayQueue, SegQueue};
use crossbeam_utils::CachePadded;

/// One concurrent structure that values are pushed on and popped from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Structure {
    /// `cpulocal::PerCpuList<u64>`: a per-CPU LIFO of heap nodes (one
    /// allocation per push, freed by the pop).
    List,
    /// `cpulocal::PerCpuBuffer<usize>` of [`BUFFER_CAPACITY`] words per CPU:
    /// a bounded per-CPU stack of words stored as they are (no allocation).
    Buffer,
    /// `cpulocal::PerCpuMemcpyBuffer<u64>` of [`BUFFER_CAPACITY`] values per
    /// CPU: a bounded per-CPU stack of values stored inline (no allocation).
    MemcpyBuffer,
    /// crossbeam's `SegQueue<u64>`: an unbounded lock-free queue of linked
    /// 31-slot blocks.
    SegQueue,
    /// crossbeam's `ArrayQueue<u64>` of [`ARRAY_QUEUE_PER_THREAD`] × threads
    /// values: a bounded lock-free ring.
    ArrayQueue,
    /// `std::sync::Mutex<Vec<u64>>`: `lock().push(x)`, `lock().pop()`.
    MutexVec,
}

/// Values per CPU of the cpulocal buffers.
pub const BUFFER_CAPACITY: usize = 64;

/// Values per thread of the `ArrayQueue` (as many in all as the buffers hold
/// on as many CPUs as threads).
pub const ARRAY_QUEUE_PER_THREAD: usize = 64;

impl Structure {
    /// Every structure, in report order: cpulocal's first.
    pub const ALL: [Structure; 6] = [
        Structure::List,
        Structure::Buffer,
        Structure::MemcpyBuffer,
        Structure::SegQueue,
        Structure::ArrayQueue,
        Structure::MutexVec,
    ];

    /// A short, stable name (CLI output, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Structure::List => "cpulocal_list",
            Structure::Buffer => "cpulocal_buffer",
            Structure::MemcpyBuffer => "cpulocal_memcpy_buffer",
            Structure::SegQueue => "crossbeam_seg_queue",
            Structure::ArrayQueue => "crossbeam_array_queue",
            Structure::MutexVec => "mutex_vec",
        }
    }

    /// What the structure is, for people (tables).
    pub fn label(self) -> &'static str {
        match self {
            Structure::List => "cpulocal PerCpuList",
            Structure::Buffer => "cpulocal PerCpuBuffer",
            Structure::MemcpyBuffer => "cpulocal PerCpuMemcpyBuffer",
            Structure::SegQueue => "crossbeam SegQueue",
            Structure::ArrayQueue => "crossbeam ArrayQueue",
            Structure::MutexVec => "std Mutex<Vec>",
        }
    }

    /// Whether this is one of cpulocal's structures (the reference of the
    /// ratios) rather than a peer.
    pub fn is_cpulocal(self) -> bool {
        matches!(
            self,
            Structure::List | Structure::Buffer | Structure::MemcpyBuffer
        )
    }
}

/// `push` and `pop` as the pair loop calls them; a push that finds the
/// structure full gives the value back.
trait PushPop {
    fn push(&self, value: u64) -> Result<(), u64>;
    fn pop(&self) -> Option<u64>;
}

impl PushPop for PerCpuList<u64> {
    #[inline]
    fn push(&self, value: u64) -> Result<(), u64> {
        PerCpuList::push(self, value);
        Ok(())
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        PerCpuList::pop(self)
    }
}

impl PushPop for PerCpuBuffer<usize> {
    #[inline]
    fn push(&self, value: u64) -> Result<(), u64> {
        PerCpuBuffer::push(self, value as usize).map_err(|v| v as u64)
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        PerCpuBuffer::pop(self).map(|v| v as u64)
    }
}

impl PushPop for PerCpuMemcpyBuffer<u64> {
    #[inline]
    fn push(&self, value: u64) -> Result<(), u64> {
        PerCpuMemcpyBuffer::push(self, value)
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        PerCpuMemcpyBuffer::pop(self)
    }
}

impl PushPop for SegQueue<u64> {
    #[inline]
    fn push(&self, value: u64) -> Result<(), u64> {
        SegQueue::push(self, value);
        Ok(())
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        SegQueue::pop(self)
    }
}

impl PushPop for ArrayQueue<u64> {
    #[inline]
    fn push(&self, value: u64) -> Result<(), u64> {
        ArrayQueue::push(self, value)
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        ArrayQueue::pop(self)
    }
}

impl PushPop for Mutex<Vec<u64>> {
    #[inline]
    fn push(&self, value: u64) -> Result<(), u64> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
        Ok(())
    }
    #[inline]
    fn pop(&self) -> Option<u64> {
        self.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }
}

/// What pairs did: counts and wrapping sums of the values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Pushes that stored their value.
    pub pushed: u64,
    /// Pushes that found the structure full and got their value back.
    pub refused: u64,
    /// Pops that returned a value.
    pub popped: u64,
    /// Pops that found nothing (on the calling thread's CPU, for cpulocal's).
    pub empty: u64,
    /// Wrapping sum of the values stored.
    pub pushed_sum: u64,
    /// Wrapping sum of the values popped.
    pub popped_sum: u64,
}

/// [`Tally`]'s shared totals, added to once per thread per batch.
#[derive(Debug, Default)]
struct Totals([AtomicU64; 6]);

impl Totals {
    fn add(&self, t: &Tally) {
        let parts = [
            t.pushed,
            t.refused,
            t.popped,
            t.empty,
            t.pushed_sum,
            t.popped_sum,
        ];
        for (total, part) in self.0.iter().zip(parts) {
            total.fetch_add(part, Ordering::Relaxed);
        }
    }

    fn get(&self) -> Tally {
        let [pushed, refused, popped, empty, pushed_sum, popped_sum] =
            self.0.each_ref().map(|a| a.load(Ordering::Relaxed));
        Tally {
            pushed,
            refused,
            popped,
            empty,
            pushed_sum,
            popped_sum,
        }
    }
}

/// The pair loop: `pairs` times `push(i); pop()`, tallied in registers.
#[inline(never)]
fn pairs_loop<Q: PushPop>(q: &Q, pairs: u64) -> Tally {
    let mut t = Tally::default();
    for i in 0..pairs {
        match q.push(i) {
            Ok(()) => {
                t.pushed += 1;
                t.pushed_sum = t.pushed_sum.wrapping_add(i);
            }
            Err(_) => t.refused += 1,
        }
        match q.pop() {
            Some(v) => {
                t.popped += 1;
                t.popped_sum = t.popped_sum.wrapping_add(v);
            }
            None => t.empty += 1,
        }
    }
    t
}

/// One structure's state.
enum State {
    List(PerCpuList<u64>),
    Buffer(PerCpuBuffer<usize>),
    MemcpyBuffer(PerCpuMemcpyBuffer<u64>),
    SegQueue(SegQueue<u64>),
    ArrayQueue(ArrayQueue<u64>),
    MutexVec(Mutex<Vec<u64>>),
}

/// A fresh structure and the tally of the pairs run on it.
pub struct Workload {
    structure: Structure,
    state: State,
    totals: CachePadded<Totals>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("structure", &self.structure)
            .field("tally", &self.tally())
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// An empty `structure` for `threads` threads (only the `ArrayQueue`'s
    /// capacity depends on it).
    pub fn new(structure: Structure, threads: usize) -> Self {
        let state = match structure {
            Structure::List => State::List(PerCpuList::new()),
            Structure::Buffer => State::Buffer(PerCpuBuffer::new(BUFFER_CAPACITY)),
            Structure::MemcpyBuffer => {
                State::MemcpyBuffer(PerCpuMemcpyBuffer::new(BUFFER_CAPACITY))
            }
            Structure::SegQueue => State::SegQueue(SegQueue::new()),
            Structure::ArrayQueue => {
                State::ArrayQueue(ArrayQueue::new(ARRAY_QUEUE_PER_THREAD * threads.max(1)))
            }
            Structure::MutexVec => State::MutexVec(Mutex::new(Vec::new())),
        };
        Workload {
            structure,
            state,
            totals: Default::default(),
        }
    }

    /// The structure this workload runs.
    pub fn structure(&self) -> Structure {
        self.structure
    }

    /// Runs `pairs` push+pop pairs on the calling thread.
    pub fn run(&self, pairs: u64) {
        let t = match &self.state {
            State::List(q) => pairs_loop(q, pairs),
            State::Buffer(q) => pairs_loop(q, pairs),
            State::MemcpyBuffer(q) => pairs_loop(q, pairs),
            State::SegQueue(q) => pairs_loop(q, pairs),
            State::ArrayQueue(q) => pairs_loop(q, pairs),
            State::MutexVec(q) => pairs_loop(q, pairs),
        };
        self.totals.add(&t);
    }

    /// Every pair's tally so far.
    pub fn tally(&self) -> Tally {
        self.totals.get()
    }

    /// Takes every value left in the structure: (count, wrapping sum).
    /// Call it with no thread running pairs.
    pub fn drain(&self) -> (u64, u64) {
        let mut left = (0u64, 0u64);
        let mut take = |v: u64| {
            left.0 += 1;
            left.1 = left.1.wrapping_add(v);
        };
        match &self.state {
            State::List(q) => q.drain().for_each(&mut take),
            State::Buffer(q) => q.drain().map(|v| v as u64).for_each(&mut take),
            State::MemcpyBuffer(q) => q.drain().for_each(&mut take),
            State::SegQueue(q) => std::iter::from_fn(|| q.pop()).for_each(&mut take),
            State::ArrayQueue(q) => std::iter::from_fn(|| q.pop()).for_each(&mut take),
            State::MutexVec(q) => q
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
                .for_each(&mut take),
        }
        left
    }

    /// Drains the structure and checks that `pairs` pairs were run and that
    /// every value stored was popped or left exactly once.
    ///
    /// # Errors
    ///
    /// What does not add up, in words.
    pub fn check(&self, pairs: u64) -> Result<Tally, String> {
        let t = self.tally();
        let (left, left_sum) = self.drain();
        if t.pushed + t.refused != pairs || t.popped + t.empty != pairs {
            return Err(format!(
                "ran {pairs} pairs but tallied {} pushes and {} pops",
                t.pushed + t.refused,
                t.popped + t.empty
            ));
        }
        if t.popped + left != t.pushed || t.popped_sum.wrapping_add(left_sum) != t.pushed_sum {
            return Err(format!(
                "stored {} values, popped {} and found {left} left (values lost or duplicated)",
                t.pushed, t.popped
            ));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runner;
    use std::sync::Arc;

    #[test]
    fn every_structure_balances_on_three_threads() {
        let runner = Runner::new(3).unwrap();
        for s in Structure::ALL {
            let w = Arc::new(Workload::new(s, 3));
            let w2 = w.clone();
            runner.run(move |_| w2.run(20_000));
            let t = w
                .check(60_000)
                .unwrap_or_else(|e| panic!("{}: {e}", s.name()));
            assert_eq!(t.refused, 0, "{}: {t:?}", s.name());
            assert!(t.popped > 0, "{}: {t:?}", s.name());
            // Drained: nothing left for a second check to find.
            assert_eq!(w.drain(), (0, 0), "{}", s.name());
        }
    }

    #[test]
    fn a_lost_value_is_reported() {
        let w = Workload::new(Structure::MutexVec, 1);
        w.run(10);
        if let State::MutexVec(v) = &w.state {
            v.lock().unwrap().push(7); // a value nobody pushed
        }
        assert!(w.check(10).is_err());
    }

    #[test]
    fn only_cpulocal_structures_are_the_reference() {
        let names: Vec<&str> = Structure::ALL
            .iter()
            .filter(|s| s.is_cpulocal())
            .map(|s| s.name())
            .collect();
        assert_eq!(
            names,
            ["cpulocal_list", "cpulocal_buffer", "cpulocal_memcpy_buffer"]
        );
    }
}
