//! Flags in the warehouse: `cutover_flags` (one row per data point, made
//! `legacy` on first use), `cutover_flag_changes` (every change, with its
//! evidence), and the evidence read from `cutover_reconciliation_reports`
//! and `cutover_read_counts`.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use workflows::dag::Cutover;

use super::{decide, Decision, Flag, Reconciled, Request, Seen, State};
use crate::warehouse::Warehouse;

/// A flag could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// The warehouse failed.
    #[error("{what} in the warehouse")]
    Warehouse {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// Someone else changed the flag between its reading and the change.
    #[error("the flag of {0} was changed by someone else meanwhile; look at it again (`cutover flags show {0}`) and retry")]
    Conflict(String),
    /// A stored value is not one this version writes.
    #[error("the flag of {data_point} holds `{value}`, which is not a state")]
    Stored {
        /// The data point.
        data_point: String,
        /// The value.
        value: String,
    },
}

fn failed(what: &'static str) -> impl FnOnce(sqlx::Error) -> FlagError {
    move |source| FlagError::Warehouse { what, source }
}

fn now() -> (String, i64) {
    let now = chrono::Utc::now();
    (workflows::time::timestamp(now), now.timestamp_millis())
}

/// A text column (MySQL hands binary-collated text over as bytes).
fn text(r: &AnyRow, column: &str, what: &'static str) -> Result<Option<String>, FlagError> {
    workflows::sql::text(r, column).map_err(failed(what))
}

fn int(r: &AnyRow, column: &str, what: &'static str) -> Result<i64, FlagError> {
    r.try_get::<i64, _>(column).map_err(failed(what))
}

fn flag_of(r: &AnyRow) -> Result<Flag, FlagError> {
    let what = "reading a flag";
    let s = |c: &str| text(r, c, what).map(Option::unwrap_or_default);
    let data_point = s("data_point")?;
    let state = s("state")?;
    let Some(state) = State::from_name(&state) else {
        return Err(FlagError::Stored {
            data_point,
            value: state,
        });
    };
    Ok(Flag {
        data_point,
        state,
        rollout: u8::try_from(int(r, "rollout", what)?.clamp(0, 100)).unwrap_or(0),
        since: s("since")?,
        full_since: text(r, "full_since", what)?,
        changed_at: s("changed_at")?,
        version: int(r, "version", what)?,
    })
}

const COLUMNS: &str = "data_point, state, rollout, since, full_since, changed_at, version";

/// Every stored flag.
///
/// # Errors
/// The warehouse failed (e.g. it is not migrated).
pub async fn stored(wh: &Warehouse) -> Result<Vec<Flag>, FlagError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM cutover_flags ORDER BY data_point"
    ))
    .fetch_all(&wh.pool)
    .await
    .map_err(failed("reading the flags"))?;
    rows.iter().map(flag_of).collect()
}

/// The flag of every data point of `points` (stored, or `legacy` when it
/// never changed), in their order.
///
/// # Errors
/// The warehouse failed.
pub async fn flags(wh: &Warehouse, points: &[&str]) -> Result<Vec<Flag>, FlagError> {
    let stored = stored(wh).await?;
    Ok(points
        .iter()
        .map(|p| {
            stored
                .iter()
                .find(|f| f.data_point == *p)
                .cloned()
                .unwrap_or_else(|| Flag::initial(p, "-"))
        })
        .collect())
}

/// The largest version of any flag: it grows with every change, so a
/// server that polls it sees a change without reading every flag.
///
/// # Errors
/// The warehouse failed.
pub async fn version(wh: &Warehouse) -> Result<(i64, i64), FlagError> {
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0), COUNT(*) FROM cutover_flags")
        .fetch_one(&wh.pool)
        .await
        .map_err(failed("reading the flags' version"))?;
    let get = |i| {
        row.try_get::<i64, _>(i)
            .map_err(failed("reading the flags' version"))
    };
    Ok((get(0)?, get(1)?))
}

