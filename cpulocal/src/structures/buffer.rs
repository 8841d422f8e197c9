//! [`PerCpuBuffer<W>`]: a bounded per-CPU stack of words ([`Word`]: owned
//! or shared pointers, raw pointers, integers), built on the store-store and
//! double-compare shapes.
//!
//! # Safety
//!
//! Each slot is a fence, a count and `capacity` entries. Entries `0..count`
//! are *live*: each holds a word from [`Word::into_word`] that the buffer
//! owns (whatever that word owns: a box, a reference count). Entries at
//! `count` and above hold nothing the buffer owns (possibly stale or
//! speculative words, never turned back into values).
//!
//! A slot's count and entries are written only through that slot's fence:
//! by [`Slots::perform`] (a critical section on the slot's CPU, or the shape
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
//!   live range once, by one commit, so a committed pop owns its word exactly
//!   once.
//!
//! The pair compare is what makes the pointer chosen before the step the one
//! the step removes. With the count alone, a pop that read `(c, p)` could be
//! overtaken by another thread popping `p` and pushing `q` at the same index:
//! the count is `c` again, and the first pop would take `p`, which the other
//! thread owns, and lose `q`. With the pair, that pop fails and reloads. No
//! ABA remains: if the pair compare succeeds after any number of interleaved
//! pushes and pops, entry `c - 1` holds `p` *now* and is live *now*, which is
//! all the pop relies on; it turns nothing into a value before its commit.
//! This holds even when two live entries hold the same word (a box freed and
//! its address reused, a zero-sized `T`, whose boxes all share one dangling
//! address, or equal integers): ownership goes by entry, not by word.
//!
//! What a word points to is written before the push commits with a
//! store-release, and read after the pop commits: on one CPU, program order
//! (a context switch orders the rest); across CPUs, the fence's acquire and
//! release and the membarrier.
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::shape::driver::{drop_all, zeroed_slice, At, Follow, Slot, Slots};
use crate::shape::Order;
use crate::shape::Shape;
use crate::stats::PathStats;
use crate::Error;
use crate::Index;
use crate::PushError;

/// A value that is one machine word, which [`PerCpuBuffer`] stores as it is:
/// owning or shared pointers ([`Box<T>`], [`Arc<T>`]), pointers without
/// ownership ([`NonNull<T>`], `&'static T`) and plain [`usize`]s.
///
/// # Safety
///
/// An implementation promises that
///
/// - `from_word(into_word(x))` is `x` again: the same value, owning what it
///   owned (the buffer calls `from_word` exactly once for each word it took
///   with `into_word`, and never for a word it did not);
/// - the value may be turned back on another thread: the buffer is `Sync` for
///   every `Word` and hands words between threads, so implement it only for
///   types that are `Send`, or whose use on another thread needs `unsafe`
///   anyway (raw pointers).
///
/// # Examples
///
/// A handle of your own, an index into a table:
///
/// ```
/// use cpulocal::{PerCpuBuffer, Word};
///
/// #[derive(Debug, PartialEq)]
/// struct Handle(u32);
///
/// // SAFETY: a plain integer; `from_word` rebuilds exactly what `into_word`
/// // took apart, and `Handle` is `Send`.
/// unsafe impl Word for Handle {
///     fn into_word(self) -> usize {
///         self.0 as usize
///     }
///     unsafe fn from_word(word: usize) -> Self {
///         Handle(word as u32)
///     }
/// }
///
/// let free = PerCpuBuffer::new(8);
/// free.push(Handle(3)).unwrap();
/// assert_eq!(free.drain().collect::<Vec<_>>(), [Handle(3)]);
/// ```
pub unsafe trait Word: Sized {
    /// The value as a word; ownership of what it owns passes to the word.
    fn into_word(self) -> usize;

    /// The value back from its word.
    ///
    /// # Safety
    ///
    /// `word` came from [`into_word`](Word::into_word), and is turned back
    /// once only.
    unsafe fn from_word(word: usize) -> Self;
}

// SAFETY: into_raw/from_raw round-trip a Box and its ownership; T: Send makes
// the box Send.
unsafe impl<T: Send> Word for Box<T> {
    #[inline]
    fn into_word(self) -> usize {
        Box::into_raw(self) as usize
    }
    #[inline]
    unsafe fn from_word(word: usize) -> Self {
        // SAFETY: from `into_word`, turned back once (the caller).
        unsafe { Box::from_raw(word as *mut T) }
    }
}

