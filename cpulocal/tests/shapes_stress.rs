//! Concurrency proof for the [`Domain`] shapes and operation vectors: many
//! threads run shapes on per-slot data while others run operation vectors on
//! the same slots, with fence storms, forced migrations and signal handlers
//! going on; every invariant is checked exactly at the end.
//!
//! Each run builds a [`Scene`]: a domain (indexed by CPU or by concurrency id)
//! and, per slot, a LIFO list head, a bounded stack ("buffer"), a counter, a
//! pair of words with a fixed sum, a word for signal handlers and one for the
//! fence storm. Then, all at once:
//!
//! - **workers** (6 × possible CPUs) run shapes on the current slot, and a
//!   share of them on a random slot (the fenced path), with yields, spins and
//!   sleeps injected;
//! - **vector threads** (2 × possible CPUs) run operation vectors
//!   ([`Domain::run_ops`]) on random slots, on the same data, until the
//!   workers are done;
//! - a **storm thread** runs empty and trivial vectors (`[]`, `[Op::Mb]`) on
//!   every slot, single and in bursts, and an `add_store` on each slot's storm
//!   word, so fences are held again and again;
//! - an **affinity thread** moves workers and vector threads between single
//!   CPUs and all CPUs (`sched_setaffinity`: forced migrations);
//! - a **signal thread** sends `SIGUSR1` to workers and vector threads; the
//!   handler does a local and a remote `add_store` on the slots' signal words
//!   through the same domain (operations are async-signal-safe).
//!
//! Three loads, each under both indexings:
//!
//! 1. [`Load::Lists`]: a pool of [`NODES`] nodes, never freed, spread over the
//!    slots' lists. Workers pop (`cbeq_store_add_load_store`) and push (read
//!    head, link, `cbne_store` with release) between the current slot and
//!    random ones; vector threads pop (compare head, compare `head.next`,
//!    copy) and push (compare head, release-copy) with vectors. *Invariant*:
//!    at the end every node is in exactly one list, once (no loss, no
//!    duplicate, no cycle).
//! 2. [`Load::Buffers`]: [`tokens`]`(slots)` unique tokens in bounded stacks of
//!    [`CAP`] items. Producers commit with `cbne_store_store` (item
//!    speculatively, then `count` with release), consumers with
//!    `cbne_load_cbne_store` (`count` and the top item both unchanged); vector
//!    threads do the same with compare/copy vectors. *Invariant*: the items
//!    below each `count`, with the tokens threads hold at the end, are every
//!    token exactly once; every committed pop took a real token.
//! 3. [`Load::Counters`]: workers increment the slots' counters with
//!    `add_store` (mostly on the current slot) and `add_load_add_store`, while
//!    vector threads increment the same counters with `Op::Add` (bare, behind
//!    a `CompareNe` that always passes, behind a `CompareEq` on a snapshot that
//!    may fail). The
//!    vector threads also move amounts between the two words of each slot's
//!    pair (`Add -x`, `Add +x`, optionally behind `CompareEq`s), while workers
//!    check the pair with `cbne_load_cbne_store` (a committed check saw both
//!    words at one instant). *Invariants*: the counters sum to exactly the
//!    number of increments performed; every pair's sum is [`PAIR_SUM`], at the
//!    end and in every committed check.
//!
//! In every load: the signal words hold exactly what the handlers added, the
//! storm words what the storm added, and every ingredient acted at least once.
//!
//! As librseq users do, threads read a slot's words outside any operation
//! (atomic loads) to choose an operation's expected values; such a read is
//! only a hint: a stale or torn one makes the operation's compare fail, and
//! nothing read that way is trusted unless a committed compare confirmed it.
//!
//! The last test (feature `testing`) breaks the protocol (`SkipMembarrier`)
//! and shows that the counters load then loses adds.
//!
//! The tests of this file take [`RUN_LOCK`] one at a time: the signal handler's
//! target and the protocol switch are process-wide. Size:
//! `CPULOCAL_STRESS_SCALE` scales the work (never an assertion);
//! `CPULOCAL_STRESS_SEED` fixes the random seed.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::fmt;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cpulocal::opv::{Op, OpError};
use cpulocal::{Domain, Engine, Index, Order, PathStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Nodes in the list pool.
pub const NODES: usize = 4096;
/// Capacity of each slot's buffer.
pub const CAP: usize = 32;
/// Tokens per slot at the start (the buffers start three quarters full).
pub const TOKENS_PER_SLOT: usize = CAP * 3 / 4;
/// Total tokens, for a domain of `slots` slots.
pub fn tokens(slots: usize) -> usize {
    TOKENS_PER_SLOT * slots
}
/// What each slot's pair of words always sums to (wrapping).
pub const PAIR_SUM: usize = 1_000_000_007;
/// A value no counter reaches in a run (they stay within a few million of 0):
/// the operand of the `CompareNe` that always passes. 0x5555...55 in any word
/// size.
const NEVER: usize = usize::MAX / 3;
/// The bytes of a word: every operand of the vectors is a `usize`.
const W: usize = size_of::<usize>();
/// Shape operations per worker at scale 1.
const BASE_OPS_PER_WORKER: u64 = 300_000;

/// One test at a time: the signal handler's target and the `testing` switch
/// are process-wide.
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn lock_run() -> MutexGuard<'static, ()> {
    RUN_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The data.

/// A value on a cache line (128 bytes: the prefetch pair on x86_64) of its own.
#[repr(C, align(128))]
#[derive(Default)]
struct Line<T>(T);

/// A bounded stack: `items[..count]` are the tokens in it.
#[repr(C)]
#[derive(Default)]
struct Buffer {
    count: AtomicUsize,
    items: [AtomicUsize; CAP],
}

/// One slot's data. Every word is written only through the domain's
/// operations on this slot (nodes: while they are in this slot's list).
#[repr(C)]
#[derive(Default)]
struct SlotData {
    /// List head: a node's address, 0 for the empty list.
    head: Line<AtomicUsize>,
    buffer: Line<Buffer>,
    counter: Line<AtomicUsize>,
    /// The address of `counter`, for `add_load_add_store`.
    counter_at: Line<AtomicUsize>,
    /// Sums to [`PAIR_SUM`].
    pair: Line<[AtomicUsize; 2]>,
    /// Added to by signal handlers only.
    signal: Line<AtomicUsize>,
    /// Added to by the storm thread only.
    storm: Line<AtomicUsize>,
}

/// A list node; `next` is at offset 0 (the pop's `offset`).
#[repr(C)]
struct Node {
    next: AtomicUsize,
    id: usize,
}

/// A domain and the per-slot data its operations work on.
struct Scene {
    domain: Domain,
    slots: Box<[SlotData]>,
    /// Never freed while any thread runs, so every node address stays valid.
    nodes: Box<[Node]>,
}

fn ptr_of(w: &AtomicUsize) -> *mut usize {
    w.as_ptr()
}

fn bytes(w: &AtomicUsize) -> *mut u8 {
    w.as_ptr().cast()
}

fn local(v: &usize) -> *const u8 {
    ptr::from_ref(v).cast()
}

impl Scene {
    fn new(by: Index) -> Scene {
        let domain = Domain::new(by);
        let n = domain.cpus();
        let slots: Box<[SlotData]> = (0..n).map(|_| SlotData::default()).collect();
        let nodes: Box<[Node]> = (0..NODES)
            .map(|id| Node {
                next: AtomicUsize::new(0),
                id,
            })
            .collect();
        // Nodes: round-robin over the lists. Tokens 1..: TOKENS_PER_SLOT per
        // buffer. Pairs: PAIR_SUM split unevenly.
        for (k, node) in nodes.iter().enumerate() {
            let head = &slots[k % n].head.0;
            node.next.store(head.load(Relaxed), Relaxed);
            head.store(ptr::from_ref(node) as usize, Relaxed);
        }
        for (i, s) in slots.iter().enumerate() {
            for j in 0..TOKENS_PER_SLOT {
                s.buffer.0.items[j].store(1 + i * TOKENS_PER_SLOT + j, Relaxed);
            }
            s.buffer.0.count.store(TOKENS_PER_SLOT, Relaxed);
            s.counter_at.0.store(s.counter.0.as_ptr() as usize, Relaxed);
            s.pair.0[0].store(PAIR_SUM - 1000 * i, Relaxed);
            s.pair.0[1].store(1000 * i, Relaxed);
        }
        Scene {
            domain,
            slots,
            nodes,
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// The node at `addr`, if `addr` is the address of one.
    fn node_at(&self, addr: usize) -> Option<&Node> {
        let base = self.nodes.as_ptr() as usize;
        let size = std::mem::size_of::<Node>();
        let off = addr.checked_sub(base)?;
        (off % size == 0).then_some(())?;
        self.nodes.get(off / size)
    }

    // --- Lists, with shapes.

    /// Pops from slot `i`'s list.
    fn pop(&self, i: usize) -> Option<usize> {
        // SAFETY: `head` is slot i's word, written only through this domain;
        // it holds 0 or the address of a node of `self.nodes`, whose `next` is
        // at offset 0 and which is never freed while the scene lives.
        unsafe {
            self.domain
                .cbeq_store_add_load_store(i, ptr_of(&self.slots[i].head.0), 0, 0)
        }
    }

    /// Pushes `node` (popped by the caller, so the caller's) on slot `i`'s
    /// list; returns the attempts it took.
    fn push(&self, i: usize, node: &Node, order: Order) -> u64 {
        let head = &self.slots[i].head.0;
        let addr = ptr::from_ref(node) as usize;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let old = head.load(Relaxed);
            node.next.store(old, Relaxed);
            // SAFETY: `head` is slot i's word, written only through this
            // domain; the node is ours until this store publishes it.
            if unsafe { self.domain.cbne_store(i, ptr_of(head), old, addr, order) }.is_ok() {
                return attempts;
            }
        }
    }

    // --- Lists, with vectors.

    /// Pops from slot `i`'s list with a vector: head unchanged, head's next
    /// unchanged, then head = next. `Err` when the compares failed (a race).
    fn pop_ops(&self, i: usize) -> Result<Option<usize>, Raced> {
        let head = &self.slots[i].head.0;
        let h = head.load(Acquire);
        if h == 0 {
            return Ok(None);
        }
        // Read outside the vector: a stale value is caught by the compare, and
        // any value read is a node's (heads hold node addresses or 0).
        let Some(node) = self.node_at(h) else {
            return Err(Raced);
        };
        let n = node.next.load(Acquire);
        let ops = [
            Op::CompareEq {
                a: bytes(head),
                b: local(&h),
                len: W,
            },
            Op::CompareEq {
                a: bytes(&node.next),
                b: local(&n),
                len: W,
            },
            Op::Memcpy {
                dst: bytes(head),
                src: local(&n),
                len: W,
            },
        ];
        match self.run_ops(i, &ops) {
            Ok(()) => Ok(Some(h)),
            Err(OpError::CompareFailed { op: 0 | 1 }) => Err(Raced),
            Err(e) => panic!("list pop vector on slot {i}: {e:?}"),
        }
    }

    /// Pushes `node` (the caller's) on slot `i`'s list with a vector: head
    /// unchanged, then head = node (release: the link is visible first).
    fn push_ops(&self, i: usize, node: &Node) -> Result<(), Raced> {
        let head = &self.slots[i].head.0;
        let addr = ptr::from_ref(node) as usize;
        let old = head.load(Relaxed);
        node.next.store(old, Relaxed);
        let ops = [
            Op::CompareEq {
                a: bytes(head),
                b: local(&old),
                len: W,
            },
            Op::MemcpyRelease {
                dst: bytes(head),
                src: local(&addr),
                len: W,
            },
        ];
        match self.run_ops(i, &ops) {
            Ok(()) => Ok(()),
            Err(OpError::CompareFailed { op: 0 }) => Err(Raced),
            Err(e) => panic!("list push vector on slot {i}: {e:?}"),
        }
    }

    // --- Buffers, with shapes.

    /// Pushes `token` on slot `i`'s buffer: the item speculatively, then
    /// `count` with release.
    fn buf_push(&self, i: usize, token: usize) -> Pushed {
        let b = &self.slots[i].buffer.0;
        let c = b.count.load(Acquire);
        if c >= CAP {
            return Pushed::Full;
        }
        // SAFETY: `count` and `items[c]` are slot i's words, written only
        // through this domain; `c < CAP` so the item is in bounds.
        match unsafe {
            self.domain.cbne_store_store(
                i,
                ptr_of(&b.count),
                c,
                ptr_of(&b.items[c]),
                token,
                c + 1,
                Order::Release,
            )
        } {
            Ok(()) => Pushed::Yes,
            Err(_) => Pushed::Raced,
        }
    }

    /// Pops the top of slot `i`'s buffer: commits `count - 1` if `count` and
    /// the top item are both unchanged. `Ok(None)`: empty.
    fn buf_pop(&self, i: usize) -> Result<Option<usize>, Raced> {
        let b = &self.slots[i].buffer.0;
        let c = b.count.load(Acquire);
        if c == 0 || c > CAP {
            return if c == 0 { Ok(None) } else { Err(Raced) };
        }
        let item = b.items[c - 1].load(Relaxed);
        // SAFETY: `count` and `items[c - 1]` are slot i's words (`c <= CAP`),
        // written only through this domain.
        match unsafe {
            self.domain.cbne_load_cbne_store(
                i,
                ptr_of(&b.count),
                c,
                ptr_of(&b.items[c - 1]),
                item,
                c - 1,
                Order::Relaxed,
            )
        } {
            Ok(()) => Ok(Some(item)),
            Err(_) => Err(Raced),
        }
    }

    // --- Buffers, with vectors.

    fn buf_push_ops(&self, i: usize, token: usize) -> Pushed {
        let b = &self.slots[i].buffer.0;
        let c = b.count.load(Acquire);
        if c >= CAP {
            return Pushed::Full;
        }
        let c1 = c + 1;
        let ops = [
            Op::CompareEq {
                a: bytes(&b.count),
                b: local(&c),
                len: W,
            },
            Op::Memcpy {
                dst: bytes(&b.items[c]),
                src: local(&token),
                len: W,
            },
            Op::MemcpyRelease {
                dst: bytes(&b.count),
                src: local(&c1),
                len: W,
            },
        ];
        match self.run_ops(i, &ops) {
            Ok(()) => Pushed::Yes,
            Err(OpError::CompareFailed { op: 0 }) => Pushed::Raced,
            Err(e) => panic!("buffer push vector on slot {i}: {e:?}"),
        }
    }

    fn buf_pop_ops(&self, i: usize) -> Result<Option<usize>, Raced> {
        let b = &self.slots[i].buffer.0;
        let c = b.count.load(Acquire);
        if c == 0 || c > CAP {
            return if c == 0 { Ok(None) } else { Err(Raced) };
        }
        let item = b.items[c - 1].load(Relaxed);
        let c0 = c - 1;
        let ops = [
            Op::CompareEq {
                a: bytes(&b.count),
                b: local(&c),
                len: W,
            },
            Op::CompareEq {
                a: bytes(&b.items[c - 1]),
                b: local(&item),
                len: W,
            },
            Op::Memcpy {
                dst: bytes(&b.count),
                src: local(&c0),
                len: W,
            },
        ];
        match self.run_ops(i, &ops) {
            Ok(()) => Ok(Some(item)),
            Err(OpError::CompareFailed { op: 0 | 1 }) => Err(Raced),
            Err(e) => panic!("buffer pop vector on slot {i}: {e:?}"),
        }
    }

    // --- Counters and pairs.

    fn add(&self, i: usize, v: isize, order: Order) {
        // SAFETY: slot i's counter, written only through this domain.
        unsafe {
            self.domain
                .add_store(i, ptr_of(&self.slots[i].counter.0), v, order)
        };
    }

    fn add_through(&self, i: usize, v: isize, order: Order) {
        // SAFETY: `counter_at` is slot i's word and holds the address of slot
        // i's counter (offset 0), written only through this domain.
        unsafe {
            self.domain
                .add_load_add_store(i, ptr_of(&self.slots[i].counter_at.0), 0, v, order)
        };
    }

    /// Reads slot `i`'s pair at one instant: `Some((a, b))` if a
    /// `cbne_load_cbne_store` committed with both words as read.
    fn pair_snapshot(&self, i: usize) -> Option<(usize, usize)> {
        let p = &self.slots[i].pair.0;
        let (a, b) = (p[0].load(Relaxed), p[1].load(Relaxed));
        // SAFETY: both words are slot i's, written only through this domain.
        unsafe {
            self.domain.cbne_load_cbne_store(
                i,
                ptr_of(&p[0]),
                a,
                ptr_of(&p[1]),
                b,
                a,
                Order::Relaxed,
            )
        }
        .ok()
        .map(|()| (a, b))
    }

    /// Runs a vector on slot `i`.
    fn run_ops(&self, i: usize, ops: &[Op]) -> Result<(), OpError> {
        // SAFETY: every pointer in the vectors built in this file points to a
        // word of `self.slots[i]`, to a node of `self.nodes` (live for the
        // scene's lifetime; compared or written only while it is in slot i's
        // list: each vector checks the head first), or to a local of the
        // caller that outlives the call; all are 8-byte words.
        unsafe { self.domain.run_ops(i, ops) }
    }
}

/// A compare found a value changed since it was read: the caller tries again.
#[derive(Debug)]
struct Raced;

#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Yes,
    Full,
    Raced,
}

// ---------------------------------------------------------------------------
// What a run does.

/// Which data the workers and vector threads work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Lists,
    Buffers,
    Counters,
}

