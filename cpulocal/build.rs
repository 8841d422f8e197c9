//! Chooses the critical-section engine in exactly one place.
//!
//! Emits `cfg(cpulocal_rseq)` when the target has an rseq asm engine (Linux x86_64,
//! aarch64 and riscv64).
//! Every other target builds the fenced engine alone. `CPULOCAL_FORCE_FENCED=1` at build
//! time also selects the fenced engine, to test that configuration on x86_64.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpulocal_rseq)");
    println!("cargo::rerun-if-env-changed=CPULOCAL_FORCE_FENCED");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let forced = std::env::var("CPULOCAL_FORCE_FENCED").is_ok_and(|v| v == "1");
    // aarch64 little-endian only: a big-endian program's signature would be
    // the instruction's bytes swapped, which is not written yet.
    let endian = std::env::var("CARGO_CFG_TARGET_ENDIAN").unwrap_or_default();
    let sections =
        arch == "x86_64" || arch == "riscv64" || (arch == "aarch64" && endian == "little");
    if os == "linux" && sections && !forced {
        println!("cargo::rustc-cfg=cpulocal_rseq");
    }
}
