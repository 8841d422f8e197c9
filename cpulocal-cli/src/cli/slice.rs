//! `cpulocal slice`: time-slice extension under oversubscription. Several
//! threads per CPU, pinned, lock their CPU's `PerCpuLock` slot, work a few
//! microseconds under it, and unlock. When the kernel preempts a holder, the
//! other threads of that CPU find the slot held and spin, then give their CPU
//! away, until the holder runs again: with the extension the kernel defers
//! that preemption until the holder unlocks.
//!
//! Rounds alternate between the two modes in one process: with the extension
//! as cpulocal enables it, and without (each thread of such a round turns it
//! off for itself with the prctl before it starts). The waiters count their
//! own spins and yields, so the figures are counts, which stay meaningful in
//! an emulated guest where times do not.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use cpulocal::{Error, PerCpuLock, SliceExtension};

use super::{grouped, Failure, SliceArgs};

/// Spins on a held slot before a waiter yields its CPU.
const SPINS_BEFORE_YIELD: u64 = 100;

/// What the threads of the rounds of one mode did, summed.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    holds: u64,
    /// Attempts that found the slot held.
    held: u64,
    /// Times a waiter gave its CPU away (`sched_yield`) after spinning.
    yields: u64,
    /// Extensions the kernel granted to the holders.
    granted: u64,
    rounds: u64,
}

/// `prctl` option `PR_RSEQ_SLICE_EXTENSION` (Linux 7.0+) and its `SET`
/// command (libc does not name them yet).
const PR_RSEQ_SLICE_EXTENSION: libc::c_int = 79;
const PR_RSEQ_SLICE_EXTENSION_SET: libc::c_ulong = 2;

/// Turns time-slice extension off for the calling thread (the kernel clears
/// the enabled flag in its rseq area, which cpulocal's lock reads).
fn turn_off_for_this_thread() -> Result<(), String> {
    // SAFETY: prctl(PR_RSEQ_SLICE_EXTENSION, SET, 0) takes no pointers.
    let r = unsafe {
        libc::prctl(
            PR_RSEQ_SLICE_EXTENSION,
            PR_RSEQ_SLICE_EXTENSION_SET,
            0 as libc::c_ulong,
            0,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "prctl(PR_RSEQ_SLICE_EXTENSION, SET, 0) failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// One round: `per_cpu` threads on each allowed CPU for `length`.
fn round(args: &SliceArgs, cpus: &[usize], with: bool) -> Result<Tally, Failure> {
    let lock = PerCpuLock::new(|_| 0u64);
    let stop = AtomicBool::new(false);
    let threads = cpus.len() * args.per_cpu as usize;
    let start = Barrier::new(threads + 1);
    let (holds, held, yields) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failed = std::sync::Mutex::new(None::<String>);
    let granted_before = cpulocal::status().slice_extensions_granted;
    std::thread::scope(|s| {
        for t in 0..threads {
            let cpu = cpus[t % cpus.len()];
            let (lock, stop, start, holds, held, yields, failed) =
                (&lock, &stop, &start, &holds, &held, &yields, &failed);
            s.spawn(move || {
                let set_up = cpulocal_cli::runner::pin_current_thread(cpu)
                    .map_err(|e| format!("pinning to CPU {cpu}: {e}"))
                    .and_then(|()| {
                        // The thread's set-up, where cpulocal enables the
                        // extension; a round without turns it off again.
                        let on = cpulocal::status().slice_extension == SliceExtension::On;
                        if on && !with {
                            turn_off_for_this_thread()
                        } else {
                            Ok(())
                        }
                    });
                if let Err(e) = set_up {
                    *failed.lock().unwrap() = Some(e);
                }
                start.wait();
                let (mut mine, mut found_held, mut gave_up) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let mut spins = 0;
                    let mut g = loop {
                        match lock.try_lock() {
                            Ok(g) => break g,
                            Err(Error::WouldBlock { .. }) => {
                                found_held += 1;
                                spins += 1;
                                if spins % SPINS_BEFORE_YIELD == 0 {
                                    gave_up += 1;
                                    std::thread::yield_now();
                                } else {
                                    std::hint::spin_loop();
                                }
                            }
                            Err(e) => {
                                *failed.lock().unwrap() = Some(format!("try_lock: {e}"));
                                return;
                            }
                        }
                    };
                    *g += 1;
                    // Work under the lock, without system calls (one would
                    // end a grant).
                    let mut x = mine;
                    for i in 0..args.hold {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                    std::hint::black_box(x);
                    drop(g);
                    mine += 1;
                }
                holds.fetch_add(mine, Ordering::Relaxed);
                held.fetch_add(found_held, Ordering::Relaxed);
                yields.fetch_add(gave_up, Ordering::Relaxed);
            });
        }
        start.wait();
        std::thread::sleep(Duration::from_millis(args.round_ms));
        stop.store(true, Ordering::Relaxed);
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(Failure::Broken(e));
    }
    let holds = holds.into_inner();
    let counted: u64 = lock.into_vec().iter().sum();
    if counted != holds {
        return Err(Failure::Broken(format!(
            "the lock did not exclude: {holds} holds, {counted} counted in the slots"
        )));
    }
    Ok(Tally {
        holds,
        held: held.into_inner(),
        yields: yields.into_inner(),
        granted: cpulocal::status().slice_extensions_granted - granted_before,
        rounds: 1,
    })
}

/// Runs the alternating rounds and prints a table of counts.
pub fn run(out: &mut impl Write, args: &SliceArgs) -> Result<(), Failure> {
    let status = cpulocal::status();
    writeln!(out, "time-slice extension: {}", status.slice_extension)?;
    let cpus = cpulocal_cli::runner::allowed_cpus()
        .map_err(|e| Failure::Broken(format!("reading the allowed CPUs: {e}")))?;
    let available = status.slice_extension == SliceExtension::On;
    writeln!(
        out,
        "{} threads per CPU on {} CPUs, pinned; {} rounds of {} ms, alternating{}; \
         {} iterations of work under the lock",
        args.per_cpu,
        cpus.len(),
        args.rounds,
        args.round_ms,
        if available {
            " with and without the extension"
        } else {
            " (without: the extension is not available here)"
        },
        grouped(args.hold as i64),
    )?;
    let (mut on, mut off) = (Tally::default(), Tally::default());
    for r in 0..args.rounds {
        let with = available && r % 2 == 0;
        let t = round(args, &cpus, with)?;
        let sum = if with { &mut on } else { &mut off };
        sum.holds += t.holds;
        sum.held += t.held;
        sum.yields += t.yields;
        sum.granted += t.granted;
        sum.rounds += 1;
    }
    writeln!(
        out,
        "{:<10} {:>7} {:>12} {:>14} {:>13} {:>12} {:>16}",
        "mode", "rounds", "holds", "found held", "waiter yields", "granted", "yields/1000 holds"
    )?;
    for (name, t) in [("with", on), ("without", off)] {
        if t.rounds == 0 {
            continue;
        }
        writeln!(
            out,
            "{:<10} {:>7} {:>12} {:>14} {:>13} {:>12} {:>16.1}",
            name,
            t.rounds,
            grouped(t.holds as i64),
            grouped(t.held as i64),
            grouped(t.yields as i64),
            grouped(t.granted as i64),
            t.yields as f64 * 1000.0 / t.holds.max(1) as f64,
        )?;
    }
    if available && off.granted != 0 {
        return Err(Failure::Broken(format!(
            "{} extensions granted in rounds where the threads had turned it off",
            off.granted
        )));
    }
    Ok(())
}
