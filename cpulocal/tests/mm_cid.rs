//! `mm_cid` indexing: slot counts follow the allowed CPUs, adds stay exact
//! under the full stress, and `status()` says whether structures get it.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use cpulocal::{Index, PerCpu, PerCpuCounter};

/// What a structure asking for `MmCid` gets must match `status()`.
#[test]
fn index_follows_status() {
    let available = cpulocal::status().mm_cid_indexing;
    let c = PerCpuCounter::with_index(Index::MmCid);
    let p = PerCpu::with_index(Index::MmCid, |_| ());
    let want = if available { Index::MmCid } else { Index::Cpu };
    assert_eq!(c.index(), want);
    assert_eq!(p.index(), want);
    assert_eq!(PerCpuCounter::new().index(), Index::Cpu);
    // 6.3+ kernels fill mm_cid; this machine's kernel does, with rseq on.
    let s = cpulocal::status();
    if s.engine == cpulocal::Engine::Rseq && s.feature_size.is_some_and(|f| f >= 28) {
        assert!(
            available,
            "rseq runs and the feature size covers mm_cid: {s}"
        );
    }
}

/// A thread confined to one CPU builds mm_cid structures with one slot, and
/// every add lands in it exactly.
#[test]
fn slots_follow_the_allowed_cpus() {
    let cpus = common::allowed_cpus();
    let last = *cpus.last().expect("at least one CPU");
    std::thread::spawn(move || {
        common::pin_current(last);
        let c = PerCpuCounter::with_index(Index::MmCid);
        let p = PerCpu::with_index(Index::MmCid, |i| i);
        if c.index() == Index::MmCid {
            assert_eq!(c.cpus(), 1, "one allowed CPU, one concurrency id");
            assert_eq!(p.cpus(), 1);
        } else {
            assert_eq!(c.cpus(), cpulocal::possible_cpus());
        }
        for _ in 0..10_000 {
            c.add(1);
        }
        assert_eq!(c.sum(), 10_000);
        if c.cpus() == 1 {
            assert_eq!(c.per_cpu(), vec![10_000]);
        }
        // A Cpu-indexed counter of the same thread uses the CPU's slot.
        let by_cpu = PerCpuCounter::new();
        by_cpu.add(1);
        assert_eq!(by_cpu.per_cpu()[last], 1);
        eprintln!(
            "mm_cid counter: {c:?}; thread on CPU {last}, mm_cid {:?}",
            cpulocal::mm_cid()
        );
    })
    .join()
    .unwrap();
}

/// The full exact-sum stress (workers, signal handlers, migrations, `take()`
/// storms, remote `add_on`) on an mm_cid-indexed counter.
#[test]
fn stress_exact_sum_mm_cid() {
    let mut cfg = common::Cfg::full("stress/mm_cid");
    cfg.index = Index::MmCid;
    let out = common::stress(&cfg);
    assert!(out.stats.fenced > 0, "remote add_on must be fenced: {out}");
    if cpulocal::status().mm_cid_indexing {
        let fast = out.total_ops() - out.stats.fenced - out.stats.retried;
        assert!(fast > 0, "no section committed on mm_cid slots: {out}");
    }
}
