//! The five loops of librseq's `param_test` benchmark, each written twice:
//! on cpulocal's public API and as hand-written C rseq code
//! (`c/rseq_baseline.c`, [`crate::baseline`]), in both index modes. The
//! suite times the two sides of a loop in alternating batches, so that their
//! ratio is that of the same machine state; this is the comparison with the
//! strongest reference, hand-written rseq, that cpulocal's fast paths aim
//! at.
//!
//! The loops, as `param_test -T` names them, one iteration each:
//!
//! - `i`, counter: add 1 to the current CPU's slot
//!   ([`PerCpuCounter::add`]);
//! - `s`, spinlock: lock the current CPU's slot, add 1 to its count, unlock
//!   ([`PerCpuLock::lock`]);
//! - `l`, list: pop a node from the current CPU's list and push it back
//!   ([`PerCpuList::pop_node`], [`PerCpuList::push_node`]), 100 nodes per
//!   slot;
//! - `b`, pointer buffer: pop a pointer and push it back
//!   ([`PerCpuBuffer<Box<_>>`](PerCpuBuffer)), 100 per slot, room for all;
//! - `m`, memcpy buffer: copy a 16-byte item out into a local and back
//!   ([`PerCpuMemcpyBuffer::pop_into`], [`PerCpuMemcpyBuffer::push_from`]),
//!   100 per slot, room for all.
//!
//! Every workload checks after its batches that nothing was lost: the sums
//! of the counter and the lock equal the iterations run, and the structures
//! hold their items, with the same sums of their data.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use cpulocal::{
    Index, Node, PerCpuBuffer, PerCpuCounter, PerCpuList, PerCpuLock, PerCpuMemcpyBuffer,
};

/// Items each slot of the list and the buffers holds, as in `param_test`.
pub const ITEMS_PER_SLOT: usize = 100;

/// One of `param_test`'s loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loop {
    /// `-T i`: a per-CPU counter's add.
    Counter,
    /// `-T s`: lock, increment, unlock.
    Spinlock,
    /// `-T l`: list pop + push of a node.
    List,
    /// `-T b`: pointer buffer pop + push.
    PtrBuffer,
    /// `-T m`: memcpy buffer pop + push of 16 bytes.
    MemcpyBuffer,
}

impl Loop {
    /// Every loop, in report order.
    pub const ALL: [Loop; 5] = [
        Loop::Counter,
        Loop::Spinlock,
        Loop::List,
        Loop::PtrBuffer,
        Loop::MemcpyBuffer,
    ];

    /// A short, stable name (JSON).
    pub fn name(self) -> &'static str {
        match self {
            Loop::Counter => "counter",
            Loop::Spinlock => "spinlock",
            Loop::List => "list",
            Loop::PtrBuffer => "ptr_buffer",
            Loop::MemcpyBuffer => "memcpy_buffer",
        }
    }

    /// What cpulocal runs in the loop, for people (tables).
    pub fn label(self) -> &'static str {
        match self {
            Loop::Counter => "counter add",
            Loop::Spinlock => "lock, +1, unlock",
            Loop::List => "list pop + push",
            Loop::PtrBuffer => "ptr buffer pop + push",
            Loop::MemcpyBuffer => "memcpy 16 B pop + push",
        }
    }

    /// `param_test`'s `-T` letter for the loop.
    pub fn letter(self) -> char {
        match self {
            Loop::Counter => 'i',
            Loop::Spinlock => 's',
            Loop::List => 'l',
            Loop::PtrBuffer => 'b',
            Loop::MemcpyBuffer => 'm',
        }
    }

    /// The loop of a `-T` letter.
    pub fn from_letter(c: char) -> Option<Loop> {
        Loop::ALL.into_iter().find(|l| l.letter() == c)
    }
}

/// How a loop's slots are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// By CPU (`cpu_id`).
    CpuId,
    /// By concurrency id (`mm_cid`).
    MmCid,
}

impl Mode {
    /// Both modes.
    pub const ALL: [Mode; 2] = [Mode::CpuId, Mode::MmCid];

    /// `cpu_id` or `mm_cid`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::CpuId => "cpu_id",
            Mode::MmCid => "mm_cid",
        }
    }

    fn index(self) -> Index {
        match self {
            Mode::CpuId => Index::Cpu,
            Mode::MmCid => Index::MmCid,
        }
    }

    /// Whether both sides can run in this mode here: the C loops need
    /// glibc's rseq area (and the kernel's `mm_cid`), cpulocal's must get
    /// the indexing asked for rather than fall back to `cpu_id`.
    pub fn available(self) -> bool {
        let cpulocal = match self {
            Mode::CpuId => cpulocal::status().engine == cpulocal::Engine::Rseq,
            Mode::MmCid => cpulocal::status().mm_cid_indexing,
        };
        cpulocal && c_available(self)
    }
}

#[cfg(cpulocal_c_baseline)]
fn c_available(mode: Mode) -> bool {
    c_mode(mode).available()
}

#[cfg(not(cpulocal_c_baseline))]
fn c_available(_: Mode) -> bool {
    false
}

