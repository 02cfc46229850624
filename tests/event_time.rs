//! Event time in the executors: per-record watermarks, timestamp errors, late
//! routing, the final watermark, and watermark state across a restart.

use batchstream::adapters::CollectSink;
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::event_time::EventTime;
use batchstream::testing::{Modes, ScriptedSource, Step};
use batchstream::transform::{Emit, TransformExt};
use batchstream::{
    DeadLetter, ExecutorKind, Location, MicroBatchExecutor, Pipeline, RecordError, RecordErrorKind,
    StreamExecutor, Transform, Trigger,
};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

/// Passes records at or after the watermark; rejects older ones as late; records
/// every watermark it is given.
#[derive(Default)]
struct LateFilter {
    watermark: Option<DateTime<Utc>>,
    seen: Vec<DateTime<Utc>>,
}

impl Transform for LateFilter {
    type In = i64;
    type Out = i64;
    fn process<E: Emit<i64>>(&mut self, ts: i64, out: &mut E) {
        if self.watermark.is_some_and(|w| t(ts) < w) {
            let err = RecordError::new(
                RecordErrorKind::Late,
                "late-filter",
                "late",
                Location::default(),
            );
            out.dead_letter(DeadLetter::rejected(err, Some(ts.into())));
        } else {
            out.emit(ts);
        }
    }
    fn on_watermark<E: Emit<i64>>(&mut self, wm: DateTime<Utc>, _out: &mut E) {
        assert!(
            self.watermark.is_none_or(|w| wm > w),
            "watermarks only move forward"
        );
        self.watermark = Some(wm);
        self.seen.push(wm);
    }
    fn snapshot(&self) -> batchstream::Result<serde_json::Value> {
        Ok(serde_json::to_value(self.watermark).unwrap())
    }
    fn restore(&mut self, state: serde_json::Value) -> batchstream::Result<()> {
        self.watermark = serde_json::from_value(state).unwrap();
        Ok(())
    }
}

fn event_time(delay: i64) -> EventTime<i64> {
    EventTime::new(|x: &i64| t(*x)).bounded_out_of_orderness(TimeDelta::seconds(delay))
}

/// The reference: record i is late iff its time is below max(earlier) - delay.
fn expected_late(input: &[i64], delay: i64) -> Vec<i64> {
    let mut max: Option<i64> = None;
    let mut late = Vec::new();
    for &x in input {
        if max.is_some_and(|m| x < m - delay) {
            late.push(x);
        }
        max = Some(max.map_or(x, |m| m.max(x)));
    }
    late.sort();
    late
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Lateness is decided record by record in source order, so every executor and
    /// every batch size reports exactly the same late records.
    #[test]
    fn late_records_do_not_depend_on_executor_or_batch_size(
        input in prop::collection::vec(0i64..200, 0..80),
        delay in 0i64..20,
        batch in 1usize..10,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let modes = Modes {
            batch: batchstream::BatchExecutor::new().chunk_size(batch),
            stream: StreamExecutor::new().max_batch(batch + 1),
            micro_batch: MicroBatchExecutor::new(Trigger::AvailableNow).max_records_per_batch(batch + 2).read_chunk(batch),
        };
        for kind in [ExecutorKind::Batch, ExecutorKind::Stream, ExecutorKind::MicroBatch] {
            let (sink, out) = CollectSink::new();
            let (late_sink, late) = CollectSink::<DeadLetter>::new();
            let p = Pipeline::new("et", ScriptedSource::from_records(input.clone()), LateFilter::default(), sink)
                .with_event_time(event_time(delay))
                .with_late_sink(late_sink);
            let report = rt.block_on(modes.run(kind, p)).unwrap();
            let mut late_ts: Vec<i64> = late.items().iter().map(|l| l.record.as_ref().unwrap().as_i64().unwrap()).collect();
            late_ts.sort();
            prop_assert_eq!(&late_ts, &expected_late(&input, delay), "{}", kind);
            prop_assert_eq!(report.late as usize, late_ts.len());
            prop_assert_eq!(out.len() + late_ts.len(), input.len(), "nothing vanishes");
            if !input.is_empty() {
                prop_assert_eq!(report.watermark, Some(DateTime::<Utc>::MAX_UTC));
            }
        }
    }
}

#[tokio::test]
async fn without_a_late_sink_late_records_are_counted() {
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "et",
        ScriptedSource::from_records(vec![10, 20, 5, 30]),
        LateFilter::default(),
        sink,
    )
    .with_event_time(event_time(0));
    let r = StreamExecutor::new().run(p).await.unwrap();
    assert_eq!(r.late, 1);
    assert_eq!(out.items(), vec![10, 20, 30]);
    assert!(r.to_string().contains("late 1"), "{r}");
}

