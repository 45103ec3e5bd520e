//! AtomCreated: the event row, the `atom` row.

use sqlx::PgConnection;

use super::columns::ChainColumns;
use crate::event::{AtomCreated, ChainPosition};

#[derive(Debug, Default)]
pub(crate) struct AtomRows<'e> {
    chain: ChainColumns<'e>,
    creator: Vec<&'e str>,
    term_id: Vec<&'e str>,
    atom_data: Vec<Option<&'e str>>,
    raw_data: Vec<Option<&'e [u8]>>,
    atom_wallet: Vec<&'e str>,
}

/// Inserts the events not seen before (and not removed by a reorg), then
/// creates the atom rows from the newly inserted ones. If the same term were
/// ever created twice, the earliest event on the chain wins, whatever the
/// arrival order.
const APPLY: &str = r#"
WITH ins AS (
    INSERT INTO atom_created_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, creator, term_id, atom_data,
        raw_data, atom_wallet)
    SELECT e.* FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[],
        $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[],
        $13::text[])
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, creator, term_id, atom_data, raw_data,
             atom_wallet)
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING term_id, creator, atom_wallet, atom_data, raw_data, block_number, log_index
),
atoms AS (
    INSERT INTO atom AS a (term_id, wallet_id, creator_id, data, raw_data,
        last_event_block, last_event_log_index)
    SELECT DISTINCT ON (term_id) term_id, atom_wallet, creator, atom_data, raw_data,
        block_number, log_index
    FROM ins
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
)
SELECT count(*) FROM ins
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
/// term locks.
pub async fn recompute(conn: &mut PgConnection, ids: &[&str]) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query(RECOMPUTE).bind(ids).execute(conn).await?;
    }
    Ok(())
}

impl<'e> AtomRows<'e> {
    pub fn push(&mut self, chain: &'e ChainPosition<'_>, atom: &'e AtomCreated) {
        self.chain.push(chain);
        self.creator.push(atom.creator.as_str());
        self.term_id.push(atom.term_id.as_str());
        self.atom_data.push(atom.atom_data.text());
        self.raw_data.push(atom.atom_data.raw());
        self.atom_wallet.push(atom.atom_wallet.as_str());
    }

    /// Returns how many events were new.
    pub async fn apply(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        if self.chain.is_empty() {
            return Ok(0);
        }
        let q = self.chain.bind(sqlx::query(APPLY));
        let row = q
            .bind(&self.creator[..])
            .bind(&self.term_id[..])
            .bind(&self.atom_data[..])
            .bind(&self.raw_data[..])
            .bind(&self.atom_wallet[..])
            .fetch_one(conn)
            .await?;
        sqlx::Row::try_get(&row, 0)
    }
}
