//! Kernel ABI: `struct rseq`, `struct rseq_cs` and the constants of the rseq and
//! membarrier system calls, as in `include/uapi/linux/rseq.h` and
//! `include/uapi/linux/membarrier.h`.
//!
//! Nothing here calls the kernel; [`crate::rseq::sys`] does. Two facts of the
//! platform's ABI that differ per architecture live here too, beside the
//! signature: whether this build has critical sections, and the thread
//! pointer (glibc's rseq area is at an offset from it).
//!
//! # Safety
//!
//! [`thread_pointer`] reads a register with `asm!`; nothing else here is
//! `unsafe`.
#![allow(unsafe_code)]

use core::mem::{align_of, offset_of, size_of};

/// Whether this build has critical sections: `build.rs` emits
/// `cfg(cpulocal_rseq)` for Linux on x86_64, little-endian aarch64 and
/// riscv64 (the one place the choice is made). Without them every operation
/// takes the fenced path.
pub const HAS_SECTIONS: bool = cfg!(cpulocal_rseq);

/// The thread pointer (`fs:0` holds the TCB's own address on x86_64 Linux).
/// Constant for the thread's lifetime, so the asm is declared `pure` and
/// `nomem`: the compiler may read it once per function.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading fs:0 is always valid for a Linux x86_64 thread.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(pure, nomem, nostack, preserves_flags))
    };
    tp
}

/// The thread pointer (`tpidr_el0`). Constant for the thread's lifetime, so
/// the asm is declared `pure` and `nomem`: the compiler may read it once per
/// function.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading tpidr_el0 is always valid for a Linux aarch64 thread.
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(pure, nomem, nostack, preserves_flags))
    };
    tp
}

/// The thread pointer (the `tp` register). Constant for the thread's
/// lifetime, so the asm is declared `pure` and `nomem`: the compiler may
/// read it once per function.
#[cfg(target_arch = "riscv64")]
#[inline(always)]
pub fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading tp is always valid for a Linux riscv64 thread.
    unsafe {
        core::arch::asm!("mv {}, tp", out(reg) tp, options(pure, nomem, nostack, preserves_flags))
    };
    tp
}

/// Unused without sections (the area's address is never computed): null.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
pub fn thread_pointer() -> *mut u8 {
    core::ptr::null_mut()
}

/// The per-thread area the kernel updates (`struct rseq`, 32-byte aligned).
///
/// Only the fields of the original 32-byte ABI are declared; the kernel writes
/// `node_id` and `mm_cid` only where `AT_RSEQ_FEATURE_SIZE` covers them, and
/// uses `slice_ctrl` only in an area registered with more than 32 bytes.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct Rseq {
    /// CPU number, always valid (0 before registration).
    pub cpu_id_start: u32,
    /// CPU number, or [`CPU_ID_UNINITIALIZED`] / [`CPU_ID_REGISTRATION_FAILED`].
    pub cpu_id: u32,
    /// Pointer to the active [`RseqCs`] descriptor, or 0.
    pub rseq_cs: u64,
    /// Written by the kernel only: once deprecated restart flags, now the
    /// features it offers this thread ([`RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE`],
    /// [`RSEQ_CS_FLAG_SLICE_EXT_ENABLED`]).
    pub flags: u32,
    /// NUMA node of `cpu_id` (feature size >= 24).
    pub node_id: u32,
    /// Concurrency id within the process (feature size >= 28). cpulocal's
    /// dummy areas hold an out-of-range value here, so that `mm_cid`-indexed
    /// structures send threads without rseq to the slow path, as `cpu_id` does.
    pub mm_cid: u32,
    /// Time-slice extension control (Linux 7.0+): the byte at
    /// [`SLICE_REQUEST_OFFSET`] is the thread's request, the next one the
    /// kernel's grant. Padding in the original ABI: nothing may write it
    /// unless `flags` has [`RSEQ_CS_FLAG_SLICE_EXT_ENABLED`].
    pub slice_ctrl: u32,
}

impl Rseq {
    /// An area in the "never registered" state, as glibc leaves it before
    /// registration.
    pub const fn unregistered() -> Self {
        Rseq {
            cpu_id_start: 0,
            cpu_id: CPU_ID_UNINITIALIZED,
            rseq_cs: 0,
            flags: 0,
            node_id: 0,
            mm_cid: CPU_ID_UNINITIALIZED,
            slice_ctrl: 0,
        }
    }
}

/// A critical-section descriptor (`struct rseq_cs`, 32-byte aligned).
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RseqCs {
    /// Always 0.
    pub version: u32,
    /// Always 0.
    pub flags: u32,
    /// First instruction of the section.
    pub start_ip: u64,
    /// Length of the section; the commit is the instruction that ends at
    /// `start_ip + post_commit_offset`.
    pub post_commit_offset: u64,
    /// Where the kernel resumes an aborted section; must lie outside the section
    /// and be preceded by the signature.
    pub abort_ip: u64,
}

