//! The Redis connectors against a real server at 127.0.0.1:6379 (feature `redis`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use batchstream::adapters::{CollectSink, UpsertSink, UpsertTable};
use batchstream::checkpoint::{Checkpoint, MemoryCheckpointStore};
use batchstream::connectors::redis::{
    RedisCheckpointStore, RedisCounterSink, RedisStreamSink, RedisStreamSource,
};
use batchstream::retry::RetryPolicy;
use batchstream::transform::{self, TransformExt};
use batchstream::{
    CheckpointError, CheckpointStore, Outcome, Pipeline, RecordErrorKind, Sink, Source,
    StreamExecutor,
};
use redis::Commands;
use serde::{Deserialize, Serialize};

mod support;
use support::rows_filled;

const URL: &str = "redis://127.0.0.1:6379";
const START: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

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

/// Tests share the server; the one that kills every client connection runs alone.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A synchronous connection; fails naming the server and how to start it.
fn redis() -> redis::Connection {
    redis::Client::open(URL)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| {
            panic!("Redis at 127.0.0.1:6379 is not reachable ({e}); start it with: {START}")
        })
}

/// Unique key names for one test, deleted when it ends (even on panic).
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "bs-test:{}:{}:{test}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Keys { prefix }
    }
    fn name(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Ok(mut c) = redis::Client::open(URL).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = c.keys(format!("{}*", self.prefix)).unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = c.del(keys);
            }
        }
    }
}

fn seed(c: &mut redis::Connection, stream: &str, ids: impl IntoIterator<Item = u64>) {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(serde_json::to_string(&rec(id)).unwrap())
            .ignore();
    }
    pipe.exec(c).unwrap();
}

