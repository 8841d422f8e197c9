//! A shared library that uses cpulocal stays loaded: `dlclose` does not
//! unmap it, so no thread's rseq area is ever left pointing at a
//! critical-section descriptor that is gone.
//!
//! The kernel reads `rseq_cs` whenever a thread is preempted or signalled; if
//! it points into a library that `dlclose` unmapped, the thread gets SIGSEGV.
//! cpulocal leaves `rseq_cs` armed after its sections (the kernel clears it
//! at the thread's next preemption), and marks the object that holds its code
//! `RTLD_NODELETE` the first time it is used. The test builds
//! `tests/dlopen-fixture` (a cdylib with a counter) and, in a child process,
//! loads it, uses it from several threads (the total must be exact), then
//! has one thread run an operation and spin, not preempted, on one CPU while
//! the main thread, on the other, closes the library. With the thread's
//! `rseq_cs` checked to still point into the library, the library must still
//! be mapped, and the thread then sleeps and yields many times. The same
//! child with the pin skipped (`CPULOCAL_TEST_SKIP_PIN`) must find the
//! library unmapped and die of SIGSEGV: that is what the pin prevents.
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

/// The environment variable that makes the child expect its library to be
/// unloaded (the pin skipped).
const UNPINNED: &str = "CPULOCAL_DLOPEN_EXPECT_UNLOADED";

/// What the child prints when the spinning thread was preempted before the
/// library was closed (the kernel cleared its `rseq_cs`), so that the run
/// shows nothing; the parent runs it again.
const INCONCLUSIVE: &str = "DLOPEN INCONCLUSIVE";

/// Runs the child with `env` until a run is conclusive (at most 20 runs).
fn run_child(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    for _ in 0..20 {
        let (status, text) = child::run_test("dlopen_child", env);
        if !text.contains(INCONCLUSIVE) {
            return (status, text);
        }
    }
    panic!("20 runs of the child were inconclusive: the spinning thread was always preempted");
}

#[test]
fn closing_a_library_that_used_cpulocal_is_safe() {
    let lib = build_fixture();
    let (status, text) = run_child(&[(MODE, lib.to_str().unwrap())]);
    assert!(status.success(), "child failed ({status}):\n{text}");
    assert!(text.contains("DLOPEN OK"), "child did not finish:\n{text}");
}

#[test]
fn without_the_pin_closing_the_library_kills_its_threads() {
    use std::os::unix::process::ExitStatusExt;
    let lib = build_fixture();
    let (status, text) = run_child(&[
        (MODE, lib.to_str().unwrap()),
        (cpulocal::testing::SKIP_PIN_VAR, "1"),
        (UNPINNED, "1"),
    ]);
    assert!(
        text.contains("LIBRARY UNMAPPED, THREAD ARMED"),
        "the child did not get as far as unloading the library ({status}):\n{text}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "with the pin skipped, the kernel should kill the thread whose rseq_cs points into \
         the unmapped library ({status}):\n{text}"
    );
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The `rseq_cs` word in glibc's area of the thread whose thread pointer
/// (`pthread_self()`) is `thread`.
fn rseq_cs_of(thread: libc::pthread_t) -> *mut u64 {
    // SAFETY: glibc >= 2.35 defines both; the area is at the thread pointer
    // (pthread_self() on x86_64 glibc) plus the offset.
    unsafe {
        assert_ne!(__rseq_size, 0, "this test needs glibc's rseq registration");
        (thread as *mut u8)
            .offset(__rseq_offset)
            .add(8)
            .cast::<u64>()
    }
}

/// The calling thread's `rseq_cs` word.
fn rseq_cs() -> u64 {
    // SAFETY: this thread's live area; the kernel writes it only between
    // our instructions.
    unsafe { rseq_cs_of(libc::pthread_self()).read_volatile() }
}

/// Stores 0 into the calling thread's `rseq_cs` (what the kernel itself
/// does once the thread is outside the section).
fn clear_rseq_cs() {
    // SAFETY: this thread's live area, whose `rseq_cs` word user code may
    // write.
    unsafe { rseq_cs_of(libc::pthread_self()).write_volatile(0) }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // take it by pointer for the call.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set),
            0,
            "pin to CPU {cpu}"
        );
    }
}

fn mapped(lib: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains(lib)
}

