//! Command-line definition and the pieces the subcommands share.

pub mod demo;
pub mod info;

use std::io;

use clap::{Args, Parser, Subcommand};

/// CPU-local data on Linux: restartable sequences (rseq) with a fenced,
/// debugger-safe fallback.
///
/// Without a subcommand, prints the engine status and runs the counter demo.
#[derive(Debug, Parser)]
#[command(name = "cpulocal", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of the demo run by default.
    #[command(flatten)]
    pub demo: DemoArgs,
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
    /// node_id_valid, mm_cid_valid, membarrier_rseq ("registered" or
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
    /// time in four on another CPU, while one thread drains it with take().
    /// Every add must be counted exactly once: taken + what remains = threads ×
    /// ops, or the command fails with exit status 1.
    Demo(DemoArgs),
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
