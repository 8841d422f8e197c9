//! aarch64 critical sections.
//!
//! Every section is emitted by [`rseq_section!`], which writes the parts all
//! sections share, so that each section states only its check and body:
//!
//! ```text
//!        adrp  tmp, 9b                  ; 9: the rseq_cs descriptor in __rseq_cs
//!        add   tmp, tmp, :lo12:9b
//!        str   tmp, [area, #rseq_cs]    ; arm the section
//!     3: ldar  w, [fence]               ; start_ip: the slot's fence word (acquire)
//!        ldr   i, [area, #cpu_id]       ;   equals cpu_id only if we run on the
//!        cmp   i, w                     ;   slot's CPU and the fence is free
//!        b.ne  {abort}
//!        <body>                         ; reads, speculative stores ...
//!        str   x, [v]  (or stlr)        ; the commit: the single store that publishes
//!     4:                                ; post-commit
//!   (in __rseq_failure)
//!        .inst RSEQ_SIG                 ; brk #0x45e0: never executed
//!     5: b     {abort}                  ; abort_ip
//! ```
//!
//! The layout is x86_64's (see that file for why `abort_ip` holds a single
//! branch and why nothing clears `rseq_cs` after it); the differences are the ones the
//! architecture asks for:
//!
//! - **The signature** is the one glibc registers on aarch64, `0xd428bc00`,
//!   which is the instruction `brk #0x45e0`: placed as an instruction just
//!   before `abort_ip`, where nothing branches to it.
//! - **The check's branch goes straight to `{abort}`**, not to `abort_ip`:
//!   `b.ne` reaches ±1 MiB, and `__rseq_failure` is placed after all of a
//!   large program's code; `5:` reaches `{abort}` with a `b` (±128 MiB).
//! - **The commit of [`Order::Release`] is `stlr`**: aarch64 may make plain
//!   stores visible in any order, so the body's stores (a node's link, a
//!   copied item) are ordered before the commit only by a store-release.
//!   [`Order::Relaxed`] commits with `str`.
//! - **The fence word is loaded with `ldar`**, an acquire (see below).
//!
//! # Memory ordering on a weakly ordered CPU
//!
//! The fence protocol (see [`crate::fenced::fence`]) needs three orderings. On x86_64
//! all three come free with TSO; here they are:
//!
//! 1. *A section that starts after the fencer's membarrier sees the fence
//!    held.* The fencer's store of the held word precedes its `membarrier`
//!    system call, which issues a full barrier before it interrupts the slot's
//!    CPU; that interrupt runs a full barrier (`smp_mb`) on the slot's CPU and
//!    sets the thread's abort-on-return. So a section that was running is
//!    aborted, and one that starts later loads the fence after that barrier:
//!    it reads the held word, or the free word the fencer's release stored
//!    after it. Nothing in the section is needed for this.
//! 2. *What the fencer wrote is seen by the next section.* The fencer's
//!    operation is followed by a store-release of the free word. The section
//!    that reads that free word must not have read the slot's data before it:
//!    aarch64 may satisfy a later load before an earlier one, so a plain
//!    `ldr` of the fence could be followed by a data load that ran first and
//!    read the value from before the fenced operation. `ldar` (load-acquire)
//!    orders every later load and store of the section after it, and pairs
//!    with the fencer's release.
//! 3. *What a committed section wrote is seen by the fencer.* A section whose
//!    commit ran before the interrupt had its stores ordered before the
//!    interrupt's full barrier on its CPU; the fencer reads the slot only
//!    after `membarrier` returns, which follows that barrier and issues its
//!    own. A section interrupted before its commit instruction is aborted,
//!    and its earlier stores are to words that only the commit publishes.
//!
//! The loads of the thread's own area (`cpu_id`, `mm_cid`) need no ordering:
//! only the kernel writes them, on this thread's return to user space.
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
            "adrp {inj}, {INJECT}\n",
            "add {inj}, {inj}, :lo12:{INJECT}\n",
            "ldr {inj:w}, [{inj}, #(4 * ",
            $n,
            ")]\n",
            "cbz {inj:w}, 7",
            $n,
            "f\n",
            "6",
            $n,
            ":\n",
            "subs {inj:w}, {inj:w}, #1\n",
            "b.ne 6",
            $n,
            "b\n",
            "7",
            $n,
            ":"
        )
    };
}

