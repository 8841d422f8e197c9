//! Forward progress under a debugger.
//!
//! Single-stepping traps after every instruction, every trap is a ptrace stop,
//! and every stop aborts an rseq critical section the thread is inside: a bare
//! section never completes under `PTRACE_SINGLESTEP`. `PerCpuCounter::add` and
//! `add_on` retry at most [`cpulocal::RSEQ_ATTEMPTS`] times and then take the
//! fenced path, which is ordinary code, so they must complete.
//!
//! Each test re-runs this test binary as a child (`--exact singlestep_child`,
//! selected by the `CPULOCAL_SINGLESTEP_CHILD` environment variable; without it
//! the child test returns at once). The child's test thread calls
//! `PTRACE_TRACEME`, warms up, stops itself with `SIGSTOP` ("start stepping"),
//! runs its operations with a `SIGUSR1` after each one ("operation done") and
//! raises `SIGUSR2` at the end ("stop stepping"). The parent single-steps it
//! from the first marker to the last, counting steps between markers, and
//! fails with "livelock" if one operation takes more than [`STEP_BUDGET`]
//! steps. After the parent detaches, the child checks the counter's exact
//! values and `stats()` and exits with the test's status.
//!
//! `bare_rseq_loop_livelocks_under_singlestep` is the contrast: the same
//! driver on an rseq section that retries without bound (no fallback, written
//! in this file against glibc's rseq area) exhausts the same budget.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cpulocal::{
    Node, PathStats, PerCpuBuffer, PerCpuCounter, PerCpuList, PerCpuLock, RSEQ_ATTEMPTS,
};

/// Selects the child's role; absent in the parent.
const CHILD_ENV: &str = "CPULOCAL_SINGLESTEP_CHILD";
/// The name of the child test, for `--exact`.
const CHILD_TEST: &str = "singlestep_child";
/// Prefix of the stderr line that tells the parent which thread to trace.
const TID_LINE: &str = "CPULOCAL-SINGLESTEP-TID ";
/// Prefix of the bare child's report line.
const BARE_LINE: &str = "CPULOCAL-SINGLESTEP-BARE ";

/// Steps one operation (one marker-to-marker segment) may take before the
/// parent calls it a livelock. A counter operation takes a few hundred.
const STEP_BUDGET: u64 = 50_000;
/// Steps the whole stepped phase may take.
const TOTAL_STEP_BUDGET: u64 = 2_000_000;
/// Wall-clock limit for a child, after which a watchdog kills it (a hang in
/// this harness, not a livelock, which the step budgets catch first).
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Empty segments at the start of the plan, to measure the cost of a marker.
const BASELINE_SEGMENTS: usize = 4;

/// One stepped operation of the counter child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Nothing: a segment that measures the marker's own steps.
    Nothing,
    /// `add(n)`: a critical section on the current CPU.
    Add(i64),
    /// `add_on(current_cpu(), n)`: a critical section when still on that CPU.
    AddOnHere(i64),
    /// `add_on((current_cpu() + 1) % cpus, n)`: straight to the fenced path.
    AddOnOther(i64),
}

impl Op {
    fn kind(self) -> &'static str {
        match self {
            Op::Nothing => "marker only",
            Op::Add(_) => "add",
            Op::AddOnHere(_) => "add_on(this CPU)",
            Op::AddOnOther(_) => "add_on(other CPU)",
        }
    }
}

/// The child's stepped operations, in order: baseline segments, then 48
/// operations (24 `add`, 12 `add_on` here, 12 `add_on` elsewhere) with
/// varied, some negative, values.
fn plan() -> Vec<Op> {
    let mut ops = vec![Op::Nothing; BASELINE_SEGMENTS];
    for i in 0..48i64 {
        let n = (i * 37 % 101) - 40;
        ops.push(match i % 4 {
            0 | 2 => Op::Add(n),
            1 => Op::AddOnHere(n),
            _ => Op::AddOnOther(n),
        });
    }
    ops
}

// ---------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------

/// The child process's entry point; a no-op unless `CHILD_ENV` is set.
#[test]
fn singlestep_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    match mode.as_str() {
        "counter-pinned" => child_counter(true),
        "counter-migrating" => child_counter(false),
        "structures" => child_structures(),
        "bare" => child_bare(),
        other => panic!("unknown {CHILD_ENV}={other}"),
    }
}

