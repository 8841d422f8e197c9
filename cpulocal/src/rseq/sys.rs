//! System calls and process facts: rseq (un)registration, membarrier, futex,
//! signal masks, CPU numbers, and glibc's published rseq variables.
//!
//! Every function here is a thin wrapper that returns the kernel's answer as a
//! `Result<_, Errno>`; policy lives in [`crate::rseq::registration`].
//!
//! # Safety
//!
//! This module calls `libc::syscall` and `dlsym`, and in static programs
//! reads glibc's rseq variables through weak references in assembly. Each
//! call documents the pointers it passes and why they stay valid for the
//! call.
#![allow(unsafe_code)]

use core::ffi::CStr;
use core::sync::atomic::AtomicU32;
use std::sync::OnceLock;

use crate::rseq::abi::{self, membarrier, Rseq};

/// An `errno` value returned by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The symbolic name (`ENOSYS`, `EPERM`, ...) where known.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::ENOSYS => "ENOSYS",
            libc::EPERM => "EPERM",
            libc::EINVAL => "EINVAL",
            libc::EBUSY => "EBUSY",
            libc::EFAULT => "EFAULT",
            libc::EACCES => "EACCES",
            libc::ENXIO => "ENXIO",
            abi::ENOTSUPP => "ENOTSUPP",
            _ => "errno",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A raw `syscall` return (a `long`, 32 bits on 32-bit targets) as a Result.
fn check(ret: libc::c_long) -> Result<i64, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        // The identity on 64-bit targets, a widening on 32-bit ones.
        #[allow(clippy::useless_conversion)]
        Ok(i64::from(ret))
    }
}

/// `rseq(area, len, 0, RSEQ_SIG)`: registers `area` for the calling thread.
///
/// # Safety
///
/// `area` must hold `len` bytes and stay valid and writable until
/// [`rseq_unregister`] is called for it or the thread exits its last
/// user-space instruction.
pub unsafe fn rseq_register(area: *mut Rseq, len: u32) -> Result<(), Errno> {
    // SAFETY: the caller keeps `len` bytes at `area` alive while registered;
    // the kernel validates length, alignment and signature.
    let ret = unsafe { libc::syscall(libc::SYS_rseq, area, len, 0, abi::RSEQ_SIG) };
    check(ret).map(drop)
}

/// `rseq(area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG)`; `len` must be the
/// length `area` was registered with (the kernel answers EINVAL otherwise).
///
/// # Safety
///
/// `area` must be an area this thread registered; after the call the kernel
/// no longer writes it.
pub unsafe fn rseq_unregister(area: *mut Rseq, len: u32) -> Result<(), Errno> {
    // SAFETY: unregistration only compares `area` and `len` with the
    // registered ones.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            area,
            len,
            abi::RSEQ_FLAG_UNREGISTER,
            abi::RSEQ_SIG,
        )
    };
    check(ret).map(drop)
}