fn pending(c: &mut redis::Connection, stream: &str, group: &str) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(c)
        .unwrap();
    match v {
        redis::Value::Array(parts) => match &parts[0] {
            redis::Value::Int(n) => *n as u64,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

fn expected(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, String> {
    ids.into_iter().map(|i| (i, format!("v{i}"))).collect()
}

fn pipeline_to_table(
    source: RedisStreamSource<Rec>,
    table: &UpsertTable<u64, String>,
    id: &str,
) -> Pipeline<
    RedisStreamSource<Rec>,
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
async fn entries_are_acked_only_by_ack_and_a_restart_acks_the_checkpointed_ones() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("ack");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    seed(&mut c, &stream, 0..10);

    let mut src = RedisStreamSource::<Rec>::json(URL, &stream, &group, "c1").unwrap();
    let first = src.next_batch(4).await.unwrap().unwrap();
    assert_eq!(first.records, (0..4).map(rec).collect::<Vec<_>>());
    assert_eq!(first.position.ids.len(), 4);
    let second = src.next_batch(4).await.unwrap().unwrap();
    assert_eq!(second.records, (4..8).map(rec).collect::<Vec<_>>());
    // The position holds every id since the last ack.
    assert_eq!(second.position.ids.len(), 8);
    assert_eq!(pending(&mut c, &stream, &group), 8, "read but not acked");

    src.ack(&first.position).await.unwrap();
    assert_eq!(pending(&mut c, &stream, &group), 4);
    let third = src.next_batch(10).await.unwrap().unwrap();
    assert_eq!(third.records, (8..10).map(rec).collect::<Vec<_>>());
    // After an ack, positions start afresh.
    assert_eq!(third.position.ids.len(), 6);
    assert_eq!(pending(&mut c, &stream, &group), 6);
    drop(src);

    // A restart from a checkpoint holding `third.position` (saved, but the process died
    // before acking): seek acks those entries, and nothing is read twice.
    let mut src = RedisStreamSource::<Rec>::json(URL, &stream, &group, "c1").unwrap();
    let stats = src.stats();
    src.seek(third.position.clone()).await.unwrap();
    seed(&mut c, &stream, [10]);
    let next = src.next_batch(10).await.unwrap().unwrap();
    assert_eq!(next.records, vec![rec(10)]);
    assert_eq!(stats.redelivered_own(), 0);
    assert_eq!(pending(&mut c, &stream, &group), 1);
    src.ack(&next.position).await.unwrap();
    assert_eq!(pending(&mut c, &stream, &group), 0);
}

#[tokio::test]
async fn a_stream_pipeline_checkpoints_acks_and_resumes_without_loss() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("resume");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    seed(&mut c, &stream, 0..50);
    let store = MemoryCheckpointStore::new();
    let (_, table) = UpsertSink::<u64, String>::new();

    let source = RedisStreamSource::json(URL, &stream, &group, "c1").unwrap();
    let p = pipeline_to_table(source, &table, "resume").with_checkpoint_store(store.clone());
    let r1 = StreamExecutor::new()
        .max_batch(8)
        .checkpoint_every_records(16)
        .run_until(p, rows_filled(table.clone(), 50, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r1.outcome, Outcome::Stopped);
    assert_eq!(table.snapshot(), expected(0..50));
    assert_eq!(
        pending(&mut c, &stream, &group),
        0,
        "all acked after the last checkpoint"
    );

    // More entries arrive while it is down; the restart reads only those.
    seed(&mut c, &stream, 50..70);
    let source = RedisStreamSource::json(URL, &stream, &group, "c1").unwrap();
    let p = pipeline_to_table(source, &table, "resume").with_checkpoint_store(store.clone());
    let r2 = StreamExecutor::new()
        .max_batch(8)
        .run_until(p, rows_filled(table.clone(), 70, Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(r2.resumed_from_epoch.is_some());
    assert_eq!(r2.records_read, 20);
    assert_eq!(table.snapshot(), expected(0..70));
    assert_eq!(pending(&mut c, &stream, &group), 0);
}

/// A checkpoint store whose saves fail: the run dies before anything is acked.
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
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("crash");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    seed(&mut c, &stream, 0..30);
    let (_, table) = UpsertSink::<u64, String>::new();

    let source = RedisStreamSource::json(URL, &stream, &group, "c1").unwrap();
    let p = pipeline_to_table(source, &table, "crash").with_checkpoint_store(BrokenStore);
    let err = StreamExecutor::new()
        .max_batch(10)
        .checkpoint_every_records(10)
        .run(p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    let written_before_crash = table.snapshot().len();
    assert!(written_before_crash >= 10, "the sink saw the first batch");
    let stuck = pending(&mut c, &stream, &group);
    assert!(stuck >= 10, "read entries stay pending: {stuck}");

    // The restart re-reads its own pending entries first, then the rest.
    let source = RedisStreamSource::json(URL, &stream, &group, "c1").unwrap();
    let stats = source.stats();
    let p = pipeline_to_table(source, &table, "crash")
        .with_checkpoint_store(MemoryCheckpointStore::new());
    StreamExecutor::new()
        .max_batch(10)
        .run_until(p, async {
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while stats.returned() < 30 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        })
        .await
        .unwrap();
    assert_eq!(stats.redelivered_own(), stuck);
    assert_eq!(stats.returned(), 30, "each entry read once by the restart");
    assert_eq!(table.snapshot(), expected(0..30));
    assert_eq!(pending(&mut c, &stream, &group), 0);
}

#[tokio::test]
async fn pending_entries_of_a_dead_consumer_are_reclaimed() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("claim");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    seed(&mut c, &stream, 0..10);

    // Consumer `dead` reads six entries and dies without acking.
    let mut dead = RedisStreamSource::<Rec>::json(URL, &stream, &group, "dead").unwrap();
    let taken = dead.next_batch(6).await.unwrap().unwrap();
    assert_eq!(taken.records.len(), 6);
    drop(dead);

    tokio::time::sleep(Duration::from_millis(100)).await; // let them become idle
    let mut alive = RedisStreamSource::<Rec>::json(URL, &stream, &group, "alive")
        .unwrap()
        .min_idle(Duration::from_millis(50));
    let stats = alive.stats();
    let mut got = Vec::new();
    while got.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(10), alive.next_batch(100))
            .await
            .expect("the survivor reads everything")
            .unwrap()
            .unwrap();
        got.extend(batch.records.iter().map(|r| r.id));
        alive.ack(&batch.position).await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(stats.reclaimed(), 6);
    assert_eq!(pending(&mut c, &stream, &group), 0);
}

#[tokio::test]
async fn undecodable_entries_become_dead_letters_naming_stream_and_id() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("dead-letters");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    seed(&mut c, &stream, [1]);
    let bad_json: String = c.xadd(&stream, "*", &[("data", "{not json")]).unwrap();
    let no_field: String = c.xadd(&stream, "*", &[("other", "x")]).unwrap();
    seed(&mut c, &stream, [2]);

    let (_, table) = UpsertSink::<u64, String>::new();
    let (letters, dead) = CollectSink::new();
    let source = RedisStreamSource::json(URL, &stream, &group, "c1").unwrap();
    let p = pipeline_to_table(source, &table, "dl")
        .with_checkpoint_store(MemoryCheckpointStore::new())
        .with_dead_letter_sink(letters);
    let report = StreamExecutor::new()
        .run_until(p, async {
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while table.snapshot().len() < 2 || dead.len() < 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        })
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 2);
    assert_eq!(table.snapshot(), expected([1, 2]));
    let dead = dead.items();
    for (letter, id) in dead.iter().zip([&bad_json, &no_field]) {
        assert_eq!(letter.kind(), RecordErrorKind::Parse);
        assert_eq!(
            letter.error.location.partition.as_deref(),
            Some(stream.as_str())
        );
        assert!(
            letter.error.message.contains(id.as_str()),
            "{}",
            letter.error
        );
        assert!(letter.raw.as_deref().unwrap().contains(id.as_str()));
    }
    assert!(
        dead[1].error.message.contains("no field `data`"),
        "{}",
        dead[1].error
    );
    assert_eq!(
        pending(&mut c, &stream, &group),
        0,
        "dead letters are acked too"
    );
}

