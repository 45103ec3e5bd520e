//! Decode errors: which field, and why.

use std::fmt;

use super::uint256::AmountError;
use super::value::HexError;

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry has none of the fields that carry JSON.
    NoPayloadField,
    NotUtf8,
    InvalidJson(String),
    /// Arrays and objects nested deeper than the limit.
    TooDeep(usize),
    Missing,
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    Hex(HexError),
    Amount(AmountError),
    /// An integer that must fit a Postgres BIGINT.
    IntegerTooLarge,
    /// A NUL character, which Postgres text and JSONB cannot store.
    ContainsNul,
    UnknownVaultType(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoPayloadField => {
                f.write_str("entry has no `payload`, `data` or `event_data` field")
            }
            Problem::NotUtf8 => f.write_str("not valid UTF-8"),
            Problem::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            Problem::TooDeep(limit) => write!(f, "JSON nests deeper than {limit} levels"),
            Problem::Missing => f.write_str("missing or null"),
            Problem::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            Problem::Hex(e) => e.fmt(f),
            Problem::Amount(e) => e.fmt(f),
            Problem::IntegerTooLarge => f.write_str("exceeds 2^63-1"),
            Problem::ContainsNul => f.write_str("contains a NUL character"),
            Problem::UnknownVaultType(v) => {
                write!(
                    f,
                    "unknown vault type {v} (0 atom, 1 triple, 2 counter-triple)"
                )
            }
        }
    }
}

/// A decode failure, naming the field by its JSON path
/// (e.g. `event_data[3].transaction_information.block_number`).
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for DecodeError {}
