//! Property tests of the core promise: one pipeline, the same results under the
//! batch, stream and micro-batch executors, whatever the batch boundaries, and the
//! same results when a run is interrupted (at a checkpoint or by a crash) and resumed.

use std::collections::BTreeMap;

use batchstream::adapters::{CollectSink, IterSource, UpsertSink};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::testing::{Modes, ScriptedSource, Step, TxCollectSink};
use batchstream::transform::{self, Transform, TransformExt};
use batchstream::{BatchExecutor, MicroBatchExecutor, Pipeline, StreamExecutor, Trigger};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
struct Rec {
    id: u32,
    key: u8,
    value: i32,
}

fn records() -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec((0u8..8, -50i32..100), 0..120).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (key, value))| Rec {
                id: i as u32,
                key,
                value,
            })
            .collect()
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A stateless chain: drop negatives, duplicate multiples of 5, scale.
fn stateless() -> impl Transform<In = Rec, Out = (u32, i64)> + Send {
    transform::identity::<Rec>()
        .filter(|r| r.value >= 0)
        .flat_map(|r| {
            let copies = if r.value % 5 == 0 { 2 } else { 1 };
            std::iter::repeat_n(r, copies)
        })
        .map(|r| (r.id, i64::from(r.value) * 3))
}

fn stateless_reference(input: &[Rec]) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for r in input.iter().filter(|r| r.value >= 0) {
        let copies = if r.value % 5 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            out.push((r.id, i64::from(r.value) * 3));
        }
    }
    out.sort();
    out
}

/// Keyed state: per key, (count, sum) of non-negative values.
fn keyed() -> impl Transform<In = Rec, Out = (u8, (u32, i64))> + Send {
    transform::identity::<Rec>()
        .filter(|r| r.value >= 0)
        .key_by(|r| r.key)
        .fold((0u32, 0i64), |acc, r| {
            acc.0 += 1;
            acc.1 += i64::from(r.value);
        })
}

fn keyed_reference(input: &[Rec]) -> BTreeMap<u8, (u32, i64)> {
    let mut m = BTreeMap::new();
    for r in input.iter().filter(|r| r.value >= 0) {
        let e = m.entry(r.key).or_insert((0u32, 0i64));
        e.0 += 1;
        e.1 += i64::from(r.value);
    }
    m
}

fn modes(chunk: usize, batch: usize, every: u64, micro: usize, read: usize) -> Modes {
    Modes {
        batch: BatchExecutor::new().chunk_size(chunk),
        stream: StreamExecutor::new()
            .max_batch(batch)
            .checkpoint_every_records(every),
        micro_batch: MicroBatchExecutor::new(Trigger::AvailableNow)
            .max_records_per_batch(micro)
            .read_chunk(read),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn stateless_output_is_the_same_multiset_under_every_executor(
        input in records(),
        chunk in 1usize..20, batch in 1usize..20, every in 1u64..30,
        micro in 1usize..30, read in 1usize..10,
    ) {
        let m = modes(chunk, batch, every, micro, read);
        let out = rt().block_on(m.assert_agree(|sink| {
            Pipeline::new("p", IterSource::new(input.clone()), stateless(), sink)
        }));
        prop_assert_eq!(out, stateless_reference(&input));
    }

    #[test]
    fn keyed_final_table_is_the_same_under_every_executor(
        input in records(),
        chunk in 1usize..20, batch in 1usize..20, every in 1u64..30,
        micro in 1usize..30, read in 1usize..10,
    ) {
        let m = modes(chunk, batch, every, micro, read);
        let table = rt().block_on(m.assert_agree_upsert(|sink| {
            Pipeline::new("p", IterSource::new(input.clone()), keyed(), sink)
        }));
        prop_assert_eq!(table, keyed_reference(&input));
    }

    /// Stop cleanly at a checkpoint (a `Once` micro-batch of `first` records), resume
    /// under the stream executor: the same output as one uninterrupted run.
    #[test]
    fn interrupted_at_a_checkpoint_and_resumed_equals_uninterrupted(
        input in records(), first in 1usize..60, batch in 1usize..10,
    ) {
        let rt = rt();
        let store = MemoryCheckpointStore::new();
        let (sink, out) = CollectSink::new();
        let (usink, table) = UpsertSink::new();
        let pipeline = |sink| Pipeline::new("s", IterSource::new(input.clone()), stateless(), sink)
            .with_checkpoint_store(store.clone());
        let kpipeline = |sink| Pipeline::new("k", IterSource::new(input.clone()), keyed(), sink)
            .with_checkpoint_store(store.clone());
        let once = MicroBatchExecutor::new(Trigger::Once).max_records_per_batch(first);
        let stream = StreamExecutor::new().max_batch(batch);
        rt.block_on(async {
            once.run(pipeline(sink)).await.unwrap();
            stream.run(pipeline(CollectSink::resume(&out))).await.unwrap();
            once.run(kpipeline(usink)).await.unwrap();
            stream.run(kpipeline(UpsertSink::resume(&table))).await.unwrap();
        });
        let mut got = out.items();
        got.sort();
        prop_assert_eq!(got, stateless_reference(&input));
        prop_assert_eq!(table.snapshot(), keyed_reference(&input));
    }

    /// Crash (a source failure) after `crash_at` records, then restart from the
    /// checkpoint: with a transactional sink, the output is exactly the uninterrupted
    /// output (nothing lost, nothing duplicated); with an upsert sink, the final keyed
    /// table is exact.
    #[test]
    fn crash_and_resume_loses_nothing_and_duplicates_nothing(
        input in records(), crash_at in 0usize..120, batch in 1usize..10, every in 1u64..25,
        micro in proptest::bool::ANY,
    ) {
        let crash_at = crash_at.min(input.len());
        let crashing = || ScriptedSource::new(vec![
            Step::Records(input[..crash_at].to_vec()),
            Step::Fail { message: "crash".into(), retryable: false },
            Step::Records(input[crash_at..].to_vec()),
        ]);
        let healthy = || ScriptedSource::from_records(input.clone());
        let rt = rt();
        let store = MemoryCheckpointStore::new();
        let (tx, committed) = TxCollectSink::new();
        let (usink, table) = UpsertSink::new();
        let stream = StreamExecutor::new().max_batch(batch).checkpoint_every_records(every);
        let mb = MicroBatchExecutor::new(Trigger::AvailableNow)
            .max_records_per_batch(every as usize)
            .read_chunk(batch);
        rt.block_on(async {
            macro_rules! run { ($p:expr) => {
                if micro { mb.run($p).await } else { stream.run($p).await }
            } }
            let p = Pipeline::new("s", crashing(), stateless(), tx).with_checkpoint_store(store.clone());
            assert!(run!(p).is_err());
            let p = Pipeline::new("s", healthy(), stateless(), TxCollectSink::resume(&committed))
                .with_checkpoint_store(store.clone());
            run!(p).unwrap();

            let p = Pipeline::new("k", crashing(), keyed(), usink).with_checkpoint_store(store.clone());
            assert!(run!(p).is_err());
            let p = Pipeline::new("k", healthy(), keyed(), UpsertSink::resume(&table))
                .with_checkpoint_store(store.clone());
            run!(p).unwrap();
        });
        let mut got = committed.committed();
        got.sort();
        prop_assert_eq!(got, stateless_reference(&input));
        prop_assert_eq!(table.snapshot(), keyed_reference(&input));
    }
}
