//! Node indexing ([`Index::Node`]): one slot per NUMA node, shared by the
//! node's CPUs. Slots follow the node of the CPU a thread runs on, the
//! exact-sum stress holds on a node-indexed counter, and the structures keep
//! their items (`list.rs`, `buffer.rs` and `lock.rs` run their conservation
//! and exclusion tests on node slots too). On a machine with one node every
//! structure has one slot, which all CPUs share: the hardest case for the
//! slot's guard. The emulated two-node guest (`docs/guests.md`) runs this
//! file with nodes that differ.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use cpulocal::{Index, PerCpu, PerCpuCounter, PerCpuList, PerCpuLock, PerCpuRing, RingConfig};

/// The node of every CPU, read from sysfs here, apart from the library's own
/// reading: `node<N>/cpulist` for each node (node 0 for a CPU none lists).
fn node_of_cpu(cpu: usize) -> usize {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") else {
        return 0;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(node) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let list = std::fs::read_to_string(entry.path().join("cpulist")).unwrap_or_default();
        for range in list.trim().split(',').filter(|r| !r.is_empty()) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            if (a..=b).contains(&cpu) {
                return node;
            }
        }
    }
    0
}

#[test]
fn one_slot_per_node() {
    let nodes = cpulocal::possible_nodes();
    assert!(nodes >= 1);
    let c = PerCpuCounter::with_index(Index::Node);
    assert_eq!((c.index(), c.cpus()), (Index::Node, nodes));
    let p = PerCpu::with_index(Index::Node, |n| n);
    assert_eq!(p.cpus(), nodes);
    assert!(
        c.add_on(nodes, 1).is_err(),
        "a node out of range is refused"
    );
    eprintln!(
        "{nodes} possible node(s); this thread on node {}",
        cpulocal::current_node()
    );
}

/// A thread pinned to each allowed CPU in turn adds, pushes and locks: each
/// lands in the slot of that CPU's node, and `current_node()` says so.
#[test]
fn slots_follow_the_node() {
    let counter = PerCpuCounter::with_index(Index::Node);
    let list = PerCpuList::with_index(Index::Node);
    let lock = PerCpuLock::with_index(Index::Node, |_| 0u64);
    let cpus = common::allowed_cpus();
    let mut want = vec![0i64; counter.cpus()];
    for &cpu in &cpus {
        let node = node_of_cpu(cpu);
        std::thread::scope(|s| {
            s.spawn(|| {
                common::pin_current(cpu);
                assert_eq!(cpulocal::current_node(), node, "CPU {cpu}");
                counter.add(1);
                list.push(cpu);
                let mut guard = lock.lock();
                assert_eq!(guard.cpu(), node, "the lock's slot is the node's");
                *guard += 1;
            });
        });
        want[node] += 1;
        assert_eq!(
            counter.per_cpu(),
            want,
            "after an add on CPU {cpu} (node {node})"
        );
        assert_eq!(
            list.pop_on(node).unwrap(),
            Some(cpu),
            "the push on CPU {cpu} went to node {node}'s list"
        );
    }
    let mut lock = lock;
    let counts: Vec<i64> = lock.iter_mut().map(|v| *v as i64).collect();
    assert_eq!(counts, want);
    // Adds are atomic instructions, never fenced; the list's operations are
    // all fenced.
    assert_eq!(counter.stats().fenced, 0);
    assert!(list.stats().fenced >= 2 * cpus.len() as u64);
}

/// The full exact-sum stress (workers, signal handlers that add, forced
/// migrations, `take()` storms, `add_on` any node) on a node-indexed counter.
#[test]
fn stress_exact_sum_node() {
    let mut cfg = common::Cfg::full("stress/node");
    cfg.index = Index::Node;
    let out = common::stress(&cfg);
    assert_eq!(
        out.stats.fenced, 0,
        "node adds are atomic instructions: {out}"
    );
}

/// A ring on node slots: every record written from threads on every CPU is
/// delivered once (the ring holds them all), with its bytes intact.
#[test]
fn ring_on_node_slots() {
    const WRITERS: u64 = 4;
    const RECORDS: u64 = 500;
    let config = RingConfig::new()
        .index(Index::Node)
        .sub_buffer_size(4096)
        .sub_buffers(64);
    let ring = PerCpuRing::with_config(config).expect("a ring of 256 KiB per node");
    assert_eq!(
        (ring.index(), ring.cpus()),
        (Index::Node, cpulocal::possible_nodes())
    );
    let cpus = common::allowed_cpus();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (ring, cpus) = (&ring, &cpus);
            s.spawn(move || {
                for i in 0..RECORDS {
                    common::pin_current(cpus[(w + i) as usize % cpus.len()]);
                    let mut r = ring.reserve(16).expect("room for every record");
                    r[..8].copy_from_slice(&w.to_le_bytes());
                    r[8..16].copy_from_slice(&i.to_le_bytes());
                    r.commit();
                }
            });
        }
    });
    ring.flush();
    let mut seen = vec![Vec::new(); WRITERS as usize];
    ring.consume(|record| {
        let p = record.payload();
        let w = u64::from_le_bytes(p[..8].try_into().unwrap());
        let i = u64::from_le_bytes(p[8..16].try_into().unwrap());
        seen[w as usize].push(i);
    });
    assert_eq!(ring.lost(), 0);
    for (w, got) in seen.iter_mut().enumerate() {
        got.sort_unstable();
        assert_eq!(
            *got,
            (0..RECORDS).collect::<Vec<_>>(),
            "writer {w}: each record once"
        );
    }
}
