//! The contract the generator plays: its state, the transactions that move
//! it, and the logs they emit in chain order (SharePriceChanged before the
//! action), block by block, with reorganisations.

use std::collections::HashMap;

use writer::decode::value::{Hash32, counter_term_id};

use super::{Entry, Reorg, Spec, mul_div, random_bytes};

pub(super) const ONE: u128 = 1_000_000_000_000_000_000; // 10^18
/// Shares every vault starts with, owned by nobody (as on chain).
pub(super) const GHOST_SHARES: u128 = 1_000_000;
/// rindexer cuts messages at 75 KB.
pub(super) const CHUNK_BYTES: usize = 75 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Kind {
    Atom = 0,
    Triple = 1,
    Deposit = 2,
    Redeem = 3,
    Price = 4,
}

pub(super) const KINDS: [Kind; 5] = [
    Kind::Atom,
    Kind::Triple,
    Kind::Deposit,
    Kind::Redeem,
    Kind::Price,
];

impl Kind {
    pub(super) fn event_name(self) -> &'static str {
        match self {
            Kind::Atom => "AtomCreated",
            Kind::Triple => "TripleCreated",
            Kind::Deposit => "Deposited",
            Kind::Redeem => "Redeemed",
            Kind::Price => "SharePriceChanged",
        }
    }

    /// The ABI signature, whose Keccak-256 is the log's topic0.
    pub(super) fn signature(self) -> &'static str {
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
pub(super) enum Value {
    Address([u8; 20]),
    Id([u8; 32]),
    Bytes(Vec<u8>),
    Amount(u128),
    Small(i64),
}

/// One generated chain event, before encoding.
#[derive(Clone, Debug)]
pub(super) struct Generated {
    pub(super) kind: Kind,
    /// Generic events: their name.
    pub(super) generic: Option<&'static str>,
    pub(super) block: i64,
    pub(super) log_index: i64,
    pub(super) tx_hash: [u8; 32],
    pub(super) tx_index: i64,
    pub(super) fields: Vec<(&'static str, Value)>,
}

#[derive(Default, Clone, Copy)]
pub(super) struct VaultBook {
    pub(super) shares: u128,
    pub(super) assets: u128,
}

/// The contract's state: what a snapshot restores at a fork.
#[derive(Clone, Default)]
pub(super) struct Books {
    pub(super) atoms: Vec<[u8; 32]>,
    pub(super) triples: Vec<([u8; 32], [u8; 32])>,
    /// (triple, its atoms)
    pub(super) triple_atoms: HashMap<[u8; 32], [[u8; 32]; 3]>,
    pub(super) vaults: HashMap<([u8; 32], u32), VaultBook>,
    pub(super) positions: HashMap<(usize, [u8; 32], u32), u128>,
    /// Positions with shares, and their vault type.
    pub(super) open_positions: Vec<(usize, [u8; 32], u32, u8)>,
}

/// The chain at the head: block being built and its events.
pub(super) struct Chain {
    pub(super) spec: Spec,
    /// Decides blocks, transactions and reorgs.
    pub(super) rng: fastrand::Rng,
    /// Varies encodings (its own stream, so encodings never change the chain).
    pub(super) enc: fastrand::Rng,
    pub(super) accounts: Vec<[u8; 20]>,
    pub(super) contract: [u8; 20],
    pub(super) books: Books,
    pub(super) block: i64,
    pub(super) block_hash: [u8; 32],
    pub(super) timestamp: i64,
    pub(super) log_index: i64,
    pub(super) tx_index: i64,
    /// Events of the block being built.
    pub(super) pending: Vec<Generated>,
    /// Events of the final chain so far (the head's fork).
    pub(super) canonical: usize,
    /// Published entries, in order.
    pub(super) entries: Vec<Entry>,
    /// Index of the first entry after the latest notices.
    pub(super) epoch_start: usize,
    pub(super) reorgs: Vec<Reorg>,
}

/// What a deposit of `assets` leaves after the 1 % entry fee.
pub(super) fn after_fees(assets: u128) -> u128 {
    assets - assets / 100
}

pub(super) fn price_of(book: VaultBook) -> u128 {
    if book.shares == 0 {
        ONE
    } else {
        mul_div(book.assets, ONE, book.shares).max(1)
    }
}

impl Chain {
    pub(super) fn start_block(&mut self) {
        self.block += 1;
        self.block_hash = random_bytes(&mut self.rng);
        self.timestamp += 2;
        self.log_index = 0;
        self.tx_index = 0;
    }

