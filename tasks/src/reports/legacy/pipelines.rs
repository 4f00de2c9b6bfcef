//! The event model's validity rules as MongoDB filters, and the
//! aggregation pipelines of the reports.

use bson::{doc, Bson, Document};

use super::SEP;
use crate::reports::{Grain, Range, ReportName};

/// Null or missing. (`{ path: null }` says the same, but inside an `$or`
/// some MongoDB wire-protocol servers evaluate only this form.)
fn null_or_missing(path: &str) -> Document {
    doc! { path: { "$in": [Bson::Null] } }
}

/// A string, null or missing.
fn nullable_string(path: &str) -> Document {
    doc! { "$or": [ { path: { "$type": "string" } }, null_or_missing(path) ] }
}

/// A 32- or 64-bit integer of at least `min`.
fn int_at_least(path: &str, min: i32) -> Document {
    doc! { "$and": [
        { "$or": [ { path: { "$type": "int" } }, { path: { "$type": "long" } } ] },
        { path: { "$gte": min } },
    ] }
}

/// A date: only dates compare with a date in a query, so "at or after the
/// earliest date" holds for every date and nothing else. (`$type: "date"`
/// says the same, but some MongoDB wire-protocol servers do not evaluate
/// it.)
fn date(path: &str) -> Document {
    doc! { path: { "$gte": bson::DateTime::from_millis(EARLIEST_MS) } }
}

/// 0001-01-01T00:00:00Z.
const EARLIEST_MS: i64 = -62_135_596_800_000;

/// The event model's validity rule for documents of type `ty`, as a
/// MongoDB filter (the type included).
///
/// MongoDB matches `$type`, `$in` and comparisons against the elements of
/// an array, so the rule also says that no field it checks is an array
/// (the warehouse's extract rejects arrays the same way).
pub fn valid(ty: &str) -> Document {
    let devices = vec!["desktop", "mobile", "tablet"];
    let string = |p: &str| doc! { p: { "$type": "string" } };
    let mut all = vec![doc! { "type": ty }, string("event_id"), date("ts")];
    let mut paths = vec!["event_id", "ts", "payload"];
    match ty {
        "presentation.viewed" => {
            all.extend([
                string("presentation_id"),
                string("session_id"),
                nullable_string("user_id"),
                doc! { "payload.device": { "$in": devices.clone() } },
                nullable_string("payload.referrer"),
            ]);
            paths.extend([
                "presentation_id",
                "session_id",
                "user_id",
                "payload.device",
                "payload.referrer",
            ]);
        }
        "slide.viewed" => {
            all.extend([
                string("presentation_id"),
                string("session_id"),
                nullable_string("user_id"),
                doc! { "$or": [ { "v": { "$type": "int" } }, { "v": { "$type": "long" } }, null_or_missing("v") ] },
                int_at_least("payload.slide", 1),
                // v1 names the dwell `dwell_ms`, v2 `dwellMs`.
                doc! { "$or": [
                    int_at_least("payload.dwell_ms", 0),
                    { "$and": [ null_or_missing("payload.dwell_ms"), int_at_least("payload.dwellMs", 0) ] },
                ] },
            ]);
            paths.extend([
                "presentation_id",
                "session_id",
                "user_id",
                "v",
                "payload.slide",
                "payload.dwell_ms",
                "payload.dwellMs",
            ]);
        }
        "presentation.shared" => {
            all.extend([
                string("presentation_id"),
                string("user_id"),
                doc! { "payload.channel": { "$in": ["email", "link", "slack", "embed"] } },
            ]);
            paths.extend(["presentation_id", "user_id", "payload.channel"]);
        }
        "session.started" => {
            all.extend([
                string("session_id"),
                nullable_string("user_id"),
                doc! { "payload.device": { "$in": devices } },
            ]);
            paths.extend(["session_id", "user_id", "payload.device"]);
        }
        "session.ended" => {
            all.push(string("session_id"));
            paths.push("session_id");
        }
        "user.registered" | "user.plan_changed" => {
            all.extend([
                string("user_id"),
                doc! { "payload.plan": { "$in": ["free", "pro", "team"] } },
            ]);
            paths.extend(["user_id", "payload.plan"]);
        }
        _ => {}
    }
    let arrays: Vec<Document> = paths
        .iter()
        .map(|p| doc! { *p: { "$type": "array" } })
        .collect();
    all.push(doc! { "$nor": arrays });
    doc! { "$and": all }
}

/// The event types a report reads.
pub(super) fn types(name: ReportName) -> &'static [&'static str] {
    match name {
        ReportName::ViewsDaily => &["presentation.viewed"],
        ReportName::SlideEngagement => &["slide.viewed"],
        ReportName::SharesDaily => &["presentation.shared"],
        ReportName::SessionsDaily => &["session.started", "session.ended"],
        ReportName::ViewsByPlan => &[
            "presentation.viewed",
            "user.registered",
            "user.plan_changed",
        ],
    }
}

fn range_filter(range: Range) -> Document {
    let mut ts = Document::new();
    if let Some(from) = range.from_ms {
        ts.insert("$gte", bson::DateTime::from_millis(from));
    }
    if let Some(to) = range.to_ms {
        ts.insert("$lt", bson::DateTime::from_millis(to));
    }
    if ts.is_empty() {
        Document::new()
    } else {
        doc! { "ts": ts }
    }
}

