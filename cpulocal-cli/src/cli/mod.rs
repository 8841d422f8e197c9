//! Command-line definition and the pieces the subcommands share.

pub mod bench;
pub mod chart;
pub mod demo;
pub mod first;
pub mod info;
pub mod param;
pub mod slice;
pub mod step;
pub mod stress;

use std::io;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// CPU-local data on Linux: restartable sequences (rseq) with a fenced,
/// debugger-safe fallback.
///
/// Without a subcommand: the engine status, a short counter demo (exact-sum
/// check), and a quick run of the benchmark suite with its chart.
#[derive(Debug, Parser)]
#[command(name = "cpulocal", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of the demo run by default.
    #[command(flatten)]
    pub demo: DemoArgs,

    /// Directory for the quick benchmark's chart (created if missing)
    /// [default: cpulocal-bench in cargo's target directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print which engine runs and why (who registered rseq, kernel features).
    ///
    /// With --json, prints one JSON object. Keys: registration ("glibc",
    /// "cpulocal" or "nobody"), registration_text, rseq_off (why rseq is off:
    /// "no_arch_support", "refused", "no_membarrier", "glibc_failed_for_thread",
    /// "foreign_registration", "thread_exiting", "disabled", "cannot_pin_library", "other";
    /// null when on),
    /// rseq_off_errno, engine ("rseq" or "fenced"), engine_text,
    /// fenced_membarrier (bool when fenced, else null), feature_size,
    /// node_id_valid, mm_cid_valid, mm_cid_indexing, membarrier_rseq ("registered" or
    /// "unavailable"), membarrier_rseq_errno, glibc_rseq_size, rseq_area_len,
    /// slice_extension ("on", "not_enabled", "legacy_area", "unsupported",
    /// "no_rseq"), slice_extensions_granted, slice_extensions_yielded,
    /// possible_cpus, possible_nodes, cpu. Absent values are null.
    Info {
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the counter demo and check that it counts exactly.
    ///
    /// Threads add 1 to one PerCpuCounter, mostly on their current CPU and one
    /// time in sixteen on another CPU, while one thread drains it with take().
    /// Every add must be counted exactly once: taken + what remains = threads ×
    /// ops, or the command fails with exit status 1.
    Demo(DemoArgs),
    /// Compare cpulocal with hand-written C rseq and with its peers, side by
    /// side in one process.
    ///
    /// Sections, in order (pick with --only):
    ///
    /// - c: librseq's param_test loops (counter, lock, list, pointer buffer,
    ///   memcpy buffer) against the same loops written in C, both index
    ///   modes, in alternating batches; cpulocal's time over C's.
    ///
    /// - counters: PerCpuCounter::add against the C rseq add, a shared
    ///   atomic, sched_getcpu + atomic, thread_local shards and fast-counter;
    ///   then the fenced path's latency (add_on to another CPU).
    ///
    /// - structures: push + pop on cpulocal's list and buffers against
    ///   crossbeam's SegQueue and ArrayQueue and a Mutex<Vec>.
    ///
    /// - ring: PerCpuRing against crossbeam's ArrayQueue, as a flight
    ///   recorder and streaming to a consumer.
    ///
    /// Peers run in interleaved rounds and each ratio is taken within a
    /// round, so ratios hold on a noisy machine. Prints tables of ns per
    /// operation and of ratios, and writes a chart of the counters'
    /// throughput (PNG and SVG). --threads and --rounds apply to every
    /// section. docs/bench.md describes each workload and every --json key.
    Bench(BenchArgs),
    /// Run one of librseq's param_test loops on cpulocal, as
    /// `param_test_benchmark -T <loop> -t <threads> -r <reps>` runs it.
    ///
    /// Loops (-T): i (counter add), s (lock, +1, unlock), l (list pop + push
    /// of a node), b (pointer buffer pop + push), m (memcpy buffer pop + push
    /// of 16 bytes); 100 items per slot, as param_test sets them up. The
    /// threads are not pinned. Prints the wall and CPU time and checks the
    /// structure afterwards (exit status 1 if it does not add up). --c runs
    /// the hand-written C version instead. Run it alternately with
    /// param_test_benchmark to time the two side by side.
    ParamTest(ParamTestArgs),
    /// Show why the fallback exists: single-step a child through N adds.
    ///
    /// Runs this binary as a child under PTRACE_SINGLESTEP performing N
    /// PerCpuCounter::add(1) and reports the steps per operation: every step
    /// aborts the rseq critical section, so each add completes on the fenced
    /// path after RSEQ_ATTEMPTS aborts. With --no-fallback the child runs a
    /// bare rseq add that retries until it commits (the C baseline): it never
    /// completes while stepped, and the step budget catches the livelock
    /// (exit status 0: that is the demonstration).
    ///
    /// With --json, prints one JSON object. Keys: mode ("fallback" or
    /// "no_fallback"), operation, ops, step_budget, completed (every
    /// operation completed while stepped), livelock, ops_completed_stepped,
    /// steps_per_op ({min, median, mean, max}, net of a marker; null if none
    /// completed), marker_steps, total_steps, stepping_s, livelock_op (1-based,
    /// or null), livelock_steps (or null), rseq_attempts, engine ("rseq" or
    /// "fenced"), cpu, sum, expected_sum, exact, aborts, retried and fenced
    /// (counter only, else null), first_op_attempts (bare loop only, else
    /// null).
    Step(StepArgs),
    /// Stress every structure with exact invariants, as the kernel's rseq
    /// param_test does: workers, forced migrations, fence storms, signals,
    /// yields and sleeps every N passes, and (with the `inject` build feature)
    /// delay loops at numbered points of the critical sections and the fenced
    /// path. Exit status 1 with a message naming the broken invariant.
    ///
    /// Examples: `cpulocal stress` (every structure, 100,000 passes per
    /// thread); `cpulocal stress --test list --duration 60 --migrate
    /// --fence-storm --signals`; `cpulocal stress --no-rseq`; with `cargo
    /// run --release --features inject --`: `stress --delay 2=1000` or
    /// `stress --matrix` (points 1-6 × delay, yield, signal × rseq, no-rseq).
    Stress(StressArgs),
    /// Show time-slice extension at work: lock holders preempted while
    /// holding, with and without it.
    ///
    /// Several threads per CPU, pinned, lock their CPU's PerCpuLock slot, do
    /// some work under it and unlock; waiters spin, then yield their CPU.
    /// Rounds alternate between the extension as cpulocal enables it and
    /// the same threads with it turned off. Prints per mode the holds, the
    /// attempts that found the slot held, the waiters' yields and the
    /// extensions granted: counts, not times. Needs Linux 7.0+ built with
    /// CONFIG_RSEQ_SLICE_EXTENSION and an rseq area longer than 32 bytes
    /// (with glibc before 2.41, run it with GLIBC_TUNABLES=glibc.pthread.rseq=0);
    /// elsewhere it runs the rounds without and says why. Exit status 1 if
    /// the lock lost a hold.
    Slice(SliceArgs),
    /// The child of `cpulocal step` (internal).
    #[command(name = "__step-child", hide = true)]
    StepChild(StepChildArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Adding threads [default: 6 × possible CPUs].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub threads: Option<u64>,

    /// Operations per thread.
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = demo::DEFAULT_OPS)]
    pub ops: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SliceArgs {
    /// Threads per allowed CPU.
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = 4)]
    pub per_cpu: u64,

    /// Loop iterations of work under the lock (a few microseconds).
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = 2000)]
    pub hold: u64,

    /// Rounds, alternating with and without the extension.
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = 6)]
    pub rounds: u64,

    /// Length of a round in milliseconds.
    #[arg(long, value_name = "MS", value_parser = at_least_one, default_value_t = 500)]
    pub round_ms: u64,
}

