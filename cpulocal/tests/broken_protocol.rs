//! The stress tests can fail: with the fence protocol broken on purpose
//! (`testing` feature: skip the membarrier, or skip the fence check in
//! sections), the exact-sum check must catch lost or doubled adds.
//!
//! For each switch, with the switch on:
//!
//! 1. a targeted collision load — on every CPU a pinned thread doing local
//!    `add` while a thread pinned on another CPU does `add_on` that CPU, and a
//!    runs in rounds until a sum comes out wrong;
//! 2. the general stress harness of `tests/common` (the one `stress.rs` and
//!    `degraded.rs` run) runs in small rounds until a sum comes out wrong.
//!
//! The structures too (`structures_detect_*`): on every CPU a pinned thread
//! moves list nodes (`pop_node`/`push_node`) or buffer words (`pop`/`push`)
//! while a thread pinned on another CPU moves them on that CPU's slot
//! (`pop_node_on`/`push_node_on`, `pop_on`/`push_on`: the fenced path), until
//! an item is lost or doubled. Nodes are leaked, never freed, once a round
//! finds the protocol broken: a node popped twice would otherwise be freed
//! twice.
//!
//! Node slots (`node_stress_detects_skipped_guard`): with their guard
//! skipped (plain loads and stores instead of atomic instructions or the
//! fence), the general stress on a node-indexed counter loses adds.
//!
//! And the ring (`ring_detects_skipped_membarrier`): with the membarrier
//! skipped, writers' reservations on each CPU race other CPUs' fenced pads
//! (`flush`) until a record is lost, doubled or torn, or the counts do not
//! add up.
//!
//! Every other round is widened where the `inject` feature is built: delay
//! loops in sections before their commit and in fenced operations before
//! their commit store, so that the two sides' stores meet even on an
//! emulator's coarsely interleaved CPUs ([`Widened`]); the plain rounds are
//! what finds it on real hardware.
//!
//! Each is bounded by [`DETECTION_BUDGET`]; the test FAILS if the broken
//! protocol still gives exact sums for that long. Both loads are also run with
//! the protocol intact before and after (they must then be exact), and the
//! switch is restored even if the test panics. The switch is process-wide, so
//! the tests of this binary take [`SWITCH`] one at a time.
#![cfg(feature = "testing")]
#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::testing::{self, Break};
use cpulocal::{Engine, Index, Node, PerCpuBuffer, PerCpuCounter, PerCpuList};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How long each load may run, with the protocol broken, before the test
/// gives up and fails. (Detection takes well under a second on a 2-CPU VM.)
const DETECTION_BUDGET: Duration = Duration::from_secs(20);

/// Local adds per pinned thread and collision round.
const LOCAL_OPS_PER_ROUND: u64 = 300_000;

/// One test at a time touches the process-wide switch.
static SWITCH: Mutex<()> = Mutex::new(());

/// Breaks the protocol while alive; restores it when dropped (also on panic).
struct Broken(Break);

impl Broken {
    fn new(what: Break) -> Broken {
        testing::set(what, true);
        Broken(what)
    }
}

impl Drop for Broken {
    fn drop(&mut self) {
        testing::set(self.0, false);
    }
}

