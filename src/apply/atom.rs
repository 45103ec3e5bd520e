//! The `atom` table: created by new AtomCreated events, rebuilt from the
//! event log when events leave it.

use sqlx::PgConnection;

use super::events::Item;
use crate::event::AtomCreated;

/// Creates atom rows from new events. If the same term were ever created
/// twice, the earliest event on the chain wins, whatever the arrival order.
const UPSERT: &str = r#"
INSERT INTO atom AS a (term_id, wallet_id, creator_id, data, raw_data, last_event_block,
    last_event_log_index)
SELECT DISTINCT ON (term_id) term_id, wallet_id, creator_id, data, raw_data, block_number,
    log_index
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[], $7::int8[])
    AS n(term_id, wallet_id, creator_id, data, raw_data, block_number, log_index)
ORDER BY term_id, block_number, log_index
ON CONFLICT (term_id) DO UPDATE SET
    wallet_id = EXCLUDED.wallet_id,
    creator_id = EXCLUDED.creator_id,
    data = EXCLUDED.data,
    raw_data = EXCLUDED.raw_data,
    last_event_block = EXCLUDED.last_event_block,
    last_event_log_index = EXCLUDED.last_event_log_index,
    updated_at = now()
WHERE (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
    < (a.last_event_block, a.last_event_log_index)
"#;

/// Rebuilds the atom rows of `$1` from the earliest remaining AtomCreated;
/// deletes those left without one (after a reorg). Resolver columns
/// (label, image, …) of surviving atoms are kept.
const RECOMPUTE: &str = r#"
WITH ids AS (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id)),
earliest AS (
    SELECT DISTINCT ON (e.term_id) e.term_id, e.atom_wallet, e.creator, e.atom_data, e.raw_data,
        e.block_number, e.log_index
    FROM atom_created_events e JOIN ids ON e.term_id = ids.id
    ORDER BY e.term_id, e.block_number, e.log_index
),
upserted AS (
    INSERT INTO atom AS a (term_id, wallet_id, creator_id, data, raw_data, last_event_block,
        last_event_log_index)
    SELECT term_id, atom_wallet, creator, atom_data, raw_data, block_number, log_index
    FROM earliest
    ON CONFLICT (term_id) DO UPDATE SET
        wallet_id = EXCLUDED.wallet_id,
        creator_id = EXCLUDED.creator_id,
        data = EXCLUDED.data,
        raw_data = EXCLUDED.raw_data,
        last_event_block = EXCLUDED.last_event_block,
        last_event_log_index = EXCLUDED.last_event_log_index,
        updated_at = now()
    WHERE (a.wallet_id, a.creator_id, a.data, a.raw_data, a.last_event_block,
           a.last_event_log_index)
        IS DISTINCT FROM (EXCLUDED.wallet_id, EXCLUDED.creator_id, EXCLUDED.data,
           EXCLUDED.raw_data, EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
)
DELETE FROM atom a USING ids
WHERE a.term_id = ids.id AND NOT EXISTS (SELECT 1 FROM earliest e WHERE e.term_id = ids.id)
"#;

/// Rebuilds atoms from their events (see [`RECOMPUTE`]). Callers hold the
/// term locks (or the exclusive reorg lock).
pub async fn recompute(conn: &mut PgConnection, ids: &[&str]) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query(RECOMPUTE).bind(ids).execute(conn).await?;
    }
    Ok(())
}

/// Creates the atom rows of the new events (`new`: indexes into `items`).
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    items: &[Item<'_, AtomCreated>],
    new: &[usize],
) -> Result<(), sqlx::Error> {
    if new.is_empty() {
        return Ok(());
    }
    let pick = || new.iter().map(|&i| items[i]);
    let term_id: Vec<&str> = pick().map(|i| i.event.term_id.as_str()).collect();
    let wallet: Vec<&str> = pick().map(|i| i.event.atom_wallet.as_str()).collect();
    let creator: Vec<&str> = pick().map(|i| i.event.creator.as_str()).collect();
    let data: Vec<Option<&str>> = pick().map(|i| i.event.atom_data.text()).collect();
    let raw: Vec<Option<&[u8]>> = pick().map(|i| i.event.atom_data.raw()).collect();
    let block: Vec<i64> = pick().map(|i| i.chain.block_number).collect();
    let log: Vec<i64> = pick().map(|i| i.chain.log_index).collect();
    sqlx::query(UPSERT)
        .bind(&term_id)
        .bind(&wallet)
        .bind(&creator)
        .bind(&data)
        .bind(&raw)
        .bind(&block)
        .bind(&log)
        .execute(conn)
        .await?;
    Ok(())
}
