//! The pipeline: a source, a transform chain and a sink, plus optional checkpoint
//! store and dead-letter sink. Build it once; hand it to any executor.

use std::fmt;

use crate::checkpoint::{BoxCheckpointStore, CheckpointStore};
use crate::dead_letter::DeadLetter;
use crate::event_time::EventTime;
use crate::metrics::PipelineMetrics;
use crate::retry::{RetryPolicy, RetrySink};
use crate::sink::{BoxSink, Sink};
use crate::source::Source;
use crate::transform::Transform;

/// A source, a transform chain and a sink, ready for an executor.
///
/// ```
/// use batchstream::{Pipeline, BatchExecutor};
/// use batchstream::adapters::{CollectSink, IterSource};
/// use batchstream::transform::{self, TransformExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let (sink, out) = CollectSink::new();
/// let pipeline = Pipeline::new(
///     "doubles",
///     IterSource::new(1..=3),
///     transform::identity::<i32>().map(|x| x * 2),
///     sink,
/// );
/// let report = BatchExecutor::new().run(pipeline).await?;
/// assert_eq!(report.records_written, 3);
/// assert_eq!(out.items(), vec![2, 4, 6]);
/// # Ok(()) }
/// ```
pub struct Pipeline<S: Source, T, K> {
    pub(crate) id: String,
    pub(crate) source: S,
    pub(crate) transform: T,
    pub(crate) sink: K,
    pub(crate) checkpoints: Option<BoxCheckpointStore>,
    pub(crate) dead_letters: Option<BoxSink<DeadLetter>>,
    pub(crate) late: Option<BoxSink<DeadLetter>>,
    pub(crate) event_time: Option<EventTime<S::Item>>,
    pub(crate) metrics: PipelineMetrics,
    pub(crate) dead_letter_limit: Option<DeadLetterLimit>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) exactly_once: bool,
}

/// How many dead letters a run tolerates before it fails with
/// [`Error::TooManyDeadLetters`](crate::Error::TooManyDeadLetters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeadLetterLimit {
    /// At most this many dead letters per run.
    Count(u64),
    /// At most this fraction of the records read (0.01 = 1 %), checked once at least
    /// `after` records were read (so that one early bad record does not trip it).
    Fraction {
        /// The largest tolerated fraction.
        max: f64,
        /// Records to read before the fraction is checked.
        after: u64,
    },
}

impl DeadLetterLimit {
    /// Whether `dead` dead letters out of `read` records exceed the limit.
    pub fn exceeded(&self, dead: u64, read: u64) -> bool {
        match *self {
            DeadLetterLimit::Count(n) => dead > n,
            DeadLetterLimit::Fraction { max, after } => {
                read >= after && read > 0 && dead as f64 / read as f64 > max
            }
        }
    }

    /// With `dead` letters so far and `read` records read, the index in a new group of
    /// `more` letters of the first one that exceeds the limit, if any. A fraction is
    /// checked per group (per batch).
    pub(crate) fn first_excess(&self, dead: u64, read: u64, more: usize) -> Option<usize> {
        match *self {
            DeadLetterLimit::Count(n) => {
                let room = n.saturating_sub(dead);
                (more as u64 > room).then_some(room as usize)
            }
            DeadLetterLimit::Fraction { .. } => self
                .exceeded(dead + more as u64, read)
                .then_some(more.saturating_sub(1)),
        }
    }
}

impl std::fmt::Display for DeadLetterLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterLimit::Count(n) => write!(f, "at most {n}"),
            DeadLetterLimit::Fraction { max, after } => {
                write!(f, "at most {}% after {after} records", max * 100.0)
            }
        }
    }
}

impl<S, T, K> Pipeline<S, T, K>
where
    S: Source,
    T: Transform<In = S::Item, Out = K::Item>,
    K: Sink,
{
    /// A pipeline named `id` (the key of its checkpoints) from `source` through
    /// `transform` to `sink`.
    pub fn new(id: impl Into<String>, source: S, transform: T, sink: K) -> Self {
        let id = id.into();
        Pipeline {
            metrics: PipelineMetrics::new(id.clone()),
            id,
            source,
            transform,
            sink,
            checkpoints: None,
            dead_letters: None,
            late: None,
            event_time: None,
            dead_letter_limit: None,
            retry: None,
            exactly_once: false,
        }
    }
}

