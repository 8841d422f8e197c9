//! Line-level stepping under gdb: a debugger single-stepping critical
//! sections, as a user meets it.
//!
//! `tests/singlestep.rs` drives `PTRACE_SINGLESTEP` by hand; this test runs
//! the real debugger a user would: a scripted `gdb -batch` session on this
//! test binary, re-run as a child with `--exact gdb_child` and
//! `CPULOCAL_GDB_CHILD` set (without it the child test returns at once).
//!
//! The session (see [`SCRIPT`]):
//!
//! 1. breaks in [`cpulocal_gdb_add_loop`], a `#[no_mangle]` function that
//!    calls `PerCpuCounter::add` (inlined) in a loop of [`LOOP_ITERATIONS`];
//! 2. `next`s until [`NEXT_ITERATIONS`] iterations are done: gdb single-steps
//!    the inlined first attempt of each `add`, which the kernel aborts at its
//!    first stop in the section; the retries run in a cold, out-of-line
//!    function that `next` steps over at full speed, so they commit;
//! 3. continues to the entry of [`cpulocal_gdb_add_once`] (one `add`, not
//!    inlined into it) and `stepi`s until that call returns to its caller,
//!    at most [`STEPI_BUDGET`] times: every instruction of the whole operation,
//!    rseq attempts and fenced path included;
//! 4. the same two phases on a list: `next` through a loop of
//!    `pop_node`/`push_node` ([`cpulocal_gdb_list_loop`]), then `stepi`
//!    through one pop and push ([`cpulocal_gdb_list_once`]), the thread
//!    pinned to one CPU;
//! 5. continues to the end and quits with the program's exit code.
//!
//! The child checks the exact sum and, from `stats()`, that the stepping
//! really crossed critical sections: each `next`ed iteration aborted at least
//! once, and the `stepi`'d call aborted exactly [`RSEQ_ATTEMPTS`] times and
//! then completed on the fenced path. Then it prints [`SUM_MARKER`]. The parent asserts that gdb exited 0, that every
//! phase of the script ran, and that the marker is there. gdb is required: if
//! it is missing the test fails and says so.
//!
//! The `next` phase also fails if a step stops where no function symbol covers
//! the pc ("Cannot find bounds of current function"): single-stepping an
//! aborted section runs exactly one instruction at `abort_ip` before it traps,
//! so that instruction must be the jump back into the function; anything else
//! leaves the user stopped "in ?? ()" inside `__rseq_failure`.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpulocal::{Engine, Node, PathStats, PerCpuCounter, PerCpuList, RSEQ_ATTEMPTS};

/// Selects the child's role; absent in the parent and in ordinary test runs.
const CHILD_ENV: &str = "CPULOCAL_GDB_CHILD";
/// The child test, for `--exact`.
const CHILD_TEST: &str = "gdb_child";
/// Printed by the child after it checked the sum: `SUM OK <sum>`.
const SUM_MARKER: &str = "SUM OK";

/// Iterations of [`cpulocal_gdb_add_loop`]: the first [`NEXT_ITERATIONS`]
/// under `next`, the rest at full speed after `continue`.
const LOOP_ITERATIONS: u64 = 1_000;
/// Iterations gdb `next`s through.
const NEXT_ITERATIONS: u64 = 100;
/// What [`cpulocal_gdb_add_once`] adds.
const ONCE: i64 = 7;
/// Instructions the `stepi` phase may take before the script gives up and
/// calls it a livelock. One stepped `add` takes a few hundred.
const STEPI_BUDGET: u32 = 20_000;
/// `next` commands the script may issue before it gives up.
const NEXT_BUDGET: u32 = 5_000;
/// Wall-clock limit for the whole gdb session; gdb is killed after it.
const GDB_TIMEOUT: Duration = Duration::from_secs(120);

