//! The operation shapes: each described once, here, and run by two engines.
//!
//! [`Shape`] names an operation and its operands. [`Shape::apply`] is its
//! meaning, as ordinary code: the fenced engine runs exactly that, with the
//! slot's fence held. The rseq engine (`crate::rseq::arch`) runs the same
//! operation as one restartable sequence (on x86_64: `rseq/arch/x86_64.rs`, one
//! asm block per shape); the differential tests (`shape/tests.rs`) hold the
//! two to each other on random inputs, in both orders and both index modes.
//! Which engine runs an operation, and when, is the driver's business
//! (`crate::shape::driver`): this module only says what an operation means.
//!
//! # Safety
//!
//! A `Shape`'s pointers are valid as the public method that built it requires
//! ([`Domain`](crate::Domain)); the words it names belong to one slot and are
//! written only by that slot's operations, so under the slot's fence (after
//! the membarrier) they are the fence holder's alone.
#![allow(unsafe_code)]

pub(crate) mod driver;
#[cfg(test)]
mod tests;

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::fenced::fence::Fence;

/// Whether an operation's final store publishes the stores before it.
///
/// `Release` makes the commit a store-release: a thread that reads the
/// committed value with an acquire load also sees everything written before
/// it (the speculative store of `cbne_store_store`, the copied bytes of
/// `cbne_memcpy_store`, and the caller's own earlier writes). On x86_64 every
/// store is a release store, so both variants are the same instructions there;
/// the fenced engine and other architectures honour the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// The final store is a plain (relaxed) store.
    #[default]
    Relaxed,
    /// The final store is a store-release.
    Release,
}

/// A compare in an operation found a value other than the one it required;
/// nothing was stored. A normal outcome: the caller reloads and decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("the compared word did not hold the expected value; nothing was stored")]
pub struct CompareFailed;

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
    /// [`Slots::node_atomics`](crate::shape::driver::Slots::node_atomics)).
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