#[derive(Debug, Clone)]
struct Cfg {
    label: String,
    by: Index,
    load: Load,
    workers: usize,
    vector_threads: usize,
    ops_per_worker: u64,
    /// Percentage of worker operations aimed at a random slot.
    remote_percent: u32,
    signals: bool,
    affinity: bool,
    storm: bool,
    seed: u64,
    timeout: Duration,
}

impl Cfg {
    fn full(by: Index, load: Load) -> Cfg {
        let scale = common::scale();
        let cpus = cpulocal::possible_cpus();
        Cfg {
            label: format!("{load:?}/{by:?}"),
            by,
            load,
            workers: 6 * cpus,
            vector_threads: 2 * cpus,
            ops_per_worker: ((BASE_OPS_PER_WORKER as f64) * scale).max(1.0) as u64,
            remote_percent: 20,
            signals: true,
            affinity: true,
            storm: true,
            seed: common::seed(),
            timeout: Duration::from_secs_f64(120.0 * scale.max(1.0)),
        }
    }
}

/// What one thread did.
#[derive(Debug, Default)]
struct Tally {
    /// Shape operations called (each counts once in the domain's stats).
    shape_ops: u64,
    /// Vectors run.
    vectors: u64,
    /// Vectors that stopped at a compare (a race; nothing written after it).
    vectors_stopped: u64,
    /// What this thread added to the counters (wrapping), in how many adds.
    added: usize,
    adds: u64,
    /// Pair snapshots taken (shapes or vectors), and how many broke the sum.
    pair_checks: u64,
    /// List moves or buffer transfers completed.
    moves: u64,
    /// Buffer pushes that found the buffer full.
    full: u64,
    /// Tokens held at the end.
    tokens: Vec<usize>,
    /// Invariant violations seen during the run, with the first described.
    faults: u64,
    first_fault: Option<String>,
}

