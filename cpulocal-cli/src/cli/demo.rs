//! `cpulocal demo`: many threads add to one `PerCpuCounter` while another
//! drains it; the adds must all be counted, exactly once.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::{Engine, PerCpuCounter};

use super::{grouped, DemoArgs, Failure};

/// Operations per thread by default: about one second in a release build with
/// 6 threads per CPU on an idle 2-CPU machine (it depends on how often threads
/// meet on a fence: each remote operation holds one for a membarrier).
pub const DEFAULT_OPS: u64 = 500_000;

/// Threads per possible CPU by default: oversubscribed, so threads are
/// preempted and migrated in the middle of their sections.
const THREADS_PER_CPU: u64 = 6;

/// One operation in this many is an `add_on` another CPU; the others are
/// `add` on the current CPU.
const REMOTE_EVERY: u64 = 16;

/// How often the draining thread calls `take()`.
const TAKE_EVERY: Duration = Duration::from_millis(1);

/// Stack size of the demo's threads: they only run the counter's operations.
const STACK_SIZE: usize = 256 * 1024;

/// What one adding thread did.
struct Worker {
    local: u64,
    round_robin: u64,
    random: u64,
    cpu_time: Duration,
    engine: Engine,
}

/// Lets every thread start at once, or none if one could not be created.
#[derive(Default)]
struct Gate {
    open: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, go: bool) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        self.changed.notify_all();
    }

    /// Waits until the gate is set; true to go, false to give up.
    fn wait(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(go) = *open {
                return go;
            }
            open = self.changed.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs the demo and prints its report; fails if the counter is not exact.
pub fn run(out: &mut impl Write, args: &DemoArgs) -> Result<(), Failure> {
    let plan = Plan::new(args)?;
    plan.header(out, "")?;
    let o = measure(&plan)?;
    write_full(out, &o)?;
    verdict(&o)
}

/// The demo in plain words, for the command without a subcommand: what ran,
/// whether every add was counted, and what the three paths mean.
pub fn run_plain(out: &mut impl Write, args: &DemoArgs) -> Result<(), Failure> {
    let plan = Plan::new(args)?;
    writeln!(
        out,
        "Counter demo: {} threads each add 1 to one PerCpuCounter {} times, while",
        grouped(plan.threads as u64),
        grouped(plan.ops)
    )?;
    writeln!(
        out,
        "another thread empties it with take() every {} ms. One add in {REMOTE_EVERY} goes to another CPU's slot.",
        TAKE_EVERY.as_millis()
    )?;
    let o = measure(&plan)?;
    let got = o.taken.wrapping_add(o.rest);
    writeln!(
        out,
        "  {} adds, {} counted (taken {} + left {}): {}",
        grouped(plan.expected),
        grouped(got),
        grouped(o.taken),
        grouped(o.rest),
        if got == plan.expected {
            "exact, none lost or doubled"
        } else {
            "NOT EXACT"
        }
    )?;
    let total = plan.expected as u64;
    let stats = o.stats;
    let pct = |n: u64| 100.0 * n as f64 / total as f64;
    writeln!(
        out,
        "  {:>5.1}% fast: one rseq critical section on the CPU the thread ran on",
        pct(total.saturating_sub(stats.retried + stats.fenced))
    )?;
    writeln!(
        out,
        "  {:>5.2}% retried: the kernel interrupted the section (preemption, migration, signal)",
        pct(stats.retried)
    )?;
    writeln!(
        out,
        "  {:>5.1}% fenced: ordinary code under the slot's fence word, for another CPU's slot,",
        pct(stats.fenced)
    )?;
    writeln!(
        out,
        "         a slot another thread had fenced, or after repeated interruptions"
    )?;
    verdict(&o)
}

/// The demo's size, checked.
#[derive(Clone, Copy)]
struct Plan {
    cpus: usize,
    threads: usize,
    ops: u64,
    expected: i64,
}

impl Plan {
    fn new(args: &DemoArgs) -> Result<Plan, Failure> {
        let cpus = cpulocal::possible_cpus();
        let threads = args.threads.unwrap_or(THREADS_PER_CPU * cpus as u64);
        let ops = args.ops;
        let expected = threads
            .checked_mul(ops)
            .and_then(|t| i64::try_from(t).ok())
            .ok_or_else(|| {
                Failure::Broken(format!(
                    "{threads} threads × {ops} ops does not fit the counter (at most {} adds)",
                    grouped(i64::MAX)
                ))
            })?;
        let threads = usize::try_from(threads)
            .map_err(|_| Failure::Broken(format!("cannot run {threads} threads")))?;
        Ok(Plan {
            cpus,
            threads,
            ops,
            expected,
        })
    }

    fn header(&self, out: &mut impl Write, suffix: &str) -> std::io::Result<()> {
        writeln!(
            out,
            "counter demo: {} threads × {} ops on {} CPU{}, take() every {} ms{suffix}",
            grouped(self.threads as u64),
            grouped(self.ops),
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            TAKE_EVERY.as_millis(),
        )?;
        out.flush()
    }
}

/// What a demo run did.
struct Outcome {
    plan: Plan,
    workers: Vec<Worker>,
    taken: i64,
    takes: u64,
    slots: Vec<i64>,
    rest: i64,
    wall: Duration,
    stats: cpulocal::PathStats,
}

/// Runs the demo threads and collects what they did.
fn measure(plan: &Plan) -> Result<Outcome, Failure> {
    let (threads, ops) = (plan.threads, plan.ops);
    let counter = Arc::new(PerCpuCounter::new());
    let gate = Arc::new(Gate::default());
    let done = Arc::new(AtomicBool::new(false));

    let taker = {
        let (c, g, d) = (counter.clone(), gate.clone(), done.clone());
        spawn("taker", move || {
            let (mut taken, mut takes) = (0i64, 0u64);
            if g.wait() {
                while !d.load(Ordering::Acquire) {
                    taken = taken.wrapping_add(c.take());
                    takes += 1;
                    thread::sleep(TAKE_EVERY);
                }
            }
            (taken, takes)
        })
        .inspect_err(|_| gate.set(false))?
    };
    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let (c, g) = (counter.clone(), gate.clone());
        let seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(t as u64 + 1);
        match spawn("adder", move || g.wait().then(|| add(&c, ops, seed))) {
            Ok(w) => workers.push(w),
            Err(e) => {
                gate.set(false);
                done.store(true, Ordering::Release);
                return Err(e);
            }
        }
    }

    let start = Instant::now();
    gate.set(true);
    let workers: Vec<Worker> = workers
        .into_iter()
        .map(|w| w.join())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Failure::Broken("an adding thread panicked".into()))?
        .into_iter()
        .flatten()
        .collect();
    let wall = start.elapsed();
    done.store(true, Ordering::Release);
    let (taken, takes) = taker
        .join()
        .map_err(|_| Failure::Broken("the taking thread panicked".into()))?;

    // Every thread has stopped: the slots hold what the last take() left.
    let slots = counter.per_cpu();
    let rest = counter.sum();
    Ok(Outcome {
        plan: *plan,
        workers,
        taken,
        takes,
        slots,
        rest,
        wall,
        stats: counter.stats(),
    })
}

