//! The fenced engine: the user-space equivalent of `cpu_opv`.
//!
//! Every per-CPU slot has a fence word F. An operation on the slot of CPU c
//! that cannot (or may not) run as a critical section does:
//!
//! 1. acquire F (compare-and-swap 0 -> own thread id; spin briefly, then sleep
//!    on a futex, so a preempted holder costs waiters no CPU);
//! 2. `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, c)`, when sections can run
//!    in this process;
//! 3. the operation, as ordinary code;
//! 4. release F with a store-release, waking a sleeper if one is marked.
//!
//! Every section checks F == 0 after its CPU check and before reading data.
//! A section that saw F == 0 either committed before the membarrier's IPI, so
//! its store is visible here, or is aborted by it before step 3 begins. A
//! section that starts later sees F != 0 and leaves for this path. So step 3
//! has the slot to itself, from any CPU, however often it is preempted or
//! single-stepped.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::{engine, sys};

/// Spins on a held fence before sleeping. A holder's work is a few hundred
/// nanoseconds (a membarrier and one operation), so a short spin usually wins;
/// a preempted holder is waited for on the futex instead.
pub const SPINS_BEFORE_SLEEP: u32 = 100;

/// Set in the fence word when a thread sleeps on it.
const WAITERS: u32 = 1 << 31;

/// A fence word: 0 when free, else the holder's thread id (and [`WAITERS`]).
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct Fence(AtomicU32);

/// The fence is already held by the calling thread: taking it again would
/// deadlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldByCaller;

impl Fence {
    pub(crate) const fn new() -> Self {
        Fence(AtomicU32::new(0))
    }

    /// Sets the word directly, to drive the sections' fenced branch in tests.
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, word: u32) {
        self.0.store(word, Ordering::Relaxed);
    }

    /// Takes the fence for thread `me`, waiting for another holder to finish.
    pub(crate) fn acquire(&self, me: u32) -> Result<(), HeldByCaller> {
        let mut cur = match self
            .0
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return Ok(()),
            Err(cur) => cur,
        };
        if cur & !WAITERS == me {
            return Err(HeldByCaller);
        }
        for _ in 0..SPINS_BEFORE_SLEEP {
            if cur == 0 {
                match self
                    .0
                    .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return Ok(()),
                    Err(c) => cur = c,
                }
            } else {
                core::hint::spin_loop();
                cur = self.0.load(Ordering::Relaxed);
            }
        }
        // Sleep. Once a thread has slept it takes the fence with WAITERS set,
        // since other sleepers may remain and must be woken on release.
        loop {
            if cur == 0 {
                match self
                    .0
                    .compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return Ok(()),
                    Err(c) => {
                        cur = c;
                        continue;
                    }
                }
            }
            if cur & WAITERS == 0 {
                if let Err(c) = self.0.compare_exchange(
                    cur,
                    cur | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    cur = c;
                    continue;
                }
                cur |= WAITERS;
            }
            sys::futex_wait(&self.0, cur);
            cur = self.0.load(Ordering::Relaxed);
        }
    }

    /// Releases the fence (store-release), waking one sleeper if any.
    pub(crate) fn release(&self) {
        if self.0.swap(0, Ordering::Release) & WAITERS != 0 {
            sys::futex_wake(&self.0, 1);
        }
    }
}

/// Aborts every critical section on `cpu` (step 2), when sections can run.
pub(crate) fn barrier(cpu: usize) {
    if !engine::sections_possible() || crate::testing::skip_membarrier() {
        return;
    }
    if sys::membarrier_rseq(Some(cpu)).is_err() {
        // Registration succeeded, so this cannot fail for a possible CPU; if it
        // ever does, the all-CPU form gives the same guarantee.
        sys::membarrier_rseq(None)
            .expect("membarrier(PRIVATE_EXPEDITED_RSEQ) failed after registration");
    }
}

/// Runs `op` with `fence` (the fence of CPU `cpu`'s slot) held, all signals of
/// the calling thread blocked. Blocking signals is what makes the fenced path
/// async-signal-safe: a handler can never interrupt its own thread while it
/// holds a fence, so it can never wait on itself, nor on a thread that waits
/// on it.
#[inline(never)]
pub(crate) fn with_signals_blocked<R>(fence: &Fence, cpu: usize, op: impl FnOnce() -> R) -> R {
    let _blocked = sys::SignalsBlocked::new();
    fence
        .acquire(engine::tid())
        .expect("a fence cannot be held by a thread whose signals are blocked while it holds it");
    barrier(cpu);
    let r = op();
    fence.release();
    r
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reentry_is_refused() {
        let f = Fence::new();
        f.acquire(7).unwrap();
        assert_eq!(f.acquire(7), Err(HeldByCaller));
        f.release();
        f.acquire(7).unwrap();
        f.release();
    }

    #[test]
    fn excludes_and_wakes_sleepers() {
        struct Shared(Fence, core::cell::UnsafeCell<u64>);
        // SAFETY: the u64 is only touched with the fence held.
        unsafe impl Sync for Shared {}
        let s = Arc::new(Shared(Fence::new(), core::cell::UnsafeCell::new(0)));
        let threads: Vec<_> = (0..8u32)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        s.0.acquire(1000 + i).unwrap();
                        // SAFETY: exclusive under the fence.
                        unsafe {
                            let v = *s.1.get();
                            if v.is_multiple_of(997) {
                                std::thread::yield_now(); // let others sleep on it
                            }
                            *s.1.get() = v + 1;
                        }
                        s.0.release();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // SAFETY: all threads joined.
        assert_eq!(unsafe { *s.1.get() }, 8 * 20_000);
        assert_eq!(s.0 .0.load(Ordering::Relaxed), 0);
    }
}