/// `prctl(PR_RSEQ_SLICE_EXTENSION, GET)`: whether time-slice extension is
/// enabled for the calling thread. EINVAL before Linux 7.0 (no such prctl),
/// [`abi::ENOTSUPP`] where the kernel is built without it.
pub fn slice_extension_get() -> Result<bool, Errno> {
    // SAFETY: this prctl takes no pointers.
    let ret = unsafe {
        libc::prctl(
            abi::PR_RSEQ_SLICE_EXTENSION,
            abi::PR_RSEQ_SLICE_EXTENSION_GET,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret as libc::c_long).map(|v| v != 0)
}

/// `prctl(PR_RSEQ_SLICE_EXTENSION, SET, PR_RSEQ_SLICE_EXT_ENABLE)`: enables
/// time-slice extension for the calling thread. [`abi::ENOTSUPP`] when the
/// thread's rseq area is in the kernel's original mode (32 bytes) or the
/// extension is off at boot, ENXIO without a registered area.
pub fn slice_extension_enable() -> Result<(), Errno> {
    // SAFETY: this prctl takes no pointers.
    let ret = unsafe {
        libc::prctl(
            abi::PR_RSEQ_SLICE_EXTENSION,
            abi::PR_RSEQ_SLICE_EXTENSION_SET,
            abi::PR_RSEQ_SLICE_EXT_ENABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// `rseq_slice_yield()`: gives the CPU back after a granted time-slice
/// extension. True when the thread yielded within the grant, false when
/// the kernel had revoked it already. Async-signal-safe.
pub fn rseq_slice_yield() -> bool {
    // SAFETY: the call takes no arguments.
    check(unsafe { libc::syscall(abi::SYS_RSEQ_SLICE_YIELD) }).is_ok_and(|v| v == 1)
}

fn membarrier_call(cmd: libc::c_int, flags: libc::c_uint, cpu: libc::c_int) -> Result<i64, Errno> {
    // SAFETY: membarrier takes no pointers.
    check(unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu) })
}

/// Registers the process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`, after
/// checking with `MEMBARRIER_CMD_QUERY` that the kernel offers it.
pub fn membarrier_register_rseq() -> Result<(), Errno> {
    let supported = membarrier_call(membarrier::CMD_QUERY, 0, 0)?;
    if supported & i64::from(membarrier::CMD_PRIVATE_EXPEDITED_RSEQ) == 0 {
        return Err(Errno(libc::EINVAL));
    }
    membarrier_call(membarrier::CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0).map(drop)
}

/// `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, cpu)`: when it returns, every
/// critical section of this process that was running on `cpu` has been aborted.
/// Without `cpu` (None) it does so on every CPU.
pub fn membarrier_rseq(cpu: Option<usize>) -> Result<(), Errno> {
    match cpu {
        Some(cpu) => membarrier_call(
            membarrier::CMD_PRIVATE_EXPEDITED_RSEQ,
            membarrier::CMD_FLAG_CPU,
            cpu as libc::c_int,
        ),
        None => membarrier_call(membarrier::CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0),
    }
    .map(drop)
}

/// `FUTEX_WAIT_PRIVATE`: sleeps while `*word == expected`. Returns on wake-up,
/// on a changed value, and on signals alike: callers re-check.
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; no
    // timeout pointer is passed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

/// `FUTEX_WAKE_PRIVATE`: wakes up to `n` waiters on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only uses its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// The kernel thread id of the caller.
pub fn gettid() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The CPU the caller runs on, from `sched_getcpu()`; 0 if it fails.
pub fn sched_getcpu() -> usize {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

/// How many CPUs the calling thread may run on (`sched_getaffinity`); the
/// possible CPUs if the call fails.
pub fn allowed_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; the kernel writes at
    // most its size.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r =
        unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return possible_cpus();
    }
    // SAFETY: `set` was filled by the kernel.
    (unsafe { libc::CPU_COUNT(&set) } as usize).max(1)
}

/// All signals blocked for as long as the guard lives (`pthread_sigmask`).
/// Not `Send`: the mask belongs to the thread that created the guard.
pub struct SignalsBlocked {
    old: libc::sigset_t,
    _not_send: core::marker::PhantomData<*const ()>,
}

impl SignalsBlocked {
    /// Blocks every signal of the calling thread.
    pub fn new() -> Self {
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask write
        // only into the sets we pass.
        unsafe {
            let mut all: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsBlocked {
                old,
                _not_send: core::marker::PhantomData,
            }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`, on the same thread (the
        // guard is not Send).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, core::ptr::null_mut());
        }
    }
}

/// `getauxval(key)`, or None when the kernel did not supply the key.
pub fn getauxval(key: libc::c_ulong) -> Option<u64> {
    // SAFETY: getauxval reads the process's auxiliary vector.
    let v = unsafe { libc::getauxval(key) };
    (v != 0).then_some(v as u64)
}

/// The variables glibc >= 2.35 publishes about its rseq registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlibcRseq {
    /// Area address = thread pointer + offset.
    pub offset: isize,
    /// 0 when glibc did not register (tunable off, rseq refused).
    pub size: u32,
    /// Registration flags (0).
    pub flags: u32,
}

/// Finds glibc's `__rseq_offset`, `__rseq_size` and `__rseq_flags`, or None
/// with a libc that lacks them.
///
/// A dynamically linked program looks them up at run time with `dlsym`, so
/// the crate also runs with a glibc older than 2.35 (no symbol version is
/// required at load time). A statically linked one (`+crt-static`) cannot:
/// `dlsym` finds nothing there. It refers to them weakly instead (see
/// [`static_glibc`]), which the static link resolves to glibc's variables,
/// or to null when the libc has none.
pub fn glibc_rseq() -> Option<GlibcRseq> {
    static CACHE: OnceLock<Option<GlibcRseq>> = OnceLock::new();
    *CACHE.get_or_init(|| {
        let (offset, size, flags) = if cfg!(target_feature = "crt-static") {
            static_glibc::addresses()?
        } else {
            (
                dlsym(c"__rseq_offset")?,
                dlsym(c"__rseq_size")?,
                dlsym(c"__rseq_flags"),
            )
        };
        // SAFETY: glibc defines these as `const ptrdiff_t` and `const unsigned
        // int`, written once before the program starts and read-only after.
        unsafe {
            Some(GlibcRseq {
                offset: *(offset as *const isize),
                size: *(size as *const u32),
                flags: flags.map_or(0, |p| *(p as *const u32)),
            })
        }
    })
}

/// The addresses of `__rseq_offset`, `__rseq_size` and (if defined)
/// `__rseq_flags`.
type Addresses = (
    *mut libc::c_void,
    *mut libc::c_void,
    Option<*mut libc::c_void>,
);

fn dlsym(name: &CStr) -> Option<*mut libc::c_void> {
    // SAFETY: RTLD_DEFAULT searches the global scope; `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// glibc's rseq variables in a statically linked program, by weak reference.
///
/// Rust has no stable weak-linkage attribute, so the reference is made in
/// assembly: `.weak` declares the symbols, and each address is loaded from
/// the GOT entry the linker fills with the variable's address, or with 0
/// when no object defines it. Static glibc defines the three in the startup
/// code that registers rseq, which every static program links.
#[cfg(all(
    target_feature = "crt-static",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
mod static_glibc {
    core::arch::global_asm!(
        ".weak __rseq_offset",
        ".weak __rseq_size",
        ".weak __rseq_flags"
    );

    macro_rules! weak_address {
        ($sym:literal) => {{
            let p: *mut libc::c_void;
            // SAFETY: reads this program's own GOT entry for the symbol: no
            // memory of the caller's, no stack, no flags.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                core::arch::asm!(
                    concat!("mov {p}, qword ptr [rip + ", $sym, "@GOTPCREL]"),
                    p = out(reg) p,
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            unsafe {
                core::arch::asm!(
                    concat!("adrp {p}, :got:", $sym),
                    concat!("ldr {p}, [{p}, :got_lo12:", $sym, "]"),
                    p = out(reg) p,
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            // SAFETY: as above.
            #[cfg(target_arch = "riscv64")]
            unsafe {
                core::arch::asm!(
                    "1:",
                    concat!("auipc {p}, %got_pcrel_hi(", $sym, ")"),
                    "ld {p}, %pcrel_lo(1b)({p})",
                    p = out(reg) p,
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            (!p.is_null()).then_some(p)
        }};
    }

    /// The three addresses, or None where glibc does not define the first two.
    pub(super) fn addresses() -> Option<super::Addresses> {
        Some((
            weak_address!("__rseq_offset")?,
            weak_address!("__rseq_size")?,
            weak_address!("__rseq_flags"),
        ))
    }
}

/// Elsewhere a static program finds none (cpulocal registers its own area
/// where glibc did not, and otherwise reports the foreign registration).
#[cfg(not(all(
    target_feature = "crt-static",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
)))]
mod static_glibc {
    pub(super) fn addresses() -> Option<super::Addresses> {
        None
    }
}

/// Has `pthread_atfork` run `handler` in the child of every later `fork`
/// (its only thread), which must do nothing but what is async-signal-safe:
/// touch atomics and its own thread-locals.
pub fn in_fork_children(handler: extern "C" fn()) {
    // SAFETY: registering has no preconditions; the handler's duties are the
    // caller's.
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
}

/// Keeps the object that holds cpulocal's code loaded until the process
/// exits, so that the critical-section descriptors and abort labels in it
/// stay mapped: the kernel reads the descriptor a thread's `rseq_cs` points
/// to at the thread's next preemption or signal, long after the section
/// returned, and kills the thread if it is gone. cpulocal leaves `rseq_cs`
/// armed after a section (clearing it would cost a store on every
/// operation), so `dlclose` of a shared library that ran sections must not
/// unmap it.
///
/// The program itself, static or dynamic, is never unmapped: nothing to do.
/// A shared library is marked `RTLD_NODELETE` by reopening it with
/// `RTLD_NOLOAD` (it is loaded already; the handle is kept for good).
/// Returns false if that failed, or if the object could not be found.
pub fn pin_own_object() -> bool {
    if cfg!(target_feature = "crt-static") {
        return true; // a static program holds all the code; it is never unloaded
    }
    /// The base address of the object that holds `addr`, and its name.
    fn object_of(addr: *const libc::c_void) -> Option<(usize, *const libc::c_char)> {
        // SAFETY: Dl_info is plain data; dladdr fills it or returns 0.
        let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
        // SAFETY: dladdr only reads the dynamic linker's own tables.
        if unsafe { libc::dladdr(addr, &mut info) } == 0 {
            return None;
        }
        Some((info.dli_fbase as usize, info.dli_fname))
    }
    let Some((base, name)) = object_of(pin_own_object as *const libc::c_void) else {
        return false;
    };
    // The program's own headers (AT_PHDR) lie in the program's mapping.
    let program = getauxval(libc::AT_PHDR)
        .and_then(|phdr| object_of(phdr as usize as *const libc::c_void))
        .map(|(b, _)| b);
    if program == Some(base) {
        return true;
    }
    if name.is_null() {
        return false;
    }
    // SAFETY: `name` is the NUL-terminated name the dynamic linker keeps for
    // a loaded object; RTLD_NOLOAD only looks it up, RTLD_NODELETE marks it.
    let handle = unsafe {
        libc::dlopen(
            name,
            libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
    !handle.is_null()
}

/// Number of possible CPUs: one past the highest id in
/// `/sys/devices/system/cpu/possible`, so that a CPU brought online later never
/// indexes out of range. Falls back to `sysconf(_SC_NPROCESSORS_CONF)`.
pub fn possible_cpus() -> usize {
    static CACHE: OnceLock<usize> = OnceLock::new();
    *CACHE.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| parse_cpu_list_max(&s))
            .map(|max| max + 1)
            .unwrap_or_else(|| {
                // SAFETY: sysconf has no pointer arguments.
                let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
                usize::try_from(n).unwrap_or(1).max(1)
            })
    })
}

/// Number of possible NUMA nodes: one past the highest id in
/// `/sys/devices/system/node/possible`; 1 where the kernel has no NUMA
/// support (no such file).
pub fn possible_nodes() -> usize {
    static CACHE: OnceLock<usize> = OnceLock::new();
    *CACHE.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/node/possible")
            .ok()
            .and_then(|s| parse_cpu_list_max(&s))
            .map_or(1, |max| max + 1)
    })
}

