//! A realistic, seeded workload in rindexer's stream format.
//!
//! The generator plays a small MultiVault: atoms and triples are created,
//! accounts deposit into and redeem from atom, triple and counter-triple
//! vaults on several curves, and every deposit or redeem is followed by the
//! vault's SharePriceChanged, with amounts that keep the books consistent.
//! Events are grouped into blocks and published the way rindexer does: per
//! event type, as array batches in chunks, with the encodings SPEC §1 allows
//! varied on purpose (hex or decimal numbers, id case, `0x` or not, which
//! payload field). A share of entries is published twice.
//!
//! Tests use it to compare the service with direct application, and the load
//! generator and benchmarks use it to drive the writer.

use std::collections::HashMap;
use std::fmt::Write as _;

use writer::apply::ReadModel;
use writer::decode::value::{Hash32, counter_term_id};
use writer::event::ChainEvent;

/// One stream entry to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index into [`Spec::streams`].
    pub stream: usize,
    /// The entry field carrying the JSON (`payload`, `data` or `event_data`).
    pub field: &'static str,
    pub payload: String,
    /// Chain events in the payload.
    pub events: usize,
    /// Whether this entry repeats an earlier one.
    pub duplicate: bool,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub seed: u64,
    /// Chain events to generate (before duplication).
    pub events: usize,
    pub curves: u32,
    pub accounts: usize,
    /// Fraction of entries published a second time, later in the stream.
    pub duplicate_ratio: f64,
    /// Largest array batch in one entry.
    pub max_batch: usize,
    /// Fraction of transactions that emit an event the writer does not know.
    pub generic_ratio: f64,
    /// Vary number/id encodings and payload fields (off: rindexer's usual form).
    pub vary_encoding: bool,
    pub network: String,
    /// Stream names for AtomCreated, TripleCreated, Deposited, Redeemed,
    /// SharePriceChanged; unknown events go to the Deposited stream.
    pub streams: [String; 5],
    /// First block number.
    pub first_block: i64,
}

