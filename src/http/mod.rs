//! HTTP: `GET /health`, `GET /metrics`, and admin endpoints behind a bearer
//! token (404 when `ADMIN_TOKEN` is unset, so their existence is not even
//! advertised).

mod admin;
mod health;
pub mod metrics;

pub use health::BacklogCache;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::service::Status;

/// Binds `HTTP_HOST:HTTP_PORT` and serves until `shutdown`, then finishes
/// in-flight requests. Returns the server task.
pub async fn serve(
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let handle = metrics::install();
    let refresher = tokio::spawn(metrics::refresh_loop(
        status.clone(),
        handle.clone(),
        shutdown.clone(),
    ));
    let app = Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::render))
        .nest("/admin", admin::routes(status.clone()))
        .with_state(status.clone());
    let listener = tokio::net::TcpListener::bind(status.config.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind HTTP on {}: {e}", status.config.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP listening (/health, /metrics)");
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        let _ = refresher.await;
        Ok(())
    }))
}
