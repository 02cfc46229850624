//! # Streaming fraud detection
//!
//! What this example shows:
//!
//! - **A live stream.** A generator task sends card transactions into a tokio
//!   channel at a steady pace (about 3 000 transactions over 1.5 s). The pipeline
//!   reads them with [`ChannelSource`], so records flow as soon as they arrive.
//! - **Stateful logic in a custom [`Transform`].** Two rules flag a transaction:
//!   1. its amount is above a threshold, or
//!   2. its card was used in two different countries within the card's last
//!      `WINDOW` transactions.
//!
//!   Rule 2 needs memory per card (its recent countries). That state lives in the
//!   transform and is saved in checkpoints through `snapshot`/`restore` (JSON via
//!   serde), so a restarted pipeline would remember every card's recent history.
//!   The transform is plain synchronous code: the `tests` module at the bottom
//!   checks it with an ordinary `#[test]`, no runtime needed.
//! - **A custom [`Sink`].** It prints each flagged transaction with its *detection
//!   latency*: the time from the generator sending the transaction to the sink
//!   receiving the alert.
//! - **The stream executor.** [`StreamExecutor::run`] runs until the source ends.
//!   The generator drops its sender when it is done, the channel closes, the stream
//!   ends, and the run returns a [`RunReport`](batchstream::RunReport).
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example fraud
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchstream::adapters::ChannelSource;
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::transform::Emit;
use batchstream::{Error, Pipeline, Result, Sink, StreamExecutor, Transform};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Transactions the generator sends in total.
const TRANSACTIONS: u64 = 3_000;
/// Transactions sent per 1 ms tick: 3 000 transactions take about 1.5 s.
const PER_TICK: u64 = 2;
/// Rule 1: amounts above this are flagged ($3 000.00).
const AMOUNT_THRESHOLD_CENTS: u64 = 300_000;
/// Rule 2: how many of a card's most recent transactions are compared.
const WINDOW: usize = 5;
/// How many flagged transactions the sink prints before it only counts them.
const PRINT_LIMIT: usize = 20;

// ---------------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------------

/// A merchant country. `Serialize`/`Deserialize` because the per-card state (which
/// holds countries) goes into checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Country {
    US,
    GB,
    DE,
    FR,
    BR,
    JP,
    NG,
    IN,
}

const COUNTRIES: [Country; 8] = [
    Country::US,
    Country::GB,
    Country::DE,
    Country::FR,
    Country::BR,
    Country::JP,
    Country::NG,
    Country::IN,
];

/// One card transaction. `sent_at` is stamped by the generator just before it sends
/// the transaction, so the sink can measure how long detection took.
#[derive(Debug, Clone)]
struct Transaction {
    id: u64,
    card: u32,
    amount_cents: u64,
    merchant_country: Country,
    sent_at: Instant,
}

/// Why a transaction was flagged.
#[derive(Debug, Clone, PartialEq)]
enum Reason {
    /// Rule 1: the amount is above [`AMOUNT_THRESHOLD_CENTS`].
    LargeAmount,
    /// Rule 2: within the card's last [`WINDOW`] transactions it was also used in
    /// this other country.
    TwoCountries { other: Country },
}

/// What the transform emits: the transaction and every rule it broke.
#[derive(Debug, Clone)]
struct Alert {
    tx: Transaction,
    reasons: Vec<Reason>,
}

// ---------------------------------------------------------------------------------
// The logic: a custom, stateful transform
// ---------------------------------------------------------------------------------

/// The fraud rules. Its only state is each card's most recent countries.
#[derive(Debug, Default)]
struct FraudRules {
    recent: HashMap<u32, VecDeque<Country>>,
}

impl Transform for FraudRules {
    type In = Transaction;
    type Out = Alert;

    fn process<E: Emit<Alert>>(&mut self, tx: Transaction, out: &mut E) {
        let mut reasons = Vec::new();
        if tx.amount_cents > AMOUNT_THRESHOLD_CENTS {
            reasons.push(Reason::LargeAmount);
        }

        // Compare with the card's previous WINDOW - 1 transactions, then remember
        // this one (dropping the oldest), so the window holds the last WINDOW.
        let recent = self.recent.entry(tx.card).or_default();
        if let Some(&other) = recent.iter().find(|&&c| c != tx.merchant_country) {
            reasons.push(Reason::TwoCountries { other });
        }
        if recent.len() == WINDOW - 1 {
            recent.pop_front();
        }
        recent.push_back(tx.merchant_country);

        if !reasons.is_empty() {
            out.emit(Alert { tx, reasons });
        }
    }

