//! [`Domain`]: the operation shapes on caller-owned per-CPU memory, at the raw
//! pointer level (as librseq offers them), and the fences that guard it.
#![allow(unsafe_code)]

use crate::fenced::fence as fenced;
use crate::fenced::opv::{check_count, execute, validate, Op, OpError};
use core::fmt;

use crate::fenced::fence::Fence;
use crate::shape::driver::{Follow, Slots};
use crate::shape::{CompareFailed, Order, Shape};
use crate::stats::PathStats;
use crate::Index;

/// A set of per-CPU fence words for per-CPU memory the caller owns: the
/// librseq operation shapes and operation vectors run on it, each on the data
/// of one slot `index` (a CPU number, or a concurrency id: see [`Index`]).
///
/// Every operation of a domain on slot `i` is atomic with respect to every
/// other operation of that domain on slot `i`, wherever they run: on the CPU
/// of slot `i` an operation is a restartable sequence; from any other CPU, or
/// after [`RSEQ_ATTEMPTS`](crate::RSEQ_ATTEMPTS) aborts, or without rseq, it
/// takes slot `i`'s fence, aborts the sections working on that slot with
/// membarrier, and runs as ordinary code. The caller never sees an abort and
/// never retries; a failed compare is the only "no".
///
/// The memory an operation names is the caller's: for each slot, the words
/// that slot's operations touch must be touched by no other code while the
/// domain is in use, except that other threads may read the words with atomic
/// loads (`AtomicUsize::load`), as hints that a later compare confirms: the
/// shapes write whole aligned words, atomically on both engines (all but the
/// bytes `cbne_memcpy_store` copies, which are copied bytewise: nobody may
/// read those while a copy may run). Memory used with one domain must not be
/// used with another.
///
/// Every operation is async-signal-safe (no allocation, no lock that a
/// handler could wait on: the fenced path blocks signals while it holds a
/// fence).
///
/// # Examples
///
/// A per-CPU LIFO of node indexes, built on [`cbne_store`](Self::cbne_store)
/// and [`cbeq_store_add_load_store`](Self::cbeq_store_add_load_store):
///
/// ```
/// use cpulocal::{Domain, Index};
/// use std::sync::atomic::AtomicUsize;
///
/// #[repr(C)]
/// struct Node { next: usize, value: u64 }
///
/// let domain = Domain::new(Index::Cpu);
/// // One list head per slot; 0 is the empty list.
/// let heads: Vec<AtomicUsize> = (0..domain.cpus()).map(|_| AtomicUsize::new(0)).collect();
/// let node = Box::into_raw(Box::new(Node { next: 0, value: 42 }));
///
/// // Push on the current CPU's list.
/// let cpu = domain.current();
/// let head = heads[cpu].as_ptr();
/// loop {
///     let old = heads[cpu].load(std::sync::atomic::Ordering::Relaxed);
///     // SAFETY: `node` is ours until published; `head` is slot `cpu`'s word,
///     // only ever written through this domain.
///     unsafe { (*node).next = old };
///     if unsafe { domain.cbne_store(cpu, head, old, node as usize, cpulocal::Order::Release) }.is_ok() {
///         break;
///     }
/// }
///
/// // Pop it again, from any CPU: next is at offset 0 of a node.
/// // SAFETY: as above; nodes are only freed after being popped.
/// let popped = unsafe { domain.cbeq_store_add_load_store(cpu, head, 0, 0) };
/// assert_eq!(popped, Some(node as usize));
/// // SAFETY: popped, so ours again.
/// assert_eq!(unsafe { Box::from_raw(node) }.value, 42);
/// ```
pub struct Domain {
    slots: Slots<()>,
}

impl Domain {
    /// A domain numbered `by` CPU or concurrency id (see [`Index`] for what
    /// `MmCid` falls back to), with one fence per slot.
    ///
    /// # Examples
    ///
    /// ```
    /// let d = cpulocal::Domain::new(cpulocal::Index::Cpu);
    /// assert_eq!(d.cpus(), cpulocal::possible_cpus());
    /// ```
    pub fn new(by: Index) -> Domain {
        Domain {
            slots: Slots::new(by, |_| ()),
        }
    }

