//! Redis: a Streams source with consumer groups, a Streams sink, a counter sink and a
//! checkpoint store (feature `redis`).
//!
//! - [`RedisStreamSource`] reads a stream as one consumer of a consumer group
//!   (`XREADGROUP`). Entries are acknowledged (`XACK`) only in [`Source::ack`], after
//!   the checkpoint holding them is saved. On start it re-reads its own pending
//!   entries, then reclaims the pending entries of dead consumers (`XAUTOCLAIM`).
//! - [`RedisStreamSink`] appends records to a stream (`XADD`, pipelined per batch).
//! - [`RedisCounterSink`] adds an increment per record to a key (`INCRBYFLOAT` and an
//!   expiry, one `MULTI`/`EXEC` per batch): the speed layer of a Lambda architecture.
//! - [`RedisCheckpointStore`] keeps each pipeline's checkpoint as JSON under
//!   `batchstream:checkpoint:{id}`.
//! - [`RedisSpeedStore`] is a Lambda speed layer ([`SpeedStore`]): expiring counters
//!   per `(key, period)`, `INCRBY`/`INCRBYFLOAT` + `PEXPIRE .. NX` (Redis 7.0+).
//!
//! # Connection loss
//! Every component names its server in its errors (`Redis at 127.0.0.1:6379: ...`).
//! A lost connection, a refused connection or a timeout is a *retryable* error and
//! the next call reconnects, so a pipeline with
//! [`Pipeline::with_retry`](crate::Pipeline::with_retry) rides over a Redis restart or
//! a `CLIENT KILL`. The sinks retry transient failures inside `write` (their
//! [`retry`](RedisStreamSink::retry) policy), since executors do not retry writes; the
//! checkpoint store reconnects and tries once more before it reports a failure.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, RedisError, Value};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::dead_letter::DeadLetter;
use crate::error::{BoxError, CheckpointError, Error, Location, RecordError, RecordErrorKind};
use crate::retry::RetryPolicy;
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::{Boundedness, Source, SourceBatch};

/// The field that [`RedisStreamSource::json`] reads and [`RedisStreamSink::json`]
/// writes: `data`.
pub const DEFAULT_FIELD: &str = "data";

/// A failed Redis command, naming the server and the operation.
#[derive(Debug, thiserror::Error)]
#[error("{server}: {operation}: {source}")]
pub struct RedisCommandError {
    server: String,
    operation: String,
    transient: bool,
    #[source]
    source: RedisError,
}

impl RedisCommandError {
    /// The server, as `Redis at host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The operation that failed, e.g. ``XREADGROUP on stream `orders` ``.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// Whether the failure is transient (connection lost or refused, timeout, server
    /// loading): a retry after reconnecting may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The underlying client error.
    pub fn redis_error(&self) -> &RedisError {
        &self.source
    }

    fn into_source_error(self) -> Error {
        Error::source_with(self.transient, self)
    }

    fn into_sink_error(self, operation: &'static str) -> Error {
        Error::sink_with(operation, self.transient, self)
    }
}

/// Whether retrying `e` after reconnecting may succeed.
fn is_transient(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        )
}

/// A lazily (re)connected multiplexed connection. Clones share the connection.
#[derive(Clone)]
struct Conn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    client: Client,
    server: String,
    config: AsyncConnectionConfig,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.server)
    }
}

impl Conn {
    /// Parses `url`; connects on first use. `response_timeout` bounds every reply.
    fn open(url: &str, response_timeout: Duration) -> crate::Result<Self> {
        let client = Client::open(url)
            .map_err(|e| Error::Config(format!("invalid Redis URL `{url}`: {e}")))?;
        let server = format!("Redis at {}", client.get_connection_info().addr());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(response_timeout));
        Ok(Conn {
            inner: Arc::new(ConnInner {
                client,
                server,
                config,
                conn: Mutex::new(None),
            }),
        })
    }

    fn server(&self) -> &str {
        &self.inner.server
    }

    fn slot(&self) -> MutexGuard<'_, Option<MultiplexedConnection>> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, operation: &str, source: RedisError) -> RedisCommandError {
        let transient = is_transient(&source);
        if transient {
            // Reconnect on the next call.
            *self.slot() = None;
        }
        RedisCommandError {
            server: self.inner.server.clone(),
            operation: operation.to_owned(),
            transient,
            source,
        }
    }

    async fn connection(
        &self,
        operation: &str,
    ) -> Result<MultiplexedConnection, RedisCommandError> {
        if let Some(c) = self.slot().clone() {
            return Ok(c);
        }
        let c = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await
            .map_err(|e| self.fail(operation, e))?;
        *self.slot() = Some(c.clone());
        Ok(c)
    }

    async fn query<T: FromRedisValue>(
        &self,
        operation: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisCommandError> {
        let mut c = self.connection(operation).await?;
        cmd.query_async(&mut c)
            .await
            .map_err(|e| self.fail(operation, e))
    }

    async fn query_pipe<T: FromRedisValue>(
        &self,
        operation: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisCommandError> {
        let mut c = self.connection(operation).await?;
        pipe.query_async(&mut c)
            .await
            .map_err(|e| self.fail(operation, e))
    }

    /// Runs `pipe`, retrying transient failures as `policy` allows.
    async fn exec_pipe_retrying(
        &self,
        operation: &str,
        pipe: &redis::Pipeline,
        policy: &RetryPolicy,
    ) -> Result<(), RedisCommandError> {
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            match self.query_pipe::<()>(operation, pipe).await {
                Err(e) if e.transient && policy.allows(attempt, first.elapsed()) => {
                    tracing::warn!(attempt, error = %e, "retrying Redis write");
                    tokio::time::sleep(policy.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Stream entries and reply parsing
// ---------------------------------------------------------------------------------

/// One entry of a Redis stream, as handed to a source's decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, e.g. `1700000000000-0`.
    pub id: String,
    /// The field-value pairs, in the order they were added.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    /// The value of field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The entry as JSON text (`{"id":..,"fields":{..}}`, values as lossy UTF-8), for
    /// dead letters.
    fn raw_json(&self, stream: &str) -> String {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(f, v)| (f.clone(), String::from_utf8_lossy(v).into_owned().into()))
            .collect();
        serde_json::json!({ "stream": stream, "id": self.id, "fields": fields }).to_string()
    }
}

/// An entry read from Redis: `fields` is `None` when the entry was deleted (trimmed)
/// while it was pending.
#[derive(Debug)]
struct Pending {
    id: String,
    fields: Option<Vec<(String, Vec<u8>)>>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn unexpected(what: &str, v: &Value) -> String {
    format!("unexpected reply to {what}: {v:?}")
}

/// `[id, [field, value, ...] | nil]`.
fn parse_entry(v: Value) -> Result<Pending, String> {
    let Value::Array(mut parts) = v else {
        return Err(unexpected("a stream entry", &v));
    };
    if parts.len() != 2 {
        return Err(format!("a stream entry has {} parts, not 2", parts.len()));
    }
    let fields = parts.pop().unwrap_or(Value::Nil);
    let id = text(&parts[0]).ok_or_else(|| unexpected("an entry id", &parts[0]))?;
    let fields = match fields {
        Value::Nil => None,
        Value::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                let f = text(&f).ok_or_else(|| unexpected("a field name", &f))?;
                let v =
                    bytes(v).ok_or_else(|| format!("field `{f}` of entry {id} is no string"))?;
                pairs.push((f, v));
            }
            Some(pairs)
        }
        Value::Map(kv) => {
            let mut pairs = Vec::with_capacity(kv.len());
            for (f, v) in kv {
                let f = text(&f).ok_or_else(|| unexpected("a field name", &f))?;
                let v =
                    bytes(v).ok_or_else(|| format!("field `{f}` of entry {id} is no string"))?;
                pairs.push((f, v));
            }
            Some(pairs)
        }
        other => return Err(unexpected("entry fields", &other)),
    };
    Ok(Pending { id, fields })
}

fn parse_entries(v: Value) -> Result<Vec<Pending>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => items.into_iter().map(parse_entry).collect(),
        other => Err(unexpected("a list of entries", &other)),
    }
}

/// The reply of `XREADGROUP` on one stream: nil (timeout) or `[[key, entries]]`.
fn parse_read_reply(v: Value) -> Result<Vec<Pending>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                let Value::Array(mut kv) = s else {
                    return Err(unexpected("XREADGROUP", &s));
                };
                if kv.len() != 2 {
                    return Err(format!("XREADGROUP stream reply has {} parts", kv.len()));
                }
                out.extend(parse_entries(kv.pop().unwrap_or(Value::Nil))?);
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, entries) in streams {
                out.extend(parse_entries(entries)?);
            }
            Ok(out)
        }
        other => Err(unexpected("XREADGROUP", &other)),
    }
}

