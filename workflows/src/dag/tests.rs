//! DAG text in, the expected errors out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;
use crate::sql::SqlIdent;
use crate::task::{KindInfo, SettingProblem, TaskKinds};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    table: SqlIdent,
    #[serde(default)]
    input: Option<String>,
}

#[derive(Debug, Serialize)]
enum TestKind {
    Copy(Copy),
    Noop,
}

static KINDS: [KindInfo; 2] = [
    KindInfo {
        name: "copy",
        summary: "copies",
        role: crate::task::Role::Transform,
        fields: || &["table", "input"],
    },
    KindInfo {
        name: "noop",
        summary: "does nothing",
        role: crate::task::Role::Transform,
        fields: || &[],
    },
];

impl TaskKinds for TestKind {
    fn catalog() -> &'static [KindInfo] {
        &KINDS
    }

    fn parse(kind: &str, settings: toml::Table) -> Result<Self, Vec<SettingProblem>> {
        match kind {
            "copy" => toml::Value::Table(settings)
                .try_into()
                .map(TestKind::Copy)
                .map_err(|e| {
                    vec![SettingProblem {
                        field: Some("table".into()),
                        message: e.message().to_owned(),
                    }]
                }),
            _ => Ok(TestKind::Noop),
        }
    }

    fn info(&self) -> &'static KindInfo {
        match self {
            Self::Copy(_) => &KINDS[0],
            Self::Noop => &KINDS[1],
        }
    }

    fn check(&self, depends_on: &[String], _tasks: &[(&str, &Self)]) -> Vec<SettingProblem> {
        match self {
            Self::Copy(Copy { input: Some(i), .. }) if !depends_on.contains(i) => {
                vec![SettingProblem::field(
                    "input",
                    format!("`{i}` is not one of this task's depends_on"),
                )]
            }
            _ => Vec::new(),
        }
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse::<TestKind>(Path::new("dags/t.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const HEAD: &str = "name = \"t\"\ndata_point = \"views\"\n";

#[test]
fn every_problem_is_named_with_file_task_and_field() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[[tasks]]\nid = \"a\"\nkind = \"noop\"\nretires = 3\n",
            &["dags/t.toml: task `a`: field `retires`: unknown field (did you mean `retries`?)"],
        ),
        (
            "[[tasks]]\nid = \"a\"\nkind = \"noop\"\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n",
            &["dags/t.toml: task `a`: field `id`: duplicate task id"],
        ),
        (
            "[[tasks]]\nid = \"load\"\nkind = \"noop\"\n[[tasks]]\nid = \"b\"\nkind = \"noop\"\ndepends_on = [\"lod\"]\n",
            &["dags/t.toml: task `b`: field `depends_on`: unknown task `lod` (did you mean `load`?)"],
        ),
        (
            "[[tasks]]\nid = \"a\"\nkind = \"noop\"\ndepends_on = [\"c\"]\n[[tasks]]\nid = \"b\"\nkind = \"noop\"\ndepends_on = [\"a\"]\n[[tasks]]\nid = \"c\"\nkind = \"noop\"\ndepends_on = [\"b\"]\n",
            &["dags/t.toml: task `a`: field `depends_on`: dependency cycle: a -> c -> b -> a (each depends on the next)"],
        ),
        (
            "[[tasks]]\nid = \"a\"\nkind = \"nop\"\n",
            &["dags/t.toml: task `a`: field `kind`: unknown kind `nop` (did you mean `noop`?)"],
        ),
        (
            "[schedule]\ncron = \"0 61 * * *\"\ntimezone = \"Europe/Berlinn\"\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n",
            &[
                "dags/t.toml: field `schedule.cron`: `0 61 * * *` is not a valid cron expression",
                "dags/t.toml: field `schedule.timezone`: `Europe/Berlinn` is not an IANA time zone",
            ],
        ),
        (
            "[schedule]\ncron = \"0 2 * * *\"\ncatch_up = \"every\"\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n",
            &["dags/t.toml: field `schedule.catch_up`: `every` is not a catch-up policy; expected one of none, latest, all"],
        ),
        (
            "[[tasks]]\nid = \"a\"\nkind = \"copy\"\ntable = \"x; drop table y\"\n",
            &["dags/t.toml: task `a`: field `table`: `x; drop table y` is not a plain SQL name"],
        ),
        (
            "[[tasks]]\nid = \"a\"\nkind = \"copy\"\ntable = \"t\"\ninput = \"b\"\n",
            &["dags/t.toml: task `a`: field `input`: `b` is not one of this task's depends_on"],
        ),
        (
            "[[tasks]]\nid = \"a\"\nkind = \"noop\"\ntimeout = \"soon\"\nretries = -1\n",
            &[
                "dags/t.toml: task `a`: field `retries`: expected a non-negative integer",
                "dags/t.toml: task `a`: field `timeout`: `soon` is not a duration",
            ],
        ),
        ("[[tasks]]\nkind = \"noop\"\n", &["dags/t.toml: task `#1`: field `id`: missing"]),
        (
            "[cutover]\nreport = [\"x\"]\nwithin = \"soon\"\ncomparisons = -1\nmismatch_rate = 2\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n",
            &[
                "dags/t.toml: field `cutover.report`: unknown field (did you mean `reports`?)",
                "dags/t.toml: field `cutover.reports`: missing",
                "dags/t.toml: field `cutover.comparisons`: expected a whole number of at least 0",
                "dags/t.toml: field `cutover.mismatch_rate`: expected a share between 0 and 1",
                "dags/t.toml: field `cutover.within`: `soon` is not a duration",
            ],
        ),
        (
            "[cutover]\nreports = [\"a\", \"a\", 3]\nretire_after = \"0s\"\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n",
            &[
                "dags/t.toml: field `cutover.reports`: `a` is named twice",
                "dags/t.toml: field `cutover.reports`: expected report names (strings)",
                "dags/t.toml: field `cutover.retire_after`: must be longer than zero",
            ],
        ),
    ];
    for (body, expected) in cases {
        let got = errors(&format!("{HEAD}{body}"));
        assert_eq!(got.len(), expected.len(), "for\n{body}\ngot {got:#?}");
        for (g, e) in got.iter().zip(expected.iter()) {
            assert!(
                g.starts_with(e),
                "for\n{body}\nexpected `{e}`\n     got `{g}`"
            );
        }
    }
}

