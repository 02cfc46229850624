//! NATS JetStream: a durable pull-consumer source and a de-duplicating publish sink
//! (feature `nats`).
//!
//! - [`NatsSource`] reads a stream through a durable pull consumer with explicit
//!   acks. A message is acked only in [`Source::ack`], after the checkpoint holding it
//!   is saved; until then the source keeps its ack handle. Unbounded, or bounded with
//!   [`stop_when_drained`](NatsSource::stop_when_drained).
//! - [`NatsPublishSink`] publishes each record with a `Nats-Msg-Id` header derived
//!   from the record, so the server drops a replayed record within the stream's
//!   duplicate window: [`DeliveryGuarantee::Idempotent`].
//!
//! Errors name the server (`NATS at nats://127.0.0.1:4222: ...`); a lost connection or
//! a timeout is retryable. The client reconnects by itself.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, context::PublishAckFuture};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::dead_letter::DeadLetter;
use crate::error::{BoxError, Error, Location, RecordError, RecordErrorKind};
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::{Boundedness, Source, SourceBatch};

/// A failed NATS operation, naming the server and the operation.
#[derive(Debug, thiserror::Error)]
#[error("NATS at {server}: {operation}: {source}")]
pub struct NatsError {
    server: String,
    operation: String,
    #[source]
    source: BoxError,
}

