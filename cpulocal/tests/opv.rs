//! Operation vectors (`cpulocal::opv`): every limit and every error of
//! [`Domain::run_ops`] and [`PerCpu::run_ops`], each operation against plain
//! Rust at every size, a concurrent exact-sum test against critical sections,
//! and random vectors against the model in `opv_model` (shared with the fuzz
//! target in `fuzz/`).
//!
//! Most tests describe a vector once ([`MOp`]) and run it through both entry
//! points and the model ([`both`]), which must agree on the result and on
//! every byte; a refused vector must leave every byte as it was.

mod opv_model;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, LazyLock};
use std::thread;
use std::time::Duration;

use cpulocal::opv::{Op, OpError, SlotOp, MAX_LEN, MAX_OPS};
use cpulocal::{Domain, Index, Order, PerCpu};
use opv_model::{
    check, decode, model, read_slot, write_slot, Kind, MOp, Outcome, Slot, INTEGER_KINDS,
    LENGTH_KINDS, SLOT_LEN,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SIZES: [usize; 4] = [1, 2, 4, 8];
const BAD_SIZES: [usize; 4] = [0, 3, 5, 9];

fn int(kind: Kind, at: usize, size: usize, arg: u64) -> MOp {
    MOp {
        kind,
        x: Some(at),
        y: None,
        n: size,
        arg,
    }
}

fn add(at: usize, size: usize, count: i64) -> MOp {
    int(Kind::Add, at, size, count as u64)
}

/// A compare or copy of `len` bytes: the target's at `at`, the caller's at
/// `from` (in the source bytes).
fn bytes(kind: Kind, at: usize, from: usize, len: usize) -> MOp {
    MOp {
        kind,
        x: Some(at),
        y: Some(from),
        n: len,
        arg: 0,
    }
}

const MB: MOp = MOp {
    kind: Kind::Mb,
    x: None,
    y: None,
    n: 0,
    arg: 0,
};

/// A [`SLOT_LEN`]-byte target memory: bytes 0, 1, 2, ... (mod 251).
fn target() -> Vec<u8> {
    (0..SLOT_LEN).map(|i| (i % 251) as u8).collect()
}

/// Source bytes: `target()`'s first `len`, so `bytes(.., at, at, ..)`
/// compares equal until something writes there.
fn source(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn is_refusal(r: &Result<(), OpError>) -> bool {
    matches!(r, Err(e) if !matches!(e, OpError::CompareFailed { .. }))
}

/// Runs `ops` on `init` (the target, [`SLOT_LEN`] bytes) with `src` the
/// caller's bytes: through [`PerCpu::run_ops`] on a `PerCpu<Slot>`, through
/// [`Domain::run_ops`] on a buffer `init ++ src`, and through the model. All
/// three must agree on the result and the target's bytes; nothing may write
/// the source; a refusal must write nothing. Returns the result and the
/// target's bytes after.
fn both(ops: &[MOp], init: &[u8], src: &[u8]) -> (Result<(), OpError>, Vec<u8>) {
    assert_eq!(init.len(), SLOT_LEN);
    let slots: PerCpu<Slot> = PerCpu::new(|_| [0; 512]);
    let cpu = slots.cpus() - 1;
    write_slot(&slots, cpu, init);
    let slot_ops: Vec<SlotOp<'_>> = ops.iter().map(|op| op.slot(src)).collect();
    let by_slot = slots.run_ops(cpu, &slot_ops);
    let slot_after = read_slot(&slots, cpu);

    let domain = Domain::new(Index::Cpu);
    let mut buf = [init, src].concat();
    let base = buf.as_mut_ptr();
    let raw_ops: Vec<Op> = ops
        .iter()
        .map(|op| {
            let mut op = *op;
            op.y = op.y.map(|y| SLOT_LEN + y);
            op.raw(base)
        })
        .collect();
    // SAFETY: the tests give offsets that keep every operation that passes
    // the checks inside `buf` (the target part for `x`, the source part for
    // `y`, so copies do not overlap); `buf` is used only through `domain`.
    let by_domain = unsafe { domain.run_ops(cpu.min(domain.cpus() - 1), &raw_ops) };

    let mut want = init.to_vec();
    let by_model = model(ops, true, 0, 1, &mut want, src);

    assert_eq!(
        by_slot, by_model,
        "PerCpu::run_ops against the model, {ops:?}"
    );
    assert_eq!(
        by_domain, by_model,
        "Domain::run_ops against the model, {ops:?}"
    );
    assert!(
        slot_after == want,
        "PerCpu slot bytes differ from the model, {ops:?}"
    );
    assert!(
        buf[..SLOT_LEN] == want,
        "Domain bytes differ from the model, {ops:?}"
    );
    assert!(
        buf[SLOT_LEN..] == *src,
        "a vector wrote its source bytes, {ops:?}"
    );
    if is_refusal(&by_model) {
        assert!(slot_after == init, "refused, yet wrote: {ops:?}");
    }
    (by_slot, slot_after)
}

/// [`both`] on [`target()`] with a source of [`MAX_LEN`] + 1 bytes.
fn run(ops: &[MOp]) -> (Result<(), OpError>, Vec<u8>) {
    both(ops, &target(), &source(MAX_LEN + 1))
}

/// Asserts that `ops` is refused with `err` and left the target unchanged
/// (also asserted by [`both`]).
fn refused(ops: &[MOp], err: OpError) {
    let (r, after) = run(ops);
    assert_eq!(r, Err(err), "{ops:?}");
    assert!(after == target());
}

fn u64_at(mem: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(mem[at..at + 8].try_into().unwrap())
}

// ---- limits ----------------------------------------------------------------

#[test]
fn sixteen_operations_run_seventeen_are_refused() {
    assert_eq!(MAX_OPS, 16);
    let ops = vec![add(0, 8, 1); MAX_OPS];
    let (r, after) = run(&ops);
    assert_eq!(r, Ok(()));
    assert_eq!(u64_at(&after, 0), u64_at(&target(), 0) + 16);

    let ops = vec![add(0, 8, 1); MAX_OPS + 1];
    refused(&ops, OpError::TooManyOps { count: 17 });
    refused(&vec![MB; 100], OpError::TooManyOps { count: 100 });
}

#[test]
fn an_empty_vector_runs_and_does_nothing() {
    let (r, after) = run(&[]);
    assert_eq!(r, Ok(()));
    assert!(after == target());
    let (r, after) = run(&[MB, MB]);
    assert_eq!(r, Ok(()));
    assert!(after == target());
}

#[test]
fn max_len_is_allowed_one_more_is_refused_for_every_length_op() {
    assert_eq!(MAX_LEN, 4096);
    let init = target();
    for kind in LENGTH_KINDS {
        // Exactly MAX_LEN: the whole slot. The source equals the target, so
        // CompareEq passes, CompareNe fails, copies write the same bytes.
        let (r, _) = run(&[bytes(kind, 0, 0, MAX_LEN)]);
        let want = if kind == Kind::CompareNe {
            Err(OpError::CompareFailed { op: 0 })
        } else {
            Ok(())
        };
        assert_eq!(r, want, "{kind:?} of {MAX_LEN} bytes");
        // A copy of MAX_LEN different bytes lands whole.
        if matches!(kind, Kind::Memcpy | Kind::MemcpyRelease) {
            let src: Vec<u8> = (0..=MAX_LEN).map(|i| (i % 7) as u8 ^ 0x5a).collect();
            let (r, after) = both(&[bytes(kind, 0, 1, MAX_LEN)], &init, &src);
            assert_eq!(r, Ok(()));
            assert!(after == src[1..]);
        }
        // One more: refused, although the operation before it is fine. The
        // length is checked before where it reaches (4097 bytes do not fit
        // a 4096-byte slot either).
        refused(
            &[add(0, 8, 1), bytes(kind, 0, 0, MAX_LEN + 1)],
            OpError::TooLong {
                op: 1,
                len: MAX_LEN + 1,
            },
        );
    }
}

#[test]
fn bad_sizes_are_refused_for_every_integer_op() {
    for kind in INTEGER_KINDS {
        for size in BAD_SIZES {
            refused(
                &[add(0, 8, 1), int(kind, 16, size, 0)],
                OpError::BadSize { op: 1, size },
            );
        }
    }
}

#[test]
fn shift_by_the_width_is_refused_by_one_less_works() {
    for kind in [Kind::LShift, Kind::RShift] {
        for size in SIZES {
            let width = 8 * size as u32;
            refused(
                &[add(0, 8, 1), int(kind, 16, size, u64::from(width))],
                OpError::ShiftTooWide {
                    op: 1,
                    bits: width,
                    size,
                },
            );
            refused(
                &[int(kind, 16, size, 70)],
                OpError::ShiftTooWide {
                    op: 0,
                    bits: 70,
                    size,
                },
            );
            // width - 1: LShift of 1 leaves the top bit alone; RShift of all
            // ones leaves 1 (logical, not arithmetic).
            let start = if kind == Kind::LShift { 1 } else { u64::MAX };
            let mut init = target();
            init[16..16 + size].copy_from_slice(&ne(start, size));
            let (r, after) = both(
                &[int(kind, 16, size, u64::from(width - 1))],
                &init,
                &source(8),
            );
            assert_eq!(r, Ok(()));
            let got = from_ne(&after[16..16 + size]);
            let want = if kind == Kind::LShift {
                1u64 << (width - 1)
            } else {
                1
            };
            assert_eq!(got, want, "{kind:?} at size {size} by {}", width - 1);
            assert!(after[..16] == init[..16] && after[16 + size..] == init[16 + size..]);
        }
    }
}

#[test]
fn null_pointers_are_refused() {
    let domain = Domain::new(Index::Cpu);
    let mut mem = vec![0u8; 64];
    let p = mem.as_mut_ptr();
    let q = p.wrapping_add(32);
    let null = core::ptr::null_mut::<u8>();
    let mut bad: Vec<Op> = Vec::new();
    for len in [0, 1, 8] {
        for (x, y) in [(null, q), (p, null), (null, null)] {
            bad.push(Op::CompareEq { a: x, b: y, len });
            bad.push(Op::CompareNe { a: x, b: y, len });
            bad.push(Op::Memcpy {
                dst: x,
                src: y,
                len,
            });
            bad.push(Op::MemcpyRelease {
                dst: x,
                src: y,
                len,
            });
        }
    }
    for size in SIZES {
        bad.extend([
            Op::Add {
                p: null,
                size,
                count: 1,
            },
            Op::AddRelease {
                p: null,
                size,
                count: 1,
            },
            Op::Or {
                p: null,
                size,
                mask: 1,
            },
            Op::And {
                p: null,
                size,
                mask: 1,
            },
            Op::Xor {
                p: null,
                size,
                mask: 1,
            },
            Op::LShift {
                p: null,
                size,
                bits: 1,
            },
            Op::RShift {
                p: null,
                size,
                bits: 1,
            },
        ]);
    }
    for op in bad {
        let ops = [
            Op::Add {
                p,
                size: 8,
                count: 1,
            },
            Op::Mb,
            op,
        ];
        // SAFETY: `p` names 8 bytes of `mem`, used only through `domain`;
        // the vector is refused before anything runs.
        let r = unsafe { domain.run_ops(0, &ops) };
        assert_eq!(r, Err(OpError::NullPointer { op: 2 }), "{op:?}");
        assert!(mem.iter().all(|&b| b == 0), "{op:?} wrote");
    }
    // A bad size is found before the null pointer of the same operation.
    let ops = [Op::Add {
        p: null,
        size: 3,
        count: 1,
    }];
    // SAFETY: refused before anything runs.
    let r = unsafe { domain.run_ops(0, &ops) };
    assert_eq!(r, Err(OpError::BadSize { op: 0, size: 3 }));
}

#[test]
fn a_slot_out_of_range_is_refused() {
    let domain = Domain::new(Index::Cpu);
    let mut word = 0u64;
    let p = (&raw mut word).cast::<u8>();
    for cpu in [domain.cpus(), domain.cpus() + 1, usize::MAX] {
        let ops = [Op::Add {
            p,
            size: 8,
            count: 1,
        }];
        // SAFETY: `word` is used only through `domain`; refused anyway.
        let r = unsafe { domain.run_ops(cpu, &ops) };
        assert_eq!(
            r,
            Err(OpError::CpuOutOfRange {
                cpu,
                slots: domain.cpus()
            })
        );
    }
    assert_eq!(word, 0);

    let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [7, 7]);
    for cpu in [slots.cpus(), usize::MAX] {
        let r = slots.run_ops(
            cpu,
            &[SlotOp::Add {
                at: 0,
                size: 8,
                count: 1,
            }],
        );
        assert_eq!(
            r,
            Err(OpError::CpuOutOfRange {
                cpu,
                slots: slots.cpus()
            })
        );
    }
    assert!(slots.iter().all(|v| *v == [7, 7]));
}

#[test]
fn refusals_come_in_the_documented_order() {
    let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [7, 7]);
    let far = slots.cpus();
    let many = [SlotOp::Add {
        at: 99,
        size: 3,
        count: 1,
    }; MAX_OPS + 1];
    // Count, then slot, then operation by operation: shape, then reach.
    assert_eq!(
        slots.run_ops(far, &many),
        Err(OpError::TooManyOps { count: 17 })
    );
    assert_eq!(
        slots.run_ops(far, &many[..2]),
        Err(OpError::CpuOutOfRange {
            cpu: far,
            slots: slots.cpus()
        })
    );
    assert_eq!(
        slots.run_ops(0, &many[..2]),
        Err(OpError::BadSize { op: 0, size: 3 })
    );
    let ops = [
        SlotOp::Add {
            at: 99,
            size: 8,
            count: 1,
        },
        SlotOp::LShift {
            at: 0,
            size: 1,
            bits: 8,
        },
    ];
    assert_eq!(
        slots.run_ops(0, &ops),
        Err(OpError::OutOfBounds {
            op: 0,
            at: 99,
            end: 107,
            slot_size: 16
        })
    );
    let ops = [
        SlotOp::LShift {
            at: 99,
            size: 1,
            bits: 8,
        },
        SlotOp::Add {
            at: 99,
            size: 8,
            count: 1,
        },
    ];
    assert_eq!(
        slots.run_ops(0, &ops),
        Err(OpError::ShiftTooWide {
            op: 0,
            bits: 8,
            size: 1
        })
    );
    // Held is found last, after the vector passed its checks.
    let guard = slots.lock_on(0).unwrap();
    assert_eq!(
        slots.run_ops(0, &many[..2]),
        Err(OpError::BadSize { op: 0, size: 3 })
    );
    drop(guard);
    assert!(slots.iter().all(|v| *v == [7, 7]));
}

