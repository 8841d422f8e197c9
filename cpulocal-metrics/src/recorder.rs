//! [`Recorder`] and [`Handle`]: registration and rendering.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use cpulocal::Domain;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
    SharedString, Unit,
};

use crate::counter::CounterCell;
use crate::format::{self, label_text, sanitize_name, Value};
use crate::gauge::GaugeCell;
use crate::histogram::HistogramCell;
use crate::{Builder, Error};

/// A recorder for the [`metrics`] facade whose counters, gauges and
/// histograms are cpulocal per-CPU data; [`Handle::render`] writes them in
/// the Prometheus text exposition format.
///
/// Install it as the process's recorder with [`install`](Self::install),
/// or use it locally with [`metrics::with_local_recorder`]. A recorder needs
/// no upkeep: samples are aggregated where they are recorded, nothing
/// accumulates between renders.
///
/// Registering a key (what the `counter!`, `gauge!` and `histogram!` macros
/// do each time they run) looks the key up in the calling thread's cache of
/// handles first, with no lock and no shared atomic; the first time on a
/// thread, it looks the key up in a map behind a read-write lock, creating
/// its storage under the write lock the first time in the process, and
/// caches a handle of the thread's own. The handle updates the storage
/// directly: a counter's `increment` is one per-CPU add, with no lock and no
/// shared atomic. A thread caches up to [`THREAD_CACHE_KEYS`] keys of each
/// kind, for the last recorder it registered with (registering with another
/// recorder empties it); keys beyond that take the map's lock each time.
/// Keeping the handle (`let requests = counter!("requests");`) where the
/// increment is hot still saves the lookup.
///
/// Storage lives as long as the recorder or a handle to it; nothing is ever
/// removed.
///
/// # Examples
///
/// ```
/// use cpulocal_metrics::Recorder;
///
/// let recorder = Recorder::new();
/// let handle = recorder.handle();
/// metrics::with_local_recorder(&recorder, || {
///     let requests = metrics::counter!("requests", "method" => "GET");
///     requests.increment(2);
/// });
/// assert_eq!(
///     handle.render(),
///     "# TYPE requests counter\nrequests{method=\"GET\"} 2\n\n"
/// );
/// ```
pub struct Recorder {
    inner: Arc<Inner>,
}

/// A cloneable handle to a [`Recorder`]'s metrics, to render them (from any
/// thread, at any time, including after the recorder was installed).
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

/// How many keys of each kind (counters, gauges, histograms) a thread keeps
/// handles for; see [`Recorder`].
pub const THREAD_CACHE_KEYS: usize = 1024;

/// Recorder identities for the thread caches (0: none yet).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a recorder and its handles share.
struct Inner {
    /// This recorder's identity in the thread caches: never reused.
    id: u64,
    config: Builder,
    /// The one domain under every histogram's bucket rows.
    domain: Arc<Domain>,
    counters: Family<CounterCell>,
    gauges: Family<GaugeCell>,
    histograms: Family<HistogramCell>,
    /// By sanitised name: the first description and unit given.
    descriptions: Mutex<HashMap<String, (SharedString, Option<Unit>)>>,
}

/// One kind's registered keys.
type Family<C> = RwLock<HashMap<Key, Arc<Series<C>>, BuildHasherDefault<KeyHasher>>>;

/// A registered key's storage, with its name and labels as rendered.
struct Series<C> {
    name: String,
    labels: String,
    cell: C,
}

/// A map from keys to handles, hashed by [`Key`]'s precomputed hash.
type KeyMap<H> = HashMap<Key, H, BuildHasherDefault<KeyHasher>>;

/// A handle of one thread's own over a series: cloning it (what registration
/// returns) and dropping it touch a reference count no other thread writes,
/// where the series' own count is shared by every thread that registers the
/// key.
struct Local<C>(Arc<Series<C>>);

/// The calling thread's handles, for one recorder.
#[derive(Default)]
struct ThreadCache {
    /// The recorder they belong to (0: none).
    recorder: u64,
    counters: KeyMap<Counter>,
    gauges: KeyMap<Gauge>,
    histograms: KeyMap<Histogram>,
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::default();
}

