//! How per-CPU structures number their slots: by CPU (`cpu_id`) or by
//! concurrency id (`mm_cid`).

use core::mem::offset_of;

use crate::abi::{self, Rseq};
use crate::{engine, sys};

/// How a per-CPU structure numbers its slots, chosen at construction.
///
/// - [`Index::Cpu`]: one slot per possible CPU, indexed by the CPU number.
/// - [`Index::MmCid`]: indexed by the thread's concurrency id (rseq's `mm_cid`,
///   Linux 6.3+), a number below min(threads, allowed CPUs) that is unique
///   among the process's running threads. A structure then has
///   min([`possible_cpus()`](crate::possible_cpus), CPUs the constructing
///   thread may run on) slots, so a process confined to 4 CPUs of a 256-CPU
///   machine uses 4 slots, not 256. Build such structures on a thread whose
///   affinity is the process's: one built on a thread pinned to one CPU has
///   one slot, and threads with higher concurrency ids then take the fenced
///   path (correct, but slow: each fenced operation on an `mm_cid` slot
///   interrupts every CPU).
///
/// Where the kernel does not fill `mm_cid` (feature size below 28 bytes, before
/// Linux 6.3) or no thread runs critical sections, asking for `MmCid` gives
/// `Cpu` indexing: [`Status::mm_cid_indexing`](crate::Status::mm_cid_indexing)
/// says which, and each structure's `index()` tells what it got.
///
/// A fenced operation on an `mm_cid` slot aborts critical sections on every
/// CPU (`membarrier` cannot target a concurrency id), where a `cpu_id` slot's
/// aborts those of one CPU: remote and fenced operations cost more, local ones
/// the same.
///
/// # Examples
///
/// ```
/// use cpulocal::{Index, PerCpuCounter};
///
/// let c = PerCpuCounter::with_index(Index::MmCid);
/// c.add(1);
/// assert_eq!(c.sum(), 1);
/// // MmCid where the kernel offers it, Cpu otherwise.
/// assert!(c.index() == Index::MmCid || !cpulocal::status().mm_cid_indexing);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Index {
    /// By CPU number (`cpu_id`).
    #[default]
    Cpu,
    /// By concurrency id (`mm_cid`).
    MmCid,
}

impl Index {
    /// What a structure asking for `self` gets in this process.
    pub(crate) fn effective(self) -> Index {
        match self {
            Index::MmCid if mm_cid_indexing() => Index::MmCid,
            _ => Index::Cpu,
        }
    }

    /// Offset of the `struct rseq` field that holds this index.
    #[inline(always)]
    pub(crate) fn field_offset(self) -> usize {
        match self {
            Index::Cpu => offset_of!(Rseq, cpu_id),
            Index::MmCid => offset_of!(Rseq, mm_cid),
        }
    }

    /// How many slots a structure indexed this way has.
    pub(crate) fn slots(self) -> usize {
        match self {
            Index::Cpu => sys::possible_cpus(),
            Index::MmCid => sys::possible_cpus().min(sys::allowed_cpus()),
        }
    }
}

/// Whether structures may index by `mm_cid` in this process: sections run and
/// the kernel's feature size covers the field.
pub(crate) fn mm_cid_indexing() -> bool {
    let p = engine::process();
    p.sections
        && p.feature_size.is_some_and(|f| {
            f.min(u64::from(abi::RSEQ_ORIG_SIZE)) as usize >= offset_of!(Rseq, mm_cid) + 4
        })
}
