//! Fault tests of `FileCheckpointStore`, the embedded default checkpoint store.
//!
//! The contract under test (see `src/checkpoint/mod.rs` and `src/checkpoint/file.rs`):
//! a damaged newest checkpoint is `CheckpointError::Corrupt` naming the damaged file,
//! never `Ok(None)` (a silent restart from the beginning), never an older checkpoint,
//! never a panic; `load_previous` recovers the generation before it; a leftover
//! `.tmp` file of an interrupted save is not a checkpoint; and a pipeline whose
//! checkpoint is corrupt fails before it writes anything.
//!
//! Only proptest and std are used for the tests themselves (tokio drives the async
//! store, serde_json builds the checkpoint fields). Every test and every proptest case
//! that needs its own directory gets a unique one under `std::env::temp_dir()`,
//! removed when it ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use batchstream::adapters::CollectSink;
use batchstream::checkpoint::{Checkpoint, CheckpointStore, FileCheckpointStore};
use batchstream::testing::{ScriptedSource, run_with};
use batchstream::transform;
use batchstream::{CheckpointError, Error, ExecutorKind, Outcome, Pipeline, StreamExecutor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A directory under the system temp dir, unique per test and per case, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "batchstream-ckpt-file-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn store(&self) -> FileCheckpointStore {
        FileCheckpointStore::new(&self.0).expect("open store")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A permission test may have left the directory read-only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o700));
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One runtime for the tests that drive the async store from plain `#[test]`s.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

fn load(store: &FileCheckpointStore, id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
    RT.block_on(store.load(id))
}

fn save(store: &FileCheckpointStore, ck: &Checkpoint) -> Result<(), CheckpointError> {
    RT.block_on(store.save(ck))
}

/// The path of generation `generation` of `id`, as the store names it.
fn gen_path(dir: &Path, id: &str, generation: u64) -> PathBuf {
    dir.join(format!("{id}.{generation:020}.ckpt"))
}

/// A checkpoint with every field set, so the file has a body worth damaging.
fn sample(id: &str, epoch: u64) -> Checkpoint {
    let mut ck = Checkpoint::new(id);
    ck.epoch = epoch;
    ck.source_position = Some(json!({ "offset": epoch * 100, "line": epoch }));
    ck.transform_state = json!({ "totals": { "ann": 42, "bob": -5 }, "seen": [1, 2, 3] });
    ck.sink_token = Some(json!(format!("tx-{epoch}")));
    ck.completed_runs = ["2024-05-01", "2024-05-02"]
        .into_iter()
        .map(String::from)
        .collect();
    ck
}

/// Asserts `r` is `Corrupt` naming exactly `path`; `what` describes the damage.
#[track_caller]
fn assert_corrupt(r: Result<Option<Checkpoint>, CheckpointError>, path: &Path, what: &str) {
    match r {
        Err(CheckpointError::Corrupt { path: p, .. }) => {
            assert_eq!(p, path, "{what}: Corrupt names the wrong file")
        }
        other => panic!("{what}: expected CheckpointError::Corrupt naming {path:?}, got {other:?}"),
    }
}

