//! [`PerCpuRing`]: a per-CPU ring buffer of variable-length records with
//! reserve/commit, for tracers: a writer reserves room on its CPU's buffer
//! with one restartable sequence, fills the payload in place, and commits
//! with one store, from whatever CPU it runs on by then.
//!
//! # Layout
//!
//! Each CPU (or concurrency id, see [`Index`]) has a buffer of
//! `sub_buffers × sub_buffer_size` bytes (both powers of two, at least two
//! sub-buffers), and a slot of control words next to its fence:
//!
//! - `head`: the absolute byte offset of the next reservation. It only grows
//!   (wrapping at `usize::MAX`); byte `o` lives at `o mod capacity`.
//! - `consumed`: the absolute offset up to which sub-buffers were released
//!   (read by the consumer, or overwritten); a multiple of the sub-buffer
//!   size, never past `head`. Invariant: `head - consumed <= capacity`.
//!   On its own cache line, with the *release lock* (overwrite mode: held by
//!   whoever releases the oldest sub-buffer, see *Modes*).
//! - `lost`, `overwritten`: exact counts of records lost and overwritten.
//!
//! # Record format
//!
//! A record is an 8-byte-aligned header word followed by the payload, padded
//! to a multiple of 8 bytes: it takes `8 + round_up(len, 8)` bytes. The
//! header (a `usize`, written with whole-word stores) holds, from the top:
//! `COMMITTED`, `PADDING`, `DROPPED`, then the payload length
//! ([`LEN_BITS`](record::LEN_BITS) bits), then a position tag: the record's
//! absolute offset / 8, truncated. A header at offset `o` whose tag is not
//! `o`'s is left over from another lap and is not a record.
//!
//! A record never straddles two sub-buffers: a reservation that does not fit
//! in the rest of the current sub-buffer first fills that rest with a
//! committed `PADDING` record. The largest payload is therefore
//! `sub_buffer_size - 8` bytes ([`PerCpuRing::max_record_len`]); zero-length
//! and longer reservations are refused with a typed error.
//!
//! # Reserve and commit
//!
//! `reserve(len)` on the current CPU's buffer `c` reads `consumed` (acquire)
//! then `head`, checks `head + size - consumed <= capacity`, and runs one
//! store-store shape on `c`'s slot: if `head` is still what it read, write
//! the record's header (tag, length, not committed), then commit `head +=
//! size` with a store-release. On `c` this is a restartable sequence; after
//! a migration or repeated aborts it runs under `c`'s fence. The reservation
//! remembers `(c, offset, len)`; its payload bytes are the reserver's alone
//! until it commits.
//!
//! `commit` is one store-release of the header with `COMMITTED` set, into
//! buffer `c` (the reservation's), from any CPU, without a fence and without
//! a critical section. That is correct because, once `head` has passed it, a
//! record's header word is written by nobody but its reservation (aborted
//! sections and fenced operations only write the header at the current
//! `head`, which is past it; the consumer and the overwriter only read it).
//! Completion is then found by the consumer walking the headers, so there is
//! no per-CPU commit counter that would need an operation on `c`: this is how
//! "commit applies to the reserving CPU's buffer" holds after any migration.
//!
//! A [`Reservation`] dropped without `commit` (an early return, a panic)
//! marks its header `DROPPED | COMMITTED`: the consumer skips it as padding,
//! and it counts in `lost`.
//!
//! # Modes
//!
//! - [`RingMode::Discard`]: a reservation that does not fit is refused
//!   ([`RingError::Full`]) and counted in the CPU's `lost`, exactly (an add
//!   shape on `c`'s slot).
//! - [`RingMode::Overwrite`]: a reservation that does not fit takes `c`'s
//!   *release lock* (a lock word beside `consumed`, see *Safety*) and, if
//!   every record of the oldest sub-buffer is committed, counts them in
//!   `overwritten` and releases that sub-buffer (advances `consumed`), then
//!   retries. If a record there is still uncommitted (a writer is inside it,
//!   or a reservation is stuck) it is not overwritten: the new record is
//!   refused ([`RingError::OldestBusy`]) and counted in `lost` instead. No
//!   system call: one lock, a walk of the headers, two stores.
//!
//! So in discard mode `delivered + lost` equals the records reserved or
//! refused, and in overwrite mode `delivered + overwritten + lost` does.
//!
//! # Consumer
//!
//! [`PerCpuRing::consume`] reads, for every CPU in turn, each *complete*
//! sub-buffer at `consumed`: `head` is past its end and every record in it is
//! committed (headers loaded with acquire, so the payloads written before
//! each commit are visible). It copies the sub-buffer out, releases it
//! (`consumed += sub_buffer_size`, store-release), and hands the records to a
//! callback in offset order. In overwrite mode the copy and the release run
//! under `c`'s release lock, re-checking `consumed`, so an overwriting
//! producer and the consumer never both take a sub-buffer; in discard mode
//! only the consumer moves `consumed`, and it needs no lock. A record is therefore
//! never returned before its commit, and never twice. A partly filled
//! sub-buffer is read once it fills, or after [`PerCpuRing::flush`] pads it.
//!
//! # Stuck reservations
//!
//! A reservation that is held and never committed (its writer hangs or was
//! leaked with `mem::forget`) keeps its sub-buffer, and the records after
//! it, from the consumer: they are never skipped. The consumer looks at a
//! sub-buffer only once it is closed (`head` past its end: filled by later
//! records, or padded by [`PerCpuRing::flush`]), so as not to pull in the
//! lines producers are writing. Once the consumer has seen
//! the same record uncommitted for longer than
//! [`RingConfig::stuck_after`], each `consume` reports it in
//! [`ReadSummary::stuck`]. The clock starts when a `consume` first finds it
//! waiting (a reservation carries no timestamp), so with `consume` called
//! every T, a stuck record is reported between `stuck_after` and
//! `stuck_after + T` after that first sighting. A commit (or drop) releases
//! it.
//!
//! # Signals
//!
//! `reserve`, `write`, `commit` and dropping a reservation are
//! async-signal-safe: no allocation, and the only locks they may take are a
//! fence, with all signals blocked, and (overwrite mode, full buffer) a
//! release lock, which a handler that finds its own thread holding it does
//! not wait for: the handler's record is refused ([`RingError::OldestBusy`],
//! counted lost). (As everywhere in cpulocal, a thread's
//! very first operation may register rseq and allocate; call
//! [`current_cpu()`](crate::current_cpu) once in threads whose handlers
//! write records.) A handler may write records while its thread holds a
//! reservation on the same CPU: the handler's record comes after it, and both
//! are delivered, unless the buffer is full (then the handler's record is
//! refused and counted like any other). `flush` is too (it visits every
//! CPU's fence); `consume` is not (it locks the consumer mutex).
//!
//! # Safety
//!
//! Data bytes are written as follows, and never otherwise: the header at the
//! current `head` by the reserve and padding shapes (sections on `c` or under
//! `c`'s fence, so one writer at a time); a reserved record's header by its
//! reservation (commit, drop), with atomic stores; its payload through the
//! reservation's `&mut [u8]`, only between reserve and commit. The consumer
//! reads (non-atomically, by copy) only a sub-buffer whose records are all
//! committed and which is not released: no reservation can be made in it
//! (the full check keeps `head - consumed <= capacity`, reading `consumed`
//! with acquire before writing), and no record in it has a live writer. In
//! overwrite mode a producer may release the oldest sub-buffer and write the
//! next lap there, so the consumer walks the headers and copies only under
//! the release lock, after re-checking `consumed`. If the consumer's
//! callback panics, the records it did not get are counted in `lost`.
//!
//! The release lock needs no membarrier, unlike a fence: critical sections
//! (reserve, pad, lost count) write only `head`, `lost` and the header at
//! `head`, which lies outside the closed oldest sub-buffer, and never
//! `consumed` or `overwritten`, which only release-lock holders (and, in
//! discard mode, the one consumer) write. So a section in flight can neither
//! change what the holder reads nor lose what it writes. The holder loads
//! `head` with acquire, which makes the headers written before it visible
//! (the reserve shape commits `head` with a store-release).
//!
//! This module relies on that protocol for `Send` and `Sync` and for the
//! shape it runs on a slot (the lost count), and on all-zero bytes being a
//! valid `UnsafeCell<u64>` (0) for the zeroed buffers. The submodules hold
//! the rest: `config` ([`RingConfig`], [`RingMode`], [`RingError`]; no unsafe
//! code) and, each with a *Safety* section saying which part of the protocol
//! it relies on, `record` (the header encoding, [`Reservation`], [`Record`]),
//! `slots` (one CPU's words), `producer` (reserve, padding, overwrite, write,
//! flush) and `consumer` (the walk, [`consume`](PerCpuRing::consume)).
#![allow(unsafe_code)]

