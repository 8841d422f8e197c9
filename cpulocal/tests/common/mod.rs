//! A reusable exact-sum stress harness for [`PerCpuCounter`], in the style of
//! the kernel's rseq `param_test`.
//!
//! [`run`] hammers one counter with:
//!
//! - **workers** (6 × possible CPUs by default), each doing a random mix of
//!   `add(v)` and `add_on(random cpu, v)` with small positive and negative `v`,
//!   with yields, spins and sleeps injected, and tallying what it added;
//! - a **signal thread** sending `SIGUSR1` with `pthread_kill` to random
//!   workers; the handler (installed with `sigaction`, `SA_RESTART`) does an
//!   `add` and an `add_on` on the counter and tallies them into a static;
//! - an **affinity thread** moving random workers between single CPUs and all
//!   allowed CPUs with `sched_setaffinity` (forced migrations);
//! - a **fence-storm thread** calling `take()` in a loop, single and in bursts,
//!   accumulating what it took;
//! - optionally the **calling thread** itself, doing adds until the workers
//!   finish (in a process where only the calling thread has rseq, it is the
//!   one running critical sections against everyone else's fences).
//!
//! The invariant, checked exactly by [`Outcome::assert_exact`]:
//! `taken + sum() == workers' tally + handlers' tally + calling thread's tally`.
//!
//! Size: `CPULOCAL_STRESS_SCALE` (a positive float, default 1) multiplies the
//! operations per worker; `CPULOCAL_STRESS_SEED` fixes the random seed (the
//! seed of each run is printed). Scaling changes the amount of work only, never
//! an assertion.
//!
//! Every helper thread stops on a flag and is joined; workers stay alive until
//! the helpers are joined (so `pthread_kill` and `sched_setaffinity` never
//! target an exited thread); every wait is bounded by [`Cfg::timeout`].
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fmt;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cpulocal::{PathStats, PerCpuCounter};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Operations per worker at scale 1. Sized so that one full stress run takes a
/// few seconds in release mode on a 2-CPU machine, in every engine mode.
pub const BASE_OPS_PER_WORKER: u64 = 800_000;

/// `CPULOCAL_STRESS_SCALE`, default 1.
pub fn scale() -> f64 {
    match std::env::var("CPULOCAL_STRESS_SCALE") {
        Ok(s) => {
            let v: f64 = s
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("CPULOCAL_STRESS_SCALE={s:?} is not a number: {e}"));
            assert!(
                v.is_finite() && v > 0.0,
                "CPULOCAL_STRESS_SCALE must be positive, got {v}"
            );
            v
        }
        Err(_) => 1.0,
    }
}

/// `CPULOCAL_STRESS_SEED`, else a seed from the clock.
pub fn seed() -> u64 {
    match std::env::var("CPULOCAL_STRESS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CPULOCAL_STRESS_SEED={s:?} is not a u64: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64),
    }
}

/// What one stress run does.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Printed with the outcome.
    pub label: String,
    /// Worker threads.
    pub workers: usize,
    /// Operations each worker does.
    pub ops_per_worker: u64,
    /// Percentage of worker operations that are `add_on(random cpu)`; the
    /// rest are `add`.
    pub add_on_percent: u32,
    /// Run the signal thread.
    pub signals: bool,
    /// Run the affinity (forced migration) thread.
    pub affinity: bool,
    /// Run the fence-storm (`take()`) thread.
    pub fence_storm: bool,
    /// The calling thread adds too, until the workers are done.
    pub main_adds: bool,
    /// Seed of every random choice (thread interleavings are not reproducible).
    pub seed: u64,
    /// Bound on the whole run; exceeding it fails the run (a hang or livelock).
    pub timeout: Duration,
    /// How the counter numbers its slots.
    pub index: cpulocal::Index,
    /// Called on the calling thread right before and right after it spawns
    /// the workers (and before any helper), to give the workers a different
    /// setup from the other threads.
    pub around_worker_spawn: Option<AroundSpawn>,
}

/// Functions the calling thread runs right before and after spawning workers.
#[derive(Debug, Clone, Copy)]
pub struct AroundSpawn {
    /// Runs before the first worker is spawned.
    pub before: fn(),
    /// Runs after the last worker is spawned.
    pub after: fn(),
}

