//! Parsing one DAG file's text into a checked [`Dag`], collecting every
//! problem in one pass.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use super::{did_you_mean, Dag, DagError, TaskSpec};
use crate::schedule::{CatchUp, Schedule};
use crate::task::{SettingProblem, TaskKinds};

/// The settings every task has, with their defaults.
#[derive(Debug, Clone, Copy)]
struct Common {
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

const BUILTIN_DEFAULTS: Common = Common {
    retries: 0,
    backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
    timeout: Duration::from_secs(3600),
};

const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "data_point",
    "after",
    "cutover",
    "schedule",
    "defaults",
    "tasks",
];
const SCHEDULE_FIELDS: &[&str] = &["cron", "timezone", "catch_up"];
const DEFAULT_FIELDS: &[&str] = &["retries", "backoff", "max_backoff", "timeout"];
const TASK_FIELDS: &[&str] = &[
    "id",
    "kind",
    "description",
    "depends_on",
    "retries",
    "backoff",
    "max_backoff",
    "timeout",
];

/// Collects problems for one file.
pub(super) struct Problems<'a> {
    file: &'a Path,
    pub(super) list: Vec<DagError>,
}

impl Problems<'_> {
    pub(super) fn push(
        &mut self,
        task: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) {
        self.list.push(DagError {
            file: self.file.to_path_buf(),
            task: task.map(str::to_owned),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Reports every key of `table` not in `known`, with a hint.
    pub(super) fn unknown_fields(
        &mut self,
        task: Option<&str>,
        prefix: &str,
        table: &toml::Table,
        known: &[&str],
    ) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                let field = format!("{prefix}{key}");
                let message = match did_you_mean(key, known.iter().copied()) {
                    Some(hint) => format!("unknown field (did you mean `{hint}`?)"),
                    None => format!("unknown field; expected one of {}", list(known)),
                };
                self.push(task, Some(&field), message);
            }
        }
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses and validates a DAG file's text. Does no I/O.
///
/// # Errors
/// Every problem found, in file order.
pub fn parse<K: TaskKinds>(file: &Path, text: &str) -> Result<Dag<K>, Vec<DagError>> {
    let mut p = Problems {
        file,
        list: Vec::new(),
    };
    let root: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            p.push(
                None,
                None,
                format!("not valid TOML: {}", e.to_string().trim_end()),
            );
            return Err(p.list);
        }
    };
    p.unknown_fields(None, "", &root, TOP_FIELDS);

    let name = required_str(&mut p, &root, None, "name").unwrap_or_default();
    if !name.is_empty() && !is_name(&name) {
        p.push(
            None,
            Some("name"),
            format!("`{name}` must be lowercase letters, digits, `_` or `-`"),
        );
    }
    let data_point = required_str(&mut p, &root, None, "data_point").unwrap_or_default();
    let description = optional_str(&mut p, &root, None, "description").unwrap_or_default();
    let after = match root.get("after") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) if items.iter().all(|v| v.is_str()) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            p.push(None, Some("after"), "expected an array of DAG names");
            Vec::new()
        }
    };

    let cutover = match root.get("cutover") {
        None => None,
        Some(toml::Value::Table(t)) => super::cutover::parse(&mut p, t, K::reports()),
        Some(_) => {
            p.push(
                None,
                Some("cutover"),
                "expected a table (`[cutover]`) with the data point's `reports`",
            );
            None
        }
    };

    let schedule = match root.get("schedule") {
        None => None,
        Some(toml::Value::Table(t)) => parse_schedule(&mut p, t),
        Some(_) => {
            p.push(
                None,
                Some("schedule"),
                "expected a table with `cron` and `timezone`",
            );
            None
        }
    };

    let defaults = match root.get("defaults") {
        None => BUILTIN_DEFAULTS,
        Some(toml::Value::Table(t)) => {
            p.unknown_fields(None, "defaults.", t, DEFAULT_FIELDS);
            common(&mut p, None, "defaults.", t, BUILTIN_DEFAULTS)
        }
        Some(_) => {
            p.push(None, Some("defaults"), "expected a table");
            BUILTIN_DEFAULTS
        }
    };

    let raw_tasks: Vec<toml::Table> = match root.get("tasks") {
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                toml::Value::Table(t) => Some(t.clone()),
                _ => {
                    p.push(
                        None,
                        Some(&format!("tasks[{i}]")),
                        "expected a table (`[[tasks]]`)",
                    );
                    None
                }
            })
            .collect(),
        Some(_) => {
            p.push(
                None,
                Some("tasks"),
                "expected an array of tables (`[[tasks]]`)",
            );
            Vec::new()
        }
        None => {
            p.push(
                None,
                Some("tasks"),
                "missing; a DAG needs at least one `[[tasks]]`",
            );
            Vec::new()
        }
    };
    if raw_tasks.is_empty() && root.contains_key("tasks") {
        p.push(None, Some("tasks"), "a DAG needs at least one task");
    }

    let mut tasks: Vec<TaskSpec<K>> = Vec::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for (i, raw) in raw_tasks.into_iter().enumerate() {
        let fallback = format!("#{}", i + 1);
        let id = match raw.get("id") {
            Some(toml::Value::String(s)) if is_name(s) => s.clone(),
            Some(toml::Value::String(s)) => {
                p.push(
                    Some(s),
                    Some("id"),
                    "task ids must be lowercase letters, digits, `_` or `-`",
                );
                s.clone()
            }
            Some(_) => {
                p.push(Some(&fallback), Some("id"), "expected a string");
                fallback
            }
            None => {
                p.push(Some(&fallback), Some("id"), "missing");
                fallback
            }
        };
        if !ids.insert(id.clone()) {
            p.push(Some(&id), Some("id"), "duplicate task id");
            continue;
        }
        if let Some(task) = parse_task::<K>(&mut p, &id, raw, defaults) {
            tasks.push(task);
        }
    }

    // References between tasks.
    let all_ids: Vec<String> = ids.iter().cloned().collect();
    let kinds: Vec<(&str, &K)> = tasks.iter().map(|t| (t.id.as_str(), &t.kind)).collect();
    for task in &tasks {
        for dep in &task.depends_on {
            if dep == &task.id {
                p.push(
                    Some(&task.id),
                    Some("depends_on"),
                    "a task cannot depend on itself",
                );
            } else if !ids.contains(dep) {
                let hint = did_you_mean(dep, all_ids.iter().map(String::as_str))
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default();
                p.push(
                    Some(&task.id),
                    Some("depends_on"),
                    format!("unknown task `{dep}`{hint}"),
                );
            }
        }
        for problem in task.kind.check(&task.depends_on, &kinds) {
            p.push(Some(&task.id), problem.field.as_deref(), problem.message);
        }
    }

    let ordered = if p.list.is_empty() {
        order(&mut p, tasks)
    } else {
        Vec::new()
    };
    if !p.list.is_empty() {
        return Err(p.list);
    }
    Ok(Dag {
        file: file.to_path_buf(),
        name,
        description,
        data_point,
        cutover,
        schedule,
        after,
        tasks: ordered,
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn required_str(
    p: &mut Problems<'_>,
    t: &toml::Table,
    task: Option<&str>,
    field: &str,
) -> Option<String> {
    match t.get(field) {
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(toml::Value::String(_)) => {
            p.push(task, Some(field), "must not be empty");
            None
        }
        Some(_) => {
            p.push(task, Some(field), "expected a string");
            None
        }
        None => {
            p.push(task, Some(field), "missing");
            None
        }
    }
}

fn optional_str(
    p: &mut Problems<'_>,
    t: &toml::Table,
    task: Option<&str>,
    field: &str,
) -> Option<String> {
    match t.get(field) {
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            p.push(task, Some(field), "expected a string");
            None
        }
        None => None,
    }
}

fn parse_schedule(p: &mut Problems<'_>, t: &toml::Table) -> Option<Schedule> {
    p.unknown_fields(None, "schedule.", t, SCHEDULE_FIELDS);
    let cron = match t.get("cron") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => {
            p.push(None, Some("schedule.cron"), "expected a string");
            return None;
        }
        None => {
            p.push(None, Some("schedule.cron"), "missing");
            return None;
        }
    };
    let timezone = match t.get("timezone") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => {
            p.push(None, Some("schedule.timezone"), "expected a string");
            return None;
        }
        None => "UTC".to_owned(),
    };
    let catch_up = match t.get("catch_up") {
        Some(toml::Value::String(s)) => match CatchUp::from_name(s) {
            Some(c) => c,
            None => {
                p.push(
                    None,
                    Some("schedule.catch_up"),
                    format!(
                        "`{s}` is not a catch-up policy; expected one of {}",
                        CatchUp::NAMES.join(", ")
                    ),
                );
                return None;
            }
        },
        Some(_) => {
            p.push(None, Some("schedule.catch_up"), "expected a string");
            return None;
        }
        None => CatchUp::default(),
    };
    // Report both parts when both are wrong.
    let mut ok = true;
    if let Err(e) = crate::schedule::parse_cron(&cron) {
        p.push(None, Some("schedule.cron"), e.to_string());
        ok = false;
    }
    if let Err(e) = Schedule::new("* * * * *", &timezone) {
        p.push(
            None,
            Some(&format!("schedule.{}", e.field())),
            e.to_string(),
        );
        ok = false;
    }
    if ok {
        Schedule::new(&cron, &timezone)
            .ok()
            .map(|s| s.with_catch_up(catch_up))
    } else {
        None
    }
}

