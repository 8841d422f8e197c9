//! `exec` after using cpulocal: the new image must start clean.
//!
//! At `execve` the kernel forgets the calling thread's rseq registration (and
//! kills the other threads), so the new image's glibc can register rseq again
//! and cpulocal can run its sections there. Had the registration survived,
//! glibc's registration in the new image would fail with EBUSY, or the kernel
//! would write `cpu_id` into the old area's address, now part of a different
//! memory image.
//!
//! A child (this test binary re-run with `--exact exec_child` and
//! `CPULOCAL_EXEC_CHILD` set; without it the child test returns at once)
//! first runs [`THREADS`] threads that add to counters with rseq active and
//! checks the sum; then starts them again, endlessly adding (with `add_on` to
//! other CPUs and a thread calling `take()`, so that fences are taken and held
//! all the time), and calls `execve` from the middle of that:
//!
//! - `reexec`: into this same test binary, in mode `after`, which checks that
//!   `status()` shows rseq registered by glibc and the rseq engine, runs the
//!   threads again and checks the exact sum;
//! - `true`: into `/bin/true`, which must exit 0.
//!
//! libtest runs the child test on a thread of its own, so the exec comes from
//! a thread other than the main one, as it may in a real program.
//!
//! The parent asserts the exit status 0 and the markers of each stage.
#![cfg(target_os = "linux")]

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::{Engine, PerCpuCounter, Registration};

/// Selects the child's mode; absent in the parent and in ordinary test runs.
const CHILD_ENV: &str = "CPULOCAL_EXEC_CHILD";
/// The child test, for `--exact`.
const CHILD_TEST: &str = "exec_child";
/// Printed by the first image after its exact sum, before the exec.
const BEFORE_MARKER: &str = "EXEC BEFORE OK";
/// Printed by the first image just before `execve`.
const EXECVE_MARKER: &str = "EXEC EXECVE";
/// Printed by the re-executed image after its exact sum.
const AFTER_MARKER: &str = "EXEC AFTER OK";

