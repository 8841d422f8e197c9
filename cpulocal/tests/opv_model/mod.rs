//! Operation vectors against a plain-Rust model, shared by the proptest in
//! `tests/opv.rs` and the cargo-fuzz target `fuzz/fuzz_targets/opvector.rs`
//! (which includes this file with `#[path]`).
//!
//! [`decode`] turns any bytes into a [`Case`]: a vector of 0 to 20 operations
//! of every kind, with sizes 0..=9, lengths 0..=5000, shift counts 0..=70,
//! null pointers, offsets at and past a slot's edge, and targets past the last
//! slot. [`check`] runs it through the library, and through [`model`]: an
//! independent description of the limits and of each operation on a byte
//! buffer. The two must agree on the outcome and on every byte; a refused
//! vector must leave the memory as it was.
//!
//! Two modes:
//! - raw ([`Domain::run_ops`]): every pointer is null or points into one
//!   [`MEM_LEN`]-byte buffer. The decoder keeps the operations that could be
//!   accepted inside it, and a copy's `dst` and `src` in different halves, so
//!   that no accepted vector is undefined behaviour;
//! - slot ([`PerCpu::run_ops`] on a `PerCpu<`[`Slot`]`>`): `at` is any
//!   offset, the caller's bytes are slices of a [`SRC_LEN`]-byte buffer.
#![allow(dead_code)] // the test and the fuzz target use different parts

use core::fmt;

use cpulocal::opv::{Op, OpError, SlotOp, MAX_LEN, MAX_OPS};
use cpulocal::{Domain, PerCpu};

/// The raw mode's buffer.
pub const MEM_LEN: usize = 16 * 1024;
/// The slot mode's value: 4096 bytes, the longest a compare or copy covers.
pub type Slot = [u64; 512];
/// Its size.
pub const SLOT_LEN: usize = core::mem::size_of::<Slot>();
/// The caller's bytes in slot mode (expected values, copy sources).
pub const SRC_LEN: usize = 8 * 1024;
/// Longest length the decoder makes.
pub const MAX_DECODED_LEN: usize = 5000;
/// Most operations the decoder makes.
pub const MAX_DECODED_OPS: usize = 20;

/// An operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CompareEq,
    CompareNe,
    Memcpy,
    MemcpyRelease,
    Add,
    AddRelease,
    Or,
    And,
    Xor,
    LShift,
    RShift,
    Mb,
}

/// Every kind.
pub const KINDS: [Kind; 12] = [
    Kind::CompareEq,
    Kind::CompareNe,
    Kind::Memcpy,
    Kind::MemcpyRelease,
    Kind::Add,
    Kind::AddRelease,
    Kind::Or,
    Kind::And,
    Kind::Xor,
    Kind::LShift,
    Kind::RShift,
    Kind::Mb,
];

/// The kinds that take an integer operand.
pub const INTEGER_KINDS: [Kind; 7] = [
    Kind::Add,
    Kind::AddRelease,
    Kind::Or,
    Kind::And,
    Kind::Xor,
    Kind::LShift,
    Kind::RShift,
];

/// The kinds that take a length.
pub const LENGTH_KINDS: [Kind; 4] = [
    Kind::CompareEq,
    Kind::CompareNe,
    Kind::Memcpy,
    Kind::MemcpyRelease,
];

impl Kind {
    /// Compares and copies.
    pub fn takes_len(self) -> bool {
        LENGTH_KINDS.contains(&self)
    }

    /// Integer operations.
    pub fn takes_size(self) -> bool {
        INTEGER_KINDS.contains(&self)
    }

    /// Shifts.
    pub fn is_shift(self) -> bool {
        matches!(self, Kind::LShift | Kind::RShift)
    }
}

/// One operation, for either mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MOp {
    pub kind: Kind,
    /// Raw: offset in the buffer of `a`, `dst` or `p` (None: null).
    /// Slot: `Some(at)`.
    pub x: Option<usize>,
    /// Raw: offset in the buffer of `b` or `src` (None: null).
    /// Slot: offset in the caller's bytes of `expect` or `from`.
    pub y: Option<usize>,
    /// `len` or `size`.
    pub n: usize,
    /// `count` (its bits), `mask` or `bits`.
    pub arg: u64,
}

