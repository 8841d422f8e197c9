//! The ring section of `cpulocal bench`: producer threads log 64-byte events
//! into cpulocal's [`PerCpuRing`] while one consumer thread drains it, against
//! crossbeam's `ArrayQueue<[u8; 64]>` carrying the same events to the same
//! kind of consumer ([`RingPeer`]).
//!
//! One operation is an *event* of 64 bytes, eight `u64`s (a sequence number
//! and the seven after it): on the ring `reserve(64)`, the bytes copied into
//! the reservation, `commit()`; on the queue the same bytes `push`ed. Both are bounded and neither waits when full: the ring runs in
//! [`RingMode::Discard`], which refuses a record that does not fit and counts
//! it lost, and a push that finds the queue full is counted lost the same
//! way (not `force_push`, which would displace a queued event instead). The
//! queue has as many slots as the ring has room for records, on all its
//! CPUs ([`array_queue_slots`]).
//!
//! Every batch of a [`Workload`] starts one consumer thread (pinned or not,
//! see [`Workload::new`]) before the producers and stops it after them, so it
//! drains concurrently for the whole batch: the ring with
//! [`PerCpuRing::consume`], the queue with `pop`. When a poll finds nothing
//! the consumer spins for [`CONSUMER_PAUSE`] before the next: it keeps its
//! CPU (a `yield` would hand a CPU it shares with a producer to that producer
//! for a whole time slice, and the ring, read a sub-buffer at a time, finds
//! nothing more often than the queue) without polling the producers' cache
//! lines back to back. Once the producers are done it drains what is left
//! (the ring after [`PerCpuRing::flush`]); that tail is delivered but not
//! timed.
//!
//! Each batch is checked exactly, whatever the timing: every event attempted
//! is delivered or lost, the consumer got the events stored (count and sum of
//! sequence numbers), every payload is whole, and the ring's own
//! [`lost`](PerCpuRing::lost) count agrees with the producers'. Each batch's
//! [`Outcome`] is kept, so that a fast ring that discards is seen as such.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use cpulocal::{PerCpuRing, RingConfig, RingMode};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::runner::{pin_current_thread, Runner};

/// How long the consumer spins after a poll that found nothing.
pub const CONSUMER_PAUSE: Duration = Duration::from_micros(1);

/// Payload bytes of one event.
pub const PAYLOAD: usize = 64;

/// Bytes one event takes in the ring: its 8-byte header and the payload (a
/// multiple of 8, so no padding; see the record format in `cpulocal::ring`).
pub const RECORD_BYTES: usize = 8 + PAYLOAD;

/// The ring's sub-buffer size: the default, 4 KiB.
pub const SUB_BUFFER_SIZE: usize = RingConfig::DEFAULT_SUB_BUFFER_SIZE;

/// The ring's sub-buffers per CPU: the default, 8.
pub const SUB_BUFFERS: usize = RingConfig::DEFAULT_SUB_BUFFERS;

/// Events one CPU's ring buffer holds: whole records per sub-buffer (a
/// record never straddles two) times the sub-buffers; 448 by default.
pub const RING_RECORDS_PER_CPU: usize = SUB_BUFFER_SIZE / RECORD_BYTES * SUB_BUFFERS;

/// The `ArrayQueue`'s slots: as many events as the ring holds on all its
/// CPUs ([`RING_RECORDS_PER_CPU`] × `cpulocal::possible_cpus()`).
pub fn array_queue_slots() -> usize {
    RING_RECORDS_PER_CPU * cpulocal::possible_cpus()
}

/// One way of carrying events from producers to the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingPeer {
    /// `cpulocal::PerCpuRing` in discard mode, the default sizes (8 × 4 KiB
    /// per CPU): `reserve(64)`, write, `commit()`.
    Ring,
    /// crossbeam's `ArrayQueue<[u8; 64]>` of [`array_queue_slots`] slots:
    /// `push` (a full queue refuses the event: lost).
    ArrayQueue,
}

impl RingPeer {
    /// Both, in report order: the ring first (the reference of the ratio).
    pub const ALL: [RingPeer; 2] = [RingPeer::Ring, RingPeer::ArrayQueue];

