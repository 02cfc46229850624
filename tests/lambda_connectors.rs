//! The Lambda architecture on real servers: a Redis speed store
//! ([`RedisSpeedStore`], Redis at 127.0.0.1:6379) and a PostgreSQL serving view
//! ([`PgServingView`], PostgreSQL at 127.0.0.1:5432, database `test`, user
//! `postgres`), each alone and both under a [`Lambda`].
//!
//! Each test uses its own Redis key prefix and its own tables (pid + counter) and
//! removes them when it ends, also when it fails.
#![cfg(all(feature = "redis", feature = "postgres"))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use batchstream::adapters::IterSource;
use batchstream::connectors::postgres::{PgCheckpointStore, PgClient, PgServingView};
use batchstream::connectors::redis::RedisSpeedStore;
use batchstream::lambda::{Answer, BatchLookup, Lambda, Layer, ServingView, SpeedStore};
use batchstream::retry::RetryPolicy;
use batchstream::{
    BatchExecutor, Boundedness, Error, Outcome, Pipeline, Result, Sink, Source, SourceBatch,
    StreamExecutor,
};
use redis::Commands;
use serde::{Deserialize, Serialize};
use support::lambda::{View, batch_pipeline, day1, speed_logic};
use tokio_postgres::NoTls;

mod support;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const REDIS_START: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";
const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

// ---------------------------------------------------------------------------------
// Servers, names and cleanup
// ---------------------------------------------------------------------------------

fn next_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A synchronous Redis connection; fails naming the server and how to start it.
fn redis_conn() -> redis::Connection {
    redis::Client::open(REDIS_URL)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| {
            panic!("Redis at 127.0.0.1:6379 is not reachable ({e}); start it with: {REDIS_START}")
        })
}

fn pg_unreachable(e: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL at 127.0.0.1:5432 (database `test`, user `postgres`) is not reachable: {e}\n\
         start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    )
}

/// A plain PostgreSQL client for checks.
async fn pg_admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, NoTls)
        .await
        .unwrap_or_else(|e| pg_unreachable(e));
    tokio::spawn(conn);
    client
}

async fn pg_client() -> PgClient {
    PgClient::connect(PG)
        .await
        .unwrap_or_else(|e| pg_unreachable(e))
}

/// One test's Redis keys (under a unique prefix) and PostgreSQL tables (a unique
/// base name), removed on drop.
struct Scratch {
    prefix: String,
    base: String,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let id = next_id();
        Scratch {
            prefix: format!("bs-test:{id}:{test}:"),
            base: format!("bs_lambda_{id}"),
        }
    }

    /// A speed store under this test's prefix (fails if the server is down).
    fn speed(&self, ttl: Duration) -> RedisSpeedStore {
        let _ = redis_conn();
        RedisSpeedStore::new(REDIS_URL, ttl)
            .unwrap()
            .with_prefix(&self.prefix)
    }

    /// A serving view in this test's tables (connected: fails if the server is down).
    async fn view(&self) -> PgServingView {
        PgServingView::new(pg_client().await, &self.base).unwrap()
    }

    /// A checkpoint store in this test's checkpoint table.
    async fn checkpoints(&self) -> PgCheckpointStore {
        PgCheckpointStore::new(pg_client().await)
            .with_table(&self.checkpoint_table())
            .unwrap()
    }

    fn checkpoint_table(&self) -> String {
        format!("{}_checkpoints", self.base)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut c) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = c.keys(format!("{}*", self.prefix)).unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = c.del(keys);
            }
        }
        let b = &self.base;
        let sql = format!(
            "SET lock_timeout = '10s';
             DROP TABLE IF EXISTS {b}, {b}_staging, {b}_complete, {}",
            self.checkpoint_table()
        );
        // A thread with its own runtime: the test's runtime may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(PG, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// Polls `check` every 20 ms for at most 10 s; whether it ever held.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn pttl(key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut redis_conn())
        .unwrap()
}

