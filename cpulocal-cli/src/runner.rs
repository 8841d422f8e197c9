//! [`Runner`]: a team of worker threads that runs the same job on every
//! thread at once and reports the wall time.
//!
//! The threads live as long as the runner, so timing a batch costs no thread
//! creation; between batches they sleep on a channel. Each worker takes its
//! own clock after a common start barrier and after its job, and the runner
//! reports last end minus first start: the wall time of the batch, without
//! the time the workers took to wake.
//!
//! Where the workers run is a [`Placement`]. Pinned (the default), worker `i`
//! runs only on the `i % n`-th of the `n` allowed CPUs: one worker per CPU up
//! to `n` workers; beyond, an oversubscribed run, the workers are spread
//! evenly over the CPUs (at most one more on one CPU than on another), and
//! the kernel time-slices those that share a CPU without migrating them.
//! Floating, the workers may run on every allowed CPU and the scheduler
//! places and migrates them, as an application's threads would. Either way
//! the batch's wall time covers every worker's operations, so total
//! operations / wall time is the aggregate throughput.

use std::fmt;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called once on each worker with the worker's index.
type Job = Arc<dyn Fn(usize) + Send + Sync>;

/// What a worker receives for one batch.
struct Batch {
    job: Job,
    start: Arc<Barrier>,
    done: Sender<(Instant, Instant)>,
}

/// Where the workers of a [`Runner`] run; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Placement {
    /// Worker `i` pinned to the `i % n`-th of the `n` allowed CPUs.
    #[default]
    Pinned,
    /// Not pinned: every worker may run on every allowed CPU.
    Floating,
}

