//! Integration tests against the real local Postgres (and Redis, for the
//! service tests). One test binary, so the crate links once; every test
//! makes its own schema and streams, so they run in parallel.

// Test support may panic: a failed set-up fails the test.
#![allow(clippy::unwrap_used)]

mod support;

mod analytics;
mod apply_invariants;
mod apply_property;
mod check_config;
mod consume;
mod decode_fuzz;
mod deploy;
mod faults;
mod malformed;
mod migrate;
mod operate;
mod partition;
mod reorg;
mod tls;
mod watch;