fn exists(key: &str) -> bool {
    redis_conn().exists(key).unwrap()
}

fn s(x: &str) -> String {
    x.to_string()
}

// ---------------------------------------------------------------------------------
// The Lambda on both servers
// ---------------------------------------------------------------------------------

type Counts = Lambda<String, String, u64>;

/// Writes increments through a speed sink, as the speed pipeline would.
async fn bump(lambda: &Counts, deltas: Vec<(String, String, u64)>) {
    let mut sink = lambda.speed_sink();
    sink.write(deltas).await.unwrap();
    sink.flush().await.unwrap();
}

/// A bounded source that delivers `first`, then waits until the gate opens (or its
/// sender is dropped), then delivers `rest`.
struct Gated {
    first: Vec<View>,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
    rest: Vec<View>,
    delivered: u64,
}

impl Source for Gated {
    type Item = View;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<View, u64>>> {
        if self.first.is_empty() {
            if let Some(gate) = self.gate.as_mut() {
                // Cancel safe: the receiver stays in `self` until it resolves.
                let _ = gate.await;
                self.gate = None;
            }
        }
        let part = if self.first.is_empty() {
            &mut self.rest
        } else {
            &mut self.first
        };
        if part.is_empty() {
            return Ok(None);
        }
        let n = max.min(part.len());
        let batch: Vec<View> = part.drain(..n).collect();
        self.delivered += n as u64;
        Ok(Some(SourceBatch::new(batch, self.delivered)))
    }
}

#[tokio::test]
async fn answers_come_from_redis_before_the_batch_run_completes_and_from_postgres_after() {
    let scratch = Scratch::new("switch");
    let view = scratch.view().await;
    let speed = scratch.speed(Duration::from_secs(3600));
    let lambda: Counts = Lambda::new(view.clone(), speed.clone());

    // The speed layer has seen part of the day, one record twice (an at-least-once
    // replay): its answer is approximate.
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
    let speed_answer = Answer {
        value: Some(4),
        source: Layer::Speed,
    };
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        speed_answer
    );
    assert_eq!(
        redis_conn()
            .get::<_, Option<String>>(speed.key(&"home", &"d1"))
            .unwrap()
            .as_deref(),
        Some("4"),
        "the counter is a plain Redis key"
    );
    assert_eq!(
        lambda.query(&s("faq"), &s("d1")).await.unwrap(),
        Answer {
            value: None,
            source: Layer::Speed
        },
        "the speed layer has not seen `faq`"
    );

    // The batch run for the day: it reads half the day, then waits for the gate.
    let (open, gate) = tokio::sync::oneshot::channel();
    let source = Gated {
        first: day1()[..3].to_vec(),
        gate: Some(gate),
        rest: day1()[3..].to_vec(),
        delivered: 0,
    };
    let store = scratch.checkpoints().await;
    let metrics = std::sync::Arc::new(std::sync::OnceLock::new());
    let run = lambda.run_batch(BatchExecutor::new().chunk_size(2), s("d1"), {
        let metrics = std::sync::Arc::clone(&metrics);
        move |sink| {
            let p = batch_pipeline(source, sink, store);
            metrics.set(p.metrics()).unwrap();
            p
        }
    });
    let run = tokio::spawn(run);
    let metrics = metrics.get().expect("the pipeline is built at once");
    assert!(
        eventually(|| async { metrics.snapshot().records_in == 3 }).await,
        "the batch run reads the first half of the day (read {})",
        metrics.snapshot().records_in
    );
    assert!(!run.is_finished(), "the run waits at the gate");
    assert!(!view.is_complete(&"d1").await.unwrap());
    assert_eq!(
        lambda.query(&s("home"), &s("d1")).await.unwrap(),
        speed_answer,
        "while the batch run is in progress, Redis answers"
    );

    open.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.records_read, 6);
    assert!(view.is_complete(&"d1").await.unwrap());
    assert_eq!(
        view.rows::<u64>(&"d1").await.unwrap(),
        BTreeMap::from([(s("cart"), 2), (s("faq"), 1), (s("home"), 3)])
    );
    assert!(view.staged_rows::<u64>(&"d1").await.unwrap().is_empty());
    for (page, exact) in [("home", Some(3)), ("faq", Some(1)), ("search", None)] {
        assert_eq!(
            lambda.query(&s(page), &s("d1")).await.unwrap(),
            Answer {
                value: exact,
                source: Layer::Batch
            },
            "`{page}` answers from PostgreSQL once the day is complete"
        );
    }
    // The speed counter is still there; it is just no longer used for d1.
    assert_eq!(speed.get(&s("home"), &s("d1")).await.unwrap(), Some(4u64));

    // Another day is still served by Redis.
    bump(&lambda, vec![(s("home"), s("d2"), 5)]).await;
    assert_eq!(
        lambda.query(&s("home"), &s("d2")).await.unwrap(),
        Answer {
            value: Some(5),
            source: Layer::Speed
        }
    );
}

