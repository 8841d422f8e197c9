//! `PerCpuBuffer` and `PerCpuMemcpyBuffer`: items conserved under concurrency
//! (local push/pop, remote `pop_on`, `drain` storms, forced migrations, full
//! buffers), with every copied item checked for torn bytes; a full buffer
//! gives the item back; every boxed item dropped exactly once, including
//! items left on other CPUs' buffers; values of several sizes round-trip with
//! their exact bytes.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{pinned, tally, Bomb, Tracked};

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;

use cpulocal::{Error, Index, PathStats, PerCpuBuffer, PerCpuMemcpyBuffer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A `Copy` item whose every word is derived from `(id, generation)`, with a
/// checksum over them: a pop that copied part of one value and part of
/// another (or of an older generation of the same id) fails [`is_intact`].
#[derive(Clone, Copy)]
#[repr(C)]
struct Sealed<const N: usize> {
    id: u64,
    generation: u64,
    words: [u64; N],
    check: u64,
}

fn word(id: u64, generation: u64, i: usize) -> u64 {
    (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .rotate_left(i as u32 % 64)
        .wrapping_add(i as u64)
}

impl<const N: usize> Sealed<N> {
    fn new(id: u64, generation: u64) -> Self {
        let words = core::array::from_fn(|i| word(id, generation, i));
        let check = words
            .iter()
            .fold(id ^ generation, |a, &w| a.rotate_left(5) ^ w);
        Sealed {
            id,
            generation,
            words,
            check,
        }
    }

    fn is_intact(&self) -> bool {
        let fresh = Self::new(self.id, self.generation);
        fresh.check == self.check && fresh.words == self.words
    }
}

/// What the conservation harness needs from a buffer.
trait Buffer: Send + Sync + 'static {
    type Item: Send + 'static;
    fn push(&self, item: Self::Item) -> Result<(), Self::Item>;
    fn pop(&self) -> Option<Self::Item>;
    fn pop_on(&self, cpu: usize) -> Option<Self::Item>;
    fn drain(&self) -> Vec<Self::Item>;
    fn cpus(&self) -> usize;
    fn stats(&self) -> PathStats;
    fn id(item: &Self::Item) -> u64;
    /// Panics if the item's bytes are not those of a pushed value.
    fn check(item: &Self::Item);
    /// What a worker pushes back after popping `item`.
    fn renew(item: Self::Item) -> Self::Item;
}

impl Buffer for PerCpuBuffer<Box<Tracked>> {
    type Item = Box<Tracked>;
    fn push(&self, item: Box<Tracked>) -> Result<(), Box<Tracked>> {
        PerCpuBuffer::push(self, item)
    }
    fn pop(&self) -> Option<Box<Tracked>> {
        PerCpuBuffer::pop(self)
    }
    fn pop_on(&self, cpu: usize) -> Option<Box<Tracked>> {
        PerCpuBuffer::pop_on(self, cpu).unwrap()
    }
    fn drain(&self) -> Vec<Box<Tracked>> {
        PerCpuBuffer::drain(self).collect()
    }
    fn cpus(&self) -> usize {
        PerCpuBuffer::cpus(self)
    }
    fn stats(&self) -> PathStats {
        PerCpuBuffer::stats(self)
    }
    fn id(item: &Box<Tracked>) -> u64 {
        item.id
    }
    fn check(item: &Box<Tracked>) {
        assert_eq!(
            item.drops[item.id as usize].load(SeqCst),
            0,
            "popped item {} was already dropped",
            item.id
        );
    }
    fn renew(item: Box<Tracked>) -> Box<Tracked> {
        item
    }
}

/// The word buffer's harness for one `Word` type: push, pop and drain as
/// they are, `id` and `check` as given.
macro_rules! word_buffer {
    ($w:ty, |$i:ident| $id:expr, |$c:ident| $check:expr) => {
        impl Buffer for PerCpuBuffer<$w> {
            type Item = $w;
            fn push(&self, item: $w) -> Result<(), $w> {
                PerCpuBuffer::push(self, item)
            }
            fn pop(&self) -> Option<$w> {
                PerCpuBuffer::pop(self)
            }
            fn pop_on(&self, cpu: usize) -> Option<$w> {
                PerCpuBuffer::pop_on(self, cpu).unwrap()
            }
            fn drain(&self) -> Vec<$w> {
                PerCpuBuffer::drain(self).collect()
            }
            fn cpus(&self) -> usize {
                PerCpuBuffer::cpus(self)
            }
            fn stats(&self) -> PathStats {
                PerCpuBuffer::stats(self)
            }
            fn id($i: &$w) -> u64 {
                $id
            }
            fn check($c: &$w) {
                $check
            }
            fn renew(item: $w) -> $w {
                item
            }
        }
    };
}

word_buffer!(Arc<Tracked>, |item| item.id, |item| {
    assert_eq!(
        item.drops[item.id as usize].load(SeqCst),
        0,
        "a live item's value was dropped"
    );
    // The buffer holds a word per reference; the test holds one more per id
    // (`keep`): a popped Arc is never a second copy of a live one.
    assert!(Arc::strong_count(item) <= 2, "item {} duplicated", item.id);
});

word_buffer!(usize, |item| *item as u64, |item| {
    assert!(
        (*item as u64) < 1 << 40,
        "a word that was never pushed: {item:#x}"
    );
});

impl<const N: usize> Buffer for PerCpuMemcpyBuffer<Sealed<N>> {
    type Item = Sealed<N>;
    fn push(&self, item: Sealed<N>) -> Result<(), Sealed<N>> {
        PerCpuMemcpyBuffer::push(self, item)
    }
    fn pop(&self) -> Option<Sealed<N>> {
        PerCpuMemcpyBuffer::pop(self)
    }
    fn pop_on(&self, cpu: usize) -> Option<Sealed<N>> {
        PerCpuMemcpyBuffer::pop_on(self, cpu).unwrap()
    }
    fn drain(&self) -> Vec<Sealed<N>> {
        PerCpuMemcpyBuffer::drain(self).collect()
    }
    fn cpus(&self) -> usize {
        PerCpuMemcpyBuffer::cpus(self)
    }
    fn stats(&self) -> PathStats {
        PerCpuMemcpyBuffer::stats(self)
    }
    fn id(item: &Sealed<N>) -> u64 {
        item.id
    }
    fn check(item: &Sealed<N>) {
        assert!(
            item.is_intact(),
            "torn copy: item {} generation {} does not match its checksum",
            item.id,
            item.generation
        );
    }
    /// A new generation: the bytes of the entry it lands in change.
    fn renew(item: Sealed<N>) -> Sealed<N> {
        Sealed::new(item.id, item.generation + 1)
    }
}

/// Workers push and pop (locally and with `pop_on`), migrate, and hold what
/// a full buffer refused; a drainer empties every buffer in a loop, keeps a
/// few items parked and pushes the rest back. At the end every id is found
/// exactly once, intact, in the buffer or held by a thread.
fn conserved<B: Buffer>(buffer: B, items: Vec<B::Item>, rounds: u64) -> Vec<B::Item> {
    let n = items.len();
    let buffer = Arc::new(buffer);
    let cpus = common::allowed_cpus();
    let stop = Arc::new(AtomicBool::new(false));
    let seed = common::seed();
    let threads = 6 * cpulocal::possible_cpus();
    // Each worker starts with its share of the items.
    let mut shares: Vec<Vec<B::Item>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % threads].push(item);
    }
    let workers: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(w, mut stash)| {
            let (buffer, cpus) = (buffer.clone(), cpus.clone());
            let mut rng = SmallRng::seed_from_u64(seed ^ w as u64);
            thread::spawn(move || {
                let (mut pops, mut refused, mut empty) = (0u64, 0u64, 0u64);
                for round in 0..rounds {
                    if round % 4096 == 0 && cpus.len() > 1 {
                        // Forced migration.
                        common::pin_current(cpus[rng.random_range(0..cpus.len())]);
                    }
                    // Phases of mostly pushes and mostly pops: with more items
                    // than room, buffers fill up and run dry.
                    let filling = (round / 512) % 2 == 0;
                    let r = rng.random_range(0..16);
                    if (r < 14) == filling && !stash.is_empty() {
                        let item = B::renew(stash.pop().unwrap());
                        if let Err(back) = buffer.push(item) {
                            refused += 1;
                            stash.push(back);
                        }
                        continue;
                    }
                    let item = if r % 4 == 0 {
                        buffer.pop_on(rng.random_range(0..buffer.cpus()))
                    } else {
                        buffer.pop()
                    };
                    match item {
                        Some(item) => {
                            B::check(&item);
                            pops += 1;
                            stash.push(item);
                        }
                        None => empty += 1,
                    }
                }
                (stash, pops, refused, empty)
            })
        })
        .collect();
    let drainer = {
        let (buffer, stop) = (buffer.clone(), stop.clone());
        thread::spawn(move || {
            let (mut drains, mut parked) = (0u64, Vec::new());
            while !stop.load(SeqCst) {
                let taken = buffer.drain();
                drains += 1;
                // Give most back at once (so workers keep finding items), keep
                // a few parked until the end; what a full buffer refuses stays
                // parked too.
                for (i, item) in taken.into_iter().enumerate() {
                    B::check(&item);
                    if i % 97 == 0 && parked.len() < 10 {
                        parked.push(item);
                    } else if let Err(back) = buffer.push(item) {
                        parked.push(back);
                    }
                }
                // Parked items beyond a few go back when there is room.
                while parked.len() > 10 {
                    match buffer.push(parked.pop().unwrap()) {
                        Ok(()) => {}
                        Err(back) => {
                            parked.push(back);
                            break;
                        }
                    }
                }
                thread::yield_now();
            }
            (parked, drains)
        })
    };
    let (mut pops, mut refused, mut empty) = (0, 0, 0);
    let mut held = Vec::new();
    for w in workers {
        let (mut stash, p, r, e) = w.join().unwrap();
        held.append(&mut stash);
        (pops, refused, empty) = (pops + p, refused + r, empty + e);
    }
    stop.store(true, SeqCst);
    let (mut parked, drains) = drainer.join().unwrap();
    held.append(&mut parked);

    // Every item is in the buffer or held, exactly once, and intact.
    let mut all = buffer.drain();
    let in_buffer = all.len();
    all.append(&mut held);
    let mut seen = vec![0u32; n];
    for item in &all {
        B::check(item);
        seen[B::id(item) as usize] += 1;
    }
    let missing = seen.iter().filter(|&&k| k == 0).count();
    let doubled = seen.iter().filter(|&&k| k > 1).count();
    eprintln!(
        "{}: {pops} pops, {refused} pushes refused (full), {empty} pops empty, {drains} drains, \
         {in_buffer} left in the buffer, stats {:?}: {missing} missing, {doubled} doubled",
        std::any::type_name::<B>(),
        buffer.stats()
    );
    assert_eq!((missing, doubled), (0, 0), "items lost or duplicated");
    all
}

