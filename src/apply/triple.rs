//! TripleCreated: the event row, the `triple` row.

use sqlx::PgConnection;

use super::columns::ChainColumns;
use crate::event::{ChainPosition, TripleCreated};

#[derive(Debug, Default)]
pub(crate) struct TripleRows<'e> {
    chain: ChainColumns<'e>,
    creator: Vec<&'e str>,
    term_id: Vec<&'e str>,
    subject_id: Vec<&'e str>,
    predicate_id: Vec<&'e str>,
    object_id: Vec<&'e str>,
    counter_term_id: Vec<&'e str>,
}

/// Like atoms: new events only, earliest creation wins.
const APPLY: &str = r#"
WITH ins AS (
    INSERT INTO triple_created_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, creator, term_id, subject_id,
        predicate_id, object_id, counter_term_id)
    SELECT e.* FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[],
        $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::text[], $14::text[])
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, creator, term_id, subject_id, predicate_id,
             object_id, counter_term_id)
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING term_id, creator, subject_id, predicate_id, object_id, counter_term_id,
        block_number, log_index
),
triples AS (
    INSERT INTO triple AS t (term_id, creator_id, subject_id, predicate_id, object_id,
        counter_term_id, last_event_block, last_event_log_index)
    SELECT DISTINCT ON (term_id) term_id, creator, subject_id, predicate_id, object_id,
        counter_term_id, block_number, log_index
    FROM ins
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
)
SELECT count(*) FROM ins
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
/// triples deleted. Callers hold the term locks.
pub async fn recompute(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<Vec<RemovedTriple>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(RECOMPUTE).bind(ids).fetch_all(conn).await
}

impl<'e> TripleRows<'e> {
    pub fn push(&mut self, chain: &'e ChainPosition<'_>, triple: &'e TripleCreated) {
        self.chain.push(chain);
        self.creator.push(triple.creator.as_str());
        self.term_id.push(triple.term_id.as_str());
        self.subject_id.push(triple.subject_id.as_str());
        self.predicate_id.push(triple.predicate_id.as_str());
        self.object_id.push(triple.object_id.as_str());
        self.counter_term_id.push(triple.counter_term_id.as_str());
    }

    pub async fn apply(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        if self.chain.is_empty() {
            return Ok(0);
        }
        let row = self
            .chain
            .bind(sqlx::query(APPLY))
            .bind(&self.creator[..])
            .bind(&self.term_id[..])
            .bind(&self.subject_id[..])
            .bind(&self.predicate_id[..])
            .bind(&self.object_id[..])
            .bind(&self.counter_term_id[..])
            .fetch_one(conn)
            .await?;
        sqlx::Row::try_get(&row, 0)
    }
}
