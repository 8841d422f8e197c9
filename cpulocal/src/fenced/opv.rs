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
//!
//! The limits are those of the 2017 `cpu_opv` proposal: [`MAX_OPS`]
//! operations, [`MAX_LEN`] bytes per compare or copy, integer operands of 1,
//! 2, 4 or 8 bytes, shift counts below the operand's width.
//!
//! # Safety
//!
//! Both entry points (in `structures/domain.rs` and `structures/percpu.rs`)
//! end in one executor, `execute`, which dereferences the
//! operations' pointers as ordinary (non-atomic) loads and stores. It runs
//! only on a vector that `validate` accepted (no null pointer, lengths and
//! sizes within the limits) and only while the target slot's fence is held,
//! so no operation of the same domain or `PerCpu` on that slot runs
//! concurrently. For a [`Domain`](crate::Domain) the membarrier taken with the fence also
//! aborts the critical sections on the slot; what the pointers may name is
//! the caller's promise ([`Domain::run_ops`](crate::Domain::run_ops)). For a
//! [`PerCpu`](crate::PerCpu) the pointers
//! are built here from offsets checked against `size_of::<T>()` and from the
//! caller's slices, and `T: Pod` makes every byte pattern a valid `T`.
#![allow(unsafe_code)]

use core::ptr;
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

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
        /// The first operand.
        a: *const u8,
        /// The second operand.
        b: *const u8,
        /// Bytes to compare; 0 compares equal.
        len: usize,
    },
    /// Stop with [`OpError::CompareFailed`] if the `len` bytes at `a` and `b`
    /// are equal.
    CompareNe {
        /// The first operand.
        a: *const u8,
        /// The second operand.
        b: *const u8,
        /// Bytes to compare; 0 compares equal, so stops the vector.
        len: usize,
    },
    /// Copy `len` bytes from `src` to `dst` (which must not overlap).
    Memcpy {
        /// Where the bytes go.
        dst: *mut u8,
        /// Where they come from.
        src: *const u8,
        /// How many bytes.
        len: usize,
    },
    /// [`Op::Memcpy`] after a release fence: a reader that acquires what the
    /// copy wrote sees every earlier store.
    MemcpyRelease {
        /// Where the bytes go.
        dst: *mut u8,
        /// Where they come from.
        src: *const u8,
        /// How many bytes.
        len: usize,
    },
    /// `*p += count`.
    Add {
        /// The integer.
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The addend, truncated to `size` bytes (so -1 subtracts one).
        count: i64,
    },
    /// [`Op::Add`] after a release fence.
    AddRelease {
        /// The integer.
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The addend, truncated to `size` bytes.
        count: i64,
    },
    /// `*p |= mask`.
    Or {
        /// The integer.
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The mask, truncated to `size` bytes.
        mask: u64,
    },
    /// `*p &= mask`.
    And {
        /// The integer.
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The mask, truncated to `size` bytes.
        mask: u64,
    },
    /// `*p ^= mask`.
    Xor {
        /// The integer.
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The mask, truncated to `size` bytes.
        mask: u64,
    },
    /// `*p <<= bits`, `bits` below the operand's width in bits.
    LShift {
        /// The integer.
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The shift count, below `8 * size`.
        bits: u32,
    },
    /// `*p >>= bits` (logical), `bits` below the operand's width in bits.
    RShift {
        /// The integer (shifted as unsigned).
        p: *mut u8,
        /// Its size in bytes.
        size: usize,
        /// The shift count, below `8 * size`.
        bits: u32,
    },
    /// A full memory barrier.
    Mb,
}