// SAFETY: into_raw/from_raw round-trip an Arc and its reference; T: Send +
// Sync makes the Arc Send.
unsafe impl<T: Send + Sync> Word for Arc<T> {
    #[inline]
    fn into_word(self) -> usize {
        Arc::into_raw(self) as usize
    }
    #[inline]
    unsafe fn from_word(word: usize) -> Self {
        // SAFETY: from `into_word`, turned back once (the caller).
        unsafe { Arc::from_raw(word as *const T) }
    }
}

// SAFETY: a raw pointer round-trips as its address; moving it between
// threads is harmless, dereferencing it needs `unsafe` wherever it is.
unsafe impl<T> Word for NonNull<T> {
    #[inline]
    fn into_word(self) -> usize {
        self.as_ptr() as usize
    }
    #[inline]
    unsafe fn from_word(word: usize) -> Self {
        // SAFETY: from `into_word` of a NonNull, so not null.
        unsafe { NonNull::new_unchecked(word as *mut T) }
    }
}

// SAFETY: a shared reference round-trips as its address; T: Sync makes it
// Send.
unsafe impl<T: Sync> Word for &'static T {
    #[inline]
    fn into_word(self) -> usize {
        self as *const T as usize
    }
    #[inline]
    unsafe fn from_word(word: usize) -> Self {
        // SAFETY: from `into_word` of a `&'static T`.
        unsafe { &*(word as *const T) }
    }
}

// SAFETY: the identity.
unsafe impl Word for usize {
    #[inline]
    fn into_word(self) -> usize {
        self
    }
    #[inline]
    unsafe fn from_word(word: usize) -> Self {
        word
    }
}

/// One CPU's count and entries (the entries out of line).
struct Stack {
    /// Live entries: `0..count`.
    count: AtomicUsize,
    /// `capacity` entries, each a word the buffer owns when live.
    items: Box<[AtomicUsize]>,
}

/// A bounded per-CPU stack of words: [`push`](Self::push) and
/// [`pop`](Self::pop) work on the current CPU's buffer with one restartable
/// sequence each (no atomic instruction, no allocation);
/// [`push_on`](Self::push_on), [`pop_on`](Self::pop_on) and
/// [`drain`](Self::drain) reach any CPU's buffer, through its fence when the
/// caller runs elsewhere.
///
/// Items are [`Word`]s, stored as they are: a `Box<T>` or `Arc<T>` you
/// already have moves in and out without another allocation, and so do
/// `NonNull<T>`, `&'static T` and `usize`. For small `Copy` values stored
/// inline see [`PerCpuMemcpyBuffer`](crate::PerCpuMemcpyBuffer).
///
/// Order is last-in first-out per CPU; across CPUs there is none. A value
/// pushed on one CPU is popped by a thread on that CPU, or by `pop_on` or
/// `drain` from anywhere. Every operation completes without the caller
/// retrying; a thread that migrates mid-operation finishes on its new CPU's
/// buffer, or on its old one through the fence.
///
/// Capacity: fixed per CPU at construction ([`capacity`](Self::capacity)
/// words per CPU, `capacity × cpus()` in all). A push onto a full buffer
/// gives the value back rather than look at other CPUs' buffers, so callers
/// choose: keep it, drop it, or put it somewhere else (a global pool, say).
/// Values left in the buffers are dropped with it (all of them, even if one's
/// `Drop` panics). Not for signal handlers: the fenced path may wait for
/// another thread.
///
/// # Examples
///
/// A per-CPU cache of boxed objects, refilled from and spilled to a global
/// pool:
///
/// ```
/// use cpulocal::PerCpuBuffer;
/// use std::sync::Mutex;
///
/// let global: Mutex<Vec<Box<[u8; 256]>>> = Mutex::new(Vec::new());
/// let cache = PerCpuBuffer::new(2);
///
/// let get = || cache.pop().or_else(|| global.lock().unwrap().pop()).unwrap_or_else(|| Box::new([0; 256]));
/// let put = |obj| {
///     if let Err(obj) = cache.push(obj) {
///         global.lock().unwrap().push(obj); // this CPU's cache is full
///     }
/// };
/// let a = get();
/// let b = get();
/// put(a);
/// put(b);
/// put(Box::new([1; 256]));
/// assert_eq!(cache.len() + global.lock().unwrap().len(), 3);
/// ```
pub struct PerCpuBuffer<W: Word> {
    slots: Slots<Stack>,
    capacity: usize,
    _owns: PhantomData<W>,
}