/// The gdb script. Its `printf` lines tell the parent which phases ran.
///
/// `set language c` makes the expressions C (the statics are read through
/// casts). Phase 3 breaks at the first instruction of the function (`break
/// *f`), where the return address is at `$sp`, and steps until the pc is that
/// address with the stack popped.
const SCRIPT: &str = r#"
set pagination off
set confirm off
set width 0
set startup-with-shell off
set debuginfod enabled off
set language c
break cpulocal_gdb_add_loop
break *cpulocal_gdb_add_once
run
printf "GDB-PHASE loop-breakpoint\n"
set $nexts = 0
while *(unsigned long *)&CPULOCAL_GDB_ITERATIONS < NEXT_ITERATIONS && $nexts < NEXT_BUDGET
  next
  set $nexts = $nexts + 1
end
printf "GDB-PHASE next iterations=%lu nexts=%d\n", *(unsigned long *)&CPULOCAL_GDB_ITERATIONS, $nexts
continue
printf "GDB-PHASE once-breakpoint\n"
set $ret = *(unsigned long *)$sp
set $entry_sp = $sp
set $steps = 0
while !($pc == $ret && $sp > $entry_sp) && $steps < STEPI_BUDGET
  stepi
  set $steps = $steps + 1
end
printf "GDB-PHASE stepi steps=%d returned=%d\n", $steps, $pc == $ret && $sp > $entry_sp
delete
break cpulocal_gdb_list_loop
break *cpulocal_gdb_list_once
continue
printf "GDB-PHASE list-breakpoint\n"
set $nexts = 0
while *(unsigned long *)&CPULOCAL_GDB_LIST_ITERATIONS < NEXT_ITERATIONS && $nexts < NEXT_BUDGET
  next
  set $nexts = $nexts + 1
end
printf "GDB-PHASE list-next iterations=%lu nexts=%d\n", *(unsigned long *)&CPULOCAL_GDB_LIST_ITERATIONS, $nexts
continue
printf "GDB-PHASE list-once-breakpoint\n"
set $ret = *(unsigned long *)$sp
set $entry_sp = $sp
set $steps = 0
while !($pc == $ret && $sp > $entry_sp) && $steps < STEPI_BUDGET
  stepi
  set $steps = $steps + 1
end
printf "GDB-PHASE list-stepi steps=%d returned=%d\n", $steps, $pc == $ret && $sp > $entry_sp
delete
continue
if $_isvoid($_exitcode)
  printf "GDB-PHASE end: the program did not exit\n"
  quit 3
end
printf "GDB-PHASE end exitcode=%d\n", $_exitcode
quit $_exitcode
"#;

/// Iterations [`cpulocal_gdb_add_loop`] has completed; gdb reads it by name.
#[no_mangle]
static CPULOCAL_GDB_ITERATIONS: AtomicU64 = AtomicU64::new(0);

/// The function gdb breaks in and `next`s through: `add(1)` in a loop.
#[inline(never)]
#[no_mangle]
fn cpulocal_gdb_add_loop(counter: &PerCpuCounter, iterations: u64) {
    for i in 0..iterations {
        counter.add(1);
        CPULOCAL_GDB_ITERATIONS.store(i + 1, Ordering::Relaxed);
    }
}

/// One `add`, as a call gdb can `stepi` through from entry to return.
#[inline(never)]
#[no_mangle]
fn cpulocal_gdb_add_once(counter: &PerCpuCounter, n: i64) {
    counter.add(std::hint::black_box(n));
}

/// Iterations [`cpulocal_gdb_list_loop`] has completed; gdb reads it by name.
#[no_mangle]
static CPULOCAL_GDB_LIST_ITERATIONS: AtomicU64 = AtomicU64::new(0);

/// The list loop gdb `next`s through: a node popped and pushed back.
#[inline(never)]
#[no_mangle]
fn cpulocal_gdb_list_loop(list: &PerCpuList<u64>, iterations: u64) {
    for i in 0..iterations {
        if let Some(node) = list.pop_node() {
            list.push_node(node);
        }
        CPULOCAL_GDB_LIST_ITERATIONS.store(i + 1, Ordering::Relaxed);
    }
}

/// One node popped and pushed back, as a call gdb can `stepi` through.
#[inline(never)]
#[no_mangle]
fn cpulocal_gdb_list_once(list: &PerCpuList<u64>) {
    let node = list.pop_node().expect("the node is on this CPU's list");
    list.push_node(std::hint::black_box(node));
}

