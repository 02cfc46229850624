//! Executors: the processing model, chosen at deployment time.
//!
//! | executor | input | emits | checkpoints |
//! |---|---|---|---|
//! | [`BatchExecutor`] | bounded | at the end of input | once, marking the run complete |
//! | [`StreamExecutor`] | unbounded or bounded | after every source batch | every N records / T time, and on shutdown |
//! | [`MicroBatchExecutor`] | either | once per trigger | once per micro-batch |
//!
//! All three share one internal driver, so they differ only in when they flush
//! and checkpoint, not in plumbing: the same pipeline and input give the same
//! results under each.

/// Generates the public `run` and `run_until` of an executor from its private
/// `async fn execute(self, pipeline, shutdown)`, with the given docs. The returned
/// futures own a clone of the executor's settings, so they do not borrow it.
macro_rules! entry_points {
    (run: $(#[$run:meta])* run_until: $(#[$until:meta])*) => {
        $(#[$run])*
        ///
        /// The returned future does not borrow the executor, so it can be spawned.
        pub fn run<S, T, K>(
            &self,
            pipeline: $crate::Pipeline<S, T, K>,
        ) -> impl ::std::future::Future<Output = $crate::Result<$crate::RunReport>> + use<S, T, K>
        where
            S: $crate::Source,
            T: $crate::Transform<In = S::Item, Out = K::Item>,
            K: $crate::Sink,
        {
            self.run_until(pipeline, ::std::future::pending())
        }

        $(#[$until])*
        pub fn run_until<S, T, K, F>(
            &self,
            pipeline: $crate::Pipeline<S, T, K>,
            shutdown: F,
        ) -> impl ::std::future::Future<Output = $crate::Result<$crate::RunReport>> + use<S, T, K, F>
        where
            S: $crate::Source,
            T: $crate::Transform<In = S::Item, Out = K::Item>,
            K: $crate::Sink,
            F: ::std::future::Future<Output = ()>,
        {
            let kind: $crate::ExecutorKind = self.kind();
            let span = ::tracing::info_span!(
                "batchstream.run",
                pipeline = %pipeline.id(),
                executor = %kind,
            );
            ::tracing::Instrument::instrument(self.clone().execute(pipeline, shutdown), span)
        }

        /// Runs until the source ends or a [`Shutdown`](crate::Shutdown) signal. The
        /// first signal stops gracefully, as [`run_until`](Self::run_until) does; a
        /// second one before that is done abandons the run and returns
        /// [`Error::Aborted`](crate::Error::Aborted) (nothing past the last saved
        /// checkpoint is committed or acked, so a restart loses nothing).
        ///
        /// # Errors
        /// As `run`, plus [`Error::Aborted`](crate::Error::Aborted).
        pub fn run_with_shutdown<S, T, K>(
            &self,
            pipeline: $crate::Pipeline<S, T, K>,
            shutdown: $crate::Shutdown,
        ) -> impl ::std::future::Future<Output = $crate::Result<$crate::RunReport>> + use<S, T, K>
        where
            S: $crate::Source,
            T: $crate::Transform<In = S::Item, Out = K::Item>,
            K: $crate::Sink,
        {
            let id = pipeline.id().to_owned();
            let run = self.run_until(pipeline, shutdown.clone().requested());
            async move {
                ::tokio::select! {
                    biased;
                    report = run => report,
                    () = shutdown.aborted() => {
                        ::tracing::warn!(pipeline = %id, "second shutdown signal: run aborted");
                        Err($crate::Error::Aborted { pipeline: id })
                    }
                }
            }
        }
    };
}

mod any;
mod batch;
pub(crate) mod driver;
mod micro_batch;
mod stream;

pub use any::Executor;
pub use batch::BatchExecutor;
pub use micro_batch::{MicroBatchExecutor, Trigger};
pub use stream::StreamExecutor;

use std::fmt;
use std::time::Duration;

/// Which executor produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// [`BatchExecutor`].
    Batch,
    /// [`StreamExecutor`].
    Stream,
    /// [`MicroBatchExecutor`].
    MicroBatch,
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecutorKind::Batch => "batch",
            ExecutorKind::Stream => "stream",
            ExecutorKind::MicroBatch => "micro-batch",
        })
    }
}

