//! Applying events: each batch's inserts and their whole cascade (position,
//! vault, term, analytics dirty marks) in one Postgres transaction.
//!
//! The shape of a batch transaction (ADR 0001, ADR 0009):
//!
//! 1. take the reorg lock shared;
//! 2. write the event rows ([`events`]: one statement per table), learning
//!    which events are new, which belong to an abandoned fork (not stored)
//!    and which replace a stored event of an abandoned fork — no term locks
//!    yet, so concurrent batches do this part in parallel;
//! 3. take the term locks of the terms the new and replaced events touch,
//!    sorted, so conflicting cascades serialise and never deadlock;
//! 4. cascade exactly the new events (atom, triple, position and vault
//!    rows), recompute the touched terms and mark their triples dirty;
//!    rebuild what replaced events fed ([`rebuild`]);
//! 5. commit.
//!
//! [`ReadModel::apply_isolating`] keeps one bad event from sinking its
//! batch-mates: on a permanent error it bisects the batch into separate
//! transactions until the failing events stand alone.
//! [`ReadModel::apply_partitioned`] splits a large batch by term into parts
//! whose own terms never share a term lock and applies them at once, so the
//! cascades of batches sharing hot terms form several chains instead of
//! one (ADR 0016).

pub mod atom;
pub(crate) mod events;
pub mod position;
pub(crate) mod rebuild;
pub mod source;
pub mod term;
pub mod triple;
pub mod vault;

use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;

use crate::db::{Failure, classify};
use crate::event::{ChainEvent, EventKind};
use crate::lock::{self, Domain, LockSet};
use events::Item;
pub use rebuild::RECENT_BLOCKS;
use rebuild::Rebuild;
use source::StreamIds;
pub use source::{EntryId, Source};

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
    /// Events of an abandoned fork: delivered before a reorg notice on their
    /// stream that covers their block, so not stored.
    pub orphaned: u64,
    /// Events of an abandoned fork superseded by a later delivery of the
    /// same event from the new chain: replaced in the table, or dropped
    /// within the batch.
    pub replaced: u64,
    /// Triples whose analytics are now dirty.
    pub dirty_triples: Vec<String>,
}

impl Applied {
    pub fn absorb(&mut self, other: Applied) {
        self.inserted.add(&other.inserted);
        self.duplicates += other.duplicates;
        self.orphaned += other.orphaned;
        self.replaced += other.replaced;
        self.dirty_triples.extend(other.dirty_triples);
    }
}

/// An event with the stream entry that delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a, 'e> {
    pub source: Source<'a>,
    pub event: &'a ChainEvent<'e>,
}