mod config;
mod consumer;
mod producer;
mod record;
mod slots;

pub use config::{RingConfig, RingError, RingMode};
pub use record::{ReadSummary, Record, Reservation, Stuck};

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::fenced::fence::Fence;
use crate::shape::driver::{zeroed_slice, Follow, Slot, Slots};
use crate::shape::Order;
use crate::shape::Shape;
use crate::stats::PathStats;
use crate::Error;
use crate::Index;
use consumer::ConsumerState;
use record::HEADER;
use slots::{Buf, Tail};

/// A per-CPU ring buffer of variable-length byte records with
/// reserve/commit, for tracers: [`reserve`](Self::reserve) takes room on the
/// current CPU's buffer with one restartable sequence, the caller writes the
/// payload in place and [`commit`](Reservation::commit)s, on any CPU (the
/// record stays on the buffer it was reserved on); [`consume`](Self::consume)
/// hands complete sub-buffers' records to a callback, per CPU in order.
///
/// # Layout and record format
///
/// Each CPU's buffer is `sub_buffers × sub_buffer_size` bytes (powers of two,
/// at least two sub-buffers; 8 × 4 KiB by default, see [`RingConfig`]). A
/// record is an 8-byte header word (committed / padding / dropped flags, the
/// payload length, a position tag) followed by the payload padded to a
/// multiple of 8. A record never straddles sub-buffers: one that does not fit
/// in the rest of the current sub-buffer first fills it with padding. So the
/// largest payload is the sub-buffer size minus 8
/// ([`max_record_len`](Self::max_record_len)); `reserve(0)` and longer
/// reservations are typed errors ([`RingError::Empty`],
/// [`RingError::TooLarge`]).
///
/// # Full buffers
///
/// [`RingMode::Discard`] refuses new records ([`RingError::Full`]) and
/// counts them in [`lost`](Self::lost). [`RingMode::Overwrite`] overwrites
/// the oldest sub-buffer and counts its records in
/// [`overwritten`](Self::overwritten), unless a record there is still
/// uncommitted: then the new record is refused ([`RingError::OldestBusy`])
/// and counted lost. Both counts are exact, per CPU
/// ([`counts_on`](Self::counts_on)): every record reserved or refused is
/// delivered, lost or overwritten, exactly once.
///
/// # Commit, drop, stuck
///
/// A commit is one store-release of the record's header, in the reserving
/// CPU's buffer, from any CPU: no fence, no critical section, since that
/// word belongs to the reservation alone. A [`Reservation`] dropped
/// uncommitted becomes padding counted as lost. One held uncommitted blocks
/// the consumer on its CPU (later records of that buffer are never returned
/// before it); after [`RingConfig::stuck_after`] the consumer reports it in
/// [`ReadSummary::stuck`] at every read until it is committed or dropped.
///
/// # Signals
///
/// [`reserve`](Self::reserve), [`write`](Self::write),
/// [`commit`](Reservation::commit) and dropping a reservation are
/// async-signal-safe (no allocation; the only lock is a fence, taken with
/// signals blocked). A handler may write while its thread holds a
/// reservation on the same CPU: both records are delivered, the handler's
/// after. [`consume`](Self::consume) is not for handlers.
///
/// # Examples
///
/// ```
/// use cpulocal::{PerCpuRing, RingMode};
///
/// let ring = PerCpuRing::new(RingMode::Discard);
/// let mut r = ring.reserve(5).unwrap();
/// r.copy_from_slice(b"hello");
/// r.commit();
/// ring.flush(); // close partly filled sub-buffers
/// let mut got = Vec::new();
/// ring.consume(|rec| got.push(rec.payload().to_vec()));
/// assert_eq!(got, [b"hello".to_vec()]);
/// ```
pub struct PerCpuRing {
    slots: Slots<Buf>,
    /// Per slot: `consumed` and the release lock.
    tails: Box<[CachePadded<Tail>]>,
    sub: usize,
    capacity: usize,
    mode: RingMode,
    stuck_after: Duration,
    consumer: Mutex<ConsumerState>,
}