#[tokio::test]
async fn stream_sink_appends_each_record_and_caps_the_length() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("sink");
    let stream = keys.name("out");
    let mut sink = RedisStreamSink::<Rec>::json(URL, &stream).unwrap();
    sink.write((0..5).map(rec).collect()).await.unwrap();
    sink.flush().await.unwrap();
    let entries: redis::streams::StreamRangeReply = c.xrange_all(&stream).unwrap();
    let got: Vec<Rec> = entries
        .ids
        .iter()
        .map(|e| serde_json::from_str(&e.get::<String>("data").unwrap()).unwrap())
        .collect();
    assert_eq!(got, (0..5).map(rec).collect::<Vec<_>>());

    // Read back through the source: the two connectors agree on the format.
    let mut src = RedisStreamSource::<Rec>::json(URL, &stream, keys.name("g"), "c").unwrap();
    assert_eq!(src.next_batch(10).await.unwrap().unwrap().records, got);

    let capped = keys.name("capped");
    let mut sink = RedisStreamSink::<Rec>::json(URL, &capped)
        .unwrap()
        .max_len(10);
    for chunk in (0..1000u64).collect::<Vec<_>>().chunks(100) {
        sink.write(chunk.iter().copied().map(rec).collect())
            .await
            .unwrap();
    }
    let len: u64 = c.xlen(&capped).unwrap();
    assert!(len < 1000, "MAXLEN ~ trims: {len}");
}

#[tokio::test]
async fn counter_sink_adds_increments_and_sets_the_ttl() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("counter");
    let prefix = keys.name("views");
    let p = prefix.clone();
    let mut sink = RedisCounterSink::new(
        URL,
        move |r: &(String, f64)| format!("{p}:{}", r.0),
        |r: &(String, f64)| r.1,
    )
    .unwrap()
    .ttl(Duration::from_secs(600));
    sink.write(vec![
        ("a".into(), 1.5),
        ("b".into(), 2.0),
        ("a".into(), 1.0),
    ])
    .await
    .unwrap();
    sink.write(vec![("a".into(), 0.5)]).await.unwrap();
    let a: f64 = c.get(format!("{prefix}:a")).unwrap();
    let b: f64 = c.get(format!("{prefix}:b")).unwrap();
    assert_eq!((a, b), (3.0, 2.0));
    let ttl: i64 = c.pttl(format!("{prefix}:a")).unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");

    let err = sink.write(vec![("a".into(), f64::NAN)]).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&format!("{prefix}:a")), "{err}");
}

#[tokio::test]
async fn checkpoint_store_round_trips_and_reports_damage_by_key() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("ckpt");
    let store = RedisCheckpointStore::open(URL)
        .unwrap()
        .with_prefix(keys.name("ck:"));
    let id = "orders";
    assert!(store.load(id).await.unwrap().is_none());
    let mut ck = Checkpoint::new(id);
    ck.epoch = 7;
    ck.source_position = Some(serde_json::json!({"ids": ["1-0"]}));
    store.save(&ck).await.unwrap();
    assert_eq!(store.load(id).await.unwrap(), Some(ck.clone()));
    assert_eq!(store.key(id), format!("{}{id}", keys.name("ck:")));

    let _: () = c.set(store.key(id), "{truncated").unwrap();
    let err = store.load(id).await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&store.key(id)), "{err}");

    let mut other = Checkpoint::new("payments");
    other.epoch = 1;
    let _: () = c
        .set(store.key(id), serde_json::to_string(&other).unwrap())
        .unwrap();
    let err = store.load(id).await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("payments"), "{err}");

    // The default key layout.
    let default = RedisCheckpointStore::open(URL).unwrap();
    assert_eq!(default.key("x"), "batchstream:checkpoint:x");
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error_naming_it() {
    let mut src = RedisStreamSource::<Rec>::json("redis://127.0.0.1:1", "s", "g", "c").unwrap();
    let err = src.next_batch(1).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Redis at 127.0.0.1:1"), "{err}");

    let store = RedisCheckpointStore::open("redis://127.0.0.1:1").unwrap();
    let err = store.save(&Checkpoint::new("x")).await.unwrap_err();
    assert!(err.to_string().contains("Redis at 127.0.0.1:1"), "{err}");
    assert!(batchstream::Error::from(err).is_retryable());
}

