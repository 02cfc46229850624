//! The NATS JetStream connectors against a real server at 127.0.0.1:4222 (feature
//! `nats`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use batchstream::adapters::{CollectSink, UpsertSink, UpsertTable};
use batchstream::checkpoint::{Checkpoint, MemoryCheckpointStore};
use batchstream::connectors::nats::{NatsPublishSink, NatsSource};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, CheckpointError, CheckpointStore, Outcome, Pipeline, RecordErrorKind, Sink,
    Source, StreamExecutor,
};
use serde::{Deserialize, Serialize};

mod support;
use support::rows_filled;

const URL: &str = "nats://127.0.0.1:4222";
const START: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    id: u64,
    value: String,
}

fn rec(id: u64) -> Rec {
    Rec {
        id,
        value: format!("v{id}"),
    }
}

fn expected(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, String> {
    ids.into_iter().map(|i| (i, format!("v{i}"))).collect()
}

/// A JetStream stream for one test, deleted when the test ends (even on panic).
struct TestStream {
    js: jetstream::Context,
    name: String,
    subject: String,
}

impl TestStream {
    async fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(URL)
            .await
            .unwrap_or_else(|e| {
                panic!("NATS at 127.0.0.1:4222 is not reachable ({e}); start it with: {START}")
            });
        let js = jetstream::new(client);
        let name = format!("BS_TEST_{}_{n}_{}", std::process::id(), test.to_uppercase());
        let subject = format!("bs-test.{}.{n}", std::process::id());
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            panic!("creating JetStream stream {name} failed ({e}); is JetStream on (-js)? {START}")
        });
        TestStream { js, name, subject }
    }

    fn subject(&self, leaf: &str) -> String {
        format!("{}.{leaf}", self.subject)
    }

    async fn publish(&self, leaf: &str, payload: Vec<u8>) {
        self.js
            .publish(self.subject(leaf), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn publish_recs(&self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.publish("rec", serde_json::to_vec(&rec(id)).unwrap())
                .await;
        }
    }

    /// (not yet delivered, delivered but not acked) of consumer `durable`.
    async fn consumer_state(&self, durable: &str) -> (u64, usize) {
        let mut consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(&self.name)
            .await
            .unwrap()
            .get_consumer(durable)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }

    async fn messages(&self) -> u64 {
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    fn source(&self, durable: &str) -> NatsSource<Rec> {
        NatsSource::json(URL, &self.name, durable)
            .unwrap()
            .pull_expires(Duration::from_millis(200))
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await, and the test's runtime is blocked here: delete on a thread
        // with its own runtime and connection.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| {
                    rt.block_on(async {
                        if let Ok(client) = async_nats::connect(URL).await {
                            let _ = jetstream::new(client).delete_stream(&name).await;
                        }
                    })
                })
        })
        .join();
    }
}

fn to_table(
    source: NatsSource<Rec>,
    table: &UpsertTable<u64, String>,
    id: &str,
) -> Pipeline<
    NatsSource<Rec>,
    impl batchstream::Transform<In = Rec, Out = (u64, String)>,
    UpsertSink<u64, String>,
> {
    Pipeline::new(
        id,
        source,
        transform::identity::<Rec>().map(|r| (r.id, r.value)),
        UpsertSink::resume(table),
    )
}