#[test]
fn a_slot_held_by_this_thread_is_refused() {
    let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [1, 2]);
    let ops = [SlotOp::Add {
        at: 0,
        size: 8,
        count: 1,
    }];
    let mut guard = slots.lock_on(1 % slots.cpus()).unwrap();
    let cpu = guard.cpu();
    assert_eq!(
        slots.run_ops(cpu, &ops),
        Err(OpError::HeldByThisThread { cpu })
    );
    assert_eq!(*guard, [1, 2]);
    guard[1] = 3;
    drop(guard);
    // Released, and the refusal left the fence as it found it.
    slots.run_ops(cpu, &ops).unwrap();
    assert_eq!(*slots.lock_on(cpu).unwrap(), [2, 3]);
}

#[test]
fn out_of_bounds_at_the_slot_edge() {
    const SIZE: usize = SLOT_LEN;
    let src = source(MAX_LEN);
    let mut cases = Vec::new();
    for kind in LENGTH_KINDS {
        for len in [0, 1, 8, MAX_LEN] {
            cases.push((len, bytes(kind, 0, 0, len)));
        }
    }
    for kind in INTEGER_KINDS {
        for size in SIZES {
            cases.push((size, int(kind, 0, size, 1)));
        }
    }
    for (len, op) in cases {
        let at_edge = SIZE - len;
        let fits = MOp {
            x: Some(at_edge),
            ..op
        };
        let (r, _) = run(&[fits]);
        assert!(
            !is_refusal(&r),
            "{fits:?} fits exactly, yet was refused: {r:?}"
        );
        for at in [at_edge + 1, SIZE + 1, usize::MAX - 2, usize::MAX] {
            let past = MOp { x: Some(at), ..op };
            let err = OpError::OutOfBounds {
                op: 1,
                at,
                end: at.saturating_add(len),
                slot_size: SIZE,
            };
            // Slot mode only: a raw vector has no bounds.
            let slots: PerCpu<Slot> = PerCpu::new(|_| [0x0101_0101_0101_0101; 512]);
            let ops = [add(0, 8, 1).slot(&src), past.slot(&src)];
            assert_eq!(slots.run_ops(0, &ops), Err(err), "{past:?}");
            assert!(slots
                .lock_on(0)
                .unwrap()
                .iter()
                .all(|&w| w == 0x0101_0101_0101_0101));
        }
    }
}

