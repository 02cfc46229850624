//! Helpers for testing your transforms and pipelines, with no server.
//!
//! - [`run_transform`]: a transform over a `Vec`, in a plain `#[test]`.
//! - [`ScriptedSource`]: a source that plays a script of batches, failures and the end.
//! - [`FailingSink`], [`SlowSink`], [`TxCollectSink`]: sinks that fail on cue, go slowly,
//!   or commit in two phases.
//! - [`run_with`], [`assert_modes_agree`] and [`assert_modes_agree_upsert`]: run one
//!   pipeline under all three executors and check that they give the same results.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::adapters::{CollectSink, Collected, UpsertSink, UpsertTable};
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};
use crate::executor::{
    BatchExecutor, Executor, ExecutorKind, MicroBatchExecutor, RunReport, StreamExecutor, Trigger,
};
use crate::pipeline::Pipeline;
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::{Boundedness, Source, SourceBatch};
use crate::transform::{Transform, VecEmitter};

/// What a transform produced: records and dead letters.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformOutput<T> {
    /// Emitted records, in order (including those emitted by the final flush).
    pub records: Vec<T>,
    /// Rejected records.
    pub dead_letters: Vec<DeadLetter>,
}

/// Runs `transform` over `input` as one batch followed by a flush (end of input), as
/// the batch executor would. No runtime needed.
///
/// ```
/// use batchstream::testing::run_transform;
/// use batchstream::transform::{self, TransformExt};
///
/// #[derive(serde::Serialize)]
/// struct Raw(String);
///
/// let parse = transform::identity::<Raw>().try_map("parse", |r| r.0.parse::<u32>());
/// let out = run_transform(parse, vec![Raw("7".into()), Raw("x".into())]);
/// assert_eq!(out.records, vec![7]);
/// assert_eq!(out.dead_letters[0].error.stage, "parse");
/// ```
pub fn run_transform<T: Transform>(mut transform: T, input: Vec<T::In>) -> TransformOutput<T::Out> {
    let mut out = VecEmitter::new();
    transform.process_batch(input, &mut out);
    transform.flush(&mut out);
    TransformOutput {
        records: out.records,
        dead_letters: out.dead_letters,
    }
}

/// One step of a [`ScriptedSource`].
#[derive(Debug, Clone)]
pub enum Step<T> {
    /// Deliver these records (split into batches of at most the requested size).
    Records(Vec<T>),
    /// Deliver these dead letters as rejected input.
    Rejected(Vec<DeadLetter>),
    /// Fail the read with a source error carrying this message.
    Fail {
        /// The error text.
        message: String,
        /// Whether the error says it is retryable.
        retryable: bool,
    },
    /// Wait this long (tokio time) before the next step.
    Wait(Duration),
}

/// A source that plays a script. Its position counts delivered records, so
/// resuming a fresh copy of the script (e.g. without its `Fail` step) from a
/// checkpoint continues exactly after the last checkpointed record.
#[derive(Debug, Clone)]
pub struct ScriptedSource<T> {
    steps: VecDeque<Step<T>>,
    delivered: u64,
    boundedness: Boundedness,
    acked: Arc<Mutex<Vec<u64>>>,
    /// When the current `Wait` step ends, once it has started.
    wait_until: Option<tokio::time::Instant>,
}

impl<T> ScriptedSource<T> {
    /// A bounded source playing `steps`, then ending.
    pub fn new(steps: impl IntoIterator<Item = Step<T>>) -> Self {
        ScriptedSource {
            steps: steps.into_iter().collect(),
            delivered: 0,
            boundedness: Boundedness::Bounded,
            acked: Arc::default(),
            wait_until: None,
        }
    }

    /// A bounded source delivering `records`.
    pub fn from_records(records: Vec<T>) -> Self {
        Self::new([Step::Records(records)])
    }

    /// Declares the source unbounded (it still ends when the script does).
    pub fn unbounded(mut self) -> Self {
        self.boundedness = Boundedness::Unbounded;
        self
    }