/// Emits one critical section: descriptor, arming store, the given check, the
/// given body, the commit (`$store` of `$commit`'s operands, the last
/// instruction of the section), and the signed abort label. Operands `area`,
/// `word` (a scratch register: the arming address, then the check's) and the
/// label `abort` must be supplied by the caller, with whatever the check and
/// body name; numeric labels 3, 4, 5, 9 and 61 to 73 are taken (80 to 82 by
/// the memcpy shape's body).
///
/// `$extra` are the delay loops' operands or none: it is called through
/// `rseq_section!` (in `rseq.rs`), which adds them with the `inject` feature.
macro_rules! rseq_section_with {
    ([$($extra:tt)*] check: [$($check:literal),* $(,)?], body: [$($body:literal),* $(,)?], commit: [$store:literal, $commit:literal], $($operands:tt)*) => {
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
            "adrp {word}, 9b",
            "add {word}, {word}, :lo12:9b",
            "str {word}, [{area}, #{RSEQ_CS}]",
            "3:",
            inject_point!(1),
            $($check,)*
            inject_point!(2),
            $($body,)*
            inject_point!(3),
            concat!($store, " ", $commit),
            "4:",
            ".pushsection __rseq_failure, \"ax\"",
            ".balign 4",
            ".inst {SIG}",
            "5:",
            "b {abort}",
            ".popsection",
            RSEQ_CS = const offset_of!(Rseq, rseq_cs),
            SIG = const RSEQ_SIG,
            $($extra)*
            $($operands)*
        )
    };
}

/// Emits a shape's section, in the index mode the caller's `MM_CID` const
/// says and with the commit store `$order` asks for: `str`, or `stlr` for
/// [`Order::Release`]. The check compares the index field (`cpu_id` or
/// `mm_cid`, at an offset written into the instruction) with the fence word
/// at `[fence]` (CPU or concurrency id and fence in one comparison), and the
/// abort label reports a held fence or an abort. Operands `area` and `fence`
/// name the caller's locals of those names; a body that compares branches to
/// `{fail}` on a mismatch, and the caller supplies that label (which returns
/// [`Outcome::CompareFailed`]). The commit's operands are `"{x}, [{addr}]"`:
/// `stlr` takes no offset.
macro_rules! shape_section {
    ($area:ident, $fence:ident, $order:ident, body: [$($body:literal),* $(,)?], commit: $commit:literal, $($operands:tt)*) => {
        match $order {
            Order::Relaxed => shape_section!(@mode $area, $fence, body: [$($body),*], commit: ["str", $commit], $($operands)*),
            Order::Release => shape_section!(@mode $area, $fence, body: [$($body),*], commit: ["stlr", $commit], $($operands)*),
        }
    };
    (@mode $area:ident, $fence:ident, body: [$($body:literal),*], commit: [$store:literal, $commit:literal], $($operands:tt)*) => {
        if MM_CID {
            // By concurrency id: `mm_cid` is trusted only while `cpu_id` is
            // valid (an area that foreign code unregistered keeps `mm_cid` 0,
            // a valid-looking index, but gets `cpu_id` -1, and the kernel no
            // longer aborts its sections).
            rseq_section!(
                check: [
                    "ldar {word:w}, [{fence}]",
                    "ldr {index:w}, [{area}, #{INDEX}]",
                    "cmp {index:w}, {word:w}",
                    "b.ne {abort}",
                    "ldr {index:w}, [{area}, #{CPU_ID}]",
                    "tbnz {index:w}, #31, {abort}",
                ],
                body: [$($body),*],
                commit: [$store, $commit],
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
                    "ldar {word:w}, [{fence}]",
                    "ldr {index:w}, [{area}, #{INDEX}]",
                    "cmp {index:w}, {word:w}",
                    "b.ne {abort}",
                ],
                body: [$($body),*],
                commit: [$store, $commit],
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
/// else by `cpu_id`; the commit a store-release for [`Order::Release`].
///
/// The commit word's address is computed before the section, from the fence
/// and `vo` (see [`Shape`]): once inlined, `vo` is a constant, and `stlr`
/// takes a base register only.
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
                        "ldr {t}, [{v}]",
                        "cmp {t}, {expect}",
                        "b.ne {fail}",
                    ],
                    commit: "{newv}, [{v}]",
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
                        "ldr {t}, [{v}]",
                        "add {t}, {t}, {count}",
                    ],
                    commit: "{t}, [{v}]",
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
                        "ldr {head}, [{v}]",
                        "cmp {head}, {expectnot}",
                        "b.eq {fail}",
                        "str {head}, [{load}]",
                        "ldr {head}, [{head}, {offset}]",
                    ],
                    commit: "{head}, [{v}]",
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
                        "ldr {t}, [{v}]",
                        "cmp {t}, {expect}",
                        "b.ne {fail}",
                        "str {newv2}, [{v2}]",
                    ],
                    commit: "{newv}, [{v}]",
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
                // the structures) get straight-line copies of two loads and
                // two stores, overlapping where the size is not a power of
                // two: 8 to 16 bytes in two general registers, 17 to 32 in
                // two vector registers.
                17..=32 => shape_section!(area, fence, order,
                    body: [
                        "ldr {t}, [{v}]",
                        "cmp {t}, {expect}",
                        "b.ne {fail}",
                        "ldr {q0:q}, [{src}]",
                        "ldr {q1:q}, [{src}, {tail}]",
                        "str {q0:q}, [{dst}]",
                        "str {q1:q}, [{dst}, {tail}]",
                    ],
                    commit: "{newv}, [{v}]",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    tail = in(reg) len - 16,
                    t = out(reg) _,
                    q0 = out(vreg) _,
                    q1 = out(vreg) _,
                    options(nostack),
                ),
                8..=16 => shape_section!(area, fence, order,
                    body: [
                        "ldr {t}, [{v}]",
                        "cmp {t}, {expect}",
                        "b.ne {fail}",
                        "ldr {t}, [{src}]",
                        "ldr {w1}, [{src}, {tail}]",
                        "str {t}, [{dst}]",
                        "str {w1}, [{dst}, {tail}]",
                    ],
                    commit: "{newv}, [{v}]",
                    v = in(reg) at(vo),
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    tail = in(reg) len - 8,
                    t = out(reg) _,
                    w1 = out(reg) _,
                    options(nostack),
                ),
                _ => {
                    // Any other size: 16 bytes at a time with a pair of
                    // registers, then the remaining bytes one at a time. An
                    // interrupted copy is aborted by the kernel and redone
                    // whole.
                    shape_section!(area, fence, order,
                        body: [
                            "ldr {t}, [{v}]",
                            "cmp {t}, {expect}",
                            "b.ne {fail}",
                            "cmp {len}, #16",
                            "b.lo 81f",
                            "80:",
                            "ldp {t}, {u}, [{src}], #16",
                            "stp {t}, {u}, [{dst}], #16",
                            "sub {len}, {len}, #16",
                            "cmp {len}, #16",
                            "b.hs 80b",
                            "81:",
                            "cbz {len}, 82f",
                            "83:",
                            "ldrb {t:w}, [{src}], #1",
                            "strb {t:w}, [{dst}], #1",
                            "subs {len}, {len}, #1",
                            "b.ne 83b",
                            "82:",
                        ],
                        commit: "{newv}, [{v}]",
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
                        "ldr {t}, [{v}]",
                        "cmp {t}, {expect}",
                        "b.ne {fail}",
                        "ldr {t}, [{v2}]",
                        "cmp {t}, {expect2}",
                        "b.ne {fail}",
                    ],
                    commit: "{newv}, [{v}]",
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
                        "ldr {base}, [{ptr}]",
                        "add {base}, {base}, {offset}",
                        "ldr {t}, [{base}]",
                        "add {t}, {t}, {inc}",
                    ],
                    commit: "{t}, [{base}]",
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