    /// How this domain numbers its slots.
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Domain, Index};
    /// assert_eq!(Domain::new(Index::Cpu).index(), Index::Cpu);
    /// ```
    pub fn index(&self) -> Index {
        self.slots.index()
    }

    /// The number of slots: valid indexes are `0..cpus()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let d = cpulocal::Domain::new(cpulocal::Index::MmCid);
    /// assert!(d.cpus() >= 1 && d.cpus() <= cpulocal::possible_cpus());
    /// ```
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// The slot index for the calling thread now: its CPU (`cpu_id`)
    /// or its concurrency id. The thread may move right after; an operation on
    /// this index is still correct, only slower (fenced) if it did.
    ///
    /// # Examples
    ///
    /// ```
    /// let d = cpulocal::Domain::new(cpulocal::Index::Cpu);
    /// assert!(d.current() < d.cpus());
    /// ```
    pub fn current(&self) -> usize {
        self.slots.here().index
    }

    /// How many of this domain's shape operations left the fast path.
    ///
    /// # Examples
    ///
    /// ```
    /// let d = cpulocal::Domain::new(cpulocal::Index::Cpu);
    /// assert_eq!(d.stats().fenced, 0);
    /// ```
    pub fn stats(&self) -> PathStats {
        self.slots.stats()
    }

    /// The slots, for operation vectors.
    pub(crate) fn slots(&self) -> &Slots<()> {
        &self.slots
    }

    /// Runs the shape `shape` builds (from the slot's fence, which its commit
    /// word is counted from) on slot `index`: inline when the thread runs
    /// there.
    ///
    /// # Safety
    ///
    /// The shape's pointers are valid for it (each public method's contract).
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`, naming the operation `what`.
    #[inline(always)]
    #[track_caller]
    unsafe fn perform(
        &self,
        index: usize,
        what: &str,
        shape: impl Fn(&Fence) -> Shape,
        order: Order,
    ) -> Result<(), CompareFailed> {
        let Some(at) = self.slots.on_inline(index) else {
            out_of_range(what, index, self.cpus())
        };
        // SAFETY: the caller's contract.
        unsafe {
            self.slots
                .perform(at, order, Follow::Slot, |slot| shape(&slot.fence))
        }
    }

    /// `if *v == expect { *v = newv; Ok } else { Err(CompareFailed) }` on slot
    /// `index`'s data: a compare-and-store.
    ///
    /// # Safety
    ///
    /// `v` is valid for reads and writes and 8-byte aligned, and is slot
    /// `index`'s data in the sense of the type docs.
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    pub unsafe fn cbne_store(
        &self,
        index: usize,
        v: *mut usize,
        expect: usize,
        newv: usize,
        order: Order,
    ) -> Result<(), CompareFailed> {
        // SAFETY: the caller's contract.
        unsafe {
            self.perform(
                index,
                "cbne_store",
                |f: &Fence| Shape::CbneStore {
                    vo: Shape::offset(f, v),
                    expect,
                    newv,
                },
                order,
            )
        }
    }

    /// `*v += count` (wrapping) on slot `index`'s data.
    ///
    /// # Safety
    ///
    /// As [`cbne_store`](Self::cbne_store).
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    pub unsafe fn add_store(&self, index: usize, v: *mut usize, count: isize, order: Order) {
        let count = count as usize;
        // SAFETY: the caller's contract.
        let r = unsafe {
            self.perform(
                index,
                "add_store",
                |f: &Fence| Shape::AddStore {
                    vo: Shape::offset(f, v),
                    count,
                },
                order,
            )
        };
        debug_assert!(r.is_ok(), "add_store has no compare");
    }

    /// List pop: `if *v == expectnot { None } else { let head = *v; *v =
    /// *(head + offset); Some(head) }` on slot `index`'s data, where `head +
    /// offset` is a byte address (the head node's link word). Always
    /// relaxed: its only store unlinks a node and publishes nothing.
    ///
    /// # Safety
    ///
    /// As [`cbne_store`](Self::cbne_store) for `v`; and whenever `*v !=
    /// expectnot`, `*v + offset` is a valid, aligned address of a `usize`
    /// that stays valid while any operation of this domain may read it (nodes
    /// are freed only after they are popped).
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    pub unsafe fn cbeq_store_add_load_store(
        &self,
        index: usize,
        v: *mut usize,
        expectnot: usize,
        offset: usize,
    ) -> Option<usize> {
        let mut load = 0usize;
        let out: *mut usize = &mut load;
        let shape = |f: &Fence| Shape::CbeqStoreAddLoadStore {
            vo: Shape::offset(f, v),
            expectnot,
            offset,
            load: out,
        };
        // SAFETY: the caller's contract; `load` is a live local.
        unsafe { self.perform(index, "cbeq_store_add_load_store", shape, Order::Relaxed) }
            .ok()
            .map(|()| load)
    }

    /// `if *v == expect { *v2 = newv2; *v = newv; Ok } else { Err }` on slot
    /// `index`'s data: a speculative store to `v2`, committed by the store to
    /// `v` (with [`Order::Release`], a reader that acquires `v` sees `v2`).
    ///
    /// # Safety
    ///
    /// As [`cbne_store`](Self::cbne_store), for `v` and `v2`.
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    #[allow(clippy::too_many_arguments)] // librseq's shape: one argument per operand
    pub unsafe fn cbne_store_store(
        &self,
        index: usize,
        v: *mut usize,
        expect: usize,
        v2: *mut usize,
        newv2: usize,
        newv: usize,
        order: Order,
    ) -> Result<(), CompareFailed> {
        let shape = |f: &Fence| Shape::CbneStoreStore {
            vo: Shape::offset(f, v),
            expect,
            v2,
            newv2,
            newv,
        };
        // SAFETY: the caller's contract.
        unsafe { self.perform(index, "cbne_store_store", shape, order) }
    }

    /// `if *v == expect { copy len bytes src -> dst; *v = newv; Ok } else
    /// { Err }` on slot `index`'s data.
    ///
    /// # Safety
    ///
    /// As [`cbne_store`](Self::cbne_store) for `v`; `src` is valid for reads
    /// and `dst` for writes of `len` bytes, and the two do not overlap. Each
    /// of them is either slot `index`'s data or memory private to the caller:
    /// a push copies a private item into the slot (`dst` in the slot), a pop
    /// copies the slot's item out (`src` in the slot, `dst` a local whose
    /// bytes count only once the call returns `Ok`). The copied bytes are
    /// read and written bytewise: no other thread may access them while the
    /// call may run, except through this domain's operations on the slot.
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    #[allow(clippy::too_many_arguments)] // librseq's shape: one argument per operand
    pub unsafe fn cbne_memcpy_store(
        &self,
        index: usize,
        v: *mut usize,
        expect: usize,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        newv: usize,
        order: Order,
    ) -> Result<(), CompareFailed> {
        let shape = |f: &Fence| Shape::CbneMemcpyStore {
            vo: Shape::offset(f, v),
            expect,
            dst,
            src,
            len,
            newv,
        };
        // SAFETY: the caller's contract.
        unsafe { self.perform(index, "cbne_memcpy_store", shape, order) }
    }

    /// `if *v == expect && *v2 == expect2 { *v = newv; Ok } else { Err }` on
    /// slot `index`'s data.
    ///
    /// # Safety
    ///
    /// As [`cbne_store`](Self::cbne_store) for `v`; `v2` is valid for reads and
    /// aligned, and written meanwhile only with atomic stores or through this
    /// domain's operations on slot `index` (the section reads it plainly).
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    #[allow(clippy::too_many_arguments)] // librseq's shape: one argument per operand
    pub unsafe fn cbne_load_cbne_store(
        &self,
        index: usize,
        v: *mut usize,
        expect: usize,
        v2: *const usize,
        expect2: usize,
        newv: usize,
        order: Order,
    ) -> Result<(), CompareFailed> {
        let shape = |f: &Fence| Shape::CbneLoadCbneStore {
            vo: Shape::offset(f, v),
            expect,
            v2,
            expect2,
            newv,
        };
        // SAFETY: the caller's contract.
        unsafe { self.perform(index, "cbne_load_cbne_store", shape, order) }
    }

    /// `*(*ptr + offset) += inc` (wrapping) on slot `index`'s data, where
    /// `*ptr + offset` is a byte address: an add through a pointer that
    /// another operation may swap.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads and aligned, and is slot `index`'s data,
    /// changed only through this domain's operations on that slot; `*ptr +
    /// offset` is a valid, aligned address of a `usize` of slot `index`'s
    /// data, and a target that `*ptr` no longer points to stays valid while
    /// an operation that read the old pointer may still run (free it only
    /// after a later operation of this domain on the slot has completed).
    ///
    /// # Panics
    ///
    /// If `index >= self.cpus()`.
    #[inline]
    #[track_caller]
    pub unsafe fn add_load_add_store(
        &self,
        index: usize,
        ptr: *const usize,
        offset: usize,
        inc: isize,
        order: Order,
    ) {
        let shape = |_: &Fence| Shape::AddLoadAddStore {
            ptr,
            offset,
            inc: inc as usize,
        };
        // SAFETY: the caller's contract.
        let r = unsafe { self.perform(index, "add_load_add_store", shape, order) };
        debug_assert!(r.is_ok(), "add_load_add_store has no compare");
    }
}