#[cfg(cpulocal_c_baseline)]
fn c_mode(mode: Mode) -> crate::baseline::IndexMode {
    match mode {
        Mode::CpuId => crate::baseline::IndexMode::CpuId,
        Mode::MmCid => crate::baseline::IndexMode::MmCid,
    }
}

/// Which side of the comparison runs a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The hand-written C rseq loop, finding the thread's rseq area for every
    /// operation as librseq's calls do: the reference.
    C,
    /// The same C loop with the area found once per batch and kept in a
    /// register: the floor, below what any per-call API (librseq's
    /// included) reaches.
    CHoisted,
    /// The same loop on cpulocal's API.
    Cpulocal,
}

/// A 16-byte item of the memcpy loop, as `param_test`'s.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Item {
    data1: isize,
    data2: u64,
}

/// One side's structure for one loop.
enum State {
    Counter(PerCpuCounter),
    Spinlock(PerCpuLock<u64>),
    List(PerCpuList<usize>),
    PtrBuffer(PerCpuBuffer<Box<usize>>),
    MemcpyBuffer(PerCpuMemcpyBuffer<Item>),
    #[cfg(cpulocal_c_baseline)]
    C(CState),
}

#[cfg(cpulocal_c_baseline)]
enum CState {
    Counter(crate::baseline::CCounter),
    Spinlock(crate::baseline::CSpinlock),
    List(crate::baseline::CList),
    PtrBuffer(crate::baseline::CPtrBuffer),
    MemcpyBuffer(crate::baseline::CMemcpyBuffer),
}

/// A loop's structure on one side, and the iterations run on it.
pub struct Workload {
    lp: Loop,
    state: State,
    ran: AtomicU64,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("loop", &self.lp)
            .field("ran", &self.ran)
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// `lp`'s structure on `side`, indexed by `mode`, set up as `param_test`
    /// sets it up; None where that side cannot run here (see
    /// [`Mode::available`]).
    pub fn new(lp: Loop, mode: Mode, side: Side) -> Option<Workload> {
        if !mode.available() {
            return None;
        }
        let state = match side {
            Side::Cpulocal => cpulocal_state(lp, mode.index()),
            Side::C => c_state(lp, mode, false)?,
            Side::CHoisted => c_state(lp, mode, true)?,
        };
        Some(Workload {
            lp,
            state,
            ran: AtomicU64::new(0),
        })
    }

    /// Runs `iters` iterations of the loop on the calling thread.
    ///
    /// # Panics
    ///
    /// If a buffer refuses a push (it has room for every item), or the C
    /// loop finds no rseq area on this thread.
    pub fn run(&self, iters: u64) {
        match &self.state {
            State::Counter(c) => counter_loop(c, iters),
            State::Spinlock(l) => spinlock_loop(l, iters),
            State::List(l) => list_loop(l, iters),
            State::PtrBuffer(b) => ptr_buffer_loop(b, iters),
            State::MemcpyBuffer(b) => memcpy_loop(b, iters),
            #[cfg(cpulocal_c_baseline)]
            State::C(c) => {
                let r = match c {
                    CState::Counter(s) => s.run(iters),
                    CState::Spinlock(s) => s.run(iters),
                    CState::List(s) => s.run(iters),
                    CState::PtrBuffer(s) => s.run(iters),
                    CState::MemcpyBuffer(s) => s.run(iters),
                };
                r.expect("the C loop needs this thread's rseq area");
            }
        }
        self.ran.fetch_add(iters, Ordering::Relaxed);
    }

    /// Checks, once every batch has returned, that the structure holds what
    /// it should: the iterations run (counter, lock), or its items with the
    /// sum of their data (list, buffers). Consumes the workload.
    ///
    /// # Errors
    ///
    /// What does not add up, in words.
    pub fn check(self) -> Result<(), String> {
        let ran = self.ran.load(Ordering::Relaxed) as i64;
        let slots = |n: usize| n as i64;
        // Items 1..=100 per slot: data sums to 5050 (list, pointers), data1 +
        // data2 = 2j to 10100 (memcpy), on both sides.
        let (want, got): ((i64, i64), (i64, i64)) = match self.state {
            State::Counter(c) => ((ran, 0), (c.sum(), 0)),
            State::Spinlock(l) => ((ran, 0), (l.into_vec().iter().sum::<u64>() as i64, 0)),
            State::List(l) => {
                let n = slots(l.cpus());
                let items: Vec<usize> = l.drain().collect();
                (
                    (5050 * n, 100 * n),
                    (items.iter().sum::<usize>() as i64, items.len() as i64),
                )
            }
            State::PtrBuffer(b) => {
                let n = slots(b.cpus());
                let items: Vec<Box<usize>> = b.drain().collect();
                (
                    (5050 * n, 100 * n),
                    (
                        items.iter().map(|b| **b).sum::<usize>() as i64,
                        items.len() as i64,
                    ),
                )
            }
            State::MemcpyBuffer(b) => {
                let n = slots(b.cpus());
                let items: Vec<Item> = b.drain().collect();
                (
                    (10100 * n, 100 * n),
                    (
                        items.iter().map(|i| i.data1 as i64 + i.data2 as i64).sum(),
                        items.len() as i64,
                    ),
                )
            }
            #[cfg(cpulocal_c_baseline)]
            State::C(c) => {
                let n = cpulocal::possible_cpus() as i64;
                match c {
                    CState::Counter(s) => ((ran, 0), (s.sum(), 0)),
                    CState::Spinlock(mut s) => ((ran, 0), (s.sum(), 0)),
                    CState::List(mut s) => ((5050 * n, 100 * n), (s.sum(), s.count() as i64)),
                    CState::PtrBuffer(mut s) => ((5050 * n, 100 * n), (s.sum(), s.count() as i64)),
                    CState::MemcpyBuffer(mut s) => {
                        ((10100 * n, 100 * n), (s.sum(), s.count() as i64))
                    }
                }
            }
        };
        if want == got {
            Ok(())
        } else {
            Err(format!(
                "{}: expected (sum, items) = {want:?}, found {got:?} after {ran} iterations",
                self.lp.name()
            ))
        }
    }
}

