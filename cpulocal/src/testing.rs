//! Switches that break the fence protocol on purpose, compiled only with the
//! `testing` feature. They exist to show that the stress tests detect a broken
//! protocol; without the feature every switch is a constant `false`.

#[cfg(feature = "testing")]
mod switches {
    use core::sync::atomic::{AtomicBool, Ordering};

    static SKIP_MEMBARRIER: AtomicBool = AtomicBool::new(false);
    static SKIP_FENCE_CHECK: AtomicBool = AtomicBool::new(false);

    /// A way to break the protocol.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Break {
        /// Fenced operations skip step 2 (membarrier): in-flight sections may
        /// commit while the fence holder works.
        SkipMembarrier,
        /// Sections skip the fence check: they commit while a fence is held.
        SkipFenceCheck,
    }

    /// Breaks (`on`) or restores the protocol, process-wide.
    pub fn set(what: Break, on: bool) {
        match what {
            Break::SkipMembarrier => SKIP_MEMBARRIER.store(on, Ordering::SeqCst),
            Break::SkipFenceCheck => SKIP_FENCE_CHECK.store(on, Ordering::SeqCst),
        }
    }

    pub(crate) fn skip_membarrier() -> bool {
        SKIP_MEMBARRIER.load(Ordering::Relaxed)
    }

    pub(crate) fn skip_fence_check() -> bool {
        SKIP_FENCE_CHECK.load(Ordering::Relaxed)
    }
}

#[cfg(not(feature = "testing"))]
mod switches {
    #[inline(always)]
    pub(crate) fn skip_membarrier() -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn skip_fence_check() -> bool {
        false
    }
}

#[cfg(feature = "testing")]
pub use switches::*;
#[cfg(not(feature = "testing"))]
pub(crate) use switches::*;
