//! Scale-out over a Redis consumer group, with two worker processes, one of which is
//! killed mid-way (feature `redis`; `harness = false`).
//!
//! Without `SCALE_OUT_CHILD` this is the test: it seeds a stream with `RECORDS`
//! records, starts two workers (this same binary, with `SCALE_OUT_CHILD=<consumer>`)
//! in one consumer group, each with its own checkpoint, writing into an idempotent
//! Redis hash keyed by record id (`HSET`) plus a per-record write counter (`HINCRBY`).
//! It SIGKILLs one worker while it holds unacknowledged entries, and checks that the
//! survivor reclaims them (`XAUTOCLAIM`) and that in the end every record id is in the
//! hash exactly once with its value: 0 lost, 0 stray keys. It prints its totals and
//! panics (exits non-zero) on failure. Every wait is bounded.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchstream::checkpoint::FileCheckpointStore;
use batchstream::connectors::redis::RedisStreamSource;
use batchstream::retry::RetryPolicy;
use batchstream::transform;
use batchstream::{DeliveryGuarantee, Pipeline, Sink, StreamExecutor};
use redis::Commands;
use serde::{Deserialize, Serialize};

const URL: &str = "redis://127.0.0.1:6379";
const START: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";
const RECORDS: u64 = 20_000;
const CHILD: &str = "SCALE_OUT_CHILD";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rec {
    id: u64,
    value: String,
}

fn value_of(id: u64) -> String {
    format!("value-{id}")
}

fn main() {
    match std::env::var(CHILD) {
        Ok(consumer) => worker(&consumer),
        Err(_) => test(),
    }
}

/// The names one run uses, passed to the workers through the environment.
struct Names {
    stream: String,
    group: String,
    out: String,
    writes: String,
    stop: String,
    checkpoints: PathBuf,
}

impl Names {
    fn from_env() -> Self {
        let prefix = std::env::var("SCALE_OUT_PREFIX").expect("SCALE_OUT_PREFIX");
        let checkpoints = std::env::var("SCALE_OUT_CHECKPOINTS").expect("SCALE_OUT_CHECKPOINTS");
        Names::new(&prefix, checkpoints.into())
    }
    fn new(prefix: &str, checkpoints: PathBuf) -> Self {
        Names {
            stream: format!("{prefix}:stream"),
            group: format!("{prefix}:group"),
            out: format!("{prefix}:out"),
            writes: format!("{prefix}:writes"),
            stop: format!("{prefix}:stop"),
            checkpoints,
        }
    }
}

// ------------------------------------------------------------------------------------
// Worker
// ------------------------------------------------------------------------------------

/// Idempotent: `HSET out id value` (a replay overwrites itself), plus `HINCRBY writes id
/// 1` to count deliveries. Slowed a little so that the kill lands mid-way.
struct HashSink {
    conn: redis::aio::MultiplexedConnection,
    out: String,
    writes: String,
}

impl Sink for HashSink {
    type Item = Rec;
    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }
    async fn write(&mut self, batch: Vec<Rec>) -> batchstream::Result<()> {
        let mut pipe = redis::pipe();
        for r in &batch {
            pipe.hset(&self.out, r.id, &r.value).ignore();
            pipe.hincr(&self.writes, r.id, 1).ignore();
        }
        // Retry a lost connection here: executors do not retry writes.
        let mut attempt = 0;
        loop {
            match pipe.exec_async(&mut self.conn).await {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("worker sink: retrying after {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(batchstream::Error::sink_retryable("write", e)),
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
        Ok(())
    }
}

fn worker(consumer: &str) {
    let names = Names::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let source = RedisStreamSource::<Rec>::json(URL, &names.stream, &names.group, consumer)
            .expect("source")
            .min_idle(Duration::from_millis(1500))
            .claim_interval(Duration::from_millis(300));
        let stats = source.stats();
        let client = redis::Client::open(URL).expect("url");
        let sink = HashSink {
            conn: client
                .get_multiplexed_async_connection()
                .await
                .expect("a Redis connection"),
            out: names.out.clone(),
            writes: names.writes.clone(),
        };
        let store = FileCheckpointStore::new(names.checkpoints.join(consumer)).expect("store");
        let pipeline = Pipeline::new(
            format!("scale-out-{consumer}"),
            source,
            transform::identity::<Rec>(),
            sink,
        )
        .with_checkpoint_store(store)
        .with_retry(RetryPolicy::new().max_attempts(10));
        let stop_key = names.stop.clone();
        let stop = async move {
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("a Redis connection");
            loop {
                let stop: bool = redis::cmd("EXISTS")
                    .arg(&stop_key)
                    .query_async(&mut c)
                    .await
                    .unwrap_or(false);
                if stop {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let report = StreamExecutor::new()
            .max_batch(100)
            .checkpoint_every_records(400)
            .checkpoint_interval(Duration::from_millis(200))
            .run_until(pipeline, stop)
            .await
            .expect("the worker runs to its stop signal");
        println!(
            "consumer={consumer} read={} written={} checkpoints={} reclaimed={} redelivered_own={} acked={}",
            report.records_read,
            report.records_written,
            report.checkpoints,
            stats.reclaimed(),
            stats.redelivered_own(),
            stats.acked()
        );
    });
}

// ------------------------------------------------------------------------------------
// Test
// ------------------------------------------------------------------------------------

/// Kills the workers and deletes the keys and checkpoints, even when the test panics.
struct Cleanup {
    children: Vec<(String, Child)>,
    prefix: String,
    checkpoints: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(mut c) = redis::Client::open(URL).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = c.keys(format!("{}:*", self.prefix)).unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = c.del(keys);
            }
        }
        let _ = std::fs::remove_dir_all(&self.checkpoints);
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `XPENDING stream group - + 1000000 consumer`: how many entries `consumer` holds.
fn pending_of(c: &mut redis::Connection, n: &Names, consumer: &str) -> u64 {
    let v: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&n.stream)
        .arg(&n.group)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query(c)
        .expect("XPENDING");
    v.len() as u64
}

fn pending_total(c: &mut redis::Connection, n: &Names) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(&n.stream)
        .arg(&n.group)
        .query(c)
        .expect("XPENDING");
    match v {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(k)) => *k as u64,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

fn spawn_worker(consumer: &str, prefix: &str, checkpoints: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD, consumer)
        .env("SCALE_OUT_PREFIX", prefix)
        .env("SCALE_OUT_CHECKPOINTS", checkpoints)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a worker")
}

