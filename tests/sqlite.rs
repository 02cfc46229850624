//! The SQLite checkpoint store: round trips, reopening, several pipelines, damaged rows,
//! and a pipeline resuming from it.

mod support;

use batchstream::adapters::UpsertSink;
use batchstream::checkpoint::{Checkpoint, CheckpointStore};
use batchstream::connectors::sqlite::SqliteCheckpointStore;
use batchstream::testing::{FailingSink, ScriptedSource, Step};
use batchstream::transform::{self, TransformExt};
use batchstream::{CheckpointError, MicroBatchExecutor, Pipeline, StreamExecutor, Trigger};
use support::TempFile;

fn checkpoint(id: &str, epoch: u64, position: u64) -> Checkpoint {
    let mut ck = Checkpoint::new(id);
    ck.epoch = epoch;
    ck.source_position = Some(position.into());
    ck.transform_state = serde_json::json!({ "sum": position * 2 });
    ck.completed_runs.insert(format!("run-{epoch}"));
    ck
}

/// Opens the store's file with a second connection to change it behind its back.
fn raw(file: &TempFile) -> rusqlite::Connection {
    rusqlite::Connection::open(file.path()).unwrap()
}

#[tokio::test]
async fn saves_survive_dropping_and_reopening_the_store() {
    let file = TempFile::new("ck.db");
    let store = SqliteCheckpointStore::open(file.path()).await.unwrap();
    assert_eq!(store.load("orders").await.unwrap(), None);
    store.save(&checkpoint("orders", 1, 10)).await.unwrap();
    let second = checkpoint("orders", 2, 25);
    store.save(&second).await.unwrap();
    assert_eq!(store.load("orders").await.unwrap(), Some(second.clone()));
    drop(store);

    let reopened = SqliteCheckpointStore::open(file.path()).await.unwrap();
    assert_eq!(reopened.load("orders").await.unwrap(), Some(second));
    let mode: String = raw(&file)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let rows: i64 = raw(&file)
        .query_row("SELECT count(*) FROM batchstream_checkpoints", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 1, "a save replaces the pipeline's row");
    drop(reopened);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.path().display()));
    }
}

#[tokio::test]
async fn two_pipelines_keep_separate_checkpoints() {
    let file = TempFile::new("two.db");
    let store = SqliteCheckpointStore::open(file.path()).await.unwrap();
    let a = checkpoint("a", 3, 30);
    let b = checkpoint("b", 7, 70);
    store.save(&a).await.unwrap();
    store.save(&b).await.unwrap();
    let a2 = checkpoint("a", 4, 40);
    store.save(&a2).await.unwrap();
    assert_eq!(store.load("a").await.unwrap(), Some(a2));
    assert_eq!(store.load("b").await.unwrap(), Some(b));
    assert_eq!(store.load("c").await.unwrap(), None);
}

#[tokio::test]
async fn a_corrupt_body_is_a_typed_error_naming_the_pipeline() {
    let file = TempFile::new("corrupt.db");
    let store = SqliteCheckpointStore::open(file.path()).await.unwrap();
    store.save(&checkpoint("good", 1, 1)).await.unwrap();
    store.save(&checkpoint("bad", 1, 1)).await.unwrap();
    store.save(&checkpoint("moved", 1, 1)).await.unwrap();
    let conn = raw(&file);
    conn.execute(
        "UPDATE batchstream_checkpoints SET body = '{\"pipeline_id\": \"bad\", \"epo' WHERE pipeline_id = 'bad'",
        [],
    )
    .unwrap();
    conn.execute(
        "UPDATE batchstream_checkpoints SET epoch = 9 WHERE pipeline_id = 'moved'",
        [],
    )
    .unwrap();

    let err = store.load("bad").await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("bad"), "{text}");
    assert!(text.contains("does not decode"), "{text}");

    let err = store.load("moved").await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("epoch column"), "{err}");

    // The damage stays confined to its row.
    assert_eq!(store.load("good").await.unwrap().unwrap().epoch, 1);
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_corrupt() {
    let file = TempFile::new("garbage.db");
    file.write(vec![0x5a; 8192]);
    let err = SqliteCheckpointStore::open(file.path()).await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.db"), "{err}");
}

#[tokio::test]
async fn in_memory_store_is_shared_by_clones() {
    let store = SqliteCheckpointStore::in_memory().unwrap();
    let clone = store.clone();
    store.save(&checkpoint("p", 5, 50)).await.unwrap();
    assert_eq!(clone.load("p").await.unwrap().unwrap().epoch, 5);
    assert_eq!(clone.path().to_str(), Some(":memory:"));
}

#[tokio::test]
async fn a_pipeline_resumes_from_the_sqlite_store_after_a_failure() {
    let file = TempFile::new("resume.db");
    let records: Vec<u32> = (0..40).collect();
    let logic = || {
        transform::identity::<u32>()
            .key_by(|x| x % 4)
            .fold(0u32, |acc, x| *acc += x)
    };
    // First run: checkpoints every 8 records, the sink fails on its 3rd write.
    let (failing, _) = FailingSink::<(u32, u32)>::new([3]);
    let store = SqliteCheckpointStore::open(file.path()).await.unwrap();
    let p = Pipeline::new(
        "sums",
        ScriptedSource::new([Step::Records(records.clone())]),
        logic(),
        failing,
    )
    .with_checkpoint_store(store);
    let err = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(4)
        .run(p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");

    // Second run, from a reopened store: resumes after the last checkpoint.
    let store = SqliteCheckpointStore::open(file.path()).await.unwrap();
    let resumed_from = store.load("sums").await.unwrap().unwrap();
    assert_eq!(resumed_from.source_position, Some(8.into()));
    let (sink, table) = UpsertSink::new();
    let p = Pipeline::new(
        "sums",
        ScriptedSource::from_records(records.clone()),
        logic(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let report = MicroBatchExecutor::new(Trigger::AvailableNow)
        .run(p)
        .await
        .unwrap();
    assert_eq!(report.resumed_from_epoch, Some(resumed_from.epoch));
    assert_eq!(report.records_read, 32);
    // The fold state came back from SQLite: the sums cover all 40 records.
    let expected: std::collections::BTreeMap<u32, u32> = (0..4)
        .map(|k| (k, records.iter().filter(|x| *x % 4 == k).sum()))
        .collect();
    assert_eq!(table.snapshot(), expected);
    assert_eq!(
        store.load("sums").await.unwrap().unwrap().source_position,
        Some(40.into())
    );
}
