//! A data point's cutover as its DAG file declares it (`[cutover]`): the
//! reports its flag switches between the legacy analytics and the
//! warehouse, and the evidence that a promotion or a retirement needs.

use std::time::Duration;

use serde::Serialize;

use super::did_you_mean;
use super::parse::Problems;

const FIELDS: &[&str] = &[
    "reports",
    "reconciliations",
    "within",
    "comparisons",
    "mismatch_rate",
    "retire_after",
];

/// The `[cutover]` table of a DAG file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cutover {
    /// The reports the data point's flag switches.
    pub reports: Vec<String>,
    /// What a promotion or a retirement needs.
    pub evidence: Evidence,
}

/// The evidence that moving a flag towards the warehouse needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evidence {
    /// Passing reconciliations covering every report of the data point,
    /// the newest of them, within [`Evidence::within`].
    pub reconciliations: u32,
    /// How recent the reconciliations and the shadow comparisons must be.
    #[serde(with = "crate::duration")]
    pub within: Duration,
    /// Shadow comparisons within [`Evidence::within`].
    pub comparisons: u64,
    /// The largest share of those comparisons allowed to mismatch (0: none).
    pub mismatch_rate: f64,
    /// How long the warehouse must have answered every read (100 %), with
    /// no legacy read, before the data point can be retired.
    #[serde(with = "crate::duration")]
    pub retire_after: Duration,
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            reconciliations: 3,
            within: Duration::from_secs(48 * 3600),
            comparisons: 1000,
            mismatch_rate: 0.0,
            retire_after: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Parses a `[cutover]` table; `known` lists the report names there are
/// (empty: any name).
pub(super) fn parse(p: &mut Problems<'_>, t: &toml::Table, known: &[&str]) -> Option<Cutover> {
    p.unknown_fields(None, "cutover.", t, FIELDS);
    let before = p.list.len();
    let mut reports = Vec::new();
    match t.get("reports") {
        Some(toml::Value::Array(items)) if !items.is_empty() => {
            for item in items {
                let Some(name) = item.as_str() else {
                    p.push(
                        None,
                        Some("cutover.reports"),
                        "expected report names (strings)",
                    );
                    continue;
                };
                if !known.is_empty() && !known.contains(&name) {
                    let hint = did_you_mean(name, known.iter().copied()).map_or_else(
                        || format!("; the reports are {}", known.join(", ")),
                        |h| format!(" (did you mean `{h}`?)"),
                    );
                    p.push(
                        None,
                        Some("cutover.reports"),
                        format!("unknown report `{name}`{hint}"),
                    );
                } else if reports.iter().any(|r| r == name) {
                    p.push(
                        None,
                        Some("cutover.reports"),
                        format!("`{name}` is named twice"),
                    );
                } else {
                    reports.push(name.to_owned());
                }
            }
        }
        Some(_) => p.push(
            None,
            Some("cutover.reports"),
            "expected a non-empty array of report names",
        ),
        None => p.push(
            None,
            Some("cutover.reports"),
            "missing; name the reports the data point's flag switches",
        ),
    }
    let mut evidence = Evidence::default();
    let count = |p: &mut Problems<'_>, field: &str, min: i64| -> Option<i64> {
        match t.get(field)? {
            toml::Value::Integer(n) if *n >= min => Some(*n),
            _ => {
                p.push(
                    None,
                    Some(&format!("cutover.{field}")),
                    format!("expected a whole number of at least {min}"),
                );
                None
            }
        }
    };
    if let Some(n) = count(p, "reconciliations", 1) {
        evidence.reconciliations = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = count(p, "comparisons", 0) {
        evidence.comparisons = u64::try_from(n).unwrap_or_default();
    }
    match t.get("mismatch_rate") {
        None => {}
        Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(r) if (0.0..=1.0).contains(&r) => evidence.mismatch_rate = r,
            _ => p.push(
                None,
                Some("cutover.mismatch_rate"),
                "expected a share between 0 and 1 (e.g. 0.001)",
            ),
        },
    }
    for (field, slot) in [
        ("within", &mut evidence.within),
        ("retire_after", &mut evidence.retire_after),
    ] {
        if let Some(v) = t.get(field) {
            let name = format!("cutover.{field}");
            if let Some(d) = super::parse::duration(p, None, &name, v) {
                if d.is_zero() {
                    p.push(None, Some(&name), "must be longer than zero");
                } else {
                    *slot = d;
                }
            }
        }
    }
    (p.list.len() == before).then_some(Cutover { reports, evidence })
}
