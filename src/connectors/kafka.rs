//! Kafka: a consumer-group source whose offsets are committed only after the
//! checkpoint that holds them is saved, and an idempotent producer sink
//! (feature `kafka`, [rdkafka](https://docs.rs/rdkafka) over librdkafka).
//!
//! # Source: [`KafkaSource`]
//! - Joins a consumer group with `enable.auto.commit=false` and
//!   `enable.auto.offset.store=false`: the group's committed offsets move **only** in
//!   [`Source::ack`], which the executors call after the checkpoint holding the
//!   position is durable. A crash before that re-reads from the checkpoint; nothing
//!   is lost.
//! - The position ([`KafkaOffsets`]) is the next offset to read per topic and
//!   partition. After a restart, [`Source::seek`] restores it and each partition,
//!   when the group assigns it, starts at `max(checkpointed, committed)` offset: the
//!   checkpoint wins when the last ack did not happen (crash between save and ack),
//!   the group's committed offset wins when another member processed the partition
//!   further since.
//! - **Rebalances** are handled in a custom consumer context (its `rebalance`
//!   callback, which is what calls `pre_rebalance`/`post_rebalance` in rdkafka; the
//!   start offsets must be written into the assignment before it is applied, which
//!   the read-only `pre_rebalance` cannot do). On revocation, records of the revoked
//!   partitions that were fetched but not yet returned are dropped: the new owner
//!   reads them again from the group's committed offset (the last checkpoint's), so
//!   nothing is lost; records already returned but not yet checkpointed are read
//!   again by the new owner, a duplicate that an at-least-once sink allows and an
//!   idempotent sink absorbs. When a partition comes back in the same (eager)
//!   rebalance, it restarts right after the last record returned, so an eager
//!   rebalance that keeps a partition duplicates nothing. Offsets of partitions no
//!   longer assigned are never committed.
//! - **Partitions advance together**: the source holds up to
//!   [`prefetch`](KafkaSourceBuilder::prefetch) fetched messages and fills batches
//!   round robin over partitions (each in offset order), because librdkafka hands
//!   over each partition's fetched data in one piece. This only mixes what has been
//!   fetched: when reading a backlog, a broker may deliver one partition's data well
//!   before the next one's (tansu did in our tests). With event time, note that the
//!   watermark learns of a partition from its first record
//!   ([`EventTime::partitioned_by`](crate::event_time::EventTime::partitioned_by)),
//!   so a partition not read yet does not hold it back: give the watermark a bound
//!   that covers the skew between partitions, or replay a backlog from one
//!   partition.
//! - A message the decoder rejects becomes a [`DeadLetter`] (kind
//!   [`Parse`](RecordErrorKind::Parse)) whose [`Location`] has the partition as
//!   `topic/partition` and the Kafka offset as its offset, and whose raw text is the
//!   payload.
//! - Losing the brokers (librdkafka's "all brokers down") is a **retryable**
//!   [`Error::Source`] naming `Kafka at <bootstrap servers>`; a single dropped
//!   connection is only logged (librdkafka reconnects by itself). Unknown topics and
//!   fatal consumer errors are permanent.
//!
//! # Sink: [`KafkaSink`]
//! The idempotent producer (`enable.idempotence=true`, `acks=all`): librdkafka's own
//! retries of a send never duplicate or reorder a record within one producer
//! session. [`Sink::flush`] waits until every record written is acknowledged by all
//! in-sync replicas; a failed delivery is an [`Error::Sink`] naming the broker and
//! topic (retryable when it timed out).
//!
//! **Guarantee: at-least-once** ([`DeliveryGuarantee::AtLeastOnce`]). After a crash,
//! the pipeline resumes from its last checkpoint and writes the records after it
//! again, from a new producer session that the idempotence does not cover, so they
//! may appear twice in the topic. Kafka transactions would not make this exactly
//! once here: a Kafka transaction cannot outlive its producer (a restarted producer
//! with the same `transactional.id` aborts it in `init_transactions`), so a
//! transaction prepared before a checkpoint could not be committed by
//! [`Sink::recover`] after a crash, which the two-phase contract requires. Consumers
//! that need no duplicates should upsert by the record key.
//!
//! # Tested against tansu 0.6.0
//! The tests (`tests/kafka.rs`) run against [tansu](https://tansu.io) 0.6.0, a
//! Kafka-protocol broker (`.ci/kafka-broker.sh` installs and starts it on
//! `127.0.0.1:19092`, in-memory storage). What tansu 0.6.0 lacks or does differently,
//! and how the tests work around it:
//! - **One broker, no replication**: `acks=all` is acknowledged by the single broker,
//!   and broker fail-over is not exercised. Connection loss is tested by pointing a
//!   source at a port where nothing listens.
//! - **Consumer-group rebalancing**: tansu coordinates groups (join, sync, leave,
//!   offset commit and fetch all work); the tests use the classic (eager) protocol
//!   that librdkafka defaults to. The new KIP-848 consumer protocol
//!   (`group.protocol=consumer`) and cooperative rebalancing are not tested. The
//!   take-over test stops one member with an orderly close (leave group) rather
//!   than killing it and waiting for the session timeout.
//! - **Fetch**: with a backlog on several partitions, the data arrived from tansu
//!   partition by partition (a whole partition's backlog before any of the next
//!   one's was in librdkafka's queue; observed with the example's 1 200 orders on 3
//!   partitions). The tests check per-partition order and completeness, never the
//!   interleaving of partitions, and the example uses one partition.
//! - **Transactions**: not used by this connector (see above), so not tested.
//! - **Idempotent producer**: tansu answers `InitProducerId`, which librdkafka needs
//!   for `enable.idempotence`, and the sink's records arrive complete and in key
//!   order. De-duplication of librdkafka's internal retries (which needs a broker
//!   that drops a repeated sequence number after a lost acknowledgement) cannot be
//!   provoked from a test and is not tested.
//! - **Delivery failures**: a single healthy broker acknowledges everything, so a
//!   failed delivery (the typed `flush` error) is not provoked against tansu; the
//!   classification of librdkafka errors into retryable and permanent is unit-tested.
//!
//! ```no_run
//! use batchstream::connectors::kafka::{KafkaSink, KafkaSource};
//! use batchstream::checkpoint::FileCheckpointStore;
//! use batchstream::transform::{self, TransformExt};
//! use batchstream::{Pipeline, StreamExecutor};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order { id: u64, amount: i64 }
//!
//! # #[tokio::main]
//! # async fn main() -> batchstream::Result<()> {
//! let source = KafkaSource::<Order>::json("127.0.0.1:9092", "billing", &["orders"])
//!     .connect()
//!     .await?;
//! let sink = KafkaSink::<Order>::json("127.0.0.1:9092", "big-orders")
//!     .key(|o: &Order| o.id.to_string())
//!     .build()
//!     .await?;
//! let logic = transform::identity::<Order>().filter(|o| o.amount > 10_000);
//! let pipeline = Pipeline::new("big-orders", source, logic, sink)
//!     .with_checkpoint_store(FileCheckpointStore::new("state")?);
//! StreamExecutor::new().run(pipeline).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetter;
use crate::error::{BoxError, Error, Location, RecordError, RecordErrorKind, Result};
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::{Boundedness, Source, SourceBatch};

