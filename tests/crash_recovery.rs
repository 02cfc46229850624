//! Crash harness: a stream pipeline runs in a child process and is killed with SIGKILL
//! again and again, at random moments and at chosen points of the checkpoint protocol;
//! each time it is restarted, until the input is consumed. Then the output is checked
//! against the known input: nothing lost, and with the idempotent and transactional
//! sinks nothing duplicated. A batch run is killed and re-run too: its output must be
//! identical to an uninterrupted run, and the run is marked complete once.
//!
//! `cargo test --release --test crash_recovery` runs 50 kills per sink kind;
//! `CRASH_KILLS=500` raises it, `CRASH_SEED=n` replays a sequence. Built with
//! `--features failpoints`, kills also land inside the checkpoint store's save
//! (after the temporary write, after the rename, before the directory fsync).
//!
//! This file is its own `main` (`harness = false`): with `BATCHSTREAM_CRASH_CHILD` set,
//! the binary is the child pipeline; otherwise it is the harness.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchstream::adapters::file::{
    FilePosition, KeyedFileSink, NdjsonSink, NdjsonSource, TransactionalFileSink, dead_letter_file,
    read_committed,
};
use batchstream::checkpoint::{Checkpoint, CheckpointStore, FileCheckpointStore};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    BatchExecutor, Boundedness, CheckpointError, DeadLetter, DeliveryGuarantee, Outcome, Pipeline,
    Result, Sink, Source, SourceBatch, SourceProgress, StreamExecutor,
};
use serde::{Deserialize, Serialize};

const RECORDS: u64 = 2_000;
/// Every this many lines, the input has a line that does not parse.
const BAD_EVERY: u64 = 250;
const MAX_BATCH: usize = 50;
const CHECKPOINT_EVERY: u64 = 200;
/// Kills in one round before it is let run to the end.
const KILLS_PER_ROUND: u32 = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    id: u64,
    v: u64,
}

fn value_of(id: u64) -> u64 {
    id.wrapping_mul(2_654_435_761) % 1_000_003
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    AtLeastOnce,
    Idempotent,
    Transactional,
    Batch,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AtLeastOnce => "at-least-once",
            Kind::Idempotent => "idempotent",
            Kind::Transactional => "transactional",
            Kind::Batch => "batch+transactional",
        }
    }
    fn parse(s: &str) -> Kind {
        match s {
            "at-least-once" => Kind::AtLeastOnce,
            "idempotent" => Kind::Idempotent,
            "transactional" => Kind::Transactional,
            "batch+transactional" => Kind::Batch,
            other => panic!("unknown sink kind {other}"),
        }
    }
}

/// Points where the child kills itself (when asked to), besides random kills from
/// the parent.
const POINTS: &[(&str, u64)] = &[
    // (point, how many times it is reached in a full run, roughly)
    ("during_write", RECORDS / MAX_BATCH as u64),
    ("after_flush", RECORDS / CHECKPOINT_EVERY),
    ("before_save", RECORDS / CHECKPOINT_EVERY),
    ("after_save", RECORDS / CHECKPOINT_EVERY),
    ("after_commit", RECORDS / CHECKPOINT_EVERY),
    ("before_ack", RECORDS / CHECKPOINT_EVERY),
];

#[cfg(feature = "failpoints")]
const STORE_POINTS: &[&str] = &[
    "batchstream::checkpoint::after_temp_write",
    "batchstream::checkpoint::after_rename",
    "batchstream::checkpoint::before_dir_fsync",
];

fn main() {
    if std::env::var_os("BATCHSTREAM_CRASH_CHILD").is_some() {
        child();
        return;
    }
    // Behave like a test harness for filters: `cargo test foo` runs this only if
    // `crash` matches.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "crash_recovery".contains(f.as_str()))
    {
        println!("crash_recovery: skipped by filter");
        return;
    }
    harness();
}

// =================================================================== the child

/// Kills this process with SIGKILL when the configured point is reached for the
/// configured time.
#[derive(Clone)]
struct Killer {
    at: Option<(String, u64)>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
}

