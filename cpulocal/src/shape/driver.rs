//! [`Slots<D>`]: the slot array under every structure of this crate.
//!
//! One cache-padded slot per CPU (or concurrency id), each its fence word
//! first and then the structure's data `D`. The array also knows how its
//! slots are numbered ([`Index`]), where that number sits in the rseq area,
//! and counts the operations that left the fast path. Every structure is a
//! client of it, and an operation on a slot always goes the same way:
//!
//! 1. pick the slot: [`Slots::here`], the caller's CPU (or concurrency id),
//!    read once from the thread's rseq area; or [`Slots::on`], a slot the
//!    caller names;
//! 2. read what the operation starts from (a count, a head);
//! 3. run its [`Shape`], built by a closure from the slot, with
//!    [`Slots::perform`], the one entry: where `here` read the
//!    slot from the thread's area, the first critical section runs inline in
//!    the caller; everything else (retries after an abort, the fenced path,
//!    a slot the caller named, a thread without rseq) is [`slow`],
//!    the one slow path, out of line.
//!
//! Operations that have no critical section (a drain, a take, locking a
//! [`PerCpu`](crate::PerCpu)) hold the slot's fence instead:
//! [`Slots::fenced`] (with the membarrier, all signals blocked) or
//! [`Slots::hold`] (the fence alone, for data no section touches).
//!
//! # Safety
//!
//! [`Slots::perform`] is `unsafe`: the shape's pointers must name data of
//! the slot `at` names, written only by that slot's operations (see
//! [`crate::shape`]). The rest is safe: the array hands out shared references
//! to slots, and what a structure does with its `D` is its own contract.
#![allow(unsafe_code)]

use core::fmt;
use core::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::fenced::fence::{self, Fence, HeldByCaller};
use crate::rseq::abi::{self, Rseq};
use crate::rseq::arch::{self, Outcome};
use crate::rseq::registration;
use crate::shape::Shape;
use crate::shape::{CompareFailed, Order};
use crate::stats::{PathStats, Stats};
use crate::switches;
use crate::Error;
use crate::Index;
use crate::RSEQ_ATTEMPTS;

/// One slot: its fence word, then the structure's data, in one padded line
/// (more if `D` is larger).
#[repr(C)]
pub(crate) struct Slot<D> {
    /// The slot's fence ([`crate::fenced::fence`]): sections check it, the fenced
    /// path holds it.
    pub(crate) fence: Fence,
    /// The structure's data for this slot.
    pub(crate) data: D,
}

/// A structure's slots, their numbering and their slow-path counts.
pub(crate) struct Slots<D> {
    slots: Box<[CachePadded<Slot<D>>]>,
    /// The slots the fast path may take from the thread's area: all of them,
    /// or none for node slots, which no section may touch (the fast path's
    /// bound check then sends every operation to [`Slots::elsewhere`]).
    inline: usize,
    by: Index,
    /// Offset in the rseq area of the field that numbers the slots
    /// (`cpu_id` or `mm_cid`), kept so the fast path need not derive it.
    offset: usize,
    /// Out of line, so that `Slots` holds no interior mutability of its own:
    /// its fields may then stay in registers across critical sections.
    stats: Box<CachePadded<Stats>>,
    /// On node slots, single-word shapes (an add, a compare-and-store) run
    /// as atomic instructions instead of under the fence: set by structures
    /// whose every write to a word is such a shape or another atomic access
    /// (see [`Slots::node_atomics`]).
    node_atomics: bool,
}

/// Where an operation's retries go when the thread moves to another CPU
/// (or concurrency id) before it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// To the slot the thread runs on now: for operations on "this CPU's
    /// slot" whose result does not name the slot (a counter's add), which
    /// then keep running as critical sections.
    Thread,
    /// Nowhere: the operation stays on its slot, through the fenced path if
    /// need be (every operation that returns something tied to the slot, or
    /// built its shape from what it read there).
    Slot,
}

/// The slot an operation runs on: from [`Slots::here`] or [`Slots::on`].
pub(crate) struct At<'a, D> {
    /// The slot.
    pub(crate) slot: &'a Slot<D>,
    /// Its index.
    pub(crate) index: usize,
    /// The calling thread's area, when `index` was just read from it: the
    /// first section may then run inline. None for a slot the caller named.
    area: Option<NonNull<Rseq>>,
}

