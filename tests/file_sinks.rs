//! The transactional and keyed file sinks: exactly-once output across crashes at every
//! step of two-phase commit, torn-tail repair, typed errors, and real pipeline
//! restarts.

use std::collections::BTreeMap;
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use batchstream::adapters::file::{KeyedFileSink, TransactionalFileSink, read_committed};
use batchstream::checkpoint::FileCheckpointStore;
use batchstream::testing::{ScriptedSource, Step};
use batchstream::transform::{self, TransformExt};
use batchstream::{
    CheckpointStore, DeliveryGuarantee, Error, Pipeline, Result, Sink, StreamExecutor,
};

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("bs-file-sinks-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The names of the files in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn io_error_parts(err: &Error) -> (&Path, IoKind, String) {
    match err {
        Error::Io { path, source } => (path.as_path(), source.kind(), source.to_string()),
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// TransactionalFileSink
// ---------------------------------------------------------------------------------

/// One step of the checkpoint cycle of an epoch, as an executor runs it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Write,
    Prepare,
    SaveCheckpoint,
    Commit,
}

const PHASES: [Phase; 4] = [
    Phase::Write,
    Phase::Prepare,
    Phase::SaveCheckpoint,
    Phase::Commit,
];

/// Plays `epochs` (numbered from `first`, each written in two batches) through `sink`
/// as an executor would, saving the "checkpoint" in `checkpointed`. Stops, leaving the sink to be dropped (a crash), when the step
/// counter reaches `crash_at`. Returns whether it crashed.
async fn play(
    sink: &mut TransactionalFileSink<u32>,
    epochs: &[Vec<u32>],
    first: u64,
    checkpointed: &mut Option<u64>,
    steps: &mut usize,
    crash_at: Option<usize>,
) -> Result<bool> {
    for (epoch, records) in (first..).zip(epochs) {
        for phase in PHASES {
            if crash_at == Some(*steps) {
                return Ok(true);
            }
            *steps += 1;
            match phase {
                Phase::Write => {
                    let (a, b) = records.split_at(records.len() / 2);
                    sink.write(a.to_vec()).await?;
                    sink.write(b.to_vec()).await?;
                }
                Phase::Prepare => {
                    sink.flush().await?;
                    sink.prepare(epoch).await?;
                }
                Phase::SaveCheckpoint => *checkpointed = Some(epoch),
                Phase::Commit => sink.commit(epoch).await?,
            }
        }
    }
    Ok(false)
}

#[tokio::test]
async fn transactional_sink_is_exactly_once_whatever_step_a_crash_hits() {
    // Epoch 3 has no records; epoch 2 a single one.
    let epochs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4], vec![], vec![5, 6, 7, 8]];
    let expected: Vec<u32> = epochs.concat();
    let total_steps = epochs.len() * PHASES.len();

    for crash_at in 0..=total_steps {
        let dir = TempDir::new("tx-crash");
        let mut checkpointed = None;
        let mut steps = 0;

        let mut sink = TransactionalFileSink::<u32>::open(dir.path()).unwrap();
        sink.recover(None).await.unwrap();
        let crashed = play(
            &mut sink,
            &epochs,
            1,
            &mut checkpointed,
            &mut steps,
            Some(crash_at),
        )
        .await
        .unwrap();
        assert_eq!(crashed, crash_at < total_steps);
        drop(sink);

        // Nothing that was not checkpointed is visible, and nothing checkpointed and
        // committed is lost: the visible output is a prefix of whole epochs.
        let visible = read_committed::<u32>(dir.path()).unwrap();
        let committed_epochs = TransactionalFileSink::<u32>::open(dir.path())
            .unwrap()
            .committed_epochs()
            .unwrap();
        let upto = committed_epochs.last().copied().unwrap_or(0);
        assert!(checkpointed.unwrap_or(0) >= upto, "crash at {crash_at}");
        assert_eq!(
            visible,
            epochs[..upto as usize].concat(),
            "crash at {crash_at}"
        );

        // A crash mid-write also leaves half a line in the in-progress file.
        let in_progress = dir.path().join("_in-progress.ndjson");
        if in_progress.exists() {
            append(&in_progress, b"{\"torn");
        }

        // Restart: recover to the checkpoint, replay from it. The replay groups the
        // records into epochs differently (as time-based checkpoints would): an empty
        // epoch first, then all the rest in one epoch.
        let mut sink = TransactionalFileSink::<u32>::open(dir.path()).unwrap();
        sink.recover(checkpointed).await.unwrap();
        let done = checkpointed.unwrap_or(0);
        let rest = epochs[done as usize..].concat();
        let crashed = play(
            &mut sink,
            &[vec![], rest.clone()],
            done + 1,
            &mut checkpointed,
            &mut steps,
            None,
        )
        .await
        .unwrap();
        assert!(!crashed);

        assert_eq!(
            read_committed::<u32>(dir.path()).unwrap(),
            expected,
            "crash at step {crash_at}"
        );
        let mut parts: Vec<u64> = (1..=done)
            .filter(|&e| !epochs[e as usize - 1].is_empty())
            .collect();
        if !rest.is_empty() {
            parts.push(done + 2);
        }
        assert_eq!(sink.committed_epochs().unwrap(), parts);
        assert_eq!(
            dir.names(),
            parts
                .iter()
                .map(|e| format!("part-{e:020}.ndjson"))
                .collect::<Vec<_>>(),
            "only committed parts are left (crash at {crash_at})"
        );
    }
}

