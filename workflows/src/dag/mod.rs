//! DAG files: parsing and validation into a checked [`Dag`].
//!
//! A DAG file is TOML. [`parse`] turns its text into a [`Dag`] in one pass
//! that collects every problem (unknown fields with a "did you mean", bad
//! values, duplicate task ids, unknown dependencies, cycles, unknown kinds,
//! invalid schedules), each naming the file, the task and the field.
//! Validation does no I/O; only [`load_file`] and [`load_dir`] read files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::schedule::Schedule;
use crate::task::{Role, TaskKinds};

mod cutover;
mod parse;

pub use cutover::{Cutover, Evidence};
pub use parse::parse;

/// One problem in a DAG file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DagError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The task, when the problem is inside one.
    pub task: Option<String>,
    /// The field, when the problem is one field's.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(task) = &self.task {
            write!(f, ": task `{task}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A validated DAG.
#[derive(Debug, Clone)]
pub struct Dag<K> {
    /// The file it was read from.
    pub file: PathBuf,
    /// Its unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The data point it feeds (`views`, `engagement`, ...).
    pub data_point: String,
    /// The data point's cutover (`[cutover]`): the reports its flag
    /// switches and the evidence a promotion needs. At most one DAG of a
    /// data point has one.
    pub cutover: Option<Cutover>,
    /// When the scheduler runs it; `None` for ad-hoc only.
    pub schedule: Option<Schedule>,
    /// DAGs that run before this one when several run together (e.g. the
    /// dimensions before the facts in `run --all`).
    pub after: Vec<String>,
    /// Its tasks in a dependency order: every task after its dependencies.
    pub tasks: Vec<TaskSpec<K>>,
}

impl<K> Dag<K> {
    /// The task with id `id`.
    pub fn task(&self, id: &str) -> Option<&TaskSpec<K>> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The tasks grouped in waves: every task in a wave depends only on
    /// tasks of earlier waves, so a wave's tasks can run at the same time.
    pub fn waves(&self) -> Vec<Vec<&TaskSpec<K>>> {
        layers(&self.tasks, |t| &t.id, |t| &t.depends_on)
            .into_iter()
            .map(|wave| wave.into_iter().map(|i| &self.tasks[i]).collect())
            .collect()
    }

    /// DAGs grouped in levels: each DAG comes after those its `after` names
    /// that are among `dags` (indexes into `dags`, which is in `after`
    /// order, as [`load_dir`] returns it), so a level's DAGs can run at the
    /// same time.
    pub fn levels(dags: &[Self]) -> Vec<Vec<usize>> {
        layers(dags, |d| &d.name, |d| &d.after)
    }

    /// The DAG as backfills and the feed run it: without its verify tasks
    /// (and what depends on them), which reconcile a whole range against
    /// the source. `None` when it has no extract task left.
    pub fn without_verify(&self) -> Option<Self>
    where
        K: TaskKinds + Clone,
    {
        let mut dropped: BTreeSet<&str> = BTreeSet::new();
        let mut tasks = Vec::new();
        for t in &self.tasks {
            if t.kind.role() == Role::Verify
                || t.depends_on.iter().any(|d| dropped.contains(d.as_str()))
            {
                dropped.insert(&t.id);
            } else {
                tasks.push(t.clone());
            }
        }
        let reads = tasks.iter().any(|t| t.kind.role() == Role::Extract);
        reads.then(|| Dag {
            tasks,
            file: self.file.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            data_point: self.data_point.clone(),
            cutover: self.cutover.clone(),
            schedule: self.schedule.clone(),
            after: self.after.clone(),
        })
    }
}

/// Groups `items` in layers by their predecessors (`before`, by `name`):
/// each item is one layer after the latest of its predecessors among
/// `items`. `items` is in an order where every item follows its
/// predecessors. Returns indexes into `items`.
fn layers<T>(
    items: &[T],
    name: impl Fn(&T) -> &String,
    before: impl Fn(&T) -> &Vec<String>,
) -> Vec<Vec<usize>> {
    let mut level: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let l = before(item)
            .iter()
            .filter_map(|b| level.get(b.as_str()).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level.insert(name(item).as_str(), l);
        if out.len() <= l {
            out.resize_with(l + 1, Vec::new);
        }
        out[l].push(i);
    }
    out
}

/// A validated task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSpec<K> {
    /// Unique within the DAG.
    pub id: String,
    /// What it is for.
    pub description: Option<String>,
    /// Tasks that must succeed before this one starts.
    pub depends_on: Vec<String>,
    /// Further attempts after a retryable failure.
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    #[serde(with = "crate::duration")]
    pub backoff: Duration,
    /// The longest delay between attempts.
    #[serde(with = "crate::duration")]
    pub max_backoff: Duration,
    /// How long one attempt may take before it is cancelled and counted as
    /// a retryable failure.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// The kind and its own settings.
    pub kind: K,
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Reads and validates one DAG file.
///
/// # Errors
/// Every problem in the file, or one saying it could not be read.
pub fn load_file<K: TaskKinds>(path: &Path) -> Result<Dag<K>, Vec<DagError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![DagError {
            file: path.to_path_buf(),
            task: None,
            field: None,
            message: format!("cannot read the file: {e}"),
        }]
    })?;
    parse(path, &text)
}

