//! A DAG's schedule: a cron expression evaluated in a time zone.

use chrono::{DateTime, Offset, SubsecRound, Utc};
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
    /// What a scheduler that starts does about the ticks missed while no
    /// scheduler ran.
    pub catch_up: CatchUp,
    parsed: Cron,
}

/// What a scheduler that starts does about the ticks missed since the last
/// tick any scheduler claimed (`[schedule] catch_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Runs none of them: the next run is the next tick.
    None,
    /// Runs the latest one at once. An incremental DAG reads from its
    /// watermark, so that one run loads everything the missed ones would
    /// have.
    #[default]
    Latest,
    /// Runs every one, oldest first, one at a time (at most
    /// [`MAX_CATCH_UP`], the latest ones), each with its own tick.
    All,
}

/// The most missed ticks `catch_up = "all"` runs.
pub const MAX_CATCH_UP: usize = 1000;

impl CatchUp {
    /// The policies as DAG files name them.
    pub const NAMES: [&'static str; 3] = ["none", "latest", "all"];

    /// The policy named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "latest" => Some(Self::Latest),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    /// Its name in DAG files.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latest => "latest",
            Self::All => "all",
        }
    }
}

impl Schedule {
    /// Parses a cron expression and a time zone name.
    ///
    /// # Errors
    /// The first part that does not parse.
    pub fn new(cron: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let parsed = parse_cron(cron)?;
        let timezone: Tz = timezone
            .parse()
            .map_err(|_| ScheduleError::TimeZone(timezone.to_owned()))?;
        Ok(Self {
            cron: cron.to_owned(),
            timezone,
            catch_up: CatchUp::default(),
            parsed,
        })
    }

    /// The same schedule with another catch-up policy.
    pub fn with_catch_up(self, catch_up: CatchUp) -> Self {
        Self { catch_up, ..self }
    }

    /// The missed ticks to run now, oldest first, by the catch-up policy:
    /// the fire times after `last_tick` (the latest tick any scheduler
    /// claimed) up to and including `now`.
    pub fn missed(&self, last_tick: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let wanted = match self.catch_up {
            CatchUp::None => return Vec::new(),
            CatchUp::Latest => 1,
            CatchUp::All => MAX_CATCH_UP,
        };
        // Only the latest ticks count: look back from `now` over a window
        // that doubles until it holds enough of them or reaches
        // `last_tick`, rather than walking every tick since `last_tick`
        // (a schedule every second, down for a week).
        let mut window = chrono::Duration::seconds(1);
        loop {
            let from = (now - window).max(last_tick);
            let mut ticks = Vec::new();
            let mut t = from;
            while let Some(n) = self.next_after(t).filter(|n| *n <= now) {
                ticks.push(n);
                t = n;
            }
            if ticks.len() >= wanted || from == last_tick {
                let keep = ticks.len().saturating_sub(wanted);
                return ticks.split_off(keep);
            }
            window = window * 2;
        }
    }