#[tokio::test]
async fn repeated_commit_after_restart_does_not_write_twice() {
    let dir = TempDir::new("tx-recommit");
    let mut sink = TransactionalFileSink::open(dir.path()).unwrap();
    assert_eq!(sink.guarantee(), DeliveryGuarantee::Transactional);
    sink.write(vec!["a".to_owned(), "b".to_owned()])
        .await
        .unwrap();
    sink.prepare(1).await.unwrap();
    sink.commit(1).await.unwrap();
    sink.commit(1).await.unwrap();
    drop(sink);

    let mut sink = TransactionalFileSink::<String>::open(dir.path()).unwrap();
    sink.recover(Some(1)).await.unwrap();
    sink.commit(1).await.unwrap();
    assert_eq!(read_committed::<String>(dir.path()).unwrap(), ["a", "b"]);
    assert_eq!(sink.committed_epochs().unwrap(), vec![1]);
    assert!(sink.prepared_epochs().unwrap().is_empty());
}

#[tokio::test]
async fn recover_none_discards_prepared_and_in_progress_files() {
    let dir = TempDir::new("tx-none");
    let mut sink = TransactionalFileSink::open(dir.path()).unwrap();
    sink.write(vec![1u32, 2]).await.unwrap();
    sink.prepare(1).await.unwrap();
    sink.write(vec![3]).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        dir.names(),
        [
            "_in-progress.ndjson",
            "_prepared-00000000000000000001.ndjson"
        ]
    );
    drop(sink);

    let mut sink = TransactionalFileSink::<u32>::open(dir.path()).unwrap();
    sink.recover(None).await.unwrap();
    assert!(dir.names().is_empty(), "{:?}", dir.names());
    assert!(read_committed::<u32>(dir.path()).unwrap().is_empty());
}

#[tokio::test]
async fn recover_commits_prepared_epochs_up_to_the_checkpoint_and_drops_later_ones() {
    let dir = TempDir::new("tx-several");
    let mut sink = TransactionalFileSink::open(dir.path()).unwrap();
    for epoch in 1..=3u64 {
        sink.write(vec![epoch * 10, epoch * 10 + 1]).await.unwrap();
        sink.prepare(epoch).await.unwrap();
    }
    assert_eq!(sink.prepared_epochs().unwrap(), vec![1, 2, 3]);
    drop(sink);

    let mut sink = TransactionalFileSink::<u64>::open(dir.path()).unwrap();
    sink.recover(Some(2)).await.unwrap();
    assert_eq!(sink.committed_epochs().unwrap(), vec![1, 2]);
    assert!(sink.prepared_epochs().unwrap().is_empty());
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![10, 11, 20, 21]
    );
    // Recovering again changes nothing.
    sink.recover(Some(2)).await.unwrap();
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![10, 11, 20, 21]
    );
}

