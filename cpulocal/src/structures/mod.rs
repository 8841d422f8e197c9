//! The data structures, each a client of the slot array
//! ([`Slots`](crate::shape::driver::Slots)): the counter, per-CPU values, the
//! list, the buffers, the lock, the ring, and [`domain`], the shapes on
//! memory the caller owns.

pub(crate) mod buffer;
pub(crate) mod counter;
pub(crate) mod domain;
pub(crate) mod list;
pub(crate) mod lock;
pub(crate) mod memcpy_buffer;
pub(crate) mod percpu;
pub(crate) mod ring;
