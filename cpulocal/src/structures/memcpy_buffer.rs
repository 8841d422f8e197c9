//! [`PerCpuMemcpyBuffer<T>`]: a bounded per-CPU stack of small `Copy` values
//! stored inline, built on the memcpy-store shape.
//!
//! # Safety
//!
//! Each slot is a fence, a count and `capacity` entries of `T` bytes. Entries
//! `0..count` are *live*: each holds the bytes of a `T` copied in whole by a
//! committed push. Entries at `count` and above are free: uninitialised,
//! stale, or partly written by an aborted push; nobody reads them as `T`.
//!
//! A slot's count and entries are written, and its entries read, only through
//! that slot's fence: by [`Slots::perform`] (a critical section on the slot's
//! CPU, or the shape run as ordinary code under the fence after the
//! membarrier) and by `drain` (under the fence). There is no `Drop`: `T` is
//! `Copy`. So each operation is one step that no other access to the slot
//! interleaves with, and the non-atomic copies of entry bytes never race: a
//! section is aborted before another thread runs on its CPU (preemption) and
//! before a fence holder touches the slot (the membarrier), and an aborted
//! copy is redone from the start. Both operations compare the count and copy
//! inside the step:
//!
//! - **push** (`count == c < capacity`): copies the value into entry `c`,
//!   which is free, then commits `count = c + 1` with a store-release.
//! - **pop** (`count == c > 0`): copies entry `c - 1`, which is live, into a
//!   local, then commits `count = c - 1`. The copy is made in the same step as
//!   the compare, so it is the bytes of the value live at the commit, whatever
//!   happened to the slot since the caller read the count: nothing read
//!   outside the step is trusted, and there is no ABA.
//!
//! A committed push's bytes are complete (the copy precedes the commit), and
//! a committed pop's local holds exactly one live entry's bytes, which the
//! commit then frees. `T: Copy`, so a value may be duplicated bytewise and
//! never needs dropping.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::fmt;
use core::mem::{size_of, MaybeUninit};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::shape::driver::{zeroed_slice, At, Follow, Slot, Slots};
use crate::shape::Order;
use crate::shape::Shape;
use crate::stats::PathStats;
use crate::Error;
use crate::Index;
use crate::PushError;

/// One CPU's count and entries (the entries out of line).
struct Stack<T> {
    /// Live entries: `0..count`.
    count: AtomicUsize,
    /// `capacity` entries, aligned for `T`.
    data: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

/// A bounded per-CPU stack of small `Copy` values stored inline:
/// [`push`](Self::push) copies a value into the current CPU's buffer and
/// [`pop`](Self::pop) copies one out, with one restartable sequence each (no
/// atomic instruction, no allocation); [`pop_on`](Self::pop_on) and
/// [`drain`](Self::drain) reach any CPU's buffer through its fence.
///
/// The copy happens inside the critical section, before the count's store
/// commits it: a pop never sees a half-written value, and a value is popped
/// by exactly one caller. A section preempted mid-copy restarts and copies
/// again, so large values abort more often; the size is capped at
/// [`MAX_ITEM_SIZE`](Self::MAX_ITEM_SIZE) bytes (the user-space `cpu_opv`'s
/// per-copy bound), and a bigger `T` does not compile. For values that are
/// large, not `Copy`, or need dropping, use
/// [`PerCpuBuffer`](crate::PerCpuBuffer).
///
/// Order is last-in first-out per CPU; across CPUs there is none. Capacity
/// is fixed per CPU at construction, `capacity × cpus() × size_of::<T>()`
/// bytes allocated up front; a push onto a full buffer gives the value back.
///
/// # Examples
///
/// ```
/// use cpulocal::PerCpuMemcpyBuffer;
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// struct Sample { at: u64, value: [f32; 4] }
///
/// let samples = PerCpuMemcpyBuffer::new(64);
/// samples.push(Sample { at: 1, value: [1.0; 4] }).unwrap();
/// let all: Vec<Sample> = samples.drain().collect();
/// assert_eq!(all, [Sample { at: 1, value: [1.0; 4] }]);
/// ```
///
/// A value above [`MAX_ITEM_SIZE`](Self::MAX_ITEM_SIZE) bytes is refused
/// when the program is built (by `cargo build`; `cargo check` does not
/// evaluate the assertion):
///
/// ```compile_fail
/// let too_big = cpulocal::PerCpuMemcpyBuffer::<[u8; 4097]>::new(1);
/// ```
///
/// Values cross threads, so sharing the buffer needs `T: Send`:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// shared(&cpulocal::PerCpuMemcpyBuffer::<*const u8>::new(1));
/// ```
pub struct PerCpuMemcpyBuffer<T: Copy> {
    slots: Slots<Stack<T>>,
    capacity: usize,
}

// SAFETY: the buffer owns its values (inline copies); moving it moves them.
unsafe impl<T: Copy + Send> Send for PerCpuMemcpyBuffer<T> {}
// SAFETY: entries are only touched under the slot's fence or in its critical
// sections (module docs); `&PerCpuMemcpyBuffer` hands out owned copies only,
// moved between threads, so `T: Send` suffices.
unsafe impl<T: Copy + Send> Sync for PerCpuMemcpyBuffer<T> {}

impl<T: Copy> PerCpuMemcpyBuffer<T> {
    /// The largest `T`, in bytes: the user-space `cpu_opv`'s bound on one
    /// copy. A copy this size is a few hundred nanoseconds, short enough to
    /// complete in a critical section nearly always.
    pub const MAX_ITEM_SIZE: usize = 4096;