/// Whether `addr` lies in a mapping of the file `lib`.
fn mapped_at(lib: &str, addr: u64) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(lib))
        .filter_map(|l| l.split_once(' ')?.0.split_once('-'))
        .filter_map(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .any(|(a, b)| (a..b).contains(&addr))
}

#[test]
fn dlopen_child() {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    let Ok(lib) = std::env::var(MODE) else { return };
    let unpinned = std::env::var_os(UNPINNED).is_some();
    let path = CString::new(lib.clone()).unwrap();
    // SAFETY: loads our fixture; RTLD_NOW resolves its symbols up front.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen failed");
    // SAFETY: the symbol exists in the fixture with this signature.
    let add: extern "C" fn(i64) -> i64 =
        unsafe { core::mem::transmute(libc::dlsym(handle, c"fixture_add".as_ptr())) };
    // A section's descriptor lives in the library's data, so an armed
    // rseq_cs points into the library's mappings.
    let inside = |cs: u64| cs != 0 && mapped_at(&lib, cs);

    // Several threads use the library: the total is exact.
    const THREADS: usize = 4;
    const CALLS: i64 = 10_000;
    let used = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let used = used.clone();
            std::thread::spawn(move || {
                for _ in 0..CALLS {
                    add(1);
                }
                used.wait();
            })
        })
        .collect();
    used.wait();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(
        add(0),
        THREADS as i64 * CALLS,
        "the library's counter is exact"
    );
    assert!(
        inside(rseq_cs()),
        "this thread's rseq_cs does not point into the library: the test would prove nothing"
    );

    // One thread runs an operation and spins on CPU 1, not preempted, while
    // this one, on CPU 0, closes the library.
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "this test needs two CPUs"
    );
    pin_to(0);
    static READY: AtomicUsize = AtomicUsize::new(0); // the spinner's pthread_t
    static ARMED: AtomicU64 = AtomicU64::new(0); // its rseq_cs after its operation
    static CLOSED: AtomicBool = AtomicBool::new(false);
    let spinner = std::thread::spawn(move || {
        pin_to(1);
        add(1);
        ARMED.store(rseq_cs(), Ordering::SeqCst);
        // SAFETY: pthread_self has no preconditions.
        READY.store(unsafe { libc::pthread_self() } as usize, Ordering::SeqCst);
        while !CLOSED.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
        // Be preempted, migrated and signalled many times while the library
        // is closed: a stale rseq_cs is read the first time.
        for i in 0..2_000 {
            if i % 10 == 0 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            } else {
                std::thread::yield_now();
            }
        }
    });
    let thread = loop {
        match READY.load(Ordering::SeqCst) {
            0 => core::hint::spin_loop(),
            t => break t as libc::pthread_t,
        }
    };
    let armed = ARMED.load(Ordering::SeqCst);
    assert!(
        inside(armed),
        "the spinner's rseq_cs does not point into the library: the test would prove nothing"
    );
    // This thread must live to report: its own rseq_cs is cleared.
    clear_rseq_cs();
    // SAFETY: no thread calls into the library any more.
    assert_eq!(unsafe { libc::dlclose(handle) }, 0);
    // SAFETY: the spinner's area: it lives until the spinner exits, which
    // it does only after CLOSED is set; the kernel clears the word when it
    // preempts the spinner.
    let still = unsafe { rseq_cs_of(thread).read_volatile() };
    if still != armed {
        println!("{INCONCLUSIVE}: the spinner was preempted before the close");
        CLOSED.store(true, Ordering::SeqCst);
        spinner.join().unwrap();
        std::process::exit(0);
    }
    if unpinned {
        assert!(
            !mapped(&lib),
            "the fixture stayed mapped after dlclose although the pin was skipped"
        );
        println!("LIBRARY UNMAPPED, THREAD ARMED");
    } else {
        assert!(
            mapped(&lib),
            "dlclose unmapped the library that used cpulocal"
        );
        assert!(
            inside(armed),
            "the spinner's rseq_cs no longer points into a mapping"
        );
        // SAFETY: RTLD_NOLOAD only looks the library up; it is loaded.
        let again = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        assert!(!again.is_null(), "the library is no longer loaded");
        // SAFETY: the handle just returned; the library stays loaded anyway.
        unsafe { libc::dlclose(again) };
    }
    CLOSED.store(true, Ordering::SeqCst);
    spinner.join().unwrap();
    println!("DLOPEN OK");
}
