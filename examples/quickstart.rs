//! Quickstart: the daily sales report, written once, run three ways.
//!
//! The logic (parse orders, reject invalid ones, count orders and sum revenue per
//! day) is one `Pipeline`. We run it under the batch, stream and micro-batch
//! executors over the same file and check that all three agree. Malformed lines
//! go to a dead-letter sink with their file, line and byte offset, so nothing is
//! lost silently.
//!
//! Run it with: `cargo run --example quickstart`

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use batchstream::adapters::file::NdjsonSource;
use batchstream::adapters::{CollectSink, Collected, UpsertSink, UpsertTable};
use batchstream::checkpoint::FileCheckpointStore;
use batchstream::transform::{self, Transform, TransformExt};
use batchstream::{
    BatchExecutor, DeadLetter, MicroBatchExecutor, Pipeline, RunReport, StreamExecutor, Trigger,
};
use serde::{Deserialize, Serialize};

/// One order, as stored in `examples/data/orders.ndjson`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    day: String,
    customer: String,
    product: String,
    amount_cents: i64,
}

/// The result per day: order count and revenue in cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct DayTotals {
    orders: u64,
    revenue_cents: i64,
}

/// The business logic, independent of any executor.
fn daily_sales() -> impl Transform<In = Order, Out = (String, DayTotals)> + Send {
    transform::identity::<Order>()
        .try_map("validate", |o: &Order| {
            if o.amount_cents > 0 {
                Ok(o.clone())
            } else {
                Err(format!("order {} has a non-positive amount", o.order_id))
            }
        })
        .key_by(|o: &Order| o.day.clone())
        .fold(DayTotals::default(), |t, o| {
            t.orders += 1;
            t.revenue_cents += o.amount_cents;
        })
}

type Report = (
    RunReport,
    UpsertTable<String, DayTotals>,
    Collected<DeadLetter>,
);

/// A pipeline over the orders file, with handles to its results and dead letters.
type Built<T> = (
    Pipeline<NdjsonSource<Order>, T, UpsertSink<String, DayTotals>>,
    UpsertTable<String, DayTotals>,
    Collected<DeadLetter>,
);

/// Builds the pipeline: the same function feeds every executor.
fn pipeline(
    id: &str,
    data: &Path,
    store: &FileCheckpointStore,
) -> batchstream::Result<Built<impl Transform<In = Order, Out = (String, DayTotals)> + Send>> {
    let (sink, table) = UpsertSink::new();
    let (dead_letters, letters) = CollectSink::new();
    let p = Pipeline::new(id, NdjsonSource::open(data)?, daily_sales(), sink)
        .with_checkpoint_store(store.clone())
        .with_dead_letter_sink(dead_letters);
    Ok((p, table, letters))
}

fn print_table(title: &str, report: &RunReport, table: &BTreeMap<String, DayTotals>) {
    println!("== {title}");
    println!("   {report}");
    for (day, t) in table {
        println!(
            "   {day}  {:>5} orders  {:>12.2} revenue",
            t.orders,
            t.revenue_cents as f64 / 100.0
        );
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/orders.ndjson");
    let state_dir =
        std::env::temp_dir().join(format!("batchstream-quickstart-{}", std::process::id()));
    let store = FileCheckpointStore::new(&state_dir)?;

    // 1. Batch: the whole file as one run keyed by its date range, results at the end.
    let (p, table, letters) = pipeline("daily-sales-batch", &data, &store)?;
    let batch = BatchExecutor::new().run_key("2024-05-01..2024-05-05");
    let report = batch.run(p).await?;
    let batch_result: Report = (report, table, letters);

    // A second run of the same range is skipped: it is already complete.
    let (p, _, _) = pipeline("daily-sales-batch", &data, &store)?;
    let again = batch.run(p).await?;

    // 2. Stream: records flow to the sink batch by batch, checkpointing as they go.
    let (p, table, letters) = pipeline("daily-sales-stream", &data, &store)?;
    let report = StreamExecutor::new()
        .max_batch(256)
        .checkpoint_every_records(1000)
        .run(p)
        .await?;
    let stream_result: Report = (report, table, letters);

    // 3. Micro-batch: micro-batches of 500 records, one checkpoint each.
    let (p, table, letters) = pipeline("daily-sales-micro", &data, &store)?;
    let report = MicroBatchExecutor::new(Trigger::AvailableNow)
        .max_records_per_batch(500)
        .run(p)
        .await?;
    let micro_result: Report = (report, table, letters);

    let mut tables = Vec::new();
    for (title, (report, table, _)) in [
        ("batch", &batch_result),
        ("stream", &stream_result),
        ("micro-batch", &micro_result),
    ] {
        let t = table.snapshot();
        print_table(title, report, &t);
        tables.push(t);
    }
    println!("== batch run metrics\n   {}", batch_result.0.metrics);
    println!("== second batch run of the same range\n   {again}");

    println!("== dead letters (batch run)");
    for l in batch_result.2.items() {
        let what = l
            .raw
            .clone()
            .or_else(|| l.record.as_ref().map(|r| r.to_string()));
        println!("   {}", l.error);
        println!("      input: {}", what.unwrap_or_default());
        if l.error.location.is_empty() {
            if let Some(pos) = &l.position {
                println!("      source position after its batch: {pos}");
            }
        }
    }
    let letters_agree = [&stream_result.2, &micro_result.2]
        .iter()
        .all(|c| c.len() == batch_result.2.len());

    let _ = std::fs::remove_dir_all(&state_dir);
    let agree = tables.windows(2).all(|w| w[0] == w[1]) && letters_agree && again.is_skipped();
    if agree {
        println!("all three executors agree: yes");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("all three executors agree: NO");
        Ok(ExitCode::FAILURE)
    }
}
