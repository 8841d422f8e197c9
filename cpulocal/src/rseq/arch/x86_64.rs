//! x86_64 critical sections.
//!
//! Every section is emitted by [`rseq_section!`], which writes the parts all
//! sections share, so that each section states only its check and body:
//!
//! ```text
//!        lea   tmp, [rip + 9b]          ; 9: the rseq_cs descriptor in __rseq_cs
//!        mov   [area + rseq_cs], tmp    ; arm the section
//!     3: mov   w, [slot + fence]        ; start_ip: the slot's fence word, which
//!        cmp   [area + cpu_id], w       ;   equals cpu_id only if we run on the
//!        jne   5f                       ;   slot's CPU and the fence is free
//!        <body>                         ; reads, speculative stores ...
//!        <commit>                       ; the single store that publishes
//!     4:                                ; post-commit
//!   (in __rseq_failure)
//!        ud1   edi, [rip + RSEQ_SIG]    ; 0f b9 3d + signature: never executed
//!     5: jmp   {abort}                  ; abort_ip
//! ```
//!
//! `abort_ip` holds a single jump, so a debugger single-stepping an aborted
//! section stops next in the function's own code, where `next` and `step`
//! work, not in the symbol-less `__rseq_failure` section.
//!
//! Nothing clears `rseq_cs` once a section is left: the kernel does, the
//! next time it finds the thread outside the descriptor's range (at a
//! preemption or signal), as it does for librseq's sections. Until then it
//! reads the descriptor and the signature before its `abort_ip` at every
//! preemption, so the code that holds them must stay mapped for as long as
//! the process lives: [`crate::rseq::sys::pin_own_object`] keeps a shared library
//! that holds cpulocal loaded, and where it cannot, no section runs. Clearing
//! `rseq_cs` after every commit instead would cost a store per operation
//! (about 10 % of a list pop + push here).
//!
//! The check is the protocol's CPU check and fence check in one comparison
//! (a free fence word holds its slot's CPU number: see [`crate::fenced::fence`]); it
//! comes after the arming store and before any data is read. The Rust code at
//! `{abort}` tells a held fence (take the fenced path) from an abort or a
//! migration (retry) by reading the fence word. A restart redoes everything
//! from `3:`: the caller re-reads the CPU number and enters again. The
//! descriptor address is also recorded in the `__rseq_cs_ptr_array` section,
//! as librseq does, for debuggers and tools.
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
            "mov {inj:e}, dword ptr [rip + {INJECT} + 4 * ",
            $n,
            "]\n",
            "test {inj:e}, {inj:e}\n",
            "jz 7",
            $n,
            "f\n",
            "6",
            $n,
            ":\n",
            "dec {inj:e}\n",
            "jnz 6",
            $n,
            "b\n",
            "7",
            $n,
            ":"
        )
    };
}

/// Emits one critical section: descriptor, arming store, the given check
/// (CPU and fence in one comparison, see [`shape_section!`]), the given body, the
/// commit (one instruction, the last of the section), and the signed abort
/// label. Operands `area`, `word` (a scratch register: the arming load, then
/// the check's) and the label `abort` must be supplied by the
/// caller, with whatever the check and body name; numeric labels 3, 4, 5, 9
/// and 61 to 73 are taken (80 to 85 by the memcpy shape's body).
///
/// `$extra` are the delay loops' operands or none: it is called through
/// `rseq_section!` (in `rseq.rs`), which adds them with the `inject` feature.
macro_rules! rseq_section_with {
    ([$($extra:tt)*] check: [$($check:literal),* $(,)?], body: [$($body:literal),* $(,)?], commit: $commit:literal, $($operands:tt)*) => {
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
            "lea {word}, [rip + 9b]",
            "mov qword ptr [{area} + {RSEQ_CS}], {word}",
            "3:",
            inject_point!(1),
            $($check,)*
            inject_point!(2),
            $($body,)*
            inject_point!(3),
            $commit,
            "4:",
            ".pushsection __rseq_failure, \"ax\"",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long {SIG}",
            "5:",
            "jmp {abort}",
            ".popsection",
            RSEQ_CS = const offset_of!(Rseq, rseq_cs),
            SIG = const RSEQ_SIG,
            $($extra)*
            $($operands)*
        )
    };
}

