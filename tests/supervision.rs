//! Supervision and the dead-letter limit: restarts resume from the checkpoint, the
//! budget ends a crash loop, a poison record never loops, too many dead letters stop
//! the run.

use std::time::Duration;

use batchstream::adapters::CollectSink;
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::supervisor::Supervisor;
use batchstream::testing::{ScriptedSource, Step, TxCollectSink};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, DeadLetter, DeadLetterLimit, Error, Pipeline, RecordErrorKind, StreamExecutor,
};

fn failing_after(records: Vec<u32>, at: usize, fail: bool) -> ScriptedSource<u32> {
    let mut steps = vec![Step::Records(records[..at].to_vec())];
    if fail {
        steps.push(Step::Fail {
            message: "connection reset".into(),
            retryable: true,
        });
    }
    steps.push(Step::Records(records[at..].to_vec()));
    ScriptedSource::new(steps)
}

#[tokio::test(start_paused = true)]
async fn restarts_resume_from_the_checkpoint_with_backoff_and_lose_nothing() {
    let store = MemoryCheckpointStore::new();
    let (_, out) = TxCollectSink::<u32>::new();
    let records: Vec<u32> = (0..20).collect();
    let mut attempts = Vec::new();
    let report = Supervisor::new()
        .initial_backoff(Duration::from_secs(1))
        .jitter(false)
        .run(
            StreamExecutor::new()
                .max_batch(3)
                .checkpoint_every_records(4),
            || {
                attempts.push(tokio::time::Instant::now());
                // Attempts 1 and 2 fail part-way (after 7 and 13 records of the input).
                let n = attempts.len();
                let source = failing_after(records.clone(), [7, 13, 0][n.min(3) - 1], n < 3);
                Ok(Pipeline::new(
                    "sup",
                    source,
                    transform::identity::<u32>(),
                    TxCollectSink::resume(&out),
                )
                .with_checkpoint_store(store.clone()))
            },
        )
        .await
        .unwrap();
    assert_eq!(report.restarts.len(), 2);
    assert_eq!(report.report.metrics.restarts, 2);
    assert!(report.restarts[0].error.contains("connection reset"));
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        vec![Duration::from_secs(1), Duration::from_secs(2)],
        "backoff doubles"
    );
    assert_eq!(out.committed(), records, "exactly once across restarts");
}

#[tokio::test(start_paused = true)]
async fn the_restart_budget_ends_a_crash_loop_with_the_last_error() {
    let mut calls = 0;
    let err = Supervisor::new()
        .max_restarts(3, Duration::from_secs(3600))
        .initial_backoff(Duration::from_millis(10))
        .run(StreamExecutor::new(), || {
            calls += 1;
            let (sink, _) = CollectSink::new();
            Ok(Pipeline::new(
                "loop",
                failing_after(vec![1, 2], 1, true),
                transform::identity::<u32>(),
                sink,
            ))
        })
        .await
        .unwrap_err();
    assert_eq!(calls, 4, "the first run and 3 restarts");
    match err {
        Error::RestartsExhausted {
            pipeline,
            restarts,
            last,
            ..
        } => {
            assert_eq!((pipeline.as_str(), restarts), ("loop", 3));
            assert!(
                matches!(
                    *last,
                    Error::Source {
                        retryable: true,
                        ..
                    }
                ),
                "{last}"
            );
        }
        other => panic!("expected RestartsExhausted, got {other}"),
    }
}

#[tokio::test]
async fn a_poison_record_without_a_dead_letter_sink_is_not_restarted() {
    let mut calls = 0;
    let err = Supervisor::new()
        .run(BatchExecutor::new(), || {
            calls += 1;
            let (sink, _) = CollectSink::new();
            Ok(Pipeline::new(
                "poison",
                ScriptedSource::from_records(vec!["1".to_string(), "x".into()]),
                transform::identity::<String>().try_map("parse", |s| s.parse::<u32>()),
                sink,
            ))
        })
        .await
        .unwrap_err();
    assert_eq!(calls, 1);
    assert!(!err.is_restartable());
    assert_eq!(
        err.as_record_error().unwrap().kind,
        RecordErrorKind::Transform
    );
}

#[tokio::test]
async fn too_many_dead_letters_stop_the_run_and_keep_those_within_the_limit() {
    let input: Vec<String> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                "bad".into()
            } else {
                i.to_string()
            }
        })
        .collect();
    let (sink, _) = CollectSink::new();
    let (dlq, letters) = CollectSink::<DeadLetter>::new();
    let p = Pipeline::new(
        "limit",
        ScriptedSource::from_records(input),
        transform::identity::<String>().try_map("parse", |s| s.parse::<u32>()),
        sink,
    )
    .with_dead_letter_sink(dlq)
    .with_dead_letter_limit(DeadLetterLimit::Count(3));
    let err = BatchExecutor::new()
        .chunk_size(100)
        .run(p)
        .await
        .unwrap_err();
    match err {
        Error::TooManyDeadLetters {
            dead_lettered,
            records_read,
            last,
            ..
        } => {
            assert_eq!((dead_lettered, records_read), (4, 20));
            assert_eq!(last.stage, "parse");
        }
        other => panic!("expected TooManyDeadLetters, got {other}"),
    }
    assert_eq!(
        letters.len(),
        3,
        "the letters within the limit were written"
    );
}

#[test]
fn a_fraction_limit_waits_for_enough_records() {
    let limit = DeadLetterLimit::Fraction {
        max: 0.1,
        after: 100,
    };
    assert!(!limit.exceeded(5, 10), "too few records to judge");
    assert!(!limit.exceeded(10, 100));
    assert!(limit.exceeded(11, 100));
}