/// Reads and validates every `*.toml` file in `dir`, sorted by name, and
/// checks that DAG names are unique.
///
/// # Errors
/// Every problem in every file.
pub fn load_dir<K: TaskKinds>(dir: &Path) -> Result<Vec<Dag<K>>, Vec<DagError>> {
    let read_error = |e: std::io::Error| {
        vec![DagError {
            file: dir.to_path_buf(),
            task: None,
            field: None,
            message: format!("cannot read the DAG directory: {e}"),
        }]
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let dags = load_files(&paths)?;
    check_after(&dags)?;
    check_cutovers(&dags)?;
    Ok(dags)
}

/// Reads and validates the given files and checks that DAG names are unique.
///
/// # Errors
/// Every problem in every file.
pub fn load_files<K: TaskKinds>(paths: &[PathBuf]) -> Result<Vec<Dag<K>>, Vec<DagError>> {
    let mut dags = Vec::new();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        match load_file::<K>(path) {
            Ok(dag) => {
                if let Some(first) = seen.get(&dag.name) {
                    errors.push(DagError {
                        file: path.clone(),
                        task: None,
                        field: Some("name".into()),
                        message: format!(
                            "DAG name `{}` is already used by {}",
                            dag.name,
                            first.display()
                        ),
                    });
                } else {
                    seen.insert(dag.name.clone(), path.clone());
                    dags.push(dag);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        order_dags(dags)
    } else {
        Err(errors)
    }
}

/// Reports a data point whose `[cutover]` is declared twice, and a report
/// that two data points switch.
fn check_cutovers<K>(dags: &[Dag<K>]) -> Result<(), Vec<DagError>> {
    let mut points: BTreeMap<&str, &Path> = BTreeMap::new();
    let mut reports: BTreeMap<&str, &str> = BTreeMap::new();
    let mut errors = Vec::new();
    for d in dags {
        let Some(c) = &d.cutover else { continue };
        let error = |message: String| DagError {
            file: d.file.clone(),
            task: None,
            field: Some("cutover".into()),
            message,
        };
        if let Some(first) = points.insert(&d.data_point, &d.file) {
            errors.push(error(format!(
                "the data point `{}` already has its `[cutover]` in {}",
                d.data_point,
                first.display()
            )));
            continue;
        }
        for r in &c.reports {
            if let Some(other) = reports.insert(r, &d.data_point) {
                errors.push(error(format!(
                    "the report `{r}` is already switched by the data point `{other}`"
                )));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Reports `after` entries that name no DAG of the set.
fn check_after<K>(dags: &[Dag<K>]) -> Result<(), Vec<DagError>> {
    let names: Vec<&str> = dags.iter().map(|d| d.name.as_str()).collect();
    let mut errors = Vec::new();
    for d in dags {
        for a in &d.after {
            if !names.contains(&a.as_str()) {
                let hint = did_you_mean(a, names.iter().copied())
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default();
                errors.push(DagError {
                    file: d.file.clone(),
                    task: None,
                    field: Some("after".into()),
                    message: format!("unknown DAG `{a}`{hint}"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Puts every DAG after the DAGs of the set its `after` names (keeping the
/// given order otherwise), or reports a cycle.
fn order_dags<K>(dags: Vec<Dag<K>>) -> Result<Vec<Dag<K>>, Vec<DagError>> {
    let names: Vec<String> = dags.iter().map(|d| d.name.clone()).collect();
    let mut slots: Vec<Option<Dag<K>>> = dags.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    while slots.iter().any(Option::is_some) {
        let done: Vec<&str> = out.iter().map(|d: &Dag<K>| d.name.as_str()).collect();
        let ready = slots.iter().position(|s| {
            s.as_ref().is_some_and(|d| {
                d.after
                    .iter()
                    .all(|a| done.contains(&a.as_str()) || !names.contains(a))
            })
        });
        match ready {
            Some(i) => out.push(slots[i].take().expect("present")),
            None => {
                let stuck: Vec<&Dag<K>> = slots.iter().flatten().collect();
                let list = stuck.iter().map(|d| d.name.as_str()).collect::<Vec<_>>();
                return Err(vec![DagError {
                    file: stuck[0].file.clone(),
                    task: None,
                    field: Some("after".into()),
                    message: format!("the `after` lists of DAGs {} form a cycle", list.join(", ")),
                }]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
