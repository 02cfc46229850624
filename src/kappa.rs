//! Kappa architecture: one stream pipeline, and reprocessing by replay.
//!
//! There is no separate batch layer. The log (a Kafka topic, a Redis stream, a
//! directory of NDJSON files) keeps enough history, and one stream pipeline computes
//! the results. To change the logic or fix a bug, run a *second* instance of the
//! pipeline, with the new logic, that replays the log from the start (or from a
//! position or a time) into a **new version** of the output, while the current
//! version keeps serving. Once the replay has caught up, switch the serving pointer
//! to the new version atomically and stop the old pipeline.
//!
//! [`KappaView`] is that versioned output, in memory:
//! - [`begin_replay`](KappaView::begin_replay) opens a new version and returns its
//!   sink ([`VersionSink`], an idempotent upsert sink);
//! - [`promote`](KappaView::promote) switches the pointer; readers see either the
//!   whole old version or the whole new one, never a mix;
//! - [`abandon`](KappaView::abandon) drops a replay that failed: the old version
//!   never stopped serving.
//!
//! Catch-up, the moment to promote, is either the end of a bounded replay
//! ([`KappaView::replay`] runs it and promotes on success) or, for an unbounded log,
//! the replay's source position reaching the live pipeline's:
//! wrap both sources with [`track`] and call
//! [`promote_when_caught_up`](KappaView::promote_when_caught_up).
//!
//! The replay pipeline needs its own pipeline id (or checkpoint store), so that it
//! starts from the beginning instead of resuming the live pipeline's checkpoint. To
//! replay from a position or a time, build its source there (for example by seeking it,
//! or with the broker's offset-for-time lookup).
//!
//! # When to use it
//! When the results can be computed exactly by a stream job and the log can be
//! replayed: one code path instead of Lambda's two. Replays cost a full pass over the
//! retained log and, while they run, the memory of two outputs.
//!
//! # Example
//! ```
//! use batchstream::adapters::IterSource;
//! use batchstream::kappa::KappaView;
//! use batchstream::transform::{self, TransformExt};
//! use batchstream::{Executor, Pipeline, StreamExecutor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let log = vec![("ann", 30i64), ("bob", -5), ("ann", 12)];
//! let view = KappaView::new();
//! let exec = Executor::from(StreamExecutor::new());
//!
//! // Version 1: totals including refunds.
//! view.replay(&exec, |sink| {
//!     let logic = transform::identity::<(&str, i64)>()
//!         .key_by(|(c, _)| c.to_string())
//!         .fold(0i64, |t, (_, a)| *t += a);
//!     Pipeline::new("totals-v1", IterSource::new(log.clone()), logic, sink)
//! }).await?;
//! assert_eq!(view.get(&"bob".to_string()), Some(-5));
//!
//! // Version 2, new logic: refunds ignored. Replayed from the start, then promoted.
//! view.replay(&exec, |sink| {
//!     let logic = transform::identity::<(&str, i64)>()
//!         .filter(|(_, a)| *a > 0)
//!         .key_by(|(c, _)| c.to_string())
//!         .fold(0i64, |t, (_, a)| *t += a);
//!     Pipeline::new("totals-v2", IterSource::new(log.clone()), logic, sink)
//! }).await?;
//! assert_eq!(view.current(), Some(2));
//! assert_eq!(view.get(&"bob".to_string()), None);
//! assert_eq!(view.get(&"ann".to_string()), Some(42));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::future::Future;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::executor::{Executor, Outcome, RunReport};
use crate::pipeline::Pipeline;
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::{Boundedness, Source, SourceBatch, SourceProgress};
use crate::transform::Transform;

struct Versions<K, V> {
    tables: BTreeMap<u64, BTreeMap<K, V>>,
    current: Option<u64>,
    next: u64,
}