impl Tally {
    fn add(&mut self, v: usize) {
        self.added = self.added.wrapping_add(v);
        self.adds += 1;
    }

    fn fault(&mut self, what: impl FnOnce() -> String) {
        self.faults += 1;
        if self.first_fault.is_none() {
            self.first_fault = Some(what());
        }
    }

    fn merge(&mut self, o: Tally) {
        self.shape_ops += o.shape_ops;
        self.vectors += o.vectors;
        self.vectors_stopped += o.vectors_stopped;
        self.added = self.added.wrapping_add(o.added);
        self.adds += o.adds;
        self.pair_checks += o.pair_checks;
        self.moves += o.moves;
        self.full += o.full;
        self.tokens.extend(o.tokens);
        self.faults += o.faults;
        if self.first_fault.is_none() {
            self.first_fault = o.first_fault;
        }
    }
}

/// What a run did and found.
#[derive(Debug)]
struct Outcome {
    label: String,
    seed: u64,
    index: Index,
    slots: usize,
    elapsed: Duration,
    workers: Tally,
    vectors: Tally,
    /// Storm: vectors run and `add_store`s done.
    storm_vectors: u64,
    storm_adds: usize,
    signals_sent: u64,
    handler_adds: u64,
    handler_added: usize,
    affinity_changes: u64,
    stats: PathStats,
    /// The broken invariants, in words; empty when all hold.
    broken: Vec<String>,
    /// Counters: sum of the slots' counters and what was added.
    counter_sum: usize,
    counter_added: usize,
}

