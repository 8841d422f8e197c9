//! Time-slice extension (Linux 7.0+): `status()` says what the kernel offers
//! this thread, lock holders get extensions where it is on and none where it
//! is off, and the lock stays exact either way.
//!
//! Each kernel gives a different answer, and each test asserts the one the
//! kernel gives (probed here with the raw prctl, not through cpulocal):
//!
//! | kernel | glibc's 32-byte area | cpulocal's own area (`glibc.pthread.rseq=0`) |
//! |---|---|---|
//! | before 7.0, or built without it (Debian's) | `Unsupported` | `Unsupported` |
//! | 7.x with `CONFIG_RSEQ_SLICE_EXTENSION` | `LegacyArea` | `On`, extensions granted |
//!
//! The guest runner's `7.3-slice` kernel is the second row
//! (`docs/guests.md`); this machine's kernel is the first.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use cpulocal::{PerCpuLock, Registration, SliceExtension};

mod common;

/// Names the child test to run in a re-executed test binary.
const CHILD_ENV: &str = "CPULOCAL_SLICE_CHILD";

/// `prctl` option `PR_RSEQ_SLICE_EXTENSION` (Linux 7.0+), its `GET`
/// command, and the kernel's `ENOTSUPP` (not a libc errno).
const PR_RSEQ_SLICE_EXTENSION: libc::c_int = 79;
const PR_RSEQ_SLICE_EXTENSION_GET: libc::c_ulong = 1;
const ENOTSUPP: i32 = 524;

/// The kernel's answer to `prctl(PR_RSEQ_SLICE_EXTENSION, GET)`: Ok where it
/// has the feature (whatever this thread's area), the errno where not.
fn kernel_has_it() -> Result<(), i32> {
    // SAFETY: this prctl takes no pointers.
    let r = unsafe {
        libc::prctl(
            PR_RSEQ_SLICE_EXTENSION,
            PR_RSEQ_SLICE_EXTENSION_GET,
            0 as libc::c_ulong,
            0,
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

/// Whether cpulocal's own area is longer than the original 32 bytes here:
/// the kernel's feature size (auxiliary vector) is above 32.
fn own_area_is_long() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(27) > 32 }
}

/// Runs `child` in a re-executed test binary with `env` added; panics with its
/// output unless it passed.
fn run_child(child: &str, env: &[(&str, &str)]) {
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            child,
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, child)
        .envs(env.iter().copied())
        .output()
        .expect("spawning the child test process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child {child} failed ({}):\n{text}",
        out.status
    );
    // What the child measured, for the log.
    for line in text
        .lines()
        .filter_map(|l| l.find("slice:").map(|at| &l[at..]))
    {
        println!("{line}");
    }
}

/// Whether this process is the child named `name` (the ignored tests run only
/// there).
fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|c| c == name)
}

/// Holds of one lock slot per CPU by several threads per CPU, pinned, each
/// hold a few microseconds of work: the oversubscribed lock that time-slice
/// extension is for. Returns (holds, extensions granted during the run);
/// panics if a hold was lost.
fn oversubscribed_holds(per_cpu: usize, run_for: Duration) -> (u64, u64) {
    let cpus = common::allowed_cpus();
    let lock = PerCpuLock::new(|_| 0u64);
    let holds = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let threads = cpus.len() * per_cpu;
    let start = Barrier::new(threads + 1);
    let before = cpulocal::status().slice_extensions_granted;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (lock, holds, stop, start, cpu) =
                (&lock, &holds, &stop, &start, cpus[t % cpus.len()]);
            s.spawn(move || {
                common::pin_current(cpu);
                // The thread's set-up (and its prctl) before the first hold.
                assert_eq!(cpulocal::current_cpu(), cpu);
                start.wait();
                let mut mine = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut g = lock.lock();
                    *g += 1;
                    // A few microseconds of work under the lock, no system
                    // call (one would end a grant).
                    let mut x = mine;
                    for i in 0..2_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                    std::hint::black_box(x);
                    drop(g);
                    mine += 1;
                }
                holds.fetch_add(mine, Ordering::Relaxed);
            });
        }
        start.wait();
        std::thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
    });
    let holds = holds.into_inner();
    let counted: u64 = lock.into_vec().iter().sum();
    assert_eq!(
        counted, holds,
        "a hold was lost or doubled: the lock did not exclude"
    );
    (holds, cpulocal::status().slice_extensions_granted - before)
}

