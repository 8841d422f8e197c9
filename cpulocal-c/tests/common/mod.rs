//! What the C tests share: building `libcpulocal.so` / `libcpulocal.a`,
//! compiling C programs against them with gcc, and running them.
//!
//! Cargo does not build a package's `cdylib` and `staticlib` for its
//! integration tests (only an `rlib`, which this crate does not have: its
//! name would collide with the cpulocal crate's). So the first test that
//! needs the library runs `cargo build -p cpulocal-c --lib` in the same
//! target directory and profile as the test itself (cargo releases the
//! directory's lock while tests run), once per test binary.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a test program links the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `-lcpulocal` with an rpath to the shared library.
    Shared,
    /// `libcpulocal.a` and the system libraries it needs.
    Static,
}

/// Where the library, its header and the test programs are.
pub struct Lib {
    /// The directory holding `libcpulocal.so` and `libcpulocal.a`.
    pub dir: PathBuf,
    /// `cpulocal-c/include`.
    pub include: PathBuf,
    /// Where compiled test programs go.
    pub out: PathBuf,
}

/// The system libraries `libcpulocal.a` needs (rustc's
/// `--print native-static-libs` for this target).
pub const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// The package's directory.
pub fn package_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The library, built once per test binary.
pub fn lib() -> &'static Lib {
    static LIB: OnceLock<Lib> = OnceLock::new();
    LIB.get_or_init(build)
}

fn build() -> Lib {
    // <target>/[<triple>/]<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps")
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name")
        .to_owned();
    let above = profile_dir.parent().expect("target directory");
    // Cargo marks the target directory's root with CACHEDIR.TAG; a
    // directory without it is a target triple's, inside the root.
    let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
        (above.to_path_buf(), None)
    } else {
        let triple = above
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned);
        (
            above.parent().expect("target directory").to_path_buf(),
            triple,
        )
    };
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "cpulocal-c",
            "--lib",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(package_dir());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    if let Some(triple) = &triple {
        cargo.args(["--target", triple]);
    }
    let started = Instant::now();
    let out = cargo.output().expect("running cargo to build libcpulocal");
    assert!(
        out.status.success(),
        "`cargo build -p cpulocal-c` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("built libcpulocal ({profile}) in {:.1?}", started.elapsed());
    for file in ["libcpulocal.so", "libcpulocal.a"] {
        assert!(
            profile_dir.join(file).exists(),
            "cargo built no {file} in {}",
            profile_dir.display()
        );
    }
    let out_dir = profile_dir.join("cpulocal-c-tests");
    std::fs::create_dir_all(&out_dir).expect("creating the test programs' directory");
    Lib {
        dir: profile_dir,
        include: package_dir().join("include"),
        out: out_dir,
    }
}

/// Fails, naming the tool, if `tool` cannot be run.
pub fn require(tool: &str, install: &str) {
    match Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{tool} is not installed (or not on PATH): this test needs it. Install it \
             (Debian/Ubuntu: `apt-get install {install}`)."
        ),
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

/// Compiles the C files `sources` (paths relative to the package) into the
/// program `name` with `gcc -Wall -Wextra -Werror`, linked as `link` says;
/// returns its path.
pub fn compile(name: &str, sources: &[&str], link: Link, extra: &[&str]) -> PathBuf {
    require("gcc", "gcc");
    let lib = lib();
    let exe = lib.out.join(name);
    let mut gcc = Command::new("gcc");
    gcc.args([
        "-std=gnu11",
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pthread",
    ])
    .arg("-I")
    .arg(&lib.include)
    .args(extra);
    for s in sources {
        gcc.arg(package_dir().join(s));
    }
    gcc.arg("-o").arg(&exe);
    match link {
        Link::Shared => {
            gcc.arg("-L").arg(&lib.dir).arg("-lcpulocal");
            gcc.arg(format!("-Wl,-rpath,{}", lib.dir.display()));
        }
        Link::Static => {
            gcc.arg(lib.dir.join("libcpulocal.a")).args(STATIC_LIBS);
        }
    }
    let out = gcc.output().expect("running gcc");
    assert!(
        out.status.success(),
        "gcc failed to build {name} ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The output of a finished program.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    /// Everything, for a failure message.
    pub fn dump(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Panics with everything unless the program exited with 0.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(self.status.success(), "the program failed\n{}", self.dump());
    }
}

/// Runs `cmd` to its end, killing it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Ran {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the program") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let ran = Ran {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took: started.elapsed(),
    };
    println!(
        "{cmd:?}: {} in {:.2?}\n--- stdout ---\n{}--- stderr ---\n{}",
        ran.status, ran.took, ran.stdout, ran.stderr
    );
    ran
}
