//! Supervision and the dead-letter limit: restarts resume from the checkpoint, the
//! budget ends a crash loop, a poison record never loops, too many dead letters stop
//! the run.

use std::time::Duration;

use batchstream::adapters::CollectSink;
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::retry::RetryPolicy;
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
        .backoff(
            RetryPolicy::new()
                .initial_backoff(Duration::from_secs(1))
                .jitter(false),
        )
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
        .backoff(RetryPolicy::new().initial_backoff(Duration::from_millis(10)))
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

mod retries {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use batchstream::adapters::CollectSink;
    use batchstream::checkpoint::{Checkpoint, CheckpointStore, MemoryCheckpointStore};
    use batchstream::retry::RetryPolicy;
    use batchstream::testing::{ScriptedSource, Step};
    use batchstream::transform;
    use batchstream::{CheckpointError, Error, Pipeline, StreamExecutor};

    fn flaky(failures: usize, retryable: bool) -> ScriptedSource<u32> {
        let mut steps = vec![Step::Records(vec![1, 2])];
        for _ in 0..failures {
            steps.push(Step::Fail {
                message: "timeout".into(),
                retryable,
            });
        }
        steps.push(Step::Records(vec![3]));
        ScriptedSource::new(steps)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_source_errors_are_retried_with_backoff_and_counted() {
        let (sink, out) = CollectSink::new();
        let p = Pipeline::new("r", flaky(2, true), transform::identity::<u32>(), sink).with_retry(
            RetryPolicy::new()
                .max_attempts(3)
                .initial_backoff(Duration::from_secs(1))
                .jitter(false),
        );
        let start = tokio::time::Instant::now();
        let r = StreamExecutor::new().run(p).await.unwrap();
        assert_eq!(out.items(), vec![1, 2, 3]);
        assert_eq!(r.metrics.retries, 2);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "1 s then 2 s of backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_max_attempts_and_permanent_errors_are_not_retried() {
        let policy = RetryPolicy::new()
            .max_attempts(3)
            .initial_backoff(Duration::from_millis(1));
        let (sink, _) = CollectSink::new();
        let p = Pipeline::new("r", flaky(3, true), transform::identity::<u32>(), sink)
            .with_retry(policy);
        let err = StreamExecutor::new().run(p).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");

        let (sink, _) = CollectSink::new();
        let p = Pipeline::new("r", flaky(1, false), transform::identity::<u32>(), sink)
            .with_retry(policy);
        let metrics = p.metrics();
        let err = StreamExecutor::new().run(p).await.unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(metrics.snapshot().retries, 0);
    }

    /// A store whose first `fail` saves fail with a transient i/o error.
    #[derive(Clone)]
    struct FlakyStore {
        inner: MemoryCheckpointStore,
        fail: Arc<AtomicU32>,
    }

    impl CheckpointStore for FlakyStore {
        async fn load(&self, id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
            self.inner.load(id).await
        }
        async fn save(&self, ck: &Checkpoint) -> Result<(), CheckpointError> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(CheckpointError::Io {
                    path: "flaky".into(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "slow disk"),
                });
            }
            self.inner.save(ck).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_checkpoint_save_failure_is_retried() {
        let store = FlakyStore {
            inner: MemoryCheckpointStore::new(),
            fail: Arc::new(AtomicU32::new(1)),
        };
        let (sink, _) = CollectSink::new();
        let p = Pipeline::new("ck", flaky(0, true), transform::identity::<u32>(), sink)
            .with_checkpoint_store(store.clone())
            .with_retry(RetryPolicy::new().initial_backoff(Duration::from_millis(5)));
        let r = StreamExecutor::new().run(p).await.unwrap();
        assert_eq!(r.metrics.retries, 1);
        assert_eq!(
            store.inner.get("ck").unwrap().source_position,
            Some(3.into())
        );

        // Without a policy the same failure ends the run with the typed error.
        let store = FlakyStore {
            inner: MemoryCheckpointStore::new(),
            fail: Arc::new(AtomicU32::new(1)),
        };
        let (sink, _) = CollectSink::new();
        let p = Pipeline::new("ck", flaky(0, true), transform::identity::<u32>(), sink)
            .with_checkpoint_store(store);
        let err = StreamExecutor::new().run(p).await.unwrap_err();
        assert!(
            matches!(err, Error::Checkpoint(CheckpointError::Io { .. })),
            "{err}"
        );
    }
}
