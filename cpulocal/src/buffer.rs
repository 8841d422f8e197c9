//! [`PerCpuBuffer<T>`]: a bounded per-CPU stack of owned values, built on
//! the store-store and double-compare shapes.
//!
//! # Safety
//!
//! Each slot is a fence, a count and `capacity` entries. Entries `0..count`
//! are *live*: each holds a pointer from `Box::into_raw` that the buffer owns.
//! Entries at `count` and above hold nothing the buffer owns (possibly stale
//! or speculative pointers, never dereferenced or freed).
//!
//! A slot's count and entries are written only through that slot's fence:
//! by [`shape::perform`] (a critical section on the slot's CPU, or the shape
//! run as ordinary code under the fence after the membarrier), by `drain`
//! (under the fence), and by `Drop` (with `&mut self`). So every write to a
//! slot, and every commit, happens in one step that no other write to that
//! slot interleaves with. Values read *before* that step (the count and the
//! top entry that a push or pop starts from) may be stale; only what the step
//! itself compares counts:
//!
//! - **push** commits `items[c] = p; count = c + 1` only if `count == c`
//!   (and `c < capacity`, checked before). At that moment entry `c` is not
//!   live, so nothing owned is overwritten, and `p`, the pusher's own fresh
//!   box, becomes the buffer's. A section aborted between the two stores
//!   leaves `p` in entry `c`, which stays not live: `p` is still the pusher's,
//!   to retry or to give back.
//! - **pop** commits `count = c - 1` only if `count == c` *and*
//!   `items[c - 1] == p`, both compared in the same step as the store. Then
//!   entry `c - 1` was live and held `p`, and the step makes it not live: that
//!   entry's box, and no other, passes to the popper. Each entry leaves the
//!   live range once, by one commit, so a committed pop owns its box exactly
//!   once.
//!
//! The pair compare is what makes the pointer chosen before the step the one
//! the step removes. With the count alone, a pop that read `(c, p)` could be
//! overtaken by another thread popping `p` and pushing `q` at the same index:
//! the count is `c` again, and the first pop would take `p`, which the other
//! thread owns, and lose `q`. With the pair, that pop fails and reloads. No
//! ABA remains: if the pair compare succeeds after any number of interleaved
//! pushes and pops, entry `c - 1` holds `p` *now* and is live *now*, which is
//! all the pop relies on; it dereferences nothing before its commit. This
//! holds even when two boxes have the same address (a box freed and its
//! address reused, or a zero-sized `T`, whose boxes all share one dangling
//! address): ownership goes by entry, not by address.
//!
//! A box's contents are written before the push commits with a
//! store-release, and read after the pop commits: on one CPU, program order
//! (a context switch orders the rest); across CPUs, the fence's acquire and
//! release and the membarrier.
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::domain::Order;
use crate::fence::{self, Fence};
use crate::index::At;
use crate::shape::{self, Shape};
use crate::stats::{PathStats, Stats};
use crate::{Error, Index};

/// One CPU's count and fence in one padded line; the entries out of line.
struct Slot {
    fence: Fence,
    /// Live entries: `0..count`.
    count: AtomicUsize,
    /// `capacity` entries, each a `Box<T>` pointer when live.
    items: Box<[AtomicUsize]>,
}

