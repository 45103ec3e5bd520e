//! The dead-letter table: entries that could not be applied, with why.
//!
//! Written before the entry is ACKed, so nothing is lost: the raw payload is
//! kept byte for byte (also when it is not UTF-8) and can be replayed
//! through the normal path once the cause is fixed.

use sqlx::PgPool;

/// A dead letter about to be recorded.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    /// The field the payload came from; None when the entry had no JSON
    /// field and `payload` holds all its fields.
    pub payload_field: Option<&'a str>,
    pub payload: Vec<u8>,
    pub error: String,
    pub delivery_count: i32,
}

/// A stored dead letter (the columns of [`COLUMNS`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub stream: String,
    pub entry_id: String,
    pub payload_field: Option<String>,
    pub payload: Vec<u8>,
    pub error: String,
    pub delivery_count: i32,
    pub first_seen: String,
    pub last_seen: String,
    pub replayed_at: Option<String>,
    pub replay_error: Option<String>,
}

/// Records dead letters in one statement. A letter for an entry already
/// recorded updates its error, delivery count and last-seen time.
pub async fn record(pool: &PgPool, letters: &[NewDeadLetter<'_>]) -> Result<(), sqlx::Error> {
    if letters.is_empty() {
        return Ok(());
    }
    let streams: Vec<&str> = letters.iter().map(|l| l.stream).collect();
    let entry_ids: Vec<&str> = letters.iter().map(|l| l.entry_id).collect();
    let fields: Vec<Option<&str>> = letters.iter().map(|l| l.payload_field).collect();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let counts: Vec<i32> = letters.iter().map(|l| l.delivery_count).collect();
    sqlx::query(
        "INSERT INTO dead_letter AS d (stream, entry_id, payload_field, payload, error, delivery_count)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::int4[])
         ON CONFLICT (stream, entry_id) DO UPDATE SET
             error = EXCLUDED.error,
             delivery_count = greatest(d.delivery_count, EXCLUDED.delivery_count),
             last_seen = now()",
    )
    .bind(&streams)
    .bind(&entry_ids)
    .bind(&fields)
    .bind(&payloads)
    .bind(&errors)
    .bind(&counts)
    .execute(pool)
    .await?;
    metrics::counter!("writer_dead_letters_total").increment(letters.len() as u64);
    Ok(())
}

const COLUMNS: &str = "id, stream, entry_id, payload_field, payload, error, delivery_count, first_seen::text AS first_seen, last_seen::text AS last_seen, replayed_at::text AS replayed_at, replay_error";

/// The newest dead letters first.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM dead_letter ORDER BY id DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The dead letters to replay: the given ids, or all not yet replayed
/// successfully, oldest first.
pub async fn for_replay(pool: &PgPool, ids: &[i64]) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM dead_letter
         WHERE CASE WHEN cardinality($1::int8[]) > 0 THEN id = ANY($1::int8[])
                    ELSE replayed_at IS NULL END
         ORDER BY id"
    )))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Records the result of a replay: success stamps `replayed_at`; a failure
/// keeps the letter pending with the new reason.
pub async fn mark_replayed(pool: &PgPool, id: i64, error: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dead_letter SET
             replayed_at = CASE WHEN $2::text IS NULL THEN now() ELSE replayed_at END,
             replay_error = $2
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
