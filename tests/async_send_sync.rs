//! Compile-time checks that the public types are `Send`/`Sync` and that executor
//! futures are `Send + 'static`, so they can be handed to `tokio::spawn` (in the
//! spirit of tokio-stream's `tests/async_send_sync.rs`).
//!
//! Most checks are in the type system: if one fails, this file does not compile. The
//! futures are constructed but never polled, except in the two `tokio::spawn` tests.

use std::error::Error as StdError;
use std::time::Duration;

use batchstream::adapters::file::{CsvSink, CsvSource, NdjsonSink, NdjsonSource};
use batchstream::adapters::{ChannelSource, CollectSink, Collected, IterSource, UpsertSink};
use batchstream::checkpoint::{
    BoxCheckpointStore, Checkpoint, FileCheckpointStore, MemoryCheckpointStore,
};
use batchstream::testing::ScriptedSource;
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, BoxSink, BoxSource, CheckpointError, DeadLetter, Error, MicroBatchExecutor,
    Outcome, Pipeline, RunReport, StreamExecutor, Trigger,
};

fn require_send<T: Send>() {}
fn require_sync<T: Sync>() {}
fn require_static<T: 'static>() {}
fn require_error<T: StdError + Send + Sync + 'static>() {}

/// For values whose type cannot be named (executor futures).
fn assert_send_static<T: Send + 'static>(_: &T) {}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Row {
    id: u32,
    name: String,
}

#[test]
fn error_types_are_send_sync_static_errors() {
    require_error::<Error>();
    require_error::<CheckpointError>();
    require_error::<batchstream::RecordError>();
}

/// `Error` converts with `?` into the usual boxed error, and `CheckpointError` into
/// `Error`.
#[test]
fn errors_propagate_with_question_mark() {
    fn checkpoint_step() -> Result<(), CheckpointError> {
        Err(CheckpointError::InvalidId("a/b".into()))
    }
    fn crate_step() -> batchstream::Result<()> {
        checkpoint_step()?;
        Ok(())
    }
    fn app() -> Result<(), Box<dyn StdError + Send + Sync>> {
        crate_step()?;
        Ok(())
    }
    fn app_local() -> Result<(), Box<dyn StdError>> {
        crate_step()?;
        Ok(())
    }

    let err = app().unwrap_err();
    match err.downcast_ref::<Error>() {
        Some(Error::Checkpoint(CheckpointError::InvalidId(id))) => assert_eq!(id, "a/b"),
        other => panic!("expected Error::Checkpoint(InvalidId), got {other:?}"),
    }
    assert!(app_local().unwrap_err().downcast_ref::<Error>().is_some());
}

#[test]
fn data_and_store_types_are_send_and_sync() {
    require_send::<Error>();
    require_sync::<Error>();
    require_send::<CheckpointError>();
    require_sync::<CheckpointError>();
    require_send::<DeadLetter>();
    require_sync::<DeadLetter>();
    require_send::<RunReport>();
    require_sync::<RunReport>();
    require_send::<Checkpoint>();
    require_sync::<Checkpoint>();
    require_send::<MemoryCheckpointStore>();
    require_sync::<MemoryCheckpointStore>();
    require_send::<FileCheckpointStore>();
    require_sync::<FileCheckpointStore>();
    require_send::<BoxCheckpointStore>();
    require_sync::<BoxCheckpointStore>();
    require_static::<BoxCheckpointStore>();
    require_send::<
        Pipeline<IterSource<std::vec::IntoIter<u32>>, transform::Identity<u32>, CollectSink<u32>>,
    >();
    require_send::<StreamExecutor>();
    require_sync::<StreamExecutor>();
    require_send::<BatchExecutor>();
    require_sync::<BatchExecutor>();
    require_send::<MicroBatchExecutor>();
    require_sync::<MicroBatchExecutor>();
}

#[test]
fn sources_and_sinks_are_send() {
    // Boxed sources and sinks are `Send` only: their trait objects are `dyn .. + Send`,
    // and executors use them through `&mut`, which needs no `Sync`.
    require_send::<BoxSink<u32>>();
    require_send::<BoxSource<u32, u64>>();

    require_send::<CollectSink<u32>>();
    require_sync::<CollectSink<u32>>();
    require_send::<Collected<u32>>();
    require_sync::<Collected<u32>>();
    require_send::<UpsertSink<String, u32>>();
    require_sync::<UpsertSink<String, u32>>();
    require_send::<IterSource<std::vec::IntoIter<u32>>>();
    require_sync::<IterSource<std::vec::IntoIter<u32>>>();
    require_send::<ChannelSource<u32>>();
    require_sync::<ChannelSource<u32>>();
    require_send::<ScriptedSource<u32>>();
    require_sync::<ScriptedSource<u32>>();

    require_send::<NdjsonSource<Row>>();
    require_sync::<NdjsonSource<Row>>();
    require_send::<NdjsonSink<Row>>();
    require_sync::<NdjsonSink<Row>>();
    require_send::<CsvSource<Row>>();
    require_sync::<CsvSource<Row>>();
    require_send::<CsvSink<Row>>();
    require_sync::<CsvSink<Row>>();
    require_send::<NdjsonSink<DeadLetter>>();
}

/// A pipeline of `Send` parts using every optional piece: a fused transform chain with
/// closures, a boxed checkpoint store and a dead-letter sink.
fn iter_pipeline() -> Pipeline<
    IterSource<std::vec::IntoIter<u32>>,
    impl batchstream::Transform<In = u32, Out = u32>,
    CollectSink<u32>,