impl std::str::FromStr for ExecutorKind {
    type Err = crate::Error;

    /// Parses `batch`, `stream` or `micro-batch` (also `micro_batch`, `microbatch`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "batch" => Ok(ExecutorKind::Batch),
            "stream" | "streaming" => Ok(ExecutorKind::Stream),
            "micro-batch" | "micro_batch" | "microbatch" => Ok(ExecutorKind::MicroBatch),
            other => Err(crate::Error::Config(format!(
                "unknown executor `{other}`: expected `batch`, `stream` or `micro-batch`"
            ))),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The source ended (or the trigger finished) and everything was checkpointed.
    Completed,
    /// The batch run key was already complete; nothing was read.
    Skipped {
        /// Why it was skipped.
        reason: String,
    },
    /// A shutdown signal stopped the run. Stream and micro-batch runs take a final
    /// checkpoint first; a stopped batch run is not marked complete.
    Stopped,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunReport {
    /// The pipeline id.
    pub pipeline_id: String,
    /// The executor that ran it.
    pub executor: ExecutorKind,
    /// The batch run key, if any.
    pub run_key: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Records read from the source (decoded and rejected).
    pub records_read: u64,
    /// Records written to the sink.
    pub records_written: u64,
    /// Records sent to the dead-letter sink.
    pub dead_lettered: u64,
    /// Records that arrived after their window had closed (sent to the late sink if
    /// the pipeline has one, else only counted here).
    pub late: u64,
    /// The event-time watermark at the end of the run (`None` without event time, or
    /// before any record). A finished input ends at `DateTime::<Utc>::MAX_UTC`.
    pub watermark: Option<chrono::DateTime<chrono::Utc>>,
    /// Watermarks that would have gone backwards and were ignored.
    pub watermark_regressions: u64,
    /// Checkpoints taken (flush, prepare, commit, ack); they are saved only when the
    /// pipeline has a checkpoint store.
    pub checkpoints: u64,
    /// Epochs run: micro-batches for the micro-batch executor, source batches for the
    /// stream executor, chunks for the batch executor.
    pub epochs: u64,
    /// The checkpoint epoch this run resumed from, if it resumed.
    pub resumed_from_epoch: Option<u64>,
    /// What the run's output promises after a crash: the sink's
    /// [`DeliveryGuarantee`](crate::DeliveryGuarantee), or at-least-once for a
    /// transactional sink without a checkpoint store. See
    /// [`Pipeline::require_exactly_once`](crate::Pipeline::require_exactly_once).
    pub guarantee: crate::DeliveryGuarantee,
    /// Wall-clock duration.
    pub duration: Duration,
    /// The pipeline's metrics at the end of the run (latency percentiles, checkpoint
    /// times and sizes, source lag).
    pub metrics: crate::metrics::MetricsSnapshot,
}

impl RunReport {
    /// Whether the run was skipped (its batch run key was already complete).
    pub fn is_skipped(&self) -> bool {
        matches!(self.outcome, Outcome::Skipped { .. })
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} run of `{}`", self.executor, self.pipeline_id)?;
        if let Some(k) = &self.run_key {
            write!(f, " [{k}]")?;
        }
        match &self.outcome {
            Outcome::Completed => f.write_str(": completed")?,
            Outcome::Stopped => f.write_str(": stopped by shutdown")?,
            Outcome::Skipped { reason } => return write!(f, ": skipped ({reason})"),
        }
        write!(
            f,
            "; read {}, written {}, dead-lettered {}, late {}, {} epochs, {} checkpoints, {:.1?}",
            self.records_read,
            self.records_written,
            self.dead_lettered,
            self.late,
            self.epochs,
            self.checkpoints,
            self.duration
        )?;
        if let Some(e) = self.resumed_from_epoch {
            write!(f, " (resumed from epoch {e})")?;
        }
        let l = &self.metrics.latency;
        if l.count > 0 {
            write!(f, "; latency p50 {} µs, p99 {} µs", l.p50_us, l.p99_us)?;
        }
        Ok(())
    }
}
