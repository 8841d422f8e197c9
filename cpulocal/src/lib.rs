//! CPU-local data for Linux, built on restartable sequences (rseq), with a
//! user-space equivalent of the `cpu_opv` system call as its fallback.
//!
//! A [`PerCpuCounter::add`] is a few-instruction critical section on the
//! current CPU's cache line: no atomic instruction, no contention. When the
//! section cannot complete (a debugger single-steps it, the thread is
//! preempted again and again, another thread is working on that CPU's slot, or
//! the thread has no rseq at all) the operation takes the *fenced path*: it
//! takes the slot's fence word, aborts every critical section on that CPU with
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)`, and runs as ordinary
//! code. The caller never sees an abort and never retries, and operations can
//! target any CPU's slot ([`PerCpuCounter::add_on`]).
//!
//! ```
//! use cpulocal::PerCpuCounter;
//!
//! let requests = PerCpuCounter::new();
//! requests.add(1);                      // this CPU's slot
//! requests.add_on(0, 1)?;               // CPU 0's slot, from anywhere
//! assert_eq!(requests.sum(), 2);
//! println!("{}", cpulocal::status());   // which engine runs, and why
//! # Ok::<(), cpulocal::Error>(())
//! ```
//!
//! # Building blocks
//!
//! - [`PerCpuCounter`]: add, add on any CPU, sum, take.
//! - [`PerCpu<T>`]: a value per CPU, locked through its fence from anywhere,
//!   or updated by operation vectors.
//! - [`PerCpuLock<T>`]: a per-CPU spinlock around a value per CPU, locked on
//!   the current CPU by a compare-and-store section (no atomic instruction),
//!   or on any CPU's slot through its fence.
//! - [`PerCpuList<T>`]: a per-CPU LIFO of [`Node`]s, values in nodes of their
//!   own that move between CPUs' lists (and threads) without touching the
//!   allocator: the per-CPU object cache, or a pool of preallocated objects.
//! - [`PerCpuBuffer<W>`]: a bounded per-CPU stack of [`Word`]s, stored as
//!   they are: `Box<T>`, `Arc<T>`, `NonNull<T>`, `&'static T`, `usize`.
//! - [`PerCpuMemcpyBuffer<T>`]: a bounded per-CPU stack of copies of small
//!   `Copy` values, stored inline.
//! - [`PerCpuRing`]: a per-CPU ring buffer of variable-length records for
//!   tracers: reserve on the current CPU (one section), write in place,
//!   commit from any CPU; discard or overwrite when full, with exact counts;
//!   a consumer reads complete sub-buffers per CPU in order.
//! - [`Domain`]: the seven librseq operation shapes (compare-and-store, add,
//!   list pop, store-store, memcpy-store, double compare, add through a
//!   pointer) on per-CPU memory of your own, at the raw-pointer level, each
//!   with [`Order::Relaxed`] and [`Order::Release`] variants; a failed compare
//!   is a normal result ([`CompareFailed`]), never an abort.
//! - [`opv`]: operation vectors, the user-space `cpu_opv`: up to 16 compares,
//!   copies and arithmetic operations run on one CPU's data atomically with
//!   respect to its critical sections; raw on a [`Domain`], safe on a
//!   [`PerCpu`] of plain data.
//! - [`Index`]: number slots by CPU (`cpu_id`) or by concurrency id
//!   (`mm_cid`), chosen at construction.
//!
//! # One set of rules
//!
//! Every structure follows the same conventions:
//!
//! - `cpus()` is the number of slots, `index()` how they are numbered,
//!   `stats()` how many operations left the fast path.
//! - An operation without a CPU in its name works on the slot of the CPU
//!   the caller runs on (one critical section); its `_on(cpu)` form works on
//!   the slot named, from any CPU (a critical section if the caller runs
//!   there, else the fenced path). A CPU out of range is
//!   [`Error::CpuOutOfRange`] on every `_on`, never a panic, and nothing is
//!   changed.
//! - `try_` operations never wait: another thread's hold is
//!   [`Error::WouldBlock`].
//! - A push that is refused gives the value back: `push` returns it when
//!   the slot is full, `push_on` returns it in a [`PushError`] with the
//!   reason.
//! - `len()` and `is_empty()` are snapshots; `capacity()` is values per CPU
//!   (the ring's size in bytes is [`PerCpuRing::bytes_per_cpu`]).
//! - `new` panics on arguments its `try_` twin refuses with
//!   [`Error::InvalidArgument`] or [`Error::Alloc`] (memory that cannot be
//!   allocated is an error, never an abort); large buffers and rings are
//!   zeroed lazily, so memory is committed as it is used.
//! - Dropping a structure drops the values it holds, all of them even if one
//!   value's `Drop` panics, as a `Vec` does.
//!
//! # Platform support
//!
//! cpulocal is for Linux only: it stands on the kernel's rseq and
//! `membarrier` system calls, and on another operating system it does not
//! compile (a `compile_error!` says so).
//!
//! | Linux target | engine | tested |
//! |---|---|---|
//! | `x86_64-unknown-linux-gnu` (dynamic or `+crt-static`) | rseq, the fenced path as fallback | every test natively, in CI; statically linked in guests on Linux 6.1, 6.12 and 7.3 |
//! | `aarch64-unknown-linux-gnu` | rseq, the fenced path as fallback | in CI, statically linked, in an emulated guest (Linux 6.1) |
//! | `riscv64gc-unknown-linux-gnu` | rseq, the fenced path as fallback | in CI, statically linked, in an emulated guest (Linux 6.12) |
//! | `i686-unknown-linux-gnu` | fenced | the structures, shapes, ring and model tests, in CI |
//! | other Linux targets | fenced | not tested |
//!
//! The rseq engine has critical sections for x86_64, aarch64 (little-endian)
//! and riscv64. Every other target, and any process where rseq or
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)` is unavailable (seccomp, valgrind,
//! old kernels, qemu's user mode), runs the fenced engine
//! alone, with the same results. [`status()`] says which engine runs and
//! why. Where a word is 32 bits, a [`PerCpuRing`] holds at most 512 KiB per
//! CPU (its record headers are one word).
#![deny(unsafe_code)]
#![warn(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]

#[cfg(not(target_os = "linux"))]
compile_error!("cpulocal runs on Linux only: it is built on the rseq and membarrier system calls");

mod error;
mod fenced;
mod index;
#[cfg(feature = "inject")]
pub mod inject;
mod rseq;
mod shape;
mod stats;
mod status;
mod structures;
mod switches;
#[cfg(feature = "testing")]
pub mod testing;

pub use fenced::opv;

/// The `bytemuck` crate, whose [`Pod`] bound [`PerCpu::run_ops`] puts on a
/// slot's type: re-exported, so that implementing it for your own types
/// needs no dependency of your own.
pub use bytemuck;
use rseq::{abi, registration, sys};
pub use structures::buffer::{PerCpuBuffer, Word};
// Plain data whose bytes operation vectors may rewrite (see
// `PerCpu::run_ops`), re-exported from bytemuck.
pub use bytemuck::{Pod, Zeroable};
pub use error::{Error, PushError};
pub use fenced::fence::SPINS_BEFORE_SLEEP;
pub use index::Index;
pub use rseq::registration::{Registration, RseqOff};
pub use rseq::slice::SliceExtension;
pub use rseq::sys::Errno;
pub use shape::{CompareFailed, Order};
pub use stats::PathStats;
pub use status::{Engine, Status};
pub use structures::counter::PerCpuCounter;
pub use structures::domain::Domain;
pub use structures::list::{Node, PerCpuList};
pub use structures::lock::{PerCpuLock, PerCpuLockGuard};
pub use structures::memcpy_buffer::PerCpuMemcpyBuffer;
pub use structures::percpu::{PerCpu, SlotGuard};
pub use structures::ring::{
    PerCpuRing, ReadSummary, Record, Reservation, RingConfig, RingError, RingMode, Stuck,
};

/// Critical-section attempts an operation makes before it takes the fenced
/// path. An abort means the thread was preempted, migrated or signalled inside
/// the section; several in a row mean it is being single-stepped or starved,
/// and retrying further would only livelock.
pub const RSEQ_ATTEMPTS: u32 = 8;

/// The state of cpulocal for the calling thread: who registered rseq, which
/// engine runs, what the kernel offers. Sets the thread up if it has not been.
///
/// # Examples
///
/// ```
/// let s = cpulocal::status();
/// assert!(s.cpu < s.possible_cpus);
/// println!("{s}");
/// ```
pub fn status() -> Status {
    Status::current()
}