impl MOp {
    /// The raw operation, pointers relative to `base`.
    pub fn raw(&self, base: *mut u8) -> Op {
        let at = |o: Option<usize>| o.map_or(core::ptr::null_mut(), |o| base.wrapping_add(o));
        let (x, y, n, arg) = (at(self.x), at(self.y), self.n, self.arg);
        match self.kind {
            Kind::CompareEq => Op::CompareEq { a: x, b: y, len: n },
            Kind::CompareNe => Op::CompareNe { a: x, b: y, len: n },
            Kind::Memcpy => Op::Memcpy {
                dst: x,
                src: y,
                len: n,
            },
            Kind::MemcpyRelease => Op::MemcpyRelease {
                dst: x,
                src: y,
                len: n,
            },
            Kind::Add => Op::Add {
                p: x,
                size: n,
                count: arg as i64,
            },
            Kind::AddRelease => Op::AddRelease {
                p: x,
                size: n,
                count: arg as i64,
            },
            Kind::Or => Op::Or {
                p: x,
                size: n,
                mask: arg,
            },
            Kind::And => Op::And {
                p: x,
                size: n,
                mask: arg,
            },
            Kind::Xor => Op::Xor {
                p: x,
                size: n,
                mask: arg,
            },
            Kind::LShift => Op::LShift {
                p: x,
                size: n,
                bits: arg as u32,
            },
            Kind::RShift => Op::RShift {
                p: x,
                size: n,
                bits: arg as u32,
            },
            Kind::Mb => Op::Mb,
        }
    }

    /// The slot operation, the caller's bytes taken from `src`.
    pub fn slot<'a>(&self, src: &'a [u8]) -> SlotOp<'a> {
        // `Mb` has no offset.
        let (at, n, arg) = (self.x.unwrap_or(0), self.n, self.arg);
        let bytes = || {
            let y = self.y.expect("compares and copies have caller bytes");
            &src[y..y + n]
        };
        match self.kind {
            Kind::CompareEq => SlotOp::CompareEq {
                at,
                expect: bytes(),
            },
            Kind::CompareNe => SlotOp::CompareNe {
                at,
                expect: bytes(),
            },
            Kind::Memcpy => SlotOp::Memcpy { at, from: bytes() },
            Kind::MemcpyRelease => SlotOp::MemcpyRelease { at, from: bytes() },
            Kind::Add => SlotOp::Add {
                at,
                size: n,
                count: arg as i64,
            },
            Kind::AddRelease => SlotOp::AddRelease {
                at,
                size: n,
                count: arg as i64,
            },
            Kind::Or => SlotOp::Or {
                at,
                size: n,
                mask: arg,
            },
            Kind::And => SlotOp::And {
                at,
                size: n,
                mask: arg,
            },
            Kind::Xor => SlotOp::Xor {
                at,
                size: n,
                mask: arg,
            },
            Kind::LShift => SlotOp::LShift {
                at,
                size: n,
                bits: arg as u32,
            },
            Kind::RShift => SlotOp::RShift {
                at,
                size: n,
                bits: arg as u32,
            },
            Kind::Mb => SlotOp::Mb,
        }
    }
}

/// A decoded test case.
#[derive(Clone)]
pub struct Case {
    /// Slot mode ([`PerCpu::run_ops`]) or raw mode ([`Domain::run_ops`]).
    pub slot_mode: bool,
    /// The target: `Ok(pick)` for slot `pick % slots`, `Err(d)` for the
    /// out-of-range slot `slots + d`.
    pub target: Result<usize, usize>,
    /// The target memory before the vector: [`MEM_LEN`] or [`SLOT_LEN`] bytes.
    pub init: Vec<u8>,
    /// The caller's bytes in slot mode ([`SRC_LEN`]); empty in raw mode.
    pub src: Vec<u8>,
    pub ops: Vec<MOp>,
}

/// Bytes in short: length, the first 16, and an FNV-1a hash of all.
fn summary(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let head = &bytes[..bytes.len().min(16)];
    format!("{} bytes {head:02x?}.. fnv {hash:016x}", bytes.len())
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("slot_mode", &self.slot_mode)
            .field("target", &self.target)
            .field("init", &summary(&self.init))
            .field("src", &summary(&self.src))
            .field("ops", &self.ops)
            .finish()
    }
}

