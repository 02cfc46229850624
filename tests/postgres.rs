//! The PostgreSQL connector against the real server at 127.0.0.1:5432 (database
//! `test`, user `postgres`): keyset source, upsert / counter / transactional sinks,
//! checkpoint store, crashes and restarts, and a connection killed mid-run.
//!
//! Each test creates its own tables (prefix + pid + counter) and drops them at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use batchstream::adapters::{CollectSink, IterSource};
use batchstream::checkpoint::{Checkpoint, CheckpointStore};
use batchstream::connectors::postgres::{
    KeysetPosition, PgCheckpointStore, PgClient, PgCounterSink, PgSource, PgTable,
    PgTransactionalSink, PgUpsertSink,
};
use batchstream::retry::RetryPolicy;
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, CheckpointError, DeadLetter, DeliveryGuarantee, Error, Pipeline,
    RecordErrorKind, Result, Sink, Source, SourceBatch, StreamExecutor,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::{NoTls, Row};

const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("bs_{prefix}_{}_{n}", std::process::id())
}

/// A connection string with an application name, so a test can find (and kill) the
/// connections of one component.
fn with_app(app: &str) -> String {
    format!("{SERVER} application_name={app}")
}

fn unreachable(e: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL at 127.0.0.1:5432 (database `test`, user `postgres`) is not reachable: {e}\n\
         start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    )
}

/// A plain client for setup and checks.
async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(SERVER, NoTls)
        .await
        .unwrap_or_else(|e| unreachable(e));
    tokio::spawn(conn);
    client
}

async fn client(app: &str) -> PgClient {
    PgClient::connect(&with_app(app))
        .await
        .unwrap_or_else(|e| unreachable(e))
}

/// Drops its tables when the test ends, also when it panics.
struct Tables(Vec<String>);

impl Tables {
    fn new(names: &[&str]) -> Self {
        Tables(names.iter().map(|s| s.to_string()).collect())
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        // A lock timeout, so that a connection left inside a transaction cannot hang
        // the test here.
        let sql = format!(
            "SET lock_timeout = '10s'; DROP TABLE IF EXISTS {}",
            self.0.join(", ")
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(SERVER, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------
// Test data: orders over three days
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Order {
    id: i64,
    day: String,
    customer: String,
    amount_cents: i64,
}

/// Creates `table` with orders 1..=n: day 2024-05-0{1 + id % 3}, customer c{id % 5},
/// amount id * 100.
async fn seed_orders(db: &tokio_postgres::Client, table: &str, n: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                               customer text NOT NULL, amount_cents bigint);
         INSERT INTO {table}
         SELECT g, timestamptz '2024-05-01 00:00:00+00' + (g % 3) * interval '1 day'
                   + g * interval '1 minute',
                'c' || (g % 5), g * 100
         FROM generate_series(1, {n}) g;"
    ))
    .await
    .unwrap();
}

fn expected_order(id: i64) -> Order {
    Order {
        id,
        day: format!("2024-05-0{}", 1 + id % 3),
        customer: format!("c{}", id % 5),
        amount_cents: id * 100,
    }
}

fn decode_order(row: &Row) -> std::result::Result<Order, tokio_postgres::Error> {
    let at: DateTime<Utc> = row.try_get("created_at")?;
    Ok(Order {
        id: row.try_get("id")?,
        day: at.date_naive().to_string(),
        customer: row.try_get("customer")?,
        amount_cents: row.try_get("amount_cents")?,
    })
}

fn day(d: u32) -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.with_ymd_and_hms(2024, 5, d, 0, 0, 0).unwrap()
}

fn order_source(client: PgClient, table: &str) -> PgSource<Order> {
    PgSource::table(client, table, "id", decode_order).unwrap()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Increment {
    key: String,
    orders: i64,
    revenue: i64,
}

fn increment(o: Order) -> Increment {
    Increment {
        key: o.day,
        orders: 1,
        revenue: o.amount_cents,
    }
}

type Totals = BTreeMap<String, (i64, i64, f64)>;

fn expected_totals(n: i64) -> Totals {
    let mut t: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for id in 1..=n {
        let o = expected_order(id);
        let e = t.entry(o.day).or_default();
        e.0 += 1;
        e.1 += o.amount_cents;
    }
    t.into_iter()
        .map(|(k, (c, r))| (k, (c, r, r as f64 / c as f64)))
        .collect()
}

async fn create_totals(db: &tokio_postgres::Client, table: &str) {
    db.batch_execute(&format!(
        "CREATE TABLE {table} (key text PRIMARY KEY, total_orders bigint NOT NULL,
                               total_revenue bigint NOT NULL, avg_order float8 NOT NULL)"
    ))
    .await
    .unwrap();
}