    /// Positions acked so far (shared with clones).
    pub fn acked(&self) -> Vec<u64> {
        lock(&self.acked).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Send + 'static> Source for ScriptedSource<T> {
    type Item = T;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        self.boundedness
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<T, u64>>> {
        loop {
            let Some(step) = self.steps.front_mut() else {
                return Ok(None);
            };
            match step {
                Step::Records(records) if records.is_empty() => {
                    self.steps.pop_front();
                }
                Step::Records(records) => {
                    let n = max.min(records.len());
                    let batch: Vec<T> = records.drain(..n).collect();
                    self.delivered += n as u64;
                    return Ok(Some(SourceBatch::new(batch, self.delivered)));
                }
                Step::Rejected(_) => {
                    let Some(Step::Rejected(letters)) = self.steps.pop_front() else {
                        unreachable!("front was Rejected")
                    };
                    return Ok(Some(
                        SourceBatch::new(Vec::new(), self.delivered).with_rejected(letters),
                    ));
                }
                Step::Fail { message, retryable } => {
                    let err = if *retryable {
                        Error::source_retryable(message.clone())
                    } else {
                        Error::source(message.clone())
                    };
                    self.steps.pop_front();
                    return Err(err);
                }
                Step::Wait(d) => {
                    // Cancel safe: the deadline is kept in `self`, so a dropped read
                    // resumes the same wait instead of starting it over.
                    let until = *self
                        .wait_until
                        .get_or_insert_with(|| tokio::time::Instant::now() + *d);
                    tokio::time::sleep_until(until).await;
                    self.wait_until = None;
                    self.steps.pop_front();
                }
            }
        }
    }

    async fn seek(&mut self, position: u64) -> Result<()> {
        let mut skip = position.saturating_sub(self.delivered);
        while skip > 0 {
            match self.steps.front_mut() {
                None => {
                    return Err(Error::source(format!(
                        "script has only {} records, cannot seek to {position}",
                        self.delivered
                    )));
                }
                Some(Step::Records(records)) => {
                    let n = (skip as usize).min(records.len());
                    records.drain(..n);
                    skip -= n as u64;
                    self.delivered += n as u64;
                    if records.is_empty() {
                        self.steps.pop_front();
                    }
                }
                Some(_) => {
                    self.steps.pop_front();
                }
            }
        }
        Ok(())
    }

    async fn ack(&mut self, position: &u64) -> Result<()> {
        lock(&self.acked).push(*position);
        Ok(())
    }
}

/// An at-least-once collecting sink that fails its `write` calls with the given numbers
/// (1-based), delivering nothing from a failed call.
#[derive(Debug)]
pub struct FailingSink<T> {
    inner: CollectSink<T>,
    fail_on: Vec<u64>,
    retryable: bool,
    calls: u64,
}

impl<T> FailingSink<T> {
    /// A sink failing write calls number `fail_on` (1-based), and its output handle.
    pub fn new(fail_on: impl IntoIterator<Item = u64>) -> (Self, Collected<T>) {
        let (inner, out) = CollectSink::new();
        (
            FailingSink {
                inner,
                fail_on: fail_on.into_iter().collect(),
                retryable: false,
                calls: 0,
            },
            out,
        )
    }

    /// Marks the injected errors retryable.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
}

impl<T: Send + 'static> Sink for FailingSink<T> {
    type Item = T;
    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        self.calls += 1;
        if self.fail_on.contains(&self.calls) {
            let msg = format!("injected failure on write call {}", self.calls);
            return Err(if self.retryable {
                Error::sink_retryable("write", msg)
            } else {
                Error::sink("write", msg)
            });
        }
        self.inner.write(batch).await
    }
}

/// Wraps a sink and sleeps (tokio time) before every write: a slow sink.
#[derive(Debug)]
pub struct SlowSink<S> {
    inner: S,
    delay: Duration,
}

impl<S> SlowSink<S> {
    /// `inner`, delayed by `delay` per write.
    pub fn new(inner: S, delay: Duration) -> Self {
        SlowSink { inner, delay }
    }
}

