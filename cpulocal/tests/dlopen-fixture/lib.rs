//! Exports a counter to C callers, for the dlopen test.

use std::sync::OnceLock;

use cpulocal::PerCpuCounter;

static COUNTER: OnceLock<PerCpuCounter> = OnceLock::new();

/// Adds `n` to this library's counter; returns its sum.
#[no_mangle]
pub extern "C" fn fixture_add(n: i64) -> i64 {
    let c = COUNTER.get_or_init(PerCpuCounter::new);
    c.add(n);
    c.sum()
}
