//! The invariants of SPEC §2, computed in plain Rust from a list of events,
//! independently of the writer's SQL. Tests compare the tables with it.
//!
//! Amounts are parsed into u128 (the workloads stay below 2^128); the market
//! cap floor uses its own 256-bit product here.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use writer::event::{Address, Amount, ChainEvent, EventKind, Hash32, VaultType};

/// The read model's tables (SPEC §2): events, current state, analytics.
pub const TABLES: &[&str] = &[
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
    "atom",
    "triple",
    "position",
    "vault",
    "term",
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
];

/// The event tables: the first six of [`TABLES`].
pub const EVENT_TABLES: &[&str] = TABLES.split_at(6).0;

#[derive(Default, Clone, Copy, Debug)]
struct Position {
    shares: u128,
    at: (i64, i64),
    deposited: u128,
    redeemed: u128,
}

#[derive(Default, Clone, Debug)]
struct Vault {
    price_at: Option<(i64, i64)>,
    total_shares: u128,
    price: u128,
    total_assets: u128,
    type_at: (i64, i64),
    vault_type: i16,
}

#[derive(Clone, Debug)]
struct Created {
    at: (i64, i64),
    row: Vec<String>,
}

/// Expected tables from events.
#[derive(Default)]
pub struct Model {
    seen: HashSet<(String, i64)>,
    positions: BTreeMap<(String, String, String), Position>,
    vaults: BTreeMap<(String, String), Vault>,
    atoms: BTreeMap<String, Created>,
    /// triple id → (created, counter id, subject, predicate, object)
    triples: BTreeMap<String, (Created, String, String, String, String)>,
}

fn n(a: &writer::event::Amount) -> u128 {
    a.as_str().parse().expect("workload amounts fit u128")
}

/// ⌊a·b / 10^18⌋ with a 256-bit product in 32-bit limbs.
pub fn market_cap(a: u128, b: u128) -> u128 {
    let limbs = |x: u128| -> [u64; 4] {
        [
            (x & 0xffff_ffff) as u64,
            ((x >> 32) & 0xffff_ffff) as u64,
            ((x >> 64) & 0xffff_ffff) as u64,
            (x >> 96) as u64,
        ]
    };
    let (x, y) = (limbs(a), limbs(b));
    let mut prod = [0u64; 9];
    for i in 0..4 {
        let mut carry = 0u64;
        for j in 0..4 {
            let cur = prod[i + j] + x[i] * y[j] + carry;
            prod[i + j] = cur & 0xffff_ffff;
            carry = cur >> 32;
        }
        prod[i + 4] += carry;
    }
    // Divide the 32-bit-limb number by 10^18, most significant limb first.
    let d: u128 = 1_000_000_000_000_000_000;
    let mut rem: u128 = 0;
    let mut quotient = [0u64; 9];
    for i in (0..9).rev() {
        let cur = (rem << 32) | prod[i] as u128;
        quotient[i] = (cur / d) as u64;
        rem = cur % d;
    }
    assert!(
        quotient[4..].iter().all(|&q| q == 0),
        "market cap past u128"
    );
    quotient[..4]
        .iter()
        .enumerate()
        .map(|(i, &q)| (q as u128) << (32 * i))
        .sum()
}