/// A section of `cpulocal bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SectionArg {
    /// param_test's five loops against hand-written C rseq versions.
    C,
    /// The per-CPU counters against their peers, the fenced path.
    Counters,
    /// The structures against crossbeam's queues and a Mutex<Vec>.
    Structures,
    /// The ring buffer against crossbeam's ArrayQueue.
    Ring,
}

/// Where `cpulocal bench` runs its threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// One thread per CPU, pinned; above the CPU count, spread evenly over
    /// the CPUs (pinned, time-sliced).
    Pinned,
    /// Not pinned: the scheduler places and migrates the threads.
    Floating,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A run of a few seconds: 5 rounds of 4 ms batches per thread count
    /// instead of 15 of 25 ms (noisier, same shape).
    #[arg(long)]
    pub quick: bool,

    /// Print the results as one JSON object (keys in docs/bench.md); no
    /// progress bar.
    #[arg(long)]
    pub json: bool,

    /// Directory for the chart files (created if missing).
    /// [default: cpulocal-bench in cargo's target directory, or in the
    /// temporary directory for an installed binary].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Thread counts, comma-separated [default: 1,2,4,8,16].
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = at_least_one)]
    pub threads: Option<Vec<u64>>,

    /// Interleaved rounds per thread count [default: 15, or 5 with --quick].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub rounds: Option<u64>,

    /// Where the threads run.
    #[arg(long, value_enum, default_value_t = PlacementArg::Pinned)]
    pub placement: PlacementArg,

    /// Run only these sections, comma-separated [default: all]. The chart
    /// is drawn when the counters run.
    #[arg(long, value_enum, value_name = "SECTION,...", value_delimiter = ',')]
    pub only: Option<Vec<SectionArg>>,
}

