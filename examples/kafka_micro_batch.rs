//! A Spark-style micro-batch job: orders from Kafka, 5-minute revenue windows per
//! product in update mode, upserted into PostgreSQL.
//!
//! 1. Produces 1 200 orders `{order_id, product, amount, ts}` (two hours of event
//!    time, up to a minute out of order) to a fresh topic, through `KafkaSink` (the
//!    idempotent producer, keyed by product).
//! 2. Runs a `MicroBatchExecutor` (`Trigger::AvailableNow`: micro-batches back to back
//!    until the topic is drained, then it stops) over a `KafkaSource`: revenue per
//!    product and 5-minute tumbling window, in `OutputMode::Update`, so every
//!    micro-batch upserts the windows it changed into PostgreSQL (`PgUpsertSink`,
//!    idempotent: a replayed micro-batch overwrites its own rows). Offsets are
//!    committed to the consumer group after each micro-batch's checkpoint.
//! 3. Prints the upserted window totals, checks them against totals computed directly
//!    from the generated orders, and exits non-zero if they differ.
//!
//! Needs a Kafka-protocol broker on 127.0.0.1:19092 (`.ci/kafka-broker.sh` starts
//! tansu there; override with `KAFKA_BROKERS`) and PostgreSQL on 127.0.0.1:5432
//! (user `postgres`, database `test`, trust auth; override with `PG_PARAMS`).
//!
//! Run it with: `cargo run --example kafka_micro_batch --features kafka,postgres`

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use batchstream::adapters::IterSource;
use batchstream::checkpoint::FileCheckpointStore;
use batchstream::connectors::kafka::{KafkaSink, KafkaSource};
use batchstream::connectors::postgres::{PgClient, PgTable, PgUpsertSink};
use batchstream::event_time::EventTime;
use batchstream::transform::{self, Transform, TransformExt};
use batchstream::window::{OutputMode, Sum, WindowResult, Windows};
use batchstream::{BatchExecutor, MicroBatchExecutor, Pipeline, Trigger};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    product: String,
    /// Cents.
    amount: i64,
    ts: DateTime<Utc>,
}

const PRODUCTS: [&str; 4] = ["book", "lamp", "mug", "pen"];
const ORDERS: u64 = 1_200;
/// Orders arrive up to this far out of event-time order.
const MAX_DISORDER: TimeDelta = TimeDelta::minutes(2);

/// Deterministic orders: one every 6 s of event time, each a little out of order.
fn orders() -> Vec<Order> {
    let start = Utc.with_ymd_and_hms(2024, 5, 1, 9, 0, 0).unwrap();
    (0..ORDERS)
        .map(|i| {
            let jitter = ((i * 37) % 11) as i64 - 5; // -5..=5 orders early or late
            Order {
                order_id: i,
                product: PRODUCTS[(i * 7 % 4) as usize].to_string(),
                amount: 100 + ((i * 7919) % 4_900) as i64,
                ts: start + TimeDelta::seconds(6 * i as i64 + 6 * jitter),
            }
        })
        .collect()
}

/// The job: revenue per product and 5-minute window, re-emitted when it changes.
fn windowed_revenue() -> impl Transform<In = Order, Out = WindowResult<String, i64>> + Send {
    transform::identity::<Order>()
        .key_by(|o: &Order| o.product.clone())
        .window(Windows::tumbling(TimeDelta::minutes(5)), |o: &Order| o.ts)
        .output_mode(OutputMode::Update)
        .aggregate(Sum::of(|o: &Order| o.amount))
}

type Totals = BTreeMap<(String, DateTime<Utc>), i64>;

fn expected_totals(orders: &[Order]) -> Totals {
    let mut totals = Totals::new();
    for o in orders {
        let minute = o.ts.timestamp().div_euclid(300) * 300;
        let start = DateTime::<Utc>::from_timestamp(minute, 0).unwrap();
        *totals.entry((o.product.clone(), start)).or_default() += o.amount;
    }
    totals
}

