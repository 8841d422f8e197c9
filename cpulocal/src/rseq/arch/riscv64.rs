//! riscv64 critical sections.
//!
//! Every section is emitted by [`rseq_section!`], which writes the parts all
//! sections share, so that each section states only its check and body:
//!
//! ```text
//!        lla   tmp, 9b                  ; 9: the rseq_cs descriptor in __rseq_cs
//!        sd    tmp, rseq_cs(area)       ; arm the section
//!     3: lw    w, 0(fence)              ; start_ip: the slot's fence word,
//!        fence r, rw                    ;   read with acquire ordering
//!        lw    i, cpu_id(area)          ; equals cpu_id only if we run on the
//!        bne   i, w, 5f                 ;   slot's CPU and the fence is free
//!        <body>                         ; reads, speculative stores ...
//!        (fence rw, w)                  ; Order::Release only
//!        sd    x, 0(v)                  ; the commit: the single store that publishes
//!     4:                                ; post-commit
//!        j     6f
//!        .4byte RSEQ_SIG                ; never executed
//!     5: j     {abort}                  ; abort_ip
//!     6:
//! ```
//!
//! The layout is x86_64's (see that file for why `abort_ip` holds a single
//! jump and why nothing clears `rseq_cs` after a section), with the
//! differences the architecture asks for:
//!
//! - **The signature** is the one glibc registers on riscv, `0xf1401073`
//!   (`csrr mhartid, x0`, which user mode may not execute).
//! - **`abort_ip` follows the section in the function's own code**, behind a
//!   jump, not in a `__rseq_failure` section: a conditional branch reaches
//!   only ±4 KiB and `j` ±1 MiB, while `__rseq_failure` is placed after all
//!   of a large program's code. The fast path pays one taken jump for it.
//! - **No `lw.aq`/`sd.rl` exist in the base ISA**, so the acquire and the
//!   release are fences: `fence r, rw` after the fence word's load orders the
//!   section's later loads and stores after it; `fence rw, w` before an
//!   [`Order::Release`] commit orders the body's stores (a node's link, a
//!   copied item) before it. The release fence sits inside the section, so
//!   the commit is still its last instruction.
//!
//! The memory-ordering argument is aarch64's (see `aarch64.rs`): the kernel's
//! membarrier provides the full barriers on both CPUs, the acquire after the
//! fence word's load pairs with the fencer's store-release of the free word,
//! and a section's earlier stores are published only by its commit.
//!
//! # Safety
//!
//! Each section is an `unsafe fn` whose `# Safety` list says what the pointers
//! must be. The asm touches only the memory named by its operands.
#![allow(unsafe_code)]

use core::arch::asm;
use core::mem::offset_of;

use super::rseq::fenced_or_aborted;
use super::Outcome;
use crate::fenced::fence::Fence;
use crate::rseq::abi::{Rseq, RSEQ_SIG};
use crate::shape::Order;
use crate::shape::Shape;

/// A delay loop of `LOOPS[n]` iterations at injection point `n`.
#[cfg(feature = "inject")]
macro_rules! inject_point {
    ($n:literal) => {
        concat!(
            "lla {inj}, {INJECT}\n",
            "lwu {inj}, (4 * ",
            $n,
            ")({inj})\n",
            "beqz {inj}, 7",
            $n,
            "f\n",
            "6",
            $n,
            ":\n",
            "addi {inj}, {inj}, -1\n",
            "bnez {inj}, 6",
            $n,
            "b\n",
            "7",
            $n,
            ":"
        )
    };
}

/// Emits one critical section: descriptor, arming store, the given check, the
/// given body, the commit (`$commit`, preceded by `$release`: a fence or
/// nothing; the store is the last instruction of the section), and the
/// signed abort label. Operands `area`, `word` (a scratch register: the
/// arming address, then the check's) and the label `abort` must be supplied
/// by the caller, with whatever the check and body name; numeric labels 3 to
/// 6, 9 and 61 to 73 are taken (80 to 83 by the memcpy shape's body).
///
/// `$extra` are the delay loops' operands or none: it is called through
/// `rseq_section!` (in `rseq.rs`), which adds them with the `inject` feature.
macro_rules! rseq_section_with {
    ([$($extra:tt)*] check: [$($check:literal),* $(,)?], body: [$($body:literal),* $(,)?], commit: [$release:literal, $commit:literal], $($operands:tt)*) => {
        asm!(
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3f, (4f - 3f), 5f",
            ".popsection",
            ".pushsection __rseq_cs_ptr_array, \"awR\"", // R: kept by --gc-sections
            ".balign 8",
            ".quad 9b",
            ".popsection",
            "lla {word}, 9b",
            "sd {word}, {RSEQ_CS}({area})",
            "3:",
            inject_point!(1),
            $($check,)*
            inject_point!(2),
            $($body,)*
            inject_point!(3),
            $release,
            $commit,
            "4:",
            "j 6f",
            ".balign 4",
            ".4byte {SIG}",
            "5:",
            "j {abort}",
            "6:",
            RSEQ_CS = const offset_of!(Rseq, rseq_cs),
            SIG = const RSEQ_SIG,
            $($extra)*
            $($operands)*
        )
    };
}

