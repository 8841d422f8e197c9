//! The engine for targets without rseq asm: no critical sections exist, so the
//! engine never has a registered area and every operation is fenced.
//!
//! # Safety
//!
//! [`section`] is `unsafe` only to share its signature with the rseq engine;
//! it touches no memory.

#![allow(unsafe_code)]

use super::Outcome;
use crate::fenced::fence::Fence;
use crate::rseq::abi::Rseq;
use crate::shape::Order;
use crate::shape::Shape;

/// Never called: sections are only attempted with a registered area, which this
/// engine never has.
///
/// # Safety
///
/// None needed; it reads and writes nothing.
#[inline(always)]
pub(crate) unsafe fn section(
    _: *mut Rseq,
    _: usize,
    _: *const Fence,
    _: &Shape,
    _: Order,
) -> Outcome {
    Outcome::Aborted
}
