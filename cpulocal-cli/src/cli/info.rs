//! `cpulocal info`: the status of the engine, as text or JSON.

use std::fmt::Write as _;
use std::io::{self, Write};

use cpulocal::{Engine, Registration, RseqOff, SliceExtension, Status};

/// The status as `cpulocal::status()` displays it; under a heading and
/// indented when `heading` is set (the default command).
pub fn print_text(out: &mut impl Write, heading: bool) -> io::Result<()> {
    let status = cpulocal::status();
    if !heading {
        return writeln!(out, "{status}");
    }
    writeln!(out, "cpulocal status")?;
    for line in status.to_string().lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// The status as one JSON object (keys documented on `Command::Info`).
pub fn print_json(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", to_json(&cpulocal::status()))
}

/// A JSON value written by hand: the status is flat, so a dependency for this
/// would buy nothing.
enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Int(i64),
    Str(String),
}

impl From<bool> for Json {
    fn from(b: bool) -> Self {
        Json::Bool(b)
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Self {
        Json::Str(s.to_owned())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Self {
        Json::Str(s)
    }
}

impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Self {
        v.map_or(Json::Null, Into::into)
    }
}

fn num(n: impl Into<u64>) -> Json {
    Json::Num(n.into())
}

fn write_str(s: &str, to: &mut String) {
    to.push('"');
    for c in s.chars() {
        match c {
            '"' => to.push_str("\\\""),
            '\\' => to.push_str("\\\\"),
            '\n' => to.push_str("\\n"),
            '\r' => to.push_str("\\r"),
            '\t' => to.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(to, "\\u{:04x}", u32::from(c));
            }
            c => to.push(c),
        }
    }
    to.push('"');
}

/// The status as a pretty-printed JSON object.
fn to_json(s: &Status) -> String {
    let registration = match s.registration {
        Registration::Glibc => "glibc",
        Registration::Cpulocal => "cpulocal",
        Registration::Nobody(_) => "nobody",
        _ => "other",
    };
    let (rseq_off_tag, rseq_off_errno) = match s.fenced_because {
        None => (None, None),
        Some(RseqOff::NoArchSupport) => (Some("no_arch_support"), None),
        Some(RseqOff::Refused(e)) => (Some("refused"), Some(e.0)),
        Some(RseqOff::NoMembarrier(e)) => (Some("no_membarrier"), Some(e.0)),
        Some(RseqOff::GlibcFailedForThread) => (Some("glibc_failed_for_thread"), None),
        Some(RseqOff::ForeignRegistration) => (Some("foreign_registration"), None),
        Some(RseqOff::ThreadExiting) => (Some("thread_exiting"), None),
        Some(RseqOff::Disabled) => (Some("disabled"), None),
        Some(RseqOff::CannotPinLibrary) => (Some("cannot_pin_library"), None),
        Some(_) => (Some("other"), None),
    };
    let (engine, fenced_membarrier) = match s.engine {
        Engine::Rseq => ("rseq", None),
        Engine::Fenced { membarrier } => ("fenced", Some(membarrier)),
        _ => ("other", None),
    };
    let errno = |e: Option<i32>| e.map_or(Json::Null, |e| Json::Int(e.into()));
    let slice = match s.slice_extension {
        SliceExtension::On => "on",
        SliceExtension::NotEnabled => "not_enabled",
        SliceExtension::LegacyArea => "legacy_area",
        SliceExtension::Unsupported => "unsupported",
        SliceExtension::NoRseq => "no_rseq",
        _ => "other",
    };
    let fields: [(&str, Json); 21] = [
        ("registration", registration.into()),
        ("registration_text", s.registration.to_string().into()),
        ("rseq_off", rseq_off_tag.into()),
        ("rseq_off_errno", errno(rseq_off_errno)),
        ("engine", engine.into()),
        ("engine_text", s.engine.to_string().into()),
        ("fenced_membarrier", fenced_membarrier.into()),
        ("feature_size", s.feature_size.map(num).into()),
        ("node_id_valid", s.node_id_valid.into()),
        ("mm_cid_valid", s.mm_cid_valid.into()),
        ("mm_cid_indexing", s.mm_cid_indexing.into()),
        (
            "membarrier_rseq",
            match s.membarrier_rseq {
                Ok(()) => "registered",
                Err(_) => "unavailable",
            }
            .into(),
        ),
        (
            "membarrier_rseq_errno",
            errno(s.membarrier_rseq.err().map(|e| e.0)),
        ),
        ("glibc_rseq_size", s.glibc_rseq_size.map(num).into()),
        (
            "rseq_area_len",
            s.rseq_area_len.map(|n| num(u64::from(n))).into(),
        ),
        ("slice_extension", slice.into()),
        ("slice_extensions_granted", num(s.slice_extensions_granted)),
        ("slice_extensions_yielded", num(s.slice_extensions_yielded)),
        ("possible_cpus", num(s.possible_cpus as u64)),
        ("possible_nodes", num(s.possible_nodes as u64)),
        ("cpu", num(s.cpu as u64)),
    ];
    let count = fields.len();
    let mut json = String::from("{\n");
    for (i, (key, value)) in fields.into_iter().enumerate() {
        json.push_str("  ");
        write_str(key, &mut json);
        json.push_str(": ");
        match value {
            Json::Null => json.push_str("null"),
            Json::Bool(b) => json.push_str(if b { "true" } else { "false" }),
            Json::Num(n) => json.push_str(&n.to_string()),
            Json::Int(n) => json.push_str(&n.to_string()),
            Json::Str(v) => write_str(&v, &mut json),
        }
        json.push_str(if i + 1 < count { ",\n" } else { "\n" });
    }
    json.push('}');
    json
}
