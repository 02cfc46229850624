//! Delivery guarantees, sink-write retries, graceful shutdown and abort, backpressure,
//! and redelivered input.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use batchstream::adapters::{ChannelSource, CollectSink, IterSource, UpsertSink};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::retry::RetryPolicy;
use batchstream::testing::{FailingSink, ScriptedSource, Step, TxCollectSink};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    Boundedness, DeliveryGuarantee, Error, Executor, ExecutorKind, MicroBatchExecutor, Outcome,
    Pipeline, Result, Shutdown, Sink, Source, SourceBatch, StreamExecutor, Trigger,
};
use tokio::sync::Notify;

const KINDS: [ExecutorKind; 3] = [
    ExecutorKind::Batch,
    ExecutorKind::Stream,
    ExecutorKind::MicroBatch,
];

// ------------------------------------------------------------ guarantees

#[tokio::test]
async fn exactly_once_is_refused_for_an_at_least_once_sink_by_every_executor() {
    for kind in KINDS {
        let (sink, out) = CollectSink::new();
        let p = Pipeline::new(
            "eo",
            IterSource::new(0..10),
            transform::identity::<i32>(),
            sink,
        )
        .with_checkpoint_store(MemoryCheckpointStore::new())
        .require_exactly_once();
        let err = Executor::from(kind).run(p).await.unwrap_err();
        let Error::Config(msg) = &err else {
            panic!("{kind}: expected a configuration error, got {err}")
        };
        assert!(
            msg.contains("at-least-once") && msg.contains("`eo`"),
            "{msg}"
        );
        assert!(out.is_empty(), "{kind}: nothing may be written");
    }
}

#[tokio::test]
async fn exactly_once_with_a_transactional_sink_needs_a_checkpoint_store() {
    for kind in KINDS {
        let (sink, tx) = TxCollectSink::new();
        let p = Pipeline::new(
            "eo",
            IterSource::new(0..10),
            transform::identity::<i32>(),
            sink,
        )
        .require_exactly_once();
        let err = Executor::from(kind).run(p).await.unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("checkpoint store")),
            "{kind}: {err}"
        );
        assert!(tx.committed().is_empty());

        // With a store it runs, and the report says what it delivered.
        let (sink, tx) = TxCollectSink::new();
        let p = Pipeline::new(
            "eo",
            IterSource::new(0..10),
            transform::identity::<i32>(),
            sink,
        )
        .with_checkpoint_store(MemoryCheckpointStore::new())
        .require_exactly_once();
        let report = Executor::from(kind).run(p).await.unwrap();
        assert_eq!(report.guarantee, DeliveryGuarantee::Transactional, "{kind}");
        assert_eq!(tx.committed(), (0..10).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn the_report_says_which_guarantee_the_run_had() {
    let cases: [(DeliveryGuarantee, bool); 3] = [
        (DeliveryGuarantee::AtLeastOnce, true),
        (DeliveryGuarantee::Idempotent, false),
        // A transactional sink without a store cannot commit against anything.
        (DeliveryGuarantee::AtLeastOnce, false),
    ];
    for (i, (expected, with_store)) in cases.into_iter().enumerate() {
        let report = match i {
            0 => {
                let (sink, _) = CollectSink::new();
                let p = Pipeline::new("g", IterSource::new(0..3), transform::identity(), sink);
                let p = if with_store {
                    p.with_checkpoint_store(MemoryCheckpointStore::new())
                } else {
                    p
                };
                StreamExecutor::new().run(p).await.unwrap()
            }
            1 => {
                let (sink, _) = UpsertSink::new();
                let p = Pipeline::new(
                    "g",
                    IterSource::new(0..3),
                    transform::identity::<i32>().map(|x| (x, x)),
                    sink,
                );
                StreamExecutor::new().run(p).await.unwrap()
            }
            _ => {
                let (sink, _) = TxCollectSink::new();
                let p = Pipeline::new("g", IterSource::new(0..3), transform::identity(), sink);
                StreamExecutor::new().run(p).await.unwrap()
            }
        };
        assert_eq!(report.guarantee, expected, "case {i}");
    }
}

// ------------------------------------------------------------ sink retries

fn no_wait() -> RetryPolicy {
    RetryPolicy::new()
        .initial_backoff(Duration::ZERO)
        .max_backoff(Duration::ZERO)
        .jitter(false)
}

#[tokio::test]
async fn transient_sink_write_failures_are_retried_and_counted() {
    for kind in KINDS {
        let (flaky, out) = FailingSink::new([1, 2]);
        let p = Pipeline::new(
            "retry",
            IterSource::new(0..100),
            transform::identity::<i32>(),
            flaky.retryable(),
        )
        .with_sink_retry(no_wait().max_attempts(3));
        let report = Executor::from(kind).run(p).await.unwrap();
        let mut items = out.items();
        items.sort_unstable();
        assert_eq!(
            items,
            (0..100).collect::<Vec<_>>(),
            "{kind}: every record once"
        );
        assert_eq!(report.records_written, 100);
        assert_eq!(
            report.metrics.retries, 2,
            "{kind}: two failed writes retried"
        );
    }
}

#[tokio::test]
async fn permanent_sink_failures_are_not_retried() {
    let (broken, out) = FailingSink::new([1]);
    let p = Pipeline::new(
        "perm",
        IterSource::new(0..10),
        transform::identity::<i32>(),
        broken,
    )
    .with_sink_retry(no_wait().max_attempts(5));
    let metrics = p.metrics();
    let err = StreamExecutor::new().run(p).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                retryable: false,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(metrics.snapshot().retries, 0);
    assert!(out.is_empty());
}

#[tokio::test]
async fn a_sink_that_keeps_failing_fails_the_run_after_its_attempts() {
    let (flaky, out) = FailingSink::new(1..=10);
    let p = Pipeline::new(
        "gives-up",
        IterSource::new(0..10),
        transform::identity::<i32>(),
        flaky.retryable(),
    )
    .with_sink_retry(no_wait().max_attempts(4));
    let metrics = p.metrics();
    let err = StreamExecutor::new().run(p).await.unwrap_err();
    assert!(
        err.is_retryable(),
        "the last transient error is returned: {err}"
    );
    assert_eq!(metrics.snapshot().retries, 3, "4 attempts = 3 retries");
    assert!(out.is_empty());
}

// ------------------------------------------------------------ shutdown

/// A transactional sink whose flush can be made to hang (a stuck downstream system).
struct StuckFlush<S> {
    inner: S,
    hang: Arc<AtomicBool>,
    flushing: Arc<Notify>,
}

impl<S: Sink> Sink for StuckFlush<S> {
    type Item = S::Item;
    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, batch: Vec<S::Item>) -> Result<()> {
        self.inner.write(batch).await
    }
    async fn flush(&mut self) -> Result<()> {
        if self.hang.load(Ordering::SeqCst) {
            self.flushing.notify_one();
            std::future::pending::<()>().await;
        }
        self.inner.flush().await
    }
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        self.inner.prepare(epoch).await
    }
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        self.inner.commit(epoch).await
    }
    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.inner.recover(checkpointed).await
    }
}

