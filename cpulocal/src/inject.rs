//! Fault injection for stress testing, in the spirit of the kernel's rseq
//! `param_test`: delay loops at numbered points of every critical section and
//! of the fenced path, and every N passes through a point a yield, a sleep or
//! a signal. Compiled only with the `inject` feature; without it the points
//! do not exist (no instruction, no load).
//!
//! Points:
//! - 1: in a section, after arming, before the fence/CPU check;
//! - 2: in a section, after the check, before the body;
//! - 3: in a section, before the commit;
//! - 4: on the fenced path, fence held and sections stopped, before the
//!   operation;
//! - 5: on the fenced path, after the operation, before the release;
//! - 6: on the fenced path, inside a shape's operation: its reads done,
//!   before the store that completes it (what a section that ignored the
//!   fence would overwrite, or be overwritten by).
//!
//! Points 1 to 3 run only the delay loop (asm cannot yield or sleep); 4 to
//! 6 also run the every-N action (signals are blocked there, so a signal
//! raised at 4 to 6 is delivered after the release).
//!
//! # Examples
//!
//! ```
//! use cpulocal::inject;
//!
//! inject::set_delay(2, 1000);              // widen the check-to-commit window
//! inject::set_every(7, inject::Action::Yield); // yield at every 7th fenced pass
//! let c = cpulocal::PerCpuCounter::new();
//! c.add(1);
//! inject::reset();
//! assert_eq!(c.sum(), 1);
//! ```

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Number of injection points (1 to 6; index 0 is unused).
pub const POINTS: usize = 7;

/// Delay-loop iterations per point, read by the sections' asm.
pub static LOOPS: [AtomicU32; POINTS] = [const { AtomicU32::new(0) }; POINTS];

static EVERY: AtomicU64 = AtomicU64::new(0);
static ACTION: AtomicU32 = AtomicU32::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);

/// What happens every N passes through points 4 to 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// `sched_yield()`.
    Yield,
    /// Sleep 1 ms.
    Sleep,
    /// `raise(SIGUSR1)` (install a handler first).
    Signal,
}

/// Sets the delay loop at `point` (1 to 6) to `loops` iterations (0: off).
///
/// # Panics
///
/// If `point` is 0 or not below [`POINTS`].
pub fn set_delay(point: usize, loops: u32) {
    assert!(
        (1..POINTS).contains(&point),
        "injection points are 1 to {}",
        POINTS - 1
    );
    LOOPS[point].store(loops, Ordering::Relaxed);
}

/// Runs `action` at every `every`-th pass through points 4 to 6 (0: never).
pub fn set_every(every: u64, action: Action) {
    ACTION.store(action as u32, Ordering::Relaxed);
    EVERY.store(every, Ordering::Relaxed);
}

/// Turns every injection off.
pub fn reset() {
    for l in &LOOPS {
        l.store(0, Ordering::Relaxed);
    }
    set_every(0, Action::None);
}

/// Passes through the points so far (the counter behind `set_every`).
pub fn passes() -> u64 {
    PASSES.load(Ordering::Relaxed)
}

/// Injection point `n` in Rust code: the delay loop, then, every N passes,
/// the action.
#[inline(never)]
pub fn point(n: usize) {
    let loops = LOOPS[n].load(Ordering::Relaxed);
    for _ in 0..loops {
        core::hint::spin_loop();
    }
    let every = EVERY.load(Ordering::Relaxed);
    if every == 0 {
        return;
    }
    if !(PASSES.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every) {
        return;
    }
    match ACTION.load(Ordering::Relaxed) {
        1 => std::thread::yield_now(),
        2 => std::thread::sleep(std::time::Duration::from_millis(1)),
        3 => {
            // SAFETY: raise has no memory arguments.
            #[allow(unsafe_code)]
            unsafe {
                libc::raise(libc::SIGUSR1);
            }
        }
        _ => {}
    }
}
