//! An exactly-once NDJSON sink: one file per committed epoch, made visible by atomic
//! renames.
//!
//! # On-disk layout
//! All files live in the sink's directory:
//!
//! | file | state |
//! |---|---|
//! | `_in-progress.ndjson` | records of the current epoch, not yet prepared |
//! | `_prepared-{epoch:020}.ndjson` | a prepared epoch: durable, not yet visible |
//! | `part-{epoch:020}.ndjson` | a committed epoch: visible output, one JSON value per line |
//!
//! Readers (see [`read_committed`]) look only at `part-*.ndjson`; names starting with
//! `_` are the sink's own, and are ignored by most tools that read a directory of
//! parts. Other files in the directory are left alone. An epoch that wrote no records
//! produces no file.
//!
//! # Protocol and crash safety
//! - `write` appends to `_in-progress.ndjson` (created or truncated at the first write
//!   of an epoch).
//! - `prepare(e)` writes the buffer, `fsync`s the file, renames it to
//!   `_prepared-{e}.ndjson` and `fsync`s the directory. Its content is complete and
//!   durable before it gets a prepared name.
//! - The executor then saves the checkpoint holding epoch `e`.
//! - `commit(e)` renames every prepared file of an epoch `≤ e` to `part-{epoch}.ndjson`
//!   and `fsync`s the directory. A repeated `commit(e)` finds nothing left to rename
//!   and succeeds without writing anything.
//! - `recover(Some(c))` deletes the in-progress file, commits the prepared epochs
//!   `≤ c` (their checkpoint is saved, so they are part of the output) and deletes the
//!   prepared epochs `> c` (their checkpoint was never saved: the source replays their
//!   records). `recover(None)` deletes every prepared and in-progress file.
//!
//! Each step changes the directory by one atomic rename or delete, so a kill at any
//! instant leaves each epoch in exactly one of the three states (a rename not yet
//! made durable by the directory `fsync` leaves either the old or the new name, both of
//! which `recover` handles). A committed name is only ever given to a complete,
//! `fsync`ed file, and only for an epoch whose checkpoint is saved; anything not
//! checkpointed is still under a `_` name and is discarded by `recover`, then replayed.
//! `recover` itself is idempotent, so a crash during it is cured by running it again.
//!
//! Epoch numbers name the files, so a directory belongs to one pipeline and its
//! checkpoint history: `recover` refuses a directory holding committed epochs that
//! are newer than the checkpoint (or any, when there is no checkpoint), rather than
//! overwriting them.
//!
//! There is no directory lock: two sinks writing to the same directory at once
//! corrupt each other's epochs. Give each pipeline its own directory.
//!
//! # Example
//! ```
//! use batchstream::Sink;
//! use batchstream::adapters::file::transactional::{TransactionalFileSink, read_committed};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let dir = std::env::temp_dir().join(format!("tx-sink-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let mut sink = TransactionalFileSink::<u32>::open(&dir)?;
//! sink.recover(None).await?;
//! sink.write(vec![1, 2]).await?;
//! sink.flush().await?;
//! sink.prepare(1).await?;
//! // Prepared, not visible yet: the checkpoint is saved here.
//! assert!(read_committed::<u32>(&dir)?.is_empty());
//! sink.commit(1).await?;
//! assert_eq!(read_committed::<u32>(&dir)?, vec![1, 2]);
//!
//! // A crash after writing epoch 2, before its checkpoint: a new sink discards it.
//! sink.write(vec![3]).await?;
//! sink.prepare(2).await?;
//! drop(sink);
//! let mut sink = TransactionalFileSink::<u32>::open(&dir)?;
//! sink.recover(Some(1)).await?;
//! assert_eq!(read_committed::<u32>(&dir)?, vec![1, 2]);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::sink::{DeliveryGuarantee, Sink};

/// The in-progress file of the current epoch.
const IN_PROGRESS: &str = "_in-progress.ndjson";
const PREPARED_PREFIX: &str = "_prepared-";
const COMMITTED_PREFIX: &str = "part-";
const SUFFIX: &str = ".ndjson";

/// The visible name of committed epoch `epoch`: `part-{epoch:020}.ndjson`.
pub fn committed_file_name(epoch: u64) -> String {
    format!("{COMMITTED_PREFIX}{epoch:020}{SUFFIX}")
}

fn prepared_file_name(epoch: u64) -> String {
    format!("{PREPARED_PREFIX}{epoch:020}{SUFFIX}")
}