/// 50 records, then a quiet source that never ends.
fn quiet_after(n: u64) -> ScriptedSource<u64> {
    ScriptedSource::new([
        Step::Records((0..n).collect()),
        Step::Wait(Duration::from_secs(365 * 24 * 3600)),
    ])
    .unbounded()
}

#[tokio::test(start_paused = true)]
async fn the_first_signal_drains_checkpoints_and_acks_then_stops() {
    let source = quiet_after(50);
    let acks = source.clone();
    let store = MemoryCheckpointStore::new();
    let (sink, tx) = TxCollectSink::new();
    let p = Pipeline::new("graceful", source, transform::identity::<u64>(), sink)
        .with_checkpoint_store(store.clone());
    let metrics = p.metrics();
    let (handle, shutdown) = Shutdown::new();
    let run = tokio::spawn(
        StreamExecutor::new()
            .max_batch(8)
            .checkpoint_every_records(1_000_000)
            .checkpoint_interval(Duration::from_secs(3600))
            .run_with_shutdown(p, shutdown),
    );
    while metrics.snapshot().records_out < 50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        tx.committed().is_empty(),
        "nothing committed before a checkpoint"
    );
    assert!(acks.acked().is_empty(), "nothing acked before a checkpoint");
    handle.signal();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Stopped);
    assert_eq!(tx.committed(), (0..50).collect::<Vec<_>>());
    let ck = store.get("graceful").expect("a final checkpoint");
    assert_eq!(ck.source_position, Some(serde_json::json!(50)));
    assert_eq!(
        acks.acked(),
        vec![50],
        "acked once, after the final checkpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_aborts_and_a_restart_loses_and_duplicates_nothing() {
    let store = MemoryCheckpointStore::new();
    let (inner, tx) = TxCollectSink::new();
    let hang = Arc::new(AtomicBool::new(false));
    let flushing = Arc::new(Notify::new());
    let source = quiet_after(50);
    let acks = source.clone();
    let sink = StuckFlush {
        inner,
        hang: hang.clone(),
        flushing: flushing.clone(),
    };
    let p = Pipeline::new("abort", source, transform::identity::<u64>(), sink)
        .with_checkpoint_store(store.clone());
    let metrics = p.metrics();
    let (handle, shutdown) = Shutdown::new();
    // Checkpoints at 20 and 40 records; the last 10 are written but not checkpointed.
    let exec = StreamExecutor::new()
        .max_batch(10)
        .checkpoint_every_records(20)
        .checkpoint_interval(Duration::from_secs(3600));
    let run = tokio::spawn(exec.run_with_shutdown(p, shutdown));
    while metrics.snapshot().records_out < 50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(acks.acked(), vec![20, 40]);
    // The downstream system gets stuck: the final checkpoint's flush never returns.
    hang.store(true, Ordering::SeqCst);
    handle.signal();
    flushing.notified().await;
    handle.signal(); // the operator gives up waiting
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Aborted { pipeline } if pipeline == "abort"),
        "{err}"
    );
    assert_eq!(
        acks.acked(),
        vec![20, 40],
        "nothing acked past the last checkpoint"
    );
    assert_eq!(
        store.get("abort").unwrap().source_position,
        Some(serde_json::json!(40))
    );
    assert_eq!(tx.committed(), (0..40).collect::<Vec<_>>());

    // Restart: the 10 records after the checkpoint are read again and committed once.
    let p = Pipeline::new(
        "abort",
        quiet_after(50),
        transform::identity::<u64>(),
        TxCollectSink::resume(&tx),
    )
    .with_checkpoint_store(store.clone());
    let metrics = p.metrics();
    let (handle, shutdown) = Shutdown::new();
    let run = tokio::spawn(exec.run_with_shutdown(p, shutdown));
    while metrics.snapshot().records_out < 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.signal();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.resumed_from_epoch, Some(2));
    assert_eq!(report.records_read, 10);
    assert_eq!(tx.committed(), (0..50).collect::<Vec<_>>());
}

