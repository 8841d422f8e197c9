//! PerCpuCounter against a model: random operation sequences, on a thread
//! pinned to one CPU so that `add` has a known slot.

use cpulocal::PerCpuCounter;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Add(i64),
    AddOn(usize, i64),
    Take,
}

fn op(cpus: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<i64>().prop_map(Op::Add),
        (0..cpus, any::<i64>()).prop_map(|(c, n)| Op::AddOn(c, n)),
        Just(Op::Take),
    ]
}

/// Pins the calling thread to `cpu`; returns false if the kernel refused.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

proptest! {
    #[test]
    fn counter_matches_model(ops in proptest::collection::vec(op(cpulocal::possible_cpus()), 1..200)) {
        let home = cpulocal::current_cpu();
        prop_assume!(pin(home));
        let c = PerCpuCounter::new();
        let mut model = vec![0i64; c.cpus()];
        for op in ops {
            match op {
                Op::Add(n) => {
                    c.add(n);
                    model[home] = model[home].wrapping_add(n);
                }
                Op::AddOn(cpu, n) => {
                    c.add_on(cpu, n).expect("a CPU of the counter");
                    model[cpu] = model[cpu].wrapping_add(n);
                }
                Op::Take => {
                    let want = model.iter().fold(0i64, |a, &b| a.wrapping_add(b));
                    prop_assert_eq!(c.take(), want);
                    model.iter_mut().for_each(|v| *v = 0);
                }
            }
            prop_assert_eq!(c.per_cpu(), model.clone());
        }
        prop_assert_eq!(c.sum(), model.iter().fold(0i64, |a, &b| a.wrapping_add(b)));
    }
}

#[test]
fn add_on_out_of_range_is_an_error_and_adds_nothing() {
    let c = PerCpuCounter::new();
    assert_eq!(
        c.add_on(c.cpus(), 1),
        Err(cpulocal::Error::CpuOutOfRange {
            cpu: c.cpus(),
            slots: c.cpus()
        })
    );
    assert_eq!(c.sum(), 0);
}

#[test]
fn lock_errors_are_typed() {
    let p = cpulocal::PerCpu::new(|cpu| cpu);
    for err in [
        p.try_lock_on(p.cpus()).unwrap_err(),
        p.lock_on(p.cpus()).unwrap_err(),
    ] {
        assert_eq!(
            err,
            cpulocal::Error::CpuOutOfRange {
                cpu: p.cpus(),
                slots: p.cpus()
            }
        );
    }
    let g = p.lock_on(0).unwrap();
    assert_eq!(
        p.try_lock_on(0).unwrap_err(),
        cpulocal::Error::HeldByThisThread { cpu: 0 }
    );
    assert_eq!(
        p.lock_on(0).unwrap_err(),
        cpulocal::Error::HeldByThisThread { cpu: 0 }
    );
    // Another thread is told, without waiting, that the slot is held.
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(
                p.try_lock_on(0).unwrap_err(),
                cpulocal::Error::WouldBlock { cpu: 0 }
            )
        });
    });
    drop(g);
    assert_eq!(*p.lock_on(0).unwrap(), 0);
}

#[test]
fn percpu_lock_excludes_across_threads() {
    use std::sync::Arc;
    let p = Arc::new(cpulocal::PerCpu::new(|_| 0u64));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                for k in 0..5_000 {
                    let cpu = (i + k) % p.cpus();
                    let mut g = p.lock_on(cpu).unwrap();
                    let v = *g;
                    std::hint::spin_loop();
                    *g = v + 1;
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let total: u64 = p.iter().map(|g| *g).sum();
    assert_eq!(total, 8 * 5_000);
}