    /// A short, stable name (CLI output, JSON).
    pub fn name(self) -> &'static str {
        match self {
            RingPeer::Ring => "cpulocal_ring",
            RingPeer::ArrayQueue => "crossbeam_array_queue",
        }
    }

    /// What it is, for people (tables).
    pub fn label(self) -> &'static str {
        match self {
            RingPeer::Ring => "cpulocal PerCpuRing",
            RingPeer::ArrayQueue => "crossbeam ArrayQueue<[u8; 64]>",
        }
    }

    /// A one-word name for verdicts and row labels.
    pub fn short(self) -> &'static str {
        match self {
            RingPeer::Ring => "ring",
            RingPeer::ArrayQueue => "ArrayQueue",
        }
    }

    /// The events it holds at once: all CPUs' ring buffers, or the queue's
    /// slots.
    pub fn capacity(self) -> usize {
        match self {
            RingPeer::Ring => RING_RECORDS_PER_CPU * cpulocal::possible_cpus(),
            RingPeer::ArrayQueue => array_queue_slots(),
        }
    }
}

/// What one batch did with its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events the producers attempted (threads × events per thread).
    pub attempted: u64,
    /// Events the consumer received.
    pub delivered: u64,
    /// Events refused because the ring buffer or the queue was full.
    pub lost: u64,
}

/// The event with sequence number `seq`: eight native-endian `u64`s, `seq`
/// and the seven after it (so a torn payload shows).
#[inline(always)]
fn payload(seq: u64) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    for (k, word) in p.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&seq.wrapping_add(k as u64).to_ne_bytes());
    }
    p
}

/// The sequence number of a whole event; None for a torn one.
#[inline(always)]
fn sequence(p: &[u8]) -> Option<u64> {
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&p[8 * k..8 * k + 8]);
        u64::from_ne_bytes(w)
    };
    if p.len() != PAYLOAD {
        return None;
    }
    let seq = word(0);
    (1..PAYLOAD / 8)
        .all(|k| word(k) == seq.wrapping_add(k as u64))
        .then_some(seq)
}

/// What one producer did in one batch, tallied in registers.
#[derive(Debug, Clone, Copy, Default)]
struct Produced {
    stored: u64,
    stored_sum: u64,
    lost: u64,
}

/// [`Produced`]'s shared totals for the batch running, added to once per
/// producer.
#[derive(Debug, Default)]
struct Totals([AtomicU64; 3]);

impl Totals {
    fn add(&self, p: &Produced) {
        for (total, part) in self.0.iter().zip([p.stored, p.stored_sum, p.lost]) {
            total.fetch_add(part, Ordering::Relaxed);
        }
    }

    /// The totals, reset to zero for the next batch.
    fn take(&self) -> Produced {
        let [stored, stored_sum, lost] = self.0.each_ref().map(|a| a.swap(0, Ordering::Relaxed));
        Produced {
            stored,
            stored_sum,
            lost,
        }
    }
}

/// What the consumer received in one batch.
#[derive(Debug, Clone, Copy, Default)]
struct Drained {
    count: u64,
    sum: u64,
    torn: u64,
}

impl Drained {
    #[inline(always)]
    fn take(&mut self, p: &[u8]) {
        self.count += 1;
        match sequence(p) {
            Some(seq) => self.sum = self.sum.wrapping_add(seq),
            None => self.torn += 1,
        }
    }
}

/// The ring producer: `events` times `reserve(64)`, write, `commit()`.
#[inline(never)]
fn produce_ring(ring: &PerCpuRing, first: u64, events: u64) -> Produced {
    let mut t = Produced::default();
    for seq in first..first + events {
        match ring.reserve(PAYLOAD) {
            Ok(mut r) => {
                r.copy_from_slice(&payload(seq));
                r.commit();
                t.stored += 1;
                t.stored_sum = t.stored_sum.wrapping_add(seq);
            }
            // Full (counted by the ring); any other refusal is caught by the
            // check against the ring's own count.
            Err(_) => t.lost += 1,
        }
    }
    t
}

/// The queue producer: `events` times `push` of the same 64 bytes.
#[inline(never)]
fn produce_queue(q: &ArrayQueue<[u8; PAYLOAD]>, first: u64, events: u64) -> Produced {
    let mut t = Produced::default();
    for seq in first..first + events {
        match q.push(payload(seq)) {
            Ok(()) => {
                t.stored += 1;
                t.stored_sum = t.stored_sum.wrapping_add(seq);
            }
            Err(_) => t.lost += 1,
        }
    }
    t
}

