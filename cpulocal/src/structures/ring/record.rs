//! The ring's records: the header word's encoding (flags, payload length,
//! position tag) and the records' handles: [`Reservation`] (room reserved,
//! to commit or drop), [`Record`] (one handed to the consumer's callback),
//! and what a read reports, [`Stuck`] and [`ReadSummary`].
//!
//! # Safety
//!
//! A [`Reservation`] holds a pointer to its record in its CPU's data, and
//! relies on the ring's protocol (the *Safety* section of the ring's module
//! docs, which the `SAFETY` comments here call the module docs): once `head`
//! has passed a reserved record, its header word is written by nobody but its
//! reservation (commit, drop), with atomic stores, while others only read it;
//! its payload bytes are the reservation's alone until it commits; and a
//! record never crosses a sub-buffer end, so its payload lies inside the
//! data.
#![allow(unsafe_code)]

use core::fmt;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::PerCpuRing;

/// Header flag: the record is complete (or dropped, or padding).
pub(super) const COMMITTED: usize = 1 << (usize::BITS - 1);
/// Header flag: the record is padding up to the end of its sub-buffer.
pub(super) const PADDING: usize = 1 << (usize::BITS - 2);
/// Header flag: the reservation was dropped without a commit.
pub(super) const DROPPED: usize = 1 << (usize::BITS - 3);
/// Bits of the payload length in a header.
pub(super) const LEN_BITS: u32 = if usize::BITS >= 64 { 24 } else { 13 };
/// Bits of the position tag in a header (the low bits).
const TAG_BITS: u32 = usize::BITS - 3 - LEN_BITS;
pub(super) const TAG_MASK: usize = (1 << TAG_BITS) - 1;
const LEN_MASK: usize = (1 << LEN_BITS) - 1;
/// Bytes of a header (and the alignment of every record).
pub(super) const HEADER: usize = 8;

/// The header of a record at absolute offset `offset`.
pub(super) fn header(offset: usize, len: usize, flags: usize) -> usize {
    debug_assert!(len <= LEN_MASK);
    flags | (len << TAG_BITS) | ((offset >> 3) & TAG_MASK)
}

pub(super) fn tag_matches(h: usize, offset: usize) -> bool {
    h & TAG_MASK == (offset >> 3) & TAG_MASK
}

pub(super) fn header_len(h: usize) -> usize {
    (h >> TAG_BITS) & LEN_MASK
}

/// Bytes a record of `len` payload bytes takes.
pub(super) fn record_size(len: usize) -> usize {
    HEADER + len.next_multiple_of(8)
}

/// Room for one record on one CPU's buffer, from
/// [`PerCpuRing::reserve`]: dereferences to the payload bytes (exactly the
/// reserved length, contents unspecified), which are the holder's alone until
/// [`commit`](Self::commit). Dropping it uncommitted turns the record into
/// padding counted as lost.
///
/// It may be committed on any CPU, and from another thread (it is `Send`):
/// the commit lands on the buffer it was reserved on.
///
/// # Examples
///
/// ```
/// let ring = cpulocal::PerCpuRing::new(Default::default());
/// let mut r = ring.reserve(3).unwrap();
/// assert_eq!(r.len(), 3);
/// r.copy_from_slice(b"abc");
/// let cpu = r.cpu();
/// std::thread::scope(|s| s.spawn(move || r.commit()).join().unwrap()); // on `cpu`'s buffer
/// ring.flush();
/// ring.consume(|rec| assert_eq!((rec.cpu(), rec.payload()), (cpu, &b"abc"[..])));
/// ```
#[must_use = "a reservation dropped without commit() becomes padding counted as lost"]
pub struct Reservation<'a> {
    pub(super) ring: &'a PerCpuRing,
    pub(super) cpu: usize,
    pub(super) offset: usize,
    pub(super) len: usize,
    /// The record's first byte (its header) in buffer `cpu`'s data.
    pub(super) at: *mut u8,
}

