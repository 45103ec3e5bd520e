//! Rebuilding what removed or replaced events fed, from the events that
//! remain (ADR 0009).
//!
//! The cascade maintains sums and counts incrementally, which is exact for
//! events added but cannot "undo" one. When events leave the log — a reorg
//! notice orphans them, or a later delivery replaces an event of an
//! abandoned fork — every row they fed is recomputed from scratch instead:
//! atoms and triples (earliest creation; deleted if none remains), positions
//! and vaults (newest values, sums, counts), terms, and the analytics of the
//! triples involved, pruning rows whose vault, triple or pair is gone. The
//! same recompute statements serve `writer backfill`.

use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::events::EventTable;
use super::position::PositionKey;
use super::vault::VaultKey;
use super::{atom, position, term, triple, vault};

/// What one stored event feeds: its term (atom, triple or vault term), a
/// triple's counter term, a position's account, a vault's curve.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Feed {
    kind: FeedKind,
    term: Option<String>,
    counter: Option<String>,
    account: Option<String>,
    curve: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FeedKind {
    Atom,
    Triple,
    /// A Deposited/Redeemed (with an account) or SharePriceChanged.
    Vault,
    /// Events that feed nothing.
    #[default]
    Nothing,
}

impl Feed {
    pub fn atom(term: &str) -> Feed {
        Feed {
            kind: FeedKind::Atom,
            term: Some(term.to_owned()),
            ..Feed::default()
        }
    }

    pub fn triple(term: &str, counter: &str) -> Feed {
        Feed {
            kind: FeedKind::Triple,
            term: Some(term.to_owned()),
            counter: Some(counter.to_owned()),
            ..Feed::default()
        }
    }

    pub fn position(account: &str, term: &str, curve: &str) -> Feed {
        Feed {
            account: Some(account.to_owned()),
            ..Feed::vault(term, curve)
        }
    }

    pub fn vault(term: &str, curve: &str) -> Feed {
        Feed {
            kind: FeedKind::Vault,
            term: Some(term.to_owned()),
            curve: Some(curve.to_owned()),
            ..Feed::default()
        }
    }

    /// Reads `term, counter, account, curve` from columns `first..first + 4`
    /// of a row of `table` (see the tables' `feeds`).
    pub fn of_row(table: &EventTable, row: &PgRow, first: usize) -> Result<Feed, sqlx::Error> {
        use sqlx::Row;
        let kind = match table.name {
            "atom_created_events" => FeedKind::Atom,
            "triple_created_events" => FeedKind::Triple,
            "generic_events" => FeedKind::Nothing,
            _ => FeedKind::Vault,
        };
        Ok(Feed {
            kind,
            term: row.try_get(first)?,
            counter: row.try_get(first + 1)?,
            account: row.try_get(first + 2)?,
            curve: row.try_get(first + 3)?,
        })
    }
}

/// The rows to rebuild.
#[derive(Debug, Default)]
pub(crate) struct Rebuild {
    atoms: Vec<String>,
    triples: Vec<String>,
    positions: Vec<PositionKey>,
    vaults: Vec<VaultKey>,
    terms: Vec<String>,
    /// Where the vaults' newest remaining events are looked for first
    /// ([`Rebuild::look_first_from`]).
    recent_from: Option<i64>,
}

/// Blocks below a reorg's fork block that the vaults' rebuild reads first:
/// a vault a reorg touched was active then, so its newest remaining event
/// is seldom further back (128 blocks: ~4 minutes on Base, a few thousand
/// events of this workload). Any value gives the same rows.
pub const RECENT_BLOCKS: i64 = 128;

impl Rebuild {
    pub fn add(&mut self, feed: Feed) {
        let Feed {
            kind,
            term,
            counter,
            account,
            curve,
        } = feed;
        let Some(term) = term else { return };
        match kind {
            FeedKind::Atom => self.atoms.push(term.clone()),
            FeedKind::Triple => self.triples.push(term.clone()),
            FeedKind::Vault => {
                if let Some(curve) = curve {
                    if let Some(account) = account {
                        self.positions.push((account, term.clone(), curve.clone()));
                    }
                    self.vaults.push((term.clone(), curve));
                }
            }
            FeedKind::Nothing => return,
        }
        self.terms.extend(counter);
        self.terms.push(term);
    }

    /// The removed events are at blocks ≥ `fork_block` (a reorg): the
    /// vaults' newest remaining events are looked for from
    /// [`RECENT_BLOCKS`] below it first, instead of through each term's
    /// whole history (`vault::recompute`).
    pub fn look_first_from(&mut self, fork_block: i64) {
        let from = fork_block.saturating_sub(RECENT_BLOCKS);
        self.recent_from = Some(self.recent_from.map_or(from, |b| b.min(from)));
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Every term whose rows are rebuilt: their locks must be held.
    pub fn terms(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(String::as_str)
    }

    /// Rebuilds everything, analytics included, in the caller's transaction;
    /// returns the triples whose analytics it recomputed (and marked dirty).
    /// Callers hold the term locks of [`Rebuild::terms`] or the exclusive
    /// reorg lock.
    pub async fn run(
        mut self,
        conn: &mut PgConnection,
        schema: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        for list in [&mut self.atoms, &mut self.triples, &mut self.terms] {
            list.sort_unstable();
            list.dedup();
        }
        self.positions.sort_unstable();
        self.positions.dedup();
        self.vaults.sort_unstable();
        self.vaults.dedup();
        let atoms: Vec<&str> = self.atoms.iter().map(String::as_str).collect();
        let triples: Vec<&str> = self.triples.iter().map(String::as_str).collect();
        let terms: Vec<&str> = self.terms.iter().map(String::as_str).collect();
        atom::recompute(&mut *conn, &atoms).await?;
        let removed_triples = triple::recompute(&mut *conn, &triples).await?;
        position::recompute(&mut *conn, &self.positions).await?;
        vault::recompute(&mut *conn, &self.vaults, self.recent_from).await?;
        let mut dirty = term::recompute(&mut *conn, &terms).await?;
        dirty.sort_unstable();
        dirty.dedup();
        crate::analytics::mark(&mut *conn, &dirty).await?;
        let affected: Vec<&str> = dirty.iter().map(String::as_str).collect();
        // The worker's normal pass only adds and updates analytics rows
        // (vaults and triples disappear only here), so the rows of every
        // affected triple are rebuilt here with pruning. Removed triples are
        // nobody's dirty mark: passed explicitly.
        crate::analytics::recompute::recompute(
            &mut *conn,
            schema,
            &affected,
            &removed_triples,
            true,
        )
        .await?;
        Ok(dirty)
    }
}
