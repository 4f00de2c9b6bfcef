//! Runner semantics with real tasks and a real ledger (SQLite in memory).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::Barrier;

use crate::dag::{parse, Dag};
use crate::ledger::Ledger;
use crate::runner::{RunOptions, Runner};
use crate::sql::Backend;
use crate::state::{AttemptStatus, RunState, RunStatus, TaskState};
use crate::task::{KindInfo, SettingProblem, Task, TaskContext, TaskError, TaskKinds, TaskReport};

#[derive(Debug, Serialize)]
struct Any;

static KIND: KindInfo = KindInfo {
    name: "test",
    summary: "a test task",
    role: crate::task::Role::Load,
    fields: || &[],
};

impl TaskKinds for Any {
    fn catalog() -> &'static [KindInfo] {
        std::slice::from_ref(&KIND)
    }
    fn parse(_: &str, _: toml::Table) -> Result<Self, Vec<SettingProblem>> {
        Ok(Any)
    }
    fn info(&self) -> &'static KindInfo {
        &KIND
    }
    fn check(&self, _: &[String], _: &[(&str, &Self)]) -> Vec<SettingProblem> {
        Vec::new()
    }
}

fn dag(tasks: &str) -> Dag<Any> {
    parse(
        Path::new("t.toml"),
        &format!("name = \"t\"\ndata_point = \"x\"\n[defaults]\nbackoff = \"10ms\"\n{tasks}"),
    )
    .unwrap()
}

async fn runner() -> Runner {
    Runner::new(Ledger::new(crate::test_pool().await, Backend::Sqlite))
}

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        work_root: dir.to_path_buf(),
        ..RunOptions::default()
    }
}

/// Records when it starts and ends.
struct Log(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Task for Log {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        self.0.lock().unwrap().push(format!("start {}", ctx.task));
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.0.lock().unwrap().push(format!("end {}", ctx.task));
        Ok(TaskReport {
            rows_written: 1,
            ..TaskReport::default()
        })
    }
}

/// Succeeds only when another task reaches the barrier at the same time.
struct Meet(Arc<Barrier>);

#[async_trait]
impl Task for Meet {
    async fn run(&self, _: &TaskContext) -> Result<TaskReport, TaskError> {
        tokio::time::timeout(Duration::from_secs(5), self.0.wait())
            .await
            .map_err(|_| TaskError::fatal("the other task never ran at the same time"))?;
        Ok(TaskReport::default())
    }
}

/// Fails with a retryable error `failures` times, then succeeds.
struct Flaky {
    failures: u32,
    calls: Arc<AtomicU32>,
}

#[async_trait]
impl Task for Flaky {
    async fn run(&self, _: &TaskContext) -> Result<TaskReport, TaskError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            Err(TaskError::Retryable(
                format!("connection reset (call {})", n + 1).into(),
            ))
        } else {
            Ok(TaskReport {
                rows_read: 7,
                ..TaskReport::default()
            })
        }
    }
}

struct Fatal(Arc<AtomicU32>);

#[async_trait]
impl Task for Fatal {
    async fn run(&self, _: &TaskContext) -> Result<TaskReport, TaskError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(TaskError::fatal("bad configuration"))
    }
}

struct Slow;

#[async_trait]
impl Task for Slow {
    async fn run(&self, _: &TaskContext) -> Result<TaskReport, TaskError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(TaskReport::default())
    }
}

fn tasks(list: Vec<(&str, Arc<dyn Task>)>) -> HashMap<String, Arc<dyn Task>> {
    list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[tokio::test]
async fn dependencies_run_first_and_independent_tasks_together() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(2));
    let d = dag(
        "[[tasks]]\nid = \"left\"\nkind = \"test\"\n[[tasks]]\nid = \"right\"\nkind = \"test\"\n\
         [[tasks]]\nid = \"join\"\nkind = \"test\"\ndepends_on = [\"left\", \"right\"]\n\
         [[tasks]]\nid = \"last\"\nkind = \"test\"\ndepends_on = [\"join\"]\n",
    );
    let s = r
        .run(
            &d,
            tasks(vec![
                ("left", Arc::new(Meet(barrier.clone()))),
                ("right", Arc::new(Meet(barrier))),
                ("join", Arc::new(Log(log.clone()))),
                ("last", Arc::new(Log(log.clone()))),
            ]),
            &opts(dir.path()),
        )
        .await
        .unwrap();
    assert_eq!(s.state, RunState::Succeeded, "{s:#?}");
    assert_eq!(
        *log.lock().unwrap(),
        ["start join", "end join", "start last", "end last"]
    );
    let runs = r.ledger().runs(Some("t"), 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, RunStatus::Succeeded);
    assert_eq!(runs[0].rows_written, 2);
    assert!(runs[0].ended_at.is_some());
    assert!(
        !s.work_dir.exists(),
        "the work directory of a successful run is removed"
    );
}