impl<D> Clone for At<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for At<'_, D> {}

impl<D> Slots<D> {
    /// One slot per index `by` gives (see [`Index`]), each made by
    /// `make(index)`. Also makes the process-wide engine decision, so that
    /// operations, which may run in signal handlers, never have to.
    pub(crate) fn new(by: Index, mut make: impl FnMut(usize) -> D) -> Self {
        match Self::try_new(by, |i| Ok::<D, core::convert::Infallible>(make(i))) {
            Ok(slots) => slots,
            Err(never) => match never {},
        }
    }

    /// As [`new`](Self::new), for data whose making can fail: the first
    /// error is returned, and the slots made before it are dropped.
    pub(crate) fn try_new<E>(
        by: Index,
        mut make: impl FnMut(usize) -> Result<D, E>,
    ) -> Result<Self, E> {
        registration::process();
        fence::watch_forks();
        let by = registration::effective(by);
        if by == Index::Node {
            // Operations on node slots look up the thread's node, in signal
            // handlers too: the table they may need is read here.
            registration::prepare_current_node();
        }
        let slots = (0..by.slots())
            .map(|i| {
                Ok(CachePadded::new(Slot {
                    fence: Fence::new(i),
                    data: make(i)?,
                }))
            })
            .collect::<Result<_, E>>()?;
        let slots: Box<[_]> = slots;
        Ok(Slots {
            inline: if by.has_sections() { slots.len() } else { 0 },
            slots,
            by,
            offset: by.field_offset(),
            stats: Default::default(),
            node_atomics: false,
        })
    }

    /// These slots with single-word shapes run as atomic instructions on
    /// node slots ([`Index::Node`]), where no critical section may run: an
    /// add as a fetch-and-add, a compare-and-store as a compare-and-swap.
    /// Other shapes, and every shape of slots without it, run under the
    /// slot's fence with signals blocked.
    ///
    /// Only for structures that write each word of their data either with
    /// such shapes alone or with other atomic instructions (a counter's add
    /// and swap, a lock word's compare-and-store and release): a
    /// fence-holder's plain load and store of a word would lose an atomic
    /// update made meanwhile on another CPU of the node.
    pub(crate) fn node_atomics(mut self) -> Self {
        self.node_atomics = true;
        self
    }

    /// The number of slots.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// How the slots are numbered.
    #[inline]
    pub(crate) fn index(&self) -> Index {
        self.by
    }

    /// How many operations left the fast path so far.
    pub(crate) fn stats(&self) -> PathStats {
        self.stats.snapshot()
    }

