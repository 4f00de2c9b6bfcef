//! The settings of `verify.checks`: DAG text in, the problems out.

use std::path::Path;

use workflows::dag::{load_dir, parse};
use workflows::{Dag, DagError};

use super::*;
use crate::TaskKind;

/// A DAG with an extract, and a checks task with `settings`.
fn dag(settings: &str) -> Result<Dag<TaskKind>, Vec<DagError>> {
    let text = format!(
        r#"
name = "t"
data_point = "views"

[[tasks]]
id = "extract"
kind = "extract.mongo"
types = ["presentation.viewed"]
[tasks.columns]
event_id = {{ path = "event_id", type = "string" }}
ts = {{ path = "ts", type = "timestamp" }}

[[tasks]]
id = "checks"
kind = "verify.checks"
depends_on = ["extract"]
{settings}
"#
    );
    parse(Path::new("t.toml"), &text)
}

/// The problems as `field: message`.
fn problems(settings: &str) -> Vec<String> {
    match dag(settings) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field.unwrap_or_default(), e.message))
            .collect(),
    }
}

fn checks(settings: &str) -> Vec<Check> {
    let dag = dag(settings).unwrap_or_else(|e| panic!("{settings}: {e:?}"));
    let Some(TaskKind::VerifyChecks(c)) = dag.tasks.iter().map(|t| &t.kind).nth(1) else {
        panic!("no checks task")
    };
    c.checks()
}

fn id(name: &str) -> SqlIdent {
    SqlIdent::new(name).unwrap()
}

#[test]
fn every_check_type_reads_into_its_rule() {
    let got = checks(
        r#"
source = "extract"
checks = [
  { check = "not_null", table = "f", columns = ["a", "b"], key = "event_id" },
  { check = "unique", table = "f", columns = ["event_id"] },
  { check = "relationships", table = "f", column = "user_id", to = "dim_user", at = "ts_ms", valid_from = "valid_from_ms", valid_to = "valid_to_ms", severity = "warn" },
  { check = "relationships", table = "f", column = "date_key", to = "dim_date" },
  { check = "accepted_values", table = "f", column = "device", values = ["desktop", "mobile"] },
  { check = "freshness", table = "f", column = "ts_ms", within = "26h" },
  { check = "row_count", table = "f" },
]
"#,
    );
    let rules: Vec<&Rule> = got.iter().map(|c| &c.rule).collect();
    assert_eq!(
        rules,
        [
            &Rule::NotNull {
                columns: vec![id("a"), id("b")],
                key: Some(id("event_id"))
            },
            &Rule::Unique {
                columns: vec![id("event_id")]
            },
            &Rule::Relationships {
                column: id("user_id"),
                to: id("dim_user"),
                field: id("user_id"),
                valid_at: Some(ValidAt {
                    at: id("ts_ms"),
                    from: id("valid_from_ms"),
                    to: id("valid_to_ms"),
                }),
                key: None,
            },
            &Rule::Relationships {
                column: id("date_key"),
                to: id("dim_date"),
                field: id("date_key"),
                valid_at: None,
                key: None,
            },
            &Rule::AcceptedValues {
                column: id("device"),
                values: vec!["desktop".into(), "mobile".into()],
                key: None,
            },
            &Rule::Freshness {
                column: id("ts_ms"),
                within: Duration::from_secs(26 * 3600),
            },
            &Rule::RowCount {
                key: id("event_id"),
                ts: id("ts_ms"),
                scope: Scope::Run,
            },
        ]
    );
    let severities: Vec<Severity> = got.iter().map(|c| c.severity).collect();
    assert_eq!(severities[1], Severity::Error, "error by default");
    assert_eq!(severities[2], Severity::Warn);
    assert_eq!(
        got[2].describe(),
        "relationships f.user_id -> dim_user.user_id valid at f.ts_ms"
    );
    assert_eq!(got[5].describe(), "freshness f.ts_ms within 1day 2h");
}