> {
    let (sink, _out) = CollectSink::new();
    let (dlq, _letters) = CollectSink::<DeadLetter>::new();
    let logic = transform::identity::<u32>()
        .filter(|x| x % 3 != 0)
        .try_map("halve", |x| {
            if x % 2 == 0 {
                Ok(x / 2)
            } else {
                Err(format!("{x} is odd"))
            }
        })
        .map(|x| x + 1);
    Pipeline::new(
        "iter",
        IterSource::new((0..100).collect::<Vec<_>>()),
        logic,
        sink,
    )
    .with_checkpoint_store(MemoryCheckpointStore::new())
    .with_dead_letter_sink(dlq)
}

#[test]
fn executor_futures_are_send_and_static() {
    // Batch.
    let p = iter_pipeline();
    let fut = BatchExecutor::new().run_key("2024-05-01").run(p);
    assert_send_static(&fut);
    drop(fut);

    // Stream: run and run_until, on a bounded and on an unbounded source.
    let p = iter_pipeline();
    let fut = StreamExecutor::new().run(p);
    assert_send_static(&fut);
    drop(fut);

    let (tx, rx) = tokio::sync::mpsc::channel::<u32>(4);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "channel",
        ChannelSource::new(rx),
        transform::identity::<u32>(),
        sink,
    )
    .with_checkpoint_store(BoxCheckpointStore::new(MemoryCheckpointStore::new()));
    let fut = StreamExecutor::new().run_until(p, async move {
        let _ = stop_rx.await;
    });
    assert_send_static(&fut);
    drop(fut);
    drop((tx, stop_tx));

    // Micro-batch: run and run_until, with a timed trigger.
    let p = iter_pipeline();
    let fut = MicroBatchExecutor::new(Trigger::AvailableNow).run(p);
    assert_send_static(&fut);
    drop(fut);

    let p = iter_pipeline();
    let fut = MicroBatchExecutor::new(Trigger::ProcessingTime(Duration::from_millis(5))).run_until(
        p,
        async {
            // Created lazily: building a `Sleep` needs a runtime, polling this never happens.
            tokio::time::sleep(Duration::from_secs(1)).await
        },
    );
    assert_send_static(&fut);
    drop(fut);

    // Boxed source and sink.
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "boxed",
        BoxSource::new(IterSource::new(vec![1u32, 2, 3])),
        transform::identity::<u32>(),
        BoxSink::new(sink),
    );
    let fut = StreamExecutor::new().run(p);
    assert_send_static(&fut);
    drop(fut);
}

#[test]
fn file_pipeline_futures_are_send_and_static() {
    let dir = std::env::temp_dir().join(format!("batchstream-send-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ndjson = dir.join("in.ndjson");
    let csv = dir.join("in.csv");
    std::fs::write(&ndjson, "{\"id\":1,\"name\":\"a\"}\n").unwrap();
    std::fs::write(&csv, "id,name\n1,a\n").unwrap();
    let store = FileCheckpointStore::new(dir.join("ckpt")).unwrap();

    let p = Pipeline::new(
        "ndjson",
        NdjsonSource::<Row>::open(&ndjson).unwrap(),
        transform::identity::<Row>(),
        NdjsonSink::<Row>::create(dir.join("out.ndjson")).unwrap(),
    )
    .with_checkpoint_store(store.clone())
    .with_dead_letter_sink(
        batchstream::adapters::file::dead_letter_file(dir.join("dlq.ndjson")).unwrap(),
    );
    let fut = StreamExecutor::new().run(p);
    assert_send_static(&fut);
    drop(fut);

    let p = Pipeline::new(
        "csv",
        CsvSource::<Row>::open(&csv)
            .unwrap()
            .tail(Duration::from_millis(10)),
        transform::identity::<Row>(),
        CsvSink::<Row>::create(dir.join("out.csv")).unwrap(),
    )
    .with_checkpoint_store(store);
    let fut = MicroBatchExecutor::new(Trigger::Once).run(p);
    assert_send_static(&fut);
    drop(fut);

    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_run_can_be_spawned() {
    let dir = std::env::temp_dir().join(format!("batchstream-spawn-{}", std::process::id()));
    let store = FileCheckpointStore::new(&dir).unwrap();
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "spawned",
        ScriptedSource::from_records((0..50u32).collect()),
        transform::identity::<u32>().map(|x| x * 2),
        sink,
    )
    .with_checkpoint_store(store.clone());

    let handle = tokio::spawn(StreamExecutor::new().max_batch(8).run(p));
    let report = handle.await.expect("task did not panic").expect("run ok");

    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.pipeline_id, "spawned");
    assert_eq!(report.records_read, 50);
    assert_eq!(report.records_written, 50);
    assert!(report.checkpoints >= 1);
    assert_eq!(out.items(), (0..50u32).map(|x| x * 2).collect::<Vec<_>>());
    use batchstream::CheckpointStore as _;
    let ck = store.load("spawned").await.unwrap().expect("a checkpoint");
    assert_eq!(ck.source_position, Some(serde_json::json!(50)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_run_until_can_be_spawned_and_stopped() {
    let (tx, rx) = tokio::sync::mpsc::channel::<u32>(16);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "until",
        ChannelSource::new(rx),
        transform::identity::<u32>(),
        sink,
    )
    .with_checkpoint_store(MemoryCheckpointStore::new());
    let handle = tokio::spawn(StreamExecutor::new().run_until(p, async move {
        let _ = stop_rx.await;
    }));

    for x in [1, 2, 3] {
        tx.send(x).await.unwrap();
    }
    // Wait until the spawned run has written them, then stop it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while out.len() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("records reach the sink");
    stop_tx.send(()).unwrap();

    let report = handle.await.expect("task did not panic").expect("run ok");
    assert_eq!(report.outcome, Outcome::Stopped);
    assert_eq!(report.records_read, 3);
    assert_eq!(out.items(), vec![1, 2, 3]);
    drop(tx);
}
