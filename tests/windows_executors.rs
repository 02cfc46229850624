//! Windows under the executors: the same final windows and the same late records
//! under batch, stream and micro-batch, whatever the batch sizes and arrival order
//! (within the watermark's allowance), and across a crash and restart.

use std::collections::BTreeMap;

use batchstream::adapters::{CollectSink, UpsertSink};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::event_time::EventTime;
use batchstream::testing::{Modes, ScriptedSource, Step};
use batchstream::transform::{self, Transform, TransformExt};
use batchstream::window::{OutputMode, Sum, Window, Windows};
use batchstream::{
    BatchExecutor, DeadLetter, ExecutorKind, MicroBatchExecutor, Pipeline, StreamExecutor, Trigger,
};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
struct Ev {
    id: u32,
    key: u8,
    secs: i64,
    amount: i64,
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

const DISORDER: i64 = 30;

/// Events in time order, then displaced by up to `DISORDER` seconds of event time.
fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0u8..4, 0i64..8, 1i64..50, 0i64..DISORDER), 0..90).prop_map(|v| {
        let mut t = 1_000i64;
        let mut evs: Vec<(i64, Ev)> = v
            .into_iter()
            .enumerate()
            .map(|(i, (key, step, amount, jitter))| {
                t += step;
                let ev = Ev {
                    id: i as u32,
                    key,
                    secs: t,
                    amount,
                };
                // Arrival order: sort by time + jitter (bounded disorder).
                (t + jitter, ev)
            })
            .collect();
        evs.sort_by_key(|(arrival, ev)| (*arrival, ev.id));
        evs.into_iter().map(|(_, ev)| ev).collect()
    })
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tumbling,
    Sliding,
    Session,
}

fn windows(kind: Kind) -> (Windows, OutputMode) {
    match kind {
        Kind::Tumbling => (
            Windows::tumbling(TimeDelta::seconds(10)),
            OutputMode::Update,
        ),
        Kind::Sliding => (
            Windows::sliding(TimeDelta::seconds(20), TimeDelta::seconds(5)),
            OutputMode::Update,
        ),
        // A session's window grows as records join, so update-mode rows of an early
        // shape would stay in an upsert table: compare final (append) rows.
        Kind::Session => (Windows::session(TimeDelta::seconds(6)), OutputMode::Append),
    }
}

type Row = ((u8, Window), i64);
/// Final windows and the ids of late records.
type Outcome = (BTreeMap<(u8, Window), i64>, Vec<u32>);

fn logic(kind: Kind, lateness: i64) -> impl Transform<In = Ev, Out = Row> + Send {
    let (w, mode) = windows(kind);
    transform::identity::<Ev>()
        .key_by(|e: &Ev| e.key)
        .window(w, |e: &Ev| at(e.secs))
        .allowed_lateness(TimeDelta::seconds(lateness))
        .output_mode(mode)
        .aggregate(Sum::of(|e: &Ev| e.amount))
        .map(|r| ((r.key, r.window), r.value))
}