impl Model {
    pub fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a ChainEvent<'a>>) {
        for e in events {
            self.apply(e);
        }
    }

    pub fn apply(&mut self, e: &ChainEvent<'_>) {
        let key = (e.chain.transaction_hash.to_string(), e.chain.log_index);
        if !self.seen.insert(key) {
            return;
        }
        let at = e.chain.order();
        match &e.kind {
            EventKind::AtomCreated(a) => {
                let row = vec![
                    a.term_id.to_string(),
                    a.atom_wallet.to_string(),
                    a.creator.to_string(),
                    a.atom_data.text().map_or("∅".into(), str::to_owned),
                    a.atom_data.raw().map_or("∅".into(), const_hex::encode),
                    "∅".into(),
                    "Pending".into(),
                    at.0.to_string(),
                    at.1.to_string(),
                ];
                let entry = self.atoms.entry(a.term_id.to_string()).or_insert(Created {
                    at,
                    row: row.clone(),
                });
                if at < entry.at {
                    *entry = Created { at, row };
                }
            }
            EventKind::TripleCreated(t) => {
                let row = vec![
                    t.term_id.to_string(),
                    t.creator.to_string(),
                    t.subject_id.to_string(),
                    t.predicate_id.to_string(),
                    t.object_id.to_string(),
                    t.counter_term_id.to_string(),
                    at.0.to_string(),
                    at.1.to_string(),
                ];
                let value = (
                    Created { at, row },
                    t.counter_term_id.to_string(),
                    t.subject_id.to_string(),
                    t.predicate_id.to_string(),
                    t.object_id.to_string(),
                );
                let entry = self
                    .triples
                    .entry(t.term_id.to_string())
                    .or_insert(value.clone());
                if at < entry.0.at {
                    *entry = value;
                }
            }
            EventKind::Deposited(d) => self.position_event(
                (&d.receiver, &d.term_id, &d.curve_id, d.vault_type),
                at,
                n(&d.total_shares),
                (n(&d.assets_after_fees), 0),
            ),
            EventKind::Redeemed(r) => self.position_event(
                (&r.receiver, &r.term_id, &r.curve_id, r.vault_type),
                at,
                n(&r.total_shares),
                (0, n(&r.assets)),
            ),
            EventKind::SharePriceChanged(s) => {
                let v = self.vault_event(
                    s.term_id.to_string(),
                    s.curve_id.to_string(),
                    at,
                    s.vault_type.code(),
                );
                if v.price_at.is_none_or(|p| at > p) {
                    v.price_at = Some(at);
                    v.total_shares = n(&s.total_shares);
                    v.price = n(&s.share_price);
                    v.total_assets = n(&s.total_assets);
                }
            }
            EventKind::Generic(_) => {}
        }
    }

    /// A Deposited or Redeemed on the vault of `term` and `curve`: the
    /// receiver's position takes `total` shares if the event is its newest,
    /// and adds up the assets deposited and redeemed; the vault is seen too.
    fn position_event(
        &mut self,
        (account, term, curve, vault_type): (&Address, &Hash32, &Amount, VaultType),
        at: (i64, i64),
        total: u128,
        (dep, red): (u128, u128),
    ) {
        self.vault_event(term.to_string(), curve.to_string(), at, vault_type.code());
        let p = self
            .positions
            .entry((account.to_string(), term.to_string(), curve.to_string()))
            .or_insert(Position {
                at,
                shares: total,
                ..Default::default()
            });
        if at > p.at {
            p.at = at;
            p.shares = total;
        }
        p.deposited += dep;
        p.redeemed += red;
    }

    fn vault_event(
        &mut self,
        term: String,
        curve: String,
        at: (i64, i64),
        vault_type: i16,
    ) -> &mut Vault {
        let v = self.vaults.entry((term, curve)).or_insert(Vault {
            type_at: at,
            vault_type,
            ..Default::default()
        });
        if at > v.type_at {
            v.type_at = at;
            v.vault_type = vault_type;
        }
        v
    }

    /// Rows as the `position` dump shows them.
    pub fn positions(&self) -> Vec<String> {
        sorted(self.positions.iter().map(|((a, t, c), p)| {
            format!(
                "{a}|{t}|{c}|{}|{}|{}|{}|{}",
                p.shares, p.deposited, p.redeemed, p.at.0, p.at.1
            )
        }))
    }

    fn position_count(&self, term: &str, curve: &str) -> usize {
        self.positions
            .iter()
            .filter(|((_, t, c), p)| t == term && c == curve && p.shares > 0)
            .count()
    }

    pub fn vaults(&self) -> Vec<String> {
        sorted(self.vaults.iter().map(|((t, c), v)| {
            let (spb, spl) = v.price_at.map_or(("∅".to_owned(), "∅".to_owned()), |p| {
                (p.0.to_string(), p.1.to_string())
            });
            format!(
                "{t}|{c}|{}|{}|{}|{}|{}|{}|{spb}|{spl}|{}|{}",
                v.total_shares,
                v.price,
                v.total_assets,
                market_cap(v.total_shares, v.price),
                self.position_count(t, c),
                v.vault_type,
                v.type_at.0,
                v.type_at.1
            )
        }))
    }

    pub fn terms(&self) -> Vec<String> {
        let mut ids: BTreeSet<&String> = self.atoms.keys().collect();
        for (id, (_, counter, ..)) in &self.triples {
            ids.insert(id);
            ids.insert(counter);
        }
        ids.extend(self.vaults.keys().map(|(t, _)| t));
        sorted(ids.into_iter().map(|id| {
            let triple = self
                .triples
                .iter()
                .find(|(t, (_, c, ..))| *t == id || c == id)
                .map(|(t, _)| t.clone());
            let (kind, atom_id) = if self.atoms.contains_key(id) {
                ("Atom", id.clone())
            } else if triple.is_some() {
                ("Triple", "∅".to_owned())
            } else {
                ("Unknown", "∅".to_owned())
            };
            let (assets, caps) = self
                .vaults
                .iter()
                .filter(|((t, _), _)| t == id)
                .fold((0u128, 0u128), |(a, m), (_, v)| {
                    (a + v.total_assets, m + market_cap(v.total_shares, v.price))
                });
            format!(
                "{id}|{kind}|{atom_id}|{}|{assets}|{caps}",
                triple.unwrap_or_else(|| "∅".to_owned())
            )
        }))
    }

    pub fn atoms(&self) -> Vec<String> {
        sorted(self.atoms.values().map(|c| c.row.join("|")))
    }

    pub fn triples(&self) -> Vec<String> {
        sorted(self.triples.values().map(|(c, ..)| c.row.join("|")))
    }
}