// ---- outcomes ----------------------------------------------------------------

#[test]
fn a_failed_compare_stops_the_vector_after_the_ops_before_it() {
    let init = target();
    // Bytes 100..108 of the target differ from source bytes 0..8 (the
    // source repeats the target from 0), and equal source bytes 100..108.
    for (failing, passing) in [
        (
            bytes(Kind::CompareEq, 100, 0, 8),
            bytes(Kind::CompareEq, 100, 100, 8),
        ),
        (
            bytes(Kind::CompareNe, 100, 100, 8),
            bytes(Kind::CompareNe, 100, 0, 8),
        ),
    ] {
        let ops = [
            add(0, 8, 1),
            passing,
            add(8, 8, 1),
            failing,
            add(16, 8, 1),
            bytes(Kind::Memcpy, 24, 0, 8),
        ];
        let (r, after) = run(&ops);
        assert_eq!(r, Err(OpError::CompareFailed { op: 3 }), "{ops:?}");
        assert_eq!(u64_at(&after, 0), u64_at(&init, 0) + 1, "op 0 ran");
        assert_eq!(u64_at(&after, 8), u64_at(&init, 8) + 1, "op 2 ran");
        assert!(after[16..] == init[16..], "nothing after op 3 ran");
    }
}

#[test]
fn zero_byte_compares_are_equal() {
    let (r, _) = run(&[bytes(Kind::CompareEq, 7, 3, 0), add(0, 1, 1)]);
    assert_eq!(r, Ok(()));
    let (r, after) = run(&[add(0, 1, 1), bytes(Kind::CompareNe, 7, 3, 0), add(0, 1, 1)]);
    assert_eq!(r, Err(OpError::CompareFailed { op: 1 }));
    assert_eq!(after[0], target()[0] + 1);
    // Zero-byte copies, anywhere in the slot including its end.
    let (r, after) = run(&[
        bytes(Kind::Memcpy, 0, 0, 0),
        bytes(Kind::MemcpyRelease, SLOT_LEN, 5, 0),
    ]);
    assert_eq!(r, Ok(()));
    assert!(after == target());
}