pub(super) fn duration(
    p: &mut Problems<'_>,
    task: Option<&str>,
    field: &str,
    v: &toml::Value,
) -> Option<Duration> {
    match v {
        toml::Value::String(s) => match crate::duration::parse(s) {
            Ok(d) => Some(d),
            Err(e) => {
                p.push(task, Some(field), e.to_string());
                None
            }
        },
        _ => {
            p.push(
                task,
                Some(field),
                "expected a duration string such as `30s`",
            );
            None
        }
    }
}

fn common(
    p: &mut Problems<'_>,
    task: Option<&str>,
    prefix: &str,
    t: &toml::Table,
    base: Common,
) -> Common {
    let mut c = base;
    if let Some(v) = t.get("retries") {
        match v.as_integer().map(u32::try_from) {
            Some(Ok(n)) => c.retries = n,
            _ => p.push(
                task,
                Some(&format!("{prefix}retries")),
                "expected a non-negative integer",
            ),
        }
    }
    for (name, slot) in [
        ("backoff", &mut c.backoff),
        ("max_backoff", &mut c.max_backoff),
        ("timeout", &mut c.timeout),
    ] {
        if let Some(v) = t.get(name) {
            if let Some(d) = duration(p, task, &format!("{prefix}{name}"), v) {
                *slot = d;
            }
        }
    }
    if c.timeout.is_zero() {
        p.push(
            task,
            Some(&format!("{prefix}timeout")),
            "must be longer than zero",
        );
    }
    c
}