/// The calling thread's kernel id.
fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Makes the calling thread a tracee of the parent process, tells the parent
/// its thread id, and stops with `SIGSTOP`; returns when the parent steps or
/// continues it. Returns the ids the markers need.
fn become_tracee() -> Marker {
    // SAFETY: PTRACE_TRACEME takes no pointers; it only links this thread to
    // its parent as tracer.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_TRACEME,
            0,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    assert_eq!(
        r,
        0,
        "PTRACE_TRACEME failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: getpid has no arguments and cannot fail.
    let pid = unsafe { libc::getpid() };
    let marker = Marker { pid, tid: gettid() };
    eprintln!(
        "{TID_LINE}{} (pid {pid}; test thread is the main thread: {})",
        marker.tid,
        marker.tid == pid
    );
    marker.raise(libc::SIGSTOP);
    marker
}

/// Sends a marker signal to the calling thread with one `tgkill` system call,
/// so that a marker costs the stepped thread only a few instructions.
#[derive(Clone, Copy)]
struct Marker {
    pid: libc::pid_t,
    tid: libc::pid_t,
}

impl Marker {
    #[inline(never)]
    fn raise(self, sig: libc::c_int) {
        // SAFETY: tgkill takes no pointers. The signal is thread-directed to
        // this thread, which is traced: it stops in signal-delivery-stop and
        // the parent suppresses it (it is never delivered).
        let r = unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.tid, sig) };
        assert_eq!(r, 0, "tgkill: {}", std::io::Error::last_os_error());
    }
}

/// Pins the calling thread to the first CPU it may run on; returns that CPU.
fn pin_to_first_allowed_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity and sched_setaffinity
    // (pid 0: the calling thread) read and write only the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(r, 0, "sched_getaffinity failed");
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("the thread may run on some CPU");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
        assert_eq!(r, 0, "sched_setaffinity failed");
        // Take effect now: the thread may still be on another CPU.
        libc::sched_yield();
        cpu
    }
}

fn stats_delta(after: PathStats, before: PathStats) -> (u64, u64, u64) {
    (
        after.retried - before.retried,
        after.aborts - before.aborts,
        after.fenced - before.fenced,
    )
}

