//! Envelope and event decoding: every accepted encoding, and every malformed
//! input of SPEC §1 rejected with its field named.

use serde_json::{Value, json};

use super::*;
use crate::event::{Amount, VaultType};

const TERM: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
const TX: &str = "0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ADDR: &str = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";

fn tx_info() -> Value {
    json!({
        "address": ADDR,
        "block_hash": TX.replace('a', "b"),
        "block_number": 100,
        "block_timestamp": 1_700_000_000,
        "log_index": 3,
        "network": "intuition-testnet",
        "transaction_hash": TX,
        "transaction_index": 1
    })
}

fn deposited() -> Value {
    json!({
        "sender": ADDR,
        "receiver": ADDR,
        "termId": TERM,
        "curveId": "1",
        "assets": "1000000000000000000",
        "assetsAfterFees": "990000000000000000",
        "shares": "990000000000000000",
        "totalShares": "990000000000000000",
        "vaultType": 0,
        "transaction_information": tx_info()
    })
}

fn envelope(name: &str, data: Value) -> String {
    json!({
        "event_name": name,
        "event_signature_hash": "0x00",
        "event_data": data,
        "network": "intuition-testnet"
    })
    .to_string()
}

fn only_event(payload: &str) -> ChainEvent<'_> {
    let mut d = decode_json(payload);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.events.len(), 1);
    d.events.pop().unwrap()
}

fn only_error(payload: &str) -> String {
    let d = decode_json(payload);
    assert!(d.events.is_empty(), "decoded {:?}", d.events);
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    d.errors[0].to_string()
}

#[test]
fn deposited_canonical_form() {
    let payload = envelope("Deposited", deposited());
    let event = only_event(&payload);
    assert_eq!(event.chain.transaction_hash.as_str(), TX);
    assert_eq!(event.chain.order(), (100, 3));
    assert_eq!(event.chain.block_timestamp, Some(1_700_000_000));
    assert_eq!(event.chain.network, "intuition-testnet");
    assert_eq!(
        event.chain.address.as_str(),
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    );
    let EventKind::Deposited(d) = event.kind else {
        panic!("not a deposit")
    };
    assert_eq!(d.term_id.as_str(), TERM);
    assert_eq!(d.assets_after_fees.as_str(), "990000000000000000");
    assert_eq!(d.vault_type, VaultType::Atom);
}

#[test]
fn every_integer_and_id_encoding_is_accepted() {
    let mut e = deposited();
    e["termId"] = json!(TERM[2..].to_uppercase());
    e["assets"] = json!("0xDE0B6B3A7640000");
    e["shares"] = json!(990000000000000000u64);
    e["curveId"] = json!(2);
    e["vaultType"] = json!("0x2");
    e["sender"] = json!(ADDR[2..].to_uppercase());
    let ti = &mut e["transaction_information"];
    ti["block_number"] = json!("0x64");
    ti["log_index"] = json!("3");
    ti["block_timestamp"] = Value::Null;
    ti["transaction_hash"] = json!(TX.to_uppercase().replace("0X", "0x"));
    let payload = envelope("Deposited", e);
    let event = only_event(&payload);
    assert_eq!(event.chain.order(), (100, 3));
    assert_eq!(event.chain.block_timestamp, None);
    assert_eq!(event.chain.transaction_hash.as_str(), TX);
    let EventKind::Deposited(d) = event.kind else {
        panic!()
    };
    assert_eq!(d.term_id.as_str(), TERM);
    assert_eq!(d.assets.as_str(), "1000000000000000000");
    assert_eq!(d.shares.as_str(), "990000000000000000");
    assert_eq!(d.curve_id.as_str(), "2");
    assert_eq!(d.vault_type, VaultType::CounterTriple);
    assert_eq!(
        d.sender.as_str(),
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    );
}

#[test]
fn array_event_data_is_a_batch_and_bad_elements_do_not_sink_the_rest() {
    let mut bad = deposited();
    bad["assets"] = json!("-5");
    let mut second = deposited();
    second["transaction_information"]["log_index"] = json!(4);
    let payload = envelope("Deposited", json!([deposited(), bad, second, 7]));
    let d = decode_json(&payload);
    assert_eq!(d.events.len(), 2);
    assert_eq!(d.events[1].chain.log_index, 4);
    let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "event_data[1].assets: negative amounts are not allowed",
            "event_data[3]: expected an object, found a number",
        ]
    );
}