/// Emits a shape's section, in the index mode the caller's `MM_CID` const
/// says: the check compares the index field (`cpu_id` or `mm_cid`, at an
/// offset written into the instruction) with the fence word at `[fence]`
/// (CPU or concurrency id and fence in one comparison), and the abort label
/// reports a held
/// fence or an abort. Operands `area`, `index` and `fence` name the caller's
/// locals of those names; a body that compares jumps to `{fail}` on a
/// mismatch, and the caller supplies that label (it returns [`Outcome::CompareFailed`]).
macro_rules! shape_section {
    ($area:ident, $fence:ident, body: [$($body:literal),* $(,)?], commit: $commit:literal, $($operands:tt)*) => {
        if MM_CID {
            // By concurrency id: `mm_cid` is trusted only while `cpu_id` is
            // valid (an area that foreign code unregistered keeps `mm_cid` 0,
            // a valid-looking index, but gets `cpu_id` -1, and the kernel no
            // longer aborts its sections).
            rseq_section!(
                check: [
                    "mov {word:e}, dword ptr [{fence}]",
                    "cmp dword ptr [{area} + {INDEX}], {word:e}",
                    "jne 5f",
                    "cmp dword ptr [{area} + {CPU_ID}], 0",
                    "jl 5f",
                ],
                body: [$($body),*],
                commit: $commit,
                area = in(reg) $area,
                INDEX = const offset_of!(Rseq, mm_cid),
                CPU_ID = const offset_of!(Rseq, cpu_id),
                fence = in(reg) $fence,
                word = out(reg) _,
                abort = label {
                    return fenced_or_aborted($fence);
                },
                $($operands)*
            )
        } else {
            rseq_section!(
                check: [
                    "mov {word:e}, dword ptr [{fence}]",
                    "cmp dword ptr [{area} + {INDEX}], {word:e}",
                    "jne 5f",
                ],
                body: [$($body),*],
                commit: $commit,
                area = in(reg) $area,
                INDEX = const offset_of!(Rseq, cpu_id),
                fence = in(reg) $fence,
                word = out(reg) _,
                abort = label {
                    return fenced_or_aborted($fence);
                },
                $($operands)*
            )
        }
    };
}

