//! A realistic, seeded workload in rindexer's stream format.
//!
//! The generator plays a small MultiVault the way the real contract emits
//! its logs (`../shared/rindexer/FORMAT.md` in the project's workspace, and
//! the v0.28 sample): atoms and triples are created, accounts deposit into
//! and redeem from atom, triple and counter-triple vaults on several curves.
//! As on chain, every action's SharePriceChanged events come *before* the
//! action in the same transaction, often several of them: a fee bump of the
//! vault, then its new totals; a triple's creation moves the triple vault,
//! its three atoms' vaults and the counter vault. Vaults start with a
//! minimum of ghost shares held by nobody. Log indexes leave gaps (other
//! contracts' logs).
//!
//! Blocks are published the way rindexer does: per event type to one stream
//! each, in one of two encodings ([`Shape`]). Optionally the chain
//! reorganises ([`Spec::reorgs`]): after some blocks, a `__rindexer_reorg`
//! notice goes to every stream and the chain continues from the fork block
//! with other blocks, some of which re-include abandoned transactions (same
//! hash, maybe the same log index); a reorg can flip back to the abandoned
//! fork, re-publishing it. [`Workload::canonical_events`] is what the
//! tables must reflect: the final chain only.
//!
//! Tests use it to compare the service with direct application and with
//! the independent model; the load generator and benchmarks use it to drive
//! the writer.

mod chain;
mod publish;

use writer::apply::ReadModel;
use writer::event::ChainEvent;
use writer::stream::StreamEntry;

use chain::{Books, Chain};

/// How entries are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Everything SPEC §1 accepts, varied on purpose: numbers as decimal or
    /// hex strings or JSON numbers, ids and addresses in any case with or
    /// without `0x`, `event_data` as an object or an array of 1–`max_batch`
    /// events, the payload in `payload`, `data` or `event_data`.
    Varied,
    /// Exactly what rindexer 0.41 publishes: one `payload` per event type per
    /// block (cut at 75 KB into `-chunk-N` messages), `event_data` always an
    /// array, ids and atom data as lowercase hex without `0x`, lowercase
    /// `0x` addresses, uint256 as decimal strings, `vaultType` and
    /// `block_number` as numbers, `log_index` as minimal `0x` hex,
    /// `block_timestamp` null, `chain_id`, `message_id`, `block_number` on
    /// the envelope.
    Rindexer,
}

/// One stream entry to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index into [`Spec::streams`].
    pub stream: usize,
    /// The entry field carrying the JSON (`payload`, `data` or `event_data`).
    pub field: &'static str,
    pub payload: String,
    /// Chain events in the payload (0 for a reorg notice).
    pub events: usize,
    /// The block of its events (the fork block for a notice).
    pub block: i64,
    /// Whether this entry repeats an earlier one.
    pub duplicate: bool,
    /// Whether its events belong to a fork that a later notice abandons.
    pub abandoned: bool,
    /// Whether this is a reorg notice.
    pub notice: bool,
}

/// A reorganisation the workload contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorg {
    pub fork_block: i64,
    pub depth: i64,
    /// Whether it returns to a fork an earlier notice abandoned.
    pub flip_back: bool,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub seed: u64,
    /// Chain events of the final chain to generate, at least (before
    /// duplication; abandoned forks come on top).
    pub events: usize,
    pub curves: u32,
    pub accounts: usize,
    /// Fraction of entries published a second time, later in their stream
    /// (but before the stream's next reorg notice).
    pub duplicate_ratio: f64,
    /// Largest array batch in one entry ([`Shape::Varied`] only).
    pub max_batch: usize,
    /// Fraction of transactions that emit an event the writer does not know.
    pub generic_ratio: f64,
    pub shape: Shape,
    /// Reorganisations to inject, spread over the chain.
    pub reorgs: usize,
    /// Deepest reorg, in blocks.
    pub max_reorg_depth: i64,
    /// Chance that a reorg is followed by a second notice at the same fork
    /// block returning to the first fork.
    pub flip_back_ratio: f64,
    /// Chance that a transaction of the new fork re-includes an abandoned one.
    pub reinclude_ratio: f64,
    pub network: String,
    /// Stream names for AtomCreated, TripleCreated, Deposited, Redeemed,
    /// SharePriceChanged; unknown events go to the Deposited stream.
    pub streams: [String; 5],
    /// First block number.
    pub first_block: i64,
}

