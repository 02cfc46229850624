//! The performance report: every implementation of every workload, in turn, in each
//! repetition; checksums asserted equal to the hand loop's; medians; a table on stdout
//! and the same as JSON.
//!
//! Run: `cargo bench --bench report` (a few minutes on 2 cores).
//!
//! # Data
//! `BENCH_RECORDS` (default 10 000 000) pre-generated records `{key: u64 (10 000
//! distinct), ts_ms: i64 (in order), amount: f64 (0.00..=100.00)}`. Event time advances
//! by 1 ms about every 100 records, so a 1 s window holds ~100 000 records and ~10 000
//! keys (results ≈ 10 % of the records). `BENCH_REPS` (default 5) repetitions; in each,
//! every (workload, implementation) runs once, in a fixed order.
//!
//! # Workloads
//! - **W1** stateless: `filter(amount > 50)` → `map(amount * 1.07)` → sum (added in
//!   record order, so all implementations agree bit for bit).
//! - **W2** keyed 1 s tumbling event-time windows (monotonic watermark = largest
//!   timestamp seen; a window closes when the first record of a later window arrives),
//!   per-key `(count, sum)`; the sink folds every result `(key, window start, count,
//!   sum bits)` into an order-independent checksum (wrapping sum of a 64-bit mix).
//!   Every implementation adds a window's amounts in source order, so the sums are
//!   compared exactly, bit for bit.
//!   batchstream reads event time as `UnixMillis(ts_ms)` (integer milliseconds, no
//!   `DateTime` built per record), for the watermark and for the window.
//! - **W3** W2 with a `FileCheckpointStore` in a fresh temporary directory: the stream
//!   executor checkpoints every 1 s (processing time; a run shorter than 1 s therefore
//!   takes only its final checkpoint), the micro-batch executor (`AvailableNow`, up to
//!   5 M records per micro-batch, about a second of work) once per micro-batch, the batch
//!   executor once at the end.
//!   W3 rows exist for the batchstream executors only; their ratios are to W2's
//!   baselines, and `ratio_to_w2_same_impl` compares with the same executor's W2.
//!   The stream executor runs W2 with the same settings (checkpoint every 1 s, no
//!   record-count trigger), without a store.
//!
//! # Implementations
//! - `hand-loop`: a loop over the slice (W2: per-key state in a `Vec` indexed by key,
//!   the touched keys listed, a window closed when time passes its end).
//! - `batchstream-batch|stream|micro-batch`: one pipeline per workload, a source that
//!   copies each chunk out of an `Arc<Vec<Rec>>` (a real source produces owned batches)
//!   and a summing / checksum sink. Current-thread tokio runtime.
//! - `tokio-per-record`: 3 tasks (source → transform → sink), one record per mpsc
//!   message (channels of 1024 messages). `tokio-batched`: the same, one `Vec` of 1024
//!   per message (channels of 16). Multi-thread runtime, 2 workers.
//! - `timely`: timely dataflow 0.32, 1 worker (`execute_directly`), records sent
//!   through an `InputHandle`; W2 uses the window index as the timely timestamp and a
//!   `unary_frontier` operator that emits a window when the frontier passes it.
//!
//! Ratios are throughput ratios: `baseline_time / impl_time` (> 1 is faster).
//!
//! # JSON (`$BENCH_REPORT_JSON`, else `$CARGO_TARGET_DIR/bench-report.json`, else
//! `target/bench-report.json` in the package)
//! A list of rows. Throughput rows:
//! `{"workload": "W1"|"W2"|"W3", "implementation", "ns_per_record_median",
//! "ratio_to_hand_loop", "ratio_to_tokio_per_record", "ratio_to_timely"}` plus
//! `"ns_per_record_min"`, `"ns_per_record_max"`, and for W3 `"ratio_to_w2_same_impl"`
//! and `"checkpoints_per_run"`. A ratio is `null` when its baseline did not run.
//! Extra rows carry the same six keys (numbers `null`) and:
//! - `"workload": "latency"`, `"implementation": "batchstream-stream"`:
//!   `p50_us`, `p99_us`, `p999_us`, `max_us`, `records`, `rate_per_s` — in-process
//!   latency at 100 000 records/s for `BENCH_LATENCY_SECS` (default 1) seconds: a
//!   feeder thread sends records stamped with their send time through a tokio mpsc
//!   channel (`ChannelSource`) every ~50 µs (sleep granularity), the stream executor
//!   maps them through and the sink records `now − sent` in an hdrhistogram.
//! - `"workload": "memory"`, `"implementation": "batchstream-stream"`:
//!   `records_small`, `records_large`, `peak_bytes_small`, `peak_bytes_large`,
//!   `ratio` — peak heap above the pre-run heap (a counting global allocator) of a
//!   streaming W2 run over records generated on the fly by the source
//!   (`BENCH_MEM_SMALL`/`BENCH_MEM_LARGE`, default 10 M / 100 M).
//!
//! `BENCH_PROFILE=W1|W2|W3` runs only one batchstream pipeline (batch executor; W3:
//! micro-batch with checkpoints) `BENCH_REPS` times and exits: for `perf record`.
//!
//! The counting allocator is active for the whole bench: one relaxed atomic add (and
//! a `fetch_max`) per allocation, for every implementation alike.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchstream::adapters::ChannelSource;
use batchstream::adapters::SharedSource;
use batchstream::checkpoint::FileCheckpointStore;
use batchstream::event_time::{EventTime, UnixMillis};
use batchstream::transform::{self, Aggregator, TransformExt};
use batchstream::window::{WindowResult, Windows};
use batchstream::{
    BatchExecutor, Boundedness, MicroBatchExecutor, Pipeline, Result, RunReport, Sink, Source,
    SourceBatch, StreamExecutor, Trigger,
};
use chrono::TimeDelta;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------

