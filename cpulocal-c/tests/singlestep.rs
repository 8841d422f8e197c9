//! Forward progress under a debugger, from C: a C program
//! (`tests/c/singlestep.c`) single-stepped with `PTRACE_SINGLESTEP` through
//! `cpulocal_counter_add`, `cpulocal_counter_add_on` and
//! `cpulocal_percpu_addv` completes every call, each by the fenced path after
//! `CPULOCAL_RSEQ_ATTEMPTS` aborted sections; the same driver on a
//! hand-written C rseq add retried until it commits (`c/rseq_add.h`) never
//! gets through it.
//!
//! The approach of `cpulocal/tests/singlestep.rs`: the child stops itself
//! with `SIGSTOP` after `PTRACE_TRACEME`, raises `SIGUSR1` after each
//! operation and `SIGUSR2` at the end; this test steps it from the first
//! marker to the last, counting steps per operation, and calls an operation
//! that takes more than [`STEP_BUDGET`] steps a livelock.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{compile, Link};

/// Steps one operation may take before it is called a livelock (an
/// operation takes a few hundred).
const STEP_BUDGET: u64 = 50_000;
/// Empty segments at the start of the child's plan (a marker's own cost).
const BASELINE: usize = 4;
/// Operations in the counter child's plan after them.
const OPS: usize = 48 + 8;
/// Wall-clock limit for a child.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How stepping ended.
enum End {
    /// The end marker: steps per segment.
    Completed(Vec<u64>),
    /// One segment exceeded the budget.
    Livelock(u64),
}

fn ptrace(req: libc::c_uint, pid: libc::pid_t, data: usize) {
    // SAFETY: these requests (SETOPTIONS, SINGLESTEP, CONT, DETACH) take no
    // pointers: `addr` is ignored and `data` is an option mask or a signal.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    };
    assert_ne!(r, -1, "ptrace({req}): {}", std::io::Error::last_os_error());
}

fn wait_stop(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live c_int.
        if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } == pid {
            assert!(
                libc::WIFSTOPPED(status),
                "the traced child ended (status {status:#x}) while stepped"
            );
            return libc::WSTOPSIG(status);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR), "waitpid: {e}");
    }
}

/// The child, started; killed if the test fails before it ends.
struct Tracee {
    child: Child,
    pid: libc::pid_t,
    lines: mpsc::Receiver<String>,
    done: bool,
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Tracee {
    /// Starts `exe mode` and waits for its first stop (it reports its thread
    /// id first: the main thread, which is the process).
    /// None if the child reports that glibc did not register rseq (then it
    /// exits without being traced).
    fn start(exe: &std::path::Path, mode: &str) -> Option<Tracee> {
        let mut child = Command::new(exe)
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the child");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the child's thread id");
        if line.starts_with("CPULOCAL-SINGLESTEP-NO-RSEQ") {
            let status = child.wait().expect("waiting for the child");
            assert!(status.success(), "the child failed: {status}");
            return None;
        }
        assert!(
            line.starts_with("CPULOCAL-SINGLESTEP-TID "),
            "unexpected first line: {line}"
        );
        assert_eq!(wait_stop(pid), libc::SIGSTOP, "expected the start marker");
        ptrace(
            libc::PTRACE_SETOPTIONS,
            pid,
            libc::PTRACE_O_EXITKILL as usize,
        );
        Some(Tracee {
            child,
            pid,
            lines,
            done: false,
        })
    }

    /// Steps to the end marker, suppressing every signal.
    fn step(&mut self) -> End {
        let started = Instant::now();
        let (mut segments, mut steps) = (Vec::new(), 0u64);
        loop {
            ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0);
            match wait_stop(self.pid) {
                libc::SIGTRAP => steps += 1,
                libc::SIGUSR1 => segments.push(std::mem::take(&mut steps)),
                libc::SIGUSR2 => {
                    segments.push(steps);
                    return End::Completed(segments);
                }
                sig => panic!("unexpected stop by signal {sig} while stepping"),
            }
            if steps > STEP_BUDGET {
                return End::Livelock(steps);
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "stepping took longer than {TIMEOUT:?}"
            );
        }
    }

    /// Runs freely to the end marker.
    fn cont(&mut self) {
        loop {
            ptrace(libc::PTRACE_CONT, self.pid, 0);
            if wait_stop(self.pid) == libc::SIGUSR2 {
                return;
            }
        }
    }

    /// Detaches from the end marker's stop and waits for the exit; returns
    /// the exit status, stdout and the stderr lines.
    fn finish(mut self) -> (std::process::ExitStatus, String, Vec<String>) {
        ptrace(libc::PTRACE_DETACH, self.pid, 0);
        let mut stdout = String::new();
        use std::io::Read;
        let _ = self
            .child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout);
        let status = self.child.wait().expect("waiting for the child");
        self.done = true;
        let stderr = self.lines.try_iter().collect();
        (status, stdout, stderr)
    }
}

/// The child program, compiled once for both tests.
fn child() -> &'static std::path::Path {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| compile("singlestep", &["tests/c/singlestep.c"], Link::Shared, &[]))
}

#[test]
fn singlestepped_c_calls_complete() {
    let exe = child();
    let mut t = Tracee::start(exe, "counter").expect("the counter child is always traced");
    let started = Instant::now();
    let segments = match t.step() {
        End::Completed(s) => s,
        End::Livelock(steps) => panic!("livelock: {steps} steps without completing an operation"),
    };
    let took = started.elapsed();
    let (status, stdout, stderr) = t.finish();
    let output = format!("stdout:\n{stdout}\nstderr:\n{}", stderr.join("\n"));
    println!("{output}");
    assert!(status.success(), "the child failed ({status}):\n{output}");
    assert_eq!(
        segments.len(),
        BASELINE + OPS + 1,
        "markers out of step: {segments:?}"
    );
    let marker = *segments[..BASELINE].iter().min().expect("baseline");
    let mut net: Vec<u64> = segments[BASELINE..BASELINE + OPS]
        .iter()
        .map(|s| s.saturating_sub(marker))
        .collect();
    net.sort_unstable();
    let total: u64 = segments.iter().sum();
    println!(
        "{OPS} C calls single-stepped: steps per call min {} median {} max {}; \
         {total} steps in {took:.2?}",
        net[0],
        net[net.len() / 2],
        net[net.len() - 1]
    );
    assert!(net.iter().all(|&n| n > 0 && n < STEP_BUDGET), "{net:?}");
}

/// The contrast: the hand-written C rseq add, retried until it commits,
/// exhausts the budget on one call; released with `PTRACE_CONT`, it commits
/// at once.
#[cfg(target_arch = "x86_64")]
#[test]
fn singlestepped_hand_written_rseq_add_never_completes() {
    let exe = child();
    let Some(mut t) = Tracee::start(exe, "bare") else {
        println!(
            "skipped: glibc did not register rseq, so there is no hand-written section to step"
        );
        return;
    };
    let steps = match t.step() {
        End::Livelock(steps) => steps,
        End::Completed(s) => panic!(
            "the hand-written section committed while single-stepped ({s:?}): a stop inside a \
             section no longer aborts it, so the other test proves nothing"
        ),
    };
    t.cont();
    let (status, stdout, stderr) = t.finish();
    let output = format!("stdout:\n{stdout}\nstderr:\n{}", stderr.join("\n"));
    println!("livelock caught after {steps} steps; released:\n{output}");
    assert!(status.success(), "the child failed ({status}):\n{output}");
}