fn parse_task<K: TaskKinds>(
    p: &mut Problems<'_>,
    id: &str,
    mut raw: toml::Table,
    defaults: Common,
) -> Option<TaskSpec<K>> {
    let task = Some(id);
    let kind = required_str(p, &raw, task, "kind");
    let description = optional_str(p, &raw, task, "description");
    let depends_on = match raw.get("depends_on") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                toml::Value::String(s) => Some(s.clone()),
                _ => {
                    p.push(task, Some("depends_on"), "expected an array of task ids");
                    None
                }
            })
            .collect(),
        Some(_) => {
            p.push(task, Some("depends_on"), "expected an array of task ids");
            Vec::new()
        }
    };
    let mut seen_deps = BTreeSet::new();
    for dep in &depends_on {
        if !seen_deps.insert(dep) {
            p.push(task, Some("depends_on"), format!("`{dep}` is listed twice"));
        }
    }
    let c = common(p, task, "", &raw, defaults);

    let kind = kind?;
    let Some(info) = K::catalog().iter().find(|k| k.name == kind) else {
        let names: Vec<&str> = K::catalog().iter().map(|k| k.name).collect();
        let message = match did_you_mean(&kind, names.iter().copied()) {
            Some(hint) => format!("unknown kind `{kind}` (did you mean `{hint}`?)"),
            None => format!("unknown kind `{kind}`; the kinds are {}", list(&names)),
        };
        p.push(task, Some("kind"), message);
        return None;
    };

    for field in TASK_FIELDS {
        raw.remove(*field);
    }
    let own = (info.fields)();
    let mut known: Vec<&str> = TASK_FIELDS.to_vec();
    known.extend_from_slice(own);
    let before = p.list.len();
    p.unknown_fields(task, "", &raw, &known);
    if p.list.len() > before {
        raw.retain(|k, _| own.contains(&k));
    }
    let settings = match K::parse(&kind, raw) {
        Ok(s) => s,
        Err(problems) => {
            for SettingProblem { field, message } in problems {
                p.push(task, field.as_deref(), message);
            }
            return None;
        }
    };
    Some(TaskSpec {
        id: id.to_owned(),
        description,
        depends_on,
        retries: c.retries,
        backoff: c.backoff,
        max_backoff: c.max_backoff.max(c.backoff),
        timeout: c.timeout,
        kind: settings,
    })
}