/// The NUMA node of each possible CPU, read once from
/// `/sys/devices/system/node/node<N>/cpulist` (CPUs no node lists, and
/// every CPU without NUMA support, are on node 0).
fn node_of_cpus() -> &'static [u16] {
    static CACHE: OnceLock<Vec<u16>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let mut nodes = vec![0u16; possible_cpus()];
        for node in 0..possible_nodes().min(usize::from(u16::MAX)) {
            let path = format!("/sys/devices/system/node/node{node}/cpulist");
            let Ok(list) = std::fs::read_to_string(path) else {
                continue;
            };
            for cpu in parse_cpu_list(&list) {
                if let Some(n) = nodes.get_mut(cpu) {
                    *n = node as u16;
                }
            }
        }
        nodes
    })
}

/// The NUMA node of `cpu` (0 for a CPU out of range, and without NUMA).
pub fn node_of_cpu(cpu: usize) -> usize {
    node_of_cpus().get(cpu).map_or(0, |&n| usize::from(n))
}

/// Every id in a kernel CPU list such as `0-3,8,10-11` (nothing for a
/// malformed one).
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut ids = Vec::new();
    for range in list.trim().split(',').filter(|r| !r.trim().is_empty()) {
        let mut ends = range.trim().splitn(2, '-').map(str::parse::<usize>);
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => ids.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b => ids.extend(a..=b),
            _ => return Vec::new(),
        }
    }
    ids
}

