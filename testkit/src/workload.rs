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

use std::collections::HashMap;
use std::fmt::Write as _;

use sha3::{Digest, Keccak256};
use writer::apply::ReadModel;
use writer::decode::value::{Hash32, counter_term_id};
use writer::event::ChainEvent;

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

const ONE: u128 = 1_000_000_000_000_000_000; // 10^18
/// Shares every vault starts with, owned by nobody (as on chain).
const GHOST_SHARES: u128 = 1_000_000;
/// rindexer cuts messages at 75 KB.
const CHUNK_BYTES: usize = 75 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Atom = 0,
    Triple = 1,
    Deposit = 2,
    Redeem = 3,
    Price = 4,
}

const KINDS: [Kind; 5] = [
    Kind::Atom,
    Kind::Triple,
    Kind::Deposit,
    Kind::Redeem,
    Kind::Price,
];

impl Kind {
    fn event_name(self) -> &'static str {
        match self {
            Kind::Atom => "AtomCreated",
            Kind::Triple => "TripleCreated",
            Kind::Deposit => "Deposited",
            Kind::Redeem => "Redeemed",
            Kind::Price => "SharePriceChanged",
        }
    }

    /// The ABI signature, whose Keccak-256 is the log's topic0.
    fn signature(self) -> &'static str {
        match self {
            Kind::Atom => "AtomCreated(address,bytes32,bytes,address)",
            Kind::Triple => "TripleCreated(address,bytes32,bytes32,bytes32,bytes32)",
            Kind::Deposit => {
                "Deposited(address,address,bytes32,uint256,uint256,uint256,uint256,uint256,uint8)"
            }
            Kind::Redeem => {
                "Redeemed(address,address,bytes32,uint256,uint256,uint256,uint256,uint256,uint8)"
            }
            Kind::Price => "SharePriceChanged(bytes32,uint256,uint256,uint256,uint256,uint8)",
        }
    }
}

/// A value before encoding.
#[derive(Clone, Debug)]
enum Value {
    Address([u8; 20]),
    Id([u8; 32]),
    Bytes(Vec<u8>),
    Amount(u128),
    Small(i64),
}

/// One generated chain event, before encoding.
#[derive(Clone, Debug)]
struct Generated {
    kind: Kind,
    /// Generic events: their name.
    generic: Option<&'static str>,
    block: i64,
    log_index: i64,
    tx_hash: [u8; 32],
    tx_index: i64,
    fields: Vec<(&'static str, Value)>,
}

#[derive(Default, Clone, Copy)]
struct VaultBook {
    shares: u128,
    assets: u128,
}

/// The contract's state: what a snapshot restores at a fork.
#[derive(Clone, Default)]
struct Books {
    atoms: Vec<[u8; 32]>,
    triples: Vec<([u8; 32], [u8; 32])>,
    /// (triple, its atoms)
    triple_atoms: HashMap<[u8; 32], [[u8; 32]; 3]>,
    vaults: HashMap<([u8; 32], u32), VaultBook>,
    positions: HashMap<(usize, [u8; 32], u32), u128>,
    /// Positions with shares, and their vault type.
    open_positions: Vec<(usize, [u8; 32], u32, u8)>,
}

/// The chain at the head: block being built and its events.
struct Chain {
    spec: Spec,
    /// Decides blocks, transactions and reorgs.
    rng: fastrand::Rng,
    /// Varies encodings (its own stream, so encodings never change the chain).
    enc: fastrand::Rng,
    accounts: Vec<[u8; 20]>,
    contract: [u8; 20],
    books: Books,
    block: i64,
    block_hash: [u8; 32],
    timestamp: i64,
    log_index: i64,
    tx_index: i64,
    /// Events of the block being built.
    pending: Vec<Generated>,
    /// Events of the final chain so far (the head's fork).
    canonical: usize,
    /// Published entries, in order.
    entries: Vec<Entry>,
    /// Index of the first entry after the latest notices.
    epoch_start: usize,
    reorgs: Vec<Reorg>,
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

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
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

/// What a deposit of `assets` leaves after the 1 % entry fee.
fn after_fees(assets: u128) -> u128 {
    assets - assets / 100
}

fn price_of(book: VaultBook) -> u128 {
    if book.shares == 0 {
        ONE
    } else {
        mul_div(book.assets, ONE, book.shares).max(1)
    }
}

// ---- the chain -----------------------------------------------------------

impl Chain {
    fn start_block(&mut self) {
        self.block += 1;
        self.block_hash = random_bytes(&mut self.rng);
        self.timestamp += 2;
        self.log_index = 0;
        self.tx_index = 0;
    }

