//! Supervision: restart a failed pipeline from its last checkpoint, with backoff and
//! a restart budget.
//!
//! A [`Supervisor`] runs a pipeline built by a factory under an [`Executor`]. When
//! the run fails with an error a restart can cure (a source, sink or i/o failure;
//! see [`Error::is_restartable`]), it waits (exponential backoff with jitter), builds
//! the pipeline again and runs it; the new run resumes from the pipeline's last
//! checkpoint, so nothing is lost. Errors a restart cannot cure (a rejected record
//! with no dead-letter sink, a corrupt checkpoint, bad configuration) are returned at
//! once: a poison record never loops. More than `max_restarts` restarts within
//! `window` also ends supervision with [`Error::RestartsExhausted`].
//!
//! ```
//! use std::time::Duration;
//! use batchstream::{Pipeline, StreamExecutor};
//! use batchstream::checkpoint::MemoryCheckpointStore;
//! use batchstream::retry::RetryPolicy;
//! use batchstream::supervisor::Supervisor;
//! use batchstream::testing::{ScriptedSource, Step, TxCollectSink};
//! use batchstream::transform::identity;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let store = MemoryCheckpointStore::new();
//! let (_, out) = TxCollectSink::<u32>::new();
//! let mut attempt = 0;
//! let report = Supervisor::new()
//!     .backoff(RetryPolicy::new().initial_backoff(Duration::from_millis(1)))
//!     .run(StreamExecutor::new().checkpoint_every_records(2), || {
//!         attempt += 1;
//!         // The first attempt's source fails after 3 records.
//!         let mut steps = vec![Step::Records(vec![1, 2, 3])];
//!         if attempt == 1 {
//!             steps.push(Step::Fail { message: "connection reset".into(), retryable: true });
//!         }
//!         steps.push(Step::Records(vec![4, 5]));
//!         Ok(Pipeline::new("sup", ScriptedSource::new(steps), identity::<u32>(),
//!                          TxCollectSink::resume(&out))
//!             .with_checkpoint_store(store.clone()))
//!     })
//!     .await?;
//! assert_eq!(report.restarts.len(), 1);
//! assert_eq!(out.committed(), vec![1, 2, 3, 4, 5]); // exactly once
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::executor::{Executor, RunReport};
use crate::pipeline::Pipeline;
use crate::retry::RetryPolicy;
use crate::sink::Sink;
use crate::source::Source;
use crate::transform::Transform;

/// Restarts a failing pipeline from its last checkpoint. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Supervisor {
    max_restarts: u32,
    window: Duration,
    backoff: RetryPolicy,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff: RetryPolicy::new(),
        }
    }
}

/// One restart: why, and how long the supervisor waited before it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Restart {
    /// 1 for the first restart.
    pub attempt: u32,
    /// The error that ended the previous run.
    pub error: String,
    /// The backoff waited before this restart.
    pub delay: Duration,
}

/// The report of a supervised pipeline: the final run's report and every restart.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SupervisedReport {
    /// The report of the run that finished.
    pub report: RunReport,
    /// The restarts before it, in order.
    pub restarts: Vec<Restart>,
}

impl Supervisor {
    /// At most 5 restarts per minute, with [`RetryPolicy::new`]'s backoff (from 100 ms
    /// doubling up to 30 s, with jitter).
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` restarts within any `window`; one more ends supervision.
    pub fn max_restarts(mut self, max: u32, window: Duration) -> Self {
        self.max_restarts = max;
        self.window = window;
        self
    }

    /// The wait between restarts: `policy`'s [`delay`](RetryPolicy::delay) for the
    /// n-th restart (its attempt limits do not apply; the restart budget does).
    pub fn backoff(mut self, policy: RetryPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// Runs the pipeline that `make` builds under `executor`, restarting it after
    /// restartable failures. `make` is called once per attempt and must build the
    /// pipeline with the same id and checkpoint store, so that each attempt resumes
    /// where the last checkpoint left off.
    ///
    /// # Errors
    /// An error of `make`; a run's error that a restart cannot cure (returned as it
    /// is); or [`Error::RestartsExhausted`] when the budget is spent.
    pub async fn run<S, T, K, F>(
        &self,
        executor: impl Into<Executor>,
        mut make: F,
    ) -> Result<SupervisedReport>
    where
        S: Source,
        T: Transform<In = S::Item, Out = K::Item>,
        K: Sink,
        F: FnMut() -> Result<Pipeline<S, T, K>>,
    {
        let executor = executor.into();
        let mut restarts: Vec<Restart> = Vec::new();
        let mut recent: Vec<Instant> = Vec::new();
        loop {
            let pipeline = make()?;
            let id = pipeline.id().to_owned();
            match executor.run(pipeline).await {
                Ok(mut report) => {
                    report.metrics.restarts += restarts.len() as u64;
                    return Ok(SupervisedReport { report, restarts });
                }
                Err(e) if !e.is_restartable() => return Err(e),
                Err(e) => {
                    let now = Instant::now();
                    recent.retain(|t| now.duration_since(*t) < self.window);
                    if recent.len() as u32 >= self.max_restarts {
                        return Err(Error::RestartsExhausted {
                            pipeline: id,
                            restarts: recent.len() as u32,
                            window: self.window,
                            last: Box::new(e),
                        });
                    }
                    recent.push(now);
                    let attempt = restarts.len() as u32 + 1;
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(pipeline = %id, attempt, ?delay, error = %e, "restarting pipeline");
                    restarts.push(Restart {
                        attempt,
                        error: e.to_string(),
                        delay,
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
