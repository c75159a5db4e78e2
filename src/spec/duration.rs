//! Durations as people write them in manifests: `500ms`, `30s`, `2m`, `1h`, `1m30s`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written like `500ms`, `30s`, `2m`, `1h` or a sum such as `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a string is not a duration; the message says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration, write {1}")]
pub struct ParseDurationError(String, &'static str);

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || ParseDurationError(text.to_owned(), suggestion(text));
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(fail());
        }
        if rest == "0" {
            return Ok(Duration::from_millis(0));
        }
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(fail)?;
            if digits == 0 {
                return Err(fail());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| fail())?;
            rest = &rest[digits..];
            // "ms" must be tried before "m".
            let (unit, scale) = [("ms", 1), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)]
                .into_iter()
                .find(|(unit, _)| rest.starts_with(unit))
                .ok_or_else(fail)?;
            rest = &rest[unit.len()..];
            total = number
                .checked_mul(scale)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(fail)?;
        }
        Ok(Duration::from_millis(total))
    }
}

/// A likely intended spelling for a bad duration, for the error's "write ..." part.
fn suggestion(text: &str) -> &'static str {
    let lower = text.to_ascii_lowercase();
    if lower.contains("min") {
        "a number and a unit such as 2m"
    } else if lower.contains("sec") {
        "a number and a unit such as 5s"
    } else if lower.contains("milli") {
        "a number and a unit such as 500ms"
    } else if lower.contains("hour") {
        "a number and a unit such as 1h"
    } else {
        "a number and a unit (ms, s, m, h) such as 500ms, 5s or 2m"
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in UNITS {
            if ms >= scale {
                write!(f, "{}{unit}", ms / scale)?;
                ms %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_forms_people_write() {
        for (text, ms, printed) in [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("2m", 120_000, "2m"),
            ("1h", 3_600_000, "1h"),
            ("1m30s", 90_000, "1m30s"),
            ("90s", 90_000, "1m30s"),
            ("0", 0, "0s"),
            ("0s", 0, "0s"),
            ("1500ms", 1_500, "1s500ms"),
        ] {
            let d: Duration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(
                printed.parse::<Duration>().unwrap(),
                d,
                "{printed} round trip"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration_and_says_how_to_write_it() {
        for (text, message) in [
            (
                "5 seconds",
                r#""5 seconds" is not a duration, write a number and a unit such as 5s"#,
            ),
            (
                "5",
                r#""5" is not a duration, write a number and a unit (ms, s, m, h) such as 500ms, 5s or 2m"#,
            ),
            (
                "",
                r#""" is not a duration, write a number and a unit (ms, s, m, h) such as 500ms, 5s or 2m"#,
            ),
            (
                "2mins",
                r#""2mins" is not a duration, write a number and a unit such as 2m"#,
            ),
            (
                "-1s",
                r#""-1s" is not a duration, write a number and a unit (ms, s, m, h) such as 500ms, 5s or 2m"#,
            ),
            (
                "1.5s",
                r#""1.5s" is not a duration, write a number and a unit (ms, s, m, h) such as 500ms, 5s or 2m"#,
            ),
        ] {
            let err = text.parse::<Duration>().unwrap_err();
            assert_eq!(err.to_string(), message, "{text}");
        }
    }
}
