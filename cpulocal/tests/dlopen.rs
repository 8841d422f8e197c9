//! A shared library that uses cpulocal can be unloaded: no thread's rseq area
//! is left pointing at a critical-section descriptor inside it.
//!
//! The kernel reads `rseq_cs` whenever a thread is preempted or signalled; if
//! it points into a library that `dlclose` unmapped, the thread gets SIGSEGV.
//! cpulocal clears `rseq_cs` when each operation leaves its section. The test
//! builds `tests/dlopen-fixture` (a cdylib with a counter), loads it in a child
//! process, uses it from several threads, checks their `rseq_cs` is clear,
//! unloads it, checks it is unmapped, then lets the threads be preempted and
//! signalled many times.
#![cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

mod child;
use std::sync::{Arc, Barrier};

const MODE: &str = "CPULOCAL_DLOPEN_CHILD";

/// Builds the fixture library and returns its path: copies
/// `tests/dlopen-fixture` out of the source tree, names its manifest
/// `Cargo.toml` with the path of the cpulocal under test, and builds it.
fn build_fixture() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = here.join("tests/dlopen-fixture");
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let crate_dir = scratch.join("dlopen-fixture-src");
    std::fs::create_dir_all(&crate_dir).expect("create the fixture's directory");
    let manifest = std::fs::read_to_string(source.join("fixture.toml"))
        .expect("read tests/dlopen-fixture/fixture.toml")
        .replace("@CPULOCAL_DIR@", &here.display().to_string());
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).expect("write the fixture's manifest");
    std::fs::copy(source.join("lib.rs"), crate_dir.join("lib.rs"))
        .expect("copy the fixture's lib.rs");
    let target = scratch.join("dlopen-fixture");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo to build the fixture");
    assert!(
        out.status.success(),
        "building the fixture failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("release/libcpulocal_dlopen_fixture.so")
}

#[test]
fn unloading_a_library_that_used_cpulocal_is_safe() {
    let lib = build_fixture();
    let (status, text) = child::run_test("dlopen_child", &[(MODE, lib.to_str().unwrap())]);
    assert!(status.success(), "child failed ({status}):\n{text}");
    assert!(text.contains("DLOPEN OK"), "child did not finish:\n{text}");
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The calling thread's `rseq_cs` word in glibc's area.
fn rseq_cs() -> u64 {
    // SAFETY: glibc >= 2.35 defines both; the area (thread pointer + offset;
    // pthread_self() is the thread pointer on x86_64 glibc) lives as long as
    // the thread, and the kernel writes it only between our instructions.
    unsafe {
        assert_ne!(__rseq_size, 0, "this test needs glibc's rseq registration");
        let area = (libc::pthread_self() as *const u8).offset(__rseq_offset);
        core::ptr::read_volatile(area.add(8).cast::<u64>())
    }
}

fn mapped(lib: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains(lib)
}

#[test]
fn dlopen_child() {
    let Ok(lib) = std::env::var(MODE) else { return };
    let path = CString::new(lib.clone()).unwrap();
    // SAFETY: loads our fixture; RTLD_NOW resolves its symbols up front.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen failed");
    // SAFETY: the symbol exists in the fixture with this signature.
    let add: extern "C" fn(i64) -> i64 =
        unsafe { core::mem::transmute(libc::dlsym(handle, c"fixture_add".as_ptr())) };

    const THREADS: usize = 4;
    const CALLS: i64 = 10_000;
    let used = Arc::new(Barrier::new(THREADS + 1));
    let unloaded = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (used, unloaded) = (used.clone(), unloaded.clone());
            std::thread::spawn(move || {
                for _ in 0..CALLS {
                    add(1);
                }
                let cs = rseq_cs();
                used.wait();
                unloaded.wait();
                // Be preempted, migrated and signalled many times while the
                // library is gone: a stale rseq_cs would be read each time.
                for i in 0..2_000 {
                    if i % 10 == 0 {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    } else {
                        std::thread::yield_now();
                    }
                }
                cs
            })
        })
        .collect();
    used.wait();
    let total = add(0);
    assert_eq!(
        total,
        THREADS as i64 * CALLS,
        "the library's counter is exact"
    );
    assert_eq!(rseq_cs(), 0, "rseq_cs left set on the main thread");
    // SAFETY: no thread calls into the library any more.
    assert_eq!(unsafe { libc::dlclose(handle) }, 0);
    assert!(
        !mapped(&lib),
        "the fixture stayed mapped after dlclose: the test would prove nothing"
    );
    unloaded.wait();
    for t in threads {
        assert_eq!(
            t.join().unwrap(),
            0,
            "a thread's rseq_cs still pointed into the library"
        );
    }
    println!("DLOPEN OK");
}
