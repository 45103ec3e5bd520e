//! Encoding blocks as stream entries, in one of the two [`Shape`]s.

use std::fmt::Write as _;

use sha3::{Digest, Keccak256};

use super::chain::{CHUNK_BYTES, Chain, Generated, KINDS, Kind, Value};
use super::{Entry, Shape};

impl Chain {
    /// Publishes one block's events: per event type (unknown events on the
    /// Deposited stream, one entry each).
    pub(super) fn publish_block(&mut self, events: &[Generated]) {
        let Some(block) = events.first().map(|e| e.block) else {
            return;
        };
        for kind in KINDS {
            let group: Vec<&Generated> = events
                .iter()
                .filter(|e| e.kind == kind && e.generic.is_none())
                .collect();
            if group.is_empty() {
                continue;
            }
            match self.spec.shape {
                Shape::Varied => {
                    let mut rest = &group[..];
                    while !rest.is_empty() {
                        let take = self
                            .enc
                            .usize(1..=self.spec.max_batch.max(1))
                            .min(rest.len());
                        let (chunk, tail) = rest.split_at(take);
                        self.push_entry(kind, kind.event_name(), chunk, block, 0);
                        rest = tail;
                    }
                }
                Shape::Rindexer => {
                    // Chunks of at most 75 KB, numbered.
                    let mut chunk_no = 0;
                    let mut start = 0;
                    let mut bytes = 0;
                    for (i, e) in group.iter().enumerate() {
                        let size = self.body(e).len() + 1;
                        if bytes + size > CHUNK_BYTES && i > start {
                            self.push_entry(
                                kind,
                                kind.event_name(),
                                &group[start..i],
                                block,
                                chunk_no,
                            );
                            chunk_no += 1;
                            start = i;
                            bytes = 0;
                        }
                        bytes += size;
                    }
                    self.push_entry(kind, kind.event_name(), &group[start..], block, chunk_no);
                }
            }
        }
        for e in events.iter().filter(|e| e.generic.is_some()) {
            let name = e.generic.unwrap_or("Unknown");
            self.push_entry(Kind::Deposit, name, &[e], block, 0);
        }
    }

    pub(super) fn push_entry(
        &mut self,
        kind: Kind,
        name: &str,
        chunk: &[&Generated],
        block: i64,
        chunk_no: usize,
    ) {
        let mut bodies: Vec<String> = chunk.iter().map(|e| self.body(e)).collect();
        let signature = if name == kind.event_name() {
            const_hex::encode_prefixed(Keccak256::digest(kind.signature().as_bytes()))
        } else {
            const_hex::encode_prefixed(Keccak256::digest(
                format!("{name}(address,uint256)").as_bytes(),
            ))
        };
        let network = self.spec.network.clone();
        let (payload, field) = match self.spec.shape {
            Shape::Varied => {
                let event_data = if bodies.len() == 1 && self.enc.bool() {
                    bodies.pop().unwrap_or_default()
                } else {
                    format!("[{}]", bodies.join(","))
                };
                let field = match self.enc.u8(..100) {
                    0..=4 => "data",
                    5..=9 => "event_data",
                    _ => "payload",
                };
                (
                    format!(
                        "{{\"event_name\":\"{name}\",\"event_signature_hash\":\"{signature}\",\"event_data\":{event_data},\"network\":\"{network}\"}}"
                    ),
                    field,
                )
            }
            Shape::Rindexer => {
                let message_id = format!(
                    "rindexer_stream__-multivault-{}-{network}-{block}-{block}-blk{block}-chunk-{chunk_no}",
                    name.to_lowercase()
                );
                (
                    format!(
                        "{{\"event_name\":\"{name}\",\"event_signature_hash\":\"{signature}\",\"event_data\":[{}],\"network\":\"{network}\",\"message_id\":\"{message_id}\",\"block_number\":{block}}}",
                        bodies.join(",")
                    ),
                    "payload",
                )
            }
        };
        self.entries.push(Entry {
            stream: kind as usize,
            field,
            payload,
            events: chunk.len(),
            block,
            duplicate: false,
            abandoned: false,
            notice: false,
        });
    }