/// How long metadata requests, commits and committed-offset look-ups may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An error from the Kafka cluster, naming it: `Kafka at <bootstrap servers>: ...`.
#[derive(Debug)]
pub struct KafkaServerError {
    /// The bootstrap servers (`host:port,...`).
    pub brokers: String,
    /// What was being done, e.g. `committing offsets`.
    pub context: String,
    /// The librdkafka error, if there is one.
    pub error: Option<KafkaError>,
}

impl fmt::Display for KafkaServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kafka at {}: {}", self.brokers, self.context)?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KafkaServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

fn server_error(brokers: &str, context: impl Into<String>, error: Option<KafkaError>) -> BoxError {
    Box::new(KafkaServerError {
        brokers: brokers.to_string(),
        context: context.into(),
        error,
    })
}

/// Whether a librdkafka error is about reaching the cluster (a retry may succeed).
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::MessageTimedOut
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::RebalanceInProgress
            | C::QueueFull
    )
}

fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// A source error for `e`, retryable when it is about reaching the cluster.
fn source_error(brokers: &str, context: &str, e: KafkaError) -> Error {
    let transient = code_of(&e).is_some_and(is_transient);
    Error::source_with(transient, server_error(brokers, context, Some(e)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks that the cluster answers and that every topic exists, on a blocking thread.
async fn check_topics<C>(client: Arc<C>, brokers: &str, topics: Vec<String>) -> Result<()>
where
    C: Fn(Option<&str>) -> std::result::Result<rdkafka::metadata::Metadata, KafkaError>
        + Send
        + Sync
        + 'static,
{
    let names = topics.clone();
    let metadata = tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|t| client(Some(t)).map(|m| (t.clone(), m)))
            .collect::<std::result::Result<Vec<_>, KafkaError>>()
    })
    .await
    .map_err(|e| {
        Error::source(server_error(
            brokers,
            format!("metadata task failed: {e}"),
            None,
        ))
    })?
    .map_err(|e| {
        Error::source_retryable(server_error(
            brokers,
            "cannot fetch metadata (is the broker running?)",
            Some(e),
        ))
    })?;
    for (topic, m) in metadata {
        let found = m.topics().iter().find(|t| t.name() == topic);
        match found {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
            Some(t) => {
                let why = t
                    .error()
                    .map(|e| RDKafkaErrorCode::from(e).to_string())
                    .unwrap_or_else(|| "it has no partitions".into());
                return Err(Error::source(server_error(
                    brokers,
                    format!("topic `{topic}` is not usable: {why}"),
                    None,
                )));
            }
            None => {
                return Err(Error::source(server_error(
                    brokers,
                    format!("topic `{topic}` does not exist"),
                    None,
                )));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------

/// The position of a [`KafkaSource`]: for each topic and partition, the offset of the
/// next message to read (the last one returned, plus one).
///
/// Serialized as `{"topic": {"0": 42, "1": 17}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KafkaOffsets(BTreeMap<String, BTreeMap<i32, i64>>);

impl KafkaOffsets {
    /// No offsets.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next offset to read in `topic`'s `partition`, if known.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic)?.get(&partition).copied()
    }

    /// Sets the next offset to read in `topic`'s `partition`.
    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        match self.0.get_mut(topic) {
            Some(parts) => {
                parts.insert(partition, next_offset);
            }
            None => {
                self.0.insert(
                    topic.to_string(),
                    BTreeMap::from([(partition, next_offset)]),
                );
            }
        }
    }

    /// Every `(topic, partition, next offset)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> + '_ {
        self.0
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    /// Whether no offset is known.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }
}

/// A consumed message, as the decoder of a [`KafkaSource`] sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct KafkaMessage<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The message's offset in its partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The payload; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// The message timestamp (create or log-append time), if the broker gave one.
    pub timestamp: Option<DateTime<Utc>>,
}

type Decoder<T> = Box<dyn FnMut(&KafkaMessage<'_>) -> std::result::Result<T, String> + Send>;

/// What the consumer context and the source share.
#[derive(Debug, Default)]
struct Shared {
    /// Next offset to read per partition: what the source returned (or restored from
    /// a checkpoint). The rebalance callback starts assigned partitions from here.
    next: HashMap<(String, i32), i64>,
    /// Partitions currently assigned to this member.
    assigned: BTreeSet<(String, i32)>,
    /// Partitions revoked since the source last looked.
    revoked: Vec<(String, i32)>,
    /// Rebalances seen (assignments and revocations).
    rebalances: u64,
}

/// The consumer context: applies checkpointed offsets on assignment and reports
/// revocations to the source.
struct SourceContext {
    brokers: String,
    shared: Arc<Mutex<Shared>>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(brokers = %self.brokers, %error, reason, "kafka client error");
    }
}

impl SourceContext {
    /// Writes each partition's start offset into `tpl`: `max(next, committed)` for
    /// partitions this source has an offset for; the others keep the group's committed
    /// offset (or `auto.offset.reset`).
    fn set_start_offsets(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let known: Vec<(String, i32, i64)> = {
            let shared = lock(&self.shared);
            tpl.elements()
                .iter()
                .filter_map(|e| {
                    let key = (e.topic().to_string(), e.partition());
                    shared.next.get(&key).map(|o| (key.0, key.1, *o))
                })
                .collect()
        };
        if known.is_empty() {
            return;
        }
        let mut ask = TopicPartitionList::new();
        for (t, p, _) in &known {
            ask.add_partition(t, *p);
        }
        // A blocking look-up inside the callback; bounded by the timeout.
        let committed = match consumer.committed_offsets(ask, DEFAULT_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(brokers = %self.brokers, error = %e,
                    "cannot read committed offsets; starting from the checkpointed ones");
                TopicPartitionList::new()
            }
        };
        let mut shared = lock(&self.shared);
        for (t, p, ours) in known {
            let theirs = committed
                .find_partition(&t, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0);
            let start = theirs.map_or(ours, |c| c.max(ours));
            if let Err(e) = tpl.set_partition_offset(&t, p, Offset::Offset(start)) {
                tracing::warn!(topic = %t, partition = p, error = %e, "cannot set start offset");
                continue;
            }
            shared.next.insert((t, p), start);
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.set_start_offsets(consumer, tpl);
                let applied = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = applied {
                    tracing::error!(brokers = %self.brokers, error = %e, "cannot apply assignment");
                }
                let mut shared = lock(&self.shared);
                if !cooperative {
                    shared.assigned.clear();
                }
                shared.assigned.extend(parts.iter().cloned());
                shared.rebalances += 1;
                tracing::info!(partitions = ?parts, "kafka partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut shared = lock(&self.shared);
                    for p in &parts {
                        shared.assigned.remove(p);
                    }
                    shared.revoked.extend(parts.iter().cloned());
                    shared.rebalances += 1;
                }
                let applied = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = applied {
                    tracing::error!(brokers = %self.brokers, error = %e, "cannot revoke assignment");
                }
                tracing::info!(partitions = ?parts, "kafka partitions revoked");
            }
            other => {
                tracing::error!(brokers = %self.brokers, error = ?other, "kafka rebalance failed");
                let mut shared = lock(&self.shared);
                let all: Vec<_> = shared.assigned.iter().cloned().collect();
                shared.revoked.extend(all);
                shared.assigned.clear();
                drop(shared);
                let _ = consumer.unassign();
            }
        }
    }
}