    /// Publishes the block being built.
    fn end_block(&mut self) {
        let events = std::mem::take(&mut self.pending);
        self.canonical += events.len();
        self.publish_block(&events);
    }

    /// Ends the block, then forks: some blocks are abandoned by a notice on
    /// every stream and replaced by others from the fork block on.
    fn reorganise(&mut self) {
        self.end_block();
        let depth = self.rng.i64(1..=self.spec.max_reorg_depth.max(1));
        let fork_block = self.block + 1;
        let flip_back = self.rng.f64() < self.spec.flip_back_ratio;
        let before = self.books.clone();
        let first_entry = self.entries.len();

        // Fork A: `depth` blocks, published, then abandoned.
        let mut abandoned_txs = Vec::new();
        self.build_blocks(depth, &mut abandoned_txs, &mut Vec::new());
        let fork_a = self.entries[first_entry..].to_vec();
        let after_a = (self.books.clone(), self.block, self.timestamp);
        self.notice(fork_block, depth);

        // Fork B from the same parent, re-including some of A's
        // transactions.
        self.books = before;
        self.block = fork_block - 1;
        self.build_blocks(depth, &mut Vec::new(), &mut abandoned_txs);
        if flip_back {
            // Back to A: its blocks are published again, as they were.
            self.notice(fork_block, depth);
            for mut e in fork_a {
                e.abandoned = false;
                self.canonical += e.events;
                self.entries.push(e);
            }
            (self.books, self.block, self.timestamp) = after_a;
        }
        self.reorgs.push(Reorg {
            fork_block,
            depth,
            flip_back,
        });
        self.start_block();
    }

    /// Builds and publishes `blocks` blocks; records their transactions in
    /// `txs`, and re-includes transactions from `reinclude`.
    fn build_blocks(
        &mut self,
        blocks: i64,
        txs: &mut Vec<([u8; 32], u64)>,
        reinclude: &mut Vec<([u8; 32], u64)>,
    ) {
        for _ in 0..blocks {
            self.start_block();
            for _ in 0..self.rng.usize(1..8) {
                let tx = if !reinclude.is_empty() && self.rng.f64() < self.spec.reinclude_ratio {
                    reinclude.remove(0)
                } else {
                    (random_bytes(&mut self.rng), self.rng.u64(..))
                };
                txs.push(tx);
                self.transaction(tx.0, tx.1);
            }
            self.end_block();
        }
    }

    /// Publishes a reorg notice to every stream; everything published since
    /// the previous notices at blocks ≥ `fork_block` is abandoned.
    fn notice(&mut self, fork_block: i64, depth: i64) {
        for e in &mut self.entries[self.epoch_start..] {
            if e.block >= fork_block && !e.notice {
                e.abandoned = true;
                self.canonical -= e.events;
            }
        }
        let payload = format!(
            "{{\"event_name\":\"__rindexer_reorg\",\"event_signature_hash\":\"0x{zero:064x}\",\"event_data\":[{{\"type\":\"reorg\",\"network\":\"{network}\",\"fork_block\":{fork_block},\"depth\":{depth},\"events_deleted\":0,\"affected_tx_hashes\":[],\"affected_events\":[]}}],\"network\":\"{network}\",\"message_id\":\"rindexer_stream__-reorg_{network}_{fork_block}-chunk-0\",\"block_number\":0}}",
            zero = 0,
            network = self.spec.network,
        );
        for stream in 0..5 {
            self.entries.push(Entry {
                stream,
                field: "payload",
                payload: payload.clone(),
                events: 0,
                block: fork_block,
                duplicate: false,
                abandoned: false,
                notice: true,
            });
        }
        self.epoch_start = self.entries.len();
    }