#[tokio::test]
async fn recover_refuses_committed_epochs_newer_than_the_checkpoint() {
    let dir = TempDir::new("tx-newer");
    let mut sink = TransactionalFileSink::open(dir.path()).unwrap();
    for epoch in 1..=2u64 {
        sink.write(vec![epoch]).await.unwrap();
        sink.prepare(epoch).await.unwrap();
        sink.commit(epoch).await.unwrap();
    }
    drop(sink);

    let mut sink = TransactionalFileSink::<u64>::open(dir.path()).unwrap();
    let err = sink.recover(Some(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                operation: "recover",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("part-00000000000000000002.ndjson"), "{text}");
    assert!(text.contains("epoch 1"), "{text}");

    let err = sink.recover(None).await.unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
    // The committed output is untouched.
    assert_eq!(read_committed::<u64>(dir.path()).unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn a_damaged_committed_file_is_an_error_naming_file_line_and_offset() {
    let dir = TempDir::new("tx-damaged");
    let mut sink = TransactionalFileSink::open(dir.path()).unwrap();
    sink.write(vec![1u32]).await.unwrap();
    sink.prepare(1).await.unwrap();
    sink.commit(1).await.unwrap();
    let part = dir.path().join("part-00000000000000000001.ndjson");
    append(&part, b"oops\n3\n");

    let err = read_committed::<u32>(dir.path()).unwrap_err();
    let (path, kind, message) = io_error_parts(&err);
    assert_eq!(path, part);
    assert_eq!(kind, IoKind::InvalidData);
    assert!(message.contains("line 2 (byte offset 2)"), "{message}");
}

#[tokio::test]
async fn a_record_that_cannot_be_serialized_fails_its_batch_without_writing_any_of_it() {
    /// JSON object keys must be strings: a map keyed by a list cannot be serialized.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    #[serde(untagged)]
    enum Rec {
        Good(BTreeMap<String, u8>),
        Bad(BTreeMap<Vec<u8>, u8>),
    }
    let dir = TempDir::new("tx-serialize");
    let good = Rec::Good([("a".to_owned(), 1)].into());
    let bad = Rec::Bad([(vec![1u8], 2)].into());
    let mut sink = TransactionalFileSink::open(dir.path()).unwrap();
    sink.write(vec![good.clone()]).await.unwrap();
    let err = sink.write(vec![good.clone(), bad]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                operation: "write",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("record 1 of the batch"), "{err}");
    sink.prepare(1).await.unwrap();
    sink.commit(1).await.unwrap();
    assert_eq!(
        read_committed::<Rec>(dir.path()).unwrap(),
        vec![good],
        "the failed batch left nothing behind"
    );
}

// ---------------------------------------------------------------------------------
// KeyedFileSink
// ---------------------------------------------------------------------------------

fn kv(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn table(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    kv(pairs).into_iter().collect()
}

#[tokio::test]
async fn keyed_sink_replay_overwrites_each_key() {
    let dir = TempDir::new("keyed-replay");
    let path = dir.path().join("table.ndjson");
    let mut sink = KeyedFileSink::<String, u32>::open(&path).unwrap();
    assert_eq!(sink.guarantee(), DeliveryGuarantee::Idempotent);
    sink.write(kv(&[("a", 1), ("b", 2)])).await.unwrap();
    sink.flush().await.unwrap();
    // A replay of the same records after a restart, then a newer value of b.
    sink.write(kv(&[("a", 1), ("b", 2), ("b", 3)]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.get("b"), Some(&3));
    drop(sink);

    assert_eq!(
        KeyedFileSink::<String, u32>::read(&path).unwrap(),
        table(&[("a", 1), ("b", 3)])
    );
    let sink = KeyedFileSink::<String, u32>::open(&path).unwrap();
    assert_eq!(sink.table(), &table(&[("a", 1), ("b", 3)]));
    assert_eq!(sink.log_records(), 5);
}

async fn torn_tail_is_truncated_on_open(tail: &[u8]) {
    let dir = TempDir::new("keyed-torn");
    let path = dir.path().join("table.ndjson");
    let mut sink = KeyedFileSink::<String, u32>::open(&path).unwrap();
    sink.write(kv(&[("a", 1), ("b", 2)])).await.unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    let good_len = std::fs::metadata(&path).unwrap().len();
    append(&path, tail);

    // A reader ignores the torn line without changing the file.
    assert_eq!(
        KeyedFileSink::<String, u32>::read(&path).unwrap(),
        table(&[("a", 1), ("b", 2)])
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good_len + tail.len() as u64
    );

    let mut sink = KeyedFileSink::<String, u32>::open(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(sink.table(), &table(&[("a", 1), ("b", 2)]));
    sink.write(kv(&[("c", 3)])).await.unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    assert_eq!(
        KeyedFileSink::<String, u32>::read(&path).unwrap(),
        table(&[("a", 1), ("b", 2), ("c", 3)])
    );
}

#[tokio::test]
async fn keyed_sink_truncates_a_last_line_without_newline() {
    torn_tail_is_truncated_on_open(b"{\"key\":\"c\",\"val").await;
    // Even a complete record is torn without its newline: it was never flushed.
    torn_tail_is_truncated_on_open(b"{\"key\":\"c\",\"value\":9}").await;
}

#[tokio::test]
async fn keyed_sink_truncates_a_last_line_that_does_not_parse() {
    torn_tail_is_truncated_on_open(b"{\"key\":\"c\",\"va\0\0\0\n").await;
}

#[tokio::test]
async fn keyed_sink_reports_a_bad_line_in_the_middle_with_file_line_and_offset() {
    let dir = TempDir::new("keyed-corrupt");
    let path = dir.path().join("table.ndjson");
    let first = "{\"key\":\"a\",\"value\":1}\n";
    let content = format!("{first}not json\n{{\"key\":\"b\",\"value\":2}}\n");
    std::fs::write(&path, &content).unwrap();

    let err = KeyedFileSink::<String, u32>::open(&path).unwrap_err();
    let (p, kind, message) = io_error_parts(&err);
    assert_eq!(p, path);
    assert_eq!(kind, IoKind::InvalidData);
    let at = format!("line 2 (byte offset {})", first.len());
    assert!(message.contains(&at), "{message}");
    // Not repaired: the file is as it was.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);

    let err = KeyedFileSink::<String, u32>::read(&path).unwrap_err();
    assert!(io_error_parts(&err).2.contains(&at), "{err}");
}

#[tokio::test]
async fn keyed_sink_compacts_to_one_line_per_key() {
    let dir = TempDir::new("keyed-compact");
    let path = dir.path().join("table.ndjson");
    let mut sink = KeyedFileSink::<String, u32>::open(&path)
        .unwrap()
        .compact_when(2, 4);
    sink.write(kv(&[("a", 1), ("b", 1), ("a", 2)]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.log_records(), 3, "below min_records: not compacted");
    sink.write(kv(&[("a", 3), ("b", 4), ("a", 5)]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.log_records(), 2);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    // Writes after compaction go to the new log.
    sink.write(kv(&[("c", 6)])).await.unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    let expected = table(&[("a", 5), ("b", 4), ("c", 6)]);
    assert_eq!(KeyedFileSink::<String, u32>::read(&path).unwrap(), expected);

    // A compaction that crashed before its rename leaves a temporary file: ignored
    // and removed on open.
    let tmp = dir.path().join("table.ndjson.compact.tmp");
    std::fs::write(&tmp, "{\"key\":\"a\",\"value\":999}\n").unwrap();
    let sink = KeyedFileSink::<String, u32>::open(&path).unwrap();
    assert!(!tmp.exists());
    assert_eq!(sink.table(), &expected);
}

// ---------------------------------------------------------------------------------
// End to end: a real pipeline, a failing run, a restart
// ---------------------------------------------------------------------------------

/// The first run's script: `1..=6`, then a source failure, then the rest.
fn failing_script(n: u32) -> Vec<Step<u32>> {
    vec![
        Step::Records((1..=6).collect()),
        Step::Fail {
            message: "broker gone".into(),
            retryable: false,
        },
        Step::Records((7..=n).collect()),
    ]
}

async fn checkpointed_position(store: &FileCheckpointStore, id: &str) -> u64 {
    let ck = store.load(id).await.unwrap().expect("a checkpoint");
    serde_json::from_value(ck.source_position.expect("a position")).unwrap()
}

#[tokio::test]
async fn transactional_sink_in_a_pipeline_restarted_after_a_failure_is_exactly_once() {
    let dir = TempDir::new("tx-e2e");
    let out = dir.path().join("out");
    let store = FileCheckpointStore::new(dir.path().join("ckpt")).unwrap();
    let exec = || {
        StreamExecutor::new()
            .max_batch(2)
            .checkpoint_every_records(4)
    };

    let p = Pipeline::new(
        "tx-e2e",
        ScriptedSource::new(failing_script(10)),
        transform::identity::<u32>(),
        TransactionalFileSink::open(&out).unwrap(),
    )
    .with_checkpoint_store(store.clone());
    let err = exec().run(p).await.unwrap_err();
    assert!(err.to_string().contains("broker gone"), "{err}");
    let position = checkpointed_position(&store, "tx-e2e").await;
    assert!(
        position < 6,
        "records after the last checkpoint are pending"
    );
    assert_eq!(
        read_committed::<u32>(&out).unwrap(),
        (1..=position as u32).collect::<Vec<_>>(),
        "exactly the checkpointed records are visible"
    );

    let p = Pipeline::new(
        "tx-e2e",
        ScriptedSource::from_records((1..=10).collect()),
        transform::identity::<u32>(),
        TransactionalFileSink::open(&out).unwrap(),
    )
    .with_checkpoint_store(store.clone());
    let report = exec().run(p).await.unwrap();
    assert_eq!(report.records_read, 10 - position);
    assert_eq!(
        read_committed::<u32>(&out).unwrap(),
        (1..=10).collect::<Vec<_>>()
    );
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("part-")), "{names:?}");
}

/// A transactional file sink whose first `commit` fails, after its checkpoint is
/// saved: the window where only `recover` can make the epoch visible.
struct CommitFailsOnce {
    inner: TransactionalFileSink<u32>,
    failed: bool,
}

impl Sink for CommitFailsOnce {
    type Item = u32;
    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }
    async fn write(&mut self, batch: Vec<u32>) -> Result<()> {
        self.inner.write(batch).await
    }
    async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await
    }
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        self.inner.prepare(epoch).await
    }
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        if !self.failed {
            self.failed = true;
            return Err(Error::sink(
                "commit",
                format!("crash before committing {epoch}"),
            ));
        }
        self.inner.commit(epoch).await
    }
    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.inner.recover(checkpointed).await
    }
}

#[tokio::test]
async fn an_epoch_checkpointed_but_not_committed_is_committed_on_restart() {
    let dir = TempDir::new("tx-e2e-commit");
    let out = dir.path().join("out");
    let store = FileCheckpointStore::new(dir.path().join("ckpt")).unwrap();
    let exec = || {
        StreamExecutor::new()
            .max_batch(2)
            .checkpoint_every_records(4)
    };
    let sink = CommitFailsOnce {
        inner: TransactionalFileSink::open(&out).unwrap(),
        failed: false,
    };
    let p = Pipeline::new(
        "tx-commit",
        ScriptedSource::from_records((1..=10).collect()),
        transform::identity::<u32>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let err = exec().run(p).await.unwrap_err();
    assert!(
        err.to_string().contains("crash before committing 1"),
        "{err}"
    );
    let position = checkpointed_position(&store, "tx-commit").await;
    assert!(position > 0);
    assert!(read_committed::<u32>(&out).unwrap().is_empty());
    let probe = TransactionalFileSink::<u32>::open(&out).unwrap();
    assert_eq!(probe.prepared_epochs().unwrap(), vec![1]);

    let p = Pipeline::new(
        "tx-commit",
        ScriptedSource::from_records((1..=10).collect()),
        transform::identity::<u32>(),
        TransactionalFileSink::open(&out).unwrap(),
    )
    .with_checkpoint_store(store.clone());
    let report = exec().run(p).await.unwrap();
    assert_eq!(report.records_read, 10 - position);
    assert_eq!(
        read_committed::<u32>(&out).unwrap(),
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn keyed_sink_in_a_pipeline_restarted_after_a_failure_has_the_right_table() {
    let dir = TempDir::new("keyed-e2e");
    let path = dir.path().join("table.ndjson");
    let store = FileCheckpointStore::new(dir.path().join("ckpt")).unwrap();
    let exec = || {
        StreamExecutor::new()
            .max_batch(2)
            .checkpoint_every_records(4)
    };
    let keyed = || transform::identity::<u32>().map(|x| (format!("k{}", x % 3), x));

    let p = Pipeline::new(
        "keyed-e2e",
        ScriptedSource::new(failing_script(10)),
        keyed(),
        KeyedFileSink::<String, u32>::open(&path).unwrap(),
    )
    .with_checkpoint_store(store.clone());
    exec().run(p).await.unwrap_err();

    let p = Pipeline::new(
        "keyed-e2e",
        ScriptedSource::from_records((1..=10).collect()),
        keyed(),
        KeyedFileSink::<String, u32>::open(&path).unwrap(),
    )
    .with_checkpoint_store(store.clone());
    exec().run(p).await.unwrap();

    let expected: BTreeMap<String, u32> = (1..=10u32).map(|x| (format!("k{}", x % 3), x)).collect();
    assert_eq!(KeyedFileSink::<String, u32>::read(&path).unwrap(), expected);
}
