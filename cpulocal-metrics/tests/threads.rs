//! Eight threads updating the same labelled series through the `metrics`
//! macros: the render, parsed back, holds the exact totals; renders taken
//! meanwhile are well formed and consistent.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use cpulocal_metrics::Builder;
use metrics::{counter, gauge, histogram};

const THREADS: usize = 8;
const N: usize = 100_000;
const SAMPLES: [f64; 4] = [0.125, 0.25, 0.75, 2.0];

#[test]
fn eight_threads_give_exact_totals() {
    let recorder = Builder::new()
        .buckets(&[0.25, 0.5, 1.0])
        .unwrap()
        .add_global_label("host", "h1")
        .build();
    let handle = recorder.handle();
    let done = AtomicBool::new(false);

    std::thread::scope(|s| {
        // A reader, rendering and checking while the writers run.
        let reader = s.spawn(|| {
            let mut renders = 0;
            let mut last_get = 0.0;
            while !done.load(Ordering::Relaxed) || renders == 0 {
                let text = handle.render();
                let e = common::parse(&text);
                if let Some(&get) = e
                    .samples
                    .get(r#"requests_total{host="h1",method="GET",code="200"}"#)
                {
                    assert!(get >= last_get, "a counter went down: {last_get} -> {get}");
                    last_get = get;
                }
                let inf = r#"latency_seconds_bucket{host="h1",route="/a",le="+Inf"}"#;
                if let Some(&all) = e.samples.get(inf) {
                    assert_eq!(all, e.get(r#"latency_seconds_count{host="h1",route="/a"}"#));
                    let les = ["0.25", "0.5", "1", "+Inf"].map(|le| {
                        e.get(&format!(
                            r#"latency_seconds_bucket{{host="h1",route="/a",le="{le}"}}"#
                        ))
                    });
                    assert!(
                        les.windows(2).all(|w| w[0] <= w[1]),
                        "buckets not cumulative: {les:?}"
                    );
                }
                renders += 1;
            }
            renders
        });

        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let recorder = &recorder;
                s.spawn(move || {
                    metrics::with_local_recorder(recorder, || {
                        // A handle obtained once...
                        let post = counter!("requests_total", "method" => "POST", "code" => "200");
                        let inflight = gauge!("inflight", "pool" => "a");
                        for i in 0..N {
                            // ...and the macro each time.
                            counter!("requests_total", "method" => "GET", "code" => "200")
                                .increment(1);
                            post.increment(2);
                            inflight.increment(1.0);
                            if i.is_multiple_of(2) {
                                inflight.decrement(1.0);
                            }
                            gauge!("load").increment(0.25);
                            histogram!("latency_seconds", "route" => "/a")
                                .record(SAMPLES[(i + t) % SAMPLES.len()]);
                        }
                        histogram!("latency_seconds", "route" => "/a").record_many(1.0, 3);
                    })
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() >= 1);
    });

    let text = handle.render();
    let e = common::parse(&text);
    let total = (THREADS * N) as f64;
    assert_eq!(
        e.get(r#"requests_total{host="h1",method="GET",code="200"}"#),
        total
    );
    assert_eq!(
        e.get(r#"requests_total{host="h1",method="POST",code="200"}"#),
        2.0 * total
    );
    assert_eq!(e.get(r#"inflight{host="h1",pool="a"}"#), total / 2.0);
    assert_eq!(e.get(r#"load{host="h1"}"#), total * 0.25);

    // Each thread records N samples evenly over SAMPLES, then 1.0 three times.
    let per_sample = total / 4.0;
    let bucket = |le: &str| {
        e.get(&format!(
            r#"latency_seconds_bucket{{host="h1",route="/a",le="{le}"}}"#
        ))
    };
    let extra = (THREADS * 3) as f64;
    assert_eq!(bucket("0.25"), 2.0 * per_sample);
    assert_eq!(bucket("0.5"), 2.0 * per_sample);
    assert_eq!(bucket("1"), 3.0 * per_sample + extra);
    assert_eq!(bucket("+Inf"), total + extra);
    assert_eq!(
        e.get(r#"latency_seconds_count{host="h1",route="/a"}"#),
        total + extra
    );
    let sum: f64 = SAMPLES.iter().sum::<f64>() * per_sample + extra;
    assert_eq!(e.get(r#"latency_seconds_sum{host="h1",route="/a"}"#), sum);

    assert_eq!(e.types["requests_total"], "counter");
    assert_eq!(e.types["inflight"], "gauge");
    assert_eq!(e.types["latency_seconds"], "histogram");
    assert_eq!(
        e.samples.len(),
        2 + 2 + 4 + 2,
        "unexpected series in {text}"
    );
}

#[test]
fn counter_absolute_raises_to_at_least_the_value() {
    let recorder = Builder::new().build();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let c = counter!("c");
        c.increment(5);
        c.absolute(3); // below: no change
        assert_eq!(common::parse(&handle.render()).get("c"), 5.0);
        c.absolute(40);
        assert_eq!(common::parse(&handle.render()).get("c"), 40.0);
        c.increment(2);
        assert_eq!(common::parse(&handle.render()).get("c"), 42.0);
    });
    // Concurrent absolute calls never add the same gap twice.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let recorder = &recorder;
            s.spawn(move || {
                metrics::with_local_recorder(recorder, || {
                    for v in 0..2000u64 {
                        counter!("c").absolute(100 + v * 4 + t);
                    }
                })
            });
        }
    });
    assert_eq!(
        common::parse(&handle.render()).get("c"),
        (100 + 1999 * 4 + 3) as f64
    );
}