    /// One transaction, its content drawn from `seed` against the current
    /// state (so a re-included transaction adapts to its new fork).
    fn transaction(&mut self, hash: [u8; 32], seed: u64) {
        let mut tx = Tx {
            rng: fastrand::Rng::with_seed(seed),
            hash,
            events: Vec::new(),
        };
        self.tx_index += 1;
        let roll = tx.rng.u32(..100);
        if tx.rng.f64() < self.spec.generic_ratio {
            let value = tx.rng.u128(1..ONE * 10);
            let from = self.accounts[0];
            tx.emit_generic(
                "Transfer",
                vec![
                    ("from", Value::Address(from)),
                    ("value", Value::Amount(value)),
                ],
            );
        } else if roll < 20 || self.books.atoms.len() < 3 {
            self.create_atom(&mut tx);
        } else if roll < 35 {
            self.create_triple(&mut tx);
        } else if roll < 75 || self.books.open_positions.is_empty() {
            self.deposit(&mut tx);
        } else {
            self.redeem(&mut tx);
        }
        for (kind, generic, fields) in tx.events {
            // Other contracts' logs sit in between now and then.
            self.log_index += i64::from(self.rng.u8(..4) == 0);
            self.pending.push(Generated {
                kind,
                generic,
                block: self.block,
                log_index: self.log_index,
                tx_hash: tx.hash,
                tx_index: self.tx_index,
                fields,
            });
            self.log_index += 1;
        }
    }

    fn account(&self, tx: &mut Tx) -> usize {
        tx.rng.usize(..self.accounts.len())
    }

    /// A vault's totals as a SharePriceChanged.
    fn share_price(&self, tx: &mut Tx, term: [u8; 32], curve: u32, vault_type: u8) {
        let book = self.books.vaults[&(term, curve)];
        tx.emit(
            Kind::Price,
            vec![
                ("termId", Value::Id(term)),
                ("curveId", Value::Amount(curve as u128)),
                ("sharePrice", Value::Amount(price_of(book))),
                ("totalAssets", Value::Amount(book.assets)),
                ("totalShares", Value::Amount(book.shares)),
                ("vaultType", Value::Small(vault_type as i64)),
            ],
        );
    }

    /// Assets added to a vault that has shares, without minting any (a fee
    /// paid to it): its price rises.
    fn fee_bump(&mut self, tx: &mut Tx, term: [u8; 32], curve: u32, vault_type: u8) {
        let Some(book) = self.books.vaults.get_mut(&(term, curve)) else {
            return;
        };
        if book.shares <= GHOST_SHARES {
            return;
        }
        book.assets += (book.assets / 200).max(1);
        self.share_price(tx, term, curve, vault_type);
    }

    /// Mints shares for `assets` into a vault (created with its ghost shares
    /// if new) for `account`; returns (shares, account's total shares).
    fn mint(
        &mut self,
        account: usize,
        term: [u8; 32],
        curve: u32,
        vault_type: u8,
        assets: u128,
    ) -> (u128, u128) {
        let book = self.books.vaults.entry((term, curve)).or_insert(VaultBook {
            shares: GHOST_SHARES,
            assets: GHOST_SHARES,
        });
        let shares = mul_div(assets, ONE, price_of(*book)).max(1);
        book.shares += shares;
        book.assets += assets;
        let position = self
            .books
            .positions
            .entry((account, term, curve))
            .or_default();
        if *position == 0 {
            self.books
                .open_positions
                .push((account, term, curve, vault_type));
        }
        *position += shares;
        (shares, *position)
    }

