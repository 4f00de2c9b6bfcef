//! Progress counters of long tasks on standard error. Whether they show is
//! the caller's choice, passed in ([`Progress`]): the feed and backfills,
//! which run many small runs and report their own progress, hide them.

use indicatif::{ProgressBar, ProgressStyle};

/// Whether tasks show progress counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    /// On standard error when it is a terminal.
    #[default]
    Shown,
    /// Never.
    Hidden,
}

impl Progress {
    /// A counter of rows labelled `label`; hidden when progress is, or when
    /// standard error is not a terminal.
    pub fn counter(self, label: &str) -> ProgressBar {
        if self == Self::Hidden {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} {human_pos} rows ({per_sec}, {elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    }
}
