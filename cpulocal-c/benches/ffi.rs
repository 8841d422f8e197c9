//! `cargo bench -p cpulocal-c --bench ffi`: what the C API costs a C caller.
//!
//! One thread, pinned to one CPU, runs in alternating batches (the order
//! rotated every round) in one process:
//!
//! - **Rust**: `PerCpuCounter::add(1)` in a Rust loop (inlined: one critical
//!   section per add);
//! - **C API**: `cpulocal_counter_add(c, 1)` in a C loop (`benches/ffi.c`,
//!   gcc -O2), a shared object linked against `libcpulocal.so`: a call
//!   through the PLT per add, which no compiler inlines without
//!   cross-language LTO;
//! - **C rseq**: the hand-written C rseq add of `c/rseq_add.h` retried until
//!   it commits, the thread's area found again per add as librseq's calls
//!   do; and **C rseq, hoisted**: the area kept in a register (the floor).
//!
//! It prints ns per add (median of the rounds) and the ratios of the C API's
//! time to the others', each taken within a round. Then a C program linked
//! with `libcpulocal.a` (`benches/ffi_static.c`) does the same for the C
//! loops in a process of its own: statically linked, the call is direct and
//! the library's thread-local variable is the executable's own (the linker
//! relaxes the shared library's `__tls_get_addr` call away). The machine's load moves
//! absolute times; the ratios within a round hold better.
//! `CPULOCAL_BENCH_ROUNDS` and `CPULOCAL_BENCH_BATCH` change the defaults
//! (15 rounds, 20,000,000 adds per batch).

#[path = "../tests/common/mod.rs"]
mod common;

use std::ffi::{c_void, CStr, CString};
use std::time::Instant;

use cpulocal_rs::PerCpuCounter;

type ApiLoop = unsafe extern "C" fn(*mut c_void, u64) -> u64;
type RseqLoop = unsafe extern "C" fn(*mut i64, u64) -> u64;
type Available = unsafe extern "C" fn() -> i32;
type New = unsafe extern "C" fn() -> *mut c_void;
type Sum = unsafe extern "C" fn(*const c_void) -> i64;
type Free = unsafe extern "C" fn(*mut c_void);

/// A symbol of the loaded object, as a function of type `F`.
///
/// # Safety
///
/// The symbol is a function of that C type.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &str) -> F {
    let c = CString::new(name).expect("symbol name");
    // SAFETY: `handle` is a live dlopen handle.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    assert!(!p.is_null(), "dlsym({name}) found nothing");
    assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    // SAFETY: a function pointer of the type the caller names.
    unsafe { std::mem::transmute_copy(&p) }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pins the calling thread to the first CPU it may run on.