    fn create_vault(&mut self, term: [u8; 32], curve: u32) {
        self.books.vaults.entry((term, curve)).or_insert(VaultBook {
            shares: GHOST_SHARES,
            assets: GHOST_SHARES,
        });
    }

    fn create_atom(&mut self, tx: &mut Tx) {
        let term = random_bytes::<32>(&mut tx.rng);
        self.books.atoms.push(term);
        let data: Vec<u8> = match tx.rng.u8(..20) {
            0 => vec![0xff, 0x00, 0x13, 0x37],
            1 => b"with\0nul".to_vec(),
            2 => Vec::new(),
            _ => format!("ipfs://bafy{:016x}", tx.rng.u64(..)).into_bytes(),
        };
        let creator = self.account(tx);
        let wallet = random_bytes::<20>(&mut tx.rng);
        let assets = tx.rng.u128(ONE / 100..ONE * 30);
        let minted = self.mint(creator, term, 1, 0, after_fees(assets));
        self.share_price(tx, term, 1, 0);
        tx.emit(
            Kind::Atom,
            vec![
                ("creator", Value::Address(self.accounts[creator])),
                ("termId", Value::Id(term)),
                ("atomData", Value::Bytes(data)),
                ("atomWallet", Value::Address(wallet)),
            ],
        );
        self.deposited(tx, (creator, creator), (term, 1, 0), assets, minted);
    }

    fn create_triple(&mut self, tx: &mut Tx) {
        let atoms = &self.books.atoms;
        let pick = |rng: &mut fastrand::Rng, among: &[[u8; 32]]| among[rng.usize(..among.len())];
        // A few popular predicates and objects, so pairs repeat.
        let hot = atoms.len().min(8);
        let subject = pick(&mut tx.rng, atoms);
        let predicate = pick(&mut tx.rng, &atoms[..hot]);
        let object = if tx.rng.bool() {
            pick(&mut tx.rng, &atoms[..hot])
        } else {
            pick(&mut tx.rng, atoms)
        };
        let term = random_bytes::<32>(&mut tx.rng);
        let counter = counter_term_id(&Hash32::from_bytes(&term)).to_bytes();
        self.books.triples.push((term, counter));
        self.books
            .triple_atoms
            .insert(term, [subject, predicate, object]);
        let creator = self.account(tx);
        let assets = tx.rng.u128(ONE / 100..ONE * 30);
        // The triple's vault, a fee to each of its atoms, the counter vault.
        let minted = self.mint(creator, term, 1, 1, after_fees(assets));
        self.share_price(tx, term, 1, 1);
        for atom in [subject, predicate, object] {
            self.fee_bump(tx, atom, 1, 0);
        }
        self.create_vault(counter, 1);
        self.share_price(tx, counter, 1, 2);
        tx.emit(
            Kind::Triple,
            vec![
                ("creator", Value::Address(self.accounts[creator])),
                ("termId", Value::Id(term)),
                ("subjectId", Value::Id(subject)),
                ("predicateId", Value::Id(predicate)),
                ("objectId", Value::Id(object)),
            ],
        );
        self.deposited(tx, (creator, creator), (term, 1, 1), assets, minted);
    }

    fn pick_vault(&self, tx: &mut Tx) -> ([u8; 32], u8, u32) {
        let curve = 1 + tx.rng.u32(..self.spec.curves.max(1));
        let b = &self.books;
        if b.triples.is_empty() || tx.rng.bool() {
            (b.atoms[tx.rng.usize(..b.atoms.len())], 0, curve)
        } else {
            let (pro, counter) = b.triples[tx.rng.usize(..b.triples.len())];
            if tx.rng.bool() {
                (pro, 1, curve)
            } else {
                (counter, 2, curve)
            }
        }
    }

