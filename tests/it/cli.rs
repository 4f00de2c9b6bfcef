//! The command line as a user meets it: errors that name the file, task and
//! field; help; listing.

use crate::support::{cutover, ok};

#[test]
fn validate_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
name = "bad"
data_point = "views"
[schedule]
cron = "every night"
[[tasks]]
id = "extract"
kind = "extract.mongoo"
[[tasks]]
id = "load"
kind = "load.merge"
depends_on = ["transfrom"]
input = "transfrom"
retires = 3
targets = [{ output = "fact views", key = ["event_id"] }]
"#,
    )
    .unwrap();
    let out = cutover(
        dir.path(),
        "sqlite::memory:",
        dir.path(),
        &["dags", "validate", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let file = bad.display().to_string();
    for expected in [
        format!("{file}: field `schedule.cron`: `every night` is not a valid cron expression"),
        format!("{file}: task `extract`: field `kind`: unknown kind `extract.mongoo` (did you mean `extract.mongo`?)"),
        format!("{file}: task `load`: field `retires`: unknown field (did you mean `retries`?)"),
        format!("{file}: task `load`: field `targets[0].output`: `fact views` is not a plain SQL name"),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn the_shipped_dags_are_valid_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(cutover(
        dir.path(),
        "sqlite::memory:",
        dir.path(),
        &["dags", "validate"],
    ));
    assert!(out.contains("(views)"), "{out}");
    let list = ok(cutover(
        dir.path(),
        "sqlite::memory:",
        dir.path(),
        &["dags", "list"],
    ));
    assert!(
        list.contains("views") && list.contains("0 30 2 * * * (UTC)"),
        "{list}"
    );
    let show = ok(cutover(
        dir.path(),
        "sqlite::memory:",
        dir.path(),
        &["dags", "show", "views"],
    ));
    assert!(
        show.contains("step 1: extract_views") && show.contains("kind = \"load.merge\""),
        "{show}"
    );
}

#[test]
fn a_missing_events_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let out = cutover(&missing, &wh, dir.path(), &["run", "views"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.jsonl does not exist") && err.contains("cutover seed"),
        "{err}"
    );
    let out = cutover(&missing, &wh, dir.path(), &["run", "vews"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `views`?"));
}
