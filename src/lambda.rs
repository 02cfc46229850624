//! Lambda architecture: an exact batch layer, an approximate speed layer, and a
//! serving layer that answers from the better of the two.
//!
//! - The **batch layer** runs a bounded pipeline per period (a day, an hour) over the
//!   period's complete input, computes exact per-key results, stages them in the
//!   [`ServingView`] and publishes them, which marks the period complete. It runs
//!   under the
//!   [`BatchExecutor`] with the period as its [run key](BatchExecutor::run_key): with
//!   a checkpoint store on the pipeline, a second run for the same period is skipped
//!   and leaves the view as it is.
//! - The **speed layer** runs a stream pipeline that turns each record into a
//!   `(key, period, delta)` increment for a [`SpeedStore`]: counters that are
//!   available within milliseconds, but approximate (an at-least-once replay after a
//!   crash counts twice; late input may be missed) and that expire, because once the
//!   batch layer has covered a period they are no longer needed.
//! - The **serving layer** ([`Lambda::query`]) answers `(key, period)` from the
//!   batch view once the period is complete, and from the speed counters before, and
//!   says which it used ([`Answer::source`]).
//!
//! # When to use it
//! When results must be fresh (seconds) *and* exact in the end, and the exact
//! computation needs the whole period (late data, deduplication, corrections), so a
//! stream alone cannot give it. The price is two pipelines to keep consistent; if a
//! stream job can be exact and reprocessing is a replay, prefer
//! [Kappa](crate::kappa).
//!
//! [`MemorySpeedStore`] and [`MemoryServingView`] keep everything in memory; the
//! traits are object safe (methods return [`BoxFuture`]) so that stores backed by
//! Redis counters or a PostgreSQL table can implement them.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use batchstream::adapters::IterSource;
//! use batchstream::checkpoint::MemoryCheckpointStore;
//! use batchstream::lambda::{Lambda, Layer, MemoryServingView, MemorySpeedStore};
//! use batchstream::transform::{self, TransformExt};
//! use batchstream::{BatchExecutor, Pipeline, StreamExecutor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! // Page views: (page, day).
//! let views = vec![("home", "d1"), ("home", "d1"), ("cart", "d1"), ("home", "d1")];
//! let lambda = Lambda::new(
//!     MemoryServingView::new(),
//!     MemorySpeedStore::new(Duration::from_secs(2 * 86_400)),
//! );
//!
//! // Speed layer: one increment per view, as the views arrive.
//! let speed = Pipeline::new(
//!     "views-speed",
//!     IterSource::new(views[..2].to_vec()),
//!     transform::identity::<(&str, &str)>().map(|(p, d)| (p.to_string(), d.to_string(), 1u64)),
//!     lambda.speed_sink(),
//! );
//! StreamExecutor::new().run(speed).await?;
//! let early = lambda.query(&"home".to_string(), &"d1".to_string()).await?;
//! assert_eq!((early.value, early.source), (Some(2), Layer::Speed));
//!
//! // Batch layer: the exact count over the whole day, once the day is over.
//! let store = MemoryCheckpointStore::new();
//! let report = lambda
//!     .run_batch(BatchExecutor::new(), "d1".to_string(), |sink| {
//!         let logic = transform::identity::<(&str, &str)>()
//!             .key_by(|(page, _)| page.to_string())
//!             .fold(0u64, |n, _| *n += 1);
//!         Pipeline::new("views-batch", IterSource::new(views.clone()), logic, sink)
//!             .with_checkpoint_store(store.clone())
//!     })
//!     .await?;
//! assert!(!report.is_skipped());
//! let exact = lambda.query(&"home".to_string(), &"d1".to_string()).await?;
//! assert_eq!((exact.value, exact.source), (Some(3), Layer::Batch));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::error::Result;
use crate::executor::{BatchExecutor, Outcome, RunReport};
use crate::pipeline::Pipeline;
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::Source;
use crate::transform::Transform;
use crate::window::Number;

/// Which layer an [`Answer`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The batch view: the period is complete and the value is exact.
    Batch,
    /// The speed layer: the period is not complete yet; the value is approximate.
    Speed,
}

