//! `cpulocal step`: why the fenced fallback exists, shown with a debugger's
//! own tool.
//!
//! The command re-runs this binary as a child (the hidden `__step-child`
//! subcommand) and single-steps it with `PTRACE_SINGLESTEP` through N
//! operations. Every step is a trap, every trap a ptrace stop, and a stop
//! inside an rseq critical section aborts it: a section never commits while
//! single-stepped. `PerCpuCounter::add` gives up after `RSEQ_ATTEMPTS` aborts
//! and takes the fenced path, which is ordinary code, so every operation
//! completes in a few hundred steps. With `--no-fallback` the child runs a
//! bare rseq add that retries until it commits (the C baseline of this crate,
//! no fallback, as librseq users write it): its first operation never
//! completes, and a step budget catches the livelock. The child is then
//! released with `PTRACE_CONT` and finishes at once.
//!
//! The protocol (as in the library's `tests/singlestep.rs`): the child pins
//! itself to one CPU, warms up, calls `PTRACE_TRACEME` and stops itself with
//! `SIGSTOP` (start); after each operation it sends itself `SIGUSR1` (one
//! `tgkill`), and `SIGUSR2` at the end. The parent counts steps between
//! markers, suppresses the markers, detaches at the end, and reads the
//! child's own account (exact sum, path statistics) from its stdout. A
//! watchdog kills a child that hangs.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use cpulocal::{Engine, PerCpuCounter, RSEQ_ATTEMPTS};

use super::{grouped, Failure, StepArgs, StepChildArgs};

/// Operations stepped by default.
pub const DEFAULT_OPS: u64 = 32;

/// Steps one operation may take by default before it is called a livelock:
/// a fenced `add` takes a few hundred.
pub const DEFAULT_BUDGET: u64 = 50_000;

/// Marker-only segments before the operations: the steps a marker costs.
const BASELINE_SEGMENTS: usize = 4;

/// Wall-clock limit for the child, after which a watchdog kills it (a hang
/// of the harness; a livelock is caught by the step budget first).
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The hidden subcommand the child runs.
pub const CHILD_COMMAND: &str = "__step-child";

/// Prefix of the child's report line on stdout.
const REPORT_LINE: &str = "CPULOCAL-STEP-CHILD ";

/// What the child tells the parent after it was released (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    /// "rseq" or "fenced": cpulocal's engine on the stepped thread.
    engine: String,
    /// The CPU the child pinned itself to.
    cpu: usize,
    /// Counter sum (or bare slots' sum) of the stepped operations.
    sum: i64,
    /// What the sum must be: one per operation.
    expected_sum: i64,
    /// Aborted critical sections during the stepped operations.
    aborts: u64,
    /// `PathStats::retried` delta (counter only).
    retried: Option<u64>,
    /// `PathStats::fenced` delta (counter only).
    fenced: Option<u64>,
    /// Critical-section attempts of the first operation (bare loop only).
    first_op_attempts: Option<u64>,
}

// ---------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------

/// The child: pins, warms up, becomes a tracee, runs the stepped operations
/// between markers, then prints its report.
pub fn child(out: &mut impl Write, args: &StepChildArgs) -> Result<(), Failure> {
    let allowed = cpulocal_cli::runner::allowed_cpus()
        .map_err(|e| Failure::Broken(format!("step child: cannot read its CPUs: {e}")))?;
    let cpu = allowed[0];
    cpulocal_cli::runner::pin_current_thread(cpu)
        .map_err(|e| Failure::Broken(format!("step child: cannot pin to CPU {cpu}: {e}")))?;
    // SAFETY: sched_yield has no preconditions; it lets the pin take effect.
    unsafe { libc::sched_yield() };
    let report = if args.no_fallback {
        bare_child(args.ops, cpu)?
    } else {
        counter_child(args.ops, cpu)?
    };
    let line = serde_json::to_string(&report)
        .map_err(|e| Failure::Broken(format!("step child: cannot encode its report: {e}")))?;
    writeln!(out, "{REPORT_LINE}{line}")?;
    Ok(())
}

/// Signals to the stepped thread itself, one `tgkill` each, so that a marker
/// costs only a few instructions.
#[derive(Clone, Copy)]
struct Marker {
    pid: libc::pid_t,
    tid: libc::pid_t,
}

