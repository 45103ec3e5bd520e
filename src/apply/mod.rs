//! Applying events: each batch's inserts and their whole cascade (position,
//! vault, term, analytics dirty marks) in one Postgres transaction.
//!
//! The shape of a batch transaction (ADR 0001):
//!
//! 1. take the reorg lock shared and the term locks of every term the batch
//!    touches, sorted, so concurrent batches serialise per term and never
//!    deadlock;
//! 2. per table, one statement inserts the new events (`ON CONFLICT DO
//!    NOTHING`) and cascades exactly the rows it inserted;
//! 3. recompute the touched terms and mark their triples dirty;
//! 4. commit.
//!
//! [`ReadModel::apply_isolating`] keeps one bad event from sinking its
//! batch-mates: on a permanent error it bisects the batch into separate
//! transactions until the failing events stand alone.

pub mod atom;
mod columns;
mod generic;
pub mod term;
pub mod triple;
pub mod vault;

use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;

use crate::db::{Failure, classify};
use crate::event::{ChainEvent, EventKind, Hash32};
use crate::lock::{self, Domain, LockSet};

/// Event counts per event type, in the order of [`KINDS`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KindCounts(pub [u64; 6]);

/// Event type labels, as used in metrics.
pub const KINDS: [&str; 6] = [
    "AtomCreated",
    "TripleCreated",
    "Deposited",
    "Redeemed",
    "SharePriceChanged",
    "Generic",
];

impl KindCounts {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, other: &KindCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// `(label, count)` for each type with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KINDS.iter().copied().zip(self.0).filter(|(_, n)| *n > 0)
    }
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Events inserted for the first time, by type.
    pub inserted: KindCounts,
    /// Events already present (redeliveries, duplicates within the batch).
    pub duplicates: u64,
    /// Triples whose analytics are now dirty.
    pub dirty_triples: Vec<String>,
}

impl Applied {
    fn absorb(&mut self, other: Applied) {
        self.inserted.add(&other.inserted);
        self.duplicates += other.duplicates;
        self.dirty_triples.extend(other.dirty_triples);
    }
}

/// An event that could not be applied on its own: index into the batch, and
/// the database's reason.
#[derive(Debug)]
pub struct Rejected {
    pub index: usize,
    pub error: sqlx::Error,
}

/// The result of applying a batch with isolation.
#[derive(Debug, Default)]
pub struct Isolated {
    pub applied: Applied,
    pub rejected: Vec<Rejected>,
}

/// The read model in one schema: applies events to it.
#[derive(Debug, Clone)]
pub struct ReadModel {
    pool: PgPool,
    schema: Arc<str>,
}

/// Lock key for the reorg lock, taken shared by batches.
pub(crate) fn reorg_lock_key(schema: &str) -> i64 {
    lock::key(schema, Domain::Reorg, "")
}

/// Takes the reorg lock (shared, or exclusive for a reorg) and then the
/// given keys exclusively, in the order given. One round trip.
pub(crate) async fn take_locks(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    reorg_exclusive: bool,
    sorted_keys: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT CASE WHEN u.ord = 1 AND NOT $3 THEN pg_advisory_xact_lock_shared(u.key)
                     ELSE pg_advisory_xact_lock(u.key) END
         FROM unnest(array_prepend($1::int8, $2::int8[])) WITH ORDINALITY AS u(key, ord)",
    )
    .bind(reorg_lock_key(schema))
    .bind(sorted_keys)
    .bind(reorg_exclusive)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a failure is isolated by bisecting (instead of retried whole).
fn isolable(failure: Failure, escalate: bool) -> bool {
    match failure {
        Failure::Permanent => true,
        Failure::Transient => escalate,
        Failure::Unavailable => false,
    }
}

