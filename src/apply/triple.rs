//! TripleCreated: the event row, then (for new events only) the `triple` row.

use sqlx::PgConnection;

use super::columns::{ChainColumns, indexes};
use crate::event::{ChainPosition, TripleCreated};

/// The TripleCreated events of a batch.
#[derive(Debug, Default)]
pub(crate) struct Triples<'e> {
    pub events: Vec<(&'e ChainPosition<'e>, &'e TripleCreated)>,
}

const INSERT: &str = r#"
WITH e AS (
    SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[],
        $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::text[], $14::text[]) WITH ORDINALITY
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, creator, term_id, subject_id, predicate_id,
             object_id, counter_term_id, ord)
),
ins AS (
    INSERT INTO triple_created_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, creator, term_id, subject_id,
        predicate_id, object_id, counter_term_id)
    SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp,
        transaction_index, address, network, creator, term_id, subject_id, predicate_id,
        object_id, counter_term_id
    FROM e
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING transaction_hash, log_index
)
SELECT e.ord FROM e JOIN ins USING (transaction_hash, log_index)
"#;

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

impl<'e> Triples<'e> {
    /// The terms of the events at `new`: each triple and its counter term.
    pub fn terms<'a>(&'a self, new: &'a [usize]) -> impl Iterator<Item = &'a str> {
        new.iter().flat_map(|&i| {
            let t = self.events[i].1;
            [t.term_id.as_str(), t.counter_term_id.as_str()]
        })
    }

    /// Inserts the event rows; returns the indexes of the new ones.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<Vec<usize>, sqlx::Error> {
        if self.events.is_empty() {
            return Ok(Vec::new());
        }
        let e = &self.events;
        let col =
            |f: fn(&TripleCreated) -> &str| -> Vec<&str> { e.iter().map(|(_, t)| f(t)).collect() };
        let rows = ChainColumns::of(e.iter().map(|(c, _)| *c))
            .bind(sqlx::query(INSERT))
            .bind(col(|t| t.creator.as_str()))
            .bind(col(|t| t.term_id.as_str()))
            .bind(col(|t| t.subject_id.as_str()))
            .bind(col(|t| t.predicate_id.as_str()))
            .bind(col(|t| t.object_id.as_str()))
            .bind(col(|t| t.counter_term_id.as_str()))
            .fetch_all(conn)
            .await?;
        indexes(rows)
    }

    /// Creates the triple rows of the new events.
    pub async fn cascade(&self, conn: &mut PgConnection, new: &[usize]) -> Result<(), sqlx::Error> {
        if new.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&TripleCreated) -> &str| -> Vec<&str> {
            new.iter().map(|&i| f(self.events[i].1)).collect()
        };
        let block: Vec<i64> = new.iter().map(|&i| self.events[i].0.block_number).collect();
        let log: Vec<i64> = new.iter().map(|&i| self.events[i].0.log_index).collect();
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
}
