//! Lambda architecture: the serving layer switches from the speed layer to the batch
//! layer when a period's batch run completes; duplicate batch runs are skipped;
//! speed counters expire.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use batchstream::adapters::IterSource;
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::lambda::{
    Answer, Lambda, Layer, MemoryServingView, MemorySpeedStore, ServingView, SpeedStore,
};
use batchstream::testing::{ScriptedSource, Step};
use batchstream::{BatchExecutor, Outcome, Pipeline, StreamExecutor};

mod support;
use support::lambda::{View, batch_pipeline, day1, speed_logic};

type Counts = Lambda<String, String, u64>;

fn s(x: &str) -> String {
    x.to_string()
}

#[tokio::test(start_paused = true)]
async fn answer_switches_from_speed_to_batch_when_the_period_completes() {
    let view = MemoryServingView::new();
    let lambda: Counts = Lambda::new(
        view.clone(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );

    // The speed layer has seen part of the day, with one record delivered twice (an
    // at-least-once replay): its answer is approximate.
    let mut seen = day1()[..4].to_vec();
    seen.push(("home", "d1"));
    StreamExecutor::new()
        .max_batch(2)
        .run(Pipeline::new(
            "views-speed",
            IterSource::new(seen),
            speed_logic(),
            lambda.speed_sink(),
        ))
        .await
        .unwrap();
    let before = lambda.query(&s("home"), &s("d1")).await.unwrap();
    assert_eq!(
        before,
        Answer {
            value: Some(4),
            source: Layer::Speed
        }
    );
    assert_eq!(
        lambda.query(&s("faq"), &s("d1")).await.unwrap(),
        Answer {
            value: None,
            source: Layer::Speed
        },
        "the speed layer has not seen `faq` yet"
    );

    // While the batch run for the day is in progress, the speed layer still answers.
    let store = MemoryCheckpointStore::new();
    let slow = ScriptedSource::new([
        Step::Records(day1()[..3].to_vec()),
        Step::Wait(Duration::from_secs(3600)),
        Step::Records(day1()[3..].to_vec()),
    ]);
    let metrics = Arc::new(OnceLock::new());
    let run = lambda.run_batch(BatchExecutor::new().chunk_size(2), s("d1"), {
        let (metrics, store) = (Arc::clone(&metrics), store.clone());
        move |sink| {
            let p = batch_pipeline(slow, sink, store.clone());
            metrics.set(p.metrics()).unwrap();
            p
        }
    });
    let metrics = metrics.get().expect("the pipeline is built at once");
    let during = async {
        // Let the run read its first records and reach the wait (time is paused and
        // this future never idles, so the clock does not move meanwhile).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.snapshot().records_in, 3, "halfway through the day");
        assert!(!view.is_complete(&s("d1")));
        lambda.query(&s("home"), &s("d1")).await.unwrap()
    };
    let (report, during) = tokio::join!(run, during);
    assert_eq!(
        during,
        Answer {
            value: Some(4),
            source: Layer::Speed
        }
    );
    let report = report.unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.records_read, 6);
    assert!(view.is_complete(&s("d1")));
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        Answer {
            value: Some(3),
            source: Layer::Batch
        }
    );
    assert_eq!(
        lambda.query(&s("faq"), &s("d1")).await.unwrap(),
        Answer {
            value: Some(1),
            source: Layer::Batch
        }
    );
    assert_eq!(
        lambda.query(&s("search"), &s("d1")).await.unwrap(),
        Answer {
            value: None,
            source: Layer::Batch
        },
        "a complete period answers from the batch view even for an unseen key"
    );
    // Another period is still served by the speed layer.
    bump(&lambda, vec![(s("home"), s("d2"), 5)]).await;
    assert_eq!(
        lambda.query(&s("home"), &s("d2")).await.unwrap(),
        Answer {
            value: Some(5),
            source: Layer::Speed
        }
    );
}

/// Writes increments through a speed sink, as the speed pipeline would.
async fn bump(lambda: &Counts, deltas: Vec<(String, String, u64)>) {
    use batchstream::Sink;
    let mut sink = lambda.speed_sink();
    sink.write(deltas).await.unwrap();
    sink.flush().await.unwrap();
}

