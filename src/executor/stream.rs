//! The stream executor: records flow to the sink as soon as they arrive.

use std::future::Future;
use std::time::Duration;

use tokio::time::{self, MissedTickBehavior};

use crate::error::Result;
use crate::executor::driver::Driver;
use crate::executor::{ExecutorKind, Outcome, RunReport};
use crate::pipeline::Pipeline;
use crate::sink::Sink;
use crate::source::Source;
use crate::transform::Transform;

/// Runs a pipeline continuously: each source batch is transformed and written at
/// once; stateful transforms emit their updated results after every batch, or every
/// [`emit_interval`](StreamExecutor::emit_interval).
///
/// Memory is bounded by the configuration, not the stream: one source batch
/// ([`max_batch`](StreamExecutor::max_batch) records) and its outputs are in flight at a
/// time, plus the transforms' state. A slow sink slows the source (the next batch is
/// read only after the sink took this one).
///
/// It checkpoints every [`checkpoint_every_records`](StreamExecutor::checkpoint_every_records)
/// records, every [`checkpoint_interval`](StreamExecutor::checkpoint_interval), at the
/// end of a bounded source, and on shutdown; in the order flush → prepare → save →
/// commit → ack.
/// On start it resumes from the last checkpoint: restored transform state, sought source.
///
/// ```
/// use batchstream::{Pipeline, StreamExecutor};
/// use batchstream::adapters::{ChannelSource, CollectSink};
/// use batchstream::transform::{self, TransformExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let (tx, rx) = tokio::sync::mpsc::channel(16);
/// let (sink, out) = CollectSink::new();
/// let p = Pipeline::new("alerts", ChannelSource::new(rx),
///                       transform::identity::<u32>().filter(|x| *x > 100), sink);
/// let run = tokio::spawn(StreamExecutor::new().run(p));
/// for x in [5, 500, 50, 1000] { tx.send(x).await.unwrap(); }
/// drop(tx); // the channel closes: the stream ends
/// let report = run.await.unwrap()?;
/// assert_eq!(out.items(), vec![500, 1000]);
/// assert_eq!(report.records_read, 4);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StreamExecutor {
    max_batch: usize,
    every_records: u64,
    interval: Duration,
    emit_interval: Option<Duration>,
}

impl Default for StreamExecutor {
    fn default() -> Self {
        StreamExecutor {
            max_batch: 1024,
            every_records: 100_000,
            interval: Duration::from_secs(5),
            emit_interval: None,
        }
    }
}

impl StreamExecutor {
    /// A stream executor: batches of up to 1024 records, a checkpoint every 100 000
    /// records or 5 seconds.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most records taken from the source at once (at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Checkpoint after this many records (at least 1).
    pub fn checkpoint_every_records(mut self, n: u64) -> Self {
        self.every_records = n.max(1);
        self
    }

    /// Checkpoint at least this often while records flow.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Emit stateful results (keyed aggregates, update-mode windows) at most this
    /// often instead of after every source batch: fewer, larger upserts for the sink,
    /// at the cost of more latency. The interval is checked when a batch arrives;
    /// results pending while the source is quiet go out at the next checkpoint tick
    /// ([`checkpoint_interval`](StreamExecutor::checkpoint_interval)), since results are
    /// always emitted before a checkpoint. Default: after every batch.
    pub fn emit_interval(mut self, interval: Duration) -> Self {
        self.emit_interval = Some(interval);
        self
    }

    /// Which executor this is: [`ExecutorKind::Stream`].
    pub fn kind(&self) -> ExecutorKind {
        ExecutorKind::Stream
    }

    entry_points! {
        run:
        /// Runs until the source ends.
        ///
        /// # Errors
        /// The first source, sink, record or checkpoint error. The source is never acked
        /// past the last saved checkpoint, so a restart loses nothing.
        run_until:
        /// Runs until the source ends or `shutdown` completes. On shutdown the batch in
        /// hand is finished, a final checkpoint is taken, and the report says
        /// [`Outcome::Stopped`].
        ///
        /// # Errors
        /// As [`run`](StreamExecutor::run).
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
        let mut d = Driver::new(pipeline, ExecutorKind::Stream);
        d.resume().await?;
        let mut ticker = time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let mut since_checkpoint = 0u64;
        let mut last_emit = time::Instant::now();
        tokio::pin!(shutdown);

        let outcome = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break Outcome::Stopped,
                _ = ticker.tick() => {
                    if d.is_dirty() {
                        d.end_epoch().await?;
                        d.checkpoint(true, None).await?;
                        since_checkpoint = 0;
                    }
                }
                next = d.next_batch(self.max_batch) => {
                    let Some(batch) = next? else { break Outcome::Completed };
                    since_checkpoint += (batch.records.len() + batch.rejected.len()) as u64;
                    d.report.epochs += 1;
                    d.process(batch).await?;
                    let checkpoint_due = since_checkpoint >= self.every_records;
                    let emit_due = self
                        .emit_interval
                        .is_none_or(|every| last_emit.elapsed() >= every);
                    if emit_due || checkpoint_due {
                        d.end_epoch().await?;
                        last_emit = time::Instant::now();
                    }
                    if checkpoint_due {
                        d.checkpoint(true, None).await?;
                        since_checkpoint = 0;
                        ticker.reset();
                    }
                }
            }
        };
        if outcome == Outcome::Completed {
            // The final watermark may release results (then the driver is dirty).
            d.end_of_input().await?;
        } else {
            d.end_epoch().await?;
        }
        if d.is_dirty() || d.report.checkpoints == 0 {
            d.checkpoint(true, None).await?;
        }
        Ok(d.finish(outcome))
    }
}
