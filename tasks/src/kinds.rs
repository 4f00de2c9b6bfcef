//! The registry of task kinds: one enum whose only `match`es hand each
//! variant to its module. Each kind module declares its own [`KindInfo`]
//! (name, summary, role, fields) once; validation, `cutover dags kinds`,
//! serialisation and errors all come from those.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use workflows::{Dag, KindInfo, ReadOptions, SettingProblem, Task, TaskBuilder, TaskKinds};

use crate::progress::Progress;
use crate::source::Source;
use crate::warehouse::Warehouse;
use crate::{extract, load, transform, verify};

/// A task's kind and its parsed settings.
#[derive(Debug, Clone)]
pub enum TaskKind {
    /// Reads events from MongoDB or the events file.
    ExtractMongo(extract::mongo::Config),
    /// Turns extracted rows into facts and dimensions with Polars SQL.
    TransformPolars(transform::polars::Config),
    /// Merges transform outputs into warehouse tables.
    LoadMerge(load::merge::Config),
    /// Reconciles a fact table with the source.
    VerifyReconcile(verify::reconcile::Config),
    /// Reconciles legacy reports with the warehouse.
    VerifyReports(verify::reports::Config),
    /// Data-quality checks on warehouse tables.
    VerifyChecks(verify::checks::Config),
}

static CATALOG: [KindInfo; 6] = [
    extract::mongo::KIND,
    transform::polars::KIND,
    load::merge::KIND,
    verify::reconcile::KIND,
    verify::reports::KIND,
    verify::checks::KIND,
];

/// A kind's settings with its name, as `cutover dags show` prints them.
#[derive(Serialize)]
struct Tagged<'a, C> {
    kind: &'static str,
    #[serde(flatten)]
    settings: &'a C,
}

impl Serialize for TaskKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind_name();
        match self {
            Self::ExtractMongo(settings) => Tagged { kind, settings }.serialize(s),
            Self::TransformPolars(settings) => Tagged { kind, settings }.serialize(s),
            Self::LoadMerge(settings) => Tagged { kind, settings }.serialize(s),
            Self::VerifyReconcile(settings) => Tagged { kind, settings }.serialize(s),
            Self::VerifyReports(settings) => Tagged { kind, settings }.serialize(s),
            Self::VerifyChecks(settings) => Tagged { kind, settings }.serialize(s),
        }
    }
}

