//! Where an event was delivered from: its stream and entry id.
//!
//! A reorg notice means something positional (SPEC §1 "Reorgs", ADR 0009):
//! arriving on stream S, it abandons what S delivered *before* it. So every
//! stored event keeps the stream and entry it came from, and every copy of a
//! notice its own. Streams are numbered in the `streams` table; the numbers
//! never change once given, so each process caches them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;

/// A Redis stream entry id (`<ms>-<seq>`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: i64,
    pub seq: i64,
}

impl EntryId {
    /// Parses `<ms>-<seq>`. Parts beyond `i64::MAX` (possible only with
    /// hand-made ids) saturate: such entries still order after every
    /// ordinary one.
    pub fn parse(id: &str) -> Option<EntryId> {
        let (ms, seq) = id.split_once('-')?;
        let part = |s: &str| s.parse::<u64>().ok().map(|v| v.min(i64::MAX as u64) as i64);
        Some(EntryId {
            ms: part(ms)?,
            seq: part(seq)?,
        })
    }
}

/// The stream and entry an event or notice was delivered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    /// The stream's name; empty for events applied directly.
    pub stream: &'a str,
    pub entry: EntryId,
}

impl Source<'_> {
    /// Events applied outside any stream (tests, benches, tools): stream id 0,
    /// never orphaned by a notice.
    pub const DIRECT: Source<'static> = Source {
        stream: "",
        entry: EntryId { ms: 0, seq: 0 },
    };
}

/// Stream name → id, cached. Cloning shares the cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamIds(Arc<RwLock<HashMap<String, i32>>>);

impl StreamIds {
    /// The ids of `names` (in order), numbering streams seen for the first
    /// time. Runs outside the batch transaction: a number given is kept even
    /// if the batch rolls back, which is harmless.
    pub async fn of(&self, pool: &PgPool, names: &[&str]) -> Result<Vec<i32>, sqlx::Error> {
        let missing: Vec<&str> = {
            let cache = self.0.read().unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .copied()
                .filter(|n| !n.is_empty() && !cache.contains_key(*n))
                .collect()
        };
        if !missing.is_empty() {
            // Two statements: after the insert returns, a name another
            // process was inserting meanwhile is committed, so the select
            // (a new snapshot) sees it.
            sqlx::query(
                "INSERT INTO streams (name) SELECT DISTINCT unnest($1::text[])
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&missing)
            .execute(pool)
            .await?;
            let rows: Vec<(String, i32)> =
                sqlx::query_as("SELECT name, id FROM streams WHERE name = ANY($1::text[])")
                    .bind(&missing)
                    .fetch_all(pool)
                    .await?;
            let mut cache = self.0.write().unwrap_or_else(|p| p.into_inner());
            cache.extend(rows);
        }
        let cache = self.0.read().unwrap_or_else(|p| p.into_inner());
        Ok(names
            .iter()
            .map(|n| if n.is_empty() { 0 } else { cache[*n] })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_as_redis_orders_them() {
        let a = EntryId::parse("1700000000000-9").unwrap();
        let b = EntryId::parse("1700000000000-10").unwrap();
        let c = EntryId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(EntryId::parse("0-0"), Some(EntryId::default()));
        assert_eq!(
            EntryId::parse("18446744073709551615-1").map(|e| e.ms),
            Some(i64::MAX)
        );
        for bad in ["", "12", "a-1", "1-", "-1", "1-2-3"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }
}
