//! `cpulocal bench`: the comparison suite (`cpulocal_cli::suite`), printed as
//! tables of time per operation and of ratios to cpulocal (counters, then
//! structures with the verdict on their goal, then the ring in its two
//! scenarios with the events it kept and the verdicts on its goals), written
//! as a chart of the counters, or printed as JSON.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use cpulocal_cli::loops::{Loop, Mode, Side};
use cpulocal_cli::ring_bench::{self, Outcome, RingPeer, Scenario, RING_RECORDS_PER_CPU};
use cpulocal_cli::structures::{Structure, ARRAY_QUEUE_PER_THREAD, BUFFER_CAPACITY};
use cpulocal_cli::suite::{
    self, Cell, Config, LoopCell, Progress, Report, GOAL, GOAL_THREADS, LOOP_GOAL, RING_GOAL_NS,
    RING_GOAL_NS_THREADS, RING_GOAL_RATIO, RING_GOAL_RATIO_THREADS,
};
use cpulocal_cli::{Peer, Placement, Target};

use super::chart::{self, Files};
use super::{grouped, BenchArgs, Failure, PlacementArg, SectionArg};

/// Where the chart goes without `--out`: `cpulocal-bench` in cargo's target
/// directory. That is `$CARGO_TARGET_DIR` if set, else the directory above
/// this binary that holds cargo's `CACHEDIR.TAG` (`target/` for a binary at
/// `target/release/cpulocal`), else the system's temporary directory (an
/// installed binary).
pub fn default_out() -> PathBuf {
    const DIR: &str = "cpulocal-bench";
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(target).join(DIR);
    }
    let built_by_cargo = std::env::current_exe().ok().and_then(|exe| {
        // <target>/<profile>/cpulocal or <target>/<triple>/<profile>/cpulocal
        exe.ancestors()
            .skip(1)
            .take(3)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    built_by_cargo.unwrap_or_else(std::env::temp_dir).join(DIR)
}

/// The suite's configuration for these arguments: `--threads` sets the
/// thread counts of the counters, the structures and the ring, `--rounds` the
/// rounds of all three.
pub fn config(args: &BenchArgs) -> Config {
    let mut config = if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    if let Some(threads) = &args.threads {
        let mut t: Vec<usize> = threads.iter().map(|&n| n as usize).collect();
        t.sort_unstable();
        t.dedup();
        config.structure_threads = t.clone();
        config.ring_threads = t.clone();
        config.loop_threads = t.clone();
        config.threads = t;
    }
    if let Some(rounds) = args.rounds {
        config.rounds = rounds as usize;
        config.structure_rounds = rounds as usize;
        config.ring_rounds = rounds as usize;
        config.loop_rounds = rounds as usize;
    }
    config.placement = match args.placement {
        PlacementArg::Pinned => Placement::Pinned,
        PlacementArg::Floating => Placement::Floating,
    };
    if let Some(only) = &args.only {
        if !only.contains(&SectionArg::C) {
            config.loops.clear();
        }
        if !only.contains(&SectionArg::Counters) {
            config.peers.clear();
        }
        if !only.contains(&SectionArg::Structures) {
            config.structures.clear();
        }
        if !only.contains(&SectionArg::Ring) {
            config.ring_peers.clear();
        }
    }
    config
}

/// Runs the suite, writes the chart and prints the report (or JSON).
pub fn run(out: &mut impl Write, args: &BenchArgs) -> Result<(), Failure> {
    let config = config(args);
    if !args.json {
        write_header(out, &config, args.quick)?;
        out.flush()?;
    }
    let bar = progress_bar(&config, args.json);
    let report = suite::run(&config, &mut |p| {
        bar.set_message(describe(p, &config));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| Failure::Broken(e.to_string()))?;
    let files = if report.cells.is_empty() {
        None
    } else {
        let dir = args.out.clone().unwrap_or_else(default_out);
        Some(chart::write(&report, &dir).map_err(Failure::Broken)?)
    };
    if args.json {
        let json = serde_json::to_string_pretty(&to_json(&report, files.as_ref(), args.quick))
            .map_err(|e| Failure::Broken(format!("cannot encode the results: {e}")))?;
        writeln!(out, "{json}")?;
    } else {
        write_report(out, &report, files.as_ref())?;
    }
    Ok(())
}

/// A bar on stderr; hidden for `--json` and when stderr is not a terminal.
fn progress_bar(config: &Config, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(config.steps()), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("  {bar:32} {pos:>4}/{len} {elapsed:>3} {wide_msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The progress bar's message for a step.
fn describe(p: Progress, config: &Config) -> String {
    let threads = |t: usize| format!("{t} thread{}", if t == 1 { "" } else { "s" });
    let rounds = config.rounds;
    match p {
        Progress::Calibrating { threads: t, peer } => {
            format!("{}: sizing {}", threads(t), peer.name())
        }
        Progress::Round {
            threads: t,
            round,
            peer,
        } => format!(
            "{}: round {}/{rounds} {}",
            threads(t),
            round + 1,
            peer.name()
        ),
        Progress::Fenced(target) => format!("fenced add_on, {}", target.name()),
        Progress::StructureCalibrating {
            threads: t,
            structure,
        } => format!("{}: sizing {}", threads(t), structure.name()),
        Progress::StructureRound {
            threads: t,
            round,
            structure,
        } => format!(
            "{}: round {}/{} {}",
            threads(t),
            round + 1,
            config.structure_rounds,
            structure.name()
        ),
        Progress::RingCalibrating { threads: t, peer } => {
            format!("ring, {}: sizing {}", producers(t), peer.name())
        }
        Progress::RingRound {
            threads: t,
            round,
            peer,
        } => format!(
            "ring, {}: round {}/{} {}",
            producers(t),
            round + 1,
            config.ring_rounds,
            peer.name()
        ),
        Progress::Loop {
            threads: t,
            lp,
            mode,
            side,
            round,
        } => {
            let side = match side {
                Side::C => "C",
                Side::CHoisted => "C, area hoisted",
                Side::Cpulocal => "cpulocal",
            };
            match round {
                None => format!(
                    "{}: sizing {} ({}), {side}",
                    threads(t),
                    lp.name(),
                    mode.name()
                ),
                Some(r) => format!(
                    "{}: round {}/{} {} ({}), {side}",
                    threads(t),
                    r + 1,
                    config.loop_rounds,
                    lp.name(),
                    mode.name()
                ),
            }
        }
    }
}

fn producers(t: usize) -> String {
    format!("{t} producer{}", if t == 1 { "" } else { "s" })
}

fn list(v: &[usize]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_header(out: &mut impl Write, config: &Config, quick: bool) -> std::io::Result<()> {
    let cpus = cpulocal_cli::runner::allowed_cpus()
        .map(|c| c.len())
        .unwrap_or(1);
    let peers = config.peers.iter().filter(|p| p.available()).count();
    writeln!(
        out,
        "cpulocal bench{}: {peers} counters at {} threads on {cpus} CPU{}, side by side in one process",
        if quick { " --quick" } else { "" },
        list(&config.threads),
        if cpus == 1 { "" } else { "s" },
    )?;
    let placement = match config.placement {
        Placement::Pinned => {
            format!("threads pinned, one per CPU up to {cpus}, spread evenly over the CPUs beyond")
        }
        Placement::Floating => "threads not pinned (the scheduler places and migrates them)".into(),
    };
    writeln!(
        out,
        "  {} interleaved rounds of ~{} ms batches per thread count; {placement}",
        config.rounds,
        config.batch.as_millis(),
    )
}

/// A time or ratio with 3 significant digits or so.
pub(super) fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        grouped(v.round() as i64)
    }
}

const LABEL_WIDTH: usize = 32;
const CELL_WIDTH: usize = 8;

/// A table of one value per peer (row) and thread count (column), as
/// `value` writes it ("-" for None).
pub(super) fn write_table<P: Copy>(
    out: &mut impl Write,
    threads: &[usize],
    peers: &[(P, &str)],
    value: impl Fn(P, usize) -> Option<String>,
) -> std::io::Result<()> {
    let cells: Vec<Vec<String>> = peers
        .iter()
        .map(|&(peer, _)| {
            threads
                .iter()
                .map(|&t| value(peer, t).unwrap_or_else(|| "-".into()))
                .collect()
        })
        .collect();
    // A column is as wide as its widest cell, two spaces apart from the last.
    let widths: Vec<usize> = (0..threads.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].len() + 2)
                .fold(CELL_WIDTH, usize::max)
        })
        .collect();
    write!(out, "  {:<LABEL_WIDTH$}", "threads")?;
    for (t, &width) in threads.iter().zip(&widths) {
        write!(out, "{t:>width$}")?;
    }
    writeln!(out)?;
    for (&(_, label), row) in peers.iter().zip(&cells) {
        write!(out, "  {label:<LABEL_WIDTH$}")?;
        for (v, &width) in row.iter().zip(&widths) {
            write!(out, "{v:>width$}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// The counters' table of one number per peer and thread count.
fn write_counter_table(
    out: &mut impl Write,
    report: &Report,
    peers: &[Peer],
    value: impl Fn(&Cell) -> Option<f64>,
) -> std::io::Result<()> {
    let rows: Vec<(Peer, &str)> = peers.iter().map(|&p| (p, p.label())).collect();
    write_table(out, &report.config.threads, &rows, |p, t| {
        report.cell(p, t).and_then(&value).map(num)
    })
}

/// The structures' table of one number per structure and thread count.
fn write_structure_table(
    out: &mut impl Write,
    report: &Report,
    structures: &[Structure],
    value: impl Fn(&Cell<Structure>) -> Option<f64>,
) -> std::io::Result<()> {
    let rows: Vec<(Structure, &str)> = structures.iter().map(|&s| (s, s.label())).collect();
    write_table(out, &report.config.structure_threads, &rows, |s, t| {
        report.structure_cell(s, t).and_then(&value).map(num)
    })
}

/// The loops against their C versions: cpulocal's time over the C loop's,
/// then both times, and the verdict on the goal.
fn write_loops(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let config = &report.config;
    if config.loops.is_empty() || config.loop_threads.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    if report.loops.is_empty() {
        return writeln!(
            out,
            "against hand-written C rseq: not measured here (the C loops need Linux x86_64, glibc's rseq area and cpulocal's rseq engine)"
        );
    }
    writeln!(
        out,
        "against hand-written C rseq (param_test's loops; the C loop, the same with its area hoisted, and cpulocal's in rotating batches; median of {} rounds)",
        config.loop_rounds
    )?;
    writeln!(
        out,
        "cpulocal's time / the C loop's, which finds the thread's rseq area for every operation as librseq does (goal: at most {LOOP_GOAL:.2}; below 1: cpulocal is faster)"
    )?;
    let modes: Vec<Mode> = config
        .loop_modes
        .iter()
        .copied()
        .filter(|m| !report.loop_modes_unavailable.contains(m))
        .collect();
    let rows: Vec<((Loop, Mode), String)> = config
        .loops
        .iter()
        .flat_map(|&lp| {
            modes
                .iter()
                .map(move |&m| ((lp, m), format!("{}, {}", lp.label(), m.name())))
        })
        .collect();
    let labelled: Vec<((Loop, Mode), &str)> = rows.iter().map(|(k, l)| (*k, l.as_str())).collect();
    write_table(out, &config.loop_threads, &labelled, |(lp, m), t| {
        report.loop_cell(lp, m, t).map(|c| num(c.ratio()))
    })?;
    writeln!(out)?;
    writeln!(
        out,
        "cpulocal's time / the floor's: the C loop with the area found once per batch and kept in a register, which no per-call API reaches"
    )?;
    write_table(out, &config.loop_threads, &labelled, |(lp, m), t| {
        report.loop_cell(lp, m, t).map(|c| num(c.floor_ratio))
    })?;
    writeln!(out)?;
    writeln!(
        out,
        "ns per iteration: C loop / C loop, area hoisted / cpulocal"
    )?;
    write_table(out, &config.loop_threads, &labelled, |(lp, m), t| {
        report.loop_cell(lp, m, t).map(|c| {
            format!(
                "{}/{}/{}",
                num(c.c.median_ns),
                num(c.c_hoisted.median_ns),
                num(c.cpulocal.median_ns)
            )
        })
    })?;
    if !report.loop_modes_unavailable.is_empty() {
        let names: Vec<&str> = report
            .loop_modes_unavailable
            .iter()
            .map(|m| m.name())
            .collect();
        writeln!(out, "  not run here in: {}", names.join(", "))?;
    }
    let over: Vec<&LoopCell> = report.loops.iter().filter(|c| !c.goal_met()).collect();
    let worst = over.iter().max_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    match worst {
        None => writeln!(
            out,
            "  goal met: every loop within {LOOP_GOAL:.2}x of its C version"
        ),
        Some(w) => writeln!(
            out,
            "  goal not met in {} of {} cells; the farthest: {} ({}), {} thread{}: {}",
            over.len(),
            report.loops.len(),
            w.lp.name(),
            w.mode.name(),
            w.threads,
            if w.threads == 1 { "" } else { "s" },
            num(w.ratio())
        ),
    }
}

fn write_report(
    out: &mut impl Write,
    report: &Report,
    files: Option<&Files>,
) -> std::io::Result<()> {
    write_loops(out, report)?;
    write_counters(out, report)?;
    write_structures(out, report)?;
    write_ring(out, report)?;
    writeln!(out)?;
    if let Some(files) = files {
        write_chart_paths(out, files)?;
    }
    writeln!(out, "time: {:.1} s", report.elapsed.as_secs_f64())
}

/// The counters' tables and the fenced path.
fn write_counters(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    if report.config.peers.is_empty() {
        return Ok(());
    }
    let ran: Vec<Peer> = report
        .config
        .peers
        .iter()
        .copied()
        .filter(|p| !report.unavailable.contains(p))
        .collect();
    writeln!(out)?;
    writeln!(
        out,
        "ns per operation (batch wall time / all threads' operations; median of {} rounds)",
        report.config.rounds
    )?;
    write_counter_table(out, report, &ran, |c| Some(c.median_ns))?;
    let others: Vec<Peer> = ran
        .iter()
        .copied()
        .filter(|&p| p != Peer::Cpulocal)
        .collect();
    if ran.contains(&Peer::Cpulocal) && !others.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "ratio to cpulocal (peer's time / cpulocal's in the same round, median; above 1: cpulocal is faster)"
        )?;
        write_counter_table(out, report, &others, |c| c.ratio)?;
    }
    if !report.unavailable.is_empty() {
        let names: Vec<&str> = report.unavailable.iter().map(|p| p.name()).collect();
        writeln!(
            out,
            "  not available here: {} (the C baseline needs Linux x86_64 and glibc's rseq area)",
            names.join(", ")
        )?;
    }
    let shared: Vec<String> = report
        .max_per_cpu
        .iter()
        .filter_map(|&(t, m)| m.filter(|&m| m > 1).map(|m| format!("{m} per CPU at {t}")))
        .collect();
    if !shared.is_empty() {
        writeln!(
            out,
            "  threads sharing a CPU: {} (time-sliced by the kernel)",
            shared.join(", ")
        )?;
    }
    writeln!(out)?;
    match report.fenced.as_slice() {
        [] => writeln!(
            out,
            "fenced path: not measured (add_on to another CPU needs two CPUs)"
        )?,
        fenced => {
            let samples = fenced[0].samples;
            let parts: Vec<String> = fenced
                .iter()
                .map(|f| {
                    format!(
                        "{} ns with the target CPU {} (p90 {} ns)",
                        grouped(f.median_ns.round() as i64),
                        match f.target {
                            Target::Idle => "idle",
                            Target::Busy => "busy",
                        },
                        grouped(f.p90_ns.round() as i64),
                    )
                })
                .collect();
            writeln!(
                out,
                "fenced path, add_on to another CPU (median of {} calls): {}",
                grouped(samples as u64),
                parts.join("; ")
            )?;
        }
    }
    Ok(())
}

/// The structures' tables and the verdict on their goal.
fn write_structures(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let config = &report.config;
    if config.structures.is_empty() || config.structure_threads.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "structures: every thread loops push(x); pop() on one shared structure ({} interleaved rounds of ~{} ms batches per thread count)",
        config.structure_rounds,
        config.batch.as_millis(),
    )?;
    writeln!(
        out,
        "ns per push+pop pair (batch wall time / all threads' pairs; median of {} rounds)",
        config.structure_rounds
    )?;
    write_structure_table(out, report, &config.structures, |c| Some(c.median_ns))?;
    writeln!(
        out,
        "  capacity: cpulocal's buffers {BUFFER_CAPACITY} per CPU, ArrayQueue {ARRAY_QUEUE_PER_THREAD} per thread; the list, SegQueue and Vec grow"
    )?;
    let peers: Vec<Structure> = config
        .structures
        .iter()
        .copied()
        .filter(|s| !s.is_cpulocal())
        .collect();
    if peers.is_empty() || !config.structures.iter().any(|s| s.is_cpulocal()) {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "ratio to the fastest cpulocal structure (peer's time / the fastest cpulocal structure's in the same round, median; above 1: cpulocal is faster)"
    )?;
    write_structure_table(out, report, &peers, |c| c.ratio)?;
    writeln!(out, "{}", verdict(report))
}

/// The verdict line: is the fastest peer at least [`GOAL`] times slower than
/// the fastest cpulocal structure at each of [`GOAL_THREADS`]?
fn verdict(report: &Report) -> String {
    let parts: Vec<String> = GOAL_THREADS
        .iter()
        .map(|&t| match report.goal(t) {
            Some((peer, ratio)) => format!(
                "{t} threads: {}x, the fastest peer {}",
                num(ratio),
                peer.label()
            ),
            None => format!("{t} threads: not run"),
        })
        .collect();
    let at = GOAL_THREADS.map(|t| t.to_string()).join(" and ");
    let outcome = match report.goal_met() {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not decided (not run at every one of these thread counts)",
    };
    format!(
        "goal, cpulocal at least {}x faster than the fastest peer at {at} threads: {outcome} ({})",
        num(GOAL),
        parts.join("; ")
    )
}

/// `kept` of `attempted` as a percentage with one decimal, rounded down:
/// "100" only when every event was kept.
fn percent(kept: u64, attempted: u64) -> String {
    if kept >= attempted {
        return "100".into();
    }
    let tenths = u128::from(kept) * 1000 / u128::from(attempted);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// The kept percentage of `peer` at `threads`, if it ran.
fn kept(report: &Report, peer: RingPeer, threads: usize) -> Option<String> {
    report
        .ring_cell(peer, threads)
        .map(|c| percent(c.events.kept(), c.events.attempted))
}

/// The ring section: one block of tables per scenario, the verdicts on the
/// goals in the recorder's, the same numbers beside them in the streaming
/// one.
fn write_ring(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let config = &report.config;
    if config.ring_peers.is_empty() || config.ring_threads.is_empty() {
        return Ok(());
    }
    let slots = ring_bench::array_queue_slots();
    writeln!(out)?;
    writeln!(
        out,
        "ring: every producer loops reserve(64), write 64 B, commit() on one cpulocal PerCpuRing ({} sub-buffers of {} KiB per CPU: {RING_RECORDS_PER_CPU} events per CPU, {} in all), beside the same [u8; 64] on one crossbeam ArrayQueue of {slots} slots; {} interleaved rounds of ~{} ms batches per producer count and scenario",
        ring_bench::SUB_BUFFERS,
        ring_bench::SUB_BUFFER_SIZE / 1024,
        RingPeer::RecorderRing.capacity(),
        config.ring_rounds,
        config.batch.as_millis(),
    )?;
    for scenario in Scenario::ALL {
        write_ring_scenario(out, report, scenario)?;
    }
    Ok(())
}

/// One scenario's tables and verdict lines.
fn write_ring_scenario(
    out: &mut impl Write,
    report: &Report,
    scenario: Scenario,
) -> std::io::Result<()> {
    let config = &report.config;
    let peers = config.ring_peers_in(scenario);
    if peers.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let kept_is = match scenario {
        Scenario::Recorder => {
            writeln!(
                out,
                "flight recorder: the producers alone, no consumer while they run; the ring in overwrite mode, the queue with force_push() (both displace their oldest events when full); after each batch, untimed, what is left is read"
            )?;
            "read after the batch, or overwritten by a newer event"
        }
        Scenario::Streaming => {
            writeln!(
                out,
                "streaming: one consumer thread, {}, drains each batch while it runs (consume(), pop()), and what is left after it, untimed; the ring in discard mode, the queue with push() (an event refused as full is counted lost by both)",
                match report.ring_consumer_cpu {
                    Some(cpu) => format!("pinned to CPU {cpu}"),
                    None => "not pinned".into(),
                }
            )?;
            "delivered to the consumer"
        }
    };
    writeln!(
        out,
        "ns per event attempted (batch wall time / all producers' events, kept or not; median of {} rounds)",
        config.ring_rounds
    )?;
    let rows: Vec<(RingPeer, &str)> = peers.iter().map(|&p| (p, p.label())).collect();
    write_table(out, &config.ring_threads, &rows, |p, t| {
        report.ring_cell(p, t).map(|c| num(c.cell.median_ns))
    })?;
    writeln!(out)?;
    writeln!(
        out,
        "kept, % of the events attempted in the timed rounds ({kept_is}; the rest refused and counted lost; checked exact)"
    )?;
    write_table(out, &config.ring_threads, &rows, |p, t| kept(report, p, t))?;
    writeln!(out)?;
    writeln!(
        out,
        "ns per event kept (batch wall time / the events kept; median of {} rounds)",
        config.ring_rounds
    )?;
    write_table(out, &config.ring_threads, &rows, |p, t| {
        report.ring_cell(p, t).map(|c| num(c.per_kept.median_ns))
    })?;
    let others: Vec<RingPeer> = peers.iter().copied().filter(|p| !p.is_ring()).collect();
    if others.is_empty() || !peers.contains(&scenario.ring()) {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "ratio to the ring (peer's time / the ring's in the same round, median; above 1: the ring is faster)"
    )?;
    let labels: Vec<((RingPeer, bool), String)> = others
        .iter()
        .flat_map(|&p| {
            [false, true].map(|per_kept| {
                let per = if per_kept { "kept" } else { "attempted" };
                ((p, per_kept), format!("{}, per event {per}", p.short()))
            })
        })
        .collect();
    let ratio_rows: Vec<((RingPeer, bool), &str)> =
        labels.iter().map(|(k, l)| (*k, l.as_str())).collect();
    write_table(
        out,
        &config.ring_threads,
        &ratio_rows,
        |(p, per_kept), t| {
            let c = report.ring_cell(p, t)?;
            let cell = if per_kept { &c.per_kept } else { &c.cell };
            cell.ratio.map(num)
        },
    )?;
    for line in ring_verdicts(report, scenario) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// "ring 99.5%, ArrayQueue 100%" kept at `threads` in `scenario`.
fn kept_both(report: &Report, scenario: Scenario, threads: usize) -> String {
    let one = |p: RingPeer| {
        format!(
            "{} {}%",
            p.short(),
            kept(report, p, threads).unwrap_or_else(|| "-".into())
        )
    };
    let queue = match scenario {
        Scenario::Recorder => RingPeer::RecorderArrayQueue,
        Scenario::Streaming => RingPeer::ArrayQueue,
    };
    format!("{}, {}", one(scenario.ring()), one(queue))
}

fn outcome_word(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not decided",
    }
}

/// The lines on the ring's two goals in `scenario`, judged per event kept,
/// with the numbers per event attempted and the events kept beside them, so
/// that speed bought by refusing events shows. In the recorder they are the
/// verdicts; in the streaming scenario, the same measures for comparison.
fn ring_verdicts(report: &Report, scenario: Scenario) -> [String; 2] {
    let goals = report.ring_goals(scenario);
    let or_dash = |v: Option<f64>| v.map_or_else(|| "-".into(), num);
    let ns = match goals.ns {
        Some(ns) => format!(
            "{} ns per event kept, {} per event attempted; kept: {}",
            num(ns),
            or_dash(goals.ns_attempted),
            kept_both(report, scenario, RING_GOAL_NS_THREADS)
        ),
        None => format!("{} not run", producers(RING_GOAL_NS_THREADS)),
    };
    let ratio = match goals.ratio {
        Some(r) => format!(
            "{}x per event kept, {}x per event attempted; kept: {}",
            num(r),
            or_dash(goals.ratio_attempted),
            kept_both(report, scenario, RING_GOAL_RATIO_THREADS)
        ),
        None => format!("{} not run", producers(RING_GOAL_RATIO_THREADS)),
    };
    let (head, ns_word, ratio_word) = match scenario {
        Scenario::Recorder => (
            "goal",
            outcome_word(goals.ns_met()),
            outcome_word(goals.ratio_met()),
        ),
        // Not the goals' scenario: measured against them, not judged.
        Scenario::Streaming => (
            "streaming, not a goal",
            reached(goals.ns_met()),
            reached(goals.ratio_met()),
        ),
    };
    [
        format!(
            "{head}, ring at most {} ns/event with {}: {ns_word} ({ns})",
            num(RING_GOAL_NS),
            producers(RING_GOAL_NS_THREADS),
        ),
        format!(
            "{head}, ring at least {}x ArrayQueue's throughput with {}: {ratio_word} ({ratio})",
            num(RING_GOAL_RATIO),
            producers(RING_GOAL_RATIO_THREADS),
        ),
    ]
}

/// Whether a measure outside the goals' scenario reaches the goal's figure.
fn reached(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "reached",
        Some(false) => "not reached",
        None => "not decided",
    }
}

/// The "chart:" lines.
pub fn write_chart_paths(out: &mut impl Write, files: &Files) -> std::io::Result<()> {
    writeln!(out, "chart: {}", shown(&files.png))?;
    writeln!(out, "       {}", shown(&files.svg))
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

// --- JSON -------------------------------------------------------------------

#[derive(Serialize)]
struct Json<'a> {
    quick: bool,
    cpus: usize,
    placement: &'static str,
    threads: &'a [usize],
    rounds: usize,
    batch_ms: f64,
    reference: &'static str,
    peers: Vec<JsonPeer>,
    results: Vec<JsonResult>,
    fenced_add_on: Vec<JsonFenced>,
    structures: JsonStructures<'a>,
    ring: JsonRing<'a>,
    versus_c: JsonLoops<'a>,
    chart: Option<JsonChart>,
    elapsed_s: f64,
}

#[derive(Serialize)]
struct JsonLoops<'a> {
    threads: &'a [usize],
    rounds: usize,
    goal: f64,
    met: Option<bool>,
    modes_unavailable: &'a [Mode],
    results: Vec<JsonLoop>,
}