impl Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Batch => "batch",
            Layer::Speed => "speed",
        })
    }
}

/// The serving layer's answer for one key and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<V> {
    /// The value; `None` when the layer has nothing for the key (no record for it in a
    /// complete period, or no (unexpired) counter yet).
    pub value: Option<V>,
    /// The layer that answered.
    pub source: Layer,
}

/// What the batch view knows about one key in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLookup<V> {
    /// The period's batch run has not completed: the view cannot answer.
    Incomplete,
    /// The period is complete; the key's exact value (`None`: no record for the key).
    Complete(Option<V>),
}

/// The batch layer's output: exact per-`(key, period)` values plus the set of
/// complete periods.
///
/// A batch run *stages* its rows; [`publish`](ServingView::publish) then replaces the
/// period's published rows with the staged ones and marks the period complete, in one
/// step. So readers never see a half-written period, a corrected rerun of a complete
/// period (a forced run) swaps the old answer for the new one whole, and keys that a
/// rerun no longer produces disappear instead of lingering.
///
/// Object safe, so a store backed by a database table can implement it behind a
/// feature (staging table + one transaction for `publish`).
///
/// # Contract
/// - [`stage`](ServingView::stage) is an upsert into the period's staging area; it is
///   invisible to [`lookup`](ServingView::lookup).
/// - [`clear_staged`](ServingView::clear_staged) empties the staging area (a new run
///   starts; a failed run's rows are dropped).
/// - `publish` is atomic and idempotent: with rows staged, they become the period's
///   rows; with nothing staged, the published rows stay as they are. Either way the
///   period is complete afterwards.
pub trait ServingView<K, P, V>: Send + Sync {
    /// Upserts `rows` into the staging area of `period`.
    fn stage<'a>(&'a self, period: &'a P, rows: Vec<(K, V)>) -> BoxFuture<'a, Result<()>>;
    /// Empties the staging area of `period`.
    fn clear_staged<'a>(&'a self, period: &'a P) -> BoxFuture<'a, Result<()>>;
    /// Publishes the staged rows of `period` (if any) in place of its rows, and marks
    /// it complete.
    fn publish<'a>(&'a self, period: &'a P) -> BoxFuture<'a, Result<()>>;
    /// The value of `key` in `period`, if the period is complete.
    fn lookup<'a>(&'a self, key: &'a K, period: &'a P) -> BoxFuture<'a, Result<BatchLookup<V>>>;
}

/// The speed layer's store: additive counters per `(key, period)` that expire.
///
/// Object safe, so a store backed by Redis (`INCRBY` + `EXPIRE`) can implement it.
pub trait SpeedStore<K, P, V>: Send + Sync {
    /// Adds each `delta` to the counter of its `(key, period)`, creating missing
    /// counters (they start at zero and expire as the store says).
    fn add<'a>(&'a self, deltas: Vec<(K, P, V)>) -> BoxFuture<'a, Result<()>>;
    /// The counter of `(key, period)`; `None` if there is none or it expired.
    fn get<'a>(&'a self, key: &'a K, period: &'a P) -> BoxFuture<'a, Result<Option<V>>>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ViewState<K, P, V> {
    published: BTreeMap<P, BTreeMap<K, V>>,
    staged: BTreeMap<P, BTreeMap<K, V>>,
    complete: BTreeSet<P>,
}

/// An in-memory [`ServingView`]. Clones share the same view.
///
/// ```
/// use batchstream::lambda::{BatchLookup, MemoryServingView, ServingView};
/// # futures::executor::block_on(async {
/// let view = MemoryServingView::new();
/// view.stage(&"d1", vec![("a", 3)]).await?;
/// assert_eq!(view.lookup(&"a", &"d1").await?, BatchLookup::Incomplete);
/// view.publish(&"d1").await?;
/// assert_eq!(view.lookup(&"a", &"d1").await?, BatchLookup::Complete(Some(3)));
/// assert_eq!(view.lookup(&"b", &"d1").await?, BatchLookup::Complete(None));
/// # Ok::<(), batchstream::Error>(())
/// # }).unwrap();
/// ```
pub struct MemoryServingView<K, P, V> {
    state: Arc<Mutex<ViewState<K, P, V>>>,
}