/// A versioned keyed output: the current version serves reads while new versions
/// are filled by replays. Clones share the same view.
///
/// Versions are numbered from 1 in the order they are begun. Memory: the current
/// version plus the replays in progress; [`promote`](KappaView::promote) drops the
/// versions it supersedes.
///
/// ```
/// use batchstream::Sink;
/// use batchstream::kappa::KappaView;
/// # futures::executor::block_on(async {
/// let view = KappaView::new();
/// let mut v1 = view.begin_replay();
/// v1.write(vec![("a", 1)]).await?;
/// assert_eq!(view.get(&"a"), None); // nothing serves yet
/// view.promote(v1.version())?;
/// let mut v2 = view.begin_replay();
/// v2.write(vec![("a", 2)]).await?;
/// assert_eq!(view.get(&"a"), Some(1)); // the replay does not show
/// view.promote(v2.version())?;
/// assert_eq!(view.get(&"a"), Some(2));
/// # Ok::<(), batchstream::Error>(())
/// # }).unwrap();
/// ```
pub struct KappaView<K, V> {
    inner: Arc<RwLock<Versions<K, V>>>,
}

impl<K, V> Clone for KappaView<K, V> {
    fn clone(&self) -> Self {
        KappaView {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> Debug for KappaView<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = read(&self.inner);
        f.debug_struct("KappaView")
            .field("current", &v.current)
            .field("versions", &v.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl<K: Ord, V> Default for KappaView<K, V> {
    fn default() -> Self {
        KappaView {
            inner: Arc::new(RwLock::new(Versions {
                tables: BTreeMap::new(),
                current: None,
                next: 1,
            })),
        }
    }
}

impl<K: Ord, V> KappaView<K, V> {
    /// An empty view: no version serves yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version that serves reads, if one was promoted.
    pub fn current(&self) -> Option<u64> {
        read(&self.inner).current
    }

    /// Versions held: the current one and the replays in progress.
    pub fn versions(&self) -> Vec<u64> {
        read(&self.inner).tables.keys().copied().collect()
    }

    /// Opens a new, empty version and returns the sink that fills it. It serves no
    /// reads until [`promote`](KappaView::promote)d.
    pub fn begin_replay(&self) -> VersionSink<K, V> {
        let mut v = write(&self.inner);
        let version = v.next;
        v.next += 1;
        v.tables.insert(version, BTreeMap::new());
        VersionSink {
            view: self.clone(),
            version,
        }
    }

    /// Makes `version` the one that serves reads, atomically: a reader sees either the
    /// old version or the new one, whole. Older versions (the one that served until now
    /// and any abandoned or slower replay begun before `version`) are dropped; replays
    /// begun after it are kept.
    ///
    /// # Errors
    /// [`Error::Config`] if `version` does not exist (never begun, abandoned, or already
    /// superseded).
    pub fn promote(&self, version: u64) -> Result<()> {
        let mut v = write(&self.inner);
        if !v.tables.contains_key(&version) {
            return Err(Error::Config(format!(
                "cannot promote version {version} of the kappa view: it does not exist (held: {:?})",
                v.tables.keys().collect::<Vec<_>>()
            )));
        }
        v.current = Some(version);
        v.tables.retain(|&n, _| n >= version);
        Ok(())
    }

    /// Drops a replay's version (e.g. after the replay failed). The current version is
    /// not affected.
    ///
    /// # Errors
    /// [`Error::Config`] if `version` is the current one.
    pub fn abandon(&self, version: u64) -> Result<()> {
        let mut v = write(&self.inner);
        if v.current == Some(version) {
            return Err(Error::Config(format!(
                "cannot abandon version {version} of the kappa view: it is serving"
            )));
        }
        v.tables.remove(&version);
        Ok(())
    }
}

impl<K: Ord + Clone, V: Clone> KappaView<K, V> {
    /// The value of `key` in the current version (`None` if absent or if no version
    /// serves yet).
    pub fn get(&self, key: &K) -> Option<V> {
        let v = read(&self.inner);
        let current = v.current?;
        v.tables.get(&current)?.get(key).cloned()
    }

    /// A copy of the current version's table (empty if no version serves yet).
    pub fn snapshot(&self) -> BTreeMap<K, V> {
        let v = read(&self.inner);
        v.current
            .and_then(|c| v.tables.get(&c).cloned())
            .unwrap_or_default()
    }

    /// A copy of `version`'s table, served or not; `None` if it is not held.
    pub fn version_snapshot(&self, version: u64) -> Option<BTreeMap<K, V>> {
        read(&self.inner).tables.get(&version).cloned()
    }
}

impl<K, V> KappaView<K, V>
where
    K: Ord + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Runs a bounded replay: builds the pipeline with `make` around a new version's
    /// sink, runs it with `executor` to the end of its source, and promotes the version
    /// if the run completed. If the run fails or is stopped, the version is abandoned
    /// and the current one keeps serving.
    ///
    /// # Errors
    /// The replay's error (after abandoning its version).
    pub fn replay<S, T, F>(
        &self,
        executor: &Executor,
        make: F,
    ) -> impl Future<Output = Result<RunReport>> + use<K, V, S, T, F>
    where
        S: Source,
        T: Transform<In = S::Item, Out = (K, V)>,
        F: FnOnce(VersionSink<K, V>) -> Pipeline<S, T, VersionSink<K, V>>,
    {
        // The future owns what it needs (no borrow of `self` or `executor`), so it can
        // be spawned.
        let sink = self.begin_replay();
        let version = sink.version();
        let run = executor.run(make(sink));
        let view = self.clone();
        async move {
            match run.await {
                Ok(report) if report.outcome == Outcome::Completed => {
                    view.promote(version)?;
                    Ok(report)
                }
                Ok(report) => {
                    view.abandon(version)?;
                    Ok(report)
                }
                Err(e) => {
                    view.abandon(version)?;
                    Err(e)
                }
            }
        }
    }

    /// Waits until the replay filling `version` has caught up with the live pipeline,
    /// then promotes it. Caught up: the replay's last position is at or past the live
    /// pipeline's (a live pipeline that has read nothing yet counts as caught up with).
    /// The live position is read afresh at each replay step, so a moving target is
    /// followed.
    ///
    /// Call it while both pipelines run (their sources wrapped with [`track`]); the
    /// replay keeps running after the promotion, as the new live pipeline.
    ///
    /// # Errors
    /// If the replay's source is dropped (its run ended or failed) before catching up,
    /// the version is abandoned and an [`Error::Source`] names it; the current version
    /// keeps serving.
    pub async fn promote_when_caught_up<P: PartialOrd>(
        &self,
        version: u64,
        mut replay: PositionWatch<P>,
        live: PositionWatch<P>,
    ) -> Result<()> {
        loop {
            let caught_up = {
                let live = live.rx.borrow();
                let replay = replay.rx.borrow_and_update();
                match (&*replay, &*live) {
                    (_, None) => true,
                    (Some(r), Some(l)) => r >= l,
                    (None, Some(_)) => false,
                }
            };
            if caught_up {
                return self.promote(version);
            }
            if replay.rx.changed().await.is_err() {
                self.abandon(version)?;
                return Err(Error::source(format!(
                    "the replay filling version {version} of the kappa view ended before catching up with the live pipeline"
                )));
            }
        }
    }
}

/// The sink filling one version of a [`KappaView`]; see [`KappaView::begin_replay`].
/// Idempotent: writes are upserts by key.
///
/// Once its version is superseded (a later version was promoted) or abandoned, a
/// write fails with [`Error::Sink`]: an old pipeline still running after the switch
/// stops with an error instead of writing into a version nobody reads.
pub struct VersionSink<K, V> {
    view: KappaView<K, V>,
    version: u64,
}

impl<K, V> VersionSink<K, V> {
    /// The version this sink fills.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl<K, V> Debug for VersionSink<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VersionSink")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<K, V> Sink for VersionSink<K, V>
where
    K: Ord + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    type Item = (K, V);

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }

    fn write(&mut self, batch: Vec<(K, V)>) -> impl Future<Output = Result<()>> + Send {
        let mut v = write(&self.view.inner);
        let result = match v.tables.get_mut(&self.version) {
            Some(table) => {
                table.extend(batch);
                Ok(())
            }
            None => Err(Error::sink(
                "write",
                format!(
                    "version {} of the kappa view was abandoned or superseded",
                    self.version
                ),
            )),
        };
        std::future::ready(result)
    }
}

/// Wraps `source` so that the position up to which its pipeline has processed is
/// published: the replay's and the live pipeline's positions, for
/// [`KappaView::promote_when_caught_up`].
///
/// A batch's position is published when the pipeline asks for the *next* batch: the
/// executors ask only once they have transformed and written the previous one, so the
/// published position is never ahead of the output. A [`seek`](Source::seek) (resuming
/// from a checkpoint) publishes the sought position.
///
/// ```
/// use batchstream::Source;
/// use batchstream::adapters::IterSource;
/// use batchstream::kappa::track;
/// # futures::executor::block_on(async {
/// let (mut source, position) = track(IterSource::new(0..5));
/// source.next_batch(3).await?;
/// assert_eq!(position.latest(), None); // read, not yet processed
/// source.next_batch(3).await?;
/// assert_eq!(position.latest(), Some(3));
/// assert!(source.next_batch(3).await?.is_none());
/// assert_eq!(position.latest(), Some(5));
/// # Ok::<(), batchstream::Error>(())
/// # }).unwrap();
/// ```
pub fn track<S: Source>(source: S) -> (Tracked<S>, PositionWatch<S::Position>) {
    let (tx, rx) = watch::channel(None);
    (
        Tracked {
            inner: source,
            read: None,
            tx,
        },
        PositionWatch { rx },
    )
}

/// A source that publishes its position; see [`track`].
pub struct Tracked<S: Source> {
    inner: S,
    /// The position of the last batch handed out, published at the next read.
    read: Option<S::Position>,
    tx: watch::Sender<Option<S::Position>>,
}

impl<S: Source> Debug for Tracked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("position", &*self.tx.borrow())
            .finish_non_exhaustive()
    }
}

