//! Chain reorganisations (SPEC §1 "Reorgs", ADR 0009).
//!
//! rindexer sends one notice to every stream of the network, then the new
//! chain's events. Its meaning is positional: the copy that arrives on
//! stream S abandons every event of its network at block ≥ `fork_block`
//! that S delivered before it. Each copy deletes the events its stream
//! delivered before it; everything the copies of one transaction removed is
//! then rebuilt once from the events that remain, so the tables end exactly
//! as if those events had never arrived. `affected_tx_hashes` is recorded but not
//! relied on: it lists what rindexer deleted from its own storage and is
//! empty when it keeps none.
//!
//! The copy is recorded in `reorg_notices` with its stream and entry id, in
//! the same transaction. Every batch checks its events against the recorded
//! copies (`apply::events`): an abandoned event delivered late — read by
//! another process, reclaimed from a dead consumer, retried — is not
//! stored. A redelivered copy (same stream and entry) changes nothing; a
//! later notice at the same fork block (the chain flipping back) is another
//! entry and applies again.
//!
//! The transaction holds the reorg lock exclusively: every batch takes it
//! shared first, so no batch writes events while a copy is applied, and
//! every batch after it sees the copy. The copies of one batch share that
//! transaction; a caught-up reader puts a notice's copies in one batch
//! (ADR 0014), so a reorg holds the other batches back once, not once per
//! stream.

use crate::apply::rebuild::Rebuild;
use crate::apply::{ReadModel, Source, begin_reorg_locked, events};
use crate::event::ReorgNotice;

/// What one copy of a notice did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReorgOutcome {
    /// False when this copy had been applied before.
    pub applied: bool,
    /// Events its stream had delivered before it that it removed.
    pub removed_events: u64,
}

/// What one transaction of copies did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppliedCopies {
    /// Each copy's outcome, in the order given.
    pub copies: Vec<ReorgOutcome>,
    /// Triples whose analytics the rebuild changed (for the worker).
    pub dirty_triples: Vec<String>,
}

/// Applies copies of notices, each delivered by its source, in one
/// transaction (one wait for the exclusive lock, however many streams the
/// batch read copies from).
pub async fn apply(
    rm: &ReadModel,
    copies: &[(&ReorgNotice<'_>, Source<'_>)],
) -> Result<AppliedCopies, sqlx::Error> {
    if copies.is_empty() {
        return Ok(AppliedCopies::default());
    }
    let names: Vec<&str> = copies.iter().map(|(_, s)| s.stream).collect();
    let streams = rm.stream_ids(&names).await?;
    let mut tx = rm
        .pool()
        .begin_with(begin_reorg_locked(rm.schema(), true))
        .await?;
    let mut outcomes = Vec::with_capacity(copies.len());
    let mut rebuild = Rebuild::default();
    let mut applied = Vec::new();
    for ((notice, source), stream) in copies.iter().zip(streams) {
        let Some(reorg_id) = record(&mut tx, notice, *source, stream).await? else {
            outcomes.push(ReorgOutcome::default());
            continue;
        };
        let removed = events::remove_orphans(
            &mut tx,
            stream,
            &notice.network,
            notice.fork_block,
            source.entry,
        )
        .await?;
        let removed_events = removed.len() as u64;
        for feed in removed {
            rebuild.add(feed);
        }
        rebuild.look_first_from(notice.fork_block);
        sqlx::query("UPDATE reorg_notices SET removed_events = $2 WHERE id = $1")
            .bind(reorg_id)
            .bind(removed_events as i64)
            .execute(&mut *tx)
            .await?;
        applied.push(outcomes.len());
        outcomes.push(ReorgOutcome {
            applied: true,
            removed_events,
        });
    }
    // Everything the copies removed, rebuilt once.
    let dirty_triples = rebuild.run(&mut tx, rm.schema()).await?;
    tx.commit().await?;
    for &i in &applied {
        let (notice, source) = copies[i];
        tracing::info!(
            network = %notice.network,
            fork_block = notice.fork_block,
            depth = notice.depth,
            stream = source.stream,
            entry = %format_args!("{}-{}", source.entry.ms, source.entry.seq),
            removed_events = outcomes[i].removed_events,
            "applied reorg notice: events this stream delivered before it at or above the fork block removed"
        );
    }
    Ok(AppliedCopies {
        copies: outcomes,
        dirty_triples,
    })
}

/// Records a copy; None if it was recorded before (a redelivery).
async fn record(
    conn: &mut sqlx::PgConnection,
    notice: &ReorgNotice<'_>,
    source: Source<'_>,
    stream: i32,
) -> Result<Option<i64>, sqlx::Error> {
    let hashes: Vec<&str> = notice
        .affected_tx_hashes
        .iter()
        .map(|h| h.as_str())
        .collect();
    sqlx::query_scalar(
        "INSERT INTO reorg_notices (stream_id, entry_ms, entry_seq, message_id, network,
             fork_block, depth, affected_tx_hashes, notice)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
         ON CONFLICT (stream_id, entry_ms, entry_seq) DO NOTHING RETURNING id",
    )
    .bind(stream)
    .bind(source.entry.ms)
    .bind(source.entry.seq)
    .bind(notice.message_id.as_deref())
    .bind(notice.network.as_ref())
    .bind(notice.fork_block)
    .bind(notice.depth)
    .bind(&hashes)
    .bind(notice.raw)
    .fetch_optional(conn)
    .await
}
