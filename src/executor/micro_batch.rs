//! The micro-batch executor: small batches on a trigger, one checkpoint each.

use std::future::Future;
use std::time::Duration;

use tokio::time::{self, MissedTickBehavior};

use crate::error::Result;
use crate::executor::driver::Driver;
use crate::executor::{ExecutorKind, Outcome, RunReport};
use crate::pipeline::Pipeline;
use crate::sink::Sink;
use crate::source::{Boundedness, Source};
use crate::transform::Transform;

/// When a micro-batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// One micro-batch every interval (the first at once), until the source ends or
    /// shutdown.
    ProcessingTime(Duration),
    /// A single micro-batch of what is available, then stop. The rest waits for the
    /// next run, which resumes from the checkpoint.
    Once,
    /// Micro-batches back to back until nothing more is available (an unbounded source
    /// is idle), or the end of a bounded source; then stop.
    AvailableNow,
}

/// Runs a pipeline as a sequence of micro-batches. Each micro-batch has an id (its
/// checkpoint epoch), reads up to
/// [`max_records_per_batch`](MicroBatchExecutor::max_records_per_batch) records,
/// ends with the transforms' flush, and is one checkpoint.
///
/// On an unbounded source a micro-batch takes what is available: it stops reading
/// when the source has had nothing for
/// [`idle_timeout`](MicroBatchExecutor::idle_timeout). On a bounded source it reads
/// until the limit or the end.
///
/// ```
/// use batchstream::{MicroBatchExecutor, Pipeline, Trigger};
/// use batchstream::adapters::{CollectSink, IterSource};
/// use batchstream::transform::identity;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let (sink, out) = CollectSink::new();
/// let p = Pipeline::new("mb", IterSource::new(0..25), identity::<i32>(), sink);
/// let report = MicroBatchExecutor::new(Trigger::AvailableNow)
///     .max_records_per_batch(10)
///     .run(p)
///     .await?;
/// assert_eq!(report.epochs, 3); // 10 + 10 + 5
/// assert_eq!(out.items().len(), 25);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MicroBatchExecutor {
    trigger: Trigger,
    max_records: usize,
    read_chunk: usize,
    idle_timeout: Duration,
}

impl MicroBatchExecutor {
    /// A micro-batch executor with `trigger`, at most 100 000 records per micro-batch,
    /// read 1024 at a time, and a 10 ms idle timeout.
    pub fn new(trigger: Trigger) -> Self {
        MicroBatchExecutor {
            trigger,
            max_records: 100_000,
            read_chunk: 1024,
            idle_timeout: Duration::from_millis(10),
        }
    }

    /// The most records in one micro-batch (at least 1).
    pub fn max_records_per_batch(mut self, n: usize) -> Self {
        self.max_records = n.max(1);
        self
    }

    /// The most records asked of the source per read (at least 1).
    pub fn read_chunk(mut self, n: usize) -> Self {
        self.read_chunk = n.max(1);
        self
    }

    /// How long an unbounded source may have nothing before the micro-batch closes.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Which executor this is: [`ExecutorKind::MicroBatch`].
    pub fn kind(&self) -> ExecutorKind {
        ExecutorKind::MicroBatch
    }

    entry_points! {
        run:
        /// Runs until the trigger is done or the source ends.
        ///
        /// # Errors
        /// The first source, sink, record or checkpoint error; the failed micro-batch is
        /// not checkpointed and is re-read on restart.
        run_until:
        /// Runs until the trigger is done, the source ends, or `shutdown` completes
        /// (checked between micro-batches).
        ///
        /// # Errors
        /// As [`run`](MicroBatchExecutor::run).
    }

    async fn execute<S, T, K, F>(
        self,
        pipeline: Pipeline<S, T, K>,
        shutdown: F,
    ) -> Result<RunReport>
    where
        S: Source,
        T: Transform<In = S::Item, Out = K::Item>,
        K: Sink,
        F: Future<Output = ()>,
    {
        let mut d = Driver::new(pipeline, ExecutorKind::MicroBatch);
        d.resume().await?;
        let bounded = d.source.boundedness() == Boundedness::Bounded;
        let period = match self.trigger {
            Trigger::ProcessingTime(p) => p.max(Duration::from_millis(1)),
            _ => Duration::from_secs(3600),
        };
        let mut ticker = time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        let outcome = loop {
            if let Trigger::ProcessingTime(_) = self.trigger {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break Outcome::Stopped,
                    _ = ticker.tick() => {}
                }
            }
            let mut taken = 0usize;
            let mut ended = false;
            let mut idle = false;
            while taken < self.max_records {
                let want = self.read_chunk.min(self.max_records - taken);
                let next = if bounded {
                    Some(d.next_batch(want).await)
                } else {
                    time::timeout(self.idle_timeout, d.next_batch(want))
                        .await
                        .ok()
                };
                match next {
                    None => {
                        idle = true;
                        break;
                    }
                    Some(r) => match r? {
                        None => {
                            ended = true;
                            break;
                        }
                        Some(batch) => {
                            taken += batch.records.len() + batch.rejected.len();
                            d.process(batch).await?;
                        }
                    },
                }
            }
            let read_something = d.is_dirty();
            if read_something {
                d.report.epochs += 1;
                tracing::debug!(records = taken, ended, "micro-batch");
            }
            if ended {
                // The final watermark may release results: they belong to this epoch.
                d.end_of_input().await?;
            } else {
                d.end_epoch().await?;
            }
            if d.is_dirty() {
                d.checkpoint(true, None).await?;
            }
            if ended {
                break Outcome::Completed;
            }
            match self.trigger {
                Trigger::Once => break Outcome::Completed,
                Trigger::AvailableNow if idle => break Outcome::Completed,
                _ => {}
            }
        };
        Ok(d.finish(outcome))
    }
}