/// What was seen of a data point over the evidence window.
///
/// # Errors
/// The warehouse failed.
pub async fn seen(
    wh: &Warehouse,
    flag: &Flag,
    cutover: &Cutover,
    now_ms: i64,
) -> Result<Seen, FlagError> {
    let mut seen = Seen {
        reports: cutover.reports.clone(),
        ..Seen::default()
    };
    let want = i64::from(cutover.evidence.reconciliations);
    for report in &cutover.reports {
        let rows = sqlx::query(&wh.backend.sql(
            "SELECT r.id, r.started_at, p.status \
             FROM cutover_reconciliation_reports p \
             JOIN cutover_reconciliations r ON r.id = p.reconciliation_id \
             WHERE p.report = ? ORDER BY r.started_at DESC, r.id DESC LIMIT ?",
        ))
        .bind(report)
        .bind(want)
        .fetch_all(&wh.pool)
        .await
        .map_err(failed("reading the reconciliations"))?;
        for r in rows {
            let get = |c| text(&r, c, "reading the reconciliations").map(Option::unwrap_or_default);
            seen.reconciliations.push(Reconciled {
                id: get("id")?,
                report: report.clone(),
                started_at: get("started_at")?,
                equal: get("status")? == "equal",
            });
        }
    }
    let window = i64::try_from(cutover.evidence.within.as_millis()).unwrap_or(i64::MAX);
    let oldest = workflows::time::format_ms(now_ms.saturating_sub(window));
    let recent = counted(wh, &flag.data_point, &oldest).await?;
    seen.comparisons = recent.comparisons;
    seen.mismatches = recent.mismatches;
    if let Some(since) = &flag.full_since {
        seen.legacy_reads_since_full = counted(wh, &flag.data_point, since).await?.legacy_reads;
    }
    Ok(seen)
}

/// What was counted of a data point since `since` (RFC 3339).
///
/// # Errors
/// The warehouse failed.
pub async fn counted(wh: &Warehouse, point: &str, since: &str) -> Result<Counts, FlagError> {
    let row = sqlx::query(&wh.backend.sql(&format!(
        "SELECT {}, {}, {}, {} FROM cutover_read_counts WHERE data_point = ? AND counted_at >= ?",
        sum(wh, "legacy_reads"),
        sum(wh, "warehouse_reads"),
        sum(wh, "comparisons"),
        sum(wh, "mismatches"),
    )))
    .bind(point)
    .bind(since)
    .fetch_one(&wh.pool)
    .await
    .map_err(failed("reading the read counts"))?;
    let get = |i| {
        row.try_get::<i64, _>(i)
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(failed("reading the read counts"))
    };
    Ok(Counts {
        legacy_reads: get(0)?,
        warehouse_reads: get(1)?,
        comparisons: get(2)?,
        mismatches: get(3)?,
    })
}

fn sum(wh: &Warehouse, column: &str) -> String {
    let t = match wh.backend {
        workflows::Backend::MySql => "SIGNED",
        _ => "BIGINT",
    };
    format!("CAST(COALESCE(SUM({column}), 0) AS {t})")
}

/// Counts of reads and comparisons to add.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Reads the legacy analytics answered.
    pub legacy_reads: u64,
    /// Reads the warehouse answered.
    pub warehouse_reads: u64,
    /// Shadow comparisons made.
    pub comparisons: u64,
    /// Of which mismatched.
    pub mismatches: u64,
}

impl Counts {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Adds `other`.
    pub fn add(&mut self, other: Self) {
        self.legacy_reads += other.legacy_reads;
        self.warehouse_reads += other.warehouse_reads;
        self.comparisons += other.comparisons;
        self.mismatches += other.mismatches;
    }
}

/// Adds counts of a data point, as of `counted_at` (RFC 3339: the time of
/// the latest of them, so that a read is never dated before it happened).
///
/// # Errors
/// The warehouse failed.
pub async fn count(
    wh: &Warehouse,
    point: &str,
    counted_at: &str,
    c: Counts,
) -> Result<(), FlagError> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    sqlx::query(&wh.backend.sql(
        "INSERT INTO cutover_read_counts \
         (id, data_point, counted_at, legacy_reads, warehouse_reads, comparisons, mismatches) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(point)
    .bind(counted_at)
    .bind(n(c.legacy_reads))
    .bind(n(c.warehouse_reads))
    .bind(n(c.comparisons))
    .bind(n(c.mismatches))
    .execute(&wh.pool)
    .await
    .map_err(failed("counting reads"))?;
    Ok(())
}

/// What [`set`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The flag before.
    pub before: Flag,
    /// The flag after (the same when refused or unchanged).
    pub after: Flag,
    /// The decision.
    pub decision: Decision,
    /// What the decision was made on.
    pub seen: Seen,
}