/// The reply of `XAUTOCLAIM`: `[next cursor, entries, deleted ids]`.
fn parse_autoclaim_reply(v: Value) -> Result<(String, Vec<Pending>, Vec<String>), String> {
    let Value::Array(parts) = v else {
        return Err(unexpected("XAUTOCLAIM", &v));
    };
    let mut it = parts.into_iter();
    let cursor = it.next().ok_or("XAUTOCLAIM reply is empty")?;
    let cursor = text(&cursor).ok_or_else(|| unexpected("an XAUTOCLAIM cursor", &cursor))?;
    let claimed = match it.next() {
        Some(Value::Array(items)) => items
            .into_iter()
            // Redis 6 lists deleted entries as nil; Redis 7 lists their ids separately.
            .filter(|i| !matches!(i, Value::Nil))
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(unexpected("XAUTOCLAIM entries", &other)),
        None => Vec::new(),
    };
    let deleted = match it.next() {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|i| text(i).ok_or_else(|| unexpected("a deleted id", i)))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok((cursor, claimed, deleted))
}

// ---------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------

/// The position of a [`RedisStreamSource`]: the ids of the entries returned since the
/// last ack (decoded and dead-lettered alike), oldest first.
///
/// [`Source::ack`] acknowledges exactly these ids (`XACK`). After a restart,
/// [`Source::seek`] acknowledges them too: the checkpoint that holds them is durable,
/// so if the process died between saving it and acking, they are not processed again.
/// Where the group resumes is kept by Redis itself (the group's last delivered id and
/// the pending entries), not by this position.
///
/// Its size (and the checkpoint's) grows with the entries read between two
/// checkpoints: about 20 bytes per entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisStreamPosition {
    /// Entry ids read since the last ack.
    pub ids: Vec<String>,
}

/// Figures of a [`RedisStreamSource`], shared with a handle taken before the source is
/// handed to a pipeline (see [`RedisStreamSource::stats`]).
#[derive(Debug, Clone, Default)]
pub struct RedisStreamStats {
    inner: Arc<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    returned: AtomicU64,
    reclaimed: AtomicU64,
    redelivered_own: AtomicU64,
    acked: AtomicU64,
}

impl RedisStreamStats {
    /// Entries returned to the executor (records and dead letters).
    pub fn returned(&self) -> u64 {
        self.inner.returned.load(Ordering::Relaxed)
    }
    /// Entries taken over from other consumers with `XAUTOCLAIM`.
    pub fn reclaimed(&self) -> u64 {
        self.inner.reclaimed.load(Ordering::Relaxed)
    }
    /// Entries of this consumer that were pending when it started (or after an
    /// interrupted read) and were read again.
    pub fn redelivered_own(&self) -> u64 {
        self.inner.redelivered_own.load(Ordering::Relaxed)
    }
    /// Entries acknowledged with `XACK`.
    pub fn acked(&self) -> u64 {
        self.inner.acked.load(Ordering::Relaxed)
    }
}

type Decoder<T> = Box<dyn Fn(&StreamEntry) -> Result<T, BoxError> + Send + Sync>;

/// Where the source reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// This consumer's own pending entries with ids after the cursor.
    Own(String),
    /// Other consumers' idle pending entries, from the `XAUTOCLAIM` cursor.
    Claim(String),
    /// New entries (`>`).
    New,
}

/// A decoder for [`RedisStreamSource::new`]: field `field` of each entry, as JSON.
///
/// ```
/// use batchstream::connectors::redis::{json_field, StreamEntry};
///
/// let decode = json_field::<u32>("n");
/// let entry = StreamEntry { id: "1-0".into(), fields: vec![("n".into(), b"7".to_vec())] };
/// assert_eq!(decode(&entry).unwrap(), 7);
/// ```
pub fn json_field<T: DeserializeOwned>(
    field: &str,
) -> impl Fn(&StreamEntry) -> Result<T, BoxError> + Send + Sync + 'static {
    let field = field.to_owned();
    move |entry: &StreamEntry| {
        let value = entry
            .field(&field)
            .ok_or_else(|| format!("no field `{field}`"))?;
        serde_json::from_slice(value).map_err(|e| format!("field `{field}`: {e}").into())
    }
}

