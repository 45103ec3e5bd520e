//! The eventually consistent part of the read model: `triple_vault`,
//! `triple_term`, `predicate_object`, `subject_predicate` (SPEC §2, 6–9).
//!
//! After each commit the consumer hands the triples it marked dirty to the
//! worker over a bounded channel. Sending never blocks and takes no lock
//! (`try_send` on tokio's bounded mpsc is a CAS on the permit count and a
//! lock-free list push); when the channel is full the message is dropped,
//! which loses nothing: the dirty marks committed with the cascade are the
//! durable record, and the worker sweeps them on start and periodically
//! (ADR 0002).

pub mod recompute;
mod worker;

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;

pub use worker::{Worker, WorkerState};

/// What a committed batch tells the worker.
#[derive(Debug)]
pub struct Dirtied {
    /// The triples the batch marked dirty.
    pub triples: Vec<String>,
    /// Whether the read that delivered the batch came back full: more
    /// entries were waiting, so the writers are behind the streams (a
    /// backlog, a re-index). The worker then defers its recomputations
    /// (see `worker`'s catch-up).
    pub behind: bool,
    /// When the batch committed.
    pub committed: Instant,
    /// How long the batch took to apply (from its worker permit to its
    /// commit, lock waits included): while the writers are behind, a full
    /// read is announced at least about this often, whatever the number of
    /// writer tasks, so the worker waits a few of these before it counts
    /// them as caught up.
    pub took: Duration,
}

/// The consumer's side of the channel.
#[derive(Debug, Clone)]
pub struct AnalyticsSender(mpsc::Sender<Dirtied>);

/// The worker's side of the channel.
pub type AnalyticsReceiver = mpsc::Receiver<Dirtied>;

/// A channel holding up to `capacity` committed batches' triple ids.
pub fn channel(capacity: usize) -> (AnalyticsSender, AnalyticsReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (AnalyticsSender(tx), rx)
}

impl AnalyticsSender {
    /// Offers the triples of one committed batch to the worker, without
    /// waiting. A message the channel cannot take (full, or the worker gone)
    /// is dropped and counted: the dirty marks still carry it (ADR 0002).
    /// A batch that dirtied no triple is not announced, even from a full
    /// read: every message takes a place in the channel, and empty ones
    /// crowded out those with triples (ADR 0013 addendum).
    pub fn notify(&self, dirtied: Dirtied) {
        if !dirtied.triples.is_empty() && self.0.try_send(dirtied).is_err() {
            metrics::counter!("writer_analytics_messages_dropped_total").increment(1);
        }
    }
}

/// Marks `triples` dirty (ADR 0002), in the caller's transaction: the batch
/// that changed their vaults or created them. A new version on every mark
/// tells the worker the triple changed again; `marked_at` keeps the first
/// mark's time, so a triple changed again and again still comes due for a
/// catch-up pass (see [`Claim::Listed`]). `triples` come sorted and without
/// repeats (callers keep the list for the channel too): concurrent batches
/// lock mark rows in one order.
pub(crate) async fn mark(
    conn: &mut sqlx::PgConnection,
    triples: &[String],
) -> Result<(), sqlx::Error> {
    debug_assert!(
        triples.windows(2).all(|w| w[0] < w[1]),
        "marks sorted, without repeats"
    );
    if triples.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO analytics_dirty AS d (term_id) SELECT unnest($1::text[])
         ON CONFLICT (term_id) DO UPDATE
             SET version = nextval('analytics_dirty_version')",
    )
    .bind(triples)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which dirty marks a batch takes over.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// These triples, if marked (the channel's hint); with an `age`, only
    /// those marked at least that long ago: younger marks are left as they
    /// are and returned in [`Refreshed::left`]. The age is for a catch-up
    /// pass (see `worker`): each writer process's worker gathers the same
    /// hot triples, and without it every process's pass could recompute
    /// them again, a few seconds after another's (ADR 0013, third
    /// addendum).
    Listed {
        ids: &'a [String],
        age: Option<Duration>,
    },
    /// Up to `limit` marked triples after `after`, in id order (the sweep).
    After { after: &'a str, limit: usize },
}

/// What one analytics transaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// Triples recomputed.
    pub triples: usize,
    /// The highest dirty mark read (the sweep continues after it).
    pub last_mark: Option<String>,
    /// Listed triples left marked because they were marked for less than
    /// the claim's age ([`Claim::Listed`]), in id order.
    pub left: Vec<String>,
}

