//! The Kafka connector against a real Kafka-protocol broker (tansu 0.6.0, started by
//! `.ci/kafka-broker.sh` on 127.0.0.1:19092; override with `KAFKA_BROKERS`).
//!
//! If the broker is unreachable every test fails, naming it and the command to start it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchstream::adapters::CollectSink;
use batchstream::checkpoint::{Checkpoint, CheckpointStore, MemoryCheckpointStore};
use batchstream::connectors::kafka::{KafkaMessage, KafkaOffsets, KafkaSink, KafkaSource};
use batchstream::testing::{TxCollectSink, TxHandle};
use batchstream::transform;
use batchstream::{
    BatchExecutor, CheckpointError, DeadLetter, Error, ErrorKind, Outcome, Pipeline,
    PipelineMetrics, RecordErrorKind, Result, Sink, Source, StreamExecutor,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// Fails the test, naming the broker and how to start it, unless it answers.
async fn require_broker() -> AdminClient<DefaultClientContext> {
    let brokers = brokers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("probe client");
    let answer =
        tokio::task::spawn_blocking(move || probe.fetch_metadata(None, Duration::from_secs(5)))
            .await
            .unwrap();
    if let Err(e) = answer {
        panic!(
            "the Kafka broker at {brokers} is unreachable ({e}); start it with `.ci/kafka-broker.sh` \
             (tansu 0.6.0 on 127.0.0.1:19092) or point KAFKA_BROKERS at a broker"
        );
    }
    admin
}

/// A fresh topic with `partitions` partitions.
async fn new_topic(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    partitions: i32,
) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("bs-{name}-{}-{nanos}", std::process::id());
    let results = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
    topic
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Event {
    id: u64,
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer")
}

/// Produces `payload` to `topic`'s `partition`; returns its offset.
async fn produce(p: &FutureProducer, topic: &str, partition: i32, payload: &[u8]) -> i64 {
    let record = FutureRecord::<(), [u8]>::to(topic)
        .partition(partition)
        .payload(payload);
    let (part, offset) = p
        .send(record, Duration::from_secs(10))
        .await
        .map(|d| (d.partition, d.offset))
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}"));
    assert_eq!(part, partition);
    offset
}

/// Produces events `ids` to `topic`, event `i` to partition `i % partitions`.
async fn produce_events(topic: &str, partitions: i32, ids: std::ops::Range<u64>) {
    let p = producer();
    for id in ids {
        let payload = serde_json::to_vec(&Event { id }).unwrap();
        produce(&p, topic, (id % partitions as u64) as i32, &payload).await;
    }
}

/// The group's committed offsets for `topic`'s partitions `0..partitions`, read by a
/// separate client (not a member of the group).
async fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got =
        tokio::task::spawn_blocking(move || c.committed_offsets(tpl, Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| {
            e.offset()
                .to_raw()
                .filter(|o| *o >= 0)
                .map(|o| (e.partition(), o))
        })
        .collect()
}

fn offsets_of(position: &serde_json::Value, topic: &str) -> BTreeMap<i32, i64> {
    let pos: KafkaOffsets = serde_json::from_value(position.clone()).unwrap();
    pos.iter()
        .filter(|(t, _, _)| *t == topic)
        .map(|(_, p, o)| (p, o))
        .collect()
}

/// Offsets by partition.
type Offsets = BTreeMap<i32, i64>;

/// A checkpoint store that, at every save (after the sink flushed and prepared,
/// before the source is acked), records the checkpoint's offsets and the offsets
/// the group has committed at that moment.
#[derive(Clone)]
struct WatchingStore {
    inner: MemoryCheckpointStore,
    group: String,
    topic: String,
    partitions: i32,
    /// (offsets being saved, offsets committed in the group at that moment)
    seen: Arc<Mutex<Vec<(Offsets, Offsets)>>>,
}

impl CheckpointStore for WatchingStore {
    async fn load(&self, id: &str) -> std::result::Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(id).await
    }
    async fn save(&self, ck: &Checkpoint) -> std::result::Result<(), CheckpointError> {
        if let Some(pos) = &ck.source_position {
            let saving = offsets_of(pos, &self.topic);
            let now = committed(&self.group, &self.topic, self.partitions).await;
            self.seen.lock().unwrap().push((saving, now));
        }
        self.inner.save(ck).await
    }
}

