//! Where a data point's cutover stands, for `cutover sunset`, the status
//! page and its JSON: the flag, the reads each side answered over the last
//! 1, 7 and 30 days, the shadow comparisons, the latest reconciliations,
//! the next step and whether the evidence allows it, in words.

use serde::Serialize;
use sqlx::Row;
use workflows::dag::{Cutover, Evidence};

use super::store::{self, Change, Counts, FlagError, Mismatch};
use super::{decide, Decision, Flag, Reconciled, Request, State};
use crate::warehouse::Warehouse;

/// Reads counted over the last 1, 7 and 30 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Windows {
    /// The last 24 hours.
    pub day: u64,
    /// The last 7 days.
    pub week: u64,
    /// The last 30 days.
    pub month: u64,
}

/// What was counted on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// The day, YYYY-MM-DD.
    pub day: String,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// What a release manager acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Still `legacy`: nothing is compared yet.
    NotStarted,
    /// The evidence allows the next move towards the warehouse.
    ReadyToPromote,
    /// The next move towards the warehouse lacks evidence.
    PromotionBlocked,
    /// The evidence allows retiring the legacy analytics.
    ReadyToRetire,
    /// Retiring lacks evidence.
    RetirementBlocked,
    /// Retired: the legacy analytics of its reports are not called.
    Retired,
}

/// The next step and what the evidence says of it.
#[derive(Debug, Clone, Serialize)]
pub struct Next {
    /// The state.
    pub state: State,
    /// The rollout share.
    pub rollout: u8,
    /// The decision the guards would make now.
    pub decision: Decision,
}

/// Where a data point's cutover stands.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The flag.
    pub flag: Flag,
    /// The reports it switches.
    pub reports: Vec<String>,
    /// The evidence its DAG file asks for.
    pub evidence_required: Evidence,
    /// Reads the legacy analytics answered (reports served and OpenFeature
    /// evaluations naming the legacy side).
    pub legacy_reads: Windows,
    /// Reads the warehouse answered.
    pub warehouse_reads: Windows,
    /// Shadow comparisons within the evidence window.
    pub comparisons: u64,
    /// Of which mismatched.
    pub mismatches: u64,
    /// Per UTC day over the last 14 days, oldest first.
    pub daily: Vec<Day>,
    /// The latest reconciliations of its reports, newest first per report.
    pub reconciliations: Vec<Reconciled>,
    /// The next step, unless retired.
    pub next: Option<Next>,
    /// The verdict.
    pub verdict: Verdict,
    /// The verdict in words: what to do, or what blocks it.
    pub advice: Vec<String>,
    /// The newest shadow mismatches.
    pub recent_mismatches: Vec<Mismatch>,
    /// The newest changes of the flag.
    pub changes: Vec<Change>,
}

impl Flag {
    /// The next step towards the warehouse: `shadow`, then `warehouse` at
    /// 100 %, then `retired`.
    pub fn next_step(&self) -> Option<Request> {
        let (to, rollout) = match self.state {
            State::Legacy => (State::Shadow, 0),
            State::Shadow => (State::Warehouse, 100),
            State::Warehouse if self.rollout < 100 => (State::Warehouse, 100),
            State::Warehouse => (State::Retired, 100),
            State::Retired => return None,
        };
        Some(Request {
            to,
            rollout,
            force: false,
            reason: None,
        })
    }
}

fn ago(now_ms: i64, days: i64) -> String {
    workflows::time::format_ms(now_ms - days * 86_400_000)
}

/// Where `point`'s cutover stands at `now_ms`.
///
/// # Errors
/// The warehouse failed.
pub async fn overview(
    wh: &Warehouse,
    point: &str,
    cutover: &Cutover,
    now_ms: i64,
) -> Result<Overview, FlagError> {
    let flag = store::flags(wh, &[point]).await?.remove(0);
    let seen = store::seen(wh, &flag, cutover, now_ms).await?;
    let mut legacy_reads = Windows::default();
    let mut warehouse_reads = Windows::default();
    for (days, l, w) in [
        (1, &mut legacy_reads.day, &mut warehouse_reads.day),
        (7, &mut legacy_reads.week, &mut warehouse_reads.week),
        (30, &mut legacy_reads.month, &mut warehouse_reads.month),
    ] {
        let c = store::counted(wh, point, &ago(now_ms, days)).await?;
        *l = c.legacy_reads;
        *w = c.warehouse_reads;
    }
    let daily = daily(wh, point, &ago(now_ms, 13)[..10]).await?;
    let next = flag.next_step().map(|r| Next {
        state: r.to,
        rollout: r.rollout,
        decision: decide(&flag, &r, &cutover.evidence, &seen, now_ms),
    });
    let (verdict, advice) = verdict(&flag, next.as_ref(), &cutover.reports);
    Ok(Overview {
        reports: cutover.reports.clone(),
        evidence_required: cutover.evidence,
        legacy_reads,
        warehouse_reads,
        comparisons: seen.comparisons,
        mismatches: seen.mismatches,
        daily,
        reconciliations: seen.reconciliations,
        next,
        verdict,
        advice,
        recent_mismatches: store::mismatches(wh, point, 5).await?,
        changes: store::history(wh, Some(point), 5).await?,
        flag,
    })
}