impl Case {
    /// The target slot, of `slots`.
    pub fn cpu(&self, slots: usize) -> usize {
        match self.target {
            Ok(pick) => pick % slots,
            Err(d) => slots + d,
        }
    }
}

/// Reads bytes, then zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> usize {
        usize::from(u16::from_le_bytes([self.u8(), self.u8()]))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(core::array::from_fn(|_| self.u8()))
    }
    /// True one time in `n`.
    fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }
    /// A number in `0..=max`.
    fn upto(&mut self, max: usize) -> usize {
        let r = if max < 256 {
            usize::from(self.u8())
        } else {
            self.u16()
        };
        r % (max + 1)
    }
}

/// Memory of `len` bytes: a repeating pattern (period 1 to 8, so that
/// compares often find equal bytes) with a few bytes changed.
fn memory(input: &mut Input<'_>, len: usize, pattern: &[u8]) -> Vec<u8> {
    let mut m: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
    for _ in 0..input.u8() % 8 {
        let at = input.upto(len - 1);
        m[at] = input.u8();
    }
    m
}

fn pattern(input: &mut Input<'_>) -> Vec<u8> {
    let period = 1 + usize::from(input.u8() % 8);
    (0..period).map(|_| input.u8()).collect()
}

/// An offset for `n` bytes in a `space`-byte buffer, at the same place in the
/// pattern as `near` half the time (so compares of untouched bytes succeed).
fn offset(
    input: &mut Input<'_>,
    space: usize,
    n: usize,
    near: Option<usize>,
    period: usize,
) -> usize {
    let top = space - n;
    let o = input.upto(top);
    match near {
        Some(x) if input.u8() & 1 == 0 => {
            let o = o - o % period + x % period;
            if o > top {
                o.saturating_sub(period).min(top)
            } else {
                o
            }
        }
        _ => o,
    }
}

/// Decodes any bytes into a case (see the module docs).
pub fn decode(bytes: &[u8], slot_mode: bool) -> Case {
    let mut input = Input(bytes);
    let target = if input.one_in(32) {
        Err(usize::from(input.u8() % 3))
    } else {
        Ok(usize::from(input.u8()))
    };
    // A wild case draws everything from the full ranges; a tame one mostly
    // from the valid ones (with a rare slip), so that long vectors are often
    // accepted and reach their compares.
    let wild = input.one_in(4);
    let count = if wild {
        input.upto(MAX_DECODED_OPS)
    } else {
        input.upto(MAX_OPS)
    };
    let pat = pattern(&mut input);
    let period = pat.len();
    let (init, src) = if slot_mode {
        let init = memory(&mut input, SLOT_LEN, &pat);
        let src_pat = if input.one_in(2) {
            pat.clone()
        } else {
            pattern(&mut input)
        };
        (init, memory(&mut input, SRC_LEN, &src_pat))
    } else {
        (memory(&mut input, MEM_LEN, &pat), Vec::new())
    };
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let w = wild || input.one_in(64);
        let kind = KINDS[usize::from(input.u8()) % KINDS.len()];
        let n = if kind.takes_len() {
            match input.u8() % 8 {
                0..=3 => input.upto(16),
                4 => MAX_LEN,
                5 if w => MAX_LEN + 1,
                _ if w => input.upto(MAX_DECODED_LEN),
                _ => input.upto(MAX_LEN),
            }
        } else if kind.takes_size() {
            if w {
                input.upto(9)
            } else {
                [1, 2, 4, 8][usize::from(input.u8() % 4)]
            }
        } else {
            0
        };
        let arg = if kind.is_shift() {
            if w || n == 0 || n > 8 {
                input.upto(70) as u64
            } else {
                input.upto(8 * n - 1) as u64
            }
        } else if input.one_in(2) {
            // small, either sign
            i64::from(input.u8() as i8) as u64
        } else {
            input.u64()
        };
        let valid_n = if kind.takes_len() {
            n <= MAX_LEN
        } else {
            [0, 1, 2, 4, 8].contains(&n) // Mb: 0
        };
        let (x, y) = if kind == Kind::Mb {
            (None, None)
        } else if slot_mode {
            let fit = SLOT_LEN.saturating_sub(n);
            let at = match input.u8() % 32 {
                0 if w => usize::MAX - usize::from(input.u8() % 8),
                1 => fit,
                2 if w => fit + 1,
                3 if w => input.upto(SLOT_LEN + 64),
                _ => input.upto(fit),
            };
            let y = kind
                .takes_len()
                .then(|| offset(&mut input, SRC_LEN, n, Some(at), period));
            (Some(at), y)
        } else {
            let null = |input: &mut Input<'_>| w && input.one_in(8) || input.one_in(128);
            let (x, y) = if !valid_n {
                // Never dereferenced: anywhere in (or one past) the buffer.
                (input.upto(MEM_LEN), input.upto(MEM_LEN))
            } else if matches!(kind, Kind::Memcpy | Kind::MemcpyRelease) {
                // Disjoint: dst and src in different halves.
                let half = MEM_LEN / 2;
                let (d, s) = if input.one_in(2) {
                    (0, half)
                } else {
                    (half, 0)
                };
                let dst = d + offset(&mut input, half, n, None, period);
                let src = s + offset(&mut input, half, n, Some(dst), period);
                (dst, src)
            } else {
                let x = offset(&mut input, MEM_LEN, n, None, period);
                (x, offset(&mut input, MEM_LEN, n, Some(x), period))
            };
            let x = (!null(&mut input)).then_some(x);
            let y = (kind.takes_len() && !null(&mut input)).then_some(y);
            (x, y)
        };
        ops.push(MOp { kind, x, y, n, arg });
    }
    Case {
        slot_mode,
        target,
        init,
        src,
        ops,
    }
}