impl Spec {
    pub fn new(seed: u64, events: usize) -> Spec {
        Spec {
            seed,
            events,
            curves: 2,
            accounts: 200,
            duplicate_ratio: 0.1,
            max_batch: 20,
            generic_ratio: 0.02,
            vary_encoding: true,
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

    /// The same spec with every stream name prefixed (tests give themselves
    /// their own streams).
    pub fn with_stream_prefix(mut self, prefix: &str) -> Spec {
        for s in &mut self.streams {
            *s = format!("{prefix}{s}");
        }
        self
    }

    /// One XADD per entry, pipelined: how a workload is published.
    pub fn xadd(&self, entries: &[Entry]) -> redis::Pipeline {
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
    /// Distinct chain events (what the tables must reflect).
    pub unique_events: usize,
}

impl Workload {
    /// The events of the distinct entries, decoded, in publishing order.
    pub fn events(&self) -> Vec<ChainEvent<'_>> {
        self.entries
            .iter()
            .filter(|e| !e.duplicate)
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

    /// Applies the distinct events directly, in chain order: the reference
    /// the service's tables must equal.
    pub async fn apply_directly(&self, rm: &ReadModel) -> Result<(), sqlx::Error> {
        let mut events = self.events();
        events.sort_by_key(|e| e.chain.order());
        for chunk in events.chunks(500) {
            rm.apply(chunk).await?;
        }
        Ok(())
    }
}

const ONE: u128 = 1_000_000_000_000_000_000; // 10^18

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Atom = 0,
    Triple = 1,
    Deposit = 2,
    Redeem = 3,
    Price = 4,
}

/// One generated chain event, before encoding.
struct Generated {
    kind: Kind,
    /// Generic events: their name.
    generic: Option<&'static str>,
    block: i64,
    log_index: i64,
    tx_hash: [u8; 32],
    tx_index: i64,
    /// `(key, value)` with values already JSON-encoded.
    fields: Vec<(&'static str, String)>,
}

#[derive(Default, Clone, Copy)]
struct VaultBook {
    shares: u128,
    assets: u128,
}

struct Chain {
    rng: fastrand::Rng,
    spec: Spec,
    block: i64,
    block_hash: [u8; 32],
    timestamp: i64,
    log_index: i64,
    tx_index: i64,
    accounts: Vec<[u8; 20]>,
    contract: [u8; 20],
    atoms: Vec<[u8; 32]>,
    triples: Vec<([u8; 32], [u8; 32])>,
    vaults: HashMap<([u8; 32], u32), VaultBook>,
    positions: HashMap<(usize, [u8; 32], u32), u128>,
    /// Positions with shares, and their vault type.
    open_positions: Vec<(usize, [u8; 32], u32, u8)>,
    out: Vec<Generated>,
}

/// Generates the workload described by `spec`.
pub fn generate(spec: &Spec) -> Workload {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let accounts = (0..spec.accounts.max(1))
        .map(|_| random_bytes::<20>(&mut rng))
        .collect();
    let contract = random_bytes::<20>(&mut rng);
    let mut chain = Chain {
        rng,
        spec: spec.clone(),
        block: spec.first_block,
        block_hash: [0; 32],
        timestamp: 1_700_000_000,
        log_index: 0,
        tx_index: 0,
        accounts,
        contract,
        atoms: Vec::new(),
        triples: Vec::new(),
        vaults: HashMap::new(),
        positions: HashMap::new(),
        open_positions: Vec::new(),
        out: Vec::with_capacity(spec.events + 4),
    };
    chain.new_block();
    while chain.out.len() < spec.events {
        if chain.rng.u8(..) < 40 {
            chain.new_block();
        }
        chain.transaction();
    }
    chain.out.truncate(spec.events);
    let unique_events = chain.out.len();
    let mut entries = chain.publish();
    duplicate(&mut chain.rng, &mut entries, spec.duplicate_ratio);
    Workload {
        entries,
        unique_events,
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

impl Chain {
    fn new_block(&mut self) {
        self.block += 1;
        self.block_hash = random_bytes(&mut self.rng);
        self.timestamp += 2;
        self.log_index = 0;
        self.tx_index = 0;
    }

    fn transaction(&mut self) {
        let tx_hash = random_bytes::<32>(&mut self.rng);
        self.tx_index += 1;
        let roll = self.rng.u32(..100);
        if self.rng.f64() < self.spec.generic_ratio {
            let value = self.rng.u128(1..ONE * 10);
            let fields = vec![
                ("from", self.address_json(self.accounts[0])),
                ("value", self.amount_json(value)),
            ];
            self.emit(Kind::Deposit, Some("Transfer"), tx_hash, fields);
        } else if roll < 25 || self.atoms.len() < 3 {
            self.create_atom(tx_hash);
        } else if roll < 40 {
            self.create_triple(tx_hash);
        } else if roll < 80 || self.open_positions.is_empty() {
            self.deposit(tx_hash);
        } else {
            self.redeem(tx_hash);
        }
    }

    fn emit(
        &mut self,
        kind: Kind,
        generic: Option<&'static str>,
        tx_hash: [u8; 32],
        fields: Vec<(&'static str, String)>,
    ) {
        self.out.push(Generated {
            kind,
            generic,
            block: self.block,
            log_index: self.log_index,
            tx_hash,
            tx_index: self.tx_index,
            fields,
        });
        self.log_index += 1;
    }

    fn create_atom(&mut self, tx_hash: [u8; 32]) {
        let term = random_bytes::<32>(&mut self.rng);
        self.atoms.push(term);
        let data: Vec<u8> = match self.rng.u8(..20) {
            0 => vec![0xff, 0x00, 0x13, 0x37],
            1 => b"with\0nul".to_vec(),
            _ => format!("ipfs://bafy{:016x}", self.rng.u64(..)).into_bytes(),
        };
        let creator = self.accounts[self.rng.usize(..self.accounts.len())];
        let wallet = random_bytes::<20>(&mut self.rng);
        let fields = vec![
            ("creator", self.address_json(creator)),
            ("termId", self.id_json(&term)),
            ("atomData", format!("\"{}\"", hex(&data))),
            ("atomWallet", self.address_json(wallet)),
        ];
        self.emit(Kind::Atom, None, tx_hash, fields);
    }

    fn create_triple(&mut self, tx_hash: [u8; 32]) {
        let pick = |rng: &mut fastrand::Rng, atoms: &[[u8; 32]]| atoms[rng.usize(..atoms.len())];
        // A few popular predicates and objects, so pairs repeat.
        let hot = self.atoms.len().min(8);
        let subject = pick(&mut self.rng, &self.atoms);
        let predicate = pick(&mut self.rng, &self.atoms[..hot]);
        let object = if self.rng.bool() {
            pick(&mut self.rng, &self.atoms[..hot])
        } else {
            pick(&mut self.rng, &self.atoms)
        };
        let term = random_bytes::<32>(&mut self.rng);
        let counter = counter_term_id(&Hash32::from_bytes(&term)).to_bytes();
        self.triples.push((term, counter));
        let creator = self.accounts[self.rng.usize(..self.accounts.len())];
        let fields = vec![
            ("creator", self.address_json(creator)),
            ("termId", self.id_json(&term)),
            ("subjectId", self.id_json(&subject)),
            ("predicateId", self.id_json(&predicate)),
            ("objectId", self.id_json(&object)),
        ];
        self.emit(Kind::Triple, None, tx_hash, fields);
    }

    fn pick_vault(&mut self) -> ([u8; 32], u8, u32) {
        let curve = 1 + self.rng.u32(..self.spec.curves.max(1));
        if self.triples.is_empty() || self.rng.bool() {
            let term = self.atoms[self.rng.usize(..self.atoms.len())];
            (term, 0, curve)
        } else {
            let (pro, counter) = self.triples[self.rng.usize(..self.triples.len())];
            if self.rng.bool() {
                (pro, 1, curve)
            } else {
                (counter, 2, curve)
            }
        }
    }

    fn deposit(&mut self, tx_hash: [u8; 32]) {
        let (term, vault_type, curve) = self.pick_vault();
        let account = self.rng.usize(..self.accounts.len());
        let assets = self.rng.u128(ONE / 1000..ONE * 10);
        let fee = assets / 100;
        let after_fees = assets - fee;
        let book = self.vaults.entry((term, curve)).or_default();
        let price = if book.shares == 0 {
            ONE
        } else {
            mul_div(book.assets, ONE, book.shares).max(1)
        };
        let shares = mul_div(after_fees, ONE, price).max(1);
        book.shares += shares;
        book.assets += after_fees;
        let book = *book;
        let position = self.positions.entry((account, term, curve)).or_default();
        if *position == 0 {
            self.open_positions.push((account, term, curve, vault_type));
        }
        *position += shares;
        let total_shares = *position;
        let receiver = self.accounts[account];
        let sender = if self.rng.u8(..10) == 0 {
            self.accounts[self.rng.usize(..self.accounts.len())]
        } else {
            receiver
        };
        let fields = vec![
            ("sender", self.address_json(sender)),
            ("receiver", self.address_json(receiver)),
            ("termId", self.id_json(&term)),
            ("curveId", self.amount_json(curve as u128)),
            ("assets", self.amount_json(assets)),
            ("assetsAfterFees", self.amount_json(after_fees)),
            ("shares", self.amount_json(shares)),
            ("totalShares", self.amount_json(total_shares)),
            ("vaultType", self.int_json(vault_type as i64)),
        ];
        self.emit(Kind::Deposit, None, tx_hash, fields);
        self.share_price(tx_hash, term, curve, vault_type, book);
    }

    fn redeem(&mut self, tx_hash: [u8; 32]) {
        let slot = self.rng.usize(..self.open_positions.len());
        let (account, term, curve, vault_type) = self.open_positions[slot];
        let held = self.positions[&(account, term, curve)];
        let shares = if self.rng.u8(..10) < 3 {
            held
        } else {
            self.rng.u128(1..=held)
        };
        let book = self
            .vaults
            .get_mut(&(term, curve))
            .expect("position has a vault");
        let gross = mul_div(shares, book.assets, book.shares);
        let fees = gross / 100;
        book.shares -= shares;
        book.assets -= gross;
        let book = *book;
        let remaining = held - shares;
        self.positions.insert((account, term, curve), remaining);
        if remaining == 0 {
            self.open_positions.swap_remove(slot);
        }
        let receiver = self.accounts[account];
        let fields = vec![
            ("sender", self.address_json(receiver)),
            ("receiver", self.address_json(receiver)),
            ("termId", self.id_json(&term)),
            ("curveId", self.amount_json(curve as u128)),
            ("shares", self.amount_json(shares)),
            ("totalShares", self.amount_json(remaining)),
            ("assets", self.amount_json(gross - fees)),
            ("fees", self.amount_json(fees)),
            ("vaultType", self.int_json(vault_type as i64)),
        ];
        self.emit(Kind::Redeem, None, tx_hash, fields);
        self.share_price(tx_hash, term, curve, vault_type, book);
    }

    fn share_price(
        &mut self,
        tx_hash: [u8; 32],
        term: [u8; 32],
        curve: u32,
        vault_type: u8,
        book: VaultBook,
    ) {
        let price = if book.shares == 0 {
            ONE
        } else {
            mul_div(book.assets, ONE, book.shares)
        };
        let fields = vec![
            ("termId", self.id_json(&term)),
            ("curveId", self.amount_json(curve as u128)),
            ("sharePrice", self.amount_json(price)),
            ("totalAssets", self.amount_json(book.assets)),
            ("totalShares", self.amount_json(book.shares)),
            ("vaultType", self.int_json(vault_type as i64)),
        ];
        self.emit(Kind::Price, None, tx_hash, fields);
    }

    // ---- encodings -------------------------------------------------------

    fn vary(&mut self) -> u8 {
        if self.spec.vary_encoding {
            self.rng.u8(..100)
        } else {
            99
        }
    }

    fn id_json(&mut self, bytes: &[u8; 32]) -> String {
        let h = hex(bytes);
        match self.vary() {
            0..=4 => format!("\"0x{}\"", h[2..].to_uppercase()),
            5..=9 => format!("\"{}\"", &h[2..]),
            _ => format!("\"{h}\""),
        }
    }

    fn address_json(&mut self, bytes: [u8; 20]) -> String {
        let h = hex(&bytes);
        match self.vary() {
            0..=4 => format!("\"0x{}\"", h[2..].to_uppercase()),
            5..=9 => format!("\"{}\"", &h[2..]),
            _ => format!("\"{h}\""),
        }
    }

    fn amount_json(&mut self, v: u128) -> String {
        match self.vary() {
            0..=9 => format!("\"0x{v:x}\""),
            10..=14 => v.to_string(), // a JSON number, however large
            _ => format!("\"{v}\""),
        }
    }

    fn int_json(&mut self, v: i64) -> String {
        match self.vary() {
            0..=9 => format!("\"0x{v:x}\""),
            10..=19 => format!("\"{v}\""),
            _ => v.to_string(),
        }
    }

    fn tx_info_json(&mut self, e: &Generated) -> String {
        let timestamp = self.timestamp - (self.block - e.block) * 2;
        let block_hash = hex(&Self::block_hash_of(e.block, self.spec.seed));
        let block_number = self.int_json(e.block);
        let log_index = self.int_json(e.log_index);
        let tx_index = self.int_json(e.tx_index);
        let timestamp = if self.vary() < 3 {
            "null".to_owned()
        } else {
            self.int_json(timestamp)
        };
        let address = self.address_json(self.contract);
        format!(
            "{{\"address\":{address},\"block_hash\":\"{block_hash}\",\"block_number\":{block_number},\"block_timestamp\":{timestamp},\"log_index\":{log_index},\"network\":\"{}\",\"transaction_hash\":\"{}\",\"transaction_index\":{tx_index}}}",
            self.spec.network,
            hex(&e.tx_hash)
        )
    }

    /// A block hash derived from the block number, so every event of a block
    /// carries the same one.
    fn block_hash_of(block: i64, seed: u64) -> [u8; 32] {
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (block as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        random_bytes(&mut rng)
    }

    // ---- publishing ------------------------------------------------------

    /// Groups events by block and type and encodes them as entries.
    fn publish(&mut self) -> Vec<Entry> {
        let events = std::mem::take(&mut self.out);
        let mut entries = Vec::new();
        let mut start = 0;
        while start < events.len() {
            let block = events[start].block;
            let end = events[start..]
                .iter()
                .position(|e| e.block != block)
                .map_or(events.len(), |n| start + n);
            // rindexer publishes a block's events per event type.
            for kind in [
                Kind::Atom,
                Kind::Triple,
                Kind::Deposit,
                Kind::Redeem,
                Kind::Price,
            ] {
                let mut group: Vec<&Generated> = events[start..end]
                    .iter()
                    .filter(|e| e.kind == kind && e.generic.is_none())
                    .collect();
                while !group.is_empty() {
                    let take = self
                        .rng
                        .usize(1..=self.spec.max_batch.max(1))
                        .min(group.len());
                    let chunk: Vec<&Generated> = group.drain(..take).collect();
                    entries.push(self.entry(kind as usize, event_name(kind), &chunk));
                }
            }
            for e in events[start..end].iter().filter(|e| e.generic.is_some()) {
                entries.push(self.entry(
                    Kind::Deposit as usize,
                    e.generic.unwrap_or("Unknown"),
                    &[e],
                ));
            }
            start = end;
        }
        entries
    }

    fn entry(&mut self, stream: usize, name: &str, chunk: &[&Generated]) -> Entry {
        let mut bodies = Vec::with_capacity(chunk.len());
        for e in chunk {
            let mut body = String::from("{");
            for (k, v) in &e.fields {
                let _ = write!(body, "\"{k}\":{v},");
            }
            let info = self.tx_info_json(e);
            let _ = write!(body, "\"transaction_information\":{info}}}");
            bodies.push(body);
        }
        let event_data = if bodies.len() == 1 && self.rng.bool() {
            bodies.pop().unwrap_or_default()
        } else {
            format!("[{}]", bodies.join(","))
        };
        let payload = format!(
            "{{\"event_name\":\"{name}\",\"event_signature_hash\":\"0x{:064x}\",\"event_data\":{event_data},\"network\":\"{}\"}}",
            stream as u64 + 1,
            self.spec.network
        );
        let field = match self.vary() {
            0..=4 => "data",
            5..=9 => "event_data",
            _ => "payload",
        };
        Entry {
            stream,
            field,
            payload,
            events: chunk.len(),
            duplicate: false,
        }
    }
}

fn event_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Atom => "AtomCreated",
        Kind::Triple => "TripleCreated",
        Kind::Deposit => "Deposited",
        Kind::Redeem => "Redeemed",
        Kind::Price => "SharePriceChanged",
    }
}

/// Publishes a share of entries a second time, at a later position.
fn duplicate(rng: &mut fastrand::Rng, entries: &mut Vec<Entry>, ratio: f64) {
    let copies = (entries.len() as f64 * ratio).round() as usize;
    for _ in 0..copies {
        let original = rng.usize(..entries.len());
        let mut copy = entries[original].clone();
        copy.duplicate = true;
        let at = rng.usize(original + 1..=entries.len());
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

    #[test]
    fn deterministic_and_decodable() {
        let spec = Spec::new(42, 2_000);
        let a = generate(&spec);
        let b = generate(&spec);
        assert_eq!(a.entries, b.entries);
        assert_eq!(a.unique_events, 2_000);
        let mut decoded = 0;
        let mut names = std::collections::HashSet::new();
        for entry in a.entries.iter().filter(|e| !e.duplicate) {
            let d = decode_json(&entry.payload);
            assert!(d.errors.is_empty(), "{:?} in {}", d.errors, entry.payload);
            assert_eq!(d.events.len(), entry.events);
            for e in &d.events {
                names.insert(e.kind.name());
            }
            decoded += d.events.len();
        }
        assert_eq!(decoded, 2_000);
        assert_eq!(names.len(), 6, "{names:?}");
        let duplicates = a.entries.iter().filter(|e| e.duplicate).count();
        assert!(duplicates > 0);
    }
}
