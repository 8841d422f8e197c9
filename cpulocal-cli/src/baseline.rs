//! Safe wrappers for the hand-written C rseq loops in `c/rseq_baseline.c`:
//! the fair baselines for [`PerCpuCounter::add`](cpulocal::PerCpuCounter::add)
//! and cpulocal's other per-CPU structures.
//!
//! - [`CSlots`]: the per-CPU increment indexed by `cpu_id`, with and without
//!   cpulocal's fence check in the section.
//! - The five loops of librseq's `param_test` benchmark, mirrored, each on its
//!   own structure and in either [`IndexMode`]: [`CCounter`] (`-T i`),
//!   [`CSpinlock`] (`-T s`), [`CList`] (`-T l`), [`CPtrBuffer`] (`-T b`),
//!   [`CMemcpyBuffer`] (`-T m`). Every one has `new(mode)`, `run(iters)` (the
//!   whole loop in one FFI call, returning the retried sections) and a
//!   conservation check (`sum()`, and `count()` for those holding items).
//!
//! Compiled only on Linux x86_64 with glibc (`cfg(cpulocal_c_baseline)`, set by
//! `build.rs`). The C code uses glibc's rseq area of the calling thread; where
//! glibc did not register one, the loops return [`NoRseq`].

use core::ffi::c_int;
use core::ptr::NonNull;

/// The C side's `struct cl_slots` (opaque here).
#[repr(C)]
struct RawSlots {
    _private: [u8; 0],
}

/// The C side's `struct cl_spinlock` (opaque here).
#[repr(C)]
struct RawSpinlock {
    _private: [u8; 0],
}

/// The C side's `struct cl_list` (opaque here).
#[repr(C)]
struct RawList {
    _private: [u8; 0],
}

/// The C side's `struct cl_ptrbuf` (opaque here).
#[repr(C)]
struct RawPtrBuffer {
    _private: [u8; 0],
}

/// The C side's `struct cl_membuf` (opaque here).
#[repr(C)]
struct RawMemcpyBuffer {
    _private: [u8; 0],
}

extern "C" {
    fn cl_c_rseq_available() -> c_int;
    fn cl_c_mm_cid_available() -> c_int;
    fn cl_c_slots_new(ncpus: usize) -> *mut RawSlots;
    fn cl_c_slots_free(s: *mut RawSlots);
    fn cl_c_slots_sum(s: *const RawSlots) -> i64;
    fn cl_c_rseq_add_loop(s: *mut RawSlots, iters: u64) -> u64;
    fn cl_c_rseq_add_fence_loop(s: *mut RawSlots, iters: u64) -> u64;
    fn cl_c_counter_loop(s: *mut RawSlots, iters: u64, mode: c_int, area: c_int) -> u64;

    fn cl_c_spinlock_new(nslots: usize) -> *mut RawSpinlock;
    fn cl_c_spinlock_free(s: *mut RawSpinlock);
    fn cl_c_spinlock_sum(s: *const RawSpinlock) -> i64;
    fn cl_c_spinlock_loop(s: *mut RawSpinlock, iters: u64, mode: c_int, area: c_int) -> u64;

    fn cl_c_list_new(nslots: usize) -> *mut RawList;
    fn cl_c_list_free(s: *mut RawList);
    fn cl_c_list_sum(s: *const RawList, count: *mut u64) -> i64;
    fn cl_c_list_loop(s: *mut RawList, iters: u64, mode: c_int, area: c_int) -> u64;

    fn cl_c_ptrbuf_new(nslots: usize) -> *mut RawPtrBuffer;
    fn cl_c_ptrbuf_free(s: *mut RawPtrBuffer);
    fn cl_c_ptrbuf_sum(s: *const RawPtrBuffer, count: *mut u64) -> i64;
    fn cl_c_ptrbuf_loop(s: *mut RawPtrBuffer, iters: u64, mode: c_int, area: c_int) -> u64;

    fn cl_c_membuf_new(nslots: usize) -> *mut RawMemcpyBuffer;
    fn cl_c_membuf_free(s: *mut RawMemcpyBuffer);
    fn cl_c_membuf_sum(s: *const RawMemcpyBuffer, count: *mut u64) -> i64;
    fn cl_c_membuf_loop(s: *mut RawMemcpyBuffer, iters: u64, mode: c_int, area: c_int) -> u64;
}

