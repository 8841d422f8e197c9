//! What a C user does first: the README's example compiles with `gcc
//! -Wall -Wextra -Werror` and runs exactly, `install.sh` installs the
//! libraries, the header and a `cpulocal.pc` that a program builds with, and
//! the README shows the example as it is in `examples/counter.c`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{compile, lib, package_dir, require, run, Link, STATIC_LIBS};

fn check_example_output(ran: &common::Ran) {
    ran.assert_success();
    assert!(
        ran.stdout.contains("counted 8000005 of 8000005: exact"),
        "{}",
        ran.dump()
    );
}

#[test]
fn example_runs_exactly() {
    for (name, link) in [
        ("counter-shared", Link::Shared),
        ("counter-static", Link::Static),
    ] {
        let exe = compile(name, &["examples/counter.c"], link, &[]);
        check_example_output(&run(Command::new(exe), Duration::from_secs(120)));
    }
}

#[test]
fn readme_shows_the_example_as_it_is() {
    let readme = std::fs::read_to_string(package_dir().join("README.md")).expect("README.md");
    let example = std::fs::read_to_string(package_dir().join("examples/counter.c"))
        .expect("examples/counter.c");
    assert!(
        readme.contains(&format!("```c\n{example}```")),
        "README.md's C example differs from examples/counter.c: copy the file into it"
    );
}

/// The variables and fields of a pkg-config file, variables expanded.
fn read_pc(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("cpulocal.pc");
    let mut vars: HashMap<String, String> = HashMap::new();
    let expand = |s: &str, vars: &HashMap<String, String>| {
        let mut out = s.to_owned();
        for (k, v) in vars {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    };
    let mut fields = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=').filter(|(k, _)| !k.contains(':')) {
            let v = expand(v.trim(), &vars);
            vars.insert(k.trim().to_owned(), v);
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_owned(), expand(v.trim(), &vars));
        }
    }
    assert!(
        !text.contains('@'),
        "a template variable was left in:\n{text}"
    );
    fields
}

#[test]
fn install_sh_installs_what_a_c_program_builds_with() {
    require("gcc", "gcc");
    let lib = lib();
    let root = lib.out.join("install-test");
    let _ = std::fs::remove_dir_all(&root);
    let prefix = root.join("usr");
    let out = Command::new("sh")
        .arg(package_dir().join("install.sh"))
        .arg(&prefix)
        .env("CPULOCAL_LIB_DIR", &lib.dir)
        .output()
        .expect("running install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let libdir = prefix.join("lib");
    for file in [
        libdir.join("libcpulocal.so"),
        libdir.join("libcpulocal.a"),
        prefix.join("include/cpulocal.h"),
        libdir.join("pkgconfig/cpulocal.pc"),
    ] {
        assert!(file.exists(), "{} not installed", file.display());
    }
    let pc = read_pc(&libdir.join("pkgconfig/cpulocal.pc"));
    assert_eq!(pc["Version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        pc["Cflags"],
        format!("-I{}", prefix.join("include").display())
    );
    assert_eq!(pc["Libs"], format!("-L{} -lcpulocal", libdir.display()));
    assert_eq!(
        pc["Libs.private"],
        STATIC_LIBS.join(" "),
        "the static libraries rustc names"
    );
    // Where pkg-config is installed, it reads the file the same way.
    if let Ok(o) = Command::new("pkg-config")
        .args(["--cflags", "--libs", "cpulocal"])
        .env("PKG_CONFIG_PATH", libdir.join("pkgconfig"))
        .output()
    {
        if o.status.success() {
            let got = String::from_utf8_lossy(&o.stdout);
            assert!(got.contains("-lcpulocal"), "pkg-config says: {got}");
        }
    }

    // The example, built with the installed files only: shared, then static.
    let example = package_dir().join("examples/counter.c");
    let flags = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let shared = root.join("counter-shared");
    let status = Command::new("gcc")
        .args([
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ])
        .args(flags(&pc["Cflags"]))
        .arg(&example)
        .arg("-o")
        .arg(&shared)
        .args(flags(&pc["Libs"]))
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .status()
        .expect("gcc");
    assert!(
        status.success(),
        "the example does not build against the installed library"
    );
    check_example_output(&run(Command::new(&shared), Duration::from_secs(120)));

    let fixed = root.join("counter-static");
    let status = Command::new("gcc")
        .args([
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ])
        .args(flags(&pc["Cflags"]))
        .arg(&example)
        .arg("-o")
        .arg(&fixed)
        .arg(libdir.join("libcpulocal.a"))
        .args(flags(&pc["Libs.private"]))
        .status()
        .expect("gcc");
    assert!(
        status.success(),
        "the example does not build against the installed archive"
    );
    let ldd = Command::new("ldd").arg(&fixed).output().expect("ldd");
    assert!(
        !String::from_utf8_lossy(&ldd.stdout).contains("libcpulocal"),
        "the static build still needs libcpulocal.so"
    );
    check_example_output(&run(Command::new(&fixed), Duration::from_secs(120)));
}