/// The CPU the caller runs on, as a starting point for an operation on that
/// CPU's data (what rseq libraries call `rseq_cpu_start()`): rseq's `cpu_id_start`, or
/// `sched_getcpu()` without rseq. The thread may migrate right after; the
/// operations of this crate check again.
///
/// # Examples
///
/// ```
/// assert!(cpulocal::cpu_start() < cpulocal::possible_cpus());
/// ```
pub fn cpu_start() -> usize {
    registration::ensure_thread();
    registration::cpu_start()
}

/// The CPU the caller runs on: rseq's `cpu_id`, or `sched_getcpu()`.
///
/// # Examples
///
/// ```
/// assert!(cpulocal::current_cpu() < cpulocal::possible_cpus());
/// ```
pub fn current_cpu() -> usize {
    registration::ensure_thread();
    registration::current_cpu()
}

/// The number of possible CPUs: one past the highest id in
/// `/sys/devices/system/cpu/possible`. Every CPU that is or may later come
/// online is below it; per-CPU structures have this many slots.
///
/// # Examples
///
/// ```
/// assert!(cpulocal::possible_cpus() >= 1);
/// ```
pub fn possible_cpus() -> usize {
    sys::possible_cpus()
}

/// The number of possible NUMA nodes: one past the highest id in
/// `/sys/devices/system/node/possible`, or 1 on a kernel without NUMA.
/// Structures built with [`Index::Node`] have this many slots.
///
/// # Examples
///
/// ```
/// assert!(cpulocal::current_node() < cpulocal::possible_nodes());
/// ```
pub fn possible_nodes() -> usize {
    sys::possible_nodes()
}

