//! An exact decimal price.
//!
//! Sources send prices as decimal text (`"97001.50000"`) or JSON numbers (`97001.5`). Going through
//! `f64` would print `97001.49999999999` for some of them, so a price is kept as the decimal the
//! source gave: an integer mantissa and a count of fraction digits, normalised (no trailing zeros),
//! so equal prices are equal values and print the same way.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Most significant digits a price may carry; more is not a price, it is noise.
const MAX_DIGITS: usize = 18;

/// A strictly positive decimal amount of a currency per BTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Price {
    mantissa: u64,
    scale: u8,
}

/// Why a text is not a price.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price {0:?} is not a decimal number")]
    Malformed(String),
    #[error("price {0:?} is not positive")]
    NotPositive(String),
    #[error("price {0:?} has more than {MAX_DIGITS} significant digits")]
    TooPrecise(String),
}

impl Price {
    /// The price as a float, for comparisons and metrics only, never for output.
    pub fn as_f64(self) -> f64 {
        self.mantissa as f64 / 10f64.powi(i32::from(self.scale))
    }

    /// Appends the decimal text (what [`Display`](fmt::Display) prints) without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        let mut digits = [0u8; 20];
        let mut n = self.mantissa;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let scale = usize::from(self.scale);
        // Leading zeros so there is at least one digit before the point ("0.005").
        while len <= scale {
            digits[len] = b'0';
            len += 1;
        }
        for i in (0..len).rev() {
            out.push(digits[i]);
            if i == scale && scale > 0 {
                out.push(b'.');
            }
        }
    }

    /// Whether `text` is exactly what some price prints (what [`Display`](fmt::Display) and
    /// [`Price::write_to`] write), so that it can be copied as the price's text without parsing:
    /// `text.parse::<Price>()` then succeeds and prints `text` again. Decided without allocating.
    pub fn is_printed_form(text: &str) -> bool {
        Price::read_printed(text).is_some()
    }

    /// The price `text` prints, if it is in the printed form (see [`Price::is_printed_form`]):
    /// that form is already normalised, so its digits are the mantissa and its fraction's length
    /// the scale. Every price in a history answer or a tick payload is in it, and a backfilling
    /// client reads thousands: this reads one without the general parser's allocations.
    fn read_printed(text: &str) -> Option<Price> {
        let bytes = text.as_bytes();
        let (int, frac) = match bytes.iter().position(|&b| b == b'.') {
            Some(dot) => (&bytes[..dot], Some(&bytes[dot + 1..])),
            None => (bytes, None),
        };
        let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
        if !digits(int) || (int.len() > 1 && int[0] == b'0') {
            return None;
        }
        let frac = match frac {
            // Printed without trailing zeros, and only when there is a fraction at all.
            Some(frac) if digits(frac) && frac.last() != Some(&b'0') => frac,
            Some(_) => return None,
            None => &[],
        };
        let significant = if int == b"0" {
            frac.iter().skip_while(|&&b| b == b'0').count()
        } else {
            int.len() + frac.len()
        };
        // Zero is not a price; past MAX_DIGITS it is not one either (see `from_str`).
        if significant == 0 || significant > MAX_DIGITS || frac.len() > MAX_DIGITS {
            return None;
        }
        // At most MAX_DIGITS significant digits (leading zeros add nothing): no overflow.
        let mantissa = int
            .iter()
            .chain(frac)
            .fold(0u64, |m, &d| m * 10 + u64::from(d - b'0'));
        Some(Price {
            mantissa,
            scale: frac.len() as u8,
        })
    }

    /// Builds a price from a mantissa and a count of fraction digits (`(970015, 1)` is `97001.5`).
    pub fn from_parts(mantissa: u64, scale: u8) -> Result<Price, PriceError> {
        format_parts(mantissa, scale).parse()
    }

    /// Parses a float as the shortest decimal that round-trips, which is what a JSON number written by
    /// any sane encoder means. Rejects NaN, infinities and non-positive values.
    pub fn from_f64(value: f64) -> Result<Price, PriceError> {
        if !value.is_finite() {
            return Err(PriceError::Malformed(value.to_string()));
        }
        // `{}` on f64 prints the shortest round-tripping decimal, never an exponent.
        format!("{value}").parse()
    }
}

fn format_parts(mantissa: u64, scale: u8) -> String {
    let digits = mantissa.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_parts(self.mantissa, self.scale))
    }
}