/// The consumer, closed on a blocking thread when the source is dropped: closing
/// leaves the group, which waits for the broker, and must not stall the runtime.
struct ConsumerHandle(Option<Arc<StreamConsumer<SourceContext>>>);

impl ConsumerHandle {
    fn get(&self) -> Arc<StreamConsumer<SourceContext>> {
        Arc::clone(
            self.0
                .as_ref()
                .expect("the consumer is only taken on close"),
        )
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(consumer));
        }
    }
}

/// A fetched message, decoded (or rejected), waiting to be returned.
struct Buffered<T> {
    offset: i64,
    item: std::result::Result<T, DeadLetter>,
}

/// Fetched messages, one queue per partition, handed out round robin over the
/// partitions so that they advance together (librdkafka hands over a partition's
/// fetched data in one piece, often a whole backlog before the next partition's).
struct Fetched<T> {
    parts: BTreeMap<(Arc<str>, i32), std::collections::VecDeque<Buffered<T>>>,
    len: usize,
    cursor: usize,
}

impl<T> Fetched<T> {
    fn new() -> Self {
        Fetched {
            parts: BTreeMap::new(),
            len: 0,
            cursor: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, topic: Arc<str>, partition: i32, b: Buffered<T>) {
        self.parts
            .entry((topic, partition))
            .or_default()
            .push_back(b);
        self.len += 1;
    }

    /// Drops the messages of the partitions `drop` selects; returns how many.
    fn remove(&mut self, drop: impl Fn(&str, i32) -> bool) -> usize {
        let mut dropped = 0;
        self.parts.retain(|(t, p), q| {
            let gone = drop(t, *p);
            if gone {
                dropped += q.len();
            }
            !gone
        });
        self.len -= dropped;
        dropped
    }

    /// Up to `n` messages, one partition after another, each in offset order.
    fn take(&mut self, n: usize) -> Vec<(Arc<str>, i32, Buffered<T>)> {
        let mut out = Vec::with_capacity(n.min(self.len));
        let keys: Vec<(Arc<str>, i32)> = self.parts.keys().cloned().collect();
        if keys.is_empty() {
            return out;
        }
        let start = self.cursor % keys.len();
        self.cursor = self.cursor.wrapping_add(1);
        while out.len() < n && self.len > 0 {
            for i in 0..keys.len() {
                if out.len() == n {
                    break;
                }
                let key = &keys[(start + i) % keys.len()];
                if let Some(b) = self.parts.get_mut(key).and_then(|q| q.pop_front()) {
                    self.len -= 1;
                    out.push((Arc::clone(&key.0), key.1, b));
                }
            }
        }
        self.parts.retain(|_, q| !q.is_empty());
        out
    }
}

/// Settings of a [`KafkaSource`]; finish with [`connect`](KafkaSourceBuilder::connect).
pub struct KafkaSourceBuilder<T> {
    brokers: String,
    topics: Vec<String>,
    config: ClientConfig,
    decoder: Decoder<T>,
    timeout: Duration,
    prefetch: usize,
}

impl<T> fmt::Debug for KafkaSourceBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSourceBuilder")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> KafkaSourceBuilder<T> {
    /// Sets any librdkafka consumer property (see librdkafka's `CONFIGURATION.md`),
    /// e.g. `session.timeout.ms` or `auto.offset.reset` (default here: `earliest`).
    /// `enable.auto.commit` and `enable.auto.offset.store` stay `false` whatever is
    /// set: offsets are committed in [`Source::ack`] only.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// How long connecting, commits and offset look-ups may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many fetched messages the source holds (default 4096, at least the batch
    /// size asked for). Batches take them round robin over the partitions, so the
    /// partitions advance together: librdkafka hands over each partition's fetched
    /// data in one piece, and reading a backlog one partition after another would run
    /// one partition's event time far ahead of the others'.
    pub fn prefetch(mut self, messages: usize) -> Self {
        self.prefetch = messages.max(1);
        self
    }