/// CRC-32 (IEEE), bit by bit: enough to craft files with a valid checksum.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// Encodes a file as documented in `src/checkpoint/file.rs`: magic, generation,
/// body length, CRC-32 of (generation, length, body), body.
fn encode(generation: u64, body: &[u8]) -> Vec<u8> {
    let g = generation.to_le_bytes();
    let n = (body.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(28 + body.len());
    out.extend_from_slice(b"BSCKPT01");
    out.extend_from_slice(&g);
    out.extend_from_slice(&n);
    out.extend_from_slice(&crc32(&[&g, &n, body]).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether this process can read a file whatever its mode (root, or CAP_DAC_OVERRIDE):
/// permission tests mean nothing then.
#[cfg(unix)]
fn ignores_permissions(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("permission-probe");
    fs::write(&probe, b"x").unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o000)).unwrap();
    let readable = fs::read(&probe).is_ok();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(&probe).unwrap();
    readable
}

/// File names and contents of a directory, for "nothing changed" checks.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Never write a regressions file next to this test.
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------
// Sanity: the format is what the docs say, so crafted files below are meaningful.
// ---------------------------------------------------------------------------

#[test]
fn on_disk_format_matches_its_documentation() {
    let tmp = TempDir::new("format");
    let store = tmp.store();
    let ck = sample("p1", 3);
    save(&store, &ck).unwrap();
    let path = store.latest_path("p1").unwrap().unwrap();
    assert_eq!(path, gen_path(tmp.path(), "p1", 1));
    let bytes = fs::read(&path).unwrap();
    let body = serde_json::to_vec(&ck).unwrap();
    assert_eq!(bytes, encode(1, &body));
    assert_eq!(load(&store, "p1").unwrap(), Some(ck));
}

// ---------------------------------------------------------------------------
// Truncation, bit flips, garbage
// ---------------------------------------------------------------------------

#[test]
fn every_truncation_is_corrupt_and_names_the_file() {
    let tmp = TempDir::new("trunc");
    let store = tmp.store();
    // Two generations: a truncated newest must not fall back to the previous one.
    save(&store, &sample("p1", 1)).unwrap();
    let newest = sample("p1", 2);
    save(&store, &newest).unwrap();
    let path = store.latest_path("p1").unwrap().unwrap();
    let full = fs::read(&path).unwrap();
    assert!(full.len() > 28, "the file has a body");

    for len in 0..full.len() {
        fs::write(&path, &full[..len]).unwrap();
        assert_corrupt(
            load(&store, "p1"),
            &path,
            &format!("truncated to {len} of {} bytes", full.len()),
        );
    }
    fs::write(&path, &full).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(newest));
}

#[test]
fn any_single_bit_flip_is_corrupt() {
    let tmp = TempDir::new("bitflip");
    let store = tmp.store();
    let ck = sample("p1", 7);
    save(&store, &ck).unwrap();
    let path = store.latest_path("p1").unwrap().unwrap();
    let good = fs::read(&path).unwrap();

    runner(1000)
        .run(&(0..good.len(), 0u8..8), |(offset, bit)| {
            let mut bytes = good.clone();
            bytes[offset] ^= 1 << bit;
            fs::write(&path, &bytes).unwrap();
            match load(&store, "p1") {
                Err(CheckpointError::Corrupt { path: p, .. }) => prop_assert_eq!(&p, &path),
                other => prop_assert!(
                    false,
                    "bit {} of byte {} flipped: expected Corrupt, got {:?}",
                    bit,
                    offset,
                    other
                ),
            }
            Ok(())
        })
        .unwrap();

    fs::write(&path, &good).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(ck));
}

#[test]
fn a_flipped_bit_at_every_byte_is_corrupt_and_the_previous_generation_loads_on_request() {
    // Exhaustive over the bytes of a real file (one bit per byte, the bit rotating),
    // with a previous generation present: never a panic, never a silent fallback or a
    // restart from zero, and the previous generation still available by hand.
    let tmp = TempDir::new("every-byte");
    let store = tmp.store();
    let previous = sample("p1", 1);
    save(&store, &previous).unwrap();
    let newest = sample("p1", 2);
    save(&store, &newest).unwrap();
    let path = store.latest_path("p1").unwrap().unwrap();
    let good = fs::read(&path).unwrap();
    for offset in 0..good.len() {
        let mut bytes = good.clone();
        bytes[offset] ^= 1 << (offset % 8);
        fs::write(&path, &bytes).unwrap();
        assert_corrupt(
            load(&store, "p1"),
            &path,
            &format!("bit {} of byte {offset} flipped", offset % 8),
        );
        assert_eq!(
            store.load_previous("p1").unwrap(),
            Some(previous.clone()),
            "byte {offset}: the previous generation loads on request"
        );
    }
    fs::write(&path, &good).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(newest));
}

#[test]
fn zero_length_file_is_corrupt_not_absent() {
    // As the only generation: it must not read as "never checkpointed".
    let tmp = TempDir::new("empty-only");
    let store = tmp.store();
    let path = gen_path(tmp.path(), "p1", 1);
    fs::write(&path, b"").unwrap();
    assert_corrupt(load(&store, "p1"), &path, "zero-length only generation");

    // As the newest generation over a valid one: no silent fallback either.
    let tmp = TempDir::new("empty-newest");
    let store = tmp.store();
    save(&store, &sample("p1", 1)).unwrap();
    let path = gen_path(tmp.path(), "p1", 2);
    fs::write(&path, b"").unwrap();
    assert_corrupt(load(&store, "p1"), &path, "zero-length newest generation");
}