    /// Evaluated at build time by the constructor: refuses a `T` above
    /// [`MAX_ITEM_SIZE`](Self::MAX_ITEM_SIZE).
    const SIZE_OK: () = assert!(
        size_of::<T>() <= Self::MAX_ITEM_SIZE,
        "PerCpuMemcpyBuffer: size_of::<T>() exceeds MAX_ITEM_SIZE (4096 bytes); use PerCpuBuffer"
    );

    /// An empty buffer of `capacity` values per possible CPU.
    ///
    /// # Panics
    ///
    /// Where [`try_new`](Self::try_new) returns an error: `capacity` 0, or
    /// more memory than can be allocated. (A `T` larger than
    /// [`MAX_ITEM_SIZE`](Self::MAX_ITEM_SIZE) fails to compile.)
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::<u64>::new(16);
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
    /// As [`new`](Self::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuMemcpyBuffer};
    ///
    /// let b = PerCpuMemcpyBuffer::with_index(Index::MmCid, 8);
    /// b.push([7u8; 3]).unwrap();
    /// assert_eq!(b.drain().collect::<Vec<_>>(), [[7, 7, 7]]);
    /// ```
    #[track_caller]
    pub fn with_index(by: Index, capacity: usize) -> Self {
        Self::try_with_index(by, capacity).unwrap_or_else(|e| panic!("PerCpuMemcpyBuffer: {e}"))
    }

    /// An empty buffer of `capacity` values per possible CPU, or an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `capacity` is 0; [`Error::Alloc`] if the
    /// entries (`capacity × cpus() × size_of::<T>()` bytes, zeroed lazily)
    /// cannot be allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuMemcpyBuffer};
    ///
    /// assert!(PerCpuMemcpyBuffer::<[u64; 2]>::try_new(100).is_ok());
    /// assert!(matches!(
    ///     PerCpuMemcpyBuffer::<[u64; 2]>::try_new(1 << 59),
    ///     Err(Error::Alloc { .. })
    /// ));
    /// ```
    pub fn try_new(capacity: usize) -> Result<Self, Error> {
        Self::try_with_index(Index::Cpu, capacity)
    }

