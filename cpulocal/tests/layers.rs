//! The library's modules form layers: each imports only from the layers
//! below it, so nothing imports upward and no cycle spans two layers.
//!
//! The test reads `src/`, finds every module's references to other modules
//! of the crate (`crate::` and `super::` paths, `use crate::{...}` groups,
//! paths into the module's own children, `#[path]` aliases included, and
//! the crate-root re-exports such as `crate::Index`, resolved to the module
//! that defines the item), leaving out comments and test-only code, and
//! checks each against [`LAYERS`]. A new module must be placed in a layer
//! here; an import that goes up (or sideways, between two modules of one
//! layer) fails with the module, the module it imports and both layers named.
//!
//! Two references are allowed although they are not downward, both inside
//! one folder, and they are the only cycles: a module may use its parent's
//! items (the parent module holds the type whose `impl` blocks its children
//! split between them, as the ring's do), and the files of one layer in one
//! folder may use each other (the critical sections of `rseq/arch/`, which
//! share one macro and its exits). Between folders, and between layers,
//! there is no cycle. `ARCHITECTURE.md` describes the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may import modules of lower layers
/// only.
const LAYERS: &[(&str, &[&str])] = &[
    ("the rseq ABI", &["rseq::abi"]),
    ("system calls and machine facts", &["rseq::sys"]),
    (
        "plain types and switches",
        &["error", "index", "stats", "inject", "switches"],
    ),
    ("time-slice extension", &["rseq::slice"]),
    ("registration", &["rseq::registration"]),
    ("the fence", &["fenced::fence"]),
    ("the shapes' meanings", &["shape"]),
    (
        "critical sections",
        &[
            "rseq::arch::rseq",
            "rseq::arch::x86_64",
            "rseq::arch::aarch64",
            "rseq::arch::riscv64",
            "rseq::arch::generic",
        ],
    ),
    ("the sections' entry", &["rseq::arch"]),
    (
        "the driver: slot arrays and the slow path",
        &["shape::driver"],
    ),
    ("operation vectors", &["fenced::opv"]),
    (
        "the ring's records and slots",
        &["structures::ring::record", "structures::ring::slots"],
    ),
    ("the ring's configuration", &["structures::ring::config"]),
    ("the ring's consumer", &["structures::ring::consumer"]),
    ("the ring's producer", &["structures::ring::producer"]),
    (
        "structures",
        &[
            "structures::counter",
            "structures::percpu",
            "structures::list",
            "structures::buffer",
            "structures::memcpy_buffer",
            "structures::lock",
            "structures::ring",
            "structures::domain",
        ],
    ),
    ("the public face", &["status", "testing"]),
];

/// Modules that only declare others (`mod` and `pub use` lines), the crate
/// root among them, and test-only modules: not checked.
const NOT_CHECKED: &[&str] = &["crate", "rseq", "fenced", "structures", "shape::tests"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, by module path (`rseq::abi`, `shape`, ...).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = if parts == ["lib"] {
                "crate".to_owned()
            } else {
                parts.join("::")
            };
            (name, path)
        })
        .collect()
}

/// The code of a file without comments and without its test module (an
/// inline `#[cfg(test)] mod tests { ... }`, which comes last in a file).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read a source file");
    let mut out = String::new();
    for line in text.lines() {
        let code = match line.find("//") {
            // Not inside a string literal: good enough for this crate, whose
            // strings hold no `//` before code that imports anything.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    let compact: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
    match compact.find("#[cfg(test)] mod tests {") {
        Some(i) => compact[..i].to_owned(),
        None => compact,
    }
}

/// The crate root's re-exports: item name -> the module that defines it.
fn reexports(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    let root = code(&modules["crate"]);
    let mut map = BTreeMap::new();
    for stmt in root.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let (path, items) = match rest.split_once("::{") {
            Some((p, items)) => (p, items.trim_end_matches('}').to_owned()),
            None => match rest.rsplit_once("::") {
                Some((p, item)) => (p, item.to_owned()),
                None => continue,
            },
        };
        for item in items.split(',') {
            let item = item.trim();
            if !item.is_empty() && modules.contains_key(path) {
                map.insert(item.to_owned(), path.to_owned());
            }
        }
    }
    map
}

