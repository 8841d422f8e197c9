//! The per-thread cache of handles: registration returns handles that count
//! into the right recorder's series, whichever recorders a thread alternates
//! between, however many keys it registers, and after the thread exits.

mod common;

use cpulocal_metrics::{Recorder, THREAD_CACHE_KEYS};
use metrics::{counter, gauge, histogram, with_local_recorder};

#[test]
fn alternating_recorders_keep_their_own_series() {
    let a = Recorder::new();
    let b = Recorder::new();
    let (ha, hb) = (a.handle(), b.handle());
    for i in 0..100 {
        with_local_recorder(&a, || counter!("x").increment(1));
        with_local_recorder(&b, || counter!("x").increment(2));
        if i % 10 == 0 {
            // A run of calls on one recorder, served from the cache.
            for _ in 0..10 {
                with_local_recorder(&a, || counter!("x").increment(1));
            }
        }
    }
    assert_eq!(common::parse(&ha.render()).get("x"), 200.0);
    assert_eq!(common::parse(&hb.render()).get("x"), 200.0);
}

#[test]
fn a_dropped_recorder_is_not_confused_with_a_new_one() {
    // A new recorder may be allocated where a dropped one was: the cache
    // must not hand out the old one's series.
    for round in 1..=20u64 {
        let r = Recorder::new();
        let h = r.handle();
        with_local_recorder(&r, || {
            for _ in 0..round {
                counter!("c").increment(1);
                gauge!("g").increment(1.0);
                histogram!("h").record(1.0);
            }
        });
        drop(r);
        let e = common::parse(&h.render());
        assert_eq!(e.get("c"), round as f64, "round {round}");
        assert_eq!(e.get("g"), round as f64, "round {round}");
        assert_eq!(e.get("h_count"), round as f64, "round {round}");
    }
}

#[test]
fn more_keys_than_the_cache_holds_all_count() {
    let keys = THREAD_CACHE_KEYS + 300;
    let r = Recorder::new();
    let h = r.handle();
    with_local_recorder(&r, || {
        for round in 0..3 {
            for k in 0..keys {
                counter!("many", "k" => k.to_string()).increment(round + 1);
            }
        }
    });
    let e = common::parse(&h.render());
    for k in 0..keys {
        assert_eq!(e.get(&format!("many{{k=\"{k}\"}}")), 6.0, "key {k}");
    }
}

#[test]
fn counts_outlive_the_threads_that_made_them() {
    let r = Recorder::new();
    let h = r.handle();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                with_local_recorder(&r, || {
                    for _ in 0..1000 {
                        counter!("done").increment(1);
                    }
                })
            });
        }
    });
    // Every thread has exited and dropped its cache.
    assert_eq!(common::parse(&h.render()).get("done"), 4000.0);
    // A handle made on one thread and used on another counts too.
    let c = with_local_recorder(&r, || counter!("done"));
    std::thread::scope(|s| {
        s.spawn(|| c.increment(5));
    });
    assert_eq!(common::parse(&h.render()).get("done"), 4005.0);
}
