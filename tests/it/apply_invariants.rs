//! Invariants 1–8 of SPEC §2, one focused test each, against real Postgres
//! (6–8 here only where no vault exists; the analytics tests cover the rest).

use crate::support::TestDb;
use crate::support::events::*;

const E18: u128 = 1_000_000_000_000_000_000;

/// Invariant 2: shares follow the newest Deposited/Redeemed by chain
/// position; the totals are sums; redelivery changes nothing.
#[tokio::test]
async fn position_follows_newest_event_in_any_order() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (alice, term) = (addr(0xa), id(1));
    let first = deposited(&at(10, 0), &alice, &term, 1, 100, 100, 0);
    let middle = deposited(&at(11, 5), &alice, &term, 1, 50, 150, 0);
    let last = redeemed(&at(12, 1), &alice, &term, 1, 70, 40, 0);
    // Newest first, then the older ones.
    apply_each(&rm, &[last.clone(), first.clone(), middle.clone()]).await;
    let expected = [format!("{alice}|{term}|1|40|150|70|12|1")];
    let got = db.rows("SELECT lower(account_id), term_id, curve_id, shares, total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver, last_event_block, last_event_log_index FROM position").await;
    assert_eq!(got, expected);

    // Redelivering everything, together and one by one, changes nothing.
    let again = apply_each(&rm, &[first.clone(), middle.clone(), last.clone()]).await;
    assert_eq!((again.inserted.total(), again.duplicates), (0, 3));
    let all = [first, middle, last];
    let events = decode_all(&all);
    let batch = rm.apply(&events).await.unwrap();
    assert_eq!((batch.inserted.total(), batch.duplicates), (0, 3));
    let got = db.rows("SELECT lower(account_id), term_id, curve_id, shares, total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver, last_event_block, last_event_log_index FROM position").await;
    assert_eq!(got, expected);
}

/// Invariant 2 within one batch: several events of one position in the
/// same transaction, plus an in-batch duplicate.
#[tokio::test]
async fn one_batch_with_many_events_per_position() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (bob, term) = (addr(0xb), id(2));
    let d1 = deposited(&at(20, 0), &bob, &term, 1, 10, 10, 0);
    let d2 = deposited(&at(21, 0), &bob, &term, 1, 20, 30, 0);
    let r1 = redeemed(&at(22, 0), &bob, &term, 1, 5, 25, 0);
    let payloads = [r1, d2.clone(), d1, d2];
    let events = decode_all(&payloads);
    let applied = rm.apply(&events).await.unwrap();
    assert_eq!((applied.inserted.total(), applied.duplicates), (3, 1));
    assert_eq!(
        db.rows("SELECT shares, total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver FROM position").await,
        ["25|30|5"]
    );
    assert_eq!(db.rows("SELECT position_count FROM vault").await, ["1"]);
}

/// Invariant 3: a Redeemed that zeroes a position lowers position_count; an
/// older deposit arriving afterwards does not revive it.
#[tokio::test]
async fn redeem_to_zero_lowers_position_count() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(3);
    apply_each(
        &rm,
        &[
            deposited(&at(30, 0), &addr(1), &term, 1, 100, 100, 0),
            deposited(&at(30, 1), &addr(2), &term, 1, 100, 100, 0),
            deposited(&at(30, 2), &addr(3), &term, 2, 100, 100, 0),
        ],
    )
    .await;
    assert_eq!(
        db.rows("SELECT curve_id, position_count FROM vault").await,
        ["1|2", "2|1"]
    );
    apply_each(&rm, &[redeemed(&at(31, 0), &addr(1), &term, 1, 100, 0, 0)]).await;
    assert_eq!(
        db.rows("SELECT curve_id, position_count FROM vault").await,
        ["1|1", "2|1"]
    );
    // A deposit from before the redeem arrives late: shares stay 0.
    apply_each(&rm, &[deposited(&at(30, 9), &addr(1), &term, 1, 5, 105, 0)]).await;
    assert_eq!(
        db.rows("SELECT curve_id, position_count FROM vault").await,
        ["1|1", "2|1"]
    );
    assert_eq!(
        db.rows(&format!("SELECT shares, total_deposit_assets_after_total_fees FROM position WHERE lower(account_id) = '{}' ", addr(1))).await,
        ["0|105"]
    );
    // And a newer deposit re-opens it.
    apply_each(&rm, &[deposited(&at(32, 0), &addr(1), &term, 1, 5, 5, 0)]).await;
    assert_eq!(
        db.rows("SELECT curve_id, position_count FROM vault").await,
        ["1|2", "2|1"]
    );
}