    /// Slot `index`, if in range.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Slot<D>> {
        self.slots.get(index).map(|s| &**s)
    }

    /// Every slot, in index order.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &Slot<D>> + '_ {
        self.slots.iter().map(|s| &**s)
    }

    /// Every slot's data, exclusively.
    pub(crate) fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = &mut D> + '_ {
        self.slots.iter_mut().map(|s| &mut s.data)
    }

    /// Every slot's data, in index order.
    pub(crate) fn into_data(self) -> impl ExactSizeIterator<Item = D> {
        self.slots
            .into_vec()
            .into_iter()
            .map(|s| CachePadded::into_inner(s).data)
    }

    /// [`Error::CpuOutOfRange`] for `index`.
    pub(crate) fn out_of_range(&self, index: usize) -> Error {
        Error::CpuOutOfRange {
            cpu: index,
            slots: self.len(),
        }
    }

    /// The slot of the CPU (or concurrency id) the caller runs on, read once
    /// from its rseq area; for a thread not set up yet, or without rseq, the
    /// cold path sets it up or picks `sched_getcpu()`'s slot.
    #[inline(always)]
    pub(crate) fn here(&self) -> At<'_, D> {
        let area = registration::area();
        let index = registration::index_in(area, self.offset) as usize;
        if index < self.inline {
            At {
                // SAFETY: `inline` is at most the number of slots.
                slot: unsafe { self.slots.get_unchecked(index) },
                index,
                // SAFETY: `registration::area` never returns null (it points to a
                // live area, a dummy one at least).
                area: Some(unsafe { NonNull::new_unchecked(area) }),
            }
        } else {
            // Two words back in registers, not an `At` through memory: the
            // fast path's `At` then stays in registers too.
            let (index, area) = self.elsewhere();
            At {
                slot: &self.slots[index],
                index,
                // A section run on an area that does not index this slot
                // aborts at its check, and the slow path takes over; none
                // runs on a node slot (null area).
                area: NonNull::new(area),
            }
        }
    }

    /// [`here`](Self::here) for a thread whose area holds no slot index: one
    /// not set up yet (set up now), one without rseq, or an `mm_cid` beyond
    /// the slots (affinity widened since construction); and for every
    /// operation on node slots. Any slot is correct under its fence;
    /// `sched_getcpu()`'s keeps the data near the caller. Returns the slot's
    /// index and the thread's area (the first section, run on it, aborts at
    /// its check unless the index came from it), or null for node slots, on
    /// which no section runs.
    #[cold]
    #[inline(never)]
    fn elsewhere(&self) -> (usize, *mut Rseq) {
        if registration::cpu_id(registration::area()) == abi::CPU_ID_UNINITIALIZED {
            registration::ensure_thread();
        }
        if !self.by.has_sections() {
            return (
                registration::current_node() % self.len(),
                core::ptr::null_mut(),
            );
        }
        let area = registration::area();
        let index = registration::valid_index_in(area, self.offset) as usize;
        if index < self.len() {
            (index, area)
        } else {
            (registration::current_cpu() % self.len(), area)
        }
    }

    /// Slot `index` as the caller names it (another CPU's, perhaps), or
    /// [`Error::CpuOutOfRange`]. Its operations run out of line: critical
    /// sections if the thread turns out to run there, else the fenced path.
    #[inline]
    pub(crate) fn on(&self, index: usize) -> Result<At<'_, D>, Error> {
        match self.slots.get(index) {
            Some(slot) => Ok(At {
                slot,
                index,
                area: None,
            }),
            None => Err(self.out_of_range(index)),
        }
    }

    /// As [`on`](Self::on) (None out of range), except that the first
    /// section runs inline when the thread runs on that slot: for callers
    /// that name the slot they run on, as [`Domain`](crate::Domain)'s do.
    #[inline(always)]
    pub(crate) fn on_inline(&self, index: usize) -> Option<At<'_, D>> {
        let slot = self.get(index)?;
        let area = registration::area();
        let here = index < self.inline
            && registration::valid_index_in(area, self.offset) as usize == index;
        Some(At {
            slot,
            index,
            area: NonNull::new(area).filter(|_| here),
        })
    }

    /// Runs the shape `shape` builds for slot `at` on it: the first
    /// critical section inline when `at` came from the thread's area, then
    /// (or else) [`slow`]. The caller never sees an abort: the result
    /// is the shape's own, a commit or a failed compare.
    ///
    /// The shape is built by a closure, from the slot, so that the fast path
    /// keeps its operands in registers: the slow path, out of line, builds it
    /// again from what the closure captured (at most two words, so that they
    /// too pass in registers).
    ///
    /// # Safety
    ///
    /// The shape's pointers are valid and name data of slot `at` only,
    /// written only by that slot's operations (see [`crate::shape`]).
    #[inline(always)]
    pub(crate) unsafe fn perform(
        &self,
        at: At<'_, D>,
        order: Order,
        follow: Follow,
        shape: impl Fn(&Slot<D>) -> Shape,
    ) -> Result<(), CompareFailed> {
        let first = match at.area {
            Some(area) => {
                let mut spare = None;
                let (check, built) =
                    fence_to_check(&at.slot.fence, at.index, shape(at.slot), &mut spare);
                // SAFETY: `area` is the calling thread's live area, from which
                // `here` read `at.index` (the section checks it again); the
                // shape is the caller's, its commit word counted from `check`.
                match unsafe { arch::section(area.as_ptr(), self.offset, check, &built, order) } {
                    Outcome::Committed => return Ok(()),
                    Outcome::CompareFailed => return Err(CompareFailed),
                    other => Some(other),
                }
            }
            None => None,
        };
        // SAFETY: the caller's contract.
        unsafe { self.slow(at.index, order, first, follow, shape) }
    }

    /// [`perform`](Self::perform) after its first attempt ended with `first`
    /// (None: no section ran): [`slow`] with the shape built again.
    ///
    /// # Safety
    ///
    /// As [`perform`](Self::perform), for slot `index`.
    #[cold]
    #[inline(never)]
    unsafe fn slow(
        &self,
        index: usize,
        order: Order,
        first: Option<Outcome>,
        follow: Follow,
        shape: impl Fn(&Slot<D>) -> Shape,
    ) -> Result<(), CompareFailed> {
        let slot = &self.slots[index];
        if !self.by.has_sections() {
            // SAFETY: the caller's contract.
            return unsafe { self.on_node(slot, index, order, shape(slot)) };
        }
        let moved = |i: usize| self.get(i).map(|s| (shape(s), &s.fence));
        // SAFETY: the caller's contract (for whichever slot `shape` is built
        // for, with `Follow::Thread`); the fence is that of the slot.
        unsafe {
            slow(
                shape(slot),
                order,
                index,
                &slot.fence,
                self.by,
                &self.stats,
                first,
                match follow {
                    Follow::Thread => Some(&moved),
                    Follow::Slot => None,
                },
            )
        }
    }

    /// Runs `shape` on node slot `slot` (number `index`), which several CPUs
    /// share and no section touches: as an atomic instruction where these
    /// slots allow it ([`node_atomics`](Self::node_atomics)), else under the
    /// slot's fence (no membarrier: there is no section to stop) with
    /// signals blocked.
    ///
    /// # Safety
    ///
    /// As [`perform`](Self::perform), for slot `index`.
    #[cold]
    #[inline(never)]
    unsafe fn on_node(
        &self,
        slot: &Slot<D>,
        index: usize,
        order: Order,
        shape: Shape,
    ) -> Result<(), CompareFailed> {
        if switches::skip_node_guard() {
            // SAFETY: the caller's contract for the pointers; the fence is
            // skipped on purpose (a test's broken protocol).
            return unsafe { shape.apply(&slot.fence, order) };
        }
        if self.node_atomics {
            // SAFETY: the caller's contract; every write to these words is
            // atomic (`node_atomics`).
            if let Some(done) = unsafe { shape.apply_atomic(&slot.fence, order) } {
                return done;
            }
        }
        self.stats.fenced(0);
        // SAFETY: the fence is held while `apply` runs (caller: valid
        // pointers).
        fence::with_signals_blocked(&slot.fence, index, self.by, || unsafe {
            shape.apply(&slot.fence, order)
        })
    }

    /// Runs `op` on slot `index`'s data with its fence held, every critical
    /// section on it aborted first (the membarrier) and the thread's signals
    /// blocked ([`fence::with_signals_blocked`]): for operations that are not
    /// a shape, such as a drain.
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub(crate) fn fenced<R>(&self, index: usize, op: impl FnOnce(&D) -> R) -> R {
        let slot = &self.slots[index];
        fence::with_signals_blocked(&slot.fence, index, self.by, || op(&slot.data))
    }

    /// As [`fenced`](Self::fenced), counted in the stats as an operation
    /// that took the fenced path: for an operation that no shape can express
    /// on this target (a 64-bit add where a word is 32 bits).
    #[cfg(not(target_pointer_width = "64"))]
    pub(crate) fn fenced_counted<R>(&self, index: usize, op: impl FnOnce(&D) -> R) -> R {
        self.stats.fenced(0);
        self.fenced(index, op)
    }

    /// Takes slot `index`'s fence for the calling thread, without the
    /// membarrier and without blocking signals: for data that no critical
    /// section touches. Waits while another thread holds it.
    pub(crate) fn hold(&self, index: usize) -> Result<(&Slot<D>, fence::Held<'_>), Error> {
        let slot = self.get(index).ok_or(self.out_of_range(index))?;
        match slot.fence.hold(index) {
            Ok(held) => Ok((slot, held)),
            Err(HeldByCaller) => Err(Error::HeldByThisThread { cpu: index }),
        }
    }

    /// As [`hold`](Self::hold), without waiting: [`Error::WouldBlock`] if
    /// another thread holds the fence.
    pub(crate) fn try_hold(&self, index: usize) -> Result<(&Slot<D>, fence::Held<'_>), Error> {
        let slot = self.get(index).ok_or(self.out_of_range(index))?;
        match slot.fence.try_hold(index) {
            Ok(Some(held)) => Ok((slot, held)),
            Ok(None) => Err(Error::WouldBlock { cpu: index }),
            Err(HeldByCaller) => Err(Error::HeldByThisThread { cpu: index }),
        }
    }
}