impl TaskKind {
    /// The settings of an extract, for what reads the same events (the
    /// feed's routing, replays, dry runs).
    pub fn extract(&self) -> Option<&extract::mongo::Config> {
        match self {
            Self::ExtractMongo(c) => Some(c),
            _ => None,
        }
    }
}

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
        &CATALOG
    }

    fn reports() -> &'static [&'static str] {
        crate::reports::ReportName::NAMES
    }

    fn parse(kind: &str, settings: toml::Table) -> Result<Self, Vec<SettingProblem>> {
        Ok(match kind {
            k if k == extract::mongo::KIND.name => Self::ExtractMongo(parse_as(settings)?),
            k if k == transform::polars::KIND.name => Self::TransformPolars(parse_as(settings)?),
            k if k == load::merge::KIND.name => Self::LoadMerge(parse_as(settings)?),
            k if k == verify::reconcile::KIND.name => Self::VerifyReconcile(parse_as(settings)?),
            k if k == verify::reports::KIND.name => Self::VerifyReports(parse_as(settings)?),
            k if k == verify::checks::KIND.name => Self::VerifyChecks(parse_as(settings)?),
            other => {
                return Err(vec![SettingProblem::field(
                    "kind",
                    format!("unknown kind `{other}`"),
                )]);
            }
        })
    }

    fn info(&self) -> &'static KindInfo {
        match self {
            Self::ExtractMongo(_) => &extract::mongo::KIND,
            Self::TransformPolars(_) => &transform::polars::KIND,
            Self::LoadMerge(_) => &load::merge::KIND,
            Self::VerifyReconcile(_) => &verify::reconcile::KIND,
            Self::VerifyReports(_) => &verify::reports::KIND,
            Self::VerifyChecks(_) => &verify::checks::KIND,
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
                            out.push(SettingProblem::field(
                                format!("outputs.{name}.sql"),
                                e.to_string(),
                            ));
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
                        format!(
                            "`{}` is not a {} task of this DAG",
                            c.input,
                            transform::polars::KIND.name
                        ),
                    ));
                }
                out
            }
            Self::VerifyReconcile(c) => c.check(extract_config(tasks, &c.source).is_some()),
            Self::VerifyReports(c) => c.check(extract_config(tasks, &c.source).is_some()),
            Self::VerifyChecks(c) => c.check(
                c.source
                    .as_ref()
                    .is_some_and(|s| extract_config(tasks, s).is_some()),
            ),
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
) -> Option<crate::segment::Planned> {
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

/// What tasks connect to, and how they show progress: the
/// [`TaskBuilder`] the binary hands to the engine.
#[derive(Debug, Clone)]
pub struct Env {
    /// The event source.
    pub source: Source,
    /// The warehouse.
    pub warehouse: Warehouse,
    /// Whether tasks show progress counters.
    pub progress: Progress,
}

impl Env {
    /// Tasks over `source` and `warehouse`, showing progress.
    pub fn new(source: Source, warehouse: Warehouse) -> Self {
        Self {
            source,
            warehouse,
            progress: Progress::Shown,
        }
    }

    /// The same, with tasks' progress counters hidden (the feed, backfills,
    /// replays: many small runs that report their own progress).
    pub fn quiet(self) -> Self {
        Self {
            progress: Progress::Hidden,
            ..self
        }
    }

    /// Builds the implementation of every task of `dag`, reading from the
    /// watermarks.
    pub fn tasks(&self, dag: &Dag<TaskKind>) -> HashMap<String, Arc<dyn Task>> {
        self.build(dag, &ReadOptions::default())
    }
}

impl TaskBuilder<TaskKind> for Env {
    fn build(&self, dag: &Dag<TaskKind>, read: &ReadOptions) -> HashMap<String, Arc<dyn Task>> {
        let all: Vec<(&str, &TaskKind)> =
            dag.tasks.iter().map(|t| (t.id.as_str(), &t.kind)).collect();
        // The DAG's definition as its tasks do it: a changed task makes
        // the next nightly run a full one, even with nothing new to read.
        let definition = xxhash_rust::xxh3::xxh3_64(
            serde_json::to_string(
                &dag.tasks
                    .iter()
                    .map(|t| (&t.id, &t.depends_on, &t.kind))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default()
            .as_bytes(),
        );
        dag.tasks
            .iter()
            .map(|spec| {
                let task: Arc<dyn Task> = match &spec.kind {
                    TaskKind::ExtractMongo(c) => extract::mongo::build(
                        c.clone(),
                        self.source.clone(),
                        self.warehouse.clone(),
                        read,
                        self.progress,
                        definition,
                    ),
                    TaskKind::TransformPolars(c) => {
                        transform::polars::build(c.clone(), self.warehouse.clone())
                    }
                    TaskKind::LoadMerge(c) => {
                        load::merge::build(c.clone(), self.warehouse.clone(), self.progress)
                    }
                    TaskKind::VerifyReconcile(c) => {
                        let extract = extract_config(&all, &c.source)
                            .expect("checked when the DAG was loaded")
                            .selection();
                        verify::reconcile::build(
                            c.clone(),
                            extract,
                            self.source.clone(),
                            self.warehouse.clone(),
                        )
                    }
                    TaskKind::VerifyReports(c) => {
                        let extract = extract_config(&all, &c.source)
                            .expect("checked when the DAG was loaded")
                            .selection();
                        verify::reports::build(
                            c.clone(),
                            extract,
                            self.source.clone(),
                            self.warehouse.clone(),
                        )
                    }
                    TaskKind::VerifyChecks(c) => {
                        let source_task = c.source.as_ref().map(|s| {
                            let extract = extract_config(&all, s)
                                .expect("checked when the DAG was loaded")
                                .selection();
                            (s.clone(), extract)
                        });
                        verify::checks::build(
                            c,
                            source_task,
                            self.source.clone(),
                            self.warehouse.clone(),
                        )
                    }
                };
                (spec.id.clone(), task)
            })
            .collect()
    }
}
