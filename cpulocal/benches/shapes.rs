//! `cargo bench -p cpulocal --bench shapes`
//!
//! The seven [`Domain`] operation shapes, ns per operation, each three ways
//! (one criterion group per shape, named after it):
//!
//! - `rseq`: the fast path. The bench thread is pinned to one CPU, so
//!   `domain.current()` stays put, and the operation runs on that CPU's slot as
//!   one restartable sequence. Every operation succeeds: compares expect the
//!   value the previous operation stored.
//! - `fenced`: the same operation on the *other* CPU's slot, `(cur + 1) % len`,
//!   the public way to force the fenced path: take that slot's fence,
//!   `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU)` (an IPI to the other CPU),
//!   the operation as plain code, release. Skipped, with a note, on one CPU.
//! - `atomic`: the nearest std atomic equivalent, on one `AtomicUsize` (or a
//!   few words) that every thread would share, used here by this thread alone
//!   (uncontended: the floor of the atomic approach):
//!
//! | group                       | `atomic` line                                    |
//! |-----------------------------|--------------------------------------------------|
//! | `cbne_store`                | `compare_exchange`                               |
//! | `add_store`                 | `fetch_add`                                      |
//! | `cbeq_store_add_load_store` | Treiber pop: load head, load its link, CAS head  |
//! | `cbne_store_store`          | store the second word, `compare_exchange`        |
//! | `cbne_memcpy_store`         | copy 64 bytes, `compare_exchange`                |
//! | `cbne_load_cbne_store`      | load the second word, `compare_exchange`         |
//! | `add_load_add_store`        | load the pointer, `fetch_add` through it         |
//!
//! The `atomic` lines are uncontended, so they show only the cost of the
//! locked instruction; with threads on other CPUs sharing the word they pay
//! cache-line transfers too, which the per-CPU `rseq` lines never do (the
//! `cpulocal-cli` counter bench measures that, at 2 threads).
//!
//! All lines use [`Order::Relaxed`] (relaxed atomics). `cbne_store_store` adds
//! `rseq_release` and `atomic_release` ([`Order::Release`], a release CAS): on
//! x86_64 both orders are the same instructions, and the numbers show it.
//!
//! The list shape pops from a two-node ring (each node's link is the other
//! node), so every pop succeeds and the list never runs dry: the line times a
//! pop alone, with no push to refill it. The memcpy shape copies a 64-byte
//! payload. Each slot's words and payload sit in one 128-byte-aligned block
//! (x86_64's prefetch pair), the shared words of the `atomic` lines in another.
//!
//! After each line the bench checks the domain's [`PathStats`]: every `fenced`
//! operation must have been fenced; `rseq` operations that left the fast path
//! (preempted [`RSEQ_ATTEMPTS`](cpulocal::RSEQ_ATTEMPTS) times in a row) are
//! reported. A summary table (criterion's slope, or mean where it has none)
//! follows the groups; `cargo test --release -p cpulocal --benches` runs each
//! line once, as a test.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cpulocal::{Domain, Engine, Index, Order, PathStats};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion};

/// Bytes `cbne_memcpy_store` copies.
const PAYLOAD: usize = 64;

/// The shapes, in the order of the summary.
const SHAPES: [&str; 7] = [
    "cbne_store",
    "add_store",
    "cbeq_store_add_load_store",
    "cbne_store_store",
    "cbne_memcpy_store",
    "cbne_load_cbne_store",
    "add_load_add_store",
];

/// One slot's data (or, for the `atomic` lines, the shared words), alone in a
/// 128-byte block. The payload comes first so it is 64-byte aligned.
#[repr(C, align(128))]
struct Slot {
    /// `cbne_memcpy_store`'s destination.
    payload: [u8; PAYLOAD],
    /// The committing word of the compare shapes.
    v: usize,
    /// `cbne_store_store`'s speculative word.
    v2: usize,
    /// `cbne_load_cbne_store`'s second compare: always [`EXPECT2`].
    guard: usize,
    /// The list head: the address of one of `nodes`.
    head: usize,
    /// `add_load_add_store`'s pointer: the address of this `Slot`.
    base: usize,
    /// `add_store`'s and `add_load_add_store`'s word.
    counter: usize,
    /// A two-node ring: each node is one link word holding the other's address.
    nodes: [usize; 2],
}

