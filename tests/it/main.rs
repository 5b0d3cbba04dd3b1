//! The integration test crate: the real server on port 0, a real tenant backend,
//! real sled data dirs. One crate with modules, so the library links once.

mod cli;
mod per_core;
mod routing;
mod support;
mod wire;