impl<D> core::ops::Index<usize> for Slots<D> {
    type Output = Slot<D>;

    /// Slot `index`, for callers that know it in range.
    #[inline]
    fn index(&self, index: usize) -> &Slot<D> {
        &self.slots[index]
    }
}

impl<D> fmt::Debug for Slots<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("cpus", &self.len())
            .field("index", &self.by)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Drops every item `items` yields, even if dropping one panics: the rest
/// are still dropped, then the panic goes on (a second panic aborts), as a
/// `Vec` drops its elements. The structures' `Drop`s and drains use it, so a
/// value whose `Drop` panics does not leak the others.
pub(crate) fn drop_all<I: Iterator>(items: I) {
    struct Rest<I: Iterator>(I);
    impl<I: Iterator> Drop for Rest<I> {
        fn drop(&mut self) {
            self.0.by_ref().for_each(drop);
        }
    }
    let mut rest = Rest(items);
    rest.0.by_ref().for_each(drop);
}

/// `n` zeroed `T`s on the heap, or [`Error::Alloc`]: fallible (an
/// impossible size is an error, not an abort), and zeroed lazily (the
/// allocator's `calloc` leaves fresh pages from the kernel unwritten, so a
/// large array costs memory only where it is used).
///
/// # Safety
///
/// All-zero bytes are a valid `T`.
pub(crate) unsafe fn zeroed_slice<T>(n: usize) -> Result<Box<[T]>, Error> {
    let layout =
        std::alloc::Layout::array::<T>(n).map_err(|_| Error::Alloc { bytes: usize::MAX })?;
    if layout.size() == 0 {
        // SAFETY: zero bytes are a valid T (caller); nothing is allocated for
        // a zero-sized layout.
        return Ok((0..n).map(|_| unsafe { core::mem::zeroed() }).collect());
    }
    // SAFETY: the layout has a nonzero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(Error::Alloc {
            bytes: layout.size(),
        });
    }
    // SAFETY: `p` is a live allocation of `layout`, the layout of `[T; n]`,
    // from the global allocator, and zeroed bytes are `n` valid `T`s
    // (caller): what `Box<[T]>` owns and frees.
    Ok(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(p.cast::<T>(), n)) })
}