impl<S: Sink> Sink for SlowSink<S> {
    type Item = S::Item;
    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, batch: Vec<S::Item>) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        self.inner.write(batch).await
    }
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.inner.flush()
    }
    fn prepare(&mut self, epoch: u64) -> impl Future<Output = Result<()>> + Send {
        self.inner.prepare(epoch)
    }
    fn commit(&mut self, epoch: u64) -> impl Future<Output = Result<()>> + Send {
        self.inner.commit(epoch)
    }
    fn recover(&mut self, checkpointed: Option<u64>) -> impl Future<Output = Result<()>> + Send {
        self.inner.recover(checkpointed)
    }
}

/// Shared state of [`TxCollectSink`]: what survives a "crash" (prepared and committed
/// epochs), as a durable transactional store would keep it.
#[derive(Debug)]
struct TxState<T> {
    prepared: BTreeMap<u64, Vec<T>>,
    committed: Vec<T>,
    commits: Vec<u64>,
}

/// A transactional, two-phase in-memory sink: writes are invisible until the epoch that
/// holds them is committed. Dropping the sink (a crash) loses only unprepared writes,
/// exactly like a database transaction that was never prepared.
///
/// The handle ([`TxHandle`]) outlives the sink, so a test can "restart" with
/// [`TxCollectSink::resume`].
#[derive(Debug)]
pub struct TxCollectSink<T> {
    pending: Vec<T>,
    state: Arc<Mutex<TxState<T>>>,
}

/// The durable side of a [`TxCollectSink`].
#[derive(Debug)]
pub struct TxHandle<T> {
    state: Arc<Mutex<TxState<T>>>,
}

impl<T> Clone for TxHandle<T> {
    fn clone(&self) -> Self {
        TxHandle {
            state: Arc::clone(&self.state),
        }
    }
}

impl<T: Clone> TxHandle<T> {
    /// Committed records, in commit order.
    pub fn committed(&self) -> Vec<T> {
        lock(&self.state).committed.clone()
    }
}

impl<T> TxHandle<T> {
    /// Epochs committed, in order (a re-commit after recovery is not repeated).
    pub fn commits(&self) -> Vec<u64> {
        lock(&self.state).commits.clone()
    }

    /// Epochs prepared but not yet committed.
    pub fn prepared_epochs(&self) -> Vec<u64> {
        lock(&self.state).prepared.keys().copied().collect()
    }
}

impl<T> TxCollectSink<T> {
    /// A new sink and its durable handle.
    pub fn new() -> (Self, TxHandle<T>) {
        let state = Arc::new(Mutex::new(TxState {
            prepared: BTreeMap::new(),
            committed: Vec::new(),
            commits: Vec::new(),
        }));
        (
            TxCollectSink {
                pending: Vec::new(),
                state: Arc::clone(&state),
            },
            TxHandle { state },
        )
    }

    /// A sink over the durable state of `handle`, as after a process restart.
    pub fn resume(handle: &TxHandle<T>) -> Self {
        TxCollectSink {
            pending: Vec::new(),
            state: Arc::clone(&handle.state),
        }
    }
}

impl<T: Send + 'static> Sink for TxCollectSink<T> {
    type Item = T;
    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Transactional
    }
    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        self.pending.extend(batch);
        Ok(())
    }
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        lock(&self.state).prepared.insert(epoch, pending);
        Ok(())
    }
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(records) = st.prepared.remove(&epoch) {
            st.committed.extend(records);
            st.commits.push(epoch);
        }
        Ok(())
    }
    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        let mut st = lock(&self.state);
        let epochs: Vec<u64> = st.prepared.keys().copied().collect();
        for e in epochs {
            let records = st.prepared.remove(&e).unwrap_or_default();
            if checkpointed.is_some_and(|c| e <= c) {
                st.committed.extend(records);
                st.commits.push(e);
            }
        }
        Ok(())
    }
}

/// Runs `pipeline` under the executor `kind` with that executor's defaults
/// (micro-batch: [`Trigger::AvailableNow`]).
///
/// # Errors
/// Whatever the executor returns.
pub async fn run_with<S, T, K>(kind: ExecutorKind, pipeline: Pipeline<S, T, K>) -> Result<RunReport>
where
    S: Source,
    T: Transform<In = S::Item, Out = K::Item>,
    K: Sink,
{
    Executor::from(kind).run(pipeline).await
}