/// The "expected" and "taken + sum" lines.
fn write_exactness(out: &mut impl Write, o: &Outcome) -> std::io::Result<()> {
    let got = o.taken.wrapping_add(o.rest);
    writeln!(out, "  expected:       {}", grouped(o.plan.expected))?;
    writeln!(
        out,
        "  taken + sum:    {} + {} = {}  {} ({} takes)",
        grouped(o.taken),
        grouped(o.rest),
        grouped(got),
        if got == o.plan.expected {
            "exact"
        } else {
            "NOT EXACT"
        },
        grouped(o.takes),
    )
}

/// The demo's full report.
fn write_full(out: &mut impl Write, o: &Outcome) -> std::io::Result<()> {
    let workers = &o.workers;
    let wall = o.wall;
    write_exactness(out, o)?;
    write_slots(out, &o.slots)?;

    let total = o.plan.expected as u64;
    let cpu_time: Duration = workers.iter().map(|w| w.cpu_time).sum();
    writeln!(
        out,
        "  time:           {:.2} s wall, {:.1} M ops/s, {} ns/op (threads' CPU time / ops)",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64() / 1e6,
        grouped((cpu_time.as_nanos() as f64 / total as f64).round() as u64),
    )?;
    let local: u64 = workers.iter().map(|w| w.local).sum();
    let round_robin: u64 = workers.iter().map(|w| w.round_robin).sum();
    let random: u64 = workers.iter().map(|w| w.random).sum();
    writeln!(
        out,
        "  calls:          add(1) {}, add_on(other CPU, 1) {} round-robin + {} random",
        grouped(local),
        grouped(round_robin),
        grouped(random),
    )?;
    let stats = o.stats;
    let pct = |n: u64| 100.0 * n as f64 / total as f64;
    if let Some(fast) = total.checked_sub(stats.retried + stats.fenced) {
        writeln!(
            out,
            "  paths:          fast {} ({:.1}%), retried {} ({:.2}%, {} aborts), fenced {} ({:.1}%)",
            grouped(fast),
            pct(fast),
            grouped(stats.retried),
            pct(stats.retried),
            grouped(stats.aborts),
            grouped(stats.fenced),
            pct(stats.fenced),
        )?;
    }
    writeln!(out, "  engine:         {}", engines(workers))
}