#[derive(Serialize)]
struct JsonLoop {
    #[serde(rename = "loop")]
    lp: Loop,
    param_test: String,
    mode: Mode,
    threads: usize,
    c_ns: f64,
    c_hoisted_ns: f64,
    cpulocal_ns: f64,
    ratio: f64,
    floor_ratio: f64,
    met: bool,
}

#[derive(Serialize)]
struct JsonPeer {
    name: &'static str,
    label: &'static str,
    available: bool,
}

#[derive(Serialize)]
struct JsonResult {
    peer: &'static str,
    threads: usize,
    ns_per_op: f64,
    ns_per_op_min: f64,
    ns_per_op_max: f64,
    mops_per_s: f64,
    ratio_to_cpulocal: Option<f64>,
    ops_per_thread: u64,
    max_threads_per_cpu: Option<usize>,
}

#[derive(Serialize)]
struct JsonFenced {
    target: &'static str,
    samples: usize,
    median_ns: f64,
    p90_ns: f64,
}

#[derive(Serialize)]
struct JsonStructures<'a> {
    operation: &'static str,
    threads: &'a [usize],
    rounds: usize,
    reference: &'static str,
    peers: Vec<JsonStructurePeer>,
    results: Vec<JsonResult>,
    goal: JsonGoal,
}