// SAFETY: the buffer owns its words; every `Word` may move to another thread
// (the trait's contract).
unsafe impl<W: Word> Send for PerCpuBuffer<W> {}
// SAFETY: words move in and out whole, never shared: `&PerCpuBuffer` hands
// out owned words only, which may move between threads (the trait's
// contract), as through a channel.
unsafe impl<W: Word> Sync for PerCpuBuffer<W> {}

impl<W: Word> PerCpuBuffer<W> {
    /// An empty buffer of `capacity` words per possible CPU.
    ///
    /// # Panics
    ///
    /// Where [`try_new`](Self::try_new) returns an error: `capacity` 0, or
    /// more memory than can be allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::<Box<u64>>::new(16);
    /// assert_eq!(b.capacity(), 16);
    /// assert_eq!(b.cpus(), cpulocal::possible_cpus());
    /// ```
    #[track_caller]
    pub fn new(capacity: usize) -> Self {
        Self::with_index(Index::Cpu, capacity)
    }

    /// An empty buffer of `capacity` words per slot, the slots numbered `by`
    /// CPU or concurrency id (see [`Index`]).
    ///
    /// # Panics
    ///
    /// As [`new`](Self::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuBuffer};
    ///
    /// let b = PerCpuBuffer::with_index(Index::MmCid, 8);
    /// b.push(1usize).unwrap();
    /// assert_eq!(b.drain().collect::<Vec<_>>(), [1]);
    /// ```
    #[track_caller]
    pub fn with_index(by: Index, capacity: usize) -> Self {
        Self::try_with_index(by, capacity).unwrap_or_else(|e| panic!("PerCpuBuffer: {e}"))
    }

    /// An empty buffer of `capacity` words per possible CPU, or an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `capacity` is 0; [`Error::Alloc`] if the
    /// entries (`capacity × cpus()` words, zeroed lazily) cannot be
    /// allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuBuffer};
    ///
    /// assert!(PerCpuBuffer::<usize>::try_new(1024).is_ok());
    /// assert!(matches!(PerCpuBuffer::<usize>::try_new(1 << 60), Err(Error::Alloc { .. })));
    /// assert!(matches!(PerCpuBuffer::<usize>::try_new(0), Err(Error::InvalidArgument { .. })));
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
    /// use cpulocal::{Index, PerCpuBuffer};
    /// let b = PerCpuBuffer::<usize>::try_with_index(Index::MmCid, 4)?;
    /// assert_eq!(b.capacity(), 4);
    /// # Ok::<(), cpulocal::Error>(())
    /// ```
    pub fn try_with_index(by: Index, capacity: usize) -> Result<Self, Error> {
        if capacity == 0 {
            return Err(Error::InvalidArgument {
                what: "the capacity per CPU must be at least 1",
            });
        }
        let slots = Slots::try_new(by, |_| {
            Ok::<_, Error>(Stack {
                count: AtomicUsize::new(0),
                // SAFETY: an all-zero AtomicUsize is 0.
                items: unsafe { zeroed_slice(capacity) }?,
            })
        })?;
        Ok(PerCpuBuffer {
            slots,
            capacity,
            _owns: PhantomData,
        })
    }

    /// The number of per-CPU buffers.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::<usize>::new(1);
    /// assert!(b.cpus() >= 1);
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How many words each CPU's buffer holds at most.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::PerCpuBuffer::<usize>::new(5).capacity(), 5);
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
    /// assert_eq!(PerCpuBuffer::<usize>::new(1).index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// How many operations left the fast path so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(4);
    /// b.push(1usize).unwrap();
    /// let s = b.stats();
    /// assert!(s.retried + s.fenced <= 1);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }

    /// How many words the buffers hold: a snapshot, one load of each CPU's
    /// count (pushes and pops elsewhere may change it meanwhile).
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(4);
    /// b.push(7usize).unwrap();
    /// assert_eq!(b.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| slot.data.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every CPU's buffer was empty when looked at (a snapshot, as
    /// [`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::<usize>::new(4);
    /// assert!(b.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes `value` on the current CPU's buffer, or gives it back if that
    /// buffer is full (other CPUs' buffers are not looked at). One critical
    /// section; no allocation.
    ///
    /// # Errors
    ///
    /// `Err(value)`, untouched, when the current CPU's buffer holds
    /// [`capacity`](Self::capacity) words.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(1);
    /// assert!(b.push(Box::new("a")).is_ok());
    /// // Refused if still on the same CPU, else stored on the new one.
    /// match b.push(Box::new("b")) {
    ///     Err(back) => assert_eq!(*back, "b"),
    ///     Ok(()) => assert_eq!(b.drain().count(), 2),
    /// }
    /// ```
    #[inline]
    pub fn push(&self, value: W) -> Result<(), W> {
        let word = value.into_word();
        loop {
            match self.try_push(self.slots.here(), word) {
                Attempt::Done(true) => return Ok(()),
                // SAFETY: never published (module docs: an aborted push's
                // entry is not live), so still ours, from `into_word`.
                Attempt::Done(false) => return Err(unsafe { W::from_word(word) }),
                Attempt::Raced => {} // another push or pop came first
            }
        }
    }

