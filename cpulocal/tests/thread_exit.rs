//! A thread that registered cpulocal's own rseq area (glibc's registration
//! turned off) unregisters it in its exit destructor, before the memory can be
//! freed: after that the kernel never writes it again.
//!
//! The destructor poisons the area (feature `testing`); a thread-local
//! destructor that runs after cpulocal's sleeps, so the kernel would rewrite
//! `cpu_id_start`/`cpu_id` on the way back to user space if the area were still
//! registered, and checks the poison is intact. With the unregistration
//! skipped on purpose the same check must fail, which shows it is sensitive.
//!
//! The `sized` run registers 64-byte areas (as on a kernel whose
//! `AT_RSEQ_FEATURE_SIZE` is above 32, such as 7.3's 33), which the kernel
//! unregisters only when given the same length back.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cpulocal::testing::{self, Break, POISON};
use cpulocal::{PerCpuCounter, Registration};

mod child;

const MODE: &str = "CPULOCAL_THREAD_EXIT_CHILD";
const THREADS: usize = 200;

static CHECKED: AtomicUsize = AtomicUsize::new(0);
static REWRITTEN: AtomicUsize = AtomicUsize::new(0);

/// Checks the poison when its thread-local is destroyed, after cpulocal's.
struct Checker;

impl Drop for Checker {
    fn drop(&mut self) {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_micros(200)); // block, resume: the kernel's chance
        }
        let ids = testing::own_area_cpu_ids();
        CHECKED.fetch_add(1, Ordering::SeqCst);
        if ids != (POISON, POISON) {
            REWRITTEN.fetch_add(1, Ordering::SeqCst);
        }
    }
}

thread_local! {
    static CHECKER: Cell<Option<Checker>> = const { Cell::new(None) };
}

fn run(skip_unregister: bool) -> (usize, usize) {
    testing::set(Break::SkipUnregister, skip_unregister);
    let counter = std::sync::Arc::new(PerCpuCounter::new());
    // Joined one by one (pthread_join), which waits for the thread-local
    // destructors too; a scope would only wait for the closures.
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let counter = counter.clone();
            std::thread::spawn(move || {
                // Registered before cpulocal's destructor, so it runs after it.
                CHECKER.with(|c| c.set(Some(Checker)));
                let s = cpulocal::status();
                assert_eq!(s.registration, Registration::Cpulocal, "{s}");
                assert_eq!(s.rseq_area_len, Some(expected_len(&s)), "{s}");
                for _ in 0..100 {
                    counter.add(1);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    testing::set(Break::SkipUnregister, false);
    assert_eq!(counter.sum(), (THREADS * 100) as i64);
    (
        CHECKED.swap(0, Ordering::SeqCst),
        REWRITTEN.swap(0, Ordering::SeqCst),
    )
}

/// The length cpulocal's own areas should have in this child.
fn expected_len(s: &cpulocal::Status) -> u32 {
    match std::env::var_os(testing::OWN_FEATURE_SIZE_VAR) {
        // 64 rounded up to AT_RSEQ_ALIGN, which is 32 or 64 where it exists.
        Some(_) => 64,
        None if s.feature_size.is_none_or(|f| f <= 32) => 32,
        None => s.rseq_area_len.filter(|&n| n > 32).expect("a sized area"),
    }
}

#[test]
fn child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let (checked, rewritten) = run(mode == "skip");
    println!("checked {checked}, rewritten {rewritten}");
    assert_eq!(checked, THREADS, "every thread's checker ran");
    assert_eq!(
        testing::unregister_failures(),
        0,
        "the kernel refused to unregister an area (a length other than the registered one?)"
    );
    if mode == "skip" {
        assert!(
            rewritten > 0,
            "with the area left registered the kernel should rewrite the poison"
        );
    } else {
        assert_eq!(
            rewritten, 0,
            "the kernel wrote into an area cpulocal had unregistered"
        );
    }
    println!("THREAD EXIT OK");
}

fn child_passes(mode: &str, env: &[(&str, &str)]) {
    let mut env = env.to_vec();
    env.extend([(MODE, mode), ("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]);
    let (status, text) = child::run_test("child", &env);
    assert!(
        status.success() && text.contains("THREAD EXIT OK"),
        "{mode}: {status}\n{text}"
    );
}

#[test]
fn exiting_threads_unregister_their_own_area() {
    child_passes("normal", &[]);
}

#[test]
fn exiting_threads_unregister_their_own_sized_area() {
    // A kernel before 6.3 publishes no feature size and takes exactly 32
    // bytes (EINVAL for any other length), so cpulocal never registers more
    // there: the sized run exists from 6.3 on (the host and the 6.12 and 7.3
    // guests run it; the 6.1 guest cannot).
    if cpulocal::status().feature_size.is_none() {
        eprintln!("kernel before 6.3: areas are 32 bytes only, no sized run to check");
        return;
    }
    child_passes("sized", &[(testing::OWN_FEATURE_SIZE_VAR, "64")]);
}

#[test]
fn the_check_detects_an_area_left_registered() {
    let env = [(MODE, "skip"), ("GLIBC_TUNABLES", "glibc.pthread.rseq=0")];
    let (status, text) = child::run_test("child", &env);
    // Two ways to be caught. Most kernels rewrite the poisoned ids of the
    // area they still have registered, which the child's check sees. Newer
    // ones (seen on Linux 7.3) check on the way back to user space that the
    // ids they wrote are unchanged, and kill the thread with SIGSEGV: the
    // kernel's own detection of the same mistake.
    use std::os::unix::process::ExitStatusExt;
    let killed_by_kernel = status.signal() == Some(libc::SIGSEGV);
    assert!(
        killed_by_kernel || (status.success() && text.contains("THREAD EXIT OK")),
        "skip: {status}\n{text}"
    );
}
