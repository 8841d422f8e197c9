//! `PerCpuRing`: typed errors, exact fill and full counts in both modes,
//! padding, dropped and stuck reservations, commit after migration, signal
//! handler nesting; and a stress run per mode (6 × CPUs producers with
//! forced migrations between reserve and commit, signal handlers writing
//! records, a concurrent consumer) checking that every record is delivered
//! exactly once, intact and in per-CPU order, or counted.

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use common::pinned;

use std::collections::HashSet;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::{PerCpuRing, RingConfig, RingError, RingMode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn ring(sub: usize, subs: usize, mode: RingMode) -> PerCpuRing {
    PerCpuRing::with_config(
        RingConfig::new()
            .sub_buffer_size(sub)
            .sub_buffers(subs)
            .mode(mode),
    )
    .unwrap()
}

/// Everything `consume` hands over now: (cpu, offset, payload).
fn take_all(r: &PerCpuRing) -> Vec<(usize, u64, Vec<u8>)> {
    let mut got = Vec::new();
    r.consume(|rec| got.push((rec.cpu(), rec.offset(), rec.payload().to_vec())));
    got
}

fn payloads(got: &[(usize, u64, Vec<u8>)]) -> Vec<Vec<u8>> {
    got.iter().map(|g| g.2.clone()).collect()
}

#[test]
fn zero_length_and_oversized_are_typed_errors() {
    let r = ring(256, 2, RingMode::Discard);
    assert_eq!(r.max_record_len(), 248);
    assert_eq!(r.reserve(0).err(), Some(RingError::Empty));
    assert_eq!(
        r.reserve(249).err(),
        Some(RingError::TooLarge { len: 249, max: 248 })
    );
    assert_eq!(r.write(&[]), Err(RingError::Empty));
    assert_eq!(r.lost(), 0, "refused arguments are not records");
    let mut big = r.reserve(248).unwrap();
    assert_eq!(big.len(), 248);
    big.fill(7);
    big.commit();
    r.flush();
    assert_eq!(payloads(&take_all(&r)), [vec![7u8; 248]]);
    for bad in [
        RingConfig::new().sub_buffer_size(8),
        RingConfig::new().sub_buffer_size(3000),
        RingConfig::new().sub_buffer_size(RingConfig::MAX_SUB_BUFFER_SIZE * 2),
        RingConfig::new().sub_buffers(1),
        RingConfig::new().sub_buffers(3),
    ] {
        assert!(
            matches!(
                PerCpuRing::with_config(bad),
                Err(cpulocal::Error::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
    }
}

/// 2 sub-buffers of 64 bytes; 8-byte payloads take 16 bytes: 8 records fill
/// the CPU's buffer exactly.
#[test]
fn discard_fills_exactly_then_counts_lost() {
    pinned(|cpu| {
        let r = ring(64, 2, RingMode::Discard);
        for i in 0..8u64 {
            r.write(&i.to_le_bytes()).unwrap();
        }
        for k in 1..=3 {
            assert_eq!(r.write(&[9; 8]), Err(RingError::Full { cpu }));
            assert_eq!(r.counts_on(cpu).unwrap(), (k, 0));
        }
        let got = take_all(&r);
        let want: Vec<Vec<u8>> = (0..8u64).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(payloads(&got), want, "the first 8, in order");
        assert!(got.iter().all(|g| g.0 == cpu));
        let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(offsets, (0..8).map(|i| i * 16).collect::<Vec<_>>());
        // Room again.
        r.write(b"after").unwrap();
        assert_eq!((r.lost(), r.overwritten()), (3, 0));
        assert!(take_all(&r).is_empty(), "nothing twice, partial not read");
        r.flush();
        assert_eq!(payloads(&take_all(&r)), [b"after".to_vec()]);
    });
}

/// 4 sub-buffers of 64 bytes (4 records each): 24 records overwrite the
/// oldest two sub-buffers, 8 records, counted exactly.
#[test]
fn overwrite_counts_exactly_and_keeps_the_newest() {
    pinned(|cpu| {
        let r = ring(64, 4, RingMode::Overwrite);
        for i in 0..24u64 {
            r.write(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(r.counts_on(cpu).unwrap(), (0, 8));
        assert_eq!((r.lost(), r.overwritten()), (0, 8));
        let want: Vec<Vec<u8>> = (8..24u64).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(payloads(&take_all(&r)), want);
        // Read some, then overwrite again: only unread records count.
        for i in 24..30u64 {
            r.write(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(r.overwritten(), 8);
        let want: Vec<Vec<u8>> = (24..28u64).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(payloads(&take_all(&r)), want);
        r.flush();
        let want: Vec<Vec<u8>> = (28..30u64).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(payloads(&take_all(&r)), want);
    });
}

/// In overwrite mode a sub-buffer with an uncommitted record is never
/// overwritten: the new record is counted lost instead.
#[test]
fn overwrite_never_overwrites_an_uncommitted_record() {
    pinned(|cpu| {
        let r = ring(64, 2, RingMode::Overwrite);
        let mut held = r.reserve(8).unwrap();
        held.copy_from_slice(b"held!!!!");
        for i in 0..7u64 {
            r.write(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(r.write(b"newer"), Err(RingError::OldestBusy { cpu }));
        assert_eq!(r.counts_on(cpu).unwrap(), (1, 0));
        held.commit();
        r.write(b"newest").unwrap(); // now the oldest goes
        assert_eq!(r.counts_on(cpu).unwrap(), (1, 4));
        r.flush();
        let got = payloads(&take_all(&r));
        let mut want: Vec<Vec<u8>> = (3..7u64).map(|i| i.to_le_bytes().to_vec()).collect();
        want.push(b"newest".to_vec());
        assert_eq!(got, want);
    });
}

#[test]
fn records_never_straddle_sub_buffers() {
    pinned(|cpu| {
        let r = ring(64, 4, RingMode::Discard);
        r.write(&[1; 40]).unwrap(); // 48 bytes at 0
        r.write(&[2; 24]).unwrap(); // 32 bytes: 16 left, padded; at 64
        r.write(&[3; 48]).unwrap(); // 56 bytes: 32 left, padded; at 128
        r.write(&[4; 1]).unwrap(); // 16 bytes: 8 left (a bare header); at 192
                                   // Exactly one sub-buffer: pads the fourth (48 bytes left), which
                                   // completes it, then finds the buffer full: lost.
        assert_eq!(r.write(&[5; 56]), Err(RingError::Full { cpu }));
        let got = take_all(&r);
        let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(offsets, [0, 64, 128, 192]);
        let sizes: Vec<usize> = got.iter().map(|g| g.2.len()).collect();
        assert_eq!(sizes, [40, 24, 48, 1]);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, g)| g.2.iter().all(|&b| b == i as u8 + 1)));
        // Room again: the full-sized record fills the fifth sub-buffer.
        r.write(&[5; 56]).unwrap();
        let got = take_all(&r);
        assert_eq!(
            (got[0].1, got[0].2.clone(), got.len()),
            (256, vec![5u8; 56], 1)
        );
        assert_eq!(r.lost(), 1);
    });
}

#[test]
fn dropped_reservation_becomes_padding_counted_lost() {
    pinned(|cpu| {
        let r = ring(64, 2, RingMode::Discard);
        let mut gone = r.reserve(8).unwrap();
        gone.copy_from_slice(b"gone....");
        r.write(b"kept").unwrap();
        drop(gone);
        assert_eq!(r.counts_on(cpu).unwrap(), (1, 0));
        r.flush();
        assert_eq!(payloads(&take_all(&r)), [b"kept".to_vec()]);
        // The consumer moved on: later records come through.
        for _ in 0..10 {
            r.write(b"more").unwrap();
            r.flush();
            assert_eq!(payloads(&take_all(&r)), [b"more".to_vec()]);
        }
        assert_eq!(r.lost(), 1);
    });
}

#[test]
fn stuck_reservation_is_reported_and_blocks_only_until_committed() {
    pinned(|cpu| {
        let r = PerCpuRing::with_config(
            RingConfig::new()
                .sub_buffer_size(64)
                .sub_buffers(4)
                .stuck_after(Duration::from_millis(50)),
        )
        .unwrap();
        r.write(b"before").unwrap(); // its own, complete sub-buffer after flush
        r.flush();
        let mut held = r.reserve(4).unwrap();
        held.copy_from_slice(b"held");
        let offset = held.offset();
        r.write(b"after1").unwrap(); // same sub-buffer, committed
        r.write(b"after2").unwrap();
        r.flush();
        let first = Instant::now();
        let mut got = Vec::new();
        let s = r.consume(|rec| got.push(rec.payload().to_vec()));
        assert_eq!(got, [b"before".to_vec()], "nothing after the held record");
        assert!(s.stuck.is_empty(), "not stuck yet");
        thread::sleep(Duration::from_millis(80));
        got.clear();
        let s = r.consume(|rec| got.push(rec.payload().to_vec()));
        assert!(got.is_empty(), "later records wait for the commit");
        assert_eq!(s.records, 0);
        assert_eq!(s.stuck.len(), 1, "{s:?}");
        let st = s.stuck[0];
        assert_eq!((st.cpu, st.offset, st.len), (cpu, offset, 4));
        assert!(st.waiting >= Duration::from_millis(50) && st.waiting <= first.elapsed());
        // Still reported while it stays stuck.
        assert_eq!(r.consume(|_| panic!("nothing yet")).stuck.len(), 1);
        held.commit();
        let got = payloads(&take_all(&r));
        assert_eq!(
            got,
            [b"held".to_vec(), b"after1".to_vec(), b"after2".to_vec()]
        );
        assert!(r.consume(|_| panic!("never twice")).stuck.is_empty());
        assert_eq!(r.lost(), 0);
    });
}

#[test]
fn never_before_commit_never_twice() {
    pinned(|_| {
        let r = ring(128, 4, RingMode::Discard);
        let mut seen = HashSet::new();
        let mut next = 0u32;
        let mut delivered = 0u32;
        for round in 0..200u32 {
            // A few committed, one held open across a consume.
            for _ in 0..round % 5 {
                r.write(&next.to_le_bytes())
                    .unwrap_or_else(|e| panic!("{e}"));
                next += 1;
            }
            let mut open = r.reserve(4).unwrap();
            open.copy_from_slice(&next.to_le_bytes());
            let open_offset = open.offset();
            r.flush();
            r.consume(|rec| {
                assert_ne!(rec.offset(), open_offset, "returned before its commit");
                assert!(seen.insert(rec.offset()), "returned twice");
                delivered += 1;
            });
            open.commit();
            next += 1;
            r.flush();
            r.consume(|rec| {
                assert!(seen.insert(rec.offset()), "returned twice");
                delivered += 1;
            });
        }
        assert_eq!(delivered, next);
        assert_eq!(r.lost(), 0);
    });
}

/// The commit lands on the reserving CPU's buffer after a migration, and
/// from another thread.
#[test]
fn commit_after_migration_lands_on_the_reserving_cpu() {
    let cpus = common::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("one CPU allowed: the migration part is skipped");
    }
    let r = ring(256, 2, RingMode::Discard);
    let (a, b) = (cpus[0], *cpus.last().unwrap());
    let reserved = thread::scope(|s| {
        s.spawn(|| {
            common::pin_current(a);
            let mut x = r.reserve(6).unwrap();
            assert_eq!(x.cpu(), a);
            x.copy_from_slice(b"moving");
            common::pin_current(b);
            assert_eq!(cpulocal::current_cpu(), b);
            x.commit();
            let mut y = r.reserve(5).unwrap();
            y.copy_from_slice(b"other");
            let y_cpu = y.cpu();
            // Committed by another thread.
            s.spawn(move || y.commit()).join().unwrap();
            y_cpu
        })
        .join()
        .unwrap()
    });
    assert_eq!(reserved, b);
    r.flush();
    let got = take_all(&r);
    assert!(got.contains(&(a, 0, b"moving".to_vec())), "{got:?}");
    assert!(got.iter().any(|g| g.0 == b && g.2 == b"other"), "{got:?}");
    assert_eq!(got.len(), 2);
}

// ---------------------------------------------------------------------------
// Signal handler nesting.

static NESTED_RING: AtomicPtr<PerCpuRing> = AtomicPtr::new(ptr::null_mut());
static NESTED_RESULT: AtomicU64 = AtomicU64::new(u64::MAX);

extern "C" fn on_sigusr2(_sig: libc::c_int) {
    let ring = NESTED_RING.load(Acquire);
    if ring.is_null() {
        return;
    }
    // SAFETY: the test publishes the pointer while the ring lives and clears
    // it before dropping it; the signal is raised by the test thread itself.
    let ring = unsafe { &*ring };
    let r = match ring.reserve(7) {
        Ok(mut r) => {
            r.copy_from_slice(b"handler");
            let offset = r.offset();
            r.commit();
            offset
        }
        Err(_) => u64::MAX - 1,
    };
    NESTED_RESULT.store(r, Release);
}

#[test]
fn signal_handler_writes_between_reserve_and_commit() {
    // SAFETY: a zeroed sigaction is valid to fill in; the handler has the
    // `extern "C" fn(c_int)` type sigaction expects without SA_SIGINFO.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr2 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, ptr::null_mut()), 0);
    }
    pinned(|cpu| {
        let r = ring(256, 2, RingMode::Discard);
        NESTED_RING.store(ptr::from_ref(&r).cast_mut(), Release);
        let mut outer = r.reserve(5).unwrap();
        outer.copy_from_slice(b"outer");
        // SAFETY: raise has no preconditions; the handler runs before it
        // returns (a signal sent to the calling thread, not blocked).
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let inner = NESTED_RESULT.load(Acquire);
        assert!(inner > outer.offset() && inner < u64::MAX - 1, "{inner}");
        // Committed inside, but not delivered before the outer commit.
        r.flush();
        assert!(take_all(&r).is_empty());
        outer.commit();
        let got = take_all(&r);
        NESTED_RING.store(ptr::null_mut(), Release);
        assert_eq!(
            got,
            [
                (cpu, 0, b"outer".to_vec()),
                (cpu, inner, b"handler".to_vec())
            ]
        );
    });
}

// ---------------------------------------------------------------------------
// Stress.

/// Producer id of records written by signal handlers.
const HANDLER_ID: u32 = u32::MAX;
/// Handler records tracked (more are not written).
const HANDLER_MAX: usize = 1 << 16;
/// Handler record states: 0 not written, 1 committed, 2 refused.
static HANDLER_STATE: [AtomicU8; HANDLER_MAX] = [const { AtomicU8::new(0) }; HANDLER_MAX];
static HANDLER_SEQ: AtomicUsize = AtomicUsize::new(0);
static STRESS_RING: AtomicPtr<PerCpuRing> = AtomicPtr::new(ptr::null_mut());
/// Upper bound of the random spin between a producer's records.
const SPIN: u32 = 1000;
/// One stress run at a time: the handler state is process-wide.
static STRESS_LOCK: Mutex<()> = Mutex::new(());

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills `buf` (at least 20 bytes) with a record of producer `id`, number
/// `seq`: id, seq, filler, checksum of the rest.
fn fill(buf: &mut [u8], id: u32, seq: u64) {
    let n = buf.len();
    buf[..4].copy_from_slice(&id.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    for (j, b) in buf[12..n - 8].iter_mut().enumerate() {
        *b = (seq as usize ^ id as usize)
            .wrapping_mul(31)
            .wrapping_add(j * 7) as u8;
    }
    let sum = fnv(&buf[..n - 8]);
    buf[n - 8..].copy_from_slice(&sum.to_le_bytes());
}

/// (id, seq) of an intact record; panics on a bad checksum.
fn parse(p: &[u8]) -> (u32, u64) {
    assert!(p.len() >= 20, "record too short: {}", p.len());
    let n = p.len();
    let sum = u64::from_le_bytes(p[n - 8..].try_into().unwrap());
    assert_eq!(sum, fnv(&p[..n - 8]), "torn or corrupted record");
    let id = u32::from_le_bytes(p[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(p[4..12].try_into().unwrap());
    (id, seq)
}

extern "C" fn on_sigusr1(_sig: libc::c_int) {
    // SAFETY: this thread's errno slot, always valid.
    let saved = unsafe { *libc::__errno_location() };
    let ring = STRESS_RING.load(Acquire);
    if !ring.is_null() {
        // SAFETY: published while the ring lives, cleared after every
        // producer (the only signal targets) was joined.
        let ring = unsafe { &*ring };
        let seq = HANDLER_SEQ.fetch_add(1, Relaxed);
        if seq < HANDLER_MAX {
            let len = 20 + seq % 61;
            let state = match ring.reserve(len) {
                Ok(mut r) => {
                    fill(&mut r, HANDLER_ID, seq as u64);
                    r.commit();
                    1
                }
                Err(_) => 2,
            };
            HANDLER_STATE[seq].store(state, Release);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// What the consumer saw.
struct Seen {
    /// Per producer, per sequence number: times delivered.
    delivered: Vec<Vec<u8>>,
    handler: Vec<u8>,
    /// Last sequence number per (cpu, producer).
    last: Vec<Vec<Option<u64>>>,
    records: u64,
}

impl Seen {
    fn record(&mut self, cpu: usize, payload: &[u8]) {
        let (id, seq) = parse(payload);
        self.records += 1;
        if id == HANDLER_ID {
            self.handler[seq as usize] += 1;
            return;
        }
        let id = id as usize;
        self.delivered[id][seq as usize] += 1;
        let last = &mut self.last[cpu][id];
        assert!(
            last.is_none_or(|l| l < seq),
            "producer {id}'s records out of order on CPU {cpu}: {seq} after {last:?}"
        );
        *last = Some(seq);
    }
}

fn stress(mode: RingMode, by: cpulocal::Index) {
    let _one = STRESS_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: as in `signal_handler_writes_between_reserve_and_commit`.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, ptr::null_mut()), 0);
    }
    for s in &HANDLER_STATE {
        s.store(0, Relaxed);
    }
    HANDLER_SEQ.store(0, SeqCst);

    let seed = common::seed();
    let per = ((20_000.0 * common::scale()) as u64).max(1);
    let producers = 6 * cpulocal::possible_cpus();
    let allowed = common::allowed_cpus();
    let ring = PerCpuRing::with_config(
        RingConfig::new()
            .sub_buffer_size(4096)
            .sub_buffers(8)
            .mode(mode)
            .index(by),
    )
    .unwrap();
    let cpus = ring.cpus();
    STRESS_RING.store(ptr::from_ref(&ring).cast_mut(), Release);
    let started = Instant::now();

    let pthreads: Vec<AtomicU64> = (0..producers).map(|_| AtomicU64::new(0)).collect();
    let done = AtomicUsize::new(0);
    let (stop_signals, release, stop_consumer) = (
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    let (migrations, signals) = (AtomicU64::new(0), AtomicU64::new(0));

    let (failed, mut seen) = thread::scope(|s| {
        let producer_handles: Vec<_> = (0..producers)
            .map(|id| {
                let (ring, allowed, pthreads, done, release, migrations) =
                    (&ring, &allowed, &pthreads, &done, &release, &migrations);
                s.spawn(move || {
                    let _ = cpulocal::current_cpu(); // set up before any signal
                                                     // SAFETY: no preconditions.
                    pthreads[id].store(unsafe { libc::pthread_self() } as u64, SeqCst);
                    let mut rng = SmallRng::seed_from_u64(seed ^ ((id as u64) << 20));
                    let mut failed = vec![false; per as usize];
                    for seq in 0..per {
                        let len = 20 + rng.random_range(0..200usize);
                        match ring.reserve(len) {
                            Ok(mut r) => {
                                fill(&mut r, id as u32, seq);
                                // The checksum is only made right just before
                                // the commit: a record delivered earlier
                                // fails `parse`.
                                let n = r.len();
                                r[n - 8..].fill(0);
                                if seq % 53 == 0 && allowed.len() > 1 {
                                    // Forced migration between reserve and commit.
                                    let to = allowed[rng.random_range(0..allowed.len())];
                                    common::pin_current(to);
                                    migrations.fetch_add(1, Relaxed);
                                }
                                if seq % 499 == 7 {
                                    drop(r);
                                    failed[seq as usize] = true;
                                } else {
                                    let sum = fnv(&r[..n - 8]);
                                    r[n - 8..].copy_from_slice(&sum.to_le_bytes());
                                    r.commit();
                                }
                            }
                            Err(RingError::Full { .. } | RingError::OldestBusy { .. }) => {
                                failed[seq as usize] = true;
                            }
                            Err(e) => panic!("unexpected {e}"),
                        }
                        // Work between events, so that the consumer keeps up
                        // most of the time and the buffers fill now and then.
                        for _ in 0..rng.random_range(0..SPIN) {
                            std::hint::spin_loop();
                        }
                        if rng.random_ratio(1, 2000) {
                            thread::yield_now();
                        }
                        if rng.random_ratio(1, 500) {
                            // Padding on every CPU, the remote ones fenced,
                            // racing the other producers' reservations.
                            ring.flush();
                        }
                    }
                    done.fetch_add(1, SeqCst);
                    // Stay a valid pthread_kill target until signals stop.
                    while !release.load(SeqCst) {
                        thread::sleep(Duration::from_micros(200));
                    }
                    pthreads[id].store(0, SeqCst);
                    failed
                })
            })
            .collect();
        let signaller = s.spawn(|| {
            let mut rng = SmallRng::seed_from_u64(seed ^ 0x5151);
            while !stop_signals.load(SeqCst) {
                let t = pthreads[rng.random_range(0..producers)].load(SeqCst);
                // SAFETY: a producer that stored its pthread_t stays alive
                // (not joined) until this thread is joined.
                if t != 0 && unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGUSR1) } == 0
                {
                    signals.fetch_add(1, Relaxed);
                }
                thread::sleep(Duration::from_micros(rng.random_range(10..100)));
            }
        });
        let consumer = s.spawn(|| {
            let mut seen = Seen {
                delivered: vec![vec![0; per as usize]; producers],
                handler: vec![0; HANDLER_MAX],
                last: vec![vec![None; producers]; cpus],
                records: 0,
            };
            // Not before one producer is done: by then more than the ring
            // holds has been written (at any CPULOCAL_STRESS_SCALE above
            // 0.02), so the full (discard) and overwrite paths run however
            // fast the consumer is (in an emulated guest it kept up, and the
            // overwrite path never ran).
            while done.load(SeqCst) == 0 {
                thread::sleep(Duration::from_micros(200));
            }
            while !stop_consumer.load(SeqCst) {
                if ring
                    .consume(|rec| seen.record(rec.cpu(), rec.payload()))
                    .records
                    == 0
                {
                    thread::sleep(Duration::from_micros(50));
                }
            }
            seen
        });
        while done.load(SeqCst) < producers {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "stress timed out"
            );
            thread::sleep(Duration::from_millis(1));
        }
        stop_signals.store(true, SeqCst);
        signaller.join().unwrap();
        release.store(true, SeqCst);
        let failed: Vec<Vec<bool>> = producer_handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        stop_consumer.store(true, SeqCst);
        (failed, consumer.join().unwrap())
    });
    STRESS_RING.store(ptr::null_mut(), Release);

    // Everything committed: close the partial sub-buffers and read the rest.
    ring.flush();
    let last = ring.consume(|rec| seen.record(rec.cpu(), rec.payload()));
    assert!(last.stuck.is_empty(), "{last:?}");
    assert_eq!(ring.consume(|_| panic!("all read")).records, 0);

    let (mut written, mut refused, mut missing) = (0u64, 0u64, 0u64);
    for (id, f) in failed.iter().enumerate() {
        for (seq, &fail) in f.iter().enumerate() {
            written += 1;
            let d = seen.delivered[id][seq];
            assert!(d <= 1, "producer {id} record {seq} delivered {d} times");
            if fail {
                refused += 1;
                assert_eq!(d, 0, "producer {id} record {seq} refused yet delivered");
            } else if d == 0 {
                missing += 1;
            }
        }
    }
    let handler_written = HANDLER_SEQ.load(SeqCst).min(HANDLER_MAX);
    for (seq, state) in HANDLER_STATE[..handler_written].iter().enumerate() {
        written += 1;
        let d = seen.handler[seq];
        assert!(d <= 1, "handler record {seq} delivered {d} times");
        match state.load(Acquire) {
            2 => {
                refused += 1;
                assert_eq!(d, 0, "handler record {seq} refused yet delivered");
            }
            1 => missing += u64::from(d == 0),
            s => panic!("handler record {seq} in state {s}"),
        }
    }
    let (lost, overwritten) = (ring.lost(), ring.overwritten());
    eprintln!(
        "{mode:?}: {:.2?}, {written} written ({handler_written} by handlers, {} signals), \
         {} delivered, {lost} lost, {overwritten} overwritten, {} migrations, stats {:?}, seed {seed}",
        started.elapsed(),
        signals.load(Relaxed),
        seen.records,
        migrations.load(Relaxed),
        ring.stats()
    );
    assert_eq!(lost, refused, "lost counts exactly the refused and dropped");
    match mode {
        RingMode::Discard => {
            assert_eq!(missing, 0, "committed but never delivered");
            assert_eq!(overwritten, 0);
        }
        _ => {
            assert_eq!(missing, overwritten, "undelivered = overwritten");
            assert!(overwritten > 0, "the overwrite path never ran");
        }
    }
    assert!(lost > 0, "the full path never ran");
    assert_eq!(seen.records + lost + overwritten, written);
    assert!(seen.records > 0 && handler_written > 0);
    if allowed.len() > 1 {
        assert!(migrations.load(Relaxed) > 0);
    }
}

#[test]
fn stress_discard() {
    stress(RingMode::Discard, cpulocal::Index::Cpu);
}

#[test]
fn stress_overwrite() {
    stress(RingMode::Overwrite, cpulocal::Index::Cpu);
}

#[test]
fn stress_discard_mm_cid() {
    stress(RingMode::Discard, cpulocal::Index::MmCid);
}

/// A consumer callback that panics: the records it did not get are counted
/// as lost, so delivered + lost still equals written.
#[test]
fn a_panicking_consumer_loses_records_counted() {
    let r = ring(256, 2, RingMode::Discard);
    pinned(|_| {
        for i in 0..3u8 {
            r.write(&[i; 8]).unwrap();
        }
    });
    r.flush();
    let mut got = Vec::new();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.consume(|rec| {
            if rec.payload()[0] == 1 {
                panic!("the consumer fails on record 1");
            }
            got.push(rec.payload()[0]);
        })
    }));
    assert!(unwound.is_err());
    assert_eq!(got, [0]);
    assert_eq!(
        r.lost(),
        2,
        "record 1 (handed over) and record 2 (not reached)"
    );
    assert_eq!(r.consume(|_| panic!("nothing left")).records, 0);
}