impl Marker {
    #[inline(never)]
    fn raise(self, sig: libc::c_int) {
        // SAFETY: tgkill takes no pointers. The signal is directed at this
        // thread, which is traced: it stops in signal-delivery-stop and the
        // parent suppresses it (it is never delivered).
        unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.tid, sig) };
    }
}

/// Makes the calling thread a tracee of the parent and stops; returns when
/// the parent steps or continues it.
fn become_tracee() -> Result<Marker, Failure> {
    // SAFETY: PTRACE_TRACEME takes no pointers; it only makes the parent this
    // thread's tracer.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_TRACEME,
            0,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if r != 0 {
        return Err(Failure::Broken(format!(
            "step child: PTRACE_TRACEME failed ({}); is cpulocal itself being traced?",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: getpid and gettid have no arguments and cannot fail.
    let marker = unsafe {
        Marker {
            pid: libc::getpid(),
            tid: libc::gettid(),
        }
    };
    marker.raise(libc::SIGSTOP);
    Ok(marker)
}

/// cpulocal's engine on the calling thread: "rseq" or "fenced".
fn engine_name() -> &'static str {
    match cpulocal::status().engine {
        Engine::Rseq => "rseq",
        _ => "fenced",
    }
}

fn counter_child(ops: u64, cpu: usize) -> Result<ChildReport, Failure> {
    let c = PerCpuCounter::new();
    // Warm up: thread set-up, engine decision, every slot's first fence.
    for _ in 0..1000 {
        c.add(1);
    }
    for other in 0..c.cpus() {
        c.add_on(other, 1).expect("a CPU of the counter");
    }
    c.take();
    let engine = engine_name();
    let before = c.stats();

    let marker = become_tracee()?; // stepping starts here
    for _ in 0..BASELINE_SEGMENTS {
        marker.raise(libc::SIGUSR1);
    }
    for _ in 0..ops {
        c.add(1);
        marker.raise(libc::SIGUSR1);
    }
    marker.raise(libc::SIGUSR2); // and ends here

    let after = c.stats();
    Ok(ChildReport {
        engine: engine.into(),
        cpu,
        sum: c.sum(),
        expected_sum: ops as i64,
        aborts: after.aborts - before.aborts,
        retried: Some(after.retried - before.retried),
        fenced: Some(after.fenced - before.fenced),
        first_op_attempts: None,
    })
}

#[cfg(cpulocal_c_baseline)]
fn bare_child(ops: u64, cpu: usize) -> Result<ChildReport, Failure> {
    use cpulocal_cli::baseline::{self, CSlots};
    if !baseline::rseq_available() {
        return Err(Failure::Broken(NO_BARE.into()));
    }
    let slots = CSlots::new();
    let warm = 10_000;
    slots
        .add_loop(warm)
        .map_err(|e| Failure::Broken(e.to_string()))?;

    let marker = become_tracee()?;
    for _ in 0..BASELINE_SEGMENTS {
        marker.raise(libc::SIGUSR1);
    }
    let mut aborts = 0;
    let mut first = None;
    for _ in 0..ops {
        // One add, retried in C until it commits: no fallback.
        let a = slots.add_loop(1).unwrap_or(0);
        first.get_or_insert(a + 1);
        aborts += a;
        marker.raise(libc::SIGUSR1);
    }
    marker.raise(libc::SIGUSR2);

    Ok(ChildReport {
        engine: engine_name().into(),
        cpu,
        sum: slots.sum() - warm as i64,
        expected_sum: ops as i64,
        aborts,
        retried: None,
        fenced: None,
        first_op_attempts: first,
    })
}

#[cfg(not(cpulocal_c_baseline))]
fn bare_child(_ops: u64, _cpu: usize) -> Result<ChildReport, Failure> {
    Err(Failure::Broken(NO_BARE.into()))
}

/// Why `--no-fallback` cannot run.
const NO_BARE: &str = "--no-fallback runs the C rseq baseline, which needs Linux x86_64 with \
                       glibc's rseq registration (glibc 2.35 or later, not disabled by \
                       GLIBC_TUNABLES); it is not available here";

/// Whether `--no-fallback` can run in this process.
fn bare_available() -> bool {
    #[cfg(cpulocal_c_baseline)]
    return cpulocal_cli::baseline::rseq_available();
    #[cfg(not(cpulocal_c_baseline))]
    return false;
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// The child process, to kill by a pidfd where the kernel has them (Linux
/// 5.3+): a pidfd names that process even once it is reaped and its pid
/// reused, so a late kill can never hit another process.
struct Victim {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
}

impl Victim {
    fn new(pid: libc::pid_t) -> Self {
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
        });
        Victim { pid, pidfd }
    }

    /// SIGKILL to the child (nothing if it is already gone).
    fn kill(&self) {
        match &self.pidfd {
            // SAFETY: the pidfd is open; a null siginfo is allowed.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            // Without pidfds (before Linux 5.3) the pid is used; the parent
            // kills only before it has reaped the child, except for the
            // watchdog racing a reap, a window of microseconds after a
            // two-minute timeout.
            // SAFETY: kill takes no pointers.
            None => unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            },
        }
    }
}

/// Kills the child if not cancelled in time.
struct Watchdog {
    cancel: Option<Sender<()>>,
    thread: Option<JoinHandle<bool>>,
}

impl Watchdog {
    fn new(victim: Arc<Victim>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || match rx.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                victim.kill();
                true
            }
            _ => false,
        });
        Watchdog {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the watchdog; returns whether it had fired.
    fn cancel(&mut self) -> bool {
        drop(self.cancel.take());
        self.thread
            .take()
            .is_some_and(|t| t.join().unwrap_or(false))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// How stepping ended.
enum StepEnd {
    /// The end marker was reached: steps of each segment.
    Completed(Vec<u64>),
    /// A segment exceeded the budget: the completed segments, and the steps
    /// of the one that did not complete.
    Livelock { segments: Vec<u64>, steps: u64 },
}

/// `waitpid(tid, __WALL)`, retried on EINTR.
fn wait_thread(tid: libc::pid_t) -> Result<libc::c_int, Failure> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live c_int; __WALL also waits for traced
        // threads that are not the process leader.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == tid {
            return Ok(status);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Failure::Broken(format!("waitpid({tid}) failed: {e}")));
        }
    }
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFSTOPPED(status) {
        format!("stopped by signal {}", libc::WSTOPSIG(status))
    } else if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("changed state ({status:#x})")
    }
}

