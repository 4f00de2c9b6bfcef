//! The settings of `verify.checks` and their checks without I/O: each
//! declared check is read flat, as DAG files write it, then turned into a
//! typed [`Check`] by [`CheckSpec::check`], which finds every problem.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use workflows::{KindInfo, Role, SettingProblem, SqlIdent};

pub use crate::verify::Scope;

/// The kind.
pub const KIND: KindInfo = KindInfo {
    name: "verify.checks",
    summary: "data-quality checks on warehouse tables: not_null, unique, relationships, accepted_values, freshness, row_count",
    role: Role::Verify,
    fields: || serde_aux::serde_introspection::serde_introspect::<Config>(),
};

/// Failing rows or values listed per failed check at most.
pub const SAMPLE: usize = 5;

/// The settings of a `verify.checks` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `extract.mongo` task whose committed watermark ends the run's
    /// data (for `freshness`) and whose events `row_count` counts; needed
    /// only by those two checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The checks, run in order.
    pub checks: Vec<CheckSpec>,
}

/// What a check tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    /// No row holds NULL in any of `columns`.
    NotNull,
    /// No two rows hold the same values in `columns` (rows with a NULL
    /// among them are left out).
    Unique,
    /// Every non-NULL `column` is found in `to.field`; with `at`, in a
    /// version of a type 2 dimension valid at the row's time.
    Relationships,
    /// Every non-NULL `column` is one of `values`.
    AcceptedValues,
    /// The newest `column` (epoch ms) is at most `within` older than the
    /// source's committed watermark.
    Freshness,
    /// The table holds one row per distinct valid source event of the
    /// run's range, no more, no fewer.
    RowCount,
}

impl CheckType {
    /// The name DAG files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotNull => "not_null",
            Self::Unique => "unique",
            Self::Relationships => "relationships",
            Self::AcceptedValues => "accepted_values",
            Self::Freshness => "freshness",
            Self::RowCount => "row_count",
        }
    }
}

/// What a failed check does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The task fails, and with it the run.
    #[default]
    Error,
    /// The failure is logged and shown in the task's summary; the run goes on.
    Warn,
}

/// A duration as DAG files write it (`26h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Within(#[serde(with = "workflows::duration")] pub Duration);

/// One check as a DAG file declares it; which settings apply depends on
/// `check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// What is checked: `not_null`, `unique`, `relationships`,
    /// `accepted_values`, `freshness` or `row_count`.
    pub check: CheckType,
    /// The table checked.
    pub table: SqlIdent,
    /// `error` (the default) fails the run; `warn` only reports.
    #[serde(default)]
    pub severity: Severity,
    /// `not_null`, `unique`: the columns checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<SqlIdent>>,
    /// `relationships`, `accepted_values`, `freshness`: the column checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<SqlIdent>,
    /// The column that names a failing row in the sample (`not_null`,
    /// `relationships`, `accepted_values`); `row_count`: the table's event
    /// key (default `event_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SqlIdent>,
    /// `relationships`: the table the column refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<SqlIdent>,
    /// `relationships`: the column of `to` it refers to (default: `column`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<SqlIdent>,
    /// `relationships` to a type 2 dimension: the checked table's time
    /// column (epoch ms); a version of `to` must be valid at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<SqlIdent>,
    /// `relationships` with `at`: the column of `to` where a version
    /// starts (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<SqlIdent>,
    /// `relationships` with `at`: the column of `to` where a version ends
    /// (exclusive; NULL for the current version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<SqlIdent>,
    /// `accepted_values`: the values allowed, compared as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// `freshness`: how much older than the watermark the newest row may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Within>,
    /// `row_count`: the table's event time column (epoch ms; default
    /// `ts_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<SqlIdent>,
    /// `row_count`: `run` (the default), the run's range, or `all`,
    /// everything up to the watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// A checked check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The table checked.
    pub table: SqlIdent,
    /// What a failure does.
    pub severity: Severity,
    /// What is checked.
    pub rule: Rule,
}