    /// Creates the consumer, checks that the cluster answers and that the topics
    /// exist, and subscribes.
    ///
    /// # Errors
    /// [`Error::Config`] for a property librdkafka refuses; a retryable
    /// [`Error::Source`] naming `Kafka at <brokers>` when the cluster does not answer;
    /// a permanent one when a topic does not exist.
    pub async fn connect(mut self) -> Result<KafkaSource<T>> {
        self.config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let context = SourceContext {
            brokers: self.brokers.clone(),
            shared: Arc::clone(&shared),
        };
        let consumer: StreamConsumer<SourceContext> = self
            .config
            .create_with_context(context)
            .map_err(|e| Error::Config(format!("Kafka consumer for {}: {e}", self.brokers)))?;
        let consumer = Arc::new(consumer);
        let probe = Arc::clone(&consumer);
        let timeout = self.timeout;
        check_topics(
            Arc::new(move |t: Option<&str>| probe.fetch_metadata(t, timeout)),
            &self.brokers,
            self.topics.clone(),
        )
        .await?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| source_error(&self.brokers, "cannot subscribe", e))?;
        Ok(KafkaSource {
            brokers: self.brokers,
            consumer: ConsumerHandle(Some(consumer)),
            shared,
            decoder: self.decoder,
            buffer: Fetched::new(),
            prefetch: self.prefetch,
            topic_names: HashMap::new(),
            pending_error: None,
            committed: HashMap::new(),
            timeout,
        })
    }
}