fn ptrace(req: libc::c_uint, tid: libc::pid_t, data: usize) -> Result<(), Failure> {
    // SAFETY: the requests used here (SETOPTIONS, SINGLESTEP, CONT, DETACH)
    // take no pointers: `addr` is ignored and `data` is an option mask or a
    // signal number.
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        return Err(Failure::Broken(format!(
            "ptrace request {req} on thread {tid} failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The child process and its traced (main) thread.
struct Tracee {
    child: Child,
    victim: Arc<Victim>,
    pid: libc::pid_t,
    /// Whether the thread is still attached (stopped or being stepped).
    attached: bool,
    /// The raw wait status, once `wait_thread` has reaped the child (its
    /// traced thread is the process leader, so an exit there is the
    /// process's).
    reaped: Option<libc::c_int>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    watchdog: Watchdog,
    finished: bool,
}

/// A finished child's exit status and output.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Tracee {
    /// Starts the child and waits for its start marker.
    fn start(args: &StepArgs) -> Result<Tracee, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| Failure::Broken(format!("cannot find the cpulocal binary: {e}")))?;
        let mut cmd = Command::new(exe);
        cmd.args([CHILD_COMMAND, "--ops", &args.ops.to_string()]);
        if args.no_fallback {
            cmd.arg("--no-fallback");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::Broken(format!("cannot start the step child: {e}")))?;
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        let victim = Arc::new(Victim::new(pid));
        let watchdog = Watchdog::new(victim.clone(), CHILD_TIMEOUT);
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        let mut t = Tracee {
            child,
            victim,
            pid,
            attached: true,
            reaped: None,
            stdout,
            stderr,
            watchdog,
            finished: false,
        };
        let status = t.wait()?;
        if !(libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGSTOP) {
            let how = describe(status);
            let done = t.finish()?;
            return Err(Failure::Broken(format!(
                "the step child {how} before stepping could start{}",
                indent_output(&done)
            )));
        }
        ptrace(
            libc::PTRACE_SETOPTIONS,
            pid,
            libc::PTRACE_O_EXITKILL as usize,
        )?;
        Ok(t)
    }

    /// The traced thread's next state change; notes an exit (the child is
    /// then reaped and detached).
    fn wait(&mut self) -> Result<libc::c_int, Failure> {
        let status = wait_thread(self.pid)?;
        if !libc::WIFSTOPPED(status) {
            self.attached = false;
            self.reaped = Some(status);
        }
        Ok(status)
    }

    /// Single-steps from the start marker to the end marker, suppressing
    /// every signal; gives up on a segment longer than `budget` steps.
    fn step_to_end(&mut self, budget: u64) -> Result<StepEnd, Failure> {
        let mut segments = Vec::new();
        let mut steps = 0u64;
        loop {
            ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0)?;
            let status = self.wait()?;
            if !libc::WIFSTOPPED(status) {
                return Err(Failure::Broken(format!(
                    "the stepped child {} after {} steps",
                    describe(status),
                    grouped(segments.iter().sum::<u64>() + steps)
                )));
            }
            match libc::WSTOPSIG(status) {
                libc::SIGTRAP => steps += 1,
                libc::SIGUSR1 => segments.push(std::mem::take(&mut steps)),
                libc::SIGUSR2 => {
                    segments.push(steps);
                    return Ok(StepEnd::Completed(segments));
                }
                sig => {
                    return Err(Failure::Broken(format!(
                        "the stepped child stopped by unexpected signal {sig}"
                    )))
                }
            }
            if steps > budget {
                return Ok(StepEnd::Livelock { segments, steps });
            }
        }
    }

    /// Resumes the child without stepping until the end marker.
    fn continue_to_end(&mut self) -> Result<(), Failure> {
        loop {
            ptrace(libc::PTRACE_CONT, self.pid, 0)?;
            let status = self.wait()?;
            if !libc::WIFSTOPPED(status) {
                return Err(Failure::Broken(format!(
                    "the released child {}",
                    describe(status)
                )));
            }
            if libc::WSTOPSIG(status) == libc::SIGUSR2 {
                return Ok(());
            }
        }
    }

    /// Detaches from the end-marker stop, suppressing the marker.
    fn detach(&mut self) -> Result<(), Failure> {
        ptrace(libc::PTRACE_DETACH, self.pid, 0)?;
        self.attached = false;
        Ok(())
    }

    /// Waits for the child to exit and collects its output.
    fn finish(mut self) -> Result<Finished, Failure> {
        let status = match self.reaped {
            Some(raw) => ExitStatus::from_raw(raw),
            None => self
                .child
                .wait()
                .map_err(|e| Failure::Broken(format!("wait for the step child: {e}")))?,
        };
        self.finished = true;
        let killed = self.watchdog.cancel();
        let join = |h: Option<JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        let done = Finished {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        };
        if killed {
            return Err(Failure::Broken(format!(
                "the step child hung and was killed after {} s{}",
                CHILD_TIMEOUT.as_secs(),
                indent_output(&done)
            )));
        }
        Ok(done)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A failure path: kill the child, then reap it (a traced thread must
        // be waited for by its tracer before the process can be reaped).
        self.victim.kill();
        if self.reaped.is_none() {
            if self.attached {
                let mut status = 0;
                // SAFETY: `status` is a live c_int.
                while unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) } == self.pid
                    && libc::WIFSTOPPED(status)
                {}
            } else {
                let _ = self.child.wait();
            }
        }
    }
}

