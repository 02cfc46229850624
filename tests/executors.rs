//! Executor behaviour: checkpoint order, run markers, triggers, resume, dead letters,
//! failures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchstream::adapters::{CollectSink, UpsertSink};
use batchstream::checkpoint::{Checkpoint, FileCheckpointStore, MemoryCheckpointStore};
use batchstream::testing::{FailingSink, ScriptedSource, Step, TxCollectSink};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, CheckpointError, CheckpointStore, DeadLetter, Error, MicroBatchExecutor,
    Outcome, Pipeline, RecordErrorKind, Result, Sink, Source, SourceBatch, StreamExecutor, Trigger,
};

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, s: String) {
    log.lock().unwrap().push(s);
}

/// A source that logs acks.
struct LoggedSource {
    inner: ScriptedSource<u32>,
    log: Log,
}

impl Source for LoggedSource {
    type Item = u32;
    type Position = u64;
    fn boundedness(&self) -> batchstream::Boundedness {
        self.inner.boundedness()
    }
    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<u32, u64>>> {
        self.inner.next_batch(max).await
    }
    async fn seek(&mut self, p: u64) -> Result<()> {
        push(&self.log, format!("seek {p}"));
        self.inner.seek(p).await
    }
    async fn ack(&mut self, p: &u64) -> Result<()> {
        push(&self.log, format!("ack {p}"));
        Ok(())
    }
}

/// A sink that logs every call.
struct LoggedSink {
    log: Log,
}

impl Sink for LoggedSink {
    type Item = u32;
    async fn write(&mut self, batch: Vec<u32>) -> Result<()> {
        push(&self.log, format!("write {}", batch.len()));
        Ok(())
    }
    async fn flush(&mut self) -> Result<()> {
        push(&self.log, "flush".into());
        Ok(())
    }
    async fn prepare(&mut self, e: u64) -> Result<()> {
        push(&self.log, format!("prepare {e}"));
        Ok(())
    }
    async fn commit(&mut self, e: u64) -> Result<()> {
        push(&self.log, format!("commit {e}"));
        Ok(())
    }
    async fn recover(&mut self, e: Option<u64>) -> Result<()> {
        push(&self.log, format!("recover {e:?}"));
        Ok(())
    }
}

/// A store that logs saves.
#[derive(Clone)]
struct LoggedStore {
    inner: MemoryCheckpointStore,
    log: Log,
}

impl CheckpointStore for LoggedStore {
    async fn load(&self, id: &str) -> std::result::Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(id).await
    }
    async fn save(&self, ck: &Checkpoint) -> std::result::Result<(), CheckpointError> {
        push(&self.log, format!("save {}", ck.epoch));
        self.inner.save(ck).await
    }
}

#[tokio::test]
async fn stream_checkpoints_in_order_flush_prepare_save_commit_ack() {
    let log: Log = Arc::default();
    let store = LoggedStore {
        inner: MemoryCheckpointStore::new(),
        log: log.clone(),
    };
    let source = LoggedSource {
        inner: ScriptedSource::from_records((0..10).collect()),
        log: log.clone(),
    };
    let p = Pipeline::new(
        "order",
        source,
        transform::identity(),
        LoggedSink { log: log.clone() },
    )
    .with_checkpoint_store(store);
    let report = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(8)
        .run(p)
        .await
        .unwrap();
    assert_eq!(report.records_written, 10);
    assert_eq!(report.checkpoints, 2);
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            "recover None",
            "write 4",
            "write 4",
            "flush",
            "prepare 1",
            "save 1",
            "commit 1",
            "ack 8",
            "write 2",
            "flush",
            "prepare 2",
            "save 2",
            "commit 2",
            "ack 10",
        ]
    );
}

