//! The chain events the writer understands, validated and in canonical form.
//!
//! Values borrow from the entry's payload where they can (network names,
//! generic event bodies); ids, addresses and amounts are fixed-size inline
//! values. A batch of decoded events therefore lives as long as the entries it
//! came from, and building it allocates little beyond the event vector.

use std::borrow::Cow;

pub use crate::decode::uint256::Amount;
pub use crate::decode::value::{Address, AtomData, Hash32, VaultType};

/// Where an event sits on the chain. `(transaction_hash, log_index)`
/// identifies it; `(block_number, log_index)` orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPosition<'a> {
    pub transaction_hash: Hash32,
    pub log_index: i64,
    pub block_number: i64,
    pub block_hash: Hash32,
    pub block_timestamp: Option<i64>,
    pub transaction_index: i64,
    /// The contract that emitted the log.
    pub address: Address,
    pub network: Cow<'a, str>,
}

impl ChainPosition<'_> {
    /// The chain order of events: by block, then by log index.
    pub fn order(&self) -> (i64, i64) {
        (self.block_number, self.log_index)
    }

    pub fn key(&self) -> (Hash32, i64) {
        (self.transaction_hash, self.log_index)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomCreated {
    pub creator: Address,
    pub term_id: Hash32,
    pub atom_data: AtomData,
    pub atom_wallet: Address,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripleCreated {
    pub creator: Address,
    pub term_id: Hash32,
    pub subject_id: Hash32,
    pub predicate_id: Hash32,
    pub object_id: Hash32,
    /// Derived from `term_id` (SPEC invariant 5), not read from the event.
    pub counter_term_id: Hash32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposited {
    pub sender: Address,
    pub receiver: Address,
    pub term_id: Hash32,
    pub curve_id: Amount,
    pub assets: Amount,
    pub assets_after_fees: Amount,
    pub shares: Amount,
    pub total_shares: Amount,
    pub vault_type: VaultType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub sender: Address,
    pub receiver: Address,
    pub term_id: Hash32,
    pub curve_id: Amount,
    pub shares: Amount,
    pub total_shares: Amount,
    pub assets: Amount,
    pub fees: Amount,
    pub vault_type: VaultType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePriceChanged {
    pub term_id: Hash32,
    pub curve_id: Amount,
    pub share_price: Amount,
    pub total_assets: Amount,
    pub total_shares: Amount,
    pub vault_type: VaultType,
}

/// The events that move a vault: Deposited, Redeemed, SharePriceChanged.
pub trait VaultEvent {
    /// The vault (term, curve) and its type.
    fn vault(&self) -> (&Hash32, &Amount, VaultType);
}

macro_rules! vault_events {
    ($($kind:ty),+) => {$(
        impl VaultEvent for $kind {
            fn vault(&self) -> (&Hash32, &Amount, VaultType) {
                (&self.term_id, &self.curve_id, self.vault_type)
            }
        }
    )+};
}
vault_events!(Deposited, Redeemed, SharePriceChanged);

/// An event the writer stores but does not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generic<'a> {
    pub event_name: Cow<'a, str>,
    pub event_signature_hash: Option<Cow<'a, str>>,
    /// The event's own JSON object, stored as JSONB.
    pub data: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind<'a> {
    AtomCreated(AtomCreated),
    TripleCreated(TripleCreated),
    Deposited(Deposited),
    Redeemed(Redeemed),
    SharePriceChanged(SharePriceChanged),
    Generic(Generic<'a>),
}

impl EventKind<'_> {
    /// The index of the event's table, in the order of
    /// [`crate::apply::KINDS`].
    pub fn table(&self) -> usize {
        match self {
            EventKind::AtomCreated(_) => 0,
            EventKind::TripleCreated(_) => 1,
            EventKind::Deposited(_) => 2,
            EventKind::Redeemed(_) => 3,
            EventKind::SharePriceChanged(_) => 4,
            EventKind::Generic(_) => 5,
        }
    }

    /// The term the event is filed under: its atom's or triple's term, or
    /// its vault's. None for events the writer does not interpret.
    pub fn term_id(&self) -> Option<&str> {
        match self {
            EventKind::AtomCreated(e) => Some(e.term_id.as_str()),
            EventKind::TripleCreated(e) => Some(e.term_id.as_str()),
            EventKind::Deposited(e) => Some(e.term_id.as_str()),
            EventKind::Redeemed(e) => Some(e.term_id.as_str()),
            EventKind::SharePriceChanged(e) => Some(e.term_id.as_str()),
            EventKind::Generic(_) => None,
        }
    }

    /// The label used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::AtomCreated(_) => "AtomCreated",
            EventKind::TripleCreated(_) => "TripleCreated",
            EventKind::Deposited(_) => "Deposited",
            EventKind::Redeemed(_) => "Redeemed",
            EventKind::SharePriceChanged(_) => "SharePriceChanged",
            EventKind::Generic(_) => "Generic",
        }
    }
}

/// One chain event: its position and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEvent<'a> {
    pub chain: ChainPosition<'a>,
    pub kind: EventKind<'a>,
}

/// rindexer's notice that the chain reorganised at `fork_block` on
/// `network`. Sent to every stream of the network; the copy on a stream
/// abandons what that stream delivered before it at blocks ≥ `fork_block`
/// (SPEC §1 "Reorgs", ADR 0009).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReorgNotice<'a> {
    pub network: Cow<'a, str>,
    pub fork_block: i64,
    pub depth: Option<i64>,
    /// What rindexer deleted from its own storage (empty when it keeps
    /// none): recorded, not relied on.
    pub affected_tx_hashes: Vec<Hash32>,
    /// The envelope's `message_id`, when rindexer sends one: the same on
    /// every copy of a notice, and on a later notice at the same fork block.
    pub message_id: Option<Cow<'a, str>>,
    /// The notice as received, kept in `reorg_notices`.
    pub raw: &'a str,
}