/// cpulocal's structure for `lp`, filled as `param_test` fills its own.
fn cpulocal_state(lp: Loop, by: Index) -> State {
    match lp {
        Loop::Counter => State::Counter(PerCpuCounter::with_index(by)),
        Loop::Spinlock => State::Spinlock(PerCpuLock::with_index(by, |_| 0)),
        Loop::List => {
            let l = PerCpuList::with_index(by);
            for cpu in 0..l.cpus() {
                for j in 1..=ITEMS_PER_SLOT {
                    let _ = l.push_node_on(cpu, Node::new(j));
                }
            }
            State::List(l)
        }
        Loop::PtrBuffer => {
            let b = PerCpuBuffer::with_index(by, cpulocal::possible_cpus() * ITEMS_PER_SLOT);
            for cpu in 0..b.cpus() {
                for j in 1..=ITEMS_PER_SLOT {
                    let _ = b.push_on(cpu, Box::new(j));
                }
            }
            State::PtrBuffer(b)
        }
        Loop::MemcpyBuffer => {
            let b = PerCpuMemcpyBuffer::with_index(by, cpulocal::possible_cpus() * ITEMS_PER_SLOT);
            for cpu in 0..b.cpus() {
                for j in 1..=ITEMS_PER_SLOT {
                    let item = Item {
                        data1: j as isize,
                        data2: j as u64,
                    };
                    let _ = b.push_on(cpu, item);
                }
            }
            State::MemcpyBuffer(b)
        }
    }
}

/// The C structure for `lp` in `mode`, its loop finding the area once per
/// batch if `hoisted`, else for every operation.
#[cfg(cpulocal_c_baseline)]
fn c_state(lp: Loop, mode: Mode, hoisted: bool) -> Option<State> {
    use crate::baseline::{AreaLookup, CCounter, CList, CMemcpyBuffer, CPtrBuffer, CSpinlock};
    let m = c_mode(mode);
    let a = if hoisted {
        AreaLookup::Hoisted
    } else {
        AreaLookup::PerOperation
    };
    Some(State::C(match lp {
        Loop::Counter => CState::Counter(CCounter::new(m, a)),
        Loop::Spinlock => CState::Spinlock(CSpinlock::new(m, a)),
        Loop::List => CState::List(CList::new(m, a)),
        Loop::PtrBuffer => CState::PtrBuffer(CPtrBuffer::new(m, a)),
        Loop::MemcpyBuffer => CState::MemcpyBuffer(CMemcpyBuffer::new(m, a)),
    }))
}

#[cfg(not(cpulocal_c_baseline))]
fn c_state(_: Loop, _: Mode, _: bool) -> Option<State> {
    None
}

// The loops, each its own function, as the C side's are.

#[inline(never)]
fn counter_loop(c: &PerCpuCounter, iters: u64) {
    for _ in 0..iters {
        c.add(1);
    }
}

#[inline(never)]
fn spinlock_loop(l: &PerCpuLock<u64>, iters: u64) {
    for _ in 0..iters {
        *l.lock() += 1;
    }
}

#[inline(never)]
fn list_loop(l: &PerCpuList<usize>, iters: u64) {
    for _ in 0..iters {
        if let Some(node) = l.pop_node() {
            l.push_node(node);
        }
    }
}

#[inline(never)]
fn ptr_buffer_loop(b: &PerCpuBuffer<Box<usize>>, iters: u64) {
    for _ in 0..iters {
        if let Some(p) = b.pop() {
            if b.push(p).is_err() {
                refused();
            }
        }
    }
}

#[inline(never)]
fn memcpy_loop(b: &PerCpuMemcpyBuffer<Item>, iters: u64) {
    // Popped into a local and pushed from it, as the C loop does.
    let mut slot = MaybeUninit::uninit();
    for _ in 0..iters {
        if let Some(item) = b.pop_into(&mut slot) {
            if b.push_from(item).is_err() {
                refused();
            }
        }
    }
}

/// A buffer with room for every item refused one: the set-up is wrong.
#[cold]
fn refused() -> ! {
    panic!("a buffer with room for every item refused a push")
}
