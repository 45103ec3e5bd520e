//! Malformed input (SPEC §1): every case is rejected with its field named,
//! and nothing is written for it; well-formed batch-mates still apply.

use writer::decode::decode_json;

use crate::support::TestDb;
use crate::support::events::*;

/// A Deposited payload with one field replaced by a raw JSON value.
fn deposit_with(field: &str, raw_value: &str) -> String {
    let good = deposited(&at(5, 0), &addr(1), &id(1), 1, 10, 10, 0);
    let start = good.find(&format!("\"{field}\":")).expect("field present");
    let value_start = start + field.len() + 3;
    let value_end = value_start + good[value_start..].find([',', '}']).expect("value end");
    format!("{}{raw_value}{}", &good[..value_start], &good[value_end..])
}

#[tokio::test]
async fn every_malformed_case_names_its_field_and_writes_nothing() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let cases: Vec<(String, &str)> = vec![
        ("{\"event_name\": ".to_owned(), "payload: invalid JSON"),
        (
            deposit_with("termId", "null"),
            "event_data[0].termId: missing or null",
        ),
        (
            deposit_with("termId", "\"0xzz\""),
            "event_data[0].termId: contains a character that is not hex",
        ),
        (
            deposit_with("termId", "\"0x1234\""),
            "event_data[0].termId: expected 32 bytes",
        ),
        (
            deposit_with("receiver", "\"0x12\""),
            "event_data[0].receiver: expected 20 bytes",
        ),
        (
            deposit_with(
                "assets",
                "\"115792089237316195423570985008687907853269984665640564039457584007913129639936\"",
            ),
            "event_data[0].assets: exceeds 2^256-1",
        ),
        (
            deposit_with("shares", "-3"),
            "event_data[0].shares: negative",
        ),
        (
            deposit_with("totalShares", "\"-3\""),
            "event_data[0].totalShares: negative",
        ),
        (
            deposit_with("curveId", "1.5"),
            "event_data[0].curveId: not an integer",
        ),
        (
            deposit_with("vaultType", "9"),
            "event_data[0].vaultType: unknown vault type 9",
        ),
        (
            deposit_with("block_number", "\"x\""),
            "event_data[0].transaction_information.block_number",
        ),
        (
            deposit_with("transaction_hash", "\"0x12\""),
            "event_data[0].transaction_information.transaction_hash",
        ),
    ];
    for (payload, expected) in &cases {
        let d = decode_json(payload);
        assert!(d.events.is_empty(), "{payload}");
        assert_eq!(d.errors.len(), 1, "{payload}");
        let message = d.errors[0].to_string();
        assert!(
            message.starts_with(expected),
            "{message} does not start with {expected}"
        );
        // Nothing decodable means nothing to write; applying the (empty)
        // result must leave every table empty.
        rm.apply(&d.events).await.unwrap();
    }
    for (table, rows) in db.dump_core().await {
        assert!(rows.is_empty(), "{table} has rows");
    }
}

#[tokio::test]
async fn bad_elements_do_not_hold_back_good_ones() {
    let db = TestDb::new().await;
    let rm = db.read_model();
    let good = deposited(&at(6, 0), &addr(1), &id(1), 1, 10, 10, 0);
    let bad = deposit_with("assets", "\"12x\"");
    // Splice both elements into one array entry.
    let element = |p: &str| {
        let start = p.find("\"event_data\":[").unwrap() + "\"event_data\":[".len();
        p[start..p.len() - 2].to_owned()
    };
    let payload = good.replace(
        &element(&good),
        &format!("{},{}", element(&bad), element(&good)),
    );
    let d = decode_json(&payload);
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].to_string().starts_with("event_data[0].assets:"));
    rm.apply(&d.events).await.unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM deposited_events").await,
        1
    );
}