impl NatsError {
    fn new(server: &str, operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        NatsError {
            server: server.to_owned(),
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// The server address, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The operation that failed.
    pub fn operation(&self) -> &str {
        &self.operation
    }
}

async fn connect(url: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .map_err(|e| NatsError::new(url, "connect", e))
}

// ---------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------

/// A message handed to a [`NatsSource`] decoder.
#[derive(Debug, Clone, Copy)]
pub struct NatsMessage<'a> {
    /// The subject it was published on.
    pub subject: &'a str,
    /// Its sequence number in the stream.
    pub stream_sequence: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// The position of a [`NatsSource`]: how many messages this run of the source has
/// returned (records and dead letters), and the stream sequence of the last one.
///
/// [`Source::ack`] acks the messages of this run up to `returned`. Where a restart
/// resumes is kept by the durable consumer on the server (its ack floor), not by this
/// position: messages that were delivered but not acked before a crash are delivered
/// again after the consumer's [`ack_wait`](NatsSource::ack_wait).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsPosition {
    /// Messages returned by this run of the source.
    pub returned: u64,
    /// The stream sequence of the last message returned.
    pub stream_sequence: u64,
}

type Decoder<T> = Box<dyn Fn(&NatsMessage<'_>) -> Result<T, BoxError> + Send + Sync>;

/// Figures of a [`NatsSource`], shared with a handle taken before the source goes into a
/// pipeline (see [`NatsSource::stats`]).
#[derive(Debug, Clone, Default)]
pub struct NatsSourceStats {
    inner: Arc<[AtomicU64; 3]>,
}

impl NatsSourceStats {
    /// Messages returned to the executor (records and dead letters).
    pub fn returned(&self) -> u64 {
        self.inner[0].load(Ordering::Relaxed)
    }
    /// Messages acked.
    pub fn acked(&self) -> u64 {
        self.inner[1].load(Ordering::Relaxed)
    }
    /// Messages delivered more than once (a redelivery after a crash or an ack wait).
    pub fn redelivered(&self) -> u64 {
        self.inner[2].load(Ordering::Relaxed)
    }
}

/// Reads a JetStream stream through a durable pull consumer with explicit acks.
///
/// - Creates the durable consumer if missing (deliver all, explicit ack, the given
///   [`ack_wait`](NatsSource::ack_wait), no limit on un-acked messages: the source
///   holds them until the checkpoint, so the checkpoint interval bounds them).
/// - Acks (`+ACK`) only in [`Source::ack`], after the checkpoint is saved. A message
///   not acked within `ack_wait` is delivered again: keep `ack_wait` well above the
///   checkpoint interval.
/// - A payload that does not decode becomes a dead letter naming the stream (as the
///   partition), the subject and the stream sequence (as the offset).
/// - Unbounded by default. With [`stop_when_drained`](NatsSource::stop_when_drained)
///   it is bounded: it ends once the consumer has nothing left to deliver and no
///   message is awaiting an ack elsewhere (e.g. from a crashed run, which it waits for).
///
/// Cancel safe: the pull request's message stream and the messages read but not yet
/// returned live in the source.
///
/// ```no_run
/// use batchstream::adapters::CollectSink;
/// use batchstream::connectors::nats::NatsSource;
/// use batchstream::{BatchExecutor, Pipeline, transform};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let source = NatsSource::<serde_json::Value>::json("nats://127.0.0.1:4222", "ORDERS", "billing")?
///     .stop_when_drained();
/// let (sink, out) = CollectSink::new();
/// BatchExecutor::new()
///     .run(Pipeline::new("billing", source, transform::identity(), sink))
///     .await?;
/// println!("{} orders", out.len());
/// # Ok(()) }
/// ```
pub struct NatsSource<T> {
    url: String,
    stream: String,
    durable: String,
    filter_subject: Option<String>,
    decode: Decoder<T>,
    ack_wait: Duration,
    expires: Duration,
    bounded: bool,
    consumer: Option<PullConsumer>,
    client: Option<async_nats::Client>,
    pull: Option<jetstream::consumer::pull::Batch>,
    /// Delivered to this source, not yet returned.
    ready: VecDeque<jetstream::Message>,
    /// Returned, not yet acked: (run index, stream sequence, ack handle).
    held: VecDeque<(u64, u64, jetstream::message::Acker)>,
    /// Stream sequences in `held`: a redelivery of one is not returned twice.
    held_sequences: HashSet<u64>,
    /// When the held messages' ack timers were last reset (`+WPI`).
    last_progress: Instant,
    returned: u64,
    last_sequence: u64,
    ended: bool,
    stats: NatsSourceStats,
}

impl<T> fmt::Debug for NatsSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("durable", &self.durable)
            .field("bounded", &self.bounded)
            .field("ready", &self.ready.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> NatsSource<T> {
    /// A source decoding each payload as JSON.
    ///
    /// # Errors
    /// [`Error::Config`] if a name is empty. Nothing is connected yet: the first
    /// `next_batch` connects and creates the consumer.
    pub fn json(
        url: impl Into<String>,
        stream: impl Into<String>,
        durable: impl Into<String>,
    ) -> crate::Result<Self> {
        Self::new(url, stream, durable, |m: &NatsMessage<'_>| {
            serde_json::from_slice(m.payload).map_err(Into::into)
        })
    }
}

impl<T> NatsSource<T> {
    /// A source reading `stream` through the durable consumer `durable`, turning each
    /// message into a record with `decode` (an `Err` makes it a dead letter).
    ///
    /// # Errors
    /// [`Error::Config`] if a name is empty.
    pub fn new(
        url: impl Into<String>,
        stream: impl Into<String>,
        durable: impl Into<String>,
        decode: impl Fn(&NatsMessage<'_>) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        let (url, stream, durable) = (url.into(), stream.into(), durable.into());
        for (what, name) in [
            ("server URL", &url),
            ("stream", &stream),
            ("consumer", &durable),
        ] {
            if name.is_empty() {
                return Err(Error::Config(format!("NATS source: empty {what}")));
            }
        }
        Ok(NatsSource {
            url,
            stream,
            durable,
            filter_subject: None,
            decode: Box::new(decode),
            ack_wait: Duration::from_secs(30),
            expires: Duration::from_secs(1),
            bounded: false,
            consumer: None,
            client: None,
            pull: None,
            ready: VecDeque::new(),
            held: VecDeque::new(),
            held_sequences: HashSet::new(),
            last_progress: Instant::now(),
            returned: 0,
            last_sequence: 0,
            ended: false,
            stats: NatsSourceStats::default(),
        })
    }

    /// Reads only the subjects matching `subject` (a consumer filter), when the
    /// consumer is created.
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// How long the server waits for an ack before delivering a message again
    /// (default 30 s; set when the consumer is created).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How long one pull request waits for messages (default 1 s).
    pub fn pull_expires(mut self, expires: Duration) -> Self {
        self.expires = expires.max(Duration::from_millis(10));
        self
    }

    /// Ends the input once the stream is drained (bounded), for batch runs and tests.
    pub fn stop_when_drained(mut self) -> Self {
        self.bounded = true;
        self
    }

    /// A handle to this source's figures.
    pub fn stats(&self) -> NatsSourceStats {
        self.stats.clone()
    }

    fn err(&self, operation: impl Into<String>, e: impl Into<BoxError>) -> NatsError {
        NatsError::new(&self.url, operation, e)
    }

    async fn consumer(&mut self) -> crate::Result<&mut PullConsumer> {
        if self.consumer.is_none() {
            let client = connect(&self.url).await.map_err(Error::source_retryable)?;
            let js = jetstream::new(client.clone());
            let stream = js.get_stream(&self.stream).await.map_err(|e| {
                use jetstream::context::GetStreamErrorKind;
                // A failed request (no reply in time) may succeed later; a missing
                // stream or a bad name will not.
                let transient = matches!(e.kind(), GetStreamErrorKind::Request);
                Error::source_with(
                    transient,
                    self.err(format!("get stream `{}`", self.stream), e),
                )
            })?;
            let config = jetstream::consumer::pull::Config {
                durable_name: Some(self.durable.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                max_ack_pending: -1,
                filter_subject: self.filter_subject.clone().unwrap_or_default(),
                ..Default::default()
            };
            let consumer = stream
                .get_or_create_consumer(&self.durable, config)
                .await
                .map_err(|e| {
                    use jetstream::stream::ConsumerErrorKind;
                    let transient = matches!(
                        e.kind(),
                        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request
                    );
                    Error::source_with(
                        transient,
                        self.err(
                            format!(
                                "create consumer `{}` on stream `{}`",
                                self.durable, self.stream
                            ),
                            e,
                        ),
                    )
                })?;
            self.client = Some(client);
            self.consumer = Some(consumer);
        }
        Ok(self.consumer.as_mut().expect("set above"))
    }

    /// Resets the ack timers of the held messages (`+WPI`, "work in progress") every
    /// half `ack_wait`, so the server does not deliver them again while this source
    /// waits for its checkpoint.
    async fn keep_alive(&mut self) {
        if self.held.is_empty() || self.last_progress.elapsed() < self.ack_wait / 2 {
            return;
        }
        self.last_progress = Instant::now();
        for (_, _, acker) in &self.held {
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "NATS progress ack failed");
                break;
            }
        }
    }

    /// Whether nothing is left to deliver and no message awaits an ack except ours.
    async fn drained(&mut self) -> crate::Result<bool> {
        let ours = self.held_sequences.len() + self.ready.len();
        let op = format!("consumer info of `{}`", self.durable);
        let url = self.url.clone();
        let info = self
            .consumer()
            .await?
            .info()
            .await
            .map_err(|e| Error::source_retryable(NatsError::new(&url, op, e)))?;
        Ok(info.num_pending == 0 && info.num_ack_pending <= ours)
    }

    fn take(&mut self, max: usize) -> SourceBatch<T, NatsPosition> {
        let n = self.ready.len().min(max.max(1));
        let mut records = Vec::with_capacity(n);
        let mut rejected = Vec::new();
        for (index, message) in self.ready.drain(..n).enumerate() {
            let (sequence, redelivered) = message
                .info()
                .map(|i| (i.stream_sequence, i.delivered > 1))
                .unwrap_or((0, false));
            if redelivered && self.held_sequences.contains(&sequence) {
                // Delivered again while this source still holds it (its ack wait ran
                // out): not a new record. Keep the new handle too; both get acked.
                let (_, acker) = message.split();
                self.held.push_back((self.returned, sequence, acker));
                continue;
            }
            if redelivered {
                self.stats.inner[2].fetch_add(1, Ordering::Relaxed);
            }
            let decoded = (self.decode)(&NatsMessage {
                subject: message.subject.as_str(),
                stream_sequence: sequence,
                payload: &message.payload,
            });
            match decoded {
                Ok(record) => records.push(record),
                Err(e) => {
                    let mut location = Location::default()
                        .with_partition(self.stream.clone())
                        .with_offset(sequence);
                    location.index_in_batch = Some(index as u64);
                    rejected.push(DeadLetter::unparsed(
                        RecordError::new(
                            RecordErrorKind::Parse,
                            "nats",
                            format!(
                                "message on subject `{}` (stream `{}`, sequence {sequence}) does not decode: {e}",
                                message.subject, self.stream
                            ),
                            location,
                        ),
                        String::from_utf8_lossy(&message.payload).into_owned(),
                    ));
                }
            }
            let (_, acker) = message.split();
            self.returned += 1;
            self.last_sequence = sequence;
            self.held.push_back((self.returned, sequence, acker));
            self.held_sequences.insert(sequence);
            self.stats.inner[0].fetch_add(1, Ordering::Relaxed);
        }
        SourceBatch::new(
            records,
            NatsPosition {
                returned: self.returned,
                stream_sequence: self.last_sequence,
            },
        )
        .with_rejected(rejected)
    }
}

impl<T: Send + 'static> Source for NatsSource<T> {
    type Item = T;
    type Position = NatsPosition;

    fn boundedness(&self) -> Boundedness {
        if self.bounded {
            Boundedness::Bounded
        } else {
            Boundedness::Unbounded
        }
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> crate::Result<Option<SourceBatch<T, NatsPosition>>> {
        loop {
            self.keep_alive().await;
            if !self.ready.is_empty() {
                let batch = self.take(max);
                if batch.records.is_empty() && batch.rejected.is_empty() {
                    continue; // only redeliveries of held messages
                }
                return Ok(Some(batch));
            }
            if self.ended {
                return Ok(None);
            }
            if let Some(pull) = self.pull.as_mut() {
                match pull.next().await {
                    Some(Ok(message)) => {
                        self.ready.push_back(message);
                        // Take what else has arrived, without waiting.
                        while self.ready.len() < max {
                            match pull.next().now_or_never() {
                                Some(Some(Ok(message))) => self.ready.push_back(message),
                                Some(Some(Err(_))) | Some(None) => {
                                    // Seen again (error) or ended on the next poll.
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Some(Err(e)) => {
                        self.pull = None;
                        let op = format!("pull from consumer `{}`", self.durable);
                        return Err(Error::source_retryable(self.err(op, e)));
                    }
                    None => {
                        self.pull = None;
                        if self.bounded && self.drained().await? {
                            self.ended = true;
                        }
                    }
                }
                continue;
            }
            let (want, expires) = (max.max(1), self.expires);
            let op = format!("pull request to consumer `{}`", self.durable);
            let url = self.url.clone();
            let pull = self
                .consumer()
                .await?
                .batch()
                .max_messages(want)
                .expires(expires)
                .messages()
                .await
                .map_err(|e| Error::source_retryable(NatsError::new(&url, op, e)))?;
            self.pull = Some(pull);
        }
    }

    async fn seek(&mut self, _position: NatsPosition) -> crate::Result<()> {
        // The durable consumer keeps where this source resumes; positions of an earlier
        // run name messages of that run only.
        Ok(())
    }

    async fn ack(&mut self, position: &NatsPosition) -> crate::Result<()> {
        while self
            .held
            .front()
            .is_some_and(|(index, _, _)| *index <= position.returned)
        {
            let (index, sequence, acker) = self.held.pop_front().expect("checked");
            if let Err(e) = acker.ack_with(AckKind::Ack).await {
                self.held.push_front((index, sequence, acker));
                let op = format!("ack on consumer `{}`", self.durable);
                // The checkpoint is saved: a failed ack only means a redelivery later,
                // which the next ack call or the server's ack wait takes care of.
                tracing::warn!(error = %self.err(op, e), "NATS ack failed; retrying at the next checkpoint");
                return Ok(());
            }
            if self.held_sequences.remove(&sequence) {
                self.stats.inner[1].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(client) = &self.client
            && let Err(e) = client.flush().await
        {
            tracing::warn!(error = %self.err("flush acks", e), "NATS flush failed");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Publish sink
// ---------------------------------------------------------------------------------

type IdFn<T> = Box<dyn Fn(&T) -> String + Send + Sync>;
type EncodeFn<T> = Box<dyn Fn(&T) -> Result<Vec<u8>, BoxError> + Send + Sync>;

/// Figures of a [`NatsPublishSink`] (see [`NatsPublishSink::stats`]).
#[derive(Debug, Clone, Default)]
pub struct NatsPublishStats {
    inner: Arc<[AtomicU64; 2]>,
}

impl NatsPublishStats {
    /// Publishes acknowledged by the server.
    pub fn acked(&self) -> u64 {
        self.inner[0].load(Ordering::Relaxed)
    }
    /// Publishes the server dropped as duplicates (same `Nats-Msg-Id` within the
    /// stream's duplicate window).
    pub fn duplicates(&self) -> u64 {
        self.inner[1].load(Ordering::Relaxed)
    }
}

/// Publishes each record to a JetStream subject with a `Nats-Msg-Id` header from
/// `msg_id(record)`. The server drops a message whose id it has seen within the
/// stream's duplicate window (2 minutes by default), so records replayed after a crash
/// are stored once: [`DeliveryGuarantee::Idempotent`], within that window.
///
/// `write` publishes without waiting; [`flush`](Sink::flush) (before every checkpoint)
/// waits for every publish ack, so a checkpoint never covers a message the server has
/// not stored. A failed or timed-out ack is a retryable sink error.
///
/// ```no_run
/// use batchstream::Sink;
/// use batchstream::connectors::nats::NatsPublishSink;
///
/// #[derive(serde::Serialize)]
/// struct Alert { id: u64, card: String }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let mut sink = NatsPublishSink::json("nats://127.0.0.1:4222", "alerts.fraud", |a: &Alert| {
///     format!("alert-{}", a.id)
/// })?;
/// sink.write(vec![Alert { id: 1, card: "4242".into() }]).await?;
/// sink.flush().await?;
/// # Ok(()) }
/// ```
pub struct NatsPublishSink<T> {
    url: String,
    subject: String,
    msg_id: IdFn<T>,
    encode: EncodeFn<T>,
    js: Option<jetstream::Context>,
    in_flight: Vec<(String, PublishAckFuture)>,
    stats: NatsPublishStats,
}

impl<T> fmt::Debug for NatsPublishSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublishSink")
            .field("url", &self.url)
            .field("subject", &self.subject)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> NatsPublishSink<T> {
    /// A sink publishing each record as JSON.
    ///
    /// # Errors
    /// [`Error::Config`] if the URL or subject is empty.
    pub fn json(
        url: impl Into<String>,
        subject: impl Into<String>,
        msg_id: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        Self::new(url, subject, msg_id, |r: &T| {
            serde_json::to_vec(r).map_err(Into::into)
        })
    }
}

/// Publish acks awaited together at most: bounds memory and the client's in-flight
/// window.
const MAX_IN_FLIGHT: usize = 1000;

impl<T> NatsPublishSink<T> {
    /// A sink publishing `encode(record)` on `subject` with message id `msg_id(record)`.
    ///
    /// # Errors
    /// [`Error::Config`] if the URL or subject is empty.
    pub fn new(
        url: impl Into<String>,
        subject: impl Into<String>,
        msg_id: impl Fn(&T) -> String + Send + Sync + 'static,
        encode: impl Fn(&T) -> Result<Vec<u8>, BoxError> + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        let (url, subject) = (url.into(), subject.into());
        if url.is_empty() || subject.is_empty() {
            return Err(Error::Config(
                "NATS publish sink: empty server URL or subject".into(),
            ));
        }
        Ok(NatsPublishSink {
            url,
            subject,
            msg_id: Box::new(msg_id),
            encode: Box::new(encode),
            js: None,
            in_flight: Vec::new(),
            stats: NatsPublishStats::default(),
        })
    }

    /// A handle to this sink's figures (acked, duplicates dropped by the server).
    pub fn stats(&self) -> NatsPublishStats {
        self.stats.clone()
    }

    fn err(&self, operation: impl Into<String>, e: impl Into<BoxError>) -> NatsError {
        NatsError::new(&self.url, operation, e)
    }

    async fn await_acks(&mut self) -> crate::Result<()> {
        let pending = std::mem::take(&mut self.in_flight);
        let results = futures::future::join_all(
            pending
                .into_iter()
                .map(|(id, ack)| async move { (id, ack.await) }),
        )
        .await;
        let mut failed = None;
        for (id, result) in results {
            match result {
                Ok(ack) => {
                    self.stats.inner[0].fetch_add(1, Ordering::Relaxed);
                    if ack.duplicate {
                        self.stats.inner[1].fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    failed.get_or_insert((id, e));
                }
            }
        }
        match failed {
            None => Ok(()),
            Some((id, e)) => {
                let op = format!("publish ack for message id `{id}` on `{}`", self.subject);
                Err(Error::sink_retryable("flush", self.err(op, e)))
            }
        }
    }
}

impl<T: Send + 'static> Sink for NatsPublishSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }

    async fn write(&mut self, batch: Vec<T>) -> crate::Result<()> {
        if self.js.is_none() {
            let client = connect(&self.url)
                .await
                .map_err(|e| Error::sink_retryable("write", e))?;
            self.js = Some(jetstream::new(client));
        }
        for (index, record) in batch.into_iter().enumerate() {
            let payload = (self.encode)(&record).map_err(|e| {
                Error::sink(
                    "write",
                    format!(
                        "record {index} of the batch for `{}` does not encode: {e}",
                        self.subject
                    ),
                )
            })?;
            let id = (self.msg_id)(&record);
            drop(record);
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(&id);
            let js = self.js.as_ref().expect("connected above");
            let ack = js
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| {
                    Error::sink_retryable(
                        "write",
                        self.err(
                            format!("publish message id `{id}` on `{}`", self.subject),
                            e,
                        ),
                    )
                })?;
            self.in_flight.push((id, ack));
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.await_acks().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> crate::Result<()> {
        self.await_acks().await
    }
}