#[test]
fn copies_and_compares_see_each_other_in_order() {
    let init = target();
    let src: Vec<u8> = (0..64).map(|i| 200 - i as u8).collect();
    let ops = [
        bytes(Kind::Memcpy, 1000, 0, 13),
        bytes(Kind::CompareEq, 1000, 0, 13),
        bytes(Kind::MemcpyRelease, 2001, 20, 33),
        bytes(Kind::CompareNe, 2001, 0, 33),
        MB,
        bytes(Kind::CompareEq, 2001, 20, 33),
    ];
    let (r, after) = both(&ops, &init, &src);
    assert_eq!(r, Ok(()));
    assert!(after[1000..1013] == src[..13]);
    assert!(after[2001..2034] == src[20..53]);
    assert!(after[..1000] == init[..1000] && after[2034..] == init[2034..]);
}

// ---- semantics -----------------------------------------------------------------

/// Values that find the edges of every width.
fn interesting(size: usize) -> Vec<u64> {
    let max = if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    };
    let mut v = vec![
        0,
        1,
        2,
        max,
        max - 1,
        max >> 1,
        (max >> 1) + 1,
        0x5a5a_5a5a_5a5a_5a5a & max,
    ];
    v.extend([0x0123_4567_89ab_cdef & max, u64::MAX, 1 << 63, 0xff00]);
    v
}

