//! Verify kinds: prove the warehouse agrees with the source; and the
//! days they compare.

use serde::{Deserialize, Serialize};

use crate::segment::ReadFrom;

pub mod checks;
pub mod reconcile;
pub mod reports;

/// The days a verify compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every day up to the watermark.
    #[default]
    All,
    /// The days the run's extract read.
    Run,
}

impl Scope {
    /// The start (epoch ms) of the first UTC day compared, given what the
    /// run's extract read; `None` for every day.
    pub fn first_day(self, read: Option<&ReadFrom>) -> Option<i64> {
        match self {
            Self::All => None,
            Self::Run => read
                .and_then(|r| r.since_ms)
                .map(|since| since - since.rem_euclid(86_400_000)),
        }
    }
}