/// `$match` on the valid documents of `ty` in `range`.
pub(super) fn match_valid(ty: &str, range: Range) -> Document {
    doc! { "$match": { "$and": [valid(ty), range_filter(range)] } }
}

fn day_expr(field: &str) -> Bson {
    Bson::Document(doc! { "$dateToString": { "format": "%Y-%m-%d", "date": field } })
}

/// The aggregation pipeline of a report at a grain (for `views_by_plan`
/// and `sessions_daily`, of their first half; see [`plan_history_pipeline`]
/// and [`session_ends_pipeline`]).
pub fn pipeline(name: ReportName, range: Range, grain: Grain) -> Vec<Document> {
    let slide_key = match grain {
        Grain::Report => Bson::Array(vec![
            "$presentation_id".into(),
            SEP.into(),
            doc! { "$toString": "$slide" }.into(),
        ]),
        Grain::Daily => Bson::Array(vec![
            day_expr("$ts"),
            SEP.into(),
            "$presentation_id".into(),
            SEP.into(),
            doc! { "$toString": "$slide" }.into(),
        ]),
    };
    match name {
        ReportName::ViewsDaily => vec![
            match_valid("presentation.viewed", range),
            doc! { "$group": {
                "_id": "$event_id",
                "ts": { "$first": "$ts" },
                "presentation_id": { "$first": "$presentation_id" },
                "user_id": { "$first": "$user_id" },
            } },
            doc! { "$project": {
                "key": { "$concat": [day_expr("$ts"), SEP, "$presentation_id"] },
                "user_id": 1,
            } },
            doc! { "$group": {
                "_id": "$key",
                "views": { "$sum": 1 },
                "viewers": { "$addToSet": "$user_id" },
            } },
        ],
        ReportName::SlideEngagement => vec![
            match_valid("slide.viewed", range),
            doc! { "$group": {
                "_id": "$event_id",
                "ts": { "$first": "$ts" },
                "presentation_id": { "$first": "$presentation_id" },
                "slide": { "$first": "$payload.slide" },
                "dwell": { "$first": { "$ifNull": ["$payload.dwell_ms", "$payload.dwellMs"] } },
            } },
            doc! { "$project": {
                "key": { "$concat": slide_key },
                "dwell": 1,
            } },
            doc! { "$group": {
                "_id": "$key",
                "views": { "$sum": 1 },
                "total_dwell_ms": { "$sum": "$dwell" },
            } },
        ],
        ReportName::SharesDaily => vec![
            match_valid("presentation.shared", range),
            doc! { "$group": {
                "_id": "$event_id",
                "ts": { "$first": "$ts" },
                "channel": { "$first": "$payload.channel" },
            } },
            doc! { "$project": { "key": { "$concat": [day_expr("$ts"), SEP, "$channel"] } } },
            doc! { "$group": { "_id": "$key", "shares": { "$sum": 1 } } },
        ],
        // The starts; the ends come from [`session_ends_pipeline`].
        // The range applies to each session's first start.
        ReportName::SessionsDaily => {
            let mut stages = vec![
                match_valid("session.started", Range::default()),
                doc! { "$sort": { "ts": 1, "_id": 1 } },
                doc! { "$group": {
                    "_id": "$session_id",
                    "start": { "$first": "$ts" },
                    "device": { "$first": "$payload.device" },
                } },
            ];
            if let Some(Bson::Document(bounds)) = range_filter(range).get("ts") {
                stages.push(doc! { "$match": { "start": bounds.clone() } });
            }
            stages
        }
        ReportName::ViewsByPlan => vec![
            match_valid("presentation.viewed", range),
            doc! { "$group": {
                "_id": "$event_id",
                "ts": { "$first": "$ts" },
                "user_id": { "$first": "$user_id" },
            } },
        ],
    }
}

/// The stages that sort the output of a report's [`pipeline`] at the
/// daily grain by day, as the day is written in text (the order in which
/// the warehouse and the events file hand out their days): the group key,
/// whose first part is the day, or the day of a view or of a session's
/// start.
pub(super) fn by_day(name: ReportName) -> Vec<Document> {
    let day_of = |field: &str| {
        vec![
            doc! { "$project": { "ts": 1, "user_id": 1, "start": 1, "device": 1, "day": day_expr(field) } },
            doc! { "$sort": { "day": 1 } },
        ]
    };
    match name {
        ReportName::ViewsByPlan => day_of("$ts"),
        ReportName::SessionsDaily => day_of("$start"),
        _ => vec![doc! { "$sort": { "_id": 1 } }],
    }
}

/// The first valid end of every session.
pub fn session_ends_pipeline() -> Vec<Document> {
    vec![
        match_valid("session.ended", Range::default()),
        doc! { "$sort": { "ts": 1, "_id": 1 } },
        doc! { "$group": { "_id": "$session_id", "end": { "$first": "$ts" } } },
    ]
}

/// Every valid registration and plan change, in the order that decides
/// the plan at an instant: by user, time, then `_id`.
pub fn plan_history_pipeline() -> Vec<Document> {
    vec![
        doc! { "$match": { "$or": [valid("user.registered"), valid("user.plan_changed")] } },
        doc! { "$project": { "user_id": 1, "ts": 1, "plan": "$payload.plan" } },
        doc! { "$sort": { "user_id": 1, "ts": 1, "_id": 1 } },
    ]
}
