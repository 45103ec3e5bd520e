//! Test and benchmark support for `writer`, kept out of the service's
//! library and image:
//!
//! - [`workload`]: a seeded, realistic MultiVault chain published the way
//!   rindexer publishes it (tests, benches, `loadgen`);
//! - [`model`]: the invariants of the read model computed in plain Rust,
//!   independently of the writer's SQL, for tests to compare tables with.

pub mod model;
pub mod workload;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use writer::analytics::{Claim, refresh};

/// A connection for publishing load and inspecting streams in tests and
/// benches. The `redis` crate gives up on a response after 500 ms by
/// default; a pipeline of hundreds of XADDs to a server that fsyncs every
/// write (`appendfsync always`, as the fault tests run it) on a busy 2-core
/// machine can take longer, and a publisher that gives up mid-pipeline fails
/// a test for nothing the writer did (CI, stop 29).
pub async fn publisher(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

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