// One block per slot: the words and payload fill exactly 128 bytes.
const _: () = assert!(std::mem::size_of::<Slot>() == 128);

/// Raw pointers to one [`Slot`]'s fields.
#[derive(Clone, Copy)]
struct Words {
    payload: *mut u8,
    v: *mut usize,
    v2: *mut usize,
    guard: *const usize,
    head: *mut usize,
    base: *const usize,
    counter: *mut usize,
}

/// What `cbne_load_cbne_store`'s second compare expects in `guard`.
const EXPECT2: usize = 0x5eed;

impl Words {
    /// Initialises the slot at `p` and returns pointers to its fields.
    ///
    /// # Safety
    ///
    /// `p` is valid for reads and writes of a `Slot` for as long as the
    /// returned pointers are used.
    unsafe fn init(p: *mut Slot) -> Words {
        // SAFETY: `p` is valid (caller); the writes initialise every field.
        unsafe {
            let nodes = addr_of_mut!((*p).nodes).cast::<usize>();
            p.write(Slot {
                payload: [0; PAYLOAD],
                v: 0,
                v2: 0,
                guard: EXPECT2,
                head: nodes as usize,
                base: p as usize,
                counter: 0,
                nodes: [nodes.add(1) as usize, nodes as usize],
            });
            Words {
                payload: addr_of_mut!((*p).payload).cast(),
                v: addr_of_mut!((*p).v),
                v2: addr_of_mut!((*p).v2),
                guard: addr_of_mut!((*p).guard),
                head: addr_of_mut!((*p).head),
                base: addr_of_mut!((*p).base),
                counter: addr_of_mut!((*p).counter),
            }
        }
    }

    /// The word at `p` as an atomic.
    ///
    /// # Safety
    ///
    /// `p` is one of the words of a `Words` (or a ring node's link word), so
    /// aligned and valid while `Ctx` lives; only atomics and the domain's
    /// operations touch it.
    unsafe fn atomic<'a>(p: *const usize) -> &'a AtomicUsize {
        // SAFETY: the caller's contract.
        unsafe { AtomicUsize::from_ptr(p.cast_mut()) }
    }

    /// The current value of the word at `p`, between lines.
    fn read(p: *const usize) -> usize {
        // SAFETY: `p` is one of a `Words`' pointers (the only ones the
        // bench passes), valid and aligned while `Ctx` lives; no operation
        // runs meanwhile, this thread being the only one using the memory.
        unsafe { p.read() }
    }
}

/// The shared block's words, as atomics, for the `atomic` lines.
struct Shared<'a> {
    payload: *mut u8,
    v: &'a AtomicUsize,
    v2: &'a AtomicUsize,
    guard: &'a AtomicUsize,
    head: &'a AtomicUsize,
    base: &'a AtomicUsize,
    counter: &'a AtomicUsize,
}

/// A 64-byte source for the memcpy shape.
#[repr(C, align(64))]
struct Source([u8; PAYLOAD]);

/// The bench's domain and memory, and where its thread runs.
struct Ctx {
    domain: Domain,
    /// The CPU the bench thread is pinned to: the `rseq` slot.
    cur: usize,
    /// The slot the `fenced` lines aim at; None on one CPU.
    other: Option<usize>,
    /// Per-slot data, then the shared block of the `atomic` lines. Accessed
    /// only through `words`, never through the `Vec` after construction.
    _memory: Vec<Slot>,
    /// Pointers into `_memory`: `words[i]` for slot `i`, `words[len]` shared.
    words: Vec<Words>,
    src: Source,
}