/// A bounded per-CPU stack of owned values: [`push`](Self::push) and
/// [`pop`](Self::pop) work on the current CPU's buffer with one restartable
/// sequence each (no atomic instruction); [`pop_on`](Self::pop_on) and
/// [`drain`](Self::drain) reach any CPU's buffer through its fence.
///
/// Order is last-in first-out per CPU; across CPUs there is none. A value
/// pushed on one CPU is popped by a thread on that CPU, or by `pop_on` or
/// `drain` from anywhere. Every operation completes without the caller
/// retrying; a thread that migrates mid-operation finishes on its new CPU's
/// buffer, or on its old one through the fence.
///
/// Capacity: fixed per CPU at construction, `capacity × cpus()` values in
/// all. A push onto a full buffer gives the value back rather than look at
/// other CPUs' buffers, so callers choose: keep it, drop it, or put it
/// somewhere else (a global pool, say). Each value lives in its own heap box
/// (one allocation per push, freed by the pop that takes it), so an entry is
/// one word whatever `T` is; for small `Copy` values without the allocation
/// see [`PerCpuMemcpyBuffer`](crate::PerCpuMemcpyBuffer). Values left in the
/// buffers are dropped with it. Not for signal handlers: push allocates and
/// pop frees.
///
/// # Examples
///
/// ```
/// use cpulocal::PerCpuBuffer;
///
/// let cache = PerCpuBuffer::new(2);
/// cache.push(String::from("a")).unwrap();
/// cache.push(String::from("b")).unwrap();
/// // Full if the thread stayed on one CPU: the value comes back.
/// if let Err(c) = cache.push(String::from("c")) {
///     assert_eq!(c, "c");
/// }
/// let mut all: Vec<String> = cache.drain().collect();
/// all.sort();
/// assert!(all.starts_with(&["a".to_string(), "b".to_string()]));
/// ```
///
/// Values cross threads, so sharing the buffer needs `T: Send`:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// shared(&cpulocal::PerCpuBuffer::<std::rc::Rc<u8>>::new(1));
/// ```
pub struct PerCpuBuffer<T> {
    slots: Box<[CachePadded<Slot>]>,
    capacity: usize,
    by: Index,
    stats: Box<CachePadded<Stats>>,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: the buffer owns its values (in boxes); moving it moves them.
unsafe impl<T: Send> Send for PerCpuBuffer<T> {}
// SAFETY: values move in and out whole, never shared: `&PerCpuBuffer` hands
// out owned `T`s only, so `T: Send` suffices (as for a channel).
unsafe impl<T: Send> Sync for PerCpuBuffer<T> {}

impl<T> PerCpuBuffer<T> {
    /// An empty buffer of `capacity` values per possible CPU.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::<u64>::new(16);
    /// assert_eq!(b.capacity(), 16);
    /// assert_eq!(b.cpus(), cpulocal::possible_cpus());
    /// ```
    #[track_caller]
    pub fn new(capacity: usize) -> Self {
        Self::with_index(Index::Cpu, capacity)
    }

    /// An empty buffer of `capacity` values per slot, the slots numbered `by`
    /// CPU or concurrency id (see [`Index`]).
    ///
    /// # Panics
    ///
    /// If `capacity` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuBuffer};
    ///
    /// let b = PerCpuBuffer::with_index(Index::MmCid, 8);
    /// b.push(1u8).unwrap();
    /// assert_eq!(b.drain().collect::<Vec<_>>(), [1]);
    /// ```
    #[track_caller]
    pub fn with_index(by: Index, capacity: usize) -> Self {
        assert!(
            capacity > 0,
            "PerCpuBuffer: the capacity per CPU must be at least 1"
        );
        let (by, slots) = by.padded_slots(|i| Slot {
            fence: Fence::new(i),
            count: AtomicUsize::new(0),
            items: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
        });
        PerCpuBuffer {
            slots,
            capacity,
            by,
            stats: Default::default(),
            _owns: PhantomData,
        }
    }

