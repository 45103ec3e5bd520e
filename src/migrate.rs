//! Schema migrations, embedded in the binary.
//!
//! Each migration runs once, in its own transaction, recorded with a checksum
//! in `schema_migrations` inside the configured schema. A session advisory
//! lock serialises concurrent `writer migrate` runs (several replicas
//! starting at once). A migration whose file changed after it was applied is
//! an error, not a silent skip.
//!
//! Every start also checks for drift: the ledger must hold only migrations
//! this binary has, with their checksums (a database migrated by a newer
//! writer is refused, not half-understood), and every contract table and
//! column of [`CONTRACT`] must exist (a column dropped by hand is refused
//! by name, before an insert fails on it). [`check`] reports all of it
//! without changing anything (`writer migrate --check`). ADR 0007 says why
//! this ledger is kept instead of sqlx's `Migrator`.

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool};

use crate::lock;
use crate::schema::Schema;

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
    (
        6,
        "write_path",
        include_str!("../migrations/0006_write_path.sql"),
    ),
    (
        7,
        "block_indexes",
        include_str!("../migrations/0007_block_indexes.sql"),
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
    #[error(
        "the schema does not hold the contract (SPEC §2) this writer writes: {}; restore it (from a backup, or by re-creating the column as its migration does) before starting the writer",
        .0.join("; ")
    )]
    Contract(Vec<String>),
}

/// The columns of every event table: where and when on chain the event was.
const EVENT_COLUMNS: &[&str] = &[
    "transaction_hash",
    "log_index",
    "address",
    "block_hash",
    "block_number",
    "network",
    "transaction_index",
    "block_timestamp",
    "created_at",
];

/// The tables and columns other software reads (SPEC §2: "table and column
/// names are a contract"), plus the operational tables the spec names.
/// Columns come in groups: an event table's are [`EVENT_COLUMNS`] and its
/// own.
#[rustfmt::skip]
pub const CONTRACT: &[(&str, &[&[&str]])] = &[
    ("atom_created_events", &[EVENT_COLUMNS, &[
        "creator", "term_id", "atom_data", "raw_data", "atom_wallet",
    ]]),
    ("triple_created_events", &[EVENT_COLUMNS, &[
        "creator", "term_id", "subject_id", "predicate_id", "object_id", "counter_term_id",
    ]]),
    ("deposited_events", &[EVENT_COLUMNS, &[
        "sender", "receiver", "term_id", "curve_id", "assets", "assets_after_fees", "shares",
        "total_shares", "vault_type",
    ]]),
    ("redeemed_events", &[EVENT_COLUMNS, &[
        "sender", "receiver", "term_id", "curve_id", "shares", "total_shares", "assets", "fees",
        "vault_type",
    ]]),
    ("share_price_changed_events", &[EVENT_COLUMNS, &[
        "term_id", "curve_id", "share_price", "total_assets", "total_shares", "vault_type",
    ]]),
    ("generic_events", &[EVENT_COLUMNS, &["event_name", "event_data"]]),
    ("atom", &[&[
        "term_id", "wallet_id", "creator_id", "data", "raw_data", "type", "emoji", "label",
        "image", "value_id", "resolving_status", "last_event_block", "last_event_log_index",
        "created_at", "updated_at",
    ]]),
    ("triple", &[&[
        "term_id", "creator_id", "subject_id", "predicate_id", "object_id", "counter_term_id",
        "last_event_block", "last_event_log_index", "created_at", "updated_at",
    ]]),
    ("position", &[&[
        "account_id", "term_id", "curve_id", "shares", "total_deposit_assets_after_total_fees",
        "total_redeem_assets_for_receiver", "created_at", "updated_at",
    ]]),
    ("vault", &[&[
        "term_id", "curve_id", "total_shares", "current_share_price", "total_assets", "market_cap",
        "position_count", "vault_type", "created_at", "updated_at",
    ]]),
    ("term", &[&[
        "id", "type", "atom_id", "triple_id", "total_assets", "total_market_cap", "created_at",
        "updated_at",
    ]]),
    ("triple_vault", &[&[
        "term_id", "counter_term_id", "curve_id", "total_shares", "total_assets", "position_count",
        "market_cap", "updated_at",
    ]]),
    ("triple_term", &[&[
        "term_id", "counter_term_id", "total_assets", "total_market_cap", "total_position_count",
        "updated_at",
    ]]),
    ("predicate_object", &[&[
        "predicate_id", "object_id", "triple_count", "total_position_count", "total_market_cap",
        "updated_at",
    ]]),
    ("subject_predicate", &[&[
        "subject_id", "predicate_id", "triple_count", "total_position_count", "total_market_cap",
        "updated_at",
    ]]),
    ("dead_letter", &[]),
    ("reorg_notices", &[]),
];

