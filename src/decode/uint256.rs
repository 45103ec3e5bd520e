//! uint256 amounts as canonical decimal text.
//!
//! Amounts are stored as `NUMERIC(78,0)` and bound to Postgres as text, so the
//! only arithmetic the writer needs is *validation* (is it a non-negative
//! integer below 2^256?) and *hex → decimal conversion*. Decimal input is
//! checked by length and a string comparison with 2^256-1, without any big
//! integer arithmetic; hex input goes through four 64-bit limbs. Nothing here
//! ever touches a float, so no value loses precision.

use std::fmt;

/// 2^256 - 1, the largest uint256, in decimal.
pub const MAX_DECIMAL: &str =
    "115792089237316195423570985008687907853269984665640564039457584007913129639935";

/// Decimal digits of 2^256 - 1.
const MAX_DIGITS: usize = 78;

/// Why a string is not a uint256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("empty number")]
    Empty,
    #[error("negative amounts are not allowed")]
    Negative,
    #[error("not an integer (fractions and exponents are not allowed)")]
    NotInteger,
    #[error("contains a character that is not a digit")]
    InvalidDigit,
    #[error("exceeds 2^256-1")]
    Overflow,
}

/// A uint256 held as its canonical decimal text (no sign, no leading zeros).
///
/// Kept inline so that decoding an event allocates nothing for its amounts and
/// the text can be bound to Postgres as `&str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amount {
    len: u8,
    digits: [u8; MAX_DIGITS],
}

impl Amount {
    pub const ZERO: Amount = {
        let mut digits = [0u8; MAX_DIGITS];
        digits[0] = b'0';
        Amount { len: 1, digits }
    };

    /// Parses decimal digits (an unprefixed string or a JSON integer literal).
    pub fn from_decimal(text: &str) -> Result<Amount, AmountError> {
        let bytes = text.as_bytes();
        match bytes.first() {
            None => return Err(AmountError::Empty),
            Some(b'-') => return Err(AmountError::Negative),
            Some(_) => {}
        }
        if let Some(bad) = bytes.iter().find(|b| !b.is_ascii_digit()) {
            return Err(match bad {
                b'.' | b'e' | b'E' => AmountError::NotInteger,
                _ => AmountError::InvalidDigit,
            });
        }
        let significant = match bytes.iter().position(|&b| b != b'0') {
            Some(start) => &bytes[start..],
            None => return Ok(Amount::ZERO),
        };
        if significant.len() > MAX_DIGITS
            || (significant.len() == MAX_DIGITS && significant > MAX_DECIMAL.as_bytes())
        {
            return Err(AmountError::Overflow);
        }
        let mut digits = [0u8; MAX_DIGITS];
        digits[..significant.len()].copy_from_slice(significant);
        Ok(Amount {
            len: significant.len() as u8,
            digits,
        })
    }

    /// Parses hex digits (without the `0x` prefix).
    pub fn from_hex_digits(hex: &str) -> Result<Amount, AmountError> {
        if hex.is_empty() {
            return Err(AmountError::Empty);
        }
        if !const_hex::check_raw(hex) {
            return Err(AmountError::InvalidDigit);
        }
        let significant = hex.trim_start_matches('0');
        if significant.len() > 64 {
            return Err(AmountError::Overflow);
        }
        let mut limbs = [0u64; 4];
        for (i, c) in significant.bytes().rev().enumerate() {
            let digit = const_hex::HEX_DECODE_LUT[usize::from(c)];
            limbs[i / 16] |= u64::from(digit) << ((i % 16) * 4);
        }
        Ok(Amount::from_limbs(limbs))
    }

    /// Little-endian 64-bit limbs → canonical decimal, without allocating.
    pub fn from_limbs(mut limbs: [u64; 4]) -> Amount {
        const CHUNK: u128 = 10_000_000_000_000_000_000; // 10^19 < 2^64
        const CHUNK_DIGITS: usize = 19;
        // 2^256 < 10^78 needs at most five chunks of 19 digits.
        let mut text = [b'0'; 5 * CHUNK_DIGITS];
        let mut end = text.len();
        while limbs.iter().any(|&l| l != 0) {
            let mut rem: u128 = 0;
            for limb in limbs.iter_mut().rev() {
                let cur = (rem << 64) | *limb as u128;
                *limb = (cur / CHUNK) as u64;
                rem = cur % CHUNK;
            }
            for slot in text[end - CHUNK_DIGITS..end].iter_mut().rev() {
                *slot = b'0' + (rem % 10) as u8;
                rem /= 10;
            }
            end -= CHUNK_DIGITS;
        }
        let start = text
            .iter()
            .position(|&b| b != b'0')
            .unwrap_or(text.len() - 1);
        let significant = &text[start..];
        let mut digits = [0u8; MAX_DIGITS];
        digits[..significant.len()].copy_from_slice(significant);
        Amount {
            len: significant.len() as u8,
            digits,
        }
    }