#[tokio::test]
async fn stream_resumes_from_checkpoint_with_state_and_position() {
    let store = MemoryCheckpointStore::new();
    let records: Vec<u32> = (0..20).collect();
    let logic = || {
        transform::identity::<u32>()
            .key_by(|x| x % 3)
            .fold(0u32, |acc, x| *acc += x)
    };
    // First run stops (graceful shutdown) after a micro-batch of 8 records.
    let (sink, table) = UpsertSink::new();
    let p = Pipeline::new(
        "resume",
        ScriptedSource::from_records(records.clone()),
        logic(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let r1 = MicroBatchExecutor::new(Trigger::Once)
        .max_records_per_batch(8)
        .run(p)
        .await
        .unwrap();
    assert_eq!(r1.records_read, 8);
    assert_eq!(store.get("resume").unwrap().source_position, Some(8.into()));

    // Second run, under a different executor, continues from record 8 with the sums so far.
    let p = Pipeline::new(
        "resume",
        ScriptedSource::from_records(records.clone()),
        logic(),
        UpsertSink::resume(&table),
    )
    .with_checkpoint_store(store.clone());
    let r2 = StreamExecutor::new().run(p).await.unwrap();
    assert_eq!(r2.resumed_from_epoch, Some(1));
    assert_eq!(r2.records_read, 12);
    let expected: std::collections::BTreeMap<u32, u32> = (0..3)
        .map(|k| (k, records.iter().filter(|x| *x % 3 == k).sum()))
        .collect();
    assert_eq!(table.snapshot(), expected);
}

#[tokio::test]
async fn batch_run_key_is_skipped_once_complete_and_forced_on_request() {
    let store = MemoryCheckpointStore::new();
    let run = |force: bool| {
        let store = store.clone();
        async move {
            let (sink, out) = CollectSink::new();
            let p = Pipeline::new(
                "daily",
                ScriptedSource::from_records(vec![1u8, 2, 3]),
                transform::identity(),
                sink,
            )
            .with_checkpoint_store(store);
            let report = BatchExecutor::new()
                .run_key("2024-05-01")
                .force(force)
                .run(p)
                .await
                .unwrap();
            (report, out.len())
        }
    };
    let (r, n) = run(false).await;
    assert_eq!((r.outcome, n), (Outcome::Completed, 3));
    let (r, n) = run(false).await;
    assert!(r.is_skipped(), "{r}");
    assert_eq!((r.records_read, n), (0, 0));
    assert!(r.to_string().contains("already completed"), "{r}");
    let (r, n) = run(true).await;
    assert_eq!((r.outcome, n), (Outcome::Completed, 3));
}

#[tokio::test]
async fn batch_run_that_fails_halfway_is_not_marked_complete() {
    let store = MemoryCheckpointStore::new();
    let script = vec![
        Step::Records(vec![1u8, 2]),
        Step::Fail {
            message: "disk gone".into(),
            retryable: false,
        },
        Step::Records(vec![3]),
    ];
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "daily",
        ScriptedSource::new(script),
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let err = BatchExecutor::new().run_key("d1").run(p).await.unwrap_err();
    assert!(err.to_string().contains("disk gone"), "{err}");
    assert!(
        store
            .get("daily")
            .is_none_or(|ck| !ck.completed_runs.contains("d1"))
    );

    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "daily",
        ScriptedSource::from_records(vec![1u8, 2, 3]),
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let r = BatchExecutor::new().run_key("d1").run(p).await.unwrap();
    assert_eq!(
        (r.outcome, out.items()),
        (Outcome::Completed, vec![1, 2, 3])
    );
    assert!(store.get("daily").unwrap().completed_runs.contains("d1"));
}

#[tokio::test]
async fn batch_executor_refuses_an_unbounded_source() {
    let (sink, _) = CollectSink::<u8>::new();
    let p = Pipeline::new(
        "u",
        ScriptedSource::from_records(vec![1u8]).unbounded(),
        transform::identity(),
        sink,
    );
    let err = BatchExecutor::new().run(p).await.unwrap_err();
    assert!(
        matches!(err, Error::UnboundedSource { executor: "batch" }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn stream_checkpoints_on_its_interval_while_the_source_is_quiet() {
    let store = MemoryCheckpointStore::new();
    let script = vec![
        Step::Records(vec![1u32, 2]),
        Step::Wait(Duration::from_millis(3500)),
        Step::Records(vec![3]),
    ];
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "tick",
        ScriptedSource::new(script).unbounded(),
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let r = StreamExecutor::new()
        .checkpoint_interval(Duration::from_secs(1))
        .run(p)
        .await
        .unwrap();
    assert_eq!(out.items(), vec![1, 2, 3]);
    // One checkpoint at the first tick after records 1 and 2 (later ticks find
    // nothing new), one at the end.
    assert_eq!(r.checkpoints, 2);
    assert_eq!(store.get("tick").unwrap().source_position, Some(3.into()));
}

#[tokio::test(start_paused = true)]
async fn stream_shutdown_takes_a_final_checkpoint_and_reports_stopped() {
    let store = MemoryCheckpointStore::new();
    let script = vec![
        Step::Records(vec![1u32, 2]),
        Step::Wait(Duration::from_secs(3600)),
    ];
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "stop",
        ScriptedSource::new(script).unbounded(),
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let shutdown = tokio::time::sleep(Duration::from_secs(10));
    let r = StreamExecutor::new().run_until(p, shutdown).await.unwrap();
    assert_eq!(r.outcome, Outcome::Stopped);
    assert_eq!(out.items(), vec![1, 2]);
    assert_eq!(store.get("stop").unwrap().source_position, Some(2.into()));
}

#[tokio::test(start_paused = true)]
async fn micro_batch_processing_time_runs_one_epoch_per_tick() {
    let script = vec![
        Step::Records(vec![1u32, 2]),
        Step::Wait(Duration::from_secs(5)),
        Step::Records(vec![3, 4, 5]),
    ];
    let store = MemoryCheckpointStore::new();
    let (sink, handle) = TxCollectSink::new();
    let p = Pipeline::new(
        "mb",
        ScriptedSource::new(script).unbounded(),
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let r = MicroBatchExecutor::new(Trigger::ProcessingTime(Duration::from_secs(2)))
        .run(p)
        .await
        .unwrap();
    assert_eq!(r.epochs, 2);
    assert_eq!(handle.committed(), vec![1, 2, 3, 4, 5]);
    assert_eq!(handle.commits(), vec![1, 2]);
}

#[tokio::test]
async fn rejected_records_go_to_the_dead_letter_sink_with_stage_and_position() {
    #[derive(serde::Serialize, Clone)]
    struct Raw(&'static str);
    let input = vec![Raw("1"), Raw("two"), Raw("3")];
    let (sink, out) = CollectSink::new();
    let (dlq, letters) = CollectSink::<DeadLetter>::new();
    let p = Pipeline::new(
        "dlq",
        ScriptedSource::from_records(input),
        transform::identity::<Raw>().try_map("parse", |r| r.0.parse::<i32>()),
        sink,
    )
    .with_dead_letter_sink(dlq);
    let r = StreamExecutor::new().max_batch(2).run(p).await.unwrap();
    assert_eq!(out.items(), vec![1, 3]);
    assert_eq!(r.dead_lettered, 1);
    let l = &letters.items()[0];
    assert_eq!(l.error.kind, RecordErrorKind::Transform);
    assert_eq!(l.error.stage, "parse");
    assert_eq!(l.record, Some(serde_json::json!("two")));
    assert_eq!(l.position, Some(serde_json::json!(2)));
}

#[tokio::test]
async fn without_a_dead_letter_sink_a_rejected_record_fails_the_run_after_earlier_ones() {
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "nodlq",
        ScriptedSource::from_records(vec!["1".to_string(), "x".into(), "3".into()]),
        transform::identity::<String>().try_map("parse", |s| s.parse::<i32>()),
        sink,
    );
    let err = BatchExecutor::new().chunk_size(1).run(p).await.unwrap_err();
    let rec = err.as_record_error().expect("a record error");
    assert_eq!(rec.stage, "parse");
    assert_eq!(
        out.items(),
        vec![1],
        "records accepted before the bad one are kept"
    );
}

#[tokio::test]
async fn a_failing_sink_stops_the_run_and_the_source_is_not_acked_past_the_checkpoint() {
    let store = MemoryCheckpointStore::new();
    let source = ScriptedSource::from_records((0..10u32).collect());
    let acks = source.clone();
    let (sink, _) = FailingSink::new([3]);
    let p = Pipeline::new("fail", source, transform::identity(), sink)
        .with_checkpoint_store(store.clone());
    let err = StreamExecutor::new()
        .max_batch(2)
        .checkpoint_every_records(2)
        .run(p)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                operation: "write",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(acks.acked(), vec![2, 4]);
    assert_eq!(store.get("fail").unwrap().source_position, Some(4.into()));
}

#[tokio::test]
async fn a_corrupt_checkpoint_file_fails_the_run_instead_of_restarting() {
    let dir = std::env::temp_dir().join(format!("bs-corrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = FileCheckpointStore::new(&dir).unwrap();
    let build = |store: FileCheckpointStore| {
        let (sink, out) = CollectSink::new();
        let p = Pipeline::new(
            "c",
            ScriptedSource::from_records((0..5u32).collect()),
            transform::identity(),
            sink,
        )
        .with_checkpoint_store(store);
        (p, out)
    };
    let (p, _) = build(store.clone());
    StreamExecutor::new().run(p).await.unwrap();
    let path = store.latest_path("c").unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let (p, out) = build(store.clone());
    let err = StreamExecutor::new().run(p).await.unwrap_err();
    match err {
        Error::Checkpoint(CheckpointError::Corrupt { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a corrupt checkpoint error, got {other}"),
    }
    assert!(out.is_empty(), "nothing was re-read from the beginning");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stopped_batch_run_keeps_what_it_wrote_but_is_not_marked_complete() {
    let store = MemoryCheckpointStore::new();
    let script = vec![
        Step::Records(vec![1u32, 2]),
        Step::Wait(Duration::from_secs(60)),
        Step::Records(vec![3]),
    ];
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "b",
        ScriptedSource::new(script),
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let shutdown = tokio::time::sleep(Duration::from_secs(1));
    let r = BatchExecutor::new()
        .run_key("k")
        .run_until(p, shutdown)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Stopped);
    assert_eq!(out.items(), vec![1, 2]);
    assert!(
        store.get("b").is_none(),
        "no completion marker for a stopped run"
    );
}

#[tokio::test]
async fn the_executor_can_be_chosen_from_configuration() {
    use batchstream::{Executor, ExecutorKind};
    for name in ["batch", "stream", "micro-batch"] {
        let executor: Executor = name.parse::<ExecutorKind>().unwrap().into();
        let (sink, out) = CollectSink::new();
        let p = Pipeline::new(
            "cfg",
            ScriptedSource::from_records(vec![1u8, 2]),
            transform::identity(),
            sink,
        );
        let r = executor.run(p).await.unwrap();
        assert_eq!((r.executor.to_string(), out.len()), (name.to_string(), 2));
    }
    let err = "lambda".parse::<ExecutorKind>().unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("lambda")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn stream_emit_interval_batches_upserts_without_changing_the_result() {
    let mut script = Vec::new();
    for i in 0..20u32 {
        script.push(Step::Records(vec![i % 2, i % 2]));
        script.push(Step::Wait(Duration::from_millis(100)));
    }
    let run = |emit: Option<Duration>| {
        let script = script.clone();
        async move {
            let (sink, table) = UpsertSink::new();
            let logic = transform::identity::<u32>()
                .key_by(|x| *x)
                .fold(0u32, |n, _| *n += 1);
            let p = Pipeline::new("emit", ScriptedSource::new(script).unbounded(), logic, sink);
            let mut exec = StreamExecutor::new();
            if let Some(e) = emit {
                exec = exec.emit_interval(e);
            }
            let r = exec.run(p).await.unwrap();
            (r.records_written, table.snapshot())
        }
    };
    let (every_batch, t1) = run(None).await;
    let (every_second, t2) = run(Some(Duration::from_secs(1))).await;
    assert_eq!(t1, t2);
    assert_eq!(t1, [(0, 20), (1, 20)].into_iter().collect());
    assert_eq!(every_batch, 20, "one upsert per batch");
    assert!(
        every_second <= 6,
        "about one upsert per second: {every_second}"
    );
}

#[tokio::test]
async fn a_skipped_batch_run_still_recovers_a_prepared_epoch_and_a_batch_run_acks() {
    // A crash after saving the final checkpoint of run "k" but before commit: epoch 1
    // is prepared in the sink and recorded in the checkpoint.
    let store = MemoryCheckpointStore::new();
    let (mut sink, handle) = TxCollectSink::new();
    sink.write(vec![7u8, 8]).await.unwrap();
    sink.prepare(1).await.unwrap();
    let mut ck = Checkpoint::new("tx");
    ck.epoch = 1;
    ck.completed_runs.insert("k".into());
    store.save(&ck).await.unwrap();
    drop(sink);

    let source = ScriptedSource::from_records(vec![1u8, 2]);
    let p = Pipeline::new(
        "tx",
        source,
        transform::identity(),
        TxCollectSink::resume(&handle),
    )
    .with_checkpoint_store(store.clone());
    let r = BatchExecutor::new().run_key("k").run(p).await.unwrap();
    assert!(r.is_skipped());
    assert_eq!(
        handle.committed(),
        vec![7, 8],
        "the prepared epoch was committed"
    );

    // A completed batch run acks the end of its range.
    let source = ScriptedSource::from_records(vec![1u8, 2, 3]);
    let acks = source.clone();
    let p = Pipeline::new(
        "tx",
        source,
        transform::identity(),
        TxCollectSink::resume(&handle),
    )
    .with_checkpoint_store(store.clone());
    BatchExecutor::new().run_key("k2").run(p).await.unwrap();
    assert_eq!(acks.acked(), vec![3]);
    assert_eq!(handle.committed(), vec![7, 8, 1, 2, 3]);
}
