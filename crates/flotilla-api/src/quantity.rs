//! Kubernetes resource quantities (`"1"`, `"500m"`, `"4Gi"`, `"1e3"`) as exact integers.
//!
//! Capacity estimates divide free resources by requests, so both must be exact: an
//! amount is held in nano-units (10⁻⁹ of the resource's base unit) in a `u128`,
//! which covers every quantity Kubernetes can express (up to 2⁶³ base units) with
//! room to spare. Fractions finer than a nano-unit round up, as Kubernetes rounds
//! quantities up.

use std::fmt;

/// Nano-units per base unit.
const NANO: u128 = 1_000_000_000;

/// A non-negative resource amount in nano-units of its base unit (cores, bytes, pods…).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

/// Why a string is not a usable quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is empty.
    #[error("is empty")]
    Empty,
    /// The text does not follow the Kubernetes quantity grammar.
    #[error("{0:?} is not a quantity (examples: \"2\", \"500m\", \"4Gi\", \"1e3\")")]
    Syntax(String),
    /// A resource amount below zero.
    #[error("{0:?} is negative")]
    Negative(String),
    /// Larger than any quantity Kubernetes accepts (2⁶³ − 1 base units).
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl Amount {
    /// No resource at all.
    pub const ZERO: Amount = Amount(0);

    /// `n` whole base units (`Amount::units(1)` is one pod, one core, one byte).
    pub const fn units(n: u64) -> Amount {
        Amount(n as u128 * NANO)
    }

    /// An amount of `n` nano-units.
    pub const fn from_nanos(n: u128) -> Amount {
        Amount(n)
    }

    /// Difference, stopping at zero.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// The amount in nano-units.
    pub const fn nanos(self) -> u128 {
        self.0
    }

    /// True when nothing is requested.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// How many whole `per` fit in `self`; `None` when `per` is zero (no limit).
    pub fn fits(self, per: Amount) -> Option<u128> {
        let (have, need) = (self.0, per.0);
        if need == 0 {
            return None;
        }
        if let (Ok(h), Ok(n)) = (u64::try_from(have), u64::try_from(need)) {
            return Some(u128::from(h / n));
        }
        // Capacity estimates divide thousands of these; a 128-bit division is slow, so
        // estimate in floating point and correct exactly (the estimate is off by at
        // most one or two while it is below 2⁵⁰).
        let guess = (have as f64 / need as f64) as u128;
        if guess >= 1 << 50 {
            return Some(have / need);
        }
        let mut q = guess;
        while q > 0 && q * need > have {
            q -= 1;
        }
        while (q + 1) * need <= have {
            q += 1;
        }
        Some(q)
    }

    /// Sum, saturating at the largest amount.
    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }
}

impl std::str::FromStr for Amount {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Amount, QuantityError> {
        parse(text)
    }
}

/// Parses a Kubernetes quantity: `<sign><digits>[.<digits>]<suffix>` with a binary
/// (`Ki`…`Ei`), decimal (`n`, `u`, `m`, ``, `k`, `M`, `G`, `T`, `P`, `E`) or exponent
/// (`e3`, `E-2`) suffix.
pub fn parse(text: &str) -> Result<Amount, QuantityError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(text.to_string());
    let (negative, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(syntax());
    }
    // value = digits × 10^exp10 × 2^exp2
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| syntax())?;
            if !(-40..=40).contains(&exp) {
                return Err(QuantityError::TooLarge(text.to_string()));
            }
            (exp, 0)
        }
        _ => return Err(syntax()),
    };
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        // Only digits remain here; 10³⁹ overflows u128.
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(b - b'0')))
            .ok_or_else(|| QuantityError::TooLarge(text.to_string()))?;
    }
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(text.to_string()));
    }
    // nanos = mantissa × 10^(exp10 + 9 − frac_len) × 2^exp2, rounded up.
    let too_large = || QuantityError::TooLarge(text.to_string());
    let scale = exp10 + 9 - frac_part.len() as i32;
    let scaled = mantissa.checked_mul(1u128 << exp2).ok_or_else(too_large)?;
    let nanos = if scale >= 0 {
        10u128
            .checked_pow(scale as u32)
            .and_then(|p| scaled.checked_mul(p))
            .ok_or_else(too_large)?
    } else {
        match 10u128.checked_pow(scale.unsigned_abs()) {
            Some(p) => scaled.div_ceil(p),
            None => u128::from(scaled != 0),
        }
    };
    if nanos > i64::MAX as u128 * NANO {
        return Err(too_large());
    }
    Ok(Amount(nanos))
}

