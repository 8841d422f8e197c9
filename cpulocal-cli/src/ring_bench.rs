//! The ring section of `cpulocal bench`: producer threads log 64-byte events
//! into cpulocal's [`PerCpuRing`], against crossbeam's `ArrayQueue<[u8; 64]>`
//! carrying the same events ([`RingPeer`]), in two [`Scenario`]s.
//!
//! One operation is an *event* of 64 bytes, eight `u64`s (a sequence number
//! and the seven after it): on the ring `reserve(64)`, the bytes copied into
//! the reservation, `commit()`; on the queue the same bytes pushed. Both are
//! bounded and neither waits when full. The queue has as many slots as the
//! ring has room for records, on all its CPUs ([`array_queue_slots`]).
//!
//! - [`Scenario::Recorder`], a flight recorder: the producers alone, no
//!   consumer while they run. The ring in [`RingMode::Overwrite`], the
//!   queue with `force_push`, both keeping the newest events by displacing
//!   the oldest. After each batch, untimed, what is left is read (the ring
//!   after [`PerCpuRing::flush`]). This is the cost of the operation itself.
//! - [`Scenario::Streaming`]: one consumer thread drains while the producers
//!   run. The ring in [`RingMode::Discard`], which refuses a record that does
//!   not fit and counts it lost; a `push` that finds the queue full is
//!   counted lost the same way. Every batch starts the consumer (pinned or
//!   not, see [`Workload::new`]) before the producers and stops it after
//!   them: the ring with [`PerCpuRing::consume`], the queue with `pop`. When a
//!   poll finds nothing the consumer spins for [`CONSUMER_PAUSE`] before the
//!   next: it keeps its CPU (a `yield` would hand a CPU it shares with a
//!   producer to that producer for a whole time slice) without polling the
//!   producers' cache lines back to back. Once the producers are done it
//!   drains what is left (the ring after a flush); that tail is delivered
//!   but not timed.
//!
//! Each batch is checked exactly, whatever the timing. Every event attempted
//! is *kept* (delivered, or in the recorder overwritten by a newer one) or
//! lost (refused); the events read are whole and are, by count and sum of
//! sequence numbers, the events stored less those overwritten (the queue
//! hands its displaced events back, so there the sums are checked too); the
//! ring's own [`lost`](PerCpuRing::lost) and
//! [`overwritten`](PerCpuRing::overwritten) counts agree. Each batch's
//! [`Outcome`] is kept, so that a fast ring that refuses events is seen as
//! such.

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

/// How the events are used: kept as a flight recorder, or streamed to a
/// consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// The producers alone; overwrite the oldest events when full; read
    /// after each batch, untimed.
    Recorder,
    /// One consumer thread draining while the producers run; refuse events
    /// when full.
    Streaming,
}

impl Scenario {
    /// Both, in report order: the recorder (where the goals are judged)
    /// first.
    pub const ALL: [Scenario; 2] = [Scenario::Recorder, Scenario::Streaming];

    /// A short, stable name (JSON).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Recorder => "recorder",
            Scenario::Streaming => "streaming",
        }
    }

    /// The ring of this scenario: the reference of its ratios.
    pub fn ring(self) -> RingPeer {
        match self {
            Scenario::Recorder => RingPeer::RecorderRing,
            Scenario::Streaming => RingPeer::Ring,
        }
    }
}

/// One way of carrying events, in one [`Scenario`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingPeer {
    /// Recorder: `cpulocal::PerCpuRing` in overwrite mode, the default sizes
    /// (8 × 4 KiB per CPU): `reserve(64)`, write, `commit()`.
    RecorderRing,
    /// Recorder: crossbeam's `ArrayQueue<[u8; 64]>` of
    /// [`array_queue_slots`] slots: `force_push` (a full queue displaces its
    /// oldest event).
    RecorderArrayQueue,
    /// Streaming: `cpulocal::PerCpuRing` in discard mode, the default sizes:
    /// `reserve(64)`, write, `commit()`.
    Ring,
    /// Streaming: the same `ArrayQueue`: `push` (a full queue refuses the
    /// event: lost).
    ArrayQueue,
}

impl RingPeer {
    /// All, in report order: each scenario's ring first (the reference of
    /// its ratios), the recorder's pair first.
    pub const ALL: [RingPeer; 4] = [
        RingPeer::RecorderRing,
        RingPeer::RecorderArrayQueue,
        RingPeer::Ring,
        RingPeer::ArrayQueue,
    ];

    /// The scenario it runs in.
    pub fn scenario(self) -> Scenario {
        match self {
            RingPeer::RecorderRing | RingPeer::RecorderArrayQueue => Scenario::Recorder,
            RingPeer::Ring | RingPeer::ArrayQueue => Scenario::Streaming,
        }
    }

    /// Whether it is cpulocal's ring (else the queue).
    pub fn is_ring(self) -> bool {
        matches!(self, RingPeer::RecorderRing | RingPeer::Ring)
    }