/// What a vector should do to `mem` (the target memory: the raw buffer, or
/// the slot's value) on slot `cpu` of `slots`, with `src` the caller's bytes
/// in slot mode; written independently of the library.
pub fn model(
    ops: &[MOp],
    slot_mode: bool,
    cpu: usize,
    slots: usize,
    mem: &mut [u8],
    src: &[u8],
) -> Result<(), OpError> {
    // The checks, in the documented order.
    if ops.len() > MAX_OPS {
        return Err(OpError::TooManyOps { count: ops.len() });
    }
    if cpu >= slots {
        return Err(OpError::CpuOutOfRange { cpu, slots });
    }
    for (i, op) in ops.iter().enumerate() {
        if op.kind.takes_len() && op.n > MAX_LEN {
            return Err(OpError::TooLong { op: i, len: op.n });
        }
        if op.kind.takes_size() && !matches!(op.n, 1 | 2 | 4 | 8) {
            return Err(OpError::BadSize { op: i, size: op.n });
        }
        if op.kind.is_shift() && op.arg >= 8 * op.n as u64 {
            return Err(OpError::ShiftTooWide {
                op: i,
                bits: op.arg as u32,
                size: op.n,
            });
        }
        if op.kind == Kind::Mb {
            continue;
        }
        if slot_mode {
            let at = op.x.unwrap();
            if at.checked_add(op.n).is_none_or(|end| end > mem.len()) {
                return Err(OpError::OutOfBounds {
                    op: i,
                    at,
                    end: at.saturating_add(op.n),
                    slot_size: mem.len(),
                });
            }
        } else if op.x.is_none() || (op.kind.takes_len() && op.y.is_none()) {
            return Err(OpError::NullPointer { op: i });
        }
    }
    // The operations, on bytes.
    for (i, op) in ops.iter().enumerate() {
        let (x, n) = (op.x.unwrap_or(0), op.n);
        match op.kind {
            Kind::CompareEq | Kind::CompareNe => {
                let y = op.y.unwrap();
                let other = if slot_mode {
                    &src[y..y + n]
                } else {
                    &mem[y..y + n]
                };
                let equal = mem[x..x + n] == *other;
                if equal != (op.kind == Kind::CompareEq) {
                    return Err(OpError::CompareFailed { op: i });
                }
            }
            Kind::Memcpy | Kind::MemcpyRelease => {
                let y = op.y.unwrap();
                if slot_mode {
                    mem[x..x + n].copy_from_slice(&src[y..y + n]);
                } else {
                    mem.copy_within(y..y + n, x);
                }
            }
            Kind::Mb => {}
            kind => integer(kind, &mut mem[x..x + n], op.arg),
        }
    }
    Ok(())
}

