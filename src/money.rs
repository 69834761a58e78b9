//! Money as integer minor units plus an ISO 4217 currency, with the currency's exponent
//! from `iso_currency` (JPY 0, USD 2, KWD 3). Decimal inputs are converted exactly from
//! their text, never through floats; more precision than the currency has, or an unknown
//! currency, is an error, never a rounding.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Amount in the currency's minor unit (cents, yen, fils).
    pub minor: i64,
    /// Upper-case ISO 4217 code.
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    #[error("{amount} has more decimals than {currency} allows ({exponent})")]
    TooPrecise {
        amount: String,
        currency: String,
        exponent: u32,
    },
    #[error("malformed amount {0:?}")]
    Malformed(String),
    #[error("amount {0:?} is out of range")]
    Overflow(String),
}

/// The upper-case code and exponent of an ISO 4217 currency (case-insensitive code).
pub fn exponent(currency: &str) -> Result<(String, u32), MoneyError> {
    let code = currency.trim().to_ascii_uppercase();
    let exponent = iso_currency::Currency::from_code(&code)
        .and_then(|c| c.exponent())
        .ok_or_else(|| MoneyError::UnknownCurrency(currency.to_owned()))?;
    Ok((code, u32::from(exponent)))
}

impl Money {
    /// An amount already in minor units (Stripe, PayNow, Shopify).
    pub fn from_minor(minor: i64, currency: &str) -> Result<Self, MoneyError> {
        let (currency, _) = exponent(currency)?;
        Ok(Self { minor, currency })
    }

    /// An amount in major units written as decimal text (`"49.95"`, `"-3"`, `"1000.500"`);
    /// trailing zeros beyond the exponent are accepted, other extra digits are not.
    pub fn from_decimal(text: &str, currency: &str) -> Result<Self, MoneyError> {
        let (code, exp) = exponent(currency)?;
        let malformed = || MoneyError::Malformed(text.to_owned());
        let trimmed = text.trim();
        let (negative, digits) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let dangling_point = digits.contains('.') && fraction.is_empty();
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || dangling_point {
            return Err(malformed());
        }
        let significant = fraction.trim_end_matches('0');
        if significant.len() > exp as usize {
            return Err(MoneyError::TooPrecise {
                amount: text.to_owned(),
                currency: code,
                exponent: exp,
            });
        }
        let overflow = || MoneyError::Overflow(text.to_owned());
        let scale = 10i64.checked_pow(exp).ok_or_else(overflow)?;
        let whole: i64 = whole.parse().map_err(|_| overflow())?;
        let frac: i64 = if significant.is_empty() {
            0
        } else {
            format!("{significant:0<width$}", width = exp as usize)
                .parse()
                .map_err(|_| overflow())?
        };
        let minor = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(overflow)?;
        Ok(Self {
            minor: if negative { -minor } else { minor },
            currency: code,
        })
    }
}

/// A decimal amount exactly as the payload wrote it, whether as a JSON number (`49.95`) or
/// a string (`"49.95"`). Deserialize payloads with `serde_json::from_slice` into typed
/// structs so numbers keep their text (serde_json's `raw_value`); never go through `f64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText(pub String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(serde::de::Error::custom)?;
            Ok(DecimalText(s))
        } else if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            Ok(DecimalText(text.to_owned()))
        } else {
            Err(serde::de::Error::custom(format!(
                "amount is not a plain decimal: {text}"
            )))
        }
    }
}

impl DecimalText {
    pub fn to_money(&self, currency: &str) -> Result<Money, MoneyError> {
        Money::from_decimal(&self.0, currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents_come_from_the_iso_table() {
        assert_eq!(exponent("jpy").unwrap(), ("JPY".into(), 0));
        assert_eq!(exponent("USD").unwrap(), ("USD".into(), 2));
        assert_eq!(exponent("KWD").unwrap(), ("KWD".into(), 3));
        assert_eq!(
            exponent("ZZZ").unwrap_err(),
            MoneyError::UnknownCurrency("ZZZ".into())
        );
        assert!(exponent("").is_err());
    }

    #[test]
    fn decimals_convert_exactly_per_currency() {
        let m = |t: &str, c: &str| Money::from_decimal(t, c).map(|m| m.minor);
        assert_eq!(m("49.95", "USD"), Ok(4995));
        assert_eq!(m("0.1", "USD"), Ok(10));
        assert_eq!(
            m("1000.500", "USD"),
            Ok(100050),
            "a trailing zero is not precision"
        );
        assert_eq!(m("-3", "usd"), Ok(-300));
        assert_eq!(m("1500", "JPY"), Ok(1500));
        assert_eq!(m("1500.0", "JPY"), Ok(1500));
        assert_eq!(m("12.345", "KWD"), Ok(12345));
        assert_eq!(m("0.001", "KWD"), Ok(1));
        assert!(matches!(
            m("49.955", "USD"),
            Err(MoneyError::TooPrecise { exponent: 2, .. })
        ));
        assert!(matches!(
            m("1500.5", "JPY"),
            Err(MoneyError::TooPrecise { exponent: 0, .. })
        ));
        assert!(matches!(
            m("1.2345", "KWD"),
            Err(MoneyError::TooPrecise { exponent: 3, .. })
        ));
        for bad in [
            "", ".5", "5.", "1e3", "1,5", "abc", "--1", "1.2.3", " ", "-",
        ] {
            assert!(
                matches!(m(bad, "USD"), Err(MoneyError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            m("99999999999999999999", "USD"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            m("1.00", "BTC"),
            Err(MoneyError::UnknownCurrency(_))
        ));
    }

    #[test]
    fn decimal_text_keeps_json_numbers_exact() {
        #[derive(Deserialize)]
        struct P {
            amount: DecimalText,
        }
        let parse = |json: &str| serde_json::from_str::<P>(json).map(|p| p.amount.0);
        assert_eq!(parse(r#"{"amount": 49.95}"#).unwrap(), "49.95");
        assert_eq!(
            parse(r#"{"amount": 0.30}"#).unwrap(),
            "0.30",
            "not 0.3, not 0.299999"
        );
        assert_eq!(parse(r#"{"amount":"12.345"}"#).unwrap(), "12.345");
        assert!(
            parse(r#"{"amount":1e3}"#).is_err(),
            "exponent notation is refused"
        );
        assert!(parse(r#"{"amount":true}"#).is_err());
        assert_eq!(
            DecimalText("49.95".into()).to_money("usd").unwrap(),
            Money {
                minor: 4995,
                currency: "USD".into()
            }
        );
        assert_eq!(Money::from_minor(4995, "usd").unwrap().currency, "USD");
        assert!(Money::from_minor(1, "nope").is_err());
    }

    proptest::proptest! {
        #[test]
        fn minor_units_round_trip_through_decimal_text(
            minor in -1_000_000_000_000i64..1_000_000_000_000,
            currency in proptest::sample::select(vec!["JPY", "USD", "KWD"]),
        ) {
            let (_, exp) = exponent(currency).unwrap();
            let scale = 10i64.pow(exp);
            let sign = if minor < 0 { "-" } else { "" };
            let text = if exp == 0 {
                minor.to_string()
            } else {
                format!("{sign}{}.{:0width$}", minor.abs() / scale, minor.abs() % scale, width = exp as usize)
            };
            proptest::prop_assert_eq!(Money::from_decimal(&text, currency).unwrap().minor, minor);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,40}", currency in ".{0,4}") {
            let _ = Money::from_decimal(&text, &currency);
        }
    }
}
