//! [`PerCpuList<T>`]: a per-CPU LIFO of owned values, built on the list-pop
//! and compare-and-store shapes.
//!
//! # Safety
//!
//! Each slot's head word is written only by the shapes, through
//! [`shape::perform`] on that slot's fence: by critical sections on the slot's
//! CPU, or under the fence after the membarrier. A node is owned by exactly
//! one place at a time: the pusher until its compare-and-store commits, the
//! list while linked, the popper once the pop commits. Nodes are freed only by
//! their popper (or by `Drop`, with `&mut self`), so the pop shape's read of
//! the head node's link never touches freed memory: the read happens inside a
//! section or under the fence, where no other pop of that slot can commit.
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::mem::offset_of;
use core::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::domain::Order;
use crate::fence::{self, Fence};
use crate::index::At;
use crate::shape::{self, Shape};
use crate::stats::{PathStats, Stats};
use crate::{Error, Index};

/// A list node: the link first, so the pop shape reads it at offset 0.
#[repr(C)]
struct Node<T> {
    next: usize,
    value: T,
}

const NEXT: usize = offset_of!(Node<()>, next);
const _: () = assert!(NEXT == 0);

/// One CPU's list head and its fence, in one padded line.
struct Head {
    fence: Fence,
    /// Address of the first node, 0 when empty.
    first: AtomicUsize,
}

/// A per-CPU LIFO stack of owned values: [`push`](Self::push) and
/// [`pop`](Self::pop) work on the current CPU's list with a restartable
/// sequence each (no atomic instruction); [`pop_on`](Self::pop_on) and
/// [`drain`](Self::drain) reach any CPU's list through its fence.
///
/// Order is last-in first-out per CPU; across CPUs there is none. A value
/// pushed on one CPU is popped by a thread on that CPU, or by `pop_on` or
/// `drain` from anywhere. Every operation completes without the caller
/// retrying; a thread that migrates between reading the CPU number and
/// committing simply finishes on its old CPU's list through the fence.
///
/// Capacity: unbounded; each value lives in its own heap node (one
/// allocation per push, freed by the pop that takes it). Values left in the
/// lists are dropped with the list. Not for signal handlers: push allocates
/// and pop frees.
///
/// # Examples
///
/// ```
/// use cpulocal::PerCpuList;
///
/// let free_slots = PerCpuList::new();
/// free_slots.push(10u32);
/// free_slots.push(11);
/// assert_eq!(free_slots.pop(), Some(11)); // same CPU, most likely: LIFO
/// let rest: Vec<u32> = free_slots.drain().collect();
/// assert!(rest.len() + usize::from(free_slots.pop().is_some()) <= 1);
/// ```
pub struct PerCpuList<T> {
    heads: Box<[CachePadded<Head>]>,
    by: Index,
    stats: Box<CachePadded<Stats>>,
    _owns: PhantomData<Box<Node<T>>>,
}

// SAFETY: the list owns its values (in nodes); moving it moves them.
unsafe impl<T: Send> Send for PerCpuList<T> {}
// SAFETY: values move in and out whole, never shared: `&PerCpuList` hands out
// owned `T`s only, so `T: Send` suffices (as for a channel).
unsafe impl<T: Send> Sync for PerCpuList<T> {}

impl<T> PerCpuList<T> {
    /// An empty list with one slot per possible CPU.
    pub fn new() -> Self {
        Self::with_index(Index::Cpu)
    }

    /// An empty list whose slots are numbered `by` CPU or concurrency id (see
    /// [`Index`]).
    pub fn with_index(by: Index) -> Self {
        let (by, heads) = by.padded_slots(|i| Head {
            fence: Fence::new(i),
            first: AtomicUsize::new(0),
        });
        PerCpuList {
            heads,
            by,
            stats: Default::default(),
            _owns: PhantomData,
        }
    }

    /// The number of per-CPU lists.
    pub fn cpus(&self) -> usize {
        self.heads.len()
    }

    /// How the lists are numbered.
    pub fn index(&self) -> Index {
        self.by
    }

    /// How many operations left the fast path so far.
    pub fn stats(&self) -> PathStats {
        self.stats.snapshot()
    }