/// What the C loops return when the calling thread has no rseq area.
const C_NO_RSEQ: u64 = u64::MAX;

/// The calling thread has no glibc-registered rseq area (glibc older than
/// 2.35, `GLIBC_TUNABLES=glibc.pthread.rseq=0`, seccomp ...), so the C baseline
/// cannot run on it; or, for a loop in [`IndexMode::MmCid`], the kernel does
/// not keep the area's `mm_cid` (see [`mm_cid_available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRseq;

impl core::fmt::Display for NoRseq {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(
            "the calling thread has no glibc-registered rseq area \
             (or, for the mm_cid loops, no mm_cid in it)",
        )
    }
}

impl std::error::Error for NoRseq {}

/// Whether the calling thread has a glibc-registered rseq area, which the C
/// baseline needs.
pub fn rseq_available() -> bool {
    // SAFETY: the C function only reads glibc's published symbols and this
    // thread's own rseq area.
    unsafe { cl_c_rseq_available() != 0 }
}

/// Whether the calling thread can run the loops in [`IndexMode::MmCid`]: it
/// has a glibc-registered rseq area and the kernel keeps its `mm_cid` field
/// (the kernel's `AT_RSEQ_FEATURE_SIZE` covers `mm_cid`: Linux 6.3 or later).
pub fn mm_cid_available() -> bool {
    // SAFETY: the C function only reads glibc's published symbols, this
    // thread's own rseq area and the auxiliary vector.
    unsafe { cl_c_mm_cid_available() != 0 }
}

/// The C baseline's per-CPU array: one 128-byte slot per possible CPU, each
/// holding an `i64` that only rseq critical sections on that CPU write.
#[derive(Debug)]
pub struct CSlots {
    raw: NonNull<RawSlots>,
}

// SAFETY: the array is heap memory owned by this value; nothing in it is tied
// to the thread that allocated it.
unsafe impl Send for CSlots {}
// SAFETY: from shared references the C code only writes a slot inside an rseq
// critical section on that slot's CPU (so never two writers at once: the
// kernel aborts a section before another thread runs on that CPU) and reads
// slots with atomic loads.
unsafe impl Sync for CSlots {}

impl CSlots {
    /// A zeroed array with a slot for each of [`cpulocal::possible_cpus()`],
    /// the bound the kernel keeps every `cpu_id` below.
    ///
    /// # Panics
    ///
    /// If the allocation fails.
    pub fn new() -> Self {
        let ncpus = cpulocal::possible_cpus();
        // SAFETY: no preconditions; the result is checked for NULL.
        let raw = unsafe { cl_c_slots_new(ncpus) };
        let raw = NonNull::new(raw).expect("cl_c_slots_new: out of memory");
        CSlots { raw }
    }

    /// Adds 1 to the current CPU's slot `iters` times, entirely in C (one FFI
    /// call), retrying aborted sections. Returns the number of aborts.
    ///
    /// # Errors
    ///
    /// [`NoRseq`] (and nothing is added) if the calling thread has no
    /// glibc-registered rseq area.
    #[inline(never)]
    pub fn add_loop(&self, iters: u64) -> Result<u64, NoRseq> {
        // SAFETY: `raw` is a live array from `cl_c_slots_new` with a slot per
        // possible CPU; the C loop writes slots only inside rseq sections of
        // the calling thread (see the `Sync` impl).
        match unsafe { cl_c_rseq_add_loop(self.raw.as_ptr(), iters) } {
            C_NO_RSEQ => Err(NoRseq),
            aborts => Ok(aborts),
        }
    }