/// Capacity per slot of the conservation tests.
const CAPACITY: usize = 32;

/// Items per unit of room in the conservation tests. Descheduled workers
/// hold items in their stashes; with this many, the running ones still have
/// more than fits, so pushes onto full buffers are common.
const ITEMS_PER_ROOM: usize = 8;

fn boxed_conserved(by: Index) {
    let buffer = PerCpuBuffer::<Box<Tracked>>::with_index(by, CAPACITY);
    let n = ITEMS_PER_ROOM * CAPACITY * buffer.cpus();
    let drops = tally(n);
    let items = (0..n as u64)
        .map(|id| {
            Box::new(Tracked {
                id,
                drops: drops.clone(),
            })
        })
        .collect();
    let all = conserved(buffer, items, 200_000);
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 0),
        "an item was dropped while in use"
    );
    drop(all);
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 1),
        "each item dropped once"
    );
}

/// Shared pointers moved as words: every `Arc` is found once, with the
/// test's own reference its only other one, and each value dropped once.
fn arc_conserved(by: Index) {
    let buffer = PerCpuBuffer::<Arc<Tracked>>::with_index(by, CAPACITY);
    let n = ITEMS_PER_ROOM * CAPACITY * buffer.cpus();
    let drops = tally(n);
    let keep: Vec<Arc<Tracked>> = (0..n as u64)
        .map(|id| {
            Arc::new(Tracked {
                id,
                drops: drops.clone(),
            })
        })
        .collect();
    let all = conserved(buffer, keep.to_vec(), 100_000);
    assert_eq!(all.len(), n);
    for item in &all {
        assert!(
            Arc::ptr_eq(item, &keep[item.id as usize]),
            "item {} is not its own Arc",
            item.id
        );
    }
    drop(all);
    assert!(
        keep.iter().all(|a| Arc::strong_count(a) == 1),
        "a reference leaked or was dropped twice"
    );
    drop(keep);
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 1),
        "each value dropped once"
    );
}