impl Ctx {
    fn new() -> Ctx {
        let domain = Domain::new(Index::Cpu);
        let cur = pin_here();
        assert_eq!(
            domain.current(),
            cur,
            "pinned to CPU {cur}, the domain sees another"
        );
        let status = cpulocal::status();
        if status.engine != Engine::Rseq {
            eprintln!(
                "shapes: rseq is off for this thread ({:?}): the `rseq` lines take the fenced path too",
                status.fenced_because
            );
        }
        let len = domain.cpus();
        let other = if len > 1 {
            Some((cur + 1) % len)
        } else {
            eprintln!("shapes: the domain has one slot; the `fenced` lines are skipped");
            None
        };
        let mut memory: Vec<Slot> = Vec::with_capacity(len + 1);
        let base = memory.as_mut_ptr();
        // SAFETY: the Vec has room for `len + 1` slots; each is initialised
        // before `set_len` makes it part of the Vec, and the Vec's buffer does
        // not move afterwards (no pushes), so the pointers stay valid while
        // `Ctx` lives.
        let words = (0..=len)
            .map(|i| unsafe { Words::init(base.add(i)) })
            .collect();
        // SAFETY: all `len + 1` slots were initialised just above.
        unsafe { memory.set_len(len + 1) };
        let mut src = Source([0; PAYLOAD]);
        for (i, b) in src.0.iter_mut().enumerate() {
            *b = i as u8;
        }
        Ctx {
            domain,
            cur,
            other,
            _memory: memory,
            words,
            src,
        }
    }

    /// The `rseq` line's slot, then the `fenced` line's (if any), named.
    fn targets(&self) -> impl Iterator<Item = (&'static str, usize)> {
        [("rseq", Some(self.cur)), ("fenced", self.other)]
            .into_iter()
            .filter_map(|(name, slot)| Some((name, slot?)))
    }

    fn slot(&self, i: usize) -> Words {
        self.words[i]
    }

    /// The shared block of the `atomic` lines.
    fn shared(&self) -> Shared<'_> {
        let w = self.words[self.domain.cpus()];
        // SAFETY: the shared block's words, valid while `self` lives, touched
        // only through these atomics.
        unsafe {
            Shared {
                payload: w.payload,
                v: Words::atomic(w.v),
                v2: Words::atomic(w.v2),
                guard: Words::atomic(w.guard),
                head: Words::atomic(w.head),
                base: Words::atomic(w.base),
                counter: Words::atomic(w.counter),
            }
        }
    }

    /// Runs `op` as criterion function `name` of `group`, returning how many
    /// times it ran; checks the path the domain's operations took.
    fn line(
        &self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        mut op: impl FnMut(),
    ) -> u64 {
        let before = self.domain.stats();
        let mut ops = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                ops += iters;
                let start = Instant::now();
                for _ in 0..iters {
                    op();
                }
                start.elapsed()
            })
        });
        let after = self.domain.stats();
        let PathStats {
            retried,
            aborts,
            fenced,
            ..
        } = after;
        let (retried, aborts, fenced) = (
            retried - before.retried,
            aborts - before.aborts,
            fenced - before.fenced,
        );
        if name.starts_with("fenced") {
            assert_eq!(fenced, ops, "{name}: every operation must be fenced");
        } else if name.starts_with("rseq") && (fenced > 0 || retried > 0) {
            eprintln!(
                "{name}: of {ops} operations, {retried} committed after an abort and \
                 {fenced} took the fenced path ({aborts} aborts in all)"
            );
        }
        ops
    }
}

/// Pins the calling thread to the CPU it runs on, and returns that CPU.
fn pin_here() -> usize {
    let cpu = cpulocal::current_cpu();
    // SAFETY: cpu_set_t is plain data (all zeroes is the empty set);
    // sched_setaffinity (pid 0: this thread) reads only the set passed.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(r, 0, "sched_setaffinity to CPU {cpu} failed");
    assert_eq!(cpulocal::current_cpu(), cpu, "still not on CPU {cpu}");
    cpu
}

