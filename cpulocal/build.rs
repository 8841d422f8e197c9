//! Chooses the critical-section engine in exactly one place.
//!
//! Emits `cfg(cpulocal_rseq)` when the target has an rseq asm engine (Linux x86_64).
//! Every other target builds the fenced engine alone. `CPULOCAL_FORCE_FENCED=1` at build
//! time also selects the fenced engine, to test that configuration on x86_64.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpulocal_rseq)");
    println!("cargo::rerun-if-env-changed=CPULOCAL_FORCE_FENCED");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let forced = std::env::var("CPULOCAL_FORCE_FENCED").is_ok_and(|v| v == "1");
    if os == "linux" && arch == "x86_64" && !forced {
        println!("cargo::rustc-cfg=cpulocal_rseq");
    }
}