/// Emits a shape's section, in the index mode the caller's `MM_CID` const
/// says and with the ordering `$order` asks for: a plain commit store, or a
/// `fence rw, w` before it for [`Order::Release`]. The check compares the
/// index field (`cpu_id` or `mm_cid`, at an offset written into the
/// instruction) with the fence word at `0(fence)` (CPU or concurrency id and
/// fence in one comparison), and the abort label reports a held fence or an
/// abort. Operands `area` and `fence` name the caller's locals of those
/// names; a body that compares branches to `{fail}` on a mismatch, and the
/// caller supplies that label (it returns [`Outcome::CompareFailed`]).
macro_rules! shape_section {
    ($area:ident, $fence:ident, $order:ident, body: [$($body:literal),* $(,)?], commit: $commit:literal, $($operands:tt)*) => {
        match $order {
            Order::Relaxed => shape_section!(@mode $area, $fence, body: [$($body),*], commit: ["", $commit], $($operands)*),
            Order::Release => shape_section!(@mode $area, $fence, body: [$($body),*], commit: ["fence rw, w", $commit], $($operands)*),
        }
    };
    (@mode $area:ident, $fence:ident, body: [$($body:literal),*], commit: [$release:literal, $commit:literal], $($operands:tt)*) => {
        if MM_CID {
            // By concurrency id: `mm_cid` is trusted only while `cpu_id` is
            // valid (an area that foreign code unregistered keeps `mm_cid` 0,
            // a valid-looking index, but gets `cpu_id` -1, and the kernel no
            // longer aborts its sections).
            rseq_section!(
                check: [
                    "lw {word}, 0({fence})",
                    "fence r, rw",
                    "lw {index}, {INDEX}({area})",
                    "bne {index}, {word}, 5f",
                    "lw {index}, {CPU_ID}({area})",
                    "bltz {index}, 5f",
                ],
                body: [$($body),*],
                commit: [$release, $commit],
                area = in(reg) $area,
                INDEX = const offset_of!(Rseq, mm_cid),
                CPU_ID = const offset_of!(Rseq, cpu_id),
                fence = in(reg) $fence,
                word = out(reg) _,
                index = out(reg) _,
                abort = label {
                    return fenced_or_aborted($fence);
                },
                $($operands)*
            )
        } else {
            rseq_section!(
                check: [
                    "lw {word}, 0({fence})",
                    "fence r, rw",
                    "lw {index}, {INDEX}({area})",
                    "bne {index}, {word}, 5f",
                ],
                body: [$($body),*],
                commit: [$release, $commit],
                area = in(reg) $area,
                INDEX = const offset_of!(Rseq, cpu_id),
                fence = in(reg) $fence,
                word = out(reg) _,
                index = out(reg) _,
                abort = label {
                    return fenced_or_aborted($fence);
                },
                $($operands)*
            )
        }
    };
}