/// A Kafka consumer-group source; see the [module docs](self).
///
/// Unbounded. Items are what the decoder makes of each message; the position is
/// [`KafkaOffsets`].
pub struct KafkaSource<T> {
    brokers: String,
    consumer: ConsumerHandle,
    shared: Arc<Mutex<Shared>>,
    decoder: Decoder<T>,
    buffer: Fetched<T>,
    /// How many fetched messages to hold (see [`KafkaSourceBuilder::prefetch`]).
    prefetch: usize,
    topic_names: HashMap<String, Arc<str>>,
    /// A consumer error met while records were buffered: returned after them.
    pending_error: Option<Error>,
    /// What this source last committed, per partition (to skip repeated commits).
    committed: HashMap<(String, i32), i64>,
    timeout: Duration,
}

impl<T> fmt::Debug for KafkaSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.brokers)
            .field("buffered", &self.buffer.len())
            .field("assigned", &lock(&self.shared).assigned)
            .finish_non_exhaustive()
    }
}

fn base_consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    c
}

impl<T: DeserializeOwned + Send + 'static> KafkaSource<T> {
    /// A source of JSON messages (the payload decoded with serde_json) from `topics`,
    /// in consumer group `group_id`, via the bootstrap servers `brokers`
    /// (`host:port[,host:port...]`).
    pub fn json(brokers: &str, group_id: &str, topics: &[&str]) -> KafkaSourceBuilder<T> {
        Self::builder(brokers, group_id, topics, |m: &KafkaMessage<'_>| {
            let payload = m.payload.ok_or("message has no payload (a tombstone)")?;
            serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))
        })
    }
}

impl<T: Send + 'static> KafkaSource<T> {
    /// A source decoding each message with `decoder`; a message it rejects becomes a
    /// dead letter carrying the error's text.
    pub fn builder<E: fmt::Display>(
        brokers: &str,
        group_id: &str,
        topics: &[&str],
        mut decoder: impl FnMut(&KafkaMessage<'_>) -> std::result::Result<T, E> + Send + 'static,
    ) -> KafkaSourceBuilder<T> {
        KafkaSourceBuilder {
            brokers: brokers.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            config: base_consumer_config(brokers, group_id),
            decoder: Box::new(move |m| decoder(m).map_err(|e| e.to_string())),
            timeout: DEFAULT_TIMEOUT,
            prefetch: 4096,
        }
    }

    /// The partitions currently assigned to this member of the group.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        lock(&self.shared).assigned.iter().cloned().collect()
    }

    /// How many assignments and revocations this member has seen.
    pub fn rebalances(&self) -> u64 {
        lock(&self.shared).rebalances
    }

    /// The group's committed offsets (next offset to read) for the partitions in
    /// `offsets`, as the broker reports them; `None` for a partition without one.
    ///
    /// # Errors
    /// A retryable [`Error::Source`] naming the broker when the look-up fails.
    pub async fn committed_offsets(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        let consumer = self.consumer.get();
        let timeout = self.timeout;
        let got = tokio::task::spawn_blocking(move || consumer.committed_offsets(tpl, timeout))
            .await
            .map_err(|e| Error::source(e.to_string()))?
            .map_err(|e| source_error(&self.brokers, "cannot read committed offsets", e))?;
        Ok(partitions
            .iter()
            .map(|(t, p)| {
                got.find_partition(t, *p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
            })
            .collect())
    }

    /// Waits until the group assigns this member at least one partition (joining a
    /// group takes a few seconds), and returns the assignment. Messages fetched
    /// meanwhile are kept for [`next_batch`](Source::next_batch). Useful before a
    /// [`Trigger::AvailableNow`](crate::Trigger::AvailableNow) run, whose idle timeout
    /// would otherwise expire while the member is still joining.
    ///
    /// # Errors
    /// A retryable [`Error::Source`] naming the broker if nothing is assigned within
    /// `timeout`, or if the consumer fails.
    pub async fn wait_for_assignment(&mut self, timeout: Duration) -> Result<Vec<(String, i32)>> {
        let consumer = self.consumer.get();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drop_revoked();
            let assigned = self.assignment();
            if !assigned.is_empty() {
                return Ok(assigned);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::source_retryable(server_error(
                    &self.brokers,
                    format!("no partition was assigned to this consumer within {timeout:?}"),
                    None,
                )));
            }
            // Polling drives the group protocol; the rebalance callback runs inside it.
            tokio::select! {
                m = consumer.recv() => match m {
                    Ok(m) => self.push(&m),
                    Err(e) => self.on_error(e)?,
                },
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Leaves the consumer group now (an orderly close: the group rebalances at once
    /// instead of after the session timeout). Dropping the source does the same.
    pub async fn close(mut self) {
        if let Some(consumer) = self.consumer.0.take() {
            let _ = tokio::task::spawn_blocking(move || {
                consumer.unsubscribe();
                drop(consumer);
            })
            .await;
        }
    }

    /// Decodes `m` and buffers it. Buffered records of partitions revoked while `m`
    /// was being received are dropped first (`m` itself comes from the new
    /// assignment).
    fn push(&mut self, m: &BorrowedMessage<'_>) {
        self.drop_revoked();
        let topic = match self.topic_names.get(m.topic()) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(m.topic());
                self.topic_names
                    .insert(m.topic().to_string(), Arc::clone(&t));
                t
            }
        };
        let view = KafkaMessage {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload(),
            timestamp: m
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis),
        };
        let item = (self.decoder)(&view).map_err(|message| {
            let location = Location::default()
                .with_partition(format!("{}/{}", view.topic, view.partition))
                .with_offset(view.offset.max(0) as u64);
            DeadLetter::unparsed(
                RecordError::new(RecordErrorKind::Parse, "kafka", message, location),
                String::from_utf8_lossy(view.payload.unwrap_or_default()),
            )
        });
        self.buffer.push(
            topic,
            view.partition,
            Buffered {
                offset: view.offset,
                item,
            },
        );
    }

    /// Drops buffered records of partitions revoked since the last look.
    fn drop_revoked(&mut self) {
        let revoked = std::mem::take(&mut lock(&self.shared).revoked);
        if revoked.is_empty() {
            return;
        }
        let dropped = self
            .buffer
            .remove(|topic, partition| revoked.iter().any(|(t, p)| *p == partition && t == topic));
        if dropped > 0 {
            tracing::info!(dropped, partitions = ?revoked,
                "dropped fetched records of revoked partitions; their new owner reads them");
        }
    }

    /// Handles a consumer error: `Ok` when it is only logged.
    fn on_error(&mut self, e: KafkaError) -> Result<()> {
        match code_of(&e) {
            // One broker connection dropped: librdkafka reconnects by itself, and says
            // "all brokers down" when none is left.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::warn!(brokers = %self.brokers, error = %e, "kafka connection lost; reconnecting");
                Ok(())
            }
            _ => Err(source_error(&self.brokers, "consumer failed", e)),
        }
    }

    /// Returns up to `max` buffered entries as a batch (round robin over the
    /// partitions) and moves the position past them.
    fn take_batch(&mut self, max: usize) -> SourceBatch<T, KafkaOffsets> {
        let taken = self.buffer.take(max.max(1));
        let mut records = Vec::with_capacity(taken.len());
        let mut rejected = Vec::new();
        let mut shared = lock(&self.shared);
        for (topic, partition, b) in taken {
            shared
                .next
                .insert((topic.to_string(), partition), b.offset + 1);
            match b.item {
                Ok(r) => records.push(r),
                Err(letter) => rejected.push(letter),
            }
        }
        let mut position = KafkaOffsets::new();
        for ((t, p), o) in &shared.next {
            position.set(t, *p, *o);
        }
        SourceBatch::new(records, position).with_rejected(rejected)
    }
}