/// Contract tables and columns missing from `schema`, one phrase each
/// (`table position has no column shares`).
async fn missing_contract(
    conn: &mut sqlx::PgConnection,
    schema: &Schema,
) -> Result<Vec<String>, sqlx::Error> {
    let present: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = $1",
    )
    .bind(schema.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let has = |t: &str, c: Option<&str>| {
        present
            .iter()
            .any(|(table, column)| table == t && c.is_none_or(|c| column == c))
    };
    let mut missing = Vec::new();
    for (table, groups) in CONTRACT {
        if !has(table, None) {
            missing.push(format!("table {table} is missing"));
            continue;
        }
        for column in groups.iter().copied().flatten() {
            if !has(table, Some(column)) {
                missing.push(format!("table {table} has no column {column}"));
            }
        }
    }
    Ok(missing)
}

/// What [`check`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Migrations of this binary not applied yet (`writer migrate` applies them).
    pub pending: Vec<(i64, &'static str)>,
    /// Differences this binary cannot fix: a changed or unknown migration,
    /// a missing contract table or column.
    pub drift: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty() && self.drift.is_empty()
    }
}

/// The ledger: `(version, checksum)` of every applied migration.
async fn ledger(conn: &mut sqlx::PgConnection) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT version, checksum FROM schema_migrations ORDER BY version")
        .fetch_all(conn)
        .await
}

/// Compares `schema` with this binary without changing anything.
pub async fn check(pool: &PgPool, schema: &Schema) -> Result<Report, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let ledger_table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass(format('%I.schema_migrations', $1::text))::text")
            .bind(schema.as_str())
            .fetch_one(&mut *conn)
            .await?;
    let existing = match ledger_table {
        Some(_) => ledger(&mut conn).await?,
        None => Vec::new(),
    };
    let mut report = Report::default();
    for (version, sum) in &existing {
        match MIGRATIONS.iter().find(|(v, _, _)| v == version) {
            Some((_, name, sql)) if checksum(sql) != *sum => report.drift.push(format!(
                "migration {version} ({name}) was applied with different contents"
            )),
            Some(_) => {}
            None => report.drift.push(format!(
                "migration {version} is applied but unknown to this writer (a newer writer migrated this schema)"
            )),
        }
    }
    for (version, name, _) in MIGRATIONS {
        if !existing.iter().any(|(v, _)| v == version) {
            report.pending.push((*version, name));
        }
    }
    // The contract is what the applied migrations must have created.
    if report.pending.is_empty() {
        report
            .drift
            .extend(missing_contract(&mut conn, schema).await?);
    }
    Ok(report)
}

fn checksum(sql: &str) -> String {
    const_hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies pending migrations to `schema`; returns the versions applied.
pub async fn run(pool: &PgPool, schema: &Schema) -> Result<Vec<i64>, MigrateError> {
    let mut conn = pool.acquire().await?;
    let lock_key = lock::key(schema.as_str(), lock::Domain::Migrate, "");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await?;
    let mut result = apply_pending(&mut conn, schema).await;
    if result.is_ok() {
        match missing_contract(&mut conn, schema).await {
            Ok(missing) if missing.is_empty() => {}
            Ok(missing) => result = Err(MigrateError::Contract(missing)),
            Err(e) => result = Err(e.into()),
        }
    }
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
    schema: &Schema,
) -> Result<Vec<i64>, MigrateError> {
    // A `Schema` is a plain identifier: quoting it is safe.
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
    let existing = ledger(&mut *conn).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration a database may have applied never changes: the ledger
    /// would refuse to start against that database ("changed migration").
    /// Add the checksum of a migration here once it is released.
    #[test]
    fn released_migrations_keep_their_checksums() {
        let released = [
            (
                1,
                "260e51d53ab19c170ca5bee1f1ba2c68e671bdaeda135b0ab1b5ca438e5a9f34",
            ),
            (
                2,
                "f4fb27f4186c54e8fdbfc1d488e544c980feb9e3ec74ae7b622f6816b291b25d",
            ),
            (
                3,
                "0e093ca775deb8f64cfaf81b052e325294f243a9370c859a0e3821fc989f5e89",
            ),
            (
                4,
                "91ed108a68f751415b6364c15b2141de702eb108aaa89be3a5c59057918e4e03",
            ),
            (
                5,
                "f0419c32956a12a878bd46a6abb5f329739391ccd1a1a6e99737d860d588d007",
            ),
            (
                6,
                "89c817576ec39ee488a8287d4fb2950ebafcf7d575ac2ee8019a004659ee235f",
            ),
        ];
        for (version, sum) in released {
            let (_, name, sql) = MIGRATIONS
                .iter()
                .find(|(v, _, _)| *v == version)
                .expect("a released migration stays in MIGRATIONS");
            assert_eq!(checksum(sql), sum, "migration {version} ({name}) changed");
        }
    }
}