const KEYS: u64 = 10_000;
const WINDOW_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Rec {
    key: u64,
    ts_ms: i64,
    amount: f64,
}

/// Deterministic records: xorshift64*; amounts 0.00–100.00 (about half above 50);
/// event time +1 ms about every 100 records.
struct Gen {
    s: u64,
    ts_ms: i64,
}

impl Gen {
    fn new() -> Self {
        Gen {
            s: 0x9E37_79B9_7F4A_7C15,
            ts_ms: 1_700_000_000_000,
        }
    }
    #[inline]
    fn next(&mut self) -> Rec {
        self.s ^= self.s >> 12;
        self.s ^= self.s << 25;
        self.s ^= self.s >> 27;
        let r = self.s.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if (r >> 52) % 100 == 0 {
            self.ts_ms += 1;
        }
        Rec {
            key: (r >> 8) % KEYS,
            ts_ms: self.ts_ms,
            amount: ((r >> 32) % 10_001) as f64 / 100.0,
        }
    }
}

fn generate(n: usize) -> Vec<Rec> {
    let mut g = Gen::new();
    (0..n).map(|_| g.next()).collect()
}

/// A record's event time: integer milliseconds, so no calendar arithmetic per record.
fn ts(r: &Rec) -> UnixMillis {
    UnixMillis(r.ts_ms)
}

// ---------------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------------

/// W2's order-independent checksum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct W2Sum {
    results: u64,
    records: u64,
    mix: u64,
}

#[inline]
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl W2Sum {
    #[inline]
    fn add(&mut self, key: u64, start_ms: i64, count: u64, sum: f64) {
        self.results += 1;
        self.records += count;
        let h =
            splitmix(key ^ splitmix(start_ms as u64 ^ splitmix(count ^ splitmix(sum.to_bits()))));
        self.mix = self.mix.wrapping_add(h);
    }
}

/// The outcome of one run, compared with the hand loop's.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    W1(u64),
    W2(W2Sum),
}

// ---------------------------------------------------------------------------------
// Hand loops (and the window logic the tokio baselines share)
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

/// One open 1 s window over in-order records: per-key state indexed by key.
struct HandWindow {
    state: Vec<(u64, f64)>,
    touched: Vec<u32>,
    start: i64,
    end: i64,
}

impl HandWindow {
    fn new() -> Self {
        HandWindow {
            state: vec![(0, 0.0); KEYS as usize],
            touched: Vec::with_capacity(KEYS as usize),
            start: i64::MIN,
            end: i64::MIN,
        }
    }
    #[inline]
    fn push(&mut self, r: &Rec, mut emit: impl FnMut(u64, i64, u64, f64)) {
        if r.ts_ms >= self.end {
            self.close(&mut emit);
            self.start = r.ts_ms.div_euclid(WINDOW_MS) * WINDOW_MS;
            self.end = self.start + WINDOW_MS;
        }
        let s = &mut self.state[r.key as usize];
        if s.0 == 0 {
            self.touched.push(r.key as u32);
        }
        s.0 += 1;
        s.1 += r.amount;
    }
    #[inline]
    fn close(&mut self, mut emit: impl FnMut(u64, i64, u64, f64)) {
        for &k in &self.touched {
            let s = &mut self.state[k as usize];
            emit(u64::from(k), self.start, s.0, s.1);
            *s = (0, 0.0);
        }
        self.touched.clear();
    }
}

fn w2_hand(data: &[Rec]) -> W2Sum {
    let mut w = HandWindow::new();
    let mut cs = W2Sum::default();
    for r in data {
        w.push(r, |k, s, c, x| cs.add(k, s, c, x));
    }
    w.close(|k, s, c, x| cs.add(k, s, c, x));
    cs
}

// ---------------------------------------------------------------------------------
// batchstream: source, sinks, logic
// ---------------------------------------------------------------------------------

/// A bounded source generating `n` records on the fly (the memory test).
struct GenSource {
    gen_: Gen,
    left: u64,
    made: u64,
}