/// A compare that must succeed in the bench did not.
#[track_caller]
fn ok<E: std::fmt::Debug>(r: Result<impl Sized, E>, what: &str) {
    if let Err(e) = r {
        panic!("{what}: the compare failed ({e:?})");
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700));
    g
}

fn cbne_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "cbne_store");
    for (name, i) in ctx.targets() {
        let w = ctx.slot(i);
        let mut x = Words::read(w.v);
        ctx.line(&mut g, name, || {
            // SAFETY: `w.v` is slot `i`'s word, aligned, written only through
            // the domain.
            let r = unsafe {
                ctx.domain
                    .cbne_store(i, w.v, x, x.wrapping_add(1), Order::Relaxed)
            };
            ok(r, "cbne_store");
            x = x.wrapping_add(1);
        });
    }
    let v = ctx.shared().v;
    let mut x = v.load(Ordering::Relaxed);
    ctx.line(&mut g, "atomic", || {
        let r = v.compare_exchange(x, x.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
        ok(r, "compare_exchange");
        x = x.wrapping_add(1);
    });
    g.finish();
}

fn add_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "add_store");
    for (name, i) in ctx.targets() {
        let w = ctx.slot(i);
        let start = Words::read(w.counter);
        // SAFETY: `w.counter` is slot `i`'s word, aligned, written only
        // through the domain.
        let ops = ctx.line(&mut g, name, || unsafe {
            ctx.domain.add_store(i, w.counter, 1, Order::Relaxed)
        });
        let end = Words::read(w.counter);
        assert_eq!(end.wrapping_sub(start) as u64, ops, "add_store: lost adds");
    }
    let counter = ctx.shared().counter;
    let start = counter.load(Ordering::Relaxed);
    let ops = ctx.line(&mut g, "atomic", || {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let end = counter.load(Ordering::Relaxed);
    assert_eq!(end.wrapping_sub(start) as u64, ops, "fetch_add: lost adds");
    g.finish();
}

fn cbeq_store_add_load_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "cbeq_store_add_load_store");
    for (name, i) in ctx.targets() {
        let w = ctx.slot(i);
        ctx.line(&mut g, name, || {
            // SAFETY: `w.head` is slot `i`'s word; it always holds the address
            // of one of the slot's two ring nodes, whose link word is at
            // offset 0 and lives as long as the slot.
            let popped = unsafe { ctx.domain.cbeq_store_add_load_store(i, w.head, 0, 0) };
            assert!(popped.is_some(), "the ring is never empty");
            black_box(popped);
        });
    }
    let head = ctx.shared().head;
    ctx.line(&mut g, "atomic", || {
        let mut h = head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the head always holds the address of one of the shared
            // block's two ring nodes, a link word touched only atomically.
            let next = unsafe { Words::atomic(h as *const usize) }.load(Ordering::Relaxed);
            match head.compare_exchange_weak(h, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => h = now,
            }
        }
        black_box(h);
    });
    g.finish();
}

fn cbne_store_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "cbne_store_store");
    let lines = ctx
        .targets()
        .map(|(name, i)| (name, i, Order::Relaxed))
        .chain([("rseq_release", ctx.cur, Order::Release)]);
    for (name, i, order) in lines {
        let w = ctx.slot(i);
        let mut x = Words::read(w.v);
        ctx.line(&mut g, name, || {
            // SAFETY: `w.v` and `w.v2` are slot `i`'s words, aligned, written
            // only through the domain.
            let r = unsafe {
                ctx.domain
                    .cbne_store_store(i, w.v, x, w.v2, x, x.wrapping_add(1), order)
            };
            ok(r, "cbne_store_store");
            x = x.wrapping_add(1);
        });
    }
    let shared = ctx.shared();
    let (v, v2) = (shared.v, shared.v2);
    for (name, commit) in [
        ("atomic", Ordering::Relaxed),
        ("atomic_release", Ordering::Release),
    ] {
        let mut x = v.load(Ordering::Relaxed);
        ctx.line(&mut g, name, || {
            v2.store(x, Ordering::Relaxed);
            let r = v.compare_exchange(x, x.wrapping_add(1), commit, Ordering::Relaxed);
            ok(r, "compare_exchange");
            x = x.wrapping_add(1);
        });
    }
    g.finish();
}

