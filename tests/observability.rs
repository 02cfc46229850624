//! Metrics a running pipeline exposes, and what the run report carries.

use batchstream::adapters::{ChannelSource, CollectSink, IterSource};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::transform::{self, TransformExt};
use batchstream::{DeadLetter, MicroBatchExecutor, Pipeline, StreamExecutor, Trigger};

#[tokio::test]
async fn metrics_are_readable_while_the_pipeline_runs() {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (sink, _out) = CollectSink::new();
    let p = Pipeline::new(
        "live",
        ChannelSource::new(rx),
        transform::identity::<u32>(),
        sink,
    );
    let metrics = p.metrics();
    let run = tokio::spawn(StreamExecutor::new().run(p));
    for i in 0..10 {
        tx.send(i).await.unwrap();
    }
    // The executor runs on this runtime: let it catch up, then look.
    for _ in 0..1000 {
        if metrics.snapshot().records_out == 10 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let live = metrics.snapshot();
    assert_eq!((live.records_in, live.records_out), (10, 10));
    assert!(!run.is_finished(), "the stream is still open");
    drop(tx);
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.metrics.records_in, 10);
    assert_eq!(report.metrics.latency.count, 10);
}

#[tokio::test]
async fn report_metrics_count_dead_letters_checkpoints_and_lag() {
    let store = MemoryCheckpointStore::new();
    let (sink, _) = CollectSink::new();
    let (dlq, _) = CollectSink::<DeadLetter>::new();
    let input: Vec<String> = (0..100)
        .map(|i| {
            if i % 10 == 0 {
                "x".into()
            } else {
                i.to_string()
            }
        })
        .collect();
    let p = Pipeline::new(
        "m",
        IterSource::new(input),
        transform::identity::<String>().try_map("parse", |s| s.parse::<u32>()),
        sink,
    )
    .with_checkpoint_store(store)
    .with_dead_letter_sink(dlq);
    let metrics = p.metrics();
    // One micro-batch of 30 records: 70 remain in the source.
    let r = MicroBatchExecutor::new(Trigger::Once)
        .max_records_per_batch(30)
        .read_chunk(10)
        .run(p)
        .await
        .unwrap();
    let m = &r.metrics;
    assert_eq!((m.records_in, m.records_out, m.dead_lettered), (30, 27, 3));
    assert_eq!(m.checkpoints, 1);
    assert!(m.last_checkpoint_bytes.unwrap() > 0);
    assert!(m.last_checkpoint_time.is_some());
    assert_eq!(m.source_lag, Some(70), "records left in the source");
    assert_eq!(metrics.snapshot(), *m, "the handle sees the same figures");
    assert!(r.to_string().contains("latency p50"), "{r}");
}
