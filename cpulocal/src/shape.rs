//! The operation shapes: each described once, here, and run by two engines.
//!
//! [`Shape`] names an operation and its operands. [`Shape::apply`] is its
//! meaning, as ordinary code: the fenced engine runs exactly that, with the
//! slot's fence held. [`arch::section`] runs the same operation as one
//! restartable sequence (on x86_64: `arch/x86_64.rs`, one asm block per
//! shape). The differential tests below hold the two to each other on random
//! inputs, in both orders and both index modes.
//!
//! [`slow`] is the one policy for all shapes after their first attempt
//! (which [`Slots::perform`](crate::slots::Slots::perform) runs inline):
//! critical-section attempts on the slot's CPU, at most [`RSEQ_ATTEMPTS`] of
//! them, then the fenced path.
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
use crate::stats::Stats;
use crate::{engine, testing, Index, RSEQ_ATTEMPTS};

/// One operation and its operands, run on one slot. `v` is always the word
/// whose store commits, named by `vo`, its distance in bytes from the slot's
/// fence word ([`Shape::word_at`]): the structures keep it in the fence's
/// slot, so that once an operation is inlined `vo` is a constant and a
/// section computes no second address. All words are `usize`, adds wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // librseq's names, which end in "store"
pub(crate) enum Shape {
    /// `*v == expect` ? `*v = newv` : fail.
    CbneStore {
        vo: usize,
        expect: usize,
        newv: usize,
    },
    /// `*v += count`.
    AddStore { vo: usize, count: usize },
    /// `*v == expectnot` ? fail : `*load = *v; *v = *(*v + offset)` (list pop;
    /// `offset` in bytes).
    CbeqStoreAddLoadStore {
        vo: usize,
        expectnot: usize,
        offset: usize,
        load: *mut usize,
    },
    /// `*v == expect` ? `*v2 = newv2; *v = newv` : fail.
    CbneStoreStore {
        vo: usize,
        expect: usize,
        v2: *mut usize,
        newv2: usize,
        newv: usize,
    },
    /// `*v == expect` ? copy `len` bytes `src` -> `dst`; `*v = newv` : fail.
    CbneMemcpyStore {
        vo: usize,
        expect: usize,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        newv: usize,
    },
    /// `*v == expect && *v2 == expect2` ? `*v = newv` : fail.
    CbneLoadCbneStore {
        vo: usize,
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

/// Injection point 6 ([`crate::inject`]), between a fenced operation's reads
/// and its commit store; nothing without the `inject` feature.
#[inline(always)]
fn before_commit() {
    #[cfg(feature = "inject")]
    crate::inject::point(6);
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
    /// `v`'s distance from `fence`: how a shape names its commit word. The
    /// address of `v` is exposed, so that [`word_at`](Self::word_at) may
    /// give it back with its provenance, wherever `v` lives.
    #[inline(always)]
    pub(crate) fn offset(fence: &Fence, v: *mut usize) -> usize {
        v.expose_provenance()
            .wrapping_sub(fence as *const Fence as usize)
    }

    /// The commit word `vo` bytes from `fence` (see [`offset`](Self::offset)).
    #[inline(always)]
    pub(crate) fn word_at(fence: *const Fence, vo: usize) -> *mut usize {
        core::ptr::with_exposed_provenance_mut((fence as usize).wrapping_add(vo))
    }

    /// The same shape with its commit word counted from `to` instead of
    /// `from` (the `testing` build's spare fence; tests' shapes, counted from
    /// address 0).
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub(crate) fn rebased(mut self, from: *const Fence, to: *const Fence) -> Shape {
        let delta = (from as usize).wrapping_sub(to as usize);
        match &mut self {
            Shape::CbneStore { vo, .. }
            | Shape::AddStore { vo, .. }
            | Shape::CbeqStoreAddLoadStore { vo, .. }
            | Shape::CbneStoreStore { vo, .. }
            | Shape::CbneMemcpyStore { vo, .. }
            | Shape::CbneLoadCbneStore { vo, .. } => *vo = vo.wrapping_add(delta),
            Shape::AddLoadAddStore { .. } => {}
        }
        self
    }

    /// The shape's meaning, as ordinary code: what the fenced engine runs.
    /// Loads are relaxed (the fence's acquire orders them); the final store is
    /// a store-release for [`Order::Release`].
    ///
    /// # Safety
    ///
    /// The pointers are valid (module docs), `fence` is the fence `vo` is
    /// counted from, and the caller holds that fence, or is a test with the
    /// memory to itself.
    pub(crate) unsafe fn apply(
        &self,
        fence: *const Fence,
        order: Order,
    ) -> Result<(), CompareFailed> {
        let at = |vo: usize| Self::word_at(fence, vo);
        let commit = match order {
            Order::Relaxed => Ordering::Relaxed,
            Order::Release => Ordering::Release,
        };
        let check = |ok: bool| if ok { Ok(()) } else { Err(CompareFailed) };
        // SAFETY: the pointers are valid for the shape (caller), so every
        // word and byte range below may be accessed.
        unsafe {
            match *self {
                Shape::CbneStore { vo, expect, newv } => {
                    let v = word(at(vo));
                    check(v.load(Ordering::Relaxed) == expect)?;
                    before_commit();
                    v.store(newv, commit);
                }
                Shape::AddStore { vo, count } => {
                    let v = word(at(vo));
                    let sum = v.load(Ordering::Relaxed).wrapping_add(count);
                    before_commit();
                    v.store(sum, commit);
                }
                Shape::CbeqStoreAddLoadStore {
                    vo,
                    expectnot,
                    offset,
                    load,
                } => {
                    let v = word(at(vo));
                    let head = v.load(Ordering::Relaxed);
                    check(head != expectnot)?;
                    load.write(head);
                    let next = word((head as *const u8).wrapping_add(offset).cast());
                    let next = next.load(Ordering::Relaxed);
                    before_commit();
                    v.store(next, commit);
                }
                Shape::CbneStoreStore {
                    vo,
                    expect,
                    v2,
                    newv2,
                    newv,
                } => {
                    let v = word(at(vo));
                    check(v.load(Ordering::Relaxed) == expect)?;
                    word(v2).store(newv2, Ordering::Relaxed);
                    before_commit();
                    v.store(newv, commit);
                }
                Shape::CbneMemcpyStore {
                    vo,
                    expect,
                    dst,
                    src,
                    len,
                    newv,
                } => {
                    let v = word(at(vo));
                    check(v.load(Ordering::Relaxed) == expect)?;
                    core::ptr::copy_nonoverlapping(src, dst, len);
                    before_commit();
                    v.store(newv, commit);
                }
                Shape::CbneLoadCbneStore {
                    vo,
                    expect,
                    v2,
                    expect2,
                    newv,
                } => {
                    let v = word(at(vo));
                    check(v.load(Ordering::Relaxed) == expect)?;
                    check(word(v2).load(Ordering::Relaxed) == expect2)?;
                    before_commit();
                    v.store(newv, commit);
                }
                Shape::AddLoadAddStore { ptr, offset, inc } => {
                    let base = word(ptr).load(Ordering::Relaxed);
                    let v = word((base as *const u8).wrapping_add(offset).cast());
                    let sum = v.load(Ordering::Relaxed).wrapping_add(inc);
                    before_commit();
                    v.store(sum, commit);
                }
            }
        }
        Ok(())
    }
}

impl Shape {
    /// The shape as one atomic instruction, where it is a single-word one:
    /// an add as a fetch-and-add, a compare-and-store as a compare-and-swap
    /// (the final store's ordering as `order` says); None for the others.
    /// For node slots, which several CPUs update at once (see
    /// [`Slots::node_atomics`](crate::slots::Slots::node_atomics)).
    ///
    /// # Safety
    ///
    /// As [`apply`](Self::apply), without the fence: every other write to
    /// the word is atomic too.
    pub(crate) unsafe fn apply_atomic(
        &self,
        fence: *const Fence,
        order: Order,
    ) -> Option<Result<(), CompareFailed>> {
        let ordering = match order {
            Order::Relaxed => Ordering::Relaxed,
            Order::Release => Ordering::Release,
        };
        // SAFETY: the commit word is valid and aligned (caller).
        let v = |vo: usize| unsafe { word(Self::word_at(fence, vo)) };
        match *self {
            Shape::AddStore { vo, count } => {
                v(vo).fetch_add(count, ordering);
                Some(Ok(()))
            }
            Shape::CbneStore { vo, expect, newv } => Some(
                v(vo)
                    .compare_exchange(expect, newv, ordering, Ordering::Relaxed)
                    .map(drop)
                    .map_err(|_| CompareFailed),
            ),
            _ => None,
        }
    }
}

/// What an operation does after its first attempt ended with `first` (None:
/// no section ran, the slot being named by the caller, or the thread being
/// elsewhere or without rseq): up to [`RSEQ_ATTEMPTS`] critical sections in
/// all while the thread runs on slot `index` (numbered `by`), then, or else,
/// the fenced path on `fence`, slot `index`'s fence. With `follow`, an
/// operation on whatever slot the thread runs on (a counter's add): when the
/// thread has moved, `follow(new index)` gives the shape and fence for the
/// new slot, and the attempts go on there. Counts slow-path events in
/// `stats`. The one slow path of every shape, entered from
/// [`Slots::perform`](crate::slots::Slots::perform).
///
/// # Safety
///
/// `shape`'s pointers are valid and name slot `index`'s data (module docs).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)] // the operation, its slot, and how it ended
pub(crate) unsafe fn slow<'a>(
    mut shape: Shape,
    order: Order,
    mut index: usize,
    mut fence: &'a Fence,
    by: Index,
    stats: &Stats,
    first: Option<Outcome>,
    follow: Option<&dyn Fn(usize) -> Option<(Shape, &'a Fence)>>,
) -> Result<(), CompareFailed> {
    let offset = by.field_offset();
    // A first section run on the area of a thread without rseq was turned
    // away by its check, not aborted by the kernel: it is not counted.
    let turned_away = (engine::cpu_id(engine::area()) as i32) < 0;
    let mut aborts = u64::from(first == Some(Outcome::Aborted) && !turned_away);
    let mut fenced = first == Some(Outcome::Fenced);
    while !fenced && aborts < u64::from(RSEQ_ATTEMPTS) {
        let area = engine::area();
        let here = engine::valid_index_in(area, offset) as usize;
        if here != index {
            if engine::cpu_id(area) == crate::abi::CPU_ID_UNINITIALIZED && engine::ensure_thread() {
                continue; // first operation of this thread: sections now run
            }
            // The thread moved: an operation on "this CPU's slot" follows
            // it, one bound to its slot goes on to the fenced path.
            match follow.and_then(|f| f(here)) {
                Some((s, f)) => (shape, fence, index) = (s, f, here),
                None => break, // another slot's CPU, or no rseq on this thread
            }
        }
        let mut spare = None;
        let (check, checked) = testing::fence_to_check(fence, index, shape, &mut spare);
        // SAFETY: `area` is the thread's live area and it runs on slot
        // `index` (just read); the shape is the caller's, its commit word
        // counted from `check`.
        match unsafe { arch::section(area, offset, check, &checked, order) } {
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
    fence::with_signals_blocked(fence, index, by, || unsafe { shape.apply(fence, order) })
}