fn cbne_memcpy_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "cbne_memcpy_store");
    let src = ctx.src.0.as_ptr();
    for (name, i) in ctx.targets() {
        let w = ctx.slot(i);
        let mut x = Words::read(w.v);
        let ops = ctx.line(&mut g, name, || {
            // SAFETY: `w.v` and the `PAYLOAD` bytes at `w.payload` are slot
            // `i`'s data, written only through the domain; `src` is the
            // bench's own buffer, readable for `PAYLOAD` bytes, and no slot.
            let r = unsafe {
                ctx.domain.cbne_memcpy_store(
                    i,
                    w.v,
                    x,
                    w.payload,
                    src,
                    PAYLOAD,
                    x.wrapping_add(1),
                    Order::Relaxed,
                )
            };
            ok(r, "cbne_memcpy_store");
            x = x.wrapping_add(1);
        });
        // SAFETY: slot `i`'s payload, as in the line; nothing runs now.
        let copied = unsafe { std::slice::from_raw_parts(w.payload, PAYLOAD) };
        // (`--list` and filters skip lines: nothing was copied then.)
        assert!(
            ops == 0 || copied == ctx.src.0,
            "cbne_memcpy_store: payload not copied"
        );
    }
    let shared = ctx.shared();
    let v = shared.v;
    let mut x = v.load(Ordering::Relaxed);
    ctx.line(&mut g, "atomic", || {
        // SAFETY: the shared payload is `PAYLOAD` bytes of the shared block,
        // written only here, by this thread; `src` does not overlap it.
        // `black_box` keeps the copy from being elided as never read.
        unsafe { std::ptr::copy_nonoverlapping(src, black_box(shared.payload), PAYLOAD) };
        let r = v.compare_exchange(x, x.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
        ok(r, "compare_exchange");
        x = x.wrapping_add(1);
    });
    g.finish();
}

fn cbne_load_cbne_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "cbne_load_cbne_store");
    for (name, i) in ctx.targets() {
        let w = ctx.slot(i);
        let mut x = Words::read(w.v);
        ctx.line(&mut g, name, || {
            // SAFETY: `w.v` is slot `i`'s word, written only through the
            // domain; `w.guard` is aligned and readable.
            let r = unsafe {
                ctx.domain.cbne_load_cbne_store(
                    i,
                    w.v,
                    x,
                    w.guard,
                    EXPECT2,
                    x.wrapping_add(1),
                    Order::Relaxed,
                )
            };
            ok(r, "cbne_load_cbne_store");
            x = x.wrapping_add(1);
        });
    }
    let shared = ctx.shared();
    let (v, guard) = (shared.v, shared.guard);
    let mut x = v.load(Ordering::Relaxed);
    ctx.line(&mut g, "atomic", || {
        assert_eq!(guard.load(Ordering::Relaxed), EXPECT2, "second compare");
        let r = v.compare_exchange(x, x.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
        ok(r, "compare_exchange");
        x = x.wrapping_add(1);
    });
    g.finish();
}

fn add_load_add_store(c: &mut Criterion, ctx: &Ctx) {
    let mut g = group(c, "add_load_add_store");
    let offset = std::mem::offset_of!(Slot, counter);
    for (name, i) in ctx.targets() {
        let w = ctx.slot(i);
        let start = Words::read(w.counter);
        // SAFETY: `w.base` holds the address of slot `i`'s block, so base +
        // `offset` is its counter word, aligned, written only through the
        // domain.
        let ops = ctx.line(&mut g, name, || unsafe {
            ctx.domain
                .add_load_add_store(i, w.base, offset, 1, Order::Relaxed)
        });
        let end = Words::read(w.counter);
        assert_eq!(
            end.wrapping_sub(start) as u64,
            ops,
            "add_load_add_store: lost adds"
        );
    }
    let shared = ctx.shared();
    let start = shared.counter.load(Ordering::Relaxed);
    let ops = ctx.line(&mut g, "atomic", || {
        let p = shared.base.load(Ordering::Relaxed) + offset;
        // SAFETY: `base` holds the shared block's address, so `p` is its
        // counter word, touched only atomically.
        unsafe { Words::atomic(p as *const usize) }.fetch_add(1, Ordering::Relaxed);
    });
    let end = shared.counter.load(Ordering::Relaxed);
    assert_eq!(end.wrapping_sub(start) as u64, ops, "fetch_add: lost adds");
    g.finish();
}