#[derive(Debug, Clone, Args)]
pub struct ParamTestArgs {
    /// The loop: i, s, l, b or m (param_test's -T letters).
    #[arg(short = 'T', value_name = "LOOP", value_parser = loop_letter)]
    pub test: cpulocal_cli::loops::Loop,

    /// Threads, none pinned.
    #[arg(short = 't', value_name = "N", value_parser = at_least_one, default_value_t = 200)]
    pub threads: u64,

    /// Repetitions per thread.
    #[arg(short = 'r', value_name = "N", value_parser = at_least_one, default_value_t = 5000)]
    pub reps: u64,

    /// Index the slots by concurrency id (mm_cid) instead of CPU.
    #[arg(long)]
    pub mm_cid: bool,

    /// Run the hand-written C rseq loop instead of cpulocal's (it finds the
    /// thread's rseq area for every operation, as librseq does).
    #[arg(long)]
    pub c: bool,

    /// With --c: find the area once per thread and keep it in a register (the
    /// floor no per-call API reaches).
    #[arg(long, requires = "c")]
    pub area_hoisted: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    /// Operations the child performs while single-stepped.
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = step::DEFAULT_OPS)]
    pub ops: u64,

    /// Run a bare rseq add that retries until it commits (no fallback)
    /// instead of PerCpuCounter::add: shows the livelock.
    #[arg(long)]
    pub no_fallback: bool,

    /// Steps one operation may take before it is called a livelock.
    #[arg(long, value_name = "STEPS", value_parser = at_least_one, default_value_t = step::DEFAULT_BUDGET)]
    pub budget: u64,

    /// Print one JSON object (keys above) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StressArgs {
    /// Which structure.
    #[arg(long, value_enum, default_value_t = stress::TestArg::All)]
    pub test: stress::TestArg,

    /// Worker threads [default: 6 × possible CPUs].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub threads: Option<u64>,

    /// Passes (operations) per worker and structure.
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = 100_000)]
    pub reps: u64,

    /// Run each structure for this many seconds instead of --reps passes.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub duration: Option<f64>,

    /// A delay loop of LOOPS iterations at injection point POINT (1: before
    /// a section's check, 2: after it, 3: before its commit, 4: fenced path
    /// before the operation, 5: after it, 6: inside it, before its commit
    /// store); repeatable. Needs the inject build feature.
    #[arg(long, value_name = "POINT=LOOPS", value_parser = point_loops)]
    pub delay: Vec<(usize, u32)>,

    /// Run --action every N passes of each worker (and, with inject, every
    /// N passes through the fenced path's points).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub every: Option<u64>,

    /// What to do every --every passes.
    #[arg(long, value_enum, requires = "every")]
    pub action: Option<stress::ActionArg>,

    /// Workers re-pin themselves to a random allowed CPU every 1024 passes.
    #[arg(long)]
    pub migrate: bool,

    /// A thread runs the structure's cross-CPU operation (take, drain,
    /// lock_on, a vector) on every CPU in a loop.
    #[arg(long)]
    pub fence_storm: bool,

    /// A thread sends SIGUSR1 to random workers (the handler adds to a
    /// counter).
    #[arg(long)]
    pub signals: bool,

    /// Index the structures by mm_cid instead of cpu_id.
    #[arg(long)]
    pub mm_cid: bool,

    /// Index the structures by NUMA node instead of cpu_id (one slot per
    /// node, shared by its CPUs: no critical section runs on it).
    #[arg(long, conflicts_with = "mm_cid")]
    pub node: bool,

    /// Run with the fenced engine only (a child with CPULOCAL_NO_RSEQ=1).
    #[arg(long)]
    pub no_rseq: bool,

    /// Run the injection matrix: points 1-6 × {delay, yield, signal}, on the
    /// rseq engine and then without rseq (needs the inject feature).
    #[arg(long)]
    pub matrix: bool,

    /// Seed of the workers' choices [default: from the clock].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Break the protocol on purpose: membarrier or fence-check (testing
    /// builds only; shows that the invariants catch it).
    #[arg(long = "break", value_name = "WHAT", hide = true)]
    pub break_protocol: Option<String>,
}