#[tokio::test]
async fn messages_are_acked_only_by_ack() {
    let s = TestStream::new("ack").await;
    s.publish_recs(0..6).await;
    let mut src = s.source("c1");
    let mut got = Vec::new();
    let mut last = None;
    while got.len() < 6 {
        let batch = src.next_batch(4).await.unwrap().unwrap();
        got.extend(batch.records);
        last = Some(batch.position);
    }
    assert_eq!(got, (0..6).map(rec).collect::<Vec<_>>());
    assert_eq!(s.consumer_state("c1").await, (0, 6), "delivered, not acked");
    let last = last.unwrap();
    assert_eq!(last.returned, 6);
    src.ack(&last).await.unwrap();
    let state = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let state = s.consumer_state("c1").await;
            if state.1 == 0 {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the acks reach the server");
    assert_eq!(state, (0, 0));
}

#[tokio::test]
async fn a_stream_pipeline_checkpoints_acks_and_resumes_without_loss() {
    let s = TestStream::new("resume").await;
    s.publish_recs(0..50).await;
    let (_, table) = UpsertSink::<u64, String>::new();
    let store = MemoryCheckpointStore::new();

    let p = to_table(s.source("c1"), &table, "resume").with_checkpoint_store(store.clone());
    let r1 = StreamExecutor::new()
        .max_batch(8)
        .checkpoint_every_records(16)
        .run_until(p, rows_filled(table.clone(), 50, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r1.outcome, Outcome::Stopped);
    assert_eq!(table.snapshot(), expected(0..50));
    assert_eq!(s.consumer_state("c1").await, (0, 0), "all acked");

    s.publish_recs(50..70).await;
    let p = to_table(s.source("c1"), &table, "resume").with_checkpoint_store(store.clone());
    let r2 = StreamExecutor::new()
        .max_batch(8)
        .run_until(p, rows_filled(table.clone(), 70, Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(r2.resumed_from_epoch.is_some());
    assert_eq!(r2.records_read, 20, "only the new messages");
    assert_eq!(table.snapshot(), expected(0..70));
    assert_eq!(s.consumer_state("c1").await, (0, 0));
}

#[tokio::test]
async fn the_bounded_mode_ends_when_the_stream_is_drained() {
    let s = TestStream::new("bounded").await;
    s.publish_recs(0..30).await;
    let (_, table) = UpsertSink::<u64, String>::new();
    let p = to_table(s.source("c1").stop_when_drained(), &table, "bounded")
        .with_checkpoint_store(MemoryCheckpointStore::new());
    let report = tokio::time::timeout(Duration::from_secs(30), BatchExecutor::new().run(p))
        .await
        .expect("the bounded source ends")
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.records_read, 30);
    assert_eq!(table.snapshot(), expected(0..30));
    assert_eq!(s.consumer_state("c1").await, (0, 0));
}

#[derive(Clone)]
struct BrokenStore;

impl CheckpointStore for BrokenStore {
    async fn load(&self, _: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(None)
    }
    async fn save(&self, _: &Checkpoint) -> Result<(), CheckpointError> {
        Err(CheckpointError::Other("disk on fire".into()))
    }
}

#[tokio::test]
async fn a_crash_before_ack_redelivers_and_the_idempotent_sink_has_no_duplicates() {
    let s = TestStream::new("crash").await;
    s.publish_recs(0..30).await;
    let (_, table) = UpsertSink::<u64, String>::new();

    let source = s.source("c1").ack_wait(Duration::from_secs(1));
    let p = to_table(source, &table, "crash").with_checkpoint_store(BrokenStore);
    let err = StreamExecutor::new()
        .max_batch(10)
        .checkpoint_every_records(10)
        .run(p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(table.snapshot().len() >= 10, "the sink saw the first batch");
    let (_, stuck) = s.consumer_state("c1").await;
    assert!(stuck >= 10, "delivered messages await their ack: {stuck}");

    // The restart (bounded, so it ends) waits for the redelivery of the un-acked
    // messages and reads everything else once.
    let source = s
        .source("c1")
        .ack_wait(Duration::from_secs(1))
        .stop_when_drained();
    let stats = source.stats();
    let p = to_table(source, &table, "crash").with_checkpoint_store(MemoryCheckpointStore::new());
    let report = tokio::time::timeout(Duration::from_secs(30), BatchExecutor::new().run(p))
        .await
        .expect("the restart ends")
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(stats.redelivered() as usize, stuck);
    assert_eq!(table.snapshot(), expected(0..30));
    assert_eq!(s.consumer_state("c1").await, (0, 0));
}

#[tokio::test]
async fn undecodable_messages_become_dead_letters_naming_subject_and_sequence() {
    let s = TestStream::new("dead").await;
    s.publish_recs([1]).await;
    s.publish("bad", b"{not json".to_vec()).await; // sequence 2
    s.publish_recs([2]).await;
    let (_, table) = UpsertSink::<u64, String>::new();
    let (letters, dead) = CollectSink::new();
    let p = to_table(s.source("c1").stop_when_drained(), &table, "dead")
        .with_checkpoint_store(MemoryCheckpointStore::new())
        .with_dead_letter_sink(letters);
    let report = tokio::time::timeout(Duration::from_secs(30), BatchExecutor::new().run(p))
        .await
        .expect("ends")
        .unwrap();
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(table.snapshot(), expected([1, 2]));
    let dead = dead.items();
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.kind(), RecordErrorKind::Parse);
    assert_eq!(
        letter.error.location.partition.as_deref(),
        Some(s.name.as_str())
    );
    assert_eq!(letter.error.location.offset, Some(2));
    assert!(
        letter.error.message.contains(&s.subject("bad")),
        "{}",
        letter.error
    );
    assert_eq!(letter.raw.as_deref(), Some("{not json"));
    assert_eq!(s.consumer_state("c1").await, (0, 0), "acked too");
}

#[tokio::test]
async fn the_publish_sink_drops_replayed_records_by_message_id() {
    let s = TestStream::new("publish").await;
    let mut sink =
        NatsPublishSink::json(URL, s.subject("out"), |r: &Rec| format!("rec-{}", r.id)).unwrap();
    let stats = sink.stats();
    sink.write((0..10).map(rec).collect()).await.unwrap();
    sink.flush().await.unwrap();
    // A replay after a crash writes the same records again, plus new ones.
    sink.write((5..15).map(rec).collect()).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(stats.acked(), 20);
    assert_eq!(stats.duplicates(), 5);
    assert_eq!(s.messages().await, 15);

    let mut src = s.source("reader").stop_when_drained();
    let mut got = Vec::new();
    while let Some(batch) = src.next_batch(100).await.unwrap() {
        got.extend(batch.records);
    }
    assert_eq!(got, (0..15).map(rec).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error_naming_it() {
    let mut src = NatsSource::<Rec>::json("nats://127.0.0.1:1", "S", "c").unwrap();
    let err = src.next_batch(1).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("NATS at nats://127.0.0.1:1"),
        "{err}"
    );

    let mut sink =
        NatsPublishSink::json("nats://127.0.0.1:1", "x", |r: &Rec| r.id.to_string()).unwrap();
    let err = sink.write(vec![rec(1)]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("NATS at nats://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test]
async fn a_read_cancelled_while_waiting_loses_nothing() {
    let s = TestStream::new("cancel").await;
    let mut src = s.source("c1");
    let cancelled = tokio::time::timeout(Duration::from_millis(300), src.next_batch(10)).await;
    assert!(cancelled.is_err(), "nothing to read yet");
    s.publish_recs([1]).await;
    // Without the pull request kept in the source, the message would wait for its
    // ack wait (30 s) to be delivered again.
    let batch = tokio::time::timeout(Duration::from_secs(10), src.next_batch(10))
        .await
        .expect("the message comes without a redelivery")
        .unwrap()
        .unwrap();
    assert_eq!(batch.records, vec![rec(1)]);
}

#[tokio::test]
async fn a_missing_stream_is_a_permanent_error_naming_it() {
    let s = TestStream::new("missing").await;
    let mut src = NatsSource::<Rec>::json(URL, format!("{}_NOPE", s.name), "c").unwrap();
    let err = src.next_batch(1).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("{}_NOPE", s.name)), "{text}");
    assert!(text.contains("NATS at nats://127.0.0.1:4222"), "{text}");
}