impl Killer {
    fn from_env() -> Killer {
        let at = std::env::var("CRASH_AT").ok().map(|s| {
            let (p, n) = s.rsplit_once(':').expect("CRASH_AT=point:n");
            (p.to_owned(), n.parse().expect("a number"))
        });
        Killer {
            at,
            hits: Arc::default(),
        }
    }

    fn hit(&self, point: &str) {
        let Some((at, n)) = &self.at else { return };
        if at != point {
            return;
        }
        let mut hits = self.hits.lock().unwrap();
        let count = hits.entry(point.to_owned()).or_default();
        *count += 1;
        if *count == *n {
            kill_self();
        }
    }
}

fn kill_self() -> ! {
    let _ = Command::new("kill")
        .arg("-9")
        .arg(std::process::id().to_string())
        .status();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Wraps the sink: paces writes (so that the run lasts long enough to be killed at
/// random), and kills at `during_write` (half a batch written), `after_flush`,
/// `after_commit`.
struct KillSink<S> {
    inner: S,
    killer: Killer,
}

impl<S: Sink> Sink for KillSink<S> {
    type Item = S::Item;
    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, mut batch: Vec<S::Item>) -> Result<()> {
        tokio::time::sleep(Duration::from_micros(500)).await;
        let second = batch.split_off(batch.len() / 2);
        self.inner.write(batch).await?;
        self.killer.hit("during_write");
        self.inner.write(second).await
    }
    async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await?;
        self.killer.hit("after_flush");
        Ok(())
    }
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        self.inner.prepare(epoch).await
    }
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        self.inner.commit(epoch).await?;
        self.killer.hit("after_commit");
        Ok(())
    }
    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.inner.recover(checkpointed).await
    }
}

/// Wraps the checkpoint store: kills at `before_save` and `after_save`.
struct KillStore {
    inner: FileCheckpointStore,
    killer: Killer,
}

impl CheckpointStore for KillStore {
    async fn load(&self, id: &str) -> std::result::Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(id).await
    }
    async fn save(&self, ck: &Checkpoint) -> std::result::Result<(), CheckpointError> {
        self.killer.hit("before_save");
        self.inner.save(ck).await?;
        self.killer.hit("after_save");
        Ok(())
    }
}

/// Wraps the source: kills at `before_ack`.
struct KillSource {
    inner: NdjsonSource<Rec>,
    killer: Killer,
}

impl Source for KillSource {
    type Item = Rec;
    type Position = FilePosition;
    fn boundedness(&self) -> Boundedness {
        self.inner.boundedness()
    }
    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<Rec, FilePosition>>> {
        self.inner.next_batch(max).await
    }
    async fn seek(&mut self, position: FilePosition) -> Result<()> {
        self.inner.seek(position).await
    }
    async fn ack(&mut self, position: &FilePosition) -> Result<()> {
        self.killer.hit("before_ack");
        self.inner.ack(position).await
    }
    fn progress(&self) -> Option<SourceProgress> {
        self.inner.progress()
    }
}

