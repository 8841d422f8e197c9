//! Operation vectors: the user-space `cpu_opv`.
//!
//! A vector of at most [`MAX_OPS`] operations, run for one slot (a CPU, or a
//! concurrency id) atomically with respect to every critical section working
//! on that slot's data: the slot's fence is taken, the sections are aborted
//! with membarrier, and the operations run in order as ordinary code. A
//! vector is checked whole before it runs: a bad one is refused with an
//! [`OpError`] before any byte is written. A compare that fails stops the
//! vector: the operations before it have run, none after it.
//!
//! Two entry points:
//! - [`Domain::run_ops`](crate::Domain::run_ops): raw pointers ([`Op`]),
//!   `unsafe`, on a [`Domain`](crate::Domain)'s slots;
//! - [`PerCpu::run_ops`](crate::PerCpu::run_ops): byte offsets into a
//!   `PerCpu<T: Pod>` slot ([`SlotOp`]), safe: every offset is checked
//!   against the slot.
#![allow(unsafe_code)]

/// Most operations in one vector (as the 2017 `cpu_opv`).
pub const MAX_OPS: usize = 16;
/// Most bytes one compare or copy covers (as the 2017 `cpu_opv`).
pub const MAX_LEN: usize = 4096;

/// One operation of a raw vector ([`Domain::run_ops`](crate::Domain::run_ops)).
///
/// Integer operands are `size` bytes wide (1, 2, 4 or 8), unaligned allowed,
/// native endian, and wrap; `len` is at most [`MAX_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Stop with [`OpError::CompareFailed`] unless the `len` bytes at `a` and
    /// `b` are equal.
    CompareEq {
        a: *const u8,
        b: *const u8,
        len: usize,
    },
    /// Stop with [`OpError::CompareFailed`] if the `len` bytes at `a` and `b`
    /// are equal.
    CompareNe {
        a: *const u8,
        b: *const u8,
        len: usize,
    },
    /// Copy `len` bytes from `src` to `dst` (which must not overlap).
    Memcpy {
        dst: *mut u8,
        src: *const u8,
        len: usize,
    },
    /// [`Op::Memcpy`] after a release fence: a reader that acquires what the
    /// copy wrote sees every earlier store.
    MemcpyRelease {
        dst: *mut u8,
        src: *const u8,
        len: usize,
    },
    /// `*p += count`.
    Add { p: *mut u8, size: usize, count: i64 },
    /// [`Op::Add`] after a release fence.
    AddRelease { p: *mut u8, size: usize, count: i64 },
    /// `*p |= mask`.
    Or { p: *mut u8, size: usize, mask: u64 },
    /// `*p &= mask`.
    And { p: *mut u8, size: usize, mask: u64 },
    /// `*p ^= mask`.
    Xor { p: *mut u8, size: usize, mask: u64 },
    /// `*p <<= bits`, `bits` below the operand's width in bits.
    LShift { p: *mut u8, size: usize, bits: u32 },
    /// `*p >>= bits` (logical), `bits` below the operand's width in bits.
    RShift { p: *mut u8, size: usize, bits: u32 },
    /// A full memory barrier.
    Mb,
}

/// One operation of a safe vector ([`PerCpu::run_ops`](crate::PerCpu::run_ops)):
/// as [`Op`], with `at` a byte offset into the slot's value and the other
/// operand the caller's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOp<'a> {
    /// Stop unless the slot's bytes at `at` equal `expect`.
    CompareEq { at: usize, expect: &'a [u8] },
    /// Stop if the slot's bytes at `at` equal `expect`.
    CompareNe { at: usize, expect: &'a [u8] },
    /// Copy `from` into the slot at `at`.
    Memcpy { at: usize, from: &'a [u8] },
    /// [`SlotOp::Memcpy`] after a release fence.
    MemcpyRelease { at: usize, from: &'a [u8] },
    /// Add `count` to the `size`-byte integer at `at`.
    Add { at: usize, size: usize, count: i64 },
    /// [`SlotOp::Add`] after a release fence.
    AddRelease { at: usize, size: usize, count: i64 },
    /// Or `mask` into the integer at `at`.
    Or { at: usize, size: usize, mask: u64 },
    /// And `mask` into the integer at `at`.
    And { at: usize, size: usize, mask: u64 },
    /// Xor `mask` into the integer at `at`.
    Xor { at: usize, size: usize, mask: u64 },
    /// Shift the integer at `at` left by `bits`.
    LShift { at: usize, size: usize, bits: u32 },
    /// Shift the integer at `at` right (logical) by `bits`.
    RShift { at: usize, size: usize, bits: u32 },
    /// A full memory barrier.
    Mb,
}

/// Why a vector was refused (nothing written), or where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// More than [`MAX_OPS`] operations. Refused: nothing was written.
    #[error("{count} operations in one vector; at most {MAX_OPS} are allowed")]
    TooManyOps {
        /// The vector's length.
        count: usize,
    },
    /// A compare or copy longer than [`MAX_LEN`] bytes. Refused.
    #[error("operation {op} covers {len} bytes; at most {MAX_LEN} are allowed")]
    TooLong {
        /// Index of the operation.
        op: usize,
        /// Its length.
        len: usize,
    },
    /// An integer operand size other than 1, 2, 4 or 8. Refused.
    #[error("operation {op} has a {size}-byte operand; sizes are 1, 2, 4 or 8")]
    BadSize {
        /// Index of the operation.
        op: usize,
        /// Its operand size.
        size: usize,
    },
    /// A shift count not below the operand's width in bits. Refused.
    #[error("operation {op} shifts a {size}-byte operand by {bits} bits; the count must be below {}", size * 8)]
    ShiftTooWide {
        /// Index of the operation.
        op: usize,
        /// The shift count.
        bits: u32,
        /// The operand size in bytes.
        size: usize,
    },
    /// A null pointer in a raw operation. Refused.
    #[error("operation {op} has a null pointer")]
    NullPointer {
        /// Index of the operation.
        op: usize,
    },
    /// A slot offset and length that do not fit in the slot's value. Refused.
    #[error("operation {op} reaches bytes {at}..{end} of a {slot_size}-byte slot")]
    OutOfBounds {
        /// Index of the operation.
        op: usize,
        /// Its offset.
        at: usize,
        /// One past its last byte (saturating).
        end: usize,
        /// The size of the slot's value.
        slot_size: usize,
    },
    /// The target slot is not below the number of slots. Refused.
    #[error("slot {cpu} is out of range: there are slots 0..{slots}")]
    CpuOutOfRange {
        /// The slot asked for.
        cpu: usize,
        /// How many slots there are.
        slots: usize,
    },
    /// The calling thread holds the target slot already (a [`SlotGuard`](crate::SlotGuard)
    /// of its own, or a signal handler that interrupted it). Refused.
    #[error("slot {cpu} is held by this thread; running a vector on it would deadlock")]
    HeldByThisThread {
        /// The slot.
        cpu: usize,
    },
    /// The compare at index `op` failed: operations `0..op` ran, none after.
    /// Not a refusal: a normal outcome, like
    /// [`CompareFailed`](crate::CompareFailed) for the shapes.
    #[error("compare operation {op} failed; the operations before it ran, none after it")]
    CompareFailed {
        /// Index of the failed compare.
        op: usize,
    },
}