/// The NUMA node of the CPU the caller runs on: rseq's `node_id` where the
/// thread has an rseq area whose `node_id` the kernel fills, else the node of
/// `sched_getcpu()`'s CPU (0 without NUMA). The slot [`Index::Node`]
/// structures use for the caller.
///
/// # Examples
///
/// ```
/// let node = cpulocal::current_node();
/// assert!(node < cpulocal::possible_nodes());
/// ```
pub fn current_node() -> usize {
    registration::ensure_thread();
    registration::current_node()
}

/// The NUMA node of the current CPU, from rseq's `node_id`; None where this
/// thread has no rseq area, its operations are fenced (see
/// [`Status::fenced_because`]), or the kernel does not fill the field (before
/// 6.3).
///
/// # Examples
///
/// ```
/// if let Some(node) = cpulocal::node_id() {
///     println!("running on node {node}");
/// }
/// ```
pub fn node_id() -> Option<usize> {
    registration::area_u32(core::mem::offset_of!(abi::Rseq, node_id))
}

/// The thread's concurrency id, from rseq's `mm_cid`: a small number, unique
/// among the process's running threads, below min(threads, CPUs). None where
/// this thread has no rseq area, its operations are fenced, or the kernel does
/// not fill it (before 6.3).
///
/// # Examples
///
/// ```
/// if let Some(cid) = cpulocal::mm_cid() {
///     assert!(cid < cpulocal::possible_cpus());
/// }
/// ```
pub fn mm_cid() -> Option<usize> {
    registration::area_u32(core::mem::offset_of!(abi::Rseq, mm_cid))
}
