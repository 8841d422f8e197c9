//! Work handed between threads through per-CPU bounded buffers of boxed jobs:
//! a push to a full slot gives the job back instead of blocking, and the
//! jobs left over are drained from every CPU's slot at the end.
//!
//! Run: `cargo run --release -p cpulocal --example buffer`

use std::sync::Arc;
use std::thread;

use cpulocal::PerCpuBuffer;

struct Job {
    id: u64,
}

fn main() {
    // Words, not copies: Box, Arc, NonNull, &'static T and usize are stored as
    // one pointer-sized word each, with no extra allocation.
    let jobs = PerCpuBuffer::<Box<Job>>::new(64);
    let (mut done, mut refused) = (0u64, 0u64);
    thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let jobs = &jobs;
                s.spawn(move || {
                    let (mut done, mut refused) = (0u64, 0u64);
                    for i in 0..10_000 {
                        if let Err(job) = jobs.push(Box::new(Job { id: t * 10_000 + i })) {
                            assert_eq!(job.id, t * 10_000 + i); // full: it came back
                            refused += 1;
                        }
                        if i % 3 == 0 && jobs.pop().is_some() {
                            done += 1; // a job from this CPU's slot, maybe another thread's
                        }
                    }
                    (done, refused)
                })
            })
            .collect();
        for w in workers {
            let (d, r) = w.join().unwrap();
            done += d;
            refused += r;
        }
    });
    let left = jobs.drain().count() as u64;
    println!(
        "40000 jobs: {done} taken by the workers, {left} left in the buffers, {refused} refused"
    );
    assert_eq!(done + left + refused, 40_000);

    // A word is one pointer: Arc<String>, not the two-word Arc<str>.
    let shared = PerCpuBuffer::<Arc<String>>::new(8);
    let name = Arc::new(String::from("config"));
    shared.push(name.clone()).expect("room for one");
    let popped = shared.pop().expect("the Arc we pushed");
    assert_eq!((popped.as_str(), Arc::strong_count(&name)), ("config", 2));
}
