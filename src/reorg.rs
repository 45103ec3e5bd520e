//! Chain reorganisations (SPEC §1 "Reorgs", ADR 0004).
//!
//! A notice removes the events of the affected transactions on its network
//! at blocks ≥ `fork_block`. Everything they touched is rebuilt from the
//! events that remain — positions, vaults, atoms, triples, terms, and the
//! analytics of triples that disappear — so the tables end exactly as if the
//! removed events had never arrived. Removed events are kept as tombstones
//! (`reorged_events`, by transaction, log index and block hash): if the
//! abandoned fork's entry is delivered again it is not re-inserted, while
//! the re-published event of the new chain (another block hash) applies.
//!
//! The whole notice is one transaction holding the reorg lock exclusively:
//! every batch takes that lock shared before its term locks, so no batch
//! runs concurrently with a reorg and none can slip an abandoned event in
//! between the deletion and the tombstones.

use sha2::{Digest, Sha256};

use crate::apply::vault::{PositionKey, VaultKey};
use crate::apply::{ReadModel, atom, lock_reorg, term, triple, vault};
use crate::event::ReorgNotice;

/// What a notice did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReorgOutcome {
    /// False when the same notice had been applied before.
    pub applied: bool,
    pub removed_events: u64,
    pub dirty_triples: Vec<String>,
}

const REMOVE: &str = r#"
WITH a AS (
    DELETE FROM atom_created_events
    WHERE network = $1 AND block_number >= $2 AND transaction_hash = ANY($3::text[])
    RETURNING 'atom_created_events' AS tbl, transaction_hash, log_index, block_hash,
        block_number, term_id AS term, NULL::text AS counter, NULL::text AS account, NULL::text AS curve
),
t AS (
    DELETE FROM triple_created_events
    WHERE network = $1 AND block_number >= $2 AND transaction_hash = ANY($3::text[])
    RETURNING 'triple_created_events', transaction_hash, log_index, block_hash, block_number,
        term_id, counter_term_id, NULL::text, NULL::text
),
d AS (
    DELETE FROM deposited_events
    WHERE network = $1 AND block_number >= $2 AND transaction_hash = ANY($3::text[])
    RETURNING 'deposited_events', transaction_hash, log_index, block_hash, block_number,
        term_id, NULL::text, receiver, curve_id::text
),
r AS (
    DELETE FROM redeemed_events
    WHERE network = $1 AND block_number >= $2 AND transaction_hash = ANY($3::text[])
    RETURNING 'redeemed_events', transaction_hash, log_index, block_hash, block_number,
        term_id, NULL::text, receiver, curve_id::text
),
s AS (
    DELETE FROM share_price_changed_events
    WHERE network = $1 AND block_number >= $2 AND transaction_hash = ANY($3::text[])
    RETURNING 'share_price_changed_events', transaction_hash, log_index, block_hash, block_number,
        term_id, NULL::text, NULL::text, curve_id::text
),
g AS (
    DELETE FROM generic_events
    WHERE network = $1 AND block_number >= $2 AND transaction_hash = ANY($3::text[])
    RETURNING 'generic_events', transaction_hash, log_index, block_hash, block_number,
        NULL::text, NULL::text, NULL::text, NULL::text
),
removed AS (
    SELECT * FROM a UNION ALL SELECT * FROM t UNION ALL SELECT * FROM d
    UNION ALL SELECT * FROM r UNION ALL SELECT * FROM s UNION ALL SELECT * FROM g
),
tombstones AS (
    INSERT INTO reorged_events (transaction_hash, log_index, block_hash, network,
        block_number, event_table, reorg_id)
    SELECT transaction_hash, log_index, block_hash, $1, block_number, tbl, $4 FROM removed
    ON CONFLICT DO NOTHING
)
SELECT tbl, term, counter, account, curve FROM removed
"#;