/// Invariant 3: vault values come from the newest SharePriceChanged (zero
/// before one arrives), market cap is floored, vault_type is the code.
#[tokio::test]
async fn vault_follows_newest_share_price_and_floors_market_cap() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(4);
    apply_each(&rm, &[deposited(&at(40, 0), &addr(1), &term, 7, 1, 1, 2)]).await;
    assert_eq!(
        db.rows("SELECT total_shares, current_share_price, total_assets, market_cap, vault_type FROM vault").await,
        ["0|0|0|0|2"]
    );
    let newest = share_price(&at(42, 0), &term, 7, E18 + E18 / 2, 5, E18 * 1000 + 1, 2);
    let older = share_price(&at(41, 3), &term, 7, 3 * E18, 99, 99, 2);
    apply_each(&rm, &[newest, older]).await;
    // ⌊(1000·10^18 + 1) · 1.5·10^18 / 10^18⌋ = 1500·10^18 + 1 (the .5 floored)
    assert_eq!(
        db.rows("SELECT total_shares, current_share_price, total_assets, market_cap FROM vault")
            .await,
        [format!(
            "{}|{}|5|{}",
            E18 * 1000 + 1,
            E18 + E18 / 2,
            E18 * 1500 + 1
        )]
    );
    // A price below one unit per share floors to zero.
    apply_each(&rm, &[share_price(&at(43, 0), &term, 7, E18 / 3, 1, 2, 2)]).await;
    assert_eq!(db.rows("SELECT market_cap FROM vault").await, ["0"]);
}

/// Invariant 4: a vault's term is Unknown until its AtomCreated arrives,
/// whose late arrival makes it Atom; totals sum the term's vaults.
#[tokio::test]
async fn late_atom_created_turns_unknown_into_atom() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(5);
    apply_each(
        &rm,
        &[
            deposited(&at(50, 0), &addr(1), &term, 1, 10, 10, 0),
            share_price(&at(50, 1), &term, 1, 2 * E18, 10, 5, 0),
            share_price(&at(50, 2), &term, 2, 3 * E18, 20, 7, 0),
        ],
    )
    .await;
    assert_eq!(
        db.rows("SELECT id, type, atom_id, triple_id, total_assets, total_market_cap FROM term")
            .await,
        [format!("{term}|Unknown|∅|∅|30|31")]
    );
    apply_each(&rm, &[atom_created(&at(49, 0), &term, "0x6869")]).await;
    assert_eq!(
        db.rows("SELECT id, type, atom_id, triple_id, total_assets, total_market_cap FROM term")
            .await,
        [format!("{term}|Atom|{term}|∅|30|31")]
    );
    assert_eq!(
        db.rows("SELECT data, resolving_status FROM atom").await,
        ["hi|Pending"]
    );
}

