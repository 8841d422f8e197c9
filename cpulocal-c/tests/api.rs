//! Every function of the header from a C program (`tests/c/api.c`, built
//! with `gcc -Wall -Wextra -Werror`): good arguments do what the header says,
//! and each bad one (a CPU out of range, NULL where allowed and where not,
//! bad sizes, modes and orders) gives the documented value, without a crash.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{compile, run, Link};

fn check(link: Link, name: &str) {
    let exe = compile(name, &["tests/c/api.c"], link, &[]);
    let ran = run(Command::new(&exe), Duration::from_secs(60));
    ran.assert_success();
    let summary = ran
        .stdout
        .lines()
        .find(|l| l.starts_with("api: "))
        .unwrap_or_else(|| panic!("no summary line\n{}", ran.dump()));
    assert!(summary.ends_with(", 0 failed"), "{summary}\n{}", ran.dump());
    let checks: u32 = summary["api: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a check count");
    assert!(checks > 300, "only {checks} checks ran");
}

#[test]
fn api_shared() {
    check(Link::Shared, "api-shared");
}

#[test]
fn api_static() {
    check(Link::Static, "api-static");
}