    fn deposit(&mut self, tx: &mut Tx) {
        let (term, vault_type, curve) = self.pick_vault(tx);
        let account = self.account(tx);
        let assets = tx.rng.u128(ONE / 1000..ONE * 10);
        // The entry fee goes to the vault first (a price bump), then the
        // deposit mints.
        self.fee_bump(tx, term, curve, vault_type);
        let minted = self.mint(account, term, curve, vault_type, after_fees(assets));
        self.share_price(tx, term, curve, vault_type);
        let sender = if tx.rng.u8(..10) == 0 {
            self.account(tx)
        } else {
            account
        };
        self.deposited(
            tx,
            (sender, account),
            (term, curve, vault_type),
            assets,
            minted,
        );
    }

    /// A Deposited of `assets` (fees included) by `sender` for `receiver`
    /// into a vault (term, curve, type) that minted (shares, receiver's
    /// total shares).
    fn deposited(
        &self,
        tx: &mut Tx,
        (sender, receiver): (usize, usize),
        (term, curve, vault_type): ([u8; 32], u32, u8),
        assets: u128,
        (shares, total_shares): (u128, u128),
    ) {
        tx.emit(
            Kind::Deposit,
            vec![
                ("sender", Value::Address(self.accounts[sender])),
                ("receiver", Value::Address(self.accounts[receiver])),
                ("termId", Value::Id(term)),
                ("curveId", Value::Amount(curve as u128)),
                ("assets", Value::Amount(assets)),
                ("assetsAfterFees", Value::Amount(after_fees(assets))),
                ("shares", Value::Amount(shares)),
                ("totalShares", Value::Amount(total_shares)),
                ("vaultType", Value::Small(vault_type as i64)),
            ],
        );
    }

    fn redeem(&mut self, tx: &mut Tx) {
        let slot = tx.rng.usize(..self.books.open_positions.len());
        let (account, term, curve, vault_type) = self.books.open_positions[slot];
        let held = self.books.positions[&(account, term, curve)];
        let shares = if tx.rng.u8(..10) < 3 {
            held
        } else {
            tx.rng.u128(1..=held)
        };
        self.fee_bump(tx, term, curve, vault_type);
        let book = self
            .books
            .vaults
            .get_mut(&(term, curve))
            .expect("position has a vault");
        let gross = mul_div(shares, book.assets, book.shares);
        let fees = gross / 100;
        book.shares -= shares;
        book.assets -= gross - fees;
        let remaining = held - shares;
        self.books
            .positions
            .insert((account, term, curve), remaining);
        if remaining == 0 {
            self.books.open_positions.swap_remove(slot);
        }
        self.share_price(tx, term, curve, vault_type);
        let receiver = self.accounts[account];
        tx.emit(
            Kind::Redeem,
            vec![
                ("sender", Value::Address(receiver)),
                ("receiver", Value::Address(receiver)),
                ("termId", Value::Id(term)),
                ("curveId", Value::Amount(curve as u128)),
                ("shares", Value::Amount(shares)),
                ("totalShares", Value::Amount(remaining)),
                ("assets", Value::Amount(gross - fees)),
                ("fees", Value::Amount(fees)),
                ("vaultType", Value::Small(vault_type as i64)),
            ],
        );
    }
}

/// A transaction being built: its own randomness and its logs in order.
struct Tx {
    rng: fastrand::Rng,
    hash: [u8; 32],
    #[allow(clippy::type_complexity)]
    events: Vec<(Kind, Option<&'static str>, Vec<(&'static str, Value)>)>,
}

impl Tx {
    fn emit(&mut self, kind: Kind, fields: Vec<(&'static str, Value)>) {
        self.events.push((kind, None, fields));
    }

    /// An event the writer does not know, on the Deposited stream.
    fn emit_generic(&mut self, name: &'static str, fields: Vec<(&'static str, Value)>) {
        self.events.push((Kind::Deposit, Some(name), fields));
    }
}

// ---- publishing ----------------------------------------------------------

impl Chain {
    /// Publishes one block's events: per event type (unknown events on the
    /// Deposited stream, one entry each).
    fn publish_block(&mut self, events: &[Generated]) {
        let Some(block) = events.first().map(|e| e.block) else {
            return;
        };
        for kind in KINDS {
            let group: Vec<&Generated> = events
                .iter()
                .filter(|e| e.kind == kind && e.generic.is_none())
                .collect();
            if group.is_empty() {
                continue;
            }
            match self.spec.shape {
                Shape::Varied => {
                    let mut rest = &group[..];
                    while !rest.is_empty() {
                        let take = self
                            .enc
                            .usize(1..=self.spec.max_batch.max(1))
                            .min(rest.len());
                        let (chunk, tail) = rest.split_at(take);
                        self.push_entry(kind, kind.event_name(), chunk, block, 0);
                        rest = tail;
                    }
                }
                Shape::Rindexer => {
                    // Chunks of at most 75 KB, numbered.
                    let mut chunk_no = 0;
                    let mut start = 0;
                    let mut bytes = 0;
                    for (i, e) in group.iter().enumerate() {
                        let size = self.body(e).len() + 1;
                        if bytes + size > CHUNK_BYTES && i > start {
                            self.push_entry(
                                kind,
                                kind.event_name(),
                                &group[start..i],
                                block,
                                chunk_no,
                            );
                            chunk_no += 1;
                            start = i;
                            bytes = 0;
                        }
                        bytes += size;
                    }
                    self.push_entry(kind, kind.event_name(), &group[start..], block, chunk_no);
                }
            }
        }
        for e in events.iter().filter(|e| e.generic.is_some()) {
            let name = e.generic.unwrap_or("Unknown");
            self.push_entry(Kind::Deposit, name, &[e], block, 0);
        }
    }

