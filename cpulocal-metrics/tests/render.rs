//! The exact text of small fixed sets of metrics.

mod common;

use cpulocal_metrics::{Builder, Matcher, Recorder};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

#[test]
fn empty_recorder_renders_nothing() {
    assert_eq!(Recorder::new().handle().render(), "");
}

#[test]
fn fixed_set_renders_exactly() {
    let recorder = Builder::new()
        .buckets(&[0.5, 1.0, 2.5])
        .unwrap()
        .buckets_for_metric(Matcher::Suffix("_bytes".into()), &[1024.0])
        .unwrap()
        .build();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_counter!("requests", "Requests \"served\"\nby route.");
        counter!("requests", "route" => "/b").increment(3);
        counter!("requests", "route" => "/a", "code" => "200").increment(7);
        counter!("errors").increment(0);
        describe_gauge!("temperature", Unit::Count, "A gauge with a \\ backslash.");
        gauge!("temperature", "room" => "say \"hi\"").set(-3.25);
        gauge!("inflight").increment(2.0);
        gauge!("infinite").set(f64::INFINITY);
        describe_histogram!("latency", Unit::Seconds, "Request latency.");
        let latency = histogram!("latency", "route" => "/a");
        for x in [0.25, 0.5, 0.75, 3.0] {
            latency.record(x);
        }
        histogram!("body_bytes").record(10.0);
        // a.b renders as a_b: the same series, values added.
        counter!("a.b").increment(1);
        counter!("a_b").increment(2);
    });
    let expected = concat!(
        "# TYPE a_b counter\n",
        "a_b 3\n",
        "\n",
        "# TYPE errors counter\n",
        "errors 0\n",
        "\n",
        "# HELP requests Requests \"served\"\\nby route.\n",
        "# TYPE requests counter\n",
        "requests{route=\"/a\",code=\"200\"} 7\n",
        "requests{route=\"/b\"} 3\n",
        "\n",
        "# TYPE infinite gauge\n",
        "infinite +Inf\n",
        "\n",
        "# TYPE inflight gauge\n",
        "inflight 2\n",
        "\n",
        "# HELP temperature A gauge with a \\\\ backslash.\n",
        "# TYPE temperature gauge\n",
        "temperature{room=\"say \\\"hi\\\"\"} -3.25\n",
        "\n",
        "# TYPE body_bytes histogram\n",
        "body_bytes_bucket{le=\"1024\"} 1\n",
        "body_bytes_bucket{le=\"+Inf\"} 1\n",
        "body_bytes_sum 10\n",
        "body_bytes_count 1\n",
        "\n",
        "# HELP latency Request latency.\n",
        "# TYPE latency histogram\n",
        "latency_bucket{route=\"/a\",le=\"0.5\"} 2\n",
        "latency_bucket{route=\"/a\",le=\"1\"} 3\n",
        "latency_bucket{route=\"/a\",le=\"2.5\"} 3\n",
        "latency_bucket{route=\"/a\",le=\"+Inf\"} 4\n",
        "latency_sum{route=\"/a\"} 4.5\n",
        "latency_count{route=\"/a\"} 4\n",
        "\n",
    );
    let text = handle.render();
    assert_eq!(text, expected, "\n{text}");
    common::parse(&text);
}

#[test]
fn recommended_naming_adds_total_and_units() {
    let recorder = Builder::new()
        .with_recommended_naming(true)
        .buckets(&[1.0])
        .unwrap()
        .add_global_label("service", "api")
        .add_global_label("zone", "z1")
        .add_global_label("service", "web")
        .build();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_counter!("sent", Unit::Bytes, "Bytes sent.");
        counter!("sent").increment(42);
        counter!("jobs_total", "zone" => "z2").increment(1);
        describe_gauge!("cpu", Unit::Percent, "Busy share.");
        gauge!("cpu").set(0.5);
        describe_histogram!("wait", Unit::Milliseconds, "Queue wait.");
        histogram!("wait").record(2.0);
    });
    let expected = concat!(
        "# TYPE jobs_total counter\n",
        "jobs_total{service=\"web\",zone=\"z2\"} 1\n",
        "\n",
        "# HELP sent_bytes_total Bytes sent.\n",
        "# TYPE sent_bytes_total counter\n",
        "sent_bytes_total{service=\"web\",zone=\"z1\"} 42\n",
        "\n",
        "# HELP cpu_ratio Busy share.\n",
        "# TYPE cpu_ratio gauge\n",
        "cpu_ratio{service=\"web\",zone=\"z1\"} 0.5\n",
        "\n",
        "# HELP wait_milliseconds Queue wait.\n",
        "# TYPE wait_milliseconds histogram\n",
        "wait_milliseconds_bucket{service=\"web\",zone=\"z1\",le=\"1\"} 0\n",
        "wait_milliseconds_bucket{service=\"web\",zone=\"z1\",le=\"+Inf\"} 1\n",
        "wait_milliseconds_sum{service=\"web\",zone=\"z1\"} 2\n",
        "wait_milliseconds_count{service=\"web\",zone=\"z1\"} 1\n",
        "\n",
    );
    assert_eq!(handle.render(), expected);
}

#[test]
fn default_buckets_and_first_description_wins() {
    let recorder = Recorder::new();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_histogram!("h", "first");
        describe_histogram!("h", "second");
        histogram!("h").record(0.3);
        histogram!("h").record(f64::NAN);
    });
    let text = handle.render();
    let e = common::parse(&text);
    assert!(
        text.starts_with("# HELP h first\n# TYPE h histogram\n"),
        "{text}"
    );
    let les: Vec<String> = cpulocal_metrics::DEFAULT_BUCKETS
        .iter()
        .map(|b| format!("h_bucket{{le=\"{b}\"}}"))
        .collect();
    assert_eq!(les[0], "h_bucket{le=\"0.005\"}");
    for (i, le) in les.iter().enumerate() {
        let want = if cpulocal_metrics::DEFAULT_BUCKETS[i] >= 0.3 {
            1.0
        } else {
            0.0
        };
        assert_eq!(e.get(le), want, "{le}");
    }
    // NaN lands in +Inf only, and makes the sum NaN, as in the exporter.
    assert_eq!(e.get("h_bucket{le=\"+Inf\"}"), 2.0);
    assert_eq!(e.get("h_count"), 2.0);
    assert!(e.get("h_sum").is_nan());
}

#[test]
fn handles_outlive_the_recorder_and_clone() {
    let recorder = Recorder::new();
    let handle = recorder.handle().clone();
    let c = metrics::with_local_recorder(&recorder, || counter!("kept"));
    drop(recorder);
    c.increment(4);
    assert_eq!(handle.render(), "# TYPE kept counter\nkept 4\n\n");
}