#[tokio::test]
async fn a_duplicate_batch_run_is_skipped_and_changes_nothing() {
    let scratch = Scratch::new("dup");
    let view = scratch.view().await;
    let lambda: Counts = Lambda::new(view.clone(), scratch.speed(Duration::from_secs(3600)));
    let store = scratch.checkpoints().await;

    let first = lambda
        .run_batch(BatchExecutor::new(), s("d1"), |sink| {
            batch_pipeline(IterSource::new(day1()), sink, store.clone())
        })
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Completed);
    let rows = view.rows::<u64>(&"d1").await.unwrap();
    assert_eq!(
        rows,
        BTreeMap::from([(s("cart"), 2), (s("faq"), 1), (s("home"), 3)])
    );
    let published = view.published_at(&"d1").await.unwrap();
    assert!(published.is_some());

    // The same day again over different input: skipped, nothing read or written.
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
    assert_eq!(view.rows::<u64>(&"d1").await.unwrap(), rows);
    assert_eq!(
        view.published_at(&"d1").await.unwrap(),
        published,
        "the skipped run's publish had nothing staged and left the day as it was"
    );
    assert_eq!(
        lambda.query(&s("new"), &s("d1")).await.unwrap(),
        Answer {
            value: None,
            source: Layer::Batch
        }
    );

    // Another day is another run key: it runs, and d1 stays as it was.
    let d2 = lambda
        .run_batch(BatchExecutor::new(), s("d2"), |sink| {
            batch_pipeline(IterSource::new(vec![("home", "d2")]), sink, store.clone())
        })
        .await
        .unwrap();
    assert_eq!(d2.outcome, Outcome::Completed);
    assert_eq!(
        view.rows::<u64>(&"d2").await.unwrap(),
        BTreeMap::from([(s("home"), 1)])
    );
    assert_eq!(view.rows::<u64>(&"d1").await.unwrap(), rows);
}

#[tokio::test]
async fn the_speed_counter_expires_in_redis() {
    let scratch = Scratch::new("expire");
    let speed = scratch.speed(Duration::from_millis(300));
    let lambda: Counts = Lambda::new(scratch.view().await, speed.clone());
    bump(&lambda, vec![(s("home"), s("d1"), 2)]).await;
    let key = speed.key(&"home", &"d1");
    // Whether the counter is still there depends on how fast this machine is; that
    // it has an expiry and then disappears does not.
    let ttl = pttl(&key);
    assert!(
        ttl == -2 || (1..=300).contains(&ttl),
        "PTTL {ttl}: the counter expires within its 300 ms TTL"
    );
    assert!(
        eventually(|| async {
            lambda.query(&s("home"), &s("d1")).await.unwrap()
                == Answer {
                    value: None,
                    source: Layer::Speed,
                }
        })
        .await,
        "the speed counter never expired: {:?}",
        lambda.query(&s("home"), &s("d1")).await.unwrap()
    );
    assert!(!exists(&key), "Redis dropped the key");
}