fn lock_switch() -> MutexGuard<'static, ()> {
    SWITCH.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Delay-loop iterations a widened round puts at injection points 3 (in a
/// section, before its commit) and 6 (on the fenced path, between an
/// operation's reads and its commit store).
#[cfg(feature = "inject")]
const WIDEN_LOOPS: u32 = 2_000;

/// Widens the race windows for one detection round, if `round` is even and
/// the `inject` feature is built (delay loops where a section or a fenced
/// operation has read but not yet stored, so that the other side's store
/// lands in between), and restores them when dropped. Odd rounds run the
/// load as it is: on real hardware they find the broken protocol at once;
/// under an emulator, whose CPUs interleave far less finely, the widened
/// ones do (see docs/guests.md).
struct Widened(bool);

/// Whether the round running now is widened ([`Widened`]).
static WIDENED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How much smaller a widened round's load is: each of its operations
/// waits out a delay loop.
const WIDENED_LOAD_DIVISOR: u64 = 100;

impl Widened {
    fn round(round: u64) -> Widened {
        #[cfg(feature = "inject")]
        if round.is_multiple_of(2) {
            cpulocal::inject::set_delay(3, WIDEN_LOOPS);
            cpulocal::inject::set_delay(6, WIDEN_LOOPS);
            WIDENED.store(true, SeqCst);
            return Widened(true);
        }
        let _ = round;
        Widened(false)
    }
}

impl Drop for Widened {
    fn drop(&mut self) {
        #[cfg(feature = "inject")]
        if self.0 {
            cpulocal::inject::reset();
            WIDENED.store(false, SeqCst);
        }
    }
}

/// `base` operations, or fewer in a widened round.
fn sized(base: u64) -> u64 {
    if WIDENED.load(SeqCst) {
        (base / WIDENED_LOAD_DIVISOR).max(1)
    } else {
        base
    }
}

/// What a collision round found.
#[derive(Debug)]
struct Round {
    expected: i64,
    observed: i64,
    local_ops: u64,
    remote_ops: u64,
}

impl Round {
    fn difference(&self) -> i64 {
        self.observed.wrapping_sub(self.expected)
    }
}

/// One collision round: for each allowed CPU `c`, a thread pinned on `c` does
/// `LOCAL_OPS_PER_ROUND` local adds (critical sections on `c`'s slot) while a
/// thread pinned on the next CPU does `add_on(c)` (fenced path on the same
/// slot) until the local threads finish. (No `take()` here: the collision
/// shown is exactly section `add` against fenced `add_on`; the general stress
/// adds the `take()` storm.)
fn collision_round(cpus: &[usize], seed: u64) -> Round {
    let local_ops = sized(LOCAL_OPS_PER_ROUND);
    let counter = Arc::new(PerCpuCounter::new());
    let locals_left = Arc::new(AtomicUsize::new(cpus.len()));
    let start = Arc::new(Barrier::new(2 * cpus.len() + 1));
    let mut seeds = SmallRng::seed_from_u64(seed);

    let locals: Vec<_> = cpus
        .iter()
        .map(|&c| {
            let (counter, start, left) = (counter.clone(), start.clone(), locals_left.clone());
            let mut rng = SmallRng::seed_from_u64(seeds.random());
            thread::spawn(move || {
                common::pin_current(c);
                let _ = cpulocal::current_cpu();
                start.wait();
                let mut tally = 0i64;
                for _ in 0..local_ops {
                    let v = rng.random_range(1..=1000);
                    counter.add(v);
                    tally = tally.wrapping_add(v);
                }
                left.fetch_sub(1, SeqCst);
                tally
            })
        })
        .collect();
    let remotes: Vec<_> = cpus
        .iter()
        .enumerate()
        .map(|(i, &target)| {
            let on = cpus[(i + 1) % cpus.len()];
            let (counter, start, left) = (counter.clone(), start.clone(), locals_left.clone());
            let mut rng = SmallRng::seed_from_u64(seeds.random());
            thread::spawn(move || {
                common::pin_current(on);
                let _ = cpulocal::current_cpu();
                start.wait();
                let (mut tally, mut ops) = (0i64, 0u64);
                while left.load(SeqCst) > 0 {
                    let v = rng.random_range(1..=1000);
                    counter.add_on(target, v).expect("a CPU of the counter");
                    tally = tally.wrapping_add(v);
                    ops += 1;
                }
                (tally, ops)
            })
        })
        .collect();
    start.wait();

    let mut expected = 0i64;
    for l in locals {
        expected = expected.wrapping_add(l.join().expect("a local thread panicked"));
    }
    let mut remote_ops = 0;
    for r in remotes {
        let (t, n) = r.join().expect("a remote thread panicked");
        expected = expected.wrapping_add(t);
        remote_ops += n;
    }
    Round {
        expected,
        observed: counter.sum(),
        local_ops: local_ops * cpus.len() as u64,
        remote_ops,
    }
}

/// A small configuration of the general stress, for repeated rounds.
fn small_stress(label: String) -> common::Cfg {
    let mut cfg = common::Cfg::full(&label);
    cfg.ops_per_worker = sized(100_000);
    cfg
}

/// The machine can run the demonstration: two CPUs (a collision needs a
/// local section and a remote fenced operation running at the same time) and
/// the rseq engine (the switches act on sections and their fences).
fn can_demonstrate() -> Option<Vec<usize>> {
    let status = cpulocal::status();
    let cpus = common::allowed_cpus();
    if cpus.len() < 2 || status.engine != Engine::Rseq {
        eprintln!(
            "SKIPPED: needs 2 allowed CPUs and the rseq engine; have {} CPUs and {}",
            cpus.len(),
            status.engine
        );
        return None;
    }
    Some(cpus)
}

fn demonstrate(what: Break) {
    let _only_us = lock_switch();
    let Some(cpus) = can_demonstrate() else {
        return;
    };
    let seed = common::seed();
    eprintln!("{what:?}: seed {seed}");

    // Control: the same loads with the protocol intact are exact.
    let control = collision_round(&cpus, seed);
    assert_eq!(
        control.difference(),
        0,
        "control collision round with the protocol intact is not exact: {control:?}"
    );
    common::stress(&small_stress(format!("control before {what:?}")));

    {
        let _broken = Broken::new(what);

        // 1. The targeted collision load.
        let started = Instant::now();
        let mut rounds = 0u64;
        let found = loop {
            rounds += 1;
            let widened = Widened::round(rounds);
            let r = collision_round(&cpus, seed.wrapping_add(rounds));
            if r.difference() != 0 {
                break Some((r, widened.0));
            }
            if started.elapsed() > DETECTION_BUDGET {
                break None;
            }
        };
        let Some(found) = found else {
            panic!(
                "with {what:?} the collision load still gave exact sums for {rounds} rounds \
                 ({:.1?}): it cannot detect this broken protocol",
                started.elapsed()
            );
        };
        let (found, widened) = found;
        eprintln!(
            "{what:?}: collision load detected it in round {rounds}{} after {:.2?}: \
             sum {} but added {} in {} local and {} remote adds: difference {} ({})",
            if widened { " (widened)" } else { "" },
            started.elapsed(),
            found.observed,
            found.expected,
            found.local_ops,
            found.remote_ops,
            found.difference(),
            if found.difference() < 0 {
                "adds lost"
            } else {
                "adds counted twice"
            }
        );

        // 2. The general stress harness.
        general_stress_detects(what, Index::Cpu, seed);
    }

    // Restored: exact again.
    let after = collision_round(&cpus, seed ^ 1);
    assert_eq!(
        after.difference(),
        0,
        "collision round after restoring the protocol is not exact: {after:?}"
    );
    common::stress(&small_stress(format!("control after {what:?}")));
}

/// Runs the general stress harness (counter numbered `by`) in small rounds
/// with `what` broken until a sum comes out wrong; fails after
/// [`DETECTION_BUDGET`].
fn general_stress_detects(what: Break, by: Index, seed: u64) {
    let started = Instant::now();
    let mut rounds = 0u64;
    let found = loop {
        rounds += 1;
        let widened = Widened::round(rounds);
        let label = if widened.0 { " (widened)" } else { "" };
        let mut cfg = small_stress(format!("{what:?} {by:?} round {rounds}{label}"));
        cfg.seed = seed.wrapping_add(rounds);
        cfg.index = by;
        let out = common::run(&cfg);
        if !out.is_exact() {
            break Some(out);
        }
        if started.elapsed() > DETECTION_BUDGET {
            break None;
        }
    };
    let Some(found) = found else {
        panic!(
            "with {what:?} the general stress ({by:?} indexing) still gave exact sums for \
             {rounds} rounds ({:.1?}): the stress tests cannot detect this broken protocol",
            started.elapsed()
        );
    };
    eprintln!(
        "{what:?}: general stress ({by:?} indexing) detected it in round {rounds} after {:.2?}: {found}",
        started.elapsed()
    );
}

/// The mm_cid fenced path stops sections with the all-CPU membarrier; with
/// it skipped, the general stress on an mm_cid-indexed counter must fail too.
#[test]
fn mm_cid_stress_detects_skipped_membarrier() {
    let _only_us = lock_switch();
    if can_demonstrate().is_none() {
        return;
    }
    if !cpulocal::status().mm_cid_indexing {
        eprintln!("SKIPPED: the kernel does not offer mm_cid indexing here");
        return;
    }
    let seed = common::seed();
    let control = |label: &str| {
        let mut cfg = small_stress(label.to_owned());
        cfg.index = Index::MmCid;
        common::stress(&cfg);
    };
    control("mm_cid control before");
    {
        let _broken = Broken::new(Break::SkipMembarrier);
        general_stress_detects(Break::SkipMembarrier, Index::MmCid, seed);
    }
    control("mm_cid control after");
}

/// Node slots are shared by the CPUs of a node, so their operations are
/// atomic instructions or run under the slot's fence; with that guard
/// skipped (plain loads and stores), the general stress on a node-indexed
/// counter must fail.
#[test]
fn node_stress_detects_skipped_guard() {
    let _only_us = lock_switch();
    if can_demonstrate().is_none() {
        return;
    }
    let seed = common::seed();
    let control = |label: &str| {
        let mut cfg = small_stress(label.to_owned());
        cfg.index = Index::Node;
        common::stress(&cfg);
    };
    control("node control before");
    {
        let _broken = Broken::new(Break::SkipNodeGuard);
        general_stress_detects(Break::SkipNodeGuard, Index::Node, seed);
    }
    control("node control after");
}

#[test]
fn stress_detects_skipped_membarrier() {
    demonstrate(Break::SkipMembarrier);
}

#[test]
fn stress_detects_skipped_fence_check() {
    demonstrate(Break::SkipFenceCheck);
}

/// Items per slot of the structure collision rounds.
const ITEMS_PER_SLOT: usize = 32;

/// Local moves per pinned thread and structure round.
const MOVES_PER_ROUND: u64 = 200_000;

/// The structures of the collision rounds: what a thread does on its own
/// CPU's slot and on a named one, and how to take everything out at the end.
trait Collide: Send + Sync + 'static {
    /// A fresh structure with `ITEMS_PER_SLOT` items (ids) on every slot.
    fn filled() -> Self;
    fn cpus(&self) -> usize;
    /// One pop and push on the caller's slot (`on` None) or on slot `on`;
    /// what a push refused (a full buffer) goes to `held`.
    fn shuffle(&self, on: Option<usize>, held: &mut Vec<usize>);
    /// Every item's id, at most `limit` (a broken list may hold a cycle); the
    /// structure is not dropped if the ids are not each there once.
    fn take_all(self, held: Vec<usize>, limit: usize) -> Vec<usize>;
}