impl<S: Source> Source for Tracked<S> {
    type Item = S::Item;
    type Position = S::Position;

    fn boundedness(&self) -> Boundedness {
        self.inner.boundedness()
    }

    fn progress(&self) -> Option<SourceProgress> {
        self.inner.progress()
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<SourceBatch<S::Item, S::Position>>> {
        // Asked for more: the previous batch is processed.
        if let Some(done) = self.read.take() {
            self.tx.send_replace(Some(done));
        }
        let batch = self.inner.next_batch(max).await?;
        if let Some(b) = &batch {
            self.read = Some(b.position.clone());
        }
        Ok(batch)
    }

    async fn seek(&mut self, position: S::Position) -> Result<()> {
        self.inner.seek(position.clone()).await?;
        self.tx.send_replace(Some(position));
        Ok(())
    }

    fn ack(&mut self, position: &S::Position) -> impl Future<Output = Result<()>> + Send {
        self.inner.ack(position)
    }
}

/// The published position of a [`Tracked`] source. Clones watch the same source.
#[derive(Clone)]
pub struct PositionWatch<P> {
    rx: watch::Receiver<Option<P>>,
}

impl<P: Debug> Debug for PositionWatch<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PositionWatch")
            .field("position", &*self.rx.borrow())
            .finish()
    }
}

impl<P: Clone> PositionWatch<P> {
    /// The position after the last batch read (or the position sought to), `None`
    /// before either.
    pub fn latest(&self) -> Option<P> {
        self.rx.borrow().clone()
    }
}
