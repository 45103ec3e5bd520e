//! Advisory lock keys.
//!
//! Conflicting aggregate updates are serialised with transaction-scoped
//! Postgres advisory locks. A key is the first 8 bytes of
//! `SHA-256("writer/{schema}/{domain}:{id}")`: the full 64 bits (the older
//! writer's 63-bit FNV keys collided far more often), domain-tagged so a term
//! and a migration never share a key, and schema-tagged because advisory
//! locks are per database while two writers may run on two schemas of one
//! database. Keys are taken in sorted order (see [`LockSet`]) so that two
//! transactions can never wait on each other in a cycle.
//!
//! Ids are mapped onto a fixed number of stripes per domain before hashing
//! ([`stripe`], [`LockSet::add_stripes`]): a batch touching thousands of
//! terms then takes at most
//! [`TERM_STRIPES`] locks. Postgres keeps advisory locks in its shared lock
//! table (`max_locks_per_transaction` × connections, 6,400 by default) and a
//! transaction that overflows it fails with "out of shared memory"; striping
//! bounds every writer transaction no matter the batch size. Two ids on one
//! stripe only serialise, never conflict.

use sha2::{Digest, Sha256};

/// What a lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A term and everything aggregated under it: its vaults, their
    /// positions, the term row, and its atom or triple row.
    Term,
    /// Chain reorganisations: applying batches hold it shared, a reorg holds
    /// it exclusively (ADR 0004).
    Reorg,
    /// Schema migrations.
    Migrate,
    /// Analytics rows of (predicate, object) pairs — and of the triples in
    /// them, which are only ever recomputed together with their pairs.
    PredicateObject,
    /// Analytics rows of (subject, predicate) pairs.
    SubjectPredicate,
}

impl Domain {
    fn tag(self) -> &'static str {
        match self {
            Domain::Term => "term",
            Domain::Reorg => "reorg",
            Domain::Migrate => "migrate",
            Domain::PredicateObject => "predicate-object",
            Domain::SubjectPredicate => "subject-predicate",
        }
    }
}

/// The 64-bit advisory lock key of `domain:id` within `schema`.
pub fn key(schema: &str, domain: Domain, id: &str) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"writer/");
    hasher.update(schema.as_bytes());
    hasher.update(b"/");
    hasher.update(domain.tag().as_bytes());
    hasher.update(b":");
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Stripes of term locks: an apply, backfill or reorg transaction holds at
/// most this many (plus the reorg lock).
pub const TERM_STRIPES: u32 = 512;

/// Stripes per pair domain: an analytics transaction holds at most twice
/// this many.
pub const PAIR_STRIPES: u32 = 256;

/// The stripe of the id spelled by `parts` (hashed as their concatenation,
/// so `["p", ":", "o"]` is the stripe of `"p:o"` without building it):
/// FNV-1a mod `stripes`. Its key is `key(schema, domain, "stripe/N")`.
pub fn stripe(parts: &[&str], stripes: u32) -> u32 {
    use std::hash::Hasher;
    let mut fnv = fnv::FnvHasher::default();
    for part in parts {
        fnv.write(part.as_bytes());
    }
    (fnv.finish() % u64::from(stripes.max(1))) as u32
}

/// Which of `parts` transactions applies the events of `term` when a large
/// batch is split ([`crate::apply::ReadModel::apply_partitioned`], ADR 0016):
/// the term's lock stripe, placed in one of `parts` contiguous ranges of
/// stripes. The parts of a batch thus never share the term locks of their
/// own events' terms (for any number of parts, not only divisors of
/// [`TERM_STRIPES`]), and all events of one term, duplicates included, fall
/// in the same part.
pub fn part_of(term: &str, parts: usize) -> usize {
    let parts = parts.clamp(1, TERM_STRIPES as usize);
    stripe(&[term], TERM_STRIPES) as usize * parts / TERM_STRIPES as usize
}

/// A set of lock keys, handed to Postgres sorted and without duplicates.
#[derive(Debug, Default, Clone)]
pub struct LockSet {
    keys: Vec<i64>,
}

impl LockSet {
    pub fn add(&mut self, key: i64) {
        self.keys.push(key);
    }

    /// Adds the keys of `stripes` in `domain`, hashing each distinct stripe
    /// once: a batch of thousands of ids costs at most one SHA-256 per
    /// stripe, not one per id.
    pub fn add_stripes(
        &mut self,
        schema: &str,
        domain: Domain,
        stripes: impl Iterator<Item = u32>,
    ) {
        let mut stripes: Vec<u32> = stripes.collect();
        stripes.sort_unstable();
        stripes.dedup();
        self.keys.extend(
            stripes
                .iter()
                .map(|n| key(schema, domain, &format!("stripe/{n}"))),
        );
    }