/// [`section`](super::section) in one index mode: by `mm_cid` if `MM_CID`,
/// else by `cpu_id`; the commit ordered by a fence for [`Order::Release`].
///
/// Addresses are computed before the section (riscv has no register-offset
/// addressing): the commit word from the fence and `vo` (see [`Shape`]; once
/// inlined, `vo` is a constant), a copy's tail from its start.
///
/// # Safety
///
/// As [`section`](super::section).
#[inline(always)]
pub(super) unsafe fn section_by<const MM_CID: bool>(
    area: *mut Rseq,
    fence: *const Fence,
    shape: &Shape,
    order: Order,
) -> Outcome {
    let at = |vo: usize| Shape::word_at(fence, vo);
    // SAFETY: the caller guarantees the pointers; each asm block below reads
    // the index fields and the fence word, writes `area.rseq_cs`, and touches
    // only the words its shape names.
    unsafe {
        match *shape {
            Shape::CbneStore { vo, expect, newv } => {
                shape_section!(area, fence, order,
                    body: [
                        "ld {t}, 0({v})",
                        "bne {t}, {expect}, {fail}",
                    ],
                    commit: "sd {newv}, 0({v})",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    t = out(reg) _,
                    fail = label { return Outcome::CompareFailed },
                    options(nostack),
                );
            }
            Shape::AddStore { vo, count } => {
                shape_section!(area, fence, order,
                    body: [
                        "ld {t}, 0({v})",
                        "add {t}, {t}, {count}",
                    ],
                    commit: "sd {t}, 0({v})",
                    v = in(reg) at(vo),
                    count = in(reg) count,
                    t = out(reg) _,
                    options(nostack),
                );
            }
            Shape::CbeqStoreAddLoadStore {
                vo,
                expectnot,
                offset,
                load,
            } => {
                shape_section!(area, fence, order,
                    body: [
                        "ld {head}, 0({v})",
                        "beq {head}, {expectnot}, {fail}",
                        "sd {head}, 0({load})",
                        "add {head}, {head}, {offset}",
                        "ld {head}, 0({head})",
                    ],
                    commit: "sd {head}, 0({v})",
                    v = in(reg) at(vo),
                    expectnot = in(reg) expectnot,
                    offset = in(reg) offset,
                    load = in(reg) load,
                    head = out(reg) _,
                    fail = label { return Outcome::CompareFailed },
                    options(nostack),
                );
            }
            Shape::CbneStoreStore {
                vo,
                expect,
                v2,
                newv2,
                newv,
            } => {
                shape_section!(area, fence, order,
                    body: [
                        "ld {t}, 0({v})",
                        "bne {t}, {expect}, {fail}",
                        "sd {newv2}, 0({v2})",
                    ],
                    commit: "sd {newv}, 0({v})",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    v2 = in(reg) v2,
                    newv2 = in(reg) newv2,
                    newv = in(reg) newv,
                    t = out(reg) _,
                    fail = label { return Outcome::CompareFailed },
                    options(nostack),
                );
            }
            Shape::CbneMemcpyStore {
                vo,
                expect,
                dst,
                src,
                len,
                newv,
            } => match len {
                // Sizes known at compile time (`len` is `size_of::<T>()` in
                // the structures) get straight-line copies, overlapping where
                // the size is not a power of two: 8 to 16 bytes in two
                // registers, 17 to 32 in four.
                17..=32 => shape_section!(area, fence, order,
                    body: [
                        "ld {t}, 0({v})",
                        "bne {t}, {expect}, {fail}",
                        "ld {a}, 0({src})",
                        "ld {b}, 8({src})",
                        "ld {c}, 0({src_tail})",
                        "ld {t}, 8({src_tail})",
                        "sd {a}, 0({dst})",
                        "sd {b}, 8({dst})",
                        "sd {c}, 0({dst_tail})",
                        "sd {t}, 8({dst_tail})",
                    ],
                    commit: "sd {newv}, 0({v})",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    dst_tail = in(reg) dst.wrapping_add(len - 16),
                    src_tail = in(reg) src.wrapping_add(len - 16),
                    t = out(reg) _,
                    a = out(reg) _,
                    b = out(reg) _,
                    c = out(reg) _,
                    options(nostack),
                ),
                8..=16 => shape_section!(area, fence, order,
                    body: [
                        "ld {t}, 0({v})",
                        "bne {t}, {expect}, {fail}",
                        "ld {t}, 0({src})",
                        "ld {a}, 0({src_tail})",
                        "sd {t}, 0({dst})",
                        "sd {a}, 0({dst_tail})",
                    ],
                    commit: "sd {newv}, 0({v})",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    dst_tail = in(reg) dst.wrapping_add(len - 8),
                    src_tail = in(reg) src.wrapping_add(len - 8),
                    t = out(reg) _,
                    a = out(reg) _,
                    options(nostack),
                ),
                _ => {
                    // Any other size: 8 bytes at a time, then the remaining
                    // bytes one at a time. An interrupted copy is aborted by
                    // the kernel and redone whole.
                    shape_section!(area, fence, order,
                        body: [
                            "ld {t}, 0({v})",
                            "bne {t}, {expect}, {fail}",
                            "80:",
                            "addi {t}, {len}, -8",
                            "bltz {t}, 81f",
                            "ld {u}, 0({src})",
                            "sd {u}, 0({dst})",
                            "addi {src}, {src}, 8",
                            "addi {dst}, {dst}, 8",
                            "mv {len}, {t}",
                            "j 80b",
                            "81:",
                            "beqz {len}, 82f",
                            "83:",
                            "lbu {u}, 0({src})",
                            "sb {u}, 0({dst})",
                            "addi {src}, {src}, 1",
                            "addi {dst}, {dst}, 1",
                            "addi {len}, {len}, -1",
                            "bnez {len}, 83b",
                            "82:",
                        ],
                        commit: "sd {newv}, 0({v})",
                        v = in(reg) at(vo),
                        expect = in(reg) expect,
                        newv = in(reg) newv,
                        fail = label { return Outcome::CompareFailed },
                        dst = inout(reg) dst => _,
                        src = inout(reg) src => _,
                        len = inout(reg) len => _,
                        t = out(reg) _,
                        u = out(reg) _,
                        options(nostack),
                    );
                }
            },
            Shape::CbneLoadCbneStore {
                vo,
                expect,
                v2,
                expect2,
                newv,
            } => {
                shape_section!(area, fence, order,
                    body: [
                        "ld {t}, 0({v})",
                        "bne {t}, {expect}, {fail}",
                        "ld {t}, 0({v2})",
                        "bne {t}, {expect2}, {fail}",
                    ],
                    commit: "sd {newv}, 0({v})",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    v2 = in(reg) v2,
                    expect2 = in(reg) expect2,
                    newv = in(reg) newv,
                    t = out(reg) _,
                    fail = label { return Outcome::CompareFailed },
                    options(nostack),
                );
            }
            Shape::AddLoadAddStore { ptr, offset, inc } => {
                shape_section!(area, fence, order,
                    body: [
                        "ld {base}, 0({ptr})",
                        "add {base}, {base}, {offset}",
                        "ld {t}, 0({base})",
                        "add {t}, {t}, {inc}",
                    ],
                    commit: "sd {t}, 0({base})",
                    ptr = in(reg) ptr,
                    offset = in(reg) offset,
                    inc = in(reg) inc,
                    base = out(reg) _,
                    t = out(reg) _,
                    options(nostack),
                );
            }
        }
    }
    Outcome::Committed
}