#[test]
fn random_garbage_is_corrupt() {
    let tmp = TempDir::new("garbage");
    let store = tmp.store();
    let path = gen_path(tmp.path(), "p1", 1);
    runner(256)
        .run(&prop::collection::vec(any::<u8>(), 0..2048), |bytes| {
            fs::write(&path, &bytes).unwrap();
            match load(&store, "p1") {
                Err(CheckpointError::Corrupt { path: p, .. }) => prop_assert_eq!(&p, &path),
                other => prop_assert!(false, "{} garbage bytes gave {:?}", bytes.len(), other),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn garbage_after_valid_magic_is_corrupt() {
    // Past the magic check: exercises the length and checksum checks.
    let tmp = TempDir::new("magic-garbage");
    let store = tmp.store();
    let path = gen_path(tmp.path(), "p1", 1);
    runner(256)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |rest| {
            let mut bytes = b"BSCKPT01".to_vec();
            bytes.extend_from_slice(&rest);
            fs::write(&path, &bytes).unwrap();
            match load(&store, "p1") {
                Err(CheckpointError::Corrupt { path: p, .. }) => prop_assert_eq!(&p, &path),
                other => prop_assert!(false, "magic + {} bytes gave {:?}", rest.len(), other),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn valid_checksum_over_a_body_that_is_not_a_checkpoint_is_corrupt() {
    let tmp = TempDir::new("bad-body");
    let store = tmp.store();
    let path = gen_path(tmp.path(), "p1", 1);
    let mut bodies: Vec<Vec<u8>> = [
        "",
        "null",
        "{}",
        "[]",
        "\"p1\"",
        "{\"pipeline_id\":\"p1\"}",
        "{\"pipeline_id\":\"p1\",\"epoch\":-1}",
        "not json at all",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // A valid checkpoint followed by trailing bytes.
    let mut trailing = serde_json::to_vec(&sample("p1", 1)).unwrap();
    trailing.extend_from_slice(b" {}");
    bodies.push(trailing);
    // Invalid UTF-8.
    bodies.push(vec![0xff, 0xfe, 0x00]);

    for body in bodies {
        fs::write(&path, encode(1, &body)).unwrap();
        assert_corrupt(
            load(&store, "p1"),
            &path,
            &format!("body {:?}", String::from_utf8_lossy(&body)),
        );
    }
}

#[test]
fn valid_file_of_another_pipeline_renamed_is_corrupt() {
    let tmp = TempDir::new("other-id");
    let store = tmp.store();
    save(&store, &sample("other", 1)).unwrap();
    let theirs = store.latest_path("other").unwrap().unwrap();
    let ours = gen_path(tmp.path(), "p1", 1);
    fs::rename(&theirs, &ours).unwrap();
    assert!(load(&store, "other").unwrap().is_none());
    assert_corrupt(load(&store, "p1"), &ours, "file of pipeline `other`");
}

/// The header holds the generation, under the checksum, but `read_file` never compares
/// it with the generation in the file name. A complete, older generation copied over
/// the newest one's name (a restored backup, a confused `cp`) is then loaded silently
/// as the newest: the pipeline resumes from a stale position without any error.
///
/// BUG (expected to fail until `read_file` in `src/checkpoint/file.rs` checks the
/// decoded generation against the generation in the file name).
#[test]
fn older_generation_under_the_newest_name_is_corrupt() {
    let tmp = TempDir::new("stale-gen");
    let store = tmp.store();
    save(&store, &sample("p1", 1)).unwrap();
    save(&store, &sample("p1", 2)).unwrap();
    let older = gen_path(tmp.path(), "p1", 1);
    let newest = gen_path(tmp.path(), "p1", 2);
    fs::copy(&older, &newest).unwrap();
    assert_corrupt(
        load(&store, "p1"),
        &newest,
        "generation 1's file saved under generation 2's name",
    );
}

// ---------------------------------------------------------------------------
// Recovery: previous generation, interrupted saves
// ---------------------------------------------------------------------------

#[test]
fn load_previous_recovers_after_the_newest_is_corrupted() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 4] = [
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("emptied", |b| b.clear()),
        ("bit flipped", |b| {
            let i = b.len() - 3;
            b[i] ^= 0x10;
        }),
        ("garbage appended", |b| b.extend_from_slice(b"\n\0garbage")),
    ];
    for (what, damage) in damages {
        let tmp = TempDir::new("previous");
        let store = tmp.store();
        let first = sample("p1", 1);
        let second = sample("p1", 2);
        save(&store, &first).unwrap();
        save(&store, &second).unwrap();
        assert_eq!(store.load_previous("p1").unwrap().as_ref(), Some(&first));

        let newest = store.latest_path("p1").unwrap().unwrap();
        let mut bytes = fs::read(&newest).unwrap();
        damage(&mut bytes);
        fs::write(&newest, &bytes).unwrap();

        assert_corrupt(load(&store, "p1"), &newest, what);
        assert_eq!(
            store.load_previous("p1").unwrap(),
            Some(first.clone()),
            "{what}: previous generation"
        );

        // Recovery by hand: save the previous generation again; it becomes the newest.
        save(&store, &first).unwrap();
        assert_eq!(load(&store, "p1").unwrap(), Some(first.clone()), "{what}");
        // The corrupt file is now the previous generation, and reported as such.
        assert_corrupt(
            store.load_previous("p1").map(|_| None),
            &newest,
            &format!("{what}, now previous"),
        );
    }
}

#[test]
fn load_previous_without_two_generations_is_none() {
    let tmp = TempDir::new("previous-none");
    let store = tmp.store();
    assert_eq!(store.load_previous("p1").unwrap(), None);
    save(&store, &sample("p1", 1)).unwrap();
    assert_eq!(store.load_previous("p1").unwrap(), None);
}

#[test]
fn leftover_tmp_file_of_an_interrupted_save_is_ignored() {
    let tmp = TempDir::new("tmp-leftover");
    let store = tmp.store();
    let first = sample("p1", 1);
    let second = sample("p1", 2);
    save(&store, &first).unwrap();
    save(&store, &second).unwrap();

    // Crash while writing generation 3: its `.tmp` holds garbage.
    let leftover = tmp.path().join(format!("p1.{:020}.ckpt.tmp", 3));
    fs::write(&leftover, b"half a checkpo").unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(second.clone()));
    assert_eq!(
        store.latest_path("p1").unwrap(),
        Some(gen_path(tmp.path(), "p1", 2))
    );
    assert_eq!(store.load_previous("p1").unwrap(), Some(first));

    // The next save succeeds, replaces the leftover, and is what `load` returns.
    let third = sample("p1", 3);
    save(&store, &third).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(third.clone()));
    assert_eq!(store.load_previous("p1").unwrap(), Some(second));
    assert!(
        !leftover.exists(),
        "the leftover .tmp was replaced and renamed"
    );
    assert_eq!(
        store.latest_path("p1").unwrap(),
        Some(gen_path(tmp.path(), "p1", 3))
    );

    // Crash after the `.tmp` was complete but before the rename: the rename is the
    // commit point, so a complete `.tmp` is not a checkpoint either.
    let complete_tmp = tmp.path().join(format!("p1.{:020}.ckpt.tmp", 4));
    let fourth = sample("p1", 4);
    fs::write(
        &complete_tmp,
        encode(4, &serde_json::to_vec(&fourth).unwrap()),
    )
    .unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(third));
    save(&store, &fourth).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(fourth));
}

#[test]
fn leftover_tmp_with_no_complete_generation_reads_as_absent() {
    // A crash during the very first save: nothing was ever committed.
    let tmp = TempDir::new("tmp-first");
    let store = tmp.store();
    fs::write(
        tmp.path().join(format!("p1.{:020}.ckpt.tmp", 1)),
        b"\0\0\0garbage",
    )
    .unwrap();
    assert_eq!(load(&store, "p1").unwrap(), None);
    let ck = sample("p1", 1);
    save(&store, &ck).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(ck));
}

#[test]
fn only_two_generations_are_kept() {
    let tmp = TempDir::new("keep-two");
    let store = tmp.store();
    for epoch in 1..=5 {
        save(&store, &sample("p1", epoch)).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [format!("p1.{:020}.ckpt", 4), format!("p1.{:020}.ckpt", 5)]
    );
}

#[test]
fn pipelines_with_prefix_ids_do_not_see_each_other() {
    let tmp = TempDir::new("prefix-ids");
    let store = tmp.store();
    let ids = ["a", "a.b", "a-b", "a.00000000000000000001", "a.1", "ab"];
    let mut saved = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let older = sample(id, i as u64 + 1);
        let newer = sample(id, i as u64 + 11);
        save(&store, &older).unwrap();
        save(&store, &newer).unwrap();
        saved.push((older, newer));
    }
    for (id, (older, newer)) in ids.iter().zip(saved) {
        assert_eq!(load(&store, id).unwrap(), Some(newer), "pipeline `{id}`");
        assert_eq!(
            store.load_previous(id).unwrap(),
            Some(older),
            "pipeline `{id}`"
        );
    }
    assert_eq!(load(&store, "a.b.c").unwrap(), None);
}