/// Pins the calling thread to the first CPU it may run on.
fn pin_to_first_allowed_cpu() {
    // SAFETY: cpu_set_t is plain data; the calls read and write only the set
    // passed, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("an allowed CPU");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one),
            0
        );
        libc::sched_yield();
    }
}

fn delta(after: PathStats, before: PathStats) -> PathStats {
    let mut d = PathStats::default();
    d.retried = after.retried - before.retried;
    d.aborts = after.aborts - before.aborts;
    d.fenced = after.fenced - before.fenced;
    d
}

/// The debuggee: a no-op unless `CHILD_ENV` is set.
#[test]
fn gdb_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // If gdb dies (the parent's timeout kills it), do not live on as an
    // orphan that nobody waits for.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    let status = cpulocal::status();
    println!("cpulocal status of the debugged thread:\n{status}");
    assert_eq!(
        status.engine,
        Engine::Rseq,
        "this test steps through rseq critical sections, but the rseq engine is not running"
    );

    let counter = PerCpuCounter::new();
    cpulocal_gdb_add_loop(&counter, LOOP_ITERATIONS);
    let after_loop = counter.stats();
    println!("after the loop ({NEXT_ITERATIONS} iterations under `next`): {after_loop:?}");

    cpulocal_gdb_add_once(&counter, ONCE);
    let once = delta(counter.stats(), after_loop);
    println!("the `stepi`ped add: {once:?}");

    let expected = LOOP_ITERATIONS as i64 + ONCE;
    let sum = counter.sum();
    assert_eq!(
        sum, expected,
        "the counter lost or duplicated adds under gdb"
    );

    // `stepi` through the whole call: every attempt is aborted at its first
    // stop inside the section, RSEQ_ATTEMPTS times, then the fenced path.
    let attempts = u64::from(RSEQ_ATTEMPTS);
    assert_eq!(
        (once.retried, once.aborts, once.fenced),
        (0, attempts, 1),
        "the stepi'd add must take the fenced path after exactly RSEQ_ATTEMPTS aborts: {once:?}"
    );
    // `next` single-steps the inlined attempt (aborted at its first stop in
    // the section), but steps *over* the cold call to the retry loop, which
    // runs at full speed and commits (or, rarely preempted, goes on retrying
    // or fenced). So each of the stepped iterations shows one abort and one
    // retried (or fenced) operation; the other iterations ran at full speed.
    assert!(
        after_loop.aborts >= NEXT_ITERATIONS
            && after_loop.retried + after_loop.fenced >= NEXT_ITERATIONS,
        "each of the {NEXT_ITERATIONS} adds under `next` must abort and complete off the inline attempt: {after_loop:?}"
    );

    // The list, pinned: the node survives every stepped pop and push, and
    // the stepi'd pop and push each abort RSEQ_ATTEMPTS times, then complete
    // fenced.
    pin_to_first_allowed_cpu();
    let list = PerCpuList::new();
    let node = Node::new(41u64);
    let at = &*node as *const u64;
    list.push_node(node);
    cpulocal_gdb_list_loop(&list, LOOP_ITERATIONS);
    let before = list.stats();
    cpulocal_gdb_list_once(&list);
    let once = delta(list.stats(), before);
    println!("the `stepi`ped pop and push: {once:?}");
    assert_eq!(
        (once.retried, once.aborts, once.fenced),
        (0, 2 * attempts, 2),
        "the stepi'd pop and push must each take the fenced path after RSEQ_ATTEMPTS aborts"
    );
    let node = list.pop_node().expect("the node is still there");
    assert_eq!(
        (&*node as *const u64, *node),
        (at, 41),
        "the same node, intact"
    );
    assert!(list.is_empty());
    println!("{SUM_MARKER} {sum}");
}

/// A file removed when dropped, also when the test panics.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads a child pipe to the end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

