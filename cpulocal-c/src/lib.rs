//! The C API of cpulocal: `libcpulocal.so`, `libcpulocal.a` and
//! `include/cpulocal.h`, which cbindgen generates from the doc comments of
//! this crate (`tests/header.rs` fails when the committed header is stale).
//!
//! Each module maps one part of the Rust API onto C functions, all named
//! `cpulocal_*`:
//!
//! - `counter`: `PerCpuCounter`;
//! - `domain`: `Domain`, the operation shapes on the caller's own per-CPU
//!   words, and `cpulocal_percpu_addv`;
//! - `opv`: operation vectors on a domain (`Domain::run_ops`);
//! - `list`: a per-CPU LIFO of caller-owned nodes with an embedded link,
//!   built on a domain's shapes;
//! - `buffer`: `PerCpuBuffer` of `void *`;
//! - `lock`: `PerCpuLock` around per-CPU bytes the library allocates;
//! - `ring`: `PerCpuRing`: reserve, commit, consume.
//!
//! # Conventions (the header's opening comment says the same to C users)
//!
//! - Errors are negative errno values, success is 0; a failed compare is
//!   [`CPULOCAL_COMPARE_FAILED`] (1), an outcome rather than an error.
//! - Constructors return NULL on failure and set `errno`.
//! - No function unwinds into C or aborts on a Rust panic: every entry point
//!   runs its body under `catch_unwind` (`util::guard`), and every argument
//!   that a Rust call would panic on (a slot out of range, a bad size) is
//!   checked first.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]
// The C names, as C programs see them.
#![allow(non_camel_case_types)]

#[cfg(not(target_os = "linux"))]
compile_error!("cpulocal runs on Linux only: it is built on the rseq and membarrier system calls");

// In the order the header lists them.
pub mod buffer;
pub mod counter;
pub mod domain;
pub mod list;
pub mod lock;
pub mod opv;
pub mod ring;
mod util;

use core::ffi::{c_char, c_int, c_uint};

use util::guard;

/// Slots numbered by CPU (`cpu_id`): one per possible CPU. The default of
/// every `_new`.
pub const CPULOCAL_INDEX_CPU: c_int = 0;

/// Slots numbered by concurrency id (`mm_cid`, Linux 6.3+): min(possible
/// CPUs, CPUs the process may run on) of them. Where the kernel does not
/// fill `mm_cid`, the object numbers its slots by CPU instead.
pub const CPULOCAL_INDEX_MM_CID: c_int = 1;

/// A compare found a value other than the one required, and nothing was
/// stored (the shapes, the list's pushes, operation vectors): a normal
/// outcome, not an error. The caller reloads and decides.
pub const CPULOCAL_COMPARE_FAILED: c_int = 1;

/// Critical-section attempts an operation makes before it takes the fenced
/// path: an abort means the thread was preempted, migrated or signalled
/// inside the section; several in a row mean it is being single-stepped or
/// starved, and retrying further would only livelock.
pub const CPULOCAL_RSEQ_ATTEMPTS: c_uint = 8;

const _: () = assert!(CPULOCAL_RSEQ_ATTEMPTS == cpulocal_rs::RSEQ_ATTEMPTS);

/// The last store of an operation is a plain store.
pub const CPULOCAL_ORDER_RELAXED: c_int = 0;

/// The last store of an operation is a store-release: a thread that reads the
/// committed word with an acquire load also sees every store before it. (On
/// x86_64 both orders are the same instructions.)
pub const CPULOCAL_ORDER_RELEASE: c_int = 1;

/// How many operations left the fast path of one object (its `_stats`
/// function). The rest committed their first critical section.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct cpulocal_stats {
    /// Operations that committed a critical section after one or more aborts.
    pub retried: u64,
    /// Critical sections aborted by the kernel (preemption, migration,
    /// signal, a single-stepping debugger), in all.
    pub aborts: u64,
    /// Operations that took the fenced path: another CPU's slot, a slot
    /// another thread had fenced, `RSEQ_ATTEMPTS` (8) aborts in a row, or a
    /// thread without rseq.
    pub fenced: u64,
}

impl From<cpulocal_rs::PathStats> for cpulocal_stats {
    fn from(s: cpulocal_rs::PathStats) -> Self {
        cpulocal_stats {
            retried: s.retried,
            aborts: s.aborts,
            fenced: s.fenced,
        }
    }
}

/// The number of possible CPUs: one past the highest id in
/// `/sys/devices/system/cpu/possible`. Objects numbered by CPU have this many
/// slots, and valid `cpu` arguments are below it.
///
/// Returns: at least 1. Never fails.
///
/// Async-signal-safe: no (the first call reads a file and allocates; later
/// calls only load the cached value).
#[no_mangle]
pub extern "C" fn cpulocal_possible_cpus() -> c_uint {
    guard(1, || {
        c_uint::try_from(cpulocal_rs::possible_cpus()).unwrap_or(c_uint::MAX)
    })
}

/// The CPU the calling thread runs on: rseq's `cpu_id`, or `sched_getcpu()`
/// on the fenced engine. The thread may migrate right after; operations check
/// again.
///
/// Returns: the CPU, from 0 to `cpulocal_possible_cpus() - 1`. Never fails.
///
/// Async-signal-safe: yes, except for a thread's first cpulocal call where
/// cpulocal registers rseq itself (glibc did not): that call installs a
/// thread-exit destructor, which may allocate. Call any cpulocal function
/// once in a thread before its signal handlers may use cpulocal.
#[no_mangle]
pub extern "C" fn cpulocal_current_cpu() -> c_int {
    guard(0, || {
        c_int::try_from(cpulocal_rs::current_cpu()).unwrap_or(c_int::MAX)
    })
}

/// The engine that runs the calling thread's operations.
///
/// Returns: the static string `"rseq"` (critical sections, with the fenced
/// path as fallback) or `"fenced"` (every operation takes the fenced path:
/// rseq unavailable, as under valgrind or a seccomp filter, or no critical
/// sections for this architecture). Never NULL; do not free it.
///
/// Async-signal-safe: no.
#[no_mangle]
pub extern "C" fn cpulocal_engine() -> *const c_char {
    guard(c"fenced".as_ptr(), || match cpulocal_rs::status().engine {
        cpulocal_rs::Engine::Rseq => c"rseq".as_ptr(),
        _ => c"fenced".as_ptr(),
    })
}
