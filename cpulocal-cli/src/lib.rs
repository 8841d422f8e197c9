//! Baselines the benchmarks and the CLI compare cpulocal with, and the
//! machinery to time them.
//!
//! - [`peers`]: the per-CPU increments compared ([`Peer`]): cpulocal's
//!   `PerCpuCounter::add`, the hand-written C rseq increment, the same with
//!   cpulocal's fence check, a shared `AtomicI64`, `sched_getcpu()` plus a
//!   per-CPU atomic, the thread-sharded counters Rust users write today (the
//!   `thread_local` crate with cache-padded atomics, the `fast-counter`
//!   crate); and [`FencedAddOn`], the cost of cpulocal's fenced path
//!   (`add_on` to a CPU the caller is not on).
//! - [`runner`]: [`Runner`], a team of threads (pinned one per CPU, spread
//!   evenly over the CPUs when there are more threads than CPUs, or floating)
//!   that runs a batch on every thread at once and reports its wall time.
//! - [`suite`]: the comparison `cpulocal bench` runs: every peer at 1 to 16
//!   threads in interleaved rounds, ratios to cpulocal, the fenced path.
//! - `baseline` (Linux x86_64 with glibc only): safe wrappers for the C code
//!   in `c/rseq_baseline.c`: the per-CPU increment, and the five loops of
//!   librseq's `param_test` benchmark (counter, spinlock, list, pointer
//!   buffer, memcpy buffer) indexed by `cpu_id` or by `mm_cid`.
//!
//! Both `benches/counter.rs` (criterion) and the `cpulocal bench` subcommand
//! build on these: [`ns_per_op`] is the one-call form.
//!
//! ```no_run
//! use cpulocal_cli::{ns_per_op, Peer};
//!
//! for peer in Peer::ALL {
//!     if let Some(ns) = ns_per_op(peer, 2, 10_000_000).unwrap() {
//!         println!("{:20} {ns:6.2} ns/op", peer.name());
//!     }
//! }
//! ```
#![warn(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

#[cfg(cpulocal_c_baseline)]
pub mod baseline;
pub mod loops;
pub mod peers;
pub mod ring_bench;
pub mod runner;
pub mod structures;
pub mod suite;

pub use peers::{ns_per_op, time_per_thread, FencedAddOn, Peer, Target, Workload};
pub use runner::{Placement, Runner};