/// Invariants 4 and 5: a triple gives its pro and counter terms type Triple
/// with triple_id = the pro term; the counter id is keccak-derived; a
/// counter vault seen before the TripleCreated is Unknown until it arrives.
#[tokio::test]
async fn triple_and_counter_terms() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (s, p, o, t) = (id(0x51), id(0x52), id(0x53), id(7));
    let counter = counter_of(&t);
    // Known vector (see decode::value tests): counter of 0x…07.
    assert_eq!(
        counter,
        "0x3d158d4daa2137b5742751c60977e24ec6b226f1d9046d9e2623b0336ce8dc5f"
    );
    apply_each(
        &rm,
        &[deposited(&at(60, 0), &addr(1), &counter, 1, 10, 10, 2)],
    )
    .await;
    assert_eq!(
        db.rows("SELECT id, type, triple_id FROM term").await,
        [format!("{counter}|Unknown|∅")]
    );
    apply_each(&rm, &[triple_created(&at(59, 0), &t, &s, &p, &o)]).await;
    let mut expected = vec![format!("{counter}|Triple|{t}"), format!("{t}|Triple|{t}")];
    expected.sort();
    assert_eq!(
        db.rows("SELECT id, type, triple_id FROM term").await,
        expected
    );
    assert_eq!(
        db.rows("SELECT counter_term_id FROM triple").await,
        std::slice::from_ref(&counter)
    );
    assert_eq!(
        db.rows("SELECT counter_term_id FROM triple_created_events")
            .await,
        [counter]
    );
    // The triple is marked dirty for the analytics worker.
    assert_eq!(db.rows("SELECT term_id FROM analytics_dirty").await, [t]);
}

/// Invariant 1: redelivery of a whole mixed batch changes nothing (an event
/// with the same identity but other content: see
/// `identity_is_transaction_and_log_index`).
#[tokio::test]
async fn redelivery_changes_nothing() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(8);
    let payloads = vec![
        atom_created(&at(70, 0), &term, "0x00ff"),
        deposited(&at(70, 1), &addr(1), &term, 1, 10, 10, 0),
        share_price(&at(70, 2), &term, 1, E18, 10, 10, 0),
        redeemed(&at(71, 0), &addr(1), &term, 1, 3, 7, 0),
    ];
    let events = decode_all(&payloads);
    let first = rm.apply(&events).await.unwrap();
    assert_eq!((first.inserted.total(), first.duplicates), (4, 0));
    let before = db.dump_core().await;
    // Timestamps are part of "changes nothing".
    let stamps = "SELECT 'atom', created_at, updated_at FROM atom
        UNION ALL SELECT 'position', created_at, updated_at FROM position
        UNION ALL SELECT 'vault', created_at, updated_at FROM vault
        UNION ALL SELECT 'term', created_at, updated_at FROM term
        UNION ALL SELECT 'deposited_events', created_at, NULL FROM deposited_events";
    let stamped = db.rows(stamps).await;
    for _ in 0..3 {
        let again = rm.apply(&events).await.unwrap();
        assert_eq!((again.inserted.total(), again.duplicates), (0, 4));
    }
    assert_eq!(db.dump_core().await, before);
    assert_eq!(db.rows(stamps).await, stamped);
    assert_eq!(
        db.rows("SELECT data, encode(raw_data, 'hex') FROM atom")
            .await,
        ["∅|00ff"]
    );
    // A new event that changes the vault moves its updated_at, not its
    // created_at.
    let vault_stamps = db.rows("SELECT created_at, updated_at FROM vault").await;
    let (created, updated) = vault_stamps[0].split_once('|').unwrap();
    apply_each(
        &rm,
        &[share_price(&at(72, 0), &term, 1, 2 * E18, 20, 10, 0)],
    )
    .await;
    assert_eq!(
        db.rows(&format!(
            "SELECT created_at = '{created}'::timestamptz, updated_at > '{updated}'::timestamptz
             FROM vault"
        ))
        .await,
        ["true|true"]
    );
}

