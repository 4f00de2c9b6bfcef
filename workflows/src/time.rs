//! How cutover writes instants and days: RFC 3339 in UTC, and UTC days.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats an instant as RFC 3339 in UTC with milliseconds, as the ledger
/// stores it.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Formats epoch ms the same way; out-of-range values as the number.
pub fn format_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), timestamp)
}

/// The UTC day (`YYYY-MM-DD`) of epoch ms.
pub fn day_of(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map_or_else(|| "invalid".into(), |t| t.format("%Y-%m-%d").to_string())
}
