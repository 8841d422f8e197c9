//! A tracer's per-CPU ring: threads reserve a record on their CPU's buffer
//! with one rseq section, fill it and commit; a consumer reads complete
//! sub-buffers in per-CPU order and learns exactly how many were lost.
//!
//! Run: `cargo run --release -p cpulocal --example ring`

use std::thread;

use cpulocal::{PerCpuRing, RingMode};

fn main() {
    let trace = PerCpuRing::new(RingMode::Discard); // 8 sub-buffers of 4 KiB per CPU
    thread::scope(|s| {
        for t in 0..4u8 {
            let trace = &trace;
            s.spawn(move || {
                for i in 0..100u8 {
                    let Ok(mut event) = trace.reserve(16) else {
                        continue; // full in discard mode: counted in lost()
                    };
                    event.copy_from_slice(&[t, i, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
                    event.commit(); // lands on the reserving CPU's buffer
                }
            });
        }
    });
    trace.flush(); // close the partly filled sub-buffers
    let mut delivered = 0usize;
    let summary = trace.consume(|record| {
        assert_eq!(&record.payload()[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        delivered += 1;
    });
    println!(
        "400 records: {} delivered, {} lost; {} bytes per CPU",
        summary.records,
        trace.lost(),
        trace.bytes_per_cpu()
    );
    assert_eq!(summary.records, delivered);
    assert_eq!(delivered as u64 + trace.lost(), 400);
}
