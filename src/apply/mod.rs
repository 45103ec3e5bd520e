//! Applying events: each batch's inserts and their whole cascade (position,
//! vault, term, analytics dirty marks) in one Postgres transaction.
//!
//! The shape of a batch transaction (ADR 0001):
//!
//! 1. take the reorg lock shared;
//! 2. insert the event rows (`ON CONFLICT DO NOTHING`, one statement per
//!    table), learning which events are new — no term locks yet, so
//!    concurrent batches do this part in parallel;
//! 3. take the term locks of the terms the *new* events touch, sorted, so
//!    conflicting cascades serialise and never deadlock;
//! 4. cascade exactly the new events (atom, triple, position and vault
//!    rows), recompute the touched terms and mark their triples dirty;
//! 5. commit.
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
use crate::event::{ChainEvent, EventKind};
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
    pub fn absorb(&mut self, other: Applied) {
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

/// Takes the reorg lock: shared by batches and backfill, exclusive by a
/// reorg. Always the first lock a transaction takes (ADR 0004).
pub(crate) async fn lock_reorg(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    exclusive: bool,
) -> Result<(), sqlx::Error> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock($1)"
    } else {
        "SELECT pg_advisory_xact_lock_shared($1)"
    };
    sqlx::query(sql)
        .bind(lock::key(schema, Domain::Reorg, ""))
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the term locks (stripes) of `terms`, in any order and with
/// repeats, sorted, in one statement.
pub(crate) async fn lock_terms(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    terms: &[&str],
) -> Result<(), sqlx::Error> {
    let mut locks = LockSet::default();
    locks.add_stripes(
        schema,
        Domain::Term,
        terms.iter().map(|t| lock::stripe(&[t], lock::TERM_STRIPES)),
    );
    locks.take(conn).await
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

        let mut atoms = atom::Atoms::default();
        let mut triples = triple::Triples::default();
        let mut vaults = vault::VaultEvents::default();
        let mut generics = generic::Generics::default();
        for e in &events {
            match &e.kind {
                EventKind::AtomCreated(a) => atoms.events.push((&e.chain, a)),
                EventKind::TripleCreated(t) => triples.events.push((&e.chain, t)),
                EventKind::Deposited(d) => vaults.deposits.push((&e.chain, d)),
                EventKind::Redeemed(r) => vaults.redeems.push((&e.chain, r)),
                EventKind::SharePriceChanged(p) => vaults.prices.push((&e.chain, p)),
                EventKind::Generic(g) => generics.events.push((&e.chain, g)),
            }
        }

        let acquire = Instant::now();
        let mut conn = self.pool.acquire().await?;
        metrics::histogram!("writer_db_acquire_seconds").record(acquire.elapsed().as_secs_f64());
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        lock_reorg(&mut tx, &self.schema, false).await?;

        // 1. Event rows, without term locks: batches insert in parallel, and
        //    each learns which of its events are new.
        let new_atoms = atoms.insert(&mut tx).await?;
        let new_triples = triples.insert(&mut tx).await?;
        let new_vault_events = vaults.insert(&mut tx).await?;
        let generics = generics.insert(&mut tx).await?;

        // 2. Only new events cascade; lock the terms they touch. Created
        //    atoms and triples (with their counter terms) change term rows;
        //    every new vault event moves its term's vaults.
        let created: Vec<&str> = atoms
            .terms(&new_atoms)
            .chain(triples.terms(&new_triples))
            .collect();
        let mut moved: Vec<&str> = vaults.terms(&new_vault_events).collect();
        moved.sort_unstable();
        moved.dedup();
        let touched: Vec<&str> = created.iter().chain(&moved).copied().collect();
        lock_terms(&mut tx, &self.schema, &touched).await?;

        // 3. The cascade.
        atoms.cascade(&mut tx, &new_atoms).await?;
        triples.cascade(&mut tx, &new_triples).await?;
        let created_vaults = vaults.cascade(&mut tx, &new_vault_events).await?;
        // Term rows change with atoms, triples, new vaults and share prices;
        // the analytics of triples whose vaults moved are dirty.
        let mut refresh = created;
        refresh.extend(vaults.price_terms(&new_vault_events));
        refresh.extend(created_vaults.iter().map(String::as_str));
        refresh.sort_unstable();
        refresh.dedup();
        let dirty_triples = term::refresh(&mut tx, &refresh, &moved).await?;
        let commit = Instant::now();
        tx.commit().await?;
        metrics::histogram!("writer_stage_seconds", "stage" => "commit")
            .record(commit.elapsed().as_secs_f64());

        let inserted = KindCounts([
            new_atoms.len() as u64,
            new_triples.len() as u64,
            new_vault_events.deposits.len() as u64,
            new_vault_events.redeems.len() as u64,
            new_vault_events.prices.len() as u64,
            generics,
        ]);
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
