//! `cpulocal_list`: a per-CPU LIFO of caller-owned nodes with an embedded
//! link, for C object caches. The Rust `PerCpuList` owns its nodes (it
//! allocates them), so this list is built, as a C user of the domain would
//! build it, on a `Domain`'s compare-and-store (push) and list-pop shapes,
//! over heads of its own, one cache line each.
//!
//! # Safety
//!
//! Each slot's head is written only through the domain's shapes on that
//! slot, so the head words are the domain's "caller memory" as `Domain`
//! requires; other threads read them with atomic loads only (hints that the
//! shapes' compares confirm). A node is owned by one party at a time: the
//! caller until a push commits, the list while linked, the popper once a pop
//! (or a drain's detaching store) commits. A pusher writes its node's link
//! before its commit with a store-release, and nothing else writes a linked
//! node's link; the pop shape reads the head node's link inside the same
//! section or fenced step that unlinks it, where no other operation on the
//! slot can free it (the caller frees nodes only after popping them).

use core::ffi::{c_int, c_uint};
use core::sync::atomic::{fence, AtomicUsize, Ordering};

use cpulocal_rs::{Domain, Order};

use crate::cpulocal_stats;
use crate::util::{c_uint_of, free_object, guard, index_of, is_word, new_object, PANICKED};

/// The link a caller embeds in its objects to put them on a
/// `cpulocal_list` (first member or not: `container_of` gets the object
/// back). The list writes `next` while the node is linked; the node must stay
/// allocated until it is popped or drained. (The header's declaration is in
/// `cbindgen.toml`: cbindgen cannot declare a self-referential struct in the
/// header's typedef style.)
#[repr(C)]
#[derive(Debug)]
pub struct cpulocal_list_node {
    /// The next node of the list or of a drained chain, NULL at the end.
    pub next: *mut cpulocal_list_node,
}

/// A head, on a cache line of its own.
#[repr(C, align(128))]
struct Head(AtomicUsize);

/// A per-CPU LIFO stack of nodes the caller owns (opaque): push and pop work
/// on the current CPU's list with one restartable sequence each (no atomic
/// instruction, no allocation); the `_on` forms and the drains reach any
/// CPU's list, through its fence when the caller runs elsewhere. Order is
/// last-in first-out per CPU; across CPUs there is none. The list never
/// allocates or frees a node. Every function may be called from any number
/// of threads at once, except `cpulocal_list_free`.
pub struct cpulocal_list {
    domain: Domain,
    /// One head per slot: the first node's address, 0 when empty.
    heads: Box<[Head]>,
}

/// An empty list with one slot per possible CPU
/// (`cpulocal_list_new_with_index(CPULOCAL_INDEX_CPU)`).
///
/// Returns: the list, to be freed with `cpulocal_list_free`; NULL with
/// `errno` set to `ENOMEM` if it cannot be allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_list_new() -> *mut cpulocal_list {
    cpulocal_list_new_with_index(crate::CPULOCAL_INDEX_CPU)
}

/// An empty list whose slots are numbered by `index` (`CPULOCAL_INDEX_CPU`
/// or `CPULOCAL_INDEX_MM_CID`).
///
/// Returns: the list, or NULL with `errno` set to `EINVAL` for another
/// `index`, `ENOMEM` if it cannot be allocated.
///
/// Async-signal-safe: no (it allocates).
#[no_mangle]
pub extern "C" fn cpulocal_list_new_with_index(index: c_int) -> *mut cpulocal_list {
    new_object(|| {
        let domain = Domain::new(index_of(index)?);
        let mut heads = Vec::new();
        heads
            .try_reserve_exact(domain.cpus())
            .map_err(|_| libc::ENOMEM)?;
        heads.extend((0..domain.cpus()).map(|_| Head(AtomicUsize::new(0))));
        Ok(cpulocal_list {
            domain,
            heads: heads.into_boxed_slice(),
        })
    })
}

/// Frees the list. Nodes still on it are not touched (they are the
/// caller's): drain it first to get them back. No other thread may use the
/// list meanwhile or after.
///
/// NULL: a no-op.
///
/// Async-signal-safe: no.
///
/// # Safety
///
/// `l` is NULL or a list from `cpulocal_list_new*` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_free(l: *mut cpulocal_list) {
    // SAFETY: the caller's contract.
    unsafe { free_object(l) }
}

