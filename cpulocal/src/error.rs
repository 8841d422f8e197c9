//! The crate's error types.

use core::fmt;

/// Why an operation on a per-CPU slot, or a constructor, was refused.
/// Nothing was touched (and nothing allocated).
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
    /// The slot's buffer is full.
    #[error("CPU {cpu}'s buffer is full")]
    Full {
        /// The CPU whose buffer is full.
        cpu: usize,
    },
    /// Another thread holds this slot, and the call does not wait (the
    /// `try_` calls).
    #[error("CPU {cpu}'s slot is held by another thread")]
    WouldBlock {
        /// The CPU whose slot is held.
        cpu: usize,
    },
    /// A constructor could not allocate the memory its arguments ask for
    /// (too large for the address space, or refused by the allocator).
    #[error("cannot allocate {bytes} bytes")]
    Alloc {
        /// How many bytes were asked for (`usize::MAX` if the size itself
        /// overflows).
        bytes: usize,
    },
    /// A constructor's argument is out of its documented range.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What is wrong, in words.
        what: &'static str,
    },
}

/// A push that was refused, with the value it did not store.
///
/// # Examples
///
/// ```
/// use cpulocal::{Error, PerCpuList, PushError};
///
/// let l = PerCpuList::new();
/// let PushError { value, error } = l.push_on(l.cpus(), "kept").unwrap_err();
/// assert_eq!(value, "kept");
/// assert!(matches!(error, Error::CpuOutOfRange { .. }));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PushError<T> {
    /// The value, untouched.
    pub value: T,
    /// Why it was refused: [`Error::Full`] or [`Error::CpuOutOfRange`].
    pub error: Error,
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "push refused: {}", self.error)
    }
}

impl<T> std::error::Error for PushError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