/// The aarch64 facts of a descriptor's section (the shared ones are checked
/// by the caller): its length, the arming store just before it, the branch
/// at `abort_ip`, and the check first and the commit last in its code.
#[cfg(test)]
pub(super) fn check_descriptor(cs: &crate::rseq::abi::RseqCs) {
    let insn = |at: u64| {
        // SAFETY: an instruction of this binary's code, 4-byte aligned,
        // mapped r-x.
        unsafe { (at as *const u32).read() }
    };
    // The longest is the general memcpy's; the injection build adds three
    // delay loops to every section.
    let longest = if cfg!(feature = "inject") { 256 } else { 128 };
    assert!(
        cs.post_commit_offset > 0 && cs.post_commit_offset < longest,
        "{cs:?}"
    );
    assert_eq!(cs.post_commit_offset % 4, 0, "{cs:?}");
    // abort_ip: `b imm26`.
    assert_eq!(
        insn(cs.abort_ip) & 0xfc00_0000,
        0x1400_0000,
        "abort_ip must branch: {cs:?}"
    );
    // Armed just before start_ip: `str x, [area, #8]` (rseq_cs).
    let arm = insn(cs.start_ip - 4);
    assert_eq!(
        arm & 0xffc0_0000,
        0xf900_0000,
        "the arming store precedes the section: {arm:08x}"
    );
    assert_eq!(
        (arm >> 10) & 0xfff,
        1,
        "the arming store writes rseq_cs: {arm:08x}"
    );
    // The check opens the section: `ldar w, [fence]` (the injection build
    // opens with a delay loop instead).
    if !cfg!(feature = "inject") {
        let first = insn(cs.start_ip);
        assert_eq!(
            first & 0xffff_fc00,
            0x88df_fc00,
            "section must open with ldar: {first:08x}"
        );
    }
    // The commit ends it: `str x, [v]` or `stlr x, [v]`.
    let last = insn(cs.start_ip + cs.post_commit_offset - 4);
    assert!(
        last & 0xffc0_0000 == 0xf900_0000 || last & 0xffff_fc00 == 0xc89f_fc00,
        "commit must end the section: {last:08x}"
    );
}
