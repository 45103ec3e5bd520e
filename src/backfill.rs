//! `writer backfill --from-term <TERM_ID>`: rebuilds the cascade and the
//! analytics of every term ≥ TERM_ID, in id order, in batches.
//!
//! Per batch, two transactions: the cascade (atoms, triples, positions,
//! vaults from their events; term rows; under the same term locks `writer
//! run` takes, so it is safe alongside a running service), then the
//! analytics of the batch's triples (under the analytics locks, clearing
//! the dirty marks it can claim); then the progress row records the batch.
//! An interrupted backfill resumes after the last recorded batch when run
//! again with the same `--from-term` (redoing a batch is harmless).

use std::time::Instant;

use sqlx::PgPool;

use crate::apply::{atom, begin_reorg_locked, lock_terms, position, term, triple, vault};

/// Validates and normalises a `--from-term` bound: 1–64 hex digits, with or
/// without `0x` (as ids are accepted everywhere else), left-padded to 64 so
/// that comparing it with ids (equal-length lowercase hex, byte order)
/// compares the numbers: `0x1` is 1, not a prefix.
pub fn parse_from_term(text: &str) -> Result<String, String> {
    let digits = crate::decode::value::strip_0x(text);
    if digits.is_empty() || digits.len() > 64 || !const_hex::check_raw(digits) {
        return Err(format!(
            "`{text}` must be 1 to 64 hex digits, with or without 0x"
        ));
    }
    Ok(format!("0x{:0>64}", digits.to_ascii_lowercase()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub terms: u64,
    pub batches: u64,
}

/// Runs (or resumes) a backfill; `progress` receives one line per batch.
pub async fn run(
    pool: &PgPool,
    schema: &str,
    from_term: &str,
    batch_size: usize,
    restart: bool,
    mut progress: impl FnMut(&str),
) -> Result<Summary, sqlx::Error> {
    let (last, done): (Option<String>, i64) = sqlx::query_as(
        "INSERT INTO backfill_progress AS b (from_term) VALUES ($1)
         ON CONFLICT (from_term) DO UPDATE SET
             last_term = CASE WHEN $2 OR b.finished_at IS NOT NULL THEN NULL ELSE b.last_term END,
             terms_done = CASE WHEN $2 OR b.finished_at IS NOT NULL THEN 0 ELSE b.terms_done END,
             started_at = CASE WHEN $2 OR b.finished_at IS NOT NULL THEN now() ELSE b.started_at END,
             finished_at = NULL,
             updated_at = now()
         RETURNING last_term, terms_done",
    )
    .bind(from_term)
    .bind(restart)
    .fetch_one(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM term WHERE id >= $1")
        .bind(from_term)
        .fetch_one(pool)
        .await?;
    if let Some(l) = &last {
        progress(&format!(
            "resuming after {l} ({done} of {total} terms already done)"
        ));
    } else {
        create_missing_terms(pool, schema, from_term, batch_size, &mut progress).await?;
    }
    let started = Instant::now();
    let mut cursor = last;
    let mut terms = done as u64;
    let mut batches = 0;
    loop {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM term WHERE id >= $1 AND ($2::text IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(from_term)
        .bind(cursor.as_deref())
        .bind(batch_size as i64)
        .fetch_all(pool)
        .await?;
        let Some(last_id) = ids.last().cloned() else {
            break;
        };
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        rebuild_cascade(pool, schema, &id_refs).await?;
        rebuild_analytics(pool, schema, from_term, &id_refs).await?;
        terms += ids.len() as u64;
        batches += 1;
        progress(&format!(
            "backfill: {terms}/{total} terms ({:.1}%), last {last_id}, {:.1}s",
            100.0 * terms as f64 / total.max(1) as f64,
            started.elapsed().as_secs_f64()
        ));
        cursor = Some(last_id);
    }
    sqlx::query(
        "UPDATE backfill_progress SET finished_at = now(), updated_at = now() WHERE from_term = $1",
    )
    .bind(from_term)
    .execute(pool)
    .await?;
    Ok(Summary { terms, batches })
}

/// Terms that events name but that have no `term` row (the table was
/// damaged or truncated): rebuilt first, so the walk over `term` sees them.
async fn create_missing_terms(
    pool: &PgPool,
    schema: &str,
    from_term: &str,
    batch_size: usize,
    progress: &mut impl FnMut(&str),
) -> Result<(), sqlx::Error> {
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT id FROM (
             SELECT term_id AS id FROM atom_created_events
             UNION ALL SELECT term_id FROM triple_created_events
             UNION ALL SELECT counter_term_id FROM triple_created_events
             UNION ALL SELECT term_id FROM deposited_events
             UNION ALL SELECT term_id FROM redeemed_events
             UNION ALL SELECT term_id FROM share_price_changed_events
         ) s
         WHERE id >= $1 AND NOT EXISTS (SELECT 1 FROM term t WHERE t.id = s.id)
         ORDER BY id",
    )
    .bind(from_term)
    .fetch_all(pool)
    .await?;
    if missing.is_empty() {
        return Ok(());
    }
    progress(&format!(
        "rebuilding {} terms that have events but no term row",
        missing.len()
    ));
    for chunk in missing.chunks(batch_size.max(1)) {
        let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        rebuild_cascade(pool, schema, &ids).await?;
    }
    Ok(())
}

/// Atoms, triples, positions, vaults and term rows of `ids`, rebuilt from
/// their events under the term locks.
async fn rebuild_cascade(pool: &PgPool, schema: &str, ids: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with(begin_reorg_locked(schema, false)).await?;
    lock_terms(&mut tx, schema, ids).await?;
    atom::recompute(&mut tx, ids).await?;
    // Only pro terms have TripleCreated events; counter ids find nothing.
    triple::recompute(&mut tx, ids).await?;
    let positions: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT receiver, term_id, curve_id::text FROM deposited_events WHERE term_id = ANY($1::text[])
         UNION SELECT receiver, term_id, curve_id::text FROM redeemed_events WHERE term_id = ANY($1::text[])
         UNION SELECT account_id, term_id, curve_id::text FROM position WHERE term_id = ANY($1::text[])",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let vaults: Vec<(String, String)> = sqlx::query_as(
        "SELECT term_id, curve_id::text FROM deposited_events WHERE term_id = ANY($1::text[])
         UNION SELECT term_id, curve_id::text FROM redeemed_events WHERE term_id = ANY($1::text[])
         UNION SELECT term_id, curve_id::text FROM share_price_changed_events WHERE term_id = ANY($1::text[])
         UNION SELECT term_id, curve_id::text FROM vault WHERE term_id = ANY($1::text[])",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    position::recompute(&mut tx, &positions).await?;
    vault::recompute(&mut tx, &vaults, None).await?;
    // The triples among them get their analytics rebuilt next, by the
    // backfill itself: no dirty marks needed.
    term::recompute(&mut tx, ids).await?;
    tx.commit().await
}

/// Analytics of the triples among `ids` (pro or counter terms), then the
/// progress row.
async fn rebuild_analytics(
    pool: &PgPool,
    schema: &str,
    from_term: &str,
    ids: &[&str],
) -> Result<(), sqlx::Error> {
    let triples: Vec<String> = sqlx::query_scalar(
        "SELECT term_id FROM triple WHERE term_id = ANY($1::text[])
         UNION SELECT term_id FROM triple WHERE counter_term_id = ANY($1::text[])",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let refs: Vec<&str> = triples.iter().map(String::as_str).collect();
    crate::analytics::refresh(
        pool,
        schema,
        crate::analytics::Claim::Listed {
            ids: &triples,
            age: None,
        },
        &refs,
        true,
    )
    .await?;
    sqlx::query(
        "UPDATE backfill_progress SET last_term = $2, terms_done = terms_done + $3, updated_at = now()
         WHERE from_term = $1",
    )
    .bind(from_term)
    .bind(ids.last().copied())
    .bind(ids.len() as i64)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_term_bounds() {
        assert_eq!(
            parse_from_term("0x00").unwrap(),
            format!("0x{}", "0".repeat(64))
        );
        assert_eq!(
            parse_from_term("0XAB").unwrap(),
            format!("0x{}ab", "0".repeat(62))
        );
        // 0x1 is the number one: every id but zero is at or above it.
        assert!(
            parse_from_term("0x1").unwrap().as_str() < format!("0x0a{}", "0".repeat(62)).as_str()
        );
        assert!(parse_from_term("0x").is_err());
        assert_eq!(
            parse_from_term("00").unwrap(),
            parse_from_term("0x0").unwrap()
        );
        assert!(parse_from_term("").is_err());
        assert!(parse_from_term("0xzz").is_err());
        assert!(parse_from_term(&format!("0x{}", "0".repeat(65))).is_err());
    }
}