impl<K, P, V> Clone for MemoryServingView<K, P, V> {
    fn clone(&self) -> Self {
        MemoryServingView {
            state: Arc::clone(&self.state),
        }
    }
}

impl<K, P, V> Debug for MemoryServingView<K, P, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("MemoryServingView")
            .field("published_periods", &st.published.len())
            .field("staged_periods", &st.staged.len())
            .field("complete_periods", &st.complete.len())
            .finish()
    }
}

impl<K: Ord, P: Ord, V> Default for MemoryServingView<K, P, V> {
    fn default() -> Self {
        MemoryServingView {
            state: Arc::new(Mutex::new(ViewState {
                published: BTreeMap::new(),
                staged: BTreeMap::new(),
                complete: BTreeSet::new(),
            })),
        }
    }
}

impl<K: Ord, P: Ord, V> MemoryServingView<K, P, V> {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K: Ord + Clone, P: Ord + Clone, V: Clone> MemoryServingView<K, P, V> {
    /// A copy of the published rows of `period` (empty before its first publish).
    pub fn rows(&self, period: &P) -> BTreeMap<K, V> {
        lock(&self.state)
            .published
            .get(period)
            .cloned()
            .unwrap_or_default()
    }

    /// A copy of the staged (not yet published) rows of `period`.
    pub fn staged_rows(&self, period: &P) -> BTreeMap<K, V> {
        lock(&self.state)
            .staged
            .get(period)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `period` is complete (published).
    pub fn is_complete(&self, period: &P) -> bool {
        lock(&self.state).complete.contains(period)
    }
}

impl<K, P, V> ServingView<K, P, V> for MemoryServingView<K, P, V>
where
    K: Ord + Clone + Send + Sync,
    P: Ord + Clone + Send + Sync,
    V: Clone + Send + Sync,
{
    fn stage<'a>(&'a self, period: &'a P, rows: Vec<(K, V)>) -> BoxFuture<'a, Result<()>> {
        lock(&self.state)
            .staged
            .entry(period.clone())
            .or_default()
            .extend(rows);
        Box::pin(std::future::ready(Ok(())))
    }

    fn clear_staged<'a>(&'a self, period: &'a P) -> BoxFuture<'a, Result<()>> {
        lock(&self.state).staged.remove(period);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish<'a>(&'a self, period: &'a P) -> BoxFuture<'a, Result<()>> {
        let mut st = lock(&self.state);
        if let Some(rows) = st.staged.remove(period) {
            st.published.insert(period.clone(), rows);
        }
        st.complete.insert(period.clone());
        Box::pin(std::future::ready(Ok(())))
    }

    fn lookup<'a>(&'a self, key: &'a K, period: &'a P) -> BoxFuture<'a, Result<BatchLookup<V>>> {
        let st = lock(&self.state);
        let answer = if st.complete.contains(period) {
            let row = st.published.get(period).and_then(|rows| rows.get(key));
            BatchLookup::Complete(row.cloned())
        } else {
            BatchLookup::Incomplete
        };
        Box::pin(std::future::ready(Ok(answer)))
    }
}

/// An in-memory [`SpeedStore`] whose counters expire a fixed time after they were
/// created (like Redis `INCRBY` followed by `EXPIRE ... NX`). Expired counters read as
/// absent and are dropped on the next write, so memory holds only live counters.
///
/// Time is tokio's clock, so tests can pause and advance it.
///
/// ```
/// use std::time::Duration;
/// use batchstream::lambda::{MemorySpeedStore, SpeedStore};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> batchstream::Result<()> {
/// let store = MemorySpeedStore::new(Duration::from_secs(60));
/// store.add(vec![("a", "d1", 2u64), ("a", "d1", 3)]).await?;
/// assert_eq!(store.get(&"a", &"d1").await?, Some(5));
/// tokio::time::advance(Duration::from_secs(61)).await;
/// assert_eq!(store.get(&"a", &"d1").await?, None);
/// # Ok(()) }
/// ```
pub struct MemorySpeedStore<K, P, V> {
    ttl: Duration,
    counters: Arc<Mutex<Counters<K, P, V>>>,
}

/// Each counter's value and expiry instant.
type Counters<K, P, V> = BTreeMap<(K, P), (V, Instant)>;

impl<K, P, V> Clone for MemorySpeedStore<K, P, V> {
    fn clone(&self) -> Self {
        MemorySpeedStore {
            ttl: self.ttl,
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<K, P, V> Debug for MemorySpeedStore<K, P, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySpeedStore")
            .field("ttl", &self.ttl)
            .field("counters", &lock(&self.counters).len())
            .finish()
    }
}

impl<K: Ord, P: Ord, V> MemorySpeedStore<K, P, V> {
    /// A store whose counters expire `ttl` after their first increment.
    pub fn new(ttl: Duration) -> Self {
        MemorySpeedStore {
            ttl,
            counters: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// How many counters are held, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        lock(&self.counters).len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K, P, V> SpeedStore<K, P, V> for MemorySpeedStore<K, P, V>
where
    K: Ord + Clone + Send + Sync,
    P: Ord + Clone + Send + Sync,
    V: Number + Send + Sync,
{
    fn add<'a>(&'a self, deltas: Vec<(K, P, V)>) -> BoxFuture<'a, Result<()>> {
        let now = Instant::now();
        let mut counters = lock(&self.counters);
        counters.retain(|_, (_, expires)| *expires > now);
        for (key, period, delta) in deltas {
            let (value, _) = counters
                .entry((key, period))
                .or_insert_with(|| (V::ZERO, now + self.ttl));
            *value = value.plus(delta);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn get<'a>(&'a self, key: &'a K, period: &'a P) -> BoxFuture<'a, Result<Option<V>>> {
        let now = Instant::now();
        let value = lock(&self.counters)
            .get(&(key.clone(), period.clone()))
            .filter(|(_, expires)| *expires > now)
            .map(|(v, _)| *v);
        Box::pin(std::future::ready(Ok(value)))
    }
}

/// The three layers together: a batch view, a speed store, and the query that picks
/// between them. Cheap to clone (the stores are shared).
///
/// See the [module docs](self) for an example.
pub struct Lambda<K, P, V> {
    view: Arc<dyn ServingView<K, P, V>>,
    speed: Arc<dyn SpeedStore<K, P, V>>,
}

impl<K, P, V> Clone for Lambda<K, P, V> {
    fn clone(&self) -> Self {
        Lambda {
            view: Arc::clone(&self.view),
            speed: Arc::clone(&self.speed),
        }
    }
}

impl<K, P, V> Debug for Lambda<K, P, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lambda").finish_non_exhaustive()
    }
}

impl<K, P, V> Lambda<K, P, V>
where
    K: Send + 'static,
    P: Clone + Display + Send + Sync + 'static,
    V: Send + 'static,
{
    /// Serving from `view` (filled by the batch layer) and `speed` (filled by the speed
    /// layer).
    pub fn new(
        view: impl ServingView<K, P, V> + 'static,
        speed: impl SpeedStore<K, P, V> + 'static,
    ) -> Self {
        Lambda {
            view: Arc::new(view),
            speed: Arc::new(speed),
        }
    }

    /// The answer for `key` in `period`: the batch view's exact value once the period
    /// is complete, the speed layer's counter before.
    ///
    /// # Errors
    /// Whatever the view or the speed store return.
    pub async fn query(&self, key: &K, period: &P) -> Result<Answer<V>> {
        match self.view.lookup(key, period).await? {
            BatchLookup::Complete(value) => Ok(Answer {
                value,
                source: Layer::Batch,
            }),
            BatchLookup::Incomplete => Ok(Answer {
                value: self.speed.get(key, period).await?,
                source: Layer::Speed,
            }),
        }
    }

    /// The sink of the speed layer's stream pipeline: each `(key, period, delta)` it
    /// receives is added to the speed store.
    pub fn speed_sink(&self) -> SpeedSink<K, P, V> {
        SpeedSink {
            speed: Arc::clone(&self.speed),
        }
    }

    /// The sink of a batch-layer pipeline for `period`: `(key, value)` rows are staged
    /// in the view at each flush. Prefer [`run_batch`](Lambda::run_batch), which also
    /// publishes them.
    pub fn batch_sink(&self, period: P) -> BatchSink<K, P, V> {
        BatchSink {
            view: Arc::clone(&self.view),
            period,
            pending: Vec::new(),
            cleared: false,
        }
    }

    /// Runs the batch layer for `period`: builds the pipeline with `make` around a
    /// [`batch_sink`](Lambda::batch_sink), runs it with `executor` under the run key
    /// `period.to_string()`, and once the run completed
    /// [publishes](ServingView::publish) its rows, which marks the period complete.
    ///
    /// Give the pipeline a checkpoint store: then a second run for a period that
    /// already completed is skipped (the report's outcome is [`Outcome::Skipped`])
    /// and writes nothing. A skipped run still publishes, which changes nothing
    /// normally (nothing is staged) and repairs a crash between the run's checkpoint
    /// and its publish (the staged rows go out). A run that fails or is stopped does
    /// not publish: the period's queries keep their previous answer (the speed layer,
    /// or the previous batch result for a [forced](BatchExecutor::force) rerun), and
    /// the next run starts the period over.
    ///
    /// # Errors
    /// The executor's error (nothing is then published), or the view's.
    pub fn run_batch<S, T, F>(
        &self,
        executor: BatchExecutor,
        period: P,
        make: F,
    ) -> impl Future<Output = Result<RunReport>> + use<K, P, V, S, T, F>
    where
        S: Source,
        T: Transform<In = S::Item, Out = (K, V)>,
        F: FnOnce(BatchSink<K, P, V>) -> Pipeline<S, T, BatchSink<K, P, V>>,
    {
        // The future owns what it needs (no borrow of `self`), so it can be spawned.
        let pipeline = make(self.batch_sink(period.clone()));
        let run = executor.run_key(period.to_string()).run(pipeline);
        let view = Arc::clone(&self.view);
        async move {
            let report = run.await?;
            if matches!(report.outcome, Outcome::Completed | Outcome::Skipped { .. }) {
                view.publish(&period).await?;
            }
            Ok(report)
        }
    }
}

/// The speed layer's sink; see [`Lambda::speed_sink`]. At least once: a record
/// replayed after a crash is counted again, which the speed layer tolerates because
/// the batch layer corrects it.
pub struct SpeedSink<K, P, V> {
    speed: Arc<dyn SpeedStore<K, P, V>>,
}

impl<K, P, V> Debug for SpeedSink<K, P, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpeedSink").finish_non_exhaustive()
    }
}

