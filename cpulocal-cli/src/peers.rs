//! The per-CPU increments cpulocal is compared with, as [`Workload`]s that a
//! [`Runner`] drives on T threads, and the fenced-path latency probe.
//!
//! Every workload adds 1 per operation, so [`Workload::total`] must equal the
//! number of operations run: the benchmarks check it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpulocal::PerCpuCounter;
use crossbeam_utils::CachePadded;
use fast_counter::ConcurrentCounter;
use thread_local::ThreadLocal;

use crate::runner::{allowed_cpus, Runner};

/// One way to count events from many threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// `cpulocal::PerCpuCounter::add(1)`: rseq section with the fence check.
    Cpulocal,
    /// The hand-written C rseq increment (librseq style), one FFI call per
    /// batch: the floor for an rseq per-CPU add.
    CRseq,
    /// The C increment plus cpulocal's fence check: what the fence costs.
    CRseqFenceCheck,
    /// One shared, cache-padded `AtomicI64::fetch_add(1, Relaxed)`.
    SharedAtomic,
    /// `sched_getcpu()`, then `fetch_add(1, Relaxed)` on that CPU's
    /// cache-padded `AtomicI64`: the classic per-CPU counter without rseq.
    GetcpuAtomic,
    /// The `thread_local` crate: `ThreadLocal<CachePadded<AtomicI64>>`, each
    /// thread `get_or_default().fetch_add(1, Relaxed)` on its own shard (the
    /// thread-sharded counter as Rust users write it today). One shard per
    /// thread that ever added, so memory and `sum` grow with threads.
    ThreadLocalFetchAdd,
    /// As [`ThreadLocalFetchAdd`](Peer::ThreadLocalFetchAdd), but the owner
    /// adds with a relaxed load and store, no atomic read-modify-write: the
    /// fastest correct thread-sharded counter, at the price that no other
    /// thread may ever write a shard (no exact `take()`, no `add_on`).
    ThreadLocalLoadStore,
    /// The `fast-counter` crate's `ConcurrentCounter::add(1)`: a thread id in a
    /// thread-local picks one of `next_power_of_two(threads)` cache-padded
    /// `AtomicIsize` cells, then `fetch_add(1, Relaxed)`.
    FastCounter,
}

impl Peer {
    /// Every peer, in report order.
    pub const ALL: [Peer; 8] = [
        Peer::Cpulocal,
        Peer::CRseq,
        Peer::CRseqFenceCheck,
        Peer::SharedAtomic,
        Peer::GetcpuAtomic,
        Peer::ThreadLocalFetchAdd,
        Peer::ThreadLocalLoadStore,
        Peer::FastCounter,
    ];

    /// A short, stable name (benchmark ids, CLI output, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Peer::Cpulocal => "cpulocal_add",
            Peer::CRseq => "c_rseq",
            Peer::CRseqFenceCheck => "c_rseq_fence_check",
            Peer::SharedAtomic => "shared_atomic",
            Peer::GetcpuAtomic => "getcpu_atomic",
            Peer::ThreadLocalFetchAdd => "thread_local_fetch_add",
            Peer::ThreadLocalLoadStore => "thread_local_load_store",
            Peer::FastCounter => "fast_counter",
        }
    }

    /// What the peer is, for people (tables, the chart's legend).
    pub fn label(self) -> &'static str {
        match self {
            Peer::Cpulocal => "cpulocal PerCpuCounter::add",
            Peer::CRseq => "C rseq add (librseq style)",
            Peer::CRseqFenceCheck => "C rseq add + fence check",
            Peer::SharedAtomic => "shared AtomicI64::fetch_add",
            Peer::GetcpuAtomic => "sched_getcpu + per-CPU atomic",
            Peer::ThreadLocalFetchAdd => "thread_local shard, fetch_add",
            Peer::ThreadLocalLoadStore => "thread_local shard, load+store",
            Peer::FastCounter => "fast-counter ConcurrentCounter",
        }
    }

    /// Whether this peer can run here: the C peers need the C baseline built
    /// for this target and a glibc rseq area on the calling thread.
    pub fn available(self) -> bool {
        match self {
            Peer::CRseq | Peer::CRseqFenceCheck => c_available(),
            _ => true,
        }
    }
}

#[cfg(cpulocal_c_baseline)]
fn c_available() -> bool {
    crate::baseline::rseq_available()
}