    /// A short, stable name (CLI output, JSON).
    pub fn name(self) -> &'static str {
        match self {
            RingPeer::RecorderRing => "cpulocal_ring_overwrite",
            RingPeer::RecorderArrayQueue => "crossbeam_array_queue_force_push",
            RingPeer::Ring => "cpulocal_ring",
            RingPeer::ArrayQueue => "crossbeam_array_queue",
        }
    }

    /// What it is, for people (tables).
    pub fn label(self) -> &'static str {
        match self {
            RingPeer::RecorderRing => "cpulocal PerCpuRing, overwrite",
            RingPeer::RecorderArrayQueue => "crossbeam ArrayQueue, force_push",
            RingPeer::Ring => "cpulocal PerCpuRing, discard",
            RingPeer::ArrayQueue => "crossbeam ArrayQueue, push",
        }
    }

    /// A one-word name for verdicts and row labels.
    pub fn short(self) -> &'static str {
        if self.is_ring() {
            "ring"
        } else {
            "ArrayQueue"
        }
    }

    /// What one event is, in words (JSON).
    pub fn operation(self) -> &'static str {
        match self {
            RingPeer::RecorderRing => "reserve(64), write, commit(); overwrite mode",
            RingPeer::RecorderArrayQueue => "force_push([u8; 64]); displaces the oldest when full",
            RingPeer::Ring => "reserve(64), write, commit(); discard mode",
            RingPeer::ArrayQueue => "push([u8; 64]); refused when full",
        }
    }

    /// The events it holds at once: all CPUs' ring buffers, or the queue's
    /// slots.
    pub fn capacity(self) -> usize {
        if self.is_ring() {
            RING_RECORDS_PER_CPU * cpulocal::possible_cpus()
        } else {
            array_queue_slots()
        }
    }
}

/// What one batch did with its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events the producers attempted (threads × events per thread).
    pub attempted: u64,
    /// Events read: by the consumer (streaming), or after the batch
    /// (recorder).
    pub delivered: u64,
    /// Recorder: events displaced by newer ones before they were read.
    pub overwritten: u64,
    /// Events refused: the buffer or the queue full (streaming), or the
    /// ring's oldest sub-buffer held by a writer (recorder).
    pub lost: u64,
}

impl Outcome {
    /// Events kept: delivered or overwritten (everything not refused).
    pub fn kept(&self) -> u64 {
        self.delivered + self.overwritten
    }
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
    /// The queue's `force_push`: events it displaced and handed back.
    displaced: u64,
    displaced_sum: u64,
}

/// [`Produced`]'s shared totals for the batch running, added to once per
/// producer.
#[derive(Debug, Default)]
struct Totals([AtomicU64; 5]);

impl Totals {
    fn add(&self, p: &Produced) {
        let parts = [p.stored, p.stored_sum, p.lost, p.displaced, p.displaced_sum];
        for (total, part) in self.0.iter().zip(parts) {
            total.fetch_add(part, Ordering::Relaxed);
        }
    }

    /// The totals, reset to zero for the next batch.
    fn take(&self) -> Produced {
        let [stored, stored_sum, lost, displaced, displaced_sum] =
            self.0.each_ref().map(|a| a.swap(0, Ordering::Relaxed));
        Produced {
            stored,
            stored_sum,
            lost,
            displaced,
            displaced_sum,
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
            // Full or oldest busy (counted by the ring); any other refusal
            // is caught by the check against the ring's own count.
            Err(_) => t.lost += 1,
        }
    }
    t
}