/// Fails if the counter was not exact or the threads did not all run.
fn verdict(o: &Outcome) -> Result<(), Failure> {
    let (threads, expected) = (o.plan.threads, o.plan.expected);
    let (taken, rest) = (o.taken, o.rest);
    let got = taken.wrapping_add(rest);
    let total = expected as u64;
    let stats = o.stats;
    let workers = &o.workers;
    let local: u64 = workers.iter().map(|w| w.local).sum();
    let round_robin: u64 = workers.iter().map(|w| w.round_robin).sum();
    let random: u64 = workers.iter().map(|w| w.random).sum();
    if got != expected {
        return Err(Failure::Broken(format!(
            "the counter is not exact: {} adds ran, but take() returned {} and {} remain, {} {} ({})",
            grouped(expected),
            grouped(taken),
            grouped(rest),
            grouped(got.wrapping_sub(expected).unsigned_abs()),
            if got < expected { "adds lost" } else { "more than were added" },
            "a bug in cpulocal's fence protocol",
        )));
    }
    if workers.len() != threads || local + round_robin + random != total {
        return Err(Failure::Broken(format!(
            "{} of {threads} threads ran {} of {} operations",
            workers.len(),
            grouped(local + round_robin + random),
            grouped(total),
        )));
    }
    if total.checked_sub(stats.retried + stats.fenced).is_none() {
        return Err(Failure::Broken(format!(
            "the path statistics count more slow operations ({} retried + {} fenced) than ran ({})",
            grouped(stats.retried),
            grouped(stats.fenced),
            grouped(total),
        )));
    }
    Ok(())
}

/// Starts a demo thread.
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, Failure> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_SIZE)
        .spawn(f)
        .map_err(|e| Failure::Broken(format!("cannot start a demo thread: {e}")))
}

/// One adding thread: `ops` adds of 1, one in [`REMOTE_EVERY`] on another CPU
/// (alternately the next in turn and a random one).
fn add(counter: &PerCpuCounter, ops: u64, seed: u64) -> Worker {
    let cpus = counter.cpus();
    let mut rng = seed | 1;
    let mut next = 0usize;
    let (mut local, mut round_robin, mut random) = (0u64, 0u64, 0u64);
    let engine = cpulocal::status().engine;
    let start = thread_cpu_time();
    for i in 0..ops {
        if i % REMOTE_EVERY != REMOTE_EVERY - 1 {
            counter.add(1);
            local += 1;
        } else if i % (2 * REMOTE_EVERY) == REMOTE_EVERY - 1 {
            next = next.wrapping_add(1);
            counter
                .add_on(other_cpu(next, cpus), 1)
                .expect("a CPU of the counter");
            round_robin += 1;
        } else {
            // xorshift64: cheap, and good enough to scatter targets.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            counter
                .add_on(other_cpu(rng as usize, cpus), 1)
                .expect("a CPU of the counter");
            random += 1;
        }
    }
    Worker {
        local,
        round_robin,
        random,
        cpu_time: thread_cpu_time().saturating_sub(start),
        engine,
    }
}

/// The `k`-th CPU other than the current one (CPU 0 on a 1-CPU machine).
fn other_cpu(k: usize, cpus: usize) -> usize {
    if cpus < 2 {
        return 0;
    }
    (cpulocal::current_cpu() + 1 + k % (cpus - 1)) % cpus
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The per-CPU slot values, eight to a line.
fn write_slots(out: &mut impl Write, slots: &[i64]) -> std::io::Result<()> {
    for (row, chunk) in slots.chunks(8).enumerate() {
        let label = if row == 0 { "per-CPU slots:" } else { "" };
        let cells: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| format!("cpu{} {}", row * 8 + i, grouped(*v)))
            .collect();
        writeln!(out, "  {label:<16}{}", cells.join("  "))?;
    }
    Ok(())
}

/// Which engine the adding threads ran, e.g. "rseq on all 12 threads".
fn engines(workers: &[Worker]) -> String {
    let mut by_engine: BTreeMap<&str, usize> = BTreeMap::new();
    for w in workers {
        let name = match w.engine {
            Engine::Rseq => "rseq",
            Engine::Fenced { membarrier: true } => "fenced (with membarrier)",
            Engine::Fenced { membarrier: false } => "fenced (no membarrier)",
            _ => "other",
        };
        *by_engine.entry(name).or_default() += 1;
    }
    if let [(name, n)] = by_engine.iter().collect::<Vec<_>>()[..] {
        return format!("{name} on all {n} threads");
    }
    by_engine
        .iter()
        .map(|(name, n)| format!("{name} on {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