/// The counter child. `pinned`: the thread runs on one CPU, so every local
/// operation's outcome is known exactly; otherwise it may migrate between
/// steps (a ptrace stop is a sleep), and only bounds are known.
fn child_counter(pinned: bool) {
    let here = pinned.then(pin_to_first_allowed_cpu);
    let c = PerCpuCounter::new();
    let cpus = c.cpus();
    // Warm up: thread set-up, engine decision, every slot's first fence.
    for _ in 0..1000 {
        c.add(1);
    }
    for cpu in 0..cpus {
        c.add_on(cpu, 1).expect("a CPU of the counter");
    }
    assert_eq!(c.take(), 1000 + cpus as i64);
    let status = cpulocal::status();
    let rseq = status.engine == cpulocal::Engine::Rseq;
    if let Some(here) = here {
        assert_eq!(
            cpulocal::current_cpu(),
            here,
            "pinned thread on another CPU"
        );
    }
    let ops = plan();
    let before = c.stats();

    let marker = become_tracee(); // stepping starts when this returns
    for &op in &ops {
        match op {
            Op::Nothing => {}
            Op::Add(n) => c.add(n),
            Op::AddOnHere(n) => c
                .add_on(cpulocal::current_cpu(), n)
                .expect("a CPU of the counter"),
            Op::AddOnOther(n) => c
                .add_on((cpulocal::current_cpu() + 1) % cpus, n)
                .expect("a CPU of the counter"),
        }
        marker.raise(libc::SIGUSR1);
    }
    marker.raise(libc::SIGUSR2); // stepping ends here

    let after = c.stats();
    let (retried, aborts, fenced) = stats_delta(after, before);
    let count = |f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count() as u64;
    let n_ops = count(|o| *o != Op::Nothing);
    let n_add = count(|o| matches!(o, Op::Add(_)));
    let n_here = count(|o| matches!(o, Op::AddOnHere(_)));
    // With a single CPU "other" is this CPU too.
    let n_other_local = if cpus == 1 {
        count(|o| matches!(o, Op::AddOnOther(_)))
    } else {
        0
    };
    let value = |o: &Op| match *o {
        Op::Nothing => 0,
        Op::Add(n) | Op::AddOnHere(n) | Op::AddOnOther(n) => n,
    };
    let expected_sum: i64 = ops.iter().map(value).sum();
    let per_cpu = c.per_cpu();
    eprintln!(
        "child: status engine = {}, registration = {}; cpus = {cpus}, pinned to {here:?}",
        status.engine, status.registration
    );
    eprintln!(
        "child: {n_ops} stepped operations ({n_add} add, {n_here} add_on here, {} add_on other): \
         stats delta retried = {retried}, aborts = {aborts}, fenced = {fenced}; \
         sum = {} (expected {expected_sum}); per CPU {per_cpu:?}",
        n_ops - n_add - n_here,
        c.sum()
    );

    assert_eq!(c.sum(), expected_sum, "stepped adds lost or duplicated");
    // Every stepped operation completed on the fenced path: a critical
    // section cannot commit when a trap follows every instruction of it (the
    // first trap is at start_ip, and the kernel sends the thread to abort_ip).
    assert_eq!(fenced, n_ops, "every stepped operation must be fenced");
    assert_eq!(retried, 0, "no section may commit while single-stepped");
    if !rseq {
        assert_eq!(aborts, 0, "without rseq no section runs, so none aborts");
        return;
    }
    let local = n_add + n_here + n_other_local;
    if let Some(here) = here {
        // Pinned: every local operation ran RSEQ_ATTEMPTS sections, each
        // aborted; remote ones ran none.
        assert_eq!(
            aborts,
            u64::from(RSEQ_ATTEMPTS) * local,
            "each local operation aborts exactly RSEQ_ATTEMPTS times"
        );
        let mut expected = vec![0i64; cpus];
        for o in &ops {
            match *o {
                Op::Nothing => {}
                Op::Add(n) | Op::AddOnHere(n) => expected[here] += n,
                Op::AddOnOther(n) => expected[(here + 1) % cpus] += n,
            }
        }
        assert_eq!(per_cpu, expected, "adds landed on the wrong CPU's slot");
    } else {
        // Migrating: an `add` always runs RSEQ_ATTEMPTS sections (it follows
        // the thread); an `add_on` runs up to RSEQ_ATTEMPTS, and none once the
        // thread is no longer on the target CPU.
        let attempts = u64::from(RSEQ_ATTEMPTS);
        assert!(
            aborts >= attempts * n_add,
            "every add must abort RSEQ_ATTEMPTS times: {aborts} < {}",
            attempts * n_add
        );
        assert!(
            aborts <= attempts * n_ops,
            "no operation may abort more than RSEQ_ATTEMPTS times: {aborts} > {}",
            attempts * n_ops
        );
    }
}

/// One stepped operation of the structures child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StructOp {
    /// A marker-only segment.
    Nothing,
    /// `PerCpuList::push_node`.
    PushNode,
    /// `PerCpuList::pop_node`.
    PopNode,
    /// `PerCpuBuffer::push` of a box.
    PushWord,
    /// `PerCpuBuffer::pop`.
    PopWord,
    /// `PerCpuLock::lock`, an increment, the guard dropped.
    Lock,
}

/// The structures child's plan: baseline segments, then 8 rounds of a node
/// pushed and popped, a box pushed and popped, and a lock taken.
fn structures_plan() -> Vec<StructOp> {
    let mut ops = vec![StructOp::Nothing; BASELINE_SEGMENTS];
    for _ in 0..8 {
        ops.extend([
            StructOp::PushNode,
            StructOp::PopNode,
            StructOp::PushWord,
            StructOp::PopWord,
            StructOp::Lock,
        ]);
    }
    ops
}