/// The three executors used by [`assert_modes_agree`], configurable so that tests can
/// use odd batch sizes that stress batch boundaries.
#[derive(Debug, Clone)]
pub struct Modes {
    /// The batch executor.
    pub batch: BatchExecutor,
    /// The stream executor.
    pub stream: StreamExecutor,
    /// The micro-batch executor.
    pub micro_batch: MicroBatchExecutor,
}

impl Default for Modes {
    fn default() -> Self {
        Modes {
            batch: BatchExecutor::new(),
            stream: StreamExecutor::new(),
            micro_batch: MicroBatchExecutor::new(Trigger::AvailableNow),
        }
    }
}

impl Modes {
    /// Executors with small, unequal batch sizes (7, 3 and micro-batches of 5 read 2 at
    /// a time), so records cross many batch boundaries.
    pub fn small_batches() -> Self {
        Modes {
            batch: BatchExecutor::new().chunk_size(7),
            stream: StreamExecutor::new()
                .max_batch(3)
                .checkpoint_every_records(4),
            micro_batch: MicroBatchExecutor::new(Trigger::AvailableNow)
                .max_records_per_batch(5)
                .read_chunk(2),
        }
    }

    /// The executor of `kind`, as configured here.
    pub fn executor(&self, kind: ExecutorKind) -> Executor {
        match kind {
            ExecutorKind::Batch => self.batch.clone().into(),
            ExecutorKind::Stream => self.stream.clone().into(),
            ExecutorKind::MicroBatch => self.micro_batch.clone().into(),
        }
    }

    /// Runs `pipeline` under `kind`.
    ///
    /// # Errors
    /// Whatever the executor returns.
    pub async fn run<S, T, K>(
        &self,
        kind: ExecutorKind,
        pipeline: Pipeline<S, T, K>,
    ) -> Result<RunReport>
    where
        S: Source,
        T: Transform<In = S::Item, Out = K::Item>,
        K: Sink,
    {
        self.executor(kind).run(pipeline).await
    }

    /// Builds a pipeline with `make` for each executor, runs it into a [`CollectSink`],
    /// and panics unless all three outputs are the same multiset. Returns the output
    /// (sorted).
    ///
    /// # Panics
    /// If a run fails or the outputs differ; the message names the executors and shows
    /// both outputs.
    pub async fn assert_agree<S, T, O, F>(&self, make: F) -> Vec<O>
    where
        S: Source,
        T: Transform<In = S::Item, Out = O>,
        O: Ord + Debug + Clone + Send + 'static,
        F: FnMut(CollectSink<O>) -> Pipeline<S, T, CollectSink<O>>,
    {
        self.agree(make, CollectSink::new, |out: &Collected<O>| {
            let mut items = out.items();
            items.sort();
            items
        })
        .await
    }

    /// Like [`assert_agree`](Modes::assert_agree) for keyed (upsert) results: compares
    /// the final table (last value per key) that an [`UpsertSink`] holds.
    ///
    /// # Panics
    /// If a run fails or the tables differ.
    pub async fn assert_agree_upsert<S, T, K, V, F>(&self, make: F) -> BTreeMap<K, V>
    where
        S: Source,
        T: Transform<In = S::Item, Out = (K, V)>,
        K: Ord + Debug + Clone + Send + 'static,
        V: PartialEq + Debug + Clone + Send + 'static,
        F: FnMut(UpsertSink<K, V>) -> Pipeline<S, T, UpsertSink<K, V>>,
    {
        self.agree(make, UpsertSink::new, UpsertTable::snapshot)
            .await
    }

    /// Runs the pipeline `make` builds under each executor, into a fresh sink from
    /// `new_sink`, reads each result with `read`, and compares them.
    async fn agree<S, T, K, H, R, F, N, Rd>(&self, mut make: F, mut new_sink: N, read: Rd) -> R
    where
        S: Source,
        T: Transform<In = S::Item, Out = K::Item>,
        K: Sink,
        R: PartialEq + Debug,
        F: FnMut(K) -> Pipeline<S, T, K>,
        N: FnMut() -> (K, H),
        Rd: Fn(&H) -> R,
    {
        let mut results: Vec<(ExecutorKind, R)> = Vec::new();
        for kind in [
            ExecutorKind::Batch,
            ExecutorKind::Stream,
            ExecutorKind::MicroBatch,
        ] {
            let (sink, handle) = new_sink();
            if let Err(e) = self.run(kind, make(sink)).await {
                panic!("the {kind} executor failed: {e}");
            }
            results.push((kind, read(&handle)));
        }
        compare(results)
    }
}

