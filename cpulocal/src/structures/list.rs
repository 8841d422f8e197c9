//! [`PerCpuList<T>`]: a per-CPU LIFO of owned nodes, built on the list-pop
//! and compare-and-store shapes; [`Node<T>`], the node a value lives in.
//!
//! # Safety
//!
//! Each slot's head word is written only by the shapes, through
//! [`Slots::perform`] on that slot: by critical sections on the slot's CPU,
//! or under the fence after the membarrier (and by `drain` and `len`, under
//! the fence, and `Drop`, with `&mut self`). A node is owned by exactly one
//! place at a time: a [`Node`] handle (the pusher until its compare-and-store
//! commits), the list while linked, the popper once the pop commits. Nodes
//! are freed only by a handle (or by `Drop`, with `&mut self`), so the pop
//! shape's read of the head node's link never touches freed memory: the read
//! happens inside a section or under the fence, where no other pop of that
//! slot can commit, and a linked node has no handle.
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::mem::{offset_of, ManuallyDrop};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::shape::driver::{drop_all, At, Follow, Slot, Slots};
use crate::shape::Order;
use crate::shape::Shape;
use crate::stats::PathStats;
use crate::Error;
use crate::Index;
use crate::PushError;

/// A node's memory: the link first, so the pop shape reads it at offset 0.
#[repr(C)]
struct Links<T> {
    next: usize,
    value: T,
}

const NEXT: usize = offset_of!(Links<()>, next);
const _: () = assert!(NEXT == 0);

/// A value in a list node of its own: allocated once by [`Node::new`], then
/// moved in and out of [`PerCpuList`]s by
/// [`push_node`](PerCpuList::push_node) and
/// [`pop_node`](PerCpuList::pop_node) without touching the allocator. It
/// derefs to the value; [`into_inner`](Node::into_inner) frees the node and
/// gives the value back. Dropping a node drops its value.
///
/// This is the per-CPU object cache pattern: allocate objects once, keep the
/// free ones on the list of the CPU that freed them, and take them back on
/// that CPU (see [`PerCpuList`] for a pool).
///
/// # Examples
///
/// ```
/// use cpulocal::{Node, PerCpuList};
///
/// let list = PerCpuList::new();
/// let mut node = Node::new(vec![0u8; 4096]);
/// node[0] = 1;
/// list.push_node(node);                    // no allocation
/// let node = list.pop_node().expect("pushed on this CPU, unless it moved");
/// assert_eq!(node[0], 1);                  // no free either
/// assert_eq!(node.into_inner().len(), 4096);
/// # let _ = list.drain();
/// ```
pub struct Node<T> {
    links: NonNull<Links<T>>,
    _owns: PhantomData<Box<Links<T>>>,
}

// SAFETY: a node owns its value (as a Box does), so it moves with it.
unsafe impl<T: Send> Send for Node<T> {}
// SAFETY: `&Node` gives only `&T`.
unsafe impl<T: Sync> Sync for Node<T> {}

impl<T> Node<T> {
    /// A node holding `value` (one allocation).
    pub fn new(value: T) -> Self {
        let links = Box::new(Links { next: 0, value });
        Node {
            links: NonNull::from(Box::leak(links)),
            _owns: PhantomData,
        }
    }

    /// The value, the node freed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::Node::new(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        // SAFETY: the handle owns its node, from `Box::leak` in `new` (or a
        // list that took it from there); forgetting the handle hands that
        // ownership to the box.
        let links = unsafe { Box::from_raw(ManuallyDrop::new(self).links.as_ptr()) };
        links.value
    }

    /// The node's address, ownership passing to the caller (a list).
    fn into_raw(self) -> *mut Links<T> {
        ManuallyDrop::new(self).links.as_ptr()
    }

    /// A handle for a node the caller owns.
    ///
    /// # Safety
    ///
    /// `links` came from [`into_raw`](Self::into_raw) and is owned by the
    /// caller, who gives it up.
    unsafe fn from_raw(links: *mut Links<T>) -> Self {
        Node {
            // SAFETY: from `into_raw`, never null.
            links: unsafe { NonNull::new_unchecked(links) },
            _owns: PhantomData,
        }
    }
}

impl<T> Deref for Node<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the handle owns a live node (type invariant).
        unsafe { &self.links.as_ref().value }
    }
}

impl<T> DerefMut for Node<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the handle owns a live node; `&mut self` makes it unique.
        unsafe { &mut self.links.as_mut().value }
    }
}

impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        // SAFETY: the handle owns its node, from `Box::leak`.
        drop(unsafe { Box::from_raw(self.links.as_ptr()) });
    }
}

impl<T: fmt::Debug> fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Node").field(&**self).finish()
    }
}

