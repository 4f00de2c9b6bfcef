//! The registry of task kinds: one enum whose only `match`es hand each
//! variant to its module. Validation, `cutover dags kinds` and errors all
//! come from this table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_aux::serde_introspection::serde_introspect;
use workflows::{Dag, KindInfo, Role, SettingProblem, Task, TaskKinds};

use crate::extract::mongo::Window;
use crate::rate::RateLimit;
use crate::source::Source;
use crate::warehouse::Warehouse;
use crate::{extract, load, transform, verify};

/// A task's kind and its parsed settings.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind")]
pub enum TaskKind {
    /// Reads events from MongoDB or the events file.
    #[serde(rename = "extract.mongo")]
    ExtractMongo(extract::mongo::Config),
    /// Turns extracted rows into facts and dimensions with Polars SQL.
    #[serde(rename = "transform.polars")]
    TransformPolars(transform::polars::Config),
    /// Merges transform outputs into warehouse tables.
    #[serde(rename = "load.merge")]
    LoadMerge(load::merge::Config),
    /// Reconciles a fact table with the source.
    #[serde(rename = "verify.reconcile")]
    VerifyReconcile(verify::reconcile::Config),
}

static CATALOG: &[KindInfo] = &[
    KindInfo {
        name: "extract.mongo",
        summary: "read events of some types from MongoDB (or the events file) since the watermark; quarantine invalid ones",
        fields: || serde_introspect::<extract::mongo::Config>(),
    },
    KindInfo {
        name: "transform.polars",
        summary: "run Polars SQL over each extracted segment, one query per output table",
        fields: || serde_introspect::<transform::polars::Config>(),
    },
    KindInfo {
        name: "load.merge",
        summary: "merge outputs into warehouse tables, one transaction per segment with the watermark",
        fields: || serde_introspect::<load::merge::Config>(),
    },
    KindInfo {
        name: "verify.reconcile",
        summary: "check day by day that a fact table holds exactly the valid distinct source events",
        fields: || serde_introspect::<verify::reconcile::Config>(),
    },
];

fn parse_as<T: DeserializeOwned>(settings: toml::Table) -> Result<T, Vec<SettingProblem>> {
    serde_path_to_error::deserialize(toml::Value::Table(settings)).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        vec![SettingProblem {
            field,
            message: e.into_inner().to_string().trim().to_owned(),
        }]
    })
}

impl TaskKinds for TaskKind {
    fn catalog() -> &'static [KindInfo] {
        CATALOG
    }

    fn parse(kind: &str, settings: toml::Table) -> Result<Self, Vec<SettingProblem>> {
        Ok(match kind {
            "extract.mongo" => Self::ExtractMongo(parse_as(settings)?),
            "transform.polars" => Self::TransformPolars(parse_as(settings)?),
            "load.merge" => Self::LoadMerge(parse_as(settings)?),
            "verify.reconcile" => Self::VerifyReconcile(parse_as(settings)?),
            other => {
                return Err(vec![SettingProblem::field(
                    "kind",
                    format!("unknown kind `{other}`"),
                )]);
            }
        })
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Self::ExtractMongo(_) => "extract.mongo",
            Self::TransformPolars(_) => "transform.polars",
            Self::LoadMerge(_) => "load.merge",
            Self::VerifyReconcile(_) => "verify.reconcile",
        }
    }

    fn role(&self) -> Role {
        match self {
            Self::ExtractMongo(_) => Role::Extract,
            Self::TransformPolars(_) => Role::Transform,
            Self::LoadMerge(_) => Role::Load,
            Self::VerifyReconcile(_) => Role::Verify,
        }
    }

    fn check(&self, depends_on: &[String], tasks: &[(&str, &Self)]) -> Vec<SettingProblem> {
        match self {
            Self::ExtractMongo(c) => c.check(),
            Self::TransformPolars(c) => {
                let mut out = c.check(depends_on);
                if let Some(planned) = plan(tasks, c) {
                    for (name, result) in planned {
                        if let Err(e) = result {
                            out.push(SettingProblem::field(format!("outputs.{name}.sql"), e));
                        }
                    }
                }
                out
            }
            Self::LoadMerge(c) => {
                let mut out = c.check(depends_on);
                if let Some(TaskKind::TransformPolars(t)) = find(tasks, &c.input) {
                    let planned = plan(tasks, t);
                    out.extend(c.check_outputs(
                        &t.outputs.keys().cloned().collect::<Vec<_>>(),
                        planned.as_ref(),
                    ));
                } else if depends_on.contains(&c.input) {
                    out.push(SettingProblem::field(
                        "input",
                        format!("`{}` is not a transform.polars task of this DAG", c.input),
                    ));
                }
                out
            }
            Self::VerifyReconcile(c) => c.check(extract_config(tasks, &c.source)),
        }
    }
}

