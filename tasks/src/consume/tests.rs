use std::path::Path;

use workflows::{Role, TaskKinds};

use super::*;

fn shipped() -> Vec<Dag<TaskKind>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dags");
    workflows::dag::load_dir::<TaskKind>(&dir).expect("the shipped DAGs load")
}

fn routes(dags: &[Dag<TaskKind>], body: &str) -> Vec<String> {
    let type_fields: BTreeSet<String> = dags
        .iter()
        .flat_map(|d| queries(d).into_iter().map(|q| q.type_field))
        .collect();
    let doc = parse_event(body, &type_fields).expect("an event");
    dags.iter()
        .filter(|d| queries(d).iter().any(|q| file_match(&doc, q)))
        .map(|d| d.name.clone())
        .collect()
}

#[test]
fn feed_dags_drop_verify_tasks_only() {
    for dag in shipped() {
        let feed = dag
            .without_verify()
            .expect("every shipped DAG reads events");
        assert!(feed.tasks.iter().all(|t| t.kind.role() != Role::Verify));
        let kept: Vec<&str> = dag
            .tasks
            .iter()
            .filter(|t| t.kind.role() != Role::Verify)
            .map(|t| t.id.as_str())
            .collect();
        let ids: Vec<&str> = feed.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, kept, "dag {}", dag.name);
    }
}

#[test]
fn events_route_by_type_and_filter_to_the_dags_that_take_them() {
    let dags: Vec<Dag<TaskKind>> = shipped().iter().filter_map(Dag::without_verify).collect();
    let ev = |ty: &str, extra: &str| {
        format!(
            r#"{{"_id":{{"$oid":"65a000000000000000000001"}},"event_id":"e1","type":"{ty}","ts":{{"$date":"2024-01-02T03:04:05Z"}}{extra}}}"#
        )
    };
    assert_eq!(routes(&dags, &ev("presentation.viewed", "")), ["views"]);
    assert_eq!(routes(&dags, &ev("session.ended", "")), ["sessions"]);
    assert_eq!(routes(&dags, &ev("user.registered", "")), ["users"]);
    assert!(routes(&dags, &ev("something.else", "")).is_empty());
}

#[test]
fn bodies_that_are_not_events_say_why() {
    let fields: BTreeSet<String> = ["type".to_owned()].into();
    let cases = [
        ("not json", "not JSON"),
        ("[1,2]", "not a JSON object"),
        (r#"{"hello":1}"#, "not an event: no string field `type`"),
        (r#"{"type":3}"#, "not an event: no string field `type`"),
        (
            r#"{"type":"x","ts":{"$date":"nope"}}"#,
            "not MongoDB Extended JSON",
        ),
    ];
    for (body, want) in cases {
        let err = parse_event(body, &fields).expect_err(body);
        assert!(err.starts_with(want), "{body}: {err}");
    }
    assert!(parse_event(r#" {"type":"x"} "#, &fields).is_ok());
}

#[test]
fn dimensions_load_before_facts() {
    let dags: Vec<Dag<TaskKind>> = shipped().iter().filter_map(Dag::without_verify).collect();
    let names = |level: &[usize]| -> BTreeSet<String> {
        level.iter().map(|i| dags[*i].name.clone()).collect()
    };
    let lv = Dag::levels(&dags);
    // Users first: the presentations' owner check looks owners up in it.
    assert_eq!(lv.len(), 3);
    assert_eq!(names(&lv[0]), ["users"].map(String::from).into());
    assert_eq!(names(&lv[1]), ["presentations"].map(String::from).into());
    assert_eq!(
        names(&lv[2]),
        ["engagement", "sessions", "shares", "views"]
            .map(String::from)
            .into()
    );
}