#[test]
fn stepping_through_add_under_gdb_completes_with_the_exact_sum() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // in the child: only `gdb_child` runs
    }
    let started = Instant::now();
    let exe = std::env::current_exe().expect("the test binary's path");
    let script = SCRIPT
        .replace("NEXT_ITERATIONS", &NEXT_ITERATIONS.to_string())
        .replace("NEXT_BUDGET", &NEXT_BUDGET.to_string())
        .replace("STEPI_BUDGET", &STEPI_BUDGET.to_string());
    let script_path =
        TempFile(std::env::temp_dir().join(format!("cpulocal-gdb-{}.gdb", std::process::id())));
    std::fs::write(&script_path.0, &script).expect("write the gdb script");

    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-x"])
        .arg(&script_path.0)
        .arg("--args")
        .arg(&exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("DEBUGINFOD_URLS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the timeout can kill gdb and the
        // debuggee together.
        .process_group(0);
    let mut gdb = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "gdb is not installed (or not on PATH): this test needs it. \
             Install it (Debian/Ubuntu: `apt-get install gdb`)."
        ),
        Err(e) => panic!("cannot start gdb: {e}"),
    };
    let out = drain(gdb.stdout.take().expect("piped"));
    let err = drain(gdb.stderr.take().expect("piped"));

    let status = loop {
        if let Some(status) = gdb.try_wait().expect("wait for gdb") {
            break Some(status);
        }
        if started.elapsed() > GDB_TIMEOUT {
            // SAFETY: kill takes integers only; the group is gdb's own (it was
            // started as its leader), holding gdb and the debuggee.
            unsafe { libc::kill(-(gdb.id() as libc::pid_t), libc::SIGKILL) };
            let _ = gdb.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let log = format!("gdb stdout:\n{out}\ngdb stderr:\n{err}");
    let Some(status) = status else {
        panic!("gdb did not finish within {GDB_TIMEOUT:?} (a livelock?); killed.\n{log}");
    };
    println!("{log}");
    println!("gdb session: {:.2?}", started.elapsed());

    // A `next` that stops where no function symbol covers the pc cannot go
    // on. Single-stepping an aborted section executes exactly one instruction
    // at abort_ip before it traps, so abort_ip must be the `jmp` back into
    // the function (code with a symbol and line table); any other instruction
    // there leaves the user stopped in `__rseq_failure`, "in ?? ()".
    assert!(
        !err.contains("Cannot find bounds of current function"),
        "`next` stopped in code without a function symbol and could not go on: \
         probably inside `__rseq_failure`, because the instruction at abort_ip is \
         not the jump back into the function (see the `??` stop in the log)\n{log}"
    );
    assert!(status.success(), "gdb exited with {status}\n{log}");
    for phase in [
        "GDB-PHASE loop-breakpoint",
        &format!("GDB-PHASE next iterations={NEXT_ITERATIONS} "),
        "GDB-PHASE once-breakpoint",
        "GDB-PHASE list-breakpoint",
        &format!("GDB-PHASE list-next iterations={NEXT_ITERATIONS} "),
        "GDB-PHASE list-once-breakpoint",
        "GDB-PHASE end exitcode=0",
    ] {
        assert!(
            out.contains(phase),
            "the script did not reach {phase:?}\n{log}"
        );
    }
    let stepi = out
        .lines()
        .find_map(|l| l.strip_prefix("GDB-PHASE stepi steps="))
        .unwrap_or_else(|| panic!("no stepi phase\n{log}"));
    assert!(
        stepi.ends_with("returned=1"),
        "stepi did not return from the add within {STEPI_BUDGET} steps: {stepi}\n{log}"
    );
    let list_stepi = out
        .lines()
        .find_map(|l| l.strip_prefix("GDB-PHASE list-stepi steps="))
        .unwrap_or_else(|| panic!("no list stepi phase\n{log}"));
    assert!(
        list_stepi.ends_with("returned=1"),
        "stepi did not return from the pop and push within {STEPI_BUDGET} steps: {list_stepi}\n{log}"
    );
    let expected = LOOP_ITERATIONS as i64 + ONCE;
    assert!(
        out.lines().any(|l| l == format!("{SUM_MARKER} {expected}")),
        "the child did not print {SUM_MARKER:?} {expected}\n{log}"
    );
}
