//! The command without a subcommand: a first run in plain words. Which
//! engine runs and why, the counter demo and what its numbers mean, and the
//! headline comparison from a quick benchmark, in about 25 lines. `info`,
//! `demo` and `bench` print the details.

use std::io::Write;

use cpulocal::{Engine, Registration, Status};
use cpulocal_cli::suite::{self, Config};
use cpulocal_cli::Peer;

use super::{bench, chart, Cli, Failure};

/// The counters the first run shows, of those the benchmark times.
const SHOWN: [Peer; 4] = [
    Peer::Cpulocal,
    Peer::CRseq,
    Peer::SharedAtomic,
    Peer::ThreadLocalFetchAdd,
];

/// Runs the first-run report.
pub fn run(out: &mut impl Write, cli: &Cli) -> Result<(), Failure> {
    let status = cpulocal::status();
    writeln!(
        out,
        "cpulocal: per-CPU data on Linux with restartable sequences (rseq)"
    )?;
    write_engine(out, &status)?;
    writeln!(out)?;
    super::demo::run_plain(out, &cli.demo)?;
    writeln!(out)?;
    write_speed(out, cli)?;
    writeln!(out)?;
    writeln!(
        out,
        "More: cpulocal info (the engine in detail), demo, bench (every table), step (why the"
    )?;
    writeln!(
        out,
        "fenced path exists: a debugger single-stepping rseq), stress; cpulocal help."
    )?;
    Ok(())
}

/// Which engine runs on this machine, and why, in two or three lines.
fn write_engine(out: &mut impl Write, status: &Status) -> std::io::Result<()> {
    let cpus = status.possible_cpus;
    let who = match &status.registration {
        Registration::Glibc => "glibc registered rseq for every thread".to_owned(),
        Registration::Cpulocal => {
            "cpulocal registered rseq for each thread (glibc did not)".to_owned()
        }
        Registration::Nobody(why) => format!("rseq is off: {why}"),
        other => other.to_string(),
    };
    writeln!(
        out,
        "This machine: {cpus} CPU{}; {who}.",
        if cpus == 1 { "" } else { "s" }
    )?;
    match status.engine {
        Engine::Rseq => writeln!(
            out,
            "Engine: rseq critical sections, falling back to the fenced path when needed."
        ),
        Engine::Fenced { .. } => writeln!(
            out,
            "Engine: the fenced path only (correct, slower): every operation takes its slot's fence."
        ),
        other => writeln!(out, "Engine: {other}."),
    }
}

/// The headline: ns per add of cpulocal's counter beside the C rseq
/// increment and the counters Rust code uses today, and where the chart went.
fn write_speed(out: &mut impl Write, cli: &Cli) -> Result<(), Failure> {
    // More rounds than `bench --quick`'s 5: the median of 9 survives a
    // noisy round or two, and the whole run still takes about 2 s.
    let mut config = Config {
        rounds: 9,
        ..Config::quick()
    };
    config.loops.clear();
    config.structures.clear();
    config.ring_peers.clear();
    let report = suite::run(&config, &mut |_| {}).map_err(|e| Failure::Broken(e.to_string()))?;
    writeln!(
        out,
        "Speed, a quick run (ns per add, lower is faster; threads pinned, one per CPU and more):"
    )?;
    let shown: Vec<(Peer, &str)> = SHOWN
        .iter()
        .copied()
        .filter(|p| !report.unavailable.contains(p))
        .map(|p| (p, p.label()))
        .collect();
    bench::write_table(out, &config.threads, &shown, |p, t| {
        report.cell(p, t).map(|c| bench::num(c.median_ns))
    })?;
    let ratio = |p: Peer| {
        config.threads.iter().find_map(|&t| {
            let c = report.cell(p, t).filter(|_| t >= 2)?;
            c.ratio.map(|r| (t, r))
        })
    };
    if let Some((t, r)) = ratio(Peer::SharedAtomic) {
        writeln!(
            out,
            "  At {t} threads a shared atomic takes {}x as long as cpulocal; `cpulocal bench` compares",
            bench::num(r)
        )?;
        writeln!(
            out,
            "  the structures with hand-written C rseq and with crossbeam's queues."
        )?;
    }
    let dir = cli.out.clone().unwrap_or_else(bench::default_out);
    let files = chart::write(&report, &dir).map_err(Failure::Broken)?;
    bench::write_chart_paths(out, &files)?;
    Ok(())
}