impl<'a, 'e> Delivered<'a, 'e> {
    /// An event applied outside any stream (tests, benches, tools).
    pub fn direct(event: &'a ChainEvent<'e>) -> Self {
        Delivered {
            source: Source::DIRECT,
            event,
        }
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
    streams: StreamIds,
}

/// The statement that begins a transaction holding the reorg lock: shared
/// by batches and backfill, exclusive by a reorg. Always the first lock a
/// transaction takes (ADR 0004). `BEGIN` and the lock go to Postgres as one
/// simple query: a round trip fewer per batch, and at a steady rate a
/// batch's latency is mostly round trips (benches/README.md). Use with
/// `begin_with` on a connection or pool.
pub(crate) fn begin_reorg_locked(schema: &str, exclusive: bool) -> sqlx::AssertSqlSafe<String> {
    let function = if exclusive {
        "pg_advisory_xact_lock"
    } else {
        "pg_advisory_xact_lock_shared"
    };
    // An integer: nothing to quote.
    let key: i64 = lock::key(schema, Domain::Reorg, "");
    sqlx::AssertSqlSafe(format!("BEGIN; SELECT {function}({key})"))
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

/// A batch's events by kind, each with its stream id and entry.
#[derive(Default)]
struct Kinds<'b> {
    atoms: Vec<Item<'b, crate::event::AtomCreated>>,
    triples: Vec<Item<'b, crate::event::TripleCreated>>,
    deposits: Vec<Item<'b, crate::event::Deposited>>,
    redeems: Vec<Item<'b, crate::event::Redeemed>>,
    prices: Vec<Item<'b, crate::event::SharePriceChanged>>,
    generics: Vec<Item<'b, crate::event::Generic<'b>>>,
}

impl ReadModel {
    pub fn new(pool: PgPool, schema: impl Into<Arc<str>>) -> ReadModel {
        ReadModel {
            pool,
            schema: schema.into(),
            streams: StreamIds::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The ids of stream names (numbering new ones).
    pub(crate) async fn stream_ids(&self, names: &[&str]) -> Result<Vec<i32>, sqlx::Error> {
        self.streams.of(&self.pool, names).await
    }

    /// Applies `events` in one transaction, all of them or none, as if
    /// delivered outside any stream (tests, benches, tools).
    pub async fn apply(&self, events: &[ChainEvent<'_>]) -> Result<Applied, sqlx::Error> {
        self.apply_delivered(events.iter().map(Delivered::direct).collect())
            .await
    }

    /// Applies delivered events in one transaction: all of them or none.
    pub async fn apply_delivered(
        &self,
        mut events: Vec<Delivered<'_, '_>>,
    ) -> Result<Applied, sqlx::Error> {
        // Sorted by identity, then delivery: of several deliveries of one
        // event the latest is kept (it decides, see `events`), and every
        // transaction inserts into each table in the same key order.
        // Identity is per table: on two forks one (transaction, log index)
        // can be events of different kinds.
        let identity = |d: &Delivered<'_, '_>| (d.event.kind.table(), d.event.chain.key());
        let total = events.len();
        events.sort_unstable_by(|a, b| {
            (identity(a), a.source.stream, a.source.entry).cmp(&(
                identity(b),
                b.source.stream,
                b.source.entry,
            ))
        });
        // An earlier delivery with another block hash than the one kept
        // belonged to an abandoned fork: superseded, like a replaced row.
        let mut superseded = 0;
        events.reverse();
        events.dedup_by(|earlier, kept| {
            let same = identity(earlier) == identity(kept);
            if same && earlier.event.chain.block_hash != kept.event.chain.block_hash {
                superseded += 1;
            }
            same
        });
        events.reverse();

        let mut names: Vec<&str> = events.iter().map(|e| e.source.stream).collect();
        names.sort_unstable();
        names.dedup();
        let ids = self.stream_ids(&names).await?;
        let stream_id = |name: &str| ids[names.binary_search(&name).unwrap_or_default()];

        let mut kinds = Kinds::default();
        for d in &events {
            let (stream, entry, chain) =
                (stream_id(d.source.stream), d.source.entry, &d.event.chain);
            macro_rules! item {
                ($event:expr) => {
                    Item {
                        stream,
                        entry,
                        chain,
                        event: $event,
                    }
                };
            }
            match &d.event.kind {
                EventKind::AtomCreated(a) => kinds.atoms.push(item!(a)),
                EventKind::TripleCreated(t) => kinds.triples.push(item!(t)),
                EventKind::Deposited(x) => kinds.deposits.push(item!(x)),
                EventKind::Redeemed(x) => kinds.redeems.push(item!(x)),
                EventKind::SharePriceChanged(x) => kinds.prices.push(item!(x)),
                EventKind::Generic(g) => kinds.generics.push(item!(g)),
            }
        }

        let acquire = Instant::now();
        let mut conn = self.pool.acquire().await?;
        metrics::histogram!("writer_db_acquire_seconds").record(acquire.elapsed().as_secs_f64());
        let stage = Instant::now();
        let mut tx =
            sqlx::Connection::begin_with(&mut *conn, begin_reorg_locked(&self.schema, false))
                .await?;
        let stage = record_stage("reorg_lock", stage);

        // 1. Event rows, without term locks: batches write in parallel, and
        //    each learns which of its events are new.
        let atoms = events::write(&mut tx, &kinds.atoms).await?;
        let triples = events::write(&mut tx, &kinds.triples).await?;
        let deposits = events::write(&mut tx, &kinds.deposits).await?;
        let redeems = events::write(&mut tx, &kinds.redeems).await?;
        let prices = events::write(&mut tx, &kinds.prices).await?;
        let generics = events::write(&mut tx, &kinds.generics).await?;
        let written = [&atoms, &triples, &deposits, &redeems, &prices, &generics];
        let mut rebuild = Rebuild::default();
        for w in written {
            for feed in &w.replaced {
                rebuild.add(feed.clone());
            }
        }

        // 2. Only new events cascade; lock the terms they touch, and those
        //    of rebuilt rows: created atoms and triples (with their counter
        //    terms), and the term of every new vault event.
        let deposits = pick(&kinds.deposits, &deposits.new);
        let redeems = pick(&kinds.redeems, &redeems.new);
        let prices = pick(&kinds.prices, &prices.new);
        let created = term::Created {
            atoms: atoms
                .new
                .iter()
                .map(|&i| kinds.atoms[i].event.term_id.as_str())
                .collect(),
            triples: triples
                .new
                .iter()
                .map(|&i| {
                    let t = kinds.triples[i].event;
                    (t.term_id.as_str(), t.counter_term_id.as_str())
                })
                .collect(),
        };
        let touched: Vec<&str> = created
            .atoms
            .iter()
            .copied()
            .chain(created.triples.iter().flat_map(|(t, c)| [*t, *c]))
            .chain(deposits.iter().map(|i| i.event.term_id.as_str()))
            .chain(redeems.iter().map(|i| i.event.term_id.as_str()))
            .chain(prices.iter().map(|i| i.event.term_id.as_str()))
            .chain(rebuild.terms())
            .collect();
        let stage = record_stage("events", stage);
        lock_terms(&mut tx, &self.schema, &touched).await?;
        let stage = record_stage("term_locks", stage);

        // 3. The cascade, one statement per table.
        atom::recompute(&mut tx, &created.atoms).await?;
        // A second TripleCreated of a triple (only across forks) may move it
        // to other pairs: rebuilt, not patched.
        for i in triple::cascade(&mut tx, &kinds.triples, &triples.new).await? {
            use events::Logged;
            rebuild.add(kinds.triples[i].event.feed());
        }
        let counts = position::cascade(&mut tx, &deposits, &redeems).await?;
        let moves = vault::cascade(&mut tx, &deposits, &redeems, &prices, &counts).await?;
        // The analytics of the triples the batch created or whose vaults it
        // moved are dirty: the term rows it wrote name them (a created
        // triple's pro and counter rows name it too).
        let mut dirty_triples = term::cascade(&mut tx, &created, &moves).await?;
        dirty_triples.sort_unstable();
        dirty_triples.dedup();
        crate::analytics::mark(&mut tx, &dirty_triples).await?;
        dirty_triples.extend(rebuild.run(&mut tx, &self.schema).await?);
        let stage = record_stage("cascade", stage);
        tx.commit().await?;
        record_stage("commit", stage);

        let inserted = KindCounts(written.map(|w| w.new.len() as u64));
        let orphaned: u64 = written.iter().map(|w| w.orphaned).sum();
        let replaced: u64 = superseded
            + written
                .iter()
                .map(|w| w.replaced.len() as u64 / 2)
                .sum::<u64>();
        Ok(Applied {
            duplicates: total as u64 - inserted.total() - orphaned - replaced,
            inserted,
            orphaned,
            replaced,
            dirty_triples,
        })
    }

    /// Applies `events` like [`ReadModel::apply_isolating`], split by term
    /// into `parts` transactions that run at once, each on its own
    /// connection, when the batch holds at least `split.min_events` events
    /// (ADR 0016).
    ///
    /// The parts' own terms never share a term lock ([`lock::part_of`]; the
    /// few cross-part waits are listed in ADR 0016): one part's cascade does
    /// not wait for another's commit, as the cascades of two batches sharing
    /// a hot term do. Every part runs to its end
    /// (none is dropped mid-statement); then the first error, if any, is
    /// returned and the caller retries the batch whole, which is safe
    /// because the parts that committed are no-ops the second time.
    pub async fn apply_partitioned(
        &self,
        events: &[Delivered<'_, '_>],
        escalate: bool,
        split: Partitioning,
    ) -> Result<Isolated, sqlx::Error> {
        let parts = split.parts;
        if parts <= 1 || events.len() < split.min_events {
            return self.apply_isolating(events, escalate).await;
        }
        // Indexes into `events`, per part. Events filed under no term
        // (generic ones) cascade nothing: the first part takes them.
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); parts];
        for (i, d) in events.iter().enumerate() {
            let part = d
                .event
                .kind
                .term_id()
                .map_or(0, |t| lock::part_of(t, parts));
            members[part].push(i);
        }
        let subsets: Vec<Vec<Delivered<'_, '_>>> = members
            .iter()
            .map(|m| m.iter().map(|&i| events[i]).collect())
            .collect();
        // An empty part returns at once, without a connection.
        let results = futures_util::future::join_all(
            subsets.iter().map(|s| self.apply_isolating(s, escalate)),
        )
        .await;
        let mut out = Isolated::default();
        let mut first_error = None;
        for (result, members) in results.into_iter().zip(&members) {
            match result {
                Ok(part) => {
                    out.applied.absorb(part.applied);
                    out.rejected
                        .extend(part.rejected.into_iter().map(|r| Rejected {
                            index: members[r.index],
                            error: r.error,
                        }));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
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
        events: &[Delivered<'_, '_>],
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
            match self.apply_delivered(events[range.clone()].to_vec()).await {
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

/// How large batches are split into concurrent transactions
/// ([`ReadModel::apply_partitioned`], ADR 0016).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    /// Transactions per large batch (APPLY_PARTITIONS); 1 never splits.
    pub parts: usize,
    /// Batches with fewer events apply in one transaction.
    pub min_events: usize,
}

impl Partitioning {
    /// `parts` transactions for batches of [`PARTITION_MIN_EVENTS`] or more.
    pub fn new(parts: usize) -> Partitioning {
        Partitioning {
            parts,
            min_events: PARTITION_MIN_EVENTS,
        }
    }

    /// One transaction per batch, whatever its size (replay, the apply
    /// bench of the Postgres side alone, tests).
    pub const NONE: Partitioning = Partitioning {
        parts: 1,
        min_events: PARTITION_MIN_EVENTS,
    };
}

/// Batches with fewer events apply in one transaction, whatever the number
/// of parts ([`Partitioning`]). A caught-up writer reads a
/// few events per batch, commits them in a couple of milliseconds and
/// seldom waits for another batch's locks: split, its events would wait for
/// two commits instead of one (steady p50 2.5 → 3.3 ms measured,
/// benches/README.md). A batch read while behind holds thousands of events
/// (about 2,000 at the default BATCH_SIZE), whose cascade is what another
/// batch waits for.
pub const PARTITION_MIN_EVENTS: usize = 256;

/// Records the time since `since` as a stage of a batch
/// (`writer_stage_seconds{stage}`); returns now, where the next stage starts.
pub(crate) fn record_stage(stage: &'static str, since: Instant) -> Instant {
    let now = Instant::now();
    metrics::histogram!("writer_stage_seconds", "stage" => stage)
        .record(now.duration_since(since).as_secs_f64());
    now
}

/// The items at `indexes`.
fn pick<'b, E>(items: &[Item<'b, E>], indexes: &[usize]) -> Vec<Item<'b, E>> {
    indexes.iter().map(|&i| items[i]).collect()
}

/// One bind parameter of an `unnest` statement: a field of every row, in
/// row order. The binds of a statement read as its column list.
pub(crate) fn column<'r, R, T>(rows: &'r [R], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}
