//! The fenced engine, the user-space equivalent of `cpu_opv`: the fence word
//! beside every slot and the path that holds it ([`fence`]), and operation
//! vectors, several operations run on one slot under its fence ([`opv`]).

pub(crate) mod fence;
pub mod opv;
