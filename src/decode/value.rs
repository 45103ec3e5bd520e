//! Chain values in their canonical stored form: 32-byte ids and hashes as
//! lowercase `0x` hex, addresses EIP-55 checksummed, vault types as codes.
//!
//! Each type keeps its canonical text inline (no heap), so decoded events can
//! be bound to Postgres as `&str` straight from the decoded batch.

use std::fmt;

use sha3::{Digest, Keccak256};

/// Why a hex string is not the value it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("empty hex string")]
    Empty,
    #[error("contains a character that is not hex")]
    NotHex,
    #[error("odd number of hex digits")]
    OddLength,
    #[error(
        "expected {expected_bytes} bytes ({} hex digits), found {found_digits} hex digits",
        .expected_bytes * 2
    )]
    WrongLength {
        expected_bytes: usize,
        found_digits: usize,
    },
}

/// Strips an optional `0x`/`0X` prefix.
pub fn strip_0x(text: &str) -> &str {
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text)
}

fn check_fixed_hex(text: &str, bytes: usize) -> Result<&[u8], HexError> {
    let digits = strip_0x(text).as_bytes();
    if digits.is_empty() {
        return Err(HexError::Empty);
    }
    if !const_hex::check_raw(digits) {
        return Err(HexError::NotHex);
    }
    if digits.len() != bytes * 2 {
        return Err(HexError::WrongLength {
            expected_bytes: bytes,
            found_digits: digits.len(),
        });
    }
    Ok(digits)
}

/// A 32-byte value (term id, transaction hash, block hash) as `0x` + 64
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash32([u8; 66]);

impl Hash32 {
    pub fn parse(text: &str) -> Result<Hash32, HexError> {
        let digits = check_fixed_hex(text, 32)?;
        let mut out = [0u8; 66];
        out[..2].copy_from_slice(b"0x");
        out[2..].copy_from_slice(digits);
        out[2..].make_ascii_lowercase();
        Ok(Hash32(out))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Hash32 {
        let mut text = const_hex::Buffer::<32, true>::new();
        text.format(bytes);
        Hash32(*text.as_byte_array())
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        const_hex::decode_to_array(self.0).expect("a Hash32 holds 64 hex digits")
    }
}

/// A 20-byte account or contract address in EIP-55 checksummed form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; 42]);

thread_local! {
    /// Checksummed forms of recently seen addresses. The same few addresses
    /// (the MultiVault contract on every event, active accounts) recur
    /// constantly; a hit saves a Keccak-256.
    static CHECKSUMS: std::cell::RefCell<fnv::FnvHashMap<[u8; 40], [u8; 42]>> =
        std::cell::RefCell::new(fnv::FnvHashMap::default());
}

/// Bounds the checksum cache (about 100 KiB per thread).
const CHECKSUM_CACHE_ENTRIES: usize = 1024;

impl Address {
    /// Accepts any case (a mixed-case input is not required to carry a valid
    /// checksum: the writer re-derives it).
    pub fn parse(text: &str) -> Result<Address, HexError> {
        let digits = check_fixed_hex(text, 20)?;
        let mut lower = [0u8; 40];
        lower.copy_from_slice(digits);
        lower.make_ascii_lowercase();
        if let Some(hit) = CHECKSUMS.with(|c| c.borrow().get(&lower).copied()) {
            return Ok(Address(hit));
        }
        let address = Address::checksum(&lower);
        CHECKSUMS.with(|c| {
            let mut cache = c.borrow_mut();
            if cache.len() >= CHECKSUM_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(lower, address.0);
        });
        Ok(address)
    }

    /// EIP-55: a letter is upper-case where the Keccak-256 of the lower-case
    /// hex has a nibble ≥ 8.
    fn checksum(lower: &[u8; 40]) -> Address {
        let hash = Keccak256::digest(lower);
        let mut out = [0u8; 42];
        out[0] = b'0';
        out[1] = b'x';
        for (i, c) in lower.iter().enumerate() {
            let hash_nibble = if i % 2 == 0 {
                hash[i / 2] >> 4
            } else {
                hash[i / 2] & 0x0f
            };
            out[2 + i] = if c.is_ascii_alphabetic() && hash_nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                *c
            };
        }
        Address(out)
    }
}