/// Plain words: each pushed value is found once.
fn usize_conserved(by: Index) {
    let buffer = PerCpuBuffer::<usize>::with_index(by, CAPACITY);
    let n = ITEMS_PER_ROOM * CAPACITY * buffer.cpus();
    conserved(buffer, (0..n).collect(), 100_000);
}

#[test]
fn arcs_conserved_cpu() {
    arc_conserved(Index::Cpu);
}

#[test]
fn arcs_conserved_mm_cid() {
    arc_conserved(Index::MmCid);
}

#[test]
fn usize_words_conserved() {
    usize_conserved(Index::Cpu);
    usize_conserved(Index::MmCid);
}

/// A buffer of 64 items whose item 10 panics when dropped still drops the
/// 63 others, as a `Vec` does; so does a drain dropped early.
#[test]
fn a_panicking_drop_does_not_leak_the_others() {
    for early_drain in [false, true] {
        let drops = tally(64);
        let b = PerCpuBuffer::new(64);
        common::pinned(|_| {
            for id in 0..64 {
                b.push(Box::new(Bomb {
                    id,
                    drops: drops.clone(),
                    panics_at: 10,
                }))
                .unwrap_or_else(|_| panic!("room for 64"));
            }
        });
        let r = catch_unwind(AssertUnwindSafe(|| {
            if early_drain {
                let mut d = b.drain();
                drop(d.next().expect("64 items"));
                drop(d);
            }
            drop(b);
        }));
        assert!(r.is_err(), "the panic propagates");
        let counts: Vec<u64> = drops.iter().map(|d| d.load(SeqCst)).collect();
        assert!(
            counts.iter().all(|&n| n == 1),
            "every item dropped exactly once (early drain: {early_drain}): {counts:?}"
        );
    }
}

