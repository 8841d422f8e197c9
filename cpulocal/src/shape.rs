//! The operation shapes: each described once, here, and run by two engines.
//!
//! [`Shape`] names an operation and its operands. [`Shape::apply`] is its
//! meaning, as ordinary code: the fenced engine runs exactly that, with the
//! slot's fence held. [`arch::section`] runs the same operation as one
//! restartable sequence (on x86_64: `arch/x86_64.rs`, one asm block per
//! shape). The differential tests below hold the two to each other on random
//! inputs, in both orders and both index modes.
//!
//! [`perform`] is the one policy for all shapes: critical-section attempts on
//! the slot's CPU, at most [`RSEQ_ATTEMPTS`] of them, then the fenced path.
//!
//! # Safety
//!
//! A `Shape`'s pointers are valid as the public method that built it requires
//! ([`Domain`](crate::Domain)); the words it names belong to one slot and are
//! written only by that slot's operations, so under the slot's fence (after
//! the membarrier) they are the fence holder's alone.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::{self, Outcome};
use crate::domain::{CompareFailed, Order};
use crate::fence::{self, Fence};
use crate::index::At;
use crate::stats::Stats;
use crate::{engine, Index, RSEQ_ATTEMPTS};

/// One operation and its operands; `v` is always the word whose store
/// commits. All words are `usize`, adds wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // librseq's names, which end in "store"
pub(crate) enum Shape {
    /// `*v == expect` ? `*v = newv` : fail.
    CbneStore {
        v: *mut usize,
        expect: usize,
        newv: usize,
    },
    /// `*v += count`.
    AddStore { v: *mut usize, count: usize },
    /// `*v == expectnot` ? fail : `*load = *v; *v = *(*v + offset)` (list pop;
    /// `offset` in bytes).
    CbeqStoreAddLoadStore {
        v: *mut usize,
        expectnot: usize,
        offset: usize,
        load: *mut usize,
    },
    /// `*v == expect` ? `*v2 = newv2; *v = newv` : fail.
    CbneStoreStore {
        v: *mut usize,
        expect: usize,
        v2: *mut usize,
        newv2: usize,
        newv: usize,
    },
    /// `*v == expect` ? copy `len` bytes `src` -> `dst`; `*v = newv` : fail.
    CbneMemcpyStore {
        v: *mut usize,
        expect: usize,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        newv: usize,
    },
    /// `*v == expect && *v2 == expect2` ? `*v = newv` : fail.
    CbneLoadCbneStore {
        v: *mut usize,
        expect: usize,
        v2: *const usize,
        expect2: usize,
        newv: usize,
    },
    /// `*(*ptr + offset) += inc` (`offset` in bytes).
    AddLoadAddStore {
        ptr: *const usize,
        offset: usize,
        inc: usize,
    },
}

/// A word of the slot, as an atomic for the fenced engine.
///
/// # Safety
///
/// `p` is valid and aligned (the shape's contract).
unsafe fn word<'a>(p: *const usize) -> &'a AtomicUsize {
    // SAFETY: valid and aligned by the caller; under the fence nothing else
    // writes it, and atomics make concurrent readers well defined.
    unsafe { AtomicUsize::from_ptr(p.cast_mut()) }
}

impl Shape {
    /// The shape's meaning, as ordinary code: what the fenced engine runs.
    /// Loads are relaxed (the fence's acquire orders them); the final store is
    /// a store-release for [`Order::Release`].
    ///
    /// # Safety
    ///
    /// The pointers are valid (module docs), and the caller holds the slot's
    /// fence, or is a test with the memory to itself.
    pub(crate) unsafe fn apply(&self, order: Order) -> Result<(), CompareFailed> {
        let commit = match order {
            Order::Relaxed => Ordering::Relaxed,
            Order::Release => Ordering::Release,
        };
        let check = |ok: bool| if ok { Ok(()) } else { Err(CompareFailed) };
        // SAFETY: the pointers are valid for the shape (caller), so every
        // word and byte range below may be accessed.
        unsafe {
            match *self {
                Shape::CbneStore { v, expect, newv } => {
                    let v = word(v);
                    check(v.load(Ordering::Relaxed) == expect)?;
                    v.store(newv, commit);
                }
                Shape::AddStore { v, count } => {
                    let v = word(v);
                    v.store(v.load(Ordering::Relaxed).wrapping_add(count), commit);
                }
                Shape::CbeqStoreAddLoadStore {
                    v,
                    expectnot,
                    offset,
                    load,
                } => {
                    let v = word(v);
                    let head = v.load(Ordering::Relaxed);
                    check(head != expectnot)?;
                    load.write(head);
                    let next = word((head as *const u8).wrapping_add(offset).cast());
                    v.store(next.load(Ordering::Relaxed), commit);
                }
                Shape::CbneStoreStore {
                    v,
                    expect,
                    v2,
                    newv2,
                    newv,
                } => {
                    let v = word(v);
                    check(v.load(Ordering::Relaxed) == expect)?;
                    word(v2).store(newv2, Ordering::Relaxed);
                    v.store(newv, commit);
                }
                Shape::CbneMemcpyStore {
                    v,
                    expect,
                    dst,
                    src,
                    len,
                    newv,
                } => {
                    let v = word(v);
                    check(v.load(Ordering::Relaxed) == expect)?;
                    core::ptr::copy_nonoverlapping(src, dst, len);
                    v.store(newv, commit);
                }
                Shape::CbneLoadCbneStore {
                    v,
                    expect,
                    v2,
                    expect2,
                    newv,
                } => {
                    let v = word(v);
                    check(v.load(Ordering::Relaxed) == expect)?;
                    check(word(v2).load(Ordering::Relaxed) == expect2)?;
                    v.store(newv, commit);
                }
                Shape::AddLoadAddStore { ptr, offset, inc } => {
                    let base = word(ptr).load(Ordering::Relaxed);
                    let v = word((base as *const u8).wrapping_add(offset).cast());
                    v.store(v.load(Ordering::Relaxed).wrapping_add(inc), commit);
                }
            }
        }
        Ok(())
    }
}