// SAFETY: the data cells are accessed only as the module docs say: the
// payload of a reservation by its holder, everything else with atomics or
// by the consumer over released-to-it sub-buffers.
unsafe impl Send for PerCpuRing {}
// SAFETY: as for Send; every method takes `&self` and follows that protocol.
unsafe impl Sync for PerCpuRing {}

impl PerCpuRing {
    /// A ring with the default sizes (8 sub-buffers of 4 KiB per CPU) in
    /// `mode`.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::new(cpulocal::RingMode::Overwrite);
    /// assert_eq!(ring.cpus(), cpulocal::possible_cpus());
    /// ```
    ///
    /// # Panics
    ///
    /// If the buffers (32 KiB per CPU) cannot be allocated;
    /// [`with_config`](Self::with_config) returns that as an error.
    #[track_caller]
    pub fn new(mode: RingMode) -> Self {
        Self::with_config(RingConfig::new().mode(mode))
            .unwrap_or_else(|e| panic!("PerCpuRing::new: {e}"))
    }

    /// A ring built as `config` says. The buffers are zeroed lazily: memory
    /// is committed as records are written, not up front.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for sizes that are not powers of two, fewer
    /// than two sub-buffers, sub-buffers larger than
    /// [`RingConfig::MAX_SUB_BUFFER_SIZE`], or more bytes per CPU than the
    /// record tags can tell apart; [`Error::Alloc`] if the buffers cannot
    /// be allocated. Nothing is left allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuRing, RingConfig};
    ///
    /// let r = PerCpuRing::with_config(RingConfig::new().sub_buffers(1));
    /// assert!(matches!(r, Err(Error::InvalidArgument { .. })));
    /// // 2^24-byte sub-buffers × 2^15: 512 GiB per CPU. Where the kernel
    /// // refuses that much (as by default), the error says so: no abort.
    /// let huge = RingConfig::new().sub_buffer_size(1 << 24).sub_buffers(1 << 15);
    /// if let Err(e) = PerCpuRing::with_config(huge) {
    ///     assert!(matches!(e, Error::Alloc { .. }));
    /// }
    /// ```
    pub fn with_config(config: RingConfig) -> Result<Self, Error> {
        let capacity = config.check()?;
        let sub = config.sub_buffer_size;
        let slots = Slots::try_new(config.index, |_| {
            Ok::<_, Error>(Buf {
                head: AtomicUsize::new(0),
                lost: AtomicUsize::new(0),
                overwritten: AtomicUsize::new(0),
                // SAFETY: an all-zero `UnsafeCell<u64>` is 0.
                data: unsafe { zeroed_slice(capacity / 8) }?,
            })
        })?;
        let cpus = slots.len();
        let tails = (0..cpus)
            .map(|i| {
                CachePadded::new(Tail {
                    consumed: AtomicUsize::new(0),
                    lock: Fence::new(i),
                })
            })
            .collect();
        Ok(PerCpuRing {
            slots,
            tails,
            sub,
            capacity,
            mode: config.mode,
            stuck_after: config.stuck_after,
            consumer: Mutex::new(ConsumerState {
                waiting: vec![None; cpus],
                scratch: vec![0; sub],
            }),
        })
    }