/// The fence word a critical section of `shape` on slot `index` checks, and
/// the shape to run with it: the slot's `fence` and `shape` as they are, or,
/// with the test switch `Break::SkipFenceCheck` (`testing` feature), a word
/// in `spare` that holds the free value and is never held (so the section
/// ignores the real fence), with the shape's commit word counted from it.
#[inline(always)]
pub(crate) fn fence_to_check<'a>(
    fence: &'a crate::fenced::fence::Fence,
    index: usize,
    shape: crate::shape::Shape,
    spare: &'a mut Option<crate::fenced::fence::Fence>,
) -> (&'a crate::fenced::fence::Fence, crate::shape::Shape) {
    if switches::skip_fence_check() {
        let spare = spare.insert(crate::fenced::fence::Fence::new(index));
        (spare, shape.rebased(fence, spare))
    } else {
        (fence, shape)
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
/// [`Slots::perform`](crate::shape::driver::Slots::perform).
///
/// # Safety
///
/// `shape`'s pointers are valid and name slot `index`'s data (module docs).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)] // the operation, its slot, and how it ended
unsafe fn slow<'a>(
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
    let turned_away = (registration::cpu_id(registration::area()) as i32) < 0;
    let mut aborts = u64::from(first == Some(Outcome::Aborted) && !turned_away);
    let mut fenced = first == Some(Outcome::Fenced);
    while !fenced && aborts < u64::from(RSEQ_ATTEMPTS) {
        let area = registration::area();
        let here = registration::valid_index_in(area, offset) as usize;
        if here != index {
            if registration::cpu_id(area) == crate::rseq::abi::CPU_ID_UNINITIALIZED
                && registration::ensure_thread()
            {
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
        let (check, checked) = fence_to_check(fence, index, shape, &mut spare);
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