/// The highest CPU id in a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list_max(list: &str) -> Option<usize> {
    list.trim()
        .split(',')
        .map(|range| {
            range
                .rsplit('-')
                .next()
                .unwrap_or(range)
                .trim()
                .parse::<usize>()
        })
        .try_fold(None, |max: Option<usize>, id| {
            id.map(|id| Some(max.map_or(id, |m| m.max(id))))
        })
        .ok()
        .flatten()
}

#[cfg(test)]
/// Restricts the calling thread to the CPU it runs on; false if refused.
pub(crate) fn pin_to_current_cpu() -> bool {
    // SAFETY: no preconditions.
    let Ok(cpu) = usize::try_from(unsafe { libc::sched_getcpu() }) else {
        return false;
    };
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    if cpu >= 8 * core::mem::size_of::<libc::cpu_set_t>() {
        return false;
    }
    // SAFETY: `cpu` is below the set's capacity (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size given; 0 is this thread.
    unsafe { libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-3,8,10-11"), Some(11));
        assert_eq!(parse_cpu_list_max(""), None);
        assert_eq!(parse_cpu_list_max("x"), None);
    }

    #[test]
    fn cpu_list_ids() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("2"), [2]);
        assert_eq!(parse_cpu_list(""), [] as [usize; 0]);
        assert_eq!(parse_cpu_list("3-1"), [] as [usize; 0]);
        assert_eq!(parse_cpu_list("x"), [] as [usize; 0]);
    }

    #[test]
    fn every_cpu_has_a_possible_node() {
        for cpu in 0..possible_cpus() {
            assert!(node_of_cpu(cpu) < possible_nodes(), "cpu {cpu}");
        }
    }

    #[test]
    fn possible_covers_current() {
        assert!(sched_getcpu() < possible_cpus());
    }
}