    /// One event's JSON object: its fields in ABI order, then
    /// `transaction_information`.
    pub(super) fn body(&mut self, e: &Generated) -> String {
        let mut body = String::from("{");
        for (k, v) in &e.fields {
            let v = self.value_json(v);
            let _ = write!(body, "\"{k}\":{v},");
        }
        let info = self.tx_info_json(e);
        let _ = write!(body, "\"transaction_information\":{info}}}");
        body
    }

    pub(super) fn value_json(&mut self, v: &Value) -> String {
        match (self.spec.shape, v) {
            (Shape::Rindexer, Value::Address(a)) => {
                format!("\"{}\"", const_hex::encode_prefixed(a))
            }
            (Shape::Rindexer, Value::Id(id)) => format!("\"{}\"", const_hex::encode(id)),
            (Shape::Rindexer, Value::Bytes(b)) => format!("\"{}\"", const_hex::encode(b)),
            (Shape::Rindexer, Value::Amount(n)) => format!("\"{n}\""),
            (Shape::Rindexer, Value::Small(n)) => n.to_string(),
            (Shape::Varied, Value::Address(a)) => self.varied_hex(a),
            (Shape::Varied, Value::Id(id)) => self.varied_hex(id),
            (Shape::Varied, Value::Bytes(b)) => format!("\"{}\"", const_hex::encode_prefixed(b)),
            (Shape::Varied, Value::Amount(n)) => match self.enc.u8(..100) {
                0..=9 => format!("\"0x{n:x}\""),
                10..=14 => n.to_string(), // a JSON number, however large
                _ => format!("\"{n}\""),
            },
            (Shape::Varied, Value::Small(n)) => self.varied_int(*n),
        }
    }

    pub(super) fn varied_hex(&mut self, bytes: &[u8]) -> String {
        match self.enc.u8(..100) {
            0..=4 => format!("\"0x{}\"", const_hex::encode_upper(bytes)),
            5..=9 => format!("\"{}\"", const_hex::encode(bytes)),
            _ => format!("\"{}\"", const_hex::encode_prefixed(bytes)),
        }
    }

    pub(super) fn varied_int(&mut self, v: i64) -> String {
        match self.enc.u8(..100) {
            0..=9 => format!("\"0x{v:x}\""),
            10..=19 => format!("\"{v}\""),
            _ => v.to_string(),
        }
    }

    pub(super) fn tx_info_json(&mut self, e: &Generated) -> String {
        let network = self.spec.network.clone();
        let tx_hash = const_hex::encode_prefixed(e.tx_hash);
        let block_hash = const_hex::encode_prefixed(self.block_hash_of(e));
        match self.spec.shape {
            Shape::Rindexer => {
                let address = const_hex::encode_prefixed(self.contract);
                format!(
                    "{{\"chain_id\":1155,\"network\":\"{network}\",\"address\":\"{address}\",\"block_hash\":\"{block_hash}\",\"block_number\":{},\"block_timestamp\":null,\"transaction_hash\":\"{tx_hash}\",\"log_index\":\"0x{:x}\",\"transaction_index\":{}}}",
                    e.block, e.log_index, e.tx_index
                )
            }
            Shape::Varied => {
                let timestamp = 1_700_000_000 + (e.block - self.spec.first_block) * 2;
                let block_number = self.varied_int(e.block);
                let log_index = self.varied_int(e.log_index);
                let tx_index = self.varied_int(e.tx_index);
                let timestamp = if self.enc.u8(..100) < 3 {
                    "null".to_owned()
                } else {
                    self.varied_int(timestamp)
                };
                let address = self.varied_hex(&self.contract.clone());
                format!(
                    "{{\"address\":{address},\"block_hash\":\"{block_hash}\",\"block_number\":{block_number},\"block_timestamp\":{timestamp},\"log_index\":{log_index},\"network\":\"{network}\",\"transaction_hash\":\"{tx_hash}\",\"transaction_index\":{tx_index}}}"
                )
            }
        }
    }

    /// The hash of the block an event is in (the block being published).
    pub(super) fn block_hash_of(&self, e: &Generated) -> [u8; 32] {
        debug_assert_eq!(e.block, self.block);
        self.block_hash
    }
}