impl Collide for PerCpuList<u64> {
    fn filled() -> Self {
        let l = PerCpuList::new();
        for cpu in 0..l.cpus() {
            for i in 0..ITEMS_PER_SLOT {
                l.push_node_on(cpu, Node::new((cpu * ITEMS_PER_SLOT + i) as u64))
                    .expect("a CPU of the list");
            }
        }
        l
    }
    fn cpus(&self) -> usize {
        PerCpuList::cpus(self)
    }
    fn shuffle(&self, on: Option<usize>, _: &mut Vec<usize>) {
        match on {
            None => {
                if let Some(n) = self.pop_node() {
                    self.push_node(n);
                }
            }
            Some(c) => {
                if let Some(n) = self.pop_node_on(c).expect("a CPU of the list") {
                    self.push_node_on(c, n)
                        .unwrap_or_else(|_| panic!("CPU {c} is the list's"));
                }
            }
        }
    }
    fn take_all(self, _: Vec<usize>, limit: usize) -> Vec<usize> {
        let mut drain = self.drain_nodes();
        let nodes: Vec<Node<u64>> = drain.by_ref().take(limit).collect();
        let ids: Vec<usize> = nodes.iter().map(|n| **n as usize).collect();
        if exactly_once(&ids, limit / 2) {
            drop(drain);
            drop(nodes);
        } else {
            // Two handles may share a node, and a list may hold a cycle:
            // free nothing, walk nothing more.
            core::mem::forget(drain);
            core::mem::forget(nodes);
            core::mem::forget(self);
        }
        ids
    }
}