/// The recorder's queue producer: `events` times `force_push`, keeping
/// count of the events it displaced.
#[inline(never)]
fn force_push_queue(q: &ArrayQueue<[u8; PAYLOAD]>, first: u64, events: u64) -> Produced {
    let mut t = Produced::default();
    for seq in first..first + events {
        if let Some(old) = q.force_push(payload(seq)) {
            t.displaced += 1;
            // A torn displaced event shows as a sum that does not add up.
            t.displaced_sum = t.displaced_sum.wrapping_add(sequence(&old).unwrap_or(0));
        }
        t.stored += 1;
        t.stored_sum = t.stored_sum.wrapping_add(seq);
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
    /// An empty ring or queue; in the streaming scenario its consumer runs
    /// pinned to `consumer_cpu`, or floating when None (the recorder has no
    /// consumer while the producers run).
    pub fn new(peer: RingPeer, consumer_cpu: Option<usize>) -> Self {
        let mode = match peer.scenario() {
            Scenario::Recorder => RingMode::Overwrite,
            Scenario::Streaming => RingMode::Discard,
        };
        let state = if peer.is_ring() {
            State::Ring(
                PerCpuRing::with_config(
                    RingConfig::new()
                        .sub_buffer_size(SUB_BUFFER_SIZE)
                        .sub_buffers(SUB_BUFFERS)
                        .mode(mode),
                )
                .expect("the default sizes are valid"),
            )
        } else {
            State::ArrayQueue(Box::new(ArrayQueue::new(array_queue_slots())))
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

    /// One batch: runs `events` events on every worker of `runner` (in the
    /// streaming scenario with the consumer draining meanwhile), reads what
    /// is left, checks the batch and records its [`Outcome`]. Returns the
    /// producers' wall time (the consumer's start and the final reading are
    /// not in it).
    pub fn batch(self: &Arc<Self>, runner: &Runner, events: u64) -> Duration {
        let counts_before = self.ring_counts();
        let w = self.clone();
        let (wall, drained) = match self.peer.scenario() {
            Scenario::Recorder => {
                let wall = runner.run(move |worker| w.produce(worker, events));
                (wall, self.read_rest(Drained::default()))
            }
            Scenario::Streaming => {
                let stop = AtomicBool::new(false);
                let ready = AtomicBool::new(false);
                thread::scope(|s| {
                    let consumer = s.spawn(|| self.consume(&ready, &stop));
                    while !ready.load(Ordering::Acquire) {
                        thread::yield_now();
                    }
                    let wall = runner.run(move |worker| w.produce(worker, events));
                    // After every producer's last event (the runner joined them).
                    stop.store(true, Ordering::Release);
                    let drained = consumer.join().expect("the consumer panicked");
                    (wall, drained)
                })
            }
        };
        let produced = self.totals.take();
        let attempted = events * runner.threads() as u64;
        // The ring's own counts over this batch; the queue's displaced events
        // are the producers'.
        let (ring_lost, overwritten) = match (self.ring_counts(), counts_before) {
            (Some((l, o)), Some((l0, o0))) => (Some(l - l0), o - o0),
            _ => (None, produced.displaced),
        };
        let outcome = Outcome {
            attempted,
            delivered: drained.count,
            overwritten,
            lost: produced.lost,
        };
        let broken = if produced.stored + produced.lost != attempted {
            Some(format!(
                "{attempted} events attempted but {} stored and {} lost",
                produced.stored, produced.lost
            ))
        } else if drained.torn > 0 {
            Some(format!("{} torn events were read", drained.torn))
        } else if drained.count + overwritten != produced.stored {
            Some(format!(
                "{} events stored but {} read and {overwritten} overwritten (events lost or duplicated)",
                produced.stored, drained.count
            ))
        } else if ring_lost.is_none()
            && drained.sum.wrapping_add(produced.displaced_sum) != produced.stored_sum
        {
            Some("the events read and displaced are not the events stored".into())
        } else if ring_lost.is_some() && overwritten == 0 && drained.sum != produced.stored_sum {
            Some("the events read are not the events stored".into())
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

    /// The ring's lost and overwritten counts; None for the queue.
    fn ring_counts(&self) -> Option<(u64, u64)> {
        match &self.state {
            State::Ring(r) => Some((r.lost(), r.overwritten())),
            State::ArrayQueue(_) => None,
        }
    }

    /// One producer's share of a batch; `worker`'s sequence numbers are its
    /// own (its index in the top 16 bits).
    fn produce(&self, worker: usize, events: u64) {
        let first = (worker as u64) << 48;
        let t = match &self.state {
            State::Ring(r) => produce_ring(r, first, events),
            State::ArrayQueue(q) => match self.peer.scenario() {
                Scenario::Recorder => force_push_queue(q, first, events),
                Scenario::Streaming => produce_queue(q, first, events),
            },
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
        self.read_rest(d)
    }

    /// Reads everything left, after the producers (the ring after closing
    /// its partly filled sub-buffers), adding it to `d`.
    fn read_rest(&self, mut d: Drained) -> Drained {
        if let State::Ring(r) = &self.state {
            r.flush();
        }
        while self.drain_once(&mut d) > 0 {}
        d
    }
}

/// The events of all `outcomes`, added up.
pub fn total(outcomes: &[Outcome]) -> Outcome {
    outcomes.iter().fold(Outcome::default(), |a, o| Outcome {
        attempted: a.attempted + o.attempted,
        delivered: a.delivered + o.delivered,
        overwritten: a.overwritten + o.overwritten,
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
    fn every_event_is_kept_or_lost_on_three_threads() {
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
                assert_eq!(o.kept() + o.lost, o.attempted, "{}: {o:?}", peer.name());
                assert!(o.delivered > 0, "{}: {o:?}", peer.name());
                if peer.scenario() == Scenario::Streaming {
                    assert_eq!(o.overwritten, 0, "{}: {o:?}", peer.name());
                }
            }
            // 60,000 events do not fit: the recorder displaced the oldest.
            if peer.scenario() == Scenario::Recorder {
                assert!(outcomes[2].overwritten > 0, "{}: {outcomes:?}", peer.name());
            }
        }
    }

    #[test]
    fn an_event_nobody_produced_is_reported() {
        let runner = Runner::new(1).unwrap();
        for peer in RingPeer::ALL {
            let w = Arc::new(Workload::new(peer, None));
            match &w.state {
                State::ArrayQueue(q) => q.push(payload(7)).unwrap(),
                State::Ring(r) => r.write(&payload(7)).unwrap(),
            }
            w.batch(&runner, 10);
            assert!(w.check().is_err(), "{}", peer.name());
        }
    }
}
