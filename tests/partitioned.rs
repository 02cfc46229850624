//! The partitioned (multi-lane) source adapter under the real executors: exact resume
//! per lane, lanes read concurrently, per-lane watermarks, and executor agreement.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchstream::adapters::partitioned::{Partitioned, PartitionedSource};
use batchstream::adapters::{CollectSink, IterSource};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::event_time::EventTime;
use batchstream::testing::{Modes, ScriptedSource, Step, TxCollectSink};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    DeadLetter, Emit, ErrorKind, ExecutorKind, Location, Pipeline, RecordError, RecordErrorKind,
    Source, StreamExecutor, Transform,
};
use chrono::{DateTime, TimeDelta, Utc};

/// Lane `lane`'s records: `lane * 1000 + i` for `i` in `0..n`.
fn lane_records(lane: u64, n: u64) -> Vec<u64> {
    (0..n).map(|i| lane * 1000 + i).collect()
}

const LANE_SIZES: [u64; 3] = [23, 9, 31];

/// Three lanes; lane 1 fails (permanently) after its first 5 records when `fail`.
fn lanes(fail: bool) -> Vec<ScriptedSource<u64>> {
    LANE_SIZES
        .iter()
        .enumerate()
        .map(|(lane, &n)| {
            let lane = lane as u64;
            let all = lane_records(lane, n);
            if lane == 1 && fail {
                ScriptedSource::new([
                    Step::Records(all[..5].to_vec()),
                    Step::Fail {
                        message: "disk unplugged".into(),
                        retryable: false,
                    },
                    Step::Records(all[5..].to_vec()),
                ])
            } else {
                ScriptedSource::from_records(all)
            }
        })
        .collect()
}

fn all_records() -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = (0..3u64)
        .flat_map(|lane| {
            lane_records(lane, LANE_SIZES[lane as usize])
                .into_iter()
                .map(move |r| (lane, r))
        })
        .collect();
    all.sort();
    all
}

fn pairs() -> impl Transform<In = Partitioned<u64>, Out = (u64, u64)> {
    transform::identity::<Partitioned<u64>>().map(|r| (r.partition, r.record))
}

#[tokio::test]
async fn each_lane_resumes_exactly_after_a_restart() {
    for kind in [ExecutorKind::Stream, ExecutorKind::MicroBatch] {
        let modes = Modes::small_batches();
        let store = MemoryCheckpointStore::new();
        let (sink, out) = TxCollectSink::new();
        let first = Pipeline::new("lanes", PartitionedSource::new(lanes(true)), pairs(), sink)
            .with_checkpoint_store(store.clone());
        let err = modes.run(kind, first).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Source, "{kind}: {err}");
        assert!(
            err.to_string().contains("lane 1: disk unplugged"),
            "{kind}: {err}"
        );

        // The checkpoint holds one position per lane that produced something, and lane 1
        // never got past its first 5 records.
        let ck = store
            .get("lanes")
            .expect("a checkpoint was saved before the failure");
        let pos: std::collections::BTreeMap<u64, u64> =
            serde_json::from_value(ck.source_position.clone().unwrap()).unwrap();
        assert!(pos.get(&1).is_some_and(|p| *p <= 5), "{kind}: {pos:?}");
        let committed_before = out.committed();
        for (lane, &n) in LANE_SIZES.iter().enumerate() {
            let in_output = committed_before
                .iter()
                .filter(|(l, _)| *l == lane as u64)
                .count() as u64;
            assert_eq!(
                pos.get(&(lane as u64)).copied().unwrap_or(0),
                in_output,
                "{kind}: lane {lane}'s checkpointed position is what reached the sink"
            );
            assert!(in_output <= n);
        }

        // Restart with the same lanes (the fault is gone), from the same checkpoint.
        let second = Pipeline::new(
            "lanes",
            PartitionedSource::new(lanes(false)),
            pairs(),
            TxCollectSink::resume(&out),
        )
        .with_checkpoint_store(store.clone());
        let report = modes.run(kind, second).await.unwrap();
        assert_eq!(report.resumed_from_epoch, Some(ck.epoch), "{kind}");

        // Exactly every record once: nothing lost, nothing duplicated.
        let mut got = out.committed();
        got.sort();
        assert_eq!(got, all_records(), "{kind}");
        let resumed_reads = report.records_read;
        assert_eq!(
            resumed_reads as usize,
            all_records().len() - committed_before.len(),
            "{kind}: the second run read only what the first did not checkpoint"
        );
    }
}

