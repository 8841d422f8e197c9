//! A thread that registered cpulocal's own rseq area (glibc's registration
//! turned off) unregisters it in its exit destructor, before the memory can be
//! freed: after that the kernel never writes it again.
//!
//! The destructor poisons the area (feature `testing`); a thread-local
//! destructor that runs after cpulocal's sleeps, so the kernel would rewrite
//! `cpu_id_start`/`cpu_id` on the way back to user space if the area were still
//! registered, and checks the poison is intact. With the unregistration
//! skipped on purpose the same check must fail, which shows it is sensitive.

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
                assert_eq!(cpulocal::status().registration, Registration::Cpulocal);
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

#[test]
fn child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let (checked, rewritten) = run(mode == "skip");
    println!("checked {checked}, rewritten {rewritten}");
    assert_eq!(checked, THREADS, "every thread's checker ran");
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

fn child_passes(mode: &str) {
    let (status, text) = child::run_test(
        "child",
        &[(MODE, mode), ("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
    );
    assert!(
        status.success() && text.contains("THREAD EXIT OK"),
        "{mode}: {status}\n{text}"
    );
}

#[test]
fn exiting_threads_unregister_their_own_area() {
    child_passes("normal");
}

#[test]
fn the_check_detects_an_area_left_registered() {
    child_passes("skip");
}