/// One partition: the backlog is read in the order it was produced. (With several
/// partitions, the consumer reads a backlog one partition after another, and the
/// event-time watermark, which only learns of a partition from its first record,
/// would run ahead of the partitions not read yet and make their orders late.)
async fn create_topic(brokers: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| format!("Kafka at {brokers}: cannot create topic {topic}: {e}"))?;
    for r in results {
        r.map_err(|(t, e)| format!("Kafka at {brokers}: cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_string());
    let pg_params = std::env::var("PG_PARAMS")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_string());
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("orders-{run_id}");

    // 1. Produce the orders.
    create_topic(&brokers, &topic).await?;
    let orders = orders();
    let producer = KafkaSink::<Order>::json(&brokers, &topic)
        .key(|o: &Order| o.product.clone())
        .build()
        .await?;
    let produced = BatchExecutor::new()
        .run(Pipeline::new(
            "produce-orders",
            IterSource::new(orders.clone()),
            transform::identity::<Order>(),
            producer,
        ))
        .await?;
    println!(
        "produced {} orders to topic {topic}",
        produced.records_written
    );

    // 2. The output table.
    let db = PgClient::connect(&pg_params).await?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS kafka_window_revenue (
             product      text        NOT NULL,
             window_start timestamptz NOT NULL,
             window_end   timestamptz NOT NULL,
             revenue      bigint      NOT NULL,
             PRIMARY KEY (product, window_start));
         TRUNCATE kafka_window_revenue;",
    )
    .await?;
    let table = PgTable::new(
        "kafka_window_revenue",
        ["product", "window_start", "window_end", "revenue"],
        |r: &WindowResult<String, i64>| (r.key.clone(), r.window.start, r.window.end, r.value),
    )
    .key(["product", "window_start"]);
    let sink = PgUpsertSink::new(db.clone(), table)?;

    // 3. The micro-batch job.
    let state = std::env::temp_dir().join(format!("batchstream-kafka-example-{run_id}"));
    let mut source = KafkaSource::<Order>::json(&brokers, &format!("{topic}-revenue"), &[&topic])
        .connect()
        .await?;
    let assigned = source.wait_for_assignment(Duration::from_secs(30)).await?;
    println!("consumer group joined; partitions {assigned:?}");
    let pipeline = Pipeline::new("kafka-window-revenue", source, windowed_revenue(), sink)
        .with_event_time(EventTime::new(|o: &Order| o.ts).bounded_out_of_orderness(MAX_DISORDER))
        .with_checkpoint_store(FileCheckpointStore::new(&state)?);
    let report = MicroBatchExecutor::new(Trigger::AvailableNow)
        .max_records_per_batch(300)
        .idle_timeout(Duration::from_secs(2))
        .run(pipeline)
        .await?;
    println!("{report}");
    let _ = std::fs::remove_dir_all(&state);

    // 4. What PostgreSQL holds now.
    let (reader, connection) = tokio_postgres::connect(&pg_params, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = reader
        .query(
            "SELECT product, window_start, revenue FROM kafka_window_revenue
             ORDER BY window_start, product",
            &[],
        )
        .await?;
    let mut stored = Totals::new();
    println!(
        "\n{:<6} {:<17} {:>10}",
        "product", "window (UTC)", "revenue"
    );
    for (i, row) in rows.iter().enumerate() {
        let product: String = row.get(0);
        let start: DateTime<Utc> = row.get(1);
        let revenue: i64 = row.get(2);
        if i < 12 || i + 4 >= rows.len() {
            println!(
                "{product:<6} {} {:>10.2}",
                start.format("%m-%d %H:%M"),
                revenue as f64 / 100.0
            );
        } else if i == 12 {
            println!("   ... {} more rows ...", rows.len() - 16);
        }
        stored.insert((product, start), revenue);
    }
    let expected = expected_totals(&orders);
    let ok = stored == expected;
    println!(
        "\n{} windows upserted over {} micro-batches (each upserting the windows it changed); \
         {}",
        stored.len(),
        report.epochs,
        if ok {
            "they match totals computed directly from the orders"
        } else {
            "they DIFFER from totals computed directly from the orders"
        }
    );
    Ok(ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kafka_micro_batch failed: {e}");
            eprintln!(
                "(needs a Kafka broker: `.ci/kafka-broker.sh`, and PostgreSQL on 127.0.0.1:5432)"
            );
            ExitCode::FAILURE
        }
    }
}
