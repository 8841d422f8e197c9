//! The producer side of a [`PerCpuRing`]: [`reserve`](PerCpuRing::reserve)
//! (its inline common case, the slow path and the reserve shape), the padding
//! record, overwriting the oldest sub-buffer, [`write`](PerCpuRing::write)
//! and [`flush`](PerCpuRing::flush).
//!
//! # Safety
//!
//! This module relies on the part of the ring's protocol (the *Safety*
//! section of the ring's module docs, which the `SAFETY` comments here call
//! the module docs) that concerns the producers: the reserve and padding
//! shapes write only `head` and the header at the current `head`, in a
//! section on the buffer's CPU or under its fence, so one writer at a time;
//! that header is free space while `head` is unchanged, and the room check
//! (reading `consumed` with acquire before `head`) keeps the record within
//! `consumed + capacity`. An overwriting producer releases the oldest
//! sub-buffer only under its release lock, after re-checking `consumed`.
#![allow(unsafe_code)]

use core::sync::atomic::Ordering;

use super::PerCpuRing;
use crate::shape::driver::{At, Follow, Slot};
use crate::shape::Order;
use crate::shape::Shape;
use crate::structures::ring::config::{RingError, RingMode};
use crate::structures::ring::consumer::Walk;
use crate::structures::ring::record::{
    header, record_size, Reservation, COMMITTED, HEADER, PADDING,
};
use crate::structures::ring::slots::Buf;

/// Outcome of one reserve attempt.
enum Overwrite {
    /// The oldest sub-buffer was released (or someone else changed the
    /// buffer): try again.
    Retry,
    /// The oldest sub-buffer has an uncommitted record: counted as lost.
    Busy,
}

impl PerCpuRing {
    /// Fills the rest of the sub-buffer that `old` (the head, not on a
    /// sub-buffer boundary) is in with a committed padding record, if the
    /// head is still `old`. Needs no room check: `head <= consumed +
    /// capacity` and both bounds are sub-buffer aligned, so a head inside a
    /// sub-buffer leaves the whole sub-buffer within the capacity.
    fn pad(&self, cpu: usize, old: usize) -> bool {
        let room = self.sub - (old & (self.sub - 1));
        let shape = move |slot: &Slot<Buf>| Shape::CbneStoreStore {
            vo: Shape::offset(&slot.fence, slot.data.head.as_ptr()),
            expect: old,
            v2: slot.data.header_at(old),
            newv2: header(old, room - HEADER, COMMITTED | PADDING),
            newv: old.wrapping_add(room),
        };
        // SAFETY: buffer `cpu`'s head and the header word at `old`, which is
        // free space while the head is `old` (module docs). Release: a
        // consumer that acquires the head sees the header.
        unsafe { self.perform(cpu, Order::Release, shape) }
    }