fn compare<R: PartialEq + Debug>(mut results: Vec<(ExecutorKind, R)>) -> R {
    let (first_kind, first) = results.remove(0);
    for (kind, r) in &results {
        assert!(
            *r == first,
            "the {kind} executor disagrees with the {first_kind} executor\n{first_kind}: {first:?}\n{kind}: {r:?}"
        );
    }
    first
}

/// Runs the pipeline that `make` builds under all three executors (with
/// [`Modes::default`]) and panics unless the outputs are the same multiset.
///
/// ```
/// use batchstream::Pipeline;
/// use batchstream::adapters::IterSource;
/// use batchstream::testing::assert_modes_agree;
/// use batchstream::transform::{self, TransformExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let out = assert_modes_agree(|sink| {
///     Pipeline::new("evens", IterSource::new(0..100),
///                   transform::identity::<u32>().filter(|x| x % 2 == 0), sink)
/// }).await;
/// assert_eq!(out.len(), 50);
/// # }
/// ```
///
/// # Panics
/// If a run fails or the outputs differ.
pub async fn assert_modes_agree<S, T, O, F>(make: F) -> Vec<O>
where
    S: Source,
    T: Transform<In = S::Item, Out = O>,
    O: Ord + Debug + Clone + Send + 'static,
    F: FnMut(CollectSink<O>) -> Pipeline<S, T, CollectSink<O>>,
{
    Modes::default().assert_agree(make).await
}

/// [`assert_modes_agree`] for keyed results written to an [`UpsertSink`].
///
/// # Panics
/// If a run fails or the final tables differ.
pub async fn assert_modes_agree_upsert<S, T, K, V, F>(make: F) -> BTreeMap<K, V>
where
    S: Source,
    T: Transform<In = S::Item, Out = (K, V)>,
    K: Ord + Debug + Clone + Send + 'static,
    V: PartialEq + Debug + Clone + Send + 'static,
    F: FnMut(UpsertSink<K, V>) -> Pipeline<S, T, UpsertSink<K, V>>,
{
    Modes::default().assert_agree_upsert(make).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tx_sink_commits_only_checkpointed_epochs_on_recovery() {
        let (mut sink, handle) = TxCollectSink::new();
        sink.write(vec![1, 2]).await.unwrap();
        sink.prepare(1).await.unwrap();
        sink.write(vec![3]).await.unwrap();
        sink.prepare(2).await.unwrap();
        sink.write(vec![4]).await.unwrap();
        drop(sink); // crash: epoch 1 checkpointed, epoch 2 prepared but not, 4 unprepared
        assert!(handle.committed().is_empty());
        let mut sink = TxCollectSink::resume(&handle);
        sink.recover(Some(1)).await.unwrap();
        assert_eq!(handle.committed(), vec![1, 2]);
        assert!(handle.prepared_epochs().is_empty());
        sink.commit(1).await.unwrap(); // a re-commit writes nothing twice
        assert_eq!(handle.committed(), vec![1, 2]);
        assert_eq!(handle.commits(), vec![1]);
    }

    #[tokio::test]
    async fn scripted_source_seeks_across_steps_and_fails_on_cue() {
        let script = vec![
            Step::Records(vec![1, 2, 3]),
            Step::Fail {
                message: "boom".into(),
                retryable: true,
            },
            Step::Records(vec![4, 5]),
        ];
        let mut s = ScriptedSource::new(script.clone());
        assert_eq!(
            s.next_batch(10).await.unwrap().unwrap().records,
            vec![1, 2, 3]
        );
        let err = s.next_batch(10).await.unwrap_err();
        assert!(err.is_retryable());
        let mut s = ScriptedSource::new(script);
        s.seek(4).await.unwrap();
        let b = s.next_batch(10).await.unwrap().unwrap();
        assert_eq!((b.records, b.position), (vec![5], 5));
    }
}
