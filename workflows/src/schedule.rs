//! A DAG's schedule: a cron expression evaluated in a time zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// When a DAG runs: a cron expression (five fields, or six with seconds
/// first) in an IANA time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    pub cron: String,
    /// The zone the expression is evaluated in.
    pub timezone: Tz,
    parsed: Cron,
}

impl Schedule {
    /// Parses a cron expression and a time zone name.
    ///
    /// # Errors
    /// `(field, message)` for the first part that does not parse.
    pub fn new(cron: &str, timezone: &str) -> Result<Self, (&'static str, String)> {
        let parsed = parse_cron(cron).map_err(|e| ("cron", e))?;
        let timezone: Tz = timezone.parse().map_err(|_| {
            (
                "timezone",
                format!("`{timezone}` is not an IANA time zone such as `UTC` or `Europe/Berlin`"),
            )
        })?;
        Ok(Self {
            cron: cron.to_owned(),
            timezone,
            parsed,
        })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.parsed
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Parses a cron expression with optional seconds.
///
/// # Errors
/// Why the expression is invalid.
pub fn parse_cron(cron: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(cron)
        .map_err(|e| format!("`{cron}` is not a valid cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn next_fire_in_zone() {
        let s = Schedule::new("0 30 2 * * *", "Europe/Berlin").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        // 02:30 in Berlin in winter is 01:30 UTC.
        assert_eq!(
            s.next_after(after),
            Some(Utc.with_ymd_and_hms(2026, 1, 11, 1, 30, 0).unwrap())
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Schedule::new("61 * * * *", "UTC").unwrap_err().0, "cron");
        assert_eq!(
            Schedule::new("0 2 * * *", "Mars/Olympus").unwrap_err().0,
            "timezone"
        );
    }
}