    /// Reserves room for a record of `len` payload bytes on the current
    /// CPU's buffer; write the payload through the returned
    /// [`Reservation`] (it dereferences to `&mut [u8]` of exactly `len`
    /// bytes, with unspecified contents) and [`commit`](Reservation::commit)
    /// it. Async-signal-safe.
    ///
    /// # Errors
    ///
    /// - [`RingError::Empty`] for `len == 0`, [`RingError::TooLarge`] above
    ///   [`max_record_len`](Self::max_record_len): nothing counted.
    /// - [`RingError::Full`] (discard mode) or [`RingError::OldestBusy`]
    ///   (overwrite mode): the buffer had no room; counted in `lost`.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{PerCpuRing, RingError};
    /// let ring = PerCpuRing::new(Default::default());
    /// let mut r = ring.reserve(8).unwrap();
    /// r.copy_from_slice(&42u64.to_le_bytes());
    /// r.commit();
    /// assert_eq!(ring.reserve(0).err(), Some(RingError::Empty));
    /// assert!(matches!(ring.reserve(1 << 20), Err(RingError::TooLarge { .. })));
    /// ```
    #[inline(always)]
    pub fn reserve(&self, len: usize) -> Result<Reservation<'_>, RingError> {
        // The common case inline: a length in range, room in the current
        // sub-buffer and in the buffer, and the head unchanged (the shape's
        // first critical section is inline too; aborts and other CPUs go
        // out of line in `Slots::perform`). Errors, padding, a full buffer
        // or a lost race go to `reserve_slow`, which starts over.
        if len.wrapping_sub(1) < self.max_record_len() {
            let at = self.slots.here();
            let size = record_size(len);
            // `consumed` first: then `consumed <= old` (both only grow).
            let consumed = self.tails[at.index].consumed.load(Ordering::Acquire);
            let old = at.slot.data.head.load(Ordering::Relaxed);
            let used = old & (self.sub - 1);
            let fits = used == 0 || used + size <= self.sub;
            if fits && old.wrapping_add(size).wrapping_sub(consumed) <= self.capacity {
                // SAFETY: as in `try_reserve`, whose first attempt this is.
                if unsafe { self.try_reserve(at, old, len) } {
                    return Ok(self.reservation(at.index, old, len));
                }
            }
        }
        self.reserve_slow(len)
    }

    /// [`reserve`](Self::reserve) from the start, every case: errors,
    /// padding, full buffers, lost races and the fenced path.
    #[cold]
    #[inline(never)]
    fn reserve_slow(&self, len: usize) -> Result<Reservation<'_>, RingError> {
        if len == 0 {
            return Err(RingError::Empty);
        }
        if len > self.max_record_len() {
            return Err(RingError::TooLarge {
                len,
                max: self.max_record_len(),
            });
        }
        let size = record_size(len);
        loop {
            let at = self.slots.here();
            let cpu = at.index;
            let slot = &at.slot.data;
            // `consumed` first: then `consumed <= old` (both only grow).
            let consumed = self.tails[cpu].consumed.load(Ordering::Acquire);
            let old = slot.head.load(Ordering::Relaxed);
            let used = old & (self.sub - 1);
            if used != 0 && used + size > self.sub {
                self.pad(cpu, old);
                continue;
            }
            if old.wrapping_add(size).wrapping_sub(consumed) > self.capacity {
                match self.mode {
                    RingMode::Discard => {
                        self.count_lost(cpu);
                        return Err(RingError::Full { cpu });
                    }
                    RingMode::Overwrite => match self.overwrite_oldest(cpu, consumed) {
                        Overwrite::Retry => continue,
                        Overwrite::Busy => return Err(RingError::OldestBusy { cpu }),
                    },
                }
            }
            // SAFETY: `old` was read after `consumed` and leaves room for
            // the record below `consumed + capacity`, inside one sub-buffer.
            if unsafe { self.try_reserve(at, old, len) } {
                return Ok(self.reservation(cpu, old, len));
            }
            // Another reservation on that buffer came first: read it again.
        }
    }

    /// One reservation of `len` payload bytes at `old` on buffer `at`, if
    /// its head is still `old`: the store-store shape writing the record's
    /// header (not committed), then committing `head += size`; false if the
    /// head moved.
    ///
    /// # Safety
    ///
    /// `old` was read from `at`'s head after its `consumed`, is not on a
    /// position where the record would straddle a sub-buffer end, and
    /// `old + size - consumed <= capacity`.
    #[inline(always)]
    unsafe fn try_reserve(&self, at: At<'_, Buf>, old: usize, len: usize) -> bool {
        let shape = move |slot: &Slot<Buf>| Shape::CbneStoreStore {
            vo: Shape::offset(&slot.fence, slot.data.head.as_ptr()),
            expect: old,
            v2: slot.data.header_at(old),
            newv2: header(old, len, 0),
            newv: old.wrapping_add(record_size(len)),
        };
        // SAFETY: buffer `at`'s head and the header word at `old`, free
        // space while the head is `old`, within the capacity (checked against
        // a `consumed` no newer than now, caller). Release: a consumer that
        // acquires the head sees the header.
        unsafe { self.slots.perform(at, Order::Release, Follow::Slot, shape) }.is_ok()
    }

    /// The reservation [`try_reserve`](Self::try_reserve) made.
    #[inline(always)]
    fn reservation(&self, cpu: usize, offset: usize, len: usize) -> Reservation<'_> {
        Reservation {
            ring: self,
            cpu,
            offset,
            len,
            at: self.slots[cpu].data.byte(offset, self.capacity),
        }
    }

    /// Overwrite mode, buffer `cpu` full with `consumed` as read: with the
    /// buffer's release lock, releases the oldest sub-buffer if all its
    /// records are committed (counting them as overwritten), else counts the
    /// new record lost. No fence: see
    /// [`Tail::lock`](crate::structures::ring::slots::Tail::lock).
    fn overwrite_oldest(&self, cpu: usize, seen: usize) -> Overwrite {
        let slot = &self.slots[cpu].data;
        let outcome = match self.tails[cpu].lock.hold(cpu) {
            // This thread holds it: a signal handler interrupted its own
            // thread's release of this buffer, and cannot wait for it.
            Err(_) => Walk::Moved,
            Ok(_held) => {
                let consumed = self.tails[cpu].consumed.load(Ordering::Relaxed);
                // Acquire: the headers written before the head moved on.
                let head = slot.head.load(Ordering::Acquire);
                if consumed != seen || head.wrapping_sub(consumed) < self.sub {
                    return Overwrite::Retry; // released meanwhile: room now
                }
                match self.walk(slot, consumed, head) {
                    Walk::Complete(records) => {
                        // Only lock holders write these two.
                        slot.overwritten.fetch_add(records, Ordering::Relaxed);
                        self.tails[cpu]
                            .consumed
                            .store(consumed.wrapping_add(self.sub), Ordering::Release);
                        return Overwrite::Retry;
                    }
                    w => w,
                }
            }
        };
        // An uncommitted record, or the lock was this thread's: refuse the
        // record, counted. `Partial` and `Stale` cannot happen: with the head
        // (acquired) past the sub-buffer, every header there is this lap's
        // and visible; were they to, refusing beats retrying forever.
        debug_assert!(
            matches!(outcome, Walk::Uncommitted(..) | Walk::Moved),
            "oldest sub-buffer inconsistent under its lock"
        );
        self.count_lost(cpu);
        Overwrite::Busy
    }

    /// Reserves, copies `payload` in and commits: a record in one call.
    /// Async-signal-safe.
    ///
    /// # Errors
    ///
    /// As [`reserve`](Self::reserve).
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// ring.write(b"event").unwrap();
    /// ring.flush();
    /// assert_eq!(ring.consume(|r| assert_eq!(r.payload(), b"event")).records, 1);
    /// ```
    #[inline]
    pub fn write(&self, payload: &[u8]) -> Result<(), RingError> {
        let mut r = self.reserve(payload.len())?;
        r.copy_from_slice(payload);
        r.commit();
        Ok(())
    }

    /// Closes every CPU's partly filled sub-buffer with a padding record, so
    /// that the records reserved so far can be consumed once committed
    /// (a tracer's periodic or final flush). Runs on each CPU's buffer
    /// through its fence, from any CPU. Records reserved later go to the next
    /// sub-buffer. Async-signal-safe, but it visits every CPU: not for hot
    /// paths.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// ring.write(b"a").unwrap();
    /// assert_eq!(ring.consume(|_| {}).records, 0); // sub-buffer not full yet
    /// ring.flush();
    /// assert_eq!(ring.consume(|_| {}).records, 1);
    /// ```
    pub fn flush(&self) {
        for cpu in 0..self.cpus() {
            loop {
                let old = self.slots[cpu].data.head.load(Ordering::Relaxed);
                if old & (self.sub - 1) == 0 || self.pad(cpu, old) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::ring::config::RingConfig;

    /// A signal handler that interrupts its own thread while that thread
    /// releases the oldest sub-buffer (overwrite mode, buffer full) cannot
    /// wait for the release lock: its record is refused and counted, and the
    /// buffer overwrites again once the lock is back.
    #[test]
    fn overwrite_refuses_when_this_thread_holds_the_release_lock() {
        std::thread::spawn(|| {
            assert!(crate::rseq::sys::pin_to_current_cpu());
            let config = RingConfig::new()
                .sub_buffer_size(64)
                .sub_buffers(2)
                .mode(RingMode::Overwrite);
            let ring = PerCpuRing::with_config(config).unwrap();
            // 8-byte payloads take 16 bytes: 4 per sub-buffer, 8 fill it.
            let first = ring.reserve(8).unwrap();
            let cpu = first.cpu();
            first.commit();
            for _ in 1..8 {
                ring.write(&[0; 8]).unwrap();
            }
            let held = ring.tails[cpu].lock.hold(cpu).expect("free");
            assert!(ring.tails[cpu].lock.hold(cpu).is_err());
            assert_eq!(ring.write(&[1; 8]), Err(RingError::OldestBusy { cpu }));
            assert_eq!(ring.counts_on(cpu).unwrap(), (1, 0));
            drop(held);
            ring.write(&[2; 8]).unwrap();
            assert_eq!(ring.counts_on(cpu).unwrap(), (1, 4));
        })
        .join()
        .unwrap();
    }
}