#[derive(Serialize)]
struct JsonStructurePeer {
    name: &'static str,
    label: &'static str,
    cpulocal: bool,
    capacity: Option<usize>,
}

#[derive(Serialize)]
struct JsonGoal {
    ratio: f64,
    threads: &'static [usize],
    met: Option<bool>,
    at: Vec<JsonGoalAt>,
}

#[derive(Serialize)]
struct JsonGoalAt {
    threads: usize,
    fastest_peer: Option<&'static str>,
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct JsonRing<'a> {
    operation: &'static str,
    payload_bytes: usize,
    threads: &'a [usize],
    rounds: usize,
    consumer_cpu: Option<usize>,
    scenarios: Vec<JsonRingScenario>,
    peers: Vec<JsonRingPeer>,
    results: Vec<JsonRingResult>,
    goals: JsonRingGoals,
}

#[derive(Serialize)]
struct JsonRingScenario {
    name: &'static str,
    reference: &'static str,
    goals: JsonRingGoals,
}

#[derive(Serialize)]
struct JsonRingPeer {
    name: &'static str,
    label: &'static str,
    scenario: &'static str,
    operation: &'static str,
    capacity_events: usize,
}

#[derive(Serialize)]
struct JsonRingResult {
    #[serde(flatten)]
    time: JsonResult,
    scenario: &'static str,
    events: u64,
    delivered: u64,
    overwritten: u64,
    lost: u64,
    kept: u64,
    kept_fraction: f64,
    lost_fraction: f64,
    ns_per_kept_event: Option<f64>,
    kept_ratio_to_ring: Option<f64>,
}

