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
use crate::apply::{ReadModel, Source, begin_reorg_locked, column, events};
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
/// batch read copies from). Three statements, however many copies: record
/// them, remove what they orphan, record how many events each removed; then
/// one rebuild of everything removed. The outcome is that of applying the
/// copies one by one in the order given.
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
    let ids = record(&mut tx, copies, &streams).await?;
    let mut outcomes = vec![ReorgOutcome::default(); copies.len()];
    // The copies recorded now, by id (ascending: the order given).
    let mut fresh: Vec<(i64, usize)> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| id.map(|id| (id, i)))
        .collect();
    fresh.sort_unstable();
    let mut rebuild = Rebuild::default();
    if let Some(from_block) = fresh.iter().map(|&(_, i)| copies[i].0.fork_block).min() {
        let notices: Vec<i64> = fresh.iter().map(|&(id, _)| id).collect();
        for (notice, feed) in events::remove_orphans(&mut tx, &notices, from_block).await? {
            let at = fresh
                .binary_search_by_key(&notice, |&(id, _)| id)
                .expect("a removed event's notice is one of those given");
            outcomes[fresh[at].1].removed_events += 1;
            rebuild.add(feed);
        }
        for &(_, i) in &fresh {
            outcomes[i].applied = true;
            rebuild.look_first_from(copies[i].0.fork_block);
        }
        count_removed(&mut tx, &fresh, &outcomes).await?;
    }
    // Everything the copies removed, rebuilt once.
    let dirty_triples = rebuild.run(&mut tx, rm.schema()).await?;
    tx.commit().await?;
    for &(_, i) in &fresh {
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

/// Records the copies (`streams`: their streams' ids) in one statement;
/// returns each copy's id, None for a copy recorded before (a redelivery,
/// or a repeat of an earlier copy in `copies`). Ids ascend in the order
/// given.
async fn record(
    conn: &mut sqlx::PgConnection,
    copies: &[(&ReorgNotice<'_>, Source<'_>)],
    streams: &[i32],
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    // A notice's hashes as one text (validated hex: no spaces), split back
    // in SQL: Postgres arrays of arrays must be rectangular.
    let hashes = column(copies, |(n, _)| {
        let list: Vec<&str> = n.affected_tx_hashes.iter().map(|h| h.as_str()).collect();
        list.join(" ")
    });
    let recorded: Vec<(i64, i32, i64, i64)> = sqlx::query_as(
        "INSERT INTO reorg_notices (stream_id, entry_ms, entry_seq, message_id, network,
             fork_block, depth, affected_tx_hashes, notice)
         SELECT stream_id, entry_ms, entry_seq, message_id, network, fork_block, depth,
             string_to_array(hashes, ' '), notice::jsonb
         FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::int8[],
                     $7::int8[], $8::text[], $9::text[])
             WITH ORDINALITY AS c(stream_id, entry_ms, entry_seq, message_id, network,
                                  fork_block, depth, hashes, notice, ord)
         ORDER BY ord
         ON CONFLICT (stream_id, entry_ms, entry_seq) DO NOTHING
         RETURNING id, stream_id, entry_ms, entry_seq",
    )
    .bind(streams)
    .bind(column(copies, |(_, s)| s.entry.ms))
    .bind(column(copies, |(_, s)| s.entry.seq))
    .bind(column(copies, |(n, _)| n.message_id.as_deref()))
    .bind(column(copies, |(n, _)| n.network.as_ref()))
    .bind(column(copies, |(n, _)| n.fork_block))
    .bind(column(copies, |(n, _)| n.depth))
    .bind(&hashes)
    .bind(column(copies, |(n, _)| n.raw))
    .fetch_all(conn)
    .await?;
    // Each recorded row belongs to the first copy with its stream and entry.
    let mut ids = vec![None; copies.len()];
    for (id, stream, ms, seq) in recorded {
        let first = (0..copies.len()).find(|&i| {
            let entry = copies[i].1.entry;
            streams[i] == stream && entry.ms == ms && entry.seq == seq
        });
        ids[first.expect("a recorded copy is one of those given")] = Some(id);
    }
    Ok(ids)
}

/// Records in `reorg_notices` how many events each of the `fresh` copies
/// (id, index into `outcomes`) removed.
async fn count_removed(
    conn: &mut sqlx::PgConnection,
    fresh: &[(i64, usize)],
    outcomes: &[ReorgOutcome],
) -> Result<(), sqlx::Error> {
    let (ids, removed): (Vec<i64>, Vec<i64>) = fresh
        .iter()
        .map(|&(id, i)| (id, outcomes[i].removed_events as i64))
        .filter(|&(_, n)| n > 0)
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE reorg_notices n SET removed_events = c.removed
         FROM unnest($1::int8[], $2::int8[]) AS c(id, removed)
         WHERE n.id = c.id",
    )
    .bind(&ids)
    .bind(&removed)
    .execute(conn)
    .await?;
    Ok(())
}
