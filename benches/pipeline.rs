//! Throughput of batchstream's three executors against a hand-written loop.
//!
//! 1 M pre-generated records `{key (10k distinct), ts_ms (in order), amount}`:
//!
//! - **W1, stateless:** `filter(amount > 50)` → `map(amount * 1.07)` → sum.
//! - **W2, keyed:** `key_by(key)` → `fold` a (count, sum) per key → an upsert table.
//!
//! Each workload runs as a hand loop over the slice (the limit) and as one batchstream
//! pipeline under `BatchExecutor`, `StreamExecutor` and
//! `MicroBatchExecutor(Trigger::AvailableNow)`. Before timing, every implementation's
//! checksum is asserted equal (bit for bit) to the hand loop's.
//!
//! The source shares the records through an `Arc<Vec<Rec>>` and copies one chunk per
//! batch (`to_vec`), as a real source must produce owned batches.
//! `W1/batch, pre-chunked` hands out chunks built before timing instead, to show what
//! that copy costs.
//!
//! Run: `cargo bench --bench pipeline` (about a minute; add `-- --quick` for less).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchstream::adapters::SharedSource;
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, Boundedness, MicroBatchExecutor, Pipeline, Result, Sink, Source, SourceBatch,
    StreamExecutor, Trigger,
};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const RECORDS: usize = 1_000_000;
const KEYS: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
struct Rec {
    key: u64,
    ts_ms: i64,
    amount: f64,
}