impl Spec {
    /// Encodings varied on purpose ([`Shape::Varied`]), no reorgs.
    pub fn new(seed: u64, events: usize) -> Spec {
        Spec {
            seed,
            events,
            curves: 2,
            accounts: 200,
            duplicate_ratio: 0.1,
            max_batch: 20,
            generic_ratio: 0.02,
            shape: Shape::Varied,
            reorgs: 0,
            max_reorg_depth: 4,
            flip_back_ratio: 0.3,
            reinclude_ratio: 0.5,
            network: "intuition-testnet".to_owned(),
            streams: [
                "intuition_testnet_atom_created",
                "intuition_testnet_triple_created",
                "intuition_testnet_deposited",
                "intuition_testnet_redeemed",
                "intuition_testnet_share_price_changed",
            ]
            .map(str::to_owned),
            first_block: 1_000,
        }
    }

    /// Exactly rindexer's shape ([`Shape::Rindexer`]), with `reorgs` reorgs.
    pub fn rindexer(seed: u64, events: usize, reorgs: usize) -> Spec {
        Spec {
            shape: Shape::Rindexer,
            reorgs,
            ..Spec::new(seed, events)
        }
    }

    /// The same spec with every stream name prefixed (tests give themselves
    /// their own streams).
    pub fn with_stream_prefix(mut self, prefix: &str) -> Spec {
        for s in &mut self.streams {
            *s = format!("{prefix}{s}");
        }
        self
    }

    /// One XADD per entry, pipelined: how a workload is published.
    pub fn xadd<'e>(&self, entries: impl IntoIterator<Item = &'e Entry>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XADD")
                .arg(&self.streams[e.stream])
                .arg("*")
                .arg(e.field)
                .arg(&e.payload)
                .ignore();
        }
        pipe
    }
}

/// The generated entries, in publishing order.
#[derive(Debug, Clone)]
pub struct Workload {
    pub entries: Vec<Entry>,
    /// Distinct chain events of the final chain (what the tables reflect).
    pub unique_events: usize,
    pub reorgs: Vec<Reorg>,
}

impl Workload {
    /// The events of the final chain, decoded, in publishing order: every
    /// entry's events except duplicates, notices and abandoned forks.
    pub fn canonical_events(&self) -> Vec<ChainEvent<'_>> {
        self.entries
            .iter()
            .filter(|e| !e.duplicate && !e.abandoned && !e.notice)
            .flat_map(|e| {
                let d = writer::decode::decode_json(&e.payload);
                assert!(
                    d.errors.is_empty(),
                    "generated entry rejected: {:?}",
                    d.errors
                );
                d.events
            })
            .collect()
    }

    /// The same as [`Workload::canonical_events`] (a workload without reorgs
    /// has nothing else).
    pub fn events(&self) -> Vec<ChainEvent<'_>> {
        self.canonical_events()
    }

    /// Applies the final chain's events directly, in chain order: the
    /// reference the service's tables must equal.
    pub async fn apply_directly(&self, rm: &ReadModel) -> Result<(), sqlx::Error> {
        let mut events = self.canonical_events();
        events.sort_by_key(|e| e.chain.order());
        for chunk in events.chunks(500) {
            rm.apply(chunk).await?;
        }
        Ok(())
    }

    /// The entries in another publishing order that keeps each stream's own
    /// order: rindexer publishes every stream from its own task, so nothing
    /// orders entries across streams.
    pub fn interleaved(&self, seed: u64) -> Vec<&Entry> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut queues: Vec<std::collections::VecDeque<&Entry>> = vec![Default::default(); 5];
        for e in &self.entries {
            queues[e.stream].push_back(e);
        }
        let mut out = Vec::with_capacity(self.entries.len());
        let mut left = self.entries.len();
        while left > 0 {
            // A stream picked in proportion to what it has left.
            let mut pick = rng.usize(..left);
            let q = queues
                .iter_mut()
                .find(|q| {
                    if pick < q.len() {
                        true
                    } else {
                        pick -= q.len();
                        false
                    }
                })
                .expect("entries left");
            out.extend(q.pop_front());
            left -= 1;
        }
        out
    }
}

/// `entries`, in the order given, as the service reads them: from streams
/// `s0`…`s4`, with ids that increase per stream as XADD gives them.
pub fn stream_entries<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> Vec<StreamEntry> {
    let streams: Vec<std::sync::Arc<str>> = (0..5).map(|i| format!("s{i}").into()).collect();
    let mut next = [0u64; 5];
    entries
        .into_iter()
        .map(|e| {
            next[e.stream] += 1;
            StreamEntry {
                stream: streams[e.stream].clone(),
                id: format!("1700000000000-{}", next[e.stream]),
                fields: vec![(e.field.to_owned(), e.payload.as_bytes().to_vec())],
                deliveries: 1,
            }
        })
        .collect()
}