/// The structures child, pinned: every stepped list, buffer and lock
/// operation completes on the fenced path after `RSEQ_ATTEMPTS` aborts, and
/// each pop gives back exactly what was pushed (the same node, the same box).
fn child_structures() {
    pin_to_first_allowed_cpu();
    let list = PerCpuList::new();
    let buffer = PerCpuBuffer::new(4);
    let lock = PerCpuLock::new(|_| 0u64);
    // Warm up every path once.
    for _ in 0..100 {
        list.push_node(Node::new(0u64));
        drop(list.pop_node());
        buffer.push(Box::new(0u64)).unwrap();
        drop(buffer.pop());
        *lock.lock() += 1;
    }
    let rseq = cpulocal::status().engine == cpulocal::Engine::Rseq;
    let before = (list.stats(), buffer.stats(), lock.stats());
    let ops = structures_plan();
    let mut node = Some(Node::new(7u64));
    let node_at = node.as_deref().map(|v| v as *const u64);
    let mut word = Some(Box::new(9u64));
    let word_at = word.as_deref().map(|v| v as *const u64);
    let (mut node_pops, mut word_pops) = (0, 0);

    let marker = become_tracee();
    for &op in &ops {
        match op {
            StructOp::Nothing => {}
            StructOp::PushNode => list.push_node(node.take().expect("held")),
            StructOp::PopNode => node = list.pop_node(),
            StructOp::PushWord => buffer.push(word.take().expect("held")).expect("room"),
            StructOp::PopWord => word = buffer.pop(),
            StructOp::Lock => *lock.lock() += 1,
        }
        marker.raise(libc::SIGUSR1);
        node_pops += usize::from(op == StructOp::PopNode && node.is_some());
        word_pops += usize::from(op == StructOp::PopWord && word.is_some());
    }
    marker.raise(libc::SIGUSR2);

    let count = |k: StructOp| ops.iter().filter(|&&o| o == k).count() as u64;
    assert_eq!(
        node_pops as u64,
        count(StructOp::PopNode),
        "every pop found the node"
    );
    assert_eq!(
        word_pops as u64,
        count(StructOp::PopWord),
        "every pop found the box"
    );
    assert_eq!(
        node.as_deref().map(|v| v as *const u64),
        node_at,
        "the same node"
    );
    assert_eq!(
        word.as_deref().map(|v| v as *const u64),
        word_at,
        "the same box"
    );
    let after = (list.stats(), buffer.stats(), lock.stats());
    assert_eq!(
        lock.into_vec().iter().sum::<u64>(),
        100 + count(StructOp::Lock),
        "every lock counted once"
    );
    for (name, b, a, n) in [
        (
            "list",
            before.0,
            after.0,
            count(StructOp::PushNode) + count(StructOp::PopNode),
        ),
        (
            "buffer",
            before.1,
            after.1,
            count(StructOp::PushWord) + count(StructOp::PopWord),
        ),
        ("lock", before.2, after.2, count(StructOp::Lock)),
    ] {
        let (retried, aborts, fenced) = stats_delta(a, b);
        eprintln!("child: {name}: {n} stepped operations: retried {retried}, aborts {aborts}, fenced {fenced}");
        assert_eq!(fenced, n, "{name}: every stepped operation must be fenced");
        assert_eq!(
            retried, 0,
            "{name}: no section may commit while single-stepped"
        );
        let want = if rseq {
            u64::from(RSEQ_ATTEMPTS) * n
        } else {
            0
        };
        assert_eq!(aborts, want, "{name}: RSEQ_ATTEMPTS aborts per operation");
    }
}

extern "C" {
    // glibc's (2.35+): where its area is from the thread pointer, and how
    // much of it glibc promises (0: not registered). Linked directly rather
    // than looked up with dlsym, which a static program cannot do.
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// glibc's rseq area of the calling thread, when glibc registered one and the
/// thread has a CPU number in it.
fn glibc_rseq_area() -> Option<*mut u8> {
    // SAFETY: glibc >= 2.35 defines both, written once before main and
    // read-only after; the area lies `__rseq_offset` from the thread pointer
    // and the kernel writes `cpu_id` (offset 4) only between this thread's
    // instructions.
    unsafe {
        if __rseq_size == 0 {
            return None;
        }
        let area = thread_pointer().wrapping_offset(__rseq_offset);
        let cpu_id = std::ptr::read_volatile(area.add(4).cast::<i32>());
        (cpu_id >= 0).then_some(area)
    }
}

/// The thread pointer, from which glibc's area is `__rseq_offset` away.
fn thread_pointer() -> *mut u8 {
    let tp: *mut u8;
    // SAFETY: reading fs:0 (the TCB's own address) is valid on x86_64 Linux.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: reading tpidr_el0 is valid for any aarch64 Linux thread.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags))
    };
    tp
}

