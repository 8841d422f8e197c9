//! Switches that break the fence protocol on purpose, for tests only (the
//! `testing` feature): they exist to show that the stress tests detect a
//! broken protocol. Never enable the feature outside tests.

pub use crate::switches::on::{
    set, unregister_failures, Break, OWN_FEATURE_SIZE_VAR, POISON, SKIP_PIN_VAR,
};

/// What cpulocal's own rseq area of the calling thread holds in
/// `(cpu_id_start, cpu_id)`. After the thread-exit destructor has
/// unregistered it, both are [`POISON`] until something writes them,
/// which only the kernel would, were the area still registered.
pub fn own_area_cpu_ids() -> (u32, u32) {
    crate::rseq::registration::own_area_cpu_ids()
}