/// One operation of a safe vector ([`PerCpu::run_ops`](crate::PerCpu::run_ops)):
/// as [`Op`], with `at` a byte offset into the slot's value and the other
/// operand the caller's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOp<'a> {
    /// Stop unless the slot's bytes at `at` equal `expect`.
    CompareEq {
        /// Offset in the slot's value.
        at: usize,
        /// The bytes required there (at most [`MAX_LEN`]).
        expect: &'a [u8],
    },
    /// Stop if the slot's bytes at `at` equal `expect`.
    CompareNe {
        /// Offset in the slot's value.
        at: usize,
        /// The bytes that must not be there (at most [`MAX_LEN`]).
        expect: &'a [u8],
    },
    /// Copy `from` into the slot at `at`.
    Memcpy {
        /// Offset in the slot's value.
        at: usize,
        /// The bytes to copy (at most [`MAX_LEN`]).
        from: &'a [u8],
    },
    /// [`SlotOp::Memcpy`] after a release fence.
    MemcpyRelease {
        /// Offset in the slot's value.
        at: usize,
        /// The bytes to copy (at most [`MAX_LEN`]).
        from: &'a [u8],
    },
    /// Add `count` to the `size`-byte integer at `at`.
    Add {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The addend, truncated to `size` bytes.
        count: i64,
    },
    /// [`SlotOp::Add`] after a release fence.
    AddRelease {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The addend, truncated to `size` bytes.
        count: i64,
    },
    /// Or `mask` into the integer at `at`.
    Or {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The mask, truncated to `size` bytes.
        mask: u64,
    },
    /// And `mask` into the integer at `at`.
    And {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The mask, truncated to `size` bytes.
        mask: u64,
    },
    /// Xor `mask` into the integer at `at`.
    Xor {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The mask, truncated to `size` bytes.
        mask: u64,
    },
    /// Shift the integer at `at` left by `bits`.
    LShift {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The shift count, below `8 * size`.
        bits: u32,
    },
    /// Shift the integer at `at` right (logical) by `bits`.
    RShift {
        /// Offset of the integer in the slot's value.
        at: usize,
        /// Its size in bytes.
        size: usize,
        /// The shift count, below `8 * size`.
        bits: u32,
    },
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

impl Op {
    /// Whether a pointer of the operation is null.
    pub(crate) fn has_null(&self) -> bool {
        match *self {
            Op::CompareEq { a, b, .. } | Op::CompareNe { a, b, .. } => a.is_null() || b.is_null(),
            Op::Memcpy { dst, src, .. } | Op::MemcpyRelease { dst, src, .. } => {
                dst.is_null() || src.is_null()
            }
            Op::Add { p, .. }
            | Op::AddRelease { p, .. }
            | Op::Or { p, .. }
            | Op::And { p, .. }
            | Op::Xor { p, .. }
            | Op::LShift { p, .. }
            | Op::RShift { p, .. } => p.is_null(),
            Op::Mb => false,
        }
    }

    /// Checks the operation's length, operand size and shift count.
    fn check_shape(&self, op: usize) -> Result<(), OpError> {
        match *self {
            Op::CompareEq { len, .. }
            | Op::CompareNe { len, .. }
            | Op::Memcpy { len, .. }
            | Op::MemcpyRelease { len, .. } => {
                if len > MAX_LEN {
                    return Err(OpError::TooLong { op, len });
                }
            }
            Op::Add { size, .. }
            | Op::AddRelease { size, .. }
            | Op::Or { size, .. }
            | Op::And { size, .. }
            | Op::Xor { size, .. } => check_size(op, size)?,
            Op::LShift { size, bits, .. } | Op::RShift { size, bits, .. } => {
                check_size(op, size)?;
                if u64::from(bits) >= 8 * size as u64 {
                    return Err(OpError::ShiftTooWide { op, bits, size });
                }
            }
            Op::Mb => {}
        }
        Ok(())
    }
}