    /// The number of per-CPU buffers.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::<()>::new(1);
    /// assert!(b.cpus() >= 1);
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How many values each CPU's buffer holds at most.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::PerCpuBuffer::<()>::new(5).capacity(), 5);
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How the buffers are numbered.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuBuffer};
    /// assert_eq!(PerCpuBuffer::<()>::new(1).index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.by
    }

    /// How many operations left the fast path so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(4);
    /// b.push(1).unwrap();
    /// let s = b.stats();
    /// assert!(s.retried + s.fenced <= 1);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.stats.snapshot()
    }

    /// Runs a shape on buffer `at`'s words.
    ///
    /// # Safety
    ///
    /// `shape` names buffer `at`'s count and entries as the module docs say.
    #[inline]
    unsafe fn perform(&self, at: At, shape: Shape, order: Order) -> bool {
        let slot = &self.slots[at.index];
        // SAFETY: the caller's shape; the fence is that of the slot it names.
        unsafe { shape::perform_at(&shape, order, at, &slot.fence, self.by, &self.stats) }.is_ok()
    }

    /// Pushes `value` on the current CPU's buffer, or gives it back if that
    /// buffer is full (other CPUs' buffers are not looked at).
    ///
    /// # Errors
    ///
    /// `Err(value)`, untouched, when the current CPU's buffer holds
    /// [`capacity`](Self::capacity) values.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(1);
    /// let first = b.push("a");
    /// assert!(first.is_ok());
    /// // Refused if still on the same CPU, else stored on the new one.
    /// match b.push("b") {
    ///     Err(back) => assert_eq!(back, "b"),
    ///     Ok(()) => assert_eq!(b.drain().count(), 2),
    /// }
    /// ```
    pub fn push(&self, value: T) -> Result<(), T> {
        let boxed = Box::into_raw(Box::new(value));
        loop {
            let at = self.by.here(self.cpus());
            let slot = &self.slots[at.index];
            let c = slot.count.load(Ordering::Relaxed);
            if c >= self.capacity {
                // SAFETY: never published (module docs: an aborted push's
                // entry is not live), so still ours; from `Box::into_raw`.
                return Err(*unsafe { Box::from_raw(boxed) });
            }
            let shape = Shape::CbneStoreStore {
                v: slot.count.as_ptr(),
                expect: c,
                v2: slot.items[c].as_ptr(),
                newv2: boxed as usize,
                newv: c + 1,
            };
            // SAFETY: buffer `at`'s count and entry `c < capacity`; release
            // publishes the box's contents with the count.
            if unsafe { self.perform(at, shape, Order::Release) } {
                return Ok(());
            }
            // Another push or pop on that buffer came first: read it again.
        }
    }

    /// Pops the value last pushed on the current CPU's buffer, if any. Values
    /// on other CPUs' buffers are not looked at: see
    /// [`pop_on`](Self::pop_on) and [`drain`](Self::drain).
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(4);
    /// assert_eq!(b.pop(), None::<u32>);
    /// b.push(3).unwrap();
    /// // Some(3) unless the thread migrated in between.
    /// let got = b.pop().into_iter().chain(b.drain()).collect::<Vec<_>>();
    /// assert_eq!(got, [3]);
    /// ```
    pub fn pop(&self) -> Option<T> {
        loop {
            match self.try_pop(self.by.here(self.cpus())) {
                Attempt::Done(v) => return v,
                Attempt::Raced => {}
            }
        }
    }

    /// Pops the value last pushed on `cpu`'s buffer, from any CPU (a critical
    /// section if the caller runs on `cpu`, the fenced path otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(4);
    /// b.push(1).unwrap();
    /// let found: Vec<i32> = (0..b.cpus()).filter_map(|c| b.pop_on(c).unwrap()).collect();
    /// assert_eq!(found, [1]);
    /// assert!(b.pop_on(b.cpus()).is_err());
    /// ```
    pub fn pop_on(&self, cpu: usize) -> Result<Option<T>, Error> {
        if cpu >= self.cpus() {
            return Err(Error::CpuOutOfRange {
                cpu,
                slots: self.cpus(),
            });
        }
        loop {
            if let Attempt::Done(v) = self.try_pop(At::slot(cpu)) {
                return Ok(v);
            }
        }
    }

    /// One pop attempt on buffer `at`.
    fn try_pop(&self, at: At) -> Attempt<T> {
        let slot = &self.slots[at.index];
        let c = slot.count.load(Ordering::Acquire);
        if c == 0 {
            return Attempt::Done(None);
        }
        let top = slot.items[c - 1].load(Ordering::Relaxed);
        let shape = Shape::CbneLoadCbneStore {
            v: slot.count.as_ptr(),
            expect: c,
            v2: slot.items[c - 1].as_ptr(),
            expect2: top,
            newv: c - 1,
        };
        // SAFETY: buffer `at`'s count and entry `c - 1 < capacity`. Relaxed:
        // the store only unlinks an entry and publishes nothing.
        if !unsafe { self.perform(at, shape, Order::Relaxed) } {
            return Attempt::Raced;
        }
        // SAFETY: the pop committed with entry `c - 1` live and holding
        // `top`: that box is now ours alone (module docs); from
        // `Box::into_raw` in `push`.
        Attempt::Done(Some(*unsafe { Box::from_raw(top as *mut T) }))
    }

    /// Takes every buffer's values, one CPU after the other: each buffer is
    /// emptied whole under its fence when the iterator reaches it, then
    /// yielded in LIFO order. Values pushed meanwhile stay for a later call.
    /// Dropping the iterator early drops the values it took from the buffer
    /// it was draining; buffers it had not reached keep theirs.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(8);
    /// for i in 0..3 {
    ///     b.push(i).unwrap();
    /// }
    /// let mut got: Vec<i32> = b.drain().collect();
    /// got.sort();
    /// assert_eq!(got, [0, 1, 2]);
    /// assert_eq!(b.drain().count(), 0);
    /// ```
    pub fn drain(&self) -> impl Iterator<Item = T> + '_ {
        Drain {
            buffer: self,
            next_cpu: 0,
            taken: Vec::with_capacity(self.capacity),
        }
    }
}