async fn read_totals(db: &tokio_postgres::Client, table: &str) -> Totals {
    db.query(
        &format!("SELECT key, total_orders, total_revenue, avg_order FROM {table} ORDER BY key"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

fn counter_sink(client: PgClient, id: &str, table: &str, epochs: &str) -> PgCounterSink<Increment> {
    let t = PgTable::new(
        table,
        ["key", "total_orders", "total_revenue", "avg_order"],
        |i: &Increment| {
            (
                i.key.clone(),
                i.orders,
                i.revenue,
                i.revenue as f64 / i.orders as f64,
            )
        },
    )
    .key(["key"]);
    PgCounterSink::new(client, id, t)
        .unwrap()
        .counters(["total_orders", "total_revenue"])
        .unwrap()
        .set(
            "avg_order",
            &format!(
                "({table}.total_revenue + EXCLUDED.total_revenue)::float8 \
                 / ({table}.total_orders + EXCLUDED.total_orders)"
            ),
        )
        .unwrap()
        .epochs_table(epochs)
        .unwrap()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

// ---------------------------------------------------------------------------------
// Crash helpers
// ---------------------------------------------------------------------------------

/// Wraps a sink and fails its `write` call number `write_call` (1-based) or its
/// `commit(epoch)`, like a process dying there.
struct Crash<S> {
    inner: S,
    write_call: Option<u64>,
    commit_epoch: Option<u64>,
    writes: u64,
}

impl<S> Crash<S> {
    fn on_write(inner: S, call: u64) -> Self {
        Crash {
            inner,
            write_call: Some(call),
            commit_epoch: None,
            writes: 0,
        }
    }
    fn on_commit(inner: S, epoch: u64) -> Self {
        Crash {
            inner,
            write_call: None,
            commit_epoch: Some(epoch),
            writes: 0,
        }
    }
}

impl<S: Sink> Sink for Crash<S> {
    type Item = S::Item;
    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, batch: Vec<S::Item>) -> Result<()> {
        self.writes += 1;
        if self.write_call == Some(self.writes) {
            return Err(Error::sink("write", "injected crash"));
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
        if self.commit_epoch == Some(epoch) {
            return Err(Error::sink("commit", "injected crash"));
        }
        self.inner.commit(epoch).await
    }
    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.inner.recover(checkpointed).await
    }
}

/// A store whose save of `epoch` fails (after the sink prepared it).
struct FailSave<S> {
    inner: S,
    epoch: u64,
}

impl<S: CheckpointStore> CheckpointStore for FailSave<S> {
    async fn load(&self, id: &str) -> std::result::Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(id).await
    }
    async fn save(&self, ck: &Checkpoint) -> std::result::Result<(), CheckpointError> {
        if ck.epoch == self.epoch {
            return Err(CheckpointError::Other("injected crash".into()));
        }
        self.inner.save(ck).await
    }
}

/// A source that never returns from its read after `batches` batches: the run is
/// then cut off by dropping its future.
struct StallAfter<S> {
    inner: S,
    batches: usize,
}

impl<S: Source> Source for StallAfter<S> {
    type Item = S::Item;
    type Position = S::Position;
    fn boundedness(&self) -> batchstream::Boundedness {
        self.inner.boundedness()
    }
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<SourceBatch<S::Item, S::Position>>> {
        if self.batches == 0 {
            std::future::pending::<()>().await;
        }
        self.batches -= 1;
        self.inner.next_batch(max).await
    }
    async fn seek(&mut self, p: S::Position) -> Result<()> {
        self.inner.seek(p).await
    }
    async fn ack(&mut self, p: &S::Position) -> Result<()> {
        self.inner.ack(p).await
    }
}

/// Runs `run` until it stalls, then drops it (a process killed mid-run).
async fn cut_off<F: std::future::Future>(run: F) {
    assert!(
        tokio::time::timeout(Duration::from_secs(3), run)
            .await
            .is_err(),
        "the run should have stalled"
    );
}

// ---------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_one_day_in_keyset_chunks_and_resumes_after_the_last_key() {
    let db = admin().await;
    let orders = unique("orders");
    let _t = Tables::new(&[&orders]);
    seed_orders(&db, &orders, 60).await;
    let day2 = || {
        order_source(PgClient::new(SERVER).unwrap(), &orders)
            .filter("created_at >= $1 AND created_at < $2")
            .bind(day(2))
            .bind(day(3))
            .count_total(true)
    };
    let expected: Vec<Order> = (1..=60)
        .filter(|id| id % 3 == 1)
        .map(expected_order)
        .collect();

    let mut src = day2();
    let mut read = Vec::new();
    let mut positions = Vec::new();
    while let Some(batch) = src.next_batch(6).await.unwrap() {
        assert!(batch.records.len() <= 6);
        assert!(batch.rejected.is_empty());
        positions.push(batch.position.clone());
        read.extend(batch.records);
    }
    assert_eq!(read, expected);
    assert_eq!(positions.len(), 4, "20 rows in chunks of 6");
    assert_eq!(
        positions[1],
        KeysetPosition {
            last_key: Some(expected[11].id),
            rows_read: 12
        }
    );
    let progress = src.progress().unwrap();
    assert_eq!((progress.done, progress.total), (20, Some(20)));

    // A fresh source resumed from the second position reads exactly the rest.
    let mut resumed = day2();
    resumed.seek(positions[1].clone()).await.unwrap();
    let mut rest = Vec::new();
    while let Some(batch) = resumed.next_batch(100).await.unwrap() {
        rest.extend(batch.records);
    }
    assert_eq!(rest, expected[12..].to_vec());
    assert_eq!(resumed.progress().unwrap().done, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_source_reads_a_select_by_its_key_column() {
    let db = admin().await;
    let orders = unique("orders");
    let _t = Tables::new(&[&orders]);
    seed_orders(&db, &orders, 25).await;
    let mut src: PgSource<(i64, i64)> = PgSource::query(
        PgClient::new(SERVER).unwrap(),
        &format!(
            "SELECT id AS order_id, amount_cents * 2 AS doubled FROM {orders} WHERE customer = $1"
        ),
        "order_id",
        |row: &Row| Ok::<_, tokio_postgres::Error>((row.try_get(0)?, row.try_get(1)?)),
    )
    .unwrap()
    .bind("c2".to_string());
    let mut got = Vec::new();
    while let Some(b) = src.next_batch(2).await.unwrap() {
        got.extend(b.records);
    }
    let want: Vec<(i64, i64)> = (1..=25)
        .filter(|id| id % 5 == 2)
        .map(|id| (id, id * 200))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_rows_become_dead_letters_naming_table_and_key() {
    let db = admin().await;
    let orders = unique("orders");
    let _t = Tables::new(&[&orders]);
    seed_orders(&db, &orders, 30).await;
    db.batch_execute(&format!(
        "UPDATE {orders} SET amount_cents = NULL WHERE id IN (7, 19)"
    ))
    .await
    .unwrap();

    let (sink, out) = CollectSink::new();
    let (dlq, letters) = CollectSink::<DeadLetter>::new();
    let p = Pipeline::new(
        "orders-dl",
        order_source(PgClient::new(SERVER).unwrap(), &orders),
        transform::identity(),
        sink,
    )
    .with_dead_letter_sink(dlq);
    let report = BatchExecutor::new().chunk_size(4).run(p).await.unwrap();
    assert_eq!(report.records_read, 30);
    assert_eq!(report.dead_lettered, 2);
    let ids: Vec<i64> = out.items().iter().map(|o| o.id).collect();
    let want: Vec<i64> = (1..=30).filter(|id| *id != 7 && *id != 19).collect();
    assert_eq!(ids, want);

    let letters = letters.items();
    assert_eq!(letters.len(), 2);
    for (letter, id) in letters.iter().zip([7, 19]) {
        assert_eq!(letter.kind(), RecordErrorKind::Parse);
        let text = letter.error.to_string();
        assert!(text.contains(&orders), "{text}");
        assert!(text.contains(&format!("id = {id}")), "{text}");
        assert_eq!(letter.record.as_ref().unwrap()["key"], id);
        assert_eq!(
            letter.error.location.partition.as_deref(),
            Some(orders.as_str())
        );
        assert!(letter.position.is_some());
    }

    // Without a dead-letter sink, the run fails naming the row instead.
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "orders-no-dl",
        order_source(PgClient::new(SERVER).unwrap(), &orders),
        transform::identity(),
        sink,
    );
    let err = BatchExecutor::new().run(p).await.unwrap_err();
    assert!(err.to_string().contains("id = 7"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_unreachable_servers_are_typed_errors() {
    let err = PgSource::table(
        PgClient::new(SERVER).unwrap(),
        "orders; drop",
        "id",
        decode_order,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = PgUpsertSink::new(
        PgClient::new(SERVER).unwrap(),
        PgTable::new("t", ["a", "b"], |x: &(i64, i64)| *x).key(["c"]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("key column `c`"), "{err}");

    // Nothing listens on port 1: a transient error naming the server.
    let err = PgClient::connect("host=127.0.0.1 port=1 user=postgres connect_timeout=5")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("PostgreSQL at 127.0.0.1:1"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// Upsert sink
// ---------------------------------------------------------------------------------

fn copy_table(name: &str) -> PgTable<Order> {
    PgTable::new(name, ["id", "customer", "amount_cents"], |o: &Order| {
        (o.id, o.customer.clone(), o.amount_cents)
    })
    .key(["id"])
}

async fn read_copy(db: &tokio_postgres::Client, table: &str) -> Vec<(i64, String, i64)> {
    db.query(
        &format!("SELECT id, customer, amount_cents FROM {table} ORDER BY id"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_sink_replays_after_a_crash_without_duplicates() {
    let db = admin().await;
    let (orders, copy, cks) = (unique("orders"), unique("copy"), unique("ck"));
    let _t = Tables::new(&[&orders, &copy, &cks]);
    seed_orders(&db, &orders, 50).await;
    db.batch_execute(&format!(
        "CREATE TABLE {copy} (id bigint PRIMARY KEY, customer text, amount_cents bigint)"
    ))
    .await
    .unwrap();
    let store = || {
        PgCheckpointStore::new(PgClient::new(SERVER).unwrap())
            .with_table(&cks)
            .unwrap()
    };
    let sink = || {
        PgUpsertSink::new(PgClient::new(SERVER).unwrap(), copy_table(&copy))
            .unwrap()
            .max_buffer(3)
    };
    assert_eq!(sink().guarantee(), DeliveryGuarantee::Idempotent);

    // First run: checkpoints every 10 records, rows applied every 3, dies on write 6.
    let p = Pipeline::new(
        "copy",
        order_source(PgClient::new(SERVER).unwrap(), &orders),
        transform::identity(),
        Crash::on_write(sink(), 6),
    )
    .with_checkpoint_store(store());
    let err = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(10)
        .run(p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected crash"), "{err}");
    let checkpointed = store().load("copy").await.unwrap().unwrap();
    let position: KeysetPosition<i64> =
        serde_json::from_value(checkpointed.source_position.unwrap()).unwrap();
    let written_before = read_copy(&db, &copy).await.len() as u64;
    assert!(
        written_before > position.rows_read,
        "some rows after the checkpoint were already written ({written_before} > {})",
        position.rows_read
    );

    // Restart: the rows after the checkpoint are written again, over themselves.
    let p = Pipeline::new(
        "copy",
        order_source(PgClient::new(SERVER).unwrap(), &orders),
        transform::identity(),
        sink(),
    )
    .with_checkpoint_store(store());
    let report = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(10)
        .run(p)
        .await
        .unwrap();
    assert_eq!(report.resumed_from_epoch, Some(checkpointed.epoch));
    assert_eq!(report.records_read, 50 - position.rows_read);
    let want: Vec<(i64, String, i64)> = (1..=50)
        .map(expected_order)
        .map(|o| (o.id, o.customer, o.amount_cents))
        .collect();
    assert_eq!(read_copy(&db, &copy).await, want);

    // A forced batch re-run of everything changes nothing either.
    let p = Pipeline::new(
        "copy-batch",
        order_source(PgClient::new(SERVER).unwrap(), &orders),
        transform::identity(),
        sink(),
    );
    BatchExecutor::new().run(p).await.unwrap();
    assert_eq!(read_copy(&db, &copy).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_sink_updates_values_and_keeps_the_last_record_per_key() {
    let db = admin().await;
    let t = unique("kv");
    let _t = Tables::new(&[&t]);
    db.batch_execute(&format!("CREATE TABLE {t} (k text PRIMARY KEY, v bigint)"))
        .await
        .unwrap();
    let table = PgTable::new(&t, ["k", "v"], |x: &(String, i64)| x.clone()).key(["k"]);
    let mut sink = PgUpsertSink::new(PgClient::new(SERVER).unwrap(), table).unwrap();
    sink.write(vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 3)])
        .await
        .unwrap();
    sink.flush().await.unwrap();
    sink.write(vec![("b".into(), 20)]).await.unwrap();
    sink.flush().await.unwrap();
    let rows: Vec<(String, i64)> = db
        .query(&format!("SELECT k, v FROM {t} ORDER BY k"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![("a".into(), 3), ("b".into(), 20)]);

    // A value of the wrong type is a permanent error naming the table.
    let bad = PgTable::new(&t, ["k", "v"], |x: &(String, String)| x.clone()).key(["k"]);
    let mut sink = PgUpsertSink::new(PgClient::new(SERVER).unwrap(), bad).unwrap();
    sink.write(vec![("c".into(), "x".into())]).await.unwrap();
    let err = sink.flush().await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&t), "{err}");
}

// ---------------------------------------------------------------------------------
// Counter sink
// ---------------------------------------------------------------------------------

struct CounterSetup {
    db: tokio_postgres::Client,
    orders: String,
    totals: String,
    epochs: String,
    cks: String,
    _tables: Tables,
}

async fn counter_setup(n: i64) -> CounterSetup {
    let db = admin().await;
    let (orders, totals, epochs, cks) = (
        unique("orders"),
        unique("totals"),
        unique("epochs"),
        unique("ck"),
    );
    let tables = Tables::new(&[&orders, &totals, &epochs, &cks]);
    seed_orders(&db, &orders, n).await;
    create_totals(&db, &totals).await;
    CounterSetup {
        db,
        orders,
        totals,
        epochs,
        cks,
        _tables: tables,
    }
}

impl CounterSetup {
    fn source(&self) -> PgSource<Order> {
        order_source(PgClient::new(SERVER).unwrap(), &self.orders)
    }
    fn sink(&self) -> PgCounterSink<Increment> {
        counter_sink(
            PgClient::new(SERVER).unwrap(),
            "totals",
            &self.totals,
            &self.epochs,
        )
    }
    fn store(&self) -> PgCheckpointStore {
        PgCheckpointStore::new(PgClient::new(SERVER).unwrap())
            .with_table(&self.cks)
            .unwrap()
    }
    fn stream() -> StreamExecutor {
        StreamExecutor::new()
            .max_batch(5)
            .checkpoint_every_records(10)
    }
    /// A full run resuming from the store, with nothing injected.
    async fn finish(&self) -> batchstream::RunReport {
        let p = Pipeline::new(
            "totals",
            self.source(),
            transform::identity::<Order>().map(increment),
            self.sink(),
        )
        .with_checkpoint_store(self.store());
        Self::stream().run(p).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_sink_totals_match_under_batch_and_stream() {
    let s = counter_setup(90).await;
    assert_eq!(s.sink().guarantee(), DeliveryGuarantee::Transactional);
    let p = Pipeline::new(
        "totals-batch",
        s.source(),
        transform::identity::<Order>().map(increment),
        s.sink(),
    );
    BatchExecutor::new().chunk_size(7).run(p).await.unwrap();
    assert_eq!(read_totals(&s.db, &s.totals).await, expected_totals(90));

    // The stream run adds the same increments again: totals double, exactly.
    let report = s.finish().await;
    assert!(report.checkpoints > 5);
    let doubled: Totals = expected_totals(90)
        .into_iter()
        .map(|(k, (c, r, a))| (k, (2 * c, 2 * r, a)))
        .collect();
    assert_eq!(read_totals(&s.db, &s.totals).await, doubled);
    // Only the latest committed epoch is remembered; nothing stays staged.
    let staged = count(
        &s.db,
        &format!("SELECT count(*) FROM {} WHERE state = 'prepared'", s.epochs),
    )
    .await;
    assert_eq!(staged, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_sink_is_exactly_once_when_the_run_dies_after_prepare_before_save() {
    let s = counter_setup(70).await;
    let p = Pipeline::new(
        "totals",
        s.source(),
        transform::identity::<Order>().map(increment),
        s.sink(),
    )
    .with_checkpoint_store(FailSave {
        inner: s.store(),
        epoch: 3,
    });
    let err = CounterSetup::stream().run(p).await.unwrap_err();
    assert!(err.to_string().contains("injected crash"), "{err}");
    // Epoch 3 is staged but not applied: the totals hold epochs 1 and 2 (20 orders).
    let staged = count(
        &s.db,
        &format!(
            "SELECT count(*) FROM {} WHERE state = 'prepared' AND epoch = 3",
            s.epochs
        ),
    )
    .await;
    assert_eq!(staged, 1);
    let partial: i64 = read_totals(&s.db, &s.totals)
        .await
        .values()
        .map(|t| t.0)
        .sum();
    assert_eq!(partial, 20);

    // Restart: recovery discards epoch 3; its records are replayed once.
    let report = s.finish().await;
    assert_eq!(report.resumed_from_epoch, Some(2));
    assert_eq!(read_totals(&s.db, &s.totals).await, expected_totals(70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_sink_is_exactly_once_when_the_run_dies_after_save_before_commit() {
    let s = counter_setup(70).await;
    let p = Pipeline::new(
        "totals",
        s.source(),
        transform::identity::<Order>().map(increment),
        Crash::on_commit(s.sink(), 4),
    )
    .with_checkpoint_store(s.store());
    let err = CounterSetup::stream().run(p).await.unwrap_err();
    assert!(err.to_string().contains("injected crash"), "{err}");
    let partial: i64 = read_totals(&s.db, &s.totals)
        .await
        .values()
        .map(|t| t.0)
        .sum();
    assert_eq!(partial, 30, "epoch 4 is checkpointed but not applied yet");

    // Restart: recovery applies the staged epoch 4 (the checkpoint covers it).
    let report = s.finish().await;
    assert_eq!(report.resumed_from_epoch, Some(4));
    assert_eq!(report.records_read, 30);
    assert_eq!(read_totals(&s.db, &s.totals).await, expected_totals(70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_sink_applies_a_staged_epoch_once_whoever_commits_it() {
    let s = counter_setup(0).await;
    let inc = |key: &str, revenue: i64| Increment {
        key: key.into(),
        orders: 1,
        revenue,
    };
    let mut a = s.sink();
    a.recover(None).await.unwrap();
    a.write(vec![inc("x", 100), inc("y", 50), inc("x", 300)])
        .await
        .unwrap();
    a.prepare(1).await.unwrap();
    assert!(
        read_totals(&s.db, &s.totals).await.is_empty(),
        "staged, not visible"
    );

    // Another instance recovering from a checkpoint at epoch 1 applies the staged copy.
    let mut b = s.sink();
    b.recover(Some(1)).await.unwrap();
    let once: Totals = [
        ("x".to_string(), (2, 400, 200.0)),
        ("y".to_string(), (1, 50, 50.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(read_totals(&s.db, &s.totals).await, once);

    // The first instance's commit of the same epoch (a retry after a lost reply) and a
    // second recovery are no-ops.
    a.commit(1).await.unwrap();
    b.recover(Some(1)).await.unwrap();
    assert_eq!(read_totals(&s.db, &s.totals).await, once);

    // An epoch staged after the checkpoint is discarded, not applied.
    a.write(vec![inc("y", 1000)]).await.unwrap();
    a.prepare(2).await.unwrap();
    b.recover(Some(1)).await.unwrap();
    a.commit(2).await.unwrap();
    assert_eq!(read_totals(&s.db, &s.totals).await, once);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_sink_is_exactly_once_when_the_run_is_dropped_mid_way() {
    let s = counter_setup(80).await;
    let p = Pipeline::new(
        "totals",
        StallAfter {
            inner: s.source(),
            batches: 5,
        },
        transform::identity::<Order>().map(increment),
        s.sink(),
    )
    .with_checkpoint_store(s.store());
    cut_off(CounterSetup::stream().run(p)).await;
    // 25 records read, 20 of them checkpointed and applied; 5 in memory, lost.
    let partial: i64 = read_totals(&s.db, &s.totals)
        .await
        .values()
        .map(|t| t.0)
        .sum();
    assert_eq!(partial, 20);

    let report = s.finish().await;
    assert_eq!(report.resumed_from_epoch, Some(2));
    assert_eq!(read_totals(&s.db, &s.totals).await, expected_totals(80));
}

// ---------------------------------------------------------------------------------
// Transactional sink
// ---------------------------------------------------------------------------------

struct TxSetup {
    db: tokio_postgres::Client,
    orders: String,
    out: String,
    cks: String,
    _tables: Tables,
}

async fn tx_setup(n: i64) -> TxSetup {
    let db = admin().await;
    let (orders, out, cks) = (unique("orders"), unique("out"), unique("ck"));
    let tables = Tables::new(&[&orders, &out, &cks]);
    seed_orders(&db, &orders, n).await;
    // No key: a duplicate would show as a second row.
    db.batch_execute(&format!(
        "CREATE TABLE {out} (id bigint NOT NULL, amount_cents bigint NOT NULL)"
    ))
    .await
    .unwrap();
    TxSetup {
        db,
        orders,
        out,
        cks,
        _tables: tables,
    }
}

impl TxSetup {
    fn pair(
        &self,
    ) -> (
        PgTransactionalSink<Order>,
        batchstream::connectors::postgres::PgTransactionalStore,
    ) {
        let table = PgTable::new(&self.out, ["id", "amount_cents"], |o: &Order| {
            (o.id, o.amount_cents)
        });
        PgTransactionalSink::with_checkpoint_table(PgClient::new(SERVER).unwrap(), table, &self.cks)
            .unwrap()
    }
    fn pipeline<K: Sink<Item = Order> + 'static>(
        &self,
        sink: K,
        store: batchstream::connectors::postgres::PgTransactionalStore,
    ) -> Pipeline<PgSource<Order>, impl batchstream::Transform<In = Order, Out = Order>, K> {
        Pipeline::new(
            "tx",
            order_source(PgClient::new(SERVER).unwrap(), &self.orders),
            transform::identity(),
            sink,
        )
        .with_checkpoint_store(store)
    }
    async fn rows(&self) -> Vec<(i64, i64)> {
        self.db
            .query(
                &format!("SELECT id, amount_cents FROM {} ORDER BY id", self.out),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

fn want_rows(n: i64) -> Vec<(i64, i64)> {
    (1..=n).map(|id| (id, id * 100)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_sink_writes_rows_with_the_checkpoint_exactly_once() {
    let s = tx_setup(60).await;
    let (sink, store) = s.pair();
    assert_eq!(sink.guarantee(), DeliveryGuarantee::Transactional);
    // First run dies on write 8 (records 29..32): rows since the checkpoint at 20
    // were never written, because they travel with the next checkpoint.
    let p = s.pipeline(Crash::on_write(sink, 8), store);
    let err = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(10)
        .run(p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected crash"), "{err}");
    let (_, store) = s.pair();
    let ck = store.load("tx").await.unwrap().unwrap();
    let pos: KeysetPosition<i64> = serde_json::from_value(ck.source_position.unwrap()).unwrap();
    assert_eq!(s.rows().await, want_rows(pos.rows_read as i64));

    // Restart, then a run cut off mid-way, then the rest: every row once.
    let (sink, store) = s.pair();
    let p = Pipeline::new(
        "tx",
        StallAfter {
            inner: order_source(PgClient::new(SERVER).unwrap(), &s.orders),
            batches: 3,
        },
        transform::identity(),
        sink,
    )
    .with_checkpoint_store(store);
    cut_off(
        StreamExecutor::new()
            .max_batch(4)
            .checkpoint_every_records(8)
            .run(p),
    )
    .await;
    let (sink, store) = s.pair();
    let report = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(10)
        .run(s.pipeline(sink, store))
        .await
        .unwrap();
    assert!(report.resumed_from_epoch.is_some());
    assert_eq!(s.rows().await, want_rows(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_store_does_not_write_an_epoch_twice() {
    let s = tx_setup(0).await;
    let (mut sink, store) = s.pair();
    let rows: Vec<Order> = (1..=5).map(expected_order).collect();
    let mut ck = Checkpoint::new("tx");
    ck.epoch = 1;
    sink.write(rows.clone()).await.unwrap();
    store.save(&ck).await.unwrap();
    sink.commit(1).await.unwrap();
    // The same save again, as when a COMMIT's reply was lost and the save retried.
    sink.write(rows.clone()).await.unwrap();
    store.save(&ck).await.unwrap();
    sink.commit(1).await.unwrap();
    assert_eq!(s.rows().await, want_rows(5));
    assert_eq!(store.load("tx").await.unwrap().unwrap().epoch, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_sink_without_its_store_fails_instead_of_dropping_rows() {
    let s = tx_setup(10).await;
    let (sink, _store) = s.pair();
    let p = Pipeline::new(
        "tx-alone",
        order_source(PgClient::new(SERVER).unwrap(), &s.orders),
        transform::identity(),
        sink,
    );
    let err = BatchExecutor::new().run(p).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("PgTransactionalStore"), "{err}");
}

// ---------------------------------------------------------------------------------
// Checkpoint store
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_store_round_trips_and_reports_damaged_rows() {
    let db = admin().await;
    let cks = unique("ck");
    let _t = Tables::new(&[&cks]);
    let store = PgCheckpointStore::new(client("bs_ck_test").await)
        .with_table(&cks)
        .unwrap();
    assert_eq!(store.load("a").await.unwrap(), None);
    let mut a = Checkpoint::new("a");
    a.epoch = 4;
    a.source_position = Some(serde_json::json!({"last_key": 40, "rows_read": 40}));
    a.transform_state = serde_json::json!({"sum": 123});
    a.completed_runs.insert("2024-05-01".into());
    store.save(&a).await.unwrap();
    let mut b = Checkpoint::new("b");
    b.epoch = 9;
    store.save(&b).await.unwrap();
    a.epoch = 5;
    store.save(&a).await.unwrap();
    assert_eq!(store.load("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.load("b").await.unwrap(), Some(b.clone()));
    assert_eq!(count(&db, &format!("SELECT count(*) FROM {cks}")).await, 2);

    db.batch_execute(&format!(
        "UPDATE {cks} SET body = '{{\"garbage\": true}}' WHERE pipeline_id = 'a';
         UPDATE {cks} SET epoch = 10 WHERE pipeline_id = 'b';"
    ))
    .await
    .unwrap();
    let err = store.load("a").await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("pipeline `a`"), "{err}");
    let err = store.load("b").await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("epoch column"), "{err}");
    // A pipeline refuses to start from a damaged checkpoint.
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "a",
        IterSource::new(0..3),
        transform::identity::<i32>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let err = StreamExecutor::new().run(p).await.unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint(CheckpointError::Corrupt { .. })),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// Connection loss
// ---------------------------------------------------------------------------------
//
// A connection that dies while idle is noticed by the client and silently replaced on
// the next call. To test the error path deterministically, the tests kill a backend
// *during* a statement: another session holds a lock on the table the statement
// needs, the test waits until the server shows the backend waiting for that lock,
// terminates it with `pg_terminate_backend`, then releases the lock.
// ---------------------------------------------------------------------------------

/// Terminates every backend of `apps` and waits until the server no longer lists them;
/// returns how many it terminated.
async fn terminate(db: &tokio_postgres::Client, apps: &[String]) -> i64 {
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ANY($1)",
            &[&apps],
        )
        .await
        .unwrap()
        .len() as i64;
    for _ in 0..1000 {
        let left = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY($1)",
                &[&apps],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if left == 0 {
            return killed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backends of {apps:?} still listed after pg_terminate_backend");
}

/// A session holding an exclusive lock on `table` until `ROLLBACK`.
async fn lock_table(table: &str) -> tokio_postgres::Client {
    let c = admin().await;
    c.batch_execute(&format!(
        "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .unwrap();
    c
}

/// Waits until the backend of `app` waits for a lock (its statement is in flight),
/// then terminates it; returns how many backends it terminated.
async fn kill_when_blocked(db: &tokio_postgres::Client, app: &str) -> i64 {
    for _ in 0..2000 {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return terminate(db, &[app.to_string()]).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no statement of `{app}` ever waited for the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_mid_statement_is_a_retryable_error_naming_the_server() {
    let db = admin().await;
    let orders = unique("orders");
    let _t = Tables::new(&[&orders]);
    seed_orders(&db, &orders, 10).await;
    let app = unique("app_lost");
    let mut src = PgSource::table(client(&app).await, &orders, "id", decode_order).unwrap();
    assert_eq!(src.next_batch(4).await.unwrap().unwrap().records.len(), 4);

    let lock = lock_table(&orders).await;
    let killer = async {
        let n = kill_when_blocked(&db, &app).await;
        lock.batch_execute("ROLLBACK").await.unwrap();
        n
    };
    let (read, killed) = tokio::join!(src.next_batch(4), killer);
    assert_eq!(killed, 1);
    let err = read.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains("PostgreSQL at 127.0.0.1:5432"), "{text}");
    assert!(
        text.contains(&format!("reading {orders} after id = 4")),
        "{text}"
    );

    // The next call reconnects and continues after the last key read.
    let ids: Vec<i64> = src
        .next_batch(100)
        .await
        .unwrap()
        .unwrap()
        .records
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, (5..=10).collect::<Vec<_>>());
}

/// Before reading batch number `at` (1-based), locks the tables of the source, the
/// sink and the store, and starts a task that kills each component's connection in
/// the middle of its next statement (the source's read, the store's save, the sink's
/// commit), releasing each lock afterwards.
struct KillMidStatement<S> {
    inner: S,
    at: usize,
    reads: usize,
    /// (application name, table it will block on), in the order they will block.
    victims: Vec<(String, String)>,
    killed: Arc<std::sync::Mutex<Vec<(String, i64)>>>,
}

impl<S: Source> Source for KillMidStatement<S> {
    type Item = S::Item;
    type Position = S::Position;
    fn boundedness(&self) -> batchstream::Boundedness {
        self.inner.boundedness()
    }
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<SourceBatch<S::Item, S::Position>>> {
        self.reads += 1;
        if self.reads == self.at {
            let mut locks = Vec::new();
            for (app, table) in &self.victims {
                locks.push((app.clone(), lock_table(table).await));
            }
            let killed = Arc::clone(&self.killed);
            tokio::spawn(async move {
                let db = admin().await;
                for (app, lock) in locks {
                    let n = kill_when_blocked(&db, &app).await;
                    killed.lock().unwrap().push((app, n));
                    lock.batch_execute("ROLLBACK").await.unwrap();
                }
            });
        }
        self.inner.next_batch(max).await
    }
    async fn seek(&mut self, p: S::Position) -> Result<()> {
        self.inner.seek(p).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_run_are_retried_and_the_totals_are_exact() {
    let s = counter_setup(100).await;
    let (src_app, sink_app, store_app) =
        (unique("app_src"), unique("app_sink"), unique("app_store"));
    let killed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let policy = RetryPolicy::new()
        .max_attempts(6)
        .initial_backoff(Duration::from_millis(20))
        .jitter(false);
    let source = PgSource::table(client(&src_app).await, &s.orders, "id", decode_order).unwrap();
    let sink =
        counter_sink(client(&sink_app).await, "totals", &s.totals, &s.epochs).with_retry(policy);
    let store = PgCheckpointStore::new(client(&store_app).await)
        .with_table(&s.cks)
        .unwrap();
    let p = Pipeline::new(
        "totals",
        KillMidStatement {
            inner: source,
            at: 5,
            reads: 0,
            // In checkpoint order: the read blocks first, then the save, then the
            // sink's commit into the totals table.
            victims: vec![
                (src_app.clone(), s.orders.clone()),
                (store_app.clone(), s.cks.clone()),
                (sink_app.clone(), s.totals.clone()),
            ],
            killed: Arc::clone(&killed),
        },
        transform::identity::<Order>().map(increment),
        sink,
    )
    .with_checkpoint_store(store)
    .with_retry(policy);
    let report = CounterSetup::stream().run(p).await.unwrap();

    assert_eq!(
        *killed.lock().unwrap(),
        vec![(src_app, 1), (store_app, 1), (sink_app, 1)]
    );
    // The source read and the checkpoint save were retried by the pipeline (the
    // sink's commit by its own policy).
    assert!(report.metrics.retries >= 2, "{report}");
    assert_eq!(report.records_read, 100);
    assert_eq!(read_totals(&s.db, &s.totals).await, expected_totals(100));
}
