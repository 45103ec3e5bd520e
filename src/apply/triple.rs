//! The `triple` table: created by new TripleCreated events, rebuilt from
//! the event log when events leave it.

use sqlx::PgConnection;

use super::events::Item;
use crate::event::TripleCreated;

/// Like atoms: earliest creation wins.
const UPSERT: &str = r#"
INSERT INTO triple AS t (term_id, creator_id, subject_id, predicate_id, object_id,
    counter_term_id, last_event_block, last_event_log_index)
SELECT DISTINCT ON (term_id) term_id, creator_id, subject_id, predicate_id, object_id,
    counter_term_id, block_number, log_index
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
    $8::int8[])
    AS n(term_id, creator_id, subject_id, predicate_id, object_id, counter_term_id,
         block_number, log_index)
ORDER BY term_id, block_number, log_index
ON CONFLICT (term_id) DO UPDATE SET
    creator_id = EXCLUDED.creator_id,
    subject_id = EXCLUDED.subject_id,
    predicate_id = EXCLUDED.predicate_id,
    object_id = EXCLUDED.object_id,
    last_event_block = EXCLUDED.last_event_block,
    last_event_log_index = EXCLUDED.last_event_log_index,
    updated_at = now()
WHERE (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
    < (t.last_event_block, t.last_event_log_index)
"#;

/// Rebuilds the triple rows of `$1` from the earliest remaining
/// TripleCreated; deletes those left without one (after a reorg) and
/// returns them with their subject, predicate and object, so their
/// analytics can be removed.
const RECOMPUTE: &str = r#"
WITH ids AS (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id)),
earliest AS (
    SELECT DISTINCT ON (e.term_id) e.term_id, e.creator, e.subject_id, e.predicate_id,
        e.object_id, e.counter_term_id, e.block_number, e.log_index
    FROM triple_created_events e JOIN ids ON e.term_id = ids.id
    ORDER BY e.term_id, e.block_number, e.log_index
),
upserted AS (
    INSERT INTO triple AS t (term_id, creator_id, subject_id, predicate_id, object_id,
        counter_term_id, last_event_block, last_event_log_index)
    SELECT term_id, creator, subject_id, predicate_id, object_id, counter_term_id,
        block_number, log_index
    FROM earliest
    ON CONFLICT (term_id) DO UPDATE SET
        creator_id = EXCLUDED.creator_id,
        subject_id = EXCLUDED.subject_id,
        predicate_id = EXCLUDED.predicate_id,
        object_id = EXCLUDED.object_id,
        last_event_block = EXCLUDED.last_event_block,
        last_event_log_index = EXCLUDED.last_event_log_index,
        updated_at = now()
    WHERE (t.last_event_block, t.last_event_log_index)
        IS DISTINCT FROM (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
)
DELETE FROM triple t USING ids
WHERE t.term_id = ids.id AND NOT EXISTS (SELECT 1 FROM earliest e WHERE e.term_id = ids.id)
RETURNING t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
"#;

/// A triple that no longer exists: (term, counter, subject, predicate, object).
pub type RemovedTriple = (String, String, String, String, String);

/// Rebuilds triples from their events (see [`RECOMPUTE`]); returns the
/// triples deleted. Callers hold the term locks (or the exclusive reorg
/// lock).
pub async fn recompute(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<Vec<RemovedTriple>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(RECOMPUTE).bind(ids).fetch_all(conn).await
}

/// The terms of the events at `new`: each triple and its counter term.
pub(crate) fn terms<'a>(
    items: &'a [Item<'_, TripleCreated>],
    new: &'a [usize],
) -> impl Iterator<Item = &'a str> {
    new.iter().flat_map(|&i| {
        let t = items[i].event;
        [t.term_id.as_str(), t.counter_term_id.as_str()]
    })
}

/// Creates the triple rows of the new events (`new`: indexes into `items`).
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    items: &[Item<'_, TripleCreated>],
    new: &[usize],
) -> Result<(), sqlx::Error> {
    if new.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&TripleCreated) -> &str| -> Vec<&str> {
        new.iter().map(|&i| f(items[i].event)).collect()
    };
    let block: Vec<i64> = new.iter().map(|&i| items[i].chain.block_number).collect();
    let log: Vec<i64> = new.iter().map(|&i| items[i].chain.log_index).collect();
    sqlx::query(UPSERT)
        .bind(col(|t| t.term_id.as_str()))
        .bind(col(|t| t.creator.as_str()))
        .bind(col(|t| t.subject_id.as_str()))
        .bind(col(|t| t.predicate_id.as_str()))
        .bind(col(|t| t.object_id.as_str()))
        .bind(col(|t| t.counter_term_id.as_str()))
        .bind(&block)
        .bind(&log)
        .execute(conn)
        .await?;
    Ok(())
}
