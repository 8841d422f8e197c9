//! `include/cpulocal.h` is what cbindgen generates from `src/` with
//! `cbindgen.toml`: this test generates it and fails when the committed
//! header differs (a changed signature or doc comment not regenerated).
//! `CPULOCAL_BLESS=1 cargo test -p cpulocal-c --test header` rewrites it.

use std::path::Path;

fn generated() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn committed_header_is_what_cbindgen_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/cpulocal.h");
    let want = generated();
    if std::env::var_os("CPULOCAL_BLESS").is_some() {
        std::fs::write(&path, &want).expect("writing include/cpulocal.h");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .map_or(have.lines().count().min(want.lines().count()) + 1, |i| {
                i + 1
            });
        panic!(
            "include/cpulocal.h is stale: it differs from cbindgen's output from line {line} \
             (committed: {:?}, generated: {:?}). Regenerate it with \
             `CPULOCAL_BLESS=1 cargo test -p cpulocal-c --test header` and commit it.",
            have.lines().nth(line - 1).unwrap_or("<end>"),
            want.lines().nth(line - 1).unwrap_or("<end>"),
        );
    }
}

/// Every exported name follows the convention: functions and types start
/// with `cpulocal_`, constants with `CPULOCAL_`.
#[test]
fn every_name_starts_with_cpulocal() {
    let header = generated();
    let mut names = Vec::new();
    for line in header.lines() {
        // Declarations start in column 0; comments and bodies do not.
        if line.starts_with([' ', '/', '*']) || line.is_empty() {
            continue;
        }
        let ident = |s: &str| -> String {
            s.trim_start_matches(['*', ' ', '('])
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(rest) = line.strip_prefix("#define ") {
            let name = ident(rest);
            assert!(
                name.starts_with("CPULOCAL_"),
                "constant {name:?} in: {line}"
            );
            names.push(name);
        } else if let Some(rest) = line.strip_prefix("} ") {
            if rest.trim_start().starts_with("//") {
                continue; // the close of `extern "C" {`
            }
            let name = ident(rest);
            assert!(name.starts_with("cpulocal_"), "type {name:?} in: {line}");
            names.push(name);
        } else if let Some(rest) = line.strip_prefix("typedef ") {
            // `typedef struct cpulocal_x cpulocal_x;`, `typedef R (*name)(...)`,
            // or the opening of `typedef struct {`.
            let name = match rest.find("(*") {
                Some(at) => ident(&rest[at..]),
                None => match rest.trim_end_matches(';').rsplit(' ').next() {
                    Some("{") => continue,
                    Some(last) => ident(last),
                    None => continue,
                },
            };
            assert!(name.starts_with("cpulocal_"), "type {name:?} in: {line}");
            names.push(name);
        } else if let Some(open) = line.find('(') {
            if line.starts_with('#') || line.starts_with("extern") {
                continue;
            }
            let name = ident(line[..open].rsplit([' ', '*']).next().unwrap_or(""));
            assert!(
                name.starts_with("cpulocal_"),
                "function {name:?} in: {line}"
            );
            names.push(name);
        }
    }
    // The names the API promises, among those found.
    for required in [
        "cpulocal_counter",
        "cpulocal_counter_new",
        "cpulocal_counter_free",
        "cpulocal_counter_add",
        "cpulocal_counter_add_on",
        "cpulocal_counter_sum",
        "cpulocal_counter_take",
        "cpulocal_possible_cpus",
        "cpulocal_current_cpu",
        "cpulocal_engine",
        "cpulocal_percpu_addv",
        "cpulocal_domain_run_ops",
        "cpulocal_ring_reserve",
        "cpulocal_ring_commit",
        "cpulocal_ring_consume",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "{required} not declared; found {names:?}"
        );
    }
}

/// The signatures the API promises, verbatim.
#[test]
fn promised_signatures() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/cpulocal.h"))
            .expect("include/cpulocal.h");
    for decl in [
        "cpulocal_counter *cpulocal_counter_new(void);",
        "void cpulocal_counter_free(cpulocal_counter *c);",
        "void cpulocal_counter_add(cpulocal_counter *c, int64_t n);",
        "int cpulocal_counter_add_on(cpulocal_counter *c, unsigned int cpu, int64_t n);",
        "int64_t cpulocal_counter_sum(const cpulocal_counter *c);",
        "int64_t cpulocal_counter_take(cpulocal_counter *c);",
        "unsigned int cpulocal_possible_cpus(void);",
        "int cpulocal_current_cpu(void);",
        "const char *cpulocal_engine(void);",
    ] {
        assert!(
            header.contains(decl),
            "the header does not declare `{decl}`"
        );
    }
}

/// Every function's reference says whether it is async-signal-safe, and
/// every function that takes a pointer says what NULL does.
#[test]
fn every_function_documents_signal_safety_and_null() {
    let header = generated();
    let mut comment = String::new();
    let mut in_comment = false;
    let mut functions = 0;
    for line in header.lines() {
        if line.starts_with("/**") {
            in_comment = true;
            comment.clear();
        }
        if in_comment {
            comment.push_str(line);
            comment.push('\n');
            if line.trim_end().ends_with("*/") {
                in_comment = false;
            }
            continue;
        }
        let declaration = !line.starts_with([' ', '#', '}', '/', '*'])
            && !line.starts_with("typedef")
            && !line.starts_with("extern")
            && line.contains("cpulocal_")
            && line.contains('(');
        if declaration {
            functions += 1;
            let name = line[..line.find('(').unwrap_or(0)]
                .rsplit([' ', '*'])
                .next()
                .unwrap_or(line);
            assert!(
                comment.contains("Async-signal-safe: yes")
                    || comment.contains("Async-signal-safe: no"),
                "{name} does not say whether it is async-signal-safe:\n{comment}"
            );
            let params = &line[line.find('(').unwrap_or(0)..];
            if params.contains('*') || line.contains("cpulocal_engine") {
                assert!(
                    comment.contains("NULL"),
                    "{name} does not say what NULL does:\n{comment}"
                );
            }
        }
    }
    assert!(functions >= 78, "only {functions} functions found");
}
