//! Borrowed access to the fields of a JSON object, with typed getters whose
//! errors name the field.
//!
//! An object is read once into a small vector of `(key, raw value)` pairs
//! that borrow from the payload; each getter then interprets the raw JSON text
//! of one value. Reading numbers from their raw text (instead of through
//! `f64`) is what keeps a 78-digit amount given as a JSON number exact.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::error::{DecodeError, Problem};
use super::uint256::Amount;
use super::value::{Address, Hash32, VaultType, decode_hex_bytes};

/// Where an object sits in the envelope, for error paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The envelope itself.
    Envelope,
    /// `event_data` as a single object.
    Event,
    /// One element of an `event_data` array.
    Element(usize),
}

/// The fields of one JSON object.
pub struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
    location: Location,
    nested: Option<&'static str>,
}

/// The JSON kind of a raw value, with strings unescaped only when needed.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    /// A JSON number literal, exactly as written.
    Num(&'a str),
    Other(&'static str),
}

fn kind_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn classify(raw: &RawValue) -> Scalar<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let inner = &text[1..text.len() - 1];
            if inner.contains('\\') {
                // Escapes are rare in chain data; unescape into an owned string.
                match serde_json::from_str::<String>(text) {
                    Ok(s) => Scalar::Str(Cow::Owned(s)),
                    Err(_) => Scalar::Other("a malformed string"),
                }
            } else {
                Scalar::Str(Cow::Borrowed(inner))
            }
        }
        Some(b'-' | b'0'..=b'9') => Scalar::Num(text),
        _ => Scalar::Other(kind_name(raw)),
    }
}

impl<'a> Fields<'a> {
    /// Reads a JSON object. `nested` names the enclosing key for error paths
    /// (e.g. `transaction_information`).
    pub fn parse(
        raw: &'a str,
        location: Location,
        nested: Option<&'static str>,
    ) -> Result<Fields<'a>, DecodeError> {
        let mut de = serde_json::Deserializer::from_str(raw);
        let entries = de
            .deserialize_map(PairsVisitor)
            .and_then(|entries| de.end().map(|()| entries))
            .map_err(|e| {
                let field = Self::path_of(location, nested, None);
                DecodeError::new(field, Problem::InvalidJson(e.to_string()))
            })?;
        Ok(Fields {
            entries,
            location,
            nested,
        })
    }

    /// Reads the object held by a raw value: an event element (`key` None)
    /// or the object under `key` inside one, or says it is not an object.
    pub fn of_raw(
        raw: &'a RawValue,
        location: Location,
        key: Option<&'static str>,
    ) -> Result<Fields<'a>, DecodeError> {
        if !raw.get().starts_with('{') {
            return Err(DecodeError::new(
                Self::path_of(location, None, key),
                Problem::WrongType {
                    expected: "an object",
                    found: kind_name(raw),
                },
            ));
        }
        Fields::parse(raw.get(), location, key)
    }

    pub fn location(&self) -> Location {
        self.location
    }

    pub(super) fn path_of(location: Location, nested: Option<&str>, field: Option<&str>) -> String {
        let mut path = String::new();
        match location {
            Location::Envelope => {}
            Location::Event => path.push_str("event_data"),
            Location::Element(i) => {
                let _ = write!(path, "event_data[{i}]");
            }
        }
        for part in [nested, field].into_iter().flatten() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
        }
        if path.is_empty() {
            path.push_str("payload");
        }
        path
    }

    /// The error for `field` (built only on the error path).
    pub fn error(&self, field: &str, problem: Problem) -> DecodeError {
        DecodeError::new(
            Self::path_of(self.location, self.nested, Some(field)),
            problem,
        )
    }

    /// A value that is present and not null.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .filter(|v| v.get() != "null")
    }

    pub fn required(&self, name: &str) -> Result<&'a RawValue, DecodeError> {
        self.get(name)
            .ok_or_else(|| self.error(name, Problem::Missing))
    }

    fn string_of(&self, name: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, DecodeError> {
        match classify(raw) {
            Scalar::Str(s) if s.contains('\0') => Err(self.error(name, Problem::ContainsNul)),
            Scalar::Str(s) => Ok(s),
            Scalar::Num(_) => Err(self.wrong_type(name, "a string", "a number")),
            Scalar::Other(found) => Err(self.wrong_type(name, "a string", found)),
        }
    }

    fn wrong_type(&self, name: &str, expected: &'static str, found: &'static str) -> DecodeError {
        self.error(name, Problem::WrongType { expected, found })
    }

    pub fn string(&self, name: &str) -> Result<Cow<'a, str>, DecodeError> {
        let raw = self.required(name)?;
        self.string_of(name, raw)
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<Cow<'a, str>>, DecodeError> {
        self.get(name)
            .map(|raw| self.string_of(name, raw))
            .transpose()
    }

    pub fn hash32(&self, name: &str) -> Result<Hash32, DecodeError> {
        let text = self.string(name)?;
        Hash32::parse(&text).map_err(|e| self.error(name, Problem::Hex(e)))
    }

    pub fn address(&self, name: &str) -> Result<Address, DecodeError> {
        let text = self.string(name)?;
        Address::parse(&text).map_err(|e| self.error(name, Problem::Hex(e)))
    }

    pub fn bytes(&self, name: &str) -> Result<Vec<u8>, DecodeError> {
        let text = self.string(name)?;
        decode_hex_bytes(&text).map_err(|e| self.error(name, Problem::Hex(e)))
    }

    fn amount_of(&self, name: &str, raw: &RawValue) -> Result<Amount, DecodeError> {
        let parsed = match classify(raw) {
            Scalar::Num(literal) => Amount::from_decimal(literal),
            Scalar::Str(text) => {
                match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                    Some(hex) => Amount::from_hex_digits(hex),
                    None => Amount::from_decimal(&text),
                }
            }
            Scalar::Other(found) => {
                return Err(self.wrong_type(name, "an integer (number or string)", found));
            }
        };
        parsed.map_err(|e| self.error(name, Problem::Amount(e)))
    }

    /// A uint256 (decimal or `0x` hex string, or a JSON integer).
    pub fn amount(&self, name: &str) -> Result<Amount, DecodeError> {
        self.amount_of(name, self.required(name)?)
    }

    fn int_of(&self, name: &str, raw: &RawValue) -> Result<i64, DecodeError> {
        let amount = self.amount_of(name, raw)?;
        amount
            .as_str()
            .parse::<u64>()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| self.error(name, Problem::IntegerTooLarge))
    }

    /// A non-negative integer that fits a BIGINT (block numbers, indexes).
    pub fn int(&self, name: &str) -> Result<i64, DecodeError> {
        self.int_of(name, self.required(name)?)
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, DecodeError> {
        self.get(name).map(|raw| self.int_of(name, raw)).transpose()
    }

    pub fn vault_type(&self, name: &str) -> Result<VaultType, DecodeError> {
        let amount = self.amount(name)?;
        amount
            .as_str()
            .parse::<u64>()
            .ok()
            .and_then(VaultType::from_code)
            .ok_or_else(|| self.error(name, Problem::UnknownVaultType(amount.to_string())))
    }
}