/// The result of one pop attempt.
enum Attempt<T> {
    /// The pop is over: this value, or None for an empty buffer.
    Done(Option<T>),
    /// The count or the top entry changed under it: read again.
    Raced,
}

/// [`PerCpuBuffer::drain`]'s iterator: empties one CPU's buffer into `taken`
/// at a time.
struct Drain<'a, T> {
    buffer: &'a PerCpuBuffer<T>,
    next_cpu: usize,
    /// Boxes taken out of a buffer, ours alone; yielded from the back.
    taken: Vec<usize>,
}

impl<T> Iterator for Drain<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(p) = self.taken.pop() {
                // SAFETY: taken out of the live range under the fence, so
                // ours; from `Box::into_raw` in `push`.
                return Some(*unsafe { Box::from_raw(p as *mut T) });
            }
            let cpu = self.next_cpu;
            let slot = self.buffer.slots.get(cpu)?;
            self.next_cpu += 1;
            let taken = &mut self.taken;
            fence::with_signals_blocked(&slot.fence, cpu, self.buffer.by, || {
                let n = slot.count.load(Ordering::Relaxed);
                // No allocation under the fence: `taken` has `capacity` room.
                taken.extend(slot.items[..n].iter().map(|e| e.load(Ordering::Relaxed)));
                slot.count.store(0, Ordering::Relaxed);
            });
        }
    }
}

impl<T> Drop for Drain<'_, T> {
    fn drop(&mut self) {
        for p in self.taken.drain(..) {
            // SAFETY: as in `next`.
            drop(unsafe { Box::from_raw(p as *mut T) });
        }
    }
}

impl<T> Drop for PerCpuBuffer<T> {
    fn drop(&mut self) {
        for slot in self.slots.iter_mut() {
            let n = *slot.count.get_mut();
            for e in slot.items[..n].iter_mut() {
                // SAFETY: entries below the count are live, owned by the
                // buffer, which nothing else can reach now (`&mut self`).
                drop(unsafe { Box::from_raw(*e.get_mut() as *mut T) });
            }
        }
    }
}

impl<T> fmt::Debug for PerCpuBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuBuffer")
            .field("cpus", &self.cpus())
            .field("capacity", &self.capacity)
            .field("index", &self.by)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
