//! The batch executor: a bounded input, processed in chunks, completed once.

use std::future::Future;

use crate::error::{Error, Result};
use crate::executor::driver::Driver;
use crate::executor::{ExecutorKind, Outcome, RunReport};
use crate::pipeline::Pipeline;
use crate::progress::ProgressBar;
use crate::sink::Sink;
use crate::source::{Boundedness, Source};
use crate::transform::Transform;

/// Runs a pipeline over a bounded source: extract in chunks, transform, load, then
/// record the run as complete.
///
/// With a [run key](BatchExecutor::run_key) (a date, a partition) and a checkpoint
/// store, a completed run is recorded in the store and a second run of the same key
/// is skipped (its report says so) unless [forced](BatchExecutor::force). A run that
/// fails halfway is not marked complete; running it again starts the range from the
/// beginning. Stateful transforms emit their results once, at the end of input.
///
/// With the `progress` feature, a progress bar on stderr shows records/s and, where
/// the source knows its size (a file), the percentage done and an ETA.
///
/// ```
/// use batchstream::{BatchExecutor, Pipeline};
/// use batchstream::adapters::{CollectSink, IterSource};
/// use batchstream::checkpoint::MemoryCheckpointStore;
/// use batchstream::transform::identity;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let store = MemoryCheckpointStore::new();
/// let run = |store: MemoryCheckpointStore| async move {
///     let (sink, _out) = CollectSink::new();
///     let p = Pipeline::new("daily", IterSource::new(0..10), identity::<i32>(), sink)
///         .with_checkpoint_store(store);
///     BatchExecutor::new().run_key("2024-05-01").run(p).await
/// };
/// assert_eq!(run(store.clone()).await?.records_written, 10);
/// assert!(run(store.clone()).await?.is_skipped());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BatchExecutor {
    chunk_size: usize,
    run_key: Option<String>,
    force: bool,
}

impl Default for BatchExecutor {
    fn default() -> Self {
        BatchExecutor {
            chunk_size: 1000,
            run_key: None,
            force: false,
        }
    }
}

impl BatchExecutor {
    /// A batch executor with chunks of 1000 records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records read and transformed per chunk (at least 1).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = n.max(1);
        self
    }

    /// The key of this run (e.g. `"2024-05-01"`): recorded on completion; a completed
    /// key is skipped next time.
    pub fn run_key(mut self, key: impl Into<String>) -> Self {
        self.run_key = Some(key.into());
        self
    }

    /// Runs even if the run key is already complete.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Which executor this is: [`ExecutorKind::Batch`].
    pub fn kind(&self) -> ExecutorKind {
        ExecutorKind::Batch
    }

    entry_points! {
        run:
        /// Runs `pipeline` to the end of its source.
        ///
        /// # Errors
        /// [`Error::UnboundedSource`] for an unbounded source; otherwise the first source,
        /// sink, record or checkpoint error, after which the run is not marked complete.
        run_until:
        /// Runs `pipeline` to the end of its source, or until `shutdown` completes. A
        /// stopped run writes what it has processed, is not marked complete, and reports
        /// [`Outcome::Stopped`]; running it again starts the range over.
        ///
        /// # Errors
        /// As [`run`](BatchExecutor::run).
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
        if pipeline.source.boundedness() == Boundedness::Unbounded {
            return Err(Error::UnboundedSource { executor: "batch" });
        }
        let mut d = Driver::new(pipeline, ExecutorKind::Batch);
        d.report.run_key = self.run_key.clone();
        d.load().await?;
        // Before anything else (even a skip): an epoch prepared before a crash is
        // committed or discarded as the checkpoint says.
        d.recover_sink().await?;
        if let Some(key) = &self.run_key {
            if !self.force && d.checkpointed_runs().contains(key) {
                let reason = format!("run `{key}` already completed");
                return Ok(d.finish(Outcome::Skipped { reason }));
            }
        }
        let mut progress = ProgressBar::new(&d.id, d.source.progress());
        tokio::pin!(shutdown);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut shutdown => {
                    progress.finish(d.report.records_read);
                    d.flush_sinks().await?;
                    return Ok(d.finish(Outcome::Stopped));
                }
                next = d.next_batch(self.chunk_size) => next?,
            };
            let Some(batch) = next else { break };
            d.report.epochs += 1;
            d.process(batch).await?;
            progress.update(d.report.records_read, d.source.progress());
        }
        progress.finish(d.report.records_read);
        d.end_of_input().await?;
        d.checkpoint(false, self.run_key.as_deref()).await?;
        Ok(d.finish(Outcome::Completed))
    }
}