#[tokio::test]
async fn ack_reaches_every_lane_with_its_own_position() {
    let lanes = lanes(false);
    let handles = lanes.clone(); // clones share the acked list
    let (sink, _out) = CollectSink::new();
    let p = Pipeline::new("acks", PartitionedSource::new(lanes), pairs(), sink)
        .with_checkpoint_store(MemoryCheckpointStore::new());
    StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(6)
        .run(p)
        .await
        .unwrap();
    for (lane, h) in handles.iter().enumerate() {
        let acked = h.acked();
        assert_eq!(
            acked.last().copied(),
            Some(LANE_SIZES[lane]),
            "lane {lane} is acked up to its end: {acked:?}"
        );
        assert!(
            acked.windows(2).all(|w| w[0] <= w[1]),
            "lane {lane}: {acked:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_lane_does_not_block_a_fast_one() {
    // Lane 0 has nothing for an hour (virtual time); lane 1 has 40 records now.
    let slow = ScriptedSource::new([
        Step::Wait(Duration::from_secs(3600)),
        Step::Records(vec![7]),
    ]);
    let fast = ScriptedSource::from_records((100..140).collect());
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new("slow", PartitionedSource::new([slow, fast]), pairs(), sink);
    StreamExecutor::new().max_batch(3).run(p).await.unwrap();
    let got = out.items();
    assert_eq!(got.len(), 41);
    // Everything of the fast lane came out before the slow lane's only record.
    assert!(got[..40].iter().all(|(lane, _)| *lane == 1), "{got:?}");
    assert_eq!(got[40], (0, 7));
}

#[tokio::test(start_paused = true)]
async fn a_lane_that_never_ends_does_not_hold_back_the_others() {
    // An unbounded lane that stays silent while the other lane delivers everything.
    let (_tx, rx) = tokio::sync::mpsc::channel::<u64>(1);
    let silent = batchstream::BoxSource::new(batchstream::adapters::ChannelSource::new(rx));
    let busy = batchstream::BoxSource::new(ScriptedSource::from_records((0..25).collect()));
    let source = PartitionedSource::new([silent, busy]);
    assert_eq!(source.boundedness(), batchstream::Boundedness::Unbounded);
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new("silent", source, pairs(), sink);
    let done = {
        let out = out.clone();
        async move {
            while out.len() < 25 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let report = StreamExecutor::new()
        .max_batch(4)
        .run_until(p, done)
        .await
        .unwrap();
    assert_eq!(report.outcome, batchstream::Outcome::Stopped);
    let mut got = out.items();
    got.sort();
    assert_eq!(got, (0..25).map(|r| (1, r)).collect::<Vec<_>>());
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reading {
    ts: DateTime<Utc>,
    value: u32,
}

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(minute)
}

/// Passes records through and logs every watermark it is told.
struct WatermarkLog {
    seen: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl Transform for WatermarkLog {
    type In = Partitioned<Reading>;
    type Out = (u64, u32);
    fn process<E: Emit<(u64, u32)>>(&mut self, item: Partitioned<Reading>, out: &mut E) {
        out.emit((item.partition, item.record.value));
    }
    fn on_watermark<E: Emit<(u64, u32)>>(&mut self, watermark: DateTime<Utc>, _out: &mut E) {
        self.seen.lock().unwrap().push(watermark);
    }
}

/// Lane 0's clock runs to minute 60, lane 1's only to minute 20.
fn reading_lanes() -> Vec<IterSource<std::vec::IntoIter<Reading>>> {
    let lane = |last: i64| {
        IterSource::new(
            (0..=last)
                .map(|m| Reading {
                    ts: at(m),
                    value: m as u32,
                })
                .collect::<Vec<_>>(),
        )
    };
    vec![lane(60), lane(20)]
}

/// Runs the readings under `kind` and returns the watermarks seen before the final one.
async fn watermarks(kind: ExecutorKind, partitioned: bool) -> Vec<DateTime<Utc>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut et = EventTime::new(|r: &Partitioned<Reading>| r.record.ts);
    if partitioned {
        et = et.partitioned_by(Partitioned::partition);
    }
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "wm",
        PartitionedSource::new(reading_lanes()),
        WatermarkLog {
            seen: Arc::clone(&seen),
        },
        sink,
    )
    .with_event_time(et);
    let report = Modes::small_batches().run(kind, p).await.unwrap();
    assert_eq!(out.len(), 61 + 21, "{kind}");
    assert_eq!(report.watermark, Some(DateTime::<Utc>::MAX_UTC), "{kind}");
    let mut seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.pop(),
        Some(DateTime::<Utc>::MAX_UTC),
        "{kind}: ends at MAX"
    );
    seen
}

#[tokio::test]
async fn the_watermark_is_the_minimum_over_lanes() {
    for kind in [
        ExecutorKind::Batch,
        ExecutorKind::Stream,
        ExecutorKind::MicroBatch,
    ] {
        let seen = watermarks(kind, true).await;
        // Lane 1 never gets past minute 20, so neither does the pipeline's watermark,
        // although lane 0 reaches minute 60; and it does reach minute 20.
        assert!(seen.iter().all(|w| *w <= at(20)), "{kind}: {seen:?}");
        assert_eq!(seen.last(), Some(&at(20)), "{kind}: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{kind}: {seen:?}");

        // Without per-lane watermarks, lane 0 alone drives it to minute 60.
        let unpartitioned = watermarks(kind, false).await;
        assert_eq!(unpartitioned.last(), Some(&at(60)), "{kind}");
    }
}

#[tokio::test]
async fn all_three_executors_agree() {
    let data: Vec<Vec<u64>> = (0..4u64).map(|l| lane_records(l, 10 + 7 * l)).collect();
    let got = Modes::small_batches()
        .assert_agree(|sink| {
            let lanes: Vec<_> = data.iter().map(|d| IterSource::new(d.clone())).collect();
            Pipeline::new(
                "agree",
                PartitionedSource::new(lanes),
                pairs().filter(|(_, r)| r % 3 != 0),
                sink,
            )
        })
        .await;
    let mut expected: Vec<(u64, u64)> = data
        .iter()
        .enumerate()
        .flat_map(|(l, d)| d.iter().map(move |r| (l as u64, *r)))
        .filter(|(_, r)| r % 3 != 0)
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_checkpoint_naming_an_unknown_lane_is_refused() {
    let mut source = PartitionedSource::with_ids([(3, IterSource::new(0..5u32))]).unwrap();
    let err = source
        .seek([(3, 2), (8, 1)].into_iter().collect())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State, "{err}");
    assert!(err.to_string().contains("[8]"), "{err}");
    assert!(err.to_string().contains("[3]"), "{err}");

    let dup =
        PartitionedSource::with_ids([(1, IterSource::new(0..1u32)), (1, IterSource::new(0..1))]);
    assert_eq!(dup.unwrap_err().kind(), ErrorKind::Config);
}

#[tokio::test]
async fn seek_restores_each_lane_and_the_position_keeps_quiet_lanes() {
    let mut source = PartitionedSource::with_ids([
        (10, IterSource::new(0..4u32)),
        (20, IterSource::new(100..104u32)),
    ])
    .unwrap();
    source
        .seek([(10, 4), (20, 1)].into_iter().collect())
        .await
        .unwrap();
    let batch = source.next_batch(10).await.unwrap().unwrap();
    // Lane 10 is at its end; lane 20 resumes after its first record.
    let records: Vec<u32> = batch.records.iter().map(|r| r.record).collect();
    assert!(batch.records.iter().all(|r| r.partition == 20));
    assert_eq!(records, vec![101, 102, 103]);
    // Lane 10 produced nothing since the restart, but keeps its checkpointed position.
    assert_eq!(batch.position, [(10, 4), (20, 4)].into_iter().collect());
    assert!(source.next_batch(10).await.unwrap().is_none());
}

#[tokio::test]
async fn rejected_input_names_its_lane() {
    let letter = DeadLetter::unparsed(
        RecordError::new(RecordErrorKind::Parse, "parse", "bad", Location::default()),
        "{oops",
    );
    let lane = ScriptedSource::<u64>::new([Step::Rejected(vec![letter])]);
    let mut source = PartitionedSource::with_ids([(5, lane)]).unwrap();
    let batch = source.next_batch(10).await.unwrap().unwrap();
    assert_eq!(batch.rejected.len(), 1);
    assert_eq!(
        batch.rejected[0].error.location.partition.as_deref(),
        Some("5")
    );
}
