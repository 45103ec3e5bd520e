//! The `atom` table: created by new AtomCreated events, rebuilt from the
//! event log when events leave it.

use sqlx::PgConnection;

/// Rebuilds the atom rows of `$1` from the earliest remaining AtomCreated;
/// deletes those left without one (after a reorg). Resolver columns
/// (label, image, …) of surviving atoms are kept.
const RECOMPUTE: &str = concat!(
    r#"
WITH ids AS (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id)),
earliest AS (
    -- Each id's events through the term index: a per-id subquery (`OFFSET
    -- 0`), so neither a hash join over the whole table nor, as `ORDER BY …
    -- LIMIT 1` inside would invite, a walk of the block index in block order.
    SELECT DISTINCT ON (e.term_id) e.*
    FROM ids CROSS JOIN LATERAL (
        SELECT e.term_id, e.atom_wallet, e.creator, e.atom_data, e.raw_data, e.block_number,
            e.log_index
        FROM atom_created_events e WHERE e.term_id = ids.id
        OFFSET 0
    ) e
    ORDER BY e.term_id, e.block_number, e.log_index
),
upserted AS (
    INSERT INTO atom AS a (term_id, wallet_id, creator_id, data, raw_data, last_event_block,
        last_event_log_index)
    SELECT term_id, atom_wallet, creator, atom_data, raw_data, block_number, log_index
    FROM earliest
    ON CONFLICT (term_id) "#,
    update_changed!(a: wallet_id, creator_id, data, raw_data, last_event_block,
        last_event_log_index),
    r#")
DELETE FROM atom a USING ids
WHERE a.term_id = ids.id AND NOT EXISTS (SELECT 1 FROM earliest e WHERE e.term_id = ids.id)
"#
);

/// Rebuilds atoms from their events (see [`RECOMPUTE`]); also how new
/// AtomCreated events create their rows, so that the earliest creation wins
/// whatever the arrival order (only forks create a term twice). Callers hold
/// the term locks (or the exclusive reorg lock).
pub async fn recompute(conn: &mut PgConnection, ids: &[&str]) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query(RECOMPUTE).bind(ids).execute(conn).await?;
    }
    Ok(())
}
