//! `GET /health`: 200 when healthy or degraded, 503 when starting or
//! unhealthy.
//!
//! - starting: migrations have not run yet, or the consumer has not joined
//!   its groups (503, so no traffic and no "unhealthy" page during a
//!   normal start-up; a start that never finishes says why in `reasons`);
//! - unhealthy: Postgres does not answer, or Redis commands fail;
//! - degraded (still 200, for an operator to see early): circuit breaker
//!   open, analytics worker failing, a stream's lag or the analytics backlog
//!   above its threshold, dead letters in the last five minutes, or stream
//!   entries lost (removed before the group read them) in the last hour.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::consumer::now_ms;
use crate::service::Status;
use crate::stream::GroupInfo;

#[derive(Debug, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub status: &'static str,
    pub postgres_sync_healthy: bool,
    pub redis_consumer_healthy: bool,
    pub analytics_worker_healthy: bool,
    pub circuit_breaker_closed: bool,
    pub last_check: String,
    pub counters: Counters,
    pub streams: BTreeMap<String, GroupInfo>,
    /// Why the status is not `healthy`.
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Counters {
    pub entries_acked: u64,
    pub events_applied: u64,
    pub dead_letters: u64,
    pub batches: u64,
    pub analytics_terms_processed: u64,
    pub analytics_backlog: Option<i64>,
    pub dead_letters_unresolved: Option<i64>,
    pub dead_letters_recent: Option<i64>,
}

/// Counts read from Postgres by the metrics refresher every two seconds;
/// /health reads these instead of counting on every probe (a count over a
/// large table must never make a probe time out). -1: not known yet.
#[derive(Debug)]
pub struct BacklogCache {
    pub analytics_backlog: AtomicI64,
    pub dead_letters_unresolved: AtomicI64,
    pub dead_letters_recent: AtomicI64,
}

impl Default for BacklogCache {
    fn default() -> Self {
        BacklogCache {
            analytics_backlog: AtomicI64::new(-1),
            dead_letters_unresolved: AtomicI64::new(-1),
            dead_letters_recent: AtomicI64::new(-1),
        }
    }
}

impl BacklogCache {
    /// Reads the counts from Postgres into the cache.
    pub async fn refresh(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let (backlog, unresolved, recent): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM analytics_dirty LIMIT 10000000) d),
                    (SELECT count(*) FROM dead_letter WHERE replayed_at IS NULL),
                    (SELECT count(*) FROM dead_letter WHERE last_seen > now() - interval '5 minutes')",
        )
        .fetch_one(pool)
        .await?;
        self.analytics_backlog.store(backlog, Ordering::Relaxed);
        self.dead_letters_unresolved
            .store(unresolved, Ordering::Relaxed);
        self.dead_letters_recent.store(recent, Ordering::Relaxed);
        Ok(())
    }

    fn known(v: &AtomicI64) -> Option<i64> {
        Some(v.load(Ordering::Relaxed)).filter(|v| *v >= 0)
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-22T12:00:00.123Z`. A
/// clock outside the years 1970–9999 reads as the nearest of them.
pub fn rfc3339(t: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, last)).to_string()
}

pub async fn check(status: &Status) -> Health {
    let ping = sqlx::query("SELECT 1").execute(&status.pool);
    let postgres = matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    );
    let cache = &status.backlog;
    let analytics_backlog = BacklogCache::known(&cache.analytics_backlog);
    let dead_letters_recent = BacklogCache::known(&cache.dead_letters_recent);
    let redis = status.consumer.redis_healthy.load(Ordering::Relaxed);
    let worker = &status.analytics;
    // Stalled: work waiting, yet no batch finished for a long while —
    // longer than a catch-up may gather before recomputing (ADR 0013).
    let analytics_config = &status.config.analytics;
    let stall = (analytics_config.sweep_interval.max(Duration::from_secs(6)) * 10)
        .max(analytics_config.catch_up_delay * 2);
    let last_success = worker.last_success_ms.load(Ordering::Relaxed);
    let since_success = Duration::from_millis(now_ms().saturating_sub(last_success));
    let stalled = analytics_backlog.unwrap_or(0) > 0 && last_success > 0 && since_success > stall;
    let analytics = worker.healthy.load(Ordering::Relaxed)
        && worker.running.load(Ordering::Relaxed)
        && !stalled;
    let circuit_closed = !status.circuit.is_open();
    // Each stream's `lost` is read now from the record the loss reasons
    // below come from, not from the watcher's snapshot, which it publishes
    // only after looking at every stream: the two never disagree.
    let streams: BTreeMap<String, GroupInfo> = status
        .consumer
        .streams
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, info)| {
            let lost = status.losses.total(name);
            (
                name.clone(),
                GroupInfo {
                    lost,
                    ..info.clone()
                },
            )
        })
        .collect();

    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();
    if !postgres {
        unhealthy.push("Postgres does not answer".to_owned());
    }
    if !redis {
        unhealthy.push("Redis commands are failing".to_owned());
    }
    if !circuit_closed {
        degraded.push("circuit breaker open: applying is paused while Postgres fails".to_owned());
    }
    if !analytics {
        degraded.push("analytics worker is failing and retrying".to_owned());
    }
    let health = &status.config.health;
    for (name, info) in &streams {
        if info.lag.unwrap_or(0) > health.max_stream_lag {
            degraded.push(format!(
                "stream {name} lags by {} entries",
                info.lag.unwrap_or(0)
            ));
        }
    }
    if let Some(backlog) = analytics_backlog
        && backlog as u64 > health.max_analytics_backlog
    {
        degraded.push(format!("analytics backlog of {backlog} triples"));
    }
    if let Some(recent) = dead_letters_recent
        && recent > 0
    {
        degraded.push(format!("{recent} dead letters in the last 5 minutes"));
    }
    degraded.extend(status.losses.recent_reasons());
    let starting = !status.ready.load(Ordering::Relaxed);
    if starting {
        unhealthy.insert(
            0,
            "starting: waiting for migrations and the consumer groups".to_owned(),
        );
    }
    let status_text = if starting {
        "starting"
    } else if !unhealthy.is_empty() {
        "unhealthy"
    } else if !degraded.is_empty() {
        "degraded"
    } else {
        "healthy"
    };
    unhealthy.extend(degraded);
    let c = &status.consumer;
    Health {
        healthy: status_text == "healthy" || status_text == "degraded",
        status: status_text,
        postgres_sync_healthy: postgres,
        redis_consumer_healthy: redis,
        analytics_worker_healthy: analytics,
        circuit_breaker_closed: circuit_closed,
        last_check: rfc3339(SystemTime::now()),
        counters: Counters {
            entries_acked: c.entries_acked.load(Ordering::Relaxed),
            events_applied: c.events_applied.load(Ordering::Relaxed),
            dead_letters: c.dead_letters.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            analytics_terms_processed: status.analytics.terms_processed.load(Ordering::Relaxed),
            analytics_backlog,
            dead_letters_unresolved: BacklogCache::known(&cache.dead_letters_unresolved),
            dead_letters_recent,
        },
        streams,
        reasons: unhealthy,
    }
}

pub async fn health(State(status): State<Arc<Status>>) -> (StatusCode, Json<Health>) {
    let h = check(&status).await;
    let code = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_348_800_250);
        assert_eq!(rfc3339(t), "2026-11-22T12:00:00.250Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.000Z");
    }
}