impl Cfg {
    /// The full stress: 6 × possible CPUs workers, every ingredient on, sized
    /// by [`scale`].
    pub fn full(label: &str) -> Cfg {
        let scale = scale();
        Cfg {
            label: label.to_owned(),
            workers: 6 * cpulocal::possible_cpus(),
            ops_per_worker: ((BASE_OPS_PER_WORKER as f64) * scale).max(1.0) as u64,
            add_on_percent: 30,
            signals: true,
            affinity: true,
            fence_storm: true,
            main_adds: true,
            seed: seed(),
            timeout: Duration::from_secs_f64(180.0 * scale.max(1.0)),
            around_worker_spawn: None,
            index: cpulocal::Index::Cpu,
        }
    }
}

/// What a run did and what it found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// [`Cfg::label`].
    pub label: String,
    /// [`Cfg::seed`].
    pub seed: u64,
    /// Operations done by workers.
    pub worker_ops: u64,
    /// Operations done by signal handlers (two per handled signal).
    pub handler_ops: u64,
    /// Operations done by the calling thread.
    pub main_ops: u64,
    /// Signals sent (successful `pthread_kill` calls).
    pub signals_sent: u64,
    /// `sched_setaffinity` calls that succeeded.
    pub affinity_changes: u64,
    /// `take()` calls by the fence-storm thread.
    pub takes: u64,
    /// Everything the workers, handlers and calling thread added (wrapping).
    pub expected: i64,
    /// Everything the fence-storm thread took (wrapping).
    pub taken: i64,
    /// `sum()` after every thread stopped.
    pub remaining: i64,
    /// `stats()` after every thread stopped.
    pub stats: PathStats,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    /// Every counter operation of the run.
    pub fn total_ops(&self) -> u64 {
        self.worker_ops + self.handler_ops + self.main_ops
    }

    /// What the counter accounts for: `taken + sum()`.
    pub fn observed(&self) -> i64 {
        self.taken.wrapping_add(self.remaining)
    }

    /// `observed - expected`: negative when adds were lost, positive when
    /// some were counted twice.
    pub fn difference(&self) -> i64 {
        self.observed().wrapping_sub(self.expected)
    }

    /// Whether the exact-sum invariant holds.
    pub fn is_exact(&self) -> bool {
        self.difference() == 0
    }

    /// Panics, naming the broken invariant, unless the sums are exact.
    pub fn assert_exact(&self) {
        assert!(
            self.is_exact(),
            "[{}] exact-sum invariant broken: taken + sum() must equal what the workers, \
             signal handlers and calling thread added.\n  taken {} + sum() {} = {}\n  \
             added: {} (over {} operations)\n  difference (observed - added) = {} \
             ({})\n  seed {} (CPULOCAL_STRESS_SEED), {self}",
            self.label,
            self.taken,
            self.remaining,
            self.observed(),
            self.expected,
            self.total_ops(),
            self.difference(),
            if self.difference() < 0 {
                "adds were lost"
            } else {
                "adds were counted twice"
            },
            self.seed,
        );
    }

    /// Panics unless the run exercised every ingredient it was configured
    /// with: signal handlers ran, migrations and takes happened. The harness
    /// guarantees each at least once (it waits for them before stopping).
    pub fn assert_ingredients(&self, cfg: &Cfg) {
        assert!(self.worker_ops > 0, "[{}] no worker operations", self.label);
        if cfg.signals {
            assert!(
                self.handler_ops > 0,
                "[{}] no signal handler ran: {self}",
                self.label
            );
        }
        if cfg.affinity {
            assert!(
                self.affinity_changes > 0,
                "[{}] no migration was forced: {self}",
                self.label
            );
        }
        if cfg.fence_storm {
            assert!(self.takes > 0, "[{}] no take() ran: {self}", self.label);
        }
        if cfg.main_adds {
            assert!(
                self.main_ops > 0,
                "[{}] the calling thread did not add: {self}",
                self.label
            );
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {:.2?}: ops {} (workers {}, handlers {}, main {}), signals sent {}, \
             migrations {}, takes {}, taken {}, sum {}, expected {}, difference {}, \
             stats {:?}, seed {}",
            self.label,
            self.elapsed,
            self.total_ops(),
            self.worker_ops,
            self.handler_ops,
            self.main_ops,
            self.signals_sent,
            self.affinity_changes,
            self.takes,
            self.taken,
            self.remaining,
            self.expected,
            self.difference(),
            self.stats,
            self.seed,
        )
    }
}

