//! Redis entry → validated events.
//!
//! rindexer writes one JSON envelope per stream entry. Its `event_data` is one
//! event or, normally, an array of them (one block's events, in chunks). Each
//! element is decoded on its own: a malformed element is reported with its
//! path and reason while its batch-mates still decode, so one bad value never
//! holds back the good ones.

pub mod error;
pub mod json;
pub mod uint256;
pub mod value;

use std::borrow::Cow;

use serde_json::value::RawValue;

pub use error::{DecodeError, Problem};
use json::{Fields, Location};

use crate::event::{
    AtomCreated, ChainEvent, ChainPosition, Deposited, EventKind, Generic, Redeemed, ReorgNotice,
    SharePriceChanged, TripleCreated,
};
use value::{AtomData, Hash32, counter_term_id};

/// The entry fields that may carry the JSON envelope, in order of preference.
pub const PAYLOAD_FIELDS: [&str; 3] = ["payload", "data", "event_data"];

/// `event_name` of rindexer's chain reorganisation notices.
pub const REORG_EVENT_NAME: &str = "__rindexer_reorg";

/// Picks the JSON-carrying field of a stream entry: the first of
/// [`PAYLOAD_FIELDS`] that is present.
pub fn select_payload<'e, I>(fields: I) -> Result<(&'static str, &'e [u8]), DecodeError>
where
    I: IntoIterator<Item = (&'e str, &'e [u8])> + Clone,
{
    PAYLOAD_FIELDS
        .iter()
        .find_map(|name| {
            fields
                .clone()
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| (*name, v))
        })
        .ok_or_else(|| DecodeError::new("entry", Problem::NoPayloadField))
}

/// Everything one entry carried.
#[derive(Debug, Default)]
pub struct DecodedEntry<'a> {
    pub events: Vec<ChainEvent<'a>>,
    pub reorgs: Vec<ReorgNotice<'a>>,
    /// Elements (or the whole envelope) that could not be decoded; nothing is
    /// written for them.
    pub errors: Vec<DecodeError>,
}

impl DecodedEntry<'_> {
    fn failed(error: DecodeError) -> Self {
        DecodedEntry {
            errors: vec![error],
            ..DecodedEntry::default()
        }
    }
}

/// Decodes a payload given as raw bytes (it must be UTF-8 JSON).
pub fn decode_payload(payload: &[u8]) -> DecodedEntry<'_> {
    match std::str::from_utf8(payload) {
        Ok(text) => decode_json(text),
        Err(_) => DecodedEntry::failed(DecodeError::new("payload", Problem::NotUtf8)),
    }
}

/// How deep JSON may nest. rindexer's envelopes nest three levels; the limit
/// keeps hostile payloads from reaching Postgres' JSONB parser (whose stack
/// limit would turn them into failing transactions).
pub const MAX_NESTING: usize = 32;

/// The deepest nesting of arrays and objects in `text`, ignoring brackets
/// inside strings; stops counting once past `limit`.
fn nesting_depth(text: &str, limit: usize) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    break;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decodes one envelope.
pub fn decode_json(payload: &str) -> DecodedEntry<'_> {
    if nesting_depth(payload, MAX_NESTING) > MAX_NESTING {
        return DecodedEntry::failed(DecodeError::new("payload", Problem::TooDeep(MAX_NESTING)));
    }
    let envelope = match Fields::parse(payload, Location::Envelope, None) {
        Ok(f) => f,
        Err(e) => return DecodedEntry::failed(e),
    };
    let header = match Header::read(&envelope) {
        Ok(h) => h,
        Err(e) => return DecodedEntry::failed(e),
    };
    let mut out = DecodedEntry::default();
    let data = header.event_data.get();
    if data.starts_with('[') {
        let elements: Vec<&RawValue> = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                return DecodedEntry::failed(DecodeError::new(
                    "event_data",
                    Problem::InvalidJson(e.to_string()),
                ));
            }
        };
        out.events.reserve(elements.len());
        for (i, element) in elements.into_iter().enumerate() {
            decode_element(&header, element, Location::Element(i), &mut out);
        }
    } else {
        decode_element(&header, header.event_data, Location::Event, &mut out);
    }
    out
}

