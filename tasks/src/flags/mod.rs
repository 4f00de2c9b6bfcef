//! The cutover flags: one per data point whose DAG file has a `[cutover]`
//! table, moving `legacy` → `shadow` → `warehouse` (with a rollout share)
//! → `retired`. Every move towards the warehouse is guarded by evidence
//! ([`decide`], a pure function of the flag, the declared
//! [`Evidence`] and what was [`Seen`]); every move back is allowed at once.
//! Flags and every change live in the warehouse ([`store`]).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use workflows::dag::Evidence;

pub mod overview;
pub mod store;
#[cfg(test)]
mod tests;

/// Where a data point's reads are answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The legacy analytics answer; the warehouse is not asked.
    Legacy,
    /// The legacy analytics answer; the warehouse is asked too, off the
    /// response path, and the answers compared.
    Shadow,
    /// The warehouse answers for the rollout share of the targeting keys,
    /// the legacy analytics for the rest, and a sample is still compared.
    Warehouse,
    /// The warehouse answers every read; the legacy analytics are never
    /// called.
    Retired,
}

impl State {
    /// Every state, in order.
    pub const ALL: [Self; 4] = [Self::Legacy, Self::Shadow, Self::Warehouse, Self::Retired];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Shadow => "shadow",
            Self::Warehouse => "warehouse",
            Self::Retired => "retired",
        }
    }

    /// The state named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A data point's flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    /// The data point.
    pub data_point: String,
    /// Its state.
    pub state: State,
    /// The warehouse's share of the targeting keys in `warehouse`, in
    /// percent (100 in `retired`, 0 before `warehouse`).
    pub rollout: u8,
    /// When it entered its state (UTC, RFC 3339).
    pub since: String,
    /// When the warehouse began answering every read (`warehouse` at
    /// 100 %, or `retired`), if it does.
    pub full_since: Option<String>,
    /// When it last changed.
    pub changed_at: String,
    /// Grows with every change.
    pub version: i64,
}

impl Flag {
    /// A data point's flag before any change: `legacy`.
    pub fn initial(data_point: &str, now: &str) -> Self {
        Self {
            data_point: data_point.to_owned(),
            state: State::Legacy,
            rollout: 0,
            since: now.to_owned(),
            full_since: None,
            changed_at: now.to_owned(),
            version: 0,
        }
    }

    /// The state and rollout as one text: `warehouse 10%`.
    pub fn describe(&self) -> String {
        describe(self.state, self.rollout)
    }
}

fn describe(state: State, rollout: u8) -> String {
    match state {
        State::Warehouse => format!("warehouse {rollout}%"),
        other => other.name().to_owned(),
    }
}

/// A reconciliation of one report, as the evidence sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconciled {
    /// The reconciliation's id.
    pub id: String,
    /// The report.
    pub report: String,
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// Whether the report agreed.
    pub equal: bool,
}

/// What was seen of a data point: the evidence a change is judged on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Seen {
    /// The data point's reports.
    pub reports: Vec<String>,
    /// Per report, its newest reconciliations, newest first.
    pub reconciliations: Vec<Reconciled>,
    /// Shadow comparisons within the evidence window.
    pub comparisons: u64,
    /// Of which mismatched.
    pub mismatches: u64,
    /// Legacy reads since the warehouse began answering every read.
    pub legacy_reads_since_full: u64,
}

/// A requested change.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The state asked for.
    pub to: State,
    /// The rollout asked for (percent), in `warehouse`.
    pub rollout: u8,
    /// Skip the guards (needs a reason).
    pub force: bool,
    /// Why.
    pub reason: Option<String>,
}

/// What [`decide`] says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The change may be made; `evidence` says why.
    Allowed {
        /// What allowed it, for the audit.
        evidence: Vec<String>,
    },
    /// The change is refused; `missing` says what evidence is missing.
    Refused {
        /// Each piece of missing evidence, in words.
        missing: Vec<String>,
    },
    /// Nothing would change.
    Unchanged,
}