fn run_for() -> Duration {
    Duration::from_secs_f64((2.0 * common::scale()).max(1.0))
}

#[test]
fn status_says_what_the_kernel_offers() {
    let s = cpulocal::status();
    let expected = match (s.fenced_because, kernel_has_it(), s.rseq_area_len) {
        (Some(_), _, _) => SliceExtension::NoRseq,
        (None, Err(e), _) => {
            // EINVAL before 7.0, ENOTSUPP when built without it.
            assert!(
                e == libc::EINVAL || e == ENOTSUPP,
                "unexpected prctl answer {e}"
            );
            SliceExtension::Unsupported
        }
        (None, Ok(()), Some(len)) if len > 32 => SliceExtension::On,
        (None, Ok(()), _) => SliceExtension::LegacyArea,
    };
    assert_eq!(s.slice_extension, expected, "status: {s}");
    println!("slice: this thread: {}", s.slice_extension);
}

#[test]
fn own_area_gets_extensions_where_the_kernel_has_them() {
    run_child(
        "child_own_area",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
    );
}

#[test]
#[ignore = "run by own_area_gets_extensions_where_the_kernel_has_them"]
fn child_own_area() {
    assert!(is_child("child_own_area"));
    let s = cpulocal::status();
    if s.fenced_because.is_some() {
        assert_eq!(s.slice_extension, SliceExtension::NoRseq);
        return;
    }
    assert_eq!(s.registration, Registration::Cpulocal, "status: {s}");
    let offered = kernel_has_it().is_ok() && own_area_is_long();
    let (holds, granted) = oversubscribed_holds(4, run_for());
    println!(
        "slice: own area, {}: {holds} holds, {granted} extensions granted",
        s.slice_extension
    );
    if offered {
        assert_eq!(s.slice_extension, SliceExtension::On, "status: {s}");
        assert!(
            granted > 0,
            "{holds} oversubscribed holds and not one extension granted: the holders did not ask"
        );
    } else {
        assert_eq!(
            s.slice_extension,
            SliceExtension::Unsupported,
            "status: {s}"
        );
        assert_eq!(granted, 0, "extensions counted on a kernel without them");
    }
}

#[test]
fn the_environment_turns_it_off() {
    run_child(
        "child_turned_off",
        &[
            ("GLIBC_TUNABLES", "glibc.pthread.rseq=0"),
            ("CPULOCAL_NO_SLICE_EXTENSION", "1"),
        ],
    );
}

#[test]
#[ignore = "run by the_environment_turns_it_off"]
fn child_turned_off() {
    assert!(is_child("child_turned_off"));
    let s = cpulocal::status();
    if s.fenced_because.is_some() {
        assert_eq!(s.slice_extension, SliceExtension::NoRseq);
        return;
    }
    let offered = kernel_has_it().is_ok() && own_area_is_long();
    let expected = if offered {
        SliceExtension::NotEnabled
    } else {
        SliceExtension::Unsupported
    };
    assert_eq!(s.slice_extension, expected, "status: {s}");
    let started = Instant::now();
    let (holds, granted) = oversubscribed_holds(4, run_for());
    println!(
        "slice: turned off, {}: {holds} holds in {:?}, {granted} extensions granted",
        s.slice_extension,
        started.elapsed()
    );
    assert_eq!(granted, 0, "extensions granted although turned off");
}

#[test]
fn holds_stay_exact_in_this_process() {
    // Whatever this process's area: exact holds, and no grants unless on.
    let s = cpulocal::status();
    let (holds, granted) = oversubscribed_holds(2, Duration::from_millis(300));
    if s.slice_extension != SliceExtension::On {
        assert_eq!(
            granted, 0,
            "{holds} holds: extensions counted while off ({s})"
        );
    }
}