/// The child's output, indented, for an error message.
fn indent_output(done: &Finished) -> String {
    let text = format!("{}{}", done.stderr, done.stdout);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = text.lines().map(|l| format!("  | {l}")).collect();
    format!(":\n{}", lines.join("\n"))
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

/// Steps per operation, net of a marker's cost.
#[derive(Debug, Serialize)]
struct Spread {
    min: u64,
    median: u64,
    mean: f64,
    max: u64,
}

/// The result of `cpulocal step`, also its `--json`.
#[derive(Debug, Serialize)]
struct StepReport {
    mode: &'static str,
    operation: &'static str,
    ops: u64,
    step_budget: u64,
    completed: bool,
    livelock: bool,
    ops_completed_stepped: u64,
    steps_per_op: Option<Spread>,
    marker_steps: u64,
    total_steps: u64,
    stepping_s: f64,
    livelock_op: Option<u64>,
    livelock_steps: Option<u64>,
    rseq_attempts: u32,
    engine: String,
    cpu: usize,
    sum: i64,
    expected_sum: i64,
    exact: bool,
    aborts: u64,
    retried: Option<u64>,
    fenced: Option<u64>,
    first_op_attempts: Option<u64>,
}

/// Runs `cpulocal step`.
pub fn run(out: &mut impl Write, args: &StepArgs) -> Result<(), Failure> {
    if args.no_fallback && !bare_available() {
        return Err(Failure::Broken(NO_BARE.into()));
    }
    let operation = if args.no_fallback {
        "bare rseq add retried until it commits (C baseline, no fallback)"
    } else {
        "PerCpuCounter::add(1)"
    };
    if !args.json {
        writeln!(
            out,
            "cpulocal step{}: {} × {} in a child single-stepped with PTRACE_SINGLESTEP",
            if args.no_fallback {
                " --no-fallback"
            } else {
                ""
            },
            operation,
            grouped(args.ops),
        )?;
        out.flush()?;
    }

    let mut t = Tracee::start(args)?;
    let stepping = Instant::now();
    let end = t.step_to_end(args.budget)?;
    let stepping_s = stepping.elapsed().as_secs_f64();
    if matches!(end, StepEnd::Livelock { .. }) {
        t.continue_to_end()?;
    }
    t.detach()?;
    let done = t.finish()?;
    if !done.status.success() {
        return Err(Failure::Broken(format!(
            "the step child failed ({}){}",
            done.status,
            indent_output(&done)
        )));
    }
    let child: ChildReport = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT_LINE))
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| {
            Failure::Broken(format!(
                "the step child printed no report{}",
                indent_output(&done)
            ))
        })?;

    let report = summarize(args, operation, end, stepping_s, child)?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Broken(format!("cannot encode the report: {e}")))?;
        writeln!(out, "{json}")?;
    } else {
        write_text(out, &report)?;
    }
    check(&report)
}

