//! cutover: a reconciling controller for plain Docker.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and the invariants they keep.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod consul;
pub mod controller;
pub mod leader;

pub mod docker;
pub mod fleet;
pub mod haproxy;
pub mod health;
pub mod history;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod observed;
pub mod plan;
pub mod proxy_agent;
pub mod queue;
pub mod revision;
pub mod security;
pub mod spec;
pub mod status;
pub mod store;
pub mod traffic;
