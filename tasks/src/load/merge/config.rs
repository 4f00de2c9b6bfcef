//! The settings of a `load.merge` task and their checks.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use workflows::{KindInfo, Role, SettingProblem, SqlIdent};

use crate::segment::Planned;

/// The kind.
pub const KIND: KindInfo = KindInfo {
    name: "load.merge",
    summary: "merge outputs into warehouse tables, one transaction per segment with the watermark",
    role: Role::Load,
    fields: || serde_aux::serde_introspection::serde_introspect::<Config>(),
};

/// The settings of a `load.merge` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The transform task whose outputs are loaded; one of `depends_on`.
    pub input: String,
    /// Where each output goes.
    pub targets: Vec<Target>,
}

/// One output merged into one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The transform output.
    pub output: SqlIdent,
    /// The table; the output's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<SqlIdent>,
    /// The columns of the table's primary or unique key.
    pub key: Vec<SqlIdent>,
    /// How a row whose key is already there is merged.
    #[serde(default)]
    pub strategy: Strategy,
    /// For `latest` and `history`: the column, or columns compared in
    /// order, whose greater value is the newer row.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub version: Vec<SqlIdent>,
    /// For `history`: the columns naming the entity whose versions the rows
    /// are (e.g. `["user_id"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity: Vec<SqlIdent>,
    /// For `history`: the column set to the first `version` column of the
    /// entity's next version, null for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<SqlIdent>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SqlIdent>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SqlIdent),
        Many(Vec<SqlIdent>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(c) => vec![c],
        OneOrMany::Many(cs) => cs,
    })
}

impl Target {
    /// The table loaded.
    pub fn table(&self) -> &SqlIdent {
        self.table.as_ref().unwrap_or(&self.output)
    }
}

/// How rows merge with rows of the same key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Keep the row already there (facts at event grain, static dimensions).
    #[default]
    InsertNew,
    /// Each column takes the value of the row with the greatest `version`
    /// that has one: a newer row overwrites the columns it carries and an
    /// older one only fills columns still null (type 1 dimensions).
    Latest,
    /// Fill the columns still null from the new row (accumulating snapshots).
    Accumulate,
    /// One row per version of an `entity`, merged as `latest` by its key;
    /// then `valid_to` of every version of the entities touched is set to
    /// the start of the next version (type 2 dimensions).
    History,
}

impl Strategy {
    /// Its name in DAG files.
    pub fn name(self) -> &'static str {
        match self {
            Self::InsertNew => "insert_new",
            Self::Latest => "latest",
            Self::Accumulate => "accumulate",
            Self::History => "history",
        }
    }
}

impl Config {
    /// Checks without I/O.
    pub fn check(&self, depends_on: &[String]) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        if !depends_on.contains(&self.input) {
            out.push(SettingProblem::field(
                "input",
                format!("`{}` is not one of this task's depends_on", self.input),
            ));
        }
        if self.targets.is_empty() {
            out.push(SettingProblem::field("targets", "declares no target"));
        }
        let mut tables = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.key.is_empty() {
                out.push(SettingProblem::field(
                    format!("targets[{i}].key"),
                    "names no column",
                ));
            }
            if !tables.insert(t.table().clone()) {
                out.push(SettingProblem::field(
                    format!("targets[{i}].table"),
                    format!("`{}` is loaded twice", t.table()),
                ));
            }
            let versioned = matches!(t.strategy, Strategy::Latest | Strategy::History);
            let history = t.strategy == Strategy::History;
            let mut need = |field: &str, present: bool, wanted: bool, by: &str| {
                if present && !wanted {
                    out.push(SettingProblem::field(
                        format!("targets[{i}].{field}"),
                        format!("is used only by strategy {by}"),
                    ));
                } else if wanted && !present {
                    out.push(SettingProblem::field(
                        format!("targets[{i}].{field}"),
                        format!("is required by strategy `{}`", t.strategy.name()),
                    ));
                }
            };
            need(
                "version",
                !t.version.is_empty(),
                versioned,
                "`latest` or `history`",
            );
            need("entity", !t.entity.is_empty(), history, "`history`");
            need("valid_to", t.valid_to.is_some(), history, "`history`");
        }
        out
    }
}

impl Config {
    /// Checks the targets against the outputs of the input transform
    /// (`outputs`) and, when known, the columns each output makes.
    pub fn check_outputs(
        &self,
        outputs: &[SqlIdent],
        planned: Option<&Planned>,
    ) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        let names = |v: &[SqlIdent]| {
            v.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, t) in self.targets.iter().enumerate() {
            if !outputs.contains(&t.output) {
                let hint = workflows::dag::did_you_mean(
                    t.output.as_str(),
                    outputs.iter().map(SqlIdent::as_str),
                )
                .map_or(String::new(), |h| format!(" (did you mean `{h}`?)"));
                out.push(SettingProblem::field(
                    format!("targets[{i}].output"),
                    format!(
                        "`{}` is not an output of {}{hint}; it makes {}",
                        t.output,
                        self.input,
                        names(outputs)
                    ),
                ));
                continue;
            }
            let Some(Some(Ok(columns))) = planned.map(|p| p.get(&t.output)) else {
                continue;
            };
            let has = |c: &SqlIdent| columns.iter().any(|(n, _)| n == c.as_str());
            let mut need = |field: &str, cols: &[SqlIdent]| {
                for c in cols {
                    if !has(c) {
                        out.push(SettingProblem::field(
                            format!("targets[{i}].{field}"),
                            format!(
                                "the output {} has no column `{c}`; it has {}",
                                t.output,
                                columns
                                    .iter()
                                    .map(|(n, _)| format!("`{n}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            };
            need("key", &t.key);
            need("version", &t.version);
            need("entity", &t.entity);
        }
        out
    }
}