impl SlotOp<'_> {
    /// The raw operation, with `base` the slot value's first byte. The slot
    /// pointer is computed with wrapping arithmetic, so translating a vector
    /// before its offsets are checked is harmless; it is dereferenced only
    /// after [`check_bounds`](Self::check_bounds) accepted it.
    pub(crate) fn translate(&self, base: *mut u8) -> Op {
        let at = |at: usize| base.wrapping_add(at);
        match *self {
            SlotOp::CompareEq { at: a, expect } => Op::CompareEq {
                a: at(a),
                b: expect.as_ptr(),
                len: expect.len(),
            },
            SlotOp::CompareNe { at: a, expect } => Op::CompareNe {
                a: at(a),
                b: expect.as_ptr(),
                len: expect.len(),
            },
            SlotOp::Memcpy { at: a, from } => Op::Memcpy {
                dst: at(a),
                src: from.as_ptr(),
                len: from.len(),
            },
            SlotOp::MemcpyRelease { at: a, from } => Op::MemcpyRelease {
                dst: at(a),
                src: from.as_ptr(),
                len: from.len(),
            },
            SlotOp::Add { at: a, size, count } => Op::Add {
                p: at(a),
                size,
                count,
            },
            SlotOp::AddRelease { at: a, size, count } => Op::AddRelease {
                p: at(a),
                size,
                count,
            },
            SlotOp::Or { at: a, size, mask } => Op::Or {
                p: at(a),
                size,
                mask,
            },
            SlotOp::And { at: a, size, mask } => Op::And {
                p: at(a),
                size,
                mask,
            },
            SlotOp::Xor { at: a, size, mask } => Op::Xor {
                p: at(a),
                size,
                mask,
            },
            SlotOp::LShift { at: a, size, bits } => Op::LShift {
                p: at(a),
                size,
                bits,
            },
            SlotOp::RShift { at: a, size, bits } => Op::RShift {
                p: at(a),
                size,
                bits,
            },
            SlotOp::Mb => Op::Mb,
        }
    }

    /// Checks that the bytes the operation touches in the slot, `at` and the
    /// `len` or `size` after it, lie within a `slot_size`-byte value.
    pub(crate) fn check_bounds(&self, op: usize, slot_size: usize) -> Result<(), OpError> {
        let (at, len) = match *self {
            SlotOp::CompareEq { at, expect } | SlotOp::CompareNe { at, expect } => {
                (at, expect.len())
            }
            SlotOp::Memcpy { at, from } | SlotOp::MemcpyRelease { at, from } => (at, from.len()),
            SlotOp::Add { at, size, .. }
            | SlotOp::AddRelease { at, size, .. }
            | SlotOp::Or { at, size, .. }
            | SlotOp::And { at, size, .. }
            | SlotOp::Xor { at, size, .. }
            | SlotOp::LShift { at, size, .. }
            | SlotOp::RShift { at, size, .. } => (at, size),
            SlotOp::Mb => return Ok(()),
        };
        match at.checked_add(len) {
            Some(end) if end <= slot_size => Ok(()),
            _ => Err(OpError::OutOfBounds {
                op,
                at,
                end: at.saturating_add(len),
                slot_size,
            }),
        }
    }
}

/// Refuses a vector of more than [`MAX_OPS`] operations.
pub(crate) fn check_count(count: usize) -> Result<(), OpError> {
    if count > MAX_OPS {
        return Err(OpError::TooManyOps { count });
    }
    Ok(())
}

/// Refuses an integer operand size other than 1, 2, 4 or 8.
fn check_size(op: usize, size: usize) -> Result<(), OpError> {
    match size {
        1 | 2 | 4 | 8 => Ok(()),
        _ => Err(OpError::BadSize { op, size }),
    }
}

/// Checks every operation of a vector, in order: its shape (length, size,
/// shift count), then where it reaches (`reach`: no null pointer for raw
/// vectors, within the slot for slot vectors). The first refusal wins.
pub(crate) fn validate(
    ops: &[Op],
    mut reach: impl FnMut(usize, &Op) -> Result<(), OpError>,
) -> Result<(), OpError> {
    debug_assert!(ops.len() <= MAX_OPS, "counted before");
    for (i, op) in ops.iter().enumerate() {
        op.check_shape(i)?;
        reach(i, op)?;
    }
    Ok(())
}

/// Runs a vector, in order, stopping at the first failed compare.
///
/// # Safety
///
/// `validate` accepted `ops`; every pointer is valid for its operation's
/// reads and writes, the bytes read are initialised, a copy's `dst` and `src`
/// do not overlap, and nothing else accesses the written bytes meanwhile (the
/// target slot's fence is held).
pub(crate) unsafe fn execute(ops: &[Op]) -> Result<(), OpError> {
    for (i, op) in ops.iter().enumerate() {
        // SAFETY: the caller's contract, for this operation's pointers and
        // its validated length or size.
        let passed = unsafe { step(op) };
        if !passed {
            return Err(OpError::CompareFailed { op: i });
        }
    }
    Ok(())
}