#[derive(Serialize)]
struct JsonRingGoals {
    ns_per_event: JsonRingGoal,
    ratio: JsonRingGoal,
}

#[derive(Serialize)]
struct JsonRingGoal {
    goal: f64,
    threads: usize,
    value: Option<f64>,
    met: Option<bool>,
    value_per_attempted_event: Option<f64>,
}

#[derive(Serialize)]
struct JsonChart {
    png: String,
    svg: String,
}

/// A result row: a counter's or a structure's cell.
fn row<P>(c: &Cell<P>, name: &'static str, max_threads_per_cpu: Option<usize>) -> JsonResult {
    JsonResult {
        peer: name,
        threads: c.threads,
        ns_per_op: c.median_ns,
        ns_per_op_min: c.min_ns,
        ns_per_op_max: c.max_ns,
        mops_per_s: c.mops(),
        ratio_to_cpulocal: c.ratio,
        ops_per_thread: c.ops_per_thread,
        max_threads_per_cpu,
    }
}

/// The goal of the structures, as [`verdict`] prints it.
fn goal_json(report: &Report) -> JsonGoal {
    JsonGoal {
        ratio: GOAL,
        threads: &GOAL_THREADS,
        met: report.goal_met(),
        at: GOAL_THREADS
            .iter()
            .map(|&t| {
                let goal = report.goal(t);
                JsonGoalAt {
                    threads: t,
                    fastest_peer: goal.map(|(s, _)| s.name()),
                    ratio: goal.map(|(_, r)| r),
                }
            })
            .collect(),
    }
}