    fn push_entry(
        &mut self,
        kind: Kind,
        name: &str,
        chunk: &[&Generated],
        block: i64,
        chunk_no: usize,
    ) {
        let mut bodies: Vec<String> = chunk.iter().map(|e| self.body(e)).collect();
        let signature = if name == kind.event_name() {
            hex(&Keccak256::digest(kind.signature().as_bytes()))
        } else {
            hex(&Keccak256::digest(
                format!("{name}(address,uint256)").as_bytes(),
            ))
        };
        let network = self.spec.network.clone();
        let (payload, field) = match self.spec.shape {
            Shape::Varied => {
                let event_data = if bodies.len() == 1 && self.enc.bool() {
                    bodies.pop().unwrap_or_default()
                } else {
                    format!("[{}]", bodies.join(","))
                };
                let field = match self.enc.u8(..100) {
                    0..=4 => "data",
                    5..=9 => "event_data",
                    _ => "payload",
                };
                (
                    format!(
                        "{{\"event_name\":\"{name}\",\"event_signature_hash\":\"{signature}\",\"event_data\":{event_data},\"network\":\"{network}\"}}"
                    ),
                    field,
                )
            }
            Shape::Rindexer => {
                let message_id = format!(
                    "rindexer_stream__-multivault-{}-{network}-{block}-{block}-blk{block}-chunk-{chunk_no}",
                    name.to_lowercase()
                );
                (
                    format!(
                        "{{\"event_name\":\"{name}\",\"event_signature_hash\":\"{signature}\",\"event_data\":[{}],\"network\":\"{network}\",\"message_id\":\"{message_id}\",\"block_number\":{block}}}",
                        bodies.join(",")
                    ),
                    "payload",
                )
            }
        };
        self.entries.push(Entry {
            stream: kind as usize,
            field,
            payload,
            events: chunk.len(),
            block,
            duplicate: false,
            abandoned: false,
            notice: false,
        });
    }