/// Orders tasks so every task follows its dependencies, or reports the
/// cycles that prevent it, naming the tasks in each.
fn order<K>(p: &mut Problems<'_>, tasks: Vec<TaskSpec<K>>) -> Vec<TaskSpec<K>> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut mark = vec![0u8; tasks.len()];
    let mut out: Vec<usize> = Vec::with_capacity(tasks.len());
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();

    fn visit<K>(
        i: usize,
        tasks: &[TaskSpec<K>],
        index: &HashMap<&str, usize>,
        mark: &mut [u8],
        stack: &mut Vec<usize>,
        out: &mut Vec<usize>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        mark[i] = 1;
        stack.push(i);
        for dep in &tasks[i].depends_on {
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            match mark[j] {
                0 => visit(j, tasks, index, mark, stack, out, cycles),
                1 => {
                    let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                    cycles.push(
                        stack[start..]
                            .iter()
                            .map(|&k| tasks[k].id.clone())
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        stack.pop();
        mark[i] = 2;
        out.push(i);
    }

    let mut cycles = Vec::new();
    for i in 0..tasks.len() {
        if mark[i] == 0 {
            visit(
                i,
                &tasks,
                &index,
                &mut mark,
                &mut Vec::new(),
                &mut out,
                &mut cycles,
            );
        }
    }
    for mut cycle in cycles {
        // Report each cycle once, starting from its smallest id.
        let min = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, id)| id.as_str())
            .map(|(i, _)| i)
            .unwrap_or(0);
        cycle.rotate_left(min);
        if reported.insert(cycle.clone()) {
            let mut path = cycle.clone();
            path.push(cycle[0].clone());
            p.push(
                Some(&cycle[0]),
                Some("depends_on"),
                format!(
                    "dependency cycle: {} (each depends on the next)",
                    path.join(" -> ")
                ),
            );
        }
    }
    if !p.list.is_empty() {
        return Vec::new();
    }
    let mut slots: Vec<Option<TaskSpec<K>>> = tasks.into_iter().map(Some).collect();
    out.into_iter().filter_map(|i| slots[i].take()).collect()
}