impl<T: Send + 'static> Source for KafkaSource<T> {
    type Item = T;
    type Position = KafkaOffsets;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Unbounded
    }

    /// Cancel safe: fetched messages are kept in the source until returned.
    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<T, KafkaOffsets>>> {
        let consumer = self.consumer.get();
        loop {
            self.drop_revoked();
            if !self.buffer.is_empty() {
                // Take what is already fetched, without waiting for more.
                while self.buffer.len() < self.prefetch.max(max) {
                    match consumer.recv().now_or_never() {
                        Some(Ok(m)) => self.push(&m),
                        Some(Err(e)) => {
                            if let Err(err) = self.on_error(e) {
                                self.pending_error = Some(err);
                                break;
                            }
                        }
                        None => break,
                    }
                }
                self.drop_revoked();
                if !self.buffer.is_empty() {
                    return Ok(Some(self.take_batch(max)));
                }
            }
            if let Some(e) = self.pending_error.take() {
                return Err(e);
            }
            match consumer.recv().await {
                Ok(m) => self.push(&m),
                Err(e) => self.on_error(e)?,
            }
        }
    }

    /// Restores the checkpointed offsets. Partitions are assigned later, by the group;
    /// each starts at `max(checkpointed, committed)` when it is. Partitions already
    /// assigned move there at once.
    async fn seek(&mut self, position: KafkaOffsets) -> Result<()> {
        let assigned: Vec<(String, i32, i64)> = {
            let mut shared = lock(&self.shared);
            for (t, p, o) in position.iter() {
                shared.next.insert((t.to_string(), p), o);
            }
            position
                .iter()
                .filter(|(t, p, _)| shared.assigned.contains(&(t.to_string(), *p)))
                .map(|(t, p, o)| (t.to_string(), p, o))
                .collect()
        };
        if assigned.is_empty() {
            return Ok(());
        }
        self.buffer.remove(|topic, partition| {
            assigned
                .iter()
                .any(|(t, p, _)| *p == partition && t == topic)
        });
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &assigned {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| source_error(&self.brokers, "cannot seek", e))?;
        }
        let consumer = self.consumer.get();
        let timeout = self.timeout;
        let result = tokio::task::spawn_blocking(move || consumer.seek_partitions(tpl, timeout))
            .await
            .map_err(|e| Error::source(e.to_string()))?
            .map_err(|e| source_error(&self.brokers, "cannot seek", e))?;
        for e in result.elements() {
            if let Err(err) = e.error() {
                return Err(source_error(
                    &self.brokers,
                    &format!("cannot seek {}/{}", e.topic(), e.partition()),
                    err,
                ));
            }
        }
        Ok(())
    }

    /// Commits `position`'s offsets for the partitions this member still owns
    /// (synchronously: when `ack` returns, the group's offsets are committed).
    async fn ack(&mut self, position: &KafkaOffsets) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut commits = Vec::new();
        {
            let shared = lock(&self.shared);
            for (t, p, o) in position.iter() {
                let key = (t.to_string(), p);
                if !shared.assigned.contains(&key) || self.committed.get(&key) == Some(&o) {
                    continue;
                }
                tpl.add_partition_offset(t, p, Offset::Offset(o))
                    .map_err(|e| source_error(&self.brokers, "cannot commit", e))?;
                commits.push((key, o));
            }
        }
        if commits.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.get();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Error::source(e.to_string()))?
            .map_err(|e| source_error(&self.brokers, "cannot commit offsets", e))?;
        self.committed.extend(commits);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------