/// A transactional test sink that fails (like a crash) on write call `fail_on`.
struct CrashingSink {
    inner: TxCollectSink<Event>,
    writes: u64,
    fail_on: u64,
}

impl Sink for CrashingSink {
    type Item = Event;
    fn guarantee(&self) -> batchstream::DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, batch: Vec<Event>) -> Result<()> {
        self.writes += 1;
        if self.writes == self.fail_on {
            return Err(Error::sink("write", "simulated crash"));
        }
        self.inner.write(batch).await
    }
    async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await
    }
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        self.inner.prepare(epoch).await
    }
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        self.inner.commit(epoch).await
    }
    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.inner.recover(checkpointed).await
    }
}

/// Completes once the pipeline has read `n` records.
async fn read_at_least(metrics: PipelineMetrics, n: u64) {
    while metrics.snapshot().records_in < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn source(topic: &str, group: &str) -> KafkaSource<Event> {
    KafkaSource::<Event>::json(&brokers(), group, &[topic])
        .set("session.timeout.ms", "6000")
        .connect()
        .await
        .expect("kafka source")
}

fn sorted_ids(h: &TxHandle<Event>) -> Vec<u64> {
    let mut ids: Vec<u64> = h.committed().iter().map(|e| e.id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_without_loss_and_commits_offsets_only_after_checkpoints() {
    let admin = require_broker().await;
    let topic = new_topic(&admin, "resume", 2).await;
    let group = format!("{topic}-g");
    produce_events(&topic, 2, 0..120).await;

    let store = WatchingStore {
        inner: MemoryCheckpointStore::new(),
        group: group.clone(),
        topic: topic.clone(),
        partitions: 2,
        seen: Arc::default(),
    };
    let executor = StreamExecutor::new()
        .max_batch(10)
        .checkpoint_every_records(20);

    // First run: crashes on its 5th write, after a few checkpoints.
    let (tx, out) = TxCollectSink::new();
    let sink = CrashingSink {
        inner: tx,
        writes: 0,
        fail_on: 5,
    };
    let p = Pipeline::new(
        "kafka-resume",
        source(&topic, &group).await,
        transform::identity::<Event>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let err = executor.run(p).await.unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");

    let saved = store
        .inner
        .get("kafka-resume")
        .expect("checkpointed before the crash");
    let checkpointed = offsets_of(saved.source_position.as_ref().unwrap(), &topic);
    let first_run = sorted_ids(&out);
    assert!(!first_run.is_empty());
    assert_eq!(
        checkpointed.values().sum::<i64>() as usize,
        first_run.len(),
        "the checkpoint covers exactly what was committed to the sink"
    );
    // The group's committed offsets are the last checkpoint's, not what was read
    // after it (the crashed batch was read but never checkpointed).
    assert_eq!(committed(&group, &topic, 2).await, checkpointed);

    // Second run: same group, same checkpoint store; runs until all 120 are read.
    let p = Pipeline::new(
        "kafka-resume",
        source(&topic, &group).await,
        transform::identity::<Event>(),
        TxCollectSink::resume(&out),
    )
    .with_checkpoint_store(store.clone());
    let remaining = 120 - first_run.len() as u64;
    let stop = read_at_least(p.metrics(), remaining);
    let report = tokio::time::timeout(Duration::from_secs(60), executor.run_until(p, stop))
        .await
        .expect("the second run reads the rest within a minute")
        .unwrap();
    assert_eq!(report.outcome, Outcome::Stopped);
    assert_eq!(report.resumed_from_epoch, Some(saved.epoch));
    assert_eq!(
        report.records_read, remaining,
        "nothing checkpointed is read again"
    );

    // Every event exactly once.
    assert_eq!(sorted_ids(&out), (0..120).collect::<Vec<_>>());
    // The final checkpoint is acked: the group committed the end of both partitions.
    assert_eq!(
        committed(&group, &topic, 2).await,
        BTreeMap::from([(0, 60), (1, 60)])
    );

    // At every save, the group's committed offsets were at most those of the previous
    // checkpoint: offsets are never committed before their checkpoint is saved.
    let seen = store.seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    let mut previous: BTreeMap<i32, i64> = BTreeMap::new();
    for (saving, committed_then) in &seen {
        for (p, c) in committed_then {
            assert!(
                previous.get(p).is_some_and(|prev| c <= prev),
                "partition {p}: committed {c} before the checkpoint of {saving:?} was saved \
                 (previous checkpoint: {previous:?})"
            );
        }
        if *saving != previous {
            assert_ne!(
                saving, committed_then,
                "the offsets being saved were already committed"
            );
        }
        previous = saving.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_starts_from_the_checkpoint_even_without_committed_offsets() {
    let admin = require_broker().await;
    let topic = new_topic(&admin, "seek", 3).await;
    produce_events(&topic, 3, 0..45).await;
    let store = MemoryCheckpointStore::new();
    let executor = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(8);

    // First run: group g1 reads some and stops (final checkpoint).
    let (tx, out) = TxCollectSink::new();
    let p = Pipeline::new(
        "kafka-seek",
        source(&topic, &format!("{topic}-g1")).await,
        transform::identity::<Event>(),
        tx,
    )
    .with_checkpoint_store(store.clone());
    let stop = read_at_least(p.metrics(), 10);
    let first = tokio::time::timeout(Duration::from_secs(60), executor.run_until(p, stop))
        .await
        .expect("reads 10 events within a minute")
        .unwrap();
    assert!(
        first.records_read >= 10 && first.records_read < 45,
        "{first}"
    );

    // Second run: another group, which has no committed offsets (it would start at the
    // earliest offset): the checkpointed offsets alone position it.
    assert!(
        committed(&format!("{topic}-g2"), &topic, 3)
            .await
            .is_empty()
    );
    let p = Pipeline::new(
        "kafka-seek",
        source(&topic, &format!("{topic}-g2")).await,
        transform::identity::<Event>(),
        TxCollectSink::resume(&out),
    )
    .with_checkpoint_store(store.clone());
    let rest = 45 - first.records_read;
    let stop = read_at_least(p.metrics(), rest);
    let second = tokio::time::timeout(Duration::from_secs(60), executor.run_until(p, stop))
        .await
        .expect("reads the rest within a minute")
        .unwrap();
    assert_eq!(second.records_read, rest, "{second}");
    assert_eq!(sorted_ids(&out), (0..45).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_with_partition_and_offset() {
    let admin = require_broker().await;
    let topic = new_topic(&admin, "dead", 2).await;
    let p = producer();
    produce(&p, &topic, 0, br#"{"id": 1}"#).await;
    let bad_offset = produce(&p, &topic, 1, b"not json").await;
    produce(&p, &topic, 1, br#"{"id": 2}"#).await;
    let bad_offset_2 = produce(&p, &topic, 0, br#"{"id": "three"}"#).await;

    let (sink, out) = CollectSink::new();
    let (dead, letters) = CollectSink::<DeadLetter>::new();
    let pipeline = Pipeline::new(
        "kafka-dead",
        source(&topic, &format!("{topic}-g")).await,
        transform::identity::<Event>(),
        sink,
    )
    .with_dead_letter_sink(dead);
    let stop = read_at_least(pipeline.metrics(), 4);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        StreamExecutor::new().run_until(pipeline, stop),
    )
    .await
    .expect("reads the 4 messages within a minute")
    .unwrap();
    assert_eq!(report.dead_lettered, 2);
    let mut ids: Vec<u64> = out.items().iter().map(|e| e.id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);

    let mut letters = letters.items();
    letters.sort_by_key(|l| l.error.location.partition.clone());
    assert_eq!(letters.len(), 2);
    let l0 = &letters[0];
    assert_eq!(l0.kind(), RecordErrorKind::Parse);
    assert_eq!(l0.error.location.partition, Some(format!("{topic}/0")));
    assert_eq!(l0.error.location.offset, Some(bad_offset_2 as u64));
    assert_eq!(l0.raw.as_deref(), Some(r#"{"id": "three"}"#));
    let l1 = &letters[1];
    assert_eq!(l1.error.location.partition, Some(format!("{topic}/1")));
    assert_eq!(l1.error.location.offset, Some(bad_offset as u64));
    assert_eq!(l1.raw.as_deref(), Some("not json"));
    assert!(l1.error.message.contains("invalid JSON"), "{}", l1.error);
}

/// An event and the partition it was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    partition: i32,
    id: u64,
}

async fn member(topic: &str, group: &str) -> KafkaSource<Seen> {
    KafkaSource::builder(&brokers(), group, &[topic], |m: &KafkaMessage<'_>| {
        let e: Event =
            serde_json::from_slice(m.payload.unwrap_or_default()).map_err(|e| e.to_string())?;
        Ok::<_, String>(Seen {
            partition: m.partition,
            id: e.id,
        })
    })
    .set("session.timeout.ms", "6000")
    .set("heartbeat.interval.ms", "500")
    .connect()
    .await
    .expect("group member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_hands_its_partitions_over_without_loss() {
    let admin = require_broker().await;
    let topic = new_topic(&admin, "group", 4).await;
    let group = format!("{topic}-g");
    // A few events first; the rest once A has left.
    produce_events(&topic, 4, 0..8).await;

    let (sink_a, out_a) = CollectSink::new();
    let (sink_b, out_b) = CollectSink::new();
    let a = Pipeline::new(
        "member-a",
        member(&topic, &group).await,
        transform::identity(),
        sink_a,
    )
    .with_checkpoint_store(MemoryCheckpointStore::new());
    let b = Pipeline::new(
        "member-b",
        member(&topic, &group).await,
        transform::identity(),
        sink_b,
    )
    .with_checkpoint_store(MemoryCheckpointStore::new());
    let executor = StreamExecutor::new()
        .max_batch(5)
        .checkpoint_every_records(10);

    // A stops as soon as it has read something (a final checkpoint, an ack, and it
    // leaves the group); then the other 192 events arrive. B runs until every event
    // is accounted for.
    let a_metrics = a.metrics();
    let run_a = async {
        let report = executor.run_until(a, read_at_least(a_metrics, 1)).await;
        produce_events(&topic, 4, 8..200).await;
        report
    };
    let all_seen = {
        let (out_a, out_b) = (out_a.clone(), out_b.clone());
        async move {
            loop {
                let ids: BTreeSet<u64> = out_a
                    .items()
                    .into_iter()
                    .chain(out_b.items())
                    .map(|s: Seen| s.id)
                    .collect();
                if ids.len() == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let run_b = executor.run_until(b, all_seen);
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(run_a, run_b)
    })
    .await
    .expect("the group finishes the topic within two minutes");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.outcome, Outcome::Stopped);
    assert_eq!(rb.outcome, Outcome::Stopped);

    let a_read = out_a.items();
    let b_read = out_b.items();
    let ids: BTreeSet<u64> = a_read.iter().chain(&b_read).map(|s| s.id).collect();
    assert_eq!(ids, (0..200).collect(), "no event is lost");
    // B read the events that arrived on A's partitions after A left: it took them over.
    let a_partitions: BTreeSet<i32> = a_read.iter().map(|s| s.partition).collect();
    assert!(!a_partitions.is_empty());
    for p in &a_partitions {
        let b_took: BTreeSet<u64> = b_read
            .iter()
            .filter(|s| s.partition == *p && s.id >= 8)
            .map(|s| s.id)
            .collect();
        assert_eq!(
            b_took.len(),
            48,
            "B read all later events of A's partition {p}"
        );
    }
    // Duplicates are allowed (at-least-once) but only of what A read and had not
    // checkpointed when a partition moved to B.
    let dups = a_read.len() + b_read.len() - ids.len();
    assert!(
        dups <= a_read.len(),
        "{dups} duplicates; A read {}",
        a_read.len()
    );
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Order {
    customer: String,
    amount: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_sink_writes_keyed_records_and_flush_waits_for_delivery() {
    let admin = require_broker().await;
    let topic = new_topic(&admin, "sink", 3).await;
    let orders: Vec<Order> = (0..60)
        .map(|i| Order {
            customer: format!("c{}", i % 7),
            amount: i,
        })
        .collect();
    let sink = KafkaSink::<Order>::json(&brokers(), &topic)
        .key(|o: &Order| o.customer.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(
        sink.guarantee(),
        batchstream::DeliveryGuarantee::AtLeastOnce
    );
    let p = Pipeline::new(
        "to-kafka",
        batchstream::adapters::IterSource::new(orders.clone()),
        transform::identity::<Order>(),
        sink,
    );
    let report = BatchExecutor::new().chunk_size(16).run(p).await.unwrap();
    assert_eq!(report.records_written, 60);

    // Read the topic back from the beginning: all 60, each key on one partition, in
    // the order written.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut got: Vec<(String, i32, Order)> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while got.len() < 60 && std::time::Instant::now() < deadline {
            if let Some(m) = reader.poll(Duration::from_millis(200)) {
                let m = m.expect("read back");
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let order: Order = serde_json::from_slice(m.payload().unwrap()).unwrap();
                got.push((key, m.partition(), order));
            }
        }
        got
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 60, "every record written is in the topic");
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for (key, partition, order) in &got {
        assert_eq!(key, &order.customer);
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition
        );
    }
    for c in 0..7 {
        let key = format!("c{c}");
        let amounts: Vec<i64> = got
            .iter()
            .filter(|(k, _, _)| *k == key)
            .map(|(_, _, o)| o.amount)
            .collect();
        let expected: Vec<i64> = (0..60).filter(|i| i % 7 == c).collect();
        assert_eq!(amounts, expected, "customer {key}: all, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_retryable_error_naming_it() {
    // Nothing listens on port 1.
    let err = KafkaSource::<Event>::json("127.0.0.1:1", "g", &["t"])
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Source);
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Kafka at 127.0.0.1:1"), "{err}");

    let err = KafkaSink::<Event>::json("127.0.0.1:1", "t")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Sink);
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Kafka at 127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_permanent_error_naming_it() {
    let _admin = require_broker().await;
    let err = KafkaSource::<Event>::json(&brokers(), "g", &["no-such-topic-batchstream"])
        .connect()
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("no-such-topic-batchstream"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("Kafka at {}", brokers())),
        "{err}"
    );
}

/// A private tansu broker on a free port, killed on drop.
struct PrivateBroker {
    child: std::process::Child,
    addr: String,
}

impl PrivateBroker {
    fn start() -> PrivateBroker {
        let tansu = std::env::var("TANSU")
            .ok()
            .or_else(|| {
                let home = std::env::var("HOME").ok()?;
                let p = std::path::Path::new(&home).join(".cargo/bin/tansu");
                p.exists().then(|| p.display().to_string())
            })
            .unwrap_or_else(|| "tansu".to_string());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the tansu broker `{tansu}` ({e}); install it with \
                     `.ci/kafka-broker.sh` or set TANSU to its path"
                )
            });
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return PrivateBroker { child, addr };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut broker = PrivateBroker { child, addr };
        broker.stop();
        panic!("tansu did not start listening on {}", broker.addr);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_broker_mid_run_is_a_retryable_error_naming_it() {
    let mut broker = PrivateBroker::start();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let topic = "lost";
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for id in 0..3 {
        produce(&p, topic, 0, &serde_json::to_vec(&Event { id }).unwrap()).await;
    }
    drop(p);
    drop(admin);

    let mut source = KafkaSource::<Event>::json(&broker.addr, "lost-g", &[topic])
        .connect()
        .await
        .unwrap();
    let mut read = 0;
    while read < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(30), source.next_batch(10))
            .await
            .expect("reads the 3 events")
            .unwrap()
            .unwrap();
        read += batch.records.len();
    }

    broker.stop();
    let err = tokio::time::timeout(Duration::from_secs(60), source.next_batch(10))
        .await
        .expect("the lost broker is reported within a minute")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Source, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("Kafka at {}", broker.addr)),
        "{err}"
    );
}