    /// As [`add_loop`](Self::add_loop), with cpulocal's extra fence check in
    /// the critical section (the fence words stay 0): isolates what the fence
    /// protocol costs the fast path.
    ///
    /// # Errors
    ///
    /// As [`add_loop`](Self::add_loop).
    #[inline(never)]
    pub fn add_fence_loop(&self, iters: u64) -> Result<u64, NoRseq> {
        // SAFETY: as in `add_loop`.
        match unsafe { cl_c_rseq_add_fence_loop(self.raw.as_ptr(), iters) } {
            C_NO_RSEQ => Err(NoRseq),
            aborts => Ok(aborts),
        }
    }

    /// The sum of all slots (each read atomically).
    pub fn sum(&self) -> i64 {
        // SAFETY: `raw` is a live array; the C function only loads from it.
        unsafe { cl_c_slots_sum(self.raw.as_ptr()) }
    }
}

impl Default for CSlots {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CSlots {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `cl_c_slots_new` and is freed exactly once;
        // `&mut self` means no loop is running on it.
        unsafe { cl_c_slots_free(self.raw.as_ptr()) }
    }
}

/// Which field of the rseq area indexes the slots of a C structure (the two
/// index modes of librseq's `param_test`).
///
/// Each loop is compiled once per mode, so the hot loop has no branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexMode {
    /// Index with `cpu_id_start`, read before the section; the section
    /// compares `cpu_id` with it.
    CpuId,
    /// Index with the memory-map concurrency id `mm_cid`, read before the
    /// section; the section compares `mm_cid` with it. Needs
    /// [`mm_cid_available`].
    MmCid,
}

impl IndexMode {
    /// Both modes, `CpuId` first.
    pub const ALL: [IndexMode; 2] = [IndexMode::CpuId, IndexMode::MmCid];

    /// The mode's name: `cpu_id` or `mm_cid`.
    pub fn name(self) -> &'static str {
        match self {
            IndexMode::CpuId => "cpu_id",
            IndexMode::MmCid => "mm_cid",
        }
    }

    /// Whether the calling thread can run loops in this mode.
    pub fn available(self) -> bool {
        match self {
            IndexMode::CpuId => rseq_available(),
            IndexMode::MmCid => mm_cid_available(),
        }
    }

    /// The C side's `enum cl_index_mode`.
    fn raw(self) -> c_int {
        match self {
            IndexMode::CpuId => 0,
            IndexMode::MmCid => 1,
        }
    }
}

/// How a C loop finds the calling thread's rseq area.
///
/// Each loop is compiled once per lookup too, so the hot loop has no branch
/// on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AreaLookup {
    /// Again for every operation, as librseq's calls do (`rseq_get_abi()`:
    /// the thread pointer plus a global offset, reloaded after every section,
    /// whose asm clobbers memory). What librseq's own benchmark pays, and any
    /// API called once per operation.
    PerOperation,
    /// Once per call of the loop: the area stays in a register for the
    /// whole batch. The floor: only a caller that holds the area across its
    /// own loop gets there.
    Hoisted,
}

impl AreaLookup {
    /// The C side's `enum cl_area`.
    fn raw(self) -> c_int {
        match self {
            AreaLookup::PerOperation => 0,
            AreaLookup::Hoisted => 1,
        }
    }
}

/// The items each slot of [`CList`], [`CPtrBuffer`] and [`CMemcpyBuffer`]
/// starts with (data `1..=100`, as librseq's `param_test` sets them up).
pub const ITEMS_PER_SLOT: u64 = 100;

/// A C loop's return value as `run`'s result.
fn loop_result(r: u64) -> Result<u64, NoRseq> {
    match r {
        C_NO_RSEQ => Err(NoRseq),
        retries => Ok(retries),
    }
}