impl<S: Source, T, K> Pipeline<S, T, K>
where
    K: Sink,
    K::Item: Clone,
{
    /// Retries transient failures of the sink's `write`, `flush` and `commit` as
    /// `policy` says, counting each retry in this pipeline's metrics: the sink is
    /// wrapped in a [`RetrySink`] (which copies each batch
    /// before writing it, hence `Clone` records).
    ///
    /// ```
    /// use std::time::Duration;
    /// use batchstream::{BatchExecutor, Pipeline};
    /// use batchstream::adapters::IterSource;
    /// use batchstream::retry::RetryPolicy;
    /// use batchstream::testing::FailingSink;
    /// use batchstream::transform;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> batchstream::Result<()> {
    /// let (flaky, out) = FailingSink::new([1]); // the first write fails, transiently
    /// let p = Pipeline::new("p", IterSource::new(1..=3), transform::identity::<i32>(), flaky.retryable())
    ///     .with_sink_retry(RetryPolicy::new().initial_backoff(Duration::from_millis(1)));
    /// let report = BatchExecutor::new().run(p).await?;
    /// assert_eq!(out.items(), vec![1, 2, 3]);
    /// assert_eq!(report.metrics.retries, 1);
    /// # Ok(()) }
    /// ```
    pub fn with_sink_retry(self, policy: RetryPolicy) -> Pipeline<S, T, RetrySink<K>> {
        let sink = RetrySink::new(self.sink, policy).with_metrics(self.metrics.clone());
        Pipeline {
            id: self.id,
            source: self.source,
            transform: self.transform,
            sink,
            checkpoints: self.checkpoints,
            dead_letters: self.dead_letters,
            late: self.late,
            event_time: self.event_time,
            metrics: self.metrics,
            dead_letter_limit: self.dead_letter_limit,
            retry: self.retry,
            exactly_once: self.exactly_once,
        }
    }
}

impl<S: Source, T, K> Pipeline<S, T, K> {
    /// Saves checkpoints to `store` and resumes from it.
    pub fn with_checkpoint_store(mut self, store: impl CheckpointStore + 'static) -> Self {
        self.checkpoints = Some(BoxCheckpointStore::new(store));
        self
    }

    /// Sends rejected records to `sink` instead of failing the run.
    pub fn with_dead_letter_sink(mut self, sink: impl Sink<Item = DeadLetter> + 'static) -> Self {
        self.dead_letters = Some(BoxSink::new(sink));
        self
    }

    /// Retries source reads and checkpoint saves that fail with a transient error, as
    /// `policy` says (see [`crate::retry`]). Default: no retries. For sink writes see
    /// [`with_sink_retry`](Pipeline::with_sink_retry).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Requires exactly-once output: every executor checks at start that the sink is
    /// [`Idempotent`](crate::DeliveryGuarantee::Idempotent) or
    /// [`Transactional`](crate::DeliveryGuarantee::Transactional), and that a
    /// transactional sink has a checkpoint store to commit against, and fails with
    /// [`Error::Config`](crate::Error::Config) saying what is missing otherwise.
    /// Without this, the run goes ahead and [`RunReport::guarantee`](crate::RunReport::guarantee)
    /// says what it got.
    ///
    /// ```
    /// use batchstream::{Pipeline, StreamExecutor, Error};
    /// use batchstream::adapters::{CollectSink, IterSource};
    /// use batchstream::transform;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (sink, _out) = CollectSink::new(); // at-least-once
    /// let p = Pipeline::new("p", IterSource::new(0..3), transform::identity::<i32>(), sink)
    ///     .require_exactly_once();
    /// let err = StreamExecutor::new().run(p).await.unwrap_err();
    /// assert!(matches!(err, Error::Config(_)), "{err}");
    /// # }
    /// ```
    pub fn require_exactly_once(mut self) -> Self {
        self.exactly_once = true;
        self
    }

    /// Fails the run with [`Error::TooManyDeadLetters`](crate::Error::TooManyDeadLetters)
    /// once the dead letters exceed `limit`, instead of dead-lettering everything.
    pub fn with_dead_letter_limit(mut self, limit: DeadLetterLimit) -> Self {
        self.dead_letter_limit = Some(limit);
        self
    }

    /// Tracks event time and watermarks as `event_time` says; the transforms see the
    /// watermark through [`Transform::on_watermark`]. See [`crate::event_time`].
    pub fn with_event_time(mut self, event_time: EventTime<S::Item>) -> Self {
        self.event_time = Some(event_time);
        self
    }

    /// Sends records that arrive after their window closed (kind
    /// [`Late`](crate::RecordErrorKind::Late)) to `sink`. Without one, late records are
    /// counted in [`RunReport::late`](crate::RunReport::late) and not written anywhere.
    pub fn with_late_sink(mut self, sink: impl Sink<Item = DeadLetter> + 'static) -> Self {
        self.late = Some(BoxSink::new(sink));
        self
    }

    /// A handle to this pipeline's live metrics: keep a clone before handing the
    /// pipeline to an executor and read [`PipelineMetrics::snapshot`] while it runs.
    pub fn metrics(&self) -> PipelineMetrics {
        self.metrics.clone()
    }

    /// The pipeline id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<S: Source, T, K> fmt::Debug for Pipeline<S, T, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("id", &self.id)
            .field("checkpoints", &self.checkpoints.is_some())
            .field("dead_letters", &self.dead_letters.is_some())
            .field("late", &self.late.is_some())
            .field("event_time", &self.event_time)
            .field("exactly_once", &self.exactly_once)
            .finish_non_exhaustive()
    }
}
