//! How per-CPU structures number their slots: by CPU (`cpu_id`), by
//! concurrency id (`mm_cid`) or by NUMA node (`node_id`).

use core::mem::offset_of;

use crate::rseq::abi::Rseq;
use crate::rseq::sys;

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
/// - [`Index::Node`]: one slot per possible NUMA node
///   ([`possible_nodes()`](crate::possible_nodes)), indexed by the node of
///   the CPU the thread runs on (rseq's `node_id`, or the node of
///   `sched_getcpu()`'s CPU), for data that is per node rather than per CPU:
///   a pool of node-local memory, a count per node.
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
/// A node slot is different: the CPUs of a node share it and run at the same
/// time, and a critical section is atomic only against other threads of its
/// own CPU. So no section ever runs on a node slot. A counter's add and a
/// lock's take are one atomic instruction there (a fetch-and-add, a
/// compare-and-swap); every other operation holds the slot's fence word, as
/// a lock, and runs as ordinary code (the structures' statistics count
/// those as fenced). No operation on a node slot needs a membarrier: there
/// is no section to stop. A fenced one costs an uncontended compare-and-swap
/// and a store where a per-CPU operation costs a critical section; both
/// kinds add the transfers of the slot's cache line between the CPUs of the
/// node. Without NUMA (one node) it is one slot for the whole machine. It
/// works on every engine and kernel.
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
///
/// // A count per NUMA node.
/// let per_node = PerCpuCounter::with_index(Index::Node);
/// per_node.add(1);
/// per_node.add_on(0, 2)?; // node 0's slot, from any node
/// assert_eq!(per_node.cpus(), cpulocal::possible_nodes());
/// assert_eq!(per_node.sum(), 3);
/// # Ok::<(), cpulocal::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Index {
    /// By CPU number (`cpu_id`).
    #[default]
    Cpu,
    /// By concurrency id (`mm_cid`).
    MmCid,
    /// By NUMA node (`node_id`): one slot per node, each operation an
    /// atomic instruction or run under the slot's fence (above).
    Node,
}

impl Index {
    /// Offset of the `struct rseq` field that holds this index.
    #[inline(always)]
    pub(crate) fn field_offset(self) -> usize {
        match self {
            Index::Cpu => offset_of!(Rseq, cpu_id),
            Index::MmCid => offset_of!(Rseq, mm_cid),
            Index::Node => offset_of!(Rseq, node_id),
        }
    }

    /// How many slots a structure indexed this way has.
    pub(crate) fn slots(self) -> usize {
        match self {
            Index::Cpu => sys::possible_cpus(),
            Index::MmCid => sys::possible_cpus().min(sys::allowed_cpus()),
            Index::Node => sys::possible_nodes(),
        }
    }

    /// Whether critical sections may run on slots numbered this way: not on
    /// node slots, which several CPUs share.
    #[inline(always)]
    pub(crate) fn has_sections(self) -> bool {
        self != Index::Node
    }
}