/// A finite, positive number of seconds, at most a day.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("expected seconds: {e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!(
            "expected seconds above 0 and at most 86400, got {s}"
        ))
    }
}

/// `POINT=LOOPS`.
fn point_loops(s: &str) -> Result<(usize, u32), String> {
    let (p, l) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POINT=LOOPS, got {s:?}"))?;
    let p: usize = p.trim().parse().map_err(|e| format!("POINT: {e}"))?;
    if !(1..=stress::LAST_POINT).contains(&p) {
        return Err(format!(
            "POINT must be 1 to {}, got {p}",
            stress::LAST_POINT
        ));
    }
    let l: u32 = l.trim().parse().map_err(|e| format!("LOOPS: {e}"))?;
    Ok((p, l))
}

#[derive(Debug, Clone, Args)]
pub struct StepChildArgs {
    /// Operations to perform while stepped.
    #[arg(long, value_parser = at_least_one)]
    pub ops: u64,

    /// Run the bare rseq loop instead of PerCpuCounter::add.
    #[arg(long)]
    pub no_fallback: bool,
}

/// A count of at least one, with a message that says so.
fn loop_letter(s: &str) -> Result<cpulocal_cli::loops::Loop, String> {
    let mut chars = s.trim().chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => cpulocal_cli::loops::Loop::from_letter(c),
        _ => None,
    }
    .ok_or_else(|| "expected one of i, s, l, b, m".into())
}

fn at_least_one(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Writing to stdout failed.
    Output(io::Error),
    /// An invariant broke or the command could not run; the message says which.
    Broken(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

/// `n` with thousands separators: 1234567 -> "1,234,567".
pub fn grouped(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        s.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::grouped;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(-1234567), "-1,234,567");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }
}