// SAFETY: the record's header is accessed with atomics and its payload is
// the reservation's alone (module docs), whichever thread holds it.
unsafe impl Send for Reservation<'_> {}
// SAFETY: `&Reservation` only reads the payload, as a `&[u8]` would.
unsafe impl Sync for Reservation<'_> {}

impl Reservation<'_> {
    /// The buffer (CPU or concurrency id) the record was reserved on.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// assert!(ring.reserve(1).unwrap().cpu() < ring.cpus());
    /// ```
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The record's absolute offset in its CPU's buffer: what
    /// [`Record::offset`] will say.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// let r = ring.reserve(1).unwrap();
    /// assert_eq!(r.offset() % 8, 0);
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset as u64
    }

    #[inline]
    fn header(&self) -> &AtomicUsize {
        // SAFETY: `at` is the record's header word: 8-aligned, in the data,
        // accessed with atomics while others may read it (module docs).
        unsafe { AtomicUsize::from_ptr(self.at.cast()) }
    }

    /// Publishes the record: one store-release of its header, into the
    /// buffer it was reserved on, from whatever CPU this runs on. No fence,
    /// no critical section: the header is this reservation's alone (module
    /// docs). Async-signal-safe.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// let mut r = ring.reserve(2).unwrap();
    /// r[0] = 1;
    /// r[1] = 2;
    /// r.commit();
    /// ring.flush();
    /// assert_eq!(ring.consume(|rec| assert_eq!(rec.payload(), [1, 2])).records, 1);
    /// ```
    #[inline]
    pub fn commit(self) {
        self.header()
            .store(header(self.offset, self.len, COMMITTED), Ordering::Release);
        core::mem::forget(self);
    }
}

impl Deref for Reservation<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: the payload bytes of a reserved, uncommitted record are the
        // reservation's alone (module docs), inside the data (a record never
        // crosses a sub-buffer end).
        unsafe { core::slice::from_raw_parts(self.at.add(HEADER), self.len) }
    }
}

impl DerefMut for Reservation<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow.
        unsafe { core::slice::from_raw_parts_mut(self.at.add(HEADER), self.len) }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.header().store(
            header(self.offset, self.len, COMMITTED | DROPPED),
            Ordering::Release,
        );
        self.ring.count_lost(self.cpu);
    }
}

impl fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("cpu", &self.cpu)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// One record handed to [`PerCpuRing::consume`]'s callback.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub(super) cpu: usize,
    pub(super) offset: u64,
    pub(super) payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// The buffer (CPU or concurrency id) it was reserved on.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// ring.write(b"x").unwrap();
    /// ring.flush();
    /// ring.consume(|r| assert!(r.cpu() < cpulocal::possible_cpus()));
    /// ```
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Its absolute offset in that buffer: grows with each record, so it
    /// orders a CPU's records.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// ring.write(b"x").unwrap();
    /// ring.flush();
    /// ring.consume(|r| assert_eq!(r.offset() % 8, 0));
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The payload bytes, as committed.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(Default::default());
    /// ring.write(b"xyz").unwrap();
    /// ring.flush();
    /// ring.consume(|r| assert_eq!(r.payload(), b"xyz"));
    /// ```
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// A reservation the consumer has been waiting on for longer than
/// [`RingConfig::stuck_after`](crate::RingConfig::stuck_after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stuck {
    /// Its buffer.
    pub cpu: usize,
    /// Its absolute offset ([`Reservation::offset`]).
    pub offset: u64,
    /// Its payload length.
    pub len: usize,
    /// How long the consumer has seen it uncommitted.
    pub waiting: Duration,
}

/// What one [`PerCpuRing::consume`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadSummary {
    /// Records handed to the callback.
    pub records: usize,
    /// Sub-buffers read and released.
    pub sub_buffers: usize,
    /// Reservations blocking the consumer past the timeout, one per CPU at
    /// most.
    pub stuck: Vec<Stuck>,
    /// [`PerCpuRing::lost`] after this read.
    pub lost: u64,
    /// [`PerCpuRing::overwritten`] after this read.
    pub overwritten: u64,
}