impl Collide for PerCpuBuffer<usize> {
    fn filled() -> Self {
        let cpus = cpulocal::possible_cpus();
        // Room for every item on each slot: a doubled item is a refused
        // push only in the broken runs.
        let b = PerCpuBuffer::new(ITEMS_PER_SLOT * cpus);
        for cpu in 0..b.cpus() {
            for i in 0..ITEMS_PER_SLOT {
                b.push_on(cpu, cpu * ITEMS_PER_SLOT + i)
                    .expect("room on every CPU");
            }
        }
        b
    }
    fn cpus(&self) -> usize {
        PerCpuBuffer::cpus(self)
    }
    fn shuffle(&self, on: Option<usize>, held: &mut Vec<usize>) {
        match on {
            None => {
                if let Some(w) = self.pop() {
                    if let Err(w) = self.push(w) {
                        held.push(w);
                    }
                }
            }
            Some(c) => {
                if let Some(w) = self.pop_on(c).expect("a CPU of the buffer") {
                    if let Err(e) = self.push_on(c, w) {
                        held.push(e.value);
                    }
                }
            }
        }
    }
    fn take_all(self, mut held: Vec<usize>, limit: usize) -> Vec<usize> {
        held.extend(self.drain().take(limit));
        held
    }
}

/// Whether `ids` holds each of `0..n` exactly once.
fn exactly_once(ids: &[usize], n: usize) -> bool {
    let mut seen = vec![0u32; n];
    for &id in ids {
        match seen.get_mut(id) {
            Some(k) => *k += 1,
            None => return false,
        }
    }
    seen.iter().all(|&k| k == 1)
}

