//! The `triple` table: created by new TripleCreated events, rebuilt from
//! the event log when events leave it.

use sqlx::PgConnection;

use super::events::Item;
use crate::event::TripleCreated;

/// Creates triple rows from new events (earliest in the batch per term);
/// returns the terms it created. A term that already has a row got a
/// second TripleCreated, which happens only across forks: the caller
/// rebuilds it ([`RECOMPUTE`] picks the earliest and reports the pair it
/// leaves), because its subject, predicate or object may change.
const CREATE: &str = r#"
INSERT INTO triple AS t (term_id, creator_id, subject_id, predicate_id, object_id,
    counter_term_id, last_event_block, last_event_log_index)
SELECT DISTINCT ON (term_id) term_id, creator_id, subject_id, predicate_id, object_id,
    counter_term_id, block_number, log_index
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
    $8::int8[])
    AS n(term_id, creator_id, subject_id, predicate_id, object_id, counter_term_id,
         block_number, log_index)
ORDER BY term_id, block_number, log_index
ON CONFLICT (term_id) DO NOTHING
RETURNING term_id
"#;

/// Rebuilds the triple rows of `$1` from the earliest remaining
/// TripleCreated; deletes those left without one (after a reorg). Returns
/// the triples as they no longer are — deleted ones, and the former
/// subject, predicate and object of triples whose event was replaced by
/// one naming others (a transaction re-included on a new fork) — so the
/// analytics of their old pairs can be rebuilt.
const RECOMPUTE: &str = concat!(
    r#"
WITH ids AS (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id)),
earliest AS (
    -- Per id through the term index (see atom::RECOMPUTE).
    SELECT DISTINCT ON (e.term_id) e.*
    FROM ids CROSS JOIN LATERAL (
        SELECT e.term_id, e.creator, e.subject_id, e.predicate_id, e.object_id,
            e.counter_term_id, e.block_number, e.log_index
        FROM triple_created_events e WHERE e.term_id = ids.id
        OFFSET 0
    ) e
    ORDER BY e.term_id, e.block_number, e.log_index
),
old AS (
    SELECT t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
    FROM triple t JOIN ids ON t.term_id = ids.id
),
upserted AS (
    INSERT INTO triple AS t (term_id, creator_id, subject_id, predicate_id, object_id,
        counter_term_id, last_event_block, last_event_log_index)
    SELECT term_id, creator, subject_id, predicate_id, object_id, counter_term_id,
        block_number, log_index
    FROM earliest
    ON CONFLICT (term_id) "#,
    update_changed!(t:
        creator_id, subject_id, predicate_id, object_id, last_event_block, last_event_log_index),
    r#"),
removed AS (
    DELETE FROM triple t USING ids
    WHERE t.term_id = ids.id AND NOT EXISTS (SELECT 1 FROM earliest e WHERE e.term_id = ids.id)
    RETURNING t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
)
SELECT * FROM removed
UNION ALL
SELECT o.term_id, o.counter_term_id, o.subject_id, o.predicate_id, o.object_id
FROM old o JOIN earliest e USING (term_id)
WHERE (o.subject_id, o.predicate_id, o.object_id)
    IS DISTINCT FROM (e.subject_id, e.predicate_id, e.object_id)
"#
);

/// A triple as it no longer is: (term, counter, subject, predicate, object).
pub type RemovedTriple = (String, String, String, String, String);

/// Rebuilds triples from their events (see [`RECOMPUTE`]); returns the
/// triples as they no longer are (deleted, or moved to other pairs).
/// Callers hold the term locks (or the exclusive reorg lock).
pub async fn recompute(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<Vec<RemovedTriple>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(RECOMPUTE).bind(ids).fetch_all(conn).await
}

/// Creates the triple rows of the new events (`new`: indexes into `items`);
/// returns the indexes of those whose triple already existed (to rebuild).
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    items: &[Item<'_, TripleCreated>],
    new: &[usize],
) -> Result<Vec<usize>, sqlx::Error> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: fn(&TripleCreated) -> &str| -> Vec<&str> {
        new.iter().map(|&i| f(items[i].event)).collect()
    };
    let block: Vec<i64> = new.iter().map(|&i| items[i].chain.block_number).collect();
    let log: Vec<i64> = new.iter().map(|&i| items[i].chain.log_index).collect();
    let created: Vec<String> = sqlx::query_scalar(CREATE)
        .bind(col(|t| t.term_id.as_str()))
        .bind(col(|t| t.creator.as_str()))
        .bind(col(|t| t.subject_id.as_str()))
        .bind(col(|t| t.predicate_id.as_str()))
        .bind(col(|t| t.object_id.as_str()))
        .bind(col(|t| t.counter_term_id.as_str()))
        .bind(&block)
        .bind(&log)
        .fetch_all(conn)
        .await?;
    let created: std::collections::HashSet<&str> = created.iter().map(String::as_str).collect();
    Ok(new
        .iter()
        .copied()
        .filter(|&i| !created.contains(items[i].event.term_id.as_str()))
        .collect())
}