impl Outcome {
    /// The counter difference, observed - added, as a signed number.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // the broken-protocol test's
    fn counter_difference(&self) -> i64 {
        self.counter_sum.wrapping_sub(self.counter_added) as i64
    }

    fn assert_exact(&self) {
        assert!(
            self.broken.is_empty(),
            "[{}] invariants broken (seed {}, CPULOCAL_STRESS_SEED):\n  - {}\n{self}",
            self.label,
            self.seed,
            self.broken.join("\n  - ")
        );
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {:.2?}, {:?} x {} slots: workers {} shape ops ({} moves, {} full, {} pair checks); \
             vectors {} ({} stopped at a compare, {} moves, {} pair checks); storm {} vectors + {} adds; \
             signals sent {}, handler adds {} (+{}); migrations {}; stats {:?}; counters {} vs added {}; seed {}",
            self.label,
            self.elapsed,
            self.index,
            self.slots,
            self.workers.shape_ops,
            self.workers.moves,
            self.workers.full,
            self.workers.pair_checks,
            self.vectors.vectors,
            self.vectors.vectors_stopped,
            self.vectors.moves,
            self.vectors.pair_checks,
            self.storm_vectors,
            self.storm_adds,
            self.signals_sent,
            self.handler_adds,
            self.handler_added,
            self.affinity_changes,
            self.stats,
            self.counter_sum,
            self.counter_added,
            self.seed,
        )
    }
}

// ---------------------------------------------------------------------------
// Signal handler. Everything it touches is static or reached from
// `HANDLER_SCENE`.

/// The scene the handler adds to; null outside a run.
static HANDLER_SCENE: AtomicPtr<Scene> = AtomicPtr::new(ptr::null_mut());
/// What handlers added (wrapping) and how many `add_store`s they did.
static HANDLER_ADDED: AtomicUsize = AtomicUsize::new(0);
static HANDLER_ADDS: AtomicU64 = AtomicU64::new(0);
static HANDLER_SEQ: AtomicU64 = AtomicU64::new(0);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `SIGUSR1`: an `add_store` on the current slot's signal word and one on a
/// random slot's (the fenced path, from a handler), tallied. Async-signal-safe:
/// atomics and domain operations only, no allocation, no lock; `errno` kept.
extern "C" fn on_sigusr1(_sig: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let saved_errno = unsafe { *libc::__errno_location() };
    let scene = HANDLER_SCENE.load(Acquire);
    if !scene.is_null() {
        // SAFETY: `run` publishes the pointer while its Arc keeps the scene
        // alive, and clears it only after every signalled thread is joined (or
        // leaks the scene when it unwinds).
        let scene = unsafe { &*scene };
        let r = splitmix64(HANDLER_SEQ.fetch_add(1, Relaxed));
        let here = scene.domain.current();
        let there = (r as usize) % scene.len();
        let (v1, v2) = (1 + (r >> 40) as usize % 7, 1 + (r >> 48) as usize % 7);
        // SAFETY: the signal words are slot `here`'s and slot `there`'s,
        // written only through this domain.
        unsafe {
            scene.domain.add_store(
                here,
                ptr_of(&scene.slots[here].signal.0),
                v1 as isize,
                Order::Relaxed,
            );
            scene.domain.add_store(
                there,
                ptr_of(&scene.slots[there].signal.0),
                v2 as isize,
                Order::Release,
            );
        }
        HANDLER_ADDED.fetch_add(v1 + v2, Relaxed);
        HANDLER_ADDS.fetch_add(2, Relaxed);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is valid to fill in; the handler is an
        // `extern "C" fn(c_int)` (no SA_SIGINFO); the pointers are to locals.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            let rc = libc::sigaction(libc::SIGUSR1, &sa, ptr::null_mut());
            assert_eq!(rc, 0, "sigaction: {}", std::io::Error::last_os_error());
        }
    });
}

// ---------------------------------------------------------------------------
// Threads.

/// State shared by the threads of a run.
struct Shared {
    stop_helpers: AtomicBool,
    /// Set when every worker has done its operations: vector threads stop.
    workers_done: AtomicBool,
    release_targets: AtomicBool,
    done: AtomicUsize,
    /// Kernel tid and pthread_t of live targets (workers, then vector
    /// threads); 0 when not (yet, or any longer) a valid target.
    tids: Vec<AtomicI32>,
    pthreads: Vec<AtomicU64>,
    signals_sent: AtomicU64,
    affinity_changes: AtomicU64,
    storm_rounds: AtomicU64,
}

/// Registers the calling thread as signal/affinity target `k` and removes it
/// on drop (also on panic).
struct Target<'a> {
    shared: &'a Shared,
    k: usize,
}