impl Source for GenSource {
    type Item = Rec;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<Rec, u64>>> {
        if self.left == 0 {
            return Ok(None);
        }
        let n = (max as u64).min(self.left);
        let records: Vec<Rec> = (0..n).map(|_| self.gen_.next()).collect();
        self.left -= n;
        self.made += n;
        Ok(Some(SourceBatch::new(records, self.made)))
    }
}

/// W1's sink: a running sum in record order.
struct SumSink {
    total: f64,
    out: Arc<AtomicU64>,
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

/// (count, sum) per (key, window).
#[derive(Debug, Clone, Copy)]
struct CountSum;

impl Aggregator<Rec> for CountSum {
    type Acc = (u64, f64);
    type Output = (u64, f64);
    #[inline]
    fn create(&self) -> (u64, f64) {
        (0, 0.0)
    }
    #[inline]
    fn add(&self, acc: &mut (u64, f64), r: Rec) {
        acc.0 += 1;
        acc.1 += r.amount;
    }
    #[inline]
    fn merge(&self, acc: &mut (u64, f64), other: (u64, f64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    #[inline]
    fn finish(&self, acc: &(u64, f64)) -> (u64, f64) {
        *acc
    }
}

type W2Out = WindowResult<u64, (u64, f64)>;

/// W2's sink: folds results into the checksum.
struct ChecksumSink {
    sum: W2Sum,
    out: Arc<Mutex<W2Sum>>,
}

impl Sink for ChecksumSink {
    type Item = W2Out;
    async fn write(&mut self, batch: Vec<W2Out>) -> Result<()> {
        for r in batch {
            let (c, s) = r.value;
            self.sum.add(r.key, r.window.start.timestamp_millis(), c, s);
        }
        *self.out.lock().unwrap() = self.sum;
        Ok(())
    }
}

fn w1_logic() -> impl batchstream::Transform<In = Rec, Out = f64> {
    transform::identity::<Rec>()
        .filter(|r| r.amount > 50.0)
        .map(|r| r.amount * 1.07)
}

fn w2_logic() -> impl batchstream::Transform<In = Rec, Out = W2Out> {
    transform::identity::<Rec>()
        .key_by(|r| r.key)
        .window(Windows::tumbling(TimeDelta::seconds(1)), ts)
        .aggregate(CountSum)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exec {
    Batch,
    Stream,
    MicroBatch,
}

fn bs_run<S, T, K>(rt: &Runtime, exec: Exec, pipeline: Pipeline<S, T, K>) -> RunReport
where
    S: Source,
    T: batchstream::Transform<In = S::Item, Out = K::Item>,
    K: Sink,
{
    rt.block_on(async {
        match exec {
            Exec::Batch => BatchExecutor::new().run(pipeline).await,
            Exec::Stream => {
                StreamExecutor::new()
                    .checkpoint_interval(Duration::from_secs(1))
                    .checkpoint_every_records(u64::MAX)
                    .run(pipeline)
                    .await
            }
            Exec::MicroBatch => {
                // Micro-batches of up to 5 M records: about a second of W2 work each,
                // so W3 saves a checkpoint about once a second, as the stream executor does.
                MicroBatchExecutor::new(Trigger::AvailableNow)
                    .max_records_per_batch(5_000_000)
                    .run(pipeline)
                    .await
            }
        }
    })
    .expect("pipeline failed")
}

fn bs_w1(rt: &Runtime, exec: Exec, data: &Arc<Vec<Rec>>) -> f64 {
    let out = Arc::new(AtomicU64::new(0f64.to_bits()));
    let sink = SumSink {
        total: 0.0,
        out: Arc::clone(&out),
    };
    let source = SharedSource::new(data);
    let report = bs_run(rt, exec, Pipeline::new("w1", source, w1_logic(), sink));
    assert_eq!(report.records_read, data.len() as u64);
    f64::from_bits(out.load(Ordering::Relaxed))
}

static DIR_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs W2 (W3 with `checkpoint_dir`); returns the checksum and checkpoints taken.
fn bs_w2(
    rt: &Runtime,
    exec: Exec,
    data: &Arc<Vec<Rec>>,
    checkpoint_dir: Option<&PathBuf>,
) -> (W2Sum, u64) {
    let out = Arc::new(Mutex::new(W2Sum::default()));
    let sink = ChecksumSink {
        sum: W2Sum::default(),
        out: Arc::clone(&out),
    };
    let source = SharedSource::new(data);
    let mut p = Pipeline::new("w2", source, w2_logic(), sink).with_event_time(EventTime::new(ts));
    if let Some(dir) = checkpoint_dir {
        p = p.with_checkpoint_store(FileCheckpointStore::new(dir).expect("checkpoint dir"));
    }
    let report = bs_run(rt, exec, p);
    assert_eq!(report.records_read, data.len() as u64);
    assert_eq!(report.late, 0);
    let sum = *out.lock().unwrap();
    (sum, report.checkpoints)
}

fn fresh_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "batchstream-report-{}-{}",
        std::process::id(),
        DIR_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

// ---------------------------------------------------------------------------------
// tokio baselines: 3 tasks
// ---------------------------------------------------------------------------------

const TOKIO_BATCH: usize = 1024;

fn tokio_w1_per_record(rt: &Runtime, data: &Arc<Vec<Rec>>) -> f64 {
    let data = Arc::clone(data);
    rt.block_on(async move {
        let (tx1, mut rx1) = mpsc::channel::<Rec>(1024);
        let (tx2, mut rx2) = mpsc::channel::<f64>(1024);
        let src = tokio::spawn(async move {
            for r in data.iter() {
                tx1.send(*r).await.unwrap();
            }
        });
        let mid = tokio::spawn(async move {
            while let Some(r) = rx1.recv().await {
                if r.amount > 50.0 {
                    tx2.send(r.amount * 1.07).await.unwrap();
                }
            }
        });
        let sink = tokio::spawn(async move {
            let mut total = 0.0;
            while let Some(x) = rx2.recv().await {
                total += x;
            }
            total
        });
        src.await.unwrap();
        mid.await.unwrap();
        sink.await.unwrap()
    })
}

fn tokio_w1_batched(rt: &Runtime, data: &Arc<Vec<Rec>>) -> f64 {
    let data = Arc::clone(data);
    rt.block_on(async move {
        let (tx1, mut rx1) = mpsc::channel::<Vec<Rec>>(16);
        let (tx2, mut rx2) = mpsc::channel::<Vec<f64>>(16);
        let src = tokio::spawn(async move {
            for c in data.chunks(TOKIO_BATCH) {
                tx1.send(c.to_vec()).await.unwrap();
            }
        });
        let mid = tokio::spawn(async move {
            while let Some(batch) = rx1.recv().await {
                let out: Vec<f64> = batch
                    .into_iter()
                    .filter(|r| r.amount > 50.0)
                    .map(|r| r.amount * 1.07)
                    .collect();
                tx2.send(out).await.unwrap();
            }
        });
        let sink = tokio::spawn(async move {
            let mut total = 0.0;
            while let Some(b) = rx2.recv().await {
                for x in b {
                    total += x;
                }
            }
            total
        });
        src.await.unwrap();
        mid.await.unwrap();
        sink.await.unwrap()
    })
}

type Row = (u64, i64, u64, f64);

fn tokio_w2_per_record(rt: &Runtime, data: &Arc<Vec<Rec>>) -> W2Sum {
    let data = Arc::clone(data);
    rt.block_on(async move {
        let (tx1, mut rx1) = mpsc::channel::<Rec>(1024);
        let (tx2, mut rx2) = mpsc::channel::<Row>(1024);
        let src = tokio::spawn(async move {
            for r in data.iter() {
                tx1.send(*r).await.unwrap();
            }
        });
        let mid = tokio::spawn(async move {
            let mut w = HandWindow::new();
            let mut pending: Vec<Row> = Vec::new();
            while let Some(r) = rx1.recv().await {
                w.push(&r, |k, s, c, x| pending.push((k, s, c, x)));
                for row in pending.drain(..) {
                    tx2.send(row).await.unwrap();
                }
            }
            w.close(|k, s, c, x| pending.push((k, s, c, x)));
            for row in pending.drain(..) {
                tx2.send(row).await.unwrap();
            }
        });
        let sink = tokio::spawn(async move {
            let mut cs = W2Sum::default();
            while let Some((k, s, c, x)) = rx2.recv().await {
                cs.add(k, s, c, x);
            }
            cs
        });
        src.await.unwrap();
        mid.await.unwrap();
        sink.await.unwrap()
    })
}

fn tokio_w2_batched(rt: &Runtime, data: &Arc<Vec<Rec>>) -> W2Sum {
    let data = Arc::clone(data);
    rt.block_on(async move {
        let (tx1, mut rx1) = mpsc::channel::<Vec<Rec>>(16);
        let (tx2, mut rx2) = mpsc::channel::<Vec<Row>>(16);
        let src = tokio::spawn(async move {
            for c in data.chunks(TOKIO_BATCH) {
                tx1.send(c.to_vec()).await.unwrap();
            }
        });
        let mid = tokio::spawn(async move {
            let mut w = HandWindow::new();
            while let Some(batch) = rx1.recv().await {
                let mut out: Vec<Row> = Vec::new();
                for r in &batch {
                    w.push(r, |k, s, c, x| out.push((k, s, c, x)));
                }
                if !out.is_empty() {
                    tx2.send(out).await.unwrap();
                }
            }
            let mut out: Vec<Row> = Vec::new();
            w.close(|k, s, c, x| out.push((k, s, c, x)));
            tx2.send(out).await.unwrap();
        });
        let sink = tokio::spawn(async move {
            let mut cs = W2Sum::default();
            while let Some(b) = rx2.recv().await {
                for (k, s, c, x) in b {
                    cs.add(k, s, c, x);
                }
            }
            cs
        });
        src.await.unwrap();
        mid.await.unwrap();
        sink.await.unwrap()
    })
}

// ---------------------------------------------------------------------------------
// timely dataflow, 1 worker
// ---------------------------------------------------------------------------------

fn timely_w1(data: &Arc<Vec<Rec>>) -> f64 {
    use timely::dataflow::InputHandle;
    use timely::dataflow::channels::pact::Pipeline as Pact;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::vec::{Filter, Map};

    let data = Arc::clone(data);
    timely::execute_directly(move |worker| {
        let total = Rc::new(Cell::new(0.0f64));
        let mut input = InputHandle::<u64, _>::new();
        let t = Rc::clone(&total);
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .container::<Vec<Rec>>()
                .filter(|r: &Rec| r.amount > 50.0)
                .map(|r: Rec| r.amount * 1.07)
                .sink(Pact, "sum", move |(input, _frontier)| {
                    input.for_each(|_cap, batch: &mut Vec<f64>| {
                        let mut s = t.get();
                        for x in batch.drain(..) {
                            s += x;
                        }
                        t.set(s);
                    });
                });
        });
        for chunk in data.chunks(TOKIO_BATCH) {
            for r in chunk {
                input.send(*r);
            }
            worker.step();
        }
        drop(input);
        while worker.step() {}
        total.get()
    })
}

/// A timely window: its capability (time = window index) and per-key (count, sum).
type OpenWindow = (
    timely::dataflow::operators::Capability<u64>,
    foldhash::HashMap<u64, (u64, f64)>,
);

fn timely_w2(data: &Arc<Vec<Rec>>) -> W2Sum {
    use timely::dataflow::InputHandle;
    use timely::dataflow::channels::pact::Pipeline as Pact;
    use timely::dataflow::operators::generic::Operator;

    let data = Arc::clone(data);
    timely::execute_directly(move |worker| {
        let sum = Rc::new(RefCell::new(W2Sum::default()));
        let mut input = InputHandle::<u64, _>::new();
        let out = Rc::clone(&sum);
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .container::<Vec<Rec>>()
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Row>>, _, _, _>(
                    Pact,
                    "window",
                    |_cap, _info| {
                        // Open windows by window index (the timely time).
                        let mut open: Vec<OpenWindow> = Vec::new();
                        move |(input, frontier), output| {
                            input.for_each(|cap, batch: &mut Vec<Rec>| {
                                let Some(&t) = cap.least() else { return };
                                let i = match open.iter().position(|(c, _)| *c.time() == t) {
                                    Some(i) => i,
                                    None => {
                                        let c = cap.delayed(&t, output.output_index());
                                        open.push((c, foldhash::HashMap::default()));
                                        open.len() - 1
                                    }
                                };
                                let map = &mut open[i].1;
                                for r in batch.drain(..) {
                                    let a = map.entry(r.key).or_insert((0, 0.0));
                                    a.0 += 1;
                                    a.1 += r.amount;
                                }
                            });
                            open.retain_mut(|(cap, map)| {
                                if frontier.less_equal(cap.time()) {
                                    return true;
                                }
                                let start = *cap.time() as i64 * WINDOW_MS;
                                let mut session = output.session(cap);
                                for (k, (c, s)) in map.drain() {
                                    session.give((k, start, c, s));
                                }
                                false
                            });
                        }
                    },
                )
                .sink(Pact, "checksum", move |(input, _frontier)| {
                    input.for_each(|_cap, batch: &mut Vec<Row>| {
                        let mut cs = out.borrow_mut();
                        for (k, s, c, x) in batch.drain(..) {
                            cs.add(k, s, c, x);
                        }
                    });
                });
        });
        let mut n = 0usize;
        for r in data.iter() {
            let w = r.ts_ms.div_euclid(WINDOW_MS) as u64;
            if w > *input.time() {
                input.advance_to(w);
            }
            input.send(*r);
            n += 1;
            if n % TOKIO_BATCH == 0 {
                worker.step();
            }
        }
        drop(input);
        while worker.step() {}
        sum.take()
    })
}

