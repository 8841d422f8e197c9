//! `cargo bench -p cpulocal-cli --bench counter`
//!
//! Per-CPU increment, ns per operation, at 1 and 2 threads (threads pinned one
//! per CPU):
//!
//! - `cpulocal_add`: `PerCpuCounter::add(1)`;
//! - `c_rseq`: the hand-written C rseq increment (librseq style) - the floor;
//! - `c_rseq_fence_check`: the same plus cpulocal's fence check;
//! - `shared_atomic`: one shared `AtomicI64::fetch_add`;
//! - `getcpu_atomic`: `sched_getcpu()` + per-CPU padded `AtomicI64::fetch_add`;
//! - `thread_local_fetch_add`, `thread_local_load_store`: the `thread_local`
//!   crate, one cache-padded `AtomicI64` per thread (`fetch_add`, or a load
//!   and a store by the owner);
//! - `fast_counter`: the `fast-counter` crate's `ConcurrentCounter::add`.
//!
//! Multi-thread numbers are per-operation wall time across threads: each of T
//! threads runs `iters` operations and the routine reports wall time / T, so a
//! perfectly scaling peer shows half the 1-thread time at 2 threads.
//!
//! `fenced_add_on/{target_idle,target_busy}`: `add_on(cpu, 1)` from a thread
//! pinned to another CPU (every call takes the fenced path), with the target
//! CPU idle or running another thread of this process.
//!
//! After the criterion groups, a summary prints the ratios the project tracks,
//! from criterion's own estimates (slope where it has one, else mean), plus a
//! directly measured median latency of the fenced path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cpulocal_cli::{time_per_thread, FencedAddOn, Peer, Runner, Target, Workload};
use criterion::{criterion_group, BenchmarkId, Criterion};

const THREADS: [usize; 2] = [1, 2];

fn per_cpu_add(c: &mut Criterion) {
    let mut group = c.benchmark_group("add");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for threads in THREADS {
        let runner = Runner::new(threads).expect("spawn and pin bench threads");
        for peer in Peer::ALL {
            let Some(w) = Workload::new(peer) else {
                eprintln!(
                    "add/{}: not available on this machine, skipped",
                    peer.name()
                );
                continue;
            };
            let w = Arc::new(w);
            let mut ops = 0u64;
            group.bench_function(BenchmarkId::new(peer.name(), threads), |b| {
                b.iter_custom(|iters| {
                    ops += iters * threads as u64;
                    time_per_thread(&runner, &w, iters)
                })
            });
            assert_eq!(w.total(), ops as i64, "{}: lost updates", peer.name());
        }
    }
    group.finish();
}

fn fenced_add_on(c: &mut Criterion) {
    let mut group = c.benchmark_group("fenced_add_on");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for target in [Target::Idle, Target::Busy] {
        let Some(f) = FencedAddOn::new(target).expect("spawn and pin bench threads") else {
            eprintln!("fenced_add_on: needs two CPUs, skipped");
            return;
        };
        group.bench_function(target.name(), |b| b.iter_custom(|iters| f.time(iters)));
        let (sum, on_target) = f.total();
        assert!(
            on_target && sum as u64 == f.fenced_ops(),
            "add_on must all be fenced, on the target"
        );
    }
    group.finish();
}

/// Reads criterion's point estimate (ns) for `group/id`: slope if present,
/// else mean; and the median.
fn estimate(group: &str, id: &str) -> Option<(f64, f64)> {
    let dir = criterion_dir()?
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(dir).ok()?;
    let point = |key: &str| -> Option<f64> {
        let at = text.find(&format!("\"{key}\""))?;
        let rest = &text[at..];
        let pe = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
        let num: String = rest[pe..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            .collect();
        num.parse().ok()
    };
    let central = match text.find("\"slope\":null") {
        Some(_) => point("mean")?,
        None => point("slope").or_else(|| point("mean"))?,
    };
    Some((central, point("median")?))
}

fn criterion_dir() -> Option<std::path::PathBuf> {
    if let Ok(d) = std::env::var("CRITERION_HOME") {
        return Some(d.into());
    }
    // Bench binaries run with the package directory as cwd; the target
    // directory is the workspace's.
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    Some(target.join("criterion"))
}

fn summary() {
    let mut ns = HashMap::new();
    println!("\n== summary: ns/op (criterion slope or mean) ==");
    println!("{:<26}{:>10}{:>10}", "peer", "1 thread", "2 threads");
    for peer in Peer::ALL {
        let cells: Vec<String> = THREADS
            .iter()
            .map(
                |&t| match estimate("add", &format!("{}/{t}", peer.name())) {
                    Some((v, _)) => {
                        ns.insert((peer, t), v);
                        format!("{v:10.3}")
                    }
                    None => format!("{:>10}", "-"),
                },
            )
            .collect();
        println!("{:<26}{}", peer.name(), cells.concat());
    }
    let ratio = |a: Peer, b: Peer, t: usize| match (ns.get(&(a, t)), ns.get(&(b, t))) {
        (Some(x), Some(y)) => format!("{:.2}", x / y),
        _ => "-".into(),
    };
    println!("\n== ratios ==");
    for t in THREADS {
        println!(
            "cpulocal_add / c_rseq        @{t}: {}  (target <= 1.10)",
            ratio(Peer::Cpulocal, Peer::CRseq, t)
        );
        println!(
            "c_rseq_fence_check / c_rseq  @{t}: {}",
            ratio(Peer::CRseqFenceCheck, Peer::CRseq, t)
        );
    }
    println!(
        "shared_atomic / cpulocal_add @2: {}  (target >= 20)",
        ratio(Peer::SharedAtomic, Peer::Cpulocal, 2)
    );
    for t in THREADS {
        println!(
            "getcpu_atomic / cpulocal_add @{t}: {}  (target >= 2.5)",
            ratio(Peer::GetcpuAtomic, Peer::Cpulocal, t)
        );
    }
    println!("\n== fenced add_on (target <= 1 us) ==");
    for target in [Target::Idle, Target::Busy] {
        let crit = estimate("fenced_add_on", target.name());
        let direct = FencedAddOn::new(target).ok().flatten().map(|f| {
            f.time(10_000); // warm up
            f.median(100_000)
        });
        match (crit, direct) {
            (Some((mean, median)), Some(d)) => println!(
                "{:<12} criterion: {mean:.0} ns/op (slope), {median:.0} ns (median of samples); \
                 per-call median over 100000 calls: {} ns",
                target.name(),
                d.as_nanos()
            ),
            (_, Some(d)) => println!(
                "{:<12} per-call median over 100000 calls: {} ns",
                target.name(),
                d.as_nanos()
            ),
            _ => println!("{:<12} not measured (needs two CPUs)", target.name()),
        }
    }
}

criterion_group! {
    name = benches;
    // No HTML plots: the workspace builds plotters without system fonts (for
    // `cpulocal bench`'s charts), and criterion's plots need them.
    config = Criterion::default().without_plots();
    targets = per_cpu_add, fenced_add_on
}

fn main() {
    benches();
    Criterion::default()
        .without_plots()
        .configure_from_args()
        .final_summary();
    // `cargo bench -- --list` or a filter that skips groups: the summary reads
    // whatever estimates exist, and says "-" for the rest.
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        summary();
    }
}
