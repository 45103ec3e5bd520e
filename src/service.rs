//! `writer run`: the application, assembled.
//!
//! Builds the pool, applies pending migrations (waiting for Postgres if it
//! is not up yet), then runs the consumer, the analytics worker and the
//! HTTP server until the shutdown token fires. Shutdown order (ADR 0005):
//! stop reading → in-flight batches commit and ACK → analytics worker stops
//! (its backlog is durable as dirty marks) → HTTP drains → pool closes; all
//! within SHUTDOWN_TIMEOUT_MS, after which un-ACKed work is abandoned to be
//! redelivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::analytics::{self, WorkerState};
use crate::apply::{Partitioning, ReadModel};
use crate::config::Config;
use crate::consumer::{Consumer, ConsumerState};
use crate::ingest::Ingest;
use crate::retry::{Backoff, Circuit};
use crate::stream_watch::{Losses, StreamWatch};

/// How the service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Everything in flight was committed and acknowledged.
    Clean,
    /// The shutdown timeout expired first; un-ACKed entries stay pending.
    TimedOut,
}

/// Shared state the HTTP endpoints report on.
#[derive(Debug)]
pub struct Status {
    pub config: Config,
    pub pool: sqlx::PgPool,
    pub circuit: Arc<Circuit>,
    pub consumer: Arc<ConsumerState>,
    pub analytics: Arc<WorkerState>,
    /// Backlog and dead-letter counts, refreshed every two seconds.
    pub backlog: crate::http::BacklogCache,
    /// Set once migrations ran, the schema matched and the consumer groups
    /// were joined: until then /health answers 503 `starting`.
    pub ready: AtomicBool,
    /// Entries found lost from the streams (`stream_watch`).
    pub losses: Arc<Losses>,
}

/// Applies migrations, retrying while Postgres is unreachable; stops when
/// the settings are wrong (a certificate, a password: retrying will not
/// help, and the operator must hear about it once, clearly).
async fn migrate_when_ready(status: &Status, cancel: &CancellationToken) -> anyhow::Result<bool> {
    let mut backoff = Backoff::new(&status.config.retry);
    loop {
        match crate::migrate::run(&status.pool, &status.config.database.schema).await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "applied migrations");
                }
                return Ok(true);
            }
            Err(crate::migrate::MigrateError::Database(e))
                if let Some(problem) = crate::db::misconfiguration(&e, &status.config.database) =>
            {
                anyhow::bail!(problem);
            }
            Err(crate::migrate::MigrateError::Database(e))
                if crate::db::classify(&e) != crate::db::Failure::Permanent =>
            {
                tracing::warn!(error = %e, "Postgres not reachable yet; retrying migrations");
                if !backoff.wait(cancel).await {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Stopped> {
    let pool = crate::db::pool(&config.database)?;
    let status = Arc::new(Status {
        circuit: Arc::new(Circuit::new(config.retry.max_retries)),
        consumer: Arc::new(ConsumerState::default()),
        analytics: Arc::new(WorkerState::default()),
        backlog: Default::default(),
        ready: AtomicBool::new(false),
        losses: Arc::default(),
        pool: pool.clone(),
        config,
    });
    let config = &status.config;
    tracing::info!(
        schema = %config.database.schema,
        database = %crate::config::describe_database_url(config.database.url.expose()),
        redis = %crate::config::describe_redis_url(config.redis.url.expose()),
        postgres_tls = %crate::db::describe_tls(config.database.url.expose()),
        redis_tls = %crate::redis_client::describe_tls(config.redis.url.expose(), &config.redis.tls),
        streams = ?config.redis.streams,
        group = %config.redis.group,
        consumer = %config.redis.consumer,
        "starting writer"
    );

    // Past this deadline, work still in flight is abandoned.
    let abort = CancellationToken::new();
    let deadline = {
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        let timeout = config.shutdown_timeout;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Leave a little of the budget for closing HTTP and the pool.
            let margin = (timeout / 10).min(Duration::from_secs(1));
            tokio::time::sleep(timeout.saturating_sub(margin)).await;
            abort.cancel();
        })
    };

    let http = crate::http::serve(status.clone(), shutdown.clone()).await?;

    // Wrong Redis settings stop the writer here, said once; an unreachable
    // Redis does not (the consumer waits for it).
    if let Err(e) = crate::redis_client::probe(&config.redis).await {
        if let Some(problem) = crate::redis_client::misconfiguration(&e, &config.redis) {
            anyhow::bail!(problem);
        }
        tracing::warn!(error = %e, "Redis not reachable yet; the consumer keeps trying");
    }

    if !migrate_when_ready(&status, &shutdown).await? {
        http.await??;
        return Ok(Stopped::Clean);
    }
    // Postgres answers now. What bounds a sync's speed, said once (ADR 0017).
    match crate::db::ServerSettings::read(&pool).await {
        Ok(settings) => settings.log(),
        // Only a log line is lost; the next statement reports a connection
        // problem if there is one.
        Err(e) => tracing::info!(error = %e, "Postgres settings not read"),
    }

    let read_model = ReadModel::new(pool.clone(), config.database.schema.as_str());
    let (sender, receiver) = analytics::channel(config.analytics.channel_capacity);
    let worker_cancel = CancellationToken::new();
    let worker = tokio::spawn(
        analytics::Worker::new(
            pool.clone(),
            config.database.schema.as_str(),
            config.analytics.clone(),
            config.retry.clone(),
            receiver,
            status.analytics.clone(),
        )
        .run(worker_cancel.clone()),
    );

    let ingest = Ingest {
        read_model,
        max_deliveries: config.redis.max_deliveries,
        retry: config.retry.clone(),
        circuit: status.circuit.clone(),
        split: Partitioning::new(config.partitions),
    };
    let consumer = Consumer::new(
        config.redis.clone(),
        config.workers,
        ingest,
        sender,
        status.consumer.clone(),
        abort.clone(),
    )?;
    let mut watch = StreamWatch::new(
        &config.redis.streams,
        &config.redis.group,
        consumer.connections(),
        status.consumer.clone(),
        status.losses.clone(),
        pool.clone(),
        config.retry.clone(),
    );
    // Losses from while no writer ran are found before reading starts.
    if watch.start(&shutdown).await {
        status.ready.store(true, Ordering::Relaxed);
        tracing::info!("ready: schema current, consumer groups joined");
        let progress = tokio::spawn(crate::progress::run(status.clone(), shutdown.clone()));
        let watching = tokio::spawn(watch.run(shutdown.clone()));
        consumer.run(shutdown.clone()).await;
        let _ = tokio::join!(progress, watching);
    }

    // Reading has stopped and in-flight batches are done (or abandoned).
    worker_cancel.cancel();
    tokio::select! {
        _ = worker => {}
        _ = abort.cancelled() => tracing::warn!("analytics worker still busy at the deadline; its work stays marked dirty"),
    }
    tokio::select! {
        result = http => result??,
        _ = abort.cancelled() => {}
    }
    let stopped = if abort.is_cancelled() {
        Stopped::TimedOut
    } else {
        Stopped::Clean
    };
    deadline.abort();
    pool.close().await;
    tracing::info!(?stopped, "writer stopped");
    Ok(stopped)
}