type KeyFn<T> = Box<dyn Fn(&T) -> Option<Vec<u8>> + Send>;
type EncodeFn<T> = Box<dyn Fn(&T) -> std::result::Result<Vec<u8>, String> + Send>;

/// Settings of a [`KafkaSink`]; finish with [`build`](KafkaSinkBuilder::build).
pub struct KafkaSinkBuilder<T> {
    brokers: String,
    topic: String,
    config: ClientConfig,
    key: KeyFn<T>,
    encode: EncodeFn<T>,
    timeout: Duration,
}

impl<T> fmt::Debug for KafkaSinkBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSinkBuilder")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> KafkaSinkBuilder<T> {
    /// Keys each record with `key` (default: no key, so records spread over the
    /// partitions). Records with one key go to one partition, in order.
    pub fn key<K: AsRef<[u8]>>(mut self, key: impl Fn(&T) -> K + Send + 'static) -> Self {
        self.key = Box::new(move |t| Some(key(t).as_ref().to_vec()));
        self
    }

    /// Sets any librdkafka producer property (e.g. `linger.ms`,
    /// `message.timeout.ms`). `enable.idempotence=true` and `acks=all` stay set.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates the idempotent producer and checks that the cluster answers and the
    /// topic exists.
    ///
    /// # Errors
    /// [`Error::Config`] for a property librdkafka refuses; a retryable
    /// [`Error::Sink`] (operation `connect`) naming `Kafka at <brokers>` when the
    /// cluster does not answer; a permanent one when the topic does not exist.
    pub async fn build(mut self) -> Result<KafkaSink<T>> {
        self.config
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let producer: FutureProducer = self
            .config
            .create()
            .map_err(|e| Error::Config(format!("Kafka producer for {}: {e}", self.brokers)))?;
        let probe = producer.clone();
        let timeout = self.timeout;
        check_topics(
            Arc::new(move |t: Option<&str>| probe.client().fetch_metadata(t, timeout)),
            &self.brokers,
            vec![self.topic.clone()],
        )
        .await
        .map_err(|e| match e {
            Error::Source { retryable, source } => Error::Sink {
                operation: "connect",
                retryable,
                source,
            },
            other => other,
        })?;
        Ok(KafkaSink {
            brokers: self.brokers,
            topic: self.topic,
            producer,
            key: self.key,
            encode: self.encode,
            pending: FuturesUnordered::new(),
            delivered: 0,
        })
    }
}

/// A Kafka producer sink (idempotent producer, `acks=all`); see the
/// [module docs](self) for its guarantee.
pub struct KafkaSink<T> {
    brokers: String,
    topic: String,
    producer: FutureProducer,
    key: KeyFn<T>,
    encode: EncodeFn<T>,
    pending: FuturesUnordered<DeliveryFuture>,
    delivered: u64,
}

impl<T> fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("in_flight", &self.pending.len())
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

fn base_producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

impl<T: Serialize + Send + 'static> KafkaSink<T> {
    /// A sink writing each record to `topic` as JSON, via the bootstrap servers
    /// `brokers`.
    pub fn json(brokers: &str, topic: &str) -> KafkaSinkBuilder<T> {
        Self::builder(brokers, topic, |t: &T| {
            serde_json::to_vec(t).map_err(|e| e.to_string())
        })
    }
}

