//! The integration test crate: the real server on port 0, a real tenant backend,
//! real sled data dirs. One crate with modules, so the library links once.

mod admin;
mod autoreply;
mod cli;
mod delivery;
mod hardening;
mod logs;
mod metrics;
mod ops;
mod per_core;
mod prometheus;
mod routing;
mod security;
mod support;
mod wire;