fn verdict(flag: &Flag, next: Option<&Next>, reports: &[String]) -> (Verdict, Vec<String>) {
    let point = &flag.data_point;
    let Some(next) = next else {
        return (
            Verdict::Retired,
            vec![format!(
                "retired since {}: the warehouse answers {}, and the legacy computation of {} can be deleted",
                flag.since,
                reports.join(", "),
                if reports.len() == 1 { "it" } else { "them" }
            )],
        );
    };
    let target = match next.state {
        State::Warehouse => format!("warehouse {}%", next.rollout),
        s => s.name().to_owned(),
    };
    match (&next.decision, next.state) {
        (_, State::Shadow) => (
            Verdict::NotStarted,
            vec![format!(
                "still legacy: start comparing with `cutover flags set {point} shadow`, then serve reads through `cutover serve`"
            )],
        ),
        (Decision::Allowed { evidence }, State::Retired) => (Verdict::ReadyToRetire, {
            let mut a = vec![format!(
                "ready to retire: `cutover flags set {point} retired`, then delete the legacy computation of {}",
                reports.join(", ")
            )];
            a.extend(evidence.iter().cloned());
            a
        }),
        (Decision::Refused { missing }, State::Retired) => (Verdict::RetirementBlocked, {
            let mut a = vec!["not ready to retire:".to_owned()];
            a.extend(missing.iter().cloned());
            a
        }),
        (Decision::Allowed { evidence }, _) => (Verdict::ReadyToPromote, {
            let mut a = vec![format!(
                "ready to promote to {target}: `cutover flags set {point} warehouse --rollout PCT` (a small share first)"
            )];
            a.extend(evidence.iter().cloned());
            a
        }),
        (Decision::Refused { missing }, _) => (Verdict::PromotionBlocked, {
            let mut a = vec![format!("not ready for {target}:")];
            a.extend(missing.iter().cloned());
            a
        }),
        (Decision::Unchanged, _) => (Verdict::PromotionBlocked, Vec::new()),
    }
}

/// Counts per UTC day since `since_day` (YYYY-MM-DD), oldest first.
async fn daily(wh: &Warehouse, point: &str, since_day: &str) -> Result<Vec<Day>, FlagError> {
    let sum = |c: &str| match wh.backend {
        workflows::Backend::MySql => format!("CAST(SUM({c}) AS SIGNED)"),
        _ => format!("CAST(SUM({c}) AS BIGINT)"),
    };
    let rows = sqlx::query(&wh.backend.sql(&format!(
        "SELECT SUBSTR(counted_at, 1, 10) AS day, {}, {}, {}, {} FROM cutover_read_counts \
         WHERE data_point = ? AND counted_at >= ? GROUP BY SUBSTR(counted_at, 1, 10) ORDER BY 1",
        sum("legacy_reads"),
        sum("warehouse_reads"),
        sum("comparisons"),
        sum("mismatches")
    )))
    .bind(point)
    .bind(since_day)
    .fetch_all(&wh.pool)
    .await
    .map_err(|source| FlagError::Warehouse {
        what: "reading the read counts by day",
        source,
    })?;
    rows.iter()
        .map(|r| {
            let n = |i: usize| {
                r.try_get::<i64, _>(i)
                    .map(|v| u64::try_from(v).unwrap_or(0))
                    .map_err(|source| FlagError::Warehouse {
                        what: "reading the read counts by day",
                        source,
                    })
            };
            Ok(Day {
                day: workflows::sql::text(r, "day")
                    .map_err(|source| FlagError::Warehouse {
                        what: "reading the read counts by day",
                        source,
                    })?
                    .unwrap_or_default(),
                counts: Counts {
                    legacy_reads: n(1)?,
                    warehouse_reads: n(2)?,
                    comparisons: n(3)?,
                    mismatches: n(4)?,
                },
            })
        })
        .collect()
}