// ------------------------------------------------------------ backpressure

/// Records how far the producer was ahead of the sink at each write.
struct GapSink {
    produced: Arc<AtomicU64>,
    written: u64,
    max_gap: Arc<AtomicU64>,
}

impl Sink for GapSink {
    type Item = u64;
    async fn write(&mut self, batch: Vec<u64>) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(5)).await; // much slower than the source
        // While this batch was being written the producer went as far as it could.
        let gap = self.produced.load(Ordering::SeqCst) - self.written;
        self.max_gap.fetch_max(gap, Ordering::SeqCst);
        self.written += batch.len() as u64;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_sink_slows_the_source_and_bounds_what_is_buffered() {
    const CHANNEL: usize = 16;
    const MAX_BATCH: usize = 32;
    const RECORDS: u64 = 5_000;
    let (txc, rx) = tokio::sync::mpsc::channel(CHANNEL);
    let produced = Arc::new(AtomicU64::new(0));
    let max_gap = Arc::new(AtomicU64::new(0));
    let producer = {
        let produced = produced.clone();
        tokio::spawn(async move {
            for i in 0..RECORDS {
                txc.send(i).await.unwrap();
                produced.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let sink = GapSink {
        produced: produced.clone(),
        written: 0,
        max_gap: max_gap.clone(),
    };
    let p = Pipeline::new(
        "bp",
        ChannelSource::new(rx),
        transform::identity::<u64>(),
        sink,
    );
    let report = StreamExecutor::new()
        .max_batch(MAX_BATCH)
        .run(p)
        .await
        .unwrap();
    producer.await.unwrap();
    assert_eq!(report.records_written, RECORDS);
    // The documented bound: the channel, one source batch in the executor, and the
    // record the producer is handing over.
    let bound = (CHANNEL + MAX_BATCH + 1) as u64;
    let gap = max_gap.load(Ordering::SeqCst);
    assert!(
        gap <= bound,
        "producer ran {gap} records ahead; bound {bound}"
    );
    // And the sink really was the bottleneck: the channel filled up.
    assert!(
        gap > CHANNEL as u64,
        "the producer never got ahead ({gap}): test too weak"
    );
}

// ------------------------------------------------------------ redelivery

/// A broker-like source of records `0..n` that redelivers: every batch repeats some
/// records of the previous batch, and after a restart (`seek`) it redelivers from a
/// little before the checkpointed position, as an at-least-once broker does for
/// messages that were read but not acked. Fails once, after `fail_after` batches.
#[derive(Debug)]
struct Redelivering {
    n: u64,
    next: u64,
    batches: u64,
    fail_after: Option<u64>,
}

impl Source for Redelivering {
    type Item = (u64, String);
    type Position = u64;
    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }
    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<(u64, String), u64>>> {
        if self.next >= self.n {
            return Ok(None);
        }
        self.batches += 1;
        if self.fail_after == Some(self.batches) {
            return Err(Error::source("the broker connection dropped"));
        }
        let end = (self.next + max as u64).min(self.n);
        let from = self.next.saturating_sub(3); // redeliver the last 3 of the previous batch
        let records = (from..end).map(|i| (i, format!("v{i}"))).collect();
        self.next = end;
        Ok(Some(SourceBatch::new(records, end)))
    }
    async fn seek(&mut self, position: u64) -> Result<()> {
        self.next = position.saturating_sub(5); // a broker redelivers un-acked messages
        Ok(())
    }
}

#[tokio::test]
async fn redelivered_records_are_not_duplicated_by_an_idempotent_sink() {
    let store = MemoryCheckpointStore::new();
    let (sink, table) = UpsertSink::new();
    let src = Redelivering {
        n: 500,
        next: 0,
        batches: 0,
        fail_after: Some(7),
    };
    let p = Pipeline::new(
        "redeliver-upsert",
        src,
        transform::identity::<(u64, String)>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let first = p.metrics();
    let exec = StreamExecutor::new()
        .max_batch(32)
        .checkpoint_every_records(64);
    assert!(exec.run(p).await.is_err());
    let src = Redelivering {
        n: 500,
        next: 0,
        batches: 0,
        fail_after: None,
    };
    let p = Pipeline::new(
        "redeliver-upsert",
        src,
        transform::identity::<(u64, String)>(),
        UpsertSink::resume(&table),
    )
    .with_checkpoint_store(store);
    let report = exec.run(p).await.unwrap();
    let read = first.snapshot().records_in + report.records_read;
    assert!(
        read > 520,
        "the source redelivered ({read} records read for 500)"
    );
    let rows = table.snapshot();
    assert_eq!(rows.len(), 500);
    assert!(rows.iter().all(|(k, v)| *v == format!("v{k}")));
}

#[tokio::test]
async fn redelivered_records_are_deduplicated_before_a_transactional_sink() {
    let executors = [
        Executor::Stream(
            StreamExecutor::new()
                .max_batch(32)
                .checkpoint_every_records(64),
        ),
        Executor::MicroBatch(
            MicroBatchExecutor::new(Trigger::AvailableNow)
                .read_chunk(32)
                .max_records_per_batch(64),
        ),
    ];
    for exec in executors {
        let kind = exec.kind();
        let id = format!("redeliver-tx-{kind}");
        let store = MemoryCheckpointStore::new();
        let (sink, tx) = TxCollectSink::new();
        let chain = || transform::dedup_by(1_000, |r: &(u64, String)| r.0).map(|r| r.0);
        let src = Redelivering {
            n: 500,
            next: 0,
            batches: 0,
            fail_after: Some(7),
        };
        let p = Pipeline::new(id.clone(), src, chain(), sink).with_checkpoint_store(store.clone());
        let first = p.metrics();
        assert!(exec.run(p).await.is_err(), "{kind}: the first run fails");
        assert!(
            !tx.commits().is_empty(),
            "{kind}: it committed something first"
        );
        let src = Redelivering {
            n: 500,
            next: 0,
            batches: 0,
            fail_after: None,
        };
        let p = Pipeline::new(id.clone(), src, chain(), TxCollectSink::resume(&tx))
            .with_checkpoint_store(store)
            .require_exactly_once();
        let report = exec.run(p).await.unwrap();
        let read = first.snapshot().records_in + report.records_read;
        assert!(
            read > 520,
            "{kind}: the source redelivered ({read} read for 500)"
        );
        assert_eq!(tx.committed(), (0..500).collect::<Vec<_>>(), "{kind}");
    }
}