/// An integer operation on `bytes` (1, 2, 4 or 8 of them, native endian), with
/// Rust's own integer types.
pub fn integer(kind: Kind, bytes: &mut [u8], arg: u64) {
    macro_rules! typed {
        ($t:ty) => {{
            let v = <$t>::from_ne_bytes(bytes.try_into().unwrap());
            let r: $t = match kind {
                Kind::Add | Kind::AddRelease => v.wrapping_add(arg as $t),
                Kind::Or => v | arg as $t,
                Kind::And => v & arg as $t,
                Kind::Xor => v ^ arg as $t,
                Kind::LShift => v << arg,
                Kind::RShift => v >> arg,
                _ => unreachable!("{kind:?} is not an integer operation"),
            };
            bytes.copy_from_slice(&r.to_ne_bytes());
        }};
    }
    match bytes.len() {
        1 => typed!(u8),
        2 => typed!(u16),
        4 => typed!(u32),
        8 => typed!(u64),
        n => unreachable!("{n}-byte operand"),
    }
}

/// What happened to a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ran,
    CompareFailed,
    Refused(OpError),
}

/// Sets `cpu`'s slot to `bytes`.
pub fn write_slot(slots: &PerCpu<Slot>, cpu: usize, bytes: &[u8]) {
    let mut guard = slots.lock_on(cpu).unwrap();
    for (w, b) in guard.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_ne_bytes(b.try_into().unwrap());
    }
}

/// The bytes of `cpu`'s slot.
pub fn read_slot(slots: &PerCpu<Slot>, cpu: usize) -> Vec<u8> {
    slots
        .lock_on(cpu)
        .expect("a slot in range, not held")
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

/// Runs `case` through the library (on `domain` or `slots`) and the model;
/// panics on any difference, or if a refused vector wrote a byte.
pub fn check(case: &Case, domain: &Domain, slots: &PerCpu<Slot>) -> Outcome {
    let mut want = case.init.clone();
    let (got, after) = if case.slot_mode {
        let cpu = case.cpu(slots.cpus());
        let probe = cpu.min(slots.cpus() - 1);
        write_slot(slots, probe, &case.init);
        let ops: Vec<SlotOp<'_>> = case.ops.iter().map(|op| op.slot(&case.src)).collect();
        let got = slots.run_ops(cpu, &ops);
        let expect = model(&case.ops, true, cpu, slots.cpus(), &mut want, &case.src);
        assert_eq!(got, expect, "result of {case:?}");
        (got, read_slot(slots, probe))
    } else {
        let cpu = case.cpu(domain.cpus());
        let mut mem = case.init.clone();
        let base = mem.as_mut_ptr();
        let ops: Vec<Op> = case.ops.iter().map(|op| op.raw(base)).collect();
        // SAFETY: every pointer of an operation that passes the checks lies
        // in `mem` with its length (the decoder keeps them there), a copy's
        // ends lie in different halves, and `mem` is this case's alone, used
        // only through `domain` until the call returns.
        let got = unsafe { domain.run_ops(cpu, &ops) };
        let expect = model(&case.ops, false, cpu, domain.cpus(), &mut want, &[]);
        assert_eq!(got, expect, "result of {case:?}");
        (got, mem)
    };
    let outcome = match got {
        Ok(()) => Outcome::Ran,
        Err(OpError::CompareFailed { .. }) => Outcome::CompareFailed,
        Err(e) => Outcome::Refused(e),
    };
    if let Outcome::Refused(e) = outcome {
        assert!(after == case.init, "refused with {e} but wrote: {case:?}");
    }
    if let Some(at) = (0..after.len()).find(|&i| after[i] != want[i]) {
        panic!(
            "byte {at} is {:#04x}, the model says {:#04x}, after {got:?} of {case:?}",
            after[at], want[at]
        );
    }
    outcome
}