/// Invariant 4's totals, and the timestamps beside them: the term upsert
/// writes every term a batch touches (it names their triples for the dirty
/// marks), but `updated_at` moves only when a value of the term does. A
/// Deposited moves its vault (position count) and leaves the term's totals
/// as they were; a SharePriceChanged moves both.
#[tokio::test]
async fn term_updated_at_moves_only_with_its_values() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(12);
    apply_each(
        &rm,
        &[
            atom_created(&at(90, 0), &term, "0x01"),
            deposited(&at(90, 1), &addr(1), &term, 1, 10, 10, 0),
            share_price(&at(90, 2), &term, 1, E18, 10, 10, 0),
        ],
    )
    .await;
    let vault_before = db.rows("SELECT updated_at FROM vault").await.remove(0);
    let term_before = db.rows("SELECT updated_at FROM term").await.remove(0);
    let moved = |vault: &str, term: &str| {
        format!(
            "SELECT v.updated_at > '{vault}'::timestamptz, t.updated_at = '{term}'::timestamptz,
                 t.total_assets, t.total_market_cap, v.position_count
             FROM vault v JOIN term t ON t.id = v.term_id"
        )
    };
    apply_each(&rm, &[deposited(&at(91, 0), &addr(2), &term, 1, 5, 15, 0)]).await;
    assert_eq!(
        db.rows(&moved(&vault_before, &term_before)).await,
        ["true|true|10|10|2"],
        "a deposit moves the vault, not the term's totals or updated_at"
    );
    let vault_now = db.rows("SELECT updated_at FROM vault").await.remove(0);
    apply_each(
        &rm,
        &[share_price(&at(92, 0), &term, 1, 2 * E18, 30, 15, 0)],
    )
    .await;
    assert_eq!(
        db.rows(&moved(&vault_now, &term_before)).await,
        ["true|false|30|30|2"],
        "a price moves the vault and the term, with its updated_at"
    );
}

/// Invariant 4 over several vaults: a term's totals are the sums over all
/// its curves — also when its creation and moves of two of its curves share
/// one batch (the term upsert merges a creation with the term's one, per
/// term, vault move) — and a later batch that moves one curve only moves
/// the totals by that curve's change. The counter term, moved in the same
/// batch, keeps its own sums; the batch marks its triple once.
#[tokio::test]
async fn term_totals_sum_every_curve() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (t, s, p, o) = (id(120), id(121), id(122), id(123));
    let counter = counter_of(&t);
    let payloads = [
        share_price(&at(120, 0), &t, 1, E18, 10, 10, 1),
        share_price(&at(120, 1), &t, 2, 2 * E18, 7, 3, 1),
        share_price(&at(120, 2), &counter, 1, E18, 4, 4, 2),
        triple_created(&at(120, 3), &t, &s, &p, &o),
    ];
    let applied = rm.apply(&decode_all(&payloads)).await.unwrap();
    assert_eq!(applied.dirty_triples, std::slice::from_ref(&t));
    let terms = "SELECT id, type, triple_id, total_assets, total_market_cap FROM term";
    // Market caps: 10 × 1 on curve 1, 3 × 2 on curve 2, 4 × 1 on the counter.
    let mut expected = vec![
        format!("{t}|Triple|{t}|17|16"),
        format!("{counter}|Triple|{t}|4|4"),
    ];
    expected.sort();
    assert_eq!(db.rows(terms).await, expected);

    apply_each(&rm, &[share_price(&at(121, 0), &t, 2, 3 * E18, 9, 5, 1)]).await;
    expected = vec![
        format!("{t}|Triple|{t}|19|25"),
        format!("{counter}|Triple|{t}|4|4"),
    ];
    expected.sort();
    assert_eq!(db.rows(terms).await, expected);
    assert_eq!(
        db.rows(
            "SELECT t.total_assets = sum(v.total_assets), t.total_market_cap = sum(v.market_cap)
             FROM term t JOIN vault v ON v.term_id = t.id GROUP BY t.id"
        )
        .await,
        ["true|true", "true|true"]
    );
}