impl fmt::Display for Amount {
    /// Prints the shortest exact decimal form (`1`, `500m`, `1.5`) or a binary form for
    /// whole multiples of 1Ki and above (`4Gi`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n.is_multiple_of(NANO) {
            let units = n / NANO;
            for (suffix, shift) in [
                ("Ei", 60),
                ("Pi", 50),
                ("Ti", 40),
                ("Gi", 30),
                ("Mi", 20),
                ("Ki", 10),
            ] {
                if units >= 1 << shift && units.is_multiple_of(1 << shift) {
                    return write!(f, "{}{suffix}", units >> shift);
                }
            }
            return write!(f, "{units}");
        }
        for (suffix, div) in [("m", 1_000_000u128), ("u", 1_000), ("n", 1)] {
            if n.is_multiple_of(div) {
                return write!(f, "{}{suffix}", n / div);
            }
        }
        unreachable!("every nano amount is divisible by 1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, nanos: u128) {
        assert_eq!(parse(text), Ok(Amount(nanos)), "{text}");
    }

    #[test]
    fn parses_every_suffix_form() {
        check("1", NANO);
        check("0", 0);
        check("500m", 500_000_000);
        check("1.5", 1_500_000_000);
        check(".5", 500_000_000);
        check("2.", 2 * NANO);
        check("4Gi", 4 * (1 << 30) * NANO);
        check("60Gi", 60 * (1 << 30) * NANO);
        check("1.5Gi", 3 * (1 << 29) * NANO);
        check("1k", 1000 * NANO);
        check("1M", 1_000_000 * NANO);
        check("1e3", 1000 * NANO);
        check("1E-3", 1_000_000);
        check("100n", 100);
        check("+7", 7 * NANO);
        check("-0", 0);
        check("10000", 10_000 * NANO);
    }

    #[test]
    fn rounds_sub_nano_fractions_up() {
        check("0.1n", 1);
        check("1e-10", 1);
    }

    #[test]
    fn rejects_bad_quantities() {
        assert_eq!(parse(""), Err(QuantityError::Empty));
        assert!(matches!(parse("abc"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("1Zi"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("."), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("1.2.3"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(parse("100Ei"), Err(QuantityError::TooLarge(_))));
        assert!(matches!(parse("1e99"), Err(QuantityError::TooLarge(_))));
    }

    #[test]
    fn displays_round_trip() {
        for text in ["1", "500m", "4Gi", "1536Mi", "250u", "7n", "0"] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
        assert_eq!(parse("1.5").unwrap().to_string(), "1500m");
    }

    #[test]
    fn fits_matches_exact_division() {
        let values = [
            1u128,
            3,
            999,
            NANO,
            7 * NANO,
            1 << 64,
            (1 << 64) + 1,
            60 * (1 << 30) * NANO,
            i64::MAX as u128 * NANO,
        ];
        for &h in &values {
            for &n in &values {
                assert_eq!(Amount(h).fits(Amount(n)), Some(h / n), "{h} / {n}");
                assert_eq!(
                    Amount(h - 1).fits(Amount(n)),
                    Some((h - 1) / n),
                    "{} / {n}",
                    h - 1
                );
            }
        }
    }

    #[test]
    fn fits_divides_exactly() {
        let free = parse("15").unwrap();
        assert_eq!(free.fits(parse("1").unwrap()), Some(15));
        assert_eq!(free.fits(parse("4").unwrap()), Some(3));
        assert_eq!(free.fits(Amount::ZERO), None);
        assert_eq!(parse("60Gi").unwrap().fits(parse("4Gi").unwrap()), Some(15));
    }
}