/// `push_on` stores on the CPU named, or gives the value back with why.
#[test]
fn push_on_full_or_out_of_range_gives_the_value_back() {
    let b = PerCpuBuffer::new(1);
    b.push_on(0, Box::new(1u8)).unwrap();
    let full = b.push_on(0, Box::new(2)).unwrap_err();
    assert_eq!((*full.value, full.error), (2, Error::Full { cpu: 0 }));
    let far = b.push_on(b.cpus(), Box::new(3)).unwrap_err();
    assert_eq!(
        (*far.value, far.error),
        (
            3,
            Error::CpuOutOfRange {
                cpu: b.cpus(),
                slots: b.cpus()
            }
        )
    );
    assert_eq!((b.len(), b.is_empty()), (1, false));
    assert_eq!(b.pop_on(0).unwrap().map(|v| *v), Some(1));
    assert!(b.is_empty());
    let m = PerCpuMemcpyBuffer::new(1);
    m.push_on(0, 5u32).unwrap();
    assert_eq!(m.push_on(0, 6).unwrap_err().value, 6);
    assert_eq!(m.len(), 1);
    assert_eq!(m.pop_on(0).unwrap(), Some(5));
    let mut slot = std::mem::MaybeUninit::uninit();
    assert!(m.pop_into(&mut slot).is_none(), "empty everywhere");
}

