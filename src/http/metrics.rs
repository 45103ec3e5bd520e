//! Prometheus metrics via `metrics-exporter-prometheus`.
//!
//! Metric families (all prefixed `writer_`):
//! - `events_applied_total{event_type}`, `events_failed_total{event_type}`,
//!   `events_duplicate_total`
//! - `stage_seconds{stage=decode|apply|commit|ack}` (histogram)
//! - `batch_events` (histogram of events per transaction)
//! - `end_to_end_seconds` (histogram, XADD time → commit)
//! - `stream_lag{stream}`, `stream_pending{stream}`
//! - `db_pool_size`, `db_pool_max`, `db_pool_idle`, `db_pool_in_use`,
//!   `db_acquire_seconds`
//! - `analytics_backlog`, `analytics_batch_seconds`, `analytics_terms_total`,
//!   `analytics_messages_dropped_total`, `analytics_catch_ups_total` (times
//!   the worker deferred while the writers were behind, ADR 0013)
//! - `dead_letters_total`, `dead_letters_unresolved`
//! - `retries_total{stage}`, `circuit_open`
//! - `entries_acked_total`, `entries_reclaimed_total`
//! - `stream_entries_lost_total{stream}` (see `stream_watch`)
//! - `reorgs_total` (notice copies applied), `events_orphaned_total` (events of
//!   an abandoned fork: removed by a notice, not stored when delivered late, or
//!   replaced by the new chain's delivery)

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::service::Status;

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Finer buckets for the end-to-end latency, where percentiles matter.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("writer_end_to_end_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("writer_batch_events".into()),
                        BATCH_BUCKETS,
                    )
                })
                .expect("static, non-empty buckets");
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                // Another recorder is installed (only in tests embedding the
                // service): render from a private one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// HELP lines for the families alerts rely on.
fn describe() {
    metrics::describe_counter!(
        "writer_stream_entries_lost_total",
        "Entries removed from the stream (trimmed, deleted, evicted) before the consumer group read them; counted once per group"
    );
    metrics::describe_counter!(
        "writer_reorgs_total",
        "Chain reorganisation notices applied"
    );
    metrics::describe_counter!(
        "writer_events_orphaned_total",
        "Events removed because a reorganisation abandoned their block"
    );
}

pub async fn render(State(_): State<Arc<Status>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        install().render(),
    )
}

/// Refreshes gauges that come from polling (pool, backlog, dead letters)
/// and runs the exporter's upkeep.
pub async fn refresh_loop(
    status: Arc<Status>,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let pool = &status.pool;
        let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
        metrics::gauge!("writer_db_pool_size").set(size);
        metrics::gauge!("writer_db_pool_idle").set(idle);
        metrics::gauge!("writer_db_pool_in_use").set((size - idle).max(0.0));
        metrics::gauge!("writer_db_pool_max").set(status.config.database.pool_size as f64);
        let refreshed =
            tokio::time::timeout(Duration::from_secs(5), status.backlog.refresh(pool)).await;
        if matches!(refreshed, Ok(Ok(()))) {
            let cache = &status.backlog;
            metrics::gauge!("writer_analytics_backlog")
                .set(cache.analytics_backlog.load(Ordering::Relaxed) as f64);
            metrics::gauge!("writer_dead_letters_unresolved")
                .set(cache.dead_letters_unresolved.load(Ordering::Relaxed) as f64);
        }
        metrics::gauge!("writer_circuit_open").set(if status.circuit.is_open() {
            1.0
        } else {
            0.0
        });
        handle.run_upkeep();
    }
}
