//! Retry policies: exponential backoff with jitter, a cap on attempts and on time.
//!
//! A pipeline with [`Pipeline::with_retry`](crate::Pipeline::with_retry) retries source
//! reads and checkpoint saves that fail with a *transient* error
//! ([`Error::is_retryable`](crate::Error::is_retryable)); a permanent error fails at
//! once. Each retry is counted in the pipeline's metrics. The
//! [`Supervisor`](crate::supervisor::Supervisor) uses the same backoff between restarts.
//!
//! Sink writes: `Sink::write` consumes its batch, so the executors cannot retry it
//! themselves. Wrap the sink in a [`RetrySink`], which keeps a copy of each batch
//! (records must be `Clone`) and retries transient `write`, `flush` and `commit`
//! failures under its own policy. As with `tower`'s retry middleware, the copy is the
//! price of being able to send the request again.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;
use crate::sink::{DeliveryGuarantee, Sink};

/// How often and how patiently to retry a transient failure.
///
/// ```
/// use std::time::Duration;
/// use batchstream::retry::RetryPolicy;
///
/// let p = RetryPolicy::new()
///     .max_attempts(5)
///     .initial_backoff(Duration::from_millis(50))
///     .max_backoff(Duration::from_secs(2))
///     .jitter(false);
/// assert_eq!(p.delay(1), Duration::from_millis(50));
/// assert_eq!(p.delay(3), Duration::from_millis(200));
/// assert!(p.allows(4, Duration::ZERO));
/// assert!(!p.allows(5, Duration::ZERO)); // the 5th attempt was the last
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_elapsed: Option<Duration>,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_elapsed: None,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// 3 attempts in all, backoff from 100 ms doubling up to 30 s, with jitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts in all, the first included (at least 1: no retry).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The first backoff; it doubles with every retry up to
    /// [`max_backoff`](RetryPolicy::max_backoff).
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// The longest backoff.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Gives up once this much time has passed since the first attempt.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// Whether to randomize each backoff between half and all of its value (default
    /// on), so that many instances do not retry in lockstep.
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based), made
    /// `elapsed` after the first.
    pub fn allows(&self, attempt: u32, elapsed: Duration) -> bool {
        attempt < self.max_attempts && self.max_elapsed.is_none_or(|m| elapsed < m)
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let d = exp.min(self.max_backoff);
        if !self.jitter {
            return d;
        }
        // Jitter without a random-number dependency: the clock's sub-second noise.
        let noise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        d.mul_f64(0.5 + f64::from(noise % 1000) / 2000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_half() {
        let p = RetryPolicy::new()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(500))
            .jitter(false);
        let delays: Vec<u128> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        let j = p.jitter(true);
        for a in 1..=5 {
            let d = j.delay(a);
            let cap = Duration::from_millis(500).min(Duration::from_millis(100 << (a - 1)));
            assert!(d <= cap && d >= cap / 2, "attempt {a}: {d:?}");
        }
    }

    #[test]
    fn attempts_and_elapsed_time_both_bound_retries() {
        let p = RetryPolicy::new()
            .max_attempts(3)
            .max_elapsed(Duration::from_secs(1));
        assert!(p.allows(1, Duration::ZERO));
        assert!(p.allows(2, Duration::from_millis(999)));
        assert!(!p.allows(3, Duration::ZERO));
        assert!(!p.allows(1, Duration::from_secs(1)));
        assert!(!RetryPolicy::new().max_attempts(0).allows(1, Duration::ZERO));
    }
}

/// A sink wrapper that retries transient failures of `write`, `flush` and `commit`
/// (errors with [`Error::is_retryable`]) as its [`RetryPolicy`] allows; permanent
/// errors, and the last transient one, fail the run as before.
///
/// Each batch is cloned before each attempt. For a retried write not to duplicate
/// records, the inner sink's `write` must be all-or-nothing (or the sink idempotent):
/// a write that fails half-way must not keep the half it wrote. `prepare` is not
/// retried; `commit` is, which the [`Sink`] contract allows (committing an epoch twice
/// must be harmless).
///
/// ```
/// use std::time::Duration;
/// use batchstream::{BatchExecutor, Pipeline};
/// use batchstream::adapters::IterSource;
/// use batchstream::retry::{RetryPolicy, RetrySink};
/// use batchstream::testing::FailingSink;
/// use batchstream::transform;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// // The first write fails with a transient error; the retry delivers it.
/// let (flaky, out) = FailingSink::new([1]);
/// let sink = RetrySink::new(flaky.retryable(), RetryPolicy::new().initial_backoff(Duration::ZERO));
/// let p = Pipeline::new("retry", IterSource::new(1..=3), transform::identity::<i32>(), sink);
/// let metrics = p.metrics();
/// BatchExecutor::new().run(p).await?;
/// assert_eq!(out.items(), vec![1, 2, 3]);
/// # let _ = metrics;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RetrySink<S> {
    inner: S,
    policy: RetryPolicy,
    metrics: Option<PipelineMetrics>,
}

impl<S> RetrySink<S> {
    /// Wraps `inner`, retrying as `policy` says.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetrySink {
            inner,
            policy,
            metrics: None,
        }
    }

    /// Counts each retry in `metrics` (the pipeline's, from
    /// [`Pipeline::metrics`](crate::Pipeline::metrics)).
    pub fn with_metrics(mut self, metrics: PipelineMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The wrapped sink.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// How long to wait before retrying after `attempt` failed with `e`, or `None`
    /// when it must not be retried. (Synchronous, so that no borrow of the wrapper is
    /// held across the wait.)
    fn retry_delay(
        &self,
        operation: &str,
        e: &Error,
        attempt: u32,
        first: Instant,
    ) -> Option<Duration> {
        if !e.is_retryable() || !self.policy.allows(attempt, first.elapsed()) {
            return None;
        }
        let delay = self.policy.delay(attempt);
        if let Some(m) = &self.metrics {
            m.add_retry();
        }
        tracing::warn!(operation, attempt, ?delay, error = %e, "retrying sink operation");
        Some(delay)
    }
}

/// Retries `op` on `sink` while [`RetrySink::retry_delay`] allows.
macro_rules! retrying {
    ($self:ident, $operation:literal, $call:expr) => {{
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            match $call {
                Err(e) => match $self.retry_delay($operation, &e, attempt, first) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }};
}

impl<S> Sink for RetrySink<S>
where
    S: Sink,
    S::Item: Clone,
{
    type Item = S::Item;

    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }

    async fn write(&mut self, batch: Vec<S::Item>) -> Result<()> {
        retrying!(self, "sink write", self.inner.write(batch.clone()).await)
    }

    async fn flush(&mut self) -> Result<()> {
        retrying!(self, "sink flush", self.inner.flush().await)
    }

    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        self.inner.prepare(epoch).await
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        retrying!(self, "sink commit", self.inner.commit(epoch).await)
    }

    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.inner.recover(checkpointed).await
    }
}
