//! Degraded modes, each in a child process: the same test binary re-executed
//! with `--exact <child test>` and `CPULOCAL_DEGRADED_MODE` naming the mode.
//!
//! | mode | how | expected engine |
//! |------|-----|-----------------|
//! | `rseq_enosys` | seccomp: rseq -> ENOSYS from exec | nobody (refused ENOSYS), fenced without membarrier |
//! | `rseq_missing_late` | threads created while their creator's glibc rseq is unregistered get `cpu_id` = -2 | those threads fenced *with* membarrier, the others rseq |
//! | `glibc_rseq_off` | `GLIBC_TUNABLES=glibc.pthread.rseq=0` | cpulocal registers its own area; 10,000 short-lived threads |
//! | `membarrier_eperm` | seccomp: membarrier -> EPERM from exec | nobody (no membarrier), fenced without membarrier |
//!
//! Why `rseq_missing_late` does not install a seccomp filter after start-up:
//! glibc 2.35+ makes a failed rseq registration of a new thread fatal when its
//! creator has rseq ("Fatal glibc error: rseq registration failed", SIGABRT),
//! so that cannot produce threads with `cpu_id` = -2. glibc's `pthread_create`
//! inherits the creator's registration state instead: a thread created by a
//! thread without rseq gets `cpu_id` = -2 without trying, which is the state
//! [`RseqOff::GlibcFailedForThread`] covers.
//!
//! Each child asserts the status it expects, then runs the exact-sum stress.
//! The parent asserts the child ran its test and exited 0, and prints the
//! child's output when it did not. Children run one at a time (each stress
//! wants the machine to itself).
//!
//! The filters are built with seccompiler, which knows x86_64, aarch64 and
//! riscv64 only; on other targets this file is empty.

#![cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::{Engine, Errno, PerCpuCounter, Registration, RseqOff};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// Names the mode a child runs; child tests do nothing without it.
const MODE_ENV: &str = "CPULOCAL_DEGRADED_MODE";
/// Printed by a child that completed its mode, checked by the parent.
const DONE_MARKER: &str = "CPULOCAL-DEGRADED-CHILD-DONE";

// ---------------------------------------------------------------------------
// Parent side.

