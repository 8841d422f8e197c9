//! The C API under load from C (`tests/c/stress.c`, linked statically):
//! threads adding to one counter (one add in 16 an `add_on` to a random
//! CPU), moving themselves between CPUs with `sched_setaffinity`, signal
//! handlers adding too, a thread emptying the counter with `take()` as they
//! go; and a list, a buffer, a lock and a ring under the same threads. Every
//! invariant is exact: the counter's taken + left equals every add made,
//! nodes and pointers are conserved, the lock's totals equal its
//! increments, the ring delivers every record written and counts every one
//! refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{compile, run, Link};

#[test]
fn stress_from_c_is_exact() {
    let exe = compile("stress", &["tests/c/stress.c"], Link::Static, &[]);
    let threads = 6 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut cmd = Command::new(&exe);
    cmd.args([threads.to_string(), "300000".into()]);
    let ran = run(cmd, Duration::from_secs(300));
    ran.assert_success();
    for line in ["counter: added ", "list: ", "buffer: ", "lock: ", "ring: "] {
        let found = ran
            .stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line:?} line\n{}", ran.dump()));
        assert!(
            found.ends_with(": exact") || found.ends_with(": conserved"),
            "{found}\n{}",
            ran.dump()
        );
    }
    // Signal handlers did add, and remote adds took the fenced path.
    assert!(!ran.stdout.contains("signal handlers 0)"), "{}", ran.dump());
    assert!(!ran.stdout.contains("fenced 0\n"), "{}", ran.dump());
}
