//! One CPU's words of a [`PerCpuRing`](super::PerCpuRing), which the
//! producer and the consumer share: [`Buf`] (the slot's data: `head`, the
//! counts, the buffer's bytes) and [`Tail`] (`consumed` and the release lock,
//! on a line of their own).
//!
//! # Safety
//!
//! [`Buf`] hands out the address of any byte of the data and an atomic view
//! of any header word, 8-aligned (records are) and inside the data. Those who
//! use them follow the ring's protocol (the *Safety* section of the ring's
//! module docs, which the `SAFETY` comments here call the module docs); what
//! this module relies on is its rule for header words: they are accessed with
//! atomics while anyone else may access them.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::sync::atomic::AtomicUsize;

use crate::fenced::fence::Fence;

/// One CPU's producer words (after the slot's fence, in one padded line):
/// head and counts; the data out of line, and `consumed` with its lock in
/// another line ([`PerCpuRing::tails`](super::PerCpuRing::tails)), so that
/// releasing a sub-buffer does not steal the line every reservation writes.
pub(super) struct Buf {
    /// Absolute offset of the next reservation.
    pub(super) head: AtomicUsize,
    /// Records refused or dropped.
    pub(super) lost: AtomicUsize,
    /// Records overwritten unread (overwrite mode).
    pub(super) overwritten: AtomicUsize,
    /// `capacity` bytes, 8-aligned.
    pub(super) data: Box<[UnsafeCell<u64>]>,
}

/// The words of the side that releases sub-buffers.
pub(super) struct Tail {
    /// Absolute offset released so far (sub-buffer aligned).
    pub(super) consumed: AtomicUsize,
    /// Overwrite mode: held by the overwriting producer or the consumer that
    /// releases the oldest sub-buffer, while it walks (and the consumer
    /// copies) it. A lock word like a fence's (holder id, polite waiting),
    /// but no membarrier and no signal blocking: critical sections never
    /// write `consumed`, `overwritten` or the headers of a closed sub-buffer,
    /// so its holder needs them stopped no more than they need it stopped.
    pub(super) lock: Fence,
}

impl Buf {
    /// Address of the byte at absolute offset `offset`.
    #[inline]
    pub(super) fn byte(&self, offset: usize, capacity: usize) -> *mut u8 {
        // `UnsafeCell` lets the bytes be written through this shared borrow.
        self.data
            .as_ptr()
            .cast::<u8>()
            .cast_mut()
            .wrapping_add(offset & (capacity - 1))
    }

    /// The header word at absolute offset `offset` (8-aligned), as a shape
    /// names it: from the buffer alone (its length is the capacity), so that
    /// a shape's closure need not hold the ring.
    #[inline(always)]
    pub(super) fn header_at(&self, offset: usize) -> *mut usize {
        self.header(offset, self.data.len() * 8).as_ptr()
    }

    /// The header word at absolute offset `offset` (8-aligned).
    #[inline]
    fn header(&self, offset: usize, capacity: usize) -> &AtomicUsize {
        // SAFETY: 8-aligned (records are) and inside the data; data bytes
        // are only ever accessed as the module docs say, header words with
        // atomics while anyone else may access them.
        unsafe { AtomicUsize::from_ptr(self.byte(offset, capacity).cast()) }
    }
}