/// Generates the workload described by `spec`.
pub fn generate(spec: &Spec) -> Workload {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let accounts = (0..spec.accounts.max(1))
        .map(|_| random_bytes::<20>(&mut rng))
        .collect();
    let contract = random_bytes::<20>(&mut rng);
    let enc = fastrand::Rng::with_seed(spec.seed ^ 0x5eed_e11c_0de5);
    let mut chain = Chain {
        spec: spec.clone(),
        rng,
        enc,
        accounts,
        contract,
        books: Books::default(),
        block: spec.first_block - 1,
        block_hash: [0; 32],
        timestamp: 1_700_000_000,
        log_index: 0,
        tx_index: 0,
        pending: Vec::new(),
        canonical: 0,
        entries: Vec::new(),
        epoch_start: 0,
        reorgs: Vec::new(),
    };
    // Reorgs happen once the final chain reaches these sizes.
    let mut reorg_at: Vec<usize> = (1..=spec.reorgs)
        .map(|i| spec.events * i / (spec.reorgs + 1))
        .rev()
        .collect();
    chain.start_block();
    while chain.canonical + chain.pending.len() < spec.events {
        if reorg_at
            .last()
            .is_some_and(|&at| chain.canonical + chain.pending.len() >= at)
        {
            reorg_at.pop();
            chain.reorganise();
            continue;
        }
        if chain.rng.u8(..) < 40 {
            chain.end_block();
            chain.start_block();
        }
        let (hash, seed) = (random_bytes(&mut chain.rng), chain.rng.u64(..));
        chain.transaction(hash, seed);
    }
    chain.end_block();
    let unique_events = chain.canonical;
    let mut entries = std::mem::take(&mut chain.entries);
    duplicate(&mut chain.rng, &mut entries, spec.duplicate_ratio);
    Workload {
        entries,
        unique_events,
        reorgs: chain.reorgs,
    }
}

fn random_bytes<const N: usize>(rng: &mut fastrand::Rng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill(&mut out);
    out
}

/// `a * b / d` with a 256-bit intermediate, rounded down.
pub fn mul_div(a: u128, b: u128, d: u128) -> u128 {
    assert!(d != 0);
    // 128×128 → 256 via 64-bit halves.
    let (a_hi, a_lo) = (a >> 64, a & u64::MAX as u128);
    let (b_hi, b_lo) = (b >> 64, b & u64::MAX as u128);
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let hi_hi = a_hi * b_hi;
    let mid = (lo_lo >> 64) + (hi_lo & u64::MAX as u128) + (lo_hi & u64::MAX as u128);
    let lo = (lo_lo & u64::MAX as u128) | (mid << 64);
    let hi = hi_hi + (hi_lo >> 64) + (lo_hi >> 64) + (mid >> 64);
    // Shift-subtract long division of (hi, lo) by d.
    let (mut q, mut r) = (0u128, 0u128);
    for i in (0..256).rev() {
        let bit = if i >= 128 {
            (hi >> (i - 128)) & 1
        } else {
            (lo >> i) & 1
        };
        let carry = r >> 127;
        r = (r << 1) | bit;
        q <<= 1;
        if carry == 1 || r >= d {
            r = r.wrapping_sub(d);
            q |= 1;
        }
    }
    q
}