/// `v` truncated to `size` bytes, native endian.
fn ne(v: u64, size: usize) -> Vec<u8> {
    match size {
        1 => vec![v as u8],
        2 => (v as u16).to_ne_bytes().to_vec(),
        4 => (v as u32).to_ne_bytes().to_vec(),
        8 => v.to_ne_bytes().to_vec(),
        _ => unreachable!(),
    }
}

/// A 1-, 2-, 4- or 8-byte native-endian unsigned integer.
fn from_ne(b: &[u8]) -> u64 {
    match b.len() {
        1 => u64::from(b[0]),
        2 => u64::from(u16::from_ne_bytes(b.try_into().unwrap())),
        4 => u64::from(u32::from_ne_bytes(b.try_into().unwrap())),
        8 => u64::from_ne_bytes(b.try_into().unwrap()),
        _ => unreachable!(),
    }
}

/// `kind` on the `size`-byte value `start` (truncated) with `arg`, as
/// arithmetic modulo 2^(8 size).
fn modular(kind: Kind, start: u64, arg: u64, size: usize) -> u64 {
    let modulus = 1u128 << (8 * size);
    let v = u128::from(start) % modulus;
    let arg = u128::from(arg);
    let r = match kind {
        Kind::Add | Kind::AddRelease => v + arg,
        Kind::Or => v | arg,
        Kind::And => v & arg,
        Kind::Xor => v ^ arg,
        Kind::LShift => v << arg,
        Kind::RShift => v >> arg,
        _ => unreachable!(),
    };
    (r % modulus) as u64
}