#[test]
fn payload_field_preference() {
    let fields = [
        ("other", b"x".as_slice()),
        ("event_data", b"3".as_slice()),
        ("data", b"2".as_slice()),
    ];
    assert_eq!(select_payload(fields).unwrap(), ("data", b"2".as_slice()));
    let fields = [("payload", b"1".as_slice()), ("data", b"2".as_slice())];
    assert_eq!(select_payload(fields).unwrap().0, "payload");
    let fields = [("event_data", b"3".as_slice())];
    assert_eq!(select_payload(fields).unwrap().0, "event_data");
    let none: [(&str, &[u8]); 1] = [("foo", b"{}")];
    assert_eq!(
        select_payload(none).unwrap_err().to_string(),
        "entry: entry has no `payload`, `data` or `event_data` field"
    );
}

#[test]
fn all_five_event_types_and_generic() {
    let atom = json!({
        "creator": ADDR, "termId": TERM, "atomData": "0x697066733a2f2f78",
        "atomWallet": ADDR, "transaction_information": tx_info()
    });
    let EventKind::AtomCreated(a) = only_event(&envelope("AtomCreated", atom)).kind else {
        panic!()
    };
    assert_eq!(a.atom_data.text(), Some("ipfs://x"));

    let binary = json!({
        "creator": ADDR, "termId": TERM, "atomData": "ff00",
        "atomWallet": ADDR, "transaction_information": tx_info()
    });
    let EventKind::AtomCreated(a) = only_event(&envelope("AtomCreated", binary)).kind else {
        panic!()
    };
    assert_eq!(a.atom_data.raw(), Some([0xff, 0x00].as_slice()));

    let triple = json!({
        "creator": ADDR, "termId": TERM, "subjectId": TERM, "predicateId": TERM,
        "objectId": TERM, "transaction_information": tx_info()
    });
    let EventKind::TripleCreated(t) = only_event(&envelope("TripleCreated", triple)).kind else {
        panic!()
    };
    assert_eq!(t.counter_term_id, value::counter_term_id(&t.term_id));

    let redeemed = json!({
        "sender": ADDR, "receiver": ADDR, "termId": TERM, "curveId": "1",
        "shares": "5", "totalShares": "0", "assets": "5", "fees": "0", "vaultType": "1",
        "transaction_information": tx_info()
    });
    let EventKind::Redeemed(r) = only_event(&envelope("Redeemed", redeemed)).kind else {
        panic!()
    };
    assert_eq!(r.total_shares, Amount::ZERO);

    let spc = json!({
        "termId": TERM, "curveId": "1", "sharePrice": "1000000000000000000",
        "totalAssets": "10", "totalShares": "10", "vaultType": 1,
        "transaction_information": tx_info()
    });
    let EventKind::SharePriceChanged(s) = only_event(&envelope("SharePriceChanged", spc)).kind
    else {
        panic!()
    };
    assert_eq!(s.vault_type, VaultType::Triple);

    let generic = json!({"from": ADDR, "value": "1", "transaction_information": tx_info()});
    let payload = envelope("Transfer", generic);
    let EventKind::Generic(g) = only_event(&payload).kind else {
        panic!()
    };
    assert_eq!(g.event_name, "Transfer");
    assert!(g.data.contains("\"value\":\"1\""));
}

#[test]
fn network_falls_back_to_the_envelope() {
    let mut e = deposited();
    e["transaction_information"]
        .as_object_mut()
        .unwrap()
        .remove("network");
    let payload = envelope("Deposited", e.clone());
    assert_eq!(only_event(&payload).chain.network, "intuition-testnet");
    let bare = json!({"event_name": "Deposited", "event_data": e}).to_string();
    assert_eq!(
        only_error(&bare),
        "event_data.transaction_information.network: missing or null"
    );
}

#[test]
fn reorg_notice() {
    let payload = envelope(
        REORG_EVENT_NAME,
        json!([{"type": "reorg", "network": "n", "fork_block": "0x10", "depth": 2,
                "affected_tx_hashes": [TX, TX.to_uppercase().replace("0X", "")]}]),
    );
    let d = decode_json(&payload);
    assert!(d.errors.is_empty() && d.events.is_empty());
    assert_eq!(d.reorgs.len(), 1);
    assert_eq!(d.reorgs[0].fork_block, 16);
    assert_eq!(d.reorgs[0].affected_tx_hashes[1].as_str(), TX);

    let bad = envelope(
        REORG_EVENT_NAME,
        json!([{"network": "n", "fork_block": 1, "affected_tx_hashes": ["0x12"]}]),
    );
    assert_eq!(
        only_error(&bad),
        "event_data[0].affected_tx_hashes[0]: expected 32 bytes (64 hex digits), found 2 hex digits"
    );

    let other = envelope(
        REORG_EVENT_NAME,
        json!([{"type": "finality", "network": "n", "fork_block": 1, "affected_tx_hashes": [TX]}]),
    );
    assert_eq!(
        only_error(&other),
        "event_data[0].type: expected \"reorg\", found another notice type"
    );
}