/// One collision round on a fresh `S`: true if every item is there once.
fn structure_round<S: Collide>(cpus: &[usize]) -> bool {
    let s = Arc::new(S::filled());
    let n = ITEMS_PER_SLOT * s.cpus();
    let locals_left = Arc::new(AtomicUsize::new(cpus.len()));
    let start = Arc::new(Barrier::new(2 * cpus.len() + 1));
    let mut threads = Vec::new();
    for (i, &c) in cpus.iter().enumerate() {
        let on = cpus[(i + 1) % cpus.len()];
        for remote in [false, true] {
            let (s, start, left) = (s.clone(), start.clone(), locals_left.clone());
            threads.push(thread::spawn(move || {
                common::pin_current(if remote { on } else { c });
                let _ = cpulocal::current_cpu();
                start.wait();
                let mut held = Vec::new();
                if remote {
                    while left.load(SeqCst) > 0 {
                        s.shuffle(Some(c), &mut held);
                    }
                } else {
                    for _ in 0..sized(MOVES_PER_ROUND) {
                        s.shuffle(None, &mut held);
                    }
                    left.fetch_sub(1, SeqCst);
                }
                held
            }));
        }
    }
    start.wait();
    let held: Vec<usize> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a collision thread panicked"))
        .collect();
    let s = Arc::into_inner(s).expect("every thread joined");
    let ids = s.take_all(held, 2 * n);
    exactly_once(&ids, n)
}