    /// The first fire time strictly after `after`.
    ///
    /// Daylight-saving changes neither skip nor double a run:
    /// - A schedule at fixed hours (the hour field is not `*`) fires once per
    ///   matching local time: a time in the hour skipped in spring fires at
    ///   the end of the gap (02:30 becomes 03:00), and a time in the hour
    ///   repeated in autumn fires on its first pass only.
    /// - A schedule that fires every hour (the hour field is `*`) follows
    ///   real time: it fires in both passes of a repeated hour and not in a
    ///   skipped one, so its runs stay evenly spaced.
    ///
    /// Fire times are whole seconds, whatever the fraction of `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // croner keeps the fraction of a second it is asked from; every
        // process must agree on a tick to the millisecond.
        let after = after.trunc_subsecs(0);
        let local = after.with_timezone(&self.timezone);
        // croner searches wall-clock time: from inside a repeated hour it can
        // answer the first pass of a later wall time, an instant already
        // past; search on from there until the answer is after `after`.
        let mut from = local;
        let mut first = None;
        for _ in 0..8 {
            let next = self.parsed.find_next_occurrence(&from, false).ok()?;
            let adjusted = !self.parsed.is_time_matching(&next).unwrap_or(false);
            if next.with_timezone(&Utc) > after && !(adjusted && self.every_hour()) {
                first = Some(next.with_timezone(&Utc));
                break;
            }
            from = next;
        }
        if !self.every_hour() {
            return first;
        }
        // The second pass of a repeated hour: the same wall times at the
        // offsets in force at `after` and at the first answer, kept where
        // the zone has that offset at that instant (a real instant of the
        // zone that the wall-clock search passed over).
        let mut best = first;
        let offsets = [
            Some(local.offset().fix()),
            first.map(|f| f.with_timezone(&self.timezone).offset().fix()),
        ];
        for offset in offsets.into_iter().flatten() {
            let candidate = self
                .parsed
                .find_next_occurrence(&after.with_timezone(&offset), false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
                .filter(|t| *t > after && t.with_timezone(&self.timezone).offset().fix() == offset);
            best = match (best, candidate) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        best
    }

    /// Whether the hour field is `*`.
    fn every_hour(&self) -> bool {
        let fields: Vec<&str> = self.cron.split_whitespace().collect();
        let hour = if fields.len() >= 6 { 2 } else { 1 };
        fields.get(hour) == Some(&"*")
    }
}

/// A schedule that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression.
    #[error("`{cron}` is not a valid cron expression: {source}")]
    Cron {
        /// The expression.
        cron: String,
        /// What croner said.
        #[source]
        source: croner::errors::CronError,
    },
    /// The time zone.
    #[error("`{0}` is not an IANA time zone such as `UTC` or `Europe/Berlin`")]
    TimeZone(String),
}

impl ScheduleError {
    /// The DAG file field the error is about: `cron` or `timezone`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Cron { .. } => "cron",
            Self::TimeZone(_) => "timezone",
        }
    }
}