#[cfg(not(cpulocal_c_baseline))]
fn c_available() -> bool {
    false
}

/// The shared state of one peer: what the threads of a run add to.
#[derive(Debug)]
pub struct Workload {
    peer: Peer,
    state: State,
}

#[derive(Debug)]
enum State {
    Cpulocal(PerCpuCounter),
    #[cfg(cpulocal_c_baseline)]
    C(crate::baseline::CSlots),
    Shared(CachePadded<AtomicI64>),
    Getcpu(Box<[CachePadded<AtomicI64>]>),
    // Boxed: the table of buckets is 512 bytes.
    ThreadLocal(Box<ThreadLocal<CachePadded<AtomicI64>>>),
    Fast(ConcurrentCounter),
}

impl Workload {
    /// Fresh, zeroed state for `peer`, sized for as many threads as there are
    /// possible CPUs; None if the peer is not [`available`](Peer::available)
    /// here.
    pub fn new(peer: Peer) -> Option<Self> {
        Self::for_threads(peer, cpulocal::possible_cpus())
    }

    /// Fresh, zeroed state for `peer` run by `threads` threads. Only
    /// fast-counter uses the number: it gets a cell per thread
    /// (`ConcurrentCounter::new(threads)`, as its own benchmark does), its
    /// best case. None if the peer is not [`available`](Peer::available) here.
    pub fn for_threads(peer: Peer, threads: usize) -> Option<Self> {
        if !peer.available() {
            return None;
        }
        let state = match peer {
            Peer::Cpulocal => State::Cpulocal(PerCpuCounter::new()),
            #[cfg(cpulocal_c_baseline)]
            Peer::CRseq | Peer::CRseqFenceCheck => State::C(crate::baseline::CSlots::new()),
            #[cfg(not(cpulocal_c_baseline))]
            Peer::CRseq | Peer::CRseqFenceCheck => return None,
            Peer::SharedAtomic => State::Shared(CachePadded::new(AtomicI64::new(0))),
            Peer::GetcpuAtomic => State::Getcpu(
                (0..cpulocal::possible_cpus())
                    .map(|_| CachePadded::new(AtomicI64::new(0)))
                    .collect(),
            ),
            Peer::ThreadLocalFetchAdd | Peer::ThreadLocalLoadStore => {
                State::ThreadLocal(Box::default())
            }
            Peer::FastCounter => State::Fast(ConcurrentCounter::new(threads.max(1))),
        };
        Some(Workload { peer, state })
    }

    /// The peer this workload runs.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Runs `ops` operations on the calling thread.
    ///
    /// # Panics
    ///
    /// For a C peer, if the calling thread has no glibc rseq area.
    pub fn run(&self, ops: u64) {
        match &self.state {
            State::Cpulocal(c) => cpulocal_loop(c, ops),
            #[cfg(cpulocal_c_baseline)]
            State::C(slots) => {
                let r = match self.peer {
                    Peer::CRseqFenceCheck => slots.add_fence_loop(ops),
                    _ => slots.add_loop(ops),
                };
                r.expect("C rseq baseline on a thread without rseq");
            }
            State::Shared(a) => shared_atomic_loop(a, ops),
            State::Getcpu(slots) => getcpu_atomic_loop(slots, ops),
            State::ThreadLocal(t) if self.peer == Peer::ThreadLocalLoadStore => {
                thread_local_load_store_loop(t, ops)
            }
            State::ThreadLocal(t) => thread_local_fetch_add_loop(t, ops),
            State::Fast(c) => fast_counter_loop(c, ops),
        }
    }

    /// The sum of everything added so far.
    pub fn total(&self) -> i64 {
        match &self.state {
            State::Cpulocal(c) => c.sum(),
            #[cfg(cpulocal_c_baseline)]
            State::C(slots) => slots.sum(),
            State::Shared(a) => a.load(Ordering::Relaxed),
            State::Getcpu(slots) => slots.iter().map(|a| a.load(Ordering::Relaxed)).sum(),
            State::ThreadLocal(t) => t.iter().map(|a| a.load(Ordering::Relaxed)).sum(),
            State::Fast(c) => c.sum() as i64,
        }
    }
}

/// The cpulocal hot loop (not inlined, so its code is easy to find and read
/// in the bench binary: `cpulocal_cli::peers::cpulocal_loop`).
#[inline(never)]
pub fn cpulocal_loop(counter: &PerCpuCounter, ops: u64) {
    for _ in 0..ops {
        counter.add(1);
    }
}

