//! `GET /health`: 200 when healthy or degraded, 503 when unhealthy.
//!
//! - unhealthy: Postgres does not answer, or Redis commands fail;
//! - degraded (still 200, for an operator to see early): circuit breaker
//!   open, analytics worker failing, a stream's lag or the analytics backlog
//!   above its threshold, or dead letters in the last five minutes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

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

/// Counts read from Postgres.
#[derive(Debug, Clone, Copy)]
pub struct BacklogCounts {
    pub analytics_backlog: i64,
    pub dead_letters_unresolved: i64,
    pub dead_letters_recent: i64,
}

pub async fn backlog_counts(pool: &sqlx::PgPool) -> Result<BacklogCounts, sqlx::Error> {
    let (analytics_backlog, dead_letters_unresolved, dead_letters_recent): (i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM analytics_dirty),
                count(*) FILTER (WHERE replayed_at IS NULL),
                count(*) FILTER (WHERE last_seen > now() - interval '5 minutes')
         FROM dead_letter",
        )
        .fetch_one(pool)
        .await?;
    Ok(BacklogCounts {
        analytics_backlog,
        dead_letters_unresolved,
        dead_letters_recent,
    })
}

/// RFC 3339 UTC time, e.g. `2026-11-22T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

pub async fn check(status: &Status) -> Health {
    let counts = tokio::time::timeout(Duration::from_secs(2), backlog_counts(&status.pool)).await;
    let counts = match counts {
        Ok(Ok(c)) => Some(c),
        _ => None,
    };
    let postgres = counts.is_some();
    let redis = status.consumer.redis_healthy.load(Ordering::Relaxed);
    let analytics = status.analytics.healthy.load(Ordering::Relaxed);
    let circuit_closed = !status.circuit.is_open();
    let streams: BTreeMap<String, GroupInfo> = status
        .consumer
        .streams
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
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
    if let Some(c) = counts {
        if c.analytics_backlog as u64 > health.max_analytics_backlog {
            degraded.push(format!(
                "analytics backlog of {} terms",
                c.analytics_backlog
            ));
        }
        if c.dead_letters_recent > 0 {
            degraded.push(format!(
                "{} dead letters in the last 5 minutes",
                c.dead_letters_recent
            ));
        }
    }
    let status_text = if !unhealthy.is_empty() {
        "unhealthy"
    } else if !degraded.is_empty() {
        "degraded"
    } else {
        "healthy"
    };
    unhealthy.extend(degraded);
    let c = &status.consumer;
    Health {
        healthy: status_text != "unhealthy",
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
            analytics_backlog: counts.map(|c| c.analytics_backlog),
            dead_letters_unresolved: counts.map(|c| c.dead_letters_unresolved),
            dead_letters_recent: counts.map(|c| c.dead_letters_recent),
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
    }
}
