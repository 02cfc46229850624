//! Incremental aggregates: the stream executor's upsert table equals a batch
//! recomputation over the same prefix, including across a restart.

use std::collections::BTreeMap;

use batchstream::adapters::{UpsertSink, UpsertTable};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::incremental::{Summary, totals_by};
use batchstream::testing::{ScriptedSource, Step};
use batchstream::{BatchExecutor, Pipeline, StreamExecutor, Transform};
use proptest::prelude::*;

type Row = (u8, i64);
type Table = BTreeMap<u8, Summary<i64>>;

/// The batch answer, by a plain loop over the records.
fn recompute(records: &[Row]) -> Table {
    let mut out = Table::new();
    for &(key, value) in records {
        let s = out.entry(key).or_insert(Summary {
            count: 0,
            sum: 0,
            min: None,
            max: None,
        });
        s.count += 1;
        s.sum = s.sum.wrapping_add(value);
        s.min = Some(s.min.map_or(value, |m| m.min(value)));
        s.max = Some(s.max.map_or(value, |m| m.max(value)));
    }
    out
}

type Sink = UpsertSink<u8, Summary<i64>>;

fn pipeline(
    source: ScriptedSource<Row>,
    sink: Sink,
    store: &MemoryCheckpointStore,
) -> Pipeline<ScriptedSource<Row>, impl Transform<In = Row, Out = (u8, Summary<i64>)>, Sink> {
    Pipeline::new(
        "totals",
        source,
        totals_by(|r: &Row| r.0, |r: &Row| r.1),
        sink,
    )
    .with_checkpoint_store(store.clone())
}

/// Runs `prefix` through the stream executor in two processes: the first one reads
/// `prefix[..crash_at]` and then fails (a crash), the second resumes from the last
/// checkpoint with a fresh transform and reads to the end.
async fn stream_with_restart(
    prefix: &[Row],
    crash_at: usize,
    max_batch: usize,
    checkpoint_every: u64,
) -> UpsertTable<u8, Summary<i64>> {
    let store = MemoryCheckpointStore::new();
    let exec = StreamExecutor::new()
        .max_batch(max_batch)
        .checkpoint_every_records(checkpoint_every);
    let (sink, table) = UpsertSink::new();
    let crashing = ScriptedSource::new([
        Step::Records(prefix[..crash_at].to_vec()),
        Step::Fail {
            message: "crash".into(),
            retryable: false,
        },
        Step::Records(prefix[crash_at..].to_vec()),
    ]);
    let first = exec.run(pipeline(crashing, sink, &store)).await;
    assert!(first.is_err(), "the first run must stop at the crash");

    let resumed = ScriptedSource::from_records(prefix.to_vec());
    exec.run(pipeline(resumed, UpsertSink::resume(&table), &store))
        .await
        .expect("the resumed run");
    table
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// For any input, any prefix of it and any crash point inside the prefix, the
    /// incremental (stream) table equals the batch recomputation over the prefix.
    #[test]
    fn stream_table_equals_batch_recomputation(
        input in prop::collection::vec((0u8..6, -1000i64..1000), 0..80),
        prefix_frac in 0.0f64..=1.0,
        crash_frac in 0.0f64..=1.0,
        max_batch in 1usize..9,
        checkpoint_every in 1u64..20,
    ) {
        let prefix_len = (input.len() as f64 * prefix_frac) as usize;
        let prefix = &input[..prefix_len];
        let crash_at = (prefix_len as f64 * crash_frac) as usize;
        let table = runtime().block_on(stream_with_restart(prefix, crash_at, max_batch, checkpoint_every));
        prop_assert_eq!(table.snapshot(), recompute(prefix));
    }
}

#[tokio::test]
async fn batch_and_stream_versions_agree_with_the_loop() {
    let input: Vec<Row> = (0..200)
        .map(|i| ((i % 7) as u8, (i * 37 % 101) - 50))
        .collect();
    let store = MemoryCheckpointStore::new();
    let (sink, batch) = UpsertSink::new();
    BatchExecutor::new()
        .chunk_size(13)
        .run(pipeline(
            ScriptedSource::from_records(input.clone()),
            sink,
            &store,
        ))
        .await
        .unwrap();
    let (sink, stream) = UpsertSink::new();
    StreamExecutor::new()
        .max_batch(5)
        .run(pipeline(
            ScriptedSource::from_records(input.clone()),
            sink,
            &MemoryCheckpointStore::new(),
        ))
        .await
        .unwrap();
    let expected = recompute(&input);
    assert_eq!(batch.snapshot(), expected);
    assert_eq!(stream.snapshot(), expected);
    let k0 = expected[&0];
    assert_eq!(k0.mean(), Some(k0.sum as f64 / k0.count as f64));
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_instead_of_rereading() {
    // 10 records, a checkpoint every 4, a crash after 6: the second run reads only
    // what the checkpoint (at 4) did not cover, and the table is still exact.
    let input: Vec<Row> = (0..10).map(|i| ((i % 3) as u8, i)).collect();
    let store = MemoryCheckpointStore::new();
    let exec = StreamExecutor::new()
        .max_batch(2)
        .checkpoint_every_records(4);
    let (sink, table) = UpsertSink::new();
    let crashing = ScriptedSource::new([
        Step::Records(input[..6].to_vec()),
        Step::Fail {
            message: "crash".into(),
            retryable: false,
        },
    ]);
    assert!(exec.run(pipeline(crashing, sink, &store)).await.is_err());
    let report = exec
        .run(pipeline(
            ScriptedSource::from_records(input.clone()),
            UpsertSink::resume(&table),
            &store,
        ))
        .await
        .unwrap();
    assert!(report.resumed_from_epoch.is_some());
    assert_eq!(report.records_read, 6, "resumed at 4 of 10");
    assert_eq!(table.snapshot(), recompute(&input));
}
