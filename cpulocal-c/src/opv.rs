//! Operation vectors on a domain: `Domain::run_ops`, the user-space
//! `cpu_opv`.

use core::ffi::{c_int, c_uint, c_void};

use cpulocal_rs::opv::{Op, OpError, MAX_OPS};
use libc::size_t;

use crate::domain::{cpulocal_domain, slot_of};
use crate::util::{guard, PANICKED};
use crate::CPULOCAL_COMPARE_FAILED;

/// Most operations in one vector.
pub const CPULOCAL_OPV_MAX_OPS: c_uint = 16;
/// Most bytes one compare or copy covers.
pub const CPULOCAL_OPV_MAX_LEN: c_uint = 4096;

const _: () = assert!(CPULOCAL_OPV_MAX_OPS as usize == MAX_OPS);
const _: () = assert!(CPULOCAL_OPV_MAX_LEN as usize == cpulocal_rs::opv::MAX_LEN);

/// Stop the vector unless the `len` bytes at `a` and `b` are equal (0 bytes
/// are).
pub const CPULOCAL_OP_COMPARE_EQ: c_int = 1;
/// Stop the vector if the `len` bytes at `a` and `b` are equal (0 bytes
/// are, so this stops it).
pub const CPULOCAL_OP_COMPARE_NE: c_int = 2;
/// Copy `len` bytes from `b` to `a` (which must not overlap).
pub const CPULOCAL_OP_MEMCPY: c_int = 3;
/// `CPULOCAL_OP_MEMCPY` after a release fence: a reader that acquires what
/// the copy wrote sees every earlier store.
pub const CPULOCAL_OP_MEMCPY_RELEASE: c_int = 4;
/// Add `value` (two's complement, truncated to `len` bytes, so
/// `(uint64_t)-1` subtracts one) to the `len`-byte integer at `a`.
pub const CPULOCAL_OP_ADD: c_int = 5;
/// `CPULOCAL_OP_ADD` after a release fence.
pub const CPULOCAL_OP_ADD_RELEASE: c_int = 6;
/// Or the mask `value` into the `len`-byte integer at `a`.
pub const CPULOCAL_OP_OR: c_int = 7;
/// And the mask `value` into the `len`-byte integer at `a`.
pub const CPULOCAL_OP_AND: c_int = 8;
/// Xor the mask `value` into the `len`-byte integer at `a`.
pub const CPULOCAL_OP_XOR: c_int = 9;
/// Shift the `len`-byte integer at `a` left by `value` bits (below `8 *
/// len`).
pub const CPULOCAL_OP_LSHIFT: c_int = 10;
/// Shift the `len`-byte integer at `a` right (logical) by `value` bits
/// (below `8 * len`).
pub const CPULOCAL_OP_RSHIFT: c_int = 11;
/// A full memory barrier (the other fields are ignored).
pub const CPULOCAL_OP_MB: c_int = 12;

/// One operation of a vector (`cpulocal_domain_run_ops`), as the 2017
/// `cpu_opv` proposal's `struct cpu_op`. Integer operands are `len` bytes
/// wide (1, 2, 4 or 8), native endian, unaligned allowed, and wrap.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cpulocal_op {
    /// The operation: one of the `CPULOCAL_OP_*` constants.
    pub op: c_int,
    /// Compares and copies: how many bytes (at most `CPULOCAL_OPV_MAX_LEN`).
    /// Integer operations: the operand's size, 1, 2, 4 or 8.
    pub len: size_t,
    /// Compares: the first operand. Copies: the destination. Integer
    /// operations: the integer.
    pub a: *mut c_void,
    /// Compares: the second operand. Copies: the source. Otherwise unused.
    pub b: *const c_void,
    /// Adds: the addend. Or, and, xor: the mask. Shifts: the bit count.
    /// Otherwise unused.
    pub value: u64,
}

/// The Rust operation for a C one, or `None` for an unknown `op`.
fn translate(op: &cpulocal_op) -> Option<Op> {
    let (a, b, len, value) = (op.a.cast::<u8>(), op.b.cast::<u8>(), op.len, op.value);
    let size = len;
    // A count of bits beyond u32 is too wide for any operand: refused as such.
    let bits = u32::try_from(value).unwrap_or(u32::MAX);
    Some(match op.op {
        CPULOCAL_OP_COMPARE_EQ => Op::CompareEq { a, b, len },
        CPULOCAL_OP_COMPARE_NE => Op::CompareNe { a, b, len },
        CPULOCAL_OP_MEMCPY => Op::Memcpy {
            dst: a,
            src: b,
            len,
        },
        CPULOCAL_OP_MEMCPY_RELEASE => Op::MemcpyRelease {
            dst: a,
            src: b,
            len,
        },
        CPULOCAL_OP_ADD => Op::Add {
            p: a,
            size,
            count: value as i64,
        },
        CPULOCAL_OP_ADD_RELEASE => Op::AddRelease {
            p: a,
            size,
            count: value as i64,
        },
        CPULOCAL_OP_OR => Op::Or {
            p: a,
            size,
            mask: value,
        },
        CPULOCAL_OP_AND => Op::And {
            p: a,
            size,
            mask: value,
        },
        CPULOCAL_OP_XOR => Op::Xor {
            p: a,
            size,
            mask: value,
        },
        CPULOCAL_OP_LSHIFT => Op::LShift { p: a, size, bits },
        CPULOCAL_OP_RSHIFT => Op::RShift { p: a, size, bits },
        CPULOCAL_OP_MB => Op::Mb,
        _ => return None,
    })
}