/// Runs `shape` on slot `index` (numbered `by`), whose fence is `fence`: up to
/// [`RSEQ_ATTEMPTS`] critical sections while the thread is on that slot's CPU
/// (or concurrency id), else, or then, the fenced path. Counts slow-path
/// events in `stats`. The first attempt is inlined into the caller, where
/// the shape is a constant; everything after it is out of line.
///
/// # Safety
///
/// `shape`'s pointers are valid and name slot `index`'s data (module docs).
#[inline(always)]
pub(crate) unsafe fn perform(
    shape: &Shape,
    order: Order,
    index: usize,
    fence: &Fence,
    by: Index,
    stats: &Stats,
) -> Result<(), CompareFailed> {
    let area = engine::area();
    if engine::index_in(area, by.field_offset()) as usize == index {
        // SAFETY: `area` is this thread's live area and `index` was just read
        // from it; the rest is the caller's contract.
        return unsafe { perform_here(area, shape, order, index, fence, by, stats) };
    }
    // SAFETY: the caller's contract. By value: the shape is built in memory
    // only on this cold path.
    unsafe { perform_slow(*shape, order, index, fence, by, stats, None) }
}

/// [`perform`] for a caller that has just read `index` from `area`, the
/// calling thread's area ([`engine::area`], [`engine::index_in`] with `by`'s
/// field): runs the first section without reading them again (the section
/// checks the index itself, so a migration since is an abort, not an error).
///
/// # Safety
///
/// As [`perform`]; `area` and `index` as said.
#[inline(always)]
pub(crate) unsafe fn perform_here(
    area: *mut crate::abi::Rseq,
    shape: &Shape,
    order: Order,
    index: usize,
    fence: &Fence,
    by: Index,
    stats: &Stats,
) -> Result<(), CompareFailed> {
    // SAFETY: the caller's area, index and shape (as in `perform`).
    let first = match unsafe { arch::section(area, by.field_offset(), fence, shape) } {
        Outcome::Committed => return Ok(()),
        Outcome::CompareFailed => return Err(CompareFailed),
        other => other,
    };
    // SAFETY: the caller's contract.
    unsafe { perform_slow(*shape, order, index, fence, by, stats, Some(first)) }
}

/// [`perform`] on `at`: where `at` carries the area its index was read from,
/// the first section runs inline with them ([`perform_here`]); otherwise
/// (a slot the caller named, or no section possible where the thread runs)
/// everything runs out of line, so that the caller inlines one section, not
/// two.
///
/// # Safety
///
/// As [`perform`], for slot `at.index`; `at` from [`Index::here`] or
/// [`At::slot`].
#[inline(always)]
pub(crate) unsafe fn perform_at(
    shape: &Shape,
    order: Order,
    at: At,
    fence: &Fence,
    by: Index,
    stats: &Stats,
) -> Result<(), CompareFailed> {
    match at.area {
        // SAFETY: the caller's contract; `Index::here` read `at.index` from
        // `area`, the calling thread's.
        Some(area) => unsafe { perform_here(area, shape, order, at.index, fence, by, stats) },
        // SAFETY: the caller's contract.
        None => unsafe { perform_slow(*shape, order, at.index, fence, by, stats, None) },
    }
}

/// [`perform`] after its first attempt ended with `first` (None: no section
/// ran, the thread being elsewhere or without rseq).
///
/// # Safety
///
/// As [`perform`].
#[cold]
#[inline(never)]
unsafe fn perform_slow(
    shape: Shape,
    order: Order,
    index: usize,
    fence: &Fence,
    by: Index,
    stats: &Stats,
    first: Option<Outcome>,
) -> Result<(), CompareFailed> {
    let offset = by.field_offset();
    let mut aborts = u64::from(first == Some(Outcome::Aborted));
    let mut fenced = first == Some(Outcome::Fenced);
    while !fenced && aborts < u64::from(RSEQ_ATTEMPTS) {
        let area = engine::area();
        if engine::index_in(area, offset) as usize != index {
            if engine::cpu_id(area) == crate::abi::CPU_ID_UNINITIALIZED && engine::ensure_thread() {
                continue; // first operation of this thread: sections now run
            }
            break; // another slot's CPU, or no rseq on this thread
        }
        // SAFETY: as in `perform`.
        match unsafe { arch::section(area, offset, fence, &shape) } {
            Outcome::Committed => {
                stats.retried(aborts);
                return Ok(());
            }
            Outcome::CompareFailed => {
                stats.retried(aborts);
                return Err(CompareFailed);
            }
            Outcome::Fenced => fenced = true,
            Outcome::Aborted => aborts += 1,
        }
    }
    stats.fenced(aborts);
    // SAFETY: the fence is held while `apply` runs (caller: valid pointers).
    fence::with_signals_blocked(fence, index, by, || unsafe { shape.apply(order) })
}
