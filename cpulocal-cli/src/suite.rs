//! The comparison suite behind `cpulocal bench`: every available [`Peer`] at
//! each thread count, timed in one process, interleaved, so that the ratios
//! between peers hold on a noisy machine; the cost of cpulocal's fenced path;
//! and cpulocal's per-CPU structures against the queues Rust users pick today
//! ([`Structure`]), timed the same way.
//!
//! For each thread count the suite starts one [`Runner`] and a fresh
//! [`Workload`] per peer, sizes each peer's batch to take about
//! [`Config::batch`] of wall time, then runs [`Config::rounds`] rounds: one
//! batch of every peer per round, the order rotated by one peer each round.
//! A cell's time is the median over its rounds of wall time / total
//! operations (every thread's), and a peer's ratio to cpulocal is the median
//! of its per-round ratios (the peer's batch against cpulocal's batch of the
//! same round), so that a slow phase of the machine affects both sides.
//!
//! Each workload adds 1 per operation, and after its rounds the suite checks
//! that its total equals the operations run: a lost or duplicated update is an
//! [`Error::Inexact`], whatever the timing.
//!
//! The structures run the same way at [`Config::structure_threads`], one
//! operation being a `push(x); pop()` pair. Their reference is the fastest of
//! cpulocal's structures *in each round*: a structure's ratio is the median
//! over rounds of its time / that best time, and [`Report::goal`] says whether
//! the fastest peer is at least [`GOAL`] times slower. After its rounds each
//! structure is drained, and a value lost or duplicated is an
//! [`Error::Unbalanced`].
//!
//! The ring section runs the same way at [`Config::ring_threads`], one
//! operation being an event: `reserve(64)`, write, `commit()` on a
//! [`PerCpuRing`](cpulocal::PerCpuRing) against the same 64 bytes on a
//! crossbeam `ArrayQueue` ([`RingPeer`]), in two scenarios, each timed on its
//! own with its ring as the reference (see [`ring_bench`]): a flight
//! recorder (producers only; overwrite mode, `force_push`) and streaming (a
//! consumer thread draining as the producers run; discard mode, `push`). A
//! cell's time is per event *attempted*; [`RingCell`] adds the fractions
//! kept and lost over the timed rounds and the time per event *kept*
//! (delivered or overwritten, not refused: so that a ring that is fast
//! because it refuses events shows as such), and [`Report::ring_goals`]
//! judges the recorder's ring against [`RING_GOAL_NS`] and
//! [`RING_GOAL_RATIO`], per event kept. A batch whose events do not add up
//! is an [`Error::Ring`].
//!
//! ```no_run
//! use cpulocal_cli::suite::{self, Config};
//!
//! let report = suite::run(&Config::quick(), &mut |_| {}).unwrap();
//! for cell in &report.cells {
//!     println!("{} @{}: {:.2} ns/op", cell.peer.name(), cell.threads, cell.median_ns);
//! }
//! ```

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loops::{self, Loop, Mode, Side};
use crate::peers::{FencedAddOn, Peer, Target, Workload};
use crate::ring_bench::{self, Outcome, RingPeer, Scenario};
use crate::runner::{allowed_cpus, Placement, Runner};
use crate::structures::{self, Structure};

/// What to run; [`Config::full`] and [`Config::quick`] are the two presets.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Thread counts, in increasing order.
    pub threads: Vec<usize>,
    /// The peers, in report order; [`Peer::Cpulocal`] is the reference of the
    /// ratios (none are computed without it).
    pub peers: Vec<Peer>,
    /// Interleaved rounds per thread count (the median is over these).
    pub rounds: usize,
    /// The wall time one batch (one peer, every thread) aims at.
    pub batch: Duration,
    /// Fenced `add_on` calls timed one by one, per target state.
    pub fenced_samples: usize,
    /// Where the worker threads run.
    pub placement: Placement,
    /// The structures, in report order; those that
    /// [are cpulocal's](Structure::is_cpulocal) are the reference of their
    /// ratios (none are computed without one).
    pub structures: Vec<Structure>,
    /// Thread counts of the structures, in increasing order.
    pub structure_threads: Vec<usize>,
    /// Interleaved rounds per thread count of the structures.
    pub structure_rounds: usize,
    /// The ring section's peers, in report order; [`RingPeer::Ring`] is the
    /// reference of the ratio (none is computed without it).
    pub ring_peers: Vec<RingPeer>,
    /// Producer thread counts of the ring section, in increasing order.
    pub ring_threads: Vec<usize>,
    /// Interleaved rounds per thread count of the ring section.
    pub ring_rounds: usize,
    /// `param_test`'s loops, each against its hand-written C rseq version
    /// ([`crate::loops`]), in report order.
    pub loops: Vec<Loop>,
    /// The index modes the loops run in.
    pub loop_modes: Vec<Mode>,
    /// Thread counts of the loops, in increasing order.
    pub loop_threads: Vec<usize>,
    /// Rounds per loop, mode and thread count: each round one batch of the C
    /// loop and one of cpulocal's, in alternating order.
    pub loop_rounds: usize,
}

/// The counters' thread counts of both presets.
pub const THREADS: [usize; 5] = [1, 2, 4, 8, 16];

/// The structures' thread counts of both presets.
pub const STRUCTURE_THREADS: [usize; 3] = [1, 2, 8];

/// The structures' goal: at each of [`GOAL_THREADS`], the fastest peer at
/// least this many times slower than the fastest cpulocal structure.
pub const GOAL: f64 = 3.0;

/// The thread counts the structures' [`GOAL`] is judged at.
pub const GOAL_THREADS: [usize; 2] = [2, 8];