/// Runs the stress, prints the outcome, and asserts the exact-sum invariant
/// and that every configured ingredient ran.
pub fn stress(cfg: &Cfg) -> Outcome {
    let outcome = run(cfg);
    eprintln!("{outcome}");
    outcome.assert_exact();
    outcome.assert_ingredients(cfg);
    outcome
}

// ---------------------------------------------------------------------------
// Signal handler state. Everything the handler touches is a static atomic.

/// The counter the handler adds to; null outside a run.
static HANDLER_COUNTER: AtomicPtr<PerCpuCounter> = AtomicPtr::new(ptr::null_mut());
/// What handlers added (wrapping).
static HANDLER_TALLY: AtomicI64 = AtomicI64::new(0);
/// Operations handlers did.
static HANDLER_OPS: AtomicU64 = AtomicU64::new(0);
/// Entropy for the handler: bumped on every invocation.
static HANDLER_SEQ: AtomicU64 = AtomicU64::new(0);

/// One run at a time per process: the handler state is process-wide.
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `SIGUSR1` handler. Async-signal-safe: no allocation, no lock, no
/// panic path reachable (the CPU is reduced modulo the slot count); only
/// atomics and the counter's operations, which are documented as
/// async-signal-safe. Preserves `errno` for the interrupted code.
extern "C" fn on_sigusr1(_sig: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let saved_errno = unsafe { *libc::__errno_location() };
    let counter = HANDLER_COUNTER.load(Acquire);
    if !counter.is_null() {
        // SAFETY: `run` publishes the pointer while its Arc keeps the counter
        // alive, and clears it only after every thread that can receive the
        // signal (the workers) has been joined.
        let counter = unsafe { &*counter };
        let stack_probe = 0u8;
        let r = splitmix64(
            HANDLER_SEQ.fetch_add(1, Relaxed) ^ (ptr::addr_of!(stack_probe) as u64).rotate_left(17),
        );
        let v1 = (r & 0xff) as i64 - 128;
        let v2 = ((r >> 8) & 0xff) as i64 - 127;
        let cpu = ((r >> 32) as usize) % counter.cpus();
        counter.add(v1);
        counter.add_on(cpu, v2).expect("a CPU of the counter");
        HANDLER_TALLY.fetch_add(v1.wrapping_add(v2), Relaxed);
        HANDLER_OPS.fetch_add(2, Relaxed);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler
        // is an `extern "C" fn(c_int)` (no SA_SIGINFO), and the pointers passed
        // are to live locals.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            let rc = libc::sigaction(libc::SIGUSR1, &sa, ptr::null_mut());
            assert_eq!(
                rc,
                0,
                "sigaction(SIGUSR1): {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

// ---------------------------------------------------------------------------
// CPU sets.

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// `sched_setaffinity(tid, cpus)`; the kernel's error if it fails.
pub fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> Result<(), std::io::Error> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for ids below
    // CPU_SETSIZE (the ids come from `allowed_cpus`); the kernel reads the
    // set we pass.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current(cpu: usize) {
    set_affinity(0, &[cpu]).unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e}"));
}

/// Runs `f` on a thread pinned to the first allowed CPU, given that CPU.
pub fn pinned<R: Send>(f: impl FnOnce(usize) -> R + Send) -> R {
    let cpu = allowed_cpus()[0];
    thread::scope(|s| {
        s.spawn(|| {
            pin_current(cpu);
            f(cpu)
        })
        .join()
        .unwrap()
    })
}

/// An item that counts its drops in a shared tally: `drops[id]`.
pub struct Tracked {
    pub id: u64,
    pub drops: Arc<Vec<AtomicU64>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops[self.id as usize].fetch_add(1, SeqCst);
    }
}

/// An item like [`Tracked`] whose drop panics (after counting) when its id is
/// `panics_at`: for the tests that a structure dropping its items drops the
/// others all the same.
pub struct Bomb {
    pub id: u64,
    pub drops: Arc<Vec<AtomicU64>>,
    pub panics_at: u64,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.drops[self.id as usize].fetch_add(1, SeqCst);
        if self.id == self.panics_at {
            panic!("item {} panics when dropped", self.id);
        }
    }
}

/// A tally of `n` drop counts, all zero.
pub fn tally(n: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
}

