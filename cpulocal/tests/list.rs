//! `PerCpuList`: items conserved under concurrency (local push/pop, remote
//! `pop_on`, `drain` storms, forced migrations), and every item dropped
//! exactly once, including items left on other CPUs' lists.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{tally, Tracked};

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;

use cpulocal::{Index, PerCpuList};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn conserved(by: Index) {
    const ITEMS: u64 = 2_000;
    const ROUNDS: u64 = 200_000;
    let list = Arc::new(PerCpuList::with_index(by));
    let drops = tally(ITEMS as usize);
    for id in 0..ITEMS {
        list.push(Tracked {
            id,
            drops: drops.clone(),
        });
    }
    let cpus = common::allowed_cpus();
    let stop = Arc::new(AtomicBool::new(false));
    // Items that threads hold between a pop and the next push, or that a
    // drain took: returned at the end.
    let parked = Arc::new(Mutex::new(Vec::new()));
    let seed = common::seed();
    let workers: Vec<_> = (0..6 * cpulocal::possible_cpus())
        .map(|w| {
            let (list, cpus) = (list.clone(), cpus.clone());
            let mut rng = SmallRng::seed_from_u64(seed ^ w as u64);
            thread::spawn(move || {
                let mut popped = 0u64;
                for round in 0..ROUNDS {
                    if round % 4096 == 0 && cpus.len() > 1 {
                        // Forced migration.
                        common::pin_current(cpus[rng.random_range(0..cpus.len())]);
                    }
                    let item = if rng.random_range(0..8) == 0 {
                        list.pop_on(rng.random_range(0..list.cpus())).unwrap()
                    } else {
                        list.pop()
                    };
                    if let Some(item) = item {
                        popped += 1;
                        list.push(item);
                    }
                }
                popped
            })
        })
        .collect();
    let drainer = {
        let (list, stop, parked) = (list.clone(), stop.clone(), parked.clone());
        thread::spawn(move || {
            let mut drains = 0u64;
            while !stop.load(SeqCst) {
                let taken: Vec<Tracked> = list.drain().collect();
                drains += 1;
                // Give most back at once (so workers keep finding items), keep
                // a few parked until the end.
                let mut parked = parked.lock().unwrap();
                for (i, item) in taken.into_iter().enumerate() {
                    if i % 97 == 0 && parked.len() < 100 {
                        parked.push(item);
                    } else {
                        list.push(item);
                    }
                }
                drop(parked);
                thread::yield_now();
            }
            drains
        })
    };
    let popped: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, SeqCst);
    let drains = drainer.join().unwrap();

    // Every item is in the list or parked, exactly once.
    let mut seen = vec![0u32; ITEMS as usize];
    let mut all: Vec<Tracked> = list.drain().collect();
    all.append(&mut parked.lock().unwrap());
    for item in &all {
        seen[item.id as usize] += 1;
    }
    let missing = seen.iter().filter(|&&n| n == 0).count();
    let doubled = seen.iter().filter(|&&n| n > 1).count();
    eprintln!(
        "{by:?}: {popped} pops, {drains} drains, stats {:?}: {missing} missing, {doubled} doubled",
        list.stats()
    );
    assert_eq!((missing, doubled), (0, 0), "items lost or duplicated");
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 0),
        "an item was dropped while in use"
    );
    drop(all);
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 1),
        "each item dropped once"
    );
}

#[test]
fn items_conserved_cpu() {
    conserved(Index::Cpu);
}

#[test]
fn items_conserved_mm_cid() {
    conserved(Index::MmCid);
}

/// Items left on every CPU's list are dropped exactly once with the list.
#[test]
fn drop_frees_items_on_every_cpu() {
    let drops = tally(1000);
    let list = Arc::new(PerCpuList::new());
    let cpus = common::allowed_cpus();
    let per = 1000 / cpus.len() as u64;
    let mut pushed = 0;
    for (k, &cpu) in cpus.iter().enumerate() {
        let (list, drops) = (list.clone(), drops.clone());
        thread::spawn(move || {
            common::pin_current(cpu);
            for i in 0..per {
                list.push(Tracked {
                    id: k as u64 * per + i,
                    drops: drops.clone(),
                });
            }
        })
        .join()
        .unwrap();
        pushed += per;
    }
    // One item from each CPU's list, popped from here (remote lists fenced).
    let nonempty = (0..list.cpus())
        .filter(|&c| list.pop_on(c).unwrap().is_some())
        .count();
    assert_eq!(
        nonempty,
        cpus.len(),
        "each pinned thread filled its CPU's list"
    );
    let dropped = |n: u64| drops.iter().filter(|d| d.load(SeqCst) == n).count() as u64;
    assert_eq!(dropped(1), nonempty as u64);
    // The rest, on every CPU's list, go with the list.
    drop(Arc::into_inner(list).expect("sole owner"));
    assert_eq!(dropped(1), pushed, "every item dropped once");
    assert_eq!(dropped(0), 1000 - pushed, "ids never pushed stay untouched");
}

#[test]
fn lifo_and_errors() {
    let l = PerCpuList::new();
    assert!(l.pop_on(l.cpus()).is_err());
    let cpus = common::allowed_cpus();
    let cpu = cpus[0];
    thread::scope(|s| {
        s.spawn(|| {
            common::pin_current(cpu);
            for i in 0..100 {
                l.push(i);
            }
            let got: Vec<i32> = std::iter::from_fn(|| l.pop()).collect();
            assert_eq!(got, (0..100).rev().collect::<Vec<_>>());
            l.push(7);
        });
    });
    assert_eq!(l.pop_on(cpu).unwrap(), Some(7));
    assert_eq!(l.drain().count(), 0);
}