impl cpulocal_list {
    /// Pushes `node` on list `cpu` (`None`: the current CPU's, read again
    /// before each attempt).
    ///
    /// # Safety
    ///
    /// `node` is an aligned node the caller owns, which passes to the list.
    unsafe fn push(&self, cpu: Option<usize>, node: *mut cpulocal_list_node) {
        loop {
            let slot = cpu.unwrap_or_else(|| self.domain.current());
            let head = &self.heads[slot].0;
            let first = head.load(Ordering::Relaxed);
            // SAFETY: the node is still the caller's alone.
            unsafe { (*node).next = first as *mut cpulocal_list_node };
            // SAFETY: `head` is slot `slot`'s word, written only through the
            // domain (module docs); release publishes the node's link and
            // the caller's writes to the object.
            let pushed = unsafe {
                self.domain
                    .cbne_store(slot, head.as_ptr(), first, node as usize, Order::Release)
            };
            if pushed.is_ok() {
                return;
            }
            // Another push or pop on that list came first: read it again.
        }
    }

    /// Pops the head of list `slot`, or NULL.
    fn pop(&self, slot: usize) -> *mut cpulocal_list_node {
        let head = self.heads[slot].0.as_ptr();
        // SAFETY: `head` is slot `slot`'s word; linked nodes stay allocated
        // until popped, and their link is at offset 0 (module docs).
        match unsafe { self.domain.cbeq_store_add_load_store(slot, head, 0, 0) } {
            Some(node) => {
                // The pusher's release store of the head came before: see
                // its writes to the node.
                fence(Ordering::Acquire);
                node as *mut cpulocal_list_node
            }
            None => core::ptr::null_mut(),
        }
    }

    /// Detaches list `slot` whole: its first node (the chain linked by
    /// `next`), or NULL.
    fn drain(&self, slot: usize) -> *mut cpulocal_list_node {
        let head = &self.heads[slot].0;
        loop {
            let first = head.load(Ordering::Relaxed);
            if first == 0 {
                return core::ptr::null_mut();
            }
            // SAFETY: as in `push`; storing 0 over the head that is still
            // `first` detaches the whole chain linked at that moment.
            let detached = unsafe {
                self.domain
                    .cbne_store(slot, head.as_ptr(), first, 0, Order::Relaxed)
            };
            if detached.is_ok() {
                fence(Ordering::Acquire);
                return first as *mut cpulocal_list_node;
            }
        }
    }
}

/// Pushes `node` on the list of the CPU the calling thread runs on: one
/// critical section, no allocation. The node passes to the list.
///
/// Returns: 0; `-EINVAL` if `l` or `node` is NULL or `node` is not aligned
/// as a pointer.
///
/// Async-signal-safe: yes (the domain shapes), with the first-call caveat
/// of `cpulocal_counter_add`.
///
/// # Safety
///
/// `l` is NULL or a live list; `node` is NULL or a node the caller owns and
/// that is on no list, valid until it is popped or drained back.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_push(
    l: *const cpulocal_list,
    node: *mut cpulocal_list_node,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return -libc::EINVAL;
        };
        if !is_word(node) {
            return -libc::EINVAL;
        }
        // SAFETY: an aligned node the caller gives up (the contract).
        unsafe { l.push(None, node) };
        0
    })
}

/// Pushes `node` on `cpu`'s list, from any CPU (a critical section if the
/// caller runs on `cpu`, the fenced path otherwise).
///
/// Returns: 0; `-ERANGE` if `cpu >= cpulocal_list_cpus(l)` (the node stays
/// the caller's); `-EINVAL` if `l` or `node` is NULL or `node` is not
/// aligned.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_list_push`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_push_on(
    l: *const cpulocal_list,
    cpu: c_uint,
    node: *mut cpulocal_list_node,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return -libc::EINVAL;
        };
        if !is_word(node) {
            return -libc::EINVAL;
        }
        if cpu as usize >= l.heads.len() {
            return -libc::ERANGE;
        }
        // SAFETY: as in `cpulocal_list_push`.
        unsafe { l.push(Some(cpu as usize), node) };
        0
    })
}

/// Pops the node last pushed on the current CPU's list: one critical
/// section, no free. Other CPUs' lists are not looked at (see
/// `cpulocal_list_pop_on` and the drains).
///
/// Returns: the node, now the caller's; NULL if that list is empty or `l` is
/// NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_pop(l: *const cpulocal_list) -> *mut cpulocal_list_node {
    guard(core::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        unsafe { l.as_ref() }.map_or(core::ptr::null_mut(), |l| l.pop(l.domain.current()))
    })
}