    /// Publishes the block being built.
    pub(super) fn end_block(&mut self) {
        let events = std::mem::take(&mut self.pending);
        self.canonical += events.len();
        self.publish_block(&events);
    }

    /// Ends the block, then forks: some blocks are abandoned by a notice on
    /// every stream and replaced by others from the fork block on.
    pub(super) fn reorganise(&mut self) {
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
    pub(super) fn build_blocks(
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
    pub(super) fn notice(&mut self, fork_block: i64, depth: i64) {
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
    pub(super) fn transaction(&mut self, hash: [u8; 32], seed: u64) {
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

    pub(super) fn account(&self, tx: &mut Tx) -> usize {
        tx.rng.usize(..self.accounts.len())
    }

    /// A vault's totals as a SharePriceChanged.
    pub(super) fn share_price(&self, tx: &mut Tx, term: [u8; 32], curve: u32, vault_type: u8) {
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
    pub(super) fn fee_bump(&mut self, tx: &mut Tx, term: [u8; 32], curve: u32, vault_type: u8) {
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
    pub(super) fn mint(
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

    pub(super) fn create_vault(&mut self, term: [u8; 32], curve: u32) {
        self.books.vaults.entry((term, curve)).or_insert(VaultBook {
            shares: GHOST_SHARES,
            assets: GHOST_SHARES,
        });
    }

    pub(super) fn create_atom(&mut self, tx: &mut Tx) {
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
        let fields = vec![
            ("atomData", Value::Bytes(data)),
            ("atomWallet", Value::Address(wallet)),
        ];
        self.created(tx, Kind::Atom, (creator, term, 0), fields, (assets, minted));
    }

    pub(super) fn create_triple(&mut self, tx: &mut Tx) {
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
        let fields = vec![
            ("subjectId", Value::Id(subject)),
            ("predicateId", Value::Id(predicate)),
            ("objectId", Value::Id(object)),
        ];
        self.created(
            tx,
            Kind::Triple,
            (creator, term, 1),
            fields,
            (assets, minted),
        );
    }

    /// A creation event (`creator` and `termId`, then the kind's own
    /// `fields`), then the creator's deposit of `assets` into the new
    /// vault on curve 1, minting `minted` (shares, total shares): what the
    /// contract emits for one created term.
    fn created(
        &self,
        tx: &mut Tx,
        kind: Kind,
        (creator, term, vault_type): (usize, [u8; 32], u8),
        fields: Vec<(&'static str, Value)>,
        (assets, minted): (u128, (u128, u128)),
    ) {
        let mut all = vec![
            ("creator", Value::Address(self.accounts[creator])),
            ("termId", Value::Id(term)),
        ];
        all.extend(fields);
        tx.emit(kind, all);
        self.deposited(
            tx,
            (creator, creator),
            (term, 1, vault_type),
            assets,
            minted,
        );
    }

    pub(super) fn pick_vault(&self, tx: &mut Tx) -> ([u8; 32], u8, u32) {
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

    pub(super) fn deposit(&mut self, tx: &mut Tx) {
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
    pub(super) fn deposited(
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

    pub(super) fn redeem(&mut self, tx: &mut Tx) {
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
pub(super) struct Tx {
    pub(super) rng: fastrand::Rng,
    pub(super) hash: [u8; 32],
    #[allow(clippy::type_complexity)]
    pub(super) events: Vec<(Kind, Option<&'static str>, Vec<(&'static str, Value)>)>,
}

impl Tx {
    pub(super) fn emit(&mut self, kind: Kind, fields: Vec<(&'static str, Value)>) {
        self.events.push((kind, None, fields));
    }

    /// An event the writer does not know, on the Deposited stream.
    pub(super) fn emit_generic(&mut self, name: &'static str, fields: Vec<(&'static str, Value)>) {
        self.events.push((Kind::Deposit, Some(name), fields));
    }
}
