//! A request counter shared by many threads: each add is one rseq critical
//! section on the current CPU's cache line, while a reporter thread reads and
//! resets the total every few milliseconds without losing a concurrent add.
//!
//! Run: `cargo run --release -p cpulocal --example counter`

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use cpulocal::PerCpuCounter;

const THREADS: i64 = 8;
const ADDS: i64 = 1_000_000;

fn main() -> Result<(), cpulocal::Error> {
    let requests = PerCpuCounter::new();
    let adding = AtomicBool::new(true);
    let reported = thread::scope(|s| {
        let reporter = s.spawn(|| {
            let mut reported = 0;
            while adding.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(5));
                reported += requests.take(); // read and reset, exactly
            }
            reported
        });
        let adders: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| (0..ADDS).for_each(|_| requests.add(1))))
            .collect();
        adders.into_iter().for_each(|a| a.join().unwrap());
        adding.store(false, Ordering::Release);
        reporter.join().unwrap()
    });
    requests.add_on(0, 1)?; // CPU 0's slot, from whichever CPU runs this
    let total = reported + requests.take();
    println!(
        "{total} requests counted on {} CPUs ({} by the reporter as they came)",
        requests.cpus(),
        reported
    );
    assert_eq!(total, THREADS * ADDS + 1);
    Ok(())
}