/// With `what` broken, collision rounds on `S` lose or double an item within
/// [`DETECTION_BUDGET`]; intact, before and after, they are exact.
fn structure_detects<S: Collide>(what: Break) {
    let _only_us = lock_switch();
    let Some(cpus) = can_demonstrate() else {
        return;
    };
    let name = std::any::type_name::<S>();
    assert!(
        structure_round::<S>(&cpus),
        "{name}: control round with the protocol intact"
    );
    {
        let _broken = Broken::new(what);
        let started = Instant::now();
        let mut rounds = 1u64;
        let widened = loop {
            let widened = Widened::round(rounds);
            if !structure_round::<S>(&cpus) {
                break widened.0;
            }
            assert!(
                started.elapsed() < DETECTION_BUDGET,
                "{name} with {what:?}: still exact after {rounds} rounds ({:.1?})",
                started.elapsed()
            );
            rounds += 1;
        };
        eprintln!(
            "{name} with {what:?}: an item lost or doubled in round {rounds}{} after {:.2?}",
            if widened { " (widened)" } else { "" },
            started.elapsed()
        );
    }
    assert!(
        structure_round::<S>(&cpus),
        "{name}: round after restoring the protocol"
    );
}

#[test]
fn list_detects_skipped_membarrier() {
    structure_detects::<PerCpuList<u64>>(Break::SkipMembarrier);
}

#[test]
fn list_detects_skipped_fence_check() {
    structure_detects::<PerCpuList<u64>>(Break::SkipFenceCheck);
}

#[test]
fn word_buffer_detects_skipped_membarrier() {
    structure_detects::<PerCpuBuffer<usize>>(Break::SkipMembarrier);
}

#[test]
fn word_buffer_detects_skipped_fence_check() {
    structure_detects::<PerCpuBuffer<usize>>(Break::SkipFenceCheck);
}

/// Records written per writer and ring round.
const RING_RECORDS_PER_WRITER: u64 = 200_000;