/// [`section`] in one index mode: by `mm_cid` if `MM_CID`, else by `cpu_id`.
/// x86_64 stores are release stores, so both [`Order`]s are the same code.
///
/// The commit word is addressed from the fence (`[fence + vo]`, see
/// [`Shape`]): once inlined, `vo` is a constant that stays in a register,
/// and each operation computes one address, not two.
///
/// # Safety
///
/// As [`section`].
#[inline(always)]
pub(super) unsafe fn section_by<const MM_CID: bool>(
    area: *mut Rseq,
    fence: *const Fence,
    shape: &Shape,
    _: Order,
) -> Outcome {
    // SAFETY: the caller guarantees the pointers; each asm block below reads
    // the index field and the fence word, writes `area.rseq_cs`, and touches
    // only the words its shape names.
    unsafe {
        match *shape {
            Shape::CbneStore { vo, expect, newv } => {
                shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    options(nostack),
                );
            }
            Shape::AddStore { vo, count } => {
                shape_section!(area, fence,
                    body: [],
                    commit: "add qword ptr [{fence} + {vo}], {count}",
                    vo = in(reg) vo,
                    count = in(reg) count,
                    options(nostack),
                );
            }
            Shape::CbeqStoreAddLoadStore {
                vo,
                expectnot,
                offset,
                load,
            } => {
                shape_section!(area, fence,
                    body: [
                        "mov {word}, qword ptr [{fence} + {vo}]",
                        "cmp {word}, {expectnot}",
                        "je {fail}",
                        "mov qword ptr [{load}], {word}",
                        "mov {word}, qword ptr [{word} + {offset}]",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {word}",
                    vo = in(reg) vo,
                    expectnot = in(reg) expectnot,
                    offset = in(reg) offset,
                    load = in(reg) load,
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
                shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                        "mov qword ptr [{v2}], {newv2}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    v2 = in(reg) v2,
                    newv2 = in(reg) newv2,
                    newv = in(reg) newv,
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
                // two: 8 to 16 bytes in two general registers, so that a
                // caller's 8-byte loads of the copied value are forwarded
                // from these stores (measured here: 16-byte vector moves on
                // both sides of a pop + push made the pair 25 % slower),
                // 17 to 32 in two vector registers.
                17..=32 => shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                        "movups {x0}, xmmword ptr [{src}]",
                        "movups {x1}, xmmword ptr [{src} + {tail}]",
                        "movups xmmword ptr [{dst}], {x0}",
                        "movups xmmword ptr [{dst} + {tail}], {x1}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    tail = in(reg) len - 16,
                    x0 = out(xmm_reg) _,
                    x1 = out(xmm_reg) _,
                    options(nostack),
                ),
                // The usual sizes, their offsets written into the
                // instructions: a register fewer, where the caller's loop has
                // none to spare.
                16 => shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                        "mov {word}, qword ptr [{src}]",
                        "mov {w1}, qword ptr [{src} + 8]",
                        "mov qword ptr [{dst}], {word}",
                        "mov qword ptr [{dst} + 8], {w1}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    w1 = out(reg) _,
                    options(nostack),
                ),
                8 => shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                        "mov {word}, qword ptr [{src}]",
                        "mov qword ptr [{dst}], {word}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    options(nostack),
                ),
                9..=15 => shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                        "mov {word}, qword ptr [{src}]",
                        "mov {w1}, qword ptr [{src} + {tail}]",
                        "mov qword ptr [{dst}], {word}",
                        "mov qword ptr [{dst} + {tail}], {w1}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    dst = in(reg) dst,
                    src = in(reg) src,
                    tail = in(reg) len - 8,
                    w1 = out(reg) _,
                    options(nostack),
                ),
                _ => {
                    // 64 bytes and more: `rep movsb`. Below: 16-byte moves, then
                    // one 8-byte word, then the remaining bytes, through `xmm`
                    // and `word` (free once the check is done), because `rep
                    // movsb`'s start-up cost dominates small copies (a
                    // PerCpuMemcpyBuffer<u64> push+pop pair: 24 ns with it, 13 ns
                    // without). 16 bytes at a time, so that a caller reading a
                    // 16-byte value back with one load finds it in one store
                    // (two 8-byte stores would stall that load's store
                    // forwarding). An interrupted copy is aborted by the kernel
                    // and redone whole.
                    shape_section!(area, fence,
                        body: [
                            "cmp qword ptr [{fence} + {vo}], {expect}",
                            "jne {fail}",
                            "cmp rcx, 64",
                            "jb 80f",
                            "rep movsb byte ptr [rdi], byte ptr [rsi]",
                            "jmp 84f",
                            "80:",
                            "cmp rcx, 16",
                            "jb 81f",
                            "85:",
                            "movups {xmm}, xmmword ptr [rsi]",
                            "movups xmmword ptr [rdi], {xmm}",
                            "add rsi, 16",
                            "add rdi, 16",
                            "sub rcx, 16",
                            "cmp rcx, 16",
                            "jae 85b",
                            "81:",
                            "cmp rcx, 8",
                            "jb 82f",
                            "mov {word}, qword ptr [rsi]",
                            "mov qword ptr [rdi], {word}",
                            "add rsi, 8",
                            "add rdi, 8",
                            "sub rcx, 8",
                            "82:",
                            "test rcx, rcx",
                            "jz 84f",
                            "83:",
                            "mov {word:l}, byte ptr [rsi]",
                            "mov byte ptr [rdi], {word:l}",
                            "inc rsi",
                            "inc rdi",
                            "dec rcx",
                            "jnz 83b",
                            "84:",
                        ],
                        commit: "mov qword ptr [{fence} + {vo}], {newv}",
                        vo = in(reg) vo,
                        expect = in(reg) expect,
                        newv = in(reg) newv,
                        fail = label { return Outcome::CompareFailed },
                        inout("rdi") dst => _,
                        inout("rsi") src => _,
                        inout("rcx") len => _,
                        xmm = out(xmm_reg) _,
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
                shape_section!(area, fence,
                    body: [
                        "cmp qword ptr [{fence} + {vo}], {expect}",
                        "jne {fail}",
                        "cmp qword ptr [{v2}], {expect2}",
                        "jne {fail}",
                    ],
                    commit: "mov qword ptr [{fence} + {vo}], {newv}",
                    vo = in(reg) vo,
                    expect = in(reg) expect,
                    v2 = in(reg) v2,
                    expect2 = in(reg) expect2,
                    newv = in(reg) newv,
                    fail = label { return Outcome::CompareFailed },
                    options(nostack),
                );
            }
            Shape::AddLoadAddStore { ptr, offset, inc } => {
                shape_section!(area, fence,
                    body: [
                        "mov {word}, qword ptr [{ptr}]",
                    ],
                    commit: "add qword ptr [{word} + {offset}], {inc}",
                    ptr = in(reg) ptr,
                    offset = in(reg) offset,
                    inc = in(reg) inc,
                    options(nostack),
                );
            }
        }
    }
    Outcome::Committed
}

