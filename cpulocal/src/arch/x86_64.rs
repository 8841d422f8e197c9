//! x86_64 critical sections.
//!
//! Every section is emitted by [`rseq_section!`], which writes the parts all
//! sections share, so that each section states only its own body:
//!
//! ```text
//!        lea   tmp, [rip + 9b]          ; 9: the rseq_cs descriptor in __rseq_cs
//!        mov   [area + rseq_cs], tmp    ; arm the section
//!     3: cmp   [area + cpu_id], cpu     ; start_ip: still on the slot's CPU?
//!        jne   5f                       ;   no: abort path
//!        cmp   dword [slot + fence], 0  ; fence check, before any data read
//!        jne   {fenced}                 ;   set: leave for the fenced path
//!        <body>                         ; reads, speculative stores ...
//!        <commit>                       ; the single store that publishes
//!     4:                                ; post-commit: start_ip + post_commit_offset
//!   (in __rseq_failure)
//!        ud1   edi, [rip + RSEQ_SIG]    ; 0f b9 3d + signature: never executed
//!     5: jmp   {abort}                  ; abort_ip
//! ```
//!
//! A restart redoes everything from `3:`: the caller re-reads the CPU number and
//! enters again. The descriptor address is also recorded in the
//! `__rseq_cs_ptr_array` section, as librseq does, for debuggers and tools.
//!
//! Sections take the area as an argument, so unit tests drive them on a fake
//! `struct rseq` and decode the descriptor they armed.
//!
//! # Safety
//!
//! Each section is an `unsafe fn` whose `# Safety` list says what the pointers
//! must be. The asm touches only the memory named by its operands.
#![allow(unsafe_code)]

use core::arch::asm;
use core::mem::offset_of;

use super::Outcome;
use crate::abi::{Rseq, RSEQ_SIG};
use crate::percpu::{CounterSlot, COUNTER_VALUE_OFFSET, FENCE_OFFSET};

/// This target has critical sections.
pub(crate) const HAS_RSEQ: bool = true;

/// Emits one critical section: descriptor, arming store, CPU check, the
/// given fence check (the `FENCE_CHECK` lines; empty only in the `testing`
/// build that breaks the protocol on purpose), the given body (whose last
/// instruction must be the commit), and the signed abort label. Operands
/// `area`, `cpu` and the label `abort` must be supplied by the caller, with
/// whatever the check and body name; numeric labels 3, 4, 5 and 9 are taken.
macro_rules! rseq_section {
    (check: [$($check:literal),*], body: [$($body:literal),+ $(,)?], $($operands:tt)*) => {
        asm!(
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3f, (4f - 3f), 5f",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"aw\"",
            ".quad 9b",
            ".popsection",
            "lea {rseq_cs_tmp}, [rip + 9b]",
            "mov qword ptr [{area} + {RSEQ_CS}], {rseq_cs_tmp}",
            "3:",
            "cmp dword ptr [{area} + {CPU_ID}], {cpu:e}",
            "jne 5f",
            $($check,)*
            $($body,)+
            "4:",
            ".pushsection __rseq_failure, \"ax\"",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {SIG}",
            "5:",
            "jmp {abort}",
            ".popsection",
            RSEQ_CS = const offset_of!(Rseq, rseq_cs),
            CPU_ID = const offset_of!(Rseq, cpu_id),
            SIG = const RSEQ_SIG,
            rseq_cs_tmp = out(reg) _,
            $($operands)*
        )
    };
}

/// `slot.value += n` on `cpu`'s counter slot; the add itself is the commit.
///
/// # Safety
///
/// - `area` points to a writable `struct rseq`: the calling thread's registered
///   area, or a fake one in tests;
/// - `slot` points to a live counter slot whose value no one else writes except
///   through sections on `cpu` or under the slot's fence.
#[inline(always)]
pub(crate) unsafe fn add(area: *mut Rseq, cpu: u32, slot: *const CounterSlot, n: i64) -> Outcome {
    // SAFETY: the caller guarantees both pointers; the asm reads `area.cpu_id`
    // and the slot's fence, writes `area.rseq_cs`, and read-modify-writes the
    // slot's value.
    unsafe {
        rseq_section!(
            check: ["cmp dword ptr [{slot} + {FENCE}], 0", "jne {fenced}"],
            body: ["add qword ptr [{slot} + {VALUE}], {n}"],
            area = in(reg) area,
            cpu = in(reg) cpu,
            slot = in(reg) slot,
            n = in(reg) n,
            FENCE = const FENCE_OFFSET,
            VALUE = const COUNTER_VALUE_OFFSET,
            fenced = label { return Outcome::Fenced },
            abort = label { return Outcome::Aborted },
            options(nostack),
        );
    }
    Outcome::Committed
}