/// `cpu_id` before the thread registered.
pub const CPU_ID_UNINITIALIZED: u32 = -1i32 as u32;
/// `cpu_id` after a failed registration (glibc sets it).
pub const CPU_ID_REGISTRATION_FAILED: u32 = -2i32 as u32;

/// The abort signature glibc registers on this architecture (and the one
/// cpulocal registers when it owns the area): the kernel aborts a section
/// only to an `abort_ip` whose preceding 4 bytes hold it. On x86 it is the
/// 4-byte operand of a `ud1` instruction placed just before the abort label.
#[cfg(not(any(target_arch = "aarch64", target_arch = "riscv64")))]
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// The abort signature glibc registers on this architecture (and the one
/// cpulocal registers when it owns the area): the kernel aborts a section
/// only to an `abort_ip` whose preceding 4 bytes hold it. On aarch64 it is
/// the instruction `brk #0x45e0`, placed just before the abort label.
#[cfg(target_arch = "aarch64")]
pub const RSEQ_SIG: u32 = 0xd428_bc00;

/// The abort signature glibc registers on this architecture (and the one
/// cpulocal registers when it owns the area): the kernel aborts a section
/// only to an `abort_ip` whose preceding 4 bytes hold it. On riscv64 it is
/// the instruction `csrr mhartid, x0`, which user mode may not execute.
#[cfg(target_arch = "riscv64")]
pub const RSEQ_SIG: u32 = 0xf140_1073;

/// `rseq(2)` flag that unregisters an area.
pub const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// Bit of [`Rseq::flags`]: the kernel offers time-slice extension to this
/// thread (Linux 7.0+ built with `CONFIG_RSEQ_SLICE_EXTENSION`, an area
/// registered with more than 32 bytes).
pub const RSEQ_CS_FLAG_SLICE_EXT_AVAILABLE: u32 = 1 << 4;
/// Bit of [`Rseq::flags`]: time-slice extension is enabled for this thread
/// (by `prctl(PR_RSEQ_SLICE_EXTENSION, SET, ENABLE)`).
pub const RSEQ_CS_FLAG_SLICE_EXT_ENABLED: u32 = 1 << 5;
/// Offset in `struct rseq` of `slice_ctrl.request`, a byte: 1 asks the
/// kernel to defer a preemption; the kernel clears it when it grants one.
pub const SLICE_REQUEST_OFFSET: usize = 28;
/// Offset in `struct rseq` of `slice_ctrl.granted`, a byte the kernel sets
/// to 1 when it deferred a preemption: the thread must then give the CPU
/// back with `rseq_slice_yield`.
pub const SLICE_GRANTED_OFFSET: usize = 29;
/// `prctl` option of time-slice extension, and its two commands.
pub const PR_RSEQ_SLICE_EXTENSION: libc::c_int = 79;
/// `prctl(PR_RSEQ_SLICE_EXTENSION, GET)`: 1 when enabled for the thread.
pub const PR_RSEQ_SLICE_EXTENSION_GET: libc::c_ulong = 1;
/// `prctl(PR_RSEQ_SLICE_EXTENSION, SET, flags)`.
pub const PR_RSEQ_SLICE_EXTENSION_SET: libc::c_ulong = 2;
/// The flag of `SET` that enables it.
pub const PR_RSEQ_SLICE_EXT_ENABLE: libc::c_ulong = 1;
/// `rseq_slice_yield(2)`, the same number on every architecture.
pub const SYS_RSEQ_SLICE_YIELD: libc::c_long = 471;
/// The kernel's `ENOTSUPP` (not a libc errno): the prctl's answer where
/// the kernel is built without time-slice extension.
pub const ENOTSUPP: i32 = 524;

/// Size of the original ABI: the length cpulocal registers where the kernel
/// fills no more than it (see [`OwnArea`]).
pub const RSEQ_ORIG_SIZE: u32 = 32;

/// `getauxval` key: how much of `struct rseq` this kernel fills (Linux 6.3+).
pub const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;
/// `getauxval` key: the alignment this kernel requires of an area registered
/// with a length other than 32 (Linux 6.3+).
pub const AT_RSEQ_ALIGN: libc::c_ulong = 28;

/// The area cpulocal registers for a thread when glibc did not: `struct
/// rseq`'s original fields, then room for the fields newer kernels add.
/// Registered with [`own_area_len`]'s length.
#[repr(C, align(256))]
pub struct OwnArea {
    /// The fields cpulocal reads (and `rseq_cs`, the one it writes).
    pub rseq: Rseq,
    /// Written by the kernel only: fields past the original 32 bytes.
    pub newer: [u8; OWN_AREA_MAX - 32],
}

