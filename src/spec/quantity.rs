//! Memory sizes as people write them: `256Mi`, `1Gi`, `512M`, `1048576`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written with an optional Kubernetes-style suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(u64);

const SUFFIXES: [(&str, u64); 8] = [
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

impl Memory {
    pub const fn from_bytes(bytes: u64) -> Self {
        Memory(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a memory size, write a whole number with a suffix such as 256Mi or 1Gi")]
pub struct ParseMemoryError(String);

impl FromStr for Memory {
    type Err = ParseMemoryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || ParseMemoryError(text.to_owned());
        let (digits, scale) = SUFFIXES
            .iter()
            .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|d| (d, *scale)))
            .unwrap_or((text, 1));
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail());
        }
        let number: u64 = digits.parse().map_err(|_| fail())?;
        number.checked_mul(scale).map(Memory).ok_or_else(fail)
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The suffix that gives the shortest number: 512M rather than 500000Ki.
        match SUFFIXES
            .iter()
            .filter(|(_, scale)| self.0 != 0 && self.0 % scale == 0)
            .min_by_key(|(_, scale)| self.0 / scale)
        {
            Some((suffix, scale)) => write!(f, "{}{suffix}", self.0 / scale),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A bare number of bytes may arrive as a YAML integer.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Memory(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sizes() {
        for (text, bytes, printed) in [
            ("256Mi", 256 << 20, "256Mi"),
            ("1Gi", 1 << 30, "1Gi"),
            ("1024Mi", 1 << 30, "1Gi"),
            ("512M", 512_000_000, "512M"),
            ("64k", 64_000, "64k"),
            ("1000", 1000, "1k"),
            ("1023", 1023, "1023"),
        ] {
            let m: Memory = text.parse().unwrap();
            assert_eq!(m.bytes(), bytes, "{text}");
            assert_eq!(m.to_string(), printed, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for text in ["", "Mi", "256 Mi", "1.5Gi", "256MB", "-1", "256mi"] {
            let err = text.parse::<Memory>().unwrap_err();
            assert!(err.to_string().contains("write a whole number"), "{text}");
        }
    }
}