    /// One event's JSON object: its fields in ABI order, then
    /// `transaction_information`.
    fn body(&mut self, e: &Generated) -> String {
        let mut body = String::from("{");
        for (k, v) in &e.fields {
            let v = self.value_json(v);
            let _ = write!(body, "\"{k}\":{v},");
        }
        let info = self.tx_info_json(e);
        let _ = write!(body, "\"transaction_information\":{info}}}");
        body
    }

    fn value_json(&mut self, v: &Value) -> String {
        match (self.spec.shape, v) {
            (Shape::Rindexer, Value::Address(a)) => format!("\"{}\"", hex(a)),
            (Shape::Rindexer, Value::Id(id)) => format!("\"{}\"", &hex(id)[2..]),
            (Shape::Rindexer, Value::Bytes(b)) => format!("\"{}\"", &hex(b)[2..]),
            (Shape::Rindexer, Value::Amount(n)) => format!("\"{n}\""),
            (Shape::Rindexer, Value::Small(n)) => n.to_string(),
            (Shape::Varied, Value::Address(a)) => self.varied_hex(a),
            (Shape::Varied, Value::Id(id)) => self.varied_hex(id),
            (Shape::Varied, Value::Bytes(b)) => format!("\"{}\"", hex(b)),
            (Shape::Varied, Value::Amount(n)) => match self.enc.u8(..100) {
                0..=9 => format!("\"0x{n:x}\""),
                10..=14 => n.to_string(), // a JSON number, however large
                _ => format!("\"{n}\""),
            },
            (Shape::Varied, Value::Small(n)) => self.varied_int(*n),
        }
    }

    fn varied_hex(&mut self, bytes: &[u8]) -> String {
        let h = hex(bytes);
        match self.enc.u8(..100) {
            0..=4 => format!("\"0x{}\"", h[2..].to_uppercase()),
            5..=9 => format!("\"{}\"", &h[2..]),
            _ => format!("\"{h}\""),
        }
    }

    fn varied_int(&mut self, v: i64) -> String {
        match self.enc.u8(..100) {
            0..=9 => format!("\"0x{v:x}\""),
            10..=19 => format!("\"{v}\""),
            _ => v.to_string(),
        }
    }

    fn tx_info_json(&mut self, e: &Generated) -> String {
        let network = self.spec.network.clone();
        let tx_hash = hex(&e.tx_hash);
        let block_hash = hex(&self.block_hash_of(e));
        match self.spec.shape {
            Shape::Rindexer => {
                let address = hex(&self.contract);
                format!(
                    "{{\"chain_id\":1155,\"network\":\"{network}\",\"address\":\"{address}\",\"block_hash\":\"{block_hash}\",\"block_number\":{},\"block_timestamp\":null,\"transaction_hash\":\"{tx_hash}\",\"log_index\":\"0x{:x}\",\"transaction_index\":{}}}",
                    e.block, e.log_index, e.tx_index
                )
            }
            Shape::Varied => {
                let timestamp = 1_700_000_000 + (e.block - self.spec.first_block) * 2;
                let block_number = self.varied_int(e.block);
                let log_index = self.varied_int(e.log_index);
                let tx_index = self.varied_int(e.tx_index);
                let timestamp = if self.enc.u8(..100) < 3 {
                    "null".to_owned()
                } else {
                    self.varied_int(timestamp)
                };
                let address = self.varied_hex(&self.contract.clone());
                format!(
                    "{{\"address\":{address},\"block_hash\":\"{block_hash}\",\"block_number\":{block_number},\"block_timestamp\":{timestamp},\"log_index\":{log_index},\"network\":\"{network}\",\"transaction_hash\":\"{tx_hash}\",\"transaction_index\":{tx_index}}}"
                )
            }
        }
    }

    /// The hash of the block an event is in (the block being published).
    fn block_hash_of(&self, e: &Generated) -> [u8; 32] {
        debug_assert_eq!(e.block, self.block);
        self.block_hash
    }
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