/// The x86_64 facts of a descriptor's section (the shared ones are checked
/// by the caller): its length, the `ud1` that carries the signature before
/// `abort_ip`, and the check first and the commit last in its code.
#[cfg(test)]
pub(super) fn check_descriptor(cs: &crate::rseq::abi::RseqCs) {
    let start = cs.start_ip;
    // The longest is the memcpy shape's (its specialised copies: 125-129
    // bytes, as the compiler allocates registers); the injection build
    // adds three delay loops to every section.
    let longest = if cfg!(feature = "inject") { 256 } else { 192 };
    assert!(
        cs.post_commit_offset > 0 && cs.post_commit_offset < longest,
        "{cs:?}"
    );
    // SAFETY: code bytes of this binary around the section, mapped r-x.
    let before_abort = unsafe { core::slice::from_raw_parts((cs.abort_ip - 7) as *const u8, 7) };
    let mut want = vec![0x0f, 0xb9, 0x3d];
    want.extend_from_slice(&RSEQ_SIG.to_le_bytes());
    assert_eq!(
        before_abort,
        &want[..],
        "ud1 + signature must precede abort_ip"
    );
    // SAFETY: the section's own code bytes.
    let code =
        unsafe { core::slice::from_raw_parts(start as *const u8, cs.post_commit_offset as usize) };
    // Every section opens with the check: `mov w, dword ptr [fence]`
    // (opcode 0x8b, optionally after a REX prefix), then
    // `cmp [area + index], w` (0x39); the testing build's broken variant
    // opens with the cmp alone.
    // (The injection build opens with a delay loop instead.)
    if !cfg!(feature = "inject") {
        let op = if code[0] & 0xf0 == 0x40 { 1 } else { 0 };
        assert!(
            code[op] == 0x8b || (cfg!(feature = "testing") && code[op] == 0x39),
            "section must open with the check: {code:02x?}"
        );
        assert!(
            code[..8].contains(&0x39),
            "the check compares with the index field: {code:02x?}"
        );
    }
    // ... and ends with the commit, a 64-bit store to memory: `add qword
    // ptr [..], r` (the counter, `add_store`, `add_load_add_store`) or
    // `mov qword ptr [..], r` (the other shapes): REX.W 01 or 89 /r, with
    // an optional displacement or SIB byte.
    let tail = &code[code.len().saturating_sub(5)..];
    assert!(
        tail.windows(2)
            .any(|w| w[0] & 0xf8 == 0x48 && (w[1] == 0x01 || w[1] == 0x89)),
        "commit must end the section: {code:02x?}"
    );
}
