//! Constructors given more than memory can hold return a typed error
//! (`Error::Alloc`), never abort the process; large rings and buffers are
//! zeroed lazily, so building one commits no memory up front.
//!
//! The refusals run in a child process whose address space is limited to
//! 8 GiB (`RLIMIT_AS`), so that an allocation of hundreds of GiB fails
//! whatever the machine's overcommit policy; the child reports each result
//! and the parent checks them.
#![cfg(target_os = "linux")]

mod child;

use cpulocal::{Error, PerCpuBuffer, PerCpuMemcpyBuffer, PerCpuRing, RingConfig};

const CHILD_ENV: &str = "CPULOCAL_ALLOC_CHILD";
/// The child's address-space limit: 8 GiB, or 3 GiB where a word is 32 bits.
#[cfg(target_pointer_width = "64")]
const AS_LIMIT: libc::rlim_t = 8 << 30;
#[cfg(not(target_pointer_width = "64"))]
const AS_LIMIT: libc::rlim_t = 3 << 30;
/// log2 of the pointer buffer's capacity: 8 TiB per CPU, or 4 GiB on 32 bits.
const BUFFER_LOG2: u32 = if cfg!(target_pointer_width = "64") {
    40
} else {
    30
};
/// log2 of the 64-byte memcpy buffer's capacity: 4 TiB per CPU, or 4 GiB.
const MEMCPY_LOG2: u32 = if cfg!(target_pointer_width = "64") {
    36
} else {
    26
};

/// The resident set of this process, in bytes.
#[cfg(target_pointer_width = "64")]
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[test]
fn alloc_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let limit = libc::rlimit {
        rlim_cur: AS_LIMIT,
        rlim_max: AS_LIMIT,
    };
    // SAFETY: a valid rlimit for the calling process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    let report = |what: &str, r: Result<(), Error>| println!("ALLOC {what}: {r:?}");
    report(
        "buffer",
        PerCpuBuffer::<usize>::try_new(1 << BUFFER_LOG2).map(drop),
    );
    report(
        "memcpy",
        PerCpuMemcpyBuffer::<[u8; 64]>::try_new(1 << MEMCPY_LOG2).map(drop),
    );
    // A ring's header tags limit it to 512 KiB per CPU where a word is 32
    // bits: no ring there is too large to allocate.
    #[cfg(target_pointer_width = "64")]
    {
        let huge = RingConfig::new()
            .sub_buffer_size(1 << 24)
            .sub_buffers(1 << 15);
        report("ring 512 GiB", PerCpuRing::with_config(huge).map(drop));
    }
    // Still usable after the refusals: nothing was left half-built.
    let b = PerCpuBuffer::<usize>::try_new(16).expect("a small buffer");
    b.push(1).unwrap();
    report("small buffer", Ok(()));
    println!("ALLOC DONE");
}

#[test]
fn impossible_sizes_are_typed_errors_not_aborts() {
    let (status, text) = child::run_test("alloc_child", &[(CHILD_ENV, "1")]);
    assert!(status.success(), "the child died ({status}):\n{text}");
    assert!(
        text.contains("ALLOC DONE"),
        "the child did not finish:\n{text}"
    );
    let whats: &[&str] = if cfg!(target_pointer_width = "64") {
        &["buffer", "memcpy", "ring 512 GiB"]
    } else {
        &["buffer", "memcpy"]
    };
    for what in whats {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("ALLOC {what}:")))
            .unwrap_or_else(|| panic!("no report for {what}:\n{text}"));
        assert!(line.contains("Err(Alloc"), "{line}");
    }
    assert!(text.contains("ALLOC small buffer: Ok(())"), "{text}");
}

#[test]
fn sizes_that_overflow_are_typed_errors() {
    // The entries of `usize::MAX / 4` words overflow the address space.
    assert!(matches!(
        PerCpuBuffer::<usize>::try_new(usize::MAX / 4),
        Err(Error::Alloc { .. })
    ));
    assert!(matches!(
        PerCpuBuffer::<usize>::try_new(0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        PerCpuMemcpyBuffer::<u64>::try_new(0),
        Err(Error::InvalidArgument { .. })
    ));
    // Sizes the record tags cannot tell apart are refused before any
    // allocation.
    let too_big = RingConfig::new()
        .sub_buffer_size(RingConfig::MAX_SUB_BUFFER_SIZE)
        .sub_buffers(1 << 20);
    assert!(matches!(
        PerCpuRing::with_config(too_big),
        Err(Error::InvalidArgument { .. })
    ));
}

/// A ring of 256 MiB per CPU builds without committing it: the resident set
/// grows by far less than the ring's size until records are written. (Where
/// a word is 32 bits a ring holds at most 512 KiB per CPU.)
#[cfg(target_pointer_width = "64")]
#[test]
fn large_rings_are_not_zeroed_up_front() {
    let config = RingConfig::new().sub_buffer_size(1 << 20).sub_buffers(256);
    let before = rss();
    let ring = PerCpuRing::with_config(config).expect("256 MiB per CPU");
    let total = ring.bytes_per_cpu() * ring.cpus();
    let grown = rss().saturating_sub(before);
    assert!(
        grown < total / 16,
        "building a {total}-byte ring made the process {grown} bytes larger"
    );
    ring.write(b"used").unwrap();
    drop(ring);
}
