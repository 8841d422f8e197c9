//! `cpulocal stress`: every structure under load, in the spirit of the
//! kernel's rseq `param_test`, with an exact invariant per structure.
//!
//! Workers (6 × CPUs by default) run one structure's operations; around them,
//! as asked: forced migrations (each worker re-pins itself to a random
//! allowed CPU now and then), a fence storm (a thread running the
//! structure's cross-CPU operation on every CPU in a loop), a signal thread
//! (SIGUSR1 to random workers; the handler adds to a counter, which is
//! async-signal-safe), and every N passes of a worker a yield, a sleep or a
//! raised signal. With the `inject` build feature, delay loops at the
//! numbered points of every critical section and of the fenced path (see
//! `cpulocal::inject`). `--no-rseq` reruns the command in a child process
//! with `CPULOCAL_NO_RSEQ=1` (the fenced engine only). `--matrix` runs every
//! injection point × {delay, yield, signal} × {rseq, no-rseq}: each cell puts
//! a 200-iteration delay loop at its point; "yield" adds a yield every 97
//! passes of each worker and of the fenced path's points (4 to 6), "signal" a
//! raised SIGUSR1 at the same places plus the signal thread, whose signals
//! land inside sections (points 1 to 3 are inside the asm, where nothing but
//! a delay can run). Without rseq no section runs, so points 1 to 3 do not
//! exist there: those cells exercise the fenced path with the every-N
//! actions only.
//!
//! Invariants: counter: everything added (workers, handlers) equals what the
//! storm took plus the final sum; list, buffer, memcpy: every item exactly
//! once at the end, and every copied item intact when popped; lock: no two
//! holders at once, and the per-slot totals equal the increments; opv:
//! `add_store` shapes and `Op::Add` vectors on the same words sum exactly;
//! ring: every record delivered exactly once or refused and counted as lost,
//! never both, never neither, none torn.
//! A broken invariant ends the command with exit status 1 and a message
//! naming it.
#![allow(unsafe_code)]

use std::io::{self, Write};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use cpulocal::opv::Op;
use cpulocal::{
    Domain, Index, Node, Order, PerCpuBuffer, PerCpuCounter, PerCpuList, PerCpuLock,
    PerCpuMemcpyBuffer, RseqOff,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Failure, StressArgs};
use cpulocal_cli::runner;

/// The structures `cpulocal stress` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestArg {
    /// PerCpuCounter: add, add_on, take.
    Counter,
    /// PerCpuList: pop_node, push_node, pop_node_on, push_node_on, drain_nodes.
    List,
    /// PerCpuBuffer of boxes: pop, push, pop_on, push_on, drain.
    Buffer,
    /// PerCpuMemcpyBuffer: the same with copied, checksummed items.
    Memcpy,
    /// PerCpuLock: lock, lock_on.
    Lock,
    /// A Domain: add_store shapes and Op::Add vectors on the same words.
    Opv,
    /// PerCpuRing: reserve, write, commit (sometimes after a migration), a
    /// concurrent flush (fenced padding of every CPU's buffer) and consumer
    /// (the fence-storm thread, when asked for).
    Ring,
    /// Each of the above in turn.
    All,
}

const TESTS: [TestArg; 7] = [
    TestArg::Counter,
    TestArg::List,
    TestArg::Buffer,
    TestArg::Memcpy,
    TestArg::Lock,
    TestArg::Opv,
    TestArg::Ring,
];

/// What a worker does every `--every` passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    /// `sched_yield()`.
    Yield,
    /// Sleep 1 ms.
    Sleep,
    /// `raise(SIGUSR1)`.
    Signal,
}

/// The environment variable that marks the `--no-rseq` child.
const CHILD_VAR: &str = "CPULOCAL_STRESS_CHILD";

/// The last of the library's numbered injection points (`cpulocal::inject`,
/// points 1 to 6), which `--delay` and `--matrix` name.
pub(crate) const LAST_POINT: usize = 6;
#[cfg(feature = "inject")]
const _: () = assert!(LAST_POINT == cpulocal::inject::POINTS - 1);

/// One run's settings, after defaults.
#[derive(Debug, Clone)]
struct Cfg {
    threads: usize,
    reps: u64,
    duration: Option<Duration>,
    every: u64,
    action: Option<ActionArg>,
    migrate: bool,
    fence_storm: bool,
    signals: bool,
    index: Index,
    seed: u64,
}

/// What one structure's run did.
struct Report {
    ops: u64,
    detail: String,
}

