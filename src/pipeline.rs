//! The pipeline: a source, a transform chain and a sink, plus optional checkpoint
//! store and dead-letter sink. Build it once; hand it to any executor.

use std::fmt;

use crate::checkpoint::{BoxCheckpointStore, CheckpointStore};
use crate::dead_letter::DeadLetter;
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
pub struct Pipeline<S, T, K> {
    pub(crate) id: String,
    pub(crate) source: S,
    pub(crate) transform: T,
    pub(crate) sink: K,
    pub(crate) checkpoints: Option<BoxCheckpointStore>,
    pub(crate) dead_letters: Option<BoxSink<DeadLetter>>,
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
        Pipeline {
            id: id.into(),
            source,
            transform,
            sink,
            checkpoints: None,
            dead_letters: None,
        }
    }
}

impl<S, T, K> Pipeline<S, T, K> {
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

    /// The pipeline id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<S, T, K> fmt::Debug for Pipeline<S, T, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("id", &self.id)
            .field("checkpoints", &self.checkpoints.is_some())
            .field("dead_letters", &self.dead_letters.is_some())
            .finish_non_exhaustive()
    }
}