/// [`add`] without the fence check: the protocol broken on purpose, for the
/// tests that show the stress tests detect it.
///
/// # Safety
///
/// As [`add`].
#[cfg(feature = "testing")]
#[inline(always)]
pub(crate) unsafe fn add_without_fence_check(
    area: *mut Rseq,
    cpu: u32,
    slot: *const CounterSlot,
    n: i64,
) -> Outcome {
    // SAFETY: as in `add`, minus the fence read.
    unsafe {
        rseq_section!(
            check: [],
            body: ["add qword ptr [{slot} + {VALUE}], {n}"],
            area = in(reg) area,
            cpu = in(reg) cpu,
            slot = in(reg) slot,
            n = in(reg) n,
            VALUE = const COUNTER_VALUE_OFFSET,
            abort = label { return Outcome::Aborted },
            options(nostack),
        );
    }
    Outcome::Committed
}

/// The thread pointer (`fs:0` holds the TCB's own address on x86_64 Linux).
#[inline(always)]
pub(crate) fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading fs:0 is always valid for a Linux x86_64 thread.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::RseqCs;
    use crate::percpu::test_slot;

    fn fake_area(cpu: u32) -> Box<Rseq> {
        let mut area = Box::new(Rseq::unregistered());
        area.cpu_id_start = cpu;
        area.cpu_id = cpu;
        area
    }

    #[test]
    fn commit_branch() {
        let mut area = fake_area(3);
        let slot = test_slot(0, 10);
        // SAFETY: all pointers are to live locals.
        let out = unsafe { add(&mut *area, 3, &slot, -4) };
        assert_eq!(out, Outcome::Committed);
        assert_eq!(slot.value(), 6);
    }

    #[test]
    fn abort_branch_on_cpu_mismatch() {
        let mut area = fake_area(2);
        let slot = test_slot(0, 10);
        // SAFETY: all pointers are to live locals.
        let out = unsafe { add(&mut *area, 3, &slot, 5) };
        assert_eq!(out, Outcome::Aborted);
        assert_eq!(slot.value(), 10, "an aborted section must not write");
        assert_ne!(area.rseq_cs, 0, "the section was armed before the check");
    }

    #[test]
    fn fenced_branch() {
        let mut area = fake_area(1);
        let slot = test_slot(1234, 10);
        // SAFETY: all pointers are to live locals.
        let out = unsafe { add(&mut *area, 1, &slot, 5) };
        assert_eq!(out, Outcome::Fenced);
        assert_eq!(slot.value(), 10, "a fenced section must not write");
    }

    #[test]
    fn descriptor_decodes() {
        let mut area = fake_area(0);
        let slot = test_slot(0, 0);
        // SAFETY: all pointers are to live locals.
        unsafe { add(&mut *area, 0, &slot, 1) };
        let cs_addr = area.rseq_cs;
        assert_eq!(cs_addr % 32, 0, "rseq_cs must be 32-byte aligned");
        // SAFETY: the section stored the address of its static descriptor.
        let cs: RseqCs = unsafe { *(cs_addr as *const RseqCs) };
        assert_eq!((cs.version, cs.flags), (0, 0));
        let (start, end) = (cs.start_ip, cs.start_ip + cs.post_commit_offset);
        assert!(
            cs.post_commit_offset > 0 && cs.post_commit_offset < 64,
            "{cs:?}"
        );
        assert!(
            cs.abort_ip < start || cs.abort_ip >= end,
            "abort inside the section"
        );
        // SAFETY: code bytes of this binary around the section, mapped r-x.
        let before_abort =
            unsafe { core::slice::from_raw_parts((cs.abort_ip - 7) as *const u8, 7) };
        let mut want = vec![0x0f, 0xb9, 0x3d];
        want.extend_from_slice(&RSEQ_SIG.to_le_bytes());
        assert_eq!(
            before_abort,
            &want[..],
            "ud1 + signature must precede abort_ip"
        );
        // SAFETY: the section's own code bytes.
        let code = unsafe {
            core::slice::from_raw_parts(start as *const u8, cs.post_commit_offset as usize)
        };
        // The section opens with `cmp dword ptr [area + 4], cpu` (opcode 0x39,
        // optionally after a REX prefix, with disp8 = offset of cpu_id).
        let op = if code[0] & 0xf0 == 0x40 { 1 } else { 0 };
        assert_eq!(
            code[op], 0x39,
            "section must start with the CPU check: {code:02x?}"
        );
        // ... and ends with the commit `add qword ptr [slot + 8], n`: REX.W 01
        // /r disp8 (a base of r12 adds an SIB byte).
        let tail = &code[code.len().saturating_sub(5)..];
        assert!(
            tail.windows(2).any(|w| w[0] & 0xf8 == 0x48 && w[1] == 0x01),
            "commit must end the section: {code:02x?}"
        );
    }
}
