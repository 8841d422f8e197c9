//! Critical sections: the only place with architecture-specific code.
//!
//! `build.rs` emits `cfg(cpulocal_rseq)` for targets with an rseq asm engine;
//! this module picks that engine or the generic one, which has no sections, so
//! that every operation takes the fenced path. Both export the same items:
//!
//! - `section()`, which runs any [`Shape`](crate::shape::Shape) as one
//!   critical section and returns [`Outcome`]. The arch layer knows shapes
//!   only, never a structure.
//!
//! What every architecture's sections share (the dispatch on the index mode,
//! the abort and compare-failure exits, the tests on fake areas) is in
//! `rseq.rs`; `x86_64.rs`, `aarch64.rs` and `riscv64.rs` hold only their asm.

/// How a critical section ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The commit store ran: the operation is done.
    #[cfg_attr(not(cpulocal_rseq), allow(dead_code))] // no sections, no commits
    Committed,
    /// The kernel aborted the section (preemption, migration, signal), or the
    /// thread was not on the expected CPU. Nothing was written.
    Aborted,
    /// The slot's fence word was set: take the fenced path. Nothing was written.
    Fenced,
    /// A compare of the operation failed: the operation is done, with nothing
    /// stored.
    #[cfg_attr(not(cpulocal_rseq), allow(dead_code))] // no sections, no compares
    CompareFailed,
}

// First, so that its macros are in scope in the architecture's file.
#[cfg(cpulocal_rseq)]
#[macro_use]
mod rseq;
#[cfg(cpulocal_rseq)]
pub(crate) use rseq::section;
#[cfg(all(test, cpulocal_rseq))]
pub(crate) use rseq::{armed, descriptor_addresses};

#[cfg(all(cpulocal_rseq, target_arch = "x86_64"))]
#[path = "x86_64.rs"]
mod imp;

#[cfg(all(cpulocal_rseq, target_arch = "aarch64"))]
#[path = "aarch64.rs"]
mod imp;

#[cfg(all(cpulocal_rseq, target_arch = "riscv64"))]
#[path = "riscv64.rs"]
mod imp;

#[cfg(not(cpulocal_rseq))]
#[path = "generic.rs"]
mod imp;

#[cfg(not(cpulocal_rseq))]
pub(crate) use imp::section;
