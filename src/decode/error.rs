//! Decode errors: which field, and why.

use super::uint256::AmountError;
use super::value::HexError;

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The entry has none of the fields that carry JSON.
    #[error("entry has no `payload`, `data` or `event_data` field")]
    NoPayloadField,
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Arrays and objects nested deeper than the limit.
    #[error("JSON nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("missing or null")]
    Missing,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("{0}")]
    Hex(HexError),
    #[error("{0}")]
    Amount(AmountError),
    /// An integer that must fit a Postgres BIGINT.
    #[error("exceeds 2^63-1")]
    IntegerTooLarge,
    /// A NUL character, which Postgres text and JSONB cannot store.
    #[error("contains a NUL character")]
    ContainsNul,
    #[error("unknown vault type {0} (0 atom, 1 triple, 2 counter-triple)")]
    UnknownVaultType(String),
}

/// A decode failure, naming the field by its JSON path
/// (e.g. `event_data[3].transaction_information.block_number`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DecodeError {
    pub field: String,
    pub problem: Problem,
}

impl DecodeError {
    pub fn new(field: impl Into<String>, problem: Problem) -> DecodeError {
        DecodeError {
            field: field.into(),
            problem,
        }
    }
}