/// The riscv64 facts of a descriptor's section (the shared ones are checked
/// by the caller): its length, the jump at `abort_ip`, and the check first
/// and the commit last in its code.
#[cfg(test)]
pub(super) fn check_descriptor(cs: &crate::rseq::abi::RseqCs) {
    let insn = |at: u64| {
        // SAFETY: an instruction of this binary's code, mapped r-x (read
        // unaligned: with the C extension code is 2-byte aligned).
        unsafe { (at as *const u32).read_unaligned() }
    };
    // The longest is the general memcpy's; the injection build adds three
    // delay loops to every section.
    let longest = if cfg!(feature = "inject") { 256 } else { 160 };
    assert!(
        cs.post_commit_offset > 0 && cs.post_commit_offset < longest,
        "{cs:?}"
    );
    // abort_ip: `jal x0, imm` (opcode 1101111, rd 0), or its compressed
    // form `c.j` (funct3 101, op 01).
    let jump = insn(cs.abort_ip);
    assert!(
        jump & 0xfff == 0x06f || jump & 0xe003 == 0xa001,
        "abort_ip must jump: {jump:08x}"
    );
    // The check opens the section: `lw w, 0(fence)` (opcode 0000011, funct3
    // 010, offset 0), or its compressed form `c.lw` (the injection build
    // opens with a delay loop instead).
    if !cfg!(feature = "inject") {
        let first = insn(cs.start_ip);
        assert!(
            (first & 0xfff0_707f) == 0x0000_2003 || (first & 0xe003) == 0x4000,
            "section must open with the fence word's load: {first:08x}"
        );
    }
    // The commit ends it: `sd` (opcode 0100011, funct3 011), 4 bytes, or
    // `c.sd` (funct3 111, op 00), 2 bytes.
    let end = cs.start_ip + cs.post_commit_offset;
    let sd = insn(end - 4) & 0x707f == 0x3023;
    let c_sd = (insn(end - 2) & 0xe003) == 0xe000;
    assert!(
        sd || c_sd,
        "commit must end the section: {:08x}",
        insn(end - 4)
    );
}