/// One event that Postgres cannot store (its market cap overflows
/// NUMERIC(78,0)) is isolated; its batch-mates commit.
#[tokio::test]
async fn a_failing_event_does_not_sink_its_batch() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(9);
    let huge = 1u128 << 127;
    let mut payloads = Vec::new();
    for i in 0..7 {
        payloads.push(deposited(&at(80, i), &addr(i as u64), &term, 1, 10, 10, 0));
    }
    // 2^127·2^127 / 10^18 ≈ 2.9·10^58 fits; make it not fit with a price
    // near 2^256 given in hex.
    let bad = share_price(&at(80, 50), &term, 1, huge, 1, huge, 0).replace(
        &format!("\"sharePrice\":\"{huge}\""),
        &format!("\"sharePrice\":\"0x{}\"", "f".repeat(64)),
    );
    payloads.insert(3, bad);
    let events = decode_all(&payloads);
    let refs: Vec<_> = events
        .iter()
        .map(writer::apply::Delivered::direct)
        .collect();
    let out = rm.apply_isolating(&refs, false).await.unwrap();
    assert_eq!(out.applied.inserted.total(), 7);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].index, 3);
    assert!(
        out.rejected[0].error.to_string().contains("overflow"),
        "{}",
        out.rejected[0].error
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM deposited_events").await,
        7
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM share_price_changed_events")
            .await,
        0
    );
    assert_eq!(db.rows("SELECT position_count FROM vault").await, ["7"]);
}

/// Generic events are stored with their data as JSONB and cascade nothing.
#[tokio::test]
async fn generic_events_are_stored() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let payload = r#"{"event_name":"Transfer","event_signature_hash":"0xddf2","event_data":{"from":"0x01","value":"5","transaction_information":{"address":"0x0000000000000000000000000000000000000001","block_hash":"0x0000000000000000000000000000000000000000000000000000000000000001","block_number":"0x5","block_timestamp":null,"log_index":0,"network":"n","transaction_hash":"0x0000000000000000000000000000000000000000000000000000000000000002","transaction_index":0}}}"#.to_owned();
    let events = decode_all(std::slice::from_ref(&payload));
    rm.apply(&events).await.unwrap();
    rm.apply(&events).await.unwrap();
    assert_eq!(
        db.rows("SELECT event_name, event_signature_hash, event_data->>'value', block_number FROM generic_events").await,
        ["Transfer|0xddf2|5|5"]
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM term").await, 0);
}

/// Invariant 2: a position is the Redeemed's receiver's, not its sender's.
#[tokio::test]
async fn redeemed_keys_the_receivers_position() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (alice, bob, term) = (addr(0xa1), addr(0xb1), id(60));
    apply_each(&rm, &[deposited(&at(60, 0), &alice, &term, 1, 100, 100, 0)]).await;
    let redeem = envelope(
        "Redeemed",
        &at(61, 0),
        &format!(
            r#""sender":"{bob}","receiver":"{alice}","termId":"{term}","curveId":"1","shares":"100","totalShares":"0","assets":"7","fees":"0","vaultType":0"#
        ),
    );
    apply_each(&rm, &[redeem]).await;
    assert_eq!(
        db.rows("SELECT lower(account_id), shares, total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver FROM position").await,
        [format!("{alice}|0|100|7")]
    );
    assert_eq!(db.rows("SELECT position_count FROM vault").await, ["0"]);
}

/// Invariant 1: an event is identified by (transaction_hash, log_index)
/// alone. The same pair with other content — another block, other amounts,
/// no reorg notice — is a duplicate and changes nothing.
#[tokio::test]
async fn identity_is_transaction_and_log_index() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (alice, term) = (addr(0xa2), id(61));
    let original = at(70, 3);
    apply_each(&rm, &[deposited(&original, &alice, &term, 1, 100, 100, 0)]).await;
    let elsewhere = At {
        block: 71,
        ..original.clone()
    };
    let again = apply_each(&rm, &[deposited(&elsewhere, &alice, &term, 1, 999, 999, 0)]).await;
    assert_eq!((again.inserted.total(), again.duplicates), (0, 1));
    assert_eq!(
        db.rows(
            "SELECT block_number, block_hash, assets_after_fees, total_shares FROM deposited_events"
        )
        .await,
        [format!("70|0x{:064x}|100|100", 70)]
    );
    assert_eq!(
        db.rows("SELECT shares, total_deposit_assets_after_total_fees FROM position")
            .await,
        ["100|100"]
    );
}