// ---------------------------------------------------------------------------------
// RedisSpeedStore alone
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn redis_counters_add_up_per_key_and_period() {
    let scratch = Scratch::new("sums");
    let store = scratch.speed(Duration::from_secs(3600));
    store
        .add(vec![
            (s("home"), s("d1"), 2u64),
            (s("home"), s("d1"), 3),
            (s("cart"), s("d1"), 1),
            (s("home"), s("d2"), 7),
        ])
        .await
        .unwrap();
    store.add(vec![(s("home"), s("d1"), 10u64)]).await.unwrap();
    assert_eq!(store.get(&s("home"), &s("d1")).await.unwrap(), Some(15u64));
    assert_eq!(store.get(&s("cart"), &s("d1")).await.unwrap(), Some(1u64));
    assert_eq!(store.get(&s("home"), &s("d2")).await.unwrap(), Some(7u64));
    assert_eq!(
        SpeedStore::<String, String, u64>::get(&store, &s("faq"), &s("d1"))
            .await
            .unwrap(),
        None
    );
    // An empty call writes nothing and succeeds.
    SpeedStore::<String, String, u64>::add(&store, Vec::new())
        .await
        .unwrap();

    // Separators inside keys and periods do not make two counters one.
    store
        .add(vec![(s("a:b"), s("c"), 1u64), (s("a"), s("b:c"), 2)])
        .await
        .unwrap();
    assert_ne!(store.key(&"a:b", &"c"), store.key(&"a", &"b:c"));
    assert_eq!(store.get(&s("a:b"), &s("c")).await.unwrap(), Some(1u64));
    assert_eq!(store.get(&s("a"), &s("b:c")).await.unwrap(), Some(2u64));

    // Integer counters are exact (INCRBY), also beyond 2^53.
    let big = (1i64 << 53) + 1;
    store
        .add(vec![(s("big"), s("d1"), big), (s("big"), s("d1"), 2)])
        .await
        .unwrap();
    assert_eq!(store.get(&s("big"), &s("d1")).await.unwrap(), Some(big + 2));
}

