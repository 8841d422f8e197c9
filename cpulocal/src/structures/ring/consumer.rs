//! The consumer side of a [`PerCpuRing`]: the walk of a sub-buffer's
//! headers (which the overwriting producer uses too), [`PerCpuRing::consume`]
//! (copy and release complete sub-buffers, report stuck reservations) and the
//! delivery of the copied records to the callback.
//!
//! # Safety
//!
//! This module relies on the part of the ring's protocol (the *Safety*
//! section of the ring's module docs, which the `SAFETY` comments here call
//! the module docs) that concerns the consumer: it reads header words only
//! atomically, and reads data bytes (non-atomically, by copy) only of a
//! sub-buffer whose records are all committed and which is not released: no
//! reservation can be made in it (the full check keeps `head - consumed <=
//! capacity`, reading `consumed` with acquire before writing), and no record
//! in it has a live writer. In overwrite mode a producer may release the
//! oldest sub-buffer and write the next lap there, so the consumer walks the
//! headers and copies only under the release lock, after re-checking
//! `consumed`. The prefetch hint reads nothing.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::PoisonError;
use std::time::Instant;

use super::PerCpuRing;
use crate::structures::ring::config::RingMode;
use crate::structures::ring::record::{
    header_len, record_size, tag_matches, ReadSummary, Record, Stuck, COMMITTED, DROPPED, HEADER,
    PADDING, TAG_MASK,
};
use crate::structures::ring::slots::Buf;