    /// Pushes `value` on `cpu`'s buffer, from any CPU (a critical section if
    /// the caller runs on `cpu`, the fenced path otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::Full`] if that buffer is full, [`Error::CpuOutOfRange`] if
    /// `cpu >= self.cpus()`; the value comes back in the [`PushError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Error, PerCpuBuffer};
    ///
    /// let b = PerCpuBuffer::new(1);
    /// b.push_on(0, 1usize)?;
    /// let full = b.push_on(0, 2).unwrap_err();
    /// assert_eq!((full.value, full.error), (2, Error::Full { cpu: 0 }));
    /// assert_eq!(b.pop_on(0)?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_on(&self, cpu: usize, value: W) -> Result<(), PushError<W>> {
        let at = match self.slots.on(cpu) {
            Ok(at) => at,
            Err(error) => return Err(PushError { value, error }),
        };
        let word = value.into_word();
        loop {
            match self.try_push(at, word) {
                Attempt::Done(true) => return Ok(()),
                Attempt::Done(false) => {
                    return Err(PushError {
                        // SAFETY: as in `push`.
                        value: unsafe { W::from_word(word) },
                        error: Error::Full { cpu },
                    });
                }
                Attempt::Raced => {}
            }
        }
    }

    /// One push attempt of `word` on buffer `at`: `Done(false)` if full.
    #[inline(always)]
    fn try_push(&self, at: At<'_, Stack>, word: usize) -> Attempt<bool> {
        let stack = &at.slot.data;
        let c = stack.count.load(Ordering::Relaxed);
        if c >= stack.items.len() {
            return Attempt::Done(false);
        }
        let shape = move |slot: &Slot<Stack>| Shape::CbneStoreStore {
            vo: Shape::offset(&slot.fence, slot.data.count.as_ptr()),
            expect: c,
            v2: entry(&slot.data, c),
            newv2: word,
            newv: c + 1,
        };
        // SAFETY: buffer `at`'s count and its entry `c < capacity`, not live
        // while the count is `c` (module docs); release publishes what the
        // word points to with the count.
        match unsafe { self.slots.perform(at, Order::Release, Follow::Slot, shape) } {
            Ok(()) => Attempt::Done(true),
            Err(_) => Attempt::Raced,
        }
    }

    /// Pops the word last pushed on the current CPU's buffer, if any. One
    /// critical section; no free. Words on other CPUs' buffers are not
    /// looked at: see [`pop_on`](Self::pop_on) and [`drain`](Self::drain).
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(4);
    /// assert_eq!(b.pop(), None::<Box<u32>>);
    /// b.push(Box::new(3)).unwrap();
    /// // Some(3) unless the thread migrated in between.
    /// let got = b.pop().into_iter().chain(b.drain()).map(|b| *b).collect::<Vec<_>>();
    /// assert_eq!(got, [3]);
    /// ```
    #[inline]
    pub fn pop(&self) -> Option<W> {
        loop {
            if let Attempt::Done(v) = self.try_pop(self.slots.here()) {
                return v;
            }
        }
    }

    /// Pops the word last pushed on `cpu`'s buffer, from any CPU (a critical
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
    /// b.push(1usize).unwrap();
    /// let found: Vec<usize> = (0..b.cpus()).filter_map(|c| b.pop_on(c).unwrap()).collect();
    /// assert_eq!(found, [1]);
    /// assert!(b.pop_on(b.cpus()).is_err());
    /// ```
    pub fn pop_on(&self, cpu: usize) -> Result<Option<W>, Error> {
        let at = self.slots.on(cpu)?;
        loop {
            if let Attempt::Done(v) = self.try_pop(at) {
                return Ok(v);
            }
        }
    }

    /// One pop attempt on buffer `at`.
    #[inline(always)]
    fn try_pop(&self, at: At<'_, Stack>) -> Attempt<Option<W>> {
        let stack = &at.slot.data;
        let c = stack.count.load(Ordering::Acquire);
        // Entry `c - 1`; none when the count is 0 (it wraps).
        let Some(top) = stack.items.get(c.wrapping_sub(1)) else {
            return Attempt::Done(None);
        };
        let top = top.load(Ordering::Relaxed);
        let shape = move |slot: &Slot<Stack>| Shape::CbneLoadCbneStore {
            vo: Shape::offset(&slot.fence, slot.data.count.as_ptr()),
            expect: c,
            v2: entry(&slot.data, c - 1),
            expect2: top,
            newv: c - 1,
        };
        // SAFETY: buffer `at`'s count and entry `c - 1 < capacity`. Relaxed:
        // the store only unlinks an entry and publishes nothing.
        if unsafe { self.slots.perform(at, Order::Relaxed, Follow::Slot, shape) }.is_err() {
            return Attempt::Raced;
        }
        // SAFETY: the pop committed with entry `c - 1` live and holding
        // `top`: that word is now ours alone (module docs), from `into_word`.
        Attempt::Done(Some(unsafe { W::from_word(top) }))
    }

    /// Takes every buffer's words, one CPU after the other: each buffer is
    /// emptied whole under its fence when the iterator reaches it, then
    /// yielded in LIFO order. Words pushed meanwhile stay for a later call.
    /// Dropping the iterator early drops the values it took from the buffer
    /// it was draining; buffers it had not reached keep theirs.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = cpulocal::PerCpuBuffer::new(8);
    /// for i in 0..3usize {
    ///     b.push(i).unwrap();
    /// }
    /// let mut got: Vec<usize> = b.drain().collect();
    /// got.sort();
    /// assert_eq!(got, [0, 1, 2]);
    /// assert_eq!(b.drain().count(), 0);
    /// ```
    pub fn drain(&self) -> impl Iterator<Item = W> + '_ {
        Drain {
            buffer: self,
            next_cpu: 0,
            taken: Vec::with_capacity(self.capacity),
        }
    }
}