#[tokio::test]
async fn the_first_increment_sets_the_ttl_and_later_ones_keep_it() {
    let scratch = Scratch::new("ttl");
    let store = scratch.speed(Duration::from_secs(60));
    let key = store.key(&"home", &"d1");
    store.add(vec![(s("home"), s("d1"), 1u64)]).await.unwrap();
    let created = pttl(&key);
    assert!(
        (1..=60_000).contains(&created),
        "PTTL {created}: set when the counter is created"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = pttl(&key);
    store.add(vec![(s("home"), s("d1"), 1u64)]).await.unwrap();
    let after = pttl(&key);
    assert!(
        0 < after && after <= before && before <= 59_950,
        "PTTL {before} before the second increment, {after} after: it must not be reset"
    );
    assert_eq!(store.get(&s("home"), &s("d1")).await.unwrap(), Some(2u64));

    // Once expired, the next increment starts a new counter, with a new TTL.
    let _: bool = redis_conn().pexpire(&key, 1).unwrap();
    assert!(eventually(|| async { !exists(&key) }).await);
    assert_eq!(
        SpeedStore::<String, String, u64>::get(&store, &s("home"), &s("d1"))
            .await
            .unwrap(),
        None
    );
    store.add(vec![(s("home"), s("d1"), 5u64)]).await.unwrap();
    assert_eq!(store.get(&s("home"), &s("d1")).await.unwrap(), Some(5u64));
    let renewed = pttl(&key);
    assert!((1..=60_000).contains(&renewed), "PTTL {renewed}");
}

#[tokio::test]
async fn float_counters_use_incrbyfloat_and_reject_non_finite_deltas() {
    let scratch = Scratch::new("float");
    let store = scratch.speed(Duration::from_secs(3600));
    store
        .add(vec![(s("rev"), s("d1"), 0.5f64), (s("rev"), s("d1"), 0.25)])
        .await
        .unwrap();
    store.add(vec![(s("rev"), s("d1"), 1e-3f64)]).await.unwrap();
    assert_eq!(
        store.get(&s("rev"), &s("d1")).await.unwrap(),
        Some(0.751f64)
    );

    let err = store
        .add(vec![
            (s("ok"), s("d1"), 1.0f64),
            (s("bad"), s("d1"), f64::NAN),
        ])
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("Redis at 127.0.0.1:6379") && msg.contains(&store.key(&"bad", &"d1")),
        "{msg}"
    );
    assert!(
        !exists(&store.key(&"ok", &"d1")),
        "nothing of the failed call was written"
    );

    let err = store
        .add(vec![(s("huge"), s("d1"), u64::MAX)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[tokio::test]
async fn a_key_that_holds_no_counter_is_a_permanent_error_naming_it() {
    let scratch = Scratch::new("wrong");
    let store = scratch.speed(Duration::from_secs(3600));
    let key = store.key(&"home", &"d1");
    let _: () = redis_conn().set(&key, "not a number").unwrap();

    let err = SpeedStore::<String, String, u64>::get(&store, &s("home"), &s("d1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Source { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("Redis at 127.0.0.1:6379") && msg.contains(&key),
        "{msg}"
    );

    let err = store
        .add(vec![(s("home"), s("d1"), 1u64)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Sink { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Redis at 127.0.0.1:6379"), "{err}");

    // A float counter read as an integer one is named too.
    store.add(vec![(s("rev"), s("d1"), 0.5f64)]).await.unwrap();
    let err = SpeedStore::<String, String, u64>::get(&store, &s("rev"), &s("d1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a u64 counter"), "{err}");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retryable_error_naming_the_server() {
    let store = RedisSpeedStore::new("redis://127.0.0.1:1", Duration::from_secs(60))
        .unwrap()
        .retry(RetryPolicy::new().max_attempts(1));
    let err = SpeedStore::<String, String, u64>::get(&store, &s("a"), &s("d1"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Redis at 127.0.0.1:1"), "{err}");
    let err = store.add(vec![(s("a"), s("d1"), 1u64)]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Redis at 127.0.0.1:1"), "{err}");
}

// ---------------------------------------------------------------------------------
// PgServingView alone
// ---------------------------------------------------------------------------------

type Counter = dyn ServingView<String, String, u64>;

#[tokio::test]
async fn staged_rows_are_invisible_until_published() {
    let scratch = Scratch::new("staged");
    let pg = scratch.view().await;
    let view: &Counter = &pg;
    view.stage(&s("d1"), vec![(s("home"), 3), (s("cart"), 2)])
        .await
        .unwrap();
    assert_eq!(
        view.lookup(&s("home"), &s("d1")).await.unwrap(),
        BatchLookup::Incomplete
    );
    assert!(!pg.is_complete(&"d1").await.unwrap());
    assert!(pg.rows::<u64>(&"d1").await.unwrap().is_empty());
    assert_eq!(
        pg.staged_rows::<u64>(&"d1").await.unwrap(),
        BTreeMap::from([(s("cart"), 2), (s("home"), 3)])
    );

    view.publish(&s("d1")).await.unwrap();
    assert_eq!(
        view.lookup(&s("home"), &s("d1")).await.unwrap(),
        BatchLookup::Complete(Some(3))
    );
    assert_eq!(
        view.lookup(&s("faq"), &s("d1")).await.unwrap(),
        BatchLookup::Complete(None)
    );
    assert_eq!(
        view.lookup(&s("home"), &s("d2")).await.unwrap(),
        BatchLookup::Incomplete
    );
    assert!(pg.staged_rows::<u64>(&"d1").await.unwrap().is_empty());

    // Other readers see plain rows.
    let db = pg_admin().await;
    let row = db
        .query_one(
            &format!(
                "SELECT value::text FROM {} WHERE period = 'd1' AND key = 'home'",
                pg.table()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "3");
}

#[tokio::test]
async fn publish_is_idempotent_and_a_republish_replaces_the_period_whole() {
    let scratch = Scratch::new("republish");
    let pg = scratch.view().await;
    let view: &Counter = &pg;
    view.stage(&s("d1"), vec![(s("home"), 3), (s("faq"), 1)])
        .await
        .unwrap();
    view.stage(&s("d2"), vec![(s("home"), 9)]).await.unwrap();
    view.publish(&s("d1")).await.unwrap();
    view.publish(&s("d2")).await.unwrap();
    let first = pg.published_at(&"d1").await.unwrap().unwrap();

    // Again, with nothing staged: nothing changes.
    view.publish(&s("d1")).await.unwrap();
    assert_eq!(
        pg.rows::<u64>(&"d1").await.unwrap(),
        BTreeMap::from([(s("faq"), 1), (s("home"), 3)])
    );
    assert_eq!(pg.published_at(&"d1").await.unwrap(), Some(first));

    // A corrected run: the old rows serve until its publish, which swaps them whole.
    view.stage(&s("d1"), vec![(s("home"), 4), (s("cart"), 2)])
        .await
        .unwrap();
    assert_eq!(
        view.lookup(&s("faq"), &s("d1")).await.unwrap(),
        BatchLookup::Complete(Some(1))
    );
    view.publish(&s("d1")).await.unwrap();
    assert_eq!(
        pg.rows::<u64>(&"d1").await.unwrap(),
        BTreeMap::from([(s("cart"), 2), (s("home"), 4)]),
        "`faq` is gone, not left over"
    );
    assert_eq!(
        view.lookup(&s("faq"), &s("d1")).await.unwrap(),
        BatchLookup::Complete(None)
    );
    assert!(pg.published_at(&"d1").await.unwrap().unwrap() >= first);
    assert_eq!(
        pg.rows::<u64>(&"d2").await.unwrap(),
        BTreeMap::from([(s("home"), 9)]),
        "another period is untouched"
    );
}

#[tokio::test]
async fn stage_upserts_and_clear_staged_drops_a_failed_runs_rows() {
    let scratch = Scratch::new("clear");
    let pg = scratch.view().await;
    let view: &Counter = &pg;
    // Within a call and across calls, the last row of a key wins.
    view.stage(&s("d1"), vec![(s("a"), 1), (s("a"), 2), (s("b"), 3)])
        .await
        .unwrap();
    view.stage(&s("d1"), vec![(s("a"), 4)]).await.unwrap();
    assert_eq!(
        pg.staged_rows::<u64>(&"d1").await.unwrap(),
        BTreeMap::from([(s("a"), 4), (s("b"), 3)])
    );

    // A run that failed: its rows are cleared by the next, which stages its own.
    view.stage(&s("d2"), vec![(s("x"), 1)]).await.unwrap();
    view.clear_staged(&s("d1")).await.unwrap();
    assert!(pg.staged_rows::<u64>(&"d1").await.unwrap().is_empty());
    assert_eq!(
        pg.staged_rows::<u64>(&"d2").await.unwrap(),
        BTreeMap::from([(s("x"), 1)]),
        "clearing one period leaves the others"
    );
    view.stage(&s("d1"), vec![(s("c"), 5)]).await.unwrap();
    view.publish(&s("d1")).await.unwrap();
    assert_eq!(
        pg.rows::<u64>(&"d1").await.unwrap(),
        BTreeMap::from([(s("c"), 5)])
    );

    // Publishing with nothing ever staged completes the period with no rows.
    view.publish(&s("d3")).await.unwrap();
    assert_eq!(
        view.lookup(&s("c"), &s("d3")).await.unwrap(),
        BatchLookup::Complete(None)
    );
}

#[tokio::test]
async fn concurrent_publishes_of_a_period_publish_it_once() {
    let scratch = Scratch::new("race");
    // Two views with their own connections, on the same tables.
    let (a, b) = (scratch.view().await, scratch.view().await);
    let rows: Vec<(String, u64)> = (0..2_000).map(|i| (format!("k{i}"), i)).collect();
    ServingView::<String, String, u64>::stage(&a, &s("d1"), rows.clone())
        .await
        .unwrap();
    let d1 = s("d1");
    let (ra, rb) = tokio::join!(
        ServingView::<String, String, u64>::publish(&a, &d1),
        ServingView::<String, String, u64>::publish(&b, &d1),
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(
        a.rows::<u64>(&"d1").await.unwrap(),
        rows.into_iter().collect::<BTreeMap<_, _>>()
    );
    assert!(a.staged_rows::<u64>(&"d1").await.unwrap().is_empty());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stats {
    views: u64,
    share: f64,
}

#[tokio::test]
async fn values_are_json_and_one_that_does_not_round_trip_is_rejected() {
    let scratch = Scratch::new("json");
    let pg = scratch.view().await;
    let view: &dyn ServingView<String, String, Stats> = &pg;
    let home = Stats {
        views: 3,
        share: 0.75,
    };
    view.stage(&s("d1"), vec![(s("home"), home.clone())])
        .await
        .unwrap();
    view.publish(&s("d1")).await.unwrap();
    assert_eq!(
        view.lookup(&s("home"), &s("d1")).await.unwrap(),
        BatchLookup::Complete(Some(home))
    );
    let db = pg_admin().await;
    let views: String = db
        .query_one(
            &format!(
                "SELECT value->>'views' FROM {} WHERE period = 'd1' AND key = 'home'",
                pg.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, "3");

    // NaN becomes JSON null, which is no f64: rejected, naming the key; nothing staged.
    let err = view
        .stage(
            &s("d2"),
            vec![
                (
                    s("ok"),
                    Stats {
                        views: 1,
                        share: 1.0,
                    },
                ),
                (
                    s("bad"),
                    Stats {
                        views: 1,
                        share: f64::NAN,
                    },
                ),
            ],
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("PostgreSQL at 127.0.0.1:5432") && msg.contains("`bad`"),
        "{msg}"
    );
    assert!(pg.staged_rows::<Stats>(&"d2").await.unwrap().is_empty());

    // A stored value of another shape is an error naming the row, not a wrong answer.
    db.batch_execute(&format!(
        "INSERT INTO {} VALUES ('d1', 'odd', '\"text\"')",
        pg.table()
    ))
    .await
    .unwrap();
    let err = view.lookup(&s("odd"), &s("d1")).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("`odd`"), "{err}");
}

#[tokio::test]
async fn bad_table_names_are_config_errors() {
    let client = PgClient::new(PG).unwrap();
    for name in ["", "views; drop table x", "a..b", &"v".repeat(64)] {
        let err = PgServingView::new(client.clone(), name).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{name}: {err}");
    }
    // A name whose derived staging name would be too long.
    let err = PgServingView::new(client.clone(), &"v".repeat(60)).unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("63")),
        "{err}"
    );
    let view = PgServingView::new(client.clone(), "views").unwrap();
    let err = view.clone().with_staging_table("views").unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = view.with_complete_table("views_staging").unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_retryable_error_naming_the_server() {
    let view = PgServingView::new(
        PgClient::new("host=127.0.0.1 port=1 user=postgres dbname=test").unwrap(),
        "views",
    )
    .unwrap();
    let err = ServingView::<String, String, u64>::lookup(&view, &s("a"), &s("d1"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("PostgreSQL at 127.0.0.1:1"),
        "{err}"
    );
    let err = ServingView::<String, String, u64>::publish(&view, &s("d1"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("PostgreSQL at 127.0.0.1:1"),
        "{err}"
    );
}
