//! Compiles the hand-written C rseq baseline (`c/rseq_baseline.c`) that the
//! benchmarks compare cpulocal with.
//!
//! The C file is x86_64 asm and uses glibc's `__rseq_offset`, so it is built
//! only for Linux x86_64 with glibc; then `cfg(cpulocal_c_baseline)` is set and
//! `src/baseline.rs` links it. On every other target nothing is compiled and the
//! C peer is left out of the library and the benchmarks.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpulocal_c_baseline)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=c/rseq_baseline.c");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || arch != "x86_64" || env != "gnu" {
        return;
    }
    cc::Build::new()
        .file("c/rseq_baseline.c")
        .opt_level(2)
        .std("gnu11")
        .warnings(true)
        .extra_warnings(true)
        .compile("cpulocal_rseq_baseline");
    println!("cargo::rustc-cfg=cpulocal_c_baseline");
}
