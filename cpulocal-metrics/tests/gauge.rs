//! A gauge's set and increment semantics.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cpulocal_metrics::{Handle, Recorder};
use metrics::gauge;

fn value(handle: &Handle, series: &str) -> f64 {
    common::parse(&handle.render()).get(series)
}

#[test]
fn set_replaces_and_increments_add() {
    let recorder = Recorder::new();
    let h = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let g = gauge!("g");
        assert_eq!(value(&h, "g"), 0.0);
        g.increment(5.0);
        g.decrement(2.0);
        assert_eq!(value(&h, "g"), 3.0);
        g.set(10.0);
        assert_eq!(value(&h, "g"), 10.0);
        g.increment(1.0);
        assert_eq!(value(&h, "g"), 11.0);
        // Fractions take the shared word; a set clears it too.
        g.increment(0.5);
        assert_eq!(value(&h, "g"), 11.5);
        g.set(0.1);
        assert_eq!(value(&h, "g"), 0.1, "a set reads back bit for bit");
        g.decrement(0.1);
        assert_eq!(value(&h, "g"), 0.0);
        // Large whole numbers stay exact (summed as integers).
        g.set(0.0);
        g.increment(9_007_199_254_740_992.0);
        g.increment(1.0);
        g.decrement(9_007_199_254_740_992.0);
        assert_eq!(value(&h, "g"), 1.0);
        // NaN and infinities are recorded, and a set recovers from them.
        g.increment(f64::NAN);
        assert!(value(&h, "g").is_nan());
        g.set(7.0);
        assert_eq!(value(&h, "g"), 7.0);
        g.increment(f64::NEG_INFINITY);
        assert_eq!(value(&h, "g"), f64::NEG_INFINITY);
        g.set(-2.5);
        assert_eq!(value(&h, "g"), -2.5);
    });
}

#[test]
fn increments_from_other_threads_before_and_after_a_set() {
    let recorder = Recorder::new();
    let h = recorder.handle();
    let g = metrics::with_local_recorder(&recorder, || gauge!("g"));
    let add = |n: usize, by: f64| {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..n).for_each(|_| g.increment(by)));
            }
        })
    };
    add(10_000, 1.0); // completed before the set: replaced
    g.set(7.0);
    assert_eq!(value(&h, "g"), 7.0);
    add(10_000, 1.0); // after the set: counted
    assert_eq!(value(&h, "g"), 40_007.0);
    add(1000, -0.5);
    assert_eq!(value(&h, "g"), 38_007.0);
}

#[test]
fn concurrent_sets_and_increments_count_each_increment_at_most_once() {
    // Writers add 1 at a time; a setter sets 1e9 or 0 over and over. Every
    // value ever read is a base (0 or 1e9) plus a whole number of
    // increments between 0 and all of them: never a set halfway, never an
    // increment counted twice.
    const CHUNKS: usize = 100;
    const CHUNK: usize = 2_000;
    const PER_THREAD: usize = CHUNKS * CHUNK;
    const WRITERS: usize = 3;
    let recorder = Recorder::new();
    let h = recorder.handle();
    let g = metrics::with_local_recorder(&recorder, || gauge!("g"));
    let stop = AtomicBool::new(false);
    let check = |v: f64| {
        let base = if v >= 1e9 { 1e9 } else { 0.0 };
        let extra = v - base;
        assert!(
            extra.fract() == 0.0 && (0.0..=(WRITERS * PER_THREAD) as f64).contains(&extra),
            "impossible gauge value {v}"
        );
    };
    let sets = AtomicUsize::new(0);
    let reads = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                g.set(if i.is_multiple_of(2) { 1e9 } else { 0.0 });
                sets.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                check(value(&h, "g"));
                reads.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Start the writers once the setter and the reader run.
        while sets.load(Ordering::Relaxed) == 0 || reads.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        // Each writer waits for a new set after each chunk of increments,
        // so sets and increments interleave however the CPUs are shared.
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..CHUNKS {
                        let seen = sets.load(Ordering::Relaxed);
                        (0..CHUNK).for_each(|_| g.increment(1.0));
                        while sets.load(Ordering::Relaxed) == seen {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    check(value(&h, "g"));
    // With the setter gone, the last set's base plus later increments only.
    g.set(5.0);
    g.increment(1.0);
    assert_eq!(value(&h, "g"), 6.0);
}
