//! Differential tests of the operation shapes: the rseq engine against the
//! fenced engine, on random inputs.
//!
//! What is proven, for every shape of [`Shape`], both [`Order`]s and both
//! [`Index`] modes:
//!
//! - **`section` = `apply`** (x86_64 rseq engine only): on a random arena,
//!   [`arch::section`] run on a fake `struct rseq` whose index field (`cpu_id`
//!   or `mm_cid`) holds the slot's free fence value, and whose *other* index
//!   field does not, returns `Committed` exactly where [`Shape::apply`]
//!   returns `Ok` and `CompareFailed` exactly where it returns
//!   `Err(CompareFailed)`; both leave the same bytes in the arena (the popped
//!   value included) and the section leaves `rseq_cs` armed with a descriptor
//!   (nothing clears it: the kernel does, lazily). The fake area
//!   is not registered with the kernel, so the kernel never aborts these
//!   sections: the run is deterministic. Pointer operands point into the
//!   arena, some arena words hold arena addresses (list heads, the pointer of
//!   `add_load_add_store`) with small, negative (wrapping) or arbitrary
//!   aligned offsets, operands may alias, and compared values equal the
//!   current word half of the time.
//! - **abort branches** (x86_64): with the slot's fence held the section
//!   returns `Fenced`; with the index field not the slot's (even if the other
//!   index field is) it returns `Aborted`; either way nothing in the arena
//!   changes.
//! - **`Domain` = `apply`** (every engine, the generic fenced-only one
//!   included): the public operations on the calling thread's slot (a
//!   section, or fenced after aborts) and on another slot (fenced) give the
//!   model's result and memory; with `cpu_id` indexing on a pinned thread,
//!   `Domain::stats` counts each remote operation as fenced, without aborts.
//! - **`perform`'s policy**: a compare that fails is returned as is, not
//!   retried and not sent to the fenced path (which happens only after
//!   [`RSEQ_ATTEMPTS`] aborts, or when the thread has no sections, or for
//!   another slot); `Order::Release` and `Order::Relaxed` leave the same
//!   memory and result, locally and remotely.
//!
//! Every run uses one arena at a fixed address, reset to the same initial
//! image before each engine runs, so arena words holding arena addresses mean
//! the same thing for both. Failures are not persisted to a regressions file
//! (proptest prints the minimal failing case instead).
#![allow(unsafe_code)]

use core::ptr::addr_of_mut;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::rseq::registration;
use crate::shape::driver::Slots;
use crate::shape::Shape;
use crate::shape::{CompareFailed, Order};
use crate::structures::domain::Domain;
use crate::Index;
use crate::PathStats;
use crate::RSEQ_ATTEMPTS;

/// Words in an arena: the operands of the word shapes.
const WORDS: usize = 32;
/// Bytes in an arena's copy area (`cbne_memcpy_store`).
const BYTES: usize = 256;
/// The longest copy generated; two such ranges fit in the copy area.
const MAX_COPY: usize = 96;

/// An arena's contents: the words, the copy area, and the word a list pop
/// loads the popped head into.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Image {
    words: [usize; WORDS],
    bytes: [u8; BYTES],
    load: usize,
}

/// One heap arena at a fixed address; all pointers of a case are derived
/// from its raw pointer.
struct Arena(*mut Image);

impl Arena {
    fn new() -> Arena {
        Arena(Box::into_raw(Box::new(Image {
            words: [0; WORDS],
            bytes: [0; BYTES],
            load: 0,
        })))
    }

    /// The address of word `i`, as an integer (what arena words hold).
    fn addr(&self, i: usize) -> usize {
        self.word(i) as usize
    }

    fn word(&self, i: usize) -> *mut usize {
        assert!(i < WORDS);
        // SAFETY: in bounds of the live allocation; no reference is created.
        unsafe { addr_of_mut!((*self.0).words).cast::<usize>().add(i) }
    }

    fn byte(&self, i: usize) -> *mut u8 {
        assert!(i <= BYTES);
        // SAFETY: in bounds (or one past the end) of the live allocation.
        unsafe { addr_of_mut!((*self.0).bytes).cast::<u8>().add(i) }
    }