    // Stateless transforms keep the default `snapshot`/`restore` (no state). This one
    // has state, so it encodes it as JSON for the checkpoint...
    fn snapshot(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&self.recent).map_err(|e| Error::State {
            stage: "fraud-rules".into(),
            action: "snapshotted",
            message: e.to_string(),
        })
    }

    // ...and decodes it when the executor resumes from a checkpoint. `null` means
    // "no checkpoint yet": start empty.
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        self.recent = if state.is_null() {
            HashMap::new()
        } else {
            serde_json::from_value(state).map_err(|e| Error::State {
                stage: "fraud-rules".into(),
                action: "restored",
                message: e.to_string(),
            })?
        };
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The output: a custom sink that prints alerts and records latencies
// ---------------------------------------------------------------------------------

/// Prints the first [`PRINT_LIMIT`] alerts and records every alert's detection
/// latency in a shared Vec, which `main` reads after the run.
struct AlertPrinter {
    printed: usize,
    latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Sink for AlertPrinter {
    type Item = Alert;

    async fn write(&mut self, batch: Vec<Alert>) -> Result<()> {
        // Measure first, print after: printing is slow and must not count as latency.
        let latencies: Vec<Duration> = batch.iter().map(|a| a.tx.sent_at.elapsed()).collect();
        for (alert, latency) in batch.iter().zip(&latencies) {
            if self.printed < PRINT_LIMIT {
                self.printed += 1;
                println!("{}", describe(alert, *latency));
            }
        }
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(latencies);
        Ok(())
    }
}

fn describe(alert: &Alert, latency: Duration) -> String {
    let tx = &alert.tx;
    let reasons: Vec<String> = alert
        .reasons
        .iter()
        .map(|r| match r {
            Reason::LargeAmount => "large amount".to_string(),
            Reason::TwoCountries { other } => format!("also used in {other:?}"),
        })
        .collect();
    format!(
        "FLAG tx {:>4}  card {:>3}  ${:>5}.{:02} in {:?}  [{}]  detected in {:?}",
        tx.id,
        tx.card,
        tx.amount_cents / 100,
        tx.amount_cents % 100,
        tx.merchant_country,
        reasons.join(", "),
        latency,
    )
}

// ---------------------------------------------------------------------------------
// The input: a deterministic, paced generator
// ---------------------------------------------------------------------------------

/// xorshift64*: a tiny deterministic PRNG, so every run sends the same transactions.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Makes transaction `id`: 400 cards, each at home in one country. About 1 in 100
/// transactions happens abroad, and about 1 in 200 is a large purchase.
fn make_transaction(rng: &mut Rng, id: u64) -> Transaction {
    let card = rng.below(400) as u32;
    let home = COUNTRIES[card as usize % COUNTRIES.len()];
    let merchant_country = if rng.below(100) == 0 {
        COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize]
    } else {
        home
    };
    let amount_cents = if rng.below(200) == 0 {
        300_000 + rng.below(700_000) // $3 000 – $10 000
    } else {
        100 + rng.below(20_000) // $1 – $200
    };
    Transaction {
        id,
        card,
        amount_cents,
        merchant_country,
        sent_at: Instant::now(), // restamped right before sending
    }
}

/// Sends [`TRANSACTIONS`] transactions, [`PER_TICK`] per millisecond, then returns,
/// which drops `tx`: the channel closes and the stream ends.
async fn generate(tx: mpsc::Sender<Transaction>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut id = 0;
    while id < TRANSACTIONS {
        ticker.tick().await;
        for _ in 0..PER_TICK.min(TRANSACTIONS - id) {
            let mut t = make_transaction(&mut rng, id);
            t.sent_at = Instant::now();
            if tx.send(t).await.is_err() {
                return; // the pipeline stopped early
            }
            id += 1;
        }
    }
}