#[test]
fn invalid_ids_are_refused_not_treated_as_absent() {
    let tmp = TempDir::new("invalid-ids");
    let store = tmp.store();
    for bad in ["", ".", "..", "../p1", "a/b", ".hidden", "p 1", "p\u{e9}"] {
        match load(&store, bad) {
            Err(CheckpointError::InvalidId(id)) => assert_eq!(id, bad),
            other => panic!("id {bad:?}: expected InvalidId, got {other:?}"),
        }
        match save(&store, &Checkpoint::new(bad)) {
            Err(CheckpointError::InvalidId(id)) => assert_eq!(id, bad),
            other => panic!("id {bad:?}: expected InvalidId on save, got {other:?}"),
        }
    }
    assert!(fs::read_dir(tmp.path()).unwrap().next().is_none());
}

// ---------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------

/// JSON without floats (serde_json does not promise float round trips).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "(?s).{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(?s).{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    (
        "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,24}",
        any::<u64>(),
        prop::option::of(any::<u64>()),
        json_value(),
        // `Some(Value::Null)` does not round trip: see `some_null_fields_round_trip`.
        prop::option::of(json_value().prop_filter("not null", |v| !v.is_null())),
        prop::collection::btree_set("(?s).{0,16}", 0..6),
    )
        .prop_map(|(id, epoch, offset, state, token, runs)| {
            let mut ck = Checkpoint::new(id);
            ck.epoch = epoch;
            ck.source_position = offset.map(|n| json!({ "offset": n }));
            ck.transform_state = state;
            ck.sink_token = token;
            ck.completed_runs = runs;
            ck
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn save_then_load_round_trips(first in checkpoint(), second in checkpoint()) {
        let tmp = TempDir::new("roundtrip");
        let store = tmp.store();
        let id = first.pipeline_id.clone();
        let mut second = second;
        second.pipeline_id = id.clone();

        save(&store, &first).unwrap();
        prop_assert_eq!(load(&store, &id).unwrap(), Some(first.clone()));
        prop_assert_eq!(store.load_previous(&id).unwrap(), None);

        save(&store, &second).unwrap();
        prop_assert_eq!(load(&store, &id).unwrap(), Some(second));
        prop_assert_eq!(store.load_previous(&id).unwrap(), Some(first));
    }
}

/// `source_position` and `sink_token` are `Option<Value>`, encoded as plain JSON, so
/// `Some(Value::Null)` is written as `null` and read back as `None`: the file store
/// does not return what was saved (the memory store does). The driver stores
/// `Some(to_value(position))`, so a source whose position serializes to `null` (`()`,
/// `Option::None`, a unit struct) resumes differently after a file round trip: with
/// the memory store the executor calls `seek` (a source without `seek` fails with
/// `SeekUnsupported`), with the file store it silently does not.
///
/// BUG (expected to fail until `Checkpoint`'s serde representation in
/// `src/checkpoint/mod.rs` keeps `Some(Null)` apart from `None`).
#[test]
fn some_null_fields_round_trip() {
    let tmp = TempDir::new("some-null");
    let store = tmp.store();
    let mut ck = Checkpoint::new("p1");
    ck.epoch = 1;
    ck.source_position = Some(Value::Null);
    ck.sink_token = Some(Value::Null);
    save(&store, &ck).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(ck));
}