/// The epoch in `name` if it is `{prefix}{20 digits}.ndjson`.
fn epoch_of(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(SUFFIX)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The epochs of the prepared and committed files in `dir`, each ascending.
#[derive(Debug, Default)]
struct Listing {
    prepared: Vec<u64>,
    committed: Vec<u64>,
}

fn list(dir: &Path) -> Result<Listing> {
    let io_err = |e| Error::io(dir, e);
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let name = entry.map_err(io_err)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(epoch) = epoch_of(name, PREPARED_PREFIX) {
            listing.prepared.push(epoch);
        } else if let Some(epoch) = epoch_of(name, COMMITTED_PREFIX) {
            listing.committed.push(epoch);
        }
    }
    listing.prepared.sort_unstable();
    listing.committed.sort_unstable();
    Ok(listing)
}

/// `fsync`s a directory so that renames and deletes in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Removes `path`; a file already gone is fine.
fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A transactional sink writing one NDJSON file per epoch into a directory: records
/// become visible only when their epoch is committed, after the checkpoint holding it
/// is saved, so a pipeline restarted after a crash produces every record exactly once.
///
/// The sink fits the executors' checkpoint order (flush → prepare → save → commit) and
/// their `recover` call on start; see the [module docs](self) for the on-disk layout,
/// the crash-safety argument and an example. Read the output with [`read_committed`].
///
/// A batch is serialized completely before any of it is written, so a record that
/// cannot be serialized fails the batch without leaving half a line. After a failed
/// write, the epoch is broken: `prepare` refuses it until `recover` discards it (the
/// run stops, and a restart replays the epoch).
///
/// # Errors
/// File system failures are [`Error::Io`] naming the file or directory; a record that
/// cannot be serialized, a broken epoch or a directory holding committed epochs newer
/// than the checkpoint are [`Error::Sink`].
pub struct TransactionalFileSink<T> {
    dir: PathBuf,
    /// The in-progress file, opened at the first write of an epoch.
    current: Option<BufWriter<File>>,
    /// A write of the current epoch failed: its records are incomplete.
    broken: bool,
    encoded: Vec<u8>,
    _records: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for TransactionalFileSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalFileSink")
            .field("dir", &self.dir)
            .field("writing", &self.current.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> TransactionalFileSink<T> {
    /// A sink writing into `dir`, created if missing. Nothing in the directory is
    /// touched until [`recover`](Sink::recover) or the first write.
    ///
    /// # Errors
    /// [`Error::Io`] naming `dir` if it cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            // Make the new directory's own entry durable.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(TransactionalFileSink {
            dir,
            current: None,
            broken: false,
            encoded: Vec::new(),
            _records: PhantomData,
        })
    }

    /// The directory written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The committed epochs in the directory, ascending.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory if it cannot be listed.
    pub fn committed_epochs(&self) -> Result<Vec<u64>> {
        Ok(list(&self.dir)?.committed)
    }

    /// The prepared (not yet committed) epochs in the directory, ascending.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory if it cannot be listed.
    pub fn prepared_epochs(&self) -> Result<Vec<u64>> {
        Ok(list(&self.dir)?.prepared)
    }

    fn in_progress_path(&self) -> PathBuf {
        self.dir.join(IN_PROGRESS)
    }

    fn write_batch(&mut self, batch: &[T]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.encoded.clear();
        for (i, record) in batch.iter().enumerate() {
            serde_json::to_writer(&mut self.encoded, record).map_err(|e| {
                Error::sink(
                    "write",
                    format!(
                        "record {i} of the batch could not be serialized as json for {}: {e}",
                        self.in_progress_path().display()
                    ),
                )
            })?;
            self.encoded.push(b'\n');
        }
        let path = self.in_progress_path();
        if self.current.is_none() {
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.current = Some(BufWriter::new(file));
        }
        if let Some(file) = &mut self.current {
            file.write_all(&self.encoded).map_err(|e| {
                self.broken = true;
                Error::io(&path, e)
            })?;
        }
        Ok(())
    }

    fn flush_current(&mut self) -> Result<()> {
        let path = self.in_progress_path();
        if let Some(file) = &mut self.current {
            file.flush()
                .and_then(|()| file.get_ref().sync_all())
                .map_err(|e| {
                    self.broken = true;
                    Error::io(&path, e)
                })?;
        }
        Ok(())
    }

    fn refuse_broken(&self, operation: &'static str) -> Result<()> {
        if self.broken {
            return Err(Error::sink(
                operation,
                format!(
                    "an earlier write to {} failed, so this epoch is incomplete; restart \
                     the pipeline (recover discards the epoch and the source replays it)",
                    self.in_progress_path().display()
                ),
            ));
        }
        Ok(())
    }

    fn prepare_sync(&mut self, epoch: u64) -> Result<()> {
        self.refuse_broken("prepare")?;
        self.flush_current()?;
        let Some(file) = self.current.take() else {
            return Ok(());
        };
        drop(file);
        let committed = self.dir.join(committed_file_name(epoch));
        if committed.exists() {
            self.broken = true;
            return Err(Error::sink(
                "prepare",
                format!(
                    "epoch {epoch} is already committed as {}: the directory holds the output \
                     of another run; give this pipeline its own directory",
                    committed.display()
                ),
            ));
        }
        let prepared = self.dir.join(prepared_file_name(epoch));
        fs::rename(self.in_progress_path(), &prepared).map_err(|e| {
            // The epoch's records are still in the in-progress file, which the next
            // write would truncate.
            self.broken = true;
            Error::io(&prepared, e)
        })?;
        sync_dir(&self.dir)
    }

    /// Renames every prepared epoch `≤ epoch` to its committed name.
    fn commit_up_to(&self, epoch: u64, prepared: &[u64]) -> Result<()> {
        let mut renamed = false;
        for &e in prepared.iter().filter(|&&e| e <= epoch) {
            let to = self.dir.join(committed_file_name(e));
            fs::rename(self.dir.join(prepared_file_name(e)), &to)
                .map_err(|err| Error::io(&to, err))?;
            renamed = true;
        }
        if renamed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn commit_sync(&self, epoch: u64) -> Result<()> {
        let listing = list(&self.dir)?;
        self.commit_up_to(epoch, &listing.prepared)
    }

    fn recover_sync(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.current = None;
        self.broken = false;
        let mut removed = remove_if_present(&self.in_progress_path())?;
        let listing = list(&self.dir)?;
        let newer: Vec<u64> = listing
            .committed
            .iter()
            .copied()
            .filter(|&e| checkpointed.is_none_or(|c| e > c))
            .collect();
        if let Some(&first) = newer.first() {
            let checkpoint = match checkpointed {
                Some(c) => format!("the checkpoint ends at epoch {c}"),
                None => "there is no checkpoint".to_owned(),
            };
            return Err(Error::sink(
                "recover",
                format!(
                    "{} holds {} committed epoch(s) from {} on, but {checkpoint}: it holds the \
                     output of another run (or the checkpoint was lost); give this pipeline \
                     its own directory, or move those files away",
                    self.dir.display(),
                    newer.len(),
                    self.dir.join(committed_file_name(first)).display(),
                ),
            ));
        }
        for &e in &listing.prepared {
            if checkpointed.is_none_or(|c| e > c) {
                removed |= remove_if_present(&self.dir.join(prepared_file_name(e)))?;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(c) = checkpointed {
            self.commit_up_to(c, &listing.prepared)?;
        }
        Ok(())
    }
}

impl<T: Serialize + Send + 'static> Sink for TransactionalFileSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Transactional
    }

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        self.write_batch(&batch)
    }

    /// Writes the buffer and `fsync`s the in-progress file.
    async fn flush(&mut self) -> Result<()> {
        self.flush_current()
    }

    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        self.prepare_sync(epoch)
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        self.commit_sync(epoch)
    }

    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.recover_sync(checkpointed)
    }
}