/// Whether `flag` may move as `request` asks, given the declared
/// `evidence` and what was `seen`, at `now` (UTC ms).
pub fn decide(
    flag: &Flag,
    request: &Request,
    evidence: &Evidence,
    seen: &Seen,
    now_ms: i64,
) -> Decision {
    let to = request.to;
    let rollout = match to {
        State::Legacy | State::Shadow => 0,
        State::Warehouse => request.rollout,
        State::Retired => 100,
    };
    if to == flag.state && rollout == flag.rollout {
        return Decision::Unchanged;
    }
    let from = describe(flag.state, flag.rollout);
    let target = describe(to, rollout);
    // Back towards legacy, or a smaller share: always, at once.
    let backwards = to < flag.state || (to == flag.state && rollout < flag.rollout);
    if backwards || to == State::Shadow {
        return Decision::Allowed {
            evidence: vec![if backwards {
                format!("a rollback from {from} to {target} needs no evidence")
            } else {
                format!("{from} to {target}: shadow reads change no answer")
            }],
        };
    }
    if request.force {
        return Decision::Allowed {
            evidence: vec![format!(
                "forced from {from} to {target}: {}",
                request.reason.as_deref().unwrap_or_default()
            )],
        };
    }
    let mut have = Vec::new();
    let mut missing = Vec::new();
    match to {
        State::Warehouse => {
            promotion(evidence, seen, now_ms, &mut have, &mut missing);
        }
        State::Retired => {
            let needed = evidence.retire_after;
            match flag.full_since.as_deref().and_then(ms_of) {
                Some(since) if flag.state == State::Warehouse && flag.rollout == 100 => {
                    let held = Duration::from_millis(u64::try_from(now_ms - since).unwrap_or(0));
                    if held >= needed {
                        have.push(format!(
                            "the warehouse has answered every read for {} (at least {})",
                            human(held),
                            human(needed)
                        ));
                    } else {
                        missing.push(format!(
                            "the warehouse has answered every read for {}, and retiring needs {}; retire after {}",
                            human(held),
                            human(needed),
                            workflows::time::format_ms(since + ms(needed))
                        ));
                    }
                }
                _ => missing.push(format!(
                    "retiring needs the warehouse at 100% for {} first; the flag is {from}",
                    human(needed)
                )),
            }
            if seen.legacy_reads_since_full == 0 {
                have.push("no legacy read since the warehouse began answering every read".into());
            } else {
                missing.push(format!(
                    "{} legacy reads since the warehouse began answering every read; retiring needs none (a caller still asks the legacy side)",
                    seen.legacy_reads_since_full
                ));
            }
        }
        State::Legacy | State::Shadow => {}
    }
    if missing.is_empty() {
        Decision::Allowed { evidence: have }
    } else {
        Decision::Refused { missing }
    }
}

/// The evidence a move to `warehouse` (or a larger share) needs.
fn promotion(
    evidence: &Evidence,
    seen: &Seen,
    now_ms: i64,
    have: &mut Vec<String>,
    missing: &mut Vec<String>,
) {
    let oldest = now_ms - ms(evidence.within);
    let want = evidence.reconciliations as usize;
    let window = human(evidence.within);
    for report in &seen.reports {
        let latest: Vec<&Reconciled> = seen
            .reconciliations
            .iter()
            .filter(|r| &r.report == report)
            .take(want)
            .collect();
        let recent: Vec<&&Reconciled> = latest
            .iter()
            .filter(|r| ms_of(&r.started_at).is_some_and(|t| t >= oldest))
            .collect();
        if let Some(failed) = latest.iter().find(|r| !r.equal) {
            missing.push(format!(
                "{report}: reconciliation {} of {} differs; `cutover reconcile --show {}` shows why, and {want} passing ones after it are needed",
                failed.id, failed.started_at, failed.id
            ));
        } else if recent.len() < want {
            missing.push(format!(
                "{report}: {} passing reconciliations within {window}, {want} needed (`cutover reconcile {report}`)",
                recent.len()
            ));
        } else {
            have.push(format!(
                "{report}: the latest {want} reconciliations passed, the newest {}",
                latest[0].started_at
            ));
        }
    }
    if seen.comparisons < evidence.comparisons {
        missing.push(format!(
            "{} shadow comparisons within {window}, {} needed (serve the data point in `shadow`)",
            seen.comparisons, evidence.comparisons
        ));
    }
    let rate = if seen.comparisons == 0 {
        0.0
    } else {
        seen.mismatches as f64 / seen.comparisons as f64
    };
    if seen.mismatches > 0 && rate > evidence.mismatch_rate {
        missing.push(format!(
            "{} of {} shadow comparisons mismatched within {window} (a rate of {rate:.6}, at most {} allowed); `cutover flags show` lists them",
            seen.mismatches, seen.comparisons, evidence.mismatch_rate
        ));
    } else if seen.comparisons >= evidence.comparisons {
        have.push(format!(
            "{} shadow comparisons within {window}, {} mismatched",
            seen.comparisons, seen.mismatches
        ));
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Epoch ms of an RFC 3339 instant.
pub fn ms_of(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn human(d: Duration) -> String {
    workflows::duration::format(Duration::from_secs(d.as_secs()))
}

/// Whether a targeting key falls in the warehouse's share of `rollout`
/// percent: a stable hash of the data point and the key, so that a key
/// keeps its side while the share only grows.
pub fn in_rollout(data_point: &str, key: &str, rollout: u8) -> bool {
    let bucket = xxhash_rust::xxh3::xxh3_64(format!("{data_point}\u{1f}{key}").as_bytes()) % 100;
    bucket < u64::from(rollout)
}

/// Which side answers a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The legacy analytics.
    Legacy,
    /// The warehouse.
    Warehouse,
}

impl Side {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Warehouse => "warehouse",
        }
    }
}

impl Flag {
    /// The side that answers a read of this data point for `key`: the
    /// legacy analytics in `legacy` and `shadow`, the warehouse in
    /// `retired`, and in `warehouse` the warehouse for the keys in its
    /// rollout share ([`in_rollout`]).
    pub fn side(&self, key: &str) -> Side {
        match self.state {
            State::Legacy | State::Shadow => Side::Legacy,
            State::Retired => Side::Warehouse,
            State::Warehouse if in_rollout(&self.data_point, key, self.rollout) => Side::Warehouse,
            State::Warehouse => Side::Legacy,
        }
    }
}