/// The largest feature size and alignment [`OwnArea`] can hold.
pub const OWN_AREA_MAX: usize = 256;

impl OwnArea {
    /// An area in the "never registered" state.
    pub const fn unregistered() -> Self {
        OwnArea {
            rseq: Rseq::unregistered(),
            newer: [0; OWN_AREA_MAX - 32],
        }
    }
}

/// The length to register an [`OwnArea`] with, given the kernel's
/// `AT_RSEQ_FEATURE_SIZE` and `AT_RSEQ_ALIGN`: the feature size rounded up
/// to the alignment, as the kernel requires of any length but 32 (it must
/// cover the fields the kernel fills, and the area must be aligned to
/// `AT_RSEQ_ALIGN`); 32 where the kernel fills no more than the original
/// fields, where it supplies neither key, or where the sizes exceed
/// [`OWN_AREA_MAX`].
///
/// From Linux 6.19 the length chooses the kernel's mode for the thread: 32
/// bytes keep the original behaviour, a length of at least the feature size
/// gets the mode that writes the ids only when they change (and is needed
/// for time-slice extension). cpulocal relies on neither behaviour.
pub const fn own_area_len(feature_size: Option<u64>, align: Option<u64>) -> u32 {
    let Some(size) = feature_size else {
        return RSEQ_ORIG_SIZE;
    };
    if size <= RSEQ_ORIG_SIZE as u64 {
        return RSEQ_ORIG_SIZE;
    }
    let align = match align {
        Some(a) if a.is_power_of_two() => a,
        _ => RSEQ_ORIG_SIZE as u64,
    };
    let len = size.div_ceil(align) * align;
    if len > OWN_AREA_MAX as u64 || align > OWN_AREA_MAX as u64 {
        return RSEQ_ORIG_SIZE;
    }
    len as u32
}
/// `membarrier(2)` commands and flags.
pub mod membarrier {
    /// Bitmask of supported commands.
    pub const CMD_QUERY: libc::c_int = 0;
    /// Abort every rseq critical section of this process (on one CPU with
    /// [`CMD_FLAG_CPU`]).
    pub const CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
    /// Registration needed before [`CMD_PRIVATE_EXPEDITED_RSEQ`].
    pub const CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
    /// Target the CPU given as the third argument.
    pub const CMD_FLAG_CPU: libc::c_uint = 1;
}

const _: () = {
    assert!(size_of::<Rseq>() == 32 && align_of::<Rseq>() == 32);
    assert!(offset_of!(Rseq, cpu_id_start) == 0);
    assert!(offset_of!(Rseq, cpu_id) == 4);
    assert!(offset_of!(Rseq, rseq_cs) == 8);
    assert!(offset_of!(Rseq, flags) == 16);
    assert!(offset_of!(Rseq, node_id) == 20);
    assert!(offset_of!(Rseq, mm_cid) == 24);
    assert!(offset_of!(Rseq, slice_ctrl) == SLICE_REQUEST_OFFSET);
    assert!(SLICE_GRANTED_OFFSET == SLICE_REQUEST_OFFSET + 1);
    assert!(size_of::<OwnArea>() == OWN_AREA_MAX && align_of::<OwnArea>() == OWN_AREA_MAX);
    assert!(size_of::<RseqCs>() == 32 && align_of::<RseqCs>() == 32);
    assert!(offset_of!(RseqCs, start_ip) == 8);
    assert!(offset_of!(RseqCs, post_commit_offset) == 16);
    assert!(offset_of!(RseqCs, abort_ip) == 24);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_area_len_follows_the_kernel() {
        // Before 6.3 (no keys), and kernels that fill the original fields.
        assert_eq!(own_area_len(None, None), 32);
        assert_eq!(own_area_len(Some(20), Some(32)), 32);
        assert_eq!(own_area_len(Some(28), Some(32)), 32);
        assert_eq!(own_area_len(Some(32), Some(32)), 32);
        // Linux 7.3: feature size 33, alignment 64.
        assert_eq!(own_area_len(Some(33), Some(64)), 64);
        assert_eq!(own_area_len(Some(64), Some(64)), 64);
        assert_eq!(own_area_len(Some(65), Some(64)), 128);
        // No alignment key, or one that is not a power of two: aligned to 32.
        assert_eq!(own_area_len(Some(40), None), 64);
        assert_eq!(own_area_len(Some(40), Some(48)), 64);
        // More than the area holds: the original size.
        assert_eq!(own_area_len(Some(257), Some(64)), 32);
        assert_eq!(own_area_len(Some(40), Some(512)), 32);
        assert_eq!(own_area_len(Some(256), Some(256)), 256);
    }
}
