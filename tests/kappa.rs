//! Kappa architecture: a replay with new logic fills a new version while the old one
//! serves; the pointer switches once the replay caught up; a failed replay changes
//! nothing.

use std::time::Duration;

use batchstream::kappa::{KappaView, VersionSink, track};
use batchstream::testing::{ScriptedSource, Step};
use batchstream::transform::{self, TransformExt};
use batchstream::{ErrorKind, Executor, Outcome, Pipeline, Source, StreamExecutor, Transform};

/// A payment: (customer, amount in cents; negative = refund).
type Payment = (String, i64);

fn log() -> Vec<Payment> {
    [
        ("ann", 30),
        ("bob", -5),
        ("ann", 12),
        ("bob", 20),
        ("cy", 7),
        ("ann", -2),
    ]
    .into_iter()
    .map(|(c, a)| (c.to_string(), a))
    .collect()
}

fn more() -> Vec<Payment> {
    vec![("cy".to_string(), 3), ("bob".to_string(), -1)]
}

/// Version 1 logic: net total per customer.
fn net() -> impl Transform<In = Payment, Out = (String, i64)> {
    transform::identity::<Payment>()
        .key_by(|p: &Payment| p.0.clone())
        .fold(0i64, |t: &mut i64, p: Payment| *t += p.1)
}

/// Version 2 logic: refunds ignored.
fn gross() -> impl Transform<In = Payment, Out = (String, i64)> {
    transform::identity::<Payment>()
        .filter(|p: &Payment| p.1 > 0)
        .key_by(|p: &Payment| p.0.clone())
        .fold(0i64, |t: &mut i64, p: Payment| *t += p.1)
}

fn pipeline<S, T>(
    id: &str,
    source: S,
    logic: T,
    sink: VersionSink<String, i64>,
) -> Pipeline<S, T, VersionSink<String, i64>>
where
    S: Source<Item = Payment>,
    T: Transform<In = Payment, Out = (String, i64)>,
{
    Pipeline::new(id, source, logic, sink)
}

fn exec() -> Executor {
    StreamExecutor::new().max_batch(2).into()
}

/// Serves version 1 (net totals over the whole log) and returns the view.
async fn deployed_v1() -> KappaView<String, i64> {
    let view = KappaView::new();
    view.replay(&exec(), |sink| {
        pipeline("v1", ScriptedSource::from_records(log()), net(), sink)
    })
    .await
    .unwrap();
    assert_eq!(view.current(), Some(1));
    view
}

fn k(s: &str) -> String {
    s.to_string()
}

