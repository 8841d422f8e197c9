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
use cpulocal::{Engine, Index, PerCpuCounter};
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
                for _ in 0..LOCAL_OPS_PER_ROUND {
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
                    counter.add_on(target, v);
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
        local_ops: LOCAL_OPS_PER_ROUND * cpus.len() as u64,
        remote_ops,
    }
}

/// A small configuration of the general stress, for repeated rounds.
fn small_stress(label: String) -> common::Cfg {
    let mut cfg = common::Cfg::full(&label);
    cfg.ops_per_worker = 100_000;
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
            let r = collision_round(&cpus, seed.wrapping_add(rounds));
            if r.difference() != 0 {
                break Some(r);
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
        eprintln!(
            "{what:?}: collision load detected it in round {rounds} after {:.2?}: \
             sum {} but added {} in {} local and {} remote adds: difference {} ({})",
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
        let mut cfg = small_stress(format!("{what:?} {by:?} round {rounds}"));
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

#[test]
fn stress_detects_skipped_membarrier() {
    demonstrate(Break::SkipMembarrier);
}

#[test]
fn stress_detects_skipped_fence_check() {
    demonstrate(Break::SkipFenceCheck);
}
