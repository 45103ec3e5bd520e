//! Admin endpoints: internals beyond health and metrics. They require
//! `Authorization: Bearer $ADMIN_TOKEN` and do not exist (404) when no token
//! is configured.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::service::Status;

pub fn routes(state: Arc<Status>) -> Router<Arc<Status>> {
    Router::new()
        .route("/status", get(status))
        .route("/dead-letters", get(dead_letters))
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

/// Compares tokens in constant time (by comparing their SHA-256 digests).
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn authorize(State(status): State<Arc<Status>>, request: Request, next: Next) -> Response {
    let Some(expected) = status.config.admin_token.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if token_matches(token, expected.expose()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response(),
    }
}

async fn status(State(status): State<Arc<Status>>) -> Json<serde_json::Value> {
    let pool = &status.pool;
    let config: serde_json::Map<String, serde_json::Value> = status
        .config
        .redacted()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    let c = &status.consumer;
    Json(json!({
        "pool": {
            "size": pool.size(),
            "idle": pool.num_idle(),
            "in_use": (pool.size() as usize).saturating_sub(pool.num_idle()),
            "max": status.config.database.pool_size,
        },
        "consumer": {
            "group": status.config.redis.group,
            "name": status.config.redis.consumer,
            "streams": status.config.redis.streams,
            "batches": c.batches.load(Ordering::Relaxed),
            "entries_acked": c.entries_acked.load(Ordering::Relaxed),
            "circuit_open": status.circuit.is_open(),
        },
        "config": config,
    }))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn dead_letters(State(status): State<Arc<Status>>, Query(q): Query<Limit>) -> Response {
    match crate::dead_letter::list(&status.pool, q.limit.unwrap_or(50).clamp(1, 1000)).await {
        Ok(letters) => Json(
            letters
                .into_iter()
                .map(|l| {
                    json!({
                        "id": l.id, "stream": l.stream, "entry_id": l.entry_id,
                        "payload_field": l.payload_field,
                        "payload": String::from_utf8_lossy(&l.payload),
                        "error": l.error, "delivery_count": l.delivery_count,
                        "first_seen": l.first_seen, "last_seen": l.last_seen,
                        "replayed_at": l.replayed_at, "replay_error": l.replay_error,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database error: {e}"),
        )
            .into_response(),
    }
}
