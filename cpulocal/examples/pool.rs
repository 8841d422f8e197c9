//! A per-CPU object pool, the pattern TCMalloc builds on rseq: buffers are
//! allocated once, then move between threads through the pool of the CPU
//! they run on, without touching the allocator or a shared cache line.
//!
//! Run: `cargo run --release -p cpulocal --example pool`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use cpulocal::{Node, PerCpuList};

/// Buffers of 4 KiB, kept per CPU once returned.
struct Pool {
    free: PerCpuList<Vec<u8>>,
    allocated: AtomicUsize,
}

impl Pool {
    /// A buffer from this CPU's free list, or a new one.
    fn get(&self) -> Node<Vec<u8>> {
        self.free.pop_node().unwrap_or_else(|| {
            self.allocated.fetch_add(1, Ordering::Relaxed);
            Node::new(Vec::with_capacity(4096))
        })
    }

    /// Back to the free list of the CPU this thread runs on now.
    fn put(&self, mut buf: Node<Vec<u8>>) {
        buf.clear();
        self.free.push_node(buf);
    }
}

fn main() {
    let pool = Pool {
        free: PerCpuList::new(),
        allocated: AtomicUsize::new(0),
    };
    let uses = 4 * 100_000;
    thread::scope(|s| {
        for t in 0..4u8 {
            let pool = &pool;
            s.spawn(move || {
                for _ in 0..100_000 {
                    let mut buf = pool.get();
                    buf.extend_from_slice(&[t; 64]);
                    pool.put(buf);
                }
            });
        }
    });
    let allocated = pool.allocated.load(Ordering::Relaxed);
    let cached = pool.free.len();
    println!("{uses} uses served by {allocated} allocations; all {cached} back in the pool");
    assert_eq!(cached, allocated, "every buffer is back in the pool");
}
