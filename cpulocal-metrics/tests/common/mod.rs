//! A parser for the text exposition format, strict enough to catch a
//! malformed render.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;

/// A parsed render: every sample by its series (`name{labels}` exactly as
/// written), and every metric's declared type.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of `series`, which must be present.
    pub fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series:?} in {:#?}", self.samples),
        }
    }
}

/// Parses `text`, panicking on anything the format does not allow: a sample
/// before its metric's `# TYPE`, a duplicate series, a bad value, a missing
/// final line feed.
pub fn parse(text: &str) -> Exposition {
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "render must end with a blank line: {text:?}"
    );
    let mut out = Exposition::default();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .expect("TYPE line has a name and a type");
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "unknown type in {line:?}"
            );
            assert!(
                out.types.insert(name.into(), kind.into()).is_none(),
                "second TYPE for {name}"
            );
            current = Some((name.into(), kind.into()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let (family, kind) = current
            .as_ref()
            .unwrap_or_else(|| panic!("sample before TYPE: {line:?}"));
        let ok = match kind.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_string()),
            _ => name == family,
        };
        assert!(ok, "sample {name} under TYPE {family} {kind}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
            }
        }
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        assert!(
            out.samples.insert(series.into(), v).is_none(),
            "duplicate series {series}"
        );
    }
    out
}