fn summarize(
    args: &StepArgs,
    operation: &'static str,
    end: StepEnd,
    stepping_s: f64,
    child: ChildReport,
) -> Result<StepReport, Failure> {
    let (segments, livelock_steps, completed) = match end {
        StepEnd::Completed(s) => (s, None, true),
        StepEnd::Livelock { segments, steps } => (segments, Some(steps), false),
    };
    // Baseline segments, the operations', and the empty one before the end.
    if completed && segments.len() != BASELINE_SEGMENTS + args.ops as usize + 1 {
        return Err(Failure::Broken(format!(
            "the step child's markers are out of step: {} segments for {} operations",
            segments.len(),
            args.ops
        )));
    }
    let marker_steps = segments
        .iter()
        .take(BASELINE_SEGMENTS)
        .min()
        .copied()
        .unwrap_or(0);
    let op_segments: Vec<u64> = segments
        .iter()
        .skip(BASELINE_SEGMENTS)
        .take(args.ops as usize)
        .map(|s| s.saturating_sub(marker_steps))
        .collect();
    let done_stepped = op_segments.len() as u64;
    let steps_per_op = (!op_segments.is_empty()).then(|| {
        let mut v = op_segments.clone();
        v.sort_unstable();
        Spread {
            min: v[0],
            median: v[v.len() / 2],
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
            max: v[v.len() - 1],
        }
    });
    let total_steps = segments.iter().sum::<u64>() + livelock_steps.unwrap_or(0);
    Ok(StepReport {
        mode: if args.no_fallback {
            "no_fallback"
        } else {
            "fallback"
        },
        operation,
        ops: args.ops,
        step_budget: args.budget,
        completed,
        livelock: !completed,
        ops_completed_stepped: done_stepped,
        steps_per_op,
        marker_steps,
        total_steps,
        stepping_s,
        livelock_op: (!completed).then_some(done_stepped + 1),
        livelock_steps,
        rseq_attempts: RSEQ_ATTEMPTS,
        engine: child.engine,
        cpu: child.cpu,
        exact: child.sum == child.expected_sum,
        sum: child.sum,
        expected_sum: child.expected_sum,
        aborts: child.aborts,
        retried: child.retried,
        fenced: child.fenced,
        first_op_attempts: child.first_op_attempts,
    })
}