/// Reads the committed output of a [`TransactionalFileSink`] in `dir`: the records of
/// every `part-*.ndjson`, in epoch order. Prepared and in-progress files are not read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// use batchstream::Sink;
/// use batchstream::adapters::file::transactional::{TransactionalFileSink, read_committed};
/// let dir = std::env::temp_dir().join(format!("tx-read-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let mut sink = TransactionalFileSink::open(&dir)?;
/// for epoch in 1..=2 {
///     sink.write(vec![format!("e{epoch}")]).await?;
///     sink.prepare(epoch).await?;
///     sink.commit(epoch).await?;
/// }
/// assert_eq!(read_committed::<String>(&dir)?, ["e1", "e2"]);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Io`] naming the directory or file if it cannot be read; a line that is
/// not a valid `T` is an [`Error::Io`] of kind
/// [`InvalidData`](std::io::ErrorKind::InvalidData) naming the file, with the line
/// number and byte offset in its message.
pub fn read_committed<T: DeserializeOwned>(dir: impl AsRef<Path>) -> Result<Vec<T>> {
    let dir = dir.as_ref();
    let mut records = Vec::new();
    for epoch in list(dir)?.committed {
        let path = dir.join(committed_file_name(epoch));
        read_part(&path, &mut records)?;
    }
    Ok(records)
}

fn read_part<T: DeserializeOwned>(path: &Path, out: &mut Vec<T>) -> Result<()> {
    let io_err = |e| Error::io(path, e);
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut line = Vec::new();
    let (mut number, mut offset) = (0u64, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let record = serde_json::from_slice(text).map_err(|e| {
            Error::io(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {number} (byte offset {offset}) is not a valid record: {e}"),
                ),
            )
        })?;
        out.push(record);
        offset += n as u64;
    }
}