/// A per-CPU LIFO stack of owned nodes: [`push_node`](Self::push_node) and
/// [`pop_node`](Self::pop_node) work on the current CPU's list with a
/// restartable sequence each (no atomic instruction, no allocation);
/// [`push_node_on`](Self::push_node_on), [`pop_node_on`](Self::pop_node_on)
/// and [`drain`](Self::drain) reach any CPU's list, through its fence when
/// the caller runs elsewhere. [`push`](Self::push) and [`pop`](Self::pop)
/// are the same with a node allocated and freed for the value.
///
/// Order is last-in first-out per CPU; across CPUs there is none. A node
/// pushed on one CPU is popped by a thread on that CPU, or by `pop_node_on`
/// or `drain` from anywhere. Every operation completes without the caller
/// retrying; a thread that migrates between reading the CPU number and
/// committing finishes on its old CPU's list through the fence.
///
/// Capacity: unbounded. Values left in the lists are dropped with the list
/// (all of them, even if one's `Drop` panics). Not for signal handlers: the
/// fenced path may wait for another thread, and `push`/`pop` allocate.
///
/// # Examples
///
/// A per-CPU pool of buffers: allocated once, reused on the CPU that
/// returned them.
///
/// ```
/// use cpulocal::{Node, PerCpuList};
///
/// struct Pool {
///     free: PerCpuList<Vec<u8>>,
/// }
///
/// impl Pool {
///     fn get(&self) -> Node<Vec<u8>> {
///         self.free
///             .pop_node()
///             .unwrap_or_else(|| Node::new(Vec::with_capacity(4096)))
///     }
///     fn put(&self, mut buf: Node<Vec<u8>>) {
///         buf.clear();
///         self.free.push_node(buf);
///     }
/// }
///
/// let pool = Pool { free: PerCpuList::new() };
/// let mut buf = pool.get();
/// buf.extend_from_slice(b"hello");
/// pool.put(buf);
/// let again = pool.get(); // the same allocation, if still on that CPU
/// assert!(again.is_empty() && again.capacity() >= 4096);
/// ```
pub struct PerCpuList<T> {
    /// Each slot's head: the first node's address, 0 when empty.
    slots: Slots<AtomicUsize>,
    _owns: PhantomData<Node<T>>,
}

// SAFETY: the list owns its values (in nodes); moving it moves them.
unsafe impl<T: Send> Send for PerCpuList<T> {}
// SAFETY: values move in and out whole, never shared: `&PerCpuList` hands out
// owned nodes only, so `T: Send` suffices (as for a channel).
unsafe impl<T: Send> Sync for PerCpuList<T> {}

