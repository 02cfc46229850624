//! Human-friendly durations: `500ms`, `5s`, `10m`, `2h`, `1d`, or compounds such as
//! `1h30m`.

use std::fmt;
use std::time::Duration;

/// A duration that could not be parsed, with the text and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration `{}`: {} (expected e.g. 500ms, 5s, 10m, 2h, 1d or 1h30m)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration written as one or more `<integer><unit>` parts, with units
/// `ms`, `s`, `m`, `h` and `d` (also `sec`, `min`, `hour(s)`, `day(s)`).
///
/// ```
/// use std::time::Duration;
/// use batchstream::advisor::parse_duration;
///
/// assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
/// assert_eq!(parse_duration("10m")?, Duration::from_secs(600));
/// assert_eq!(parse_duration("1h30m")?, Duration::from_secs(5400));
/// assert!(parse_duration("5 parsecs").is_err());
/// # Ok::<(), batchstream::advisor::DurationError>(())
/// ```
///
/// # Errors
/// [`DurationError`] for empty text, a missing number or unit, an unknown unit, or
/// an overflowing value.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = |reason: String| DurationError {
        input: text.to_string(),
        reason,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("it is empty".into()));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err(format!("expected a number at `{rest}`")));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| err(format!("`{}` is too large", &rest[..digits])))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let millis_per_unit: u64 = match unit {
            "ms" | "msec" | "millis" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "" => return Err(err(format!("`{number}` has no unit"))),
            other => {
                return Err(err(format!("unknown unit `{other}`")));
            }
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| err("it is too large".into()))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| err("it is too large".into()))?;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest units that
/// divide it (`90s` is `1m30s`); sub-millisecond durations in `µs`.
///
/// ```
/// use std::time::Duration;
/// use batchstream::advisor::format_duration;
///
/// assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
/// assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
/// ```
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_millis(1) {
        return format!("{}µs", d.as_micros());
    }
    let mut millis = d.as_millis();
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

/// Serde support for `Option<Duration>` written as text (`"5s"`).
pub(crate) mod serde_opt {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            parse_duration(&t).map_err(|e| serde::de::Error::custom(format!("max_latency: {e}")))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["500ms", "5s", "10m", "2h", "1d", "1h30m", "1d2h3m4s5ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn rejects_bad_text() {
        for text in ["", "5", "s", "5x", "-5s", "5.5s", "99999999999999999999s"] {
            let e = parse_duration(text).unwrap_err();
            assert_eq!(e.input, text);
            assert!(e.to_string().contains("invalid duration"), "{e}");
        }
    }
}