/// SPEC §2 event tables: one column per event field, plus the chain
/// columns, each holding its own field (every value distinct, sender ≠
/// receiver, so a swapped column shows).
#[tokio::test]
async fn event_rows_hold_every_field() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (sender, receiver, term) = (addr(0x51), addr(0x52), id(0x53));
    let (d, r, p) = (at(80, 7), at(81, 8), at(82, 9));
    apply_each(
        &rm,
        &[
            envelope(
                "Deposited",
                &d,
                &format!(
                    r#""sender":"{sender}","receiver":"{receiver}","termId":"{term}","curveId":"4","assets":"1001","assetsAfterFees":"1002","shares":"1003","totalShares":"1004","vaultType":1"#
                ),
            ),
            envelope(
                "Redeemed",
                &r,
                &format!(
                    r#""sender":"{sender}","receiver":"{receiver}","termId":"{term}","curveId":"5","shares":"2001","totalShares":"2002","assets":"2003","fees":"2004","vaultType":2"#
                ),
            ),
            envelope(
                "SharePriceChanged",
                &p,
                &format!(
                    r#""termId":"{term}","curveId":"6","sharePrice":"3001","totalAssets":"3002","totalShares":"3003","vaultType":0"#
                ),
            ),
        ],
    )
    .await;
    let chain = |at: &At| {
        format!(
            "{}|{}|{}|0x{:064x}|{}|0|{}|testnet",
            at.tx,
            at.log,
            at.block,
            at.block,
            1_700_000_000 + at.block,
            addr(0xc0de)
        )
    };
    const CHAIN: &str = "transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, lower(address), network";
    assert_eq!(
        db.rows(&format!("SELECT {CHAIN}, lower(sender), lower(receiver), term_id, curve_id, assets, assets_after_fees, shares, total_shares, vault_type FROM deposited_events")).await,
        [format!("{}|{sender}|{receiver}|{term}|4|1001|1002|1003|1004|1", chain(&d))]
    );
    assert_eq!(
        db.rows(&format!("SELECT {CHAIN}, lower(sender), lower(receiver), term_id, curve_id, shares, total_shares, assets, fees, vault_type FROM redeemed_events")).await,
        [format!("{}|{sender}|{receiver}|{term}|5|2001|2002|2003|2004|2", chain(&r))]
    );
    assert_eq!(
        db.rows(&format!("SELECT {CHAIN}, term_id, curve_id, share_price, total_assets, total_shares, vault_type FROM share_price_changed_events")).await,
        [format!("{}|{term}|6|3001|3002|3003|0", chain(&p))]
    );
}

/// Invariant 3 and 4: a Redeemed alone names a vault (zeros until a
/// SharePriceChanged) and its term, `Unknown` until created.
#[tokio::test]
async fn a_redeemed_alone_creates_its_vault_and_term() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let term = id(90);
    apply_each(&rm, &[redeemed(&at(90, 0), &addr(9), &term, 3, 5, 0, 1)]).await;
    assert_eq!(
        db.rows("SELECT term_id, curve_id, total_shares, current_share_price, total_assets, market_cap, position_count, vault_type FROM vault").await,
        [format!("{term}|3|0|0|0|0|0|1")]
    );
    assert_eq!(
        db.rows("SELECT id, type, atom_id, triple_id, total_assets, total_market_cap FROM term")
            .await,
        [format!("{term}|Unknown|∅|∅|0|0")]
    );
}