/// Runs the vector `ops[0..count]` on slot `cpu`'s data, atomically with
/// respect to every other operation of the domain on that slot (shapes,
/// critical sections, vectors): the user-space `cpu_opv`. The whole vector is
/// checked first, and a bad one is refused before any byte is written. Then
/// the slot's fence is taken (all signals blocked), the critical sections
/// working on the slot are stopped with `membarrier`, and the operations run
/// in order as ordinary code, from whatever CPU the caller is on. A compare
/// that fails stops the vector: the operations before it have run, none
/// after it. An empty vector only takes and releases the fence.
///
/// Returns: 0 when every operation ran; `CPULOCAL_COMPARE_FAILED` when the
/// compare at `*stopped_at` failed. Refusals, nothing written: `-E2BIG` for
/// more than `CPULOCAL_OPV_MAX_OPS` operations or a compare or copy longer
/// than `CPULOCAL_OPV_MAX_LEN`; `-ERANGE` if `cpu` is out of range;
/// `-EINVAL` if `d` is NULL, `ops` is NULL while `count > 0`, or an
/// operation has an unknown `op`, an operand size other than 1, 2, 4 or 8, a
/// shift count not below its width, or a NULL pointer. For a compare that
/// failed and an operation refused, `*stopped_at` (if `stopped_at` is not
/// NULL) is that operation's index; otherwise it is left alone.
///
/// Async-signal-safe: yes.
///
/// # Safety
///
/// `d` is NULL or a live domain; `ops` is valid for reading `count`
/// operations (if `count <= CPULOCAL_OPV_MAX_OPS`); `stopped_at` is NULL or
/// valid for writing. For each operation of a vector that passes the checks:
/// every pointer is valid for its reads (and writes) of `len` bytes, the
/// bytes read are initialised, a copy's ends do not overlap, and the bytes
/// the vector writes are slot `cpu`'s data in the sense of `cpulocal_domain`.
/// Integer operands aligned to their size, and copies whose ends and length
/// are multiples of 8, are accessed atomically (other threads may read them
/// meanwhile with atomic loads of the same size); other bytes the vector
/// writes may not be read by others while it may run.
#[no_mangle]
pub unsafe extern "C" fn cpulocal_domain_run_ops(
    d: *const cpulocal_domain,
    cpu: c_uint,
    ops: *const cpulocal_op,
    count: size_t,
    stopped_at: *mut size_t,
) -> c_int {
    guard(PANICKED, || {
        let report = |i: usize| {
            if !stopped_at.is_null() {
                // SAFETY: valid for writing when not NULL (the caller).
                unsafe { stopped_at.write(i) };
            }
        };
        // SAFETY: the caller's contract.
        let d = match unsafe { slot_of(d, cpu) } {
            Ok(d) => d,
            Err(e) => return e,
        };
        if count > MAX_OPS {
            return -libc::E2BIG;
        }
        if ops.is_null() && count > 0 {
            return -libc::EINVAL;
        }
        let mut raw = [Op::Mb; MAX_OPS];
        for (i, r) in raw.iter_mut().enumerate().take(count) {
            // SAFETY: `i < count <= MAX_OPS`, and `ops` holds `count`
            // operations (the caller).
            let op = unsafe { &*ops.add(i) };
            match translate(op) {
                Some(t) => *r = t,
                None => {
                    report(i);
                    return -libc::EINVAL;
                }
            }
        }
        // SAFETY: `cpu` is a slot (checked); the vector's pointers as the
        // caller promises; `run_ops` checks lengths, sizes, shifts and NULLs.
        match unsafe { d.run_ops(cpu as usize, &raw[..count]) } {
            Ok(()) => 0,
            Err(e) => match e {
                OpError::CompareFailed { op } => {
                    report(op);
                    CPULOCAL_COMPARE_FAILED
                }
                OpError::TooManyOps { .. } => -libc::E2BIG,
                OpError::TooLong { op, .. } => {
                    report(op);
                    -libc::E2BIG
                }
                OpError::BadSize { op, .. }
                | OpError::ShiftTooWide { op, .. }
                | OpError::NullPointer { op }
                | OpError::OutOfBounds { op, .. } => {
                    report(op);
                    -libc::EINVAL
                }
                OpError::CpuOutOfRange { .. } => -libc::ERANGE,
                OpError::HeldByThisThread { .. } => -libc::EDEADLK,
                _ => -libc::EINVAL,
            },
        }
    })
}
