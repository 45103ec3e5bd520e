//! Property-based fuzzing of the entry → events path.
//!
//! Three generators: arbitrary bytes, arbitrary JSON documents, and valid
//! rindexer envelopes mutated at random (byte flips, cuts, splices, values
//! swapped for hostile ones). For every input: no panic, and the result is
//! either well-formed events or typed errors naming a field. Case counts are
//! bounded for CI; `FUZZ_CASES` scales them (e.g. `FUZZ_CASES=1000000`).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use testkit::workload::{Spec, generate};
use writer::decode::{DecodedEntry, decode_payload};

/// A runner for `default` cases (or `FUZZ_CASES`), with no regression
/// file: failures print their input.
fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn is_lower_hex(s: &str, digits: usize) -> bool {
    s.len() == digits + 2
        && s.starts_with("0x")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_canonical_amount(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 78
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
}

/// Every decoded value is in canonical form; every error names a field.
fn check(d: &DecodedEntry<'_>) {
    use writer::event::{Amount, EventKind};
    for e in &d.events {
        let c = &e.chain;
        assert!(is_lower_hex(c.transaction_hash.as_str(), 64));
        assert!(is_lower_hex(c.block_hash.as_str(), 64));
        assert!(is_lower_hex(&c.address.as_str().to_lowercase(), 40));
        assert!(c.log_index >= 0 && c.block_number >= 0 && c.transaction_index >= 0);
        assert!(!c.network.contains('\0'));
        let amounts: Vec<&Amount> = match &e.kind {
            EventKind::Deposited(x) => vec![
                &x.curve_id,
                &x.assets,
                &x.assets_after_fees,
                &x.shares,
                &x.total_shares,
            ],
            EventKind::Redeemed(x) => {
                vec![&x.curve_id, &x.shares, &x.total_shares, &x.assets, &x.fees]
            }
            EventKind::SharePriceChanged(x) => {
                vec![
                    &x.curve_id,
                    &x.share_price,
                    &x.total_assets,
                    &x.total_shares,
                ]
            }
            EventKind::AtomCreated(x) => {
                assert!(is_lower_hex(x.term_id.as_str(), 64));
                if let Some(t) = x.atom_data.text() {
                    assert!(!t.contains('\0'));
                }
                vec![]
            }
            EventKind::TripleCreated(x) => {
                assert!(is_lower_hex(x.counter_term_id.as_str(), 64));
                vec![]
            }
            EventKind::Generic(g) => {
                assert!(!writer::decode::json::has_escaped_nul(g.data));
                vec![]
            }
        };
        for a in amounts {
            assert!(is_canonical_amount(a.as_str()), "{a}");
        }
    }
    for n in &d.reorgs {
        assert!(n.fork_block >= 0);
    }
    for err in &d.errors {
        assert!(!err.field.is_empty());
        assert!(!err.to_string().is_empty());
    }
}

fn valid_payloads() -> Vec<String> {
    let mut spec = Spec::new(77, 400);
    spec.duplicate_ratio = 0.0;
    generate(&spec)
        .entries
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

/// Values that break things: wrong types, huge and negative numbers, NUL,
/// deep nesting, long strings.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("1.5".to_owned()),
        Just(format!("\"0x1{}\"", "0".repeat(64))),
        Just(format!("\"{}\"", "9".repeat(79))),
        Just("\"\\u0000\"".to_owned()),
        Just("\"0x\"".to_owned()),
        Just(format!("{}1{}", "[".repeat(40), "]".repeat(40))),
        Just(format!("\"{}\"", "a".repeat(100_000))),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("\"0x{n:x}\"")),
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("\"{s}\"")),
    ]
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut runner = runner(10_000);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            check(&decode_payload(&bytes));
            Ok(())
        })
        .unwrap();
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[ -~]{0,30}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    5 => proptest::sample::select(
                        ["event_name", "event_data", "transaction_information", "termId", "assets"]
                            .map(str::to_owned)
                            .to_vec()
                    ),
                    1 => "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn arbitrary_json_never_panics() {
    let mut runner = runner(5_000);
    let names = prop_oneof![
        Just("Deposited"),
        Just("Redeemed"),
        Just("SharePriceChanged"),
        Just("AtomCreated"),
        Just("TripleCreated"),
        Just("__rindexer_reorg"),
        Just("Other"),
    ];
    runner
        .run(&(names, json_value()), |(name, data)| {
            let doc = serde_json::json!({ "event_name": name, "event_data": data }).to_string();
            check(&decode_payload(doc.as_bytes()));
            check(&decode_payload(data.to_string().as_bytes()));
            Ok(())
        })
        .unwrap();
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Cut { at: usize, len: usize },
    Splice { at: usize, bytes: Vec<u8> },
    Duplicate { at: usize, len: usize },
    Value { nth: usize, value: String },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| Mutation::Cut { at, len }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), hostile_value()).prop_map(|(nth, value)| Mutation::Value { nth, value }),
        (any::<usize>(), hostile_value()).prop_map(|(nth, value)| Mutation::Value { nth, value }),
    ]
}

fn mutate(payload: &str, m: &Mutation) -> Vec<u8> {
    let mut bytes = payload.as_bytes().to_vec();
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip { at, byte } => {
            let i = at % n;
            if i < bytes.len() {
                bytes[i] ^= byte | 1;
            }
        }
        Mutation::Cut { at, len } => {
            let i = at % n;
            let end = (i + len).min(bytes.len());
            bytes.drain(i.min(end)..end);
        }
        Mutation::Splice { at, bytes: b } => {
            let i = (at % n).min(bytes.len());
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Duplicate { at, len } => {
            let i = at % n;
            let end = (i + len).min(bytes.len());
            let chunk = bytes[i.min(end)..end].to_vec();
            bytes.splice(end..end, chunk);
        }
        Mutation::Value { nth, value } => {
            // Replace the value after the nth `":` with a hostile one.
            let text = payload;
            let positions: Vec<usize> = text.match_indices("\":").map(|(i, _)| i + 2).collect();
            if let Some(&start) = positions.get(nth % positions.len().max(1)) {
                let rest = &text[start..];
                let end = if let Some(quoted) = rest.strip_prefix('"') {
                    quoted.find('"').map_or(rest.len(), |e| e + 2)
                } else {
                    rest.find([',', '}', ']']).unwrap_or(rest.len())
                };
                let mut out = text[..start].to_owned();
                out.push_str(value);
                out.push_str(&rest[end..]);
                bytes = out.into_bytes();
            }
        }
    }
    bytes
}

#[test]
fn mutated_envelopes_decode_or_fail_cleanly() {
    let payloads = valid_payloads();
    let mut runner = runner(20_000);
    runner
        .run(
            &(any::<usize>(), proptest::collection::vec(mutation(), 1..4)),
            |(pick, mutations)| {
                let mut payload = payloads[pick % payloads.len()].clone().into_bytes();
                for m in &mutations {
                    payload = mutate(&String::from_utf8_lossy(&payload), m);
                }
                check(&decode_payload(&payload));
                Ok(())
            },
        )
        .unwrap();
}