/// The shared-atomic hot loop.
#[inline(never)]
pub fn shared_atomic_loop(a: &AtomicI64, ops: u64) {
    for _ in 0..ops {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `sched_getcpu()` + per-CPU atomic hot loop. `slots` has one entry per
/// possible CPU; a failed `sched_getcpu` (impossible on Linux) uses slot 0.
#[inline(never)]
pub fn getcpu_atomic_loop(slots: &[CachePadded<AtomicI64>], ops: u64) {
    for _ in 0..ops {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        let slot = usize::try_from(cpu)
            .ok()
            .and_then(|c| slots.get(c))
            .unwrap_or(&slots[0]);
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `thread_local` hot loop with `fetch_add`: the shard is looked up on
/// every operation, as a counter's `add` method would.
#[inline(never)]
pub fn thread_local_fetch_add_loop(t: &ThreadLocal<CachePadded<AtomicI64>>, ops: u64) {
    for _ in 0..ops {
        t.get_or_default().fetch_add(1, Ordering::Relaxed);
    }
}

/// The `thread_local` hot loop with a load and a store: only the owning
/// thread writes its shard, so no read-modify-write is needed.
#[inline(never)]
pub fn thread_local_load_store_loop(t: &ThreadLocal<CachePadded<AtomicI64>>, ops: u64) {
    for _ in 0..ops {
        let shard = t.get_or_default();
        shard.store(shard.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// The fast-counter hot loop.
#[inline(never)]
pub fn fast_counter_loop(c: &ConcurrentCounter, ops: u64) {
    for _ in 0..ops {
        c.add(1);
    }
}

/// Times `ops_per_thread` operations of `workload` on every thread of
/// `runner` at once; returns the wall time divided by the number of threads,
/// so that wall time / `ops_per_thread` is the per-operation wall time across
/// threads (the inverse of the aggregate throughput).
pub fn time_per_thread(runner: &Runner, workload: &Arc<Workload>, ops_per_thread: u64) -> Duration {
    let w = workload.clone();
    let wall = runner.run(move |_| w.run(ops_per_thread));
    wall / runner.threads() as u32
}

/// Nanoseconds per operation (wall time across threads) of `peer` on
/// `threads` threads pinned one per CPU, each running `ops_per_thread`
/// operations after a warm-up of a tenth as many. None if the peer is not
/// available here.
///
/// # Errors
///
/// If the threads cannot be created or pinned.
///
/// # Panics
///
/// If the peer's total does not match the operations run (a lost update).
pub fn ns_per_op(peer: Peer, threads: usize, ops_per_thread: u64) -> io::Result<Option<f64>> {
    let Some(w) = Workload::new(peer) else {
        return Ok(None);
    };
    let w = Arc::new(w);
    let runner = Runner::new(threads)?;
    time_per_thread(&runner, &w, ops_per_thread / 10);
    let t = time_per_thread(&runner, &w, ops_per_thread);
    let expected = (threads as u64) * (ops_per_thread + ops_per_thread / 10);
    assert_eq!(
        w.total(),
        expected as i64,
        "{}: lost or extra updates",
        peer.name()
    );
    Ok(Some(t.as_nanos() as f64 / ops_per_thread.max(1) as f64))
}

/// Whether the CPU a fenced `add_on` targets is idle or runs another thread
/// of this process (which the membarrier must then interrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// No thread of this process runs on the target CPU.
    Idle,
    /// A thread of this process spins on the target CPU (adding to another
    /// counter), so every fenced operation IPIs it.
    Busy,
}

impl Target {
    /// A short, stable name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Idle => "target_idle",
            Target::Busy => "target_busy",
        }
    }
}

/// The fenced path of `PerCpuCounter::add_on(cpu, 1)` for a CPU the caller is
/// not on: a worker pinned to one CPU adds to the slot of another, so every
/// operation takes the fence, issues `membarrier(PRIVATE_EXPEDITED_RSEQ,
/// FLAG_CPU, cpu)`, adds, and releases.
#[derive(Debug)]
pub struct FencedAddOn {
    runner: Runner,
    counter: Arc<PerCpuCounter>,
    target: usize,
    busy: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl FencedAddOn {
    /// A worker on the first allowed CPU, aiming at the second. None when the
    /// thread may run on only one CPU (no remote CPU to aim at).
    ///
    /// # Errors
    ///
    /// If the worker (or the busy thread) cannot be created or pinned.
    pub fn new(target: Target) -> io::Result<Option<Self>> {
        let cpus = allowed_cpus()?;
        let [home, remote, ..] = cpus[..] else {
            return Ok(None);
        };
        let runner = Runner::pinned(vec![home])?;
        let busy = match target {
            Target::Idle => None,
            Target::Busy => {
                let stop = Arc::new(AtomicBool::new(false));
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let s = stop.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("busy@cpu{remote}"))
                    .spawn(move || {
                        let pinned = crate::runner::pin_current_thread(remote);
                        let ok = pinned.is_ok();
                        let _ = ready_tx.send(pinned);
                        if !ok {
                            return;
                        }
                        let other = PerCpuCounter::new();
                        while !s.load(Ordering::Relaxed) {
                            cpulocal_loop(&other, 1000);
                        }
                    })?;
                ready_rx
                    .recv()
                    .map_err(|_| io::Error::other("busy thread died while starting"))??;
                Some((stop, handle))
            }
        };
        Ok(Some(FencedAddOn {
            runner,
            counter: Arc::new(PerCpuCounter::new()),
            target: remote,
            busy,
        }))
    }

    /// The CPU the worker is pinned to and the CPU it adds to.
    pub fn cpus(&self) -> (usize, usize) {
        let home = self.runner.cpus()[0].expect("the fenced worker is pinned");
        (home, self.target)
    }

    /// Wall time of `ops` fenced `add_on` calls, back to back.
    pub fn time(&self, ops: u64) -> Duration {
        let (c, cpu) = (self.counter.clone(), self.target);
        self.runner.run(move |_| {
            for _ in 0..ops {
                c.add_on(cpu, 1).expect("a CPU of the counter");
            }
        })
    }

    /// The latency of each of `samples` fenced `add_on` calls, timed one by
    /// one (each includes one `Instant::now()`, some 20 ns), sorted.
    pub fn latencies(&self, samples: usize) -> Vec<Duration> {
        let (c, cpu) = (self.counter.clone(), self.target);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        self.runner.run(move |_| {
            let mut v = Vec::with_capacity(samples);
            let mut t0 = Instant::now();
            for _ in 0..samples {
                c.add_on(cpu, 1).expect("a CPU of the counter");
                let t1 = Instant::now();
                v.push(t1 - t0);
                t0 = t1;
            }
            let _ = tx.lock().map(|tx| tx.send(v));
        });
        let mut v = rx.recv().unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The median of [`latencies`](Self::latencies) over `samples` calls.
    pub fn median(&self, samples: usize) -> Duration {
        let v = self.latencies(samples.max(1));
        v[v.len() / 2]
    }

    /// Every fenced add so far, and whether they all landed on the target.
    pub fn total(&self) -> (i64, bool) {
        let per = self.counter.per_cpu();
        let sum: i64 = per.iter().sum();
        (sum, per[self.target] == sum)
    }

    /// How many operations took the fenced path (should be all of them).
    pub fn fenced_ops(&self) -> u64 {
        self.counter.stats().fenced
    }
}

impl Drop for FencedAddOn {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.busy.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_counts_exactly_on_two_threads() {
        let runner = Runner::new(2).unwrap();
        for peer in Peer::ALL {
            let Some(w) = Workload::new(peer) else {
                eprintln!("{}: not available here", peer.name());
                continue;
            };
            let w = Arc::new(w);
            time_per_thread(&runner, &w, 50_000);
            assert_eq!(w.total(), 100_000, "{}", peer.name());
        }
    }

    #[test]
    fn ns_per_op_reports_a_time() {
        let ns = ns_per_op(Peer::Cpulocal, 1, 10_000).unwrap().unwrap();
        assert!(ns > 0.0);
    }

    #[test]
    fn fenced_add_on_is_fenced_and_lands_on_the_target() {
        for target in [Target::Idle, Target::Busy] {
            let Some(f) = FencedAddOn::new(target).unwrap() else {
                eprintln!("skipped: one CPU");
                return;
            };
            f.time(100);
            let lat = f.latencies(100);
            assert_eq!(lat.len(), 100);
            assert_eq!(f.total(), (200, true));
            assert_eq!(f.fenced_ops(), 200);
        }
    }
}
