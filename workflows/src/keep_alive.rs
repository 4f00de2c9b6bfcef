//! The one loop that keeps a claim alive while its work goes on (a DAG's
//! lease under a scheduled run, a backfill chunk's claim under its run):
//! renewed every third of its time to live, until the work ends or the
//! claim is lost.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed, or failed in a way the next renewal may mend.
    Kept,
    /// The claim is someone else's now: renewing stops.
    Lost,
}

/// A claim being renewed in the background.
#[derive(Debug)]
pub struct KeepAlive {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// Calls `renew` every third of `ttl` until [`KeepAlive::stop`], or
    /// until it reports the claim [`Renewal::Lost`].
    pub fn start<F, Fut>(ttl: Duration, mut renew: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Renewal> + Send + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 3) => {}
                    _ = stopped.changed() => return,
                }
                if renew().await == Renewal::Lost {
                    return;
                }
            }
        });
        Self { stop, task }
    }

    /// Stops renewing, and waits for a renewal under way to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