/// Parses a cron expression with optional seconds.
///
/// # Errors
/// Why the expression is invalid.
pub fn parse_cron(cron: &str) -> Result<Cron, ScheduleError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(cron)
        .map_err(|source| ScheduleError::Cron {
            cron: cron.to_owned(),
            source,
        })
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

    /// The next `n` fire times from `from` (UTC).
    fn fires(cron: &str, zone: &str, from: (i32, u32, u32, u32, u32), n: usize) -> Vec<String> {
        let s = Schedule::new(cron, zone).unwrap();
        let mut t = Utc
            .with_ymd_and_hms(from.0, from.1, from.2, from.3, from.4, 0)
            .unwrap();
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.format("%m-%d %H:%M").to_string()
            })
            .collect()
    }

    #[test]
    fn a_daily_run_in_a_skipped_hour_runs_once_at_the_end_of_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", (2026, 3, 27, 12, 0), 3),
            ["03-28 01:30", "03-29 01:00", "03-30 00:30"]
        );
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        assert_eq!(
            fires("30 2 * * *", "America/New_York", (2026, 3, 6, 12, 0), 3),
            ["03-07 07:30", "03-08 07:00", "03-09 06:30"]
        );
    }

    #[test]
    fn a_daily_run_in_a_repeated_hour_runs_once() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC).
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", (2026, 10, 23, 12, 0), 3),
            ["10-24 00:30", "10-25 00:30", "10-26 01:30"]
        );
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC).
        assert_eq!(
            fires("30 1 * * *", "America/New_York", (2026, 10, 30, 12, 0), 3),
            ["10-31 05:30", "11-01 05:30", "11-02 06:30"]
        );
        // Asked from inside the second pass, after the run: the next day,
        // not the first pass again.
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", (2026, 10, 25, 1, 10), 1),
            ["10-26 01:30"]
        );
        assert_eq!(
            fires("30 1 * * *", "America/New_York", (2026, 11, 1, 6, 10), 1),
            ["11-02 06:30"]
        );
    }

    #[test]
    fn an_hourly_run_stays_an_hour_apart_in_both_directions() {
        for (zone, spring, autumn) in [
            ("Europe/Berlin", (2026, 3, 28, 23, 0), (2026, 10, 24, 22, 0)),
            ("America/New_York", (2026, 3, 8, 4, 0), (2026, 11, 1, 3, 0)),
        ] {
            for (cron, from, step) in [
                ("0 30 * * * *", spring, 60),
                ("0 30 * * * *", autumn, 60),
                ("0 */15 * * * *", spring, 15),
                ("0 */15 * * * *", autumn, 15),
            ] {
                let s = Schedule::new(cron, zone).unwrap();
                let mut t = Utc
                    .with_ymd_and_hms(from.0, from.1, from.2, from.3, from.4, 0)
                    .unwrap();
                let mut prev = s.next_after(t).unwrap();
                t = prev;
                for _ in 0..(6 * 60 / step) {
                    t = s.next_after(t).unwrap();
                    assert_eq!(
                        (t - prev).num_minutes(),
                        step,
                        "{cron} in {zone}: {prev} then {t}"
                    );
                    prev = t;
                }
            }
        }
    }

    #[test]
    fn fire_times_are_whole_seconds() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let every_two = Schedule::new("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            every_two.next_after(at("2026-01-01T12:00:00.5Z")),
            Some(at("2026-01-01T12:00:02Z"))
        );
        assert_eq!(
            every_two.next_after(at("2026-01-01T12:00:01.999Z")),
            Some(at("2026-01-01T12:00:02Z"))
        );
        let nightly = Schedule::new("0 30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            nightly.next_after(at("2026-01-01T12:00:00.5Z")),
            Some(at("2026-01-02T01:30:00Z"))
        );
    }

    #[test]
    fn catch_up_policies_pick_the_missed_ticks() {
        let at = |h, m| Utc.with_ymd_and_hms(2026, 1, 10, h, m, 0).unwrap();
        let hourly = Schedule::new("0 0 * * * *", "UTC").unwrap();
        let last = at(2, 0);
        let now = at(5, 30);
        assert_eq!(
            hourly
                .clone()
                .with_catch_up(CatchUp::None)
                .missed(last, now),
            Vec::<DateTime<Utc>>::new()
        );
        assert_eq!(
            hourly
                .clone()
                .with_catch_up(CatchUp::Latest)
                .missed(last, now),
            [at(5, 0)]
        );
        assert_eq!(
            hourly.clone().with_catch_up(CatchUp::All).missed(last, now),
            [at(3, 0), at(4, 0), at(5, 0)]
        );
        // Nothing missed: nothing to run, whatever the policy.
        assert_eq!(
            hourly
                .clone()
                .with_catch_up(CatchUp::All)
                .missed(at(5, 0), now),
            Vec::<DateTime<Utc>>::new()
        );
        // `all` keeps the latest MAX_CATCH_UP ticks.
        let every_second = Schedule::new("* * * * * *", "UTC")
            .unwrap()
            .with_catch_up(CatchUp::All);
        let many = every_second.missed(at(0, 0), at(1, 0));
        assert_eq!(many.len(), MAX_CATCH_UP);
        assert_eq!(many.last(), Some(&at(1, 0)));
        assert!(many.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 1));
        // A week of missed seconds: only the latest ones are looked at.
        let week_ago = Utc.with_ymd_and_hms(2026, 1, 3, 1, 0, 0).unwrap();
        let latest = Schedule::new("* * * * * *", "UTC")
            .unwrap()
            .with_catch_up(CatchUp::Latest);
        assert_eq!(latest.missed(week_ago, at(1, 0)), [at(1, 0)]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            Schedule::new("61 * * * *", "UTC").unwrap_err().field(),
            "cron"
        );
        assert_eq!(
            Schedule::new("0 2 * * *", "Mars/Olympus")
                .unwrap_err()
                .field(),
            "timezone"
        );
    }
}