impl<K, P, V> Sink for SpeedSink<K, P, V>
where
    K: Send + 'static,
    P: Send + 'static,
    V: Send + 'static,
{
    type Item = (K, P, V);

    fn write(&mut self, batch: Vec<(K, P, V)>) -> impl Future<Output = Result<()>> + Send {
        self.speed.add(batch)
    }
}

/// The batch layer's sink for one period; see [`Lambda::batch_sink`]. Idempotent:
/// rows are upserts into the period's staging area, which the sink empties when its run
/// starts writing (its first write or flush), so a failed earlier run's rows do not
/// mix in.
pub struct BatchSink<K, P, V> {
    view: Arc<dyn ServingView<K, P, V>>,
    period: P,
    pending: Vec<(K, V)>,
    cleared: bool,
}

impl<K, P: Debug, V> Debug for BatchSink<K, P, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSink")
            .field("period", &self.period)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<K, P, V> BatchSink<K, P, V> {
    /// Empties the staging area once per run, before its first rows are staged. Not
    /// done in `recover`: the executor calls that even for a run it then skips, whose
    /// staged rows (left by a crash before publishing) must survive to be published.
    async fn start(&mut self) -> Result<()> {
        if !self.cleared {
            self.view.clear_staged(&self.period).await?;
            self.cleared = true;
        }
        Ok(())
    }
}

impl<K, P, V> Sink for BatchSink<K, P, V>
where
    K: Send + 'static,
    P: Send + Sync + 'static,
    V: Send + 'static,
{
    type Item = (K, V);

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }

    async fn write(&mut self, batch: Vec<(K, V)>) -> Result<()> {
        self.start().await?;
        self.pending.extend(batch);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.start().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        self.view.stage(&self.period, rows).await
    }
}
