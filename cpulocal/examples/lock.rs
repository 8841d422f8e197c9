//! A sharded map: one `HashMap` per CPU behind a per-CPU spinlock. Writers
//! lock the shard of the CPU they run on, so they rarely meet; a reader
//! visits every shard with `lock_on`.
//!
//! Run: `cargo run --release -p cpulocal --example lock`

use std::collections::HashMap;
use std::thread;

use cpulocal::PerCpuLock;

fn main() -> Result<(), cpulocal::Error> {
    let hits = PerCpuLock::new(|_| HashMap::<&'static str, u64>::new());
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..10_000 {
                    let page = if i % 4 == 0 { "/about" } else { "/" };
                    *hits.lock().entry(page).or_default() += 1;
                }
            });
        }
    });
    let mut total = HashMap::new();
    for cpu in 0..hits.cpus() {
        for (page, n) in hits.lock_on(cpu)?.iter() {
            *total.entry(*page).or_insert(0) += n;
        }
    }
    println!("hits: {total:?}");
    assert_eq!(total["/"] + total["/about"], 40_000);
    assert_eq!(total["/about"], 10_000);
    Ok(())
}
