//! How cutover writes instants and days: RFC 3339 in UTC, and UTC days.

/// Formats epoch ms as an RFC 3339 instant in UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The UTC day (`YYYY-MM-DD`) of epoch ms.
pub fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| "invalid".into(), |t| t.format("%Y-%m-%d").to_string())
}