// ---------------------------------------------------------------------------
// Permissions (meaningless when the process ignores them, e.g. as root)
// ---------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn unreadable_newest_file_is_an_io_error_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("perm-file");
    if ignores_permissions(tmp.path()) {
        eprintln!("skipped: this process reads files whatever their mode (root?)");
        return;
    }
    let store = tmp.store();
    save(&store, &sample("p1", 1)).unwrap();
    save(&store, &sample("p1", 2)).unwrap();
    let newest = store.latest_path("p1").unwrap().unwrap();
    fs::set_permissions(&newest, fs::Permissions::from_mode(0o000)).unwrap();
    match load(&store, "p1") {
        Err(CheckpointError::Io { path, .. }) => assert_eq!(path, newest),
        other => panic!("expected Io naming {newest:?}, got {other:?}"),
    }
    fs::set_permissions(&newest, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(load(&store, "p1").unwrap().unwrap().epoch, 2);
}

#[cfg(unix)]
#[test]
fn unreadable_directory_is_an_io_error_not_absent() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("perm-dir-read");
    if ignores_permissions(tmp.path()) {
        eprintln!("skipped: this process reads files whatever their mode (root?)");
        return;
    }
    let store = tmp.store();
    save(&store, &sample("p1", 1)).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o000)).unwrap();
    let r = load(&store, "p1");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    match r {
        Err(CheckpointError::Io { path, .. }) => assert_eq!(path, tmp.path()),
        other => panic!("expected Io naming the directory, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn save_into_read_only_directory_fails_and_keeps_the_last_checkpoint() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("perm-dir-write");
    if ignores_permissions(tmp.path()) {
        eprintln!("skipped: this process writes files whatever their mode (root?)");
        return;
    }
    let store = tmp.store();
    let first = sample("p1", 1);
    save(&store, &first).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o500)).unwrap();
    let r = save(&store, &sample("p1", 2));
    let after = load(&store, "p1");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    match r {
        Err(CheckpointError::Io { path, .. }) => assert!(
            path.starts_with(tmp.path()),
            "the error names {path:?}, outside the store"
        ),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(after.unwrap(), Some(first));
    let second = sample("p1", 2);
    save(&store, &second).unwrap();
    assert_eq!(load(&store, "p1").unwrap(), Some(second));
}

