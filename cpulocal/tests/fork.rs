//! fork() in a multithreaded process: a child keeps using the same counters and
//! slots, and a fence that another thread held at the fork does not deadlock it.
//!
//! Children only make async-signal-safe calls (the counter operations, `_exit`);
//! the parent waits for each with a deadline and fails on a hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cpulocal::{Error, PerCpu, PerCpuCounter};

/// Forks; the child runs `child` and `_exit`s with its result. The parent
/// returns the child's exit code, or panics if it has not exited in time.
fn fork_and_wait(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child`, which makes async-signal-safe calls,
    // then `_exit`s without unwinding or running destructors.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child at once, as required after fork.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(
                libc::WIFEXITED(status),
                "child died by signal: status {status:#x}"
            );
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own hung child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("fork child hung: deadlocked on a fence held at the fork");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn child_takes_over_a_slot_another_thread_held() {
    let slots = Arc::new(PerCpu::new(|_| 0u64));
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = {
        let slots = slots.clone();
        std::thread::spawn(move || {
            let mut g = slots.lock_on(0).unwrap();
            *g = 41;
            held_tx.send(()).unwrap();
            done_rx.recv().unwrap(); // hold the fence across the fork
            *g += 1;
        })
    };
    held_rx.recv().unwrap();
    let own = slots.lock_on(slots.cpus() - 1).unwrap(); // held by the forking thread itself
    let code = fork_and_wait(|| {
        // The forking thread still holds what it held...
        if slots.try_lock_on(slots.cpus() - 1).unwrap_err()
            != (Error::HeldByThisThread {
                cpu: slots.cpus() - 1,
            })
        {
            return 2;
        }
        // ...and takes over the slot the other (absent) thread held.
        let mut g = slots.lock_on(0).unwrap();
        if *g != 41 {
            return 3;
        }
        *g += 100;
        drop(g);
        if *slots.lock_on(0).unwrap() != 141 {
            return 4;
        }
        0
    });
    assert_eq!(code, 0, "child failed check {code}");
    drop(own);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    // The parent's slot is untouched by the child's takeover.
    assert_eq!(*slots.lock_on(0).unwrap(), 42);
}

#[test]
fn children_of_a_busy_process_keep_counting() {
    let c = Arc::new(PerCpuCounter::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Threads that hold fences all the time: remote and local adds.
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.add_on((i + k as usize) % c.cpus(), 1)
                        .expect("a CPU of the counter");
                    c.add(1);
                    k += 1;
                }
            })
        })
        .collect();
    for _ in 0..40 {
        let code = fork_and_wait(|| {
            let before = c.per_cpu();
            for cpu in 0..c.cpus() {
                c.add_on(cpu, 1000).expect("a CPU of the counter");
            }
            c.add(7);
            // The child is single-threaded: each slot grew by exactly what
            // it added (1000 on every slot, 7 more on one).
            let after = c.per_cpu();
            let mut grown: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            grown.sort_unstable();
            let mut want = vec![1000; c.cpus()];
            want[c.cpus() - 1] = 1007;
            if grown != want {
                return 1;
            }
            0
        });
        assert_eq!(code, 0, "a fork child counted wrong");
    }
    stop.store(true, Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().unwrap());
}
