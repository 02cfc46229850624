//! Choosing a processing model: the rule-based advisor on two classic cases, then
//! measurements of a real pipeline under each executor.
//!
//! 1. Fraud detection (seconds, unbounded, exactly-once, out of order) and the daily
//!    sales report (a day, bounded, reprocessing) through the rules.
//! 2. The daily-sales pipeline over `examples/data/orders.ndjson`, run under batch,
//!    micro-batch and stream for a revenue dashboard that must be at most a minute
//!    behind, with micro-batches at most once a minute. The measurements refine the
//!    rules' answer, and a report is written as an SVG next to the build output.
//!
//! Run it with: `cargo run --example choose_model`

use std::path::{Path, PathBuf};
use std::time::Duration;

use batchstream::Pipeline;
use batchstream::adapters::file::NdjsonSource;
use batchstream::adapters::{CollectSink, UpsertSink};
use batchstream::advisor::{Complexity, EmpiricalAdvisor, Requirements};
use batchstream::testing::Modes;
use batchstream::transform::{self, TransformExt};
use batchstream::{BatchExecutor, MicroBatchExecutor, StreamExecutor, Trigger};
use serde::{Deserialize, Serialize};

/// One order, as stored in `examples/data/orders.ndjson`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    day: String,
    amount_cents: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // 1. The rules.
    let fraud = Requirements::new()
        .max_latency(Duration::from_secs(2))
        .unbounded()
        .exactly_once(true)
        .out_of_order(true);
    println!("== fraud detection: {fraud}\n{}", fraud.advise()?);

    let daily_report = Requirements::new()
        .max_latency(Duration::from_secs(86_400))
        .bounded()
        .reprocessing(true);
    println!(
        "== daily sales report: {daily_report}\n{}",
        daily_report.advise()?
    );

    // 2. Measurements: the same pipeline under each executor.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/orders.ndjson");
    if !data.exists() {
        return Err(format!("sample data {} is missing", data.display()).into());
    }
    let dashboard = Requirements::new()
        .max_latency(Duration::from_secs(60))
        .unbounded()
        .complexity(Complexity::Medium);
    println!(
        "== revenue dashboard: {dashboard}\nthe rules say: {}",
        dashboard.advise()?.model
    );
    let modes = Modes {
        batch: BatchExecutor::new(),
        stream: StreamExecutor::new().max_batch(256),
        micro_batch: MicroBatchExecutor::new(Trigger::AvailableNow).max_records_per_batch(500),
    };
    let report = EmpiricalAdvisor::new(dashboard)
        .modes(modes)
        // The scheduler cannot trigger more often than once a minute.
        .micro_batch_trigger(Duration::from_secs(60))
        .run(|| {
            let (sink, _totals) = UpsertSink::new();
            let (dead_letters, _letters) = CollectSink::new();
            let logic = transform::identity::<Order>()
                .try_map("validate", |o: &Order| {
                    if o.amount_cents > 0 {
                        Ok(o.clone())
                    } else {
                        Err(format!("order {} has a non-positive amount", o.order_id))
                    }
                })
                .key_by(|o: &Order| o.day.clone())
                .fold(0i64, |revenue, o| *revenue += o.amount_cents);
            let source = NdjsonSource::open(&data).expect("the sample file exists");
            Pipeline::new("revenue-dashboard", source, logic, sink)
                .with_dead_letter_sink(dead_letters)
        })
        .await?;
    println!("\n{}", report.table());

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join("choose_model_report.svg");
    report.write_svg(&path)?;
    println!("report written to {}", path.display());
    Ok(())
}
