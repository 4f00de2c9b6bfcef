//! Reconciliations stored in the warehouse (`cutover_reconciliations`, one
//! row per report in `cutover_reconciliation_reports`) and read back.

use serde::Serialize;
use sqlx::Row;
use workflows::sql::text;

use super::{Reconciliation, Status};
use crate::warehouse::Warehouse;

/// Stores a reconciliation, with its result as JSON.
///
/// # Errors
/// The warehouse refused the rows (e.g. it is not migrated).
pub async fn record(wh: &Warehouse, r: &Reconciliation) -> Result<(), sqlx::Error> {
    let (days, differing) = r.totals();
    let result = serde_json::to_string(r).unwrap_or_default();
    let status = |s: Status| match s {
        Status::Equal => "equal",
        Status::Differs => "differs",
    };
    let mut tx = wh.pool.begin().await?;
    sqlx::query(&wh.backend.sql(
        "INSERT INTO cutover_reconciliations \
         (id, started_at, finished_at, origin, range_from, range_to, status, days, days_differing, result) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(&r.id)
    .bind(&r.started_at)
    .bind(workflows::time::timestamp(chrono::Utc::now()))
    .bind(&r.origin)
    .bind(r.from.as_deref())
    .bind(r.to.as_deref())
    .bind(status(r.status))
    .bind(days as i64)
    .bind(differing as i64)
    .bind(result)
    .execute(&mut *tx)
    .await?;
    for report in &r.reports {
        sqlx::query(&wh.backend.sql(
            "INSERT INTO cutover_reconciliation_reports \
             (reconciliation_id, report, status, days, days_differing, legacy_rows, warehouse_rows) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&r.id)
        .bind(report.report.name())
        .bind(status(report.status))
        .bind(report.days.len() as i64)
        .bind(report.differing().count() as i64)
        .bind(report.legacy_rows as i64)
        .bind(report.warehouse_rows as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// One stored reconciliation, without its result.
#[derive(Debug, Clone, Serialize)]
pub struct Past {
    /// Its id.
    pub id: String,
    /// When it started.
    pub started_at: String,
    /// When it finished.
    pub finished_at: String,
    /// Who ran it.
    pub origin: String,
    /// The first day compared, when bounded.
    pub from: Option<String>,
    /// The day after the last, when bounded.
    pub to: Option<String>,
    /// `equal` or `differs`.
    pub status: String,
    /// Report days compared.
    pub days: i64,
    /// Report days that differ.
    pub days_differing: i64,
    /// The reports, with their status: `views_daily=equal`.
    pub reports: Vec<String>,
}

/// The latest `limit` reconciliations, newest first; only those covering
/// `report` when given.
///
/// # Errors
/// The warehouse could not be read.
pub async fn history(
    wh: &Warehouse,
    report: Option<&str>,
    limit: i64,
) -> Result<Vec<Past>, sqlx::Error> {
    let filter = if report.is_some() {
        " WHERE id IN (SELECT reconciliation_id FROM cutover_reconciliation_reports WHERE report = ?)"
    } else {
        ""
    };
    let sql = wh.backend.sql(&format!(
        "SELECT id, started_at, finished_at, origin, range_from, range_to, status, days, days_differing \
         FROM cutover_reconciliations{filter} ORDER BY started_at DESC, id DESC LIMIT ?"
    ));
    let mut q = sqlx::query(&sql);
    if let Some(report) = report {
        q = q.bind(report);
    }
    let rows = q.bind(limit).fetch_all(&wh.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let s = |c: &str| text(&r, c).map(Option::unwrap_or_default);
        let id = s("id")?;
        let reports = sqlx::query(&wh.backend.sql(
            "SELECT report, status FROM cutover_reconciliation_reports \
             WHERE reconciliation_id = ? ORDER BY report",
        ))
        .bind(&id)
        .fetch_all(&wh.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(format!(
                "{}={}",
                text(row, "report")?.unwrap_or_default(),
                text(row, "status")?.unwrap_or_default()
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.push(Past {
            id,
            started_at: s("started_at")?,
            finished_at: s("finished_at")?,
            origin: s("origin")?,
            from: text(&r, "range_from")?,
            to: text(&r, "range_to")?,
            status: s("status")?,
            days: r.try_get("days")?,
            days_differing: r.try_get("days_differing")?,
            reports,
        });
    }
    Ok(out)
}

/// The stored result of reconciliation `id` (as JSON), if there is one.
///
/// # Errors
/// The warehouse could not be read.
pub async fn load(wh: &Warehouse, id: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let row = sqlx::query(
        &wh.backend
            .sql("SELECT result FROM cutover_reconciliations WHERE id = ?"),
    )
    .bind(id)
    .fetch_optional(&wh.pool)
    .await?;
    Ok(match row {
        Some(r) => text(&r, "result")?.and_then(|t| serde_json::from_str(&t).ok()),
        None => None,
    })
}