/// Watermark = largest event time seen − `delay` seconds.
fn event_time(delay: i64) -> EventTime<Ev> {
    EventTime::new(|e: &Ev| at(e.secs)).bounded_out_of_orderness(TimeDelta::seconds(delay))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn modes(batch: usize) -> Modes {
    Modes {
        batch: BatchExecutor::new().chunk_size(batch),
        stream: StreamExecutor::new()
            .max_batch(batch + 2)
            .checkpoint_every_records(7),
        micro_batch: MicroBatchExecutor::new(Trigger::AvailableNow)
            .max_records_per_batch(batch + 5)
            .read_chunk(batch),
    }
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Tumbling),
        Just(Kind::Sliding),
        Just(Kind::Session)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Watermark delay plus allowed lateness cover the disorder: every executor gives
    /// the final windows of the batch executor over the sorted input, and nothing is
    /// late.
    #[test]
    fn executors_agree_with_the_sorted_batch_run(
        evs in events(), kind in kinds(), batch in 1usize..9, delay in 0i64..=DISORDER,
    ) {
        let lateness = DISORDER - delay;
        let rt = rt();
        let mut sorted = evs.clone();
        sorted.sort_by_key(|e| (e.secs, e.id));
        let (sink, reference) = UpsertSink::new();
        let p = Pipeline::new("w", ScriptedSource::from_records(sorted), logic(kind, lateness), sink)
            .with_event_time(event_time(delay));
        rt.block_on(BatchExecutor::new().run(p)).unwrap();

        let (late_sink, late) = CollectSink::<DeadLetter>::new();
        let mut late_sink = Some(late_sink);
        let table = rt.block_on(modes(batch).assert_agree_upsert(|sink| {
            let p = Pipeline::new("w", ScriptedSource::from_records(evs.clone()), logic(kind, lateness), sink)
                .with_event_time(event_time(delay));
            match late_sink.take() {
                Some(l) => p.with_late_sink(l),
                None => p,
            }
        }));
        prop_assert_eq!(table, reference.snapshot());
        prop_assert!(late.is_empty(), "late: {:?}", late.items());
    }

    /// Watermark delay plus lateness below the disorder: some records are late, and
    /// every executor reports the same late records and the same final windows.
    #[test]
    fn executors_agree_on_late_records(
        evs in events(), kind in kinds(), batch in 1usize..9, delay in 0i64..10, lateness in 0i64..10,
    ) {
        let rt = rt();
        let m = modes(batch);
        let mut seen: Option<Outcome> = None;
        for k in [ExecutorKind::Batch, ExecutorKind::Stream, ExecutorKind::MicroBatch] {
            let (sink, table) = UpsertSink::new();
            let (late_sink, late) = CollectSink::<DeadLetter>::new();
            let p = Pipeline::new("w", ScriptedSource::from_records(evs.clone()), logic(kind, lateness), sink)
                .with_event_time(event_time(delay))
                .with_late_sink(late_sink);
            let report = rt.block_on(m.run(k, p)).unwrap();
            let mut late_ids: Vec<u32> = late.items().iter()
                .map(|l| l.record.as_ref().unwrap()["id"].as_u64().unwrap() as u32)
                .collect();
            late_ids.sort();
            prop_assert_eq!(report.late as usize, late_ids.len());
            let now = (table.snapshot(), late_ids);
            if let Some(first) = &seen {
                prop_assert_eq!(first, &now, "{} differs", k);
            }
            seen = Some(now);
        }
    }

    /// A crash (source failure) at a random point, then a restart from the checkpoint:
    /// the final windows equal an uninterrupted run's (upserts make the replay exact).
    #[test]
    fn crash_and_restart_gives_the_uninterrupted_windows(
        evs in events(), kind in kinds(), crash_at in 0usize..90, every in 1u64..20, micro in any::<bool>(),
    ) {
        let crash_at = crash_at.min(evs.len());
        let rt = rt();
        let (sink, reference) = UpsertSink::new();
        let p = Pipeline::new("w", ScriptedSource::from_records(evs.clone()), logic(kind, 0), sink)
            .with_event_time(event_time(DISORDER));
        rt.block_on(BatchExecutor::new().run(p)).unwrap();

        let store = MemoryCheckpointStore::new();
        let (sink, table) = UpsertSink::new();
        let crashing = ScriptedSource::new(vec![
            Step::Records(evs[..crash_at].to_vec()),
            Step::Fail { message: "crash".into(), retryable: false },
            Step::Records(evs[crash_at..].to_vec()),
        ]);
        let stream = StreamExecutor::new().max_batch(3).checkpoint_every_records(every);
        let mb = MicroBatchExecutor::new(Trigger::AvailableNow).max_records_per_batch(every as usize).read_chunk(3);
        rt.block_on(async {
            let p = Pipeline::new("w", crashing, logic(kind, 0), sink)
                .with_event_time(event_time(DISORDER))
                .with_checkpoint_store(store.clone());
            let r = if micro { mb.run(p).await } else { stream.run(p).await };
            assert!(r.is_err());
            let p = Pipeline::new("w", ScriptedSource::from_records(evs.clone()), logic(kind, 0),
                                  UpsertSink::resume(&table))
                .with_event_time(event_time(DISORDER))
                .with_checkpoint_store(store.clone());
            if micro { mb.run(p).await } else { stream.run(p).await }.unwrap();
        });
        prop_assert_eq!(table.snapshot(), reference.snapshot());
    }
}
