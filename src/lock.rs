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
    /// Analytics rows of one triple (triple_vault, triple_term).
    AnalyticsTriple,
    /// Analytics rows of one (predicate, object) pair.
    PredicateObject,
    /// Analytics rows of one (subject, predicate) pair.
    SubjectPredicate,
}

impl Domain {
    fn tag(self) -> &'static str {
        match self {
            Domain::Term => "term",
            Domain::Reorg => "reorg",
            Domain::Migrate => "migrate",
            Domain::AnalyticsTriple => "analytics-triple",
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

/// A set of lock keys, handed to Postgres sorted and without duplicates.
#[derive(Debug, Default, Clone)]
pub struct LockSet {
    keys: Vec<i64>,
}

impl LockSet {
    pub fn with_capacity(n: usize) -> LockSet {
        LockSet {
            keys: Vec::with_capacity(n),
        }
    }

    pub fn add(&mut self, key: i64) {
        self.keys.push(key);
    }

    /// The keys in the order they must be taken.
    pub fn into_sorted(mut self) -> Vec<i64> {
        self.keys.sort_unstable();
        self.keys.dedup();
        self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_domain_and_schema_tagged() {
        let id = "0x01";
        assert_ne!(
            key("public", Domain::Term, id),
            key("public", Domain::AnalyticsTriple, id)
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

    proptest! {
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