    /// The number of per-CPU buffers.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(cpulocal::PerCpuRing::new(Default::default()).cpus() >= 1);
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How the buffers are numbered.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = cpulocal::PerCpuRing::new(Default::default());
    /// assert_eq!(r.index(), cpulocal::Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// The mode chosen at construction.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{PerCpuRing, RingMode};
    /// assert_eq!(PerCpuRing::new(RingMode::Discard).mode(), RingMode::Discard);
    /// ```
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    /// Bytes per CPU buffer (sub-buffers × sub-buffer size).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::PerCpuRing::new(Default::default()).bytes_per_cpu(), 32768);
    /// ```
    pub fn bytes_per_cpu(&self) -> usize {
        self.capacity
    }

    /// Bytes per sub-buffer.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::PerCpuRing::new(Default::default()).sub_buffer_size(), 4096);
    /// ```
    pub fn sub_buffer_size(&self) -> usize {
        self.sub
    }

    /// The largest payload a record may have: the sub-buffer size minus its
    /// 8-byte header.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = cpulocal::PerCpuRing::new(Default::default());
    /// assert_eq!(r.max_record_len(), 4088);
    /// assert!(r.reserve(4089).is_err());
    /// ```
    pub fn max_record_len(&self) -> usize {
        self.sub - HEADER
    }

