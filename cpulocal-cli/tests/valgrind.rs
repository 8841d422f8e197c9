//! The `cpulocal` binary under valgrind's memcheck.
//!
//! valgrind does not implement the rseq system call (it answers ENOSYS), so
//! glibc does not register rseq (`__rseq_size` = 0), cpulocal's own attempt is
//! refused, and the engine must fall back to the fenced path by itself: every
//! operation exact, no memory error. These tests run the demo, `info`
//! (text and JSON) and each structure's stress (with a leak check) under
//! `valgrind --error-exitcode=99` and check: exit status 0 (not 99: no error; not 1: exact sums), the
//! `ERROR SUMMARY: 0 errors` line, the exact-sum line, and that the status
//! says nobody registered rseq (ENOSYS) and the fenced engine runs.
//!
//! No suppression file: none is needed (with valgrind 3.19 and glibc 2.36
//! nothing is reported, not even by valgrind's default suppressions).
//!
//! valgrind is required: if it is missing the tests fail and say so.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// valgrind's exit status when memcheck found errors (`--error-exitcode`).
const ERROR_EXIT: i32 = 99;
/// Wall-clock limit for one run under valgrind; it is killed after it.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Demo size: 4 threads × 2,000 operations (8,000 adds, 500 of them
/// `add_on` another CPU) take about a second under memcheck here.
const THREADS: u64 = 4;
const OPS: u64 = 2_000;

/// Runs the binary under memcheck with `args`; panics on a timeout.
fn valgrind(args: &[&str]) -> Output {
    valgrind_with(&["--leak-check=no"], args)
}

/// As [`valgrind`], with memcheck's options `options`.
fn valgrind_with(options: &[&str], args: &[&str]) -> Output {
    let started = Instant::now();
    let mut child = match Command::new("valgrind")
        // memcheck (valgrind's default tool, named so it stays so).
        .arg("--tool=memcheck")
        // Valgrind runs one thread at a time, and its default hand-over is
        // unfair: a thread spinning on a held fence can take the turn back
        // again and again while the holder waits for one. The buffer stress
        // then ran for 2 s to over 60 s; with fair hand-over, 1 to 2 s.
        .arg("--fair-sched=yes")
        .args(options)
        .arg(format!("--error-exitcode={ERROR_EXIT}"))
        .arg(env!("CARGO_BIN_EXE_cpulocal"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "valgrind is not installed (or not on PATH): this test needs it. \
             Install it (Debian/Ubuntu: `apt-get install valgrind`)."
        ),
        Err(e) => panic!("cannot start valgrind: {e}"),
    };
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for valgrind") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`valgrind cpulocal {}` did not finish within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap()),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    println!(
        "`valgrind cpulocal {}`: {:.2?}, {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        started.elapsed(),
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// `n` with thousands separators, as the CLI prints it: 8000 -> "8,000".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(d);
    }
    s
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

/// Exit 0 and memcheck's clean summary, or a failure with everything printed.
#[track_caller]
fn assert_clean(o: &Output) {
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_ne!(
        o.status.code(),
        Some(ERROR_EXIT),
        "memcheck reported errors\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        o.status.success(),
        "exit {}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
    assert!(
        err.contains("ERROR SUMMARY: 0 errors from 0 contexts"),
        "no clean memcheck summary\nstderr:\n{err}"
    );
}

/// The status lines valgrind must produce: nobody registered rseq because the
/// (emulated) kernel refused it with ENOSYS, so the fenced engine runs, and
/// without membarrier since no thread runs sections.
#[track_caller]
fn assert_fenced_status(out: &str) {
    for line in [
        "rseq registered by:  nobody: the kernel refused rseq with ENOSYS",
        "engine:              fenced, without membarrier (no thread runs rseq sections)",
        "glibc __rseq_size:   0 (glibc did not register)",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}

#[test]
fn demo_under_memcheck_is_exact_and_fenced() {
    let (threads, ops) = (THREADS.to_string(), OPS.to_string());
    let o = valgrind(&["demo", "--threads", &threads, "--ops", &ops]);
    assert_clean(&o);
    let out = text(&o.stdout);
    let expected = grouped(THREADS * OPS);
    assert!(
        out.contains(&format!("  expected:       {expected}\n")),
        "no expected line for {expected} in:\n{out}"
    );
    assert!(
        out.contains(&format!(" = {expected}  exact (")),
        "the sum is not exact:\n{out}"
    );
    assert!(!out.contains("NOT EXACT"), "{out}");
    // Every operation took the fenced path: no critical section ran.
    assert!(
        out.contains(&format!(
            "paths:          fast 0 (0.0%), retried 0 (0.00%, 0 aborts), fenced {expected} (100.0%)"
        )),
        "not every operation was fenced:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "engine:         fenced (no membarrier) on all {THREADS} threads"
        )),
        "the adding threads did not all run the fenced engine:\n{out}"
    );
}

/// Every structure's stress under memcheck, with a fence storm (remote
/// operations on every CPU): exact invariants, no memory error, and no block
/// definitely lost (`--errors-for-leak-kinds=definite` makes a leak an error,
/// so a structure that forgot a node or a word on drop fails here).
#[test]
fn structures_under_memcheck_are_exact_and_leak_nothing() {
    for test in ["list", "buffer", "memcpy", "lock", "ring"] {
        let threads = THREADS.to_string();
        let o = valgrind_with(
            &["--leak-check=full", "--errors-for-leak-kinds=definite"],
            &[
                "stress",
                "--test",
                test,
                "--threads",
                &threads,
                "--reps",
                "1000",
                "--fence-storm",
            ],
        );
        assert_clean(&o);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(
            out.contains("cpulocal stress (fenced,"),
            "{test}: not the fenced engine:\n{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(test) && l.contains(" ok ")),
            "{test}: no ok line:\n{out}"
        );
        assert!(
            err.contains("definitely lost: 0 bytes in 0 blocks")
                || err.contains("All heap blocks were freed"),
            "{test}: memcheck found a leak:\n{err}"
        );
    }
}

#[test]
fn info_under_memcheck_says_fenced_and_why() {
    let o = valgrind(&["info"]);
    assert_clean(&o);
    assert_fenced_status(text(&o.stdout));
}

#[test]
fn info_json_under_memcheck_says_fenced_and_why() {
    let o = valgrind(&["info", "--json"]);
    assert_clean(&o);
    let out = text(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(out).expect("valid JSON");
    let enosys = i64::from(libc::ENOSYS);
    for (key, want) in [
        ("registration", serde_json::json!("nobody")),
        ("rseq_off", serde_json::json!("refused")),
        ("rseq_off_errno", serde_json::json!(enosys)),
        ("engine", serde_json::json!("fenced")),
        ("fenced_membarrier", serde_json::json!(false)),
        ("glibc_rseq_size", serde_json::json!(0)),
        ("node_id_valid", serde_json::json!(false)),
        ("mm_cid_valid", serde_json::json!(false)),
        ("mm_cid_indexing", serde_json::json!(false)),
    ] {
        assert_eq!(v[key], want, "{key} in:\n{out}");
    }
}