impl<'a> Target<'a> {
    fn register(shared: &'a Shared, k: usize, domain: &Domain) -> Target<'a> {
        // Set the thread up before it can be signalled (its first operation
        // may register rseq and allocate).
        let _ = domain.current();
        shared.tids[k].store(common::gettid(), SeqCst);
        // SAFETY: pthread_self has no preconditions.
        shared.pthreads[k].store(unsafe { libc::pthread_self() } as u64, SeqCst);
        Target { shared, k }
    }

    /// Stays a valid target until the helpers are joined.
    fn linger(&self) {
        while !self.shared.release_targets.load(SeqCst) {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Target<'_> {
    fn drop(&mut self) {
        self.shared.pthreads[self.k].store(0, SeqCst);
        self.shared.tids[self.k].store(0, SeqCst);
    }
}

fn disturb(rng: &mut SmallRng) {
    match rng.random_range(0..8_192u32) {
        0..=3 => thread::yield_now(),
        4..=11 => {
            for _ in 0..rng.random_range(0..2_000u32) {
                std::hint::spin_loop();
            }
        }
        12 => thread::sleep(Duration::from_micros(rng.random_range(1..50))),
        _ => {}
    }
}

fn order(rng: &mut SmallRng) -> Order {
    if rng.random_bool(0.5) {
        Order::Release
    } else {
        Order::Relaxed
    }
}

/// A slot: the current one, or (`remote_percent` of the time) a random one.
fn pick(scene: &Scene, rng: &mut SmallRng, remote_percent: u32) -> usize {
    if rng.random_ratio(remote_percent, 100) {
        rng.random_range(0..scene.len())
    } else {
        scene.domain.current()
    }
}

fn worker(scene: &Scene, shared: &Shared, k: usize, cfg: &Cfg, seed: u64) -> Tally {
    let target = Target::register(shared, k, &scene.domain);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::default();
    let mut held: Option<usize> = None; // a token, in the buffers load
    let mut ops = 0;
    while ops < cfg.ops_per_worker {
        match cfg.load {
            Load::Lists => {
                let from = pick(scene, &mut rng, cfg.remote_percent);
                t.shape_ops += 1;
                ops += 1;
                let Some(addr) = scene.pop(from) else {
                    continue;
                };
                let Some(node) = scene.node_at(addr) else {
                    t.fault(|| format!("pop from slot {from} returned {addr:#x}, not a node"));
                    continue;
                };
                disturb(&mut rng);
                let to = pick(scene, &mut rng, 50);
                let attempts = scene.push(to, node, order(&mut rng));
                t.shape_ops += attempts;
                ops += attempts;
                t.moves += 1;
            }
            Load::Buffers => {
                let i = pick(scene, &mut rng, cfg.remote_percent);
                match held {
                    Some(token) => match scene.buf_push(i, token) {
                        Pushed::Yes => {
                            t.shape_ops += 1;
                            held = None;
                            t.moves += 1;
                        }
                        Pushed::Raced => t.shape_ops += 1,
                        Pushed::Full => t.full += 1,
                    },
                    None => match scene.buf_pop(i) {
                        Ok(Some(token)) => {
                            t.shape_ops += 1;
                            if token == 0 || token > tokens(scene.len()) {
                                t.fault(|| {
                                    format!("buffer pop on slot {i} committed item {token}, not a token")
                                });
                            } else {
                                held = Some(token);
                            }
                        }
                        Ok(None) => {}
                        Err(Raced) => t.shape_ops += 1,
                    },
                }
                ops += 1;
            }
            Load::Counters => {
                let v = 1isize; // an increment: the counters count operations
                match rng.random_range(0..100u32) {
                    0..=59 => {
                        scene.add(scene.domain.current(), v, order(&mut rng));
                        t.add(v as usize);
                    }
                    60..=69 => {
                        let i = pick(scene, &mut rng, cfg.remote_percent);
                        scene.add_through(i, v, order(&mut rng));
                        t.add(v as usize);
                    }
                    70..=79 => {
                        let i = rng.random_range(0..scene.len());
                        scene.add(i, v, order(&mut rng));
                        t.add(v as usize);
                    }
                    _ => {
                        let i = pick(scene, &mut rng, cfg.remote_percent);
                        if let Some((a, b)) = scene.pair_snapshot(i) {
                            t.pair_checks += 1;
                            if a.wrapping_add(b) != PAIR_SUM {
                                t.fault(|| {
                                    format!("slot {i}'s pair read at one instant: {a} + {b} != {PAIR_SUM}")
                                });
                            }
                        }
                    }
                }
                t.shape_ops += 1;
                ops += 1;
            }
        }
        disturb(&mut rng);
    }
    t.tokens.extend(held);
    if shared.done.fetch_add(1, SeqCst) + 1 == cfg.workers {
        shared.workers_done.store(true, SeqCst);
    }
    target.linger();
    t
}

fn vector_thread(scene: &Scene, shared: &Shared, k: usize, cfg: &Cfg, seed: u64) -> Tally {
    let target = Target::register(shared, k, &scene.domain);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::default();
    let mut held: Option<usize> = None;
    let n = scene.len();
    // At least a few vectors, then as long as the workers work.
    while t.vectors < 64 || !shared.workers_done.load(Relaxed) {
        match cfg.load {
            Load::Lists => {
                let from = rng.random_range(0..n);
                t.vectors += 1;
                match scene.pop_ops(from) {
                    Ok(Some(addr)) => {
                        let node = scene.node_at(addr).expect("a node: checked by pop_ops");
                        let to = rng.random_range(0..n);
                        loop {
                            t.vectors += 1;
                            if scene.push_ops(to, node).is_ok() {
                                break;
                            }
                            t.vectors_stopped += 1;
                        }
                        t.moves += 1;
                    }
                    Ok(None) => {}
                    Err(Raced) => t.vectors_stopped += 1,
                }
            }
            Load::Buffers => {
                let i = rng.random_range(0..n);
                match held {
                    Some(token) => match scene.buf_push_ops(i, token) {
                        Pushed::Yes => {
                            t.vectors += 1;
                            t.moves += 1;
                            held = None;
                        }
                        Pushed::Raced => {
                            t.vectors += 1;
                            t.vectors_stopped += 1;
                        }
                        Pushed::Full => t.full += 1,
                    },
                    None => match scene.buf_pop_ops(i) {
                        Ok(Some(token)) => {
                            t.vectors += 1;
                            if token == 0 || token > tokens(n) {
                                t.fault(|| {
                                    format!("vector pop on slot {i} committed item {token}, not a token")
                                });
                            } else {
                                held = Some(token);
                            }
                        }
                        Ok(None) => {}
                        Err(Raced) => {
                            t.vectors += 1;
                            t.vectors_stopped += 1;
                        }
                    },
                }
            }
            Load::Counters => {
                let i = rng.random_range(0..n);
                counter_vector(scene, &mut rng, i, &mut t);
            }
        }
        disturb(&mut rng);
    }
    t.tokens.extend(held);
    target.linger();
    t
}

/// One vector of the counters load on slot `i`.
fn counter_vector(scene: &Scene, rng: &mut SmallRng, i: usize, t: &mut Tally) {
    let s = &scene.slots[i];
    let counter = bytes(&s.counter.0);
    let (a, b) = (bytes(&s.pair.0[0]), bytes(&s.pair.0[1]));
    let v: i64 = 1; // an increment: the counters count operations
    let x: i64 = rng.random_range(-1000..=1000);
    let never = NEVER;
    t.vectors += 1;
    match rng.random_range(0..100u32) {
        // A compare that always passes, then the add.
        0..=29 => {
            let ops = [
                Op::CompareNe {
                    a: counter,
                    b: local(&never),
                    len: W,
                },
                Op::Add {
                    p: counter,
                    size: W,
                    count: v,
                },
            ];
            match scene.run_ops(i, &ops) {
                Ok(()) => t.add(v as usize),
                Err(e) => t.fault(|| format!("CompareNe(counter, NEVER) + Add on slot {i}: {e:?}")),
            }
        }
        // The bare add (release flavour half the time).
        30..=49 => {
            let op = if rng.random_bool(0.5) {
                Op::Add {
                    p: counter,
                    size: W,
                    count: v,
                }
            } else {
                Op::AddRelease {
                    p: counter,
                    size: W,
                    count: v,
                }
            };
            match scene.run_ops(i, &[op]) {
                Ok(()) => t.add(v as usize),
                Err(e) => t.fault(|| format!("Add on slot {i}: {e:?}")),
            }
        }
        // An add behind a compare with a snapshot, which may fail: then
        // nothing after it may have run.
        50..=59 => {
            let snap = s.counter.0.load(Relaxed);
            let ops = [
                Op::CompareEq {
                    a: counter,
                    b: local(&snap),
                    len: W,
                },
                Op::Add {
                    p: counter,
                    size: W,
                    count: v,
                },
                Op::Mb,
            ];
            match scene.run_ops(i, &ops) {
                Ok(()) => t.add(v as usize),
                Err(OpError::CompareFailed { op: 0 }) => t.vectors_stopped += 1,
                Err(e) => t.fault(|| format!("CompareEq + Add on slot {i}: {e:?}")),
            }
        }
        // Move x from one word of the pair to the other.
        60..=84 => {
            let ops = [
                Op::Add {
                    p: a,
                    size: W,
                    count: -x,
                },
                Op::Add {
                    p: b,
                    size: W,
                    count: x,
                },
            ];
            match scene.run_ops(i, &ops) {
                Ok(()) => t.moves += 1,
                Err(e) => t.fault(|| format!("pair move on slot {i}: {e:?}")),
            }
        }
        // The same behind compares of both words with a snapshot: when they
        // pass, the snapshot was the pair at one instant.
        _ => {
            let p = &s.pair.0;
            let (a0, b0) = (p[0].load(Relaxed), p[1].load(Relaxed));
            let ops = [
                Op::CompareEq {
                    a,
                    b: local(&a0),
                    len: W,
                },
                Op::CompareEq {
                    a: b,
                    b: local(&b0),
                    len: W,
                },
                Op::AddRelease {
                    p: a,
                    size: W,
                    count: -x,
                },
                Op::Add {
                    p: b,
                    size: W,
                    count: x,
                },
            ];
            match scene.run_ops(i, &ops) {
                Ok(()) => {
                    t.moves += 1;
                    t.pair_checks += 1;
                    if a0.wrapping_add(b0) != PAIR_SUM {
                        t.fault(|| {
                            format!("slot {i}'s pair under its fence: {a0} + {b0} != {PAIR_SUM}")
                        });
                    }
                }
                Err(OpError::CompareFailed { op: 0 | 1 }) => t.vectors_stopped += 1,
                Err(e) => t.fault(|| format!("compared pair move on slot {i}: {e:?}")),
            }
        }
    }
}

fn live_target(rng: &mut SmallRng, shared: &Shared) -> Option<usize> {
    let k = rng.random_range(0..shared.tids.len());
    (shared.tids[k].load(SeqCst) != 0).then_some(k)
}

fn signal_thread(shared: &Shared, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    while !shared.stop_helpers.load(SeqCst) {
        for _ in 0..rng.random_range(1..=8u32) {
            let Some(k) = live_target(&mut rng, shared) else {
                continue;
            };
            let p = shared.pthreads[k].load(SeqCst);
            if p == 0 {
                continue;
            }
            // SAFETY: `p` is the pthread_t of a target not yet joined (targets
            // are joined only after this thread stops), so it is valid.
            if unsafe { libc::pthread_kill(p as libc::pthread_t, libc::SIGUSR1) } == 0 {
                shared.signals_sent.fetch_add(1, SeqCst);
            }
        }
        thread::sleep(Duration::from_micros(rng.random_range(1..100)));
    }
}

fn affinity_thread(shared: &Shared, allowed: &[usize], seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    while !shared.stop_helpers.load(SeqCst) {
        if let Some(k) = live_target(&mut rng, shared) {
            let tid = shared.tids[k].load(SeqCst);
            let to: &[usize] = if rng.random_ratio(7, 10) {
                let c = rng.random_range(0..allowed.len());
                &allowed[c..=c]
            } else {
                allowed
            };
            if tid != 0 && common::set_affinity(tid, to).is_ok() {
                shared.affinity_changes.fetch_add(1, SeqCst);
            }
        }
        thread::sleep(Duration::from_micros(rng.random_range(20..500)));
    }
}

/// Holds every slot's fence again and again: empty and `[Op::Mb]` vectors,
/// and an `add_store` on each storm word. Returns (vectors, added).
fn storm_thread(scene: &Scene, shared: &Shared, seed: u64) -> (u64, usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut vectors, mut added) = (0u64, 0usize);
    while !shared.stop_helpers.load(SeqCst) {
        let burst = if rng.random_ratio(1, 20) { 32 } else { 1 };
        for _ in 0..burst {
            for i in 0..scene.len() {
                let ops: &[Op] = if rng.random_bool(0.5) { &[] } else { &[Op::Mb] };
                scene
                    .run_ops(i, ops)
                    .unwrap_or_else(|e| panic!("storm vector {ops:?} on slot {i}: {e:?}"));
                vectors += 1;
                // SAFETY: slot i's storm word, written only through this domain.
                unsafe {
                    scene
                        .domain
                        .add_store(i, ptr_of(&scene.slots[i].storm.0), 1, Order::Relaxed)
                };
                added += 1;
            }
        }
        shared.storm_rounds.fetch_add(1, SeqCst);
        match rng.random_range(0..3u32) {
            0 => thread::yield_now(),
            1 => thread::sleep(Duration::from_micros(rng.random_range(1..200))),
            _ => {
                for _ in 0..rng.random_range(0..20_000u32) {
                    std::hint::spin_loop();
                }
            }
        }
    }
    (vectors, added)
}

/// On unwinding, stops every thread and leaks the scene (the handler and
/// stuck threads may still use it).
struct StopOnPanic {
    shared: Arc<Shared>,
    scene: Arc<Scene>,
}

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.shared.stop_helpers.store(true, SeqCst);
            self.shared.workers_done.store(true, SeqCst);
            self.shared.release_targets.store(true, SeqCst);
            std::mem::forget(self.scene.clone());
        }
    }
}