    /// How many ring operations (reserve, lost counts, flush) left the fast
    /// path so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = cpulocal::PerCpuRing::new(Default::default());
    /// r.write(b"x").unwrap();
    /// assert!(r.stats().fenced <= 1);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }

    /// Records lost on every CPU so far: refused because the buffer was full
    /// (or, in overwrite mode, its oldest sub-buffer busy), or reserved and
    /// dropped without a commit. Exact.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = cpulocal::PerCpuRing::new(Default::default());
    /// drop(r.reserve(3).unwrap());
    /// assert_eq!(r.lost(), 1);
    /// ```
    pub fn lost(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.data.lost.load(Ordering::Relaxed) as u64)
            .sum()
    }

    /// Records overwritten unread on every CPU so far (overwrite mode). Exact.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = cpulocal::PerCpuRing::new(cpulocal::RingMode::Overwrite);
    /// assert_eq!(r.overwritten(), 0);
    /// ```
    pub fn overwritten(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.data.overwritten.load(Ordering::Relaxed) as u64)
            .sum()
    }

    /// `(lost, overwritten)` on `cpu`'s buffer.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = cpulocal::PerCpuRing::new(Default::default());
    /// assert_eq!(r.counts_on(0).unwrap(), (0, 0));
    /// assert!(r.counts_on(r.cpus()).is_err());
    /// ```
    pub fn counts_on(&self, cpu: usize) -> Result<(u64, u64), Error> {
        let slot = &self.slots.on(cpu)?.slot.data;
        Ok((
            slot.lost.load(Ordering::Relaxed) as u64,
            slot.overwritten.load(Ordering::Relaxed) as u64,
        ))
    }

    /// Runs a shape on buffer `cpu`'s slot.
    ///
    /// # Safety
    ///
    /// `shape` names buffer `cpu`'s words as the module docs say.
    #[inline]
    unsafe fn perform(
        &self,
        cpu: usize,
        order: Order,
        shape: impl Fn(&Slot<Buf>) -> Shape,
    ) -> bool {
        let at = self.slots.on(cpu).expect("a buffer of this ring");
        // SAFETY: the caller's shape, of `cpu`'s slot.
        unsafe { self.slots.perform(at, order, Follow::Slot, shape) }.is_ok()
    }

    /// Counts one record lost on `cpu` (exact, from any CPU).
    fn count_lost(&self, cpu: usize) {
        self.count_lost_n(cpu, 1);
    }

    /// Counts `n` records lost on `cpu` (exact, from any CPU).
    fn count_lost_n(&self, cpu: usize, n: usize) {
        let shape = move |slot: &Slot<Buf>| Shape::AddStore {
            vo: Shape::offset(&slot.fence, slot.data.lost.as_ptr()),
            count: n,
        };
        // SAFETY: `lost` is buffer `cpu`'s word, written only by this shape
        // and under the fence.
        unsafe { self.perform(cpu, Order::Relaxed, shape) };
    }
}

impl fmt::Debug for PerCpuRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuRing")
            .field("cpus", &self.cpus())
            .field("sub_buffer_size", &self.sub)
            .field("capacity", &self.capacity)
            .field("mode", &self.mode)
            .field("index", &self.index())
            .field("lost", &self.lost())
            .field("overwritten", &self.overwritten())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