#[tokio::test]
async fn a_duplicate_batch_run_is_skipped_and_leaves_the_view_unchanged() {
    let view = MemoryServingView::new();
    let lambda: Counts = Lambda::new(
        view.clone(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );
    let store = MemoryCheckpointStore::new();

    let first = lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(day1()), sink, store.clone())
        })
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Completed);
    let rows = view.rows(&s("d1"));
    assert_eq!(
        rows,
        BTreeMap::from([(s("cart"), 2), (s("faq"), 1), (s("home"), 3)])
    );

    // The same period again, over different input (e.g. a re-delivered file with
    // extra lines): skipped, nothing read, nothing written.
    let mut more = day1();
    more.extend([("home", "d1"), ("new", "d1")]);
    let second = lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(more.clone()), sink, store.clone())
        })
        .await
        .unwrap();
    assert!(
        matches!(second.outcome, Outcome::Skipped { ref reason } if reason.contains("d1")),
        "{second}"
    );
    assert_eq!(second.records_read, 0);
    assert_eq!(view.rows(&s("d1")), rows);
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        Answer {
            value: Some(3),
            source: Layer::Batch
        }
    );

    // Another period is a different run key: it runs.
    let d2 = lambda
        .run_batch(BatchExecutor::new(), s("d2"), |sink| {
            batch_pipeline(IterSource::new(vec![("home", "d2")]), sink, store.clone())
        })
        .await
        .unwrap();
    assert_eq!(d2.outcome, Outcome::Completed);
    assert_eq!(view.rows(&s("d2")), BTreeMap::from([(s("home"), 1)]));
    assert_eq!(view.rows(&s("d1")), rows);
}

#[tokio::test]
async fn a_failed_batch_run_does_not_complete_the_period() {
    let view = MemoryServingView::new();
    let lambda: Counts = Lambda::new(
        view.clone(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );
    let store = MemoryCheckpointStore::new();
    let failing = ScriptedSource::new([
        Step::Records(day1()[..2].to_vec()),
        Step::Fail {
            message: "disk gone".into(),
            retryable: false,
        },
    ]);
    let err = lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(failing, sink, store.clone())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk gone"), "{err}");
    assert!(!view.is_complete(&s("d1")));
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap().source,
        Layer::Speed
    );

    // Not marked complete, so the next run is not skipped.
    let retry = lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(day1()), sink, store.clone())
        })
        .await
        .unwrap();
    assert_eq!(retry.outcome, Outcome::Completed);
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        Answer {
            value: Some(3),
            source: Layer::Batch
        }
    );
}