/// Deterministic records: xorshift64*, amounts 0.00–100.00 (about half above 50),
/// timestamps increasing by 0–2 ms.
fn generate(n: usize) -> Vec<Rec> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut ts_ms = 1_700_000_000_000i64;
    (0..n)
        .map(|_| {
            let r = next();
            ts_ms += (r >> 62) as i64 % 3;
            Rec {
                key: (r >> 8) % KEYS,
                ts_ms,
                amount: ((r >> 32) % 10_001) as f64 / 100.0,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Sources and sinks
// ---------------------------------------------------------------------------------

/// A bounded source handing out pre-built owned chunks without copying (the chunks
/// are built outside the timed part). Chunks larger than `max` are split.
struct ChunkSource {
    chunks: std::vec::IntoIter<Vec<Rec>>,
    pending: Option<Vec<Rec>>,
    read: u64,
}

impl Source for ChunkSource {
    type Item = Rec;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<Rec, u64>>> {
        let Some(mut chunk) = self.pending.take().or_else(|| self.chunks.next()) else {
            return Ok(None);
        };
        if chunk.len() > max {
            self.pending = Some(chunk.split_off(max));
        }
        self.read += chunk.len() as u64;
        Ok(Some(SourceBatch::new(chunk, self.read)))
    }
}

/// W1's sink: a running sum, added in record order (so it matches the hand loop bit
/// for bit), published after each batch.
struct SumSink {
    total: f64,
    out: Arc<AtomicU64>,
}

impl SumSink {
    fn new() -> (Self, Arc<AtomicU64>) {
        let out = Arc::new(AtomicU64::new(0f64.to_bits()));
        let sink = SumSink {
            total: 0.0,
            out: Arc::clone(&out),
        };
        (sink, out)
    }
}

impl Sink for SumSink {
    type Item = f64;
    async fn write(&mut self, batch: Vec<f64>) -> Result<()> {
        for x in batch {
            self.total += x;
        }
        self.out.store(self.total.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

/// W2's per-key result: (count, sum of amounts).
type Acc = (u64, f64);

/// W2's sink: an upsert table indexed by key (keys are `0..KEYS`).
struct TableSink {
    table: Arc<Mutex<Vec<Acc>>>,
}

impl TableSink {
    fn new() -> (Self, Arc<Mutex<Vec<Acc>>>) {
        let table = Arc::new(Mutex::new(vec![(0, 0.0); KEYS as usize]));
        let sink = TableSink {
            table: Arc::clone(&table),
        };
        (sink, table)
    }
}

impl Sink for TableSink {
    type Item = (u64, Acc);
    async fn write(&mut self, batch: Vec<(u64, Acc)>) -> Result<()> {
        let mut table = self.table.lock().unwrap();
        for (key, acc) in batch {
            table[key as usize] = acc;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The workloads: hand loops and pipelines
// ---------------------------------------------------------------------------------

fn w1_hand(data: &[Rec]) -> f64 {
    let mut total = 0.0;
    for r in data {
        if r.amount > 50.0 {
            total += r.amount * 1.07;
        }
    }
    total
}

fn w1_logic() -> impl batchstream::Transform<In = Rec, Out = f64> {
    transform::identity::<Rec>()
        .filter(|r| r.amount > 50.0)
        .map(|r| r.amount * 1.07)
}

fn w2_hand(data: &[Rec]) -> HashMap<u64, Acc> {
    let mut table: HashMap<u64, Acc> = HashMap::new();
    for r in data {
        let acc = table.entry(r.key).or_insert((0, 0.0));
        acc.0 += 1;
        acc.1 += r.amount;
    }
    table
}

fn w2_logic() -> impl batchstream::Transform<In = Rec, Out = (u64, Acc)> {
    transform::identity::<Rec>()
        .key_by(|r| r.key)
        .fold((0u64, 0.0f64), |acc, r| {
            acc.0 += 1;
            acc.1 += r.amount;
        })
}

/// W2 checksum: total count and the per-key sums added in key order.
fn w2_checksum(lookup: impl Fn(u64) -> Acc) -> (u64, u64) {
    let (mut count, mut sum) = (0u64, 0.0f64);
    for k in 0..KEYS {
        let (c, s) = lookup(k);
        count += c;
        sum += s;
    }
    (count, sum.to_bits())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Exec {
    Batch,
    Stream,
    MicroBatch,
}

const EXECUTORS: [(Exec, &str); 3] = [
    (Exec::Batch, "batch"),
    (Exec::Stream, "stream"),
    (Exec::MicroBatch, "micro-batch"),
];

/// Runs `pipeline` under `exec` to completion.
fn run<S, T, K>(rt: &Runtime, exec: Exec, pipeline: Pipeline<S, T, K>)
where
    S: Source,
    T: batchstream::Transform<In = S::Item, Out = K::Item>,
    K: Sink,
{
    let report = rt.block_on(async {
        match exec {
            Exec::Batch => BatchExecutor::new().run(pipeline).await,
            Exec::Stream => StreamExecutor::new().run(pipeline).await,
            Exec::MicroBatch => {
                MicroBatchExecutor::new(Trigger::AvailableNow)
                    .run(pipeline)
                    .await
            }
        }
    });
    let report = report.expect("pipeline failed");
    assert_eq!(report.records_read, RECORDS as u64);
}

fn w1_pipeline(rt: &Runtime, exec: Exec, data: &Arc<Vec<Rec>>) -> f64 {
    let (sink, out) = SumSink::new();
    run(
        rt,
        exec,
        Pipeline::new("w1", SharedSource::new(data), w1_logic(), sink),
    );
    f64::from_bits(out.load(Ordering::Relaxed))
}

fn w1_pipeline_prechunked(rt: &Runtime, chunks: Vec<Vec<Rec>>) -> f64 {
    let (sink, out) = SumSink::new();
    let source = ChunkSource {
        chunks: chunks.into_iter(),
        pending: None,
        read: 0,
    };
    run(
        rt,
        Exec::Batch,
        Pipeline::new("w1", source, w1_logic(), sink),
    );
    f64::from_bits(out.load(Ordering::Relaxed))
}

fn w2_pipeline(rt: &Runtime, exec: Exec, data: &Arc<Vec<Rec>>) -> Arc<Mutex<Vec<Acc>>> {
    let (sink, table) = TableSink::new();
    run(
        rt,
        exec,
        Pipeline::new("w2", SharedSource::new(data), w2_logic(), sink),
    );
    table
}

fn chunked(data: &[Rec]) -> Vec<Vec<Rec>> {
    data.chunks(1000).map(<[Rec]>::to_vec).collect()
}

// ---------------------------------------------------------------------------------
// The benchmarks
// ---------------------------------------------------------------------------------

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn w1(c: &mut Criterion) {
    let rt = runtime();
    let data = Arc::new(generate(RECORDS));
    // W1 and W2 do not read ts_ms, but it is part of every record (24 bytes each).
    assert!(data.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));

    let expected = w1_hand(&data);
    for (exec, name) in EXECUTORS {
        let got = w1_pipeline(&rt, exec, &data);
        assert_eq!(
            got.to_bits(),
            expected.to_bits(),
            "W1 {name}: {got} != {expected}"
        );
    }
    let got = w1_pipeline_prechunked(&rt, chunked(&data));
    assert_eq!(got.to_bits(), expected.to_bits(), "W1 pre-chunked");

    let mut g = c.benchmark_group("W1");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("hand-loop", |b| b.iter(|| w1_hand(black_box(&data))));
    for (exec, name) in EXECUTORS {
        g.bench_function(name, |b| b.iter(|| w1_pipeline(&rt, exec, &data)));
    }
    g.bench_function("batch, pre-chunked", |b| {
        b.iter_batched(
            || chunked(&data),
            |chunks| w1_pipeline_prechunked(&rt, chunks),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn w2(c: &mut Criterion) {
    let rt = runtime();
    let data = Arc::new(generate(RECORDS));

    let hand = w2_hand(&data);
    let expected = w2_checksum(|k| hand.get(&k).copied().unwrap_or((0, 0.0)));
    assert_eq!(expected.0, RECORDS as u64);
    for (exec, name) in EXECUTORS {
        let table = w2_pipeline(&rt, exec, &data);
        let table = table.lock().unwrap();
        let got = w2_checksum(|k| table[k as usize]);
        assert_eq!(got, expected, "W2 {name}");
    }

    let mut g = c.benchmark_group("W2");
    g.throughput(Throughput::Elements(RECORDS as u64));
    // Runs of up to ~100 ms: the same iteration count per sample keeps 10 samples
    // within the measurement time.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("hand-loop", |b| b.iter(|| w2_hand(black_box(&data))));
    for (exec, name) in EXECUTORS {
        g.bench_function(name, |b| b.iter(|| w2_pipeline(&rt, exec, &data)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    targets = w1, w2
}
criterion_main!(benches);