/// A filter that fails `syscall` with `errno` and allows everything else.
fn deny(syscall: libc::c_long, errno: i32) -> BpfProgram {
    let filter = SeccompFilter::new(
        [(syscall, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("seccompiler supports this architecture"),
    )
    .expect("a valid filter");
    filter.try_into().expect("the filter compiles to BPF")
}

/// Installs `prog` on the calling thread. Only async-signal-safe calls: it
/// runs in the forked child before exec.
fn install_filter_raw(prog: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        // seccompiler's sock_filter is #[repr(C)] with the kernel's layout,
        // the same as libc's.
        filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `fprog` points to `prog`, alive for the call; the kernel copies
    // the program and does not write to it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `test` in a child process in `mode`, with `filter` installed from
/// exec (built here, only applied in the child) and `env` added. Panics with
/// the child's output unless it ran the test and exited 0.
fn run_child(mode: &str, test: &str, filter: Option<BpfProgram>, env: &[(&str, &str)]) {
    static ONE_CHILD_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_CHILD_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(MODE_ENV, mode)
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(prog) = filter {
        // SAFETY: the closure runs between fork and exec; it only calls
        // prctl and seccomp (async-signal-safe) on a program built before the
        // fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || install_filter_raw(&prog));
        }
    }
    let mut child = cmd.spawn().expect("spawning the child test process");
    let pipe_reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = pipe_reader(Box::new(child.stdout.take().unwrap()));
    let err = pipe_reader(Box::new(child.stderr.take().unwrap()));

    let timeout = Duration::from_secs_f64(300.0 * common::scale().max(1.0));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill(); // our own child, by its handle
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let show = || format!("--- child stdout ---\n{out}\n--- child stderr ---\n{err}\n---");
    let Some(status) = status else {
        panic!(
            "child `{mode}` did not finish within {timeout:?} (killed)\n{}",
            show()
        );
    };
    assert!(
        status.success(),
        "child `{mode}` failed: {status}\n{}",
        show()
    );
    assert!(
        out.contains(&format!("{DONE_MARKER} {mode}")) && out.contains("1 passed"),
        "child `{mode}` exited 0 but did not run its test to the end\n{}",
        show()
    );
    // The child's own report, for the log.
    for line in out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with('[') || l.starts_with("churn"))
    {
        eprintln!("child {mode}: {line}");
    }
    eprintln!("child `{mode}` passed in {:.2?}", started.elapsed());
}

#[test]
fn rseq_blocked_by_seccomp_from_start() {
    run_child(
        "rseq_enosys",
        "child_rseq_enosys",
        Some(deny(libc::SYS_rseq, libc::ENOSYS)),
        &[],
    );
}

#[test]
fn rseq_missing_on_threads_created_later() {
    // SAFETY: glibc >= 2.35 defines it, written once before main.
    if unsafe { __rseq_size } == 0 {
        // The state this mode makes (glibc's registration of a new thread
        // failed while the process has rseq) needs a glibc that registers
        // rseq, which 2.36 on riscv64 does not.
        eprintln!("glibc registers no rseq area here: no such state to test");
        return;
    }
    run_child("rseq_missing_late", "child_rseq_missing_late", None, &[]);
}

#[test]
fn glibc_rseq_tunable_off() {
    run_child(
        "glibc_rseq_off",
        "child_glibc_rseq_off",
        None,
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
    );
}

#[test]
fn membarrier_blocked_by_seccomp_from_start() {
    run_child(
        "membarrier_eperm",
        "child_membarrier_eperm",
        Some(deny(libc::SYS_membarrier, libc::EPERM)),
        &[],
    );
}

#[test]
fn rseq_disabled_by_environment() {
    run_child(
        "no_rseq_env",
        "child_no_rseq_env",
        None,
        &[("CPULOCAL_NO_RSEQ", "1")],
    );
}

// ---------------------------------------------------------------------------
// Child side.

/// Whether this process is the child for `mode`.
fn is_child(mode: &str) -> bool {
    std::env::var(MODE_ENV).is_ok_and(|m| m == mode)
}

fn done(mode: &str) {
    println!("{DONE_MARKER} {mode}");
}

/// `status()` taken on a new thread.
fn status_on_new_thread() -> cpulocal::Status {
    thread::spawn(cpulocal::status).join().unwrap()
}

/// Every operation of the run took the fenced path (no thread has sections).
fn assert_all_fenced(out: &common::Outcome) {
    assert_eq!(
        out.stats.fenced,
        out.total_ops(),
        "without rseq every operation must take the fenced path: {out}"
    );
    assert_eq!(
        (out.stats.retried, out.stats.aborts),
        (0, 0),
        "no critical section can abort without rseq: {out}"
    );
}

/// Both paths ran (rseq engine).
fn assert_both_paths(out: &common::Outcome) {
    assert!(out.stats.fenced > 0, "no fenced operation: {out}");
    assert!(
        out.stats.fenced < out.total_ops(),
        "no operation committed on the rseq fast path: {out}"
    );
}

#[test]
#[ignore = "runs in a child process started by rseq_blocked_by_seccomp_from_start"]
fn child_rseq_enosys() {
    const MODE: &str = "rseq_enosys";
    if !is_child(MODE) {
        return;
    }
    for s in [cpulocal::status(), status_on_new_thread()] {
        println!("{s}");
        assert_eq!(
            s.registration,
            Registration::Nobody(RseqOff::Refused(Errno(libc::ENOSYS))),
            "{s}"
        );
        assert_eq!(
            s.fenced_because,
            Some(RseqOff::Refused(Errno(libc::ENOSYS))),
            "{s}"
        );
        assert_eq!(s.engine, Engine::Fenced { membarrier: false }, "{s}");
        assert_eq!(s.glibc_rseq_size, Some(0), "glibc could not register: {s}");
    }
    let out = common::stress(&common::Cfg::full(MODE));
    assert_all_fenced(&out);
    done(MODE);
}

// glibc publishes where its per-thread rseq area is (>= 2.35).
extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The signature glibc registers with.
#[cfg(target_arch = "x86_64")]
const RSEQ_SIG: u32 = 0x5305_3053;
#[cfg(target_arch = "aarch64")]
const RSEQ_SIG: u32 = 0xd428_bc00;
#[cfg(target_arch = "riscv64")]
const RSEQ_SIG: u32 = 0xf140_1073;
/// The length glibc 2.35+ registers its area with (`sizeof(struct rseq_area)`,
/// although it publishes `__rseq_size` = 20 up to 2.39).
const GLIBC_RSEQ_LEN: u32 = 32;

/// The calling thread's glibc rseq area.
fn glibc_area() -> *mut libc::c_void {
    // SAFETY: glibc >= 2.35 defines both symbols (checked: __rseq_size != 0),
    // written once before main and read-only after.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    assert_ne!(size, 0, "glibc did not register rseq");
    let tp: *mut u8;
    // SAFETY: on x86_64 Linux fs:0 holds the thread pointer (TCB address).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly))
    };
    // SAFETY: reading tpidr_el0 is valid for any aarch64 Linux thread.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem))
    };
    // SAFETY: reading tp is valid for any riscv64 Linux thread.
    #[cfg(target_arch = "riscv64")]
    unsafe {
        core::arch::asm!("mv {}, tp", out(reg) tp, options(nostack, nomem))
    };
    tp.wrapping_offset(offset).cast()
}