/// Entry `i` of `stack`, as a shape names it (`i < capacity`: checked by
/// the caller, so that the shape's closure holds no bounds check).
#[inline(always)]
fn entry(stack: &Stack, i: usize) -> *mut usize {
    stack
        .items
        .as_ptr()
        .wrapping_add(i)
        .cast::<usize>()
        .cast_mut()
}

/// The result of one push or pop attempt.
enum Attempt<T> {
    /// The operation is over, with this result.
    Done(T),
    /// The count or the top entry changed under it: read again.
    Raced,
}

/// [`PerCpuBuffer::drain`]'s iterator: empties one CPU's buffer into `taken`
/// at a time.
struct Drain<'a, W: Word> {
    buffer: &'a PerCpuBuffer<W>,
    next_cpu: usize,
    /// Words taken out of a buffer, ours alone; yielded from the back.
    taken: Vec<usize>,
}

impl<W: Word> Iterator for Drain<'_, W> {
    type Item = W;
    fn next(&mut self) -> Option<W> {
        loop {
            if let Some(word) = self.taken.pop() {
                // SAFETY: taken out of the live range under the fence, so
                // ours; from `into_word` in a push.
                return Some(unsafe { W::from_word(word) });
            }
            let cpu = self.next_cpu;
            if cpu >= self.buffer.cpus() {
                return None;
            }
            self.next_cpu += 1;
            let taken = &mut self.taken;
            self.buffer.slots.fenced(cpu, |stack| {
                let n = stack.count.load(Ordering::Relaxed);
                // No allocation under the fence: `taken` has `capacity` room.
                taken.extend(stack.items[..n].iter().map(|e| e.load(Ordering::Relaxed)));
                stack.count.store(0, Ordering::Relaxed);
            });
        }
    }
}

impl<W: Word> Drop for Drain<'_, W> {
    fn drop(&mut self) {
        // SAFETY: as in `next`.
        drop_all(
            self.taken
                .drain(..)
                .rev()
                .map(|w| unsafe { W::from_word(w) }),
        );
    }
}

impl<W: Word> Drop for PerCpuBuffer<W> {
    fn drop(&mut self) {
        drop_all(self.slots.iter_mut().flat_map(|stack| {
            let n = *stack.count.get_mut();
            // SAFETY: entries below the count are live, owned by the buffer,
            // which nothing else can reach now (`&mut self`); each is turned
            // back once.
            stack.items[..n]
                .iter_mut()
                .map(|e| unsafe { W::from_word(*e.get_mut()) })
        }));
    }
}

impl<W: Word> fmt::Debug for PerCpuBuffer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuBuffer")
            .field("cpus", &self.cpus())
            .field("capacity", &self.capacity)
            .field("index", &self.index())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
