//! Schema migrations, embedded in the binary.
//!
//! Each migration runs once, in its own transaction, recorded with a checksum
//! in `schema_migrations` inside the configured schema. A session advisory
//! lock serialises concurrent `writer migrate` runs (several replicas
//! starting at once). A migration whose file changed after it was applied is
//! an error, not a silent skip.

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool};

use crate::lock;

/// `(version, name, sql)`, in order. Only migrations that run live here.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("../migrations/0001_event_log.sql"),
    ),
    (
        2,
        "current_state",
        include_str!("../migrations/0002_current_state.sql"),
    ),
    (
        3,
        "analytics",
        include_str!("../migrations/0003_analytics.sql"),
    ),
    (
        4,
        "operations",
        include_str!("../migrations/0004_operations.sql"),
    ),
    (
        5,
        "stream_positions",
        include_str!("../migrations/0005_stream_positions.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "migration {version} ({name}) was applied with different contents; migrations must never be edited once released"
    )]
    Changed { version: i64, name: &'static str },
    #[error(
        "the database has migration {0}, which this writer does not know; it is older than the schema"
    )]
    Unknown(i64),
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies pending migrations to `schema`; returns the versions applied.
pub async fn run(pool: &PgPool, schema: &str) -> Result<Vec<i64>, MigrateError> {
    assert!(
        crate::config::is_valid_schema(schema),
        "schema validated by config"
    );
    let mut conn = pool.acquire().await?;
    let lock_key = lock::key(schema, lock::Domain::Migrate, "");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await?;
    let result = apply_pending(&mut conn, schema).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(
    conn: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<Vec<i64>, MigrateError> {
    // The schema name is a validated identifier, quoted.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
    )))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT PRIMARY KEY,
            name       TEXT        NOT NULL,
            checksum   TEXT        NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *conn)
    .await?;
    let existing: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, checksum FROM schema_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    for (version, sum) in &existing {
        match MIGRATIONS.iter().find(|(v, _, _)| v == version) {
            Some((_, name, sql)) if checksum(sql) != *sum => {
                return Err(MigrateError::Changed {
                    version: *version,
                    name,
                });
            }
            Some(_) => {}
            None => return Err(MigrateError::Unknown(*version)),
        }
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if existing.iter().any(|(v, _)| v == version) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
            .bind(checksum(sql))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        applied.push(*version);
    }
    Ok(applied)
}