// ---------------------------------------------------------------------------
// End to end: a corrupt checkpoint stops the next run before it writes anything
// ---------------------------------------------------------------------------

#[tokio::test]
async fn corrupt_checkpoint_fails_the_next_run_before_it_writes_anything() {
    let tmp = TempDir::new("e2e");
    let store = tmp.store();
    let id = "orders";
    let records: Vec<u32> = (0..20).collect();

    // First run: checkpoints every 4 records, so several generations are saved.
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        id,
        ScriptedSource::from_records(records.clone()),
        transform::identity::<u32>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let report = StreamExecutor::new()
        .max_batch(4)
        .checkpoint_every_records(4)
        .run(p)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert!(report.checkpoints >= 2, "{report}");
    assert_eq!(out.items(), records);
    assert_eq!(
        store.load(id).await.unwrap().unwrap().source_position,
        Some(json!(20))
    );

    // Damage the newest generation.
    let newest = store.latest_path(id).unwrap().unwrap();
    let full = fs::read(&newest).unwrap();
    fs::write(&newest, &full[..full.len() / 2]).unwrap();
    let before = listing(tmp.path());

    // Second run, under each executor: it fails on the checkpoint, writes nothing,
    // acks nothing, and leaves the store as it was.
    for kind in [
        ExecutorKind::Stream,
        ExecutorKind::MicroBatch,
        ExecutorKind::Batch,
    ] {
        let (sink, out) = CollectSink::new();
        let source = ScriptedSource::from_records((100..130).collect::<Vec<u32>>());
        let probe = source.clone();
        let p = Pipeline::new(id, source, transform::identity::<u32>(), sink)
            .with_checkpoint_store(store.clone());
        match run_with(kind, p).await {
            Err(Error::Checkpoint(CheckpointError::Corrupt { path, .. })) => {
                assert_eq!(path, newest, "{kind}")
            }
            other => panic!("{kind}: expected Error::Checkpoint(Corrupt), got {other:?}"),
        }
        assert!(out.is_empty(), "{kind} wrote {:?}", out.items());
        assert!(probe.acked().is_empty(), "{kind} acked {:?}", probe.acked());
        assert_eq!(
            listing(tmp.path()),
            before,
            "{kind} changed the checkpoint directory"
        );
    }

    // Recovery by hand: re-save the previous generation; a run resumes after it.
    let previous = store.load_previous(id).unwrap().unwrap();
    let resume_at: u64 = serde_json::from_value(previous.source_position.clone().unwrap()).unwrap();
    assert!(resume_at < 20);
    store.save(&previous).await.unwrap();
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        id,
        ScriptedSource::from_records(records.clone()),
        transform::identity::<u32>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let report = StreamExecutor::new().run(p).await.unwrap();
    assert_eq!(report.resumed_from_epoch, Some(previous.epoch));
    assert_eq!(out.items(), records[resume_at as usize..].to_vec());
}