// ---------------------------------------------------------------------------------
// Wiring it together
// ---------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let (tx, rx) = mpsc::channel(1024);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let sink = AlertPrinter {
        printed: 0,
        latencies: Arc::clone(&latencies),
    };
    // A checkpoint store makes the executor call `FraudRules::snapshot`; an
    // in-memory one is enough here (use `FileCheckpointStore` to survive restarts).
    let store = MemoryCheckpointStore::new();
    let pipeline = Pipeline::new("fraud", ChannelSource::new(rx), FraudRules::default(), sink)
        .with_checkpoint_store(store.clone());

    let started = Instant::now();
    // `run` borrows the executor, so the executor must live inside the spawned task.
    let run = tokio::spawn(async move { StreamExecutor::new().run(pipeline).await });
    let generator = tokio::spawn(generate(tx));

    generator.await.expect("generator task panicked");
    let report = run.await.expect("pipeline task panicked")?;
    let elapsed = started.elapsed();

    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort();
    let flagged = latencies.len();
    if flagged > PRINT_LIMIT {
        println!("... and {} more flagged", flagged - PRINT_LIMIT);
    }

    println!();
    println!("{report}");
    println!(
        "transactions seen: {}   flagged: {}   elapsed: {:.2?}",
        report.records_read, flagged, elapsed
    );
    if flagged > 0 {
        let pct = |p: usize| latencies[(flagged - 1) * p / 100];
        println!(
            "detection latency: p50 {:?}   p99 {:?}   max {:?}",
            pct(50),
            pct(99),
            latencies[flagged - 1]
        );
    }
    if let Some(ck) = store.get("fraud") {
        let cards = ck.transform_state.as_object().map_or(0, |m| m.len());
        println!(
            "last checkpoint: epoch {}, position {}, recent countries of {} cards",
            ck.epoch,
            ck.source_position.unwrap_or_default(),
            cards
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchstream::testing::run_transform;

    fn tx(id: u64, card: u32, amount_cents: u64, merchant_country: Country) -> Transaction {
        Transaction {
            id,
            card,
            amount_cents,
            merchant_country,
            sent_at: Instant::now(),
        }
    }

    #[test]
    fn flags_large_amounts_and_a_second_country_within_the_window() {
        let input = vec![
            tx(0, 1, 500, Country::US),
            tx(1, 1, 900_000, Country::US), // large amount
            tx(2, 2, 500, Country::FR),
            tx(3, 1, 500, Country::BR), // card 1 also used in US
            tx(4, 2, 500, Country::FR),
        ];
        let out = run_transform(FraudRules::default(), input).records;
        let got: Vec<(u64, Vec<Reason>)> = out.into_iter().map(|a| (a.tx.id, a.reasons)).collect();
        assert_eq!(
            got,
            vec![
                (1, vec![Reason::LargeAmount]),
                (3, vec![Reason::TwoCountries { other: Country::US }]),
            ]
        );
    }

    #[test]
    fn a_country_older_than_the_window_is_forgotten() {
        let mut input = vec![tx(0, 7, 500, Country::JP)];
        input.extend((1..WINDOW as u64).map(|i| tx(i, 7, 500, Country::DE)));
        input.push(tx(99, 7, 500, Country::DE));
        let out = run_transform(FraudRules::default(), input).records;
        let ids: Vec<u64> = out.iter().map(|a| a.tx.id).collect();
        // Transactions 1 to WINDOW - 1 still have JP in their window; 99 no longer does.
        assert_eq!(ids, (1..WINDOW as u64).collect::<Vec<_>>());
    }

    #[test]
    fn snapshot_and_restore_keep_the_card_history() {
        let mut a = FraudRules::default();
        let mut out = batchstream::transform::VecEmitter::new();
        a.process(tx(0, 3, 500, Country::GB), &mut out);
        let snap = a.snapshot().unwrap();

        let mut b = FraudRules::default();
        b.restore(snap).unwrap();
        b.process(tx(1, 3, 500, Country::NG), &mut out);
        assert_eq!(out.records.len(), 1, "the restored state remembers GB");
        assert!(b.restore(serde_json::json!("garbage")).is_err());
    }
}