fn join<T>(h: JoinHandle<T>, what: &str) -> T {
    h.join().unwrap_or_else(|e| {
        eprintln!("shapes_stress: a {what} thread panicked");
        std::panic::resume_unwind(e)
    })
}

/// Waits for `cond` until `deadline`; false if it never held.
fn wait_until(deadline: Instant, cond: impl Fn() -> bool) -> bool {
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Runs a scene without judging it (the caller holds [`RUN_LOCK`]).
fn run(cfg: &Cfg) -> Outcome {
    install_handler();
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let scene = Arc::new(Scene::new(cfg.by));
    let allowed = common::allowed_cpus();
    let targets = cfg.workers + cfg.vector_threads;
    let shared = Arc::new(Shared {
        stop_helpers: AtomicBool::new(false),
        workers_done: AtomicBool::new(false),
        release_targets: AtomicBool::new(false),
        done: AtomicUsize::new(0),
        tids: (0..targets).map(|_| AtomicI32::new(0)).collect(),
        pthreads: (0..targets).map(|_| AtomicU64::new(0)).collect(),
        signals_sent: AtomicU64::new(0),
        affinity_changes: AtomicU64::new(0),
        storm_rounds: AtomicU64::new(0),
    });
    let _on_panic = StopOnPanic {
        shared: shared.clone(),
        scene: scene.clone(),
    };
    HANDLER_ADDED.store(0, SeqCst);
    HANDLER_ADDS.store(0, SeqCst);
    HANDLER_SCENE.store(Arc::as_ptr(&scene).cast_mut(), Release);
    let mut seeder = SmallRng::seed_from_u64(cfg.seed);

    let spawn = |name: String, f: Box<dyn FnOnce() -> Tally + Send>| {
        thread::Builder::new()
            .name(name)
            .spawn(f)
            .expect("spawning a thread")
    };
    let workers: Vec<JoinHandle<Tally>> = (0..cfg.workers)
        .map(|k| {
            let (scene, shared, cfg, seed) =
                (scene.clone(), shared.clone(), cfg.clone(), seeder.random());
            spawn(
                format!("shapes-worker-{k}"),
                Box::new(move || worker(&scene, &shared, k, &cfg, seed)),
            )
        })
        .collect();
    let vectors: Vec<JoinHandle<Tally>> = (0..cfg.vector_threads)
        .map(|v| {
            let k = cfg.workers + v;
            let (scene, shared, cfg, seed) =
                (scene.clone(), shared.clone(), cfg.clone(), seeder.random());
            spawn(
                format!("shapes-vectors-{v}"),
                Box::new(move || vector_thread(&scene, &shared, k, &cfg, seed)),
            )
        })
        .collect();
    let mut helpers: Vec<(&str, JoinHandle<()>)> = Vec::new();
    if cfg.signals {
        let (shared, seed) = (shared.clone(), seeder.random());
        helpers.push((
            "signal",
            thread::spawn(move || signal_thread(&shared, seed)),
        ));
    }
    if cfg.affinity {
        let (shared, seed, allowed) = (shared.clone(), seeder.random(), allowed.clone());
        helpers.push((
            "affinity",
            thread::spawn(move || affinity_thread(&shared, &allowed, seed)),
        ));
    }
    let storm = cfg.storm.then(|| {
        let (scene, shared, seed) = (scene.clone(), shared.clone(), seeder.random::<u64>());
        thread::spawn(move || storm_thread(&scene, &shared, seed))
    });

    // Wait for the workers, then until every ingredient has acted at least
    // once (targets linger, so signals and migrations still reach them).
    let mut timed_out = None;
    if !wait_until(deadline, || shared.done.load(SeqCst) == cfg.workers) {
        timed_out = Some(format!(
            "{} of {} workers finished",
            shared.done.load(SeqCst),
            cfg.workers
        ));
    }
    let acted = || {
        (!cfg.signals || HANDLER_ADDS.load(SeqCst) > 0)
            && (!cfg.affinity || shared.affinity_changes.load(SeqCst) > 0)
            && (!cfg.storm || shared.storm_rounds.load(SeqCst) > 0)
    };
    if timed_out.is_none() && !wait_until(deadline, acted) {
        timed_out = Some("a helper never acted".to_owned());
    }
    shared.stop_helpers.store(true, SeqCst);
    for (what, h) in helpers {
        join(h, what);
    }
    let (storm_vectors, storm_adds) = storm.map_or((0, 0), |h| join(h, "storm"));
    shared.release_targets.store(true, SeqCst);
    if let Some(why) = timed_out {
        panic!(
            "[{}] did not finish within {:?} ({why}): a hang or livelock; stats {:?}, seed {}",
            cfg.label,
            cfg.timeout,
            scene.domain.stats(),
            cfg.seed
        );
    }
    let mut w = Tally::default();
    for h in workers {
        w.merge(join(h, "worker"));
    }
    let mut v = Tally::default();
    for h in vectors {
        v.merge(join(h, "vector"));
    }
    HANDLER_SCENE.store(ptr::null_mut(), SeqCst);
    let elapsed = started.elapsed();

    // Every thread has stopped: check the invariants.
    let mut broken = Vec::new();
    for (who, t) in [("worker", &w), ("vector", &v)] {
        if t.faults > 0 {
            broken.push(format!(
                "{} {who} observations broke an invariant during the run; the first: {}",
                t.faults,
                t.first_fault.as_deref().unwrap_or("?")
            ));
        }
    }
    match cfg.load {
        Load::Lists => check_lists(&scene, &mut broken),
        Load::Buffers => {
            let mut held = w.tokens.clone();
            held.extend(&v.tokens);
            check_buffers(&scene, &held, &mut broken);
        }
        Load::Counters => {
            for (i, s) in scene.slots.iter().enumerate() {
                let (a, b) = (s.pair.0[0].load(SeqCst), s.pair.0[1].load(SeqCst));
                if a.wrapping_add(b) != PAIR_SUM {
                    broken.push(format!(
                        "slot {i}'s pair sums to {} ({a} + {b}), not {PAIR_SUM}: a move was torn",
                        a.wrapping_add(b)
                    ));
                }
            }
        }
    }
    let counter_sum = scene
        .slots
        .iter()
        .fold(0usize, |acc, s| acc.wrapping_add(s.counter.0.load(SeqCst)));
    let counter_added = w.added.wrapping_add(v.added);
    if counter_sum != counter_added {
        broken.push(format!(
            "the counters sum to {} but {} was added: difference {} ({})",
            counter_sum as i64,
            counter_added as i64,
            counter_sum.wrapping_sub(counter_added) as i64,
            if (counter_sum.wrapping_sub(counter_added) as i64) < 0 {
                "adds lost"
            } else {
                "adds counted twice"
            }
        ));
    }
    let handler_added = HANDLER_ADDED.load(SeqCst);
    let signal_sum = scene
        .slots
        .iter()
        .fold(0usize, |acc, s| acc.wrapping_add(s.signal.0.load(SeqCst)));
    if signal_sum != handler_added {
        broken.push(format!(
            "the signal words sum to {signal_sum} but the handlers added {handler_added}"
        ));
    }
    let storm_sum = scene
        .slots
        .iter()
        .fold(0usize, |acc, s| acc.wrapping_add(s.storm.0.load(SeqCst)));
    if storm_sum != storm_adds {
        broken.push(format!(
            "the storm words sum to {storm_sum} but the storm added {storm_adds}"
        ));
    }

    Outcome {
        label: cfg.label.clone(),
        seed: cfg.seed,
        index: scene.domain.index(),
        slots: scene.len(),
        elapsed,
        workers: w,
        vectors: v,
        storm_vectors,
        storm_adds,
        signals_sent: shared.signals_sent.load(SeqCst),
        handler_adds: HANDLER_ADDS.load(SeqCst),
        handler_added,
        affinity_changes: shared.affinity_changes.load(SeqCst),
        stats: scene.domain.stats(),
        broken,
        counter_sum,
        counter_added,
    }
}

/// Every node in exactly one list, once; the lists end (no cycle).
fn check_lists(scene: &Scene, broken: &mut Vec<String>) {
    let mut seen = vec![None::<usize>; NODES];
    let mut total = 0usize;
    for (i, s) in scene.slots.iter().enumerate() {
        let mut addr = s.head.0.load(SeqCst);
        let mut len = 0usize;
        while addr != 0 {
            let Some(node) = scene.node_at(addr) else {
                broken.push(format!(
                    "slot {i}'s list holds {addr:#x} at position {len}: not a node"
                ));
                break;
            };
            if let Some(other) = seen[node.id] {
                broken.push(format!(
                    "node {} is in slot {i}'s list at position {len} and already in slot {other}'s{}",
                    node.id,
                    if other == i { " (a cycle)" } else { "" }
                ));
                break;
            }
            seen[node.id] = Some(i);
            len += 1;
            addr = node.next.load(SeqCst);
        }
        total += len;
    }
    let missing: Vec<usize> = (0..NODES).filter(|&k| seen[k].is_none()).collect();
    if !missing.is_empty() {
        broken.push(format!(
            "{} of {NODES} nodes are in no list (lost), e.g. {:?}; the lists hold {total}",
            missing.len(),
            &missing[..missing.len().min(8)]
        ));
    }
}

/// The items below each count, with the held tokens, are every token once.
fn check_buffers(scene: &Scene, held: &[usize], broken: &mut Vec<String>) {
    let n = tokens(scene.len());
    let mut seen = vec![0u32; n + 1];
    for (i, s) in scene.slots.iter().enumerate() {
        let b = &s.buffer.0;
        let c = b.count.load(SeqCst);
        if c > CAP {
            broken.push(format!("slot {i}'s buffer count is {c} > {CAP}"));
            continue;
        }
        for (j, item) in b.items[..c].iter().enumerate() {
            let tok = item.load(SeqCst);
            if tok == 0 || tok > n {
                broken.push(format!("slot {i}'s buffer item {j} is {tok}, not a token"));
            } else {
                seen[tok] += 1;
            }
        }
    }
    for &tok in held {
        seen[tok] += 1;
    }
    let lost: Vec<usize> = (1..=n).filter(|&k| seen[k] == 0).collect();
    let doubled: Vec<usize> = (1..=n).filter(|&k| seen[k] > 1).collect();
    if !lost.is_empty() {
        broken.push(format!("{} of {n} tokens lost: {lost:?}", lost.len()));
    }
    if !doubled.is_empty() {
        broken.push(format!(
            "{} of {n} tokens duplicated: {doubled:?}",
            doubled.len()
        ));
    }
}

/// Runs `cfg`, prints the outcome, asserts every invariant and ingredient.
fn stress(cfg: &Cfg) -> Outcome {
    let out = run(cfg);
    eprintln!("{out}");
    out.assert_exact();
    assert!(
        out.workers.shape_ops > 0 && out.vectors.vectors > 0,
        "{out}"
    );
    assert!(out.handler_adds > 0, "no signal handler ran: {out}");
    assert!(out.affinity_changes > 0, "no migration was forced: {out}");
    assert!(out.storm_vectors > 0, "the storm never ran: {out}");
    assert!(out.workers.moves > 0 || cfg.load == Load::Counters, "{out}");
    assert!(
        out.vectors.moves > 0,
        "no vector moved anything (every compare failed?): {out}"
    );
    // Remote shapes (and handlers' remote adds) can only take the fenced path.
    assert!(out.stats.fenced > 0, "no shape took the fenced path: {out}");
    let shape_ops = out.workers.shape_ops + out.handler_adds + out.storm_adds as u64;
    if cpulocal::status().engine == Engine::Rseq && cpulocal::possible_cpus() > 1 {
        let fast = shape_ops.saturating_sub(out.stats.fenced + out.stats.retried);
        assert!(fast > 0, "no shape committed at its first attempt: {out}");
        eprintln!(
            "  shapes: {:.1}% first-attempt, {:.1}% fenced, {} retried, {} aborts",
            100.0 * fast as f64 / shape_ops as f64,
            100.0 * out.stats.fenced as f64 / shape_ops as f64,
            out.stats.retried,
            out.stats.aborts
        );
    }
    out
}

fn stress_load(by: Index, load: Load) {
    let _one = lock_run();
    eprintln!("{}", cpulocal::status());
    stress(&Cfg::full(by, load));
}

#[test]
fn lists_conserve_nodes_by_cpu() {
    stress_load(Index::Cpu, Load::Lists);
}

#[test]
fn lists_conserve_nodes_by_mm_cid() {
    stress_load(Index::MmCid, Load::Lists);
}

#[test]
fn buffers_conserve_tokens_by_cpu() {
    stress_load(Index::Cpu, Load::Buffers);
}

#[test]
fn buffers_conserve_tokens_by_mm_cid() {
    stress_load(Index::MmCid, Load::Buffers);
}

#[test]
fn counters_and_pairs_exact_by_cpu() {
    stress_load(Index::Cpu, Load::Counters);
}

#[test]
fn counters_and_pairs_exact_by_mm_cid() {
    stress_load(Index::MmCid, Load::Counters);
}

/// The proof can fail: with the membarrier skipped (`testing` feature), a
/// vector's `Op::Add` on a remote slot runs while critical sections on that
/// slot's CPU are still in flight, and the counters load of
/// [`counters_and_pairs_exact_by_cpu`] loses adds.
///
/// (Only `SkipMembarrier` applies: the shapes' sections always check the
/// fence; `SkipFenceCheck` acts on the counter's section alone.) The same load
/// runs with the protocol intact before and after, and must then be exact;
/// the switch is restored even if the test panics, and [`RUN_LOCK`] keeps the
/// other tests of this binary from running meanwhile.
#[cfg(feature = "testing")]
#[test]
fn skipped_membarrier_is_detected() {
    use cpulocal::testing::{self, Break};

    /// Breaks the protocol while alive.
    struct Broken;
    impl Drop for Broken {
        fn drop(&mut self) {
            testing::set(Break::SkipMembarrier, false);
        }
    }
    /// How long the broken load may run before the test gives up and fails.
    const DETECTION_BUDGET: Duration = Duration::from_secs(15);

    let _one = lock_run();
    let status = cpulocal::status();
    if status.engine != Engine::Rseq || common::allowed_cpus().len() < 2 {
        eprintln!(
            "SKIPPED: needs the rseq engine and 2 allowed CPUs; have {} and {} CPUs",
            status.engine,
            common::allowed_cpus().len()
        );
        return;
    }
    let cfg = Cfg::full(Index::Cpu, Load::Counters);
    stress(&Cfg {
        label: "control before".into(),
        ..cfg.clone()
    });

    let found = {
        testing::set(Break::SkipMembarrier, true);
        let _restore = Broken;
        let started = Instant::now();
        let mut rounds = 0u64;
        loop {
            rounds += 1;
            let out = run(&Cfg {
                label: format!("SkipMembarrier round {rounds}"),
                seed: cfg.seed.wrapping_add(rounds),
                ..cfg.clone()
            });
            eprintln!("{out}");
            if out.counter_difference() != 0 {
                break Some((rounds, started.elapsed(), out));
            }
            if started.elapsed() > DETECTION_BUDGET {
                break None;
            }
        }
    };
    let Some((rounds, elapsed, out)) = found else {
        panic!(
            "with the membarrier skipped the counters load still gave exact sums for \
             {DETECTION_BUDGET:?}: it cannot detect the broken protocol"
        );
    };
    let increments = out.workers.adds + out.vectors.adds;
    eprintln!(
        "SkipMembarrier detected in round {rounds} after {elapsed:.2?}: the counters sum to {} \
         after {increments} increments ({} by shapes, {} by vectors): difference {} ({:.4}% of \
         the increments {}); all broken invariants:\n  - {}",
        out.counter_sum,
        out.workers.adds,
        out.vectors.adds,
        out.counter_difference(),
        100.0 * out.counter_difference().unsigned_abs() as f64 / increments as f64,
        if out.counter_difference() < 0 {
            "lost"
        } else {
            "counted twice"
        },
        out.broken.join("\n  - ")
    );

    stress(&Cfg {
        label: "control after".into(),
        ..cfg
    });
}