/// The ring section, as [`write_ring`] prints it.
fn ring_json(report: &Report, per_cpu: impl Fn(usize) -> Option<usize>) -> JsonRing<'_> {
    JsonRing {
        operation: "reserve(64), write 64 B, commit(); the peer: the same [u8; 64] pushed",
        payload_bytes: ring_bench::PAYLOAD,
        threads: &report.config.ring_threads,
        rounds: report.config.ring_rounds,
        consumer_cpu: report.ring_consumer_cpu,
        scenarios: Scenario::ALL
            .iter()
            .map(|&s| JsonRingScenario {
                name: s.name(),
                reference: s.ring().name(),
                goals: goals_json(report, s),
            })
            .collect(),
        peers: report
            .config
            .ring_peers
            .iter()
            .map(|&p| JsonRingPeer {
                name: p.name(),
                label: p.label(),
                scenario: p.scenario().name(),
                operation: p.operation(),
                capacity_events: p.capacity(),
            })
            .collect(),
        results: report
            .ring
            .iter()
            .map(|c| {
                let Outcome {
                    attempted,
                    delivered,
                    overwritten,
                    lost,
                } = c.events;
                JsonRingResult {
                    time: row(&c.cell, c.cell.peer.name(), per_cpu(c.cell.threads)),
                    scenario: c.cell.peer.scenario().name(),
                    events: attempted,
                    delivered,
                    overwritten,
                    lost,
                    kept: c.events.kept(),
                    kept_fraction: c.kept_fraction(),
                    lost_fraction: c.lost_fraction(),
                    ns_per_kept_event: Some(c.per_kept.median_ns).filter(|ns| ns.is_finite()),
                    kept_ratio_to_ring: c.per_kept.ratio,
                }
            })
            .collect(),
        goals: goals_json(report, Scenario::Recorder),
    }
}