    /// As [`try_new`](Self::try_new), the slots numbered `by` CPU or
    /// concurrency id.
    ///
    /// # Errors
    ///
    /// As [`try_new`](Self::try_new).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuMemcpyBuffer};
    /// let b = PerCpuMemcpyBuffer::<u32>::try_with_index(Index::MmCid, 4)?;
    /// assert_eq!(b.capacity(), 4);
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    pub fn try_with_index(by: Index, capacity: usize) -> Result<Self, Error> {
        let () = Self::SIZE_OK;
        if capacity == 0 {
            return Err(Error::InvalidArgument {
                what: "the capacity per CPU must be at least 1",
            });
        }
        let slots = Slots::try_new(by, |_| {
            Ok::<_, Error>(Stack {
                count: AtomicUsize::new(0),
                // SAFETY: any bytes are a valid `MaybeUninit`.
                data: unsafe { zeroed_slice(capacity) }?,
            })
        })?;
        Ok(PerCpuMemcpyBuffer { slots, capacity })
    }

    /// The number of per-CPU buffers.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::<u8>::new(1);
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
    /// assert_eq!(cpulocal::PerCpuMemcpyBuffer::<u8>::new(5).capacity(), 5);
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How the buffers are numbered.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuMemcpyBuffer};
    /// assert_eq!(PerCpuMemcpyBuffer::<u8>::new(1).index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// How many operations left the fast path so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(4);
    /// b.push(1u32).unwrap();
    /// let s = b.stats();
    /// assert!(s.retried + s.fenced <= 1);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }

    /// How many values the buffers hold: a snapshot, one load of each CPU's
    /// count.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(4);
    /// b.push(1u8).unwrap();
    /// assert_eq!(b.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| slot.data.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every CPU's buffer was empty when looked at (a snapshot).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(cpulocal::PerCpuMemcpyBuffer::<u8>::new(4).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs a memcpy-store on buffer `at`: if its count is `expect`, copies
    /// one `T` between the caller's `mine` and the slot's entry `entry`
    /// (into the entry for a push, out of it for a pop) and stores
    /// `expect + 1` (push) or `expect - 1` (pop) in the count. The shape's
    /// closure holds two words, `expect` and `mine`, so that the slow path
    /// gets them in registers.
    ///
    /// # Safety
    ///
    /// `entry < capacity`, and it is the free entry `expect` for a push, the
    /// live entry `expect - 1` for a pop (module docs); `mine` is valid for
    /// one `T`.
    #[inline(always)]
    unsafe fn copy<const PUSH: bool>(
        &self,
        at: At<'_, Stack<T>>,
        expect: usize,
        mine: *mut T,
    ) -> bool {
        let shape = move |slot: &Slot<Stack<T>>| {
            let entry = slot
                .data
                .data
                .as_ptr()
                .wrapping_add(if PUSH { expect } else { expect - 1 })
                .cast::<u8>()
                .cast_mut();
            let (dst, src) = if PUSH {
                (entry, mine.cast::<u8>().cast_const())
            } else {
                (mine.cast::<u8>(), entry.cast_const())
            };
            Shape::CbneMemcpyStore {
                vo: Shape::offset(&slot.fence, slot.data.count.as_ptr()),
                expect,
                dst,
                src,
                len: size_of::<T>(),
                newv: if PUSH { expect + 1 } else { expect - 1 },
            }
        };
        // SAFETY: the caller's entry, of `at`'s slot. Release for both
        // directions: a push publishes the copied bytes; a pop's copy out is
        // ordered before the store that frees the entry.
        unsafe { self.slots.perform(at, Order::Release, Follow::Slot, shape) }.is_ok()
    }

    /// Copies `value` into the current CPU's buffer, or gives it back if that
    /// buffer is full (other CPUs' buffers are not looked at).
    ///
    /// # Errors
    ///
    /// `Err(value)` when the current CPU's buffer holds
    /// [`capacity`](Self::capacity) values.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(1);
    /// assert!(b.push(1u16).is_ok());
    /// // Refused if still on the same CPU, else stored on the new one.
    /// match b.push(2) {
    ///     Err(back) => assert_eq!(back, 2),
    ///     Ok(()) => assert_eq!(b.drain().count(), 2),
    /// }
    /// ```
    #[inline]
    pub fn push(&self, value: T) -> Result<(), T> {
        loop {
            match self.try_push(self.slots.here(), &value) {
                Some(true) => return Ok(()),
                Some(false) => return Err(value),
                None => {} // another push or pop on that buffer came first
            }
        }
    }