/// Defines a C structure's wrapper: the type, `Send`/`Sync`, `new`, `mode`,
/// `run` and `Drop`; the conservation checks are written per type.
macro_rules! c_structure {
    (
        $(#[$doc:meta])*
        $name:ident($raw:ident): $new:ident, $free:ident, $run:ident
    ) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            raw: NonNull<$raw>,
            mode: IndexMode,
            area: AreaLookup,
        }

        // SAFETY: the structure is heap memory owned by this value (slots,
        // their arrays and nodes); nothing in it is tied to the thread that
        // allocated it.
        unsafe impl Send for $name {}
        // SAFETY: from shared references only `run` touches the structure, and
        // the C loop writes a slot only inside an rseq critical section on that
        // slot's index (a CPU, or an mm_cid that one running thread holds at a
        // time), which the kernel aborts before another thread runs there; its
        // other writes go to memory the thread owns for the moment (a node it
        // popped, a local item, the count of a slot whose lock it took, that
        // lock's release). The conservation checks, which read everything
        // without rseq, take `&mut self`.
        unsafe impl Sync for $name {}

        impl $name {
            /// A new structure with a slot for each of
            /// [`cpulocal::possible_cpus()`], the bound the kernel keeps every
            /// `cpu_id` and every `mm_cid` below, indexed by `mode`, its loop
            /// finding the thread's area as `area` says.
            ///
            /// # Panics
            ///
            /// If the allocation fails.
            pub fn new(mode: IndexMode, area: AreaLookup) -> Self {
                let nslots = cpulocal::possible_cpus();
                // SAFETY: no preconditions; the result is checked for NULL.
                let raw = unsafe { $new(nslots) };
                let raw = NonNull::new(raw).expect(concat!(stringify!($new), ": out of memory"));
                $name { raw, mode, area }
            }

            /// The index mode the structure was made with.
            pub fn mode(&self) -> IndexMode {
                self.mode
            }

            /// Runs the loop `iters` times on the calling thread, entirely in
            /// C (one FFI call), retrying aborted and failed sections until they
            /// commit. Returns the number of sections retried.
            ///
            /// # Errors
            ///
            /// [`NoRseq`] (and nothing is done) if the calling thread cannot
            /// run the loop in this structure's mode.
            #[inline(never)]
            pub fn run(&self, iters: u64) -> Result<u64, NoRseq> {
                // SAFETY: `raw` is a live structure from its constructor with a
                // slot per possible CPU; the C loop writes it only as the `Sync`
                // impl describes.
                loop_result(unsafe {
                    $run(self.raw.as_ptr(), iters, self.mode.raw(), self.area.raw())
                })
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: `raw` came from the constructor and is freed exactly
                // once; `&mut self` means no loop is running on it.
                unsafe { $free(self.raw.as_ptr()) }
            }
        }
    };
}

c_structure! {
    /// librseq `param_test`'s counter (`-T i`): one `i64` per 128-byte slot;
    /// each operation adds 1 to the current slot, the `addq` being the
    /// section's commit.
    CCounter(RawSlots): cl_c_slots_new, cl_c_slots_free, cl_c_counter_loop
}

impl CCounter {
    /// The sum of all slots (each read atomically; exact once every `run`
    /// has returned).
    pub fn sum(&self) -> i64 {
        // SAFETY: `raw` is a live array; the C function only loads from it,
        // atomically.
        unsafe { cl_c_slots_sum(self.raw.as_ptr()) }
    }
}

c_structure! {
    /// librseq `param_test`'s spinlock (`-T s`): per 128-byte slot a lock word
    /// and a count. Each operation takes the current slot's lock with a
    /// section (`lock == 0 ? lock = 1 : fail`, retried until it succeeds),
    /// adds 1 to the count under it and releases it with a store-release.
    CSpinlock(RawSpinlock): cl_c_spinlock_new, cl_c_spinlock_free, cl_c_spinlock_loop
}