/// Adding threads in each stage.
const THREADS: usize = 4;
/// Operations per thread in a checked stage.
const OPS: u64 = 50_000;
/// Every this many operations one is an `add_on` another CPU (fenced).
const REMOTE_EVERY: u64 = 16;
/// Operations each thread must have done in the endless stage before the
/// exec, so that the exec lands in the middle of busy threads.
const OPS_BEFORE_EXEC: u64 = 20_000;
/// Wall-clock limit for a child (both images), after which it is killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// One thread's adds: `ops` operations of 1 (or until `stop`), one in
/// [`REMOTE_EVERY`] on the next CPU. Counts its operations in `done`, and in
/// `remote` the `add_on`s whose CPU the thread was on neither before nor
/// after the call (one that migrated onto its target meanwhile ran there
/// as a section: seen once in a loaded CI run).
fn adder(
    counter: &PerCpuCounter,
    ops: u64,
    stop: &AtomicBool,
    done: &AtomicU64,
    remote: &AtomicU64,
) {
    let cpus = counter.cpus();
    let mut i = 0;
    while i < ops && !stop.load(Ordering::Relaxed) {
        if i % REMOTE_EVERY == REMOTE_EVERY - 1 {
            let target = (cpulocal::current_cpu() + 1) % cpus;
            counter.add_on(target, 1).expect("a CPU of the counter");
            if cpulocal::current_cpu() != target {
                remote.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            counter.add(1);
        }
        i += 1;
        done.store(i, Ordering::Relaxed);
    }
}

/// Asserts the calling thread runs the rseq engine on glibc's registration,
/// or on cpulocal's own where glibc registers none (glibc 2.36 on riscv64).
fn assert_rseq_by_glibc(who: &str) {
    let s = cpulocal::status();
    let by = if s.glibc_rseq_size == Some(0) {
        Registration::Cpulocal
    } else {
        Registration::Glibc
    };
    assert!(
        s.registration == by && s.engine == Engine::Rseq,
        "{who}: expected rseq registered by {by:?} and the rseq engine, got:\n{s}"
    );
}

/// [`THREADS`] threads × [`OPS`] adds, with rseq checked on each thread; the
/// counter must hold exactly their sum. Returns the sum.
fn checked_stage(who: &'static str) -> i64 {
    let counter = Arc::new(PerCpuCounter::new());
    let never = Arc::new(AtomicBool::new(false));
    let remote = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (counter, never, remote) = (counter.clone(), never.clone(), remote.clone());
            thread::spawn(move || {
                assert_rseq_by_glibc(who);
                adder(&counter, OPS, &never, &AtomicU64::new(0), &remote);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("an adding thread panicked");
    }
    let expected = (THREADS as u64 * OPS) as i64;
    let sum = counter.sum();
    let stats = counter.stats();
    println!("{who}: sum {sum} of {expected}, {stats:?}");
    assert_eq!(sum, expected, "{who}: the counter lost or duplicated adds");
    let remote = remote.load(Ordering::Relaxed);
    assert!(
        remote > 0 && stats.fenced >= remote,
        "{who}: every add_on another CPU must be fenced: {remote} such, {stats:?}"
    );
    sum
}

/// Starts [`THREADS`] endless adders and a `take()` loop on one counter,
/// waits until each adder did [`OPS_BEFORE_EXEC`] operations, and returns
/// with all of them still running.
fn start_busy_threads() {
    let counter: &'static PerCpuCounter = Box::leak(Box::new(PerCpuCounter::new()));
    let never: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let done: &'static [AtomicU64] = Box::leak((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    for d in done {
        thread::spawn(move || adder(counter, u64::MAX, never, d, &AtomicU64::new(0)));
    }
    thread::spawn(move || loop {
        counter.take();
        std::hint::spin_loop();
    });
    let deadline = Instant::now() + CHILD_TIMEOUT / 2;
    while done
        .iter()
        .any(|d| d.load(Ordering::Relaxed) < OPS_BEFORE_EXEC)
    {
        assert!(
            Instant::now() < deadline,
            "the busy threads did not get going"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn cstring(s: &OsStr) -> CString {
    CString::new(s.as_bytes()).expect("no NUL in arguments or environment")
}

/// `execve(path, argv, environment with CHILD_ENV set to `mode`)`; returns
/// only on failure, by panicking.
fn exec(path: &OsStr, argv: &[&OsStr], mode: Option<&str>) -> ! {
    let path = cstring(path);
    let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != CHILD_ENV)
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect();
    if let Some(mode) = mode {
        envp.push(CString::new(format!("{CHILD_ENV}={mode}")).unwrap());
    }
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    println!("{EXECVE_MARKER} {}", path.to_string_lossy());
    std::io::stdout().flush().expect("flush stdout");
    // SAFETY: `path` is a NUL-terminated string; `argv_ptrs` and `envp_ptrs`
    // are NULL-terminated arrays of pointers to NUL-terminated strings, all
    // alive across the call. On success the call does not return.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    panic!(
        "execve {path:?} failed: {}",
        std::io::Error::last_os_error()
    );
}

/// The child, in every mode; a no-op unless `CHILD_ENV` is set.
#[test]
fn exec_child() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    match mode.to_str() {
        Some(m @ ("reexec" | "true")) => {
            assert_rseq_by_glibc("before exec (test thread)");
            let sum = checked_stage("before exec");
            println!("{BEFORE_MARKER} {sum}");
            start_busy_threads();
            if m == "true" {
                exec(OsStr::new("/bin/true"), &[OsStr::new("true")], None);
            }
            let exe = std::env::current_exe().expect("the test binary's path");
            exec(
                exe.as_os_str(),
                &[
                    exe.as_os_str(),
                    OsStr::new("--exact"),
                    OsStr::new(CHILD_TEST),
                    OsStr::new("--nocapture"),
                    OsStr::new("--test-threads=1"),
                ],
                Some("after"),
            );
        }
        Some("after") => {
            let status = cpulocal::status();
            println!("after exec, the test thread's status:\n{status}");
            assert_rseq_by_glibc("after exec (test thread)");
            let sum = checked_stage("after exec");
            println!("{AFTER_MARKER} {sum}");
        }
        _ => panic!("unknown {CHILD_ENV}={mode:?}"),
    }
}

/// Runs the child in `mode`; returns its exit code and output, or panics if
/// it has not exited within [`CHILD_TIMEOUT`].
fn run_child(mode: &str) -> (Option<i32>, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test binary");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the {mode} child did not exit within {CHILD_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let log = format!(
        "stdout:\n{}\nstderr:\n{}",
        out.join().unwrap(),
        err.join().unwrap()
    );
    println!("{mode} child ({:.2?}): {status}\n{log}", started.elapsed());
    (status.code(), log)
}

#[test]
fn reexec_after_use_runs_rseq_again_with_exact_sums() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (code, log) = run_child("reexec");
    assert_eq!(code, Some(0), "the re-executed child failed\n{log}");
    let expected = THREADS as u64 * OPS;
    for marker in [
        format!("{BEFORE_MARKER} {expected}"),
        format!("{EXECVE_MARKER} "),
        format!("{AFTER_MARKER} {expected}"),
        "test result: ok. 1 passed".to_owned(),
    ] {
        assert!(log.contains(&marker), "no {marker:?} in the output\n{log}");
    }
}

#[test]
fn exec_of_another_program_after_use_succeeds() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (code, log) = run_child("true");
    assert_eq!(code, Some(0), "the child or /bin/true failed\n{log}");
    let expected = THREADS as u64 * OPS;
    for marker in [
        format!("{BEFORE_MARKER} {expected}"),
        format!("{EXECVE_MARKER} /bin/true"),
    ] {
        assert!(log.contains(&marker), "no {marker:?} in the output\n{log}");
    }
    // /bin/true replaced the test harness before it could report.
    assert!(
        !log.contains("test result:"),
        "the exec did not happen\n{log}"
    );
}
