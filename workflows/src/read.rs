//! How a run reads other than a nightly run does: a window of event time
//! instead of the watermarks (backfills), and a limit on how fast extracts
//! read the source, shared by every task that holds it (`max_rate` on an
//! extract, or `cutover backfill --max-rate` over all its workers), which
//! protects the live database from a long read.

use std::sync::Arc;

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota};

/// A window of event time, `[from_ms, until_ms)` in epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first instant read.
    pub from_ms: i64,
    /// The first instant not read.
    pub until_ms: i64,
}

/// How a run reads other than a nightly run does.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Read this window of event time instead of from the watermarks; such
    /// a read never moves a watermark.
    pub window: Option<Window>,
    /// A read-rate limit shared with other runs (overrides `max_rate`).
    pub limit: Option<Arc<RateLimit>>,
}

/// A reader takes from the limit at a time what the rate allows in this
/// long, so that it never overdraws by more.
const STEP_SECS: f64 = 0.01;

/// At most so many events per second, over all its holders.
#[derive(Debug)]
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
    step: NonZeroU32,
    per_second: NonZeroU32,
}

impl RateLimit {
    /// A limit of `per_second` events per second.
    pub fn new(per_second: NonZeroU32) -> Self {
        let step = (f64::from(per_second.get()) * STEP_SECS) as u32;
        let step = NonZeroU32::new(step.max(1)).expect("at least one");
        Self {
            limiter: DefaultDirectRateLimiter::direct(Quota::per_second(per_second)),
            step,
            per_second,
        }
    }

    /// The limit, in events per second.
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// Documents to read between two calls of [`RateLimit::until_ready`].
    pub fn step(&self) -> u64 {
        u64::from(self.step.get())
    }

    /// Waits until the next [`RateLimit::step`] documents may be read.
    pub async fn until_ready(&self) {
        // The step never exceeds the burst (the rate itself), so the limiter
        // can always grant it.
        let _ = self.limiter.until_n_ready(self.step).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_reads_to_the_rate() {
        let limit = RateLimit::new(NonZeroU32::new(400).unwrap());
        let started = std::time::Instant::now();
        assert_eq!(limit.step(), 4);
        // The first second's burst, then 400 more documents: about a second.
        for _ in 0..200 {
            limit.until_ready().await;
        }
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(900),
            "800 documents at 400/s took {took:?}"
        );
    }
}