#[tokio::test(start_paused = true)]
async fn speed_counters_expire() {
    let speed = MemorySpeedStore::new(Duration::from_secs(600));
    let lambda: Counts = Lambda::new(MemoryServingView::new(), speed.clone());
    bump(&lambda, vec![(s("home"), s("d1"), 2)]).await;

    tokio::time::advance(Duration::from_secs(300)).await;
    // A later increment adds to the counter but does not extend its life.
    bump(
        &lambda,
        vec![(s("home"), s("d1"), 3), (s("cart"), s("d1"), 1)],
    )
    .await;
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        Answer {
            value: Some(5),
            source: Layer::Speed
        }
    );

    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        Answer {
            value: None,
            source: Layer::Speed
        },
        "expired 600 s after its first increment"
    );
    assert_eq!(
        speed.get(&s("cart"), &s("d1")).await.unwrap(),
        Some(1),
        "created later"
    );

    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(speed.get(&s("cart"), &s("d1")).await.unwrap(), None);
    assert_eq!(
        speed.len(),
        2,
        "expired counters are dropped on the next write"
    );
    speed.add(vec![(s("faq"), s("d2"), 1)]).await.unwrap();
    assert_eq!(speed.len(), 1);
    assert_eq!(speed.get(&s("faq"), &s("d2")).await.unwrap(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn the_speed_pipeline_counts_as_records_arrive() {
    let lambda: Counts = Lambda::new(
        MemoryServingView::new(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );
    let source = ScriptedSource::new([
        Step::Records(vec![("home", "d1"), ("home", "d1")]),
        Step::Wait(Duration::from_secs(10)),
        Step::Records(vec![("home", "d1")]),
    ])
    .unbounded();
    let run = tokio::spawn(StreamExecutor::new().run(Pipeline::new(
        "speed",
        source,
        speed_logic(),
        lambda.speed_sink(),
    )));
    // Let the first batch through, then check before the second arrives.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap().value,
        Some(2)
    );
    run.await.unwrap().unwrap();
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap().value,
        Some(3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_forced_rerun_replaces_the_period_whole_once_it_completes() {
    let view = MemoryServingView::new();
    let lambda: Counts = Lambda::new(
        view.clone(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );
    let store = MemoryCheckpointStore::new();
    lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(day1()), sink, store.clone())
        })
        .await
        .unwrap();

    // A correction: the `faq` views were bots and are removed; one `home` was missed.
    let mut corrected: Vec<View> = day1().into_iter().filter(|v| v.0 != "faq").collect();
    corrected.push(("home", "d1"));
    let source = ScriptedSource::new([
        Step::Records(corrected[..3].to_vec()),
        Step::Wait(Duration::from_secs(600)),
        Step::Records(corrected[3..].to_vec()),
    ]);
    let rerun = lambda.run_batch(BatchExecutor::new().force(true), s("d1"), |sink| {
        batch_pipeline(source, sink, store.clone())
    });
    let during = async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        (
            lambda.query(&s("home"), &s("d1")).await.unwrap(),
            lambda.query(&s("faq"), &s("d1")).await.unwrap(),
        )
    };
    let (report, (home_during, faq_during)) = tokio::join!(rerun, during);
    assert_eq!(
        (home_during, faq_during),
        (
            Answer {
                value: Some(3),
                source: Layer::Batch
            },
            Answer {
                value: Some(1),
                source: Layer::Batch
            }
        ),
        "the old result serves until the rerun completes"
    );
    assert_eq!(report.unwrap().outcome, Outcome::Completed);
    assert_eq!(
        view.rows(&s("d1")),
        BTreeMap::from([(s("cart"), 2), (s("home"), 4)]),
        "`faq` is gone, not left over from the first run"
    );
    assert_eq!(
        lambda.query(&s("faq"), &s("d1")).await.unwrap(),
        Answer {
            value: None,
            source: Layer::Batch
        }
    );
}

#[tokio::test]
async fn rows_left_by_a_failed_run_do_not_leak_into_the_next() {
    let view = MemoryServingView::new();
    let lambda: Counts = Lambda::new(
        view.clone(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );
    // A run that staged rows and then failed before completing.
    view.stage(&s("d1"), vec![(s("ghost"), 9), (s("home"), 99)])
        .await
        .unwrap();
    assert!(!view.is_complete(&s("d1")));

    lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(day1()), sink, MemoryCheckpointStore::new())
        })
        .await
        .unwrap();
    assert_eq!(
        view.rows(&s("d1")),
        BTreeMap::from([(s("cart"), 2), (s("faq"), 1), (s("home"), 3)])
    );
}

#[tokio::test]
async fn a_crash_between_checkpoint_and_publish_is_repaired_by_the_skipped_rerun() {
    let view = MemoryServingView::new();
    let lambda: Counts = Lambda::new(
        view.clone(),
        MemorySpeedStore::new(Duration::from_secs(3600)),
    );
    let store = MemoryCheckpointStore::new();
    // The run completed and recorded its run key, but the process died before
    // publishing: the rows are staged only.
    let report = BatchExecutor::new()
        .run_key("d1")
        .run(batch_pipeline(
            IterSource::new(day1()),
            lambda.batch_sink(s("d1")),
            store.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert!(!view.is_complete(&s("d1")));
    assert_eq!(view.staged_rows(&s("d1")).len(), 3);

    let again = lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(day1()), sink, store.clone())
        })
        .await
        .unwrap();
    assert!(again.is_skipped());
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        Answer {
            value: Some(3),
            source: Layer::Batch
        }
    );
}
