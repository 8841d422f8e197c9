//! Operation vectors against the model: the fuzz input's first byte picks the
//! entry point (odd: `PerCpu::run_ops` on a `PerCpu<[u64; 512]>`, even:
//! `Domain::run_ops` on a 16 KiB buffer), the rest is decoded into a vector
//! by `tests/opv_model` (shared with the proptest in `tests/opv.rs`), and
//! `check` panics when the library and the model disagree on the result or on
//! any byte, or when a refused vector wrote anything.
//!
//! Run from `cpulocal/`: `cargo +nightly fuzz run opvector -- -max_total_time=60`.
#![no_main]

use std::sync::OnceLock;

use cpulocal::{Domain, Index, PerCpu};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/opv_model/mod.rs"]
mod opv_model;

use opv_model::Slot;

static DOMAIN: OnceLock<Domain> = OnceLock::new();
static SLOTS: OnceLock<PerCpu<Slot>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let domain = DOMAIN.get_or_init(|| Domain::new(Index::Cpu));
    let slots = SLOTS.get_or_init(|| PerCpu::new(|_| [0; 512]));
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    opv_model::check(&opv_model::decode(rest, mode & 1 == 1), domain, slots);
});
