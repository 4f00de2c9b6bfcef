//! Receiving, holding and deleting messages: the receivers, the heartbeat
//! that keeps held messages invisible, and batched deletes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::queue::{Queue, Received};

/// Receipt handles of messages held (received, not yet deleted or released),
/// each with the instant it becomes visible again unless extended, which
/// the heartbeat watches.
#[derive(Debug, Default, Clone)]
pub(super) struct Held(Arc<Mutex<HashMap<String, Instant>>>);

impl Held {
    pub(super) fn add(&self, receipts: impl IntoIterator<Item = String>, visibility: Duration) {
        let until = Instant::now() + visibility;
        let mut map = self.0.lock().expect("held set");
        map.extend(receipts.into_iter().map(|r| (r, until)));
    }
    pub(super) fn remove<'a>(&self, receipts: impl IntoIterator<Item = &'a str>) {
        let mut map = self.0.lock().expect("held set");
        for r in receipts {
            map.remove(r);
        }
    }
    /// The held messages that become visible within `margin`.
    pub(super) fn due(&self, margin: Duration) -> Vec<String> {
        let soon = Instant::now() + margin;
        let map = self.0.lock().expect("held set");
        map.iter()
            .filter(|(_, until)| **until <= soon)
            .map(|(r, _)| r.clone())
            .collect()
    }
    /// Records that `receipts` are invisible for `visibility` from now.
    pub(super) fn extended(&self, receipts: &[&str], visibility: Duration) {
        let until = Instant::now() + visibility;
        let mut map = self.0.lock().expect("held set");
        for r in receipts {
            if let Some(u) = map.get_mut(*r) {
                *u = until;
            }
        }
    }
}

/// When this consumer last had work of its own (a message it loaded,
/// quarantined or deleted).
#[derive(Debug, Clone)]
pub(super) struct Activity(Arc<Mutex<Instant>>);

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Activity {
    pub(super) fn worked(&self) {
        *self.0.lock().expect("activity") = Instant::now();
    }
    /// Whether it has had no work of its own for `idle`.
    pub(super) fn idle_for(&self, idle: Duration) -> bool {
        self.0.lock().expect("activity").elapsed() >= idle
    }
}

/// Deletes up to ten messages, trying the failed entries again; returns how
/// many were deleted and the errors of the last attempt.
pub(super) async fn delete_chunk(queue: &Queue, chunk: &[&str]) -> (u64, Vec<String>) {
    let mut todo: Vec<String> = chunk.iter().map(|s| (*s).to_owned()).collect();
    let mut deleted = 0u64;
    let mut errors = Vec::new();
    for attempt in 1..=DELETE_ATTEMPTS {
        let refs: Vec<&str> = todo.iter().map(String::as_str).collect();
        match queue.delete_batch(&refs).await {
            Ok(failed) => {
                deleted += (todo.len() - failed.len()) as u64;
                if failed.is_empty() {
                    return (deleted, Vec::new());
                }
                if attempt == DELETE_ATTEMPTS {
                    errors = failed
                        .iter()
                        .map(|r| format!("deleting a message: {}; it will come back", r.why))
                        .collect();
                }
                todo = failed.into_iter().map(|r| r.receipt).collect();
            }
            Err(e) => {
                if attempt == DELETE_ATTEMPTS {
                    errors = vec![format!("{e}; the messages will come back")];
                }
            }
        }
        if attempt < DELETE_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    (deleted, errors)
}

pub(super) const DELETE_ATTEMPTS: u32 = 3;
/// Delete requests in flight at once.
pub(super) const DELETE_REQUESTS: usize = 8;
/// How often an idle consumer asks the queue whether it is empty.
pub(super) const IDLE_LOOK_EVERY: Duration = Duration::from_secs(1);
pub(super) const MAX_RECEIVED: usize = 100;

/// One receiver: long-polls until told to stop, holding what it receives.
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_loop(
    n: usize,
    queue: Queue,
    wait: Duration,
    visibility: Duration,
    held: Held,
    tx: mpsc::Sender<Received>,
    mut stop: watch::Receiver<bool>,
    idle_stop: Arc<AtomicBool>,
) {
    let mut failures = 0u32;
    loop {
        if *stop.borrow() || idle_stop.load(Ordering::SeqCst) {
            return;
        }
        let received = tokio::select! {
            r = queue.receive(wait, Some(visibility)) => r,
            _ = stop.changed() => return,
        };
        match received {
            Ok(messages) => {
                failures = 0;
                held.add(messages.iter().map(|m| m.receipt.clone()), visibility);
                tracing::debug!(
                    receiver = n,
                    received = messages.len(),
                    redelivered = messages.iter().filter(|m| m.receive_count > 1).count(),
                    "receive"
                );
                for m in messages {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(250 * 2u64.pow(failures.min(7)));
                tracing::warn!(receiver = n, error = %e, retry_in_ms = pause.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Keeps held messages invisible while their batch is being loaded: every
/// third of the visibility timeout, the messages that would become visible
/// within half of it are made invisible for a whole timeout again.
pub(super) async fn heartbeat_loop(queue: Queue, held: Held, visibility: Duration) {
    let every = (visibility / 3).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let receipts = held.due(visibility / 2);
        for chunk in receipts.chunks(super::queue::MAX_BATCH) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            match queue.extend_batch(&refs, visibility).await {
                Ok(refused) => {
                    held.extended(&refs, visibility);
                    for r in refused {
                        // Deleted since, or already visible again: nothing to keep.
                        tracing::debug!(reason = %r.why, "visibility not extended");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}