/// Runs `cpulocal stress`.
pub fn run(out: &mut impl Write, args: &StressArgs) -> Result<(), Failure> {
    if args.no_rseq && std::env::var_os(CHILD_VAR).is_none() {
        return rerun_without_rseq(out);
    }
    if args.no_rseq {
        let s = cpulocal::status();
        if !matches!(
            s.fenced_because,
            Some(RseqOff::Disabled | RseqOff::NoArchSupport)
        ) {
            return Err(Failure::Broken(format!(
                "--no-rseq: the child did not get the fenced engine: {s}"
            )));
        }
    }
    set_break(args)?;
    let cfg = Cfg {
        threads: args
            .threads
            .map_or(6 * cpulocal::possible_cpus(), |t| t as usize),
        reps: args.reps,
        duration: args.duration.map(Duration::from_secs_f64),
        every: args.every.unwrap_or(0),
        action: args.action,
        migrate: args.migrate,
        fence_storm: args.fence_storm,
        signals: args.signals,
        index: if args.mm_cid {
            Index::MmCid
        } else if args.node {
            Index::Node
        } else {
            Index::Cpu
        },
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
                | 1
        }),
    };
    let status = cpulocal::status();
    let engine = match status.engine {
        cpulocal::Engine::Rseq => "rseq",
        _ if args.no_rseq => "no-rseq",
        _ => "fenced",
    };
    let indexing = match cfg.index {
        Index::MmCid if status.mm_cid_indexing => "mm_cid",
        Index::Node => "node",
        _ => "cpu_id",
    };
    let tests: Vec<TestArg> = match args.test {
        TestArg::All => TESTS.to_vec(),
        t => vec![t],
    };
    if args.matrix {
        return matrix(out, &cfg, &tests, engine);
    }
    set_injection(&args.delay, cfg.every, cfg.action)?;
    writeln!(
        out,
        "cpulocal stress ({engine}, {} indexing): {} threads, {}; seed {}",
        indexing,
        cfg.threads,
        match cfg.duration {
            Some(d) => format!("{:.1} s per structure", d.as_secs_f64()),
            None => format!("{} passes per thread", cfg.reps),
        },
        cfg.seed
    )?;
    let bar = progress(
        tests.len() as u64,
        cfg.duration
            .map_or(cfg.reps > 200_000, |d| d.as_secs_f64() >= 2.0),
    );
    for &test in &tests {
        bar.set_message(format!("{test:?}"));
        let t0 = Instant::now();
        let report = run_one(test, &cfg).map_err(|e| {
            bar.abandon();
            Failure::Broken(format!("{test:?}: invariant broken: {e}"))
        })?;
        bar.inc(1);
        bar.suspend(|| {
            writeln!(
                out,
                "  {:<8} ok  {:>11} ops in {:.2} s: {}",
                format!("{test:?}").to_lowercase(),
                report.ops,
                t0.elapsed().as_secs_f64(),
                report.detail
            )
        })?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// The injection matrix: every point × {delay, yield, signal}, then the same
/// in a `--no-rseq` child.
fn matrix(out: &mut impl Write, cfg: &Cfg, tests: &[TestArg], engine: &str) -> Result<(), Failure> {
    if !cfg!(feature = "inject") {
        return Err(Failure::Broken(
            "--matrix needs the inject feature: cargo run --release --features inject -- stress --matrix".into(),
        ));
    }
    let points = 1..=LAST_POINT;
    let kinds = [None, Some(ActionArg::Yield), Some(ActionArg::Signal)];
    writeln!(
        out,
        "cpulocal stress --matrix ({engine}): points 1-{LAST_POINT} × delay, yield, signal; {} threads, {} passes; seed {}",
        cfg.threads, cfg.reps, cfg.seed
    )?;
    let bar = progress((LAST_POINT * kinds.len()) as u64, true);
    for p in points {
        for kind in kinds {
            let mut cell = cfg.clone();
            cell.every = if kind.is_some() { 97 } else { 0 };
            cell.action = kind;
            // Signals also come from outside, so they land inside sections.
            cell.signals = cfg.signals || kind == Some(ActionArg::Signal);
            set_injection(&[(p, 200)], cell.every, cell.action)?;
            let name = match kind {
                None => "delay",
                Some(ActionArg::Yield) => "yield",
                Some(ActionArg::Sleep) => "sleep",
                Some(ActionArg::Signal) => "signal",
            };
            let t0 = Instant::now();
            let mut ops = 0;
            for &test in tests {
                ops += run_one(test, &cell)
                    .map_err(|e| {
                        bar.abandon();
                        Failure::Broken(format!(
                            "{engine}, point {p}, {name}: {test:?}: invariant broken: {e}"
                        ))
                    })?
                    .ops;
            }
            bar.inc(1);
            bar.suspend(|| {
                writeln!(
                    out,
                    "  {engine:<7} point {p} {name:<6} ok  {ops:>10} ops, {} structures, {:.2} s",
                    tests.len(),
                    t0.elapsed().as_secs_f64()
                )
            })?;
        }
    }
    bar.finish_and_clear();
    set_injection(&[], 0, None)?;
    if engine == "rseq" {
        // The same matrix with the fenced engine only.
        writeln!(out)?;
        return rerun_without_rseq(out);
    }
    Ok(())
}

/// Reruns this command in a child with `CPULOCAL_NO_RSEQ=1` and `--no-rseq`,
/// copying its output.
fn rerun_without_rseq(out: &mut impl Write) -> Result<(), Failure> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--no-rseq") {
        args.push("--no-rseq".into());
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Broken(format!("cannot find this program: {e}")))?;
    let child = Process::new(exe)
        .args(&args)
        .env("CPULOCAL_NO_RSEQ", "1")
        .env(CHILD_VAR, "1")
        .output()
        .map_err(|e| Failure::Broken(format!("cannot start the --no-rseq child: {e}")))?;
    out.write_all(&child.stdout)?;
    io::stderr().write_all(&child.stderr)?;
    if child.status.success() {
        Ok(())
    } else {
        Err(Failure::Broken(format!(
            "the --no-rseq run failed ({})",
            child.status
        )))
    }
}

