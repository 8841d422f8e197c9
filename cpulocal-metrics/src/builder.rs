//! [`Builder`]: histogram buckets, global labels, naming and slot numbering.

use std::collections::BTreeMap;
use std::sync::Arc;

use cpulocal::Index;

use crate::format::sanitize_name;
use crate::{BucketError, Error, Handle, Recorder};

/// The bucket bounds histograms get unless configured otherwise: the
/// Prometheus client libraries' defaults, for latencies in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The most bucket bounds one histogram may have. Each histogram keeps one
/// word per bucket per CPU, so the limit bounds its memory.
pub const MAX_BUCKETS: usize = 4096;

/// Which histograms a [`Builder::buckets_for_metric`] override applies to,
/// by metric name (after sanitising, as rendered).
///
/// When several overrides match a name, the first in this type's order
/// wins: `Full` before `Prefix` before `Suffix`, then by their strings.
///
/// # Examples
///
/// ```
/// use cpulocal_metrics::Matcher;
///
/// assert!(Matcher::Prefix("http_".into()).matches("http_request_seconds"));
/// assert!(Matcher::Suffix("_bytes".into()).matches("body_bytes"));
/// assert!(!Matcher::Full("a".into()).matches("ab"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Matcher {
    /// The whole name.
    Full(String),
    /// The start of the name.
    Prefix(String),
    /// The end of the name.
    Suffix(String),
}

impl Matcher {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Full(full) => name == full,
            Matcher::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => name.ends_with(suffix.as_str()),
        }
    }

    /// The matcher with its string sanitised as metric names are.
    fn sanitized(self) -> Matcher {
        match self {
            Matcher::Full(s) => Matcher::Full(sanitize_name(&s)),
            Matcher::Prefix(s) => Matcher::Prefix(sanitize_name(&s)),
            Matcher::Suffix(s) => Matcher::Suffix(sanitize_name(&s)),
        }
    }
}

/// Configures a [`Recorder`]: histogram buckets (default and per metric),
/// global labels, Prometheus naming, and how per-CPU slots are numbered.
///
/// # Examples
///
/// ```
/// use cpulocal_metrics::{Builder, Matcher};
///
/// let recorder = Builder::new()
///     .buckets(&[0.001, 0.01, 0.1, 1.0])?
///     .buckets_for_metric(Matcher::Suffix("_bytes".into()), &[1024.0, 65536.0])?
///     .add_global_label("service", "api")
///     .build();
/// let handle = recorder.handle();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::histogram!("body_bytes").record(2000.0);
/// });
/// assert!(handle.render().contains("body_bytes_bucket{service=\"api\",le=\"65536\"} 1\n"));
/// # Ok::<(), cpulocal_metrics::BucketError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) buckets: Arc<[f64]>,
    pub(crate) overrides: BTreeMap<Matcher, Arc<[f64]>>,
    pub(crate) global_labels: Vec<(String, String)>,
    pub(crate) recommended_naming: bool,
    pub(crate) index: Index,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The defaults: [`DEFAULT_BUCKETS`], no overrides, no global labels,
    /// names as given, slots numbered by CPU ([`Index::Cpu`]).
    pub fn new() -> Self {
        Builder {
            buckets: Arc::from(&DEFAULT_BUCKETS[..]),
            overrides: BTreeMap::new(),
            global_labels: Vec::new(),
            recommended_naming: false,
            index: Index::Cpu,
        }
    }

    /// The bucket bounds of every histogram that no override matches.
    ///
    /// # Errors
    ///
    /// A [`BucketError`] if `bounds` is empty, longer than [`MAX_BUCKETS`],
    /// holds a NaN or an infinity, or is not strictly increasing; the
    /// builder is then dropped (build a new one).
    pub fn buckets(mut self, bounds: &[f64]) -> Result<Self, BucketError> {
        self.buckets = validate(bounds)?;
        Ok(self)
    }

    /// The bucket bounds of the histograms whose (sanitised) name `matcher`
    /// matches; setting the same matcher again replaces its bounds.
    ///
    /// # Errors
    ///
    /// As [`buckets`](Self::buckets).
    pub fn buckets_for_metric(
        mut self,
        matcher: Matcher,
        bounds: &[f64],
    ) -> Result<Self, BucketError> {
        let bounds = validate(bounds)?;
        self.overrides.insert(matcher.sanitized(), bounds);
        Ok(self)
    }

    /// A label added to every series. A metric's own label of the same name
    /// takes precedence; adding the same key again replaces its value.
    pub fn add_global_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        match self.global_labels.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.global_labels.push((key, value)),
        }
        self
    }

    /// Whether to follow the Prometheus naming practices, as
    /// `metrics-exporter-prometheus`'s option of the same name does:
    /// counters get a `_total` suffix and described metrics their unit
    /// (`_seconds`, `_bytes`, ...; a percent becomes `_ratio`, a count adds
    /// nothing), unless the name already ends with it. Off by default.
    pub fn with_recommended_naming(mut self, on: bool) -> Self {
        self.recommended_naming = on;
        self
    }

    /// How per-CPU slots are numbered: by CPU (the default), or by
    /// concurrency id ([`Index::MmCid`]), which gives fewer slots (so less
    /// memory and cheaper renders and gauge sets) where the process may run
    /// on fewer CPUs than the machine has.
    pub fn index(mut self, by: Index) -> Self {
        self.index = by;
        self
    }

    /// The recorder.
    pub fn build(self) -> Recorder {
        Recorder::from_builder(self)
    }

    /// Builds the recorder and installs it as the process's global
    /// recorder; the handle renders it.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyInstalled`] if a global recorder is already set.
    pub fn install(self) -> Result<Handle, Error> {
        self.build().install()
    }

    /// The bounds for histogram `name` (sanitised).
    pub(crate) fn bounds_for(&self, name: &str) -> Arc<[f64]> {
        self.overrides
            .iter()
            .find(|(m, _)| m.matches(name))
            .map_or_else(|| self.buckets.clone(), |(_, b)| b.clone())
    }
}

/// `bounds` if they are usable bucket bounds.
fn validate(bounds: &[f64]) -> Result<Arc<[f64]>, BucketError> {
    if bounds.is_empty() {
        return Err(BucketError::Empty);
    }
    if bounds.len() > MAX_BUCKETS {
        return Err(BucketError::TooMany {
            count: bounds.len(),
        });
    }
    for (index, &b) in bounds.iter().enumerate() {
        if b.is_nan() {
            return Err(BucketError::NotANumber { index });
        }
        if b.is_infinite() {
            return Err(BucketError::Infinite { index });
        }
        if index > 0 && b <= bounds[index - 1] {
            return Err(BucketError::NotSorted { index });
        }
    }
    Ok(Arc::from(bounds))
}