/// Publishes a share of entries a second time, later in the same stream but
/// before that stream's next reorg notice (a copy after the notice would be
/// the new chain's, which rindexer never re-sends).
fn duplicate(rng: &mut fastrand::Rng, entries: &mut Vec<Entry>, ratio: f64) {
    let copies = (entries.len() as f64 * ratio).round() as usize;
    for _ in 0..copies {
        let original = rng.usize(..entries.len());
        if entries[original].notice {
            continue;
        }
        let next_notice = entries[original..]
            .iter()
            .position(|e| e.notice)
            .map_or(entries.len(), |n| original + n);
        let mut copy = entries[original].clone();
        copy.duplicate = true;
        let at = rng.usize(original + 1..=next_notice);
        entries.insert(at, copy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use writer::decode::decode_json;

    #[test]
    fn mul_div_matches_u128_where_it_fits() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let a = rng.u128(..1 << 60);
            let b = rng.u128(..1 << 60);
            let d = rng.u128(1..1 << 100);
            assert_eq!(mul_div(a, b, d), a * b / d);
        }
        // And past 128 bits: (2^127)·(2^127)/(2^127) = 2^127.
        assert_eq!(mul_div(1 << 127, 1 << 127, 1 << 127), 1 << 127);
        assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), u128::MAX);
    }

    fn check_decodable(w: &Workload) -> std::collections::HashSet<&'static str> {
        let mut names = std::collections::HashSet::new();
        let mut decoded = 0;
        for entry in w.entries.iter().filter(|e| !e.duplicate) {
            let d = decode_json(&entry.payload);
            assert!(d.errors.is_empty(), "{:?} in {}", d.errors, entry.payload);
            assert_eq!(d.events.len(), entry.events);
            assert_eq!(d.reorgs.len(), usize::from(entry.notice));
            for e in &d.events {
                names.insert(e.kind.name());
            }
            if !entry.abandoned {
                decoded += d.events.len();
            }
        }
        assert_eq!(decoded, w.unique_events);
        assert_eq!(w.canonical_events().len(), w.unique_events);
        names
    }

    #[test]
    fn deterministic_and_decodable() {
        let spec = Spec::new(42, 2_000);
        let a = generate(&spec);
        let b = generate(&spec);
        assert_eq!(a.entries, b.entries);
        assert!(
            (2_000..2_100).contains(&a.unique_events),
            "{}",
            a.unique_events
        );
        assert_eq!(check_decodable(&a).len(), 6);
        assert!(a.entries.iter().any(|e| e.duplicate));
        assert!(a.reorgs.is_empty());
    }

    #[test]
    fn rindexer_shape_is_exact() {
        let w = generate(&Spec::rindexer(5, 3_000, 3));
        assert_eq!(check_decodable(&w).len(), 6);
        assert_eq!(w.reorgs.len(), 3);
        for e in &w.entries {
            assert_eq!(e.field, "payload");
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            let data = v["event_data"].as_array().expect("event_data is an array");
            assert!(v["message_id"].as_str().unwrap().ends_with("-chunk-0"));
            if e.notice {
                assert_eq!(v["event_name"], "__rindexer_reorg");
                assert_eq!(data[0]["affected_tx_hashes"], serde_json::json!([]));
                continue;
            }
            assert_eq!(v["block_number"], e.block);
            for ev in data {
                let info = &ev["transaction_information"];
                assert!(info["block_timestamp"].is_null());
                assert!(info["log_index"].as_str().unwrap().starts_with("0x"));
                assert!(info["block_number"].is_number() && info["chain_id"].is_number());
                if let Some(term) = ev.get("termId") {
                    let term = term.as_str().unwrap();
                    assert!(term.len() == 64 && !term.starts_with("0x"), "{term}");
                }
            }
        }
        // Every notice goes to all five streams; abandoned entries precede
        // their stream's notice.
        let notices: Vec<&Entry> = w.entries.iter().filter(|e| e.notice).collect();
        assert_eq!(notices.len() % 5, 0);
        assert!(notices.len() >= 15);
        assert!(w.entries.iter().any(|e| e.abandoned));
    }

    #[test]
    fn share_prices_come_before_their_action() {
        let w = generate(&Spec::rindexer(11, 2_000, 0));
        let events = w.canonical_events();
        let mut by_tx: HashMap<String, Vec<(i64, &'static str)>> = HashMap::new();
        for e in &events {
            by_tx
                .entry(e.chain.transaction_hash.to_string())
                .or_default()
                .push((e.chain.log_index, e.kind.name()));
        }
        let mut several = 0;
        for logs in by_tx.values_mut() {
            logs.sort();
            let prices = logs.iter().filter(|l| l.1 == "SharePriceChanged").count();
            several += usize::from(prices > 1);
            if let Some(first_action) = logs.iter().position(|l| l.1 != "SharePriceChanged") {
                assert!(
                    logs[first_action..]
                        .iter()
                        .all(|l| l.1 != "SharePriceChanged"),
                    "{logs:?}"
                );
            }
        }
        assert!(several > by_tx.len() / 4, "{several} of {}", by_tx.len());
    }

    #[test]
    fn interleaving_keeps_each_streams_order() {
        let w = generate(&Spec::rindexer(3, 1_000, 2));
        let mixed = w.interleaved(9);
        assert_eq!(mixed.len(), w.entries.len());
        for s in 0..5 {
            let a: Vec<&Entry> = w.entries.iter().filter(|e| e.stream == s).collect();
            let b: Vec<&Entry> = mixed.iter().copied().filter(|e| e.stream == s).collect();
            assert_eq!(a, b);
        }
        assert_ne!(
            mixed.iter().map(|e| e.stream).collect::<Vec<_>>(),
            w.entries.iter().map(|e| e.stream).collect::<Vec<_>>()
        );
    }
}