impl Placement {
    /// A short, stable name: "pinned" or "floating".
    pub fn name(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::Floating => "floating",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A team of worker threads; see the module docs.
#[derive(Debug)]
pub struct Runner {
    workers: Vec<(Sender<Batch>, JoinHandle<()>)>,
    cpus: Vec<Option<usize>>,
}

impl Runner {
    /// `threads` workers, worker `i` pinned to the `i % n`-th of the `n` CPUs
    /// the calling thread may run on: one thread per CPU while there are
    /// enough CPUs, spread evenly over them beyond ([`Placement::Pinned`]).
    ///
    /// # Errors
    ///
    /// If the affinity mask cannot be read or a thread cannot be spawned.
    ///
    /// # Panics
    ///
    /// If `threads` is 0.
    pub fn new(threads: usize) -> io::Result<Self> {
        Self::with_placement(threads, Placement::Pinned)
    }

    /// `threads` workers placed as `placement` says.
    ///
    /// # Errors
    ///
    /// If the affinity mask cannot be read or a thread cannot be spawned.
    ///
    /// # Panics
    ///
    /// If `threads` is 0.
    pub fn with_placement(threads: usize, placement: Placement) -> io::Result<Self> {
        match placement {
            Placement::Pinned => {
                let allowed = allowed_cpus()?;
                let cpus = (0..threads).map(|i| allowed[i % allowed.len()]).collect();
                Self::pinned(cpus)
            }
            Placement::Floating => Self::spawn(vec![None; threads]),
        }
    }

    /// One worker per entry of `cpus`, pinned to that CPU.
    ///
    /// # Errors
    ///
    /// If a thread cannot be spawned or pinned.
    ///
    /// # Panics
    ///
    /// If `cpus` is empty.
    pub fn pinned(cpus: Vec<usize>) -> io::Result<Self> {
        Self::spawn(cpus.into_iter().map(Some).collect())
    }

    /// One worker per entry of `cpus`, pinned to that CPU if there is one.
    fn spawn(cpus: Vec<Option<usize>>) -> io::Result<Self> {
        assert!(!cpus.is_empty(), "Runner needs at least one thread");
        let mut workers = Vec::with_capacity(cpus.len());
        for (i, &cpu) in cpus.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Batch>();
            let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
            let name = match cpu {
                Some(cpu) => format!("bench-{i}@cpu{cpu}"),
                None => format!("bench-{i}"),
            };
            let handle = std::thread::Builder::new().name(name).spawn(move || {
                let pinned = cpu.map_or(Ok(()), pin_current_thread);
                let ok = pinned.is_ok();
                let _ = ready_tx.send(pinned);
                if ok {
                    worker(i, rx);
                }
            })?;
            ready_rx
                .recv()
                .map_err(|_| io::Error::other("bench worker died while starting"))??;
            workers.push((tx, handle));
        }
        Ok(Runner { workers, cpus })
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// The CPU each worker is pinned to; None for a floating worker.
    pub fn cpus(&self) -> &[Option<usize>] {
        &self.cpus
    }

    /// The largest number of workers pinned to one CPU (1 when every worker
    /// has a CPU of its own); None for a floating runner.
    pub fn max_per_cpu(&self) -> Option<usize> {
        let mut per: std::collections::HashMap<usize, usize> = Default::default();
        for cpu in &self.cpus {
            *per.entry((*cpu)?).or_default() += 1;
        }
        per.values().copied().max()
    }

    /// Runs `job(i)` on every worker `i` at once and returns the wall time
    /// from the first worker's start to the last worker's end. When it
    /// returns, every worker has dropped its handle on `job`.
    ///
    /// # Panics
    ///
    /// If the job panics on a worker (the runner is then unusable).
    pub fn run(&self, job: impl Fn(usize) + Send + Sync + 'static) -> Duration {
        let job: Job = Arc::new(job);
        let start = Arc::new(Barrier::new(self.workers.len()));
        let (done, results) = mpsc::channel();
        for (tx, _) in &self.workers {
            tx.send(Batch {
                job: job.clone(),
                start: start.clone(),
                done: done.clone(),
            })
            .expect("a bench worker has exited (its job panicked)");
        }
        drop(done);
        let mut first_start: Option<Instant> = None;
        let mut last_end: Option<Instant> = None;
        for _ in 0..self.workers.len() {
            let (s, e) = results
                .recv()
                .expect("a bench worker panicked while running its job");
            first_start = Some(first_start.map_or(s, |f| f.min(s)));
            last_end = Some(last_end.map_or(e, |l| l.max(e)));
        }
        match (first_start, last_end) {
            (Some(s), Some(e)) => e.saturating_duration_since(s),
            _ => Duration::ZERO,
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for (tx, handle) in self.workers.drain(..) {
            drop(tx); // the worker's recv fails and it returns
            let _ = handle.join();
        }
    }
}

fn worker(index: usize, batches: Receiver<Batch>) {
    while let Ok(Batch { job, start, done }) = batches.recv() {
        start.wait();
        let t0 = Instant::now();
        job(index);
        let t1 = Instant::now();
        // Before reporting: once `run` returns, no worker holds the job.
        drop(job);
        let _ = done.send((t0, t1));
    }
}

/// The CPUs the calling thread may run on, in increasing order.
///
/// # Errors
///
/// If `sched_getaffinity` fails.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * core::mem::size_of_val(&set);
    // SAFETY: every index is below the set's capacity in bits.
    let cpus: Vec<usize> = (0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other("empty CPU affinity mask"));
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`).
///
/// # Errors
///
/// If `cpu` is beyond the `cpu_set_t` capacity or the kernel refuses (the CPU
/// is offline or outside the cgroup's set).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    if cpu >= 8 * core::mem::size_of_val(&set) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is below the set's capacity (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_worker_runs_each_batch_on_its_cpu() {
        let runner = Runner::new(3).unwrap();
        let cpus: Arc<Vec<Option<usize>>> = Arc::new(runner.cpus().to_vec());
        let hits = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            let (hits, cpus) = (hits.clone(), cpus.clone());
            runner.run(move |i| {
                // SAFETY: sched_getcpu has no preconditions.
                let here = unsafe { libc::sched_getcpu() };
                assert_eq!(Some(here as usize), cpus[i]);
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn oversubscribed_workers_are_spread_evenly() {
        let n = allowed_cpus().unwrap().len();
        let runner = Runner::new(4 * n + 1).unwrap();
        assert_eq!(runner.threads(), 4 * n + 1);
        assert_eq!(runner.max_per_cpu(), Some(5));
        let floating = Runner::with_placement(3, Placement::Floating).unwrap();
        assert_eq!(floating.cpus(), &[None, None, None]);
        assert_eq!(floating.max_per_cpu(), None);
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        floating.run(move |_| {
            h.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 3);
    }
}