impl FromStr for Price {
    type Err = PriceError;

    /// Accepts the JSON number grammar (`-?int(.frac)?([eE][+-]?exp)?`) and nothing else: no
    /// thousands separators, no `NaN`, no leading `+`, no surrounding blanks.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Price::read_printed(s).map_or_else(|| parse_general(s), Ok)
    }
}

/// [`Price::from_str`] for any text: every form the JSON number grammar allows.
fn parse_general(s: &str) -> Result<Price, PriceError> {
    let malformed = || PriceError::Malformed(s.to_string());
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (number, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => {
            let exp = &unsigned[i + 1..];
            let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            // An exponent beyond any sane magnitude is malformed, not a huge number.
            let exp: i32 = exp.parse().map_err(|_| malformed())?;
            if exp.abs() > 64 {
                return Err(malformed());
            }
            (&unsigned[..i], exp)
        }
        None => (unsigned, 0),
    };
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return Err(malformed()),
        None => (number, ""),
    };
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) {
        return Err(malformed());
    }
    // JSON forbids leading zeros ("007"), and they are a sign of a garbled field.
    if int.len() > 1 && int.starts_with('0') {
        return Err(malformed());
    }

    let mut digits: String = format!("{int}{frac}").trim_start_matches('0').to_string();
    let mut scale = frac.len() as i32 - exponent;
    if digits.is_empty() {
        return Err(PriceError::NotPositive(s.to_string()));
    }
    if negative {
        return Err(PriceError::NotPositive(s.to_string()));
    }
    while scale > 0 && digits.ends_with('0') {
        digits.pop();
        scale -= 1;
    }
    if scale < 0 {
        digits.extend(std::iter::repeat_n('0', (-scale) as usize));
        scale = 0;
    }
    if digits.len() > MAX_DIGITS || scale > MAX_DIGITS as i32 {
        return Err(PriceError::TooPrecise(s.to_string()));
    }
    let mantissa = digits.parse().map_err(|_| malformed())?;
    Ok(Price {
        mantissa,
        scale: scale as u8,
    })
}

