//! Command-line definition and the pieces the subcommands share.

pub mod bench;
pub mod chart;
pub mod demo;
pub mod info;
pub mod step;

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

    /// Directory for the quick benchmark's chart (created if missing).
    #[arg(long, value_name = "DIR", default_value = bench::DEFAULT_OUT)]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print which engine runs and why (who registered rseq, kernel features).
    ///
    /// With --json, prints one JSON object. Keys: registration ("glibc",
    /// "cpulocal" or "nobody"), registration_text, rseq_off (why rseq is off:
    /// "no_arch_support", "refused", "no_membarrier", "glibc_failed_for_thread",
    /// "foreign_registration", "thread_exiting", "other"; null when on),
    /// rseq_off_errno, engine ("rseq" or "fenced"), engine_text,
    /// fenced_membarrier (bool when fenced, else null), feature_size,
    /// node_id_valid, mm_cid_valid, mm_cid_indexing, membarrier_rseq ("registered" or
    /// "unavailable"), membarrier_rseq_errno, glibc_rseq_size, possible_cpus,
    /// cpu. Absent values are null.
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
    /// Compare cpulocal's counter with its peers, side by side in one process.
    ///
    /// Peers: the hand-written C rseq add (with and without cpulocal's fence
    /// check), a shared AtomicI64, sched_getcpu() + per-CPU atomic, the
    /// thread_local crate with cache-padded atomics (fetch_add; load+store)
    /// and the fast-counter crate; at 1, 2, 4, 8 and 16 threads (above the
    /// CPU count threads share CPUs). Peers run in interleaved rounds, so
    /// their ratios to cpulocal hold on a noisy machine. Also the latency of
    /// cpulocal's fenced path (add_on to another CPU). The per-CPU list,
    /// buffer and ring are not built yet, so they are not compared.
    ///
    /// Prints tables of ns per operation and of ratios to cpulocal, and writes
    /// a chart of throughput vs threads to DIR/counter-throughput.png and
    /// .svg. A progress bar runs on stderr when it is a terminal.
    ///
    /// With --json, prints one JSON object instead of the tables. Keys:
    /// quick, cpus, placement ("pinned" or "floating"), threads (list),
    /// rounds, batch_ms, reference ("cpulocal_add"), peers (list of {name,
    /// label, available}), results (list of {peer, threads, ns_per_op,
    /// ns_per_op_min, ns_per_op_max, mops_per_s, ratio_to_cpulocal (peer
    /// time / cpulocal time; null without cpulocal), ops_per_thread,
    /// max_threads_per_cpu (null when floating)}), fenced_add_on (list of
    /// {target ("idle" or "busy"), samples, median_ns, p90_ns}; empty with
    /// one CPU), structures (list of {name, compare_with, status: "built,
    /// not benchmarked" or "not built"}), chart ({png, svg}: paths), elapsed_s.
    Bench(BenchArgs),
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

    /// Print the results as one JSON object (keys above); no progress bar.
    #[arg(long)]
    pub json: bool,

    /// Directory for the chart files (created if missing).
    #[arg(long, value_name = "DIR", default_value = bench::DEFAULT_OUT)]
    pub out: PathBuf,

    /// Thread counts, comma-separated [default: 1,2,4,8,16].
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = at_least_one)]
    pub threads: Option<Vec<u64>>,

    /// Interleaved rounds per thread count [default: 15, or 5 with --quick].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub rounds: Option<u64>,

    /// Where the threads run.
    #[arg(long, value_enum, default_value_t = PlacementArg::Pinned)]
    pub placement: PlacementArg,
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
pub struct StepChildArgs {
    /// Operations to perform while stepped.
    #[arg(long, value_parser = at_least_one)]
    pub ops: u64,

    /// Run the bare rseq loop instead of PerCpuCounter::add.
    #[arg(long)]
    pub no_fallback: bool,
}

/// A count of at least one, with a message that says so.
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