/// The envelope's fields that apply to every element.
struct Header<'a> {
    event_name: Cow<'a, str>,
    event_signature_hash: Option<Cow<'a, str>>,
    network: Option<Cow<'a, str>>,
    /// Raw JSON of `message_id` (a string or a number), if any.
    message_id: Option<&'a str>,
    event_data: &'a RawValue,
}

impl<'a> Header<'a> {
    fn read(envelope: &Fields<'a>) -> Result<Header<'a>, DecodeError> {
        let event_name = envelope.string("event_name")?;
        let event_signature_hash = envelope.opt_string("event_signature_hash")?;
        let network = envelope.opt_string("network")?;
        let event_data = envelope.required("event_data")?;
        if !matches!(event_data.get().as_bytes().first(), Some(b'{' | b'[')) {
            return Err(envelope.error(
                "event_data",
                Problem::WrongType {
                    expected: "an object or an array of objects",
                    found: "a scalar",
                },
            ));
        }
        Ok(Header {
            event_name,
            event_signature_hash,
            network,
            message_id: envelope.get("message_id").map(RawValue::get),
            event_data,
        })
    }

    /// The network an element names, else the envelope's.
    fn network(&self, element: &Fields<'a>) -> Result<Cow<'a, str>, DecodeError> {
        match element.opt_string("network")? {
            Some(n) => Ok(n),
            None => self
                .network
                .clone()
                .ok_or_else(|| element.error("network", Problem::Missing)),
        }
    }
}

fn decode_element<'a>(
    header: &Header<'a>,
    raw: &'a RawValue,
    location: Location,
    out: &mut DecodedEntry<'a>,
) {
    let result = Fields::of_raw(raw, location, None).and_then(|fields| {
        if header.event_name == REORG_EVENT_NAME {
            reorg_notice(header, &fields, raw).map(|n| out.reorgs.push(n))
        } else {
            chain_event(header, &fields, raw).map(|e| out.events.push(e))
        }
    });
    if let Err(e) = result {
        out.errors.push(e);
    }
}

fn chain_event<'a>(
    header: &Header<'a>,
    f: &Fields<'a>,
    raw: &'a RawValue,
) -> Result<ChainEvent<'a>, DecodeError> {
    let kind = match header.event_name.as_ref() {
        "AtomCreated" => EventKind::AtomCreated(AtomCreated {
            creator: f.address("creator")?,
            term_id: f.hash32("termId")?,
            atom_data: AtomData::from_bytes(f.bytes("atomData")?),
            atom_wallet: f.address("atomWallet")?,
        }),
        "TripleCreated" => {
            let term_id = f.hash32("termId")?;
            EventKind::TripleCreated(TripleCreated {
                creator: f.address("creator")?,
                term_id,
                subject_id: f.hash32("subjectId")?,
                predicate_id: f.hash32("predicateId")?,
                object_id: f.hash32("objectId")?,
                counter_term_id: counter_term_id(&term_id),
            })
        }
        "Deposited" => EventKind::Deposited(Deposited {
            sender: f.address("sender")?,
            receiver: f.address("receiver")?,
            term_id: f.hash32("termId")?,
            curve_id: f.amount("curveId")?,
            assets: f.amount("assets")?,
            assets_after_fees: f.amount("assetsAfterFees")?,
            shares: f.amount("shares")?,
            total_shares: f.amount("totalShares")?,
            vault_type: f.vault_type("vaultType")?,
        }),
        "Redeemed" => EventKind::Redeemed(Redeemed {
            sender: f.address("sender")?,
            receiver: f.address("receiver")?,
            term_id: f.hash32("termId")?,
            curve_id: f.amount("curveId")?,
            shares: f.amount("shares")?,
            total_shares: f.amount("totalShares")?,
            assets: f.amount("assets")?,
            fees: f.amount("fees")?,
            vault_type: f.vault_type("vaultType")?,
        }),
        "SharePriceChanged" => EventKind::SharePriceChanged(SharePriceChanged {
            term_id: f.hash32("termId")?,
            curve_id: f.amount("curveId")?,
            share_price: f.amount("sharePrice")?,
            total_assets: f.amount("totalAssets")?,
            total_shares: f.amount("totalShares")?,
            vault_type: f.vault_type("vaultType")?,
        }),
        _ => {
            if json::has_escaped_nul(raw.get()) {
                return Err(DecodeError::new(
                    Fields::path_of(f.location(), None, None),
                    Problem::ContainsNul,
                ));
            }
            EventKind::Generic(Generic {
                event_name: header.event_name.clone(),
                event_signature_hash: header.event_signature_hash.clone(),
                data: raw.get(),
            })
        }
    };
    Ok(ChainEvent {
        chain: chain_position(header, f)?,
        kind,
    })
}

