//! The `cpulocal` binary, run as a user would run it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn cpulocal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .args(args)
        .output()
        .expect("run the cpulocal binary")
}

/// Runs the binary with `dir` as its working directory.
fn cpulocal_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the cpulocal binary")
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8")
}

/// Fails with everything the command printed.
#[track_caller]
fn assert_success(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

const STATUS_LINES: [&str; 10] = [
    "rseq registered by:",
    "engine:",
    "rseq feature size:",
    "node_id valid:",
    "mm_cid valid:",
    "mm_cid indexing:",
    "membarrier (RSEQ):",
    "glibc __rseq_size:",
    "possible CPUs:",
    "current CPU:",
];

/// The chart paths the output names on its "chart:" lines.
fn chart_paths(out: &str) -> (PathBuf, PathBuf) {
    let mut lines = out.lines().skip_while(|l| !l.starts_with("chart: "));
    let png = lines.next().and_then(|l| l.strip_prefix("chart: "));
    let svg = lines.next().map(str::trim_start);
    match (png, svg) {
        (Some(png), Some(svg)) => (PathBuf::from(png), PathBuf::from(svg)),
        _ => panic!("no chart lines in:\n{out}"),
    }
}

/// The README's `cargo run --release`: a first run in plain words, at most
/// 30 lines: the engine and why, the exact demo with what its paths mean,
/// the headline speed table, and where the chart went, which is under cargo's
/// target directory (the one holding this binary), whatever the working
/// directory.
#[test]
fn default_command_is_a_short_first_run() {
    let dir = scratch("default");
    let o = Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run the cpulocal binary");
    assert_success(&o);
    let out = stdout(&o);
    let lines = out.lines().count();
    assert!(lines <= 30, "{lines} lines:\n{out}");
    for want in [
        "This machine: ",
        "Engine: ",
        "Counter demo: ",
        " counted (taken ",
        "exact, none lost or doubled",
        "% fast: ",
        "% retried: ",
        "% fenced: ",
        "cpulocal PerCpuCounter::add",
        "shared AtomicI64::fetch_add",
        "More: cpulocal info",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    // No internal verdicts on the first screen.
    for unwanted in ["goal", "NOT", "met"] {
        assert!(!out.contains(unwanted), "{unwanted:?} in:\n{out}");
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_cpulocal"));
    let target = exe
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .expect("the test binary sits in cargo's target directory");
    let (png, svg) = chart_paths(&out);
    assert_eq!(png, target.join("cpulocal-bench/counter-throughput.png"));
    assert_eq!(svg, target.join("cpulocal-bench/counter-throughput.svg"));
    check_png(&png);
    check_svg(&svg);
    assert!(
        !dir.join("target").exists(),
        "wrote into the working directory"
    );
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// With `CARGO_TARGET_DIR` set, the chart goes there.
#[test]
fn the_chart_follows_cargo_target_dir() {
    let dir = scratch("target-dir");
    let o = Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .args(["--threads", "2", "--ops", "500"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("elsewhere"))
        .output()
        .expect("run the cpulocal binary");
    assert_success(&o);
    let (png, svg) = chart_paths(&stdout(&o));
    assert_eq!(
        png,
        dir.join("elsewhere/cpulocal-bench/counter-throughput.png")
    );
    check_png(&png);
    check_svg(&svg);
}

#[test]
fn info_prints_the_status_only() {
    let o = cpulocal(&["info"]);
    assert_success(&o);
    let out = stdout(&o);
    for line in STATUS_LINES {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    assert!(!out.contains("counter demo"), "{out}");
}

#[test]
fn info_json_has_the_documented_fields() {
    let o = cpulocal(&["info", "--json"]);
    assert_success(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("info --json is JSON");
    let obj = v.as_object().expect("a JSON object");

    let tag = |key: &str| -> String {
        obj.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
            .to_owned()
    };
    let registration = tag("registration");
    assert!(
        ["glibc", "cpulocal", "nobody"].contains(&registration.as_str()),
        "{v}"
    );
    let engine = tag("engine");
    assert!(["rseq", "fenced"].contains(&engine.as_str()), "{v}");
    assert!(!tag("registration_text").is_empty());
    assert!(!tag("engine_text").is_empty());
    let membarrier = tag("membarrier_rseq");
    assert!(
        ["registered", "unavailable"].contains(&membarrier.as_str()),
        "{v}"
    );
    assert_eq!(
        obj["membarrier_rseq_errno"].is_null(),
        membarrier == "registered",
        "{v}"
    );
    // rseq_off says why operations are fenced, and only when they are.
    assert_eq!(obj["rseq_off"].is_null(), engine == "rseq", "{v}");
    assert_eq!(obj["fenced_membarrier"].is_null(), engine == "rseq", "{v}");
    // Nobody registered: necessarily fenced.
    assert!(registration != "nobody" || engine == "fenced", "{v}");

    for key in ["node_id_valid", "mm_cid_valid", "mm_cid_indexing"] {
        assert!(obj[key].is_boolean(), "{key} in {v}");
    }
    for key in [
        "feature_size",
        "glibc_rseq_size",
        "rseq_area_len",
        "rseq_off_errno",
    ] {
        assert!(obj.contains_key(key), "no {key} in {v}");
        assert!(
            obj[key].is_null() || obj[key].is_u64() || obj[key].is_i64(),
            "{key} in {v}"
        );
    }
    let possible = obj["possible_cpus"].as_u64().expect("possible_cpus");
    let cpu = obj["cpu"].as_u64().expect("cpu");
    assert!(possible >= 1 && cpu < possible, "{v}");
    let slice = obj["slice_extension"].as_str().expect("slice_extension");
    assert!(
        ["on", "not_enabled", "legacy_area", "unsupported", "no_rseq"].contains(&slice),
        "{v}"
    );
    for key in ["slice_extensions_granted", "slice_extensions_yielded"] {
        assert!(obj[key].is_u64(), "{key} in {v}");
    }
}

#[test]
fn slice_counts_holds_in_both_modes_or_says_why_not() {
    let o = cpulocal(&["slice", "--rounds", "2", "--round-ms", "100"]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.starts_with("time-slice extension: "), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("with ") || l.starts_with("without "))
        .collect();
    let on = out
        .lines()
        .next()
        .is_some_and(|l| l.ends_with(")") && l.contains(": on ("));
    assert_eq!(rows.len(), if on { 2 } else { 1 }, "{out}");
    for row in rows {
        let holds: u64 = row
            .split_whitespace()
            .nth(2)
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        assert!(holds > 0, "no holds in {row:?}: {out}");
    }
}

#[test]
fn demo_with_small_numbers_is_exact() {
    let o = cpulocal(&["demo", "--threads", "3", "--ops", "1000"]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.contains("3 threads × 1,000 ops"), "{out}");
    assert!(out.contains("expected:       3,000"), "{out}");
    assert!(out.contains(" exact ("), "{out}");
    assert!(!out.contains("cpulocal status"), "{out}");
}

#[test]
fn demo_prints_its_full_report() {
    let o = cpulocal(&["demo", "--threads", "4", "--ops", "20000"]);
    assert_success(&o);
    let out = stdout(&o);
    for line in [
        "expected:       80,000",
        "per-CPU slots:",
        "ns/op",
        "calls:",
        "paths:",
        "fast",
        "fenced",
        "engine:",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}

#[test]
fn demo_and_out_options_work_without_the_subcommand() {
    let dir = scratch("default-options");
    let charts = dir.join("charts");
    let o = cpulocal_in(
        &dir,
        &[
            "--threads",
            "2",
            "--ops",
            "500",
            "--out",
            charts.to_str().unwrap(),
        ],
    );
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.contains("Engine: "), "{out}");
    assert!(
        out.contains("2 threads each add 1 to one PerCpuCounter 500 times"),
        "{out}"
    );
    assert!(out.contains("exact, none lost or doubled"), "{out}");
    check_png(&charts.join("counter-throughput.png"));
    check_svg(&charts.join("counter-throughput.svg"));
    assert!(
        !dir.join("target").exists(),
        "wrote to the default directory"
    );
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    for (args, says) in [
        (&["--threads", "0"][..], "must be at least 1"),
        (&["demo", "--ops", "0"][..], "must be at least 1"),
        (
            &["demo", "--threads", "many"][..],
            "expected a whole number",
        ),
        (&["info", "--bogus"][..], "--bogus"),
        (&["frobnicate"][..], "frobnicate"),
        (&["bench", "--threads", "1,0"][..], "must be at least 1"),
        (&["bench", "--rounds", "0"][..], "must be at least 1"),
        (&["bench", "--placement", "sideways"][..], "sideways"),
        (&["step", "--ops", "0"][..], "must be at least 1"),
        (&["step", "--budget", "lots"][..], "expected a whole number"),
    ] {
        let o = cpulocal(args);
        assert!(!o.status.success(), "{args:?} succeeded:\n{}", stdout(&o));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: no {says:?} in {err}");
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn a_demo_too_big_for_the_counter_fails_before_it_starts() {
    let o = cpulocal(&["demo", "--threads", "4294967296", "--ops", "4294967296"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("does not fit the counter"),
        "{}",
        stderr(&o)
    );
}

// --- bench -------------------------------------------------------------------

/// Every peer's label, in report order.
const PEER_LABELS: [&str; 8] = [
    "cpulocal PerCpuCounter::add",
    "C rseq add (librseq style)",
    "C rseq add + fence check",
    "shared AtomicI64::fetch_add",
    "sched_getcpu + per-CPU atomic",
    "thread_local shard, fetch_add",
    "thread_local shard, load+store",
    "fast-counter ConcurrentCounter",
];

/// The peers' names in `--json`.
const PEER_NAMES: [&str; 8] = [
    "cpulocal_add",
    "c_rseq",
    "c_rseq_fence_check",
    "shared_atomic",
    "getcpu_atomic",
    "thread_local_fetch_add",
    "thread_local_load_store",
    "fast_counter",
];

/// The structures' labels, cpulocal's first, then the peers.
const STRUCTURE_LABELS: [&str; 6] = [
    "cpulocal PerCpuList",
    "cpulocal PerCpuBuffer",
    "cpulocal PerCpuMemcpyBuffer",
    "crossbeam SegQueue",
    "crossbeam ArrayQueue",
    "std Mutex<Vec>",
];

/// The structures' names in `--json`.
const STRUCTURE_NAMES: [&str; 6] = [
    "cpulocal_list",
    "cpulocal_buffer",
    "cpulocal_memcpy_buffer",
    "crossbeam_seg_queue",
    "crossbeam_array_queue",
    "mutex_vec",
];

/// The ring section's scenarios: the line that opens each block, its rows'
/// labels (the ring, then its peer), and how its goal lines start.
const RING_SCENARIOS: [(&str, [&str; 2], &str); 2] = [
    (
        "flight recorder: the producers alone",
        [
            "cpulocal PerCpuRing, overwrite",
            "crossbeam ArrayQueue, force_push",
        ],
        "goal, ",
    ),
    (
        "streaming: one consumer thread, ",
        ["cpulocal PerCpuRing, discard", "crossbeam ArrayQueue, push"],
        "streaming, not a goal, ",
    ),
];

/// The ring section's names in `--json`, with their scenarios.
const RING_NAMES: [(&str, &str); 4] = [
    ("cpulocal_ring_overwrite", "recorder"),
    ("crossbeam_array_queue_force_push", "recorder"),
    ("cpulocal_ring", "streaming"),
    ("crossbeam_array_queue", "streaming"),
];

/// The numbers at the end of a table row ("1,234" counts as 1234).
fn row_numbers(row: &str) -> Vec<f64> {
    let mut cells: Vec<f64> = row
        .split_whitespace()
        .rev()
        .map_while(|w| w.replace(',', "").parse().ok())
        .collect();
    cells.reverse();
    cells
}

/// The tables and trailing lines of `bench` as text.
#[track_caller]
fn check_bench_text(out: &str) {
    let tables = out
        .find("ns per operation")
        .unwrap_or_else(|| panic!("no time table in:\n{out}"));
    let ratios = out
        .find("ratio to cpulocal")
        .unwrap_or_else(|| panic!("no ratio table in:\n{out}"));
    assert!(tables < ratios, "{out}");
    for label in PEER_LABELS {
        if label.starts_with("C rseq") && out.contains("not available here: c_rseq") {
            continue;
        }
        let rows = out.lines().filter(|l| l.trim_start().starts_with(label));
        // In both tables, except cpulocal (the reference has no ratio row).
        let want = if label.starts_with("cpulocal") { 1 } else { 2 };
        assert_eq!(rows.count(), want, "{label:?} rows in:\n{out}");
    }
    // Every ratio row has a number per thread count.
    let ratio_rows: Vec<&str> = out[ratios..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with("  ") && !l.contains(':'))
        .collect();
    assert!(!ratio_rows.is_empty(), "{out}");
    for row in ratio_rows {
        let cells: Vec<f64> = row
            .split_whitespace()
            .rev()
            .map_while(|w| w.replace(',', "").parse().ok())
            .collect();
        assert!(!cells.is_empty(), "{row:?}");
        assert!(cells.iter().all(|&r| r > 0.0), "{row:?}");
    }
    assert!(out.contains("fenced path"), "{out}");
    check_structures_text(out);
    check_ring_text(out);
    assert!(out.contains("chart: "), "{out}");
    assert!(out.contains("time: "), "{out}");
}

/// The structures' tables and the goal's verdict: every structure has a
/// positive time per thread count, every peer a positive ratio.
#[track_caller]
fn check_structures_text(out: &str) {
    let section = out
        .find("structures: every thread loops push(x); pop()")
        .unwrap_or_else(|| panic!("no structures section in:\n{out}"));
    let times = out[section..]
        .find("ns per push+pop pair")
        .map(|i| section + i)
        .unwrap_or_else(|| panic!("no structures time table in:\n{out}"));
    let ratios = out[times..]
        .find("ratio to the fastest cpulocal structure")
        .map(|i| times + i)
        .unwrap_or_else(|| panic!("no structures ratio table in:\n{out}"));
    let columns = row_numbers(out[times..].lines().nth(1).unwrap()).len();
    assert!(columns >= 1, "{out}");
    let rows = |from: usize| -> Vec<&str> {
        out[from..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with("  ") && !l.contains(':'))
            .collect()
    };
    let time_rows = rows(times);
    let ratio_rows = rows(ratios);
    assert_eq!(time_rows.len(), STRUCTURE_LABELS.len(), "{out}");
    assert_eq!(ratio_rows.len(), 3, "{out}");
    for (row, label) in time_rows.iter().zip(STRUCTURE_LABELS) {
        assert!(
            row.trim_start().starts_with(label),
            "{row:?} is not {label:?}"
        );
    }
    for (row, label) in ratio_rows.iter().zip(&STRUCTURE_LABELS[3..]) {
        assert!(
            row.trim_start().starts_with(label),
            "{row:?} is not {label:?}"
        );
    }
    for row in time_rows.iter().chain(&ratio_rows) {
        let cells = row_numbers(row);
        assert_eq!(cells.len(), columns, "{row:?}");
        assert!(cells.iter().all(|&v| v > 0.0), "{row:?}");
    }
    let verdict = out[ratios..]
        .lines()
        .find(|l| {
            l.starts_with(
                "goal, cpulocal at least 3.00x faster than the fastest peer at 2 and 8 threads: ",
            )
        })
        .unwrap_or_else(|| panic!("no verdict in:\n{out}"));
    assert!(
        [": met (", ": NOT met (", ": not decided ("]
            .iter()
            .any(|v| verdict.contains(v)),
        "{verdict}"
    );
}

/// The ring section, in each scenario: a positive time per event attempted
/// and per event kept for the ring and its peer at every thread count, the
/// kept percentages (0 to 100), the peer's positive ratios, and the lines on
/// the two goals (verdicts in the recorder).
#[track_caller]
fn check_ring_text(out: &str) {
    let find = |from: usize, what: &str| {
        out[from..]
            .find(what)
            .map(|i| from + i)
            .unwrap_or_else(|| panic!("no {what:?} in:\n{out}"))
    };
    let section = find(
        0,
        "ring: every producer loops reserve(64), write 64 B, commit()",
    );
    let mut from = section;
    for (opening, labels, goal_head) in RING_SCENARIOS {
        let block = find(from, opening);
        let times = find(block, "ns per event attempted (");
        let kept = find(times, "kept, % of the events attempted");
        let per_kept = find(kept, "ns per event kept (");
        let ratios = find(per_kept, "ratio to the ring (");
        let columns = row_numbers(out[times..].lines().nth(1).unwrap()).len();
        assert!(columns >= 1, "{out}");
        let rows = |from: usize| -> Vec<&str> {
            out[from..]
                .lines()
                .skip(2)
                .take_while(|l| l.starts_with("  ") && !l.contains(':'))
                .collect()
        };
        let labelled = |rows: &[&str], labels: &[&str]| {
            assert_eq!(rows.len(), labels.len(), "{out}");
            for (row, label) in rows.iter().zip(labels) {
                assert!(
                    row.trim_start().starts_with(label),
                    "{row:?} is not {label:?}"
                );
                assert_eq!(row_numbers(row).len(), columns, "{row:?}");
            }
        };
        let (time_rows, kept_rows, per_kept_rows, ratio_rows) =
            (rows(times), rows(kept), rows(per_kept), rows(ratios));
        labelled(&time_rows, &labels);
        labelled(&kept_rows, &labels);
        labelled(&per_kept_rows, &labels);
        labelled(
            &ratio_rows,
            &[
                "ArrayQueue, per event attempted",
                "ArrayQueue, per event kept",
            ],
        );
        for row in time_rows.iter().chain(&per_kept_rows) {
            assert!(row_numbers(row).iter().all(|&v| v > 0.0), "{row:?}");
        }
        // Ratios print with two decimals: a run where the ring kept almost
        // nothing (its producers preempted while holding sub-buffers, as on
        // a loaded 2-CPU machine) can print 0.00 for a positive ratio.
        for row in &ratio_rows {
            let r = row_numbers(row);
            assert!(
                r.iter().all(|&v| v >= 0.0) && r.iter().any(|&v| v > 0.0),
                "{row:?}"
            );
        }
        for row in &kept_rows {
            assert!(
                row_numbers(row).iter().all(|&v| (0.0..=100.0).contains(&v)),
                "{row:?}"
            );
        }
        // Per event kept never beats per event attempted.
        for (attempted, kept) in time_rows.iter().zip(&per_kept_rows) {
            for (a, k) in row_numbers(attempted).iter().zip(row_numbers(kept)) {
                assert!(k >= *a, "{attempted:?} vs {kept:?}");
            }
        }
        let words: &[&str] = if goal_head == "goal, " {
            &[": met (", ": NOT met (", ": not decided ("]
        } else {
            &[": reached (", ": not reached (", ": not decided ("]
        };
        for goal in [
            "ring at most 15.0 ns/event with 1 producer: ",
            "ring at least 5.00x ArrayQueue's throughput with 8 producers: ",
        ] {
            let line = format!("{goal_head}{goal}");
            let verdict = out[ratios..]
                .lines()
                .find(|l| l.starts_with(&line))
                .unwrap_or_else(|| panic!("no {line:?} in:\n{out}"));
            assert!(words.iter().any(|v| verdict.contains(v)), "{verdict}");
        }
        from = ratios;
    }
}

/// A PNG that decodes, at the chart's size, with something drawn on it.
#[track_caller]
fn check_png(path: &Path) {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{}: no PNG signature",
        path.display()
    );
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut pixels)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (frame.width, frame.height),
        (1200, 700),
        "{}",
        path.display()
    );
    let data = &pixels[..frame.buffer_size()];
    let inked = data.iter().filter(|&&b| b < 128).count();
    assert!(
        inked > data.len() / 200,
        "{}: almost blank ({inked} dark bytes)",
        path.display()
    );
}

/// An SVG document with the chart's lines and legend.
#[track_caller]
fn check_svg(path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.starts_with("<svg "), "{}", path.display());
    assert!(text.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(text.contains("<polyline"), "{}: no lines", path.display());
    assert!(text.contains("cpulocal PerCpuCounter::add"), "no legend");
    assert!(text.contains("Counter throughput vs threads"), "no title");
    // Balanced text elements: no element left open.
    assert_eq!(
        text.matches("<text").count(),
        text.matches("</text>").count()
    );
}

#[test]
fn bench_prints_tables_and_writes_the_chart() {
    let dir = scratch("bench-text");
    let charts = dir.join("out");
    let o = cpulocal_in(
        &dir,
        &[
            "bench",
            "--quick",
            "--threads",
            "1,2,4",
            "--rounds",
            "2",
            "--out",
            "out",
        ],
    );
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.starts_with("cpulocal bench --quick: "), "{out}");
    assert!(out.contains(" at 1, 2, 4 threads on "), "{out}");
    assert!(out.contains("2 interleaved rounds"), "{out}");
    check_bench_text(&out);
    // --threads applies to the structures too; without 8 threads, the goal is
    // not decided, unless 2 threads already fall short.
    let structures = &out[out.find("ns per push+pop pair").unwrap()..];
    assert_eq!(
        row_numbers(structures.lines().nth(1).unwrap()),
        [1.0, 2.0, 4.0],
        "{out}"
    );
    assert!(
        out.contains(": not decided (") || out.contains(": NOT met ("),
        "{out}"
    );
    assert!(out.contains("8 threads: not run"), "{out}");
    // And to the ring: 1, 2 and 4 producers, the 8-producer goal not decided.
    let ring = &out[out.find("ns per event attempted (").unwrap()..];
    assert_eq!(
        row_numbers(ring.lines().nth(1).unwrap()),
        [1.0, 2.0, 4.0],
        "{out}"
    );
    assert!(
        out.contains("with 8 producers: not decided (8 producers not run)"),
        "{out}"
    );
    // The CPUs the bench may use, from its header ("... threads on N CPUs").
    let cpus: usize = out
        .split(" threads on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CPU count in:\n{out}"));
    if cpus < 4 {
        assert!(out.contains("threads sharing a CPU: "), "{out}");
    } else {
        assert!(!out.contains("threads sharing a CPU: "), "{out}");
    }
    if cpus >= 2 {
        assert!(out.contains("with the target CPU idle"), "{out}");
        assert!(out.contains("with the target CPU busy"), "{out}");
    }
    assert!(out.contains("chart: out/counter-throughput.png\n"), "{out}");
    check_png(&charts.join("counter-throughput.png"));
    check_svg(&charts.join("counter-throughput.svg"));
    // stderr is not a terminal: no progress bar.
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn bench_json_has_the_documented_fields() {
    let dir = scratch("bench-json");
    let charts = dir.join("json-out");
    let o = cpulocal(&[
        "bench",
        "--json",
        "--threads",
        "3,1",
        "--rounds",
        "3",
        "--out",
        charts.to_str().unwrap(),
    ]);
    assert_success(&o);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("bench --json is JSON");
    assert_eq!(v["quick"], false);
    assert_eq!(v["placement"], "pinned");
    assert_eq!(v["threads"], serde_json::json!([1, 3]));
    assert_eq!(v["rounds"], 3);
    assert!(v["batch_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["reference"], "cpulocal_add");
    let cpus = v["cpus"].as_u64().expect("cpus") as usize;
    assert!(cpus >= 1);

    let peers = v["peers"].as_array().expect("peers");
    let names: Vec<&str> = peers.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, PEER_NAMES, "{v}");
    for p in peers {
        assert!(!p["label"].as_str().unwrap().is_empty());
        assert!(p["available"].is_boolean());
    }
    let available: Vec<&str> = peers
        .iter()
        .filter(|p| p["available"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for always in [
        "cpulocal_add",
        "shared_atomic",
        "getcpu_atomic",
        "thread_local_fetch_add",
        "thread_local_load_store",
        "fast_counter",
    ] {
        assert!(available.contains(&always), "{always} unavailable: {v}");
    }

    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2 * available.len(), "{v}");
    for r in results {
        let peer = r["peer"].as_str().unwrap();
        let threads = r["threads"].as_u64().unwrap();
        assert!(available.contains(&peer), "{r}");
        assert!([1, 3].contains(&threads), "{r}");
        let ns = r["ns_per_op"].as_f64().unwrap();
        let (min, max) = (
            r["ns_per_op_min"].as_f64().unwrap(),
            r["ns_per_op_max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= ns && ns <= max, "{r}");
        let mops = r["mops_per_s"].as_f64().unwrap();
        assert!((mops * ns - 1e3).abs() < 1e-6 * 1e3, "{r}");
        let ratio = r["ratio_to_cpulocal"].as_f64().expect("a ratio");
        assert!(ratio > 0.0, "{r}");
        if peer == "cpulocal_add" {
            assert_eq!(ratio, 1.0, "{r}");
        }
        assert!(r["ops_per_thread"].as_u64().unwrap() > 0, "{r}");
        let per_cpu = r["max_threads_per_cpu"].as_u64().expect("pinned");
        assert_eq!(per_cpu as usize, (threads as usize).div_ceil(cpus), "{r}");
    }

    let fenced = v["fenced_add_on"].as_array().expect("fenced_add_on");
    if cpus >= 2 {
        let targets: Vec<&str> = fenced
            .iter()
            .map(|f| f["target"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["idle", "busy"]);
        for f in fenced {
            assert!(f["samples"].as_u64().unwrap() > 0);
            assert!(f["median_ns"].as_f64().unwrap() > 0.0);
            assert!(f["p90_ns"].as_f64().unwrap() >= f["median_ns"].as_f64().unwrap());
        }
    } else {
        assert!(fenced.is_empty());
    }

    let structures = &v["structures"];
    assert_eq!(
        structures["operation"], "push(x) then pop()",
        "{structures}"
    );
    assert_eq!(structures["threads"], serde_json::json!([1, 3]));
    assert_eq!(structures["rounds"], 3);
    assert_eq!(structures["reference"], "fastest_cpulocal");
    let peers = structures["peers"].as_array().expect("structures.peers");
    let names: Vec<&str> = peers.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, STRUCTURE_NAMES, "{structures}");
    for p in peers {
        assert!(!p["label"].as_str().unwrap().is_empty());
        let cpulocal = p["cpulocal"].as_bool().unwrap();
        assert_eq!(
            cpulocal,
            p["name"].as_str().unwrap().starts_with("cpulocal")
        );
        assert!(p["capacity"].is_null() || p["capacity"].as_u64().unwrap() > 0);
    }
    let results = structures["results"]
        .as_array()
        .expect("structures.results");
    assert_eq!(results.len(), 2 * STRUCTURE_NAMES.len(), "{structures}");
    for r in results {
        let name = r["peer"].as_str().unwrap();
        assert!(STRUCTURE_NAMES.contains(&name), "{r}");
        let threads = r["threads"].as_u64().unwrap();
        assert!([1, 3].contains(&threads), "{r}");
        let ns = r["ns_per_op"].as_f64().unwrap();
        let (min, max) = (
            r["ns_per_op_min"].as_f64().unwrap(),
            r["ns_per_op_max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= ns && ns <= max, "{r}");
        assert!(r["mops_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let ratio = r["ratio_to_cpulocal"].as_f64().expect("a ratio");
        // To the fastest cpulocal structure: cpulocal's own are 1 or more.
        assert!(ratio > 0.0, "{r}");
        if name.starts_with("cpulocal") {
            assert!(ratio >= 1.0, "{r}");
        }
        assert!(r["ops_per_thread"].as_u64().unwrap() > 0, "{r}");
        let per_cpu = r["max_threads_per_cpu"].as_u64().expect("pinned");
        assert_eq!(per_cpu as usize, (threads as usize).div_ceil(cpus), "{r}");
    }
    let goal = &structures["goal"];
    assert_eq!(goal["ratio"], 3.0);
    assert_eq!(goal["threads"], serde_json::json!([2, 8]));
    // Neither 2 nor 8 threads ran: nothing decided.
    assert!(goal["met"].is_null(), "{goal}");
    for at in goal["at"].as_array().unwrap() {
        assert!(
            at["fastest_peer"].is_null() && at["ratio"].is_null(),
            "{at}"
        );
    }

    check_ring_json(&v["ring"], &[1, 3], 3, cpus);

    let png = PathBuf::from(v["chart"]["png"].as_str().unwrap());
    let svg = PathBuf::from(v["chart"]["svg"].as_str().unwrap());
    assert_eq!(png, charts.join("counter-throughput.png"));
    assert_eq!(svg, charts.join("counter-throughput.svg"));
    check_png(&png);
    check_svg(&svg);
    assert!(v["elapsed_s"].as_f64().unwrap() > 0.0);
}

/// `bench --json`'s ring section, run pinned at `threads` (without 8) for
/// `rounds` rounds.
#[track_caller]
fn check_ring_json(ring: &Value, threads: &[u64], rounds: u64, cpus: usize) {
    assert!(
        ring["operation"]
            .as_str()
            .unwrap()
            .starts_with("reserve(64)"),
        "{ring}"
    );
    assert_eq!(ring["payload_bytes"], 64);
    assert_eq!(ring["threads"], serde_json::json!(threads));
    assert_eq!(ring["rounds"], rounds);
    assert!(ring["consumer_cpu"].as_u64().is_some(), "pinned: {ring}");
    let scenarios = ring["scenarios"].as_array().expect("ring.scenarios");
    let references: Vec<(&str, &str)> = scenarios
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["reference"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        references,
        [
            ("recorder", "cpulocal_ring_overwrite"),
            ("streaming", "cpulocal_ring")
        ],
        "{ring}"
    );
    // The goals are the recorder's.
    assert_eq!(ring["goals"], scenarios[0]["goals"], "{ring}");
    let peers = ring["peers"].as_array().expect("ring.peers");
    let names: Vec<(&str, &str)> = peers
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["scenario"].as_str().unwrap()))
        .collect();
    assert_eq!(names, RING_NAMES, "{ring}");
    let capacity = peers[0]["capacity_events"].as_u64().unwrap();
    for p in peers {
        assert!(!p["label"].as_str().unwrap().is_empty());
        assert!(!p["operation"].as_str().unwrap().is_empty());
        // The queue holds as many events as the ring.
        assert_eq!(p["capacity_events"].as_u64().unwrap(), capacity, "{p}");
    }
    assert!(capacity > 0);
    let results = ring["results"].as_array().expect("ring.results");
    assert_eq!(results.len(), threads.len() * RING_NAMES.len(), "{ring}");
    for r in results {
        let name = r["peer"].as_str().unwrap();
        let scenario = r["scenario"].as_str().unwrap();
        assert!(RING_NAMES.contains(&(name, scenario)), "{r}");
        let is_ring = name.starts_with("cpulocal_ring");
        let t = r["threads"].as_u64().unwrap();
        assert!(threads.contains(&t), "{r}");
        let ns = r["ns_per_op"].as_f64().unwrap();
        let (min, max) = (
            r["ns_per_op_min"].as_f64().unwrap(),
            r["ns_per_op_max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= ns && ns <= max, "{r}");
        assert!(r["mops_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let ratio = r["ratio_to_cpulocal"].as_f64().expect("a ratio");
        assert!(ratio > 0.0, "{r}");
        if is_ring {
            assert_eq!(ratio, 1.0, "{r}");
        }
        let ops = r["ops_per_thread"].as_u64().unwrap();
        assert!(ops > 0, "{r}");
        let per_cpu = r["max_threads_per_cpu"].as_u64().expect("pinned");
        assert_eq!(per_cpu as usize, (t as usize).div_ceil(cpus), "{r}");
        // The timed rounds' events: each kept (delivered or overwritten) or
        // lost.
        let events = r["events"].as_u64().unwrap();
        assert_eq!(events, rounds * ops * t, "{r}");
        let count = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
        let (delivered, overwritten, lost, kept) = (
            count("delivered"),
            count("overwritten"),
            count("lost"),
            count("kept"),
        );
        assert_eq!(kept, delivered + overwritten, "{r}");
        assert_eq!(kept + lost, events, "{r}");
        if scenario == "streaming" {
            assert_eq!(overwritten, 0, "{r}");
        }
        if name == "crossbeam_array_queue_force_push" {
            assert_eq!(lost, 0, "force_push never refuses: {r}");
        }
        let k = r["kept_fraction"].as_f64().unwrap();
        let l = r["lost_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&k) && (0.0..=1.0).contains(&l), "{r}");
        assert!((k + l - 1.0).abs() < 1e-9, "{r}");
        assert!((k - kept as f64 / events as f64).abs() < 1e-9, "{r}");
        let per_kept = r["ns_per_kept_event"].as_f64().expect("events kept");
        assert!(per_kept >= ns, "{r}");
        let ratio_kept = r["kept_ratio_to_ring"].as_f64().expect("a ratio");
        assert!(ratio_kept > 0.0, "{r}");
        if is_ring {
            assert_eq!(ratio_kept, 1.0, "{r}");
        }
    }
    for s in scenarios {
        let goals = &s["goals"];
        let ns = &goals["ns_per_event"];
        assert_eq!(
            (ns["goal"].as_f64(), ns["threads"].as_u64()),
            (Some(15.0), Some(1))
        );
        if threads.contains(&1) {
            let value = ns["value"].as_f64().unwrap();
            assert!(value > 0.0, "{goals}");
            assert!(
                ns["value_per_attempted_event"].as_f64().unwrap() <= value,
                "{goals}"
            );
            assert_eq!(ns["met"].as_bool(), Some(value <= 15.0), "{goals}");
        }
        let ratio = &goals["ratio"];
        assert_eq!(
            (ratio["goal"].as_f64(), ratio["threads"].as_u64()),
            (Some(5.0), Some(8))
        );
        // 8 producers not run: nothing decided.
        assert!(
            ratio["value"].is_null()
                && ratio["met"].is_null()
                && ratio["value_per_attempted_event"].is_null(),
            "{goals}"
        );
    }
}

#[test]
fn bench_floating_threads_have_no_cpu_of_their_own() {
    let dir = scratch("bench-floating");
    let o = Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .args([
            "bench",
            "--json",
            "--threads",
            "4",
            "--rounds",
            "1",
            "--placement",
            "floating",
        ])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("t"))
        .output()
        .expect("run the cpulocal binary");
    assert_success(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).expect("bench --json is JSON");
    assert_eq!(v["placement"], "floating");
    for r in v["results"].as_array().unwrap() {
        assert!(r["max_threads_per_cpu"].is_null(), "{r}");
    }
    // Nor the ring's producers and consumer.
    assert!(v["ring"]["consumer_cpu"].is_null(), "{}", v["ring"]);
    for r in v["ring"]["results"].as_array().unwrap() {
        assert!(r["max_threads_per_cpu"].is_null(), "{r}");
    }
    // The default output directory: cpulocal-bench in $CARGO_TARGET_DIR.
    let png = dir.join("t/cpulocal-bench/counter-throughput.png");
    assert_eq!(v["chart"]["png"], png.display().to_string());
    check_png(&png);
}

// --- step --------------------------------------------------------------------

/// `step --json`, parsed; None (and a note) when the command says it cannot
/// run here.
fn step_json(args: &[&str]) -> Option<Value> {
    let mut all = vec!["step", "--json"];
    all.extend_from_slice(args);
    let o = cpulocal(&all);
    if !o.status.success() && stderr(&o).contains("not available here") {
        eprintln!("skipped: {}", stderr(&o));
        return None;
    }
    assert_success(&o);
    Some(serde_json::from_str(&stdout(&o)).expect("step --json is JSON"))
}

#[test]
fn step_with_the_fallback_completes_every_operation() {
    let v = step_json(&["--ops", "6"]).expect("the fallback runs everywhere");
    assert_eq!(v["mode"], "fallback");
    assert_eq!(v["operation"], "PerCpuCounter::add(1)");
    assert_eq!(v["ops"], 6);
    assert_eq!(v["completed"], true, "{v}");
    assert_eq!(v["livelock"], false, "{v}");
    assert_eq!(v["ops_completed_stepped"], 6, "{v}");
    assert!(v["livelock_op"].is_null() && v["livelock_steps"].is_null());
    let budget = v["step_budget"].as_u64().unwrap();
    let s = &v["steps_per_op"];
    let (min, median, max) = (
        s["min"].as_u64().unwrap(),
        s["median"].as_u64().unwrap(),
        s["max"].as_u64().unwrap(),
    );
    let mean = s["mean"].as_f64().unwrap();
    assert!(
        0 < min && min <= median && median <= max && max < budget,
        "{v}"
    );
    assert!(min as f64 <= mean && mean <= max as f64, "{v}");
    assert!(v["total_steps"].as_u64().unwrap() >= 6 * min, "{v}");
    assert!(v["marker_steps"].as_u64().unwrap() > 0);
    assert_eq!(v["sum"], 6);
    assert_eq!(v["expected_sum"], 6);
    assert_eq!(v["exact"], true);
    assert!(v["first_op_attempts"].is_null());
    // Single-stepped, no section commits: every add took the fenced path,
    // each after exactly RSEQ_ATTEMPTS aborts (the child is pinned).
    assert_eq!(v["fenced"], 6, "{v}");
    assert_eq!(v["retried"], 0, "{v}");
    let attempts = v["rseq_attempts"].as_u64().unwrap();
    match v["engine"].as_str().unwrap() {
        "rseq" => assert_eq!(v["aborts"].as_u64().unwrap(), 6 * attempts, "{v}"),
        "fenced" => assert_eq!(v["aborts"], 0, "{v}"),
        other => panic!("engine {other}"),
    }
}

#[test]
fn step_text_reports_steps_per_operation() {
    let o = cpulocal(&["step", "--ops", "3"]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with("cpulocal step: PerCpuCounter::add(1) × 3"),
        "{out}"
    );
    assert!(out.contains("completed:      3 of 3 operations"), "{out}");
    assert!(out.contains("(exact)"), "{out}");
    assert!(out.contains("steps per op:   min "), "{out}");
    assert!(out.contains("3 fenced, 0 retried"), "{out}");
}

#[test]
fn step_without_the_fallback_livelocks_and_the_budget_catches_it() {
    let Some(v) = step_json(&["--no-fallback", "--ops", "3", "--budget", "5000"]) else {
        return;
    };
    assert_eq!(v["mode"], "no_fallback");
    assert_eq!(v["completed"], false, "{v}");
    assert_eq!(v["livelock"], true, "{v}");
    assert_eq!(v["ops_completed_stepped"], 0, "{v}");
    assert_eq!(v["livelock_op"], 1, "{v}");
    assert!(v["livelock_steps"].as_u64().unwrap() > 5000, "{v}");
    assert!(v["steps_per_op"].is_null(), "{v}");
    // Released with PTRACE_CONT, the loop finished at once and counted
    // exactly; its first operation was aborted at every step until then.
    assert_eq!(v["exact"], true, "{v}");
    assert_eq!(v["sum"], 3, "{v}");
    let attempts = v["first_op_attempts"].as_u64().unwrap();
    assert!(attempts > 100, "{v}");
    assert!(v["aborts"].as_u64().unwrap() >= attempts - 1, "{v}");
    assert!(v["fenced"].is_null() && v["retried"].is_null());

    let o = cpulocal(&["step", "--no-fallback", "--ops", "2", "--budget", "3000"]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(
        out.contains("livelock caught: operation 1 of 2 ran 3,001 steps"),
        "{out}"
    );
    assert!(out.contains("released:"), "{out}");
}

#[test]
fn help_lists_the_subcommands_but_not_the_child() {
    let o = cpulocal(&["--help"]);
    assert_success(&o);
    let out = stdout(&o);
    for sub in ["info", "demo", "bench", "step"] {
        assert!(out.contains(&format!("  {sub} ")), "no {sub} in:\n{out}");
    }
    assert!(!out.contains("__step-child"), "{out}");
}
