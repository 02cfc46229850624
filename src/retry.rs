//! Retry policies: exponential backoff with jitter, a cap on attempts and on time.
//!
//! A pipeline with [`Pipeline::with_retry`](crate::Pipeline::with_retry) retries source
//! reads and checkpoint saves that fail with a *transient* error
//! ([`Error::is_retryable`](crate::Error::is_retryable)); a permanent error fails at
//! once. Each retry is counted in the pipeline's metrics. The
//! [`Supervisor`](crate::supervisor::Supervisor) uses the same backoff between restarts.
//!
//! Sink writes are not retried by the executors: `Sink::write` consumes its batch, so
//! a sink retries inside `write` if it can (see the guide).

use std::time::Duration;

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