impl<T> PerCpuList<T> {
    /// An empty list with one slot per possible CPU.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::<u8>::new();
    /// assert!(l.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_index(Index::Cpu)
    }

    /// An empty list whose slots are numbered `by` CPU or concurrency id (see
    /// [`Index`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuList};
    ///
    /// let l = PerCpuList::with_index(Index::MmCid);
    /// l.push(1);
    /// assert_eq!(l.drain().collect::<Vec<_>>(), [1]);
    /// ```
    pub fn with_index(by: Index) -> Self {
        PerCpuList {
            slots: Slots::new(by, |_| AtomicUsize::new(0)),
            _owns: PhantomData,
        }
    }

    /// The number of per-CPU lists.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(cpulocal::PerCpuList::<()>::new().cpus(), cpulocal::possible_cpus());
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// How the lists are numbered.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuList};
    /// assert_eq!(PerCpuList::<()>::new().index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// How many operations left the fast path so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push(1);
    /// assert!(l.stats().fenced <= 1);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }

    /// Pushes `node` on the current CPU's list: one critical section, no
    /// allocation.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push_node(cpulocal::Node::new("a"));
    /// assert_eq!(l.drain().collect::<Vec<_>>(), ["a"]);
    /// ```
    #[inline]
    pub fn push_node(&self, node: Node<T>) {
        let node = node.into_raw();
        loop {
            // SAFETY: the node is ours (from `into_raw`), and stays so
            // unless the push commits.
            if unsafe { self.try_push(self.slots.here(), node) } {
                return;
            }
            // Another push or pop on that list came first: read it again.
        }
    }

    /// Pushes `node` on `cpu`'s list, from any CPU (a critical section if
    /// the caller runs on `cpu`, the fenced path otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`, with the node given
    /// back in the [`PushError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Node, PerCpuList};
    ///
    /// let l = PerCpuList::new();
    /// l.push_node_on(0, Node::new(5))?;
    /// assert_eq!(l.pop_node_on(0)?.map(Node::into_inner), Some(5));
    /// let refused = l.push_node_on(l.cpus(), Node::new(6)).unwrap_err();
    /// assert_eq!(refused.value.into_inner(), 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_node_on(&self, cpu: usize, node: Node<T>) -> Result<(), PushError<Node<T>>> {
        let at = match self.slots.on(cpu) {
            Ok(at) => at,
            Err(error) => return Err(PushError { value: node, error }),
        };
        let node = node.into_raw();
        // SAFETY: as in `push_node`.
        while !unsafe { self.try_push(at, node) } {}
        Ok(())
    }

    /// One push attempt of `node` on list `at`: false if the head changed
    /// since it was read.
    ///
    /// # Safety
    ///
    /// `node` is a node the caller owns; it passes to the list if the push
    /// commits.
    #[inline(always)]
    unsafe fn try_push(&self, at: At<'_, AtomicUsize>, node: *mut Links<T>) -> bool {
        let first = at.slot.data.load(Ordering::Relaxed);
        // SAFETY: the node is still the caller's alone.
        unsafe { (*node).next = first };
        let shape = move |slot: &Slot<AtomicUsize>| Shape::CbneStore {
            vo: Shape::offset(&slot.fence, slot.data.as_ptr()),
            expect: first,
            newv: node as usize,
        };
        // SAFETY: the shape names list `at`'s head; release publishes the
        // node's link (and value) with it.
        unsafe { self.slots.perform(at, Order::Release, Follow::Slot, shape) }.is_ok()
    }

    /// Pops the node last pushed on the current CPU's list, if any: one
    /// critical section, no free. Nodes on other CPUs' lists are not looked
    /// at: see [`pop_node_on`](Self::pop_node_on) and [`drain`](Self::drain).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Node, PerCpuList};
    ///
    /// let l = PerCpuList::new();
    /// assert!(l.pop_node().is_none());
    /// l.push_node(Node::new(3));
    /// // Some(3) unless the thread migrated in between.
    /// let got: Vec<i32> = l.pop_node().map(Node::into_inner).into_iter().chain(l.drain()).collect();
    /// assert_eq!(got, [3]);
    /// ```
    #[inline]
    pub fn pop_node(&self) -> Option<Node<T>> {
        self.pop_at(self.slots.here())
    }

    /// Pops the node last pushed on `cpu`'s list, from any CPU (a critical
    /// section if the caller runs on `cpu`, the fenced path otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push(1);
    /// let found: Vec<i32> = (0..l.cpus())
    ///     .filter_map(|c| l.pop_node_on(c).unwrap())
    ///     .map(cpulocal::Node::into_inner)
    ///     .collect();
    /// assert_eq!(found, [1]);
    /// assert!(l.pop_node_on(l.cpus()).is_err());
    /// ```
    pub fn pop_node_on(&self, cpu: usize) -> Result<Option<Node<T>>, Error> {
        Ok(self.pop_at(self.slots.on(cpu)?))
    }

    /// Pops from list `at`: the list-pop shape reads the head and its link
    /// in the step that unlinks it, so it needs no retry.
    #[inline(always)]
    fn pop_at(&self, at: At<'_, AtomicUsize>) -> Option<Node<T>> {
        let mut popped = core::mem::MaybeUninit::<usize>::uninit();
        let load: *mut usize = popped.as_mut_ptr();
        let shape = move |slot: &Slot<AtomicUsize>| Shape::CbeqStoreAddLoadStore {
            vo: Shape::offset(&slot.fence, slot.data.as_ptr()),
            expectnot: 0,
            offset: NEXT,
            load,
        };
        // SAFETY: the shape names list `at`'s head; linked nodes stay
        // allocated until popped (module docs); `popped` is a live local.
        if unsafe { self.slots.perform(at, Order::Relaxed, Follow::Slot, shape) }.is_err() {
            return None; // the head was 0: empty
        }
        // SAFETY: the pop committed, so it wrote the head it unlinked into
        // `popped`: that node is ours.
        Some(unsafe { Node::from_raw(popped.assume_init() as *mut Links<T>) })
    }

    /// Pushes `value` on the current CPU's list, in a node allocated for it
    /// ([`Node::new`] then [`push_node`](Self::push_node)).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push("a");
    /// assert_eq!(l.drain().collect::<Vec<_>>(), ["a"]);
    /// ```
    #[inline]
    pub fn push(&self, value: T) {
        self.push_node(Node::new(value));
    }

    /// Pushes `value` on `cpu`'s list, in a node allocated for it.
    ///
    /// # Errors
    ///
    /// As [`push_node_on`](Self::push_node_on), the value given back.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push_on(0, 'x')?;
    /// assert_eq!(l.pop_on(0)?, Some('x'));
    /// assert_eq!(l.push_on(l.cpus(), 'y').unwrap_err().value, 'y');
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_on(&self, cpu: usize, value: T) -> Result<(), PushError<T>> {
        self.push_node_on(cpu, Node::new(value))
            .map_err(|e| PushError {
                value: e.value.into_inner(),
                error: e.error,
            })
    }

    /// Pops the value last pushed on the current CPU's list, if any, freeing
    /// its node ([`pop_node`](Self::pop_node) then [`Node::into_inner`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push(10u32);
    /// l.push(11);
    /// // Same CPU, most likely: LIFO.
    /// let got: Vec<u32> = l.pop().into_iter().chain(l.drain()).collect();
    /// assert_eq!(got.len(), 2);
    /// ```
    #[inline]
    pub fn pop(&self) -> Option<T> {
        self.pop_node().map(Node::into_inner)
    }

    /// Pops the value last pushed on `cpu`'s list, freeing its node.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] if `cpu >= self.cpus()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push(1);
    /// let found: Vec<i32> = (0..l.cpus()).filter_map(|c| l.pop_on(c).unwrap()).collect();
    /// assert_eq!(found, [1]);
    /// assert!(l.pop_on(l.cpus()).is_err());
    /// ```
    pub fn pop_on(&self, cpu: usize) -> Result<Option<T>, Error> {
        Ok(self.pop_node_on(cpu)?.map(Node::into_inner))
    }

    /// Takes every list's values, one CPU after the other: each list is
    /// detached whole under its fence when the iterator reaches it, then
    /// yielded in LIFO order, each node freed. Values pushed meanwhile stay
    /// for a later call. Dropping the iterator early drops what it had
    /// detached; lists it had not reached keep theirs.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// (0..3).for_each(|i| l.push(i));
    /// let mut got: Vec<i32> = l.drain().collect();
    /// got.sort();
    /// assert_eq!(got, [0, 1, 2]);
    /// ```
    pub fn drain(&self) -> impl Iterator<Item = T> + '_ {
        self.drain_nodes().map(Node::into_inner)
    }

    /// As [`drain`](Self::drain), yielding the nodes (for pools that keep
    /// them).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push(1u8);
    /// let nodes: Vec<cpulocal::Node<u8>> = l.drain_nodes().collect();
    /// assert_eq!(*nodes[0], 1);
    /// ```
    pub fn drain_nodes(&self) -> impl Iterator<Item = Node<T>> + '_ {
        (0..self.cpus()).flat_map(move |cpu| Chain::<T> {
            next: self
                .slots
                .fenced(cpu, |head| head.swap(0, Ordering::Acquire)),
            _owns: PhantomData,
        })
    }

    /// How many values the lists hold: a snapshot, each CPU's list counted
    /// under its fence (so that no node can be popped and freed while it is
    /// walked), one after the other. It costs a `membarrier` per CPU and a
    /// walk of the nodes, and delays that CPU's list operations meanwhile:
    /// for diagnostics, not hot paths.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push(1);
    /// l.push(2);
    /// assert_eq!(l.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        (0..self.cpus())
            .map(|cpu| {
                self.slots.fenced(cpu, |head| {
                    let mut n = 0;
                    let mut next = head.load(Ordering::Acquire);
                    while next != 0 {
                        n += 1;
                        // SAFETY: under the fence the linked nodes are the
                        // list's and none can be popped (module docs).
                        next = unsafe { (*(next as *const Links<T>)).next };
                    }
                    n
                })
            })
            .sum()
    }

    /// Whether every CPU's list was empty when looked at (one load each, no
    /// fence): a snapshot, as [`len`](Self::len) but cheap.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// assert!(l.is_empty());
    /// l.push(1);
    /// assert!(!l.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| slot.data.load(Ordering::Relaxed) == 0)
    }
}

/// A detached chain of nodes, yielded front to back; drops what is left on
/// drop.
struct Chain<T> {
    next: usize,
    _owns: PhantomData<Node<T>>,
}

impl<T> Iterator for Chain<T> {
    type Item = Node<T>;
    fn next(&mut self) -> Option<Node<T>> {
        if self.next == 0 {
            return None;
        }
        let links = self.next as *mut Links<T>;
        // SAFETY: the chain was detached whole, so its nodes are ours.
        self.next = unsafe { (*links).next };
        // SAFETY: as above; each node passes to one handle.
        Some(unsafe { Node::from_raw(links) })
    }
}

impl<T> Drop for Chain<T> {
    fn drop(&mut self) {
        drop_all(self.by_ref());
    }
}

impl<T> Drop for PerCpuList<T> {
    fn drop(&mut self) {
        drop_all(self.slots.iter_mut().flat_map(|head| Chain::<T> {
            next: core::mem::take(head.get_mut()),
            _owns: PhantomData,
        }));
    }
}

impl<T> Default for PerCpuList<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for PerCpuList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuList")
            .field("cpus", &self.cpus())
            .field("index", &self.index())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
