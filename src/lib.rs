//! cutover: a reconciling controller for plain Docker.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and the invariants they keep.
#![forbid(unsafe_code)]

pub mod docker;
pub mod health;
pub mod observed;
pub mod plan;
pub mod revision;
pub mod spec;
pub mod status;