/// [`Key`]'s `Hash` writes its precomputed hash as one `u64`; this hasher
/// passes it through instead of hashing it again.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not what Key does; hash anything else correctly all the same
        // (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder with the [`Builder`]'s defaults.
    pub fn new() -> Self {
        Builder::new().build()
    }

    /// A [`Builder`], to configure buckets, labels and naming.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn from_builder(config: Builder) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                domain: Arc::new(Domain::new(config.index)),
                config,
                counters: Default::default(),
                gauges: Default::default(),
                histograms: Default::default(),
                descriptions: Default::default(),
            }),
        }
    }

    /// A handle that renders this recorder's metrics.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: self.inner.clone(),
        }
    }

    /// Installs this recorder as the process's global recorder (what the
    /// `metrics` macros use outside [`metrics::with_local_recorder`]), and
    /// returns its handle.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyInstalled`] if a global recorder is already set; this
    /// recorder is then dropped.
    pub fn install(self) -> Result<Handle, Error> {
        let handle = self.handle();
        metrics::set_global_recorder(self).map_err(|_| Error::AlreadyInstalled)?;
        Ok(handle)
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let mut map = self
            .inner
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(sanitize_name(key.as_str()))
            .or_insert((description, unit));
    }

    /// The series for `key` in `family`, made by `make(sanitised name)` if
    /// it is new.
    fn series<C>(
        &self,
        family: &Family<C>,
        key: &Key,
        make: impl FnOnce(&str) -> C,
    ) -> Arc<Series<C>> {
        if let Some(s) = family
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return s.clone();
        }
        let mut map = family.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| {
                let name = sanitize_name(key.name());
                let labels = label_text(&self.inner.config.global_labels, key);
                let cell = make(&name);
                Arc::new(Series { name, labels, cell })
            })
            .clone()
    }

    /// The handle for `key`: from the thread's cache (`cache` picks the
    /// kind's map) if it holds one, otherwise `wrap` of the shared series
    /// `shared()` returns, cached if there is room. A thread whose cache is
    /// gone (it is exiting) or in use (a registration from within one) goes
    /// to the shared map.
    fn cached<C, H: Clone>(
        &self,
        key: &Key,
        cache: fn(&mut ThreadCache) -> &mut KeyMap<H>,
        shared: impl FnOnce() -> Arc<Series<C>>,
        wrap: fn(Local<C>) -> H,
    ) -> H {
        let id = self.inner.id;
        let hit = CACHE.try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if c.recorder != id {
                *c = ThreadCache {
                    recorder: id,
                    ..ThreadCache::default()
                };
            }
            cache(&mut c).get(key).cloned()
        });
        if let Ok(Some(handle)) = hit {
            return handle;
        }
        let handle = wrap(Local(shared()));
        let _ = CACHE.try_with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else {
                return;
            };
            if c.recorder == id {
                let map = cache(&mut c);
                if map.len() < THREAD_CACHE_KEYS {
                    map.insert(key.clone(), handle.clone());
                }
            }
        });
        handle
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let by = self.inner.config.index;
        let shared = || self.series(&self.inner.counters, key, |_| CounterCell::new(by));
        self.cached(
            key,
            |c| &mut c.counters,
            shared,
            |l| Counter::from_arc(Arc::new(l)),
        )
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let by = self.inner.config.index;
        let shared = || self.series(&self.inner.gauges, key, |_| GaugeCell::new(by));
        self.cached(
            key,
            |c| &mut c.gauges,
            shared,
            |l| Gauge::from_arc(Arc::new(l)),
        )
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let inner = &self.inner;
        let shared = || {
            self.series(&inner.histograms, key, |name| {
                HistogramCell::new(inner.domain.clone(), inner.config.bounds_for(name))
            })
        };
        self.cached(
            key,
            |c| &mut c.histograms,
            shared,
            |l| Histogram::from_arc(Arc::new(l)),
        )
    }
}

impl CounterFn for Local<CounterCell> {
    #[inline]
    fn increment(&self, value: u64) {
        self.0.cell.increment(value);
    }

    fn absolute(&self, value: u64) {
        self.0.cell.absolute(value);
    }
}

impl GaugeFn for Local<GaugeCell> {
    #[inline]
    fn increment(&self, value: f64) {
        self.0.cell.add(value);
    }

    #[inline]
    fn decrement(&self, value: f64) {
        self.0.cell.add(-value);
    }

    fn set(&self, value: f64) {
        self.0.cell.set(value);
    }
}