fn test() {
    let mut c = redis::Client::open(URL)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| {
            panic!("Redis at 127.0.0.1:6379 is not reachable ({e}); start it with: {START}")
        });
    let prefix = format!("bs-scale-out:{}", std::process::id());
    let checkpoints = std::env::temp_dir().join(format!("bs-scale-out-{}", std::process::id()));
    let names = Names::new(&prefix, checkpoints.clone());
    let mut cleanup = Cleanup {
        children: Vec::new(),
        prefix: prefix.clone(),
        checkpoints: checkpoints.clone(),
    };

    // Seed the stream.
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &id in chunk {
            let rec = Rec {
                id,
                value: value_of(id),
            };
            pipe.cmd("XADD")
                .arg(&names.stream)
                .arg("*")
                .arg("data")
                .arg(serde_json::to_string(&rec).unwrap())
                .ignore();
        }
        pipe.exec(&mut c).expect("seeding the stream");
    }

    for consumer in ["worker-a", "worker-b"] {
        let child = spawn_worker(consumer, &prefix, &checkpoints);
        cleanup.children.push((consumer.to_owned(), child));
    }

    // Let both work; kill worker-a mid-way, while it holds unacknowledged entries.
    let limit = Duration::from_secs(120);
    wait_for("a quarter of the records to be written", limit, || {
        let written: u64 = c.hlen(&names.out).unwrap_or(0);
        written >= RECORDS / 4 && pending_of(&mut c, &names, "worker-a") > 0
    });
    {
        let (_, victim) = &mut cleanup.children[0];
        victim.kill().expect("SIGKILL worker-a");
        victim.wait().expect("reap worker-a");
    }
    let orphaned = pending_of(&mut c, &names, "worker-a");
    let written_at_kill: u64 = c.hlen(&names.out).unwrap();
    println!("killed worker-a with {orphaned} entries pending, {written_at_kill} records written");
    assert!(orphaned > 0, "worker-a held pending entries when killed");
    assert!(written_at_kill < RECORDS, "the kill happened mid-way");

    // The survivor finishes the stream, including worker-a's pending entries.
    wait_for(
        "every record in the output and nothing pending",
        limit,
        || {
            let written: u64 = c.hlen(&names.out).unwrap_or(0);
            written >= RECORDS && pending_total(&mut c, &names) == 0
        },
    );
    let _: () = c.set(&names.stop, 1).unwrap();
    let (_, survivor) = &mut cleanup.children[1];
    let start = Instant::now();
    let status = loop {
        if let Some(status) = survivor.try_wait().expect("worker-b status") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker-b did not stop within 30 s of the stop signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut report = String::new();
    survivor
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut report)
        .expect("worker-b output");
    print!("{report}");
    assert!(status.success(), "worker-b failed: {status}");
    let stat = |name: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("`{name}=` in worker-b's report: {report}"))
    };
    let reclaimed = stat("reclaimed");

    // Every record id exactly once, with its value; nothing else.
    let out: HashMap<u64, String> = c.hgetall(&names.out).unwrap();
    let writes: HashMap<u64, u64> = c.hgetall(&names.writes).unwrap();
    let lost = (0..RECORDS).filter(|id| !out.contains_key(id)).count();
    let wrong = out
        .iter()
        .filter(|(id, v)| **id >= RECORDS || **v != value_of(**id))
        .count();
    let stray_keys = out.keys().filter(|id| **id >= RECORDS).count();
    let written: u64 = writes.values().sum();
    let rewritten = writes.values().filter(|n| **n > 1).count();
    println!(
        "records={RECORDS} written={written} lost={lost} duplicate_keys={stray_keys} \
         rewritten_after_redelivery={rewritten} orphaned={orphaned} reclaimed={reclaimed}"
    );
    assert_eq!(lost, 0, "lost records");
    assert_eq!(wrong, 0, "records with a wrong value or an unknown id");
    assert_eq!(out.len() as u64, RECORDS, "one key per record id");
    assert!(
        reclaimed >= orphaned,
        "the survivor reclaimed worker-a's {orphaned} pending entries (reclaimed {reclaimed})"
    );
    assert_eq!(pending_of(&mut c, &names, "worker-a"), 0);
    assert_eq!(pending_total(&mut c, &names), 0);
    println!("scale_out: ok");
}