/// An upsert sink that, as its output crosses each threshold, kills every normal
/// client connection of the server (`CLIENT KILL TYPE normal`): the source's and the
/// checkpoint store's connections die mid-run, at a deterministic point.
struct KillingSink {
    inner: UpsertSink<u64, String>,
    written: u64,
    thresholds: Vec<u64>,
    killed: Arc<AtomicU64>,
}

impl Sink for KillingSink {
    type Item = (u64, String);
    fn guarantee(&self) -> batchstream::DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, batch: Vec<(u64, String)>) -> batchstream::Result<()> {
        self.written += batch.len() as u64;
        self.inner.write(batch).await?;
        if self.thresholds.first().is_some_and(|t| self.written >= *t) {
            self.thresholds.remove(0);
            let n: u64 = tokio::task::spawn_blocking(|| {
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .query(&mut redis())
                    .unwrap()
            })
            .await
            .unwrap();
            self.killed.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_mid_run_are_retried_and_the_output_is_exact() {
    let _alone = SERVER.write().await;
    let mut c = redis();
    let keys = Keys::new("kill");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    const N: u64 = 3000;
    seed(&mut c, &stream, 0..N);
    let (_, table) = UpsertSink::<u64, String>::new();
    let killed = Arc::new(AtomicU64::new(0));
    let sink = KillingSink {
        inner: UpsertSink::resume(&table),
        written: 0,
        // 310 and 2110 are crossed between checkpoints (every 100 records, batches of
        // 25), so the source's next read hits the dead connection; 1200 is crossed
        // right before a checkpoint, so the store's save and the source's ack do.
        thresholds: vec![310, 1200, 2110],
        killed: killed.clone(),
    };
    let store = RedisCheckpointStore::open(URL)
        .unwrap()
        .with_prefix(keys.name("ck:"));

    let source = RedisStreamSource::json(URL, &stream, &group, "c1").unwrap();
    let p = Pipeline::new(
        "kill",
        source,
        transform::identity::<Rec>().map(|r| (r.id, r.value)),
        sink,
    )
    .with_checkpoint_store(store.clone())
    .with_retry(
        RetryPolicy::new()
            .max_attempts(10)
            .initial_backoff(Duration::from_millis(20))
            .max_backoff(Duration::from_millis(500)),
    );
    let report = StreamExecutor::new()
        .max_batch(25)
        .checkpoint_every_records(100)
        .run_until(
            p,
            rows_filled(table.clone(), N as usize, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let killed = killed.load(Ordering::Relaxed);
    assert!(killed >= 3, "connections were killed three times: {killed}");
    assert!(
        report.metrics.retries >= 2,
        "the source's reads hit the lost connection and were retried: {}",
        report.metrics.retries
    );
    assert_eq!(table.snapshot(), expected(0..N));
    // `c` was killed too: ask on a new connection.
    assert_eq!(pending(&mut redis(), &stream, &group), 0);
    let saved = store.load("kill").await.unwrap().expect("a checkpoint");
    assert_eq!(saved.epoch, report.checkpoints);
}

#[tokio::test]
async fn a_read_cancelled_while_blocked_in_redis_loses_nothing() {
    let _shared = SERVER.read().await;
    let mut c = redis();
    let keys = Keys::new("cancel");
    let (stream, group) = (keys.name("s"), keys.name("g"));
    let mut src = RedisStreamSource::<Rec>::json(URL, &stream, &group, "c1")
        .unwrap()
        .block(Duration::from_secs(2));
    let cancelled = tokio::time::timeout(Duration::from_millis(300), src.next_batch(10)).await;
    assert!(cancelled.is_err(), "nothing to read yet");
    // The dropped XREADGROUP still blocks in Redis: the entry added now is delivered to
    // it, and its reply is lost. The source must read it again from its pending list.
    seed(&mut c, &stream, [1]);
    tokio::time::timeout(Duration::from_secs(10), async {
        while pending(&mut c, &stream, &group) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("Redis delivers the entry to the cancelled read");
    let batch = tokio::time::timeout(Duration::from_secs(10), src.next_batch(10))
        .await
        .expect("the entry comes back")
        .unwrap()
        .unwrap();
    assert_eq!(batch.records, vec![rec(1)]);
}