fn progress(len: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Applies `--break` (testing builds only).
fn set_break(args: &StressArgs) -> Result<(), Failure> {
    let Some(what) = &args.break_protocol else {
        return Ok(());
    };
    #[cfg(feature = "testing")]
    {
        use cpulocal::testing::{self, Break};
        let b = match what.as_str() {
            "membarrier" => Break::SkipMembarrier,
            "fence-check" => Break::SkipFenceCheck,
            other => {
                return Err(Failure::Broken(format!(
                    "--break {other}: expected membarrier or fence-check"
                )))
            }
        };
        testing::set(b, true);
        Ok(())
    }
    #[cfg(not(feature = "testing"))]
    Err(Failure::Broken(format!(
        "--break {what} needs the testing feature (cargo run --features testing)"
    )))
}

/// Sets the delay loops and the every-N action of the library's injection
/// points (inject builds only).
fn set_injection(
    delays: &[(usize, u32)],
    every: u64,
    action: Option<ActionArg>,
) -> Result<(), Failure> {
    #[cfg(feature = "inject")]
    {
        use cpulocal::inject;
        inject::reset();
        for &(point, loops) in delays {
            if !(1..=LAST_POINT).contains(&point) {
                return Err(Failure::Broken(format!(
                    "--delay {point}=…: injection points are 1 to {LAST_POINT}"
                )));
            }
            inject::set_delay(point, loops);
        }
        let action = match action {
            None => inject::Action::None,
            Some(ActionArg::Yield) => inject::Action::Yield,
            Some(ActionArg::Sleep) => inject::Action::Sleep,
            Some(ActionArg::Signal) => inject::Action::Signal,
        };
        inject::set_every(every, action);
        if action == inject::Action::Signal {
            install_handler();
        }
        Ok(())
    }
    #[cfg(not(feature = "inject"))]
    {
        let _ = (every, action);
        if delays.is_empty() {
            Ok(())
        } else {
            Err(Failure::Broken(
                "--delay needs the inject feature: cargo run --release --features inject -- stress …".into(),
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// Signals: the handler adds 1 to the counter published here.

static HANDLER_COUNTER: AtomicPtr<PerCpuCounter> = AtomicPtr::new(std::ptr::null_mut());
static HANDLER_ADDS: AtomicI64 = AtomicI64::new(0);
/// One structure run at a time: the handler's counter is process-wide.
static ONE_RUN: Mutex<()> = Mutex::new(());

extern "C" fn on_sigusr1(_: libc::c_int) {
    // SAFETY: this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let c = HANDLER_COUNTER.load(SeqCst);
    if !c.is_null() {
        // SAFETY: published while its Arc is alive; cleared before it goes.
        unsafe { &*c }.add(1);
        HANDLER_ADDS.fetch_add(1, SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid to fill in; the handler only
        // touches atomics and an async-signal-safe counter add.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
    });
}

// ---------------------------------------------------------------------------
// The harness shared by every structure.

/// Worker threads' pthread ids, for the signal thread.
type Pthreads = Arc<Vec<AtomicU64>>;

/// What the threads around the workers did.
struct Drive {
    /// Passes of all workers.
    passes: u64,
    /// Rounds of the fence-storm body.
    storm_rounds: u64,
    /// Signals the signal thread sent.
    signals_sent: u64,
}

/// Runs `work(worker, pass, random)` on `cfg.threads` workers, with the
/// helpers `cfg` asks for and `storm` as the fence-storm body.
///
/// Workers stay alive (signals still deliverable) until the signal thread
/// has stopped, so it never signals a thread that has been joined; the storm
/// runs at least one round even when the workers are done first.
///
/// # Errors
///
/// When a helper that was asked for did nothing.
fn drive(
    cfg: &Cfg,
    work: impl Fn(usize, u64, u64) + Send + Sync + 'static,
    storm: impl Fn() + Send + Sync + 'static,
) -> Result<Drive, String> {
    install_handler();
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicU64::new(0));
    let storm_rounds = Arc::new(AtomicU64::new(0));
    let signals_sent = Arc::new(AtomicU64::new(0));
    let pthreads: Pthreads = Arc::new((0..cfg.threads).map(|_| AtomicU64::new(0)).collect());
    let cpus = runner::allowed_cpus().unwrap_or_else(|_| vec![0]);
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let workers: Vec<_> = (0..cfg.threads)
        .map(|w| {
            let (work, pthreads, cpus, cfg) =
                (work.clone(), pthreads.clone(), cpus.clone(), cfg.clone());
            let (release, finished) = (release.clone(), finished.clone());
            std::thread::spawn(move || {
                // Set up before the handler may run here: a thread's first
                // operation may register rseq, which allocates.
                let _ = cpulocal::current_cpu();
                // SAFETY: pthread_self has no preconditions.
                pthreads[w].store(unsafe { libc::pthread_self() } as u64, SeqCst);
                let mut rng = (cfg.seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
                let mut pass = 0u64;
                loop {
                    if deadline.map_or(pass >= cfg.reps, |d| {
                        pass.is_multiple_of(256) && Instant::now() >= d
                    }) {
                        break;
                    }
                    work(w, pass, next(&mut rng));
                    pass += 1;
                    if cfg.migrate && pass.is_multiple_of(1024) {
                        let _ =
                            runner::pin_current_thread(cpus[next(&mut rng) as usize % cpus.len()]);
                    }
                    if cfg.every > 0 && pass.is_multiple_of(cfg.every) {
                        match cfg.action {
                            Some(ActionArg::Yield) => std::thread::yield_now(),
                            Some(ActionArg::Sleep) => std::thread::sleep(Duration::from_millis(1)),
                            // SAFETY: raise has no memory arguments.
                            Some(ActionArg::Signal) => unsafe {
                                libc::raise(libc::SIGUSR1);
                            },
                            None => {}
                        }
                    }
                }
                finished.fetch_add(1, SeqCst);
                while !release.load(SeqCst) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                pass
            })
        })
        .collect();
    let storm = cfg.fence_storm.then(|| {
        let (stop, rounds) = (stop.clone(), storm_rounds.clone());
        std::thread::spawn(move || loop {
            storm();
            rounds.fetch_add(1, SeqCst);
            if stop.load(SeqCst) {
                break;
            }
        })
    });
    let signaller = cfg.signals.then(|| {
        let (stop, pthreads, sent, seed) = (
            stop.clone(),
            pthreads.clone(),
            signals_sent.clone(),
            cfg.seed | 1,
        );
        std::thread::spawn(move || {
            let mut rng = seed;
            while !stop.load(SeqCst) {
                let t = pthreads[next(&mut rng) as usize % pthreads.len()].load(SeqCst);
                // SAFETY: a worker's pthread_t, published by the worker, which
                // is not joined before this thread stops (`release`).
                if t != 0 && unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGUSR1) } == 0
                {
                    sent.fetch_add(1, SeqCst);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    });
    while finished.load(SeqCst) < cfg.threads as u64 {
        std::thread::sleep(Duration::from_micros(200));
    }
    // Short runs can end before the signal thread's first signal: give it
    // the waiting workers (still valid targets) for up to two seconds.
    let grace = Instant::now() + Duration::from_secs(2);
    while cfg.signals && signals_sent.load(SeqCst) == 0 && Instant::now() < grace {
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, SeqCst);
    if let Some(s) = signaller {
        s.join().expect("the signal thread panicked");
    }
    if let Some(s) = storm {
        s.join().expect("the fence-storm thread panicked");
    }
    release.store(true, SeqCst);
    let passes = workers
        .into_iter()
        .map(|w| w.join().expect("a worker panicked"))
        .sum();
    let d = Drive {
        passes,
        storm_rounds: storm_rounds.load(SeqCst),
        signals_sent: signals_sent.load(SeqCst),
    };
    if cfg.signals && d.signals_sent == 0 {
        return Err("the signal thread sent no signal (run longer: --reps or --duration)".into());
    }
    Ok(d)
}

impl Drive {
    /// The helpers' part of a report line.
    fn helpers(&self) -> String {
        format!(
            "{} fence-storm rounds, {} signals sent",
            self.storm_rounds, self.signals_sent
        )
    }
}

/// xorshift64*: the workers' random numbers.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn run_one(test: TestArg, cfg: &Cfg) -> Result<Report, String> {
    let _one = ONE_RUN.lock().unwrap_or_else(PoisonError::into_inner);
    match test {
        TestArg::Counter => counter(cfg),
        TestArg::List => items(cfg, Items::List(PerCpuList::with_index(cfg.index))),
        TestArg::Buffer => items(cfg, Items::Buffer(PerCpuBuffer::with_index(cfg.index, 64))),
        TestArg::Memcpy => items(
            cfg,
            Items::Memcpy(PerCpuMemcpyBuffer::with_index(cfg.index, 64)),
        ),
        TestArg::Lock => lock(cfg),
        TestArg::Opv => opv(cfg),
        TestArg::Ring => ring(cfg),
        TestArg::All => unreachable!("expanded by the caller"),
    }
}

// ---------------------------------------------------------------------------
// The structures.

fn counter(cfg: &Cfg) -> Result<Report, String> {
    let c = Arc::new(PerCpuCounter::with_index(cfg.index));
    let added = Arc::new(AtomicI64::new(0));
    let taken = Arc::new(AtomicI64::new(0));
    HANDLER_ADDS.store(0, SeqCst);
    HANDLER_COUNTER.store(Arc::as_ptr(&c).cast_mut(), SeqCst);
    let run = {
        let (c, added) = (c.clone(), added.clone());
        let (cs, taken) = (c.clone(), taken.clone());
        drive(
            cfg,
            move |_, pass, r| {
                // Always positive, so a lost or doubled slot always shows.
                let v = 1 + (pass % 7) as i64;
                if r.is_multiple_of(8) {
                    c.add_on((r >> 8) as usize % c.cpus(), v)
                        .expect("CPU in range");
                } else {
                    c.add(v);
                }
                added.fetch_add(v, SeqCst);
            },
            move || {
                taken.fetch_add(cs.take(), SeqCst);
            },
        )
    };
    HANDLER_COUNTER.store(std::ptr::null_mut(), SeqCst);
    let run = run?;
    let expected = added.load(SeqCst) + HANDLER_ADDS.load(SeqCst);
    let observed = taken.load(SeqCst) + c.sum();
    if expected != observed {
        return Err(format!(
            "counter sum: added {expected} but taken + sum = {observed} (difference {}); {}",
            observed - expected,
            paths(c.stats())
        ));
    }
    Ok(Report {
        ops: run.passes,
        detail: format!(
            "exact sum {expected} ({} by signal handlers; {}); {}",
            HANDLER_ADDS.load(SeqCst),
            run.helpers(),
            paths(c.stats())
        ),
    })
}

/// An item of the list and buffer tests: an id and its check word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    id: u64,
    check: u64,
    pad: [u64; 2],
}

impl Item {
    fn new(id: u64) -> Item {
        let check = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555;
        Item {
            id,
            check,
            pad: [check.rotate_left(7), !check],
        }
    }

    fn intact(&self) -> bool {
        *self == Item::new(self.id)
    }
}

/// The structure under test, holding items as its API moves them: list
/// nodes (allocated once, moved without the allocator), boxes (one word
/// each), inline copies.
enum Items {
    List(PerCpuList<Item>),
    Buffer(PerCpuBuffer<Box<Item>>),
    Memcpy(PerCpuMemcpyBuffer<Item>),
}

/// An item as it circulates: in its list node, its box, or by value.
enum Held {
    Node(Node<Item>),
    Boxed(Box<Item>),
    Plain(Item),
}

impl Held {
    fn item(&self) -> &Item {
        match self {
            Held::Node(n) => n,
            Held::Boxed(b) => b,
            Held::Plain(i) => i,
        }
    }
}

impl Items {
    fn cpus(&self) -> usize {
        match self {
            Items::List(s) => s.cpus(),
            Items::Buffer(s) => s.cpus(),
            Items::Memcpy(s) => s.cpus(),
        }
    }

    /// A new item in the form this structure moves.
    fn hold(&self, item: Item) -> Held {
        match self {
            Items::List(_) => Held::Node(Node::new(item)),
            Items::Buffer(_) => Held::Boxed(Box::new(item)),
            Items::Memcpy(_) => Held::Plain(item),
        }
    }

    /// Pushes on the current CPU (`on` None) or on CPU `on`; a full buffer
    /// gives the item back.
    fn push(&self, held: Held, on: Option<usize>) -> Result<(), Held> {
        match (self, held, on) {
            (Items::List(s), Held::Node(n), None) => {
                s.push_node(n);
                Ok(())
            }
            (Items::List(s), Held::Node(n), Some(c)) => s
                .push_node_on(c, n)
                .map_err(|e| panic!("push_node_on: {}", e.error)),
            (Items::Buffer(s), Held::Boxed(b), None) => s.push(b).map_err(Held::Boxed),
            (Items::Buffer(s), Held::Boxed(b), Some(c)) => {
                s.push_on(c, b).map_err(|e| Held::Boxed(e.value))
            }
            (Items::Memcpy(s), Held::Plain(i), None) => s.push(i).map_err(Held::Plain),
            (Items::Memcpy(s), Held::Plain(i), Some(c)) => {
                s.push_on(c, i).map_err(|e| Held::Plain(e.value))
            }
            _ => unreachable!("items are held as their structure moves them"),
        }
    }

    fn pop(&self, on: Option<usize>) -> Option<Held> {
        match (self, on) {
            (Items::List(s), None) => s.pop_node().map(Held::Node),
            (Items::Buffer(s), None) => s.pop().map(Held::Boxed),
            (Items::Memcpy(s), None) => s.pop().map(Held::Plain),
            (Items::List(s), Some(c)) => s.pop_node_on(c).expect("CPU in range").map(Held::Node),
            (Items::Buffer(s), Some(c)) => s.pop_on(c).expect("CPU in range").map(Held::Boxed),
            (Items::Memcpy(s), Some(c)) => s.pop_on(c).expect("CPU in range").map(Held::Plain),
        }
    }

    fn stats(&self) -> cpulocal::PathStats {
        match self {
            Items::List(s) => s.stats(),
            Items::Buffer(s) => s.stats(),
            Items::Memcpy(s) => s.stats(),
        }
    }

    fn drain(&self) -> Vec<Held> {
        match self {
            Items::List(s) => s.drain_nodes().map(Held::Node).collect(),
            Items::Buffer(s) => s.drain().map(Held::Boxed).collect(),
            Items::Memcpy(s) => s.drain().map(Held::Plain).collect(),
        }
    }
}

/// Items conserved: a pool of ids circulates through the structure; items
/// that do not fit wait in a side pool; at the end every id is found once.
fn items(cfg: &Cfg, s: Items) -> Result<Report, String> {
    let ids = 48 * s.cpus() as u64;
    let side = Arc::new(Mutex::new(Vec::new()));
    for id in 0..ids {
        if let Err(held) = s.push(s.hold(Item::new(id)), None) {
            side.lock().unwrap().push(held);
        }
    }
    let s = Arc::new(s);
    let torn = Arc::new(AtomicU64::new(0));
    let run = {
        let (s, side, torn) = (s.clone(), side.clone(), torn.clone());
        let (ss, sside) = (s.clone(), side.clone());
        drive(
            cfg,
            move |_, _, r| {
                // One pop in 8 and one push in 8 on a random CPU's slot:
                // fenced operations racing the others' critical sections.
                let cpu = (r >> 8) as usize % s.cpus();
                let pop_on = r.is_multiple_of(8).then_some(cpu);
                let push_on = (r % 8 == 1).then_some(cpu);
                let got = s.pop(pop_on).or_else(|| side.lock().unwrap().pop());
                if let Some(held) = got {
                    if !held.item().intact() {
                        torn.fetch_add(1, SeqCst);
                    }
                    if let Err(held) = s.push(held, push_on) {
                        side.lock().unwrap().push(held);
                    }
                }
            },
            move || {
                // Drain every CPU under its fence, then put it all back.
                for held in ss.drain() {
                    if let Err(held) = ss.push(held, None) {
                        sside.lock().unwrap().push(held);
                    }
                }
            },
        )
    };
    let run = run?;
    let torn = torn.load(SeqCst);
    let mut all = s.drain();
    all.append(&mut side.lock().unwrap());
    let mut seen = vec![0u32; ids as usize];
    let mut bad = 0;
    for held in &all {
        let item = held.item();
        match seen.get_mut(item.id as usize) {
            Some(n) if item.intact() => *n += 1,
            _ => bad += 1,
        }
    }
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let doubled = seen.iter().filter(|&&n| n > 1).count();
    if (lost, doubled, bad, torn) != (0, 0, 0, 0) {
        return Err(format!(
            "items not conserved: {lost} of {ids} lost, {doubled} duplicated, {bad} corrupt at the end, {torn} torn when popped"
        ));
    }
    Ok(Report {
        ops: run.passes,
        detail: format!(
            "{ids} items each found once, none torn; {}; {}",
            paths(s.stats()),
            run.helpers()
        ),
    })
}

/// A lock slot: a busy flag that no two holders may see set, and a total.
#[derive(Default)]
struct Guarded {
    busy: bool,
    total: u64,
}

fn lock(cfg: &Cfg) -> Result<Report, String> {
    let l = Arc::new(PerCpuLock::with_index(cfg.index, |_| Guarded::default()));
    let overlaps = Arc::new(AtomicU64::new(0));
    let increments = Arc::new(AtomicU64::new(0));
    let body = |g: &mut Guarded, overlaps: &AtomicU64| {
        if g.busy {
            overlaps.fetch_add(1, SeqCst);
        }
        g.busy = true;
        let t = g.total;
        std::hint::spin_loop();
        g.total = t + 1;
        g.busy = false;
    };
    let run = {
        let (l, overlaps, increments) = (l.clone(), overlaps.clone(), increments.clone());
        let (ls, os, is) = (l.clone(), overlaps.clone(), increments.clone());
        drive(
            cfg,
            move |_, _, r| {
                if r.is_multiple_of(8) {
                    let cpu = (r >> 8) as usize % l.cpus();
                    body(&mut l.lock_on(cpu).expect("CPU in range"), &overlaps);
                } else {
                    body(&mut l.lock(), &overlaps);
                }
                increments.fetch_add(1, SeqCst);
            },
            move || {
                for cpu in 0..ls.cpus() {
                    body(&mut ls.lock_on(cpu).expect("CPU in range"), &os);
                    is.fetch_add(1, SeqCst);
                }
            },
        )
    };
    let run = run?;
    let overlaps = overlaps.load(SeqCst);
    let increments = increments.load(SeqCst);
    let l = Arc::into_inner(l).expect("every thread joined");
    let stats = l.stats();
    let total: u64 = l.into_vec().iter().map(|g| g.total).sum();
    if overlaps != 0 || total != increments {
        return Err(format!(
            "lock exclusion: {overlaps} holders found the slot busy; totals {total} for {increments} increments"
        ));
    }
    Ok(Report {
        ops: run.passes,
        detail: format!(
            "{increments} increments, exclusive; {}; {}",
            paths(stats),
            run.helpers()
        ),
    })
}

/// Per-slot words for the opv test, one cache line each.
#[repr(align(128))]
struct Word(AtomicU64);

fn opv(cfg: &Cfg) -> Result<Report, String> {
    let d = Arc::new(Domain::new(cfg.index));
    let words: Arc<Vec<Word>> = Arc::new((0..d.cpus()).map(|_| Word(AtomicU64::new(0))).collect());
    let increments = Arc::new(AtomicU64::new(0));
    let run = {
        let (d, words, increments) = (d.clone(), words.clone(), increments.clone());
        let (ds, ws, is) = (d.clone(), words.clone(), increments.clone());
        drive(
            cfg,
            move |_, _, r| {
                if r.is_multiple_of(4) {
                    let i = (r >> 8) as usize % d.cpus();
                    let p = words[i].0.as_ptr().cast::<u8>();
                    let ops = [Op::Add {
                        p,
                        size: 8,
                        count: 1,
                    }];
                    // SAFETY: slot i's word, touched only through this domain.
                    unsafe { d.run_ops(i, &ops) }.expect("a valid vector");
                } else {
                    let i = d.current();
                    // SAFETY: as above; aligned, live for the whole run.
                    unsafe { d.add_store(i, words[i].0.as_ptr().cast(), 1, Order::Relaxed) };
                }
                increments.fetch_add(1, SeqCst);
            },
            move || {
                for i in 0..ds.cpus() {
                    let p = ws[i].0.as_ptr().cast::<u8>();
                    // SAFETY: as above.
                    unsafe {
                        ds.run_ops(
                            i,
                            &[
                                Op::Mb,
                                Op::Add {
                                    p,
                                    size: 8,
                                    count: 1,
                                },
                            ],
                        )
                    }
                    .expect("a valid vector");
                    is.fetch_add(1, SeqCst);
                }
            },
        )
    };
    let run = run?;
    let increments = increments.load(SeqCst);
    let total: u64 = words.iter().map(|w| w.0.load(SeqCst)).sum();
    if total != increments {
        return Err(format!(
            "opv sum: {total} in the words for {increments} increments (difference {}); {}",
            total as i64 - increments as i64,
            paths(d.stats())
        ));
    }
    Ok(Report {
        ops: run.passes,
        detail: format!("exact sum {total}; {}; {}", paths(d.stats()), run.helpers()),
    })
}

/// Records written, delivered exactly once or counted as lost: each record
/// carries (worker, sequence number, check word); the consumer is the
/// fence-storm thread (and a final drain).
fn ring(cfg: &Cfg) -> Result<Report, String> {
    use cpulocal::{PerCpuRing, RingConfig, RingMode};
    let ring = Arc::new(
        PerCpuRing::with_config(RingConfig::new().mode(RingMode::Discard).index(cfg.index))
            .map_err(|e| format!("ring: {e}"))?,
    );
    // Per worker, per sequence number: 1 when its record was refused (lost).
    let refused: Arc<Vec<Mutex<Vec<u64>>>> =
        Arc::new((0..cfg.threads).map(|_| Mutex::new(Vec::new())).collect());
    let delivered = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let torn = Arc::new(AtomicU64::new(0));
    let seqs = Arc::new(
        (0..cfg.threads)
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    let collect = {
        let (delivered, torn) = (delivered.clone(), torn.clone());
        move |rec: cpulocal::Record<'_>| {
            let p = rec.payload();
            let word =
                |i: usize| u64::from_ne_bytes(p[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            if word(2) != word(0).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word(1) {
                torn.fetch_add(1, SeqCst);
            }
            delivered.lock().unwrap().push((word(0), word(1)));
        }
    };
    let run = {
        let (ring, refused, seqs) = (ring.clone(), refused.clone(), seqs.clone());
        let (rs, storm_collect) = (ring.clone(), collect.clone());
        drive(
            cfg,
            move |w, _, r| {
                let seq = seqs[w].fetch_add(1, SeqCst);
                let words = [
                    w as u64,
                    seq,
                    (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq,
                ];
                match ring.reserve(24 + (r % 40) as usize) {
                    Ok(mut rec) => {
                        for (i, v) in words.iter().enumerate() {
                            rec[8 * i..8 * i + 8].copy_from_slice(&v.to_ne_bytes());
                        }
                        rec.commit();
                    }
                    Err(_) => refused[w].lock().unwrap().push(seq),
                }
            },
            move || {
                // Pads every CPU's open sub-buffer through its fence (the
                // remote operation that races the writers' reservations),
                // then reads what is complete.
                rs.flush();
                rs.consume(&storm_collect);
            },
        )
    };
    let run = run?;
    ring.flush();
    while ring.consume(&collect).sub_buffers > 0 {}
    let torn = torn.load(SeqCst);
    let mut seen: Vec<Vec<u8>> = seqs
        .iter()
        .map(|n| vec![0u8; n.load(SeqCst) as usize])
        .collect();
    let mut bad = 0u64;
    for &(w, seq) in delivered.lock().unwrap().iter() {
        match seen
            .get_mut(w as usize)
            .and_then(|v| v.get_mut(seq as usize))
        {
            Some(n) => *n = n.saturating_add(1),
            None => bad += 1,
        }
    }
    for (w, list) in refused.iter().enumerate() {
        for &seq in list.lock().unwrap().iter() {
            seen[w][seq as usize] = seen[w][seq as usize].saturating_add(100);
        }
    }
    let written: u64 = seqs.iter().map(|n| n.load(SeqCst)).sum();
    let lost = ring.lost();
    let refused_n: u64 = refused.iter().map(|l| l.lock().unwrap().len() as u64).sum();
    let flat = seen.iter().flatten();
    let (never, twice, both) = flat.fold((0u64, 0u64, 0u64), |(a, b, c), &n| match n {
        0 => (a + 1, b, c),
        1 | 100 => (a, b, c),
        n if n < 100 => (a, b + 1, c),
        _ => (a, b, c + 1),
    });
    if (never, twice, both, bad, torn) != (0, 0, 0, 0, 0) || lost != refused_n {
        return Err(format!(
            "ring records: {written} written, {never} neither delivered nor lost, {twice} delivered twice, \
             {both} both delivered and refused, {bad} unknown, {torn} torn; lost counter {lost} for {refused_n} refused"
        ));
    }
    Ok(Report {
        ops: run.passes,
        detail: format!(
            "{written} records: {} delivered, {lost} refused and counted lost (discard mode: \
             a full CPU buffer refuses new records until the consumer frees room), none twice; {}; {}",
            written - lost,
            paths(ring.stats()),
            run.helpers()
        ),
    })
}

/// How many operations left the fast path, in words.
fn paths(s: cpulocal::PathStats) -> String {
    format!(
        "{} retried after an abort ({} aborts), {} on the fenced path",
        s.retried, s.aborts, s.fenced
    )
}