impl CSpinlock {
    /// The sum of the counts.
    pub fn sum(&mut self) -> i64 {
        // SAFETY: `raw` is live; `&mut self` means no loop writes it now.
        unsafe { cl_c_spinlock_sum(self.raw.as_ptr()) }
    }
}

c_structure! {
    /// librseq `param_test`'s list (`-T l`): per 128-byte slot the head of a
    /// singly linked LIFO of nodes `{ data, next }`, [`ITEMS_PER_SLOT`] nodes
    /// each at first. Each operation pops the current slot's head (section:
    /// `head = *v; head == NULL ? empty : *v = head->next`) and pushes it back
    /// on the then current slot (section: `*v == expect ? *v = node : fail`).
    CList(RawList): cl_c_list_new, cl_c_list_free, cl_c_list_loop
}

c_structure! {
    /// librseq `param_test`'s pointer buffer (`-T b`): per 128-byte slot a
    /// stack of node pointers `{ offset, buflen, array }`, [`ITEMS_PER_SLOT`]
    /// at first, room for every node there is. Each operation pops the top
    /// pointer (section: offset and the top entry unchanged ? `offset - 1` :
    /// fail) and pushes it back on the then current slot (section: offset
    /// unchanged ? `array[offset] = node` then `offset + 1` : fail).
    CPtrBuffer(RawPtrBuffer): cl_c_ptrbuf_new, cl_c_ptrbuf_free, cl_c_ptrbuf_loop
}

c_structure! {
    /// librseq `param_test`'s memcpy buffer (`-T m`): per 128-byte slot a
    /// stack of 16-byte items `{ data1, data2 }` stored inline,
    /// [`ITEMS_PER_SLOT`] at first, room for every item there is. Each
    /// operation copies the top item out (section: offset unchanged ? copy,
    /// `offset - 1` : fail) and back onto the then current slot (section:
    /// offset unchanged ? copy, `offset + 1` : fail); the copies are two
    /// 8-byte moves.
    CMemcpyBuffer(RawMemcpyBuffer): cl_c_membuf_new, cl_c_membuf_free, cl_c_membuf_loop
}

/// The conservation checks of the structures that hold items.
macro_rules! c_items {
    ($name:ident, $sum:ident, $what:literal) => {
        impl $name {
            #[doc = concat!("The sum of ", $what, " over every item in the structure.")]
            pub fn sum(&mut self) -> i64 {
                self.totals().0
            }

            /// The number of items in the structure (every slot's).
            pub fn count(&mut self) -> u64 {
                self.totals().1
            }

            /// (sum, count), one walk.
            fn totals(&mut self) -> (i64, u64) {
                let mut count = 0;
                // SAFETY: `raw` is live; `&mut self` means no loop writes it
                // now; `count` is a valid place for the C function's count.
                let sum = unsafe { $sum(self.raw.as_ptr(), &mut count) };
                (sum, count)
            }
        }
    };
}