/// `pop_into` and `push_from` move a value between a local and the buffer,
/// intact, and report a full buffer.
#[test]
fn memcpy_pop_into_and_push_from() {
    pinned(|_| {
        let b = PerCpuMemcpyBuffer::new(2);
        let mut slot = std::mem::MaybeUninit::uninit();
        assert!(b.push(Sealed::<61>::new(1, 0)).is_ok());
        let item = b.pop_into(&mut slot).expect("pushed on this CPU");
        assert!(item.is_intact() && item.id == 1);
        let again = Sealed::<61>::new(2, 3);
        b.push_from(&again).unwrap();
        b.push_from(&again).unwrap();
        assert!(matches!(b.push_from(&again), Err(Error::Full { .. })));
        assert_eq!(b.len(), 2);
        let item = b.pop_into(&mut slot).expect("full buffer");
        assert!(item.is_intact() && (item.id, item.generation) == (2, 3));
    });
}

/// 512-byte items: copies long enough to be preempted now and then.
fn memcpy_conserved(by: Index) {
    let buffer = PerCpuMemcpyBuffer::<Sealed<61>>::with_index(by, CAPACITY);
    assert_eq!(std::mem::size_of::<Sealed<61>>(), 512);
    let n = ITEMS_PER_ROOM * CAPACITY * buffer.cpus();
    let items = (0..n as u64).map(|id| Sealed::new(id, 0)).collect();
    conserved(buffer, items, 200_000);
}

#[test]
fn items_conserved_cpu() {
    boxed_conserved(Index::Cpu);
}

#[test]
fn items_conserved_mm_cid() {
    boxed_conserved(Index::MmCid);
}

/// Node slots: every operation under the slot's fence, the CPUs of a node
/// sharing it.
#[test]
fn items_conserved_node() {
    boxed_conserved(Index::Node);
}

#[test]
fn memcpy_items_conserved_cpu() {
    memcpy_conserved(Index::Cpu);
}

#[test]
fn memcpy_items_conserved_mm_cid() {
    memcpy_conserved(Index::MmCid);
}

#[test]
fn memcpy_items_conserved_node() {
    memcpy_conserved(Index::Node);
}

/// The largest items, 4096 bytes, under the same load: each copy takes long
/// enough that sections are often aborted mid-copy and redone, and pops racing
/// pushes of a new generation into the same entry would show torn bytes.
#[test]
fn memcpy_largest_items_are_never_torn() {
    let buffer = PerCpuMemcpyBuffer::<Sealed<509>>::new(8);
    assert_eq!(std::mem::size_of::<Sealed<509>>(), 4096);
    let n = ITEMS_PER_ROOM * 8 * buffer.cpus();
    let items = (0..n as u64).map(|id| Sealed::new(id, 0)).collect();
    conserved(buffer, items, 50_000);
}

#[test]
fn full_gives_the_item_back_and_empty_pops_none() {
    pinned(|cpu| {
        let b = PerCpuBuffer::new(4);
        assert!(b.pop().is_none());
        let boxes: Vec<Box<u64>> = (0..4).map(Box::new).collect();
        let addrs: Vec<*const u64> = boxes.iter().map(|b| &**b as *const u64).collect();
        for item in boxes {
            b.push(item).unwrap();
        }
        let extra = Box::new(99u64);
        let addr = &*extra as *const u64;
        let back = b.push(extra).expect_err("CPU's buffer is full");
        assert_eq!((&*back as *const u64, *back), (addr, 99), "the same item");
        // LIFO, the same boxes, then empty.
        for i in (0..4).rev() {
            let got = b.pop().unwrap();
            assert_eq!((&*got as *const u64, *got), (addrs[i], i as u64));
        }
        assert!(b.pop().is_none());
        assert_eq!(b.pop_on(cpu).unwrap(), None);
        assert!(matches!(
            b.pop_on(b.cpus()),
            Err(Error::CpuOutOfRange { cpu, slots }) if cpu == b.cpus() && slots == b.cpus()
        ));
    });
}