    /// Runs a shape on list `at`'s head.
    ///
    /// # Safety
    ///
    /// `shape` names `at`'s head word and nodes owned as the module docs say.
    #[inline]
    unsafe fn perform(&self, at: At, shape: Shape, order: Order) -> bool {
        let head = &self.heads[at.index];
        // SAFETY: the caller's shape; the fence is that of the head it names.
        unsafe { shape::perform_at(&shape, order, at, &head.fence, self.by, &self.stats) }.is_ok()
    }

    /// Pushes `value` on the current CPU's list.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = cpulocal::PerCpuList::new();
    /// l.push("a");
    /// assert_eq!(l.drain().collect::<Vec<_>>(), ["a"]);
    /// ```
    pub fn push(&self, value: T) {
        let node = Box::into_raw(Box::new(Node { next: 0, value }));
        let at = self.by.here(self.cpus());
        let head = &self.heads[at.index];
        loop {
            let first = head.first.load(Ordering::Relaxed);
            // SAFETY: the node is still ours alone.
            unsafe { (*node).next = first };
            let shape = Shape::CbneStore {
                v: head.first.as_ptr(),
                expect: first,
                newv: node as usize,
            };
            // SAFETY: `head.first` is list `cpu`'s head; release publishes
            // the node's contents with it.
            if unsafe { self.perform(at, shape, Order::Release) } {
                return;
            }
            // Another push or pop on that list came first: read it again.
        }
    }

    /// Pops the value last pushed on the current CPU's list, if any. Values
    /// on other CPUs' lists are not looked at: see [`pop_on`](Self::pop_on)
    /// and [`drain`](Self::drain).
    pub fn pop(&self) -> Option<T> {
        self.pop_at(self.by.here(self.cpus()))
    }

    /// Pops the value last pushed on `cpu`'s list, from any CPU (a critical
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
    /// let found: Vec<i32> = (0..l.cpus()).filter_map(|c| l.pop_on(c).unwrap()).collect();
    /// assert_eq!(found, [1]);
    /// assert!(l.pop_on(l.cpus()).is_err());
    /// ```
    pub fn pop_on(&self, cpu: usize) -> Result<Option<T>, Error> {
        if cpu >= self.cpus() {
            return Err(Error::CpuOutOfRange {
                cpu,
                slots: self.cpus(),
            });
        }
        Ok(self.pop_at(At::slot(cpu)))
    }

    fn pop_at(&self, at: At) -> Option<T> {
        let head = &self.heads[at.index];
        let mut popped = 0usize;
        let shape = Shape::CbeqStoreAddLoadStore {
            v: head.first.as_ptr(),
            expectnot: 0,
            offset: NEXT,
            load: &mut popped,
        };
        // SAFETY: list `at`'s head; linked nodes stay allocated until popped
        // (module docs); `popped` is a live local.
        if !unsafe { self.perform(at, shape, Order::Relaxed) } {
            return None;
        }
        // SAFETY: the pop committed: the node is unlinked and ours; it came
        // from `Box::into_raw` in `push`.
        let node = unsafe { Box::from_raw(popped as *mut Node<T>) };
        Some(node.value)
    }

    /// Takes every list's values, one CPU after the other: each list is
    /// detached whole under its fence, then yielded in LIFO order. Values
    /// pushed meanwhile stay for a later call.
    pub fn drain(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.cpus()).flat_map(move |cpu| {
            let head = &self.heads[cpu];
            let first = fence::with_signals_blocked(&head.fence, cpu, self.by, || {
                head.first.swap(0, Ordering::Acquire)
            });
            Chain {
                next: first,
                _owns: PhantomData::<T>,
            }
        })
    }
}

/// A detached chain of nodes, yielded front to back; frees what is left on
/// drop.
struct Chain<T> {
    next: usize,
    _owns: PhantomData<T>,
}

impl<T> Iterator for Chain<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.next == 0 {
            return None;
        }
        // SAFETY: the chain was detached whole, so its nodes are ours; each
        // came from `Box::into_raw` in `push`.
        let node = unsafe { Box::from_raw(self.next as *mut Node<T>) };
        self.next = node.next;
        Some(node.value)
    }
}

impl<T> Drop for Chain<T> {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
    }
}

impl<T> Drop for PerCpuList<T> {
    fn drop(&mut self) {
        for head in self.heads.iter_mut() {
            drop(Chain::<T> {
                next: core::mem::take(head.first.get_mut()),
                _owns: PhantomData,
            });
        }
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
            .field("index", &self.by)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