fn rseq_syscall(flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the area is glibc's area of the calling thread, live as long as
    // the thread; (un)registering it with glibc's own length and signature is
    // what glibc itself does.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            glibc_area(),
            GLIBC_RSEQ_LEN,
            flags,
            RSEQ_SIG,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unregisters the calling thread's glibc rseq area. glibc then creates
/// threads without rseq: `pthread_create` inherits the creator's registration
/// state, and a thread created by an unregistered thread gets
/// `cpu_id` = -2 (RSEQ_CPU_ID_REGISTRATION_FAILED).
fn unregister_glibc_rseq() {
    rseq_syscall(1 /* RSEQ_FLAG_UNREGISTER */).expect("unregistering glibc's rseq area");
}

/// Registers the calling thread's glibc area again.
fn reregister_glibc_rseq() {
    rseq_syscall(0).expect("registering glibc's rseq area again");
}

#[test]
#[ignore = "runs in a child process started by rseq_missing_on_threads_created_later"]
fn child_rseq_missing_late() {
    const MODE: &str = "rseq_missing_late";
    if !is_child(MODE) {
        return;
    }
    // glibc registered this thread at its creation; cpulocal sets up here.
    let before = cpulocal::status();
    println!("{before}");
    assert_eq!(before.registration, Registration::Glibc, "{before}");
    assert_eq!(before.engine, Engine::Rseq, "{before}");

    // A thread created while its creator is unregistered has no rseq while the
    // rest of the process has it (__rseq_size != 0).
    unregister_glibc_rseq();
    let new = thread::spawn(cpulocal::status);
    reregister_glibc_rseq();
    let new = new.join().unwrap();
    println!("new thread:\n{new}");
    assert_eq!(
        new.registration,
        Registration::Nobody(RseqOff::GlibcFailedForThread),
        "{new}"
    );
    assert_eq!(
        new.engine,
        Engine::Fenced { membarrier: true },
        "a thread without rseq in a process with sections must fence with membarrier: {new}"
    );
    let after = cpulocal::status();
    assert_eq!(after.registration, Registration::Glibc, "{after}");
    assert_eq!(after.engine, Engine::Rseq, "{after}");

    // Workers (and the handlers, which run on them) are created while this
    // thread is unregistered, so they have no rseq: every one of their
    // operations is fenced, with membarrier. This thread, registered again,
    // keeps running critical sections (main_adds) on the same slots.
    let mut cfg = common::Cfg::full(MODE);
    cfg.around_worker_spawn = Some(common::AroundSpawn {
        before: unregister_glibc_rseq,
        after: reregister_glibc_rseq,
    });
    assert!(cfg.main_adds);
    let out = common::stress(&cfg);
    assert!(
        out.stats.fenced >= out.worker_ops + out.handler_ops,
        "threads without rseq must take the fenced path for every operation: {out}"
    );
    assert!(
        out.stats.fenced < out.total_ops(),
        "the original thread (rseq) never committed a section: {out}"
    );
    assert_eq!(cpulocal::status().engine, Engine::Rseq);
    done(MODE);
}

/// Threads in all for the churn of `glibc_rseq_off`.
const CHURN_THREADS: usize = 10_000;
/// Threads alive at once in the churn.
const CHURN_BATCH: usize = 100;

#[test]
#[ignore = "runs in a child process started by glibc_rseq_tunable_off"]
fn child_glibc_rseq_off() {
    const MODE: &str = "glibc_rseq_off";
    if !is_child(MODE) {
        return;
    }
    for s in [cpulocal::status(), status_on_new_thread()] {
        println!("{s}");
        assert_eq!(s.registration, Registration::Cpulocal, "{s}");
        assert_eq!(s.engine, Engine::Rseq, "{s}");
        assert_eq!(s.glibc_rseq_size, Some(0), "{s}");
    }

    // Thread churn: every thread registers its own area on its first
    // operation and must unregister it when it exits, while a fence storm
    // runs membarrier(RSEQ) against the dying threads.
    let counter = Arc::new(PerCpuCounter::new());
    let cpus = counter.cpus();
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let (counter, stop) = (counter.clone(), stop.clone());
        thread::spawn(move || {
            let mut taken = 0i64;
            while !stop.load(SeqCst) {
                taken = taken.wrapping_add(counter.take());
                thread::sleep(Duration::from_micros(50));
            }
            taken
        })
    };
    let started = Instant::now();
    let seed = common::seed();
    let mut expected = 0i64;
    for batch in 0..CHURN_THREADS / CHURN_BATCH {
        let threads: Vec<_> = (0..CHURN_BATCH)
            .map(|i| {
                let counter = counter.clone();
                let seed = seed ^ ((batch * CHURN_BATCH + i) as u64).wrapping_mul(0x9e37_79b9);
                thread::spawn(move || {
                    let reg = cpulocal::status().registration;
                    let mut rng = SmallRng::seed_from_u64(seed);
                    let mut tally = 0i64;
                    for _ in 0..2 {
                        let (a, b) = (rng.random_range(-50..=50), rng.random_range(-50..=50));
                        counter.add(a);
                        counter
                            .add_on(rng.random_range(0..cpus), b)
                            .expect("a CPU of the counter");
                        tally = tally.wrapping_add(a).wrapping_add(b);
                    }
                    (reg, tally)
                })
            })
            .collect();
        for t in threads {
            let (reg, tally) = t.join().expect("a churn thread panicked");
            assert_eq!(
                reg,
                Registration::Cpulocal,
                "a short-lived thread was not registered by cpulocal (batch {batch})"
            );
            expected = expected.wrapping_add(tally);
        }
    }
    stop.store(true, SeqCst);
    let taken = storm.join().expect("the take() thread panicked");
    let remaining = counter.sum();
    println!(
        "churn: {CHURN_THREADS} threads in {:.2?}, taken {taken}, sum {remaining}, expected {expected}, stats {:?}",
        started.elapsed(),
        counter.stats()
    );
    assert_eq!(
        taken.wrapping_add(remaining),
        expected,
        "exact-sum invariant broken under thread churn: taken + sum() != what the \
         {CHURN_THREADS} threads added (difference {}), seed {seed}",
        taken.wrapping_add(remaining).wrapping_sub(expected)
    );

    let out = common::stress(&common::Cfg::full(MODE));
    assert_both_paths(&out);
    done(MODE);
}

