//! Small plain-data events copied into per-CPU buffers and drained by a
//! reader: `push_from` and `pop_into` copy straight between the caller's
//! memory and the slot.
//!
//! Run: `cargo run --release -p cpulocal --example memcpy_buffer`

use std::mem::MaybeUninit;
use std::thread;

use cpulocal::PerCpuMemcpyBuffer;

/// An event as a tracer might record it: plain data, copied whole.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Event {
    thread: u64,
    seq: u64,
    payload: [u64; 2],
}

fn main() {
    let events = PerCpuMemcpyBuffer::<Event>::new(1024);
    let refused: usize = thread::scope(|s| {
        let writers: Vec<_> = (0..4u64)
            .map(|thread| {
                let events = &events;
                s.spawn(move || {
                    (0..500u64)
                        .filter(|&seq| {
                            let e = Event {
                                thread,
                                seq,
                                payload: [thread ^ seq; 2],
                            };
                            events.push_from(&e).is_err()
                        })
                        .count()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    // Read on this thread: this CPU's slot first, then every other CPU's.
    let mut out = MaybeUninit::uninit();
    let mut read = 0;
    while let Some(e) = events.pop_into(&mut out) {
        assert_eq!(e.payload, [e.thread ^ e.seq; 2], "never torn");
        read += 1;
    }
    read += events
        .drain()
        .inspect(|e| assert_eq!(e.payload, [e.thread ^ e.seq; 2]))
        .count();
    println!("2000 events: {read} read back whole, {refused} refused (a CPU's buffer was full)");
    assert_eq!(read + refused, 2000);
}