/// The listed marks, and whether each was marked less than $2 seconds ago
/// (never, with $2 NULL).
const MARKS_LISTED: &str =
    "SELECT term_id, version, coalesce(marked_at > now() - $2 * interval '1 second', false)
     FROM analytics_dirty WHERE term_id = ANY($1::text[]) ORDER BY term_id";
const MARKS_AFTER: &str =
    "SELECT term_id, version FROM analytics_dirty WHERE term_id > $1 ORDER BY term_id LIMIT $2";

/// Clears the marks that still carry the version read. Rows a writer is
/// re-marking right now are locked by it and skipped (their new version
/// must be processed again anyway), so the worker never waits for a writer.
const CLEAR_MARKS: &str = "DELETE FROM analytics_dirty WHERE term_id IN (
    SELECT d.term_id FROM analytics_dirty d
    JOIN unnest($1::text[], $2::int8[]) AS m(term_id, version)
      ON d.term_id = m.term_id AND d.version = m.version
    FOR UPDATE OF d SKIP LOCKED)";

/// One analytics transaction: reads dirty marks (without locking them),
/// takes the marked triples' analytics locks and reads their marks again,
/// recomputes the triples still marked plus `also`, records the
/// checkpoint, and clears the marks whose version did not change meanwhile
/// — in the same transaction, so a mark disappears only with its analytics
/// committed, and a writer that marked the triple again after the read
/// keeps its mark.
///
/// The second read is for several writer processes: each worker hears only
/// its own process's batches, and their passes can gather the same hot
/// triples at the same time. Without it the second pass waited for the
/// first's locks, then recomputed every triple again
/// (`a_backlog_shared_by_two_writers_converges`: 694 recomputations for
/// 361 triples, ~370 with it; pinned by
/// `a_pass_behind_another_recomputes_only_what_is_still_marked`). A mark
/// gone once the locks are held was cleared by a transaction that
/// recomputed the triple after its last change: it is current. (Taking the
/// locks reads the triples' pairs, and the recomputation reads them again:
/// handing them on was tried and measured 5–11 % slower end to end in five
/// pairs for reasons not found, so it was not kept.)
pub async fn refresh(
    pool: &PgPool,
    schema: &str,
    claim: Claim<'_>,
    also: &[&str],
    prune: bool,
) -> Result<Refreshed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut left = Vec::new();
    let marks: Vec<(String, i64)> = match claim {
        Claim::Listed { ids, age } => {
            let read: Vec<(String, i64, bool)> = sqlx::query_as(MARKS_LISTED)
                .bind(ids)
                .bind(age.map(|a| a.as_secs_f64()))
                .fetch_all(&mut *tx)
                .await?;
            let mut due = Vec::with_capacity(read.len());
            for (id, version, young) in read {
                if young {
                    left.push(id);
                } else {
                    due.push((id, version));
                }
            }
            due
        }
        Claim::After { after, limit } => {
            sqlx::query_as(MARKS_AFTER)
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    // The sweep goes on after the last mark read, recomputed here or not.
    let last_mark = marks.last().map(|(id, _)| id.clone());
    let marks: Vec<(String, i64)> = if marks.is_empty() {
        marks
    } else {
        let read: Vec<&str> = marks.iter().map(|(id, _)| id.as_str()).collect();
        recompute::lock(&mut tx, schema, &read).await?;
        let again: Vec<(String, i64, bool)> = sqlx::query_as(MARKS_LISTED)
            .bind(&read)
            .bind(None::<f64>)
            .fetch_all(&mut *tx)
            .await?;
        again
            .into_iter()
            .map(|(id, version, _)| (id, version))
            .collect()
    };
    let mut ids: Vec<&str> = marks
        .iter()
        .map(|(id, _)| id.as_str())
        .chain(also.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(Refreshed {
            triples: 0,
            last_mark,
            left,
        });
    }
    recompute::recompute(&mut tx, schema, &ids, &[], prune).await?;
    sqlx::query(
        "UPDATE analytics_checkpoint SET last_term_id = $1, terms_processed = terms_processed + $2, updated_at = now()",
    )
    .bind(ids.last().copied())
    .bind(ids.len() as i64)
    .execute(&mut *tx)
    .await?;
    if !marks.is_empty() {
        let mark_ids: Vec<&str> = marks.iter().map(|(id, _)| id.as_str()).collect();
        let versions: Vec<i64> = marks.iter().map(|(_, v)| *v).collect();
        sqlx::query(CLEAR_MARKS)
            .bind(&mark_ids)
            .bind(&versions)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Refreshed {
        triples: ids.len(),
        last_mark,
        left,
    })
}