/// Invariants 6–8: the analytics tables, from the model's triples and vaults.
#[derive(Debug, PartialEq, Eq)]
pub struct Analytics {
    pub triple_vault: Vec<String>,
    pub triple_term: Vec<String>,
    pub predicate_object: Vec<String>,
    pub subject_predicate: Vec<String>,
}

impl Model {
    pub fn analytics(&self) -> Analytics {
        let mut triple_vault = Vec::new();
        let mut triple_term = Vec::new();
        // (pair) → (triples, positions, market cap)
        let mut po: BTreeMap<(String, String), (u64, u128, u128)> = BTreeMap::new();
        let mut sp: BTreeMap<(String, String), (u64, u128, u128)> = BTreeMap::new();
        for (id, (_, counter, s, p, o)) in &self.triples {
            let curves: BTreeSet<&String> = self
                .vaults
                .keys()
                .filter(|(t, _)| t == id || t == counter)
                .map(|(_, c)| c)
                .collect();
            let (mut assets, mut caps, mut positions) = (0u128, 0u128, 0u128);
            for curve in curves {
                let side = |term: &String| self.vaults.get(&(term.clone(), curve.clone()));
                let (mut ts, mut ta, mut pc, mut mc) = (0u128, 0u128, 0u128, 0u128);
                for (term, v) in [(id, side(id)), (counter, side(counter))] {
                    if let Some(v) = v {
                        ts += v.total_shares;
                        ta += v.total_assets;
                        pc += self.position_count(term, curve) as u128;
                        mc += market_cap(v.total_shares, v.price);
                    }
                }
                triple_vault.push(format!("{id}|{counter}|{curve}|{ts}|{ta}|{pc}|{mc}"));
                assets += ta;
                caps += mc;
                positions += pc;
            }
            triple_term.push(format!("{id}|{counter}|{assets}|{caps}|{positions}"));
            for (map, key) in [
                (&mut po, (p.clone(), o.clone())),
                (&mut sp, (s.clone(), p.clone())),
            ] {
                let e = map.entry(key).or_insert((0, 0, 0));
                e.0 += 1;
                e.1 += positions;
                e.2 += caps;
            }
        }
        let pairs = |m: BTreeMap<(String, String), (u64, u128, u128)>| {
            sorted(
                m.into_iter()
                    .map(|((a, b), (n, pc, mc))| format!("{a}|{b}|{n}|{pc}|{mc}")),
            )
        };
        Analytics {
            triple_vault: sorted(triple_vault.into_iter()),
            triple_term: sorted(triple_term.into_iter()),
            predicate_object: pairs(po),
            subject_predicate: pairs(sp),
        }
    }
}

fn sorted(rows: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = rows.collect();
    v.sort();
    v
}

#[test]
fn market_cap_floor() {
    assert_eq!(market_cap(3, 1_000_000_000_000_000_000), 3);
    assert_eq!(market_cap(1, 999_999_999_999_999_999), 0);
    assert_eq!(market_cap(u128::MAX, 1_000_000_000_000_000_000), u128::MAX);
    assert_eq!(market_cap(10u128.pow(30), 10u128.pow(20)), 10u128.pow(32));
}
