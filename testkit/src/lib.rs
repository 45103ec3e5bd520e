//! Test and benchmark support for `writer`, kept out of the service's
//! library and image:
//!
//! - [`workload`]: a seeded, realistic MultiVault chain published the way
//!   rindexer publishes it (tests, benches, `loadgen`);
//! - [`model`]: the invariants of the read model computed in plain Rust,
//!   independently of the writer's SQL, for tests to compare tables with.

pub mod model;
pub mod workload;

use writer::analytics::{Claim, refresh};

/// Runs the analytics worker's normal pass (no pruning) until no dirty mark
/// is left; returns how many triples it recomputed.
pub async fn drain_analytics(pool: &sqlx::PgPool, schema: &str) -> Result<usize, sqlx::Error> {
    let mut triples = 0;
    loop {
        let claim = Claim::After {
            after: "",
            limit: 2_000,
        };
        match refresh(pool, schema, claim, &[], false).await?.triples {
            0 => return Ok(triples),
            n => triples += n,
        }
    }
}
