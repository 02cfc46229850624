//! Deterministic faults at named points of the checkpoint protocol (the `fail` crate;
//! run with `--features failpoints`). Each point fails one checkpoint; the test checks
//! what is durable, committed and acked at that moment, then restarts and checks the
//! output holds every record exactly once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use batchstream::checkpoint::{CheckpointStore, FileCheckpointStore};
use batchstream::testing::{ScriptedSource, TxCollectSink};
use batchstream::transform;
use batchstream::{CheckpointError, Error, Pipeline, StreamExecutor};
use fail::FailScenario;

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bs-failpoints-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn exec() -> StreamExecutor {
    StreamExecutor::new()
        .max_batch(10)
        .checkpoint_every_records(10)
}

/// For each point: which checkpoint epoch the store holds after the second checkpoint
/// failed there, and how many records the sink has committed.
const POINTS: &[(&str, u64, usize)] = &[
    ("batchstream::sink::before_flush", 1, 10),
    ("batchstream::sink::after_flush", 1, 10),
    ("batchstream::sink::after_prepare", 1, 10),
    ("batchstream::checkpoint::after_temp_write", 1, 10),
    // The new checkpoint is in place, but the executor saw the save fail: it did not
    // commit; the restart's recovery does.
    ("batchstream::checkpoint::after_rename", 2, 10),
    ("batchstream::checkpoint::before_dir_fsync", 2, 10),
    ("batchstream::sink::after_commit", 2, 20),
    ("batchstream::source::before_ack", 2, 20),
];

#[tokio::test]
async fn every_point_fails_cleanly_and_a_restart_is_exactly_once() {
    for &(point, stored_epoch, committed) in POINTS {
        let scenario = FailScenario::setup();
        let dir = temp_dir("points");
        let store = FileCheckpointStore::new(&dir).unwrap();
        let source = ScriptedSource::from_records((0..30u64).collect());
        let acks = source.clone();
        let (sink, tx) = TxCollectSink::new();
        // Pass the first checkpoint, fail the second.
        fail::cfg(point, "1*off->return(injected)").unwrap();
        let p = Pipeline::new("fp", source, transform::identity::<u64>(), sink)
            .with_checkpoint_store(store.clone());
        let err = exec().run(p).await.unwrap_err();
        fail::remove(point);
        assert!(
            err.to_string().contains("injected")
                || err.to_string().contains(point.rsplit("::").next().unwrap()),
            "{point}: {err}"
        );
        let ck = store.load("fp").await.unwrap().expect("a checkpoint");
        assert_eq!(ck.epoch, stored_epoch, "{point}: stored epoch");
        assert_eq!(
            tx.committed().len(),
            committed,
            "{point}: committed records"
        );
        assert_eq!(
            acks.acked(),
            vec![10],
            "{point}: acked only what was saved before"
        );

        let p = Pipeline::new(
            "fp",
            ScriptedSource::from_records((0..30u64).collect()),
            transform::identity::<u64>(),
            TxCollectSink::resume(&tx),
        )
        .with_checkpoint_store(store)
        .require_exactly_once();
        let report = exec().run(p).await.unwrap();
        assert_eq!(report.resumed_from_epoch, Some(stored_epoch), "{point}");
        assert_eq!(tx.committed(), (0..30).collect::<Vec<_>>(), "{point}");
        std::fs::remove_dir_all(&dir).ok();
        scenario.teardown();
    }
}

#[tokio::test]
async fn a_full_disk_while_saving_is_a_typed_error_and_the_previous_checkpoint_stays() {
    let scenario = FailScenario::setup();
    let dir = temp_dir("enospc");
    let store = FileCheckpointStore::new(&dir).unwrap();
    let source = ScriptedSource::from_records((0..30u64).collect());
    let acks = source.clone();
    let (sink, tx) = TxCollectSink::new();
    fail::cfg(
        "batchstream::checkpoint::after_temp_write",
        "1*off->return(enospc)",
    )
    .unwrap();
    let p = Pipeline::new("full", source, transform::identity::<u64>(), sink)
        .with_checkpoint_store(store.clone());
    let err = exec().run(p).await.unwrap_err();
    fail::remove("batchstream::checkpoint::after_temp_write");
    let Error::Checkpoint(ck_err) = &err else {
        panic!("expected a checkpoint error, got {err}")
    };
    assert!(ck_err.is_storage_full(), "{ck_err}");
    assert!(!err.is_retryable(), "a full disk is not retried blindly");
    assert!(
        err.to_string().contains(".ckpt.tmp"),
        "names the file: {err}"
    );
    assert_eq!(store.load("full").await.unwrap().unwrap().epoch, 1);
    assert_eq!(acks.acked(), vec![10]);
    assert_eq!(tx.committed().len(), 10);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the partial file is removed: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
    scenario.teardown();
}

/// A real full file system: a 64 KiB tmpfs filled to the brim (needs root to mount;
/// CI runs as root).
#[tokio::test]
async fn a_really_full_tmpfs_gives_storage_full_and_keeps_the_previous_checkpoint() {
    // No fail point is configured, but hold the scenario lock so that no other test's
    // fail point fires in this one.
    let scenario = FailScenario::setup();
    let dir = temp_dir("tmpfs");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "mounting a tmpfs at {} failed: this test needs root (CI runs as root)",
        dir.display()
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = Unmount(dir.clone());

    let store = FileCheckpointStore::new(&dir).unwrap();
    let mut ck = batchstream::Checkpoint::new("tmpfs");
    ck.epoch = 1;
    store.save(&ck).await.unwrap();
    // Fill the file system.
    let filler = dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    ck.epoch = 2;
    ck.transform_state = serde_json::json!({ "big": "x".repeat(8 * 1024) });
    let err = store.save(&ck).await.unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    assert!(matches!(&err, CheckpointError::Io { path, .. } if path.starts_with(&dir)));
    assert_eq!(store.load("tmpfs").await.unwrap().unwrap().epoch, 1);
    // Space again: saving works.
    std::fs::remove_file(&filler).unwrap();
    store.save(&ck).await.unwrap();
    assert_eq!(store.load("tmpfs").await.unwrap().unwrap().epoch, 2);
    drop(_guard);
    scenario.teardown();
}