/// `as_str`, `Display` and `Debug` for the types that hold their canonical
/// text as ASCII bytes: each shows as that text.
macro_rules! shown_as_text {
    ($($value:ident),*) => {$(
        impl $value {
            pub fn as_str(&self) -> &str {
                std::str::from_utf8(&self.0).expect("ascii hex")
            }
        }

        impl fmt::Display for $value {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $value {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

shown_as_text!(Hash32, Address);

/// Decodes variable-length hex bytes (`0x` optional, even length).
pub fn decode_hex_bytes(text: &str) -> Result<Vec<u8>, HexError> {
    let digits = strip_0x(text).as_bytes();
    // Checked here, in this order, so that the error names the problem the
    // way the other hex values do.
    if !const_hex::check_raw(digits) {
        return Err(HexError::NotHex);
    }
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::OddLength);
    }
    Ok(const_hex::decode(digits).expect("checked hex digits of even length"))
}

/// An atom's data: text when it is valid UTF-8 without NUL (Postgres `TEXT`
/// cannot hold NUL), raw bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtomData {
    Text(String),
    Raw(Vec<u8>),
}

impl AtomData {
    pub fn from_bytes(bytes: Vec<u8>) -> AtomData {
        if bytes.contains(&0) {
            return AtomData::Raw(bytes);
        }
        match String::from_utf8(bytes) {
            Ok(text) => AtomData::Text(text),
            Err(e) => AtomData::Raw(e.into_bytes()),
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            AtomData::Text(t) => Some(t),
            AtomData::Raw(_) => None,
        }
    }

    pub fn raw(&self) -> Option<&[u8]> {
        match self {
            AtomData::Text(_) => None,
            AtomData::Raw(r) => Some(r),
        }
    }
}

/// MultiVault's vault type code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VaultType {
    Atom = 0,
    Triple = 1,
    CounterTriple = 2,
}

impl VaultType {
    pub fn from_code(code: u64) -> Option<VaultType> {
        match code {
            0 => Some(VaultType::Atom),
            1 => Some(VaultType::Triple),
            2 => Some(VaultType::CounterTriple),
            _ => None,
        }
    }

    pub fn code(self) -> i16 {
        self as i16
    }
}

/// `keccak256("COUNTER_SALT")`, computed once.
fn counter_salt() -> &'static [u8; 32] {
    static SALT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SALT.get_or_init(|| Keccak256::digest(b"COUNTER_SALT").into())
}

/// The counter term of a triple: `keccak256(keccak256("COUNTER_SALT") ‖ termId)`.
pub fn counter_term_id(term_id: &Hash32) -> Hash32 {
    let mut hasher = Keccak256::new();
    hasher.update(counter_salt());
    hasher.update(term_id.to_bytes());
    Hash32::from_bytes(&hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn eip55_reference_vectors() {
        // The test vectors from EIP-55 itself.
        for expected in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert_eq!(Address::parse(expected).unwrap().as_str(), expected);
            assert_eq!(
                Address::parse(&expected.to_lowercase()).unwrap().as_str(),
                expected
            );
            assert_eq!(
                Address::parse(&expected[2..].to_uppercase())
                    .unwrap()
                    .as_str(),
                expected
            );
        }
    }

    #[test]
    fn address_errors() {
        assert_eq!(Address::parse(""), Err(HexError::Empty));
        assert_eq!(Address::parse("0x"), Err(HexError::Empty));
        assert_eq!(Address::parse("0x12zz"), Err(HexError::NotHex));
        assert_eq!(
            Address::parse("0x1234"),
            Err(HexError::WrongLength {
                expected_bytes: 20,
                found_digits: 4
            })
        );
    }

    #[test]
    fn hash32_normalises_case_and_prefix() {
        let upper = "AB".repeat(32);
        let parsed = Hash32::parse(&upper).unwrap();
        assert_eq!(parsed.as_str(), format!("0x{}", "ab".repeat(32)));
        assert_eq!(Hash32::parse(&format!("0X{upper}")).unwrap(), parsed);
        assert!(matches!(
            Hash32::parse(&"ab".repeat(31)),
            Err(HexError::WrongLength { .. })
        ));
    }

    /// Vectors computed independently (Python, pycryptodome's keccak):
    /// `keccak(keccak("COUNTER_SALT") ‖ termId)`.
    #[test]
    fn counter_term_known_vectors() {
        assert_eq!(
            Hash32::from_bytes(counter_salt()).as_str(),
            "0xe7cbc1eb0e9b3f8688b0bc91a8278f7d2867f14f2a10dc3f0d9fcfdc32dada12"
        );
        let seven = Hash32::parse(&format!("{:064x}", 7)).unwrap();
        assert_eq!(
            counter_term_id(&seven).as_str(),
            "0x3d158d4daa2137b5742751c60977e24ec6b226f1d9046d9e2623b0336ce8dc5f"
        );
        let abab = Hash32::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(
            counter_term_id(&abab).as_str(),
            "0x36ba6b2ec572161bfb8293ca86bdb74af27a57a1e4ea0754e05c183ae3e9a714"
        );
    }

    #[test]
    fn atom_data_classification() {
        assert_eq!(
            AtomData::from_bytes(b"ipfs://x".to_vec()).text(),
            Some("ipfs://x")
        );
        assert!(AtomData::from_bytes(vec![b'a', 0, b'b']).raw().is_some());
        assert!(AtomData::from_bytes(vec![0xff, 0xfe]).raw().is_some());
        assert_eq!(decode_hex_bytes("0x"), Ok(vec![]));
        assert_eq!(decode_hex_bytes("0x616"), Err(HexError::OddLength));
        assert_eq!(decode_hex_bytes("zz"), Err(HexError::NotHex));
    }

    proptest! {
        #[test]
        fn hash32_bytes_round_trip(bytes: [u8; 32]) {
            let h = Hash32::from_bytes(&bytes);
            prop_assert_eq!(h.to_bytes(), bytes);
            prop_assert_eq!(Hash32::parse(h.as_str()).unwrap(), h);
            prop_assert_eq!(Hash32::parse(&h.as_str()[2..].to_uppercase()).unwrap(), h);
        }

        #[test]
        fn address_checksum_is_case_insensitive(bytes: [u8; 20]) {
            let hex = const_hex::encode(bytes);
            let a = Address::parse(&hex).unwrap();
            prop_assert_eq!(Address::parse(&hex.to_uppercase()).unwrap(), a);
            prop_assert_eq!(a.as_str().to_lowercase(), format!("0x{hex}"));
        }
    }
}