/// One peer's state (the queue boxed: its cache-padded indices make it
/// several times the ring's handle).
enum State {
    Ring(PerCpuRing),
    ArrayQueue(Box<ArrayQueue<[u8; PAYLOAD]>>),
}

/// A fresh ring or queue, the consumer's placement, and every batch's
/// [`Outcome`].
pub struct Workload {
    peer: RingPeer,
    state: State,
    consumer_cpu: Option<usize>,
    totals: CachePadded<Totals>,
    outcomes: Mutex<Vec<Outcome>>,
    /// The first batch that did not add up, in words.
    broken: Mutex<Option<String>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("peer", &self.peer)
            .field("consumer_cpu", &self.consumer_cpu)
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// An empty ring or queue whose consumer runs pinned to `consumer_cpu`,
    /// or floating when None.
    pub fn new(peer: RingPeer, consumer_cpu: Option<usize>) -> Self {
        let state = match peer {
            RingPeer::Ring => State::Ring(
                PerCpuRing::with_config(
                    RingConfig::new()
                        .sub_buffer_size(SUB_BUFFER_SIZE)
                        .sub_buffers(SUB_BUFFERS)
                        .mode(RingMode::Discard),
                )
                .expect("the default sizes are valid"),
            ),
            RingPeer::ArrayQueue => {
                State::ArrayQueue(Box::new(ArrayQueue::new(array_queue_slots())))
            }
        };
        Workload {
            peer,
            state,
            consumer_cpu,
            totals: Default::default(),
            outcomes: Mutex::new(Vec::new()),
            broken: Mutex::new(None),
        }
    }

    /// The peer this workload runs.
    pub fn peer(&self) -> RingPeer {
        self.peer
    }

    /// One batch: starts the consumer, runs `events` events on every worker
    /// of `runner`, stops the consumer once it has drained everything, checks
    /// the batch and records its [`Outcome`]. Returns the producers' wall
    /// time (the consumer's start and final drain are not in it).
    pub fn batch(self: &Arc<Self>, runner: &Runner, events: u64) -> Duration {
        let lost_before = self.ring_lost();
        let stop = AtomicBool::new(false);
        let ready = AtomicBool::new(false);
        let (wall, drained) = thread::scope(|s| {
            let consumer = s.spawn(|| self.consume(&ready, &stop));
            while !ready.load(Ordering::Acquire) {
                thread::yield_now();
            }
            let w = self.clone();
            let wall = runner.run(move |worker| w.produce(worker, events));
            // After every producer's last event (the runner joined them).
            stop.store(true, Ordering::Release);
            let drained = consumer.join().expect("the consumer panicked");
            (wall, drained)
        });
        let produced = self.totals.take();
        let attempted = events * runner.threads() as u64;
        let outcome = Outcome {
            attempted,
            delivered: drained.count,
            lost: produced.lost,
        };
        let ring_lost = self.ring_lost().map(|l| l - lost_before.unwrap_or(0));
        let broken = if produced.stored + produced.lost != attempted {
            Some(format!(
                "{attempted} events attempted but {} stored and {} lost",
                produced.stored, produced.lost
            ))
        } else if drained.torn > 0 {
            Some(format!(
                "the consumer received {} torn events",
                drained.torn
            ))
        } else if drained.count != produced.stored || drained.sum != produced.stored_sum {
            Some(format!(
                "{} events stored but {} received (events lost or duplicated)",
                produced.stored, drained.count
            ))
        } else if ring_lost.is_some_and(|l| l != produced.lost) {
            Some(format!(
                "the producers lost {} events but the ring counted {}",
                produced.lost,
                ring_lost.unwrap_or(0)
            ))
        } else {
            None
        };
        if let Some(what) = broken {
            self.broken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(what);
        }
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(outcome);
        wall
    }

