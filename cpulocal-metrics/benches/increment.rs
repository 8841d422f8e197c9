//! `cargo bench -p cpulocal-metrics --bench increment [-- --rounds N] [-- --quick]`
//!
//! `counter.increment(1)` on one shared counter, at 1, 2 and 8 threads, for
//! three recorders side by side in one process:
//!
//! - `cpulocal`: this crate's [`Recorder`]: one per-CPU add;
//! - `exporter`: `metrics-exporter-prometheus`'s own recorder
//!   (`PrometheusBuilder::new().build_recorder()`);
//! - `atomic_storage`: a recorder over `metrics-util`'s
//!   `Registry<Key, AtomicStorage>`, one shared `AtomicU64` per counter.
//!
//! Two ways to call it: `handle`, a `Counter` obtained once per thread from
//! `metrics::counter!("x")` and then `counter.increment(1)`; and `macro`,
//! `metrics::counter!("x").increment(1)` each time (a registration lookup
//! per call, through a thread-local recorder).
//!
//! Rounds are interleaved: each round runs every (threads, mode, peer) batch
//! once, peers in an order that rotates from round to round, so that the
//! noisy machine's slow phases fall on all peers alike. A batch is a fixed
//! number of operations split over its threads, started together by a
//! barrier; its time is wall time / all threads' operations. Each cell
//! reports the median over rounds, and each ratio (peer ns / cpulocal ns)
//! the median of the per-round ratios. Threads are not pinned (8 threads on
//! a 2-CPU machine share the CPUs as a service's threads would). Every
//! batch checks the counter's total afterwards, so no peer can skip work.

use std::sync::Barrier;
use std::time::Instant;

use cpulocal_metrics::Recorder;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::registry::{AtomicStorage, Registry};

const THREADS: [usize; 3] = [1, 2, 8];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Cpulocal,
    Exporter,
    AtomicStorage,
}

const PEERS: [Peer; 3] = [Peer::Cpulocal, Peer::Exporter, Peer::AtomicStorage];

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Cpulocal => "cpulocal",
            Peer::Exporter => "exporter",
            Peer::AtomicStorage => "atomic_storage",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Handle,
    Macro,
}

const MODES: [Mode; 2] = [Mode::Handle, Mode::Macro];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Handle => "handle",
            Mode::Macro => "macro",
        }
    }
}

/// A minimal recorder over metrics-util's atomic storage.
struct AtomicRecorder(Registry<Key, AtomicStorage>);

impl metrics::Recorder for AtomicRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// One peer's recorder and a way to read its counter `x`.
enum Subject {
    Cpulocal(Recorder, cpulocal_metrics::Handle),
    Exporter(PrometheusRecorder, PrometheusHandle),
    Atomic(AtomicRecorder),
}

impl Subject {
    fn new(peer: Peer) -> Subject {
        match peer {
            Peer::Cpulocal => {
                let r = Recorder::new();
                let h = r.handle();
                Subject::Cpulocal(r, h)
            }
            Peer::Exporter => {
                let r = PrometheusBuilder::new().build_recorder();
                let h = r.handle();
                Subject::Exporter(r, h)
            }
            Peer::AtomicStorage => Subject::Atomic(AtomicRecorder(Registry::atomic())),
        }
    }

    fn recorder(&self) -> &(dyn metrics::Recorder + Sync) {
        match self {
            Subject::Cpulocal(r, _) => r,
            Subject::Exporter(r, _) => r,
            Subject::Atomic(r) => r,
        }
    }

    /// Counter `x`'s total.
    fn total(&self) -> u64 {
        let from_text = |text: String| {
            text.lines()
                .find_map(|l| l.strip_prefix("x "))
                .map_or(0, |v| v.parse().expect("a count"))
        };
        match self {
            Subject::Cpulocal(_, h) => from_text(h.render()),
            Subject::Exporter(_, h) => from_text(h.render()),
            Subject::Atomic(r) => {
                r.0.get_counter(&Key::from_static_name("x"))
                    .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
            }
        }
    }
}