    /// Copies `value` into `cpu`'s buffer, from any CPU (a critical section
    /// if the caller runs on `cpu`, the fenced path otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::Full`] if that buffer is full, [`Error::CpuOutOfRange`] if
    /// `cpu >= self.cpus()`; the value comes back in the [`PushError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuMemcpyBuffer};
    ///
    /// let b = PerCpuMemcpyBuffer::new(1);
    /// b.push_on(0, [1u8; 4])?;
    /// assert_eq!(b.push_on(0, [2; 4]).unwrap_err().error, Error::Full { cpu: 0 });
    /// assert_eq!(b.pop_on(0)?, Some([1; 4]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_on(&self, cpu: usize, value: T) -> Result<(), PushError<T>> {
        let at = match self.slots.on(cpu) {
            Ok(at) => at,
            Err(error) => return Err(PushError { value, error }),
        };
        loop {
            match self.try_push(at, &value) {
                Some(true) => return Ok(()),
                Some(false) => {
                    return Err(PushError {
                        value,
                        error: Error::Full { cpu },
                    })
                }
                None => {}
            }
        }
    }

    /// One push attempt on buffer `at`: `Some(false)` if full, None if the
    /// count changed under it.
    #[inline(always)]
    fn try_push(&self, at: At<'_, Stack<T>>, value: &T) -> Option<bool> {
        let stack = &at.slot.data;
        let c = stack.count.load(Ordering::Relaxed);
        if c >= stack.data.len() {
            return Some(false);
        }
        // SAFETY: entry `c < capacity` of buffer `at`, free when the compare
        // holds; `value` is the caller's, valid for one `T` (and only read).
        unsafe { self.copy::<true>(at, c, (value as *const T).cast_mut()) }.then_some(true)
    }

    /// Pops the value last pushed on the current CPU's buffer, if any. Values
    /// on other CPUs' buffers are not looked at: see
    /// [`pop_on`](Self::pop_on) and [`drain`](Self::drain).
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(4);
    /// assert_eq!(b.pop(), None::<[u64; 2]>);
    /// b.push([1, 2]).unwrap();
    /// // Some([1, 2]) unless the thread migrated in between.
    /// let got = b.pop().into_iter().chain(b.drain()).collect::<Vec<_>>();
    /// assert_eq!(got, [[1, 2]]);
    /// ```
    #[inline]
    pub fn pop(&self) -> Option<T> {
        let mut out = MaybeUninit::uninit();
        self.pop_into(&mut out).map(|v| *v)
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
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(4);
    /// b.push(1u8).unwrap();
    /// let found: Vec<u8> = (0..b.cpus()).filter_map(|c| b.pop_on(c).unwrap()).collect();
    /// assert_eq!(found, [1]);
    /// assert!(b.pop_on(b.cpus()).is_err());
    /// ```
    pub fn pop_on(&self, cpu: usize) -> Result<Option<T>, Error> {
        let at = self.slots.on(cpu)?;
        let mut out = MaybeUninit::<T>::uninit();
        loop {
            match self.try_pop(at, out.as_mut_ptr()) {
                // SAFETY: as in `pop_into`.
                Some(true) => return Ok(Some(unsafe { out.assume_init() })),
                Some(false) => return Ok(None),
                None => {}
            }
        }
    }

    /// One pop attempt on buffer `at` into `out`: `Some(true)` popped (`out`
    /// holds the value), `Some(false)` empty, None when the count changed
    /// under it (`out` may hold part of a value).
    #[inline(always)]
    fn try_pop(&self, at: At<'_, Stack<T>>, out: *mut T) -> Option<bool> {
        let stack = &at.slot.data;
        let c = stack.count.load(Ordering::Relaxed);
        // Entry `c - 1`; none when the count is 0 (it wraps).
        if c.wrapping_sub(1) >= stack.data.len() {
            return Some(false);
        }
        // SAFETY: entry `c - 1 < capacity` of buffer `at`, live when the
        // compare holds; `out` is the caller's, with room for one `T`.
        unsafe { self.copy::<false>(at, c, out) }.then_some(true)
    }

    /// Pops the value last pushed on the current CPU's buffer into `out`,
    /// copying it once, and returns it there; None if that buffer is empty.
    /// For large values, or loops that move values from one buffer to
    /// another, this saves the copies [`pop`](Self::pop) and
    /// [`push`](Self::push) make of a value passed by value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::mem::MaybeUninit;
    ///
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(4);
    /// b.push([7u64; 32]).unwrap();
    /// let mut slot = MaybeUninit::uninit();
    /// if let Some(item) = b.pop_into(&mut slot) {
    ///     assert_eq!(item[31], 7);
    ///     b.push_from(item).unwrap(); // copied back, not moved through the stack
    /// }
    /// assert_eq!(b.len(), 1);
    /// ```
    #[inline]
    pub fn pop_into<'a>(&self, out: &'a mut MaybeUninit<T>) -> Option<&'a mut T> {
        loop {
            match self.try_pop(self.slots.here(), out.as_mut_ptr()) {
                // SAFETY: the pop committed: the copy, made in the same step as
                // the compare, holds the bytes of a live entry (module docs), a
                // `T` a push copied in whole.
                Some(true) => return Some(unsafe { out.assume_init_mut() }),
                Some(false) => return None,
                None => {} // another push or pop on that buffer came first
            }
        }
    }

    /// Copies `*value` into the current CPU's buffer (as
    /// [`push`](Self::push), from a reference: the value is read once, by the
    /// copy into the buffer).
    ///
    /// # Errors
    ///
    /// [`Error::Full`] when the current CPU's buffer holds
    /// [`capacity`](Self::capacity) values.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(1);
    /// let v = [1u8; 64];
    /// b.push_from(&v)?;
    /// if let Err(e) = b.push_from(&v) {
    ///     assert!(matches!(e, cpulocal::Error::Full { .. })); // same CPU: full
    /// }
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    #[inline]
    pub fn push_from(&self, value: &T) -> Result<(), Error> {
        loop {
            let at = self.slots.here();
            match self.try_push(at, value) {
                Some(true) => return Ok(()),
                Some(false) => return Err(Error::Full { cpu: at.index }),
                None => {}
            }
        }
    }

    /// Takes every buffer's values, one CPU after the other: each buffer is
    /// copied out and emptied whole under its fence when the iterator reaches
    /// it, then yielded in LIFO order. Values pushed meanwhile stay for a
    /// later call.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuMemcpyBuffer::new(8);
    /// for i in 0..3u32 {
    ///     b.push(i).unwrap();
    /// }
    /// let mut got: Vec<u32> = b.drain().collect();
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