fn child() {
    let kind = Kind::parse(&std::env::var("CRASH_KIND").unwrap());
    let work = PathBuf::from(std::env::var("CRASH_DIR").unwrap());
    let killer = Killer::from_env();
    #[cfg(feature = "failpoints")]
    let _scenario = {
        let scenario = fail::FailScenario::setup();
        if let Some((point, n)) = killer.at.clone() {
            if STORE_POINTS.contains(&point.as_str()) {
                let count = std::sync::atomic::AtomicU64::new(0);
                fail::cfg_callback(point, move || {
                    if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n {
                        kill_self();
                    }
                })
                .unwrap();
            }
        }
        scenario
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(run_child(kind, &work, killer));
    match outcome {
        Ok(outcome) => println!("outcome={outcome:?}"),
        Err(e) => {
            eprintln!("child failed: {e}");
            std::process::exit(2);
        }
    }
}

async fn run_child(kind: Kind, work: &Path, killer: Killer) -> Result<Outcome> {
    let source = KillSource {
        inner: NdjsonSource::<Rec>::open(work.join("input.ndjson"))?,
        killer: killer.clone(),
    };
    let store = KillStore {
        inner: FileCheckpointStore::new(work.join("checkpoints"))?,
        killer: killer.clone(),
    };
    let dlq = dead_letter_file(work.join("dead-letters.ndjson"))?;
    let stream = StreamExecutor::new()
        .max_batch(MAX_BATCH)
        .checkpoint_every_records(CHECKPOINT_EVERY)
        .checkpoint_interval(Duration::from_secs(3600));
    macro_rules! pipeline {
        ($sink:expr, $map:expr) => {
            Pipeline::new(
                "crash",
                source,
                transform::identity::<Rec>().map($map),
                KillSink {
                    inner: $sink,
                    killer,
                },
            )
            .with_checkpoint_store(store)
            .with_dead_letter_sink(dlq)
        };
    }
    let report = match kind {
        Kind::AtLeastOnce => {
            let sink = NdjsonSink::<Rec>::append(work.join("out.ndjson"))?;
            stream.run(pipeline!(sink, |r: Rec| r)).await?
        }
        Kind::Idempotent => {
            let sink = KeyedFileSink::<u64, Rec>::open(work.join("out.keyed.ndjson"))?;
            let p = pipeline!(sink, |r: Rec| (r.id, r)).require_exactly_once();
            stream.run(p).await?
        }
        Kind::Transactional => {
            let sink = TransactionalFileSink::<Rec>::open(work.join("out"))?;
            let p = pipeline!(sink, |r: Rec| r).require_exactly_once();
            stream.run(p).await?
        }
        Kind::Batch => {
            let sink = TransactionalFileSink::<Rec>::open(work.join("out"))?;
            let p = pipeline!(sink, |r: Rec| r).require_exactly_once();
            BatchExecutor::new()
                .chunk_size(MAX_BATCH)
                .run_key("2026-11-25")
                .run(p)
                .await?
        }
    };
    Ok(report.outcome)
}

// =================================================================== the harness

/// xorshift64*: a small deterministic generator for kill times and points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Totals {
    rounds: u64,
    kills: u64,
    expected: u64,
    lost: u64,
    duplicated: u64,
    dead_letters_expected: u64,
    dead_letters_lost: u64,
    kill_points: BTreeMap<String, u64>,
}

fn write_input(path: &Path) -> (Vec<Rec>, Vec<u64>) {
    let mut text = String::new();
    let mut good = Vec::new();
    let mut bad_lines = Vec::new();
    let mut line = 0;
    for id in 0..RECORDS {
        line += 1;
        if id % BAD_EVERY == BAD_EVERY - 1 {
            text.push_str(&format!("{{\"id\":{id},\"v\":oops}}\n"));
            bad_lines.push(line);
            continue;
        }
        let r = Rec {
            id,
            v: value_of(id),
        };
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
        good.push(r);
    }
    std::fs::write(path, text).unwrap();
    (good, bad_lines)
}

/// What a child run ended with.
enum End {
    Finished(String),
    Killed,
}

fn spawn_child(kind: Kind, work: &Path, at: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("BATCHSTREAM_CRASH_CHILD", "1")
        .env("CRASH_KIND", kind.name())
        .env("CRASH_DIR", work)
        .env_remove("CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(at) = at {
        cmd.env("CRASH_AT", at);
    }
    cmd.spawn().expect("spawn the child pipeline")
}

fn killed_by_signal(status: &ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(9)
    }
    #[cfg(not(unix))]
    {
        !status.success()
    }
}