/// Asks the CPU to start loading the cache lines of the `len` bytes from
/// `start` (a hint only: nothing is read, so it races with no writer).
#[inline]
fn prefetch(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..len).step_by(64) {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64; a prefetch never faults and is no
        // memory access.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// The consumer's private state, behind a mutex producers never take.
pub(super) struct ConsumerState {
    /// Per slot: the uncommitted record last seen blocking the consumer,
    /// and since when.
    pub(super) waiting: Vec<Option<(usize, Instant)>>,
    /// One sub-buffer's copy.
    pub(super) scratch: Vec<u8>,
}

/// What the consumer found at a CPU's `consumed`.
pub(super) enum Walk {
    /// Every record of the sub-buffer is reserved and committed; so many are
    /// data records (not padding, not dropped).
    Complete(usize),
    /// The record at this offset, of this payload length, is not committed.
    Uncommitted(usize, usize),
    /// Every reserved record is committed, but `head` is inside the
    /// sub-buffer.
    Partial,
    /// A header that is not this lap's: the sub-buffer was released under us.
    Stale,
    /// (Overwrite mode) `consumed` moved before the locked walk began, or
    /// this thread holds the lock already (a signal handler).
    Moved,
}

impl PerCpuRing {
    /// Walks the sub-buffer at `pos` (= `consumed`) of `slot`, whose head
    /// was read as `head` (with acquire, after `pos`).
    pub(super) fn walk(&self, slot: &Buf, pos: usize, head: usize) -> Walk {
        let sub = self.sub;
        let reserved = head.wrapping_sub(pos).min(sub);
        // The sub-buffer's bytes from `pos` are contiguous in the data.
        let base = slot.byte(pos, self.capacity);
        // The walk is a chain of dependent loads (each header gives the next
        // one's offset): have the lines on their way first.
        prefetch(base, reserved);
        // The header word at `at`; callers pass an `at` below `reserved`.
        let header_at = |at: usize| {
            // SAFETY: 8-aligned (records are) and inside this sub-buffer: a
            // header word, accessed atomically (see `Slot::header`).
            unsafe { AtomicUsize::from_ptr(base.wrapping_add(at).cast()) }.load(Ordering::Relaxed)
        };
        let (mut at, mut records) = (0, 0);
        // Records like the first one (a tracer's events are often one size,
        // all committed): their headers sit at offsets known without reading
        // them, so these loads overlap instead of each waiting for the one
        // before, and each is one comparison with the header expected there
        // (the same flags and length, that offset's tag). The first header
        // that differs ends this loop at a record's start, for the general
        // loop below to judge.
        if reserved > 0 {
            let first = header_at(0);
            if first & COMMITTED != 0 {
                let stride = record_size(header_len(first));
                let same = first & !TAG_MASK;
                let data = usize::from(first & (PADDING | DROPPED) == 0);
                while at + stride <= reserved {
                    let expected = same | ((pos.wrapping_add(at) >> 3) & TAG_MASK);
                    if header_at(at) != expected {
                        break;
                    }
                    records += data;
                    at += stride;
                }
            }
        }
        while at < reserved {
            let h = header_at(at);
            let offset = pos.wrapping_add(at);
            if !tag_matches(h, offset) {
                return Walk::Stale;
            }
            let len = header_len(h);
            if h & COMMITTED == 0 {
                return Walk::Uncommitted(offset, len);
            }
            let size = record_size(len);
            if at + size > sub {
                return Walk::Stale;
            }
            if h & (PADDING | DROPPED) == 0 {
                records += 1;
            }
            at += size;
        }
        // Each committed header was loaded relaxed; this fence makes the
        // payload written before its commit (a store-release) visible, as
        // acquire loads would, with one barrier for the walk.
        core::sync::atomic::fence(Ordering::Acquire);
        if reserved < sub {
            Walk::Partial
        } else {
            Walk::Complete(records)
        }
    }

    /// Reads the complete sub-buffers of every CPU's buffer (at most a
    /// buffer's worth per CPU and call), and calls `f`
    /// with each record in it: CPU after CPU, each CPU's records in the order
    /// of their offsets (so one producer's records on one CPU in the order it
    /// reserved them). A record is handed over after its commit and at most
    /// once; records dropped uncommitted are skipped (counted in
    /// [`lost`](Self::lost)). A sub-buffer with an uncommitted record stops
    /// that CPU's reading until the record is committed or dropped; if the
    /// consumer has seen it waiting longer than
    /// [`RingConfig::stuck_after`](crate::RingConfig::stuck_after), it is
    /// reported in the summary.
    ///
    /// Consumers serialize on an internal mutex: `f` must not call `consume`
    /// (it may write records). Not async-signal-safe. If `f` panics, the
    /// rest of that sub-buffer's records are not delivered.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// for i in 0..3u8 {
    ///     ring.write(&[i]).unwrap();
    /// }
    /// ring.flush();
    /// let mut got = Vec::new();
    /// let summary = ring.consume(|r| got.push((r.cpu(), r.payload()[0])));
    /// assert_eq!(summary.records, 3);
    /// assert!(summary.stuck.is_empty());
    /// // Each CPU's records in order.
    /// for cpu in 0..ring.cpus() {
    ///     let mine: Vec<u8> = got.iter().filter(|g| g.0 == cpu).map(|g| g.1).collect();
    ///     assert!(mine.windows(2).all(|w| w[0] < w[1]));
    /// }
    /// ```
    pub fn consume(&self, mut f: impl FnMut(Record<'_>)) -> ReadSummary {
        let mut state = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        let mut summary = ReadSummary::default();
        let per_call = self.capacity / self.sub;
        for cpu in 0..self.cpus() {
            let slot = &self.slots[cpu].data;
            let mut taken = 0;
            // At most one buffer's worth per CPU and call: a consumer is
            // never held by producers that keep filling a buffer.
            while taken < per_call {
                let pos = self.tails[cpu].consumed.load(Ordering::Acquire);
                let head = slot.head.load(Ordering::Acquire);
                if head.wrapping_sub(pos) < self.sub {
                    // Not closed yet: nothing to take, and walking its headers
                    // would pull in the lines the producers are writing.
                    break;
                }
                match self.walk_and_take(slot, cpu, pos, head, &mut state.scratch) {
                    Walk::Moved => continue, // overwritten meanwhile
                    Walk::Complete(records) => {
                        state.waiting[cpu] = None;
                        taken += 1;
                        summary.sub_buffers += 1;
                        summary.records += records;
                        self.deliver(&state.scratch, records, cpu, pos, &mut f);
                    }
                    Walk::Uncommitted(offset, len) => {
                        if self.tails[cpu].consumed.load(Ordering::Acquire) != pos {
                            continue; // overwritten meanwhile: look again
                        }
                        let now = Instant::now();
                        match state.waiting[cpu] {
                            Some((o, since)) if o == offset => {
                                let waiting = now.saturating_duration_since(since);
                                if waiting >= self.stuck_after {
                                    summary.stuck.push(Stuck {
                                        cpu,
                                        offset: offset as u64,
                                        len,
                                        waiting,
                                    });
                                }
                            }
                            _ => state.waiting[cpu] = Some((offset, now)),
                        }
                        break;
                    }
                    Walk::Partial => {
                        state.waiting[cpu] = None;
                        break;
                    }
                    Walk::Stale => {
                        if self.tails[cpu].consumed.load(Ordering::Acquire) != pos {
                            continue;
                        }
                        break; // a header not visible yet: next time
                    }
                }
            }
        }
        summary.lost = self.lost();
        summary.overwritten = self.overwritten();
        summary
    }

    /// Walks the sub-buffer at `pos` of `cpu`'s buffer and, if it is
    /// complete, copies it into `scratch` and releases it.
    ///
    /// In overwrite mode both run under the buffer's release lock, after
    /// checking that `consumed` is still `pos` ([`Walk::Moved`] if not): a
    /// producer may release the oldest sub-buffer and write the next lap
    /// there, so even reading its headers without the lock could race with a
    /// writer's payload bytes. A sub-buffer with nothing reserved is judged
    /// [`Walk::Partial`] without the lock.
    fn walk_and_take(
        &self,
        slot: &Buf,
        cpu: usize,
        pos: usize,
        head: usize,
        scratch: &mut [u8],
    ) -> Walk {
        let take = |scratch: &mut [u8]| {
            let w = self.walk(slot, pos, head);
            if let Walk::Complete(_) = w {
                // SAFETY: the sub-buffer at `pos` is complete (every record
                // committed, seen with acquire) and not released, so no one
                // writes it until `consumed` moves past it (module docs);
                // `scratch` is `sub` bytes, and the source `sub` bytes from a
                // sub-buffer boundary lie inside the data.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        slot.byte(pos, self.capacity),
                        scratch.as_mut_ptr(),
                        self.sub,
                    );
                }
                self.tails[cpu]
                    .consumed
                    .store(pos.wrapping_add(self.sub), Ordering::Release);
            }
            w
        };
        match self.mode {
            // Only the consumer (serialized) moves `consumed`.
            RingMode::Discard => take(scratch),
            RingMode::Overwrite => {
                if head == pos {
                    return Walk::Partial; // nothing reserved: no header to read
                }
                // Err: a signal handler calling `consume` (not allowed)
                // interrupted this thread's own release; take nothing.
                let Ok(_held) = self.tails[cpu].lock.hold(cpu) else {
                    return Walk::Partial;
                };
                if self.tails[cpu].consumed.load(Ordering::Relaxed) != pos {
                    return Walk::Moved;
                }
                take(scratch)
            }
        }
    }

    /// Calls `f` with each of the `records` data records of a copied
    /// sub-buffer (the count its walk found). If `f` panics, the records it
    /// did not get (the one it was given included) are counted in `lost`, so
    /// the accounting stays exact: the sub-buffer is already released.
    fn deliver(
        &self,
        sub: &[u8],
        records: usize,
        cpu: usize,
        pos: usize,
        f: &mut impl FnMut(Record<'_>),
    ) {
        /// Counts the records not yet handed over when dropped (with the add
        /// shape: sections on `cpu` write `lost` too).
        struct Undelivered<'a> {
            ring: &'a PerCpuRing,
            cpu: usize,
            left: usize,
        }
        impl Drop for Undelivered<'_> {
            fn drop(&mut self) {
                if self.left > 0 {
                    self.ring.count_lost_n(self.cpu, self.left);
                }
            }
        }
        let mut guard = Undelivered {
            ring: self,
            cpu,
            left: records,
        };
        let mut at = 0;
        while at + HEADER <= sub.len() {
            let mut word = [0u8; core::mem::size_of::<usize>()];
            let w = word.len();
            word.copy_from_slice(&sub[at..at + w]);
            let h = usize::from_ne_bytes(word);
            let len = header_len(h);
            if h & (PADDING | DROPPED) == 0 {
                f(Record {
                    cpu,
                    offset: pos.wrapping_add(at) as u64,
                    payload: &sub[at + HEADER..at + HEADER + len],
                });
                guard.left -= 1;
            }
            at += record_size(len);
        }
        debug_assert_eq!(guard.left, 0, "the walk and the copy disagree");
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;
    use crate::structures::ring::config::RingConfig;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Runs of equal records, other sizes, dropped reservations and
        /// padding in any order: the walk (its run of like records and its
        /// general loop) counts exactly the records delivered, in order, and
        /// in overwrite mode everything adds up.
        #[test]
        fn the_walk_counts_what_is_delivered(
            records in proptest::collection::vec((1usize..=40, any::<bool>(), 0u8..4), 1..120),
            overwrite in any::<bool>(),
        ) {
            let any_dropped = records.iter().any(|r| r.1);
            let mode = if overwrite { RingMode::Overwrite } else { RingMode::Discard };
            let config = RingConfig::new().sub_buffer_size(256).sub_buffers(4).mode(mode);
            let (expected, delivered, summary_records, lost, overwritten) = std::thread::spawn(move || {
                assert!(crate::rseq::sys::pin_to_current_cpu());
                let ring = PerCpuRing::with_config(config).unwrap();
                let mut expected = Vec::new();
                for (i, &(len, dropped, repeat)) in records.iter().enumerate() {
                    // Repeats make runs of like records.
                    for r in 0..=repeat {
                        let Ok(mut res) = ring.reserve(len) else { continue };
                        if dropped {
                            drop(res);
                        } else {
                            let tag = [(i as u8).wrapping_mul(7).wrapping_add(r); 1];
                            res.fill(tag[0]);
                            res.commit();
                            expected.push(vec![tag[0]; len]);
                        }
                    }
                }
                ring.flush();
                let mut delivered = Vec::new();
                let mut summary_records = 0;
                loop {
                    let s = ring.consume(|rec| delivered.push(rec.payload().to_vec()));
                    if s.sub_buffers == 0 {
                        break;
                    }
                    summary_records += s.records;
                }
                (expected, delivered, summary_records, ring.lost(), ring.overwritten())
            })
            .join()
            .unwrap();
            prop_assert_eq!(summary_records, delivered.len());
            if overwrite {
                // The newest records survive, in order, after the overwritten.
                let kept = expected.len() - overwritten as usize;
                prop_assert_eq!(&delivered[..], &expected[expected.len() - kept..]);
            } else {
                // Every record committed is delivered; the rest were dropped
                // or refused, counted.
                prop_assert_eq!(&delivered[..], &expected[..]);
                prop_assert!(lost > 0 || !any_dropped);
            }
        }
    }
}