fn shapes(c: &mut Criterion) {
    let ctx = Ctx::new();
    cbne_store(c, &ctx);
    add_store(c, &ctx);
    cbeq_store_add_load_store(c, &ctx);
    cbne_store_store(c, &ctx);
    cbne_memcpy_store(c, &ctx);
    cbne_load_cbne_store(c, &ctx);
    add_load_add_store(c, &ctx);
}

/// Criterion's point estimates (ns) for `group/id` from its `estimates.json`:
/// (slope if present else mean, median, standard deviation).
fn estimate(group: &str, id: &str) -> Option<(f64, f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let point = |key: &str| -> Option<f64> {
        let at = text.find(&format!("\"{key}\":{{"))?;
        let rest = &text[at..];
        let pe = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
        let num: String = rest[pe..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            .collect();
        num.parse().ok()
    };
    let central = point("slope").or_else(|| point("mean"))?;
    Some((central, point("median")?, point("std_dev")?))
}

fn criterion_dir() -> std::path::PathBuf {
    if let Ok(d) = std::env::var("CRITERION_HOME") {
        return d.into();
    }
    // Bench binaries run with the package directory as cwd; the target
    // directory is the workspace's.
    std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
        .join("criterion")
}

/// Prints the markdown table: shape | rseq | fenced | atomic | atomic/rseq.
fn summary() {
    let ns = |group: &str, id: &str| estimate(group, id).map(|(v, _, _)| v);
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let row = |label: &str, rseq: Option<f64>, fenced: Option<f64>, atomic: Option<f64>| {
        let ratio = match (atomic, rseq) {
            (Some(a), Some(r)) => format!("{:.2}", a / r),
            _ => "-".into(),
        };
        println!(
            "| {label} | {} | {} | {} | {ratio} |",
            cell(rseq),
            cell(fenced),
            cell(atomic)
        );
    };
    println!("\n== summary: ns/op (criterion slope, or mean where there is none) ==\n");
    println!("| shape | rseq ns | fenced ns | atomic ns | atomic/rseq |");
    println!("|---|---:|---:|---:|---:|");
    for shape in SHAPES {
        row(
            shape,
            ns(shape, "rseq"),
            ns(shape, "fenced"),
            ns(shape, "atomic"),
        );
    }
    row(
        "cbne_store_store (release)",
        ns("cbne_store_store", "rseq_release"),
        None,
        ns("cbne_store_store", "atomic_release"),
    );
    println!("\nfenced lines' spread (ns: slope or mean / median / std dev of sample means):");
    for shape in SHAPES {
        if let Some((c, median, sd)) = estimate(shape, "fenced") {
            println!("  {shape:<26} {c:8.0} / {median:8.0} / {sd:6.0}");
        }
    }
}

criterion_group! {
    name = benches;
    // No HTML plots: criterion is built without its plotting features here.
    config = Criterion::default().without_plots();
    targets = shapes
}

fn main() {
    benches();
    Criterion::default()
        .without_plots()
        .configure_from_args()
        .final_summary();
    // Only after a real run (`cargo bench` passes `--bench`); `cargo test
    // --benches`, `--list` and `--test` measure nothing. A filter that skips
    // groups leaves "-" (or an older run's numbers) in their rows.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") && !has("--profile-time") {
        summary();
    }
}