/// Collects `(key, raw value)` pairs without allocating per value.
struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(12));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            entries.push((key.0, value));
        }
        Ok(entries)
    }
}

/// A map key, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields<'_> {
        Fields::parse(json, Location::Element(2), None).unwrap()
    }

    #[test]
    fn integers_in_every_encoding() {
        let f = fields(r#"{"a": 17, "b": "17", "c": "0x11", "d": "0X11", "e": null}"#);
        for name in ["a", "b", "c", "d"] {
            assert_eq!(f.int(name).unwrap(), 17, "{name}");
        }
        assert_eq!(f.opt_int("e").unwrap(), None);
        assert_eq!(f.opt_int("zz").unwrap(), None);
        assert_eq!(
            f.int("e").unwrap_err().to_string(),
            "event_data[2].e: missing or null"
        );
    }

    #[test]
    fn huge_json_number_stays_exact() {
        let json = format!(r#"{{"x": {}}}"#, super::super::uint256::MAX_DECIMAL);
        let f = fields(&json);
        assert_eq!(
            f.amount("x").unwrap().as_str(),
            super::super::uint256::MAX_DECIMAL
        );
    }

    #[test]
    fn errors_name_the_field_and_reason() {
        let f = fields(
            r#"{"neg": "-1", "frac": 1.5, "big": 9223372036854775808, "obj": {}, "s": "x\"y"}"#,
        );
        assert_eq!(
            f.amount("neg").unwrap_err().to_string(),
            "event_data[2].neg: negative amounts are not allowed"
        );
        assert!(
            f.amount("frac")
                .unwrap_err()
                .to_string()
                .contains("not an integer")
        );
        assert_eq!(
            f.int("big").unwrap_err().to_string(),
            "event_data[2].big: exceeds 2^63-1"
        );
        assert_eq!(
            f.amount("obj").unwrap_err().to_string(),
            "event_data[2].obj: expected an integer (number or string), found an object"
        );
        assert_eq!(f.string("s").unwrap(), "x\"y");
    }

    #[test]
    fn nested_paths() {
        let f = Fields::parse(
            r#"{"b": true}"#,
            Location::Event,
            Some("transaction_information"),
        )
        .unwrap();
        assert_eq!(
            f.int("b").unwrap_err().to_string(),
            "event_data.transaction_information.b: expected an integer (number or string), found a boolean"
        );
        let env = Fields::parse("{}", Location::Envelope, None).unwrap();
        assert_eq!(
            env.string("event_name").unwrap_err().to_string(),
            "event_name: missing or null"
        );
    }

    #[test]
    fn not_an_object() {
        let err = Fields::parse("[1]", Location::Envelope, None)
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("payload: invalid JSON"));
        let err = Fields::parse("{\"a\":1} x", Location::Envelope, None)
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("payload: invalid JSON"),
            "{err}"
        );
    }
}

/// Whether JSON text contains an escaped NUL (`\u0000`) in a string, which
/// JSONB refuses. Escapes are followed exactly, so `\\u0000` (an escaped
/// backslash, then text) does not count.
pub fn has_escaped_nul(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u')
                && bytes.get(i + 2..i + 6) == Some(b"0000".as_slice())
            {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod nul_tests {
    use super::*;

    #[test]
    fn escaped_nul_detection() {
        assert!(has_escaped_nul(r#"{"a":"x\u0000y"}"#));
        assert!(!has_escaped_nul(r#"{"a":"x\\u0000y"}"#));
        assert!(!has_escaped_nul(r#"{"a":"\u0001"}"#));
        let f = Fields::parse(r#"{"n":"a\u0000b"}"#, Location::Envelope, None).unwrap();
        assert_eq!(
            f.string("n").unwrap_err().to_string(),
            "n: contains a NUL character"
        );
    }
}