    /// Every batch's outcome so far, in order (calibration batches first).
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Checks that every batch so far added up.
    ///
    /// # Errors
    ///
    /// The first batch that did not, in words.
    pub fn check(&self) -> Result<(), String> {
        match self
            .broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            Some(what) => Err(what),
            None => Ok(()),
        }
    }

    /// The ring's lost count; None for the queue.
    fn ring_lost(&self) -> Option<u64> {
        match &self.state {
            State::Ring(r) => Some(r.lost()),
            State::ArrayQueue(_) => None,
        }
    }

    /// One producer's share of a batch; `worker`'s sequence numbers are its
    /// own (its index in the top 16 bits).
    fn produce(&self, worker: usize, events: u64) {
        let first = (worker as u64) << 48;
        let t = match &self.state {
            State::Ring(r) => produce_ring(r, first, events),
            State::ArrayQueue(q) => produce_queue(q, first, events),
        };
        self.totals.add(&t);
    }

    /// Takes what is there now; how many events.
    fn drain_once(&self, d: &mut Drained) -> usize {
        match &self.state {
            State::Ring(r) => r.consume(|rec| d.take(rec.payload())).records,
            State::ArrayQueue(q) => {
                let mut n = 0;
                while let Some(p) = q.pop() {
                    d.take(&p);
                    n += 1;
                }
                n
            }
        }
    }

    /// The consumer: drains until `stop` is set and nothing is left, pausing
    /// [`CONSUMER_PAUSE`] after each poll that finds nothing, then flushes
    /// (the ring) and drains the rest.
    fn consume(&self, ready: &AtomicBool, stop: &AtomicBool) -> Drained {
        if let Some(cpu) = self.consumer_cpu {
            if let Err(e) = pin_current_thread(cpu) {
                self.broken
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(format!("cannot pin the consumer to CPU {cpu}: {e}"));
            }
        }
        ready.store(true, Ordering::Release);
        let mut d = Drained::default();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if self.drain_once(&mut d) == 0 {
                if stopping {
                    break;
                }
                let since = Instant::now();
                while since.elapsed() < CONSUMER_PAUSE {
                    std::hint::spin_loop();
                }
            }
        }
        if let State::Ring(r) = &self.state {
            // Close the partly filled sub-buffers, then read them.
            r.flush();
            while self.drain_once(&mut d) > 0 {}
        }
        d
    }
}

/// Delivered and lost events over `outcomes`.
pub fn total(outcomes: &[Outcome]) -> Outcome {
    outcomes.iter().fold(Outcome::default(), |a, o| Outcome {
        attempted: a.attempted + o.attempted,
        delivered: a.delivered + o.delivered,
        lost: a.lost + o.lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_torn_ones_show() {
        let p = payload(41);
        assert_eq!(sequence(&p), Some(41));
        let mut torn = p;
        torn[60] ^= 1;
        assert_eq!(sequence(&torn), None);
        assert_eq!(sequence(&payload(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn the_queue_holds_what_the_ring_does() {
        // 56 records of 72 bytes in a 4 KiB sub-buffer, 8 sub-buffers.
        assert_eq!(RING_RECORDS_PER_CPU, 448);
        assert_eq!(RingPeer::Ring.capacity(), RingPeer::ArrayQueue.capacity());
    }

    #[test]
    fn every_event_is_delivered_or_lost_on_three_threads() {
        let runner = Runner::new(3).unwrap();
        for peer in RingPeer::ALL {
            let w = Arc::new(Workload::new(peer, None));
            for events in [1, 5_000, 20_000] {
                assert!(w.batch(&runner, events) > Duration::ZERO);
            }
            w.check().unwrap_or_else(|e| panic!("{}: {e}", peer.name()));
            let outcomes = w.outcomes();
            assert_eq!(outcomes.len(), 3);
            for (o, events) in outcomes.iter().zip([1, 5_000, 20_000]) {
                assert_eq!(o.attempted, 3 * events, "{}: {o:?}", peer.name());
                assert_eq!(o.delivered + o.lost, o.attempted, "{}: {o:?}", peer.name());
                assert!(o.delivered > 0, "{}: {o:?}", peer.name());
            }
        }
    }

    #[test]
    fn an_event_nobody_produced_is_reported() {
        let runner = Runner::new(1).unwrap();
        let w = Arc::new(Workload::new(RingPeer::ArrayQueue, None));
        if let State::ArrayQueue(q) = &w.state {
            q.push(payload(7)).unwrap();
        }
        w.batch(&runner, 10);
        assert!(w.check().is_err());
    }
}