fn write_text(out: &mut impl Write, r: &StepReport) -> std::io::Result<()> {
    writeln!(
        out,
        "  child:          pinned to CPU {}, cpulocal engine {}",
        r.cpu, r.engine
    )?;
    let us_per_step = if r.total_steps > 0 {
        r.stepping_s * 1e6 / r.total_steps as f64
    } else {
        0.0
    };
    if r.completed {
        writeln!(
            out,
            "  completed:      {} of {} operations while single-stepped, sum {} ({})",
            grouped(r.ops_completed_stepped),
            grouped(r.ops),
            grouped(r.sum),
            if r.exact { "exact" } else { "NOT EXACT" },
        )?;
        if let Some(s) = &r.steps_per_op {
            writeln!(
                out,
                "  steps per op:   min {}, median {}, mean {:.0}, max {} (a marker's {} steps subtracted)",
                grouped(s.min),
                grouped(s.median),
                s.mean,
                grouped(s.max),
                r.marker_steps
            )?;
        }
        if let (Some(fenced), Some(retried)) = (r.fenced, r.retried) {
            writeln!(
                out,
                "  paths:          {} fenced, {} retried, {} aborted sections ({:.1} per operation; the limit is RSEQ_ATTEMPTS = {})",
                grouped(fenced),
                grouped(retried),
                grouped(r.aborts),
                r.aborts as f64 / r.ops.max(1) as f64,
                r.rseq_attempts
            )?;
        }
        writeln!(
            out,
            "  stepping:       {} steps in {:.2} s ({us_per_step:.1} µs per step); budget {} steps per operation",
            grouped(r.total_steps),
            r.stepping_s,
            grouped(r.step_budget)
        )?;
        if r.mode == "fallback" {
            writeln!(
                out,
                "Every step traps, and a trap inside an rseq critical section aborts it, so no section commits \
                 under single-stepping; after RSEQ_ATTEMPTS aborts cpulocal takes the fenced path, which is \
                 ordinary code, and the operation completes."
            )?;
        } else {
            writeln!(
                out,
                "The bare loop committed while single-stepped: stepping no longer aborts rseq sections here, \
                 so this run shows nothing."
            )?;
        }
    } else {
        writeln!(
            out,
            "  livelock caught: operation {} of {} ran {} steps without completing (budget {})",
            grouped(r.livelock_op.unwrap_or(0)),
            grouped(r.ops),
            grouped(r.livelock_steps.unwrap_or(0)),
            grouped(r.step_budget),
        )?;
        writeln!(
            out,
            "  stepping:       {} steps in {:.2} s ({us_per_step:.1} µs per step)",
            grouped(r.total_steps),
            r.stepping_s
        )?;
        let attempts = r
            .first_op_attempts
            .map(|a| format!("; the first took {} attempts", grouped(a)))
            .unwrap_or_default();
        writeln!(
            out,
            "  released:       with PTRACE_CONT the child finished at once: sum {} of {} ({}){attempts}",
            grouped(r.sum),
            grouped(r.expected_sum),
            if r.exact { "exact" } else { "NOT EXACT" },
        )?;
        if r.mode == "no_fallback" {
            writeln!(
                out,
                "Without a fallback, an operation retries its critical section until it commits; under \
                 single-stepping every attempt is aborted, so a debugger stepping through it never gets past it. \
                 cpulocal's add takes the fenced path instead (run `cpulocal step`)."
            )?;
        }
    }
    Ok(())
}

/// The command's verdict: with the fallback every operation must complete,
/// exactly; without, the livelock must have been caught.
fn check(r: &StepReport) -> Result<(), Failure> {
    if !r.exact {
        return Err(Failure::Broken(format!(
            "the stepped operations summed to {}, not {}",
            r.sum, r.expected_sum
        )));
    }
    match (r.mode, r.completed) {
        ("fallback", false) => Err(Failure::Broken(format!(
            "livelock: operation {} did not complete within {} steps despite the fallback",
            r.livelock_op.unwrap_or(0),
            r.step_budget
        ))),
        ("no_fallback", true) => Err(Failure::Broken(
            "the bare rseq loop committed while single-stepped, so the livelock could not be shown"
                .into(),
        )),
        _ => Ok(()),
    }
}
