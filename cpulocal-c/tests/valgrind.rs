//! C callers under valgrind's memcheck: valgrind does not implement rseq,
//! so the library runs the fenced engine by itself, and every result stays
//! exact with zero memcheck errors and no block definitely lost. Runs the
//! API walk-through (`tests/c/api.c`, every function, good and bad
//! arguments) and a small stress (`tests/c/stress.c`: threads, migrations,
//! signal handlers, a concurrent take, the structures), both linked against
//! `libcpulocal.so`, with `--fair-sched=yes` (docs/debugging.md: a thread
//! spinning on a held fence can otherwise starve its holder under valgrind).
//!
//! valgrind is required: if it is missing the tests fail and say so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{compile, require, run, Link, Ran};

/// valgrind's exit status when memcheck found errors.
const ERROR_EXIT: &str = "99";

fn memcheck(exe: &std::path::Path, args: &[&str]) -> Ran {
    require("valgrind", "valgrind");
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=memcheck",
        "--fair-sched=yes",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        &format!("--error-exitcode={ERROR_EXIT}"),
    ])
    .arg(exe)
    .args(args);
    let ran = run(cmd, Duration::from_secs(300));
    assert_ne!(
        ran.status.code(),
        Some(99),
        "memcheck reported errors\n{}",
        ran.dump()
    );
    ran.assert_success();
    assert!(
        ran.stderr
            .contains("ERROR SUMMARY: 0 errors from 0 contexts"),
        "no clean memcheck summary\n{}",
        ran.dump()
    );
    assert!(
        ran.stderr.contains("definitely lost: 0 bytes in 0 blocks")
            || ran.stderr.contains("All heap blocks were freed"),
        "memcheck found a leak\n{}",
        ran.dump()
    );
    assert!(
        ran.stdout.contains("engine: fenced"),
        "not the fenced engine under valgrind\n{}",
        ran.dump()
    );
    ran
}

#[test]
fn api_under_memcheck() {
    let exe = compile("api-valgrind", &["tests/c/api.c"], Link::Shared, &[]);
    let ran = memcheck(&exe, &[]);
    assert!(ran.stdout.contains(", 0 failed"), "{}", ran.dump());
}

#[test]
fn stress_under_memcheck_is_exact() {
    let exe = compile("stress-valgrind", &["tests/c/stress.c"], Link::Shared, &[]);
    let ran = memcheck(&exe, &["4", "2000"]);
    for line in ["counter: added ", "list: ", "buffer: ", "lock: ", "ring: "] {
        let found = ran
            .stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line:?} line\n{}", ran.dump()));
        assert!(
            found.ends_with(": exact") || found.ends_with(": conserved"),
            "{found}\n{}",
            ran.dump()
        );
    }
}