#[tokio::test(start_paused = true)]
async fn bounded_replay_serves_the_old_version_until_it_completes() {
    let view = deployed_v1().await;
    assert_eq!(view.get(&k("bob")), Some(15));

    let replay_log = ScriptedSource::new([
        Step::Records(log()[..3].to_vec()),
        Step::Wait(Duration::from_secs(60)),
        Step::Records(log()[3..].to_vec()),
    ]);
    let replay = view.replay(&exec(), |sink| pipeline("v2", replay_log, gross(), sink));
    let during = async {
        // The replay processes its first records and waits (paused time does not
        // move while this future is busy).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let partial = view.version_snapshot(2).expect("version 2 is being filled");
        assert_eq!(partial.get("ann"), Some(&42), "the replay got this far");
        (view.current(), view.snapshot())
    };
    let (report, (current_during, served_during)) = tokio::join!(replay, during);
    assert_eq!(current_during, Some(1));
    assert_eq!(
        served_during,
        [(k("ann"), 40), (k("bob"), 15), (k("cy"), 7)].into()
    );

    assert_eq!(report.unwrap().outcome, Outcome::Completed);
    assert_eq!(view.current(), Some(2));
    assert_eq!(
        view.snapshot(),
        [(k("ann"), 42), (k("bob"), 20), (k("cy"), 7)].into()
    );
    assert_eq!(
        view.versions(),
        vec![2],
        "the superseded version is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_replay_leaves_the_old_version_serving() {
    let view = deployed_v1().await;
    let before = view.snapshot();
    let failing = ScriptedSource::new([
        Step::Records(log()[..4].to_vec()),
        Step::Fail {
            message: "broker unreachable".into(),
            retryable: false,
        },
    ]);
    let err = view
        .replay(&exec(), |sink| pipeline("v2", failing, gross(), sink))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("broker unreachable"), "{err}");
    assert_eq!(view.current(), Some(1));
    assert_eq!(view.snapshot(), before);
    assert_eq!(view.versions(), vec![1], "the failed version is abandoned");

    // The abandoned version cannot be promoted by mistake.
    let e = view.promote(2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("version 2"), "{e}");
    assert_eq!(view.current(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn unbounded_replay_is_promoted_once_it_catches_up_with_the_live_pipeline() {
    let view = KappaView::<String, i64>::new();
    // The live pipeline (v1) serves from its first results on.
    let v1 = view.begin_replay();
    view.promote(v1.version()).unwrap();
    let (live_tx, live_stop) = tokio::sync::oneshot::channel::<()>();
    let (live_source, live_pos) = track(
        ScriptedSource::new([
            Step::Records(log()),
            Step::Wait(Duration::from_secs(5)),
            Step::Records(more()),
            Step::Wait(Duration::from_secs(3600)),
        ])
        .unbounded(),
    );
    let live = tokio::spawn(
        exec().run_until(pipeline("v1", live_source, net(), v1), async {
            let _ = live_stop.await;
        }),
    );

    // The live pipeline has been running for a while when the replay starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(live_pos.latest(), Some(6));
    assert_eq!(view.get(&k("bob")), Some(15));

    // The replay (v2) reads the same log from the start, more slowly.
    let v2 = view.begin_replay();
    let version = v2.version();
    let (replay_tx, replay_stop) = tokio::sync::oneshot::channel::<()>();
    let (replay_source, replay_pos) = track(
        ScriptedSource::new([
            Step::Records(log()[..3].to_vec()),
            Step::Wait(Duration::from_secs(10)),
            Step::Records(log()[3..].to_vec()),
            Step::Wait(Duration::from_secs(10)),
            Step::Records(more()),
            Step::Wait(Duration::from_secs(3600)),
        ])
        .unbounded(),
    );
    let replay = tokio::spawn(exec().run_until(
        pipeline("v2", replay_source, gross(), v2),
        async {
            let _ = replay_stop.await;
        },
    ));

    let switch = view.promote_when_caught_up(version, replay_pos.clone(), live_pos.clone());
    let watch = async {
        // When the replay reached position 6, the live pipeline was already past it.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(live_pos.latest(), Some(8));
        assert_eq!(replay_pos.latest(), Some(6));
        (view.current(), view.get(&k("bob")))
    };
    let (switched, (current_at_15s, bob_at_15s)) = tokio::join!(switch, watch);
    switched.unwrap();
    assert_eq!(
        current_at_15s,
        Some(1),
        "not caught up 15 s into the replay: still v1"
    );
    assert_eq!(
        bob_at_15s,
        Some(14),
        "v1's net total after the live pipeline read 8"
    );

    assert_eq!(view.current(), Some(version));
    assert_eq!(replay_pos.latest(), Some(8));
    assert_eq!(
        view.snapshot(),
        [(k("ann"), 42), (k("bob"), 20), (k("cy"), 10)].into(),
        "the promoted version holds everything up to the live position"
    );

    live_tx.send(()).unwrap();
    replay_tx.send(()).unwrap();
    assert_eq!(live.await.unwrap().unwrap().outcome, Outcome::Stopped);
    assert_eq!(replay.await.unwrap().unwrap().outcome, Outcome::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_replay_that_ends_before_catching_up_is_abandoned() {
    let view = deployed_v1().await;
    // A live pipeline that has processed the whole log.
    let (mut live_source, live_pos) = track(ScriptedSource::from_records(log()));
    while live_source.next_batch(100).await.unwrap().is_some() {}
    assert_eq!(live_pos.latest(), Some(6));

    let v2 = view.begin_replay();
    let version = v2.version();
    let (replay_source, replay_pos) = track(ScriptedSource::new([
        Step::Records(log()[..2].to_vec()),
        Step::Fail {
            message: "replay crashed".into(),
            retryable: false,
        },
    ]));
    let replay = exec().run(pipeline("v2", replay_source, gross(), v2));
    let (run, switched) = tokio::join!(
        replay,
        view.promote_when_caught_up(version, replay_pos, live_pos)
    );
    assert!(run.is_err());
    let err = switched.unwrap_err();
    assert!(err.to_string().contains("before catching up"), "{err}");
    assert_eq!(view.current(), Some(1));
    assert_eq!(view.versions(), vec![1]);
}

#[tokio::test]
async fn a_superseded_version_refuses_writes() {
    use batchstream::Sink;
    let view = KappaView::<String, i64>::new();
    let mut v1 = view.begin_replay();
    view.promote(v1.version()).unwrap();
    v1.write(vec![(k("ann"), 1)]).await.unwrap();
    let v2 = view.begin_replay();
    view.promote(v2.version()).unwrap();
    // The old pipeline, still running by mistake, must not write into the void.
    let err = v1.write(vec![(k("ann"), 2)]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Sink);
    assert!(err.to_string().contains("version 1"), "{err}");
    assert_eq!(view.get(&k("ann")), None, "version 2 is empty and serving");
    // The serving version cannot be abandoned.
    assert_eq!(view.abandon(2).unwrap_err().kind(), ErrorKind::Config);
}
