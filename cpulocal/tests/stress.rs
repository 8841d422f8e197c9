//! The full exact-sum stress, in process, on the rseq engine: workers mixing
//! local `add` and `add_on(random cpu)`, signal handlers adding, forced
//! migrations, a `take()` fence storm, and the calling thread adding too.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use cpulocal::{Engine, Registration};

#[test]
fn stress_exact_sum_rseq_engine() {
    let status = cpulocal::status();
    eprintln!("{status}");
    // This test is about the rseq engine with its fenced fallback; a machine
    // without it is covered by the degraded-mode tests.
    assert_eq!(
        status.engine,
        Engine::Rseq,
        "expected the rseq engine on this machine (glibc >= 2.35 registers rseq, \
         membarrier RSEQ available): {status}"
    );
    assert!(matches!(
        status.registration,
        Registration::Glibc | Registration::Cpulocal
    ));

    let cfg = common::Cfg::full("stress/rseq");
    let out = common::stress(&cfg);

    // Both paths ran: remote add_on can only take the fenced path, and local
    // adds commit as critical sections.
    assert!(
        out.stats.fenced > 0,
        "no operation took the fenced path, although add_on targeted other CPUs: {out}"
    );
    if cpulocal::possible_cpus() > 1 {
        assert!(
            out.stats.fenced < out.total_ops(),
            "every operation took the fenced path: the rseq fast path never committed: {out}"
        );
        // Operations that committed at the first attempt.
        let fast = out.total_ops() - out.stats.fenced - out.stats.retried;
        assert!(fast > 0, "no first-attempt commit: {out}");
    }
    eprintln!(
        "fast path: {:.1}% of operations, fenced {:.1}%, retried {}, aborts {}",
        100.0 * (out.total_ops() - out.stats.fenced - out.stats.retried) as f64
            / out.total_ops() as f64,
        100.0 * out.stats.fenced as f64 / out.total_ops() as f64,
        out.stats.retried,
        out.stats.aborts,
    );
}