/// Reads a Redis stream as one consumer of a consumer group.
///
/// - Creates the group if missing (`XGROUP CREATE .. MKSTREAM`, from the start of the
///   stream unless [`start_at_end`](RedisStreamSource::start_at_end)).
/// - On start, re-reads this consumer's own pending entries (`XREADGROUP .. 0`): what
///   a previous run of the same consumer read but did not ack. Then it reclaims the
///   pending entries of other consumers idle for at least
///   [`min_idle`](RedisStreamSource::min_idle) (`XAUTOCLAIM`), and does so again every
///   [`claim_interval`](RedisStreamSource::claim_interval): the entries of a consumer
///   that died are processed by the survivors.
/// - Then it reads new entries (`XREADGROUP .. >`), blocking at most
///   [`block`](RedisStreamSource::block) per call to Redis. `next_batch` waits until
///   there is something to return.
/// - Acknowledges (`XACK`) only in [`Source::ack`], after the checkpoint is saved. An
///   ack that fails on a lost connection is retried on the next call (the entries stay
///   pending until then, and a restart acks them from the checkpoint).
/// - Entries that do not decode, and pending entries that were deleted from the
///   stream before they were processed, become dead letters naming the stream and the
///   entry id.
///
/// Unbounded. Cancel safe: entries read but not yet returned are kept in the source,
/// and a read whose reply was lost (cancelled, or the connection dropped) is
/// recovered by re-reading this consumer's pending entries.
///
/// Keep [`min_idle`](RedisStreamSource::min_idle) well above the checkpoint interval:
/// entries a live consumer holds until its next checkpoint count as idle to the others.
///
/// ```no_run
/// use batchstream::adapters::CollectSink;
/// use batchstream::checkpoint::MemoryCheckpointStore;
/// use batchstream::connectors::redis::RedisStreamSource;
/// use batchstream::transform;
/// use batchstream::{Pipeline, StreamExecutor};
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Order { id: u64, amount_cents: i64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// // Each entry holds its order as JSON in the field `data`.
/// let source = RedisStreamSource::<Order>::json(
///     "redis://127.0.0.1:6379", "orders", "billing", "worker-1",
/// )?;
/// let (sink, _out) = CollectSink::new();
/// let pipeline = Pipeline::new("billing-worker-1", source, transform::identity(), sink)
///     .with_checkpoint_store(MemoryCheckpointStore::new());
/// StreamExecutor::new().run(pipeline).await?;
/// # Ok(()) }
/// ```
pub struct RedisStreamSource<T> {
    conn: Conn,
    stream: String,
    group: String,
    consumer: String,
    decode: Decoder<T>,
    start_id: &'static str,
    block: Duration,
    min_idle: Duration,
    claim_interval: Duration,
    group_ready: bool,
    phase: Phase,
    next_claim: Option<Instant>,
    /// Read (so pending for this consumer) but not returned yet.
    buffered: VecDeque<Pending>,
    /// Returned since the last ack, oldest first.
    unacked: Vec<String>,
    /// Acks that failed on a transient error, retried on the next call.
    owed: Vec<String>,
    /// A read was sent and its reply not stored: the entries it delivered are pending
    /// for this consumer, and are read again from the pending list.
    in_flight: bool,
    stats: RedisStreamStats,
}

impl<T> fmt::Debug for RedisStreamSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamSource")
            .field("server", &self.conn)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("phase", &self.phase)
            .field("buffered", &self.buffered.len())
            .field("unacked", &self.unacked.len())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> RedisStreamSource<T> {
    /// A source decoding field [`DEFAULT_FIELD`] (`data`) of each entry as JSON.
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL. Nothing is connected yet: the
    /// first `next_batch` connects.
    pub fn json(
        url: &str,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> crate::Result<Self> {
        Self::new(url, stream, group, consumer, json_field(DEFAULT_FIELD))
    }
}

impl<T> RedisStreamSource<T> {
    /// A source reading `stream` as `consumer` of `group`, turning each entry into a
    /// record with `decode` (an `Err` makes the entry a dead letter).
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL or a name is empty.
    pub fn new(
        url: &str,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        decode: impl Fn(&StreamEntry) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        let (stream, group, consumer) = (stream.into(), group.into(), consumer.into());
        for (what, name) in [
            ("stream", &stream),
            ("group", &group),
            ("consumer", &consumer),
        ] {
            if name.is_empty() {
                return Err(Error::Config(format!(
                    "Redis stream source: empty {what} name"
                )));
            }
        }
        let block = Duration::from_millis(200);
        Ok(RedisStreamSource {
            conn: Conn::open(url, Duration::from_secs(5) + block)?,
            stream,
            group,
            consumer,
            decode: Box::new(decode),
            start_id: "0",
            block,
            min_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(30),
            group_ready: false,
            phase: Phase::Own("0".into()),
            next_claim: None,
            buffered: VecDeque::new(),
            unacked: Vec::new(),
            owed: Vec::new(),
            in_flight: false,
            stats: RedisStreamStats::default(),
        })
    }

    /// How long one read blocks in Redis waiting for new entries (default 200 ms).
    /// Short, so that a shutdown or a checkpoint timer is not kept waiting.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self.conn = self.reopened(Duration::from_secs(5) + self.block);
        self
    }

    /// How long another consumer's pending entry must be idle before this one
    /// reclaims it (default 60 s).
    pub fn min_idle(mut self, min_idle: Duration) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// How often to look for idle pending entries of other consumers (default 30 s;
    /// also once at start).
    pub fn claim_interval(mut self, every: Duration) -> Self {
        self.claim_interval = every;
        self
    }

    /// When the group does not exist yet, create it at the end of the stream (`$`: only
    /// entries added from now on), instead of at its start (`0`, the default).
    pub fn start_at_end(mut self) -> Self {
        self.start_id = "$";
        self
    }

    /// A handle to this source's figures (entries returned, reclaimed, acked).
    pub fn stats(&self) -> RedisStreamStats {
        self.stats.clone()
    }

    fn reopened(&self, response_timeout: Duration) -> Conn {
        let inner = &self.conn.inner;
        Conn {
            inner: Arc::new(ConnInner {
                client: inner.client.clone(),
                server: inner.server.clone(),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(response_timeout)),
                conn: Mutex::new(None),
            }),
        }
    }

    fn op(&self, command: &str) -> String {
        format!(
            "{command} on stream `{}` (group `{}`, consumer `{}`)",
            self.stream, self.group, self.consumer
        )
    }

    /// Creates the group if needed, sends owed acks, and recovers from a lost read.
    async fn prepare(&mut self) -> crate::Result<()> {
        if !self.group_ready {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(self.start_id)
                .arg("MKSTREAM");
            match self.conn.query::<()>(&self.op("XGROUP CREATE"), &cmd).await {
                Ok(()) => {}
                Err(e) if e.source.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into_source_error()),
            }
            self.group_ready = true;
        }
        if !self.owed.is_empty() {
            let ids = std::mem::take(&mut self.owed);
            if let Err(e) = self.xack(&ids).await {
                self.owed = ids;
                return Err(e.into_source_error());
            }
        }
        if self.in_flight {
            // The reply of the last read was lost: what it delivered is pending for
            // this consumer. Read the whole pending list again (held ids are skipped).
            self.in_flight = false;
            self.phase = Phase::Own("0".into());
        }
        Ok(())
    }

    async fn xack(&self, ids: &[String]) -> Result<(), RedisCommandError> {
        for chunk in ids.chunks(1000) {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.stream).arg(&self.group).arg(chunk);
            let n: u64 = self.conn.query(&self.op("XACK"), &cmd).await?;
            self.stats.inner.acked.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Ids this source holds: returned but not acked, or owed an ack.
    fn held(&self) -> HashSet<&str> {
        self.unacked
            .iter()
            .chain(&self.owed)
            .chain(self.buffered.iter().map(|p| &p.id))
            .map(String::as_str)
            .collect()
    }

    /// Buffers the entries this source does not hold already; returns how many.
    fn buffer(&mut self, entries: Vec<Pending>) -> usize {
        let fresh: Vec<Pending> = {
            let held = self.held();
            entries
                .into_iter()
                .filter(|p| !held.contains(p.id.as_str()))
                .collect()
        };
        let n = fresh.len();
        self.buffered.extend(fresh);
        n
    }

    fn claim_due(&self) -> bool {
        self.next_claim.is_none_or(|t| Instant::now() >= t)
    }

    /// Reads from Redis into the buffer once, following the phase.
    async fn fill(&mut self, max: usize) -> crate::Result<()> {
        let count = max.max(1);
        match self.phase.clone() {
            Phase::Own(cursor) => {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(&cursor);
                self.in_flight = true;
                let reply: Value = self
                    .conn
                    .query(&self.op("XREADGROUP (pending)"), &cmd)
                    .await
                    .map_err(RedisCommandError::into_source_error)?;
                self.in_flight = false;
                let entries = parse_read_reply(reply).map_err(|e| self.protocol(e))?;
                match entries.last() {
                    None => {
                        self.phase = if self.claim_due() {
                            Phase::Claim("0-0".into())
                        } else {
                            Phase::New
                        };
                    }
                    Some(last) => {
                        self.phase = Phase::Own(last.id.clone());
                        let n = self.buffer(entries);
                        self.stats
                            .inner
                            .redelivered_own
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            Phase::Claim(cursor) => {
                let mut cmd = redis::cmd("XAUTOCLAIM");
                cmd.arg(&self.stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(self.min_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(count);
                self.in_flight = true;
                let reply: Value = self
                    .conn
                    .query(&self.op("XAUTOCLAIM"), &cmd)
                    .await
                    .map_err(RedisCommandError::into_source_error)?;
                self.in_flight = false;
                let (next, claimed, deleted) =
                    parse_autoclaim_reply(reply).map_err(|e| self.protocol(e))?;
                let n = self.buffer(claimed);
                if n > 0 {
                    tracing::info!(
                        stream = %self.stream,
                        consumer = %self.consumer,
                        reclaimed = n,
                        "reclaimed idle pending entries"
                    );
                }
                self.stats
                    .inner
                    .reclaimed
                    .fetch_add(n as u64, Ordering::Relaxed);
                // Entries deleted while pending: Redis dropped them from the pending
                // list; report them instead of losing them silently.
                self.buffered
                    .extend(deleted.into_iter().map(|id| Pending { id, fields: None }));
                if next == "0-0" {
                    self.phase = Phase::New;
                    self.next_claim = Some(Instant::now() + self.claim_interval);
                } else {
                    self.phase = Phase::Claim(next);
                }
            }
            Phase::New => {
                if self.claim_due() {
                    self.phase = Phase::Claim("0-0".into());
                    return Ok(());
                }
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(self.block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(">");
                self.in_flight = true;
                let reply: Value = self
                    .conn
                    .query(&self.op("XREADGROUP"), &cmd)
                    .await
                    .map_err(RedisCommandError::into_source_error)?;
                self.in_flight = false;
                let entries = parse_read_reply(reply).map_err(|e| self.protocol(e))?;
                // New entries (`>`) were never delivered before: nothing to skip.
                self.buffered.extend(entries);
            }
        }
        Ok(())
    }

    fn protocol(&self, message: String) -> Error {
        Error::source(format!(
            "{}: {}: {message}",
            self.conn.server(),
            self.op("reading")
        ))
    }

    fn take(&mut self, max: usize) -> SourceBatch<T, RedisStreamPosition> {
        let n = self.buffered.len().min(max.max(1));
        let mut records = Vec::with_capacity(n);
        let mut rejected = Vec::new();
        for (index, pending) in self.buffered.drain(..n).enumerate() {
            self.unacked.push(pending.id.clone());
            let mut location = Location::default().with_partition(self.stream.clone());
            location.index_in_batch = Some(index as u64);
            match pending.fields {
                None => rejected.push(DeadLetter::unparsed(
                    RecordError::new(
                        RecordErrorKind::Parse,
                        "redis-stream",
                        format!(
                            "entry {} of stream `{}` was deleted (trimmed?) while pending, before it was processed",
                            pending.id, self.stream
                        ),
                        location,
                    ),
                    serde_json::json!({ "stream": self.stream, "id": pending.id }).to_string(),
                )),
                Some(fields) => {
                    let entry = StreamEntry {
                        id: pending.id,
                        fields,
                    };
                    match (self.decode)(&entry) {
                        Ok(record) => records.push(record),
                        Err(e) => rejected.push(DeadLetter::unparsed(
                            RecordError::new(
                                RecordErrorKind::Parse,
                                "redis-stream",
                                format!(
                                    "entry {} of stream `{}` does not decode: {e}",
                                    entry.id, self.stream
                                ),
                                location,
                            ),
                            entry.raw_json(&self.stream),
                        )),
                    }
                }
            }
        }
        self.stats
            .inner
            .returned
            .fetch_add(n as u64, Ordering::Relaxed);
        SourceBatch::new(
            records,
            RedisStreamPosition {
                ids: self.unacked.clone(),
            },
        )
        .with_rejected(rejected)
    }
}

impl<T: Send + 'static> Source for RedisStreamSource<T> {
    type Item = T;
    type Position = RedisStreamPosition;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Unbounded
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> crate::Result<Option<SourceBatch<T, RedisStreamPosition>>> {
        loop {
            if !self.buffered.is_empty() {
                return Ok(Some(self.take(max)));
            }
            self.prepare().await?;
            self.fill(max).await?;
        }
    }

    async fn seek(&mut self, position: RedisStreamPosition) -> crate::Result<()> {
        // These entries are in a durable checkpoint: ack them (on the first read, so a
        // connection failure here is retried like any read).
        self.owed.extend(position.ids);
        Ok(())
    }

    async fn ack(&mut self, position: &RedisStreamPosition) -> crate::Result<()> {
        let acked: HashSet<&str> = position.ids.iter().map(String::as_str).collect();
        self.unacked.retain(|id| !acked.contains(id.as_str()));
        let mut ids = std::mem::take(&mut self.owed);
        ids.extend(position.ids.iter().cloned());
        match self.xack(&ids).await {
            Ok(()) => Ok(()),
            Err(e) if e.transient => {
                // The checkpoint is saved; the entries stay pending until the next call
                // acks them (or, after a crash, the restart acks them from the
                // checkpoint). Not a reason to stop the run.
                tracing::warn!(error = %e, entries = ids.len(), "XACK failed; retrying on the next read");
                self.owed = ids;
                Ok(())
            }
            Err(e) => {
                self.owed = ids;
                Err(e.into_source_error())
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Stream sink
// ---------------------------------------------------------------------------------

type Encoder<T> = Box<dyn Fn(&T) -> Result<Vec<(String, Vec<u8>)>, BoxError> + Send + Sync>;

/// Appends each record to a Redis stream as one entry (`XADD`, one pipeline per
/// batch), optionally capping the stream's length (`MAXLEN ~ n`).
///
/// At least once: the write of a batch is retried on a transient failure (and a
/// pipeline may have been partly applied before the connection dropped), and a batch
/// after the last checkpoint is written again after a crash, so readers may see an
/// entry twice. Carry a record id in the entry if they must de-duplicate.
///
/// ```no_run
/// use batchstream::Sink;
/// use batchstream::connectors::redis::RedisStreamSink;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let mut sink = RedisStreamSink::<serde_json::Value>::json("redis://127.0.0.1:6379", "alerts")?
///     .max_len(100_000);
/// sink.write(vec![serde_json::json!({"card": "4242", "score": 0.97})]).await?;
/// # Ok(()) }
/// ```
pub struct RedisStreamSink<T> {
    conn: Conn,
    stream: String,
    encode: Encoder<T>,
    max_len: Option<u64>,
    retry: RetryPolicy,
}

impl<T> fmt::Debug for RedisStreamSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamSink")
            .field("server", &self.conn)
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> RedisStreamSink<T> {
    /// A sink writing each record as JSON in field [`DEFAULT_FIELD`] (`data`).
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL.
    pub fn json(url: &str, stream: impl Into<String>) -> crate::Result<Self> {
        Self::new(url, stream, |record: &T| {
            Ok(vec![(
                DEFAULT_FIELD.to_owned(),
                serde_json::to_vec(record)?,
            )])
        })
    }
}

impl<T> RedisStreamSink<T> {
    /// A sink writing each record as the field-value pairs `encode` returns.
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL or `stream` is empty.
    pub fn new(
        url: &str,
        stream: impl Into<String>,
        encode: impl Fn(&T) -> Result<Vec<(String, Vec<u8>)>, BoxError> + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        let stream = stream.into();
        if stream.is_empty() {
            return Err(Error::Config("Redis stream sink: empty stream name".into()));
        }
        Ok(RedisStreamSink {
            conn: Conn::open(url, Duration::from_secs(5))?,
            stream,
            encode: Box::new(encode),
            max_len: None,
            retry: RetryPolicy::new(),
        })
    }

    /// Caps the stream at about `n` entries (`XADD .. MAXLEN ~ n`).
    pub fn max_len(mut self, n: u64) -> Self {
        self.max_len = Some(n);
        self
    }

    /// How to retry a write that failed on a transient error (default:
    /// [`RetryPolicy::new`], 3 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

impl<T: Send + 'static> Sink for RedisStreamSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::AtLeastOnce
    }

    async fn write(&mut self, batch: Vec<T>) -> crate::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (index, record) in batch.iter().enumerate() {
            let fields = (self.encode)(record).map_err(|e| {
                Error::sink(
                    "write",
                    format!(
                        "record {index} of the batch for stream `{}` does not encode: {e}",
                        self.stream
                    ),
                )
            })?;
            if fields.is_empty() {
                return Err(Error::sink(
                    "write",
                    format!(
                        "record {index} of the batch for stream `{}` encodes to no field",
                        self.stream
                    ),
                ));
            }
            let cmd = pipe.cmd("XADD").arg(&self.stream);
            if let Some(n) = self.max_len {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*");
            for (f, v) in &fields {
                cmd.arg(f).arg(v);
            }
            cmd.ignore();
        }
        let op = format!(
            "XADD of {} entries to stream `{}`",
            batch.len(),
            self.stream
        );
        self.conn
            .exec_pipe_retrying(&op, &pipe, &self.retry)
            .await
            .map_err(|e| e.into_sink_error("write"))
    }
}

// ---------------------------------------------------------------------------------
// Counter sink
// ---------------------------------------------------------------------------------

type KeyFn<T> = Box<dyn Fn(&T) -> String + Send + Sync>;
type IncrementFn<T> = Box<dyn Fn(&T) -> f64 + Send + Sync>;

/// Adds an increment per record to a counter key: `INCRBYFLOAT key increment`, and an
/// expiry (`PEXPIRE key ttl`) when a [`ttl`](RedisCounterSink::ttl) is set. One
/// `MULTI`/`EXEC` transaction per batch, increments of one key within a batch summed
/// first.
///
/// The speed layer of a Lambda architecture: a fast approximate counter that the
/// batch layer later replaces.
///
/// **At least once**: a batch replayed after a crash (the part after the last
/// checkpoint), or retried after the connection dropped while `EXEC` was in flight,
/// is counted again. Use it where a slight overcount after a failure is acceptable;
/// for exact results write keyed upserts instead.
///
/// ```no_run
/// use std::time::Duration;
/// use batchstream::Sink;
/// use batchstream::connectors::redis::RedisCounterSink;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// // (page, views) records counted per page, keys expiring after a day.
/// let mut sink = RedisCounterSink::new(
///     "redis://127.0.0.1:6379",
///     |r: &(String, u32)| format!("views:{}", r.0),
///     |r: &(String, u32)| f64::from(r.1),
/// )?
/// .ttl(Duration::from_secs(86_400));
/// sink.write(vec![("/home".into(), 1), ("/cart".into(), 2)]).await?;
/// # Ok(()) }
/// ```
pub struct RedisCounterSink<T> {
    conn: Conn,
    key: KeyFn<T>,
    increment: IncrementFn<T>,
    ttl: Option<Duration>,
    retry: RetryPolicy,
}

impl<T> fmt::Debug for RedisCounterSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCounterSink")
            .field("server", &self.conn)
            .field("ttl", &self.ttl)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<T> RedisCounterSink<T> {
    /// A sink adding `increment(record)` to key `key(record)`.
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL.
    pub fn new(
        url: &str,
        key: impl Fn(&T) -> String + Send + Sync + 'static,
        increment: impl Fn(&T) -> f64 + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        Ok(RedisCounterSink {
            conn: Conn::open(url, Duration::from_secs(5))?,
            key: Box::new(key),
            increment: Box::new(increment),
            ttl: None,
            retry: RetryPolicy::new(),
        })
    }

    /// Sets every written key to expire `ttl` after its last write (default: no
    /// expiry). Millisecond precision.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How to retry a write that failed on a transient error (default:
    /// [`RetryPolicy::new`], 3 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

impl<T: Send + 'static> Sink for RedisCounterSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::AtLeastOnce
    }

    async fn write(&mut self, batch: Vec<T>) -> crate::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (index, record) in batch.iter().enumerate() {
            let key = (self.key)(record);
            let inc = (self.increment)(record);
            if !inc.is_finite() {
                return Err(Error::sink(
                    "write",
                    format!(
                        "record {index} of the batch: increment {inc} for key `{key}` is not a finite number"
                    ),
                ));
            }
            *sums.entry(key).or_default() += inc;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, inc) in &sums {
            pipe.cmd("INCRBYFLOAT").arg(key).arg(*inc).ignore();
            if let Some(ttl) = self.ttl {
                pipe.cmd("PEXPIRE")
                    .arg(key)
                    .arg(ttl.as_millis().max(1) as u64)
                    .ignore();
            }
        }
        let op = format!("MULTI/EXEC of INCRBYFLOAT on {} counter keys", sums.len());
        self.conn
            .exec_pipe_retrying(&op, &pipe, &self.retry)
            .await
            .map_err(|e| e.into_sink_error("write"))
    }
}

// ---------------------------------------------------------------------------------
// Checkpoint store
// ---------------------------------------------------------------------------------

/// Keeps each pipeline's checkpoint in Redis, as JSON under
/// `batchstream:checkpoint:{pipeline id}` (`SET` on save: atomic).
///
/// A value that is not a checkpoint of that pipeline is
/// [`CheckpointError::Corrupt`] naming the key, never a fresh start. Redis must be
/// durable (AOF or snapshots) for the checkpoint to survive a Redis restart.
///
/// A lost connection is retried once right away on a new connection; if that fails
/// too, a transient failure is reported as [`CheckpointError::Io`] with kind
/// `Interrupted` (or `TimedOut`), which the executors retry under a
/// [`RetryPolicy`]; other failures as
/// [`CheckpointError::Other`].
///
/// ```no_run
/// use batchstream::checkpoint::{Checkpoint, CheckpointStore};
/// use batchstream::connectors::redis::RedisCheckpointStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisCheckpointStore::open("redis://127.0.0.1:6379")?;
/// store.save(&Checkpoint::new("orders")).await?;
/// assert_eq!(store.load("orders").await?.unwrap().pipeline_id, "orders");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCheckpointStore {
    conn: Conn,
    prefix: String,
}

impl fmt::Debug for RedisCheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCheckpointStore")
            .field("server", &self.conn)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisCheckpointStore {
    /// The key prefix: `batchstream:checkpoint:`.
    pub const DEFAULT_PREFIX: &'static str = "batchstream:checkpoint:";

    /// A store on the Redis server at `url`; connects on first use.
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL.
    pub fn open(url: &str) -> crate::Result<Self> {
        Ok(RedisCheckpointStore {
            conn: Conn::open(url, Duration::from_secs(5))?,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
        })
    }

    /// Uses `prefix` instead of `batchstream:checkpoint:` before the pipeline id.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The key that holds `pipeline_id`'s checkpoint.
    pub fn key(&self, pipeline_id: &str) -> String {
        format!("{}{pipeline_id}", self.prefix)
    }

    fn locator(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{} key {key}", self.conn.server()))
    }

    /// Runs `cmd`, once more on a fresh connection if the first attempt lost it.
    async fn query<V: FromRedisValue>(
        &self,
        operation: &str,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<V, CheckpointError> {
        let e = match self.conn.query(operation, cmd).await {
            Ok(v) => return Ok(v),
            Err(e) if e.transient => match self.conn.query(operation, cmd).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if e.transient {
            let kind = if e.source.is_timeout() {
                std::io::ErrorKind::TimedOut
            } else {
                std::io::ErrorKind::Interrupted
            };
            Err(CheckpointError::Io {
                path: self.locator(key),
                source: std::io::Error::new(kind, e),
            })
        } else {
            Err(CheckpointError::Other(Box::new(e)))
        }
    }
}

impl CheckpointStore for RedisCheckpointStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        let store = self.clone();
        let id = pipeline_id.to_owned();
        async move {
            let key = store.key(&id);
            let mut cmd = redis::cmd("GET");
            cmd.arg(&key);
            let raw: Option<Vec<u8>> = store.query(&format!("GET {key}"), &key, &cmd).await?;
            let Some(raw) = raw else { return Ok(None) };
            let checkpoint: Checkpoint =
                serde_json::from_slice(&raw).map_err(|e| CheckpointError::Corrupt {
                    path: store.locator(&key),
                    reason: format!("not a checkpoint (bad JSON): {e}"),
                })?;
            if checkpoint.pipeline_id != id {
                return Err(CheckpointError::Corrupt {
                    path: store.locator(&key),
                    reason: format!(
                        "holds the checkpoint of pipeline `{}`, not `{id}`",
                        checkpoint.pipeline_id
                    ),
                });
            }
            Ok(Some(checkpoint))
        }
    }

    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        let store = self.clone();
        let encoded = serde_json::to_vec(checkpoint).map_err(|e| CheckpointError::Serde {
            pipeline_id: checkpoint.pipeline_id.clone(),
            action: "encoded",
            message: e.to_string(),
        });
        let key = self.key(&checkpoint.pipeline_id);
        async move {
            let encoded = encoded?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(encoded);
            store.query::<()>(&format!("SET {key}"), &key, &cmd).await
        }
    }
}

// ---------------------------------------------------------------------------------
// Lambda speed store
// ---------------------------------------------------------------------------------

use std::fmt::Display;

use futures::future::BoxFuture;

use crate::lambda::SpeedStore;
use crate::window::Number;

mod counter_value {
    /// How a counter value travels to Redis and back.
    pub trait Sealed: Sized {
        /// The type's name, for messages.
        const NAME: &'static str;
        /// The increment command (`INCRBY` or `INCRBYFLOAT`) and its argument, or why
        /// `self` cannot be sent.
        fn increment(self) -> Result<(&'static str, String), String>;
        /// The value of a counter's text, if it is a `Self`.
        fn parse(text: &str) -> Option<Self>;
    }

    impl Sealed for i64 {
        const NAME: &'static str = "i64";
        fn increment(self) -> Result<(&'static str, String), String> {
            Ok(("INCRBY", self.to_string()))
        }
        fn parse(text: &str) -> Option<Self> {
            text.parse().ok()
        }
    }

    impl Sealed for u64 {
        const NAME: &'static str = "u64";
        fn increment(self) -> Result<(&'static str, String), String> {
            match i64::try_from(self) {
                Ok(n) => Ok(("INCRBY", n.to_string())),
                Err(_) => Err(format!(
                    "increment {self} exceeds the range of a Redis integer (at most {})",
                    i64::MAX
                )),
            }
        }
        fn parse(text: &str) -> Option<Self> {
            text.parse().ok()
        }
    }

    impl Sealed for f64 {
        const NAME: &'static str = "f64";
        fn increment(self) -> Result<(&'static str, String), String> {
            if self.is_finite() {
                Ok(("INCRBYFLOAT", format!("{self:?}")))
            } else {
                Err(format!("increment {self} is not a finite number"))
            }
        }
        fn parse(text: &str) -> Option<Self> {
            text.parse().ok().filter(|v: &f64| v.is_finite())
        }
    }
}

/// A value a [`RedisSpeedStore`] counter can hold: `i64` and `u64` (exact integer
/// counters, `INCRBY`) or `f64` (`INCRBYFLOAT`). Sealed.
pub trait RedisCounterValue: Number + counter_value::Sealed + Send + Sync + 'static {}

impl RedisCounterValue for i64 {}
impl RedisCounterValue for u64 {}
impl RedisCounterValue for f64 {}

/// The speed layer of a [Lambda architecture](crate::lambda) in Redis: a
/// [`SpeedStore`] whose counters are Redis keys that expire.
///
/// - Each `(key, period)` counter is the Redis key [`key(key, period)`](Self::key):
///   `{prefix}{key}:{period}` (prefix [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX)), where
///   `\` and `:` inside the key are escaped as `\\` and `\:`, so that two different
///   pairs never share a counter. Both parts are written with [`Display`].
/// - [`add`](SpeedStore::add) sums the deltas of each counter in Rust, then sends one
///   `MULTI`/`EXEC` transaction: per counter `INCRBY` (for `i64`/`u64`, exact) or
///   `INCRBYFLOAT` (for `f64`), then `PEXPIRE key ttl NX`. As with
///   [`MemorySpeedStore`](crate::lambda::MemorySpeedStore), a counter expires
///   [`ttl`](Self::ttl) after it was **created**: later increments do not extend its
///   life (`NX` sets the expiry only on a key without one). `PEXPIRE .. NX` needs
///   **Redis 7.0** or later; an older server fails every `add` with a permanent
///   error.
/// - [`get`](SpeedStore::get) is a `GET`: `None` for a missing or expired key. A key
///   that holds something other than a counter of the value type is a permanent
///   error naming it.
///
/// Deltas that cannot be sent (a non-finite `f64`, a `u64` sum above `i64::MAX`) fail
/// the whole `add` before anything is written. Redis transactions do not roll back:
/// if one counter key holds a value of another type (a string, a float counter added
/// to as an integer), the call fails with a permanent error but the other counters
/// of the call are incremented.
///
/// **At least once**, like every speed layer: an `add` retried after the connection
/// dropped while its `EXEC` was in flight, or a batch replayed after a crash, counts
/// again; the batch layer corrects it. Errors name the server (`Redis at host:port`);
/// a lost or refused connection or a timeout is retryable and the next call
/// reconnects. `add` retries transient failures itself (its
/// [`retry`](Self::retry) policy), since executors do not retry sink writes; `get`
/// retries them likewise. Failures of `add` are sink errors (operation `write`: the
/// [speed sink](crate::lambda::Lambda::speed_sink) calls it from `write`), failures
/// of `get` source errors.
///
/// Clones share the connection.
///
/// ```
/// use std::time::Duration;
/// use batchstream::connectors::redis::RedisSpeedStore;
///
/// // Connects on first use.
/// let store = RedisSpeedStore::new("redis://127.0.0.1:6379", Duration::from_secs(2 * 86_400))?
///     .with_prefix("views:speed:");
/// assert_eq!(store.key(&"/home", &"2024-05-01"), "views:speed:/home:2024-05-01");
/// assert_eq!(store.key(&"a:b", &"c"), r"views:speed:a\:b:c");
/// assert!(RedisSpeedStore::new("redis://127.0.0.1:6379", Duration::ZERO).is_err());
/// # Ok::<(), batchstream::Error>(())
/// ```
///
/// With a [`Lambda`](crate::lambda::Lambda) (for the batch view in PostgreSQL, see
/// `PgServingView` in `connectors::postgres`, feature `postgres`):
/// ```no_run
/// use std::time::Duration;
/// use batchstream::connectors::redis::RedisSpeedStore;
/// use batchstream::lambda::{Lambda, Layer, MemoryServingView};
/// use batchstream::Sink;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let speed = RedisSpeedStore::new("redis://127.0.0.1:6379", Duration::from_secs(2 * 86_400))?;
/// let lambda: Lambda<String, String, u64> = Lambda::new(MemoryServingView::new(), speed);
/// let mut sink = lambda.speed_sink();
/// sink.write(vec![("/home".into(), "2024-05-01".into(), 1)]).await?;
/// let answer = lambda.query(&"/home".into(), &"2024-05-01".into()).await?;
/// assert_eq!(answer.source, Layer::Speed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisSpeedStore {
    conn: Conn,
    prefix: String,
    ttl: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for RedisSpeedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSpeedStore")
            .field("server", &self.conn)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("retry", &self.retry)
            .finish()
    }
}

impl RedisSpeedStore {
    /// The key prefix: `batchstream:speed:`.
    pub const DEFAULT_PREFIX: &'static str = "batchstream:speed:";

    /// A store on the Redis server at `url` whose counters expire `ttl` after their
    /// first increment (millisecond precision; less than a millisecond counts as one).
    /// Connects on first use.
    ///
    /// # Errors
    /// [`Error::Config`] if `url` is not a Redis URL or `ttl` is zero.
    pub fn new(url: &str, ttl: Duration) -> crate::Result<Self> {
        if ttl.is_zero() {
            return Err(Error::Config(
                "RedisSpeedStore: a zero TTL would expire every counter as it is created".into(),
            ));
        }
        Ok(RedisSpeedStore {
            conn: Conn::open(url, Duration::from_secs(5))?,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            ttl,
            retry: RetryPolicy::new(),
        })
    }

    /// Uses `prefix` instead of `batchstream:speed:` before each counter key.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How to retry a call that failed on a transient error (default:
    /// [`RetryPolicy::new`], 3 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long a counter lives after its first increment.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The server, as `Redis at host:port`.
    pub fn server(&self) -> &str {
        self.conn.server()
    }

    /// The Redis key of the counter of `(key, period)`: `{prefix}{key}:{period}`, with
    /// `\` and `:` in `key` escaped.
    pub fn key(&self, key: &impl Display, period: &impl Display) -> String {
        let key = key.to_string();
        let mut out = String::with_capacity(self.prefix.len() + key.len() + 16);
        out.push_str(&self.prefix);
        for c in key.chars() {
            if matches!(c, '\\' | ':') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push(':');
        out.push_str(&period.to_string());
        out
    }

    fn ttl_millis(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Runs `cmd`, retrying transient failures as the policy allows.
    async fn query_retrying<T: FromRedisValue>(
        &self,
        operation: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisCommandError> {
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            match self.conn.query::<T>(operation, cmd).await {
                Err(e) if e.transient && self.retry.allows(attempt, first.elapsed()) => {
                    tracing::warn!(attempt, error = %e, "retrying Redis read");
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl<K, P, V> SpeedStore<K, P, V> for RedisSpeedStore
where
    K: Display + Send + Sync,
    P: Display + Send + Sync,
    V: RedisCounterValue,
{
    fn add<'a>(&'a self, deltas: Vec<(K, P, V)>) -> BoxFuture<'a, crate::Result<()>> {
        // Keys and sums are computed before the future, so it holds no `K` or `P`.
        let mut sums: BTreeMap<String, V> = BTreeMap::new();
        for (key, period, delta) in deltas {
            let sum = sums.entry(self.key(&key, &period)).or_insert(V::ZERO);
            *sum = sum.plus(delta);
        }
        Box::pin(async move {
            if sums.is_empty() {
                return Ok(());
            }
            let ttl = self.ttl_millis();
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (key, sum) in &sums {
                let (command, increment) = sum.increment().map_err(|why| {
                    Error::sink(
                        "write",
                        format!(
                            "{}: speed counter `{key}`: {why}; nothing of this call was written",
                            self.conn.server()
                        ),
                    )
                })?;
                pipe.cmd(command).arg(key).arg(increment).ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(ttl).arg("NX").ignore();
            }
            let op = format!(
                "MULTI/EXEC of increments and PEXPIRE NX on {} speed counters (first `{}`)",
                sums.len(),
                sums.keys().next().map_or("", String::as_str)
            );
            self.conn
                .exec_pipe_retrying(&op, &pipe, &self.retry)
                .await
                .map_err(|e| e.into_sink_error("write"))
        })
    }

    fn get<'a>(&'a self, key: &'a K, period: &'a P) -> BoxFuture<'a, crate::Result<Option<V>>> {
        let key = self.key(key, period);
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(&key);
            let text: Option<String> = self
                .query_retrying(&format!("GET {key}"), &cmd)
                .await
                .map_err(RedisCommandError::into_source_error)?;
            match text {
                None => Ok(None),
                Some(text) => match <V as counter_value::Sealed>::parse(&text) {
                    Some(v) => Ok(Some(v)),
                    None => Err(Error::source(format!(
                        "{}: speed counter `{key}` holds `{text}`, which is not a {} counter",
                        self.conn.server(),
                        <V as counter_value::Sealed>::NAME
                    ))),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_reply_keeps_field_order_and_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields.as_deref().unwrap(),
            &[
                ("b".to_string(), b"2".to_vec()),
                ("a".to_string(), b"1".to_vec())
            ]
        );
        assert!(entries[1].fields.is_none());
        assert!(parse_read_reply(Value::Nil).unwrap().is_empty());
        assert!(parse_read_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn autoclaim_reply_has_cursor_entries_and_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("data"), bulk("{}")]),
            ])]),
            Value::Array(vec![bulk("4-0")]),
        ]);
        let (cursor, claimed, deleted) = parse_autoclaim_reply(reply).unwrap();
        assert_eq!(cursor, "5-0");
        assert_eq!(claimed[0].id, "3-0");
        assert_eq!(deleted, vec!["4-0".to_string()]);
    }

    #[test]
    fn a_bad_url_is_a_config_error() {
        let e = RedisCheckpointStore::open("http://nope").unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
    }
}