#[test]
fn memcpy_full_gives_the_item_back_and_empty_pops_none() {
    pinned(|cpu| {
        let b = PerCpuMemcpyBuffer::new(3);
        assert_eq!(b.pop(), None);
        for i in 0..3u64 {
            b.push([i; 5]).unwrap();
        }
        assert_eq!(b.push([7; 5]), Err([7; 5]));
        assert_eq!(b.pop_on(cpu).unwrap(), Some([2; 5]));
        b.push([8; 5]).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(got, [[8; 5], [1; 5], [0; 5]]);
        assert_eq!(b.pop_on(cpu).unwrap(), None);
        assert!(b.pop_on(b.cpus()).is_err());
        assert_eq!(b.drain().count(), 0);
    });
}

#[test]
#[should_panic(expected = "capacity per CPU must be at least 1")]
fn zero_capacity_is_refused() {
    let _ = PerCpuBuffer::<usize>::new(0);
}

#[test]
#[should_panic(expected = "capacity per CPU must be at least 1")]
fn memcpy_zero_capacity_is_refused() {
    let _ = PerCpuMemcpyBuffer::<u8>::new(0);
}

/// Fills each allowed CPU's buffer from a thread pinned there, `per` items
/// each, ids from 0.
fn fill_every_cpu(b: &PerCpuBuffer<Box<Tracked>>, drops: &Arc<Vec<AtomicU64>>, per: u64) -> u64 {
    let mut pushed = 0;
    for (k, &cpu) in common::allowed_cpus().iter().enumerate() {
        thread::scope(|s| {
            s.spawn(|| {
                common::pin_current(cpu);
                for i in 0..per {
                    let id = k as u64 * per + i;
                    b.push(Box::new(Tracked {
                        id,
                        drops: drops.clone(),
                    }))
                    .unwrap_or_else(|_| panic!("buffer of CPU {cpu} full at item {id}"));
                }
            });
        });
        pushed += per;
    }
    pushed
}

/// Items left on every CPU's buffer are dropped exactly once with the buffer;
/// an item refused by a full buffer is not dropped by it.
#[test]
fn drop_frees_items_on_every_cpu() {
    // Ids 0..1000 for the buffers, 1000 for the refused item.
    let drops = tally(1001);
    let cpus = common::allowed_cpus();
    let per = 1000 / cpus.len() as u64;
    let b = PerCpuBuffer::new(per as usize);
    let pushed = fill_every_cpu(&b, &drops, per);
    let dropped = |n: u64| drops.iter().filter(|d| d.load(SeqCst) == n).count() as u64;
    assert_eq!(dropped(1), 0);
    // Each buffer is full: one more is given back, untouched.
    let refused = pinned(|_| {
        b.push(Box::new(Tracked {
            id: 1000,
            drops: drops.clone(),
        }))
        .err()
    });
    let refused = refused.expect("the pinned CPU's buffer is full");
    assert_eq!(refused.id, 1000);
    assert_eq!(dropped(1), 0, "the buffer did not drop the refused item");
    drop(refused);
    assert_eq!(dropped(1), 1);
    // One item from each CPU's buffer, popped from here (remote ones fenced).
    let nonempty = (0..b.cpus())
        .filter(|&c| b.pop_on(c).unwrap().is_some())
        .count();
    assert_eq!(
        nonempty,
        cpus.len(),
        "each pinned thread filled its CPU's buffer"
    );
    assert_eq!(dropped(1), 1 + nonempty as u64);
    // The rest, on every CPU's buffer, go with the buffer.
    drop(b);
    assert_eq!(dropped(1), pushed + 1, "every item dropped once");
    assert_eq!(dropped(0), 1000 - pushed, "ids never pushed stay untouched");
}

