//! The crate's error types.

/// Why a list of histogram bucket bounds was refused. Nothing was changed.
///
/// Bounds are the inclusive upper bounds (`le`) of the buckets: finite and
/// strictly increasing. The `+Inf` bucket is always there and is not listed.
///
/// # Examples
///
/// ```
/// use cpulocal_metrics::{BucketError, Builder};
///
/// assert_eq!(Builder::new().buckets(&[]).unwrap_err(), BucketError::Empty);
/// assert_eq!(
///     Builder::new().buckets(&[1.0, 0.5]).unwrap_err(),
///     BucketError::NotSorted { index: 1 }
/// );
/// assert_eq!(
///     Builder::new().buckets(&[f64::NAN]).unwrap_err(),
///     BucketError::NotANumber { index: 0 }
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BucketError {
    /// No bounds were given.
    #[error("histogram buckets cannot be empty")]
    Empty,
    /// More than [`MAX_BUCKETS`](crate::MAX_BUCKETS) bounds were given.
    #[error("{count} histogram bucket bounds are too many (at most {max})", max = crate::MAX_BUCKETS)]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// The bound at `index` is NaN.
    #[error("histogram bucket bound {index} is NaN")]
    NotANumber {
        /// Its position in the list.
        index: usize,
    },
    /// The bound at `index` is infinite (the `+Inf` bucket is implicit).
    #[error("histogram bucket bound {index} is infinite; the +Inf bucket is always present and must not be listed")]
    Infinite {
        /// Its position in the list.
        index: usize,
    },
    /// The bound at `index` is not greater than the one before it (bounds
    /// must be strictly increasing).
    #[error("histogram bucket bound {index} is not greater than bound {}: bounds must be strictly increasing", .index - 1)]
    NotSorted {
        /// Its position in the list (at least 1).
        index: usize,
    },
}

/// Why installing the recorder, or starting the scrape listener, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A global recorder was already installed in this process (by this
    /// crate or another); the `metrics` facade accepts one per process.
    /// The recorder that was refused has been dropped.
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
    /// The HTTP scrape listener could not bind or start
    /// (feature `http-listener`).
    #[error("cannot start the scrape listener: {0}")]
    Listen(#[source] std::io::Error),
}