/// On the wire a price is a JSON number written exactly as [`Display`](fmt::Display) prints it.
impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Reads a JSON number exactly as written (a quoted string is not a price on the wire).
impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(deserializer)?;
        raw.get().parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Price {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn prints_what_the_source_meant_without_float_noise() {
        assert_eq!(p("97001.5").to_string(), "97001.5");
        assert_eq!(p("97001.50000").to_string(), "97001.5");
        assert_eq!(p("111193.40000").to_string(), "111193.4");
        assert_eq!(p("97001").to_string(), "97001");
        assert_eq!(p("97001.0").to_string(), "97001");
        assert_eq!(p("0.00012300").to_string(), "0.000123");
        assert_eq!(p("9.70015e4").to_string(), "97001.5");
        assert_eq!(p("1E+3").to_string(), "1000");
        assert_eq!(p("123456.789e-3").to_string(), "123.456789");
        // 0.1 + 0.2 style noise never appears: the decimal is kept, not a float.
        assert_eq!(p("64895.31").to_string(), "64895.31");
        assert_eq!(p("97001.49999999999").to_string(), "97001.49999999999");
    }

    #[test]
    fn equal_values_are_equal() {
        assert_eq!(p("97001.5"), p("97001.500"));
        assert_eq!(p("1e2"), p("100"));
        assert_ne!(p("97001.5"), p("97001.51"));
    }

    #[test]
    fn rejects_what_is_not_a_positive_decimal() {
        for bad in [
            "",
            " 1",
            "1 ",
            "+1",
            "1,000.5",
            "64,895.3086",
            "NaN",
            "nan",
            "inf",
            "Infinity",
            "1.",
            ".5",
            "1e",
            "1e+",
            "0x10",
            "007",
            "1.2.3",
            "\"97001.5\"",
            "1e999",
            "--1",
            "1_000",
        ] {
            assert!(
                matches!(bad.parse::<Price>(), Err(PriceError::Malformed(_))),
                "{bad:?} -> {:?}",
                bad.parse::<Price>()
            );
        }
        for nonpositive in ["0", "0.0", "0e5", "-1", "-0", "-97001.5", "-0.0"] {
            assert_eq!(
                nonpositive.parse::<Price>(),
                Err(PriceError::NotPositive(nonpositive.into())),
            );
        }
        assert!(matches!(
            "1234567890123456789".parse::<Price>(),
            Err(PriceError::TooPrecise(_))
        ));
        assert!(matches!(
            "0.0000000000000000001".parse::<Price>(),
            Err(PriceError::TooPrecise(_))
        ));
    }

    #[test]
    fn floats_become_their_shortest_decimal() {
        assert_eq!(Price::from_f64(97001.5).unwrap().to_string(), "97001.5");
        assert_eq!(
            Price::from_f64(64895.3086).unwrap().to_string(),
            "64895.3086"
        );
        assert_eq!(
            Price::from_f64(0.1 + 0.2).unwrap().to_string(),
            "0.30000000000000004"
        );
        assert!(Price::from_f64(f64::NAN).is_err());
        assert!(Price::from_f64(f64::INFINITY).is_err());
        assert!(Price::from_f64(-3.0).is_err());
        assert!(Price::from_f64(0.0).is_err());
    }

    #[test]
    fn parts_round_trip() {
        assert_eq!(Price::from_parts(970015, 1).unwrap(), p("97001.5"));
        assert_eq!(Price::from_parts(5, 3).unwrap().to_string(), "0.005");
        assert!(Price::from_parts(0, 2).is_err());
    }

    #[test]
    fn the_fast_writer_prints_what_display_prints() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut cases: Vec<Price> = [
            "97001.5",
            "1",
            "0.005",
            "10",
            "100.01",
            "0.000123",
            "999999999999999999",
        ]
        .iter()
        .map(|s| p(s))
        .collect();
        for _ in 0..10_000 {
            let mantissa = next() % 1_000_000_000_000 + 1;
            let scale = (next() % 10) as u8;
            cases.push(Price::from_parts(mantissa, scale).unwrap());
        }
        for price in cases {
            let mut out = Vec::new();
            price.write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), price.to_string());
        }
    }

    /// The printed form is recognised exactly: a text passes if and only if parsing it and
    /// printing the price gives the text back. And reading it the short way gives the price the
    /// general parser gives, for every text.
    #[test]
    fn the_printed_form_is_exactly_what_prints_back() {
        let by_parsing = |s: &str| parse_general(s).is_ok_and(|p| p.to_string() == s);
        let mut cases: Vec<String> = [
            "97001.5",
            "1",
            "0.005",
            "10",
            "60000",
            "100.01",
            "0.000123",
            "999999999999999999",
            "0",
            "0.0",
            "00",
            "01",
            "1.",
            ".5",
            "1.50",
            "1.0",
            "-1",
            "+1",
            "1e3",
            "1E3",
            "NaN",
            "",
            ".",
            "0.",
            "0.10",
            "1..2",
            "1.2.3",
            " 1",
            "1 ",
            "1000000000000000000",
            "0.000000000000000001",
            "0.0000000000000000001",
            "123456789.123456789",
            "12345678.123456789",
            "٣",
            "1\u{0}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let alphabet = b"0123456789.-+eE";
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..200_000 {
            let len = (next() % 22) as usize;
            let text: String = (0..len)
                .map(|_| {
                    // Mostly digits, so that long valid texts are common too.
                    let r = next() % 100;
                    if r < 85 {
                        char::from(b'0' + (r % 10) as u8)
                    } else {
                        char::from(alphabet[(r % alphabet.len() as u64) as usize])
                    }
                })
                .collect();
            cases.push(text);
            let mantissa = next() % 10_u64.pow((next() % 19) as u32).max(1) + 1;
            let scale = (next() % 20) as u8;
            if let Ok(price) = Price::from_parts(mantissa, scale) {
                cases.push(price.to_string());
            }
        }
        for case in &cases {
            assert_eq!(Price::is_printed_form(case), by_parsing(case), "{case:?}");
            assert_eq!(case.parse::<Price>(), parse_general(case), "{case:?}");
        }
        assert!(cases.iter().filter(|c| by_parsing(c)).count() > 100_000);
    }

    #[test]
    fn json_number_in_and_out_exactly() {
        let price: Price = serde_json::from_str("97001.50").unwrap();
        assert_eq!(serde_json::to_string(&price).unwrap(), "97001.5");
        assert!(serde_json::from_str::<Price>("\"97001.5\"").is_err());
        assert!(serde_json::from_str::<Price>("null").is_err());
        assert!(serde_json::from_str::<Price>("-1").is_err());
    }
}