#[tokio::test]
async fn a_record_without_a_timestamp_is_dead_lettered_with_field_and_position() {
    let (sink, out) = CollectSink::new();
    let (dlq, letters) = CollectSink::new();
    let source = ScriptedSource::from_records(vec!["3", "x", "9"]);
    let p = Pipeline::new(
        "ts",
        source,
        batchstream::transform::identity::<&str>(),
        sink,
    )
    .with_event_time(EventTime::try_new(|s: &&str| {
        s.parse::<i64>()
            .map(t)
            .map_err(|e| format!("field `ts` is not epoch seconds: {e}"))
    }))
    .with_dead_letter_sink(dlq);
    let r = batchstream::BatchExecutor::new().run(p).await.unwrap();
    assert_eq!(out.items(), vec!["3", "9"]);
    assert_eq!(r.dead_lettered, 1);
    let l: DeadLetter = letters.items().remove(0);
    assert_eq!(l.error.kind, RecordErrorKind::Timestamp);
    assert!(
        l.error.message.contains("field `ts`"),
        "{}",
        l.error.message
    );
    assert_eq!(l.error.location.index_in_batch, Some(1));
    assert_eq!(l.position, Some(serde_json::json!(3)));
}

#[tokio::test]
async fn partitions_hold_the_watermark_at_their_minimum_and_regressions_are_counted() {
    // (partition, seconds)
    let input = vec![(0u64, 100i64), (1, 50), (1, 60), (0, 200), (1, 70)];
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "parts",
        ScriptedSource::from_records(input),
        batchstream::transform::identity::<(u64, i64)>(),
        sink,
    )
    .with_event_time(EventTime::new(|r: &(u64, i64)| t(r.1)).partitioned_by(|r: &(u64, i64)| r.0));
    let r = StreamExecutor::new()
        .run_until(p, std::future::pending())
        .await
        .unwrap();
    // Partition 1 appearing at 50 would pull the watermark back from 100: every
    // combined value below 100 (min = 50, 60, 60, 70) is ignored and counted.
    assert_eq!(r.watermark_regressions, 4);
    assert_eq!(r.watermark, Some(DateTime::<Utc>::MAX_UTC));
}

#[tokio::test]
async fn watermark_state_survives_a_restart() {
    let store = MemoryCheckpointStore::new();
    let script = || {
        vec![
            Step::Records(vec![100i64, 50, 120]),
            Step::Records(vec![90, 130]),
        ]
    };
    // First run: one micro-batch of 3 records, then stop.
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "wm",
        ScriptedSource::new(script()),
        LateFilter::default(),
        sink,
    )
    .with_event_time(event_time(10))
    .with_checkpoint_store(store.clone());
    MicroBatchExecutor::new(Trigger::Once)
        .max_records_per_batch(3)
        .run(p)
        .await
        .unwrap();
    // Second run resumes: the watermark is already 110, so 90 is late at once.
    let (sink, out) = CollectSink::new();
    let (late_sink, late) = CollectSink::new();
    let p = Pipeline::new(
        "wm",
        ScriptedSource::new(script()),
        LateFilter::default(),
        sink,
    )
    .with_event_time(event_time(10))
    .with_checkpoint_store(store.clone())
    .with_late_sink(late_sink);
    let r = StreamExecutor::new().run(p).await.unwrap();
    assert_eq!(r.late, 1);
    assert_eq!(late.items()[0].record, Some(serde_json::json!(90)));
    assert_eq!(out.items(), vec![130]);
}

#[tokio::test]
async fn expected_partitions_hold_the_watermark_until_each_has_sent() {
    // Partition 1's backlog is read after partition 0's (as a broker may deliver it).
    let input = vec![(0u64, 100i64), (0, 200), (1, 50), (1, 150)];
    let run = |expect: bool| {
        let input = input.clone();
        async move {
            let (sink, out) = CollectSink::new();
            let mut et =
                EventTime::new(|r: &(u64, i64)| t(r.1)).partitioned_by(|r: &(u64, i64)| r.0);
            if expect {
                et = et.expect_partitions([0, 1]);
            }
            let p = Pipeline::new(
                "expected",
                ScriptedSource::from_records(input),
                batchstream::transform::identity::<(u64, i64)>()
                    .map(|r| r.1)
                    .then(LateFilter::default()),
                sink,
            )
            .with_event_time(et);
            let r = StreamExecutor::new().max_batch(1).run(p).await.unwrap();
            (r, out.items())
        }
    };
    // Without the declaration partition 1 counts only from its first record: the
    // watermark is at 200 by then, and its records are late.
    let (r, out) = run(false).await;
    assert_eq!(r.late, 2);
    assert_eq!(out, vec![100, 200]);
    // Declared, it holds the watermark back until it sends: nothing is late.
    let (r, out) = run(true).await;
    assert_eq!(r.late, 0, "{r}");
    assert_eq!(r.watermark_regressions, 0);
    assert_eq!(out, vec![100, 200, 50, 150]);
}