    fn load(&self) -> *mut usize {
        // SAFETY: a field of the live allocation.
        unsafe { addr_of_mut!((*self.0).load) }
    }

    fn reset(&self, image: &Image) {
        // SAFETY: the allocation is live and no engine runs on it now.
        unsafe { self.0.write(*image) }
    }

    fn snapshot(&self) -> Image {
        // SAFETY: as in `reset`.
        unsafe { self.0.read() }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `new`, freed once.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// An arena word before the arena exists.
#[derive(Debug, Clone, Copy)]
enum Word {
    /// A plain value.
    Val(usize),
    /// The arena's word-0 address plus this many bytes (wrapping).
    Addr(usize),
}

/// A compared value: the word's initial value, or an arbitrary one (which
/// is almost never the word's).
#[derive(Debug, Clone, Copy)]
enum Expect {
    Current,
    Value(usize),
}

/// An operation on arena offsets (word indexes, byte offsets in the copy
/// area); [`Case::materialise`] turns it into a [`Shape`].
#[derive(Debug, Clone, Copy)]
enum Op {
    CbneStore {
        v: usize,
        expect: Expect,
        newv: usize,
    },
    AddStore {
        v: usize,
        count: usize,
    },
    /// List pop. `empty`: `*v` is `expectnot` (the pop fails); else `*v` is
    /// an address such that `*v + offset` is word `next`.
    Pop {
        v: usize,
        empty: bool,
        next: usize,
        offset: usize,
        expectnot: usize,
    },
    CbneStoreStore {
        v: usize,
        expect: Expect,
        v2: usize,
        newv2: usize,
        newv: usize,
    },
    CbneMemcpyStore {
        v: usize,
        expect: Expect,
        dst: usize,
        src: usize,
        len: usize,
        newv: usize,
    },
    CbneLoadCbneStore {
        v: usize,
        expect: Expect,
        v2: usize,
        expect2: Expect,
        newv: usize,
    },
    /// `*ptr` is an address such that `*ptr + offset` is word `target`.
    AddLoadAddStore {
        ptr: usize,
        target: usize,
        offset: usize,
        inc: usize,
    },
}

/// A random arena and an operation on it.
#[derive(Debug, Clone)]
struct Case {
    words: Vec<Word>,
    bytes: Vec<u8>,
    load: usize,
    op: Op,
}

impl Case {
    /// The initial image for `arena` (addresses resolved, the operation's
    /// pointer words set) and the shape on it.
    fn materialise(&self, arena: &Arena) -> (Image, Shape) {
        let base = arena.addr(0);
        let mut image = Image {
            words: [0; WORDS],
            bytes: [0; BYTES],
            load: self.load,
        };
        for (w, init) in image.words.iter_mut().zip(&self.words) {
            *w = match *init {
                Word::Val(x) => x,
                Word::Addr(off) => base.wrapping_add(off),
            };
        }
        image.bytes.copy_from_slice(&self.bytes);
        // An address whose `+ offset` is word `i`.
        let before = |i: usize, offset: usize| arena.addr(i).wrapping_sub(offset);
        match self.op {
            Op::Pop {
                v,
                empty,
                next,
                offset,
                expectnot,
            } => {
                image.words[v] = if empty {
                    expectnot
                } else {
                    before(next, offset)
                };
            }
            Op::AddLoadAddStore {
                ptr,
                target,
                offset,
                ..
            } => image.words[ptr] = before(target, offset),
            _ => {}
        }
        let expected = |e: Expect, i: usize| match e {
            Expect::Current => image.words[i],
            Expect::Value(x) => x,
        };
        let shape = match self.op {
            Op::CbneStore { v, expect, newv } => Shape::CbneStore {
                vo: arena.word(v).expose_provenance(),
                expect: expected(expect, v),
                newv,
            },
            Op::AddStore { v, count } => Shape::AddStore {
                vo: arena.word(v).expose_provenance(),
                count,
            },
            Op::Pop {
                v,
                offset,
                expectnot,
                ..
            } => Shape::CbeqStoreAddLoadStore {
                vo: arena.word(v).expose_provenance(),
                expectnot,
                offset,
                load: arena.load(),
            },
            Op::CbneStoreStore {
                v,
                expect,
                v2,
                newv2,
                newv,
            } => Shape::CbneStoreStore {
                vo: arena.word(v).expose_provenance(),
                expect: expected(expect, v),
                v2: arena.word(v2),
                newv2,
                newv,
            },
            Op::CbneMemcpyStore {
                v,
                expect,
                dst,
                src,
                len,
                newv,
            } => Shape::CbneMemcpyStore {
                vo: arena.word(v).expose_provenance(),
                expect: expected(expect, v),
                dst: arena.byte(dst),
                src: arena.byte(src),
                len,
                newv,
            },
            Op::CbneLoadCbneStore {
                v,
                expect,
                v2,
                expect2,
                newv,
            } => Shape::CbneLoadCbneStore {
                vo: arena.word(v).expose_provenance(),
                expect: expected(expect, v),
                v2: arena.word(v2),
                expect2: expected(expect2, v2),
                newv,
            },
            Op::AddLoadAddStore {
                ptr, offset, inc, ..
            } => Shape::AddLoadAddStore {
                ptr: arena.word(ptr),
                offset,
                inc,
            },
        };
        (image, shape)
    }
}

fn word_index() -> core::ops::Range<usize> {
    0..WORDS
}

fn word() -> impl Strategy<Value = Word> {
    prop_oneof![
        any::<usize>().prop_map(Word::Val),
        (0..16usize).prop_map(Word::Val),
        word_index().prop_map(|t| Word::Addr(8 * t)),
    ]
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        Just(Expect::Current),
        any::<usize>().prop_map(Expect::Value)
    ]
}

/// A byte offset that keeps a pointer word's target aligned: small, negative
/// (wrapping), or anywhere in the address space.
fn offset() -> impl Strategy<Value = usize> {
    prop_oneof![
        (-4isize..=8).prop_map(|k| (k * 8) as usize),
        any::<usize>().prop_map(|x| x & !7),
    ]
}

/// Non-overlapping `(dst, src, len)` in the copy area, at any alignment.
fn copy_ranges() -> impl Strategy<Value = (usize, usize, usize)> {
    (0..=MAX_COPY)
        .prop_flat_map(|len| {
            let room = BYTES - 2 * len;
            (Just(len), 0..=room)
                .prop_flat_map(move |(len, x)| (Just(len), Just(x), 0..=room - x, any::<bool>()))
        })
        .prop_map(|(len, x, gap, swap)| {
            let (a, b) = (x, x + len + gap);
            if swap {
                (b, a, len)
            } else {
                (a, b, len)
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    let i = word_index;
    prop_oneof![
        (i(), expect(), any::<usize>()).prop_map(|(v, expect, newv)| Op::CbneStore {
            v,
            expect,
            newv
        }),
        (i(), any::<usize>()).prop_map(|(v, count)| Op::AddStore { v, count }),
        (i(), any::<bool>(), i(), offset(), any::<usize>()).prop_map(
            |(v, empty, next, offset, expectnot)| Op::Pop {
                v,
                empty,
                next,
                offset,
                expectnot
            }
        ),
        (i(), expect(), i(), any::<usize>(), any::<usize>()).prop_map(
            |(v, expect, v2, newv2, newv)| Op::CbneStoreStore {
                v,
                expect,
                v2,
                newv2,
                newv
            }
        ),
        (i(), expect(), copy_ranges(), any::<usize>()).prop_map(
            |(v, expect, (dst, src, len), newv)| Op::CbneMemcpyStore {
                v,
                expect,
                dst,
                src,
                len,
                newv
            }
        ),
        (i(), expect(), i(), expect(), any::<usize>()).prop_map(
            |(v, expect, v2, expect2, newv)| Op::CbneLoadCbneStore {
                v,
                expect,
                v2,
                expect2,
                newv
            }
        ),
        (i(), i(), offset(), any::<usize>()).prop_map(|(ptr, target, offset, inc)| {
            Op::AddLoadAddStore {
                ptr,
                target,
                offset,
                inc,
            }
        }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(word(), WORDS),
        proptest::collection::vec(any::<u8>(), BYTES),
        any::<usize>(),
        op(),
    )
        .prop_map(|(words, bytes, load, op)| Case {
            words,
            bytes,
            load,
            op,
        })
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![Just(Order::Relaxed), Just(Order::Release)]
}

/// Runs the model on the arena from `initial`: its result and the memory it
/// leaves.
///
/// # Safety
///
/// `shape` was materialised on `arena` (its pointers are the arena's).
unsafe fn model(
    arena: &Arena,
    initial: &Image,
    shape: &Shape,
    order: Order,
) -> (Result<(), CompareFailed>, Image) {
    arena.reset(initial);
    // SAFETY: the pointers are the arena's (caller), and this thread has the
    // arena to itself.
    let r = unsafe { shape.apply(core::ptr::null(), order) };
    (r, arena.snapshot())
}

/// Proptest settings: `cases` cases, no regressions file.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The differential and abort-branch tests of the x86_64 sections, on a fake
/// area.
#[cfg(cpulocal_rseq)]
mod rseq {
    use super::*;
    use crate::fenced::fence::{Fence, HELD};
    use crate::rseq::abi::Rseq;
    use crate::rseq::arch::{self, Outcome};

    fn index() -> impl Strategy<Value = Index> {
        prop_oneof![Just(Index::Cpu), Just(Index::MmCid)]
    }

    /// A fake, unregistered area in which the `by` field holds `slot` and
    /// every other index field `other`.
    fn fake_area(by: Index, slot: u32, other: u32) -> Box<Rseq> {
        let mut area = Box::new(Rseq::unregistered());
        let (cpu, cid) = match by {
            Index::Cpu => (slot, other),
            Index::MmCid => (other, slot),
            Index::Node => unreachable!("no section runs on node slots"),
        };
        area.cpu_id_start = cpu;
        area.cpu_id = cpu;
        area.mm_cid = cid;
        area
    }

    /// Runs the section on the arena from `initial`: its outcome and the
    /// memory it leaves; checks that it armed `rseq_cs` with a descriptor and
    /// left the rest of the area alone.
    ///
    /// # Safety
    ///
    /// `shape` was materialised on `arena`.
    unsafe fn section(
        arena: &Arena,
        initial: &Image,
        shape: &Shape,
        area: &mut Rseq,
        by: Index,
        fence: &Fence,
        order: Order,
    ) -> Result<(Outcome, Image), TestCaseError> {
        let before = (area.cpu_id_start, area.cpu_id, area.mm_cid, area.node_id);
        area.rseq_cs = 0xdead_beef; // a section arms over whatever is there
        arena.reset(initial);
        let shape = shape.rebased(core::ptr::null(), fence);
        // SAFETY: a live fake area, with `by`'s field at that offset; the
        // slot's live fence; the shape's pointers are the arena's (caller),
        // its commit word counted from that fence.
        let out = unsafe { arch::section(area, by.field_offset(), fence, &shape, order) };
        let after = arena.snapshot();
        // Armed with a descriptor of this binary, which stays so: nothing
        // clears `rseq_cs` after a section.
        prop_assert!(
            crate::rseq::arch::descriptor_addresses().contains(&area.rseq_cs),
            "rseq_cs not armed with a listed descriptor after {:?}: {:#x}",
            out,
            area.rseq_cs
        );
        let cs = crate::rseq::arch::armed(area);
        prop_assert_eq!((cs.version, cs.flags), (0, 0));
        // The kernel's own validity check: abort_ip outside the section.
        prop_assert!(
            cs.post_commit_offset > 0
                && cs.abort_ip.wrapping_sub(cs.start_ip) >= cs.post_commit_offset
        );
        prop_assert_eq!(
            before,
            (area.cpu_id_start, area.cpu_id, area.mm_cid, area.node_id)
        );
        Ok((out, after))
    }

    proptest! {
        #![proptest_config(config(1024))]

        /// `arch::section` and `Shape::apply` agree on result and memory.
        #[test]
        fn section_matches_apply(
            case in case(),
            order in order(),
            by in index(),
            slot in 0u32..4096,
        ) {
            let arena = Arena::new();
            let (initial, shape) = case.materialise(&arena);
            let fence = Fence::new(slot as usize);
            let mut area = fake_area(by, slot, slot + 1);
            // SAFETY: materialised on `arena`.
            let (out, fast) = unsafe { section(&arena, &initial, &shape, &mut area, by, &fence, order) }?;
            // SAFETY: as above.
            let (want, slow) = unsafe { model(&arena, &initial, &shape, order) };
            let got = match out {
                Outcome::Committed => Ok(()),
                Outcome::CompareFailed => Err(CompareFailed),
                other => {
                    return Err(TestCaseError::fail(format!(
                        "section ended {other:?} on a free fence and the right index: {shape:?}"
                    )))
                }
            };
            prop_assert_eq!(got, want, "results differ for {:?}", shape);
            prop_assert_eq!(fast.load, slow.load, "popped values differ for {:?}", shape);
            prop_assert_eq!(fast, slow, "memory differs for {:?}", shape);
            prop_assert!(!fence.is_held());
        }

        /// A held fence, or an index field that is not the slot's, leaves the
        /// section before it touches anything.
        #[test]
        fn section_abort_branches(
            case in case(),
            order in order(),
            by in index(),
            slot in 0u32..4096,
            holder in 0u32..(1 << 31),
        ) {
            let arena = Arena::new();
            let (initial, shape) = case.materialise(&arena);
            let fence = Fence::new(slot as usize);

            // The slot's CPU or cid, but the fence is held.
            let mut area = fake_area(by, slot, slot + 1);
            fence.set_for_test(HELD | holder);
            // SAFETY: materialised on `arena`.
            let (out, after) = unsafe { section(&arena, &initial, &shape, &mut area, by, &fence, order) }?;
            prop_assert_eq!(out, Outcome::Fenced, "{:?}", shape);
            prop_assert_eq!(after, initial, "a fenced section wrote: {:?}", shape);
            fence.set_for_test(slot);

            // Another CPU or cid, though the other index field is the slot's:
            // the section reads the field it is given.
            let mut area = fake_area(by, slot + 1, slot);
            // SAFETY: as above.
            let (out, after) = unsafe { section(&arena, &initial, &shape, &mut area, by, &fence, order) }?;
            prop_assert_eq!(out, Outcome::Aborted, "{:?}", shape);
            prop_assert_eq!(after, initial, "an aborted section wrote: {:?}", shape);

            // Not registered (cpu_id and mm_cid -1), as in a fresh thread.
            let mut area = Box::new(Rseq::unregistered());
            // SAFETY: as above.
            let (out, after) = unsafe { section(&arena, &initial, &shape, &mut area, by, &fence, order) }?;
            prop_assert_eq!(out, Outcome::Aborted, "{:?}", shape);
            prop_assert_eq!(after, initial, "an aborted section wrote: {:?}", shape);
        }
    }
}

/// Runs `test` on `cases` random cases, on a new thread pinned to the CPU it
/// starts on (when the kernel allows: the argument says whether it did), so
/// that `cpu_id` cannot change under a test that counts fenced operations.
fn on_pinned_thread<S>(
    cases: u32,
    strategy: S,
    test: impl Fn(bool, S::Value) -> Result<(), TestCaseError> + Send + 'static,
) where
    S: Strategy + Send + 'static,
{
    let run = move || {
        let pinned = crate::rseq::sys::pin_to_current_cpu();
        let mut runner = TestRunner::new(config(cases));
        if let Err(e) = runner.run(&strategy, |v| test(pinned, v)) {
            panic!("{e}");
        }
    };
    if let Err(panic) = std::thread::spawn(run).join() {
        std::panic::resume_unwind(panic);
    }
}

/// Whether critical sections run on the calling thread.
fn sections_here() -> bool {
    registration::thread_state().1.is_none()
}

/// Runs `shape` through `domain`'s public operation on `slot`: its result and,
/// for a pop, the popped head.
///
/// # Safety
///
/// `shape` was materialised on an arena this thread has to itself.
unsafe fn via_domain(
    domain: &Domain,
    slot: usize,
    shape: &Shape,
    order: Order,
) -> (Result<(), CompareFailed>, Option<usize>) {
    // SAFETY: for every call, the arena's words are valid, aligned and
    // touched by no one else, and pointer words lead into the arena
    // (materialise: the caller's promise).
    unsafe {
        match *shape {
            Shape::CbneStore { vo, expect, newv } => {
                let v = Shape::word_at(core::ptr::null(), vo);
                (domain.cbne_store(slot, v, expect, newv, order), None)
            }
            Shape::AddStore { vo, count } => {
                let v = Shape::word_at(core::ptr::null(), vo);
                domain.add_store(slot, v, count as isize, order);
                (Ok(()), None)
            }
            Shape::CbeqStoreAddLoadStore {
                vo,
                expectnot,
                offset,
                ..
            } => {
                let popped = domain.cbeq_store_add_load_store(
                    slot,
                    Shape::word_at(core::ptr::null(), vo),
                    expectnot,
                    offset,
                );
                (popped.map(drop).ok_or(CompareFailed), popped)
            }
            Shape::CbneStoreStore {
                vo,
                expect,
                v2,
                newv2,
                newv,
            } => (
                domain.cbne_store_store(
                    slot,
                    Shape::word_at(core::ptr::null(), vo),
                    expect,
                    v2,
                    newv2,
                    newv,
                    order,
                ),
                None,
            ),
            Shape::CbneMemcpyStore {
                vo,
                expect,
                dst,
                src,
                len,
                newv,
            } => (
                domain.cbne_memcpy_store(
                    slot,
                    Shape::word_at(core::ptr::null(), vo),
                    expect,
                    dst,
                    src,
                    len,
                    newv,
                    order,
                ),
                None,
            ),
            Shape::CbneLoadCbneStore {
                vo,
                expect,
                v2,
                expect2,
                newv,
            } => (
                domain.cbne_load_cbne_store(
                    slot,
                    Shape::word_at(core::ptr::null(), vo),
                    expect,
                    v2,
                    expect2,
                    newv,
                    order,
                ),
                None,
            ),
            Shape::AddLoadAddStore { ptr, offset, inc } => {
                domain.add_load_add_store(slot, ptr, offset, inc as isize, order);
                (Ok(()), None)
            }
        }
    }
}

fn delta(after: PathStats, before: PathStats) -> PathStats {
    PathStats {
        retried: after.retried - before.retried,
        aborts: after.aborts - before.aborts,
        fenced: after.fenced - before.fenced,
    }
}

/// The stats of one operation on the calling thread's own slot, pinned, with
/// no other holder of its fence: sections that end in a commit or a failed
/// compare return at once, and only [`RSEQ_ATTEMPTS`] aborts (or a thread
/// without sections) send it to the fenced path.
fn check_local_policy(s: PathStats, sections: bool) -> Result<(), TestCaseError> {
    let limit = u64::from(RSEQ_ATTEMPTS);
    if !sections {
        prop_assert_eq!((s.fenced, s.aborts, s.retried), (1, 0, 0));
    } else {
        prop_assert!(s.aborts <= limit, "{:?}", s);
        prop_assert_eq!(s.fenced, u64::from(s.aborts == limit), "{:?}", s);
        prop_assert_eq!(
            s.retried,
            u64::from(s.aborts > 0 && s.aborts < limit),
            "{:?}",
            s
        );
    }
    Ok(())
}

/// The public `Domain` operations, on the thread's slot and on another, give
/// the model's results and memory, in both index modes.
#[test]
fn domain_matches_apply() {
    let domains = [Domain::new(Index::Cpu), Domain::new(Index::MmCid)];
    let strategy = (case(), order(), 0..domains.len());
    on_pinned_thread(512, strategy, move |pinned, (case, order, which)| {
        let domain = &domains[which];
        let sections = sections_here();
        let arena = Arena::new();
        let (initial, shape) = case.materialise(&arena);
        let here = domain.current();
        let remote = (here + 1) % domain.cpus();
        for slot in [here, remote] {
            arena.reset(&initial);
            let before = domain.stats();
            // SAFETY: materialised on `arena`, which is this thread's alone.
            let (got, popped) = unsafe { via_domain(domain, slot, &shape, order) };
            let s = delta(domain.stats(), before);
            let mut mem = arena.snapshot();
            // SAFETY: as above.
            let (want, mut model_mem) = unsafe { model(&arena, &initial, &shape, order) };
            prop_assert_eq!(got, want, "slot {} ({:?}): {:?}", slot, domain, shape);
            if let Shape::CbeqStoreAddLoadStore { .. } = shape {
                // The domain pops into a local of its own.
                prop_assert_eq!(popped, want.ok().map(|()| model_mem.load));
                model_mem.load = initial.load;
            }
            mem.load = initial.load;
            prop_assert_eq!(mem, model_mem, "slot {} ({:?}): {:?}", slot, domain, shape);
            prop_assert!(s.fenced <= 1, "{:?}", s);
            // With cpu_id indexing on a pinned thread the CPU cannot change;
            // a concurrency id can, whatever the affinity.
            if pinned && domain.index() == Index::Cpu {
                if slot == here {
                    check_local_policy(s, sections)?;
                } else {
                    prop_assert_eq!((s.fenced, s.aborts, s.retried), (1, 0, 0));
                }
            }
        }
        Ok(())
    });
}

/// `Slots::perform` directly: both orders leave the same memory and result as
/// the model, on the thread's CPU and another; its fenced-path policy holds.
#[test]
fn perform_orders_and_policy() {
    on_pinned_thread(384, case(), |pinned, case| {
        let sections = sections_here();
        let arena = Arena::new();
        let (initial, shape) = case.materialise(&arena);
        let cpus = crate::possible_cpus();
        let here = crate::cpu_start();
        let mut slots = vec![here];
        if cpus > 1 {
            slots.push((here + 1) % cpus);
        }
        for slot in slots {
            let mut seen = Vec::new();
            for order in [Order::Relaxed, Order::Release] {
                let array = Slots::new(Index::Cpu, |_| ());
                arena.reset(&initial);
                let at = array.on_inline(slot).expect("a possible CPU");
                let on_slot = shape.rebased(core::ptr::null(), &at.slot.fence);
                // SAFETY: materialised on `arena`, this thread's alone; the
                // fence is this slot's and no one else's.
                let r = unsafe {
                    array.perform(at, order, crate::shape::driver::Follow::Slot, |_| on_slot)
                };
                let fence = &array[slot].fence;
                let mem = arena.snapshot();
                // SAFETY: as above.
                let (want, model_mem) = unsafe { model(&arena, &initial, &shape, order) };
                prop_assert_eq!(r, want, "slot {} {:?}: {:?}", slot, order, shape);
                prop_assert_eq!(mem, model_mem, "slot {} {:?}: {:?}", slot, order, shape);
                if r.is_err() {
                    prop_assert_eq!(mem, initial, "a failed compare stored: {:?}", shape);
                }
                let s = array.stats();
                if !pinned {
                    // The thread may move to `slot`'s CPU: no exact counts.
                } else if slot == here {
                    check_local_policy(s, sections)?;
                } else {
                    prop_assert_eq!((s.fenced, s.aborts, s.retried), (1, 0, 0));
                }
                prop_assert!(!fence.is_held());
                seen.push((r, mem));
            }
            prop_assert_eq!(seen[0], seen[1], "Relaxed and Release differ: {:?}", shape);
        }
        Ok(())
    });
}