const TX_INFO: &str = "transaction_information";

fn chain_position<'a>(
    header: &Header<'a>,
    event: &Fields<'a>,
) -> Result<ChainPosition<'a>, DecodeError> {
    let raw = event.required(TX_INFO)?;
    let f = Fields::of_raw(raw, event.location(), Some(TX_INFO))?;
    let network = header.network(&f)?;
    Ok(ChainPosition {
        transaction_hash: f.hash32("transaction_hash")?,
        log_index: f.int("log_index")?,
        block_number: f.int("block_number")?,
        block_hash: f.hash32("block_hash")?,
        block_timestamp: f.opt_int("block_timestamp")?,
        transaction_index: f.int("transaction_index")?,
        address: f.address("address")?,
        network,
    })
}

/// A JSON value as text: a string's contents (borrowed when it has no
/// escapes), anything else as written.
fn json_text(raw: &str) -> Cow<'_, str> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => serde_json::from_str::<String>(raw).map_or(Cow::Borrowed(raw), Cow::Owned),
    }
}

fn reorg_notice<'a>(
    header: &Header<'a>,
    f: &Fields<'a>,
    raw: &'a RawValue,
) -> Result<ReorgNotice<'a>, DecodeError> {
    if json::has_escaped_nul(raw.get()) {
        return Err(f.error("notice", Problem::ContainsNul));
    }
    // A notice of another kind must not delete anything: refuse it (it is
    // dead-lettered with its payload) rather than guess.
    if f.opt_string("type")?.is_some_and(|t| t != "reorg") {
        return Err(f.error(
            "type",
            Problem::WrongType {
                expected: "\"reorg\"",
                found: "another notice type",
            },
        ));
    }
    let network = header.network(f)?;
    // Since rindexer 0.40; informative only (ADR 0009).
    let hashes_raw = f.get("affected_tx_hashes").map_or("[]", RawValue::get);
    let hashes: Vec<&RawValue> = serde_json::from_str(hashes_raw).map_err(|_| {
        f.error(
            "affected_tx_hashes",
            Problem::WrongType {
                expected: "an array of transaction hashes",
                found: "something else",
            },
        )
    })?;
    let mut affected_tx_hashes = Vec::with_capacity(hashes.len());
    for (i, h) in hashes.iter().enumerate() {
        // The path is built only when this hash is refused.
        let item = || format!("affected_tx_hashes[{i}]");
        let text: Cow<'_, str> = serde_json::from_str(h.get()).map_err(|_| {
            f.error(
                &item(),
                Problem::WrongType {
                    expected: "a string",
                    found: "something else",
                },
            )
        })?;
        affected_tx_hashes
            .push(Hash32::parse(&text).map_err(|e| f.error(&item(), Problem::Hex(e)))?);
    }
    Ok(ReorgNotice {
        network,
        fork_block: f.int("fork_block")?,
        depth: f.opt_int("depth")?,
        affected_tx_hashes,
        message_id: header.message_id.map(json_text),
        raw: raw.get(),
    })
}

#[cfg(test)]
mod tests;
