//! `cutover flags` on every warehouse: the flags come from the DAG files'
//! `[cutover]` tables; a promotion is refused while its evidence is missing
//! (saying which), allowed once reconciliations passed and enough shadow
//! comparisons were counted, refused again after a failing reconciliation;
//! rollbacks are immediate; `--force` needs a reason and is recorded as
//! forced; every change is in the history.

use anyhow::Result;
use serde_json::Value;

use crate::support::{self, cutover, ok};

fn fail(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_promotion_waits_for_its_evidence_and_a_rollback_never_does() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 3000, 41);
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let run = |args: &[&str]| cutover(&events, &wh.url, &work, args);
        ok(run(&["run", "--all"]));

        let list: Value = serde_json::from_str(&ok(run(&["flags", "list", "--format", "json"])))?;
        let points: Vec<(&str, &str)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["flag"]["data_point"].as_str().unwrap(),
                    f["flag"]["state"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            points,
            [
                ("engagement", "legacy"),
                ("sessions", "legacy"),
                ("shares", "legacy"),
                ("views", "legacy")
            ],
            "{}",
            wh.name
        );

        // Only the run's own reconciliation of views_daily (its
        // verify.reports task): refused, naming every missing piece.
        let why = fail(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "10",
        ]));
        for missing in [
            "views_daily: 1 passing reconciliations within 2days, 3 needed",
            "views_by_plan: 0 passing reconciliations",
            "0 shadow comparisons within 2days, 1000 needed",
        ] {
            assert!(why.contains(missing), "{}: {missing} in\n{why}", wh.name);
        }
        let wrong = fail(run(&["flags", "set", "view", "shadow"]));
        assert!(wrong.contains("did you mean `views`?"), "{wrong}");

        ok(run(&[
            "flags",
            "set",
            "views",
            "shadow",
            "--reason",
            "start comparing",
        ]));
        for _ in 0..3 {
            ok(run(&["reconcile", "views"]));
        }
        let why = fail(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "10",
        ]));
        assert!(
            !why.contains("reconciliations within"),
            "{}: {why}",
            wh.name
        );
        assert!(why.contains("0 shadow comparisons"), "{}: {why}", wh.name);

        // The comparisons a server in `shadow` counts.
        let pool = support::pool(&wh.url).await?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        sqlx::query(&format!(
            "INSERT INTO cutover_read_counts \
             (id, data_point, counted_at, legacy_reads, warehouse_reads, comparisons, mismatches) \
             VALUES ('c1', 'views', '{now}', 1200, 0, 1200, 0)"
        ))
        .execute(&pool)
        .await?;
        let out = ok(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "10",
        ]));
        assert!(
            out.contains("views: shadow -> warehouse 10%"),
            "{}: {out}",
            wh.name
        );
        assert!(
            out.contains("1200 shadow comparisons"),
            "{}: {out}",
            wh.name
        );

        // Not at 100 %: cannot retire.
        let why = fail(run(&["flags", "set", "views", "retired"]));
        assert!(
            why.contains("the flag is warehouse 10%"),
            "{}: {why}",
            wh.name
        );

        // A failing reconciliation blocks the next promotion; a rollback
        // goes through at once.
        // (MySQL cannot read the table it deletes from in a subquery.)
        let delete = if wh.name == "mysql" {
            "DELETE FROM fact_views ORDER BY event_id LIMIT 1"
        } else {
            "DELETE FROM fact_views WHERE event_id = (SELECT MIN(event_id) FROM fact_views)"
        };
        sqlx::query(delete).execute(&pool).await?;
        pool.close().await;
        fail(run(&["reconcile", "views_daily"]));
        let why = fail(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "50",
        ]));
        assert!(
            why.contains("views_daily: reconciliation") && why.contains("differs"),
            "{}: {why}",
            wh.name
        );
        ok(run(&[
            "flags",
            "set",
            "views",
            "shadow",
            "--reason",
            "a fact is missing",
        ]));

        let forced = fail(run(&["flags", "set", "views", "warehouse", "--force"]));
        assert!(forced.contains("--force needs a --reason"), "{forced}");
        ok(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "100",
            "--force",
            "--reason",
            "incident 7: the legacy cluster is down",
        ]));

        let show: Value =
            serde_json::from_str(&ok(run(&["flags", "show", "views", "--format", "json"])))?;
        assert_eq!(show["flag"]["state"], "warehouse", "{}", wh.name);
        assert_eq!(show["flag"]["rollout"], 100);
        assert!(show["flag"]["full_since"].is_string());
        assert_eq!(show["next"]["state"], "retired");
        assert_eq!(show["next"]["decision"]["decision"], "refused");

        let history: Value =
            serde_json::from_str(&ok(run(&["flags", "history", "views", "--format", "json"])))?;
        let steps: Vec<(String, String, bool)> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["from"].as_str().unwrap().to_owned(),
                    c["to"].as_str().unwrap().to_owned(),
                    c["forced"].as_bool().unwrap(),
                )
            })
            .collect();
        let step = |a: &str, b: &str, f| (a.to_owned(), b.to_owned(), f);
        assert_eq!(
            steps,
            [
                step("shadow", "warehouse 100%", true),
                step("warehouse 10%", "shadow", false),
                step("shadow", "warehouse 10%", false),
                step("legacy", "shadow", false),
            ],
            "{}",
            wh.name
        );
        assert!(history[0]["evidence"][0]
            .as_str()
            .unwrap()
            .contains("incident 7"));
        let other = ok(run(&["flags", "list"]));
        assert!(
            other.contains("shares") && other.contains("legacy"),
            "{other}"
        );
    }
    Ok(())
}
