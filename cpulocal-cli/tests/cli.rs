//! The `cpulocal` binary, run as a user would run it.

use std::process::{Command, Output};

fn cpulocal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpulocal"))
        .args(args)
        .output()
        .expect("run the cpulocal binary")
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

const STATUS_LINES: [&str; 9] = [
    "rseq registered by:",
    "engine:",
    "rseq feature size:",
    "node_id valid:",
    "mm_cid valid:",
    "membarrier (RSEQ):",
    "glibc __rseq_size:",
    "possible CPUs:",
    "current CPU:",
];

/// The README's `cargo run --release`: status, then an exact demo.
#[test]
fn default_command_prints_status_and_an_exact_demo() {
    let o = cpulocal(&[]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.starts_with("cpulocal status\n"), "{out}");
    for line in STATUS_LINES {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    assert!(out.contains("counter demo:"), "{out}");
    assert!(out.contains(" exact ("), "{out}");
    assert!(!out.contains("NOT EXACT"), "{out}");
    for line in [
        "expected:",
        "per-CPU slots:",
        "ns/op",
        "paths:",
        "fast",
        "fenced",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
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
    // rseq_off explains "nobody", and only "nobody".
    assert_eq!(obj["rseq_off"].is_null(), registration != "nobody", "{v}");
    assert_eq!(obj["fenced_membarrier"].is_null(), engine == "rseq", "{v}");
    assert_eq!(engine == "rseq", registration != "nobody", "{v}");

    for key in ["node_id_valid", "mm_cid_valid"] {
        assert!(obj[key].is_boolean(), "{key} in {v}");
    }
    for key in ["feature_size", "glibc_rseq_size", "rseq_off_errno"] {
        assert!(obj.contains_key(key), "no {key} in {v}");
        assert!(
            obj[key].is_null() || obj[key].is_u64() || obj[key].is_i64(),
            "{key} in {v}"
        );
    }
    let possible = obj["possible_cpus"].as_u64().expect("possible_cpus");
    let cpu = obj["cpu"].as_u64().expect("cpu");
    assert!(possible >= 1 && cpu < possible, "{v}");
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
fn demo_options_work_without_the_subcommand() {
    let o = cpulocal(&["--threads", "2", "--ops", "500"]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.contains("cpulocal status"), "{out}");
    assert!(out.contains("2 threads × 500 ops"), "{out}");
    assert!(out.contains(" exact ("), "{out}");
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