#[test]
#[ignore = "runs in a child process started by membarrier_blocked_by_seccomp_from_start"]
fn child_membarrier_eperm() {
    const MODE: &str = "membarrier_eperm";
    if !is_child(MODE) {
        return;
    }
    for s in [cpulocal::status(), status_on_new_thread()] {
        println!("{s}");
        // glibc did register rseq (where it does); cpulocal may not use it,
        // and registers no area of its own for sections that cannot run.
        let by = if s.glibc_rseq_size == Some(0) {
            Registration::Nobody(RseqOff::NoMembarrier(Errno(libc::EPERM)))
        } else {
            Registration::Glibc
        };
        assert_eq!(s.registration, by, "{s}");
        assert_eq!(
            s.fenced_because,
            Some(RseqOff::NoMembarrier(Errno(libc::EPERM))),
            "{s}"
        );
        assert_eq!(s.engine, Engine::Fenced { membarrier: false }, "{s}");
        assert_eq!(s.membarrier_rseq, Err(Errno(libc::EPERM)), "{s}");
    }
    let out = common::stress(&common::Cfg::full(MODE));
    assert_all_fenced(&out);
    done(MODE);
}

#[test]
#[ignore = "runs in a child process started by rseq_disabled_by_environment"]
fn child_no_rseq_env() {
    const MODE: &str = "no_rseq_env";
    if !is_child(MODE) {
        return;
    }
    for s in [cpulocal::status(), status_on_new_thread()] {
        println!("{s}");
        assert_eq!(s.fenced_because, Some(cpulocal::RseqOff::Disabled), "{s}");
        assert_eq!(s.engine, cpulocal::Engine::Fenced { membarrier: false });
        assert!(!s.mm_cid_indexing);
    }
    let out = common::stress(&common::Cfg::full("stress/CPULOCAL_NO_RSEQ"));
    assert_all_fenced(&out);
    done(MODE);
}