/// Runs `ops_per_thread` increments on each of `threads` threads; returns
/// ns per operation: from the first thread's start to the last one's end,
/// over all threads' operations. Each thread reads the clock itself, right
/// after the barrier and right after its loop, so the time does not depend
/// on when the spawning thread gets a CPU back.
fn batch(subject: &Subject, mode: Mode, threads: usize, ops_per_thread: u64) -> f64 {
    let barrier = Barrier::new(threads);
    let recorder = subject.recorder();
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || match mode {
                    Mode::Handle => {
                        let counter =
                            metrics::with_local_recorder(recorder, || metrics::counter!("x"));
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..ops_per_thread {
                            counter.increment(1);
                        }
                        (start, Instant::now())
                    }
                    Mode::Macro => metrics::with_local_recorder(recorder, || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..ops_per_thread {
                            metrics::counter!("x").increment(1);
                        }
                        (start, Instant::now())
                    }),
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .collect()
    });
    let start = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("one thread at least");
    let end = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("one thread at least");
    (end - start).as_nanos() as f64 / (threads as u64 * ops_per_thread) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 9 });
    // Operations per batch, all threads together.
    let total_ops = |mode: Mode| -> u64 {
        let base = match mode {
            Mode::Handle => 4_000_000,
            Mode::Macro => 1_000_000,
        };
        if quick {
            base / 4
        } else {
            base
        }
    };

    let status = cpulocal::status();
    println!(
        "cpulocal-metrics increment bench: {} possible CPUs, engine {:?}; {rounds} interleaved rounds",
        status.possible_cpus, status.engine
    );

    let subjects: Vec<Subject> = PEERS.iter().map(|&p| Subject::new(p)).collect();
    let mut expected = [0u64; 3];
    // ns[mode][threads][peer] = one value per round.
    let mut ns = vec![vec![vec![Vec::new(); PEERS.len()]; THREADS.len()]; MODES.len()];
    for round in 0..=rounds {
        // Round 0 warms up (threads, registrations, caches) and is not kept.
        for (ti, &threads) in THREADS.iter().enumerate() {
            for (mi, &mode) in MODES.iter().enumerate() {
                let ops_per_thread = total_ops(mode) / threads as u64;
                for k in 0..PEERS.len() {
                    let pi = (k + round) % PEERS.len();
                    let v = batch(&subjects[pi], mode, threads, ops_per_thread);
                    expected[pi] += ops_per_thread * threads as u64;
                    let total = subjects[pi].total();
                    assert_eq!(total, expected[pi], "{}: lost increments", PEERS[pi].name());
                    if round > 0 {
                        ns[mi][ti][pi].push(v);
                    }
                }
            }
        }
        if round > 0 {
            eprint!("\rround {round}/{rounds} done");
        }
    }
    eprintln!();

    println!("\nns per counter.increment(1), wall time / all threads' operations, median of {rounds} rounds");
    println!(
        "{:<8}{:>8}{:>12}{:>12}{:>16}{:>25}{:>25}",
        "mode",
        "threads",
        "cpulocal",
        "exporter",
        "atomic_storage",
        "exporter/cpulocal",
        "atomic_storage/cpulocal"
    );
    let mut goal = Vec::new();
    for (mi, &mode) in MODES.iter().enumerate() {
        for (ti, &threads) in THREADS.iter().enumerate() {
            let cells = &ns[mi][ti];
            let med: Vec<f64> = cells.iter().map(|v| median(&mut v.clone())).collect();
            let ratio = |pi: usize| {
                let mut r: Vec<f64> = cells[pi]
                    .iter()
                    .zip(&cells[0])
                    .map(|(p, c)| p / c)
                    .collect();
                median(&mut r)
            };
            let (re, ra) = (ratio(1), ratio(2));
            println!(
                "{:<8}{:>8}{:>12.2}{:>12.2}{:>16.2}{:>24.2}x{:>24.2}x",
                mode.name(),
                threads,
                med[0],
                med[1],
                med[2],
                re,
                ra
            );
            if mode == Mode::Handle && threads >= 2 {
                goal.push((threads, re));
            }
        }
    }
    println!();
    for (threads, r) in goal {
        println!(
            "goal exporter/cpulocal >= 3 (handle, {threads} threads): {r:.2}x {}",
            if r >= 3.0 { "met" } else { "NOT met" }
        );
    }
}
