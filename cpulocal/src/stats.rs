//! Counts of operations that left the fast path, shared by the structures.

use core::sync::atomic::{AtomicU64, Ordering};

/// How many operations left the fast path, as returned by the structures'
/// `stats()`.
///
/// Only slow-path events are counted, so the fast path stays a single critical
/// section: operations that completed at the first attempt are
/// `total - retried - fenced`, where the caller knows the total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathStats {
    /// Operations that completed on the fast path after one or more aborts.
    pub retried: u64,
    /// Aborted critical-section attempts, in all.
    pub aborts: u64,
    /// Operations that completed on the fenced path.
    pub fenced: u64,
}

/// The live counters behind [`PathStats`]; kept out of line by their owners.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    retried: AtomicU64,
    aborts: AtomicU64,
    fenced: AtomicU64,
}

impl Stats {
    /// An operation committed on the fast path after `aborts` aborts.
    pub(crate) fn retried(&self, aborts: u64) {
        if aborts > 0 {
            self.retried.fetch_add(1, Ordering::Relaxed);
            self.aborts.fetch_add(aborts, Ordering::Relaxed);
        }
    }

    /// An operation took the fenced path after `aborts` aborts.
    pub(crate) fn fenced(&self, aborts: u64) {
        if aborts > 0 {
            self.aborts.fetch_add(aborts, Ordering::Relaxed);
        }
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PathStats {
        PathStats {
            retried: self.retried.load(Ordering::Relaxed),
            aborts: self.aborts.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
        }
    }
}