/// What a check tests, with the settings it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// No NULL in `columns`.
    NotNull {
        /// The columns.
        columns: Vec<SqlIdent>,
        /// Names failing rows in the sample.
        key: Option<SqlIdent>,
    },
    /// No two rows with the same `columns`.
    Unique {
        /// The columns.
        columns: Vec<SqlIdent>,
    },
    /// Every `column` refers to a row of `to`.
    Relationships {
        /// The referring column.
        column: SqlIdent,
        /// The table referred to.
        to: SqlIdent,
        /// Its column.
        field: SqlIdent,
        /// For a type 2 dimension: the version valid at the row's time.
        valid_at: Option<ValidAt>,
        /// Names failing rows in the sample.
        key: Option<SqlIdent>,
    },
    /// Every `column` is one of `values`.
    AcceptedValues {
        /// The column.
        column: SqlIdent,
        /// The values allowed.
        values: Vec<String>,
        /// Names failing rows in the sample.
        key: Option<SqlIdent>,
    },
    /// The newest `column` is at most `within` behind the watermark.
    Freshness {
        /// The time column (epoch ms).
        column: SqlIdent,
        /// How far behind it may be.
        within: Duration,
    },
    /// One row per distinct valid source event of the run's range.
    RowCount {
        /// The table's event key.
        key: SqlIdent,
        /// The table's event time (epoch ms).
        ts: SqlIdent,
        /// The range compared.
        scope: Scope,
    },
}

/// The columns of a type 2 dimension's versions and the time compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAt {
    /// The checked table's time column.
    pub at: SqlIdent,
    /// Where a version starts (inclusive).
    pub from: SqlIdent,
    /// Where it ends (exclusive; NULL: open).
    pub to: SqlIdent,
}

impl Rule {
    /// Whether the check reads the source's watermark or events.
    pub fn needs_source(&self) -> bool {
        matches!(self, Self::Freshness { .. } | Self::RowCount { .. })
    }
}

