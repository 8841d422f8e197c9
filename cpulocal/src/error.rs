//! The crate's error type.

/// Why an operation on a per-CPU slot was refused. Nothing was touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CPU number is not below [`possible_cpus()`](crate::possible_cpus).
    #[error("CPU {cpu} is out of range: this structure has slots for CPUs 0..{slots}")]
    CpuOutOfRange {
        /// The CPU asked for.
        cpu: usize,
        /// How many slots the structure has.
        slots: usize,
    },
    /// The calling thread already holds this slot (a nested lock, or a signal
    /// handler that interrupted its own thread's lock); waiting would deadlock.
    #[error("CPU {cpu}'s slot is already locked by this thread; locking it again would deadlock")]
    HeldByThisThread {
        /// The CPU whose slot is held.
        cpu: usize,
    },
}