/// The kernel thread id of the caller.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

// ---------------------------------------------------------------------------
// The run.

struct Shared {
    stop_helpers: AtomicBool,
    release_workers: AtomicBool,
    done: AtomicUsize,
    /// Kernel tids of live workers (0: not yet / no longer).
    tids: Vec<AtomicI32>,
    /// pthread_t of live workers (0: not yet / no longer).
    pthreads: Vec<AtomicU64>,
    signals_sent: AtomicU64,
    affinity_changes: AtomicU64,
    takes: AtomicU64,
}

/// Marks a worker done (and no longer a signal/affinity target) even if it
/// panics, so the run never waits for a dead worker.
struct WorkerExit<'a> {
    shared: &'a Shared,
    index: usize,
}

impl Drop for WorkerExit<'_> {
    fn drop(&mut self) {
        self.shared.pthreads[self.index].store(0, SeqCst);
        self.shared.tids[self.index].store(0, SeqCst);
        // A panicking worker never reached its own `done` increment.
        if thread::panicking() {
            self.shared.done.fetch_add(1, SeqCst);
        }
    }
}

fn worker(
    counter: &PerCpuCounter,
    shared: &Shared,
    index: usize,
    ops: u64,
    add_on_percent: u32,
    seed: u64,
) -> i64 {
    let exit = WorkerExit { shared, index };
    // Set the thread up before it can be signalled: where cpulocal registers
    // rseq itself, a thread's first operation may allocate (documented).
    let _ = cpulocal::current_cpu();
    shared.tids[index].store(gettid(), SeqCst);
    // SAFETY: pthread_self has no preconditions.
    shared.pthreads[index].store(unsafe { libc::pthread_self() } as u64, SeqCst);

    let cpus = counter.cpus();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tally = 0i64;
    for _ in 0..ops {
        let v: i64 = rng.random_range(-1000..=1000);
        if rng.random_ratio(add_on_percent, 100) {
            counter
                .add_on(rng.random_range(0..cpus), v)
                .expect("a CPU of the counter");
        } else {
            counter.add(v);
        }
        tally = tally.wrapping_add(v);
        // Injected disturbances: yields, spins, sleeps.
        match rng.random_range(0..16_384u32) {
            0..=3 => thread::yield_now(),
            4..=11 => {
                for _ in 0..rng.random_range(0..2_000u32) {
                    std::hint::spin_loop();
                }
            }
            12 => thread::sleep(Duration::from_micros(rng.random_range(1..50))),
            _ => {}
        }
    }
    shared.done.fetch_add(1, SeqCst);
    // Stay alive (a valid pthread_kill / sched_setaffinity target) until the
    // helpers are joined. Bounded: `run` always releases, also on timeout.
    while !shared.release_workers.load(SeqCst) {
        thread::sleep(Duration::from_micros(200));
    }
    drop(exit);
    tally
}

fn live_worker(rng: &mut SmallRng, shared: &Shared) -> Option<usize> {
    let i = rng.random_range(0..shared.tids.len());
    (shared.tids[i].load(SeqCst) != 0).then_some(i)
}

fn signal_thread(shared: &Shared, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    while !shared.stop_helpers.load(SeqCst) {
        // A burst of signals to random workers, then a pause: sleeping makes
        // the scheduler run this thread promptly again among busy workers.
        for _ in 0..rng.random_range(1..=8u32) {
            let Some(i) = live_worker(&mut rng, shared) else {
                continue;
            };
            let t = shared.pthreads[i].load(SeqCst);
            if t == 0 {
                continue;
            }
            // SAFETY: `t` is the pthread_t of a worker that has not been
            // joined (workers are joined only after this thread stops), so the
            // descriptor is valid; glibc >= 2.34 returns without sending if
            // that thread has already exited.
            if unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGUSR1) } == 0 {
                shared.signals_sent.fetch_add(1, SeqCst);
            }
        }
        match rng.random_range(0..4u32) {
            0 => thread::yield_now(),
            1 => {
                for _ in 0..rng.random_range(0..5_000u32) {
                    std::hint::spin_loop();
                }
            }
            _ => thread::sleep(Duration::from_micros(rng.random_range(1..100))),
        }
    }
}