/// The module a `crate::` path refers to: the longest module prefix of the
/// path, or the module a root re-export comes from.
fn target(
    path: &str,
    modules: &BTreeMap<String, PathBuf>,
    reexports: &BTreeMap<String, String>,
) -> Option<String> {
    let parts: Vec<&str> = path.split("::").map(str::trim).collect();
    if let Some(m) = reexports.get(parts[0]) {
        return Some(m.clone());
    }
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// The crate's modules each module refers to.
fn imports(
    module: &str,
    modules: &BTreeMap<String, PathBuf>,
    reexports: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let code = code(&modules[module]);
    let mut paths = Vec::new();
    // `use crate::{a, b::c, d::{e, f}};`: each top-level item.
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use crate::{") {
        rest = &rest[i + "use crate::{".len()..];
        let (mut depth, mut item, mut end) = (0, String::new(), rest.len());
        for (j, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = j;
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    paths.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        paths.push(item);
        rest = &rest[end..];
    }
    // `super::a::b`: relative to the module's parent (a `mod.rs` file's
    // module is the parent's name itself, so its `super` is one up).
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    for (i, _) in code.match_indices("super::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // part of a longer path
        }
        let tail = &code[i + "super::".len()..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches("::");
        if path.is_empty() || path == "*" {
            continue;
        }
        let full = if parent.is_empty() {
            path.to_owned()
        } else {
            format!("{parent}::{path}")
        };
        // A name of the parent module itself (`super::PerCpuRing`) resolves
        // to the parent.
        paths.push(if modules.contains_key(&full) || parent.is_empty() {
            full
        } else {
            let first = path.split("::").next().unwrap_or(path);
            if modules.contains_key(&format!("{parent}::{first}")) {
                full
            } else {
                parent.to_owned()
            }
        });
    }
    // `child::a` and `self::child::a`: the module's own children, by file
    // name or by the name a `#[path = "file.rs"] mod name;` gives one.
    let prefix = format!("{module}::");
    let mut children: Vec<(String, String)> = modules
        .keys()
        .filter_map(|m| m.strip_prefix(&prefix))
        .filter(|c| !c.contains("::"))
        .map(|c| (c.to_owned(), format!("{prefix}{c}")))
        .collect();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[path = \"") {
        rest = &rest[i + "#[path = \"".len()..];
        let file = rest.split('"').next().unwrap_or("").trim_end_matches(".rs");
        let after = rest.split_once(']').map_or("", |(_, a)| a);
        // Other attributes may stand between the path and the `mod`.
        let alias = after
            .split(" mod ")
            .nth(1)
            .and_then(|a| a.split(';').next())
            .map(str::trim);
        if let Some(alias) = alias.filter(|a| !a.is_empty()) {
            children.push((alias.to_owned(), format!("{prefix}{file}")));
        }
    }
    for (name, child) in &children {
        for (i, _) in code.match_indices(&format!("{name}::")) {
            let before = &code[..i];
            let own = !before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
                && (!before.ends_with("::") || before.ends_with(" self::"));
            if own {
                paths.push(child.clone());
            }
        }
    }
    // Every other `crate::a::b` path.
    for (i, _) in code.match_indices("crate::") {
        let tail = &code[i + "crate::".len()..];
        if tail.starts_with('{') {
            continue;
        }
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        paths.push(tail[..end].to_owned());
    }
    paths
        .iter()
        .map(|p| p.trim().trim_end_matches("::"))
        .filter(|p| !p.is_empty() && *p != "self")
        .filter_map(|p| target(p, modules, reexports))
        .filter(|m| m != module && m != "crate")
        .collect()
}

#[test]
fn every_module_is_in_a_layer() {
    let placed: BTreeSet<&str> = LAYERS
        .iter()
        .flat_map(|(_, ms)| ms.iter().copied())
        .collect();
    let missing: Vec<String> = modules()
        .into_keys()
        .filter(|m| !placed.contains(m.as_str()) && !NOT_CHECKED.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "modules in no layer of tests/layers.rs: {missing:?}"
    );
    for m in placed {
        assert!(
            modules().contains_key(m),
            "tests/layers.rs names {m}, which does not exist"
        );
    }
}

#[test]
fn imports_only_go_down() {
    let modules = modules();
    let reexports = reexports(&modules);
    assert!(
        reexports.get("Index").is_some_and(|m| m == "index"),
        "the crate root's re-exports were not understood: {reexports:?}"
    );
    let rank: BTreeMap<&str, (usize, &str)> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (name, ms))| ms.iter().map(move |m| (*m, (i, *name))))
        .collect();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for module in modules.keys() {
        let Some(&(r, layer)) = rank.get(module.as_str()) else {
            continue;
        };
        let parent_of = |m: &str| m.rsplit_once("::").map(|(p, _)| p.to_owned());
        for dep in imports(module, &modules, &reexports) {
            checked += 1;
            let uses_its_parent = parent_of(module).as_deref() == Some(dep.as_str());
            if uses_its_parent {
                continue;
            }
            let Some(&(d, dep_layer)) = rank.get(dep.as_str()) else {
                wrong.push(format!("{module} imports {dep}, which is in no layer"));
                continue;
            };
            let same_folder_same_layer = d == r && parent_of(module) == parent_of(&dep);
            if d >= r && !same_folder_same_layer {
                wrong.push(format!(
                    "{module} ({layer}) imports {dep} ({dep_layer}): not a lower layer"
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: the parser is broken"
    );
    assert!(
        wrong.is_empty(),
        "imports that do not go down:\n{}",
        wrong.join("\n")
    );
}

/// The check can fail: an import from a lower layer to a higher one, and
/// one between two modules of the same layer, are reported.
#[test]
fn an_upward_import_is_reported() {
    let modules = modules();
    let reexports = reexports(&modules);
    // `shape` really imports the fence (a lower layer) ...
    assert!(imports("shape", &modules, &reexports).contains("fenced::fence"));
    // ... and the parser resolves root re-exports and groups as they are
    // written in the crate.
    assert_eq!(
        target("PerCpuCounter", &modules, &reexports).as_deref(),
        Some("structures::counter")
    );
    assert_eq!(
        target("rseq::arch::section", &modules, &reexports).as_deref(),
        Some("rseq::arch")
    );
    // `super::` paths are seen: the ring's producer uses its parent's
    // `PerCpuRing` and, one layer down, the consumer's walk.
    let producer = imports("structures::ring::producer", &modules, &reexports);
    assert!(producer.contains("structures::ring"), "{producer:?}");
    assert!(
        producer.contains("structures::ring::consumer"),
        "{producer:?}"
    );
    // So are paths into a module's own children: the ring's `use
    // consumer::ConsumerState;`, and the sections' file chosen by
    // `#[path = "x86_64.rs"] mod imp;`.
    let ring = imports("structures::ring", &modules, &reexports);
    for child in ["config", "consumer", "record", "slots"] {
        assert!(
            ring.contains(&format!("structures::ring::{child}")),
            "{ring:?}"
        );
    }
    let arch = imports("rseq::arch", &modules, &reexports);
    assert!(arch.contains("rseq::arch::rseq"), "{arch:?}");
    assert!(arch.contains("rseq::arch::generic"), "{arch:?}");
}