#[test]
fn bad_settings_are_named_by_field() {
    // (settings, a problem expected: field and part of the message)
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"checks = [{ check = "nul", table = "f", columns = ["a"] }]"#,
            "checks[0].check",
            "unknown variant `nul`",
        ),
        (
            r#"checks = [{ check = "unique", table = "f", columns = ["a"] }, { check = "unique", table = "f", columns = [] }]"#,
            "checks[1].columns",
            "a unique check needs `columns`",
        ),
        (
            r#"checks = [{ check = "not_null", table = "f" }]"#,
            "checks[0].columns",
            "a not_null check needs `columns`",
        ),
        (
            r#"checks = [{ check = "not_null", columns = ["a"] }]"#,
            "checks[0]",
            "missing field `table`",
        ),
        (
            r#"checks = [{ check = "unique", table = "f; DROP TABLE f", columns = ["a"] }]"#,
            "checks[0].table",
            "is not a plain SQL name",
        ),
        (
            r#"checks = [{ check = "unique", table = "f", columns = ["a", "b-c"] }]"#,
            "checks[0].columns[1]",
            "is not a plain SQL name",
        ),
        (
            r#"checks = [{ check = "unique", table = "f", columns = ["a"], severity = "fatal" }]"#,
            "checks[0].severity",
            "unknown variant `fatal`, expected `error` or `warn`",
        ),
        (
            r#"source = "extract"
checks = [{ check = "freshness", table = "f", column = "ts_ms", within = "a day" }]"#,
            "checks[0].within",
            "is not a duration",
        ),
        (
            r#"source = "extract"
checks = [{ check = "freshness", table = "f", column = "ts_ms", within = "0s" }]"#,
            "checks[0].within",
            "longer than zero",
        ),
        (
            r#"checks = [{ check = "freshness", table = "f", column = "ts_ms", within = "1h" }]"#,
            "checks[0].check",
            "needs the task's `source`",
        ),
        (
            r#"source = "nope"
checks = [{ check = "row_count", table = "f" }]"#,
            "source",
            "`nope` is not an extract task of this DAG",
        ),
        (
            r#"checks = [{ check = "unique", table = "f", columns = ["a"], colums = ["b"] }]"#,
            "checks[0]",
            "unknown field `colums`",
        ),
        (
            r#"checks = [{ check = "unique", table = "f", columns = ["a"], values = ["x"] }]"#,
            "checks[0].values",
            "a unique check does not take `values`",
        ),
        (
            r#"checks = [{ check = "relationships", table = "f", column = "u", to = "d", at = "ts_ms" }]"#,
            "checks[0].valid_from",
            "go together",
        ),
        (
            r#"checks = [{ check = "relationships", table = "f", column = "u" }]"#,
            "checks[0].to",
            "a relationships check needs `to`",
        ),
        (
            r#"checks = [{ check = "accepted_values", table = "f", column = "d", values = [] }]"#,
            "checks[0].values",
            "needs `values`",
        ),
        (
            r#"checks = [{ check = "accepted_values", table = "f", column = "d", values = ["a", "a"] }]"#,
            "checks[0].values[1]",
            "listed twice",
        ),
        (r#"checks = []"#, "checks", "declares no check"),
        (
            r#"check = []"#,
            "check",
            "unknown field (did you mean `checks`?)",
        ),
    ];
    for (settings, field, message) in cases {
        let got = problems(settings);
        assert!(
            got.iter()
                .any(|p| p.starts_with(field) && p.contains(message)),
            "{settings}\nexpected {field}: ...{message}...\ngot {got:#?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let got = problems(
        r#"checks = [
  { check = "not_null", table = "f" },
  { check = "relationships", table = "f", column = "u", within = "1h" },
  { check = "row_count", table = "f" },
]"#,
    );
    for field in [
        "checks[0].columns",
        "checks[1].to",
        "checks[1].within",
        "checks[2].check",
    ] {
        assert!(
            got.iter().any(|p| p.starts_with(&format!("{field}: "))),
            "{field} in {got:#?}"
        );
    }
}

#[test]
fn the_shipped_dags_declare_checks_that_validate() {
    let dags: Vec<Dag<TaskKind>> = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../dags"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    for dag in &dags {
        let checks: Vec<Check> = dag
            .tasks
            .iter()
            .filter_map(|t| match &t.kind {
                TaskKind::VerifyChecks(c) => Some(c.checks()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(!checks.is_empty(), "{} declares checks", dag.name);
    }
}

#[test]
fn a_failure_names_the_check_its_table_the_count_and_a_sample() {
    let check = Check {
        table: id("fact_views"),
        severity: Severity::Error,
        rule: Rule::Unique {
            columns: vec![id("session_id"), id("ts_ms")],
        },
    };
    let found = Finding {
        failing: 3,
        what: "values held by more than one row".into(),
        sample: vec!["(s1, 5) (2 rows)".into(), "(s2, 7) (3 rows)".into()],
        note: String::new(),
    };
    assert_eq!(
        failure_line(2, &check, &found),
        "checks[2] unique fact_views(session_id, ts_ms): 3 values held by more than one row; e.g. (s1, 5) (2 rows), (s2, 7) (3 rows)"
    );
    let none = Finding {
        sample: Vec::new(),
        ..found
    };
    assert!(!failure_line(2, &check, &none).contains("e.g."));
}