c_items!(CList, cl_c_list_sum, "`data`");
c_items!(CPtrBuffer, cl_c_ptrbuf_sum, "`data`");
c_items!(CMemcpyBuffer, cl_c_membuf_sum, "`data1 + data2`");

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Barrier, Mutex, RwLock};

    #[test]
    fn counts_exactly_across_threads() {
        if !rseq_available() {
            eprintln!("skipped: no glibc rseq area");
            return;
        }
        let slots = CSlots::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| slots.add_loop(100_000).unwrap());
                s.spawn(|| slots.add_fence_loop(100_000).unwrap());
            }
        });
        assert_eq!(slots.sum(), 800_000);
    }

    const THREADS: u64 = 4;
    const ITERS: u64 = 200_000;
    /// How long each test keeps running rounds in each mode. One round (4
    /// threads x 200,000 iterations) takes about a millisecond here, far
    /// too short for the kernel to preempt a worker inside a section more
    /// than a few times; the disturbers preempt the workers a few times per
    /// millisecond per CPU, so a quarter of a second gives each loop some
    /// hundreds of aborts, spread over its sections.
    const BUDGET: std::time::Duration = std::time::Duration::from_millis(250);

    /// Every index mode available here, with both area lookups.
    fn modes(test: &str) -> Vec<(IndexMode, AreaLookup)> {
        IndexMode::ALL
            .into_iter()
            .filter(|m| {
                let ok = m.available();
                if !ok {
                    eprintln!("{test}: {} skipped: not available here", m.name());
                }
                ok
            })
            .flat_map(|m| [(m, AreaLookup::PerOperation), (m, AreaLookup::Hoisted)])
            .collect()
    }

    /// Up to four CPUs this process may run on: where the workers run.
    fn arena() -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
        // calling thread.
        let rc = unsafe { libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) };
        assert_eq!(rc, 0, "sched_getaffinity");
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `i` is below CPU_SETSIZE, the size of `set`.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
            .take(4)
            .collect()
    }

    /// Sets thread `tid`'s (0: the calling thread's) affinity to `cpus`;
    /// errors are ignored (the set is always one the process may use).
    fn set_affinity(tid: libc::pid_t, cpus: &[usize]) {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        for &c in cpus {
            // SAFETY: `c` came from `arena`, so it is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: `set` is a valid cpu_set_t of the size passed; `tid` is 0
        // or a thread of this process that is still alive (see `rounds`).
        unsafe { libc::sched_setaffinity(tid, core::mem::size_of_val(&set), &set) };
    }

    /// Sleeps `us` microseconds (the callers set their timer slack to 1 ns,
    /// so that the sleep is about that short, not 50 us more).
    fn nap(us: i64) {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: us * 1000,
        };
        // SAFETY: `ts` is a valid timespec; the remainder pointer may be NULL.
        unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
    }

    /// Runs rounds for BUDGET (at least one), each on a fresh structure from
    /// `new`: THREADS threads run `run` at once, ITERS iterations each, then
    /// `check` inspects the structure (an error ends the test). All the while
    /// disturbers preempt the workers: a sleeper pinned to each arena CPU
    /// wakes every 20 us (each wake preempts the worker there, aborting the
    /// section it is in) and a mover changes a worker's affinity every 50 us
    /// (`sched_setaffinity`: the index a worker read before its section goes
    /// stale). The same workers and disturbers serve every round.
    fn rounds<T: Send + Sync>(
        what: &str,
        (mode, area): (IndexMode, AreaLookup),
        new: impl Fn(IndexMode, AreaLookup) -> T,
        run: impl Fn(&T, u64) -> Result<u64, NoRseq> + Sync,
        check: impl Fn(&mut T) -> Result<(), String>,
    ) {
        let cpus = arena();
        let current: RwLock<Option<T>> = RwLock::new(None);
        let tids = Mutex::new(Vec::new());
        let ready = Barrier::new(THREADS as usize + 1);
        let start = Barrier::new(THREADS as usize + 1);
        let end = Barrier::new(THREADS as usize + 1);
        let (stop, quiet, no_rseq) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        );
        let retries = AtomicU64::new(0);
        let t0 = std::time::Instant::now();
        let mut n = 0;
        let outcome = std::thread::scope(|s| {
            for &cpu in &cpus {
                let quiet = &quiet;
                s.spawn(move || {
                    set_affinity(0, &[cpu]);
                    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                    while !quiet.load(Ordering::Relaxed) {
                        nap(20);
                    }
                });
            }
            for _ in 0..THREADS {
                s.spawn(|| {
                    set_affinity(0, &cpus);
                    // SAFETY: gettid has no preconditions.
                    tids.lock().unwrap().push(unsafe { libc::gettid() });
                    ready.wait();
                    loop {
                        start.wait();
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let x = current.read().unwrap();
                        match run(x.as_ref().unwrap(), ITERS) {
                            Ok(r) => retries.fetch_add(r, Ordering::Relaxed),
                            Err(NoRseq) => no_rseq.swap(true, Ordering::Relaxed) as u64,
                        };
                        drop(x);
                        end.wait();
                    }
                });
            }
            ready.wait();
            // Workers stay alive until the mover has stopped, so it never
            // moves a thread id that was reused.
            let tids = tids.lock().unwrap().clone();
            let (quiet, cpus) = (&quiet, &cpus);
            let mover = s.spawn(move || {
                // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                let mut k = 0;
                while !quiet.load(Ordering::Relaxed) {
                    let tid = tids[k % tids.len()];
                    match (k / tids.len()) % (cpus.len() + 1) {
                        c if c == cpus.len() => set_affinity(tid, cpus),
                        c => set_affinity(tid, &cpus[c..][..1]),
                    }
                    k += 1;
                    nap(50);
                }
            });
            let outcome = loop {
                *current.write().unwrap() = Some(new(mode, area));
                start.wait();
                end.wait();
                n += 1;
                if no_rseq.load(Ordering::Relaxed) {
                    break Err("rseq available on the test thread but not on a worker".into());
                }
                let r = check(current.write().unwrap().as_mut().unwrap());
                if r.is_err() || t0.elapsed() >= BUDGET {
                    break r;
                }
            };
            quiet.store(true, Ordering::Relaxed);
            mover.join().unwrap();
            stop.store(true, Ordering::Relaxed);
            start.wait();
            outcome
        });
        let retries = retries.into_inner();
        eprintln!(
            "{what} {} ({area:?}): {n} rounds, {retries} sections retried",
            mode.name()
        );
        if let Err(e) = outcome {
            panic!("{what} {} ({area:?}), round {n}: {e}", mode.name());
        }
    }

    /// `Err` with both values unless they are equal.
    fn same<V: PartialEq + core::fmt::Debug>(got: V, want: V) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}, want {want:?}"))
        }
    }

    /// The items and their sum a fresh structure holds: ITEMS_PER_SLOT per
    /// slot, data 1..=100 (`per_item` times, for the memcpy buffer's two
    /// fields).
    fn initial(per_item: i64) -> (i64, u64) {
        let slots = cpulocal::possible_cpus() as u64;
        let n = ITEMS_PER_SLOT as i64;
        (
            slots as i64 * per_item * n * (n + 1) / 2,
            slots * ITEMS_PER_SLOT,
        )
    }

    #[test]
    fn counter_counts_exactly() {
        for mode in modes("counter") {
            rounds("counter", mode, CCounter::new, CCounter::run, |c| {
                same(c.sum(), (THREADS * ITERS) as i64)
            });
        }
    }

    #[test]
    fn spinlock_counts_exactly() {
        for mode in modes("spinlock") {
            rounds("spinlock", mode, CSpinlock::new, CSpinlock::run, |c| {
                same(c.sum(), (THREADS * ITERS) as i64)
            });
        }
    }

    #[test]
    fn list_conserves_nodes() {
        for mode in modes("list") {
            assert_eq!(CList::new(mode.0, mode.1).totals(), initial(1));
            rounds("list", mode, CList::new, CList::run, |l| {
                same(l.totals(), initial(1))
            });
        }
    }

    #[test]
    fn ptr_buffer_conserves_nodes() {
        for mode in modes("ptr buffer") {
            assert_eq!(CPtrBuffer::new(mode.0, mode.1).totals(), initial(1));
            rounds("ptr buffer", mode, CPtrBuffer::new, CPtrBuffer::run, |b| {
                same(b.totals(), initial(1))
            });
        }
    }

    #[test]
    fn memcpy_buffer_conserves_items() {
        for mode in modes("memcpy buffer") {
            assert_eq!(CMemcpyBuffer::new(mode.0, mode.1).totals(), initial(2));
            rounds(
                "memcpy buffer",
                mode,
                CMemcpyBuffer::new,
                CMemcpyBuffer::run,
                |b| same(b.totals(), initial(2)),
            );
        }
    }
}