/// Pops the node last pushed on `cpu`'s list, from any CPU, into `*out`
/// (NULL if that list is empty).
///
/// Returns: 0; `-ERANGE` if `cpu` is out of range; `-EINVAL` if `l` or
/// `out` is NULL. `*out` is written only when 0 is returned.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live list; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_pop_on(
    l: *const cpulocal_list,
    cpu: c_uint,
    out: *mut *mut cpulocal_list_node,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return -libc::EINVAL;
        }
        if cpu as usize >= l.heads.len() {
            return -libc::ERANGE;
        }
        let node = l.pop(cpu as usize);
        // SAFETY: valid for writing (the caller).
        unsafe { out.write(node) };
        0
    })
}

/// Takes `cpu`'s whole list at once, from any CPU, into `*out`: its first
/// node, the others linked by `next` in LIFO order, the last one's `next`
/// NULL; NULL if the list was empty. Nodes pushed meanwhile stay.
///
/// Returns: 0; `-ERANGE` if `cpu` is out of range; `-EINVAL` if `l` or
/// `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// As `cpulocal_list_pop_on`.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_drain_on(
    l: *const cpulocal_list,
    cpu: c_uint,
    out: *mut *mut cpulocal_list_node,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return -libc::EINVAL;
        }
        if cpu as usize >= l.heads.len() {
            return -libc::ERANGE;
        }
        let chain = l.drain(cpu as usize);
        // SAFETY: valid for writing (the caller).
        unsafe { out.write(chain) };
        0
    })
}

/// Takes every CPU's list, one CPU after the other, and returns them as one
/// chain linked by `next` (CPU 0's nodes first, each CPU's in LIFO order).
/// Nodes pushed meanwhile on a list already taken stay for a later call.
///
/// Returns: the first node of the chain, NULL if every list was empty or `l`
/// is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_drain(l: *const cpulocal_list) -> *mut cpulocal_list_node {
    guard(core::ptr::null_mut(), || {
        // SAFETY: the caller's contract.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return core::ptr::null_mut();
        };
        let mut first: *mut cpulocal_list_node = core::ptr::null_mut();
        // Where the next chain goes: `first`, or the `next` of the last
        // node taken so far.
        let mut tail: *mut *mut cpulocal_list_node = &mut first;
        for slot in 0..l.heads.len() {
            let chain = l.drain(slot);
            if chain.is_null() {
                continue;
            }
            // SAFETY: `tail` is `first` or the link of a node detached
            // above, ours now; so is every node of `chain`.
            unsafe {
                *tail = chain;
                let mut last = chain;
                while !(*last).next.is_null() {
                    last = (*last).next;
                }
                tail = &mut (*last).next;
            }
        }
        first
    })
}

/// Whether every CPU's list was empty when looked at (one load each, no
/// fence): a snapshot.
///
/// Returns: 1 if empty (or `l` is NULL), 0 otherwise.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_is_empty(l: *const cpulocal_list) -> c_int {
    guard(1, || {
        // SAFETY: the caller's contract.
        unsafe { l.as_ref() }.map_or(1, |l| {
            c_int::from(l.heads.iter().all(|h| h.0.load(Ordering::Relaxed) == 0))
        })
    })
}

/// The number of per-CPU lists.
///
/// Returns: the number of slots; 0 if `l` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_cpus(l: *const cpulocal_list) -> c_uint {
    guard(0, || {
        // SAFETY: the caller's contract.
        unsafe { l.as_ref() }.map_or(0, |l| c_uint_of(l.heads.len()))
    })
}

/// How many of the list's operations left the fast path so far, into
/// `*out`.
///
/// Returns: 0; `-EINVAL` if `l` or `out` is NULL.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `l` is NULL or a live list; `out` is NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_list_stats(
    l: *const cpulocal_list,
    out: *mut cpulocal_stats,
) -> c_int {
    guard(PANICKED, || {
        // SAFETY: the caller's contract.
        let (Some(l), Some(out)) = (unsafe { l.as_ref() }, unsafe { out.as_mut() }) else {
            return -libc::EINVAL;
        };
        *out = l.domain.stats().into();
        0
    })
}
