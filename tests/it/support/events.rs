//! Hand-written events for focused tests, as rindexer envelopes.

use std::sync::atomic::{AtomicU64, Ordering};

use writer::apply::{Applied, Delivered, EntryId, ReadModel, Source};
use writer::decode::decode_json;
use writer::event::{ChainEvent, Hash32};

/// A 32-byte id from a small number, e.g. `id(7)` = `0x00…07`.
pub fn id(n: u64) -> String {
    format!("0x{n:064x}")
}

/// A 20-byte address from a small number.
pub fn addr(n: u64) -> String {
    format!("0x{n:040x}")
}

pub fn counter_of(term: &str) -> String {
    writer::decode::value::counter_term_id(&Hash32::parse(term).unwrap()).to_string()
}

/// Where an event sits on the chain. Every `At` gets its own transaction
/// hash unless one is given.
#[derive(Clone, Debug)]
pub struct At {
    pub block: i64,
    pub log: i64,
    pub tx: String,
}

pub fn at(block: i64, log: i64) -> At {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    At {
        block,
        log,
        tx: format!(
            "0x{:064x}",
            NEXT.fetch_add(1, Ordering::Relaxed) << 32 | fastrand::u64(..u32::MAX as u64)
        ),
    }
}

/// A one-event envelope of `name` at `at`, with the event's own `fields` (JSON
/// members, without braces).
pub fn envelope(name: &str, at: &At, fields: &str) -> String {
    format!(
        r#"{{"event_name":"{name}","event_signature_hash":"0x01","network":"testnet","event_data":[{{{fields},"transaction_information":{{"address":"{}","block_hash":"0x{:064x}","block_number":{},"block_timestamp":{},"log_index":{},"network":"testnet","transaction_hash":"{}","transaction_index":0}}}}]}}"#,
        addr(0xc0de),
        at.block,
        at.block,
        1_700_000_000 + at.block,
        at.log,
        at.tx
    )
}

pub fn atom_created(at: &At, term: &str, data_hex: &str) -> String {
    envelope(
        "AtomCreated",
        at,
        &format!(
            r#""creator":"{}","termId":"{term}","atomData":"{data_hex}","atomWallet":"{}""#,
            addr(1),
            addr(2)
        ),
    )
}

pub fn triple_created(at: &At, term: &str, s: &str, p: &str, o: &str) -> String {
    envelope(
        "TripleCreated",
        at,
        &format!(
            r#""creator":"{}","termId":"{term}","subjectId":"{s}","predicateId":"{p}","objectId":"{o}""#,
            addr(1)
        ),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn deposited(
    at: &At,
    receiver: &str,
    term: &str,
    curve: u32,
    assets_after_fees: u128,
    total_shares: u128,
    vault_type: u8,
) -> String {
    envelope(
        "Deposited",
        at,
        &format!(
            r#""sender":"{receiver}","receiver":"{receiver}","termId":"{term}","curveId":"{curve}","assets":"{}","assetsAfterFees":"{assets_after_fees}","shares":"{total_shares}","totalShares":"{total_shares}","vaultType":{vault_type}"#,
            assets_after_fees + 1
        ),
    )
}

pub fn redeemed(
    at: &At,
    receiver: &str,
    term: &str,
    curve: u32,
    assets: u128,
    total_shares: u128,
    vault_type: u8,
) -> String {
    envelope(
        "Redeemed",
        at,
        &format!(
            r#""sender":"{receiver}","receiver":"{receiver}","termId":"{term}","curveId":"{curve}","shares":"1","totalShares":"{total_shares}","assets":"{assets}","fees":"0","vaultType":{vault_type}"#
        ),
    )
}

pub fn share_price(
    at: &At,
    term: &str,
    curve: u32,
    price: u128,
    total_assets: u128,
    total_shares: u128,
    vault_type: u8,
) -> String {
    envelope(
        "SharePriceChanged",
        at,
        &format!(
            r#""termId":"{term}","curveId":"{curve}","sharePrice":"{price}","totalAssets":"{total_assets}","totalShares":"{total_shares}","vaultType":{vault_type}"#
        ),
    )
}

/// Decodes payloads that must be valid.
pub fn decode_all(payloads: &[String]) -> Vec<ChainEvent<'_>> {
    let mut out = Vec::new();
    for p in payloads {
        let d = decode_json(p);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        out.extend(d.events);
    }
    out
}

/// Applies each payload in its own transaction, in the order given.
pub async fn apply_each(model: &ReadModel, payloads: &[String]) -> Applied {
    let mut total = Applied::default();
    for p in payloads {
        let events = decode_all(std::slice::from_ref(p));
        let a = model.apply(&events).await.expect("apply");
        total.inserted.add(&a.inserted);
        total.duplicates += a.duplicates;
    }
    total
}

/// A reorg notice as rindexer sends it (0.40 shape), on network `testnet`:
/// `hashes` without `0x`, as rindexer writes them.
pub fn reorg_notice(fork_block: i64, depth: i64, hashes: &[&str], message_id: &str) -> String {
    let hashes: Vec<String> = hashes.iter().map(|h| format!(r#""{h}""#)).collect();
    format!(
        r#"{{"event_name":"__rindexer_reorg","event_data":[{{"type":"reorg","network":"testnet","fork_block":{fork_block},"depth":{depth},"affected_tx_hashes":[{}]}}],"network":"testnet","message_id":"{message_id}"}}"#,
        hashes.join(",")
    )
}

/// Applies `payloads` in one transaction as delivered by `stream`, the
/// i-th event in entry `1-i`.
pub async fn apply_on_stream(model: &ReadModel, stream: &str, payloads: &[String]) -> Applied {
    let events = decode_all(payloads);
    let delivered = events
        .iter()
        .enumerate()
        .map(|(i, event)| Delivered {
            source: Source {
                stream,
                entry: EntryId::parse(&format!("1-{i}")).unwrap(),
            },
            event,
        })
        .collect();
    model.apply_delivered(delivered).await.expect("apply")
}