// ---------------------------------------------------------------------------------
// Latency and memory
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct LatRec {
    sent_ns: u64,
    amount: f64,
}

struct LatencySink {
    base: Instant,
    hist: hdrhistogram::Histogram<u64>,
    out: Arc<Mutex<Option<hdrhistogram::Histogram<u64>>>>,
    n: u64,
    expected: u64,
}

impl Sink for LatencySink {
    type Item = LatRec;
    async fn write(&mut self, batch: Vec<LatRec>) -> Result<()> {
        let now = self.base.elapsed().as_nanos() as u64;
        for r in &batch {
            self.hist
                .record(now.saturating_sub(r.sent_ns).max(1))
                .expect("in range");
        }
        self.n += batch.len() as u64;
        if self.n == self.expected {
            *self.out.lock().unwrap() = Some(self.hist.clone());
        }
        Ok(())
    }
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    records: u64,
    rate: f64,
}

fn latency(secs: f64) -> Latency {
    const RATE: u64 = 100_000;
    let n = (RATE as f64 * secs) as u64;
    let base = Instant::now();
    let (tx, rx) = mpsc::channel::<LatRec>(65_536);
    let out = Arc::new(Mutex::new(None));
    let sink = LatencySink {
        base,
        hist: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
        out: Arc::clone(&out),
        n: 0,
        expected: n,
    };
    let p = Pipeline::new(
        "latency",
        ChannelSource::new(rx),
        transform::identity::<LatRec>().map(|mut r: LatRec| {
            r.amount *= 1.07;
            r
        }),
        sink,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let feeder = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < n {
            let due = ((start.elapsed().as_nanos() as u64 * RATE) / 1_000_000_000 + 1).min(n);
            while sent < due {
                let r = LatRec {
                    sent_ns: base.elapsed().as_nanos() as u64,
                    amount: sent as f64,
                };
                tx.blocking_send(r).unwrap();
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        start.elapsed()
    });
    let report = rt
        .block_on(StreamExecutor::new().run(p))
        .expect("latency run");
    let took = feeder.join().unwrap();
    assert_eq!(report.records_read, n);
    let h = out
        .lock()
        .unwrap()
        .take()
        .expect("all records reached the sink");
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1000.0,
        records: n,
        rate: n as f64 / took.as_secs_f64(),
    }
}