/// A removed event: its table, term, counter term (triples), account and
/// curve (vault events).
type RemovedEvent = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A stable identity for a notice, so a redelivered one is not applied twice.
fn notice_key(notice: &ReorgNotice<'_>) -> String {
    let mut hashes: Vec<&str> = notice
        .affected_tx_hashes
        .iter()
        .map(|h| h.as_str())
        .collect();
    hashes.sort_unstable();
    let mut hasher = Sha256::new();
    hasher.update(notice.network.as_bytes());
    hasher.update(notice.fork_block.to_be_bytes());
    for h in hashes {
        hasher.update(h.as_bytes());
    }
    if let Some(id) = notice.message_id {
        hasher.update(b"/message/");
        hasher.update(id.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies one notice in its own transaction.
pub async fn apply(rm: &ReadModel, notice: &ReorgNotice<'_>) -> Result<ReorgOutcome, sqlx::Error> {
    let mut tx = rm.pool().begin().await?;
    lock_reorg(&mut tx, rm.schema(), true).await?;
    let hashes: Vec<&str> = notice
        .affected_tx_hashes
        .iter()
        .map(|h| h.as_str())
        .collect();
    let reorg_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO reorg_notices (notice_key, network, fork_block, depth, affected_tx_hashes, notice)
         VALUES ($1, $2, $3, $4, $5, $6::jsonb)
         ON CONFLICT (notice_key) DO NOTHING RETURNING id",
    )
    .bind(notice_key(notice))
    .bind(notice.network.as_ref())
    .bind(notice.fork_block)
    .bind(notice.depth)
    .bind(&hashes)
    .bind(notice.raw)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(reorg_id) = reorg_id else {
        tx.commit().await?;
        return Ok(ReorgOutcome::default());
    };

    // Tombstones of earlier notices in this range are superseded: the
    // chain from `fork_block` on is being replaced again, and what it will
    // re-publish may be exactly what an earlier reorg removed (a chain that
    // flips back).
    sqlx::query("DELETE FROM reorged_events WHERE network = $1 AND block_number >= $2")
        .bind(notice.network.as_ref())
        .bind(notice.fork_block)
        .execute(&mut *tx)
        .await?;
    let removed: Vec<RemovedEvent> = sqlx::query_as(REMOVE)
        .bind(notice.network.as_ref())
        .bind(notice.fork_block)
        .bind(&hashes)
        .bind(reorg_id)
        .fetch_all(&mut *tx)
        .await?;

    let mut terms: Vec<&str> = Vec::new();
    let mut atoms: Vec<&str> = Vec::new();
    let mut triples: Vec<&str> = Vec::new();
    let mut positions: Vec<PositionKey> = Vec::new();
    let mut vaults: Vec<VaultKey> = Vec::new();
    for (table, term, counter, account, curve) in &removed {
        terms.extend(term.as_deref());
        terms.extend(counter.as_deref());
        match (table.as_str(), term, account, curve) {
            ("atom_created_events", Some(t), _, _) => atoms.push(t),
            ("triple_created_events", Some(t), _, _) => triples.push(t),
            (_, Some(t), account, Some(c)) => {
                if let Some(a) = account {
                    positions.push((a.clone(), t.clone(), c.clone()));
                }
                vaults.push((t.clone(), c.clone()));
            }
            _ => {}
        }
    }
    atom::recompute(&mut tx, &atoms).await?;
    let removed_triples = triple::recompute(&mut tx, &triples).await?;
    vault::recompute(&mut tx, &positions, &vaults).await?;
    let dirty_triples = term::refresh(&mut tx, &terms, &[]).await?;
    // The analytics of every affected triple are rebuilt here, pruning rows
    // whose vault or triple is gone: the worker's normal pass only ever adds
    // (vaults and triples disappear only in a reorg). Removed triples are
    // nobody's dirty mark, so they are passed explicitly (`recompute` adds
    // them). After the dirty marks, per the lock order of ADR 0004.
    let affected: Vec<&str> = dirty_triples.iter().map(String::as_str).collect();
    crate::analytics::recompute::recompute(&mut tx, rm.schema(), &affected, &removed_triples, true)
        .await?;
    sqlx::query("UPDATE reorg_notices SET removed_events = $2 WHERE id = $1")
        .bind(reorg_id)
        .bind(removed.len() as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        network = %notice.network,
        fork_block = notice.fork_block,
        transactions = hashes.len(),
        removed_events = removed.len(),
        "applied reorg notice"
    );
    Ok(ReorgOutcome {
        applied: true,
        removed_events: removed.len() as u64,
        dirty_triples,
    })
}