/// Invariant 6 defines a triple's vaults by ids: a Deposited alone (no
/// SharePriceChanged) on its pro or its counter vault marks the triple for
/// the analytics worker, whatever the event's `vaultType` says; one on an
/// atom's vault marks nothing.
#[tokio::test]
async fn vault_moves_mark_their_triple_by_ids() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (t, s, p, o) = (id(100), id(101), id(102), id(103));
    let counter = counter_of(&t);
    apply_each(&rm, &[triple_created(&at(100, 0), &t, &s, &p, &o)]).await;
    let cases = [
        (&t, 1, vec![t.clone()]),
        (&counter, 2, vec![t.clone()]),
        (&t, 0, vec![t.clone()]),
        (&counter, 1, vec![t.clone()]),
        (&s, 0, vec![]),
    ];
    for (n, (term, vault_type, marked)) in cases.into_iter().enumerate() {
        db.execute("DELETE FROM analytics_dirty").await;
        let n = n as i64;
        apply_each(
            &rm,
            &[deposited(
                &at(101 + n, 0),
                &addr(0x70 + n as u64),
                term,
                1,
                10,
                10,
                vault_type,
            )],
        )
        .await;
        assert_eq!(
            db.rows("SELECT term_id FROM analytics_dirty").await,
            marked,
            "deposit on {term} with vaultType {vault_type}"
        );
    }
}

/// Invariants 4 and 6–8 where nothing names a vault yet: the terms of an atom
/// and a triple exist with zero totals, the triple has a `triple_term` row of
/// zeros and counts in its pairs, and there is no `triple_vault` row. A
/// Deposited alone then creates the counter vault with zeros until a
/// SharePriceChanged (invariant 3), and the triple's rows take its position
/// with the missing pro side counted as 0.
#[tokio::test]
async fn terms_and_analytics_without_vaults() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let (atom, t, s, p, o) = (id(110), id(111), id(0x61), id(0x62), id(0x63));
    let counter = counter_of(&t);
    apply_each(
        &rm,
        &[
            atom_created(&at(110, 0), &atom, "0x6869"),
            triple_created(&at(110, 1), &t, &s, &p, &o),
        ],
    )
    .await;
    let terms = "SELECT id, type, atom_id, triple_id, total_assets, total_market_cap FROM term";
    let mut expected = vec![
        format!("{atom}|Atom|{atom}|∅|0|0"),
        format!("{t}|Triple|∅|{t}|0|0"),
        format!("{counter}|Triple|∅|{t}|0|0"),
    ];
    expected.sort();
    assert_eq!(db.rows(terms).await, expected);
    assert!(db.rows("SELECT term_id FROM vault").await.is_empty());
    testkit::drain_analytics(&db.pool, &db.schema)
        .await
        .unwrap();
    let analytics = db.dump_analytics().await;
    assert!(analytics.triple_vault.is_empty(), "{analytics:?}");
    assert_eq!(analytics.triple_term, [format!("{t}|{counter}|0|0|0")]);
    assert_eq!(analytics.predicate_object, [format!("{p}|{o}|1|0|0")]);
    assert_eq!(analytics.subject_predicate, [format!("{s}|{p}|1|0|0")]);

    apply_each(
        &rm,
        &[deposited(&at(112, 0), &addr(1), &counter, 3, 10, 10, 1)],
    )
    .await;
    assert_eq!(
        db.rows("SELECT term_id, curve_id, total_shares, current_share_price, total_assets, market_cap, position_count, vault_type FROM vault")
            .await,
        [format!("{counter}|3|0|0|0|0|1|1")]
    );
    testkit::drain_analytics(&db.pool, &db.schema)
        .await
        .unwrap();
    let analytics = db.dump_analytics().await;
    assert_eq!(analytics.triple_vault, [format!("{t}|{counter}|3|0|0|1|0")]);
    assert_eq!(analytics.triple_term, [format!("{t}|{counter}|0|0|1")]);
    assert_eq!(analytics.predicate_object, [format!("{p}|{o}|1|1|0")]);
    assert_eq!(analytics.subject_predicate, [format!("{s}|{p}|1|1|0")]);
}