/// The loops' thread counts of both presets.
pub const LOOP_THREADS: [usize; 3] = [1, 2, 8];

/// The loops' goal: each cpulocal loop takes at most this many times its C
/// version's time, at every thread count, in both index modes.
pub const LOOP_GOAL: f64 = 1.10;

/// The ring section's producer thread counts of both presets.
pub const RING_THREADS: [usize; 3] = [1, 2, 8];

/// The ring's first goal: at most this many ns per event on
/// [`RING_GOAL_NS_THREADS`] producer.
pub const RING_GOAL_NS: f64 = 15.0;

/// The producer count [`RING_GOAL_NS`] is judged at.
pub const RING_GOAL_NS_THREADS: usize = 1;

/// The ring's second goal: the `ArrayQueue` at least this many times slower
/// per event (the ratio of their times in the same round) at
/// [`RING_GOAL_RATIO_THREADS`] producers.
pub const RING_GOAL_RATIO: f64 = 5.0;

/// The producer count [`RING_GOAL_RATIO`] is judged at.
pub const RING_GOAL_RATIO_THREADS: usize = 8;

impl Config {
    /// The ring peers of `scenario`, in [`Config::ring_peers`] order.
    pub fn ring_peers_in(&self, scenario: Scenario) -> Vec<RingPeer> {
        self.ring_peers
            .iter()
            .copied()
            .filter(|p| p.scenario() == scenario)
            .collect()
    }

    /// The full suite: 15 rounds of 25 ms batches per thread count, 50,000
    /// fenced calls per target, the structures and the ring likewise; about
    /// 25 s on 2 CPUs.
    pub fn full() -> Self {
        Config {
            threads: THREADS.to_vec(),
            peers: Peer::ALL.to_vec(),
            rounds: 15,
            batch: Duration::from_millis(25),
            fenced_samples: 50_000,
            placement: Placement::Pinned,
            structures: Structure::ALL.to_vec(),
            structure_threads: STRUCTURE_THREADS.to_vec(),
            structure_rounds: 15,
            ring_peers: RingPeer::ALL.to_vec(),
            ring_threads: RING_THREADS.to_vec(),
            ring_rounds: 15,
            loops: Loop::ALL.to_vec(),
            loop_modes: Mode::ALL.to_vec(),
            loop_threads: LOOP_THREADS.to_vec(),
            loop_rounds: 15,
        }
    }

    /// A short run: 5 rounds of 4 ms batches (3 for the structures and the
    /// ring), 2,000 fenced calls per target; about 2 s on 2 CPUs. Noisier,
    /// same shape.
    pub fn quick() -> Self {
        Config {
            rounds: 5,
            batch: Duration::from_millis(4),
            fenced_samples: 2_000,
            structure_rounds: 3,
            ring_rounds: 3,
            loop_rounds: 3,
            ..Self::full()
        }
    }

    /// How many [`Progress`] events a run reports (a progress bar's length),
    /// when called on the thread that runs the suite.
    pub fn steps(&self) -> u64 {
        let peers = self.peers.iter().filter(|p| p.available()).count() as u64;
        let per_count = peers * (1 + self.rounds as u64);
        let structures = self.structures.len() as u64 * (1 + self.structure_rounds as u64);
        let ring = self.ring_peers.len() as u64 * (1 + self.ring_rounds as u64);
        let modes = self.loop_modes.iter().filter(|m| m.available()).count() as u64;
        let loops = self.loops.len() as u64 * modes * 3 * (1 + self.loop_rounds as u64);
        self.threads.len() as u64 * per_count
            + self.structure_threads.len() as u64 * structures
            + self.ring_threads.len() as u64 * ring
            + self.loop_threads.len() as u64 * loops
            + 2
    }
}

/// What the suite is about to do; reported once per step (see
/// [`Config::steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Sizing `peer`'s batch on `threads` threads (also its warm-up).
    Calibrating {
        /// Worker threads.
        threads: usize,
        /// The peer.
        peer: Peer,
    },
    /// One timed batch of `peer` in round `round` (from 0).
    Round {
        /// Worker threads.
        threads: usize,
        /// The round.
        round: usize,
        /// The peer.
        peer: Peer,
    },
    /// Timing fenced `add_on` calls with the target CPU in this state
    /// (reported even when the machine has one CPU and nothing runs).
    Fenced(Target),
    /// Sizing `structure`'s batch on `threads` threads (also its warm-up).
    StructureCalibrating {
        /// Worker threads.
        threads: usize,
        /// The structure.
        structure: Structure,
    },
    /// One timed batch of `structure` in round `round` (from 0).
    StructureRound {
        /// Worker threads.
        threads: usize,
        /// The round.
        round: usize,
        /// The structure.
        structure: Structure,
    },
    /// Sizing `peer`'s batch on `threads` producers (also its warm-up).
    RingCalibrating {
        /// Producer threads.
        threads: usize,
        /// The ring or its peer.
        peer: RingPeer,
    },
    /// One timed batch of `peer` in round `round` (from 0).
    RingRound {
        /// Producer threads.
        threads: usize,
        /// The round.
        round: usize,
        /// The ring or its peer.
        peer: RingPeer,
    },
    /// Sizing a loop's batch on `threads` threads (also its warm-up), or,
    /// with `round`, one timed batch.
    Loop {
        /// Worker threads.
        threads: usize,
        /// The loop.
        lp: Loop,
        /// Its index mode.
        mode: Mode,
        /// The side that runs.
        side: Side,
        /// None while sizing; the round (from 0) after.
        round: Option<usize>,
    },
}