/// The goals as measured in `scenario` (judged in the recorder).
fn goals_json(report: &Report, scenario: Scenario) -> JsonRingGoals {
    let goals = report.ring_goals(scenario);
    JsonRingGoals {
        ns_per_event: JsonRingGoal {
            goal: RING_GOAL_NS,
            threads: RING_GOAL_NS_THREADS,
            value: goals.ns.filter(|ns| ns.is_finite()),
            met: goals.ns_met(),
            value_per_attempted_event: goals.ns_attempted,
        },
        ratio: JsonRingGoal {
            goal: RING_GOAL_RATIO,
            threads: RING_GOAL_RATIO_THREADS,
            value: goals.ratio,
            met: goals.ratio_met(),
            value_per_attempted_event: goals.ratio_attempted,
        },
    }
}

fn to_json<'a>(report: &'a Report, files: Option<&Files>, quick: bool) -> Json<'a> {
    let per_cpu = |t: usize| {
        report
            .max_per_cpu
            .iter()
            .find(|(n, _)| *n == t)
            .and_then(|(_, m)| *m)
    };
    Json {
        quick,
        cpus: report.cpus,
        placement: report.config.placement.name(),
        threads: &report.config.threads,
        rounds: report.config.rounds,
        batch_ms: report.config.batch.as_secs_f64() * 1e3,
        reference: Peer::Cpulocal.name(),
        peers: report
            .config
            .peers
            .iter()
            .map(|&p| JsonPeer {
                name: p.name(),
                label: p.label(),
                available: !report.unavailable.contains(&p),
            })
            .collect(),
        results: report
            .cells
            .iter()
            .map(|c| row(c, c.peer.name(), per_cpu(c.threads)))
            .collect(),
        fenced_add_on: report
            .fenced
            .iter()
            .map(|f| JsonFenced {
                target: match f.target {
                    Target::Idle => "idle",
                    Target::Busy => "busy",
                },
                samples: f.samples,
                median_ns: f.median_ns,
                p90_ns: f.p90_ns,
            })
            .collect(),
        structures: JsonStructures {
            operation: "push(x) then pop()",
            threads: &report.config.structure_threads,
            rounds: report.config.structure_rounds,
            reference: "fastest_cpulocal",
            peers: report
                .config
                .structures
                .iter()
                .map(|&s| JsonStructurePeer {
                    name: s.name(),
                    label: s.label(),
                    cpulocal: s.is_cpulocal(),
                    capacity: match s {
                        Structure::Buffer | Structure::MemcpyBuffer => Some(BUFFER_CAPACITY),
                        Structure::ArrayQueue => Some(ARRAY_QUEUE_PER_THREAD),
                        _ => None,
                    },
                })
                .collect(),
            results: report
                .structures
                .iter()
                .map(|c| row(c, c.peer.name(), per_cpu(c.threads)))
                .collect(),
            goal: goal_json(report),
        },
        ring: ring_json(report, per_cpu),
        versus_c: JsonLoops {
            threads: &report.config.loop_threads,
            rounds: report.config.loop_rounds,
            goal: LOOP_GOAL,
            met: report.loop_goal_met(),
            modes_unavailable: &report.loop_modes_unavailable,
            results: report
                .loops
                .iter()
                .map(|c| JsonLoop {
                    lp: c.lp,
                    param_test: format!("-T {}", c.lp.letter()),
                    mode: c.mode,
                    threads: c.threads,
                    c_ns: c.c.median_ns,
                    c_hoisted_ns: c.c_hoisted.median_ns,
                    cpulocal_ns: c.cpulocal.median_ns,
                    ratio: c.ratio(),
                    floor_ratio: c.floor_ratio,
                    met: c.goal_met(),
                })
                .collect(),
        },
        chart: files.map(|files| JsonChart {
            png: shown(&files.png),
            svg: shown(&files.svg),
        }),
        elapsed_s: report.elapsed.as_secs_f64(),
    }
}