/// Asks to move a data point's flag; makes the change when the evidence
/// allows it (or it is forced with a reason), and records it.
///
/// # Errors
/// The warehouse failed, or someone else changed the flag meanwhile.
pub async fn set(
    wh: &Warehouse,
    point: &str,
    cutover: &Cutover,
    request: &Request,
    actor: &str,
) -> Result<Outcome, FlagError> {
    let (now_text, now_ms) = now();
    let before = flags(wh, &[point]).await?.remove(0);
    let seen = seen(wh, &before, cutover, now_ms).await?;
    let decision = decide(&before, request, &cutover.evidence, &seen, now_ms);
    let Decision::Allowed { evidence } = &decision else {
        return Ok(Outcome {
            after: before.clone(),
            before,
            decision,
            seen,
        });
    };
    let rollout = match request.to {
        State::Legacy | State::Shadow => 0,
        State::Warehouse => request.rollout,
        State::Retired => 100,
    };
    let full = rollout == 100;
    let after = Flag {
        data_point: point.to_owned(),
        state: request.to,
        rollout,
        since: if request.to == before.state {
            before.since.clone()
        } else {
            now_text.clone()
        },
        full_since: match (&before.full_since, full) {
            (Some(since), true) => Some(since.clone()),
            (None, true) => Some(now_text.clone()),
            (_, false) => None,
        },
        changed_at: now_text.clone(),
        version: before.version + 1,
    };
    let mut tx = wh.pool.begin().await.map_err(failed("changing a flag"))?;
    let changed = if before.version == 0 {
        sqlx::query(&wh.backend.sql(&format!(
            "INSERT INTO cutover_flags ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(point)
        .bind(after.state.name())
        .bind(i64::from(after.rollout))
        .bind(&after.since)
        .bind(after.full_since.as_deref())
        .bind(&after.changed_at)
        .bind(after.version)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected())
        .or_else(|e| {
            if workflows::db::unique_violation(&e) {
                Ok(0)
            } else {
                Err(e)
            }
        })
    } else {
        sqlx::query(&wh.backend.sql(
            "UPDATE cutover_flags SET state = ?, rollout = ?, since = ?, full_since = ?, \
             changed_at = ?, version = ? WHERE data_point = ? AND version = ?",
        ))
        .bind(after.state.name())
        .bind(i64::from(after.rollout))
        .bind(&after.since)
        .bind(after.full_since.as_deref())
        .bind(&after.changed_at)
        .bind(after.version)
        .bind(point)
        .bind(before.version)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected())
    }
    .map_err(failed("changing a flag"))?;
    if changed != 1 {
        return Err(FlagError::Conflict(point.to_owned()));
    }
    sqlx::query(&wh.backend.sql(
        "INSERT INTO cutover_flag_changes \
         (id, data_point, changed_at, actor, from_state, from_rollout, to_state, to_rollout, reason, forced, evidence) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(point)
    .bind(&now_text)
    .bind(actor)
    .bind(before.state.name())
    .bind(i64::from(before.rollout))
    .bind(after.state.name())
    .bind(i64::from(after.rollout))
    .bind(request.reason.as_deref())
    .bind(i64::from(request.force))
    .bind(serde_json::to_string(evidence).unwrap_or_default())
    .execute(&mut *tx)
    .await
    .map_err(failed("recording a flag change"))?;
    tx.commit().await.map_err(failed("changing a flag"))?;
    Ok(Outcome {
        before,
        after,
        decision,
        seen,
    })
}

/// One recorded change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The data point.
    pub data_point: String,
    /// When.
    pub changed_at: String,
    /// Who.
    pub actor: String,
    /// From (`warehouse 10%`).
    pub from: String,
    /// To.
    pub to: String,
    /// Why, when said.
    pub reason: Option<String>,
    /// Whether the guards were skipped.
    pub forced: bool,
    /// What allowed it.
    pub evidence: Vec<String>,
}

/// The newest changes first, of one data point or all.
///
/// # Errors
/// The warehouse failed.
pub async fn history(
    wh: &Warehouse,
    point: Option<&str>,
    limit: i64,
) -> Result<Vec<Change>, FlagError> {
    let filter = if point.is_some() {
        "WHERE data_point = ? "
    } else {
        ""
    };
    let sql = wh.backend.sql(&format!(
        "SELECT data_point, changed_at, actor, from_state, from_rollout, to_state, to_rollout, \
         reason, forced, evidence FROM cutover_flag_changes {filter}\
         ORDER BY changed_at DESC, id DESC LIMIT ?"
    ));
    let mut q = sqlx::query(&sql);
    if let Some(p) = point {
        q = q.bind(p.to_owned());
    }
    let what = "reading the flag changes";
    let rows = q
        .bind(limit)
        .fetch_all(&wh.pool)
        .await
        .map_err(failed(what))?;
    rows.iter()
        .map(|r| {
            let s = |c: &str| text(r, c, what).map(Option::unwrap_or_default);
            let state = |c: &str, rollout: &str| -> Result<String, FlagError> {
                let name = s(c)?;
                let pct = u8::try_from(int(r, rollout, what)?.clamp(0, 100)).unwrap_or(0);
                Ok(State::from_name(&name).map_or(name, |st| super::describe(st, pct)))
            };
            Ok(Change {
                data_point: s("data_point")?,
                changed_at: s("changed_at")?,
                actor: s("actor")?,
                from: state("from_state", "from_rollout")?,
                to: state("to_state", "to_rollout")?,
                reason: text(r, "reason", what)?,
                forced: int(r, "forced", what)? != 0,
                evidence: serde_json::from_str(&s("evidence")?).unwrap_or_default(),
            })
        })
        .collect()
}

/// A shadow comparison that mismatched.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// The data point.
    pub data_point: String,
    /// The report.
    pub report: String,
    /// When it was seen.
    pub seen_at: String,
    /// The request (JSON: report, range, filters, targeting key, side).
    pub request: serde_json::Value,
    /// How many rows differed.
    pub rows_differing: u64,
    /// A sample of the differing rows (JSON).
    pub differences: serde_json::Value,
}

/// Records a shadow comparison that mismatched.
///
/// # Errors
/// The warehouse failed.
pub async fn record_mismatch(wh: &Warehouse, m: &Mismatch) -> Result<(), FlagError> {
    sqlx::query(&wh.backend.sql(
        "INSERT INTO cutover_shadow_mismatches \
         (id, data_point, report, seen_at, request, rows_differing, differences) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&m.data_point)
    .bind(&m.report)
    .bind(&m.seen_at)
    .bind(m.request.to_string())
    .bind(i64::try_from(m.rows_differing).unwrap_or(i64::MAX))
    .bind(m.differences.to_string())
    .execute(&wh.pool)
    .await
    .map_err(failed("recording a shadow mismatch"))?;
    Ok(())
}

/// The newest shadow mismatches of a data point, newest first.
///
/// # Errors
/// The warehouse failed.
pub async fn mismatches(
    wh: &Warehouse,
    point: &str,
    limit: i64,
) -> Result<Vec<Mismatch>, FlagError> {
    let what = "reading the shadow mismatches";
    let rows = sqlx::query(&wh.backend.sql(
        "SELECT data_point, report, seen_at, request, rows_differing, differences \
         FROM cutover_shadow_mismatches WHERE data_point = ? \
         ORDER BY seen_at DESC, id DESC LIMIT ?",
    ))
    .bind(point)
    .bind(limit)
    .fetch_all(&wh.pool)
    .await
    .map_err(failed(what))?;
    rows.iter()
        .map(|r| {
            let s = |c: &str| text(r, c, what).map(Option::unwrap_or_default);
            let json = |c: &str| -> Result<serde_json::Value, FlagError> {
                Ok(serde_json::from_str(&s(c)?).unwrap_or(serde_json::Value::Null))
            };
            Ok(Mismatch {
                data_point: s("data_point")?,
                report: s("report")?,
                seen_at: s("seen_at")?,
                request: json("request")?,
                rows_differing: u64::try_from(int(r, "rows_differing", what)?).unwrap_or(0),
                differences: json("differences")?,
            })
        })
        .collect()
}