impl Check {
    /// How messages name the check, e.g. `not_null fact_views(ts_ms)`.
    pub fn describe(&self) -> String {
        let t = &self.table;
        let list = |c: &[SqlIdent]| {
            c.iter()
                .map(SqlIdent::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.rule {
            Rule::NotNull { columns, .. } => format!("not_null {t}({})", list(columns)),
            Rule::Unique { columns } => format!("unique {t}({})", list(columns)),
            Rule::Relationships {
                column,
                to,
                field,
                valid_at,
                ..
            } => format!(
                "relationships {t}.{column} -> {to}.{field}{}",
                valid_at
                    .as_ref()
                    .map_or_else(String::new, |v| format!(" valid at {t}.{}", v.at))
            ),
            Rule::AcceptedValues { column, .. } => format!("accepted_values {t}.{column}"),
            Rule::Freshness { column, within } => format!(
                "freshness {t}.{column} within {}",
                workflows::duration::format(*within)
            ),
            Rule::RowCount { .. } => format!("row_count {t}"),
        }
    }
}

impl Config {
    /// Checks without I/O; `source_is_extract` says whether `source` names
    /// an extract task of the DAG.
    pub fn check(&self, source_is_extract: bool) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        if self.checks.is_empty() {
            out.push(SettingProblem::field("checks", "declares no check"));
        }
        match &self.source {
            Some(s) if !source_is_extract => out.push(SettingProblem::field(
                "source",
                format!("`{s}` is not an extract task of this DAG"),
            )),
            _ => {}
        }
        for (i, spec) in self.checks.iter().enumerate() {
            match spec.check(i) {
                Ok(c) if c.rule.needs_source() && self.source.is_none() => {
                    out.push(SettingProblem::field(
                        format!("checks[{i}].check"),
                        format!(
                            "a {} check needs the task's `source`, the extract whose watermark ends the run's data",
                            spec.check.name()
                        ),
                    ));
                }
                Ok(_) => {}
                Err(problems) => out.extend(problems),
            }
        }
        out
    }

    /// The checked checks.
    ///
    /// # Panics
    /// When a check has a problem [`Config::check`] reports: call it first,
    /// as loading a DAG does.
    pub fn checks(&self) -> Vec<Check> {
        self.checks
            .iter()
            .enumerate()
            .map(|(i, s)| s.check(i).expect("checked when the DAG was loaded"))
            .collect()
    }
}

impl CheckSpec {
    /// The typed check, or every problem with it; `i` is its place in
    /// `checks`, for the problems' field names.
    ///
    /// # Errors
    /// A setting the check needs is missing or empty, one it does not take
    /// is set, or a value is out of range.
    pub fn check(&self, i: usize) -> Result<Check, Vec<SettingProblem>> {
        let kind = self.check.name();
        let mut problems = Vec::new();
        let field = |name: &str| format!("checks[{i}].{name}");
        let mut need = |name: &str, present: bool| {
            if !present {
                problems.push(SettingProblem::field(
                    field(name),
                    format!("a {kind} check needs `{name}`"),
                ));
            }
        };
        let (columns, column, values, within) = (
            self.columns.clone().unwrap_or_default(),
            self.column.clone(),
            self.values.clone().unwrap_or_default(),
            self.within.map(|w| w.0),
        );
        // What each check takes: every other setting is an error.
        let takes: &[&str] = match self.check {
            CheckType::NotNull => &["columns", "key"],
            CheckType::Unique => &["columns"],
            CheckType::Relationships => &[
                "column",
                "to",
                "field",
                "at",
                "valid_from",
                "valid_to",
                "key",
            ],
            CheckType::AcceptedValues => &["column", "values", "key"],
            CheckType::Freshness => &["column", "within"],
            CheckType::RowCount => &["key", "ts", "scope"],
        };
        match self.check {
            CheckType::NotNull | CheckType::Unique => need("columns", !columns.is_empty()),
            CheckType::Relationships => {
                need("column", column.is_some());
                need("to", self.to.is_some());
            }
            CheckType::AcceptedValues => {
                need("column", column.is_some());
                need("values", !values.is_empty());
            }
            CheckType::Freshness => {
                need("column", column.is_some());
                need("within", within.is_some());
            }
            CheckType::RowCount => {}
        }
        let set = [
            ("columns", self.columns.is_some()),
            ("column", self.column.is_some()),
            ("key", self.key.is_some()),
            ("to", self.to.is_some()),
            ("field", self.field.is_some()),
            ("at", self.at.is_some()),
            ("valid_from", self.valid_from.is_some()),
            ("valid_to", self.valid_to.is_some()),
            ("values", self.values.is_some()),
            ("within", self.within.is_some()),
            ("ts", self.ts.is_some()),
            ("scope", self.scope.is_some()),
        ];
        for (name, present) in set {
            if present && !takes.contains(&name) {
                problems.push(SettingProblem::field(
                    field(name),
                    format!("a {kind} check does not take `{name}`"),
                ));
            }
        }
        if let Some(d) = within {
            if d.is_zero() {
                problems.push(SettingProblem::field(
                    field("within"),
                    "must be longer than zero",
                ));
            }
        }
        if self.check == CheckType::AcceptedValues {
            let mut seen = std::collections::BTreeSet::new();
            for (j, v) in values.iter().enumerate() {
                if !seen.insert(v) {
                    problems.push(SettingProblem::field(
                        format!("checks[{i}].values[{j}]"),
                        format!("`{v}` is listed twice"),
                    ));
                }
            }
        }
        if matches!(self.check, CheckType::NotNull | CheckType::Unique) {
            let mut seen = std::collections::BTreeSet::new();
            for (j, c) in columns.iter().enumerate() {
                if !seen.insert(c) {
                    problems.push(SettingProblem::field(
                        format!("checks[{i}].columns[{j}]"),
                        format!("`{c}` is listed twice"),
                    ));
                }
            }
        }
        let valid_at = match (&self.at, &self.valid_from, &self.valid_to) {
            (Some(at), Some(from), Some(to)) => Some(ValidAt {
                at: at.clone(),
                from: from.clone(),
                to: to.clone(),
            }),
            (None, None, None) => None,
            (at, from, to) if self.check == CheckType::Relationships => {
                for (name, present) in [
                    ("at", at.is_some()),
                    ("valid_from", from.is_some()),
                    ("valid_to", to.is_some()),
                ] {
                    if !present {
                        problems.push(SettingProblem::field(
                            field(name),
                            "`at`, `valid_from` and `valid_to` go together: a version of `to` valid at the row's time",
                        ));
                    }
                }
                None
            }
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let column = || column.clone().expect("checked above");
        let rule = match self.check {
            CheckType::NotNull => Rule::NotNull {
                columns,
                key: self.key.clone(),
            },
            CheckType::Unique => Rule::Unique { columns },
            CheckType::Relationships => Rule::Relationships {
                column: column(),
                to: self.to.clone().expect("checked above"),
                field: self.field.clone().unwrap_or_else(column),
                valid_at,
                key: self.key.clone(),
            },
            CheckType::AcceptedValues => Rule::AcceptedValues {
                column: column(),
                values,
                key: self.key.clone(),
            },
            CheckType::Freshness => Rule::Freshness {
                column: column(),
                within: within.expect("checked above"),
            },
            CheckType::RowCount => Rule::RowCount {
                key: self.key.clone().unwrap_or_else(|| ident("event_id")),
                ts: self.ts.clone().unwrap_or_else(|| ident("ts_ms")),
                // The run's days: cheap, but blind to rows lost before them.
                scope: self.scope.unwrap_or(Scope::Run),
            },
        };
        Ok(Check {
            table: self.table.clone(),
            severity: self.severity,
            rule,
        })
    }
}

fn ident(name: &str) -> SqlIdent {
    SqlIdent::new(name).expect("a plain name")
}
