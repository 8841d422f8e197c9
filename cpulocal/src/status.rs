//! What the engine is doing for the calling thread, in words a user can act on.

use core::fmt;

use crate::rseq::abi;
use crate::rseq::registration::{self, Registration, RseqOff};
use crate::rseq::slice::{self, SliceExtension};
use crate::rseq::sys::{self, Errno};

/// Which engine runs operations on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// Critical sections first; the fenced path after
    /// [`RSEQ_ATTEMPTS`](crate::RSEQ_ATTEMPTS) aborts, on a fenced slot, and
    /// for remote CPUs.
    Rseq,
    /// Every operation takes the fenced path. `membarrier` says whether the
    /// fence must stop other threads' sections (true when sections run
    /// elsewhere in the process).
    Fenced {
        /// Whether fenced operations issue membarrier.
        membarrier: bool,
    },
}

/// The state of cpulocal for the calling thread: see [`status()`](crate::status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// Who registered rseq for this thread (also when cpulocal does not use
    /// the registration: see `fenced_because`).
    pub registration: Registration,
    /// Which engine runs this thread's operations.
    pub engine: Engine,
    /// Why this thread's operations all take the fenced path; None when the
    /// engine is [`Engine::Rseq`]. Where nobody registered rseq it is the
    /// reason given in `registration`; it also covers a thread that is
    /// registered but may not run sections (no membarrier, no asm for the
    /// architecture).
    pub fenced_because: Option<RseqOff>,
    /// `getauxval(AT_RSEQ_FEATURE_SIZE)`: how much of `struct rseq` the kernel
    /// fills (None before Linux 6.3, which fills 20 bytes, and under tools
    /// such as valgrind that leave the key out of the auxiliary vector).
    pub feature_size: Option<u64>,
    /// Whether [`node_id()`](crate::node_id) has a value on this thread.
    pub node_id_valid: bool,
    /// Whether [`mm_cid()`](crate::mm_cid) has a value on this thread.
    pub mm_cid_valid: bool,
    /// Whether structures built with [`Index::MmCid`](crate::Index::MmCid)
    /// get it: critical sections run in this process and the kernel's
    /// feature size covers `mm_cid`. Where false, they index by `cpu_id`.
    pub mm_cid_indexing: bool,
    /// Result of registering `membarrier(PRIVATE_EXPEDITED_RSEQ)` for the
    /// process (attempted on every architecture; only used where sections run).
    pub membarrier_rseq: Result<(), Errno>,
    /// glibc's `__rseq_size`, or None when the libc does not publish it.
    pub glibc_rseq_size: Option<u32>,
    /// The length this thread's rseq area is registered with, where it is
    /// known: cpulocal's own area's ([`AT_RSEQ_FEATURE_SIZE`] rounded up to
    /// `AT_RSEQ_ALIGN`, or 32), or 32 for a glibc that publishes
    /// `__rseq_size` = 20 (such a glibc registers 32 bytes). From Linux
    /// 6.19 the kernel keeps its original behaviour for a 32-byte area and
    /// gives a longer one its optimised mode (ids written only when they
    /// change; needed for time-slice extension). cpulocal works the same in
    /// both: it reads `cpu_id`, `cpu_id_start`, `node_id` and `mm_cid`, and
    /// writes only `rseq_cs`.
    ///
    /// [`AT_RSEQ_FEATURE_SIZE`]: Status::feature_size
    pub rseq_area_len: Option<u32>,
    /// Whether this thread's [`PerCpuLock`](crate::PerCpuLock) guards and
    /// fenced operations ask the kernel to defer their preemption while they
    /// hold (time-slice extension, Linux 7.0+), and if not, why.
    pub slice_extension: SliceExtension,
    /// Time-slice extensions the kernel granted to cpulocal's holders in this
    /// process so far: each was a preemption deferred until the holder
    /// released, which then gave the CPU back with `rseq_slice_yield`.
    pub slice_extensions_granted: u64,
    /// Of [`slice_extensions_granted`](Status::slice_extensions_granted), those
    /// whose holder released within the grant (the others outlasted it, made
    /// a system call under it, or were preempted anyway).
    pub slice_extensions_yielded: u64,
    /// [`possible_cpus()`](crate::possible_cpus).
    pub possible_cpus: usize,
    /// [`possible_nodes()`](crate::possible_nodes): the slots of an
    /// [`Index::Node`](crate::Index::Node) structure.
    pub possible_nodes: usize,
    /// The CPU the thread ran on when the status was taken.
    pub cpu: usize,
}