impl HistogramFn for Local<HistogramCell> {
    #[inline]
    fn record(&self, value: f64) {
        self.0.cell.record_n(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.0.cell.record_n(value, count);
    }
}

/// One series' values at a render.
enum Sample {
    Counter(u64),
    Gauge(f64),
    Histogram {
        bounds: Arc<[f64]>,
        counts: Vec<u64>,
        sum: f64,
    },
}

impl Sample {
    /// Adds `other` (a series that renders under the same name and labels).
    fn merge(&mut self, other: Sample) {
        match (self, other) {
            (Sample::Counter(a), Sample::Counter(b)) => *a = a.wrapping_add(b),
            (Sample::Gauge(a), Sample::Gauge(b)) => *a += b,
            (
                Sample::Histogram { counts, sum, .. },
                Sample::Histogram {
                    counts: c2,
                    sum: s2,
                    ..
                },
            ) => {
                for (a, b) in counts.iter_mut().zip(c2) {
                    *a = a.wrapping_add(b);
                }
                *sum += s2;
            }
            _ => {}
        }
    }
}

impl Handle {
    /// The metrics in the Prometheus text exposition format (version 0.0.4),
    /// as `metrics-exporter-prometheus` renders them: counters, then gauges,
    /// then histograms, each metric's `# HELP` line (if described) and
    /// `# TYPE` line, its series, and a blank line. Histograms are
    /// Prometheus histograms: cumulative `_bucket{le=".."}` lines ending
    /// with `le="+Inf"`, then `_sum` and `_count`.
    ///
    /// Unlike the exporter's, the output is in a fixed order: metrics by
    /// name, series by their labels' text. Keys that render to the same
    /// name and labels (`a.b` and `a_b`) are one series, their values
    /// added. Infinite and NaN values are written `+Inf`, `-Inf` and `NaN`.
    ///
    /// A render reads every slot of every series (no lock that an
    /// increment takes; a gauge's set lock, briefly, for each gauge). It
    /// resets nothing.
    pub fn render(&self) -> String {
        let inner = &*self.inner;
        let descriptions = inner
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let unit_of = |name: &str| {
            let d = descriptions.get(name)?;
            d.1.filter(|_| inner.config.recommended_naming)
        };
        let counter_suffix = inner.config.recommended_naming.then_some("total");
        let mut out = String::new();
        let counters = collect(&inner.counters, |c| Sample::Counter(c.get()));
        write_family(
            &mut out,
            counters,
            "counter",
            counter_suffix,
            &descriptions,
            &unit_of,
        );
        let gauges = collect(&inner.gauges, |g| Sample::Gauge(g.get()));
        write_family(&mut out, gauges, "gauge", None, &descriptions, &unit_of);
        let histograms = collect(&inner.histograms, |h| {
            let (counts, sum) = h.snapshot();
            Sample::Histogram {
                bounds: h.bounds().clone(),
                counts,
                sum,
            }
        });
        write_family(
            &mut out,
            histograms,
            "histogram",
            None,
            &descriptions,
            &unit_of,
        );
        out
    }
}

/// Every series of `family` as (name, labels, sample), in render order,
/// series with the same name and labels merged. The map's lock is held
/// only to copy its entries.
fn collect<C>(family: &Family<C>, sample: impl Fn(&C) -> Sample) -> Vec<(String, String, Sample)> {
    let series: Vec<Arc<Series<C>>> = family
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    let mut rows: Vec<(String, String, Sample)> = series
        .iter()
        .map(|s| (s.name.clone(), s.labels.clone(), sample(&s.cell)))
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut merged: Vec<(String, String, Sample)> = Vec::with_capacity(rows.len());
    for row in rows {
        match merged.last_mut() {
            Some(last) if last.0 == row.0 && last.1 == row.1 => last.2.merge(row.2),
            _ => merged.push(row),
        }
    }
    merged
}

/// Writes one kind's metrics: per name, HELP, TYPE, the series, a blank
/// line.
fn write_family(
    out: &mut String,
    rows: Vec<(String, String, Sample)>,
    kind: &str,
    suffix: Option<&'static str>,
    descriptions: &HashMap<String, (SharedString, Option<Unit>)>,
    unit_of: &dyn Fn(&str) -> Option<Unit>,
) {
    let mut current: Option<String> = None;
    for (name, labels, sample) in rows {
        let unit = unit_of(&name);
        if current.as_deref() != Some(name.as_str()) {
            if current.is_some() {
                out.push('\n');
            }
            if let Some((text, _)) = descriptions.get(&name) {
                format::help_line(out, &name, unit, suffix, text);
            }
            format::type_line(out, &name, unit, suffix, kind);
            current = Some(name.clone());
        }
        match sample {
            Sample::Counter(v) => {
                format::sample_line(out, &name, unit, suffix, &labels, None, Value::Int(v))
            }
            Sample::Gauge(v) => {
                format::sample_line(out, &name, unit, suffix, &labels, None, Value::Float(v))
            }
            Sample::Histogram {
                bounds,
                counts,
                sum,
            } => {
                let mut cumulative = 0u64;
                let mut le = String::new();
                for (bound, count) in bounds.iter().zip(&counts) {
                    cumulative = cumulative.wrapping_add(*count);
                    le.clear();
                    format::push_f64(&mut le, *bound);
                    let extra = Some(("le", le.as_str()));
                    let v = Value::Int(cumulative);
                    format::sample_line(out, &name, unit, Some("bucket"), &labels, extra, v);
                }
                let total = counts.iter().fold(0u64, |a, b| a.wrapping_add(*b));
                let extra = Some(("le", "+Inf"));
                let v = Value::Int(total);
                format::sample_line(out, &name, unit, Some("bucket"), &labels, extra, v);
                let v = Value::Float(sum);
                format::sample_line(out, &name, unit, Some("sum"), &labels, None, v);
                let v = Value::Int(total);
                format::sample_line(out, &name, unit, Some("count"), &labels, None, v);
            }
        }
    }
    if current.is_some() {
        out.push('\n');
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn len<C>(family: &Family<C>) -> usize {
            family.read().unwrap_or_else(PoisonError::into_inner).len()
        }
        f.debug_struct("Recorder")
            .field("counters", &len(&self.counters))
            .field("gauges", &len(&self.gauges))
            .field("histograms", &len(&self.histograms))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