/// The panic of an operation on a slot a domain does not have.
#[cold]
#[track_caller]
fn out_of_range(what: &str, index: usize, cpus: usize) -> ! {
    panic!("Domain::{what}: slot {index} is out of range (this domain has slots 0..{cpus})")
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("index", &self.index())
            .field("cpus", &self.cpus())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Domain {
    /// Runs the operation vector `ops` on slot `index`'s data, atomically with
    /// respect to every other operation of this domain on slot `index`
    /// (shapes, critical sections, vectors): the user-space `cpu_opv`.
    ///
    /// The whole vector is checked first; a bad one is refused before any
    /// byte is written. Then the slot's fence is taken (all signals blocked),
    /// the critical sections working on the slot are aborted with membarrier,
    /// and the operations run in order as ordinary code, from whatever CPU the
    /// caller is on. An empty vector only takes and releases the fence.
    ///
    /// # Errors
    ///
    /// Refusals, nothing written (the first one found, in this order):
    /// [`OpError::TooManyOps`]; [`OpError::CpuOutOfRange`] if `index >=
    /// self.cpus()`; then, operation by operation, [`OpError::TooLong`],
    /// [`OpError::BadSize`], [`OpError::ShiftTooWide`],
    /// [`OpError::NullPointer`].
    ///
    /// [`OpError::CompareFailed`] if a compare failed: the operations before
    /// it ran, none after it.
    ///
    /// # Safety
    ///
    /// For every operation of the vector (only a vector that passes the
    /// checks is run):
    /// - each pointer is valid for reads (and, where the operation writes,
    ///   writes) of its `len` or `size` bytes, and the bytes read are
    ///   initialised;
    /// - the `dst` and `src` of a copy do not overlap;
    /// - the bytes the vector writes are slot `index`'s data in the sense of
    ///   the [`Domain`] docs: touched only through this domain's operations on
    ///   slot `index`. Integer operands aligned to their size, and copies
    ///   whose `dst`, `src` and `len` are all multiples of 8, are read and
    ///   written with relaxed atomic accesses (one per operand, or per 8-byte
    ///   word), so other threads may read those words meanwhile with atomic
    ///   loads of the same size (an 8-byte copy word with an 8-byte load),
    ///   as they may read the words the shapes write. Unaligned
    ///   operands and other copies use plain accesses: no other thread may
    ///   read those bytes while a vector may run, except through this
    ///   domain.
    ///
    /// The bytes a vector only reads (expected values, copy sources) may be
    /// any memory that nothing writes while the vector runs.
    ///
    /// # Examples
    ///
    /// A versioned per-CPU total: add to it only if the version is the one
    /// the caller saw, and bump the version in the same vector.
    ///
    /// ```
    /// use cpulocal::opv::{Op, OpError};
    /// use cpulocal::{Domain, Index};
    ///
    /// let domain = Domain::new(Index::Cpu);
    /// // Per slot: [version, total], used only through `domain`.
    /// let mut slots = vec![[0u64; 2]; domain.cpus()];
    /// let cpu = domain.current();
    /// let version = slots[cpu].as_mut_ptr().cast::<u8>();
    /// let total = version.wrapping_add(8);
    /// let seen = 0u64.to_ne_bytes();
    /// let bump = [
    ///     Op::CompareEq { a: version, b: seen.as_ptr(), len: 8 },
    ///     Op::Add { p: total, size: 8, count: 5 },
    ///     Op::AddRelease { p: version, size: 8, count: 1 },
    /// ];
    /// // SAFETY: every pointer names 8 bytes of `slots[cpu]` or of `seen`,
    /// // and `slots` is used only through `domain` until the last call.
    /// unsafe { domain.run_ops(cpu, &bump) }?;
    ///
    /// // The version is 1 now: the same vector stops at its compare.
    /// // SAFETY: as above.
    /// let again = unsafe { domain.run_ops(cpu, &bump) };
    /// assert_eq!(again, Err(OpError::CompareFailed { op: 0 }));
    ///
    /// // A bad operation anywhere refuses the whole vector: the add before it
    /// // does not run.
    /// let bad = [
    ///     Op::Add { p: total, size: 8, count: 1 },
    ///     Op::Add { p: total, size: 3, count: 1 },
    /// ];
    /// // SAFETY: as above.
    /// let refused = unsafe { domain.run_ops(cpu, &bad) };
    /// assert_eq!(refused, Err(OpError::BadSize { op: 1, size: 3 }));
    /// assert_eq!(slots[cpu], [1, 5]);
    /// # Ok::<(), OpError>(())
    /// ```
    pub unsafe fn run_ops(&self, index: usize, ops: &[Op]) -> Result<(), OpError> {
        check_count(ops.len())?;
        let slot = self.slots().get(index).ok_or(OpError::CpuOutOfRange {
            cpu: index,
            slots: self.cpus(),
        })?;
        validate(ops, |i, op| {
            if op.has_null() {
                Err(OpError::NullPointer { op: i })
            } else {
                Ok(())
            }
        })?;
        fenced::with_signals_blocked(&slot.fence, index, self.index(), || {
            // SAFETY: `validate` accepted the vector; the pointers are valid
            // and name slot `index`'s data (the caller's contract), which is
            // ours alone while the fence is held and the sections on the slot
            // have been aborted by the membarrier.
            unsafe { execute(ops) }
        })
    }
}