fn affinity_thread(shared: &Shared, allowed: &[usize], seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    while !shared.stop_helpers.load(SeqCst) {
        if let Some(i) = live_worker(&mut rng, shared) {
            let tid = shared.tids[i].load(SeqCst);
            let target: &[usize] = if rng.random_ratio(7, 10) {
                let c = rng.random_range(0..allowed.len());
                &allowed[c..=c]
            } else {
                allowed
            };
            // The worker may be exiting (ESRCH): count only what took effect.
            if tid != 0 && set_affinity(tid, target).is_ok() {
                shared.affinity_changes.fetch_add(1, SeqCst);
            }
        }
        thread::sleep(Duration::from_micros(rng.random_range(20..500)));
    }
}

fn storm_thread(counter: &PerCpuCounter, shared: &Shared, seed: u64) -> i64 {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut taken = 0i64;
    while !shared.stop_helpers.load(SeqCst) {
        let burst = if rng.random_ratio(1, 20) { 64 } else { 1 };
        for _ in 0..burst {
            taken = taken.wrapping_add(counter.take());
            shared.takes.fetch_add(1, SeqCst);
        }
        match rng.random_range(0..3u32) {
            0 => thread::yield_now(),
            1 => thread::sleep(Duration::from_micros(rng.random_range(1..200))),
            _ => {
                for _ in 0..rng.random_range(0..50_000u32) {
                    std::hint::spin_loop();
                }
            }
        }
    }
    taken
}

/// If `run` unwinds (a failed assertion, a timeout, a panicking thread), stops
/// the helpers, releases the workers and leaks the counter, which the signal
/// handler may still reach through `HANDLER_COUNTER`.
struct StopOnPanic {
    shared: Arc<Shared>,
    counter: Arc<PerCpuCounter>,
}

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.shared.stop_helpers.store(true, SeqCst);
            self.shared.release_workers.store(true, SeqCst);
            std::mem::forget(self.counter.clone());
        }
    }
}

fn join<T>(h: JoinHandle<T>, what: &str) -> T {
    match h.join() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stress: the {what} thread panicked");
            std::panic::resume_unwind(e)
        }
    }
}