fn find<'a>(tasks: &[(&str, &'a TaskKind)], id: &str) -> Option<&'a TaskKind> {
    tasks.iter().find(|(t, _)| *t == id).map(|(_, k)| *k)
}

/// A transform's outputs planned over its input extract's columns (without
/// data); `None` when its input is not an extract of the DAG.
fn plan(
    tasks: &[(&str, &TaskKind)],
    t: &transform::polars::Config,
) -> Option<transform::polars::Planned> {
    let extract = extract_config(tasks, &t.input)?;
    Some(t.plan(&extract.segment_columns()))
}

fn extract_config<'a>(
    tasks: &[(&str, &'a TaskKind)],
    id: &str,
) -> Option<&'a extract::mongo::Config> {
    tasks.iter().find_map(|(tid, k)| match k {
        TaskKind::ExtractMongo(c) if *tid == id => Some(c),
        _ => None,
    })
}

/// What tasks connect to.
#[derive(Debug, Clone)]
pub struct Env {
    /// The event source.
    pub source: Source,
    /// The warehouse.
    pub warehouse: Warehouse,
}

/// How a run reads other than a nightly run does.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Read this window of event time instead of from the watermarks.
    pub window: Option<Window>,
    /// A read-rate limit shared with other runs (overrides `max_rate`).
    pub limit: Option<Arc<RateLimit>>,
}

/// A DAG as the feed and backfills run it: its tasks without the verify
/// tasks (and anything after them), which reconcile a whole range against
/// the source database. `None` when the DAG reads no events.
pub fn without_verify(dag: &Dag<TaskKind>) -> Option<Dag<TaskKind>> {
    let mut dropped: HashSet<String> = HashSet::new();
    let mut tasks = Vec::new();
    for t in &dag.tasks {
        let drop = matches!(t.kind, TaskKind::VerifyReconcile(_))
            || t.depends_on.iter().any(|d| dropped.contains(d));
        if drop {
            dropped.insert(t.id.clone());
        } else {
            tasks.push(t.clone());
        }
    }
    let reads = tasks
        .iter()
        .any(|t| matches!(t.kind, TaskKind::ExtractMongo(_)));
    reads.then(|| Dag {
        tasks,
        ..dag.clone()
    })
}

/// Builds the implementation of every task of `dag`.
pub fn build_tasks(dag: &Dag<TaskKind>, env: &Env) -> HashMap<String, Arc<dyn Task>> {
    build_tasks_with(dag, env, &ReadOptions::default())
}

/// Builds the implementation of every task of `dag`, reading as `read` says.
pub fn build_tasks_with(
    dag: &Dag<TaskKind>,
    env: &Env,
    read: &ReadOptions,
) -> HashMap<String, Arc<dyn Task>> {
    let all: Vec<(&str, &TaskKind)> = dag.tasks.iter().map(|t| (t.id.as_str(), &t.kind)).collect();
    dag.tasks
        .iter()
        .map(|spec| {
            let task: Arc<dyn Task> = match &spec.kind {
                TaskKind::ExtractMongo(c) => extract::mongo::build(
                    c.clone(),
                    env.source.clone(),
                    env.warehouse.clone(),
                    read.window,
                    read.limit.clone(),
                ),
                TaskKind::TransformPolars(c) => {
                    transform::polars::build(c.clone(), env.warehouse.clone())
                }
                TaskKind::LoadMerge(c) => load::merge::build(c.clone(), env.warehouse.clone()),
                TaskKind::VerifyReconcile(c) => {
                    let extract = extract_config(&all, &c.source)
                        .expect("checked when the DAG was loaded")
                        .clone();
                    verify::reconcile::build(
                        c.clone(),
                        extract,
                        env.source.clone(),
                        env.warehouse.clone(),
                    )
                }
            };
            (spec.id.clone(), task)
        })
        .collect()
}

static HIDE_PROGRESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Hides the progress counters of tasks from now on, e.g. for the many small
/// runs of the feed consumer, which reports its own progress.
pub fn hide_progress() {
    HIDE_PROGRESS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A progress counter on standard error; hidden when it is not a terminal.
pub fn progress(label: &str) -> ProgressBar {
    if HIDE_PROGRESS.load(std::sync::atomic::Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {human_pos} rows ({per_sec}, {elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
