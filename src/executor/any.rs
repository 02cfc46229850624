//! [`Executor`]: any of the three executors, chosen at run time (from configuration).

use std::future::Future;

use crate::error::Result;
use crate::executor::{
    BatchExecutor, ExecutorKind, MicroBatchExecutor, RunReport, StreamExecutor, Trigger,
};
use crate::pipeline::Pipeline;
use crate::sink::Sink;
use crate::source::Source;
use crate::transform::Transform;

/// One of the three executors, so that the processing model can come from
/// configuration while the pipeline code stays the same.
///
/// ```
/// use batchstream::{Executor, ExecutorKind, Pipeline};
/// use batchstream::adapters::{CollectSink, IterSource};
/// use batchstream::transform::identity;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let mode = "stream"; // e.g. read from a config file
/// let executor: Executor = mode.parse::<ExecutorKind>()?.into();
/// let (sink, out) = CollectSink::new();
/// let report = executor
///     .run(Pipeline::new("p", IterSource::new(0..3), identity::<i32>(), sink))
///     .await?;
/// assert_eq!(report.executor, ExecutorKind::Stream);
/// assert_eq!(out.len(), 3);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub enum Executor {
    /// A [`BatchExecutor`].
    Batch(BatchExecutor),
    /// A [`StreamExecutor`].
    Stream(StreamExecutor),
    /// A [`MicroBatchExecutor`].
    MicroBatch(MicroBatchExecutor),
}

impl Executor {
    /// Which executor this is.
    pub fn kind(&self) -> ExecutorKind {
        match self {
            Executor::Batch(_) => ExecutorKind::Batch,
            Executor::Stream(_) => ExecutorKind::Stream,
            Executor::MicroBatch(_) => ExecutorKind::MicroBatch,
        }
    }

    entry_points! {
        run:
        /// Runs `pipeline` until its source ends (or the micro-batch trigger is done).
        ///
        /// # Errors
        /// Whatever the chosen executor returns.
        run_until:
        /// Runs `pipeline` until its source ends or `shutdown` completes.
        ///
        /// # Errors
        /// Whatever the chosen executor returns.
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
        match self {
            Executor::Batch(e) => e.run_until(pipeline, shutdown).await,
            Executor::Stream(e) => e.run_until(pipeline, shutdown).await,
            Executor::MicroBatch(e) => e.run_until(pipeline, shutdown).await,
        }
    }
}

impl From<ExecutorKind> for Executor {
    /// The executor of that kind with its defaults (micro-batch:
    /// [`Trigger::AvailableNow`]).
    fn from(kind: ExecutorKind) -> Self {
        match kind {
            ExecutorKind::Batch => Executor::Batch(BatchExecutor::new()),
            ExecutorKind::Stream => Executor::Stream(StreamExecutor::new()),
            ExecutorKind::MicroBatch => {
                Executor::MicroBatch(MicroBatchExecutor::new(Trigger::AvailableNow))
            }
        }
    }
}

impl From<BatchExecutor> for Executor {
    fn from(e: BatchExecutor) -> Self {
        Executor::Batch(e)
    }
}

impl From<StreamExecutor> for Executor {
    fn from(e: StreamExecutor) -> Self {
        Executor::Stream(e)
    }
}

impl From<MicroBatchExecutor> for Executor {
    fn from(e: MicroBatchExecutor) -> Self {
        Executor::MicroBatch(e)
    }
}
