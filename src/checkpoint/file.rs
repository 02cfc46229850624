//! The embedded default checkpoint store: one small file per generation.
//!
//! # On-disk format
//! `<dir>/<pipeline_id>.<generation, 20 digits>.ckpt`, containing
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `BSCKPT01` |
//! | 8 | generation, little-endian u64 |
//! | 8 | body length, little-endian u64 |
//! | 4 | CRC-32 of generation, length and body, little-endian |
//! | n | body: the checkpoint as JSON |
//!
//! # Save protocol
//! Write `<name>.tmp`, fsync it, rename it to `<name>`, fsync the directory, then
//! delete generations older than the previous one. A crash at any point leaves the
//! previous generation intact; a damaged newest file is reported as
//! [`CheckpointError::Corrupt`], never skipped silently (use
//! [`FileCheckpointStore::load_previous`] to recover by hand).

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Checkpoint, CheckpointStore};
use crate::error::CheckpointError;
use crate::failpoint::failpoint;

const MAGIC: &[u8; 8] = b"BSCKPT01";
const HEADER_LEN: usize = 8 + 8 + 8 + 4;

/// Stores checkpoints as checksummed files in a directory.
///
/// ```
/// use batchstream::checkpoint::{Checkpoint, CheckpointStore, FileCheckpointStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("bs-doc-{}", std::process::id()));
/// let store = FileCheckpointStore::new(&dir)?;
/// let mut ck = Checkpoint::new("daily-sales");
/// ck.epoch = 7;
/// store.save(&ck).await?;
/// assert_eq!(store.load("daily-sales").await?.unwrap().epoch, 7);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    /// A store in `dir`, created if missing.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if the directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, CheckpointError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(FileCheckpointStore { dir })
    }

    /// Decodes the bytes of a checkpoint file (as read from `path`, which only names it
    /// in errors): checks the magic bytes, the length and the CRC-32, then decodes the
    /// body. Returns the generation the file holds and the checkpoint. Any damage is a
    /// [`CheckpointError::Corrupt`] naming `path`; no input makes it panic (a fuzz
    /// target checks that: see `fuzz/`).
    ///
    /// # Errors
    /// [`CheckpointError::Corrupt`].
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<(u64, Checkpoint), CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (generation, body) = decode(bytes).map_err(corrupt)?;
        let ck: Checkpoint = serde_json::from_slice(body).map_err(|e| {
            corrupt(format!(
                "checksum matches but the body does not decode: {e}"
            ))
        })?;
        Ok((generation, ck))
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the newest generation of `pipeline_id`, if any.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidId`] or [`CheckpointError::Io`].
    pub fn latest_path(&self, pipeline_id: &str) -> Result<Option<PathBuf>, CheckpointError> {
        Ok(self
            .generations(pipeline_id)?
            .pop()
            .map(|g| self.path_for(pipeline_id, g)))
    }

    /// The generation before the newest one, for recovery by hand when the newest is
    /// corrupt.
    ///
    /// # Errors
    /// As [`CheckpointStore::load`].
    pub fn load_previous(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut gens = self.generations(pipeline_id)?;
        gens.pop();
        match gens.pop() {
            Some(g) => read_file(&self.path_for(pipeline_id, g), pipeline_id, g).map(Some),
            None => Ok(None),
        }
    }

    fn path_for(&self, pipeline_id: &str, generation: u64) -> PathBuf {
        self.dir
            .join(format!("{pipeline_id}.{generation:020}.ckpt"))
    }

    /// Generations present on disk for `pipeline_id`, ascending.
    fn generations(&self, pipeline_id: &str) -> Result<Vec<u64>, CheckpointError> {
        validate_id(pipeline_id)?;
        let io_err = |source| CheckpointError::Io {
            path: self.dir.clone(),
            source,
        };
        let prefix = format!("{pipeline_id}.");
        let mut gens = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some(digits) = rest.strip_suffix(".ckpt") else {
                continue;
            };
            if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(g) = digits.parse::<u64>() {
                    gens.push(g);
                }
            }
        }
        gens.sort_unstable();
        Ok(gens)
    }

    fn load_sync(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.generations(pipeline_id)?.pop() {
            Some(g) => read_file(&self.path_for(pipeline_id, g), pipeline_id, g).map(Some),
            None => Ok(None),
        }
    }

    /// Saves a checkpoint of pipeline `id` whose JSON is `body`.
    fn save_sync(&self, id: &str, body: &[u8]) -> Result<(), CheckpointError> {
        let gens = self.generations(id)?;
        let generation = gens.last().map_or(1, |g| g + 1);
        let bytes = encode(generation, body);

        let path = self.path_for(id, generation);
        let tmp = path.with_extension("ckpt.tmp");
        let io_at = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CheckpointError::Io { path: p, source }
        };
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })();
        if let Err(source) = written {
            // A full disk, say: remove the partial file so that it takes no space; the
            // previous generation is untouched and still loads.
            let _ = fs::remove_file(&tmp);
            return Err(CheckpointError::Io { path: tmp, source });
        }
        failpoint!("batchstream::checkpoint::after_temp_write", |arg| {
            let _ = fs::remove_file(&tmp);
            Err(CheckpointError::Io {
                path: tmp.clone(),
                source: crate::failpoint::io_error("after_temp_write", arg),
            })
        });
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        failpoint!("batchstream::checkpoint::after_rename", |arg| Err(
            CheckpointError::Io {
                path: path.clone(),
                source: crate::failpoint::io_error("after_rename", arg),
            }
        ));
        failpoint!("batchstream::checkpoint::before_dir_fsync", |arg| Err(
            CheckpointError::Io {
                path: self.dir.clone(),
                source: crate::failpoint::io_error("before_dir_fsync", arg),
            }
        ));
        sync_dir(&self.dir).map_err(io_at(&self.dir))?;

        // Keep the new and the previous generation; older ones are no longer needed.
        for old in gens.iter().rev().skip(1) {
            let _ = fs::remove_file(self.path_for(id, *old));
        }
        Ok(())
    }
}

fn validate_id(id: &str) -> Result<(), CheckpointError> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::InvalidId(id.to_owned()))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn checksum(generation: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&(body.len() as u64).to_le_bytes());
    h.update(body);
    h.finalize()
}

fn encode(generation: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(generation, body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a checkpoint file's bytes, checking magic, length and checksum.
fn decode(bytes: &[u8]) -> Result<(u64, &[u8]), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated header: {} bytes, expected at least {HEADER_LEN}",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a batchstream checkpoint (bad magic bytes)".into());
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let generation = word(8);
    let len = word(16);
    let expected = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(format!(
            "length mismatch: header says {len} body bytes, file has {}",
            body.len()
        ));
    }
    let actual = checksum(generation, body);
    if actual != expected {
        return Err(format!(
            "checksum mismatch: expected {expected:#010x}, computed {actual:#010x}"
        ));
    }
    Ok((generation, body))
}

fn read_file(
    path: &Path,
    pipeline_id: &str,
    generation: u64,
) -> Result<Checkpoint, CheckpointError> {
    let bytes = fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (stored, ck) = FileCheckpointStore::decode(path, &bytes)?;
    if stored != generation {
        return Err(corrupt(format!(
            "holds generation {stored}, but its name says generation {generation}"
        )));
    }
    if ck.pipeline_id != pipeline_id {
        return Err(corrupt(format!(
            "belongs to pipeline `{}`, not `{pipeline_id}`",
            ck.pipeline_id
        )));
    }
    Ok(ck)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static,
) -> Result<T, CheckpointError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => Err(CheckpointError::Other(Box::new(join))),
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        let this = self.clone();
        let id = pipeline_id.to_owned();
        blocking(move || this.load_sync(&id))
    }

    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        let encoded = serde_json::to_vec(checkpoint).map_err(|e| CheckpointError::Serde {
            pipeline_id: checkpoint.pipeline_id.clone(),
            action: "encoded",
            message: e.to_string(),
        });
        let this = self.clone();
        let id = checkpoint.pipeline_id.clone();
        async move {
            let body = encoded?;
            blocking(move || this.save_sync(&id, &body)).await
        }
    }

    fn save_json(
        &self,
        checkpoint: &Checkpoint,
        json: &[u8],
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        // The caller encoded it already: write those bytes, do not encode again.
        let this = self.clone();
        let id = checkpoint.pipeline_id.clone();
        let body = json.to_vec();
        blocking(move || this.save_sync(&id, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "batchstream-ckpt-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn sample(epoch: u64) -> Checkpoint {
        let mut ck = Checkpoint::new("p1");
        ck.epoch = epoch;
        ck.source_position = Some(serde_json::json!({"offset": epoch * 100}));
        ck.transform_state = serde_json::json!([1, 2, 3]);
        ck.completed_runs.insert("2024-01-01".into());
        ck
    }

    #[test]
    fn save_then_load_round_trips_and_keeps_two_generations() {
        let dir = tempdir("rt");
        let store = FileCheckpointStore::new(&dir).unwrap();
        let saved: Vec<Checkpoint> = (1..=4).map(sample).collect();
        for ck in &saved {
            store
                .save_sync(&ck.pipeline_id, &serde_json::to_vec(ck).unwrap())
                .unwrap();
        }
        assert_eq!(store.load_sync("p1").unwrap().unwrap(), saved[3]);
        assert_eq!(store.load_previous("p1").unwrap().unwrap(), saved[2]);
        assert_eq!(store.generations("p1").unwrap(), vec![3, 4]);
        assert!(store.load_sync("other").unwrap().is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_truncation_is_detected_as_corrupt() {
        let dir = tempdir("trunc");
        let store = FileCheckpointStore::new(&dir).unwrap();
        store
            .save_sync("p1", &serde_json::to_vec(&sample(1)).unwrap())
            .unwrap();
        let path = store.latest_path("p1").unwrap().unwrap();
        let full = fs::read(&path).unwrap();
        for len in 0..full.len() {
            fs::write(&path, &full[..len]).unwrap();
            match store.load_sync("p1") {
                Err(CheckpointError::Corrupt { path: p, .. }) => assert_eq!(p, path),
                other => panic!("truncation to {len} bytes gave {other:?}"),
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_ids_are_refused() {
        let dir = tempdir("ids");
        let store = FileCheckpointStore::new(&dir).unwrap();
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(matches!(
                store.load_sync(bad),
                Err(CheckpointError::InvalidId(_))
            ));
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
