//! A statically linked program gets the rseq fast path in glibc's area.
//!
//! Meaningful only when built with `-C target-feature=+crt-static` (CI does:
//! for `x86_64-unknown-linux-gnu` natively, and in the guests): a static program cannot `dlsym` glibc's
//! `__rseq_offset`, so cpulocal finds it by weak reference. Without that it
//! would see an area it cannot locate (glibc registered one) and fall back to
//! the fenced engine. Built dynamically, the test checks nothing and says so.
#![cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ),
    target_env = "gnu"
))]

use cpulocal::{Engine, PerCpuCounter, Registration};

#[test]
fn static_glibc_program_uses_glibc_area_and_rseq() {
    if !cfg!(target_feature = "crt-static") {
        eprintln!("not a static build: nothing to check (CI runs this with +crt-static)");
        return;
    }
    let status = cpulocal::status();
    // Where glibc registers no area (glibc 2.36 on riscv64 does not), the
    // static program gets cpulocal's own; elsewhere it must find glibc's,
    // which it can only do by weak reference.
    let want = if status.glibc_rseq_size == Some(0) {
        Registration::Cpulocal
    } else {
        Registration::Glibc
    };
    assert_eq!(status.registration, want, "{status}");
    assert_eq!(status.engine, Engine::Rseq, "{status}");
    let c = PerCpuCounter::new();
    for _ in 0..10_000 {
        c.add(1);
    }
    assert_eq!(c.sum(), 10_000);
    assert!(
        c.stats().fenced < 10_000,
        "every add took the fenced path: {:?}",
        c.stats()
    );
}