/// One bare critical section: `*value += 1` if the thread is on `cpu`;
/// returns false when aborted. Same shape as cpulocal's `add` section, without
/// the fence check.
///
/// # Safety
///
/// `area` is the calling thread's registered rseq area (glibc's, with glibc's
/// signature: 0x53053053 on x86_64, 0xd428bc00 on aarch64); `value` points to
/// a live i64 that only this thread writes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bare_section(area: *mut u8, cpu: u32, value: *mut i64) -> bool {
    // SAFETY: the caller guarantees both pointers; the asm writes
    // `area.rseq_cs` (offset 8), reads `area.cpu_id` (offset 4) and increments
    // `*value`. The descriptor's abort label is preceded by the signature.
    unsafe {
        std::arch::asm!(
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3f, (4f - 3f), 5f",
            ".popsection",
            "lea {tmp}, [rip + 9b]",
            "mov qword ptr [{area} + 8], {tmp}",
            "3:",
            "cmp dword ptr [{area} + 4], {cpu:e}",
            "jne 5f",
            "add qword ptr [{value}], 1",
            "4:",
            ".pushsection __rseq_failure, \"ax\"",
            ".byte 0x0f, 0xb9, 0x3d",
            ".long 0x53053053",
            "5:",
            "jmp {abort}",
            ".popsection",
            tmp = out(reg) _,
            area = in(reg) area,
            cpu = in(reg) cpu,
            value = in(reg) value,
            abort = label { return false },
            options(nostack),
        );
    }
    true
}

/// [`bare_section`] on aarch64.
///
/// # Safety
///
/// As on x86_64.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn bare_section(area: *mut u8, cpu: u32, value: *mut i64) -> bool {
    // SAFETY: as on x86_64.
    unsafe {
        std::arch::asm!(
            ".pushsection __rseq_cs, \"aw\"",
            ".balign 32",
            "9:",
            ".long 0, 0",
            ".quad 3f, (4f - 3f), 5f",
            ".popsection",
            "adrp {tmp}, 9b",
            "add {tmp}, {tmp}, :lo12:9b",
            "str {tmp}, [{area}, #8]",
            "3:",
            "ldr {tmp:w}, [{area}, #4]",
            "cmp {tmp:w}, {cpu:w}",
            "b.ne {abort}",
            "ldr {tmp}, [{value}]",
            "add {tmp}, {tmp}, #1",
            "str {tmp}, [{value}]",
            "4:",
            ".pushsection __rseq_failure, \"ax\"",
            ".inst 0xd428bc00",
            "5:",
            "b {abort}",
            ".popsection",
            tmp = out(reg) _,
            area = in(reg) area,
            cpu = in(reg) cpu,
            value = in(reg) value,
            abort = label { return false },
            options(nostack),
        );
    }
    true
}

/// `slots[cpu] += 1` by a bare rseq section retried until it commits: what a
/// library without a fallback does. Returns the number of attempts.
fn bare_add_until_committed(area: *mut u8, slots: &mut [i64]) -> u64 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        // SAFETY: `area` is this thread's live glibc area (from
        // glibc_rseq_area on this thread); the kernel writes cpu_id only
        // between this thread's instructions.
        let cpu = unsafe { std::ptr::read_volatile(area.add(4).cast::<u32>()) };
        let value = &mut slots[cpu as usize];
        // SAFETY: `area` as above; `value` is a live i64 of this thread.
        if unsafe { bare_section(area, cpu, value) } {
            return attempts;
        }
    }
}