/// Peak heap above the pre-run heap of a streaming W2 run over `n` generated records;
/// also the time taken.
fn memory_run(n: u64) -> (usize, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = Arc::new(Mutex::new(W2Sum::default()));
    let sink = ChecksumSink {
        sum: W2Sum::default(),
        out: Arc::clone(&out),
    };
    let source = GenSource {
        gen_: Gen::new(),
        left: n,
        made: 0,
    };
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let p = Pipeline::new("mem", source, w2_logic(), sink).with_event_time(EventTime::new(ts));
    let report = bs_run(&rt, Exec::Stream, p);
    let took = t.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert_eq!(report.records_read, n);
    assert_eq!(out.lock().unwrap().records, n);
    (peak, took)
}

// ---------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------

const HAND: &str = "hand-loop";
const TOKIO_PR: &str = "tokio-per-record";
const TOKIO_B: &str = "tokio-batched";
const TIMELY: &str = "timely";
const BS_BATCH: &str = "batchstream-batch";
const BS_STREAM: &str = "batchstream-stream";
const BS_MICRO: &str = "batchstream-micro-batch";

const BS: [(Exec, &str); 3] = [
    (Exec::Batch, BS_BATCH),
    (Exec::Stream, BS_STREAM),
    (Exec::MicroBatch, BS_MICRO),
];

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Timings per (workload, implementation), in insertion order.
#[derive(Default)]
struct Times {
    rows: Vec<(&'static str, &'static str, Vec<f64>)>,
    checkpoints: Vec<(&'static str, u64)>,
}

impl Times {
    fn add(&mut self, workload: &'static str, imp: &'static str, ns_per_rec: f64) {
        match self
            .rows
            .iter_mut()
            .find(|(w, i, _)| *w == workload && *i == imp)
        {
            Some(r) => r.2.push(ns_per_rec),
            None => self.rows.push((workload, imp, vec![ns_per_rec])),
        }
    }
    fn median(&self, workload: &str, imp: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(w, i, _)| *w == workload && *i == imp)
            .map(|r| median(&r.2))
    }
}