impl Status {
    pub(crate) fn current() -> Status {
        let (registration, fenced_because) = registration::thread_state();
        let p = registration::process();
        let engine = match fenced_because {
            None => Engine::Rseq,
            Some(_) => Engine::Fenced {
                membarrier: p.sections,
            },
        };
        let rseq_area_len = match registration {
            Registration::Cpulocal => Some(registration::own_len()),
            Registration::Glibc => p.glibc.and_then(|g| match g.size {
                // such a glibc registers the original 32 bytes
                20 | 32 => Some(32),
                // later ones register their published size (aligned)
                n if n > 32 => Some(n),
                _ => None,
            }),
            Registration::Nobody(_) => None,
        };
        let (granted, yielded) = slice::counts();
        Status {
            registration,
            engine,
            fenced_because,
            feature_size: p.feature_size,
            node_id_valid: registration::area_u32(core::mem::offset_of!(abi::Rseq, node_id))
                .is_some(),
            mm_cid_valid: registration::area_u32(core::mem::offset_of!(abi::Rseq, mm_cid))
                .is_some(),
            mm_cid_indexing: registration::mm_cid_indexing(),
            membarrier_rseq: p.membarrier,
            glibc_rseq_size: p.glibc.map(|g| g.size),
            rseq_area_len,
            slice_extension: slice::state(
                fenced_because
                    .is_none()
                    .then(|| registration::area().cast_const()),
                rseq_area_len,
                p.slice_allowed,
            ),
            slice_extensions_granted: granted,
            slice_extensions_yielded: yielded,
            possible_cpus: sys::possible_cpus(),
            possible_nodes: sys::possible_nodes(),
            cpu: registration::current_cpu(),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Rseq => f.write_str("rseq (critical sections, fenced fallback)"),
            Engine::Fenced { membarrier: true } => {
                f.write_str("fenced, with membarrier (other threads run rseq sections)")
            }
            Engine::Fenced { membarrier: false } => {
                f.write_str("fenced, without membarrier (no thread runs rseq sections)")
            }
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "rseq registered by:  {}", self.registration)?;
        writeln!(f, "engine:              {}", self.engine)?;
        if let (Some(why), false) = (
            self.fenced_because,
            matches!(self.registration, Registration::Nobody(_)),
        ) {
            writeln!(f, "fenced because:      {why}")?;
        }
        match self.feature_size {
            Some(s) => writeln!(
                f,
                "rseq feature size:   {s} bytes (the fields of struct rseq this kernel fills)"
            )?,
            None => writeln!(
                f,
                "rseq feature size:   unknown (a kernel before 6.3, which fills 20 bytes, \
                 or a tool such as valgrind that hides AT_RSEQ_FEATURE_SIZE)"
            )?,
        }
        writeln!(f, "node_id valid:       {}", yes_no(self.node_id_valid))?;
        writeln!(f, "mm_cid valid:        {}", yes_no(self.mm_cid_valid))?;
        if self.mm_cid_indexing {
            writeln!(f, "mm_cid indexing:     available")?;
        } else {
            writeln!(
                f,
                "mm_cid indexing:     unavailable (no rseq sections, or a feature size below 28 bytes): \
                 structures asking for Index::MmCid index by cpu_id"
            )?;
        }
        match self.membarrier_rseq {
            Ok(()) => writeln!(f, "membarrier (RSEQ):   registered")?,
            Err(e) => writeln!(f, "membarrier (RSEQ):   unavailable ({e})")?,
        }
        match self.glibc_rseq_size {
            Some(s) => writeln!(
                f,
                "glibc __rseq_size:   {s}{}",
                match s {
                    0 => " (glibc did not register)",
                    20 =>
                        " (this glibc publishes the original 20-byte ABI; the area it \
                           registers is 32 bytes, so the kernel fills the newer fields too)",
                    _ => "",
                }
            )?,
            None => writeln!(f, "glibc __rseq_size:   not published by this libc")?,
        }
        match (self.rseq_area_len, &self.registration) {
            (_, Registration::Nobody(_)) => {}
            (Some(32), _) => writeln!(
                f,
                "rseq area length:    32 bytes (the original size; Linux 6.19+ keeps its \
                 original behaviour for it)"
            )?,
            (Some(n), _) => writeln!(
                f,
                "rseq area length:    {n} bytes (the kernel's feature size, aligned; Linux \
                 6.19+ gives it the optimised mode)"
            )?,
            (None, _) => writeln!(f, "rseq area length:    unknown (glibc does not say)")?,
        }
        writeln!(f, "time-slice ext.:     {}", self.slice_extension)?;
        if self.slice_extensions_granted > 0 {
            writeln!(
                f,
                "  granted so far:    {} ({} ended by rseq_slice_yield within the grant)",
                self.slice_extensions_granted, self.slice_extensions_yielded
            )?;
        }
        writeln!(f, "possible CPUs:       {}", self.possible_cpus)?;
        writeln!(f, "possible NUMA nodes: {}", self.possible_nodes)?;
        write!(f, "current CPU:         {}", self.cpu)
    }
}