/// One peer at one thread count: a counter ([`Peer`]) or a [`Structure`].
#[derive(Debug, Clone, PartialEq)]
pub struct Cell<P = Peer> {
    /// The peer.
    pub peer: P,
    /// Worker threads.
    pub threads: usize,
    /// Operations per thread in each timed batch (for a structure, push+pop
    /// pairs).
    pub ops_per_thread: u64,
    /// Nanoseconds per operation (batch wall time / all threads' operations),
    /// one per round, in round order.
    pub rounds_ns: Vec<f64>,
    /// The median of `rounds_ns`.
    pub median_ns: f64,
    /// The fastest round.
    pub min_ns: f64,
    /// The slowest round.
    pub max_ns: f64,
    /// The median over rounds of this peer's time / cpulocal's time in the
    /// same round; above 1, cpulocal is faster. None without a cpulocal cell
    /// (1.0 for cpulocal itself). For a structure, cpulocal's time is that of
    /// the fastest cpulocal structure in the round (so 1.0 or a little more
    /// for cpulocal's own).
    pub ratio: Option<f64>,
}

impl<P> Cell<P> {
    /// Aggregate throughput, millions of operations per second.
    pub fn mops(&self) -> f64 {
        1e3 / self.median_ns
    }
}

/// The ring or its peer at one producer count: its time per event attempted
/// (`cell`, the ratio being the peer's time / the ring's of its scenario),
/// what became of the events of the timed rounds, and the time per event
/// kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RingCell {
    /// Times per event attempted and the ratio, as for the other sections.
    pub cell: Cell<RingPeer>,
    /// Events attempted, delivered, overwritten and lost over the timed
    /// rounds.
    pub events: Outcome,
    /// Times per event *kept* (each round's wall time / the events of that
    /// batch delivered, the untimed reading included, or overwritten;
    /// infinite for a round that kept none) and their ratio, the peer's /
    /// the ring's in the same round.
    pub per_kept: Cell<RingPeer>,
}

impl RingCell {
    /// The fraction of the events attempted that were read.
    pub fn delivered_fraction(&self) -> f64 {
        self.events.delivered as f64 / self.events.attempted.max(1) as f64
    }

    /// The fraction of the events attempted that were kept (read or
    /// overwritten).
    pub fn kept_fraction(&self) -> f64 {
        self.events.kept() as f64 / self.events.attempted.max(1) as f64
    }

    /// The fraction of the events attempted that were refused.
    pub fn lost_fraction(&self) -> f64 {
        self.events.lost as f64 / self.events.attempted.max(1) as f64
    }
}

/// The ring section's two goals as measured in a [`Scenario`]: the ring's
/// ns per event at [`RING_GOAL_NS_THREADS`] producer and the `ArrayQueue`'s
/// ratio at [`RING_GOAL_RATIO_THREADS`], per event kept (what the goals are
/// judged on: a refused event is no throughput) and per event attempted
/// (beside them); None where not run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingGoals {
    /// The scenario measured.
    pub scenario: Scenario,
    /// The ring's median ns per event kept at [`RING_GOAL_NS_THREADS`].
    pub ns: Option<f64>,
    /// The `ArrayQueue`'s time / the ring's per event kept at
    /// [`RING_GOAL_RATIO_THREADS`] (median of the rounds' ratios).
    pub ratio: Option<f64>,
    /// The ring's median ns per event attempted at [`RING_GOAL_NS_THREADS`].
    pub ns_attempted: Option<f64>,
    /// The ratio per event attempted at [`RING_GOAL_RATIO_THREADS`].
    pub ratio_attempted: Option<f64>,
}

impl RingGoals {
    /// Whether the ring is at most [`RING_GOAL_NS`] ns per event kept (None:
    /// not run).
    pub fn ns_met(&self) -> Option<bool> {
        self.ns.map(|ns| ns <= RING_GOAL_NS)
    }

    /// Whether the `ArrayQueue` is at least [`RING_GOAL_RATIO`] times slower
    /// per event kept (None: not run).
    pub fn ratio_met(&self) -> Option<bool> {
        self.ratio.map(|r| r >= RING_GOAL_RATIO)
    }
}

/// One of `param_test`'s loops in one index mode at one thread count: the C
/// loop's times and cpulocal's, batches alternating.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopCell {
    /// The loop.
    pub lp: Loop,
    /// The index mode.
    pub mode: Mode,
    /// Worker threads.
    pub threads: usize,
    /// The hand-written C loop, finding the thread's area for every
    /// operation as librseq does ([`Side::C`]): the reference.
    pub c: Cell<Side>,
    /// The same C loop with the area kept in a register across the batch
    /// ([`Side::CHoisted`]): the floor.
    pub c_hoisted: Cell<Side>,
    /// cpulocal's; its `ratio` is *its* time over the C loop's of the same
    /// round (median over rounds): above 1, the C loop is faster.
    pub cpulocal: Cell<Side>,
    /// cpulocal's time over the hoisted C loop's of the same round (median
    /// over rounds).
    pub floor_ratio: f64,
}

impl LoopCell {
    /// cpulocal's time over the C loop's (median of the rounds' ratios).
    pub fn ratio(&self) -> f64 {
        self.cpulocal.ratio.unwrap_or(f64::NAN)
    }

    /// Whether cpulocal's loop is within [`LOOP_GOAL`] of the C loop.
    pub fn goal_met(&self) -> bool {
        self.ratio() <= LOOP_GOAL
    }
}

