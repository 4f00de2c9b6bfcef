use serde_json::json;

use super::*;

fn report(name: ReportName, rows: Vec<Json>) -> Report {
    let rows = rows
        .into_iter()
        .map(|r| r.as_array().cloned().unwrap_or_default())
        .collect();
    Report::new(name, Grain::Daily, rows)
}

#[test]
fn equal_reports_agree_day_by_day_whatever_the_row_order() {
    let a = report(
        ReportName::ViewsDaily,
        vec![
            json!(["2026-01-01", "p1", 3, 2]),
            json!(["2026-01-02", "p2", 1, 1]),
        ],
    );
    let b = report(
        ReportName::ViewsDaily,
        vec![
            json!(["2026-01-02", "p2", 1, 1]),
            json!(["2026-01-01", "p1", 3, 2]),
        ],
    );
    let days = compare(&a, &b, 20);
    assert_eq!(days.len(), 2);
    assert!(days
        .iter()
        .all(|d| d.status == Status::Equal && d.rows.is_empty()));
    assert_eq!(days[0].legacy.as_ref().unwrap().sums["views"], json!(3));
}

#[test]
fn a_swapped_value_differs_although_counts_and_sums_agree() {
    let a = report(
        ReportName::ViewsDaily,
        vec![
            json!(["2026-01-01", "p1", 3, 2]),
            json!(["2026-01-01", "p2", 1, 1]),
        ],
    );
    let b = report(
        ReportName::ViewsDaily,
        vec![
            json!(["2026-01-01", "p1", 1, 2]),
            json!(["2026-01-01", "p2", 3, 1]),
        ],
    );
    let (sa, sb) = (
        Summary::of(&a.columns, a.groups, &a.rows.iter().collect::<Vec<_>>()),
        Summary::of(&b.columns, b.groups, &b.rows.iter().collect::<Vec<_>>()),
    );
    assert_eq!((sa.rows, &sa.sums), (sb.rows, &sb.sums));
    assert_ne!(sa.checksum, sb.checksum);
    let days = compare(&a, &b, 20);
    assert_eq!(days[0].status, Status::Differs);
    assert_eq!(days[0].rows_differing, 2);
    assert_eq!(days[0].rows[0].key, vec![json!("2026-01-01"), json!("p1")]);
    assert_eq!(days[0].rows[0].fields, vec!["views"]);
}

#[test]
fn averages_agree_within_the_declared_tolerance_only() {
    let row = |avg: f64| json!(["2026-01-01", "p1", 1, 3, 10, avg]);
    let a = report(ReportName::SlideEngagement, vec![row(10.0 / 3.0)]);
    let near = report(ReportName::SlideEngagement, vec![row(10.0 / 3.0 + 1e-12)]);
    let far = report(ReportName::SlideEngagement, vec![row(3.4)]);
    assert_eq!(compare(&a, &near, 20)[0].status, Status::Equal);
    let days = compare(&a, &far, 20);
    assert_eq!(days[0].status, Status::Differs);
    assert_eq!(days[0].rows[0].fields, vec!["avg_dwell_ms"]);
}

#[test]
fn a_day_on_one_side_only_lists_its_rows_and_the_sample_bounds_them() {
    let a = report(
        ReportName::SharesDaily,
        (0..30)
            .map(|i| json!(["2026-01-01", format!("c{i:02}"), 1]))
            .collect(),
    );
    let b = report(ReportName::SharesDaily, vec![]);
    let days = compare(&a, &b, 5);
    assert_eq!(days[0].status, Status::Differs);
    assert!(days[0].warehouse.is_none());
    assert_eq!((days[0].rows_differing, days[0].rows.len()), (30, 5));
    assert!(days[0].rows[0].warehouse.is_none());
}

#[test]
fn every_rule_is_declared_once_and_avg_dwell_is_relative() {
    assert_eq!(
        rule("avg_dwell_ms").tolerance,
        Tolerance::Relative { within: 1e-9 }
    );
    assert_eq!(rule("views").tolerance, Tolerance::Exact);
    assert!(!rule("avg_dwell_ms").in_checksum);
}

#[test]
fn days_parse_to_their_utc_bounds() {
    assert_eq!(
        drill::day_bounds("2026-01-02"),
        Some((1_767_312_000_000, 1_767_398_400_000))
    );
    assert_eq!(drill::day_bounds("2026-13-02"), None);
}

#[test]
fn a_day_keeps_one_key_per_narrowing_value_and_none_when_too_many() {
    let keys = |n: usize| -> Vec<Vec<Json>> {
        (0..n)
            .flat_map(|i| {
                [1, 2].map(|slide| vec![json!("2026-01-01"), json!(format!("p{i}")), json!(slide)])
            })
            .collect()
    };
    let kept = drill::narrowing(keys(3));
    assert_eq!(kept.len(), 3, "one per presentation: {kept:?}");
    assert!(drill::narrowing(keys(10_000)).is_empty());
    assert!(drill::narrowing(vec![vec![json!("2026-01-01")]]).is_empty());
}

#[tokio::test]
async fn a_side_must_hand_out_its_days_in_order() {
    let rows: Vec<Result<Vec<Json>, ReconcileError>> =
        ["2026-01-01", "2026-01-01", "2026-01-03", "2026-01-02"]
            .into_iter()
            .map(|d| vec![json!(d)])
            .map(Ok)
            .collect();
    let mut side = Side::start(
        "views_daily",
        "legacy",
        Box::pin(futures::stream::iter(rows)),
    )
    .await
    .unwrap();
    assert_eq!(side.day(), Some("2026-01-01"));
    assert!(side.take("2026-01-01").await.unwrap().is_some());
    assert!(side.take("2026-01-01").await.unwrap().is_some());
    assert!(
        side.take("2026-01-01").await.unwrap().is_none(),
        "the day ended"
    );
    assert_eq!(side.rows, 2);
    let err = side.take("2026-01-03").await.unwrap_err().to_string();
    assert!(
        err.contains("the legacy side of views_daily gave the day 2026-01-02 after 2026-01-03"),
        "{err}"
    );
}

/// A day's rows go by one at a time, in any order within the day: its
/// summary is the one of the whole day's rows, and a differing day is
/// matched row by row from the rows written aside.
#[test]
fn rows_set_aside_come_back_for_a_differing_day() {
    let mut aside = Aside::new().unwrap();
    let rows = [
        vec![json!("2026-01-01"), json!("p2"), json!(3), json!(1)],
        vec![json!("2026-01-01"), json!("p1"), json!(5), json!(2)],
    ];
    let columns = ReportName::ViewsDaily.columns();
    let mut sums = Sums::default();
    for row in &rows {
        sums.add(columns, 2, row);
        aside.write(0, row).unwrap();
    }
    let whole = Report::new(ReportName::ViewsDaily, Grain::Daily, rows.to_vec());
    assert_eq!(
        sums.finish(),
        Summary::of(columns, 2, &whole.rows.iter().collect::<Vec<_>>())
    );
    assert_eq!(aside.read(0).unwrap(), rows.to_vec());
    assert!(aside.read(1).unwrap().is_empty());
    aside.clear().unwrap();
    aside.write(1, &rows[0]).unwrap();
    assert!(
        aside.read(0).unwrap().is_empty(),
        "cleared for the next day"
    );
    assert_eq!(aside.read(1).unwrap(), vec![rows[0].clone()]);
}