/// The contrast child: the bare loop completes when run freely, then is
/// single-stepped; the parent releases it (PTRACE_CONT) after the budget.
fn child_bare() {
    let area = glibc_rseq_area().expect("parent checked that glibc registered rseq");
    let mut slots = vec![0i64; cpulocal::possible_cpus()];
    let free_attempts: u64 = (0..10_000)
        .map(|_| bare_add_until_committed(area, &mut slots))
        .sum();
    assert_eq!(
        slots.iter().sum::<i64>(),
        10_000,
        "the bare section is broken"
    );

    let marker = become_tracee();
    let attempts = bare_add_until_committed(area, &mut slots);
    marker.raise(libc::SIGUSR2);

    eprintln!("{BARE_LINE}attempts={attempts} free_attempts={free_attempts}");
    assert_eq!(slots.iter().sum::<i64>(), 10_001);
    assert!(
        attempts > 1000,
        "the stepped bare section was aborted only {attempts} times"
    );
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// Kills the child process if not cancelled in time.
struct Watchdog {
    cancel: Option<Sender<()>>,
    thread: Option<JoinHandle<bool>>,
}

impl Watchdog {
    fn new(pid: libc::pid_t, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || match rx.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                // SAFETY: kill takes no pointers. The child is not reaped
                // before the watchdog is cancelled (see `Tracee::finish`), so
                // `pid` cannot name another process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
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
            .is_some_and(|t| t.join().expect("watchdog thread panicked"))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// How the child's stepped thread stopped being stepped.
#[derive(Debug)]
enum StepEnd {
    /// Reached the end marker (`SIGUSR2`); steps per segment.
    Completed(Vec<u64>),
    /// A segment or the whole phase exceeded its budget.
    Livelock { segments: Vec<u64>, steps: u64 },
}

/// A child process whose test thread we trace.
struct Tracee {
    child: Child,
    pid: libc::pid_t,
    /// The traced thread, once it has reported itself.
    tid: Option<libc::pid_t>,
    /// Whether `tid` is still attached to us.
    attached: bool,
    lines: Receiver<String>,
    log: Vec<String>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<String>>,
    watchdog: Watchdog,
    finished: bool,
}

/// The parent's view of a finished child.
struct Finished {
    status: ExitStatus,
    stderr: Vec<String>,
    stdout: String,
}

impl Finished {
    fn output(&self) -> String {
        format!(
            "--- child stderr ---\n{}\n--- child stdout ---\n{}",
            self.stderr.join("\n"),
            self.stdout
        )
    }
}

fn waitpid_all(tid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live c_int; __WALL waits for the traced thread
        // (a non-leader thread is a "clone" child of its tracer).
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == tid {
            return status;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINTR),
            "waitpid({tid}) failed: {e}"
        );
    }
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFSTOPPED(status) {
        format!("stopped by signal {}", libc::WSTOPSIG(status))
    } else if libc::WIFEXITED(status) {
        format!("exited with {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

fn ptrace(req: libc::c_uint, tid: libc::pid_t, data: usize) -> Result<(), std::io::Error> {
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
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tracee {
    /// Runs this test binary's child test in `mode`, waits for its traced
    /// thread's first stop, and sets `PTRACE_O_EXITKILL`.
    fn start(mode: &str) -> Tracee {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the child test");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        let watchdog = Watchdog::new(pid, CHILD_TIMEOUT);
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let stderr_reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = child.stdout.take().expect("piped");
        let stdout_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let mut t = Tracee {
            child,
            pid,
            tid: None,
            attached: false,
            lines,
            log: Vec::new(),
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
            watchdog,
            finished: false,
        };
        // The child prints its thread id, then stops.
        let deadline = Instant::now() + Duration::from_secs(20);
        let tid = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.lines.recv_timeout(left) {
                Ok(line) => {
                    let tid = line
                        .strip_prefix(TID_LINE)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|w| w.parse::<libc::pid_t>().ok());
                    t.log.push(line);
                    if let Some(tid) = tid {
                        break tid;
                    }
                }
                Err(e) => panic!(
                    "the child never reported its thread id ({e:?}):\n{}",
                    t.log.join("\n")
                ),
            }
        };
        t.tid = Some(tid);
        t.attached = true;
        let status = waitpid_all(tid);
        assert!(
            libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGSTOP,
            "expected the start marker (SIGSTOP), child thread {}",
            describe(status)
        );
        ptrace(
            libc::PTRACE_SETOPTIONS,
            tid,
            libc::PTRACE_O_EXITKILL as usize,
        )
        .expect("PTRACE_SETOPTIONS");
        t
    }

    fn tid(&self) -> libc::pid_t {
        self.tid.expect("started")
    }

    /// Single-steps from the current stop to the end marker (`SIGUSR2`),
    /// suppressing every signal, and counts steps between markers.
    fn step_to_end(&mut self) -> StepEnd {
        let tid = self.tid();
        let mut segments = Vec::new();
        let mut steps = 0u64;
        let mut total = 0u64;
        loop {
            ptrace(libc::PTRACE_SINGLESTEP, tid, 0).expect("PTRACE_SINGLESTEP");
            let status = waitpid_all(tid);
            if !libc::WIFSTOPPED(status) {
                self.attached = false;
                panic!(
                    "the stepped thread {} after {total} steps:\n{}",
                    describe(status),
                    self.log.join("\n")
                );
            }
            match libc::WSTOPSIG(status) {
                libc::SIGTRAP => {
                    steps += 1;
                    total += 1;
                }
                libc::SIGUSR1 => segments.push(std::mem::take(&mut steps)),
                libc::SIGUSR2 => {
                    segments.push(steps);
                    return StepEnd::Completed(segments);
                }
                sig => panic!("unexpected stop by signal {sig} while stepping"),
            }
            if steps > STEP_BUDGET || total > TOTAL_STEP_BUDGET {
                return StepEnd::Livelock { segments, steps };
            }
        }
    }

    /// Resumes the traced thread without stepping until the end marker.
    fn continue_to_end(&mut self) {
        let tid = self.tid();
        loop {
            ptrace(libc::PTRACE_CONT, tid, 0).expect("PTRACE_CONT");
            let status = waitpid_all(tid);
            if !libc::WIFSTOPPED(status) {
                self.attached = false;
                panic!(
                    "the continued thread {}:\n{}",
                    describe(status),
                    self.log.join("\n")
                );
            }
            if libc::WSTOPSIG(status) == libc::SIGUSR2 {
                return;
            }
        }
    }

    /// Detaches from the end-marker stop, suppressing the marker signal.
    fn detach(&mut self) {
        ptrace(libc::PTRACE_DETACH, self.tid(), 0).expect("PTRACE_DETACH");
        self.attached = false;
    }

    /// Waits for the child to exit and collects its output.
    fn finish(mut self) -> Finished {
        // Wait without reaping, so the watchdog can never kill a reused pid.
        // SAFETY: siginfo_t is plain data written by waitid.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0, "waitid: {}", std::io::Error::last_os_error());
        let killed = self.watchdog.cancel();
        let status = self.child.wait().expect("wait for the child");
        self.finished = true;
        self.stderr_reader.take().map(JoinHandle::join);
        let mut stderr = std::mem::take(&mut self.log);
        stderr.extend(self.lines.try_iter());
        let stdout = self
            .stdout_reader
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            !killed,
            "the watchdog killed the child after {CHILD_TIMEOUT:?}"
        );
        Finished {
            status,
            stderr,
            stdout,
        }
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A failure path: kill the child, reap the traced thread (a traced
        // non-leader thread stays a zombie until its tracer reaps it, and the
        // process cannot be reaped before it), then the process.
        // SAFETY: kill takes no pointers; the child is not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let (Some(tid), true) = (self.tid, self.attached) {
            let mut status = 0;
            // SAFETY: `status` is a live c_int.
            while unsafe { libc::waitpid(tid, &mut status, libc::__WALL) } == tid
                && libc::WIFSTOPPED(status)
            {}
        }
        let _ = self.child.wait();
    }
}

/// Median of a non-empty slice.
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Steps a counter child through the plan and checks it completes.
fn run_counter_child(mode: &str) {
    let started = Instant::now();
    let mut t = Tracee::start(mode);
    let stepping = Instant::now();
    let end = t.step_to_end();
    let step_time = stepping.elapsed();
    let segments = match end {
        StepEnd::Completed(s) => s,
        StepEnd::Livelock { segments, steps } => panic!(
            "livelock: {steps} steps without completing operation #{} ({:?}) of the plan",
            segments.len(),
            plan().get(segments.len())
        ),
    };
    t.detach();
    let done = t.finish();
    assert!(
        done.status.success(),
        "the child failed ({}):\n{}",
        done.status,
        done.output()
    );

    let ops = plan();
    // One segment per plan entry, plus the empty one before the end marker.
    assert_eq!(
        segments.len(),
        ops.len() + 1,
        "markers out of step: {segments:?}"
    );
    let total: u64 = segments.iter().sum();
    let baseline = *segments[..BASELINE_SEGMENTS]
        .iter()
        .min()
        .expect("baseline");
    println!("[{mode}] child output:");
    for line in &done.stderr {
        println!("[{mode}]   {line}");
    }
    println!(
        "[{mode}] {total} steps in {step_time:.2?} ({:.1} µs/step), test {:.2?}; \
         a marker costs {baseline} steps, subtracted below",
        step_time.as_secs_f64() * 1e6 / total as f64,
        started.elapsed()
    );
    for kind in [Op::Add(0), Op::AddOnHere(0), Op::AddOnOther(0)] {
        let mut net: Vec<u64> = ops
            .iter()
            .zip(&segments)
            .filter(|(op, _)| std::mem::discriminant(*op) == std::mem::discriminant(&kind))
            .map(|(_, &s)| s.saturating_sub(baseline))
            .collect();
        let n = net.len();
        let mean = net.iter().sum::<u64>() as f64 / n as f64;
        let med = median(&mut net);
        println!(
            "[{mode}] {:<18} x{n:<3} steps/op: min {} median {med} mean {mean:.0} max {}",
            kind.kind(),
            net[0],
            net[n - 1]
        );
    }
}

/// The list's node moves, the word buffer and the lock, single-stepped on a
/// pinned thread: each completes, fenced after `RSEQ_ATTEMPTS` aborts, in a
/// bounded number of steps.
#[test]
fn singlestepped_structure_ops_complete() {
    let mut t = Tracee::start("structures");
    let end = t.step_to_end();
    let segments = match end {
        StepEnd::Completed(s) => s,
        StepEnd::Livelock { segments, steps } => panic!(
            "livelock: {steps} steps without completing operation #{} ({:?})",
            segments.len(),
            structures_plan().get(segments.len())
        ),
    };
    t.detach();
    let done = t.finish();
    assert!(
        done.status.success(),
        "the child failed ({}):\n{}",
        done.status,
        done.output()
    );
    let ops = structures_plan();
    assert_eq!(
        segments.len(),
        ops.len() + 1,
        "markers out of step: {segments:?}"
    );
    let baseline = *segments[..BASELINE_SEGMENTS]
        .iter()
        .min()
        .expect("baseline");
    for line in &done.stderr {
        println!("[structures]   {line}");
    }
    for kind in [
        StructOp::PushNode,
        StructOp::PopNode,
        StructOp::PushWord,
        StructOp::PopWord,
        StructOp::Lock,
    ] {
        let mut net: Vec<u64> = ops
            .iter()
            .zip(&segments)
            .filter(|(op, _)| **op == kind)
            .map(|(_, &s)| s.saturating_sub(baseline))
            .collect();
        let med = median(&mut net);
        println!(
            "[structures] {kind:?}: steps/op min {} median {med} max {}",
            net[0],
            net[net.len() - 1]
        );
        assert!(net.iter().all(|&n| n < STEP_BUDGET), "{kind:?}: {net:?}");
    }
}

/// A thread pinned to one CPU: every stepped `add`/`add_on` completes, each
/// local one after exactly `RSEQ_ATTEMPTS` aborted sections, on the fenced path.
#[test]
fn singlestepped_ops_complete_pinned() {
    run_counter_child("counter-pinned");
}

/// The same without pinning: a stepped thread sleeps at every step and may
/// wake on another CPU, as under a real debugger.
#[test]
fn singlestepped_ops_complete_migrating() {
    run_counter_child("counter-migrating");
}

/// The contrast: a bare rseq section retried until it commits never commits
/// while single-stepped. The same driver exhausts `STEP_BUDGET` on one
/// operation; released with `PTRACE_CONT`, the loop completes at once.
#[test]
fn bare_rseq_loop_livelocks_under_singlestep() {
    if glibc_rseq_area().is_none() {
        println!("skipped: glibc did not register rseq for this thread");
        return;
    }
    let mut t = Tracee::start("bare");
    let stepping = Instant::now();
    let end = t.step_to_end();
    let step_time = stepping.elapsed();
    let steps = match end {
        StepEnd::Livelock { steps, .. } => steps,
        StepEnd::Completed(segments) => panic!(
            "the bare section committed while single-stepped (steps {segments:?}): \
             a stop inside a section no longer aborts it, so this test proves nothing"
        ),
    };
    t.continue_to_end();
    t.detach();
    let done = t.finish();
    assert!(
        done.status.success(),
        "the child failed ({}):\n{}",
        done.status,
        done.output()
    );
    let report = done
        .stderr
        .iter()
        .find_map(|l| l.strip_prefix(BARE_LINE))
        .unwrap_or("(no report)");
    println!(
        "[bare] livelock: {steps} steps in {step_time:.2?} without committing one add; \
         released: {report}"
    );
}