fn timed<R>(n: usize, f: impl FnOnce() -> R) -> (R, f64) {
    let t = Instant::now();
    let r = f();
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    (black_box(r), ns)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let n = env_num("BENCH_RECORDS", 10_000_000) as usize;
    let reps = env_num("BENCH_REPS", 5).max(1) as usize;
    let lat_secs = std::env::var("BENCH_LATENCY_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    let mem_small = env_num("BENCH_MEM_SMALL", 10_000_000);
    let mem_large = env_num("BENCH_MEM_LARGE", 100_000_000);

    println!(
        "batchstream report: {n} records, {reps} repetitions, {} cores",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let data = Arc::new(generate(n));
    assert!(data.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));

    let bs_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let w1_expected = Check::W1(w1_hand(&data).to_bits());
    let w2_expected = Check::W2(w2_hand(&data));
    if let Check::W2(s) = w2_expected {
        assert_eq!(s.records, n as u64);
        println!(
            "W2: {} window results ({:.1} % of records)",
            s.results,
            100.0 * s.results as f64 / n as f64
        );
    }

    // `BENCH_PROFILE=W1|W2|W3` runs only the batch executor on that workload, `reps`
    // times, for a profiler (`perf record`), and exits.
    if let Ok(w) = std::env::var("BENCH_PROFILE") {
        for _ in 0..reps {
            let (ok, ns) = timed(n, || match w.as_str() {
                "W1" => Check::W1(bs_w1(&bs_rt, Exec::Batch, &data).to_bits()) == w1_expected,
                "W2" => Check::W2(bs_w2(&bs_rt, Exec::Batch, &data, None).0) == w2_expected,
                _ => {
                    let dir = fresh_dir();
                    let r = bs_w2(&bs_rt, Exec::MicroBatch, &data, Some(&dir)).0;
                    let _ = std::fs::remove_dir_all(&dir);
                    Check::W2(r) == w2_expected
                }
            });
            assert!(ok, "{w}: checksum differs from the hand loop");
            println!("{w}: {ns:.2} ns/record");
        }
        return;
    }
    let mut times = Times::default();
    let total = Instant::now();
    for rep in 0..reps {
        let t_rep = Instant::now();
        // W1
        let check = |imp: &'static str, got: Check, ns: f64, times: &mut Times| {
            assert_eq!(
                got, w1_expected,
                "W1 {imp}: checksum differs from the hand loop"
            );
            times.add("W1", imp, ns);
        };
        let (r, ns) = timed(n, || w1_hand(black_box(&data)));
        check(HAND, Check::W1(r.to_bits()), ns, &mut times);
        for (exec, name) in BS {
            let (r, ns) = timed(n, || bs_w1(&bs_rt, exec, &data));
            check(name, Check::W1(r.to_bits()), ns, &mut times);
        }
        let (r, ns) = timed(n, || tokio_w1_per_record(&tokio_rt, &data));
        check(TOKIO_PR, Check::W1(r.to_bits()), ns, &mut times);
        let (r, ns) = timed(n, || tokio_w1_batched(&tokio_rt, &data));
        check(TOKIO_B, Check::W1(r.to_bits()), ns, &mut times);
        let (r, ns) = timed(n, || timely_w1(&data));
        check(TIMELY, Check::W1(r.to_bits()), ns, &mut times);

        // W2
        let check = |imp: &'static str, got: W2Sum, ns: f64, times: &mut Times| {
            assert_eq!(
                Check::W2(got),
                w2_expected,
                "W2 {imp}: checksum differs from the hand loop"
            );
            times.add("W2", imp, ns);
        };
        let (r, ns) = timed(n, || w2_hand(black_box(&data)));
        check(HAND, r, ns, &mut times);
        for (exec, name) in BS {
            let ((r, _), ns) = timed(n, || bs_w2(&bs_rt, exec, &data, None));
            check(name, r, ns, &mut times);
        }
        let (r, ns) = timed(n, || tokio_w2_per_record(&tokio_rt, &data));
        check(TOKIO_PR, r, ns, &mut times);
        let (r, ns) = timed(n, || tokio_w2_batched(&tokio_rt, &data));
        check(TOKIO_B, r, ns, &mut times);
        let (r, ns) = timed(n, || timely_w2(&data));
        check(TIMELY, r, ns, &mut times);

        // W3: W2 with file checkpoints.
        for (exec, name) in BS {
            let dir = fresh_dir();
            let ((r, ckpts), ns) = timed(n, || bs_w2(&bs_rt, exec, &data, Some(&dir)));
            let _ = std::fs::remove_dir_all(&dir);
            assert_eq!(
                Check::W2(r),
                w2_expected,
                "W3 {name}: checksum differs from the hand loop"
            );
            times.add("W3", name, ns);
            if rep == 0 {
                times.checkpoints.push((name, ckpts));
            }
        }
        eprintln!(
            "repetition {}/{reps}: {:.1} s, all checksums equal",
            rep + 1,
            t_rep.elapsed().as_secs_f64()
        );
    }
    eprintln!("throughput part: {:.1} s", total.elapsed().as_secs_f64());

    // Table and JSON rows.
    let mut json_rows: Vec<Value> = Vec::new();
    println!();
    println!(
        "{:<4} {:<24} {:>10} {:>13} {:>9} {:>11} {:>9} {:>9}",
        "work",
        "implementation",
        "ns/rec",
        "records/s",
        "vs hand",
        "vs tokio-pr",
        "vs timely",
        "vs W2"
    );
    for (workload, imp, samples) in &times.rows {
        let med = median(samples);
        let base_w = if *workload == "W3" { "W2" } else { workload };
        let ratio = |b: &str| times.median(base_w, b).map(|t| t / med);
        let (hand, tpr, tim) = (ratio(HAND), ratio(TOKIO_PR), ratio(TIMELY));
        let vs_w2 = (*workload == "W3")
            .then(|| times.median("W2", imp).map(|t| t / med))
            .flatten();
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
        println!(
            "{:<4} {:<24} {:>10.2} {:>13.0} {:>9} {:>11} {:>9} {:>9}",
            workload,
            imp,
            med,
            1e9 / med,
            f(hand),
            f(tpr),
            f(tim),
            f(vs_w2)
        );
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        let mut row = json!({
            "workload": workload,
            "implementation": imp,
            "ns_per_record_median": med,
            "ratio_to_hand_loop": hand,
            "ratio_to_tokio_per_record": tpr,
            "ratio_to_timely": tim,
            "ns_per_record_min": min,
            "ns_per_record_max": max,
        });
        if *workload == "W3" {
            row["ratio_to_w2_same_impl"] = json!(vs_w2);
            row["checkpoints_per_run"] = json!(
                times
                    .checkpoints
                    .iter()
                    .find(|(i, _)| i == imp)
                    .map(|(_, c)| *c)
            );
        }
        json_rows.push(row);
    }
    println!(
        "W3 checkpoints per run: {}",
        times
            .checkpoints
            .iter()
            .map(|(i, c)| format!("{i} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Latency.
    let lat = latency(lat_secs);
    println!();
    println!(
        "latency, stream executor, in process, {:.0} records/s for {lat_secs} s ({} records): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        lat.rate, lat.records, lat.p50_us, lat.p99_us, lat.p999_us, lat.max_us
    );
    json_rows.push(json!({
        "workload": "latency",
        "implementation": BS_STREAM,
        "ns_per_record_median": null,
        "ratio_to_hand_loop": null,
        "ratio_to_tokio_per_record": null,
        "ratio_to_timely": null,
        "p50_us": lat.p50_us,
        "p99_us": lat.p99_us,
        "p999_us": lat.p999_us,
        "max_us": lat.max_us,
        "records": lat.records,
        "rate_per_s": lat.rate,
    }));

    // Memory: free the pre-generated data first.
    drop(data);
    let (peak_small, t_small) = memory_run(mem_small);
    let (peak_large, t_large) = memory_run(mem_large);
    let mem_ratio = peak_large as f64 / peak_small as f64;
    println!(
        "memory, streaming W2, records generated by the source: peak heap {:.2} MB after {mem_small} records ({:.1} s), {:.2} MB after {mem_large} records ({:.1} s): ratio {mem_ratio:.3}",
        peak_small as f64 / 1e6,
        t_small.as_secs_f64(),
        peak_large as f64 / 1e6,
        t_large.as_secs_f64(),
    );
    json_rows.push(json!({
        "workload": "memory",
        "implementation": BS_STREAM,
        "ns_per_record_median": null,
        "ratio_to_hand_loop": null,
        "ratio_to_tokio_per_record": null,
        "ratio_to_timely": null,
        "records_small": mem_small,
        "records_large": mem_large,
        "peak_bytes_small": peak_small,
        "peak_bytes_large": peak_large,
        "ratio": mem_ratio,
    }));

    // Goals (PERFORMANCE.md).
    println!();
    println!("goals:");
    let m = |w: &str, i: &str| times.median(w, i).unwrap_or(f64::NAN);
    let goal = |what: String, value: f64, target: f64, at_least: bool| {
        let ok = if at_least {
            value >= target
        } else {
            value <= target
        };
        let op = if at_least { ">=" } else { "<=" };
        println!(
            "  [{}] {what}: {value:.3} (goal {op} {target})",
            if ok { "met " } else { "MISS" }
        );
    };
    goal(
        "W1 batch / hand loop".into(),
        m("W1", HAND) / m("W1", BS_BATCH),
        0.5,
        true,
    );
    goal(
        "W2 batch / hand loop".into(),
        m("W2", HAND) / m("W2", BS_BATCH),
        0.85,
        true,
    );
    for w in ["W1", "W2"] {
        goal(
            format!("{w} stream / tokio-per-record"),
            m(w, TOKIO_PR) / m(w, BS_STREAM),
            10.0,
            true,
        );
        goal(
            format!("{w} stream / tokio-batched"),
            m(w, TOKIO_B) / m(w, BS_STREAM),
            0.8,
            true,
        );
    }
    for (w, target) in [("W1", 2.0), ("W2", 1.0)] {
        for imp in [BS_BATCH, BS_STREAM, BS_MICRO] {
            goal(
                format!("{w} {imp} / timely"),
                m(w, TIMELY) / m(w, imp),
                target,
                true,
            );
        }
    }
    for w in ["W1", "W2"] {
        goal(
            format!("{w} micro-batch / batch"),
            m(w, BS_BATCH) / m(w, BS_MICRO),
            0.9,
            true,
        );
    }
    for imp in [BS_BATCH, BS_STREAM, BS_MICRO] {
        goal(
            format!("W3/W2 {imp} (checkpoints)"),
            m("W2", imp) / m("W3", imp),
            0.9,
            true,
        );
    }
    goal("latency p99 µs".into(), lat.p99_us, 100.0, false);
    goal("latency p99.9 µs".into(), lat.p999_us, 1000.0, false);
    goal(
        format!("memory peak {mem_large} / {mem_small}"),
        mem_ratio,
        1.1,
        false,
    );

    let path = match (
        std::env::var_os("BENCH_REPORT_JSON"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(t)) => PathBuf::from(t).join("bench-report.json"),
        (None, None) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("bench-report.json"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("report directory");
    }
    let text = serde_json::to_string_pretty(&Value::Array(json_rows)).unwrap();
    std::fs::write(&path, text + "\n").expect("write the JSON report");
    println!();
    println!("JSON: {}", path.display());
}
