//! Windowed sales: 5-minute event-time windows by product, in update mode.
//!
//! The bundled orders are replayed as a live stream whose arrival order is
//! shuffled (each order arrives up to ~20 orders away from its place). A
//! micro-batch job with a 200 ms processing-time trigger sums revenue per product
//! and 5-minute window and prints, at every trigger, the windows that changed
//! ("update" output mode). Then the same job runs under the batch executor over
//! the file in order. Because the watermark allows for the disorder, the final
//! windows must be the same: the last line says whether they are.
//!
//! Run it with: `cargo run --example windowed_sales`

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchstream::adapters::file::NdjsonSource;
use batchstream::adapters::{ChannelSource, CollectSink, UpsertSink};
use batchstream::event_time::EventTime;
use batchstream::transform::{self, Transform, TransformExt};
use batchstream::window::{OutputMode, Sum, Window, WindowResult, Windows};
use batchstream::{BatchExecutor, MicroBatchExecutor, Pipeline, Result, Sink, Source, Trigger};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    ts: DateTime<Utc>,
    product: String,
    amount_cents: i64,
}

/// How far out of order an order may arrive, in event time (the shuffle below stays
/// well inside it).
const MAX_DISORDER: TimeDelta = TimeDelta::minutes(30);

/// The job: revenue per product and 5-minute window. Written once.
fn windowed_revenue() -> impl Transform<In = Order, Out = WindowResult<String, i64>> + Send {
    transform::identity::<Order>()
        .key_by(|o: &Order| o.product.clone())
        .window(Windows::tumbling(TimeDelta::minutes(5)), |o: &Order| o.ts)
        .output_mode(OutputMode::Update)
        .aggregate(Sum::of(|o: &Order| o.amount_cents))
}

fn event_time() -> EventTime<Order> {
    EventTime::new(|o: &Order| o.ts).bounded_out_of_orderness(MAX_DISORDER)
}

type Table = BTreeMap<(String, Window), i64>;

/// A sink that prints each micro-batch's updated rows when the micro-batch commits,
/// and keeps the latest value per (product, window).
#[derive(Clone, Default)]
struct PrintUpdates {
    table: Arc<Mutex<Table>>,
    pending: Vec<WindowResult<String, i64>>,
}

impl Sink for PrintUpdates {
    type Item = WindowResult<String, i64>;
    async fn write(&mut self, rows: Vec<WindowResult<String, i64>>) -> Result<()> {
        self.pending.extend(rows);
        Ok(())
    }

    async fn commit(&mut self, micro_batch: u64) -> Result<()> {
        let rows = std::mem::take(&mut self.pending);
        println!(
            "micro-batch {micro_batch:>2}: {:>3} updated rows",
            rows.len()
        );
        for r in rows.iter().take(3) {
            println!(
                "    {:<9} {} .. {}  {:>10.2}",
                r.key,
                r.window.start.format("%m-%d %H:%M"),
                r.window.end.format("%H:%M"),
                r.value as f64 / 100.0
            );
        }
        if rows.len() > 3 {
            println!("    ... and {} more", rows.len() - 3);
        }
        let mut table = self.table.lock().unwrap();
        for r in rows {
            table.insert((r.key, r.window), r.value);
        }
        Ok(())
    }
}

/// Reads the orders file (good lines only) into memory.
async fn load_orders(path: &Path) -> Result<Vec<Order>> {
    let mut source = NdjsonSource::<Order>::open(path)?;
    let mut orders = Vec::new();
    while let Some(batch) = source.next_batch(1024).await? {
        orders.extend(batch.records);
    }
    Ok(orders)
}

/// Shuffles arrival order deterministically: within each day, every block of 20
/// orders is reversed and rotated, so an order arrives at most ~20 places (under 20
/// minutes of event time) from where it belongs.
fn shuffle(orders: Vec<Order>) -> Vec<Order> {
    let mut by_day: BTreeMap<chrono::NaiveDate, Vec<Order>> = BTreeMap::new();
    for o in orders {
        by_day.entry(o.ts.date_naive()).or_default().push(o);
    }
    let mut out = Vec::new();
    for (_, mut day) in by_day {
        for (i, block) in day.chunks_mut(20).enumerate() {
            block.reverse();
            block.rotate_left(i % block.len());
        }
        out.extend(day);
    }
    out
}

#[tokio::main]
async fn main() -> std::result::Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/orders.ndjson");
    let orders = load_orders(&path).await?;
    let arrivals = shuffle(orders.clone());

    // Streaming side: a feeder replays the orders over ~2 s into a channel.
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let feeder = tokio::spawn(async move {
        for chunk in arrivals.chunks(40) {
            for o in chunk {
                if tx.send(o.clone()).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let printer = PrintUpdates::default();
    let (late_sink, late) = CollectSink::new();
    let p = Pipeline::new(
        "windowed-sales-stream",
        ChannelSource::new(rx),
        windowed_revenue(),
        printer.clone(),
    )
    .with_event_time(event_time())
    .with_late_sink(late_sink);
    println!("== micro-batch, processing-time trigger every 200 ms, update mode");
    let report = MicroBatchExecutor::new(Trigger::ProcessingTime(Duration::from_millis(200)))
        .run(p)
        .await?;
    feeder.await?;
    println!("   {report}");
    let streamed = printer.table.lock().unwrap().clone();

    // Batch side: the same job over the file, in order.
    let (sink, table) = UpsertSink::new();
    let p = Pipeline::new(
        "windowed-sales-batch",
        NdjsonSource::<Order>::open(&path)?,
        windowed_revenue().map(|r| ((r.key, r.window), r.value)),
        sink,
    )
    .with_event_time(event_time())
    .with_dead_letter_sink(CollectSink::new().0);
    let report = BatchExecutor::new().run(p).await?;
    println!("== batch over the file\n   {report}");
    let batch: Table = table.snapshot();

    println!(
        "final windows: {} streamed, {} batch; late orders in the stream: {}",
        streamed.len(),
        batch.len(),
        late.len()
    );
    if streamed == batch && late.is_empty() {
        println!("final windows agree: yes");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("final windows agree: NO");
        Ok(ExitCode::FAILURE)
    }
}