/// The latency of cpulocal's fenced path: `add_on` to a CPU the caller is not
/// on, one call at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Fenced {
    /// Whether the target CPU was idle or busy.
    pub target: Target,
    /// The calls timed.
    pub samples: usize,
    /// Median latency, ns (each sample includes one `Instant::now()`).
    pub median_ns: f64,
    /// 90th percentile latency, ns.
    pub p90_ns: f64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The configuration run.
    pub config: Config,
    /// The CPUs the process may run on.
    pub cpus: usize,
    /// Every available peer at every thread count, thread count major, in
    /// [`Config::peers`] order.
    pub cells: Vec<Cell>,
    /// Peers that could not run here (the C peers without the C baseline or
    /// without glibc's rseq area).
    pub unavailable: Vec<Peer>,
    /// Largest number of workers that shared one CPU, per thread count of
    /// either section, in increasing order (None for floating workers).
    pub max_per_cpu: Vec<(usize, Option<usize>)>,
    /// The fenced path, idle then busy target; empty with a single CPU.
    pub fenced: Vec<Fenced>,
    /// Every structure at every structure thread count, thread count major,
    /// in [`Config::structures`] order.
    pub structures: Vec<Cell<Structure>>,
    /// The ring and its peer at every ring thread count, thread count major,
    /// in [`Config::ring_peers`] order.
    pub ring: Vec<RingCell>,
    /// The CPU the ring section's consumer was pinned to (the last allowed
    /// one); None when floating.
    pub ring_consumer_cpu: Option<usize>,
    /// Every loop against its C version, thread count major, then loop, then
    /// mode, in [`Config`] order.
    pub loops: Vec<LoopCell>,
    /// The index modes the loops could not run in here (no C baseline, no
    /// rseq, no `mm_cid`).
    pub loop_modes_unavailable: Vec<Mode>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// The cell of `peer` at `threads`, if it ran.
    pub fn cell(&self, peer: Peer, threads: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.peer == peer && c.threads == threads)
    }

    /// The cell of `structure` at `threads`, if it ran.
    pub fn structure_cell(&self, structure: Structure, threads: usize) -> Option<&Cell<Structure>> {
        self.structures
            .iter()
            .find(|c| c.peer == structure && c.threads == threads)
    }

    /// The ring cell of `peer` at `threads`, if it ran.
    pub fn ring_cell(&self, peer: RingPeer, threads: usize) -> Option<&RingCell> {
        self.ring
            .iter()
            .find(|c| c.cell.peer == peer && c.cell.threads == threads)
    }

    /// The ring section's goals as measured in `scenario` (they are judged
    /// in [`Scenario::Recorder`]; the other is shown beside).
    pub fn ring_goals(&self, scenario: Scenario) -> RingGoals {
        let ring = self.ring_cell(scenario.ring(), RING_GOAL_NS_THREADS);
        let queue = match scenario {
            Scenario::Recorder => RingPeer::RecorderArrayQueue,
            Scenario::Streaming => RingPeer::ArrayQueue,
        };
        let peer = self.ring_cell(queue, RING_GOAL_RATIO_THREADS);
        RingGoals {
            scenario,
            ns: ring.map(|c| c.per_kept.median_ns),
            ratio: peer.and_then(|c| c.per_kept.ratio),
            ns_attempted: ring.map(|c| c.cell.median_ns),
            ratio_attempted: peer.and_then(|c| c.cell.ratio),
        }
    }

    /// The fastest peer structure at `threads` (the one with the smallest
    /// ratio to the fastest cpulocal structure) and that ratio: the [`GOAL`]
    /// is met at `threads` when it is at least `GOAL`. None if no peer or no
    /// cpulocal structure ran at `threads`.
    pub fn goal(&self, threads: usize) -> Option<(Structure, f64)> {
        self.structures
            .iter()
            .filter(|c| c.threads == threads && !c.peer.is_cpulocal())
            .filter_map(|c| Some((c.peer, c.ratio?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The loop cell of `lp` in `mode` at `threads`, if it ran.
    pub fn loop_cell(&self, lp: Loop, mode: Mode, threads: usize) -> Option<&LoopCell> {
        self.loops
            .iter()
            .find(|c| c.lp == lp && c.mode == mode && c.threads == threads)
    }

    /// Whether every loop that ran is within [`LOOP_GOAL`] of its C version
    /// (None: none ran).
    pub fn loop_goal_met(&self) -> Option<bool> {
        (!self.loops.is_empty()).then(|| self.loops.iter().all(LoopCell::goal_met))
    }

    /// Whether the [`GOAL`] is met at every one of [`GOAL_THREADS`]:
    /// `Some(false)` as soon as one falls short, `Some(true)` when all were
    /// run and none does, None when one was not run and the others are met.
    pub fn goal_met(&self) -> Option<bool> {
        let ratios = GOAL_THREADS.map(|t| self.goal(t).map(|(_, r)| r));
        if ratios.iter().flatten().any(|&r| r < GOAL) {
            Some(false)
        } else if ratios.iter().all(Option::is_some) {
            Some(true)
        } else {
            None
        }
    }
}

/// Why a run failed.
#[derive(Debug)]
pub enum Error {
    /// Threads could not be created or pinned.
    Io(io::Error),
    /// A workload's total is not the number of operations run.
    Inexact {
        /// The peer.
        peer: Peer,
        /// Worker threads.
        threads: usize,
        /// Operations run.
        expected: i64,
        /// The workload's total.
        got: i64,
    },
    /// A structure lost or duplicated values.
    Unbalanced {
        /// The structure.
        structure: Structure,
        /// Worker threads.
        threads: usize,
        /// What does not add up.
        what: String,
    },
    /// The ring or its peer lost, duplicated or tore events, or miscounted
    /// the lost ones.
    Ring {
        /// The ring or its peer.
        peer: RingPeer,
        /// Producer threads.
        threads: usize,
        /// What does not add up.
        what: String,
    },
    /// One of `param_test`'s loops could not run, or its structure does not
    /// add up after it.
    Loop {
        /// The loop.
        lp: Loop,
        /// Its index mode.
        mode: Mode,
        /// Worker threads.
        threads: usize,
        /// What went wrong.
        what: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "cannot start the benchmark threads: {e}"),
            Error::Inexact {
                peer,
                threads,
                expected,
                got,
            } => write!(
                f,
                "{} on {threads} thread{} counted {got} for {expected} operations (lost or duplicated updates)",
                peer.name(),
                if *threads == 1 { "" } else { "s" },
            ),
            Error::Unbalanced {
                structure,
                threads,
                what,
            } => write!(
                f,
                "{} on {threads} thread{}: {what}",
                structure.name(),
                if *threads == 1 { "" } else { "s" },
            ),
            Error::Ring {
                peer,
                threads,
                what,
            } => write!(
                f,
                "{} with {threads} producer{}: {what}",
                peer.name(),
                if *threads == 1 { "" } else { "s" },
            ),
            Error::Loop {
                lp,
                mode,
                threads,
                what,
            } => write!(
                f,
                "the {} loop ({}) on {threads} thread{}: {what}",
                lp.name(),
                mode.name(),
                if *threads == 1 { "" } else { "s" },
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Runs the suite, calling `progress` before each step.
///
/// # Errors
///
/// [`Error::Io`] if threads cannot be created or pinned; [`Error::Inexact`]
/// if a peer lost or duplicated updates; [`Error::Unbalanced`] if a structure
/// lost or duplicated values; [`Error::Ring`] if the ring or its peer lost,
/// duplicated or tore events.
pub fn run(config: &Config, progress: &mut dyn FnMut(Progress)) -> Result<Report, Error> {
    let started = Instant::now();
    let allowed = allowed_cpus()?;
    let cpus = allowed.len();
    let unavailable: Vec<Peer> = config
        .peers
        .iter()
        .copied()
        .filter(|p| !p.available())
        .collect();
    let mut cells = Vec::new();
    let mut max_per_cpu = Vec::new();
    for &threads in &config.threads {
        let runner = Runner::with_placement(threads, config.placement)?;
        max_per_cpu.push((threads, runner.max_per_cpu()));
        cells.extend(one_count(config, &runner, progress)?);
    }
    let mut fenced = Vec::new();
    let targets = if config.peers.is_empty() {
        &[][..]
    } else {
        &[Target::Idle, Target::Busy][..]
    };
    for &target in targets {
        progress(Progress::Fenced(target));
        if let Some(f) = FencedAddOn::new(target)? {
            let samples = config.fenced_samples.max(1);
            f.time((samples as u64 / 10).max(10)); // warm up
            let lat = f.latencies(samples);
            let (total, on_target) = f.total();
            if !on_target || total < 0 || total as u64 != f.fenced_ops() {
                return Err(Error::Inexact {
                    peer: Peer::Cpulocal,
                    threads: 1,
                    expected: f.fenced_ops() as i64,
                    got: total,
                });
            }
            let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            fenced.push(Fenced {
                target,
                samples,
                median_ns: at(0.5).as_nanos() as f64,
                p90_ns: at(0.9).as_nanos() as f64,
            });
        }
    }
    let mut structures = Vec::new();
    for &threads in &config.structure_threads {
        let runner = Runner::with_placement(threads, config.placement)?;
        if !max_per_cpu.iter().any(|&(t, _)| t == threads) {
            max_per_cpu.push((threads, runner.max_per_cpu()));
        }
        structures.extend(structures_at(config, &runner, progress)?);
    }
    // The consumer on the last allowed CPU: with one producer (pinned to the
    // first) it has a CPU of its own when there are two CPUs or more.
    let ring_consumer_cpu = match config.placement {
        Placement::Pinned => allowed.last().copied(),
        Placement::Floating => None,
    };
    let mut ring = Vec::new();
    for &threads in &config.ring_threads {
        let runner = Runner::with_placement(threads, config.placement)?;
        if !max_per_cpu.iter().any(|&(t, _)| t == threads) {
            max_per_cpu.push((threads, runner.max_per_cpu()));
        }
        for scenario in Scenario::ALL {
            let peers = config.ring_peers_in(scenario);
            ring.extend(ring_at(
                config,
                &runner,
                &peers,
                ring_consumer_cpu,
                progress,
            )?);
        }
    }
    let modes: Vec<Mode> = config
        .loop_modes
        .iter()
        .copied()
        .filter(|m| m.available())
        .collect();
    let loop_modes_unavailable = config
        .loop_modes
        .iter()
        .copied()
        .filter(|m| !modes.contains(m))
        .collect();
    let mut loop_cells = Vec::new();
    for &threads in &config.loop_threads {
        let runner = Runner::with_placement(threads, config.placement)?;
        if !max_per_cpu.iter().any(|&(t, _)| t == threads) {
            max_per_cpu.push((threads, runner.max_per_cpu()));
        }
        for &lp in &config.loops {
            for &mode in &modes {
                loop_cells.push(loop_at(config, &runner, lp, mode, progress)?);
            }
        }
    }
    max_per_cpu.sort_unstable_by_key(|&(t, _)| t);
    Ok(Report {
        config: config.clone(),
        cpus,
        cells,
        unavailable,
        max_per_cpu,
        fenced,
        structures,
        ring,
        ring_consumer_cpu,
        loops: loop_cells,
        loop_modes_unavailable,
        elapsed: started.elapsed(),
    })
}

/// A batch the rounds time: `ops` operations on every worker of the runner
/// at once; returns its wall time.
type Batch = Box<dyn Fn(&Runner, u64) -> Duration>;

/// A batch that runs `job(ops)` on every worker.
fn on_workers(job: impl Fn(u64) + Send + Sync + 'static) -> Batch {
    let job = Arc::new(job);
    Box::new(move |runner, ops| {
        let job = job.clone();
        runner.run(move |_| job(ops))
    })
}

/// One peer's batches during one thread count.
struct Entry<P> {
    peer: P,
    job: Batch,
    ops_per_thread: u64,
    /// Operations run so far, every thread, calibration included.
    ran: u64,
    rounds_ns: Vec<f64>,
}

impl<P> Entry<P> {
    fn new(peer: P, job: Batch, rounds: usize) -> Self {
        Entry {
            peer,
            job,
            ops_per_thread: 0,
            ran: 0,
            rounds_ns: Vec::with_capacity(rounds),
        }
    }
}

/// Sizes each entry's batch (calling `step(peer, None)` first), then runs
/// `rounds` rounds of one batch of every entry, the order rotated by one
/// entry each round (calling `step(peer, Some(round))` before each batch).
fn interleave<P: Copy>(
    runner: &Runner,
    entries: &mut [Entry<P>],
    rounds: usize,
    target: Duration,
    step: &mut dyn FnMut(P, Option<usize>),
) {
    for e in entries.iter_mut() {
        step(e.peer, None);
        e.ops_per_thread = calibrate(runner, e, target);
    }
    let threads = runner.threads() as u64;
    let n = entries.len();
    for round in 0..rounds {
        for k in 0..n {
            let e = &mut entries[(round + k) % n];
            step(e.peer, Some(round));
            let wall = batch(runner, e, e.ops_per_thread);
            let ops = e.ops_per_thread * threads;
            e.rounds_ns.push(wall.as_nanos() as f64 / ops as f64);
        }
    }
}

/// The cells of `entries`, each with its ratio to `reference` (one time per
/// round, when there is a reference).
fn cells<P>(entries: Vec<Entry<P>>, threads: usize, reference: Option<&[f64]>) -> Vec<Cell<P>> {
    entries
        .into_iter()
        .map(|e| cell(e.peer, threads, e.ops_per_thread, e.rounds_ns, reference))
        .collect()
}

/// A cell of `rounds_ns` (one time per round), with its ratio to
/// `reference`: the median of the rounds' ratios, leaving out the rounds
/// where either time is infinite or the reference's is 0.
fn cell<P>(
    peer: P,
    threads: usize,
    ops_per_thread: u64,
    rounds_ns: Vec<f64>,
    reference: Option<&[f64]>,
) -> Cell<P> {
    let ratio = reference.and_then(|r| {
        let paired: Vec<f64> = rounds_ns
            .iter()
            .zip(r)
            .filter(|(p, c)| p.is_finite() && c.is_finite() && **c > 0.0)
            .map(|(p, c)| p / c)
            .collect();
        median(&paired)
    });
    Cell {
        peer,
        threads,
        ops_per_thread,
        median_ns: median(&rounds_ns).unwrap_or(f64::NAN),
        min_ns: rounds_ns.iter().copied().fold(f64::INFINITY, f64::min),
        max_ns: rounds_ns.iter().copied().fold(0.0, f64::max),
        rounds_ns,
        ratio,
    }
}

/// Every peer at one thread count.
fn one_count(
    config: &Config,
    runner: &Runner,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Cell>, Error> {
    let threads = runner.threads();
    let mut workloads = Vec::new();
    let mut entries = Vec::new();
    for &peer in &config.peers {
        let Some(w) = Workload::for_threads(peer, threads) else {
            continue;
        };
        let w = Arc::new(w);
        let job = w.clone();
        entries.push(Entry::new(
            peer,
            on_workers(move |ops| job.run(ops)),
            config.rounds,
        ));
        workloads.push(w);
    }
    interleave(
        runner,
        &mut entries,
        config.rounds,
        config.batch,
        &mut |peer, round| {
            progress(match round {
                None => Progress::Calibrating { threads, peer },
                Some(round) => Progress::Round {
                    threads,
                    round,
                    peer,
                },
            })
        },
    );
    for (e, w) in entries.iter().zip(&workloads) {
        let got = w.total();
        if got != e.ran as i64 {
            return Err(Error::Inexact {
                peer: e.peer,
                threads,
                expected: e.ran as i64,
                got,
            });
        }
    }
    let reference = entries
        .iter()
        .find(|e| e.peer == Peer::Cpulocal)
        .map(|e| e.rounds_ns.clone());
    Ok(cells(entries, threads, reference.as_deref()))
}

/// Every structure at one thread count, each compared with the fastest
/// cpulocal structure of the same round.
fn structures_at(
    config: &Config,
    runner: &Runner,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Cell<Structure>>, Error> {
    let threads = runner.threads();
    let rounds = config.structure_rounds;
    let mut workloads = Vec::new();
    let mut entries = Vec::new();
    for &structure in &config.structures {
        let w = Arc::new(structures::Workload::new(structure, threads));
        let job = w.clone();
        entries.push(Entry::new(
            structure,
            on_workers(move |ops| job.run(ops)),
            rounds,
        ));
        workloads.push(w);
    }
    interleave(
        runner,
        &mut entries,
        rounds,
        config.batch,
        &mut |structure, round| {
            progress(match round {
                None => Progress::StructureCalibrating { threads, structure },
                Some(round) => Progress::StructureRound {
                    threads,
                    round,
                    structure,
                },
            })
        },
    );
    for (e, w) in entries.iter().zip(&workloads) {
        w.check(e.ran).map_err(|what| Error::Unbalanced {
            structure: e.peer,
            threads,
            what,
        })?;
    }
    let best: Vec<f64> = (0..rounds)
        .map(|r| {
            entries
                .iter()
                .filter(|e| e.peer.is_cpulocal())
                .map(|e| e.rounds_ns[r])
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let reference = best.iter().all(|t| t.is_finite()).then_some(&best[..]);
    Ok(cells(entries, threads, reference))
}

/// The ring and its peer of one scenario (`peers`) at one producer count,
/// the peer compared with the ring of the same round; the events of the
/// timed rounds (each workload's last `rounds` batches) counted per cell.
fn ring_at(
    config: &Config,
    runner: &Runner,
    peers: &[RingPeer],
    consumer_cpu: Option<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<RingCell>, Error> {
    let threads = runner.threads();
    let rounds = config.ring_rounds;
    let mut workloads = Vec::new();
    let mut entries = Vec::new();
    for &peer in peers {
        let w = Arc::new(ring_bench::Workload::new(peer, consumer_cpu));
        let job = w.clone();
        entries.push(Entry::new(
            peer,
            Box::new(move |runner: &Runner, ops| job.batch(runner, ops)),
            rounds,
        ));
        workloads.push(w);
    }
    interleave(
        runner,
        &mut entries,
        rounds,
        config.batch,
        &mut |peer, round| {
            progress(match round {
                None => Progress::RingCalibrating { threads, peer },
                Some(round) => Progress::RingRound {
                    threads,
                    round,
                    peer,
                },
            })
        },
    );
    // Each entry's timed rounds are its workload's last `rounds` batches, in
    // round order.
    let mut timed = Vec::new();
    for (e, w) in entries.iter().zip(&workloads) {
        w.check().map_err(|what| Error::Ring {
            peer: e.peer,
            threads,
            what,
        })?;
        let outcomes = w.outcomes();
        let last = outcomes[outcomes.len() - rounds..].to_vec();
        let per_kept: Vec<f64> = e
            .rounds_ns
            .iter()
            .zip(&last)
            .map(|(ns, o)| ns * o.attempted as f64 / o.kept() as f64)
            .collect();
        timed.push((ring_bench::total(&last), per_kept));
    }
    let ring = entries.iter().position(|e| e.peer.is_ring());
    let reference = ring.map(|i| entries[i].rounds_ns.clone());
    let kept_reference = ring.map(|i| timed[i].1.clone());
    let ops: Vec<u64> = entries.iter().map(|e| e.ops_per_thread).collect();
    Ok(cells(entries, threads, reference.as_deref())
        .into_iter()
        .zip(timed)
        .zip(ops)
        .map(|((c, (events, per_kept)), ops)| RingCell {
            per_kept: cell(c.peer, threads, ops, per_kept, kept_reference.as_deref()),
            cell: c,
            events,
        })
        .collect())
}

/// `lp` in `mode` at one thread count: the C loop (area per operation), the
/// C loop with the area hoisted and cpulocal's, one batch of each per round,
/// in rotating order; each structure checked after.
fn loop_at(
    config: &Config,
    runner: &Runner,
    lp: Loop,
    mode: Mode,
    progress: &mut dyn FnMut(Progress),
) -> Result<LoopCell, Error> {
    let threads = runner.threads();
    let rounds = config.loop_rounds;
    let mut workloads = Vec::new();
    let mut entries = Vec::new();
    for side in [Side::C, Side::CHoisted, Side::Cpulocal] {
        let w = Arc::new(loops::Workload::new(lp, mode, side).ok_or(Error::Loop {
            lp,
            mode,
            threads,
            what: format!("the {side:?} side cannot run here"),
        })?);
        let job = w.clone();
        entries.push(Entry::new(
            side,
            on_workers(move |ops| job.run(ops)),
            rounds,
        ));
        workloads.push(w);
    }
    interleave(
        runner,
        &mut entries,
        rounds,
        config.batch,
        &mut |side, round| {
            progress(Progress::Loop {
                threads,
                lp,
                mode,
                side,
                round,
            })
        },
    );
    let reference = entries[0].rounds_ns.clone();
    let floor = entries[1].rounds_ns.clone();
    let floor_ratio = cell(
        Side::Cpulocal,
        threads,
        entries[2].ops_per_thread,
        entries[2].rounds_ns.clone(),
        Some(&floor),
    )
    .ratio
    .unwrap_or(f64::NAN);
    let mut cells = cells(entries, threads, Some(&reference)).into_iter();
    // The batches (the entries' jobs) are gone: each workload is ours again.
    for w in workloads {
        let w = Arc::into_inner(w).expect("no batch runs after the rounds");
        w.check().map_err(|what| Error::Loop {
            lp,
            mode,
            threads,
            what,
        })?;
    }
    let (Some(c), Some(c_hoisted), Some(cpulocal)) = (cells.next(), cells.next(), cells.next())
    else {
        unreachable!("three entries, three cells")
    };
    Ok(LoopCell {
        lp,
        mode,
        threads,
        c,
        c_hoisted,
        cpulocal,
        floor_ratio,
    })
}

/// One batch of `ops` operations per thread; returns its wall time.
fn batch<P>(runner: &Runner, e: &mut Entry<P>, ops: u64) -> Duration {
    e.ran += ops * runner.threads() as u64;
    (e.job)(runner, ops)
}

/// Operations per thread for a batch of about `target` wall time: grows a
/// batch until it takes a quarter of the target, then scales. Also warms up.
fn calibrate<P>(runner: &Runner, e: &mut Entry<P>, target: Duration) -> u64 {
    let mut ops = 256u64;
    loop {
        let wall = batch(runner, e, ops);
        if wall >= target / 4 || ops >= 1 << 32 {
            let scale = target.as_secs_f64() / wall.as_secs_f64().max(1e-9);
            return ((ops as f64 * scale) as u64).max(1);
        }
        ops *= if wall < target / 64 { 8 } else { 2 };
    }
}

/// The median of `v` (mean of the middle two for an even count); None when
/// empty.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    /// Structure only: every available peer at every count, ratios paired
    /// with cpulocal, progress reported exactly `steps()` times.
    #[test]
    fn a_tiny_run_has_every_cell_and_step() {
        let config = Config {
            threads: vec![1, 3],
            rounds: 3,
            batch: Duration::from_micros(300),
            fenced_samples: 50,
            structure_threads: vec![1, 3],
            structure_rounds: 2,
            ring_threads: vec![1, 3],
            ring_rounds: 2,
            loop_threads: vec![1, 3],
            loop_rounds: 2,
            ..Config::quick()
        };
        let mut steps = 0u64;
        let report = run(&config, &mut |_| steps += 1).unwrap();
        assert_eq!(steps, config.steps());
        let available = Peer::ALL.iter().filter(|p| p.available()).count();
        assert_eq!(report.cells.len(), 2 * available);
        assert_eq!(
            report.unavailable.len() + available,
            Peer::ALL.len(),
            "{:?}",
            report.unavailable
        );
        for cell in &report.cells {
            assert_eq!(cell.rounds_ns.len(), 3);
            assert!(cell.min_ns <= cell.median_ns && cell.median_ns <= cell.max_ns);
            assert!(cell.median_ns > 0.0 && cell.ops_per_thread > 0);
            let ratio = cell.ratio.expect("cpulocal ran");
            assert!(ratio > 0.0);
            if cell.peer == Peer::Cpulocal {
                assert_eq!(ratio, 1.0);
            }
        }
        assert_eq!(report.max_per_cpu.len(), 2);
        let expected_fenced = if report.cpus >= 2 { 2 } else { 0 };
        assert_eq!(report.fenced.len(), expected_fenced);
        assert_eq!(report.structures.len(), 2 * Structure::ALL.len());
        for cell in &report.structures {
            assert_eq!(cell.rounds_ns.len(), 2);
            assert!(cell.median_ns > 0.0 && cell.ops_per_thread > 0);
            let ratio = cell.ratio.expect("cpulocal's structures ran");
            // Against the fastest cpulocal structure, cpulocal's own are 1 or
            // above.
            assert!(ratio > 0.0 && (!cell.peer.is_cpulocal() || ratio >= 1.0));
        }
        for threads in [1, 3] {
            let (peer, ratio) = report.goal(threads).expect("peers ran");
            assert!(!peer.is_cpulocal() && ratio > 0.0);
        }
        assert_eq!(report.goal(2), None);
        // Every loop in every mode that can run here, against its C version.
        let modes = Mode::ALL.iter().filter(|m| m.available()).count();
        assert_eq!(report.loop_modes_unavailable.len(), Mode::ALL.len() - modes);
        assert_eq!(report.loops.len(), 2 * Loop::ALL.len() * modes);
        for c in &report.loops {
            for side in [&c.c, &c.cpulocal] {
                assert_eq!(side.rounds_ns.len(), 2);
                assert!(side.median_ns > 0.0 && side.ops_per_thread > 0);
            }
            assert!(c.ratio() > 0.0, "{c:?}");
            assert_eq!(c.c.ratio, Some(1.0), "the C loop is the reference");
        }
        assert_eq!(report.ring.len(), 2 * RingPeer::ALL.len());
        for c in &report.ring {
            assert_eq!(c.cell.rounds_ns.len(), 2);
            assert!(c.cell.median_ns > 0.0 && c.cell.ops_per_thread > 0);
            let ratio = c.cell.ratio.expect("the ring ran");
            assert!(ratio > 0.0);
            if c.cell.peer.is_ring() {
                assert_eq!(ratio, 1.0);
            }
            // The timed rounds' events, every one kept or lost.
            let e = c.events;
            assert_eq!(
                e.attempted,
                2 * c.cell.ops_per_thread * c.cell.threads as u64
            );
            assert_eq!(e.kept() + e.lost, e.attempted, "{c:?}");
            if c.cell.peer.scenario() == Scenario::Streaming {
                assert_eq!(e.overwritten, 0, "{c:?}");
            }
            let (k, l) = (c.kept_fraction(), c.lost_fraction());
            assert!(
                (0.0..=1.0).contains(&k) && (0.0..=1.0).contains(&l),
                "{c:?}"
            );
            assert!((k + l - 1.0).abs() < 1e-9, "{c:?}");
            assert!(c.delivered_fraction() <= k, "{c:?}");
            // Per event kept: no faster than per event attempted.
            let per = &c.per_kept;
            assert_eq!(per.rounds_ns.len(), 2);
            for (a, d) in c.cell.rounds_ns.iter().zip(&per.rounds_ns) {
                assert!(d >= a, "{c:?}");
            }
            assert!(per.ratio.is_some_and(|r| r > 0.0), "{c:?}");
        }
        // Judged at 1 producer (run), not at 8 (not run).
        let goals = report.ring_goals(Scenario::Recorder);
        assert!(goals.ns.is_some_and(|ns| ns > 0.0) && goals.ns_met().is_some());
        assert_eq!((goals.ratio, goals.ratio_met()), (None, None));
        let last = allowed_cpus().unwrap().last().copied();
        assert_eq!(report.ring_consumer_cpu, last);
    }
}