    /// The keys in the order they must be taken.
    pub fn into_sorted(mut self) -> Vec<i64> {
        self.keys.sort_unstable();
        self.keys.dedup();
        self.keys
    }

    /// Takes every lock of the set (transaction-scoped, exclusive), sorted,
    /// in one statement; nothing to send when the set is empty.
    pub async fn take(self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.keys.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k")
            .bind(self.into_sorted())
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_domain_and_schema_tagged() {
        let id = "0x01";
        assert_ne!(
            key("public", Domain::Term, id),
            key("public", Domain::PredicateObject, id)
        );
        assert_ne!(
            key("public", Domain::Term, id),
            key("mainnet", Domain::Term, id)
        );
        assert_eq!(
            key("public", Domain::Term, id),
            key("public", Domain::Term, id)
        );
    }

    #[test]
    fn key_is_the_sha256_prefix() {
        // sha256("writer/public/term:x") computed independently with coreutils:
        // printf 'writer/public/term:x' | sha256sum
        // = 536e531f7123518d1d2b…
        assert_eq!(key("public", Domain::Term, "x"), 0x536e_531f_7123_518d_i64);
    }

    #[test]
    fn keys_use_all_64_bits() {
        // Over many ids both signs occur: the top bit is not masked away.
        let keys: Vec<i64> = (0..64)
            .map(|i| key("public", Domain::Term, &i.to_string()))
            .collect();
        assert!(keys.iter().any(|k| *k < 0) && keys.iter().any(|k| *k > 0));
    }

    #[test]
    fn stripes_bound_the_number_of_locks() {
        let ids: Vec<String> = (0..50_000).map(|i| format!("0x{i:064x}")).collect();
        let mut set = LockSet::default();
        set.add_stripes(
            "public",
            Domain::Term,
            ids.iter().map(|id| stripe(&[id], TERM_STRIPES)),
        );
        let keys = set.into_sorted();
        assert_eq!(
            keys.len(),
            TERM_STRIPES as usize,
            "all stripes used, none more"
        );
        assert!(keys.iter().all(|k| {
            (0..TERM_STRIPES).any(|n| *k == key("public", Domain::Term, &format!("stripe/{n}")))
        }));
    }

    #[test]
    fn stripes_of_parts_are_stripes_of_the_joined_id() {
        // Keys must not change between versions: two writers of different
        // versions may run side by side during a rolling deploy.
        for (p, o) in [("0xab", "0xcd"), ("", "x"), ("0x1", "")] {
            assert_eq!(
                stripe(&[p, ":", o], PAIR_STRIPES),
                stripe(&[&format!("{p}:{o}")], PAIR_STRIPES)
            );
        }
        // FNV-1a-64("0xab") = 0xa785a9fafe529a5a (computed independently in
        // Python); mod 512 = 90. The stripe of an id never moves.
        assert_eq!(stripe(&["0xab"], TERM_STRIPES), 90);
        assert_eq!(stripe(&["0x", "ab"], TERM_STRIPES), 90);
    }

    #[test]
    fn parts_share_no_stripe_and_all_are_used() {
        // For any number of parts (3 does not divide 512), a stripe belongs
        // to exactly one part: two parts of a batch never wait for each
        // other's term locks.
        let ids: Vec<String> = (0..20_000).map(|i| format!("0x{i:064x}")).collect();
        for parts in [1, 2, 3, 4, 7, 64] {
            let mut owner: HashMap<u32, usize> = HashMap::new();
            for id in &ids {
                let part = part_of(id, parts);
                assert!(part < parts);
                let first = *owner.entry(stripe(&[id], TERM_STRIPES)).or_insert(part);
                assert_eq!(first, part, "stripe of {id} in two parts ({parts} parts)");
            }
            let mut used: Vec<usize> = owner.values().copied().collect();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), parts, "every part gets terms");
        }
        // Out-of-range counts are clamped, never a panic or an empty range.
        assert_eq!(part_of("0xab", 0), 0);
        assert!(part_of("0xab", usize::MAX) < TERM_STRIPES as usize);
    }

    proptest! {
        #[test]
        fn a_terms_part_follows_its_stripe(term in "[0-9a-fx]{1,66}", parts in 1usize..=64) {
            // Parts are contiguous ranges of stripes, in stripe order.
            let mine = stripe(&[&term], TERM_STRIPES) as usize;
            let part = part_of(&term, parts);
            prop_assert!(part * TERM_STRIPES as usize <= mine * parts);
            prop_assert!(mine * parts < (part + 1) * TERM_STRIPES as usize);
        }

        #[test]
        fn lock_sets_are_sorted_and_unique(keys: Vec<i64>) {
            let mut set = LockSet::default();
            for k in &keys {
                set.add(*k);
            }
            let sorted = set.into_sorted();
            prop_assert!(sorted.windows(2).all(|w| w[0] < w[1]));
            let mut expected = keys.clone();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(sorted, expected);
        }
    }
}
