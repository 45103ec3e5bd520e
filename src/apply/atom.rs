//! AtomCreated: the event row, then (for new events only) the `atom` row.

use sqlx::PgConnection;

use super::columns::{ChainColumns, indexes};
use crate::event::{AtomCreated, ChainPosition};

/// The AtomCreated events of a batch.
#[derive(Debug, Default)]
pub(crate) struct Atoms<'e> {
    pub events: Vec<(&'e ChainPosition<'e>, &'e AtomCreated)>,
}

/// Inserts the events not seen before (and not removed by a reorg);
/// returns the ordinals of those inserted.
const INSERT: &str = r#"
WITH e AS (
    SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[],
        $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[],
        $13::text[]) WITH ORDINALITY
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, creator, term_id, atom_data, raw_data,
             atom_wallet, ord)
),
ins AS (
    INSERT INTO atom_created_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, creator, term_id, atom_data,
        raw_data, atom_wallet)
    SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp,
        transaction_index, address, network, creator, term_id, atom_data, raw_data, atom_wallet
    FROM e
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING transaction_hash, log_index
)
SELECT e.ord FROM e JOIN ins USING (transaction_hash, log_index)
"#;

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
    WHERE (a.last_event_block, a.last_event_log_index)
        IS DISTINCT FROM (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
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

impl<'e> Atoms<'e> {
    /// The terms of the events at `new`.
    pub fn terms<'a>(&'a self, new: &'a [usize]) -> impl Iterator<Item = &'a str> {
        new.iter().map(|&i| self.events[i].1.term_id.as_str())
    }

    /// Inserts the event rows; returns the indexes of the new ones.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<Vec<usize>, sqlx::Error> {
        if self.events.is_empty() {
            return Ok(Vec::new());
        }
        let e = &self.events;
        let creator: Vec<&str> = e.iter().map(|(_, a)| a.creator.as_str()).collect();
        let term_id: Vec<&str> = e.iter().map(|(_, a)| a.term_id.as_str()).collect();
        let data: Vec<Option<&str>> = e.iter().map(|(_, a)| a.atom_data.text()).collect();
        let raw: Vec<Option<&[u8]>> = e.iter().map(|(_, a)| a.atom_data.raw()).collect();
        let wallet: Vec<&str> = e.iter().map(|(_, a)| a.atom_wallet.as_str()).collect();
        let rows = ChainColumns::of(e.iter().map(|(c, _)| *c))
            .bind(sqlx::query(INSERT))
            .bind(&creator[..])
            .bind(&term_id[..])
            .bind(&data[..])
            .bind(&raw[..])
            .bind(&wallet[..])
            .fetch_all(conn)
            .await?;
        indexes(rows)
    }

    /// Creates the atom rows of the new events (`new` from [`Atoms::insert`]).
    pub async fn cascade(&self, conn: &mut PgConnection, new: &[usize]) -> Result<(), sqlx::Error> {
        if new.is_empty() {
            return Ok(());
        }
        let pick = || new.iter().map(|&i| self.events[i]);
        let term_id: Vec<&str> = pick().map(|(_, a)| a.term_id.as_str()).collect();
        let wallet: Vec<&str> = pick().map(|(_, a)| a.atom_wallet.as_str()).collect();
        let creator: Vec<&str> = pick().map(|(_, a)| a.creator.as_str()).collect();
        let data: Vec<Option<&str>> = pick().map(|(_, a)| a.atom_data.text()).collect();
        let raw: Vec<Option<&[u8]>> = pick().map(|(_, a)| a.atom_data.raw()).collect();
        let block: Vec<i64> = pick().map(|(c, _)| c.block_number).collect();
        let log: Vec<i64> = pick().map(|(c, _)| c.log_index).collect();
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
}