/// A ring record: the writer's id and sequence number, then a checksum of
/// both, so that a torn or misplaced record shows.
fn ring_record(id: u64, seq: u64) -> [u8; 24] {
    let mut r = [0u8; 24];
    r[..8].copy_from_slice(&id.to_le_bytes());
    r[8..16].copy_from_slice(&seq.to_le_bytes());
    let check = (id ^ seq.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    r[16..].copy_from_slice(&check.to_le_bytes());
    r
}

/// The records delivered so far, by (writer, sequence number), and the first
/// wrong one.
#[derive(Default)]
struct Delivered {
    seen: std::collections::HashSet<(u64, u64)>,
    wrong: Option<String>,
}

impl Delivered {
    /// Takes one delivered record: whole, and not seen before.
    fn take(&mut self, rec: cpulocal::Record<'_>) {
        let p = rec.payload();
        let word = |i: usize| u64::from_le_bytes(p[8 * i..8 * i + 8].try_into().unwrap());
        if p.len() != 24 || ring_record(word(0), word(1))[..] != p[..] {
            let torn = format!("a torn record on CPU {}: {p:?}", rec.cpu());
            self.wrong.get_or_insert(torn);
        } else if !self.seen.insert((word(0), word(1))) {
            let twice = format!("record {:?} delivered twice", (word(0), word(1)));
            self.wrong.get_or_insert(twice);
        }
    }

    /// Reads everything `ring` will give, stopping after a few reads in a
    /// row that deliver nothing (a broken buffer may never give up its
    /// records).
    fn drain(&mut self, ring: &cpulocal::PerCpuRing) {
        let mut idle = 0;
        while idle < 20 {
            ring.flush();
            let got = ring.consume(|rec| self.take(rec));
            idle = if got.records == 0 { idle + 1 } else { 0 };
        }
    }
}

/// One ring round: on every CPU a pinned writer logs records (reserve
/// sections on that CPU's buffer) while a thread pinned on the next CPU
/// flushes that buffer over and over (fenced pads at the same head), and a
/// consumer drains. Err when the records or the counts do not add up:
/// every record written is delivered once, whole, or refused and counted
/// lost (refused) or overwritten.
fn ring_round(cpus: &[usize]) -> Result<(), String> {
    use cpulocal::{PerCpuRing, RingConfig, RingMode};
    use std::sync::atomic::AtomicBool;
    // Small sub-buffers: fills and pads come often. Overwrite mode: the
    // writers always reserve (a full buffer drops its oldest records,
    // counted), so they keep racing the pads.
    let config = RingConfig::new()
        .sub_buffer_size(256)
        .sub_buffers(8)
        .mode(RingMode::Overwrite);
    let ring = PerCpuRing::with_config(config).expect("a valid configuration");
    let writers_left = AtomicUsize::new(cpus.len());
    let flushing = AtomicBool::new(true);
    let mut delivered = Delivered::default();
    let records = sized(RING_RECORDS_PER_WRITER);
    let (written, refused) = thread::scope(|s| {
        let writers: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(id, &c)| {
                let (ring, left) = (&ring, &writers_left);
                s.spawn(move || {
                    common::pin_current(c);
                    let mut refused = 0u64;
                    for seq in 0..records {
                        if ring.write(&ring_record(id as u64, seq)).is_err() {
                            refused += 1;
                        }
                    }
                    left.fetch_sub(1, SeqCst);
                    refused
                })
            })
            .collect();
        for i in 0..cpus.len() {
            let (ring, flushing) = (&ring, &flushing);
            let on = cpus[(i + 1) % cpus.len()];
            s.spawn(move || {
                common::pin_current(on);
                while flushing.load(SeqCst) {
                    ring.flush();
                }
            });
        }
        while writers_left.load(SeqCst) > 0 {
            ring.consume(|rec| delivered.take(rec));
        }
        flushing.store(false, SeqCst);
        let refused: u64 = writers
            .into_iter()
            .map(|w| w.join().expect("a writer panicked"))
            .sum();
        (records * cpus.len() as u64, refused)
    });
    delivered.drain(&ring);
    if let Some(wrong) = delivered.wrong {
        return Err(wrong);
    }
    let (delivered, overwritten) = (delivered.seen.len() as u64, ring.overwritten());
    if ring.lost() != refused {
        return Err(format!(
            "{refused} records refused but the ring counted {} lost",
            ring.lost()
        ));
    }
    let accounted = delivered + overwritten + refused;
    if accounted != written {
        return Err(format!(
            "{written} records written: {delivered} delivered, {overwritten} overwritten and \
             {refused} refused ({} unaccounted for)",
            written as i64 - accounted as i64
        ));
    }
    Ok(())
}

/// The ring's fenced operations (here `flush`'s pads on other CPUs' buffers)
/// are safe only with the membarrier: with it skipped, a pad and a
/// reservation in flight on the same head both land, and records are lost,
/// doubled or torn.
#[test]
fn ring_detects_skipped_membarrier() {
    let _only_us = lock_switch();
    let Some(cpus) = can_demonstrate() else {
        return;
    };
    ring_round(&cpus).unwrap_or_else(|e| panic!("control ring round, protocol intact: {e}"));
    {
        let _broken = Broken::new(Break::SkipMembarrier);
        let started = Instant::now();
        let mut rounds = 0u64;
        let found = loop {
            rounds += 1;
            let widened = Widened::round(rounds);
            if let Err(what) = ring_round(&cpus) {
                break Some(format!(
                    "{what}{}",
                    if widened.0 { " (widened)" } else { "" }
                ));
            }
            if started.elapsed() > DETECTION_BUDGET {
                break None;
            }
        };
        let Some(found) = found else {
            panic!(
                "with the membarrier skipped the ring still added up for {rounds} rounds \
                 ({:.1?}): its checks cannot detect this broken protocol",
                started.elapsed()
            );
        };
        eprintln!(
            "SkipMembarrier: the ring round detected it in round {rounds} after {:.2?}: {found}",
            started.elapsed()
        );
    }
    ring_round(&cpus).unwrap_or_else(|e| panic!("ring round after restoring the protocol: {e}"));
}
