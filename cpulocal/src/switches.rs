//! Switches that break the fence protocol on purpose, compiled only with the
//! `testing` feature. They exist to show that the stress tests detect a broken
//! protocol; without the feature every switch is a constant `false`. The
//! public face of the switches is [`crate::testing`]; this module is what the
//! engine reads, below the fence, the registration and everything above them.

#[cfg(feature = "testing")]
pub(crate) mod on {
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    static SKIP_MEMBARRIER: AtomicBool = AtomicBool::new(false);
    static SKIP_FENCE_CHECK: AtomicBool = AtomicBool::new(false);
    static SKIP_UNREGISTER: AtomicBool = AtomicBool::new(false);
    static SKIP_NODE_GUARD: AtomicBool = AtomicBool::new(false);

    /// A way to break the protocol.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Break {
        /// Fenced operations skip step 2 (membarrier): in-flight sections may
        /// commit while the fence holder works.
        SkipMembarrier,
        /// Critical sections skip the fence check (they still check the
        /// CPU): they commit while a fence is held.
        SkipFenceCheck,
        /// Threads that registered cpulocal's own rseq area exit without
        /// unregistering it.
        SkipUnregister,
        /// Operations on node slots ([`Index::Node`](crate::Index::Node))
        /// run as plain loads and stores, without the fence or an atomic
        /// instruction: the CPUs of a node race on their shared slot.
        SkipNodeGuard,
    }

    /// Breaks (`on`) or restores the protocol, process-wide.
    pub fn set(what: Break, on: bool) {
        match what {
            Break::SkipMembarrier => SKIP_MEMBARRIER.store(on, Ordering::SeqCst),
            Break::SkipFenceCheck => SKIP_FENCE_CHECK.store(on, Ordering::SeqCst),
            Break::SkipUnregister => SKIP_UNREGISTER.store(on, Ordering::SeqCst),
            Break::SkipNodeGuard => SKIP_NODE_GUARD.store(on, Ordering::SeqCst),
        }
    }

    pub(crate) fn skip_node_guard() -> bool {
        SKIP_NODE_GUARD.load(Ordering::Relaxed)
    }

    pub(crate) fn skip_unregister() -> bool {
        SKIP_UNREGISTER.load(Ordering::Relaxed)
    }

    /// The value the thread-exit destructor writes into the unregistered area.
    pub const POISON: u32 = 0xdead_beef;

    pub(crate) fn skip_membarrier() -> bool {
        SKIP_MEMBARRIER.load(Ordering::Relaxed)
    }

    pub(crate) fn skip_fence_check() -> bool {
        SKIP_FENCE_CHECK.load(Ordering::Relaxed)
    }

    static UNREGISTER_FAILURES: AtomicUsize = AtomicUsize::new(0);

    /// How many times unregistering cpulocal's own area failed (the kernel
    /// refused the call, as it would a length other than the registered one).
    pub fn unregister_failures() -> usize {
        UNREGISTER_FAILURES.load(Ordering::Relaxed)
    }

    pub(crate) fn unregister_failed() {
        UNREGISTER_FAILURES.fetch_add(1, Ordering::Relaxed);
    }

    /// The environment variable that sizes cpulocal's own areas as if the
    /// kernel's `AT_RSEQ_FEATURE_SIZE` were its value (read once): to
    /// register areas longer than 32 bytes on a kernel that fills no more.
    pub const OWN_FEATURE_SIZE_VAR: &str = "CPULOCAL_TEST_OWN_FEATURE_SIZE";

    pub(crate) fn own_feature_size() -> Option<u64> {
        std::env::var(OWN_FEATURE_SIZE_VAR).ok()?.parse().ok()
    }

    /// The environment variable that makes cpulocal skip keeping its shared
    /// library loaded (read once, when the process first uses cpulocal):
    /// sections then run as if it had been kept, and a `dlclose` unmaps
    /// descriptors that threads' `rseq_cs` still point to.
    pub const SKIP_PIN_VAR: &str = "CPULOCAL_TEST_SKIP_PIN";

    /// Whether [`SKIP_PIN_VAR`] is set.
    pub(crate) fn skip_pin() -> bool {
        std::env::var_os(SKIP_PIN_VAR).is_some()
    }
}

#[cfg(not(feature = "testing"))]
mod on {
    #[inline(always)]
    pub(crate) fn skip_membarrier() -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn skip_fence_check() -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn skip_unregister() -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn skip_node_guard() -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn unregister_failed() {}

    #[inline(always)]
    pub(crate) fn own_feature_size() -> Option<u64> {
        None
    }

    #[inline(always)]
    pub(crate) fn skip_pin() -> bool {
        false
    }
}

pub(crate) use on::*;