#[tokio::test]
async fn retryable_errors_are_retried_until_success() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner().await;
    let calls = Arc::new(AtomicU32::new(0));
    let d = dag("[[tasks]]\nid = \"a\"\nkind = \"test\"\nretries = 3\n");
    let s = r
        .run(
            &d,
            tasks(vec![(
                "a",
                Arc::new(Flaky {
                    failures: 2,
                    calls: calls.clone(),
                }),
            )]),
            &opts(dir.path()),
        )
        .await
        .unwrap();
    assert_eq!(s.state, RunState::Succeeded);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let attempts = r.ledger().attempts(&s.run_id).await.unwrap();
    let states: Vec<(i64, AttemptStatus)> = attempts.iter().map(|a| (a.attempt, a.state)).collect();
    assert_eq!(
        states,
        [
            (1, AttemptStatus::Failed),
            (2, AttemptStatus::Failed),
            (3, AttemptStatus::Succeeded)
        ]
    );
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("connection reset (call 1)")
    );
}

#[tokio::test]
async fn retries_run_out_and_fatal_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner().await;
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let fatal_calls = Arc::new(AtomicU32::new(0));
    let d = dag("[[tasks]]\nid = \"flaky\"\nkind = \"test\"\nretries = 2\n[[tasks]]\nid = \"fatal\"\nkind = \"test\"\nretries = 5\n");
    let s = r
        .run(
            &d,
            tasks(vec![
                (
                    "flaky",
                    Arc::new(Flaky {
                        failures: 100,
                        calls: flaky_calls.clone(),
                    }),
                ),
                ("fatal", Arc::new(Fatal(fatal_calls.clone()))),
            ]),
            &opts(dir.path()),
        )
        .await
        .unwrap();
    assert_eq!(
        flaky_calls.load(Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
    assert_eq!(
        fatal_calls.load(Ordering::SeqCst),
        1,
        "a fatal error is not retried"
    );
    let RunState::Failed { mut failed } = s.state else {
        panic!("the run must fail")
    };
    failed.sort();
    assert_eq!(failed, ["fatal", "flaky"]);
    assert!(s.work_dir.exists(), "a failed run keeps its work directory");
    let run = &r.ledger().runs(None, 1).await.unwrap()[0];
    assert_eq!(run.state, RunStatus::Failed);
    assert!(
        run.error.as_deref().is_some_and(|e| e.contains("task f")),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_timeout_cancels_the_attempt_and_dependents_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let d = dag(
        "[[tasks]]\nid = \"slow\"\nkind = \"test\"\ntimeout = \"100ms\"\nretries = 1\n\
         [[tasks]]\nid = \"next\"\nkind = \"test\"\ndepends_on = [\"slow\"]\n\
         [[tasks]]\nid = \"after_next\"\nkind = \"test\"\ndepends_on = [\"next\"]\n\
         [[tasks]]\nid = \"independent\"\nkind = \"test\"\n",
    );
    let started = std::time::Instant::now();
    let s = r
        .run(
            &d,
            tasks(vec![
                ("slow", Arc::new(Slow)),
                ("next", Arc::new(Log(log.clone()))),
                ("after_next", Arc::new(Log(log.clone()))),
                ("independent", Arc::new(Log(log.clone()))),
            ]),
            &opts(dir.path()),
        )
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let state = |id: &str| s.tasks.iter().find(|(t, _)| t == id).unwrap().1.clone();
    match state("slow") {
        TaskState::Failed {
            attempt,
            error,
            retryable,
        } => {
            assert_eq!(attempt, 2);
            assert!(retryable);
            assert_eq!(error, "timed out after 100ms");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        state("next"),
        TaskState::Skipped {
            because: "slow".into()
        }
    );
    assert_eq!(
        state("after_next"),
        TaskState::Skipped {
            because: "next".into()
        }
    );
    assert!(matches!(state("independent"), TaskState::Succeeded { .. }));
    assert_eq!(
        *log.lock().unwrap(),
        ["start independent", "end independent"]
    );
    let attempts = r.ledger().attempts(&s.run_id).await.unwrap();
    assert!(attempts
        .iter()
        .any(|a| a.task == "after_next" && a.state == AttemptStatus::Skipped));
}

/// Finds nothing new when the context allows it.
struct Unchanged;

#[async_trait]
impl Task for Unchanged {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        Ok(TaskReport {
            summary: "nothing new".into(),
            unchanged: ctx.skip_unchanged,
            rows_read: u64::from(!ctx.skip_unchanged),
            ..TaskReport::default()
        })
    }
}

#[tokio::test]
async fn tasks_after_unchanged_tasks_only_are_up_to_date_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner().await;
    let d = dag(
        "[[tasks]]\nid = \"a\"\nkind = \"test\"\n[[tasks]]\nid = \"b\"\nkind = \"test\"\n\
         [[tasks]]\nid = \"after_a\"\nkind = \"test\"\ndepends_on = [\"a\"]\n\
         [[tasks]]\nid = \"last\"\nkind = \"test\"\ndepends_on = [\"after_a\"]\n\
         [[tasks]]\nid = \"both\"\nkind = \"test\"\ndepends_on = [\"after_a\", \"b\"]\n",
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let build = || {
        tasks(vec![
            ("a", Arc::new(Unchanged) as Arc<dyn Task>),
            ("b", Arc::new(Log(log.clone()))),
            ("after_a", Arc::new(Log(log.clone()))),
            ("last", Arc::new(Log(log.clone()))),
            ("both", Arc::new(Log(log.clone()))),
        ])
    };
    let s = r.run(&d, build(), &opts(dir.path())).await.unwrap();
    assert_eq!(s.state, RunState::Succeeded, "{s:#?}");
    // `after_a` and `last` depend only on `a`: not run; `both` also on `b`.
    let ran: Vec<String> = log.lock().unwrap().clone();
    assert_eq!(ran, ["start b", "end b", "start both", "end both"]);
    for id in ["after_a", "last"] {
        let state = s.tasks.iter().find(|(t, _)| t == id).unwrap().1.clone();
        assert!(
            matches!(&state, TaskState::Succeeded { attempt: 0, report } if report.unchanged && report.summary.starts_with("up to date")),
            "{id}: {state:?}"
        );
    }
    let attempts = r.ledger().attempts(&s.run_id).await.unwrap();
    assert!(attempts
        .iter()
        .any(|a| a.task == "last" && a.state == AttemptStatus::Succeeded));
    // Without skipping, everything runs.
    log.lock().unwrap().clear();
    let all = RunOptions {
        skip_unchanged: false,
        ..opts(dir.path())
    };
    let s = r.run(&d, build(), &all).await.unwrap();
    assert_eq!(s.state, RunState::Succeeded);
    assert_eq!(log.lock().unwrap().len(), 8);
}

/// Counts the attempts the ledger holds for its run while it runs.
struct Peek(Ledger, Arc<Mutex<Option<usize>>>);

#[async_trait]
impl Task for Peek {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let held = self.0.attempts(&ctx.run_id).await.unwrap().len();
        *self.1.lock().unwrap() = Some(held);
        Ok(TaskReport::default())
    }
}

#[tokio::test]
async fn a_run_that_records_its_tasks_at_its_end_leaves_the_same_ledger() {
    let d = dag("[[tasks]]\nid = \"a\"\nkind = \"test\"\nretries = 2\n\
        [[tasks]]\nid = \"peek\"\nkind = \"test\"\ndepends_on = [\"a\"]\n\
        [[tasks]]\nid = \"fatal\"\nkind = \"test\"\ndepends_on = [\"peek\"]\n\
        [[tasks]]\nid = \"after\"\nkind = \"test\"\ndepends_on = [\"fatal\"]\n");
    let mut ledgers = Vec::new();
    for at_end in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let r = runner().await;
        let seen = Arc::new(Mutex::new(None));
        let s = r
            .run(
                &d,
                tasks(vec![
                    (
                        "a",
                        Arc::new(Flaky {
                            failures: 1,
                            calls: Arc::new(AtomicU32::new(0)),
                        }),
                    ),
                    ("peek", Arc::new(Peek(r.ledger().clone(), seen.clone()))),
                    ("fatal", Arc::new(Fatal(Arc::new(AtomicU32::new(0))))),
                    ("after", Arc::new(Log(Arc::default()))),
                ]),
                &RunOptions {
                    tasks_at_end: at_end,
                    ..opts(dir.path())
                },
            )
            .await
            .unwrap();
        let seen = seen.lock().unwrap().expect("peek ran");
        if at_end {
            assert_eq!(seen, 0, "nothing is written before the run's end");
        } else {
            assert_eq!(seen, 3, "a's two attempts and peek's own, as they go");
        }
        let run = &r.ledger().runs(None, 1).await.unwrap()[0];
        assert_eq!(run.state, RunStatus::Failed);
        let mut attempts: Vec<_> = r
            .ledger()
            .attempts(&s.run_id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| {
                assert!(a.ended_at.is_some(), "{a:?}");
                (a.task, a.attempt, a.state, a.rows_read, a.error)
            })
            .collect();
        attempts.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        ledgers.push(attempts);
    }
    assert_eq!(ledgers[0], ledgers[1]);
    let states: Vec<(&str, i64, AttemptStatus)> = ledgers[1]
        .iter()
        .map(|(t, n, s, ..)| (t.as_str(), *n, *s))
        .collect();
    for expected in [
        ("a", 1, AttemptStatus::Failed),
        ("a", 2, AttemptStatus::Succeeded),
        ("peek", 1, AttemptStatus::Succeeded),
        ("fatal", 1, AttemptStatus::Failed),
        ("after", 0, AttemptStatus::Skipped),
    ] {
        assert!(states.contains(&expected), "{expected:?} in {states:?}");
    }
}
