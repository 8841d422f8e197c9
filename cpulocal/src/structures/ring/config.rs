//! How a [`PerCpuRing`](crate::PerCpuRing) is built and what a full buffer
//! does: [`RingConfig`], [`RingMode`], and [`RingError`], why a record was not
//! reserved.

use std::time::Duration;

use crate::structures::ring::record::{LEN_BITS, TAG_MASK};
use crate::Error;
use crate::Index;

/// What a full buffer does with a new record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RingMode {
    /// Refuse the new record and count it in `lost` (flight recorders that
    /// must not lose old data, or tracers that prefer gaps at the end).
    #[default]
    Discard,
    /// Overwrite the oldest complete sub-buffer, counting its records in
    /// `overwritten` (a flight recorder keeping the latest events).
    Overwrite,
}

/// Why a record was not reserved. (A ring that cannot be built is an
/// [`Error`](crate::Error): see
/// [`PerCpuRing::with_config`](crate::PerCpuRing::with_config).)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// `reserve(0)`: a record has at least one payload byte.
    #[error("a record must have at least one payload byte")]
    Empty,
    /// The payload is longer than a sub-buffer can hold.
    #[error("a record of {len} bytes is too large: the maximum is {max} bytes")]
    TooLarge {
        /// The length asked for.
        len: usize,
        /// [`PerCpuRing::max_record_len`](crate::PerCpuRing::max_record_len).
        max: usize,
    },
    /// Discard mode: the CPU's buffer is full; the record was counted in that
    /// CPU's `lost`.
    #[error("CPU {cpu}'s ring buffer is full; the record was counted as lost")]
    Full {
        /// The buffer's CPU (or concurrency id).
        cpu: usize,
    },
    /// Overwrite mode: the buffer is full and its oldest sub-buffer holds an
    /// uncommitted record, so it cannot be overwritten (or a signal handler
    /// interrupted its own thread while that thread was releasing it); the
    /// record was counted in that CPU's `lost`.
    #[error(
        "CPU {cpu}'s oldest sub-buffer holds an uncommitted record; the record was counted as lost"
    )]
    OldestBusy {
        /// The buffer's CPU (or concurrency id).
        cpu: usize,
    },
}

/// How a [`PerCpuRing`](crate::PerCpuRing) is built: sizes, mode, stuck
/// timeout, slot numbering. Start from [`RingConfig::new`] (the defaults) and
/// change what you need.
///
/// # Examples
///
/// ```
/// use cpulocal::{PerCpuRing, RingConfig, RingMode};
/// use std::time::Duration;
///
/// let ring = PerCpuRing::with_config(
///     RingConfig::new()
///         .sub_buffer_size(1024)
///         .sub_buffers(4)
///         .mode(RingMode::Overwrite)
///         .stuck_after(Duration::from_millis(100)),
/// )
/// .unwrap();
/// assert_eq!(ring.max_record_len(), 1016);
/// assert!(PerCpuRing::with_config(RingConfig::new().sub_buffer_size(1000)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    pub(super) sub_buffer_size: usize,
    pub(super) sub_buffers: usize,
    pub(super) mode: RingMode,
    pub(super) stuck_after: Duration,
    pub(super) index: Index,
}

impl RingConfig {
    /// Default sub-buffer size: 4 KiB.
    pub const DEFAULT_SUB_BUFFER_SIZE: usize = 4096;
    /// Default sub-buffers per CPU: 8.
    pub const DEFAULT_SUB_BUFFERS: usize = 8;
    /// Largest sub-buffer size: the header's length field bounds a record.
    pub const MAX_SUB_BUFFER_SIZE: usize = 1 << LEN_BITS;
    /// Default stuck timeout: 1 s.
    pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(1);

    /// The defaults: 8 sub-buffers of 4 KiB per CPU, [`RingMode::Discard`],
    /// stuck after 1 s, slots by CPU.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = cpulocal::PerCpuRing::with_config(cpulocal::RingConfig::new()).unwrap();
    /// assert_eq!(ring.bytes_per_cpu(), 8 * 4096);
    /// ```
    pub const fn new() -> Self {
        RingConfig {
            sub_buffer_size: Self::DEFAULT_SUB_BUFFER_SIZE,
            sub_buffers: Self::DEFAULT_SUB_BUFFERS,
            mode: RingMode::Discard,
            stuck_after: Self::DEFAULT_STUCK_AFTER,
            index: Index::Cpu,
        }
    }

    /// Bytes per sub-buffer: a power of two from 16 to
    /// [`MAX_SUB_BUFFER_SIZE`](Self::MAX_SUB_BUFFER_SIZE). The largest record
    /// payload is this minus 8.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::RingConfig::new().sub_buffer_size(256);
    /// assert_eq!(cpulocal::PerCpuRing::with_config(c).unwrap().max_record_len(), 248);
    /// ```
    pub const fn sub_buffer_size(mut self, bytes: usize) -> Self {
        self.sub_buffer_size = bytes;
        self
    }

    /// Sub-buffers per CPU: a power of two, at least 2.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = cpulocal::RingConfig::new().sub_buffers(2).sub_buffer_size(64);
    /// assert_eq!(cpulocal::PerCpuRing::with_config(c).unwrap().bytes_per_cpu(), 128);
    /// ```
    pub const fn sub_buffers(mut self, count: usize) -> Self {
        self.sub_buffers = count;
        self
    }

    /// What a full buffer does (see [`RingMode`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{PerCpuRing, RingConfig, RingMode};
    /// let r = PerCpuRing::with_config(RingConfig::new().mode(RingMode::Overwrite)).unwrap();
    /// assert_eq!(r.mode(), RingMode::Overwrite);
    /// ```
    pub const fn mode(mut self, mode: RingMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long the consumer waits on an uncommitted record before reporting
    /// it in [`ReadSummary::stuck`](crate::ReadSummary::stuck).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = cpulocal::RingConfig::new().stuck_after(Duration::from_millis(5));
    /// assert!(cpulocal::PerCpuRing::with_config(c).is_ok());
    /// ```
    pub const fn stuck_after(mut self, timeout: Duration) -> Self {
        self.stuck_after = timeout;
        self
    }

    /// How the buffers are numbered (see [`Index`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use cpulocal::{Index, PerCpuRing, RingConfig};
    /// let r = PerCpuRing::with_config(RingConfig::new().index(Index::MmCid)).unwrap();
    /// assert!(r.index() == Index::MmCid || !cpulocal::status().mm_cid_indexing);
    /// ```
    pub const fn index(mut self, by: Index) -> Self {
        self.index = by;
        self
    }

    /// The bytes per CPU this configuration asks for, if it is valid.
    pub(super) fn check(&self) -> Result<usize, Error> {
        let invalid = |what| Err(Error::InvalidArgument { what });
        let sub = self.sub_buffer_size;
        if !sub.is_power_of_two() || !(16..=Self::MAX_SUB_BUFFER_SIZE).contains(&sub) {
            return invalid(
                "the sub-buffer size must be a power of two from 16 to MAX_SUB_BUFFER_SIZE",
            );
        }
        if !self.sub_buffers.is_power_of_two() || self.sub_buffers < 2 {
            return invalid("the sub-buffer count must be a power of two, at least 2");
        }
        // A lap must change every tag: capacity / 8 below 2^TAG_BITS.
        match sub.checked_mul(self.sub_buffers) {
            Some(cap) if cap >> 3 <= TAG_MASK => Ok(cap),
            _ => invalid("the buffer per CPU is too large for the record tags"),
        }
    }
}

impl Default for RingConfig {
    fn default() -> Self {
        Self::new()
    }
}