fn pin() -> usize {
    // SAFETY: cpu_set_t is plain data; the calls read and write only it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("an allowed CPU");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one);
        libc::sched_yield();
        cpu
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run
    // passes nothing and only checks that the benchmark starts.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds = env_or("CPULOCAL_BENCH_ROUNDS", if benching { 15 } else { 1 }) as usize;
    let batch = env_or(
        "CPULOCAL_BENCH_BATCH",
        if benching { 20_000_000 } else { 10_000 },
    );

    let so = common::compile(
        "libcpulocal_ffi_bench.so",
        &["benches/ffi.c"],
        common::Link::Shared,
        &["-shared", "-fPIC"],
    );
    let path = CString::new(so.to_str().expect("UTF-8 path")).expect("path");
    // SAFETY: loading our own object; its constructors are the C runtime's.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        // SAFETY: dlerror returns a C string after a failed dlopen.
        let e = unsafe { CStr::from_ptr(libc::dlerror()) };
        panic!("dlopen({}): {}", so.display(), e.to_string_lossy());
    }
    // SAFETY: the symbols of benches/ffi.c and cpulocal.h, with these types.
    let (api_loop, rseq_loop, hoisted_loop, available, new, sum, free) = unsafe {
        (
            symbol::<ApiLoop>(handle, "ffi_c_api_add_loop"),
            symbol::<RseqLoop>(handle, "ffi_c_rseq_add_loop"),
            symbol::<RseqLoop>(handle, "ffi_c_rseq_add_hoisted_loop"),
            symbol::<Available>(handle, "ffi_c_rseq_available"),
            symbol::<New>(handle, "cpulocal_counter_new"),
            symbol::<Sum>(handle, "cpulocal_counter_sum"),
            symbol::<Free>(handle, "cpulocal_counter_free"),
        )
    };

    let cpu = pin();
    let rust = PerCpuCounter::new();
    // SAFETY: the library's constructor.
    let c = unsafe { new() };
    assert!(!c.is_null());
    let cpus = cpulocal_rs::possible_cpus();
    let mut slots = vec![0i64; cpus * 16];
    // SAFETY: a plain query of the calling thread.
    let has_rseq = unsafe { available() } != 0;

    // Warm up every loop.
    let run = |which: usize, slots: &mut [i64], n: u64| -> f64 {
        let t = Instant::now();
        let done = match which {
            0 => {
                for _ in 0..n {
                    rust.add(std::hint::black_box(1));
                }
                n
            }
            // SAFETY: a live counter of the library.
            1 => unsafe { api_loop(c, n) },
            // SAFETY: `slots` holds a word every 16 per possible CPU.
            2 => unsafe { rseq_loop(slots.as_mut_ptr(), n) },
            // SAFETY: as above.
            _ => unsafe { hoisted_loop(slots.as_mut_ptr(), n) },
        };
        let ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        assert!(done == n || (which >= 2 && !has_rseq));
        ns
    };
    let loops = if has_rseq { 4 } else { 2 };
    for which in 0..loops {
        run(which, &mut slots, batch.min(1_000_000));
    }

    let mut times: Vec<Vec<f64>> = vec![Vec::new(); loops];
    let mut api_over: Vec<Vec<f64>> = vec![Vec::new(); loops];
    for round in 0..rounds {
        let mut t = [0f64; 4];
        for k in 0..loops {
            let which = (round + k) % loops;
            t[which] = run(which, &mut slots, batch);
        }
        for which in 0..loops {
            times[which].push(t[which]);
            api_over[which].push(t[1] / t[which]);
        }
    }

    // Every add counted.
    let warm = batch.min(1_000_000);
    let want = (rounds as u64 * batch + warm) as i64;
    assert_eq!(rust.sum(), want, "Rust adds lost");
    // SAFETY: the live counter.
    assert_eq!(unsafe { sum(c) }, want, "C API adds lost");
    if has_rseq {
        assert_eq!(slots.iter().sum::<i64>(), 2 * want, "C rseq adds lost");
    }
    // SAFETY: freed once, not used after.
    unsafe { free(c) };

    let names = [
        "Rust PerCpuCounter::add (inlined)",
        "C cpulocal_counter_add (libcpulocal.so)",
        "C hand-written rseq add (area per add)",
        "C hand-written rseq add (area hoisted)",
    ];
    println!(
        "cpulocal-c ffi bench: one thread pinned to CPU {cpu}, {rounds} rounds of {batch} adds per \
         loop, loops alternating (engine: {})",
        cpulocal_rs::status().engine
    );
    println!("ns per add (median of the rounds)");
    for which in 0..loops {
        println!("  {:<42} {:>6.3}", names[which], median(&mut times[which]));
    }
    println!(
        "C API's time / each loop's time in the same round (median; above 1: the C API is slower)"
    );
    for which in (0..loops).filter(|&w| w != 1) {
        println!(
            "  vs {:<39} {:>6.2}",
            names[which],
            median(&mut api_over[which])
        );
    }
    if !has_rseq {
        println!("  (no glibc rseq area for this thread: the C rseq loops were not run)");
    }

    // The static half: its own process (a C program cannot link
    // libcpulocal.a beside this Rust program's own copy of the standard
    // library), the same loops in alternating batches.
    let exe = common::compile(
        "cpulocal_ffi_bench_static",
        &["benches/ffi.c", "benches/ffi_static.c"],
        common::Link::Static,
        &[],
    );
    let out = std::process::Command::new(&exe)
        .args([rounds.to_string(), batch.to_string()])
        .output()
        .expect("running the static half");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "the static half failed: {}",
        out.status
    );
}
