//! Durations as DAG files and settings write them (`30s`, `5m`, `1h 30m`):
//! one parser and one (de)serialiser, for `#[serde(with = "workflows::duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A text that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration such as `30s`, `5m` or `1h 30m`: {why}")]
pub struct BadDuration {
    /// The text.
    pub text: String,
    /// What the parser said.
    pub why: String,
}

/// Parses a duration such as `30s`, `5m` or `1h 30m`.
///
/// # Errors
/// `text` is not one.
pub fn parse(text: &str) -> Result<Duration, BadDuration> {
    humantime::parse_duration(text).map_err(|e| BadDuration {
        text: text.to_owned(),
        why: e.to_string(),
    })
}

/// Writes a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serialises a duration as its text.
///
/// # Errors
/// The serialiser's.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Deserialises a duration from its text.
///
/// # Errors
/// Not a string, or not a duration.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}
