//! Test and benchmark support for `writer`, kept out of the service's
//! library and image:
//!
//! - [`workload`]: a seeded, realistic MultiVault chain published the way
//!   rindexer publishes it (tests, benches, `loadgen`);
//! - [`model`]: the invariants of the read model computed in plain Rust,
//!   independently of the writer's SQL, for tests to compare tables with.

pub mod model;
pub mod workload;
