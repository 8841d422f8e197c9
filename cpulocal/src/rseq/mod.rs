//! The kernel interface: the rseq ABI ([`abi`]), the system calls and the
//! facts of the process and the machine ([`sys`]), time-slice extension
//! ([`slice`]), each thread's registration and the process-wide decision of
//! which engine runs ([`registration`]), and the critical sections of each
//! architecture ([`arch`]).
//!
//! Everything above this module sees the kernel through it.

pub(crate) mod abi;
pub(crate) mod arch;
pub(crate) mod registration;
pub(crate) mod slice;
pub(crate) mod sys;
