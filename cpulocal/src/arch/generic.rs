//! The engine for targets without rseq asm: no critical sections exist, so the
//! engine never has a registered area and every operation is fenced.
//!
//! # Safety
//!
//! The functions are `unsafe` only to share their signature with the rseq
//! engine; they touch no memory.

#![allow(unsafe_code)]

use super::Outcome;
use crate::abi::Rseq;
use crate::fence::Fence;
use crate::percpu::CounterSlot;
use crate::shape::Shape;

/// This target has no critical sections.
pub(crate) const HAS_RSEQ: bool = false;

/// Never called: sections are only attempted with a registered area, which this
/// engine never has.
///
/// # Safety
///
/// None needed; it reads and writes nothing.
#[inline(always)]
pub(crate) unsafe fn add(_: *mut Rseq, _: usize, _: *const CounterSlot, _: i64) -> Outcome {
    Outcome::Aborted
}

/// As [`add`].
///
/// # Safety
///
/// None needed; it reads and writes nothing.
#[inline(always)]
pub(crate) unsafe fn section(_: *mut Rseq, _: usize, _: *const Fence, _: &Shape) -> Outcome {
    Outcome::Aborted
}

/// As [`add`].
///
/// # Safety
///
/// None needed; it reads and writes nothing.
#[cfg(feature = "testing")]
#[inline(always)]
pub(crate) unsafe fn add_without_fence_check(
    _: *mut Rseq,
    _: usize,
    _: u32,
    _: *const CounterSlot,
    _: i64,
) -> Outcome {
    Outcome::Aborted
}

/// Unused without sections; null.
pub(crate) fn thread_pointer() -> *mut u8 {
    core::ptr::null_mut()
}
