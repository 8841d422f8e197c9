//! A recorder for the [`metrics`] facade whose counters, gauges and
//! histograms are [cpulocal] per-CPU data, rendered in the
//! Prometheus text exposition format as `metrics-exporter-prometheus`
//! renders it.
//!
//! A counter's `increment` is one [`PerCpuCounter::add`](cpulocal::PerCpuCounter::add):
//! a restartable sequence on the current CPU's cache line, with no lock and
//! no atomic instruction, so threads on different CPUs never contend for a
//! counter. Reading (a render, a scrape) sums the CPUs' slots.
//!
//! ```
//! use cpulocal_metrics::Builder;
//! use metrics::{counter, gauge, histogram};
//!
//! let recorder = Builder::new().buckets(&[0.01, 0.1, 1.0])?.build();
//! let handle = recorder.handle();
//! metrics::with_local_recorder(&recorder, || {
//!     let requests = counter!("requests", "method" => "GET"); // register once...
//!     for _ in 0..3 {
//!         requests.increment(1);                                // ...add per CPU
//!     }
//!     gauge!("inflight").increment(2.0);
//!     histogram!("latency_seconds").record(0.05);
//! });
//! let expected = concat!(
//!     "# TYPE requests counter\n",
//!     "requests{method=\"GET\"} 3\n",
//!     "\n",
//!     "# TYPE inflight gauge\n",
//!     "inflight 2\n",
//!     "\n",
//!     "# TYPE latency_seconds histogram\n",
//!     "latency_seconds_bucket{le=\"0.01\"} 0\n",
//!     "latency_seconds_bucket{le=\"0.1\"} 1\n",
//!     "latency_seconds_bucket{le=\"1\"} 1\n",
//!     "latency_seconds_bucket{le=\"+Inf\"} 1\n",
//!     "latency_seconds_sum 0.05\n",
//!     "latency_seconds_count 1\n",
//!     "\n",
//! );
//! assert_eq!(handle.render(), expected);
//! # Ok::<(), cpulocal_metrics::BucketError>(())
//! ```
//!
//! In a service, install it globally and serve it (feature
//! `http-listener`):
//!
//! ```no_run
//! # #[cfg(feature = "http-listener")]
//! # fn main() -> Result<(), cpulocal_metrics::Error> {
//! let handle = cpulocal_metrics::Recorder::new().install()?;
//! let _scrapes = handle.listen("0.0.0.0:9000")?; // serves until dropped
//! metrics::counter!("started").increment(1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "http-listener"))]
//! # fn main() {}
//! ```
//!
//! # Semantics of each kind
//!
//! - **Counter**: a [`PerCpuCounter`](cpulocal::PerCpuCounter). `increment`
//!   adds on the current CPU's slot; the value is the slots' sum, a `u64`
//!   that wraps at 2^64. `absolute(v)` raises the counter to at least `v`
//!   (under a lock that only `absolute` takes: it reads the sum and adds the
//!   difference).
//! - **Gauge**: an absolute base plus per-CPU deltas. An increment or
//!   decrement by a whole number (of magnitude at most 2^53) is one per-CPU
//!   add, summed exactly in integers; any other amount (a fraction, NaN,
//!   an infinity) goes to one shared `f64` word instead. `set(v)` records
//!   the deltas' current sum as the new base's offset and `v` as its value,
//!   without resetting any slot, so it reads back exactly `v`. Increments
//!   that complete before a `set` are replaced by it, those that begin after
//!   it count, and those that overlap it are either replaced or counted,
//!   exactly once each; reads never see a `set` halfway. A read sums the
//!   CPUs' slots one after another, so with increments and decrements in
//!   flight it may show a value the gauge held at no single instant.
//! - **Histogram**: Prometheus buckets ([`DEFAULT_BUCKETS`] unless
//!   configured with [`Builder::buckets`] or
//!   [`Builder::buckets_for_metric`]). Recording adds 1 to the sample's
//!   bucket in the current CPU's row with the add shape, and the sample to
//!   that row's sum with a per-CPU compare-and-store; all histograms share
//!   one [`cpulocal::Domain`]. `_count` always equals the `+Inf` bucket;
//!   `_sum` may differ by samples recorded during the render.
//!
//! Rendering takes no lock that an update takes, except each gauge's
//! `set` lock, briefly. No upkeep is needed: nothing accumulates between
//! renders, and a render resets nothing. Metrics are never removed.
//!
//! # Memory
//!
//! A counter or gauge is one cache-padded slot (128 bytes on x86_64) per
//! possible CPU; a histogram one 128-byte line per CPU for up to 14
//! buckets. [`Builder::index`] with [`cpulocal::Index::MmCid`] sizes slots
//! by the CPUs the process may use instead.
//!
//! # Platform
//!
//! 64-bit targets (a histogram's sum is an `f64` in a word). Where rseq is
//! unavailable, cpulocal's fenced engine runs every operation, with the
//! same results: see [`cpulocal::status`].
#![deny(unsafe_code)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("cpulocal-metrics needs 64-bit words: a histogram's sum is an f64 in one word");

mod builder;
mod counter;
mod error;
mod format;
mod gauge;
mod histogram;
#[cfg(feature = "http-listener")]
mod http;
mod recorder;

pub use builder::{Builder, Matcher, DEFAULT_BUCKETS, MAX_BUCKETS};
pub use error::{BucketError, Error};
#[cfg(feature = "http-listener")]
pub use http::{Listener, CONTENT_TYPE};
pub use recorder::{Handle, Recorder, THREAD_CACHE_KEYS};
