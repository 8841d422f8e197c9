//! `PerCpuList`: items conserved under concurrency (local push/pop, remote
//! `pop_on`, `drain` storms, forced migrations), and every item dropped
//! exactly once, including items left on other CPUs' lists.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{tally, Bomb, Tracked};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use cpulocal::{Error, Index, Node, PerCpuList};
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

/// Node slots: every operation under the slot's fence, the CPUs of a node
/// sharing it.
#[test]
fn items_conserved_node() {
    conserved(Index::Node);
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

/// Nodes move between CPUs' lists and between threads without being
/// reallocated or dropped: 12 threads pop nodes (locally and from random
/// CPUs), push them back (locally and on random CPUs), and hand one in 64 to
/// the next thread over a channel, with forced migrations and a drainer
/// taking whole lists; at the end every node is found once, at the address
/// it was allocated at, and each value is dropped exactly once, with its node.
fn nodes_conserved(by: Index) {
    const ITEMS: u64 = 2_000;
    const ROUNDS: u64 = 100_000;
    let list = Arc::new(PerCpuList::with_index(by));
    let drops = tally(ITEMS as usize);
    let mut addresses = Vec::new();
    for id in 0..ITEMS {
        let node = Node::new(Tracked {
            id,
            drops: drops.clone(),
        });
        addresses.push(&*node as *const Tracked as usize);
        list.push_node(node);
    }
    let cpus = common::allowed_cpus();
    let workers = 6 * cpulocal::possible_cpus();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel()).unzip();
    let seed = common::seed();
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(w, inbox)| {
            let (list, cpus) = (list.clone(), cpus.clone());
            let next: mpsc::Sender<Node<Tracked>> = senders[(w + 1) % workers].clone();
            let mut rng = SmallRng::seed_from_u64(seed ^ (w as u64) << 8);
            thread::spawn(move || {
                let mut moved = 0u64;
                for round in 0..ROUNDS {
                    if round % 4096 == 0 && cpus.len() > 1 {
                        common::pin_current(cpus[rng.random_range(0..cpus.len())]);
                    }
                    for node in inbox.try_iter() {
                        list.push_node(node);
                    }
                    let node = if rng.random_range(0..8) == 0 {
                        list.pop_node_on(rng.random_range(0..list.cpus())).unwrap()
                    } else {
                        list.pop_node()
                    };
                    let Some(node) = node else { continue };
                    moved += 1;
                    match rng.random_range(0..64) {
                        0 => next.send(node).expect("the next worker outlives this one"),
                        1..=7 => list
                            .push_node_on(rng.random_range(0..list.cpus()), node)
                            .expect("a CPU of the list"),
                        _ => list.push_node(node),
                    }
                }
                (moved, inbox)
            })
        })
        .collect();
    drop(senders);
    let mut inboxes = Vec::new();
    let mut moved = 0;
    for h in handles {
        let (m, inbox) = h.join().unwrap();
        moved += m;
        inboxes.push(inbox);
    }
    let mut all: Vec<Node<Tracked>> = list.drain_nodes().collect();
    for inbox in inboxes {
        all.extend(inbox.try_iter());
    }
    let mut seen = vec![0u32; ITEMS as usize];
    for node in &all {
        seen[node.id as usize] += 1;
        assert_eq!(
            &**node as *const Tracked as usize, addresses[node.id as usize],
            "node {} moved in memory",
            node.id
        );
    }
    let missing = seen.iter().filter(|&&n| n == 0).count();
    let doubled = seen.iter().filter(|&&n| n > 1).count();
    eprintln!("{by:?}: {moved} nodes moved, stats {:?}", list.stats());
    assert_eq!((missing, doubled), (0, 0), "nodes lost or duplicated");
    assert!(moved > ROUNDS, "the workers found nodes to move");
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 0),
        "a value dropped while in use"
    );
    drop(all);
    assert!(
        drops.iter().all(|d| d.load(SeqCst) == 1),
        "each value dropped once"
    );
}

#[test]
fn nodes_conserved_cpu() {
    nodes_conserved(Index::Cpu);
}

#[test]
fn nodes_conserved_mm_cid() {
    nodes_conserved(Index::MmCid);
}

#[test]
fn nodes_conserved_node() {
    nodes_conserved(Index::Node);
}

/// A node's value is dropped with the node, or given back by `into_inner`
/// without being dropped.
#[test]
fn node_owns_its_value() {
    let drops = tally(2);
    let node = Node::new(Tracked {
        id: 0,
        drops: drops.clone(),
    });
    drop(node);
    assert_eq!(drops[0].load(SeqCst), 1);
    let value = Node::new(Tracked {
        id: 1,
        drops: drops.clone(),
    })
    .into_inner();
    assert_eq!(drops[1].load(SeqCst), 0, "into_inner moves the value out");
    drop(value);
    assert_eq!(drops[1].load(SeqCst), 1);
}

/// Pushing on a CPU out of range gives the node back, untouched.
#[test]
fn push_on_out_of_range_gives_the_node_back() {
    let l = PerCpuList::new();
    let node = Node::new(5u64);
    let addr = &*node as *const u64;
    let e = l.push_node_on(l.cpus(), node).unwrap_err();
    assert_eq!(
        e.error,
        Error::CpuOutOfRange {
            cpu: l.cpus(),
            slots: l.cpus()
        }
    );
    assert_eq!((&*e.value as *const u64, *e.value), (addr, 5));
    assert_eq!(l.push_on(l.cpus(), 6).unwrap_err().value, 6);
    assert!(l.is_empty());
    assert_eq!(l.len(), 0);
    l.push_on(0, 7).unwrap();
    assert!(!l.is_empty());
    assert_eq!(l.len(), 1);
}

/// A list of 64 items whose item 10 panics when dropped still drops the 63
/// others, as a `Vec` does; so does a drain dropped early.
#[test]
fn a_panicking_drop_does_not_leak_the_others() {
    for early_drain in [false, true] {
        let drops = tally(64);
        let list = PerCpuList::new();
        common::pinned(|_| {
            for id in 0..64 {
                list.push(Bomb {
                    id,
                    drops: drops.clone(),
                    panics_at: 10,
                });
            }
        });
        let r = catch_unwind(AssertUnwindSafe(|| {
            if early_drain {
                let mut d = list.drain_nodes();
                let first = d.next().expect("64 items");
                drop(first);
                drop(d); // drops the 63 it detached and did not yield
            }
            drop(list);
        }));
        assert!(r.is_err(), "the panic propagates");
        let counts: Vec<u64> = drops.iter().map(|d| d.load(SeqCst)).collect();
        assert!(
            counts.iter().all(|&n| n == 1),
            "every item dropped exactly once (early drain: {early_drain}): {counts:?}"
        );
    }
}
