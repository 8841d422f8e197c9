//! Re-running the current test binary as a child process for one test, with
//! the environment that selects what the child does.

use std::process::{Command, ExitStatus};

/// Runs test `name` of this binary alone in a child process with `env` added;
/// returns its exit status and its stdout and stderr together.
pub fn run_test(name: &str, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .expect("re-run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}