#[test]
fn all_problems_are_reported_in_one_pass() {
    let text = "nme = \"t\"\ndata_point = \"v\"\n[[tasks]]\nid = \"a\"\nkind = \"nop\"\n[[tasks]]\nid = \"b\"\nkind = \"noop\"\ndepends_on = [\"zzz\"]\nbackof = \"1s\"\n";
    let got = errors(text);
    let expect = [
        "dags/t.toml: field `nme`: unknown field (did you mean `name`?)",
        "dags/t.toml: field `name`: missing",
        "dags/t.toml: task `a`: field `kind`: unknown kind `nop`",
        "dags/t.toml: task `b`: field `backof`: unknown field (did you mean `backoff`?)",
        "dags/t.toml: task `b`: field `depends_on`: unknown task `zzz`",
    ];
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing `{e}` in {got:#?}"
        );
    }
}

#[test]
fn a_valid_dag_is_ordered_with_defaults_applied() {
    let text = format!(
        "{HEAD}[defaults]\nretries = 2\ntimeout = \"5m\"\n[[tasks]]\nid = \"load\"\nkind = \"noop\"\ndepends_on = [\"x\", \"y\"]\nretries = 5\n\
         [[tasks]]\nid = \"x\"\nkind = \"noop\"\n[[tasks]]\nid = \"y\"\nkind = \"noop\"\n"
    );
    let dag = parse::<TestKind>(Path::new("t.toml"), &text).unwrap();
    let ids: Vec<&str> = dag.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.last(), Some(&"load"));
    let waves: Vec<Vec<&str>> = dag
        .waves()
        .iter()
        .map(|w| w.iter().map(|t| t.id.as_str()).collect())
        .collect();
    assert_eq!(waves, vec![vec!["x", "y"], vec!["load"]]);
    assert_eq!(dag.task("load").unwrap().retries, 5);
    assert_eq!(dag.task("x").unwrap().retries, 2);
    assert_eq!(dag.task("x").unwrap().timeout, Duration::from_secs(300));
}

#[test]
fn syntax_errors_name_the_file() {
    let got = errors("name = \n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("dags/t.toml: not valid TOML"), "{got:?}");
}

#[test]
fn dags_run_after_the_dags_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, after: &str| {
        let text = format!(
            "name = \"{name}\"\ndata_point = \"x\"\n{after}\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n"
        );
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    };
    write("a_facts", "after = [\"z_dims\"]");
    write("b_other", "");
    write("z_dims", "");
    let names: Vec<String> = load_dir::<TestKind>(dir.path())
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["b_other", "z_dims", "a_facts"]);

    write("b_other", "after = [\"z_dim\"]");
    let errors: Vec<String> = load_dir::<TestKind>(dir.path())
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("field `after`: unknown DAG `z_dim` (did you mean `z_dims`?)"),
        "{errors:?}"
    );

    write("b_other", "");
    write("z_dims", "after = [\"a_facts\"]");
    let errors = load_dir::<TestKind>(dir.path()).unwrap_err();
    assert!(errors[0].message.contains("form a cycle"), "{errors:?}");
}

#[test]
fn a_cutover_table_declares_the_reports_and_the_evidence() {
    let text = format!(
        "{HEAD}[cutover]\nreports = [\"views_daily\", \"views_by_plan\"]\nwithin = \"24h\"\nmismatch_rate = 0.001\n[[tasks]]\nid = \"a\"\nkind = \"noop\"\n"
    );
    let dag = parse::<TestKind>(Path::new("dags/t.toml"), &text).expect("valid");
    let c = dag.cutover.expect("declared");
    assert_eq!(c.reports, ["views_daily", "views_by_plan"]);
    assert_eq!(c.evidence.within, std::time::Duration::from_secs(86_400));
    assert!((c.evidence.mismatch_rate - 0.001).abs() < 1e-12);
    assert_eq!(c.evidence.reconciliations, 3, "the default");
    assert!(parse::<TestKind>(
        Path::new("dags/t.toml"),
        &format!("{HEAD}[[tasks]]\nid = \"a\"\nkind = \"noop\"\n")
    )
    .expect("valid")
    .cutover
    .is_none());
}
