//! The Prometheus text exposition format: names, labels, values, as
//! `metrics-exporter-prometheus` writes them.

use std::fmt::Write;

use metrics::Unit;

/// `name` with every character outside `[a-zA-Z0-9_:]` (or a leading digit)
/// replaced by `_`; an empty name becomes `_`.
pub(crate) fn sanitize_name(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok =
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A label name: every character outside `[a-zA-Z0-9_]` (or a leading
/// digit) replaced by `_`; an empty key becomes `_`.
pub(crate) fn sanitize_label_key(key: &str) -> String {
    if key.is_empty() {
        return "_".into();
    }
    key.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Appends `value` escaped for a label value: `\` `"` and line feed.
fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `text` escaped for a `# HELP` line: `\` and line feed.
fn push_help(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The labels of one series, `k="v",k2="v2"`: the global labels, then the
/// key's, a key's label replacing a global one of the same name in place
/// (and a later label of the key an earlier one), all sanitised.
pub(crate) fn label_text(global: &[(String, String)], key: &metrics::Key) -> String {
    let mut labels: Vec<(&str, &str)> = global
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for label in key.labels() {
        match labels.iter_mut().find(|(k, _)| *k == label.key()) {
            Some((_, v)) => *v = label.value(),
            None => labels.push((label.key(), label.value())),
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in labels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&sanitize_label_key(k));
        out.push_str("=\"");
        push_label_value(&mut out, v);
        out.push('"');
    }
    out
}

/// Appends `name`, then `_unit` and `_suffix` where the name lacks them
/// (the unit goes before a `_sum`/`_count`/`_bucket`/`_total` ending).
pub(crate) fn push_name(out: &mut String, name: &str, unit: Option<Unit>, suffix: Option<&str>) {
    let start = out.len();
    out.push_str(name);
    if let Some(unit) = unit {
        push_unit(out, start, unit);
    }
    if let Some(suffix) = suffix {
        if !out[start..].ends_with(suffix) {
            out.push('_');
            out.push_str(suffix);
        }
    }
}

/// Adds `unit` to the name that starts at `start` in `out`, if missing.
fn push_unit(out: &mut String, start: usize, unit: Unit) {
    const KNOWN_SUFFIXES: [&str; 4] = ["_sum", "_count", "_bucket", "_total"];
    let unit = match unit {
        Unit::Count => return,
        Unit::Percent => "ratio",
        unit => unit.as_str(),
    };
    for suffix in KNOWN_SUFFIXES {
        if out[start..].ends_with(suffix) {
            let at = out.len() - suffix.len();
            if !out[start..at].ends_with(unit) {
                out.insert(at, '_');
                out.insert_str(at + 1, unit);
            }
            return;
        }
    }
    if !out[start..].ends_with(unit) {
        out.push('_');
        out.push_str(unit);
    }
}

/// `# HELP name text` and its line feed.
pub(crate) fn help_line(
    out: &mut String,
    name: &str,
    unit: Option<Unit>,
    suffix: Option<&str>,
    text: &str,
) {
    out.push_str("# HELP ");
    push_name(out, name, unit, suffix);
    out.push(' ');
    push_help(out, text);
    out.push('\n');
}

/// `# TYPE name kind` and its line feed.
pub(crate) fn type_line(
    out: &mut String,
    name: &str,
    unit: Option<Unit>,
    suffix: Option<&str>,
    kind: &str,
) {
    out.push_str("# TYPE ");
    push_name(out, name, unit, suffix);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One sample line: `name{labels,extra} value` and its line feed.
#[allow(clippy::too_many_arguments)] // one argument per part of the line
pub(crate) fn sample_line(
    out: &mut String,
    name: &str,
    unit: Option<Unit>,
    suffix: Option<&str>,
    labels: &str,
    extra: Option<(&str, &str)>,
    value: Value,
) {
    push_name(out, name, unit, suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some((k, v)) = extra {
            if !labels.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float(v) => push_f64(out, v),
    }
    out.push('\n');
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    /// A count, printed as an integer.
    Int(u64),
    /// A gauge or a sum: as Rust prints an `f64` (`3`, `-0.25`), with
    /// `+Inf`, `-Inf` and `NaN` spelt as the exposition format does.
    Float(f64),
}

/// Appends `v` as [`Value::Float`] says.
pub(crate) fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        for (input, expected) in [
            ("foo_bar", "foo_bar"),
            ("foo1:bar2", "foo1:bar2"),
            ("1foobar", "_foobar"),
            ("a.b-c", "a_b_c"),
            ("*", "_"),
            ("", "_"),
            ("é", "_"),
        ] {
            assert_eq!(sanitize_name(input), expected, "{input:?}");
        }
        for (input, expected) in [(":", "_"), ("1a", "_a"), ("a:b", "a_b"), ("__x", "__x")] {
            assert_eq!(sanitize_label_key(input), expected, "{input:?}");
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let key = metrics::Key::from_parts("m", vec![metrics::Label::new("k", "a\"b\\c\nd")]);
        assert_eq!(label_text(&[], &key), "k=\"a\\\"b\\\\c\\nd\"");
        let mut out = String::new();
        help_line(&mut out, "m", None, None, "say \"hi\"\\\n");
        assert_eq!(out, "# HELP m say \"hi\"\\\\\\n\n");
    }

    #[test]
    fn key_labels_override_global_ones_in_place() {
        let global = vec![("a".to_string(), "1".to_string()), ("b".into(), "2".into())];
        let key = metrics::Key::from_parts(
            "m",
            vec![metrics::Label::new("c", "3"), metrics::Label::new("a", "x")],
        );
        assert_eq!(label_text(&global, &key), "a=\"x\",b=\"2\",c=\"3\"");
    }

    #[test]
    fn units_and_suffixes_are_added_once() {
        let name = |n: &str, unit, suffix| {
            let mut out = String::new();
            push_name(&mut out, n, unit, suffix);
            out
        };
        assert_eq!(name("req", Some(Unit::Seconds), None), "req_seconds");
        assert_eq!(
            name("req_seconds", Some(Unit::Seconds), None),
            "req_seconds"
        );
        assert_eq!(
            name("req", Some(Unit::Bytes), Some("total")),
            "req_bytes_total"
        );
        assert_eq!(
            name("req_total", Some(Unit::Bytes), Some("total")),
            "req_bytes_total"
        );
        assert_eq!(name("up", Some(Unit::Percent), None), "up_ratio");
        assert_eq!(name("n", Some(Unit::Count), Some("total")), "n_total");
        assert_eq!(
            name("lat", Some(Unit::Seconds), Some("bucket")),
            "lat_seconds_bucket"
        );
    }

    #[test]
    fn floats_print_like_rust_with_prometheus_infinities() {
        let s = |v| {
            let mut out = String::new();
            push_f64(&mut out, v);
            out
        };
        assert_eq!(s(3.0), "3");
        assert_eq!(s(-0.25), "-0.25");
        assert_eq!(s(f64::INFINITY), "+Inf");
        assert_eq!(s(f64::NEG_INFINITY), "-Inf");
        assert_eq!(s(f64::NAN), "NaN");
    }
}
