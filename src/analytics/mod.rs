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

use sqlx::PgPool;
use tokio::sync::mpsc;

pub use worker::{Worker, WorkerState};

/// The consumer's side of the channel.
#[derive(Debug, Clone)]
pub struct AnalyticsSender(mpsc::Sender<Vec<String>>);

/// The worker's side of the channel.
pub type AnalyticsReceiver = mpsc::Receiver<Vec<String>>;

/// A channel holding up to `capacity` committed batches' triple ids.
pub fn channel(capacity: usize) -> (AnalyticsSender, AnalyticsReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (AnalyticsSender(tx), rx)
}

impl AnalyticsSender {
    /// Offers the triples of one committed batch to the worker, without
    /// waiting. Returns false if the message was dropped (channel full or
    /// worker gone); the dirty marks still carry it.
    pub fn notify(&self, triples: Vec<String>) -> bool {
        if triples.is_empty() {
            return true;
        }
        match self.0.try_send(triples) {
            Ok(()) => true,
            Err(_) => {
                metrics::counter!("writer_analytics_messages_dropped_total").increment(1);
                false
            }
        }
    }
}

/// Which dirty marks a batch takes over.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// These triples, if marked (the channel's hint).
    Listed(&'a [String]),
    /// Up to this many marked triples, in id order (the sweep).
    Any(usize),
}

/// Dirty rows are locked for the transaction; rows another transaction
/// holds are skipped, so several workers (and backfill) share the backlog
/// without waiting on each other.
const CLAIM_LISTED: &str = "SELECT term_id FROM analytics_dirty WHERE term_id = ANY($1::text[]) ORDER BY term_id FOR UPDATE SKIP LOCKED";
const CLAIM_ANY: &str =
    "SELECT term_id FROM analytics_dirty ORDER BY term_id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// One analytics transaction: claims dirty marks, recomputes the claimed
/// triples plus `also`, clears the claimed marks (only now that their
/// analytics commit with it) and records the checkpoint. A writer marking a
/// claimed triple again waits for this commit, so its mark survives.
/// Returns how many triples were recomputed.
pub async fn refresh(
    pool: &PgPool,
    schema: &str,
    claim: Claim<'_>,
    also: &[&str],
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed: Vec<String> = match claim {
        Claim::Listed(ids) => {
            sqlx::query_scalar(CLAIM_LISTED)
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?
        }
        Claim::Any(limit) => {
            sqlx::query_scalar(CLAIM_ANY)
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    let mut ids: Vec<&str> = claimed
        .iter()
        .map(String::as_str)
        .chain(also.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    recompute::recompute(&mut tx, schema, &ids, &[]).await?;
    sqlx::query("DELETE FROM analytics_dirty WHERE term_id = ANY($1::text[])")
        .bind(&claimed)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE analytics_checkpoint SET last_term_id = $1, terms_processed = terms_processed + $2, updated_at = now()",
    )
    .bind(ids.last().copied())
    .bind(ids.len() as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids.len())
}
