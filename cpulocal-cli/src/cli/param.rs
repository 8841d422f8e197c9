//! `cpulocal param-test`: one of librseq's `param_test` benchmark loops on
//! cpulocal's API (or on its hand-written C version), in the shape
//! `param_test_benchmark -T <loop> -t <threads> -r <reps>` runs it: that many
//! threads, not pinned, each running the loop `reps` times on one structure,
//! checked afterwards. Run it alternately with librseq's binary to time the
//! two side by side (`cpulocal bench --only c` does the same in one process,
//! against the C versions).

use std::io::Write;
use std::time::{Duration, Instant};

use cpulocal_cli::loops::{Mode, Side, Workload};

use super::{grouped, Failure, ParamTestArgs};

/// CPU time of the whole process so far (every thread).
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the loop and prints one line: what ran, wall and CPU time, the check.
pub fn run(out: &mut impl Write, args: &ParamTestArgs) -> Result<(), Failure> {
    let lp = args.test;
    let mode = if args.mm_cid {
        Mode::MmCid
    } else {
        Mode::CpuId
    };
    let side = match (args.c, args.area_hoisted) {
        (true, true) => Side::CHoisted,
        (true, false) => Side::C,
        (false, _) => Side::Cpulocal,
    };
    let w = Workload::new(lp, mode, side).ok_or_else(|| {
        Failure::Broken(format!(
            "the {} loop cannot run by {} here (it needs the rseq engine{})",
            lp.name(),
            mode.name(),
            if args.c {
                ", glibc's rseq area and the C baseline"
            } else {
                ""
            }
        ))
    })?;
    let (cpu0, t0) = (process_cpu_time(), Instant::now());
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| w.run(args.reps));
        }
    });
    let (wall, cpu) = (t0.elapsed(), process_cpu_time() - cpu0);
    w.check().map_err(Failure::Broken)?;
    writeln!(
        out,
        "param-test -T {} ({}, {}, {}): {} threads x {} reps: {:.3} s wall, {:.3} s CPU, {:.2} ns CPU per iteration; structure exact",
        lp.letter(),
        lp.label(),
        mode.name(),
        match side {
            Side::C => "C",
            Side::CHoisted => "C, area hoisted",
            Side::Cpulocal => "cpulocal",
        },
        args.threads,
        grouped(args.reps as i64),
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e9 / (args.threads as f64 * args.reps as f64),
    )?;
    Ok(())
}
