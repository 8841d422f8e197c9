//! Histogram bucket configuration errors.

use cpulocal_metrics::{BucketError, Builder, Matcher, MAX_BUCKETS};

#[test]
fn bad_bucket_lists_are_refused_with_their_reason() {
    let b = || Builder::new();
    assert_eq!(b().buckets(&[]).unwrap_err(), BucketError::Empty);
    assert_eq!(
        b().buckets(&[1.0, f64::NAN]).unwrap_err(),
        BucketError::NotANumber { index: 1 }
    );
    assert_eq!(
        b().buckets(&[1.0, 2.0, 1.5]).unwrap_err(),
        BucketError::NotSorted { index: 2 }
    );
    assert_eq!(
        b().buckets(&[1.0, 1.0]).unwrap_err(),
        BucketError::NotSorted { index: 1 }
    );
    assert_eq!(
        b().buckets(&[1.0, f64::INFINITY]).unwrap_err(),
        BucketError::Infinite { index: 1 }
    );
    assert_eq!(
        b().buckets(&[f64::NEG_INFINITY, 0.0]).unwrap_err(),
        BucketError::Infinite { index: 0 }
    );
    let many: Vec<f64> = (0..=MAX_BUCKETS).map(|i| i as f64).collect();
    assert_eq!(
        b().buckets(&many).unwrap_err(),
        BucketError::TooMany {
            count: MAX_BUCKETS + 1
        }
    );
    assert!(b().buckets(&many[..MAX_BUCKETS]).is_ok());
    let m = || Matcher::Full("x".into());
    assert_eq!(
        b().buckets_for_metric(m(), &[]).unwrap_err(),
        BucketError::Empty
    );
    assert_eq!(
        b().buckets_for_metric(m(), &[2.0, f64::NAN]).unwrap_err(),
        BucketError::NotANumber { index: 1 }
    );
    assert_eq!(
        b().buckets_for_metric(m(), &[3.0, 2.0]).unwrap_err(),
        BucketError::NotSorted { index: 1 }
    );
}

#[test]
fn errors_explain_themselves() {
    assert_eq!(
        BucketError::Empty.to_string(),
        "histogram buckets cannot be empty"
    );
    assert_eq!(
        BucketError::NotSorted { index: 2 }.to_string(),
        "histogram bucket bound 2 is not greater than bound 1: bounds must be strictly increasing"
    );
    assert_eq!(
        BucketError::NotANumber { index: 0 }.to_string(),
        "histogram bucket bound 0 is NaN"
    );
}

#[test]
fn overrides_pick_the_first_matcher_in_order() {
    let recorder = Builder::new()
        .buckets_for_metric(Matcher::Suffix("_seconds".into()), &[1.0])
        .unwrap()
        .buckets_for_metric(Matcher::Prefix("http.".into()), &[2.0])
        .unwrap()
        .buckets_for_metric(Matcher::Full("http_full_seconds".into()), &[3.0])
        .unwrap()
        .build();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::histogram!("http_full_seconds").record(0.0);
        metrics::histogram!("http_x_seconds").record(0.0); // Prefix before Suffix
        metrics::histogram!("db_seconds").record(0.0);
        metrics::histogram!("other").record(0.0); // the defaults
    });
    let text = handle.render();
    assert!(
        text.contains("http_full_seconds_bucket{le=\"3\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("http_x_seconds_bucket{le=\"2\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("db_seconds_bucket{le=\"1\"} 1\n"), "{text}");
    assert!(text.contains("other_bucket{le=\"0.005\"} 1\n"), "{text}");
    assert_eq!(text.matches("_bucket{le=\"+Inf\"} 1\n").count(), 4);
}