    /// The sum, if it is still a uint256: the only arithmetic the writer
    /// does itself (a batch's deposits into one position, added up before
    /// they reach Postgres).
    pub fn checked_add(&self, other: &Amount) -> Option<Amount> {
        let (a, b) = (self.as_str().as_bytes(), other.as_str().as_bytes());
        let mut sum = [b'0'; MAX_DIGITS + 1];
        let (mut i, mut j, mut n, mut carry) = (a.len(), b.len(), 0, 0u8);
        while i > 0 || j > 0 || carry > 0 {
            let mut digit = carry;
            if i > 0 {
                i -= 1;
                digit += a[i] - b'0';
            }
            if j > 0 {
                j -= 1;
                digit += b[j] - b'0';
            }
            if n == sum.len() {
                return None;
            }
            sum[n] = b'0' + digit % 10;
            carry = digit / 10;
            n += 1;
        }
        sum[..n].reverse();
        Amount::from_decimal(std::str::from_utf8(&sum[..n]).ok()?).ok()
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written into `digits`.
        std::str::from_utf8(&self.digits[..self.len as usize]).expect("ascii digits")
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_is_exact_and_bounded() {
        let n = |s: &str| Amount::from_decimal(s).unwrap();
        assert_eq!(n("0").checked_add(&n("0")), Some(n("0")));
        assert_eq!(n("999").checked_add(&n("1")), Some(n("1000")));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..10_000 {
            let (a, b) = (rng.u128(..u128::MAX / 2), rng.u128(..u128::MAX / 2));
            let sum = n(&a.to_string()).checked_add(&n(&b.to_string()));
            assert_eq!(sum, Some(n(&(a + b).to_string())));
        }
        let max = n(MAX_DECIMAL);
        assert_eq!(max.checked_add(&n("0")), Some(max));
        assert_eq!(max.checked_add(&n("1")), None);
        assert_eq!(max.checked_add(&max), None);
    }
    use proptest::prelude::*;

    /// `parse` gives each input's expected text or error.
    fn check(
        parse: fn(&str) -> Result<Amount, AmountError>,
        cases: &[(&str, Result<&str, AmountError>)],
    ) {
        for (input, expected) in cases {
            let got = parse(input);
            assert_eq!(
                got.as_ref().map(Amount::as_str),
                expected.as_ref().copied(),
                "{input}"
            );
        }
    }

    #[test]
    fn decimal_bounds() {
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        check(
            Amount::from_decimal,
            &[
                ("0", Ok("0")),
                ("000", Ok("0")),
                ("0042", Ok("42")),
                (MAX_DECIMAL, Ok(MAX_DECIMAL)),
                (over, Err(AmountError::Overflow)),
                (&"9".repeat(79), Err(AmountError::Overflow)),
                ("-1", Err(AmountError::Negative)),
                ("1.5", Err(AmountError::NotInteger)),
                ("1e18", Err(AmountError::NotInteger)),
                ("12a", Err(AmountError::InvalidDigit)),
                ("", Err(AmountError::Empty)),
                ("+1", Err(AmountError::InvalidDigit)),
            ],
        );
    }

    #[test]
    fn hex_bounds() {
        check(
            Amount::from_hex_digits,
            &[
                ("0", Ok("0")),
                ("ff", Ok("255")),
                ("FF", Ok("255")),
                (&"f".repeat(64), Ok(MAX_DECIMAL)),
                (&format!("000{}", "f".repeat(64)), Ok(MAX_DECIMAL)),
                (&format!("1{}", "0".repeat(64)), Err(AmountError::Overflow)),
                ("xyz", Err(AmountError::InvalidDigit)),
                ("", Err(AmountError::Empty)),
                // 10^19 crosses a chunk boundary: the lower chunk must be
                // zero-padded.
                ("8ac7230489e80000", Ok("10000000000000000000")),
            ],
        );
    }

    proptest! {
        #[test]
        fn hex_matches_u128(v: u128) {
            let hex = format!("{v:x}");
            let amount = Amount::from_hex_digits(&hex).unwrap();
            prop_assert_eq!(amount.as_str(), v.to_string());
        }

        #[test]
        fn decimal_is_canonical(v: u128, zeros in 0usize..5) {
            let text = format!("{}{v}", "0".repeat(zeros));
            let amount = Amount::from_decimal(&text).unwrap();
            prop_assert_eq!(amount.as_str(), v.to_string());
        }

        /// A full-width value: hex → decimal must agree with a schoolbook
        /// decimal conversion done digit by digit here.
        #[test]
        fn hex_matches_reference_conversion(limbs: [u64; 4]) {
            let hex: String = limbs.iter().rev().map(|l| format!("{l:016x}")).collect();
            let amount = Amount::from_hex_digits(&hex).unwrap();
            prop_assert_eq!(amount.as_str(), reference_decimal(&hex));
            // And the decimal text round-trips through the decimal parser.
            prop_assert_eq!(Amount::from_decimal(amount.as_str()).unwrap(), amount);
        }
    }

    /// Hex → decimal by repeated "multiply by 16 and add" on a decimal digit
    /// vector: slow, obviously correct, independent of the limb code.
    fn reference_decimal(hex: &str) -> String {
        let mut digits: Vec<u32> = vec![0]; // little-endian base 10
        for c in hex.chars() {
            let mut carry = c.to_digit(16).unwrap();
            for d in digits.iter_mut() {
                let v = *d * 16 + carry;
                *d = v % 10;
                carry = v / 10;
            }
            while carry > 0 {
                digits.push(carry % 10);
                carry /= 10;
            }
        }
        while digits.len() > 1 && *digits.last().unwrap() == 0 {
            digits.pop();
        }
        digits
            .iter()
            .rev()
            .map(|d| char::from_digit(*d, 10).unwrap())
            .collect()
    }
}