/// Runs the child once: killed by the parent after `kill_after`, or at the point the
/// child was given, or not at all.
fn run_once(kind: Kind, work: &Path, at: Option<&str>, kill_after: Option<Duration>) -> End {
    let mut child = spawn_child(kind, work, at);
    let started = Instant::now();
    let deadline = Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            if status.success() {
                return End::Finished(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if killed_by_signal(&status) {
                return End::Killed;
            }
            panic!(
                "{}: the child failed ({status}) instead of being killed or finishing:\n{}",
                kind.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if kill_after.is_some_and(|d| started.elapsed() >= d) {
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            if status.success() {
                // It finished just before the kill.
                let mut s = String::new();
                if let Some(mut out) = child.stdout.take() {
                    use std::io::Read;
                    out.read_to_string(&mut s).unwrap();
                }
                return End::Finished(s);
            }
            return End::Killed;
        }
        assert!(
            started.elapsed() < deadline,
            "{}: the child hung for {deadline:?}",
            kind.name()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn kill_plan(kind: Kind, rng: &mut Rng) -> (Option<String>, Option<Duration>, String) {
    // A batch run checkpoints once, at the end: its checkpoint points are reached once.
    let reach = |n: u64| if kind == Kind::Batch { 1 } else { n };
    #[cfg(feature = "failpoints")]
    if rng.below(4) == 0 {
        let point = STORE_POINTS[rng.below(STORE_POINTS.len() as u64) as usize];
        let n = 1 + rng.below(reach(RECORDS / CHECKPOINT_EVERY));
        let short = point.rsplit("::").next().unwrap().to_owned();
        return (Some(format!("{point}:{n}")), None, short);
    }
    if rng.below(2) == 0 {
        let ms = rng.below(150);
        (
            None,
            Some(Duration::from_millis(ms)),
            "random time".to_owned(),
        )
    } else {
        let (point, reached) = POINTS[rng.below(POINTS.len() as u64) as usize];
        let n = 1 + rng.below(if point == "during_write" {
            reached
        } else {
            reach(reached)
        });
        (Some(format!("{point}:{n}")), None, point.to_owned())
    }
}

/// The records the sink holds, by id, with how often each appears.
fn output_counts(kind: Kind, work: &Path) -> BTreeMap<u64, (u64, Rec)> {
    let mut counts: BTreeMap<u64, (u64, Rec)> = BTreeMap::new();
    let mut add = |r: Rec| counts.entry(r.id).or_insert((0, r)).0 += 1;
    match kind {
        Kind::AtLeastOnce => {
            let text = std::fs::read_to_string(work.join("out.ndjson")).unwrap_or_default();
            for (i, line) in text.lines().enumerate() {
                let r: Rec = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "at-least-once output line {} is damaged: {e}: {line}",
                        i + 1
                    )
                });
                add(r);
            }
        }
        Kind::Idempotent => {
            let table = KeyedFileSink::<u64, Rec>::read(work.join("out.keyed.ndjson")).unwrap();
            for (k, r) in table {
                assert_eq!(k, r.id, "key and record disagree");
                add(r);
            }
        }
        Kind::Transactional | Kind::Batch => {
            for r in read_committed::<Rec>(work.join("out")).unwrap() {
                add(r);
            }
        }
    }
    counts
}

fn dead_letter_lines(work: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(work.join("dead-letters.ndjson")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let d: DeadLetter = serde_json::from_str(l).expect("a dead letter");
            d.error.location.line.expect("dead letters name their line")
        })
        .collect()
}

fn check_round(kind: Kind, work: &Path, good: &[Rec], bad_lines: &[u64], t: &mut Totals) {
    let counts = output_counts(kind, work);
    t.expected += good.len() as u64;
    for r in good {
        match counts.get(&r.id) {
            None => t.lost += 1,
            Some((n, got)) => {
                assert_eq!(
                    got,
                    r,
                    "{}: record {} has the wrong value",
                    kind.name(),
                    r.id
                );
                t.duplicated += n - 1;
            }
        }
    }
    assert!(
        counts
            .keys()
            .all(|id| good.iter().any(|r| r.id == *id) || id % BAD_EVERY != 0),
        "{}: output holds records that were never in the input",
        kind.name()
    );
    let letters = dead_letter_lines(work);
    t.dead_letters_expected += bad_lines.len() as u64;
    t.dead_letters_lost += bad_lines.iter().filter(|l| !letters.contains(l)).count() as u64;
}

fn run_kind(kind: Kind, target_kills: u64, rng: &mut Rng, base: &Path) -> Totals {
    let mut t = Totals::default();
    let mut reference: Option<Vec<Rec>> = None;
    while t.kills < target_kills {
        t.rounds += 1;
        let work = base.join(format!("{}-{}", kind.name(), t.rounds));
        std::fs::create_dir_all(&work).unwrap();
        let (good, bad_lines) = write_input(&work.join("input.ndjson"));
        let mut kills_this_round = 0;
        let finished = loop {
            let plan = if kills_this_round < KILLS_PER_ROUND {
                kill_plan(kind, rng)
            } else {
                (None, None, String::new())
            };
            match run_once(kind, &work, plan.0.as_deref(), plan.1) {
                End::Killed => {
                    kills_this_round += 1;
                    t.kills += 1;
                    *t.kill_points.entry(plan.2).or_default() += 1;
                }
                End::Finished(out) => break out,
            }
        };
        // A batch run killed after its final checkpoint was already complete: the
        // restart finds it so and skips it (committing what the crash left prepared).
        let done = finished.contains("outcome=Completed")
            || (kind == Kind::Batch
                && kills_this_round > 0
                && finished.contains("outcome=Skipped"));
        assert!(done, "{}: {finished}", kind.name());
        check_round(kind, &work, &good, &bad_lines, &mut t);
        if kind == Kind::Batch {
            // Identical to an uninterrupted run, in order; and complete once.
            let out = read_committed::<Rec>(work.join("out")).unwrap();
            let reference = reference.get_or_insert_with(|| good.clone());
            assert_eq!(
                &out, reference,
                "batch output differs from an uninterrupted run"
            );
            match run_once(kind, &work, None, None) {
                End::Finished(o) => assert!(o.contains("outcome=Skipped"), "rerun: {o}"),
                End::Killed => unreachable!("nobody killed it"),
            }
            assert_eq!(read_committed::<Rec>(work.join("out")).unwrap(), out);
        }
        std::fs::remove_dir_all(&work).ok();
    }
    t
}

fn harness() {
    let target: u64 = std::env::var("CRASH_KILLS")
        .ok()
        .map(|s| s.parse().expect("CRASH_KILLS is a number"))
        .unwrap_or(50);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let base = std::env::temp_dir().join(format!("batchstream-crash-{}", std::process::id()));
    println!(
        "crash_recovery: {target} kills per sink kind, seed {seed} (CRASH_SEED={seed} replays it){}",
        if cfg!(feature = "failpoints") {
            ", with store failpoints"
        } else {
            ""
        }
    );
    let mut rng = Rng(seed);
    let mut failed = Vec::new();
    let started = Instant::now();
    println!(
        "{:<22} {:>6} {:>6} {:>9} {:>6} {:>10} {:>12}  kill points",
        "sink", "rounds", "kills", "expected", "lost", "duplicated", "dlq lost"
    );
    for kind in [
        Kind::AtLeastOnce,
        Kind::Idempotent,
        Kind::Transactional,
        Kind::Batch,
    ] {
        let kills = if kind == Kind::Batch {
            (target / 2).max(10)
        } else {
            target
        };
        let t = run_kind(kind, kills, &mut rng, &base);
        let points: Vec<String> = t
            .kill_points
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        println!(
            "{:<22} {:>6} {:>6} {:>9} {:>6} {:>10} {:>12}  {}",
            kind.name(),
            t.rounds,
            t.kills,
            t.expected,
            t.lost,
            t.duplicated,
            format!("{}/{}", t.dead_letters_lost, t.dead_letters_expected),
            points.join(", ")
        );
        if t.lost > 0 || t.dead_letters_lost > 0 {
            failed.push(format!(
                "{}: {} records lost",
                kind.name(),
                t.lost + t.dead_letters_lost
            ));
        }
        if kind != Kind::AtLeastOnce && t.duplicated > 0 {
            failed.push(format!(
                "{}: {} records duplicated",
                kind.name(),
                t.duplicated
            ));
        }
    }
    std::fs::remove_dir_all(&base).ok();
    println!("crash_recovery: done in {:.1?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "crash_recovery failed (seed {seed}): {failed:?}"
    );
    println!("test result: ok. crash_recovery passed");
}