/// Every malformed-input case of SPEC §1, with the field it must name.
#[test]
fn malformed_inputs_name_their_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"termId": null}),
            "event_data.termId: missing or null",
        ),
        (
            json!({"termId": "0x12zz"}),
            "event_data.termId: contains a character that is not hex",
        ),
        (
            json!({"termId": "0x1234"}),
            "event_data.termId: expected 32 bytes (64 hex digits), found 4 hex digits",
        ),
        (
            json!({"receiver": "0x1234"}),
            "event_data.receiver: expected 20 bytes (40 hex digits), found 4 hex digits",
        ),
        (
            json!({"assets": "115792089237316195423570985008687907853269984665640564039457584007913129639936"}),
            "event_data.assets: exceeds 2^256-1",
        ),
        (
            json!({"shares": format!("0x1{}", "0".repeat(64))}),
            "event_data.shares: exceeds 2^256-1",
        ),
        (
            json!({"totalShares": "-1"}),
            "event_data.totalShares: negative amounts are not allowed",
        ),
        (
            json!({"totalShares": -1}),
            "event_data.totalShares: negative amounts are not allowed",
        ),
        (
            json!({"assets": 1.5}),
            "event_data.assets: not an integer (fractions and exponents are not allowed)",
        ),
        (
            json!({"assets": "12abc"}),
            "event_data.assets: contains a character that is not a digit",
        ),
        (
            json!({"assets": true}),
            "event_data.assets: expected an integer (number or string), found a boolean",
        ),
        (
            json!({"vaultType": 3}),
            "event_data.vaultType: unknown vault type 3 (0 atom, 1 triple, 2 counter-triple)",
        ),
        (
            json!({"termId": 5}),
            "event_data.termId: expected a string, found a number",
        ),
        (
            json!({"transaction_information": "x"}),
            "event_data.transaction_information: expected an object, found a string",
        ),
    ];
    for (patch, expected) in cases {
        let mut e = deposited();
        for (k, v) in patch.as_object().unwrap() {
            e[k] = v.clone();
        }
        assert_eq!(only_error(&envelope("Deposited", e)), expected);
    }

    let tx_cases: Vec<(&str, Value, &str)> = vec![
        (
            "block_number",
            json!("9223372036854775808"),
            "exceeds 2^63-1",
        ),
        ("log_index", Value::Null, "missing or null"),
        ("block_hash", json!("0x00"), "expected 32 bytes"),
        ("transaction_hash", json!("nothex"), "not hex"),
        ("block_timestamp", json!("soon"), "not a digit"),
    ];
    for (field, value, reason) in tx_cases {
        let mut e = deposited();
        e["transaction_information"][field] = value;
        let err = only_error(&envelope("Deposited", e));
        assert!(
            err.starts_with(&format!("event_data.transaction_information.{field}: ")),
            "{err}"
        );
        assert!(err.contains(reason), "{err}");
    }
}

#[test]
fn malformed_envelopes() {
    assert!(only_error("{not json").starts_with("payload: invalid JSON"));
    assert!(only_error("[]").starts_with("payload: invalid JSON"));
    assert_eq!(
        only_error(r#"{"event_data": {}}"#),
        "event_name: missing or null"
    );
    assert_eq!(
        only_error(r#"{"event_name": "Deposited"}"#),
        "event_data: missing or null"
    );
    assert_eq!(
        only_error(r#"{"event_name": 7, "event_data": {}}"#),
        "event_name: expected a string, found a number"
    );
    assert_eq!(
        only_error(r#"{"event_name": "Deposited", "event_data": 5}"#),
        "event_data: expected an object or an array of objects, found a scalar"
    );
    let d = decode_payload(&[0xff, 0xfe, b'{']);
    assert_eq!(d.errors[0].to_string(), "payload: not valid UTF-8");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        r#"{{"event_name":"X","event_data":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(
        only_error(&deep),
        "payload: JSON nests deeper than 32 levels"
    );
    // Brackets inside strings do not count.
    let mut e = deposited();
    e["note"] = json!(
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"
    );
    only_event(&envelope("Deposited", e));
}

#[test]
fn unknown_keys_are_ignored() {
    let mut e = deposited();
    e["somethingNew"] = json!({"nested": [1, 2, 3]});
    let payload = envelope("Deposited", e).replace("\"network\"", "\"extra\":1,\"network\"");
    only_event(&payload);
}