impl ReadModel {
    pub fn new(pool: PgPool, schema: impl Into<Arc<str>>) -> ReadModel {
        ReadModel {
            pool,
            schema: schema.into(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Applies `events` in one transaction: all of them or none.
    pub async fn apply(&self, events: &[ChainEvent<'_>]) -> Result<Applied, sqlx::Error> {
        let refs: Vec<&ChainEvent<'_>> = events.iter().collect();
        self.apply_refs(refs).await
    }

    async fn apply_refs(&self, mut events: Vec<&ChainEvent<'_>>) -> Result<Applied, sqlx::Error> {
        // Sorted by identity: duplicates within the batch fall out, and every
        // transaction inserts into each table in the same key order.
        let total = events.len();
        events.sort_unstable_by_key(|e| e.chain.key());
        events.dedup_by_key(|e| e.chain.key());

        let mut atoms = atom::AtomRows::default();
        let mut triples = triple::TripleRows::default();
        let mut vaults = vault::VaultRows::default();
        let mut generics = generic::GenericRows::default();
        let mut terms: Vec<Hash32> = Vec::with_capacity(events.len() + 8);
        for e in &events {
            match &e.kind {
                EventKind::AtomCreated(a) => {
                    atoms.push(&e.chain, a);
                    terms.push(a.term_id);
                }
                EventKind::TripleCreated(t) => {
                    triples.push(&e.chain, t);
                    terms.push(t.term_id);
                    terms.push(t.counter_term_id);
                }
                EventKind::Deposited(d) => {
                    vaults.push_deposit(&e.chain, d);
                    terms.push(d.term_id);
                }
                EventKind::Redeemed(r) => {
                    vaults.push_redeem(&e.chain, r);
                    terms.push(r.term_id);
                }
                EventKind::SharePriceChanged(s) => {
                    vaults.push_price(&e.chain, s);
                    terms.push(s.term_id);
                }
                EventKind::Generic(g) => generics.push(&e.chain, g),
            }
        }
        terms.sort_unstable();
        terms.dedup();
        let mut locks = LockSet::with_capacity(terms.len());
        for t in &terms {
            locks.add(lock::key(&self.schema, Domain::Term, t.as_str()));
        }
        let term_ids: Vec<&str> = terms.iter().map(Hash32::as_str).collect();

        let acquire = Instant::now();
        let mut conn = self.pool.acquire().await?;
        metrics::histogram!("writer_db_acquire_seconds").record(acquire.elapsed().as_secs_f64());
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        take_locks(&mut tx, &self.schema, false, &locks.into_sorted()).await?;
        let atoms = atoms.apply(&mut tx).await?;
        let triples = triples.apply(&mut tx).await?;
        let (deposits, redeems, prices) = vaults.apply(&mut tx).await?;
        let generics = generics.apply(&mut tx).await?;
        let dirty_triples = term::refresh(&mut tx, &term_ids).await?;
        let commit = Instant::now();
        tx.commit().await?;
        metrics::histogram!("writer_stage_seconds", "stage" => "commit")
            .record(commit.elapsed().as_secs_f64());

        let inserted = KindCounts(
            [atoms, triples, deposits, redeems, prices, generics].map(|n| n.max(0) as u64),
        );
        Ok(Applied {
            duplicates: total as u64 - inserted.total(),
            inserted,
            dirty_triples,
        })
    }

    /// Applies `events`, isolating failures: on a permanent error the batch
    /// is split in halves, each applied in its own transaction, down to
    /// single events. Events that fail alone are returned as rejected;
    /// everything else is committed.
    ///
    /// Errors that are not permanent (Postgres unreachable, deadlock,
    /// timeout) are returned as such: the caller retries the whole batch,
    /// which is safe because re-applying committed events changes nothing.
    /// With `escalate`, transient errors are isolated like permanent ones
    /// (for a batch that kept failing transiently); unavailability never is.
    pub async fn apply_isolating(
        &self,
        events: &[&ChainEvent<'_>],
        escalate: bool,
    ) -> Result<Isolated, sqlx::Error> {
        let mut out = Isolated::default();
        // Ranges of `events` still to apply, depth-first.
        let mut pending = Vec::with_capacity(8);
        pending.push(0..events.len());
        while let Some(range) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            match self.apply_refs(events[range.clone()].to_vec()).await {
                Ok(applied) => out.applied.absorb(applied),
                Err(e) if !isolable(classify(&e), escalate) => return Err(e),
                Err(e) if range.len() == 1 => out.rejected.push(Rejected {
                    index: range.start,
                    error: e,
                }),
                Err(_) => {
                    let mid = range.start + range.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
            }
        }
        Ok(out)
    }
}