/// [`PerCpuMemcpyBuffer::drain`]'s iterator: copies one CPU's buffer into
/// `taken` at a time.
struct Drain<'a, T: Copy> {
    buffer: &'a PerCpuMemcpyBuffer<T>,
    next_cpu: usize,
    /// Values copied out of a buffer; yielded from the back.
    taken: Vec<T>,
}

impl<T: Copy> Iterator for Drain<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(v) = self.taken.pop() {
                return Some(v);
            }
            let cpu = self.next_cpu;
            if cpu >= self.buffer.cpus() {
                return None;
            }
            self.next_cpu += 1;
            let taken = &mut self.taken;
            self.buffer.slots.fenced(cpu, |stack| {
                let n = stack.count.load(Ordering::Relaxed);
                debug_assert!(taken.is_empty() && taken.capacity() >= n);
                // SAFETY: under the fence the slot is ours (module docs):
                // entries `0..n` are live `T`s, and `taken`, empty, has room
                // for `capacity >= n` of them (no allocation under the
                // fence). `UnsafeCell<MaybeUninit<T>>` has the layout of `T`.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        stack.data.as_ptr().cast::<T>(),
                        taken.as_mut_ptr(),
                        n,
                    );
                    taken.set_len(n);
                }
                stack.count.store(0, Ordering::Relaxed);
            });
        }
    }
}

impl<T: Copy> fmt::Debug for PerCpuMemcpyBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuMemcpyBuffer")
            .field("cpus", &self.cpus())
            .field("capacity", &self.capacity)
            .field("item_size", &size_of::<T>())
            .field("index", &self.index())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