/// Runs the stress without judging it: see [`stress`] for the checked form.
pub fn run(cfg: &Cfg) -> Outcome {
    let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    install_handler();
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let counter = Arc::new(PerCpuCounter::with_index(cfg.index));
    let cpus = counter.cpus();
    let allowed = allowed_cpus();
    assert!(!allowed.is_empty());
    HANDLER_TALLY.store(0, SeqCst);
    HANDLER_OPS.store(0, SeqCst);
    HANDLER_COUNTER.store(Arc::as_ptr(&counter).cast_mut(), Release);

    let shared = Arc::new(Shared {
        stop_helpers: AtomicBool::new(false),
        release_workers: AtomicBool::new(false),
        done: AtomicUsize::new(0),
        tids: (0..cfg.workers).map(|_| AtomicI32::new(0)).collect(),
        pthreads: (0..cfg.workers).map(|_| AtomicU64::new(0)).collect(),
        signals_sent: AtomicU64::new(0),
        affinity_changes: AtomicU64::new(0),
        takes: AtomicU64::new(0),
    });
    let _on_panic = StopOnPanic {
        shared: shared.clone(),
        counter: counter.clone(),
    };
    let mut seeder = SmallRng::seed_from_u64(cfg.seed);

    if let Some(hooks) = cfg.around_worker_spawn {
        (hooks.before)();
    }
    let workers: Vec<JoinHandle<i64>> = (0..cfg.workers)
        .map(|i| {
            let (counter, shared) = (counter.clone(), shared.clone());
            let (ops, pct, seed) = (cfg.ops_per_worker, cfg.add_on_percent, seeder.random());
            thread::Builder::new()
                .name(format!("stress-worker-{i}"))
                .spawn(move || worker(&counter, &shared, i, ops, pct, seed))
                .expect("spawning a worker")
        })
        .collect();
    if let Some(hooks) = cfg.around_worker_spawn {
        (hooks.after)();
    }

    let mut helpers: Vec<(&str, JoinHandle<i64>)> = Vec::new();
    if cfg.signals {
        let (shared, seed) = (shared.clone(), seeder.random());
        helpers.push((
            "signal",
            thread::spawn(move || {
                signal_thread(&shared, seed);
                0
            }),
        ));
    }
    if cfg.affinity {
        let (shared, seed, allowed) = (shared.clone(), seeder.random(), allowed.clone());
        helpers.push((
            "affinity",
            thread::spawn(move || {
                affinity_thread(&shared, &allowed, seed);
                0
            }),
        ));
    }
    if cfg.fence_storm {
        let (counter, shared, seed) = (counter.clone(), shared.clone(), seeder.random());
        helpers.push((
            "fence-storm",
            thread::spawn(move || storm_thread(&counter, &shared, seed)),
        ));
    }

    // The calling thread adds until every worker is done (at least one batch),
    // then waits until every helper has acted at least once, so that the
    // ingredients of the run do not depend on timing. All bounded by the
    // deadline.
    let mut main_tally = 0i64;
    let mut main_ops = 0u64;
    let mut rng = SmallRng::seed_from_u64(seeder.random());
    let _ = cpulocal::current_cpu();
    let mut timed_out = None;
    loop {
        if cfg.main_adds {
            for _ in 0..256 {
                let v: i64 = rng.random_range(-1000..=1000);
                if rng.random_ratio(cfg.add_on_percent, 100) {
                    counter
                        .add_on(rng.random_range(0..cpus), v)
                        .expect("a CPU of the counter");
                } else {
                    counter.add(v);
                }
                main_tally = main_tally.wrapping_add(v);
                main_ops += 1;
            }
            thread::yield_now();
        } else {
            thread::sleep(Duration::from_millis(1));
        }
        let done = shared.done.load(SeqCst);
        if done == cfg.workers {
            break;
        }
        if Instant::now() > deadline {
            timed_out = Some(format!("{done} of {} workers finished", cfg.workers));
            break;
        }
    }
    // Every enabled ingredient must have acted at least once before the
    // helpers stop (workers stay alive, so signals and migrations still reach
    // them): the ingredients of a run never depend on timing.
    let acted = || {
        (!cfg.signals || HANDLER_OPS.load(SeqCst) > 0)
            && (!cfg.affinity || shared.affinity_changes.load(SeqCst) > 0)
            && (!cfg.fence_storm || shared.takes.load(SeqCst) > 0)
    };
    while timed_out.is_none() && !acted() {
        if Instant::now() > deadline {
            timed_out = Some("a helper never acted".to_owned());
        }
        thread::sleep(Duration::from_millis(1));
    }

    // Teardown, in order: helpers stop and are joined (no more signals or
    // affinity changes aimed at workers), then workers are released and joined,
    // then the handler's counter pointer is cleared.
    shared.stop_helpers.store(true, SeqCst);
    let mut taken = 0i64;
    for (what, h) in helpers {
        taken = taken.wrapping_add(join(h, what));
    }
    shared.release_workers.store(true, SeqCst);
    if let Some(why) = timed_out {
        // Workers may be stuck: leave them running, with the counter kept
        // alive by `StopOnPanic` (the handler may still use it), and fail.
        panic!(
            "[{}] stress did not finish within {:?} ({why}): a hang or livelock; stats {:?}, seed {}",
            cfg.label,
            cfg.timeout,
            counter.stats(),
            cfg.seed
        );
    }
    let mut expected = main_tally;
    let mut panicked = None;
    for (i, w) in workers.into_iter().enumerate() {
        match w.join() {
            Ok(t) => expected = expected.wrapping_add(t),
            Err(e) => {
                eprintln!("stress: worker {i} panicked");
                panicked.get_or_insert(e);
            }
        }
    }
    HANDLER_COUNTER.store(ptr::null_mut(), SeqCst);
    if let Some(e) = panicked {
        std::panic::resume_unwind(e);
    }
    let handler_tally = HANDLER_TALLY.load(SeqCst);
    let handler_ops = HANDLER_OPS.load(SeqCst);
    expected = expected.wrapping_add(handler_tally);
    Outcome {
        label: cfg.label.clone(),
        seed: cfg.seed,
        worker_ops: cfg.ops_per_worker * cfg.workers as u64,
        handler_ops,
        main_ops,
        signals_sent: shared.signals_sent.load(SeqCst),
        affinity_changes: shared.affinity_changes.load(SeqCst),
        takes: shared.takes.load(SeqCst),
        expected,
        taken,
        remaining: counter.sum(),
        stats: counter.stats(),
        elapsed: started.elapsed(),
    }
}