/// Runs one operation; false if it is a compare that failed.
///
/// # Safety
///
/// As `execute`, for `op`.
unsafe fn step(op: &Op) -> bool {
    // SAFETY: the caller's contract: valid pointers for the validated length
    // or size, a copy's ends disjoint, the written bytes ours alone.
    unsafe {
        match *op {
            Op::CompareEq { a, b, len } => return equal(a, b, len),
            Op::CompareNe { a, b, len } => return !equal(a, b, len),
            Op::Memcpy { dst, src, len } => copy(dst, src, len),
            Op::MemcpyRelease { dst, src, len } => {
                fence(Ordering::Release);
                copy(dst, src, len);
            }
            Op::Add { p, size, count } => update(p, size, |v| v.wrapping_add(count as u64)),
            Op::AddRelease { p, size, count } => {
                fence(Ordering::Release);
                update(p, size, |v| v.wrapping_add(count as u64));
            }
            Op::Or { p, size, mask } => update(p, size, |v| v | mask),
            Op::And { p, size, mask } => update(p, size, |v| v & mask),
            Op::Xor { p, size, mask } => update(p, size, |v| v ^ mask),
            Op::LShift { p, size, bits } => update(p, size, |v| v << bits),
            // `v` is zero-extended, so the shift is logical.
            Op::RShift { p, size, bits } => update(p, size, |v| v >> bits),
            Op::Mb => fence(Ordering::SeqCst),
        }
    }
    true
}

/// Whether the `len` bytes at `a` and `b` are equal (0 bytes are).
///
/// # Safety
///
/// `a` and `b` are non-null, valid for reads of `len` initialised bytes that
/// nothing writes meanwhile.
unsafe fn equal(a: *const u8, b: *const u8, len: usize) -> bool {
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts(a, len) == core::slice::from_raw_parts(b, len) }
}

/// Copies `len` bytes from `src` to `dst`: as relaxed atomic 8-byte words
/// when both ends and the length are multiples of 8 (so concurrent atomic
/// readers of those words are well defined), else plainly.
///
/// # Safety
///
/// `src` is valid for reads and `dst` for writes of `len` bytes, they do not
/// overlap, and nothing else writes them meanwhile; plain copies' bytes are
/// read by no one else meanwhile.
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    if (dst as usize | src as usize | len).is_multiple_of(8) {
        for i in (0..len).step_by(8) {
            // SAFETY: in bounds and 8-aligned (checked above); atomics make
            // concurrent readers of these words well defined.
            unsafe {
                let from = AtomicU64::from_ptr(src.add(i).cast::<u64>().cast_mut());
                let to = AtomicU64::from_ptr(dst.add(i).cast::<u64>());
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { ptr::copy_nonoverlapping(src, dst, len) };
    }
}

/// `*p = f(*p)` for the `size`-byte unsigned integer at `p` (native endian):
/// `f` sees it zero-extended, and its result is truncated to `size` bytes,
/// which makes the arithmetic wrap at that width. An operand aligned to its
/// size is loaded and stored with relaxed atomic accesses (concurrent atomic
/// readers are then well defined; the fence excludes other writers), an
/// unaligned one plainly.
///
/// # Safety
///
/// `size` is 1, 2, 4 or 8; `p` is valid for reads and writes of `size`
/// initialised bytes that nothing else writes meanwhile (and, unaligned, that
/// nothing else reads).
unsafe fn update(p: *mut u8, size: usize, f: impl FnOnce(u64) -> u64) {
    macro_rules! atomic {
        ($atomic:ty, $int:ty) => {{
            // SAFETY: aligned (checked by the caller of the macro), valid.
            let a = unsafe { <$atomic>::from_ptr(p.cast::<$int>()) };
            a.store(
                f(a.load(Ordering::Relaxed) as u64) as $int,
                Ordering::Relaxed,
            );
        }};
    }
    if (p as usize).is_multiple_of(size) {
        match size {
            1 => atomic!(AtomicU8, u8),
            2 => atomic!(AtomicU16, u16),
            4 => atomic!(AtomicU32, u32),
            8 => atomic!(AtomicU64, u64),
            _ => unreachable!("operand size {size} passed validation"),
        }
        return;
    }
    // SAFETY: the caller's contract; unaligned accesses need no alignment.
    unsafe {
        match size {
            2 => {
                let p = p.cast::<u16>();
                p.write_unaligned(f(u64::from(p.read_unaligned())) as u16);
            }
            4 => {
                let p = p.cast::<u32>();
                p.write_unaligned(f(u64::from(p.read_unaligned())) as u32);
            }
            8 => {
                let p = p.cast::<u64>();
                p.write_unaligned(f(p.read_unaligned()));
            }
            _ => unreachable!("operand size {size} passed validation"),
        }
    }
}