#[test]
fn integer_ops_match_rust_at_every_size() {
    // Each operand at its own unaligned offset (13 + 16 j), all starting from
    // the same value; the model applies Rust's typed operations.
    let at = |j: usize| 13 + 16 * j;
    for size in SIZES {
        for kind in INTEGER_KINDS {
            let args: Vec<u64> = if kind.is_shift() {
                (0..8 * size as u64).collect()
            } else {
                interesting(size)
                    .into_iter()
                    .chain([-1i64 as u64, -2i64 as u64, i64::MIN as u64])
                    .collect()
            };
            for start in interesting(size) {
                for args in args.chunks(MAX_OPS) {
                    let mut init = target();
                    for j in 0..args.len() {
                        init[at(j)..at(j) + size].copy_from_slice(&ne(start, size));
                    }
                    let ops: Vec<MOp> = (0..args.len())
                        .map(|j| int(kind, at(j), size, args[j]))
                        .collect();
                    // `both` holds both entry points to the model, byte for byte.
                    let (r, after) = both(&ops, &init, &source(8));
                    assert_eq!(r, Ok(()));
                    // And to arithmetic modulo 2^(8 size), done in u128.
                    for (j, &arg) in args.iter().enumerate() {
                        let got = from_ne(&after[at(j)..at(j) + size]);
                        assert_eq!(
                            got,
                            modular(kind, start, arg, size),
                            "{kind:?} of {start:#x} by {arg:#x} at size {size}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn adds_wrap_at_every_width() {
    for size in SIZES {
        let mut init = target();
        init[40..40 + size].fill(0xff); // the maximum
        init[60..60 + size].fill(0); // zero
        let ops = [
            add(40, size, 1),
            int(Kind::AddRelease, 60, size, -1i64 as u64),
            add(80, size, 0),
        ];
        let (r, after) = both(&ops, &init, &source(8));
        assert_eq!(r, Ok(()));
        assert!(
            after[40..40 + size].iter().all(|&b| b == 0),
            "max + 1 wraps to 0"
        );
        assert!(
            after[60..60 + size].iter().all(|&b| b == 0xff),
            "0 - 1 wraps to max"
        );
        assert_eq!(
            after[40 + size],
            init[40 + size],
            "no carry out of the operand"
        );
        assert!(after[80..80 + size] == init[80..80 + size]);
    }
    // Truncated operands: a count or mask wider than the operand.
    let mut init = target();
    init[0] = 0x0f;
    init[1] = 0xf0;
    let ops = [
        add(0, 1, 0x1_01),
        int(Kind::Or, 1, 1, 0xffff_ff0f),
        int(Kind::Xor, 2, 1, 0x100),
    ];
    let (r, after) = both(&ops, &init, &source(8));
    assert_eq!(r, Ok(()));
    assert_eq!(&after[..3], &[0x10, 0xff, init[2]]);
}

#[test]
fn each_op_against_rust_on_a_u64_slot() {
    // The same, on a typed slot, as a user would write it.
    let slots: PerCpu<[u64; 4]> = PerCpu::new(|_| [0; 4]);
    *slots.lock_on(0).unwrap() = [10, 0xf0f0, 0xff, 1];
    slots
        .run_ops(
            0,
            &[
                SlotOp::Add {
                    at: 0,
                    size: 8,
                    count: -3,
                },
                SlotOp::And {
                    at: 8,
                    size: 8,
                    mask: 0xff00,
                },
                SlotOp::Xor {
                    at: 16,
                    size: 8,
                    mask: 0x0f,
                },
                SlotOp::LShift {
                    at: 24,
                    size: 8,
                    bits: 63,
                },
                SlotOp::RShift {
                    at: 24,
                    size: 8,
                    bits: 62,
                },
                SlotOp::Or {
                    at: 24,
                    size: 8,
                    mask: 0x10,
                },
            ],
        )
        .unwrap();
    assert_eq!(*slots.lock_on(0).unwrap(), [7, 0xf000, 0xf0, 0x12]);
}

// ---- signals and waiting -----------------------------------------------------------

/// The calling thread's blocked signals.
fn blocked_signals() -> Vec<bool> {
    // SAFETY: sigset_t is plain data; pthread_sigmask with a null new set only
    // writes the current mask into `set`; sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut set),
            0
        );
        (1..libc::SIGRTMAX())
            .map(|s| libc::sigismember(&set, s) == 1)
            .collect()
    }
}

#[test]
fn the_signal_mask_is_restored_after_every_outcome() {
    let before = blocked_signals();
    let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [0, 0]);
    let zero = [1u8; 8];
    let _ = slots.run_ops(
        0,
        &[SlotOp::Add {
            at: 0,
            size: 8,
            count: 1,
        }],
    );
    assert_eq!(blocked_signals(), before, "after success");
    let failed = slots.run_ops(
        0,
        &[SlotOp::CompareEq {
            at: 0,
            expect: &zero,
        }],
    );
    assert_eq!(failed, Err(OpError::CompareFailed { op: 0 }));
    assert_eq!(blocked_signals(), before, "after a failed compare");
    let _ = slots.run_ops(
        0,
        &[SlotOp::Add {
            at: 9,
            size: 8,
            count: 1,
        }],
    );
    assert_eq!(blocked_signals(), before, "after a refusal");
    let guard = slots.lock_on(0).unwrap();
    let held = slots.run_ops(
        0,
        &[SlotOp::Add {
            at: 0,
            size: 8,
            count: 1,
        }],
    );
    assert_eq!(held, Err(OpError::HeldByThisThread { cpu: 0 }));
    assert_eq!(blocked_signals(), before, "after HeldByThisThread");
    drop(guard);

    let domain = Domain::new(Index::Cpu);
    let mut word = 0u64;
    let p = (&raw mut word).cast::<u8>();
    // SAFETY: `word` is used only through `domain`.
    unsafe {
        domain.run_ops(
            0,
            &[Op::Add {
                p,
                size: 8,
                count: 1,
            }],
        )
    }
    .unwrap();
    assert_eq!(blocked_signals(), before, "after a raw vector");
    assert_eq!(word, 1);
}

#[test]
fn a_vector_waits_for_a_lock_held_elsewhere() {
    let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [0, 0]);
    let released = AtomicBool::new(false);
    thread::scope(|s| {
        let mut guard = slots.lock_on(0).unwrap();
        let runner = s.spawn(|| {
            slots
                .run_ops(
                    0,
                    &[SlotOp::Add {
                        at: 0,
                        size: 8,
                        count: 1,
                    }],
                )
                .unwrap();
            // The vector ran after the holder's update, never in its middle.
            assert!(released.load(Ordering::Acquire));
            *slots.lock_on(0).unwrap()
        });
        guard[0] = 41;
        thread::sleep(Duration::from_millis(50));
        guard[1] = 1;
        released.store(true, Ordering::Release);
        drop(guard);
        assert_eq!(runner.join().unwrap(), [42, 1]);
    });
}

// ---- concurrency ------------------------------------------------------------------

/// One slot's words, on a line of their own.
#[repr(C, align(128))]
struct Line {
    /// Added to by vectors and by `add_store` critical sections.
    hits: AtomicUsize,
    /// Added to by vectors only, in the same vector as `hits`.
    mirror: AtomicUsize,
}

/// Operations per thread in the concurrent tests, times
/// `CPULOCAL_STRESS_SCALE` (default 1), which changes the amount of work only.
fn concurrent_ops() -> usize {
    let scale = std::env::var("CPULOCAL_STRESS_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    ((100_000.0 * scale) as usize).max(1)
}

/// `4 × slots` threads (at least 8), started together, each doing `ops`
/// operations on a [`Domain`]'s per-slot [`Line`]s: a third are vectors
/// (`hits += 1; mb; mirror += 1 (release)`) on the next CPU's slot, whose own
/// threads run critical sections on it meanwhile; a third the same vectors on
/// the thread's own slot; a third `add_store(hits, 1)` sections on its own
/// slot. Returns every slot whose sums are not exact (empty: all exact).
fn vectors_against_sections(ops: usize) -> Vec<String> {
    let domain = Domain::new(Index::Cpu);
    let n = domain.cpus();
    let lines: Vec<Line> = (0..n)
        .map(|_| Line {
            hits: AtomicUsize::new(0),
            mirror: AtomicUsize::new(0),
        })
        .collect();
    let threads = 4 * n.max(2);
    let start = Barrier::new(threads);
    let word = core::mem::size_of::<usize>();
    // Per thread, per slot: (vectors, sections) that ran on it.
    let tallies: Vec<(Vec<usize>, Vec<usize>)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (domain, lines, start) = (&domain, &lines, &start);
                s.spawn(move || {
                    let (mut vectors, mut sections) = (vec![0; n], vec![0; n]);
                    start.wait();
                    for i in 0..ops {
                        let here = domain.current();
                        match (i + t) % 3 {
                            choice @ (0 | 1) => {
                                let target = if choice == 0 { (here + 1) % n } else { here };
                                let line = &lines[target];
                                let ops = [
                                    Op::Add {
                                        p: line.hits.as_ptr().cast(),
                                        size: word,
                                        count: 1,
                                    },
                                    Op::Mb,
                                    Op::AddRelease {
                                        p: line.mirror.as_ptr().cast(),
                                        size: word,
                                        count: 1,
                                    },
                                ];
                                // SAFETY: the words are `target`'s, written
                                // only through `domain` on that slot.
                                unsafe { domain.run_ops(target, &ops) }.unwrap();
                                vectors[target] += 1;
                            }
                            _ => {
                                // SAFETY: as above; the word is aligned.
                                unsafe {
                                    domain.add_store(
                                        here,
                                        lines[here].hits.as_ptr(),
                                        1,
                                        Order::Relaxed,
                                    )
                                };
                                sections[here] += 1;
                            }
                        }
                        if i % 97 == 0 {
                            thread::yield_now();
                        }
                    }
                    (vectors, sections)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut wrong = Vec::new();
    let mut total = 0;
    for (slot, line) in lines.iter().enumerate() {
        let vectors: usize = tallies.iter().map(|t| t.0[slot]).sum();
        let sections: usize = tallies.iter().map(|t| t.1[slot]).sum();
        let (hits, mirror) = (
            line.hits.load(Ordering::Relaxed),
            line.mirror.load(Ordering::Relaxed),
        );
        if hits != vectors + sections || mirror != vectors {
            wrong.push(format!(
                "slot {slot}: hits {hits}, mirror {mirror}, after {vectors} vectors and {sections} sections"
            ));
        }
        total += vectors + sections;
    }
    assert_eq!(total, threads * ops);
    wrong
}

#[test]
fn remote_vectors_are_atomic_with_critical_sections() {
    let wrong = vectors_against_sections(concurrent_ops());
    assert!(wrong.is_empty(), "sums are not exact: {wrong:#?}");
}

/// The test above can fail: with the membarrier skipped (`testing` feature),
/// a section that passed its fence check before a remote vector took the
/// fence commits in the middle of the vector, and an add is lost. The switch
/// is process-wide, so this runs in a child process (this test binary, this
/// test only), in rounds until a sum comes out wrong, within a budget.
#[cfg(feature = "testing")]
#[test]
fn without_the_membarrier_the_concurrent_test_fails() {
    use std::process::Command;
    use std::time::Instant;

    const CHILD: &str = "CPULOCAL_OPV_BROKEN_CHILD";
    const NAME: &str = "without_the_membarrier_the_concurrent_test_fails";
    const BUDGET: Duration = Duration::from_secs(30);
    if std::env::var_os(CHILD).is_some() {
        cpulocal::testing::set(cpulocal::testing::Break::SkipMembarrier, true);
        let started = Instant::now();
        let mut rounds = 0;
        while started.elapsed() < BUDGET {
            rounds += 1;
            let wrong = vectors_against_sections(concurrent_ops());
            if !wrong.is_empty() {
                eprintln!(
                    "detected in round {rounds} ({:.2?}): {wrong:?}",
                    started.elapsed()
                );
                return;
            }
        }
        panic!("with the membarrier skipped, {rounds} rounds still gave exact sums");
    }
    let status = cpulocal::status();
    if status.engine != cpulocal::Engine::Rseq || status.possible_cpus < 2 {
        eprintln!(
            "SKIPPED: needs the rseq engine and 2 CPUs; have {} and {}",
            status.engine, status.possible_cpus
        );
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("detected in round"),
        "the broken-protocol child did not detect the fault: {}\n{stderr}",
        out.status
    );
    eprintln!(
        "{}",
        stderr
            .lines()
            .find(|l| l.contains("detected"))
            .unwrap_or("")
    );
}

#[test]
fn remote_vectors_exclude_locks_on_the_slot() {
    let slots: PerCpu<[u64; 2]> = PerCpu::new(|_| [0, 0]);
    let n = slots.cpus();
    let threads = 4 * n.max(2);
    let per_slot: Vec<Vec<u64>> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let slots = &slots;
                s.spawn(move || {
                    let mut mine = vec![0u64; n];
                    for i in 0..concurrent_ops() / 2 {
                        let here = cpulocal::current_cpu() % n;
                        if (i + t) % 2 == 0 {
                            let there = (here + 1) % n;
                            let ops = [
                                SlotOp::Add {
                                    at: 0,
                                    size: 8,
                                    count: 1,
                                },
                                SlotOp::Add {
                                    at: 8,
                                    size: 8,
                                    count: 2,
                                },
                            ];
                            slots.run_ops(there, &ops).unwrap();
                            mine[there] += 1;
                        } else {
                            let mut g = slots.lock_on(here).unwrap();
                            g[0] += 1;
                            g[1] += 2;
                            mine[here] += 1;
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for cpu in 0..n {
        let want: u64 = per_slot.iter().map(|m| m[cpu]).sum();
        assert_eq!(*slots.lock_on(cpu).unwrap(), [want, 2 * want], "slot {cpu}");
    }
}

// ---- random vectors against the model ----------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    /// Arbitrary vectors, decoded from random bytes (see `opv_model`): the
    /// library agrees with the model on every result and byte, and a refused
    /// vector writes nothing.
    #[test]
    fn random_vectors_match_the_model(
        input in proptest::collection::vec(any::<u8>(), 0..1500),
        slot_mode: bool,
    ) {
        static DOMAIN: LazyLock<Domain> = LazyLock::new(|| Domain::new(Index::Cpu));
        static SLOTS: LazyLock<PerCpu<Slot>> = LazyLock::new(|| PerCpu::new(|_| [0; 512]));
        check(&decode(&input, slot_mode), &DOMAIN, &SLOTS);
    }
}

/// The decoder's cases reach every outcome (so the proptest and the fuzz
/// target can find a fault in any of them).
#[test]
fn random_vectors_reach_every_outcome() {
    let domain = Domain::new(Index::Cpu);
    let slots: PerCpu<Slot> = PerCpu::new(|_| [0; 512]);
    let mut rng = SmallRng::seed_from_u64(0x6f70_7600);
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for i in 0..1500 {
        let mut input = vec![0u8; rng.random_range(0..1500)];
        rng.fill(&mut input[..]);
        let name = match check(&decode(&input, i % 2 == 0), &domain, &slots) {
            Outcome::Ran => "ran",
            Outcome::CompareFailed => "compare failed",
            Outcome::Refused(e) => match e {
                OpError::TooManyOps { .. } => "too many ops",
                OpError::CpuOutOfRange { .. } => "cpu out of range",
                OpError::TooLong { .. } => "too long",
                OpError::BadSize { .. } => "bad size",
                OpError::ShiftTooWide { .. } => "shift too wide",
                OpError::NullPointer { .. } => "null pointer",
                OpError::OutOfBounds { .. } => "out of bounds",
                other => panic!("unexpected refusal {other}"),
            },
        };
        *seen.entry(name).or_default() += 1;
    }
    println!("{seen:?}");
    for name in [
        "ran",
        "compare failed",
        "too many ops",
        "cpu out of range",
        "too long",
        "bad size",
        "shift too wide",
        "null pointer",
        "out of bounds",
    ] {
        assert!(
            seen.get(name).copied().unwrap_or(0) >= 10,
            "{name}: {seen:?}"
        );
    }
    assert!(seen["ran"] >= 200, "{seen:?}");
}