impl<T: Send + 'static> KafkaSink<T> {
    /// A sink writing each record to `topic` as the bytes `encode` makes of it.
    pub fn builder<E: fmt::Display>(
        brokers: &str,
        topic: &str,
        encode: impl Fn(&T) -> std::result::Result<Vec<u8>, E> + Send + 'static,
    ) -> KafkaSinkBuilder<T> {
        KafkaSinkBuilder {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            config: base_producer_config(brokers),
            key: Box::new(|_| None),
            encode: Box::new(move |t| encode(t).map_err(|e| e.to_string())),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Records acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    fn delivery_error(&self, e: KafkaError, partition: Option<i32>) -> Error {
        let transient = code_of(&e).is_some_and(is_transient);
        let what = match partition {
            Some(p) if p >= 0 => format!("delivery to {}/{p} failed", self.topic),
            _ => format!("delivery to topic `{}` failed", self.topic),
        };
        Error::sink_with(
            "flush",
            transient,
            server_error(&self.brokers, what, Some(e)),
        )
    }

    fn check(
        &mut self,
        result: std::result::Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    ) -> Result<()> {
        match result {
            Ok(Ok(_)) => {
                self.delivered += 1;
                Ok(())
            }
            Ok(Err((e, msg))) => Err(self.delivery_error(e, Some(msg.partition()))),
            Err(_) => Err(Error::sink(
                "flush",
                server_error(
                    &self.brokers,
                    "the producer was shut down before delivery",
                    None,
                ),
            )),
        }
    }

    /// Checks the deliveries that already finished, without waiting.
    fn reap(&mut self) -> Result<()> {
        while let Some(Some(r)) = self.pending.next().now_or_never() {
            self.check(r)?;
        }
        Ok(())
    }
}

impl<T: Send + 'static> Sink for KafkaSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::AtLeastOnce
    }

    /// Hands the records to the producer (which sends them in the background); waits
    /// only when its queue is full.
    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        for item in batch {
            let payload = (self.encode)(&item).map_err(|e| {
                Error::sink(
                    "write",
                    format!(
                        "a record for topic `{}` could not be encoded: {e}",
                        self.topic
                    ),
                )
            })?;
            let key = (self.key)(&item);
            loop {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.topic).payload(&payload[..]);
                if let Some(k) = &key {
                    record = record.key(&k[..]);
                }
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        self.pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Backpressure: wait for a delivery before queueing more.
                        match self.pending.next().await {
                            Some(r) => self.check(r)?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => {
                        return Err(Error::sink(
                            "write",
                            server_error(
                                &self.brokers,
                                format!("cannot queue a record for topic `{}`", self.topic),
                                Some(e),
                            ),
                        ));
                    }
                }
            }
        }
        self.reap()
    }

    /// Waits until every record written so far is acknowledged (`acks=all`).
    async fn flush(&mut self) -> Result<()> {
        while let Some(r) = self.pending.next().await {
            self.check(r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(parts: &[(&str, i32, std::ops::Range<i64>)]) -> Fetched<i64> {
        let mut f = Fetched::new();
        for (t, p, offsets) in parts {
            let topic: Arc<str> = Arc::from(*t);
            for o in offsets.clone() {
                f.push(
                    Arc::clone(&topic),
                    *p,
                    Buffered {
                        offset: o,
                        item: Ok(o),
                    },
                );
            }
        }
        f
    }

    #[test]
    fn batches_take_partitions_in_turn_each_in_offset_order() {
        // All of partition 0 arrived before any of partition 1 (as librdkafka hands it).
        let mut f = fetched(&[("t", 0, 0..6), ("t", 1, 100..103)]);
        assert_eq!(f.len(), 9);
        let got: Vec<(i32, i64)> = f
            .take(6)
            .into_iter()
            .map(|(_, p, b)| (p, b.offset))
            .collect();
        assert_eq!(
            got,
            vec![(0, 0), (1, 100), (0, 1), (1, 101), (0, 2), (1, 102)]
        );
        let rest: Vec<(i32, i64)> = f
            .take(10)
            .into_iter()
            .map(|(_, p, b)| (p, b.offset))
            .collect();
        assert_eq!(rest, vec![(0, 3), (0, 4), (0, 5)]);
        assert!(f.is_empty());
    }

    #[test]
    fn revoked_partitions_are_dropped_from_the_buffer() {
        let mut f = fetched(&[("a", 0, 0..3), ("a", 1, 0..2), ("b", 0, 0..4)]);
        assert_eq!(f.remove(|t, p| t == "a" && p == 1), 2);
        assert_eq!(f.len(), 7);
        let parts: BTreeSet<(String, i32)> = f
            .take(100)
            .into_iter()
            .map(|(t, p, _)| (t.to_string(), p))
            .collect();
        assert_eq!(parts, BTreeSet::from([("a".into(), 0), ("b".into(), 0)]));
    }

    #[test]
    fn offsets_round_trip_through_json() {
        let mut o = KafkaOffsets::new();
        o.set("orders", 0, 42);
        o.set("orders", 3, 7);
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json, serde_json::json!({"orders": {"0": 42, "3": 7}}));
        let back: KafkaOffsets = serde_json::from_value(json).unwrap();
        assert_eq!(back.get("orders", 3), Some(7));
        assert_eq!(back.get("orders", 1), None);
        assert_eq!(back, o);
    }

    #[test]
    fn server_errors_name_the_cluster() {
        let e = source_error(
            "10.0.0.1:9092",
            "consumer failed",
            KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown),
        );
        assert!(e.is_retryable());
        assert!(
            e.to_string()
                .contains("Kafka at 10.0.0.1:9092: consumer failed"),
            "{e}"
        );
        let e = source_error(
            "10.0.0.1:9092",
            "consumer failed",
            KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed),
        );
        assert!(!e.is_retryable(), "{e}");
    }
}