/// A drain dropped half-way drops what it took and did not yield; what it
/// did not reach stays in the buffer.
#[test]
fn drain_dropped_midway_drops_the_rest() {
    let drops = tally(200);
    let b = PerCpuBuffer::new(100);
    let cpus = common::allowed_cpus().len() as u64;
    let pushed = fill_every_cpu(&b, &drops, 100 / cpus);
    let mut d = b.drain();
    let first = d.next().expect("something to drain");
    drop(d);
    // The first non-empty CPU's buffer was taken whole: its items are dropped
    // (but the one we hold).
    let dropped = drops.iter().filter(|d| d.load(SeqCst) == 1).count() as u64;
    assert_eq!(dropped, 100 / cpus - 1);
    assert_eq!(drops[first.id as usize].load(SeqCst), 0);
    let rest = b.drain().count() as u64;
    assert_eq!(rest, pushed - 100 / cpus);
    drop(first);
    assert!(drops[..pushed as usize].iter().all(|d| d.load(SeqCst) == 1));
}

/// Values of several sizes go in and come out with their exact bytes: LIFO on
/// one CPU, with `pop_on` from another thread, and through `drain`.
fn round_trip<T: Copy + PartialEq + Debug + Send + Sync>(make: impl Fn(u64) -> T + Sync) {
    const CAP: usize = 16;
    let b = PerCpuMemcpyBuffer::<T>::new(CAP);
    let cpu = pinned(|cpu| {
        for i in 0..CAP as u64 {
            b.push(make(i)).unwrap();
        }
        assert_eq!(b.push(make(99)), Err(make(99)));
        for i in (CAP as u64 / 2..CAP as u64).rev() {
            assert_eq!(b.pop(), Some(make(i)));
        }
        cpu
    });
    // From this (unpinned) thread: remote or local, same bytes.
    for i in (CAP as u64 / 4..CAP as u64 / 2).rev() {
        assert_eq!(b.pop_on(cpu).unwrap(), Some(make(i)));
    }
    let rest: Vec<T> = b.drain().collect();
    let expected: Vec<T> = (0..CAP as u64 / 4).rev().map(&make).collect();
    assert_eq!(rest, expected);
    assert_eq!(b.pop_on(cpu).unwrap(), None);
}

/// A byte pattern distinct for every value and every offset.
fn bytes<const N: usize>(i: u64) -> [u8; N] {
    core::array::from_fn(|j| (i as usize * 131 + j * 7 + j / 256) as u8)
}

#[test]
fn memcpy_round_trips_u8() {
    round_trip(|i| i as u8 ^ 0xa5);
}

#[test]
fn memcpy_round_trips_u64x8() {
    round_trip(|i| core::array::from_fn::<u64, 8, _>(|j| i << 32 | j as u64 | 0xdead << 48));
}

#[test]
fn memcpy_round_trips_4096_bytes() {
    round_trip(bytes::<4096>);
}

#[test]
fn memcpy_round_trips_odd_sizes() {
    round_trip(bytes::<3>);
    round_trip(bytes::<17>);
    round_trip(|_| ());
}

#[test]
fn debug_and_accessors() {
    let b = PerCpuBuffer::<Box<String>>::with_index(Index::MmCid, 3);
    assert_eq!(b.capacity(), 3);
    assert!(b.cpus() >= 1);
    let s = format!("{b:?}");
    assert!(
        s.contains("PerCpuBuffer") && s.contains("capacity: 3"),
        "{s}"
    );
    let m = PerCpuMemcpyBuffer::<[u8; 8]>::with_index(Index::Cpu, 2);
    assert_eq!(
        (m.capacity(), m.index(), m.cpus()),
        (2, Index::Cpu, cpulocal::possible_cpus())
    );
    let s = format!("{m:?}");
    assert!(s.contains("item_size: 8"), "{s}");
    assert_eq!(PerCpuMemcpyBuffer::<u8>::MAX_ITEM_SIZE, 4096);
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PerCpuBuffer<Box<u8>>>();
    send_sync::<PerCpuBuffer<Box<std::cell::Cell<u8>>>>(); // Send suffices
    send_sync::<PerCpuBuffer<std::ptr::NonNull<u8>>>(); // any Word
    send_sync::<PerCpuMemcpyBuffer<[u64; 4]>>();
}
