//! An idempotent keyed NDJSON sink: an append-only log of `{"key":..,"value":..}`
//! lines where the last value of a key wins, so a record replayed after a crash
//! overwrites itself.
//!
//! # On-disk layout
//! One file, one JSON object per line: `{"key":<K>,"value":<V>}`. An in-memory index
//! (a `BTreeMap`) holds the last value of every key; opening the sink rebuilds it by
//! reading the log. Compaction writes the live entries (in key order) to
//! `<file>.compact.tmp`, `fsync`s it, renames it over the log and `fsync`s the
//! directory.
//!
//! # Crash safety
//! - [`flush`](crate::Sink::flush) writes the buffer and `fsync`s the log, so every
//!   record written before a checkpoint is durable when the checkpoint is saved.
//! - A crash in the middle of a write can leave a torn last line: one without its
//!   `'\n'`, or one that does not parse. It was never flushed, so its checkpoint was
//!   never saved and the source replays it: opening the sink truncates it (with a
//!   warning). A bad line anywhere else is not a crash artefact but damage, and
//!   opening fails with an error naming the file, line and byte offset instead of
//!   skipping it.
//! - Records written after the last checkpoint and replayed after a restart are
//!   appended again; the later copy wins, with the same value, so the table holds no
//!   duplicates ([`DeliveryGuarantee::Idempotent`]).
//! - Compaction replaces the log by an atomic rename of a complete, `fsync`ed file: a
//!   crash leaves either the old log (and a stale `.compact.tmp`, deleted on open) or
//!   the new one.
//!
//! There is no file lock: two sinks on the same file at once corrupt it.
//!
//! # Example
//! ```
//! use batchstream::Sink;
//! use batchstream::adapters::file::keyed::KeyedFileSink;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let path = std::env::temp_dir().join(format!("keyed-doc-{}.ndjson", std::process::id()));
//! # let _ = std::fs::remove_file(&path);
//! let mut sink = KeyedFileSink::<String, u32>::open(&path)?;
//! sink.write(vec![("ann".into(), 1), ("bob".into(), 2)]).await?;
//! // A replay after a crash writes the same records again, and a newer value:
//! sink.write(vec![("ann".into(), 1), ("ann".into(), 5)]).await?;
//! sink.flush().await?;
//! assert_eq!(sink.get("ann"), Some(&5));
//!
//! let table = KeyedFileSink::<String, u32>::read(&path)?;
//! assert_eq!(table.len(), 2);
//! assert_eq!(table["ann"], 5);
//! assert_eq!(table["bob"], 2);
//! # std::fs::remove_file(&path).ok();
//! # Ok(()) }
//! ```

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::transactional::sync_dir;
use crate::error::{Error, Result};
use crate::sink::{DeliveryGuarantee, Sink};

/// Default compaction: when the log holds more than this many records per live key…
const DEFAULT_RATIO: u64 = 4;
/// …and at least this many records.
const DEFAULT_MIN_RECORDS: u64 = 1024;

#[derive(Serialize)]
struct EntryRef<'a, K, V> {
    key: &'a K,
    value: &'a V,
}

#[derive(Deserialize)]
struct Entry<K, V> {
    key: K,
    value: V,
}

/// What a log holds: the table, how many records, and how much of the file is valid.
struct Loaded<K, V> {
    table: BTreeMap<K, V>,
    records: u64,
    /// Bytes up to the end of the last good line.
    valid_len: u64,
    /// Why the bytes after `valid_len` are a torn last line, if there are any.
    torn: Option<String>,
}

/// Parses a log: every complete line must be an entry, except that a last line
/// without `'\n'`, or a last line that does not parse, is torn.
fn parse_log<K, V>(path: &Path, bytes: &[u8]) -> Result<Loaded<K, V>>
where
    K: DeserializeOwned + Ord,
    V: DeserializeOwned,
{
    let mut loaded = Loaded {
        table: BTreeMap::new(),
        records: 0,
        valid_len: 0,
        torn: None,
    };
    let mut offset = 0usize;
    let mut number = 0u64;
    while offset < bytes.len() {
        number += 1;
        let rest = &bytes[offset..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            loaded.torn = Some(format!(
                "line {number} (byte offset {offset}) has no newline: {} bytes",
                rest.len()
            ));
            break;
        };
        let next = offset + newline + 1;
        match serde_json::from_slice::<Entry<K, V>>(&rest[..newline]) {
            Ok(entry) => {
                loaded.table.insert(entry.key, entry.value);
                loaded.records += 1;
                loaded.valid_len = next as u64;
            }
            Err(e) if next == bytes.len() => {
                loaded.torn = Some(format!(
                    "last line {number} (byte offset {offset}) does not parse: {e}"
                ));
                break;
            }
            Err(e) => {
                return Err(Error::io(
                    path,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "line {number} (byte offset {offset}) is not a {{\"key\":..,\"value\":..}} \
                             record: {e}; only a torn last line is repaired, so this file is damaged"
                        ),
                    ),
                ));
            }
        }
        offset = next;
    }
    Ok(loaded)
}

/// When a [`KeyedFileSink`] rewrites its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Compaction {
    ratio: u64,
    min_records: u64,
}

/// An idempotent sink of `(key, value)` records kept in an append-only NDJSON log with
/// an in-memory index: the last value written for a key wins, so records replayed
/// after a restart overwrite themselves ([`DeliveryGuarantee::Idempotent`]).
///
/// Opening it reads the log (repairing a torn last line left by a crash); `flush`
/// `fsync`s it. By default the log is compacted at `flush` once it holds more than 4
/// records per live key and at least 1024 records (see
/// [`compact_when`](KeyedFileSink::compact_when)). See the [module docs](self) for the
/// format, the crash-safety argument and an example; read a log with
/// [`KeyedFileSink::read`].
///
/// A batch is serialized completely before any of it is written. After a failed write
/// or flush the sink refuses further writes: reopen it (which repairs the log's tail)
/// and replay from the last checkpoint, as a pipeline restart does.
pub struct KeyedFileSink<K, V> {
    path: PathBuf,
    file: BufWriter<File>,
    table: BTreeMap<K, V>,
    /// Records in the log (written or buffered), live or overwritten.
    records: u64,
    compaction: Option<Compaction>,
    /// A write or flush failed: the log's tail is unknown.
    broken: bool,
    encoded: Vec<u8>,
}

impl<K, V> fmt::Debug for KeyedFileSink<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedFileSink")
            .field("path", &self.path)
            .field("keys", &self.table.len())
            .field("log_records", &self.records)
            .field("compaction", &self.compaction)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

fn compact_tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".compact.tmp");
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl<K, V> KeyedFileSink<K, V>
where
    K: Serialize + DeserializeOwned + Ord,
    V: Serialize + DeserializeOwned,
{
    /// Opens the log at `path` (created if missing) and loads it. A torn last line (a
    /// crash mid-write) is truncated, with a warning; a stale compaction file is
    /// deleted.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file if it cannot be opened, read or repaired; a bad
    /// line before the last is an [`Error::Io`] of kind
    /// [`InvalidData`](std::io::ErrorKind::InvalidData) whose message gives its line
    /// number and byte offset.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let io_err = |e| Error::io(&path, e);
        let tmp = compact_tmp_path(&path);
        match fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!(file = %tmp.display(), "removed an unfinished compaction"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&tmp, e)),
        }
        let existed = path.exists();
        let mut file = File::options()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        if !existed {
            // Make the new file's directory entry durable before records go in it.
            sync_dir(parent_dir(&path))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let loaded = parse_log(&path, &bytes)?;
        if let Some(reason) = &loaded.torn {
            let dropped = bytes.len() as u64 - loaded.valid_len;
            tracing::warn!(
                file = %path.display(),
                dropped_bytes = dropped,
                "truncating a torn last line left by a crash (it was never flushed): {reason}"
            );
            file.set_len(loaded.valid_len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err)?;
        Ok(KeyedFileSink {
            path,
            file: BufWriter::new(file),
            table: loaded.table,
            records: loaded.records,
            compaction: Some(Compaction {
                ratio: DEFAULT_RATIO,
                min_records: DEFAULT_MIN_RECORDS,
            }),
            broken: false,
            encoded: Vec::new(),
        })
    }

    /// Reads the table stored in the log at `path` without changing the file: the last
    /// value of each key. A torn last line is ignored (with a warning), as
    /// [`open`](KeyedFileSink::open) would truncate it.
    ///
    /// # Errors
    /// As [`open`](KeyedFileSink::open).
    pub fn read(path: impl AsRef<Path>) -> Result<BTreeMap<K, V>> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let loaded = parse_log(path, &bytes)?;
        if let Some(reason) = &loaded.torn {
            tracing::warn!(file = %path.display(), "ignoring a torn last line: {reason}");
        }
        Ok(loaded.table)
    }

    /// Compacts the log at [`flush`](Sink::flush) once it holds more than `ratio`
    /// records per live key and at least `min_records` records (`ratio` is at least
    /// 1). Default: 4 and 1024.
    pub fn compact_when(mut self, ratio: u64, min_records: u64) -> Self {
        self.compaction = Some(Compaction {
            ratio: ratio.max(1),
            min_records,
        });
        self
    }

    /// Never compacts on its own ([`compact`](KeyedFileSink::compact) still does).
    pub fn never_compact(mut self) -> Self {
        self.compaction = None;
        self
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value last written for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.table.get(key)
    }

    /// The table: the last value of every key.
    pub fn table(&self) -> &BTreeMap<K, V> {
        &self.table
    }

    /// How many records the log holds, overwritten ones included.
    pub fn log_records(&self) -> u64 {
        self.records
    }

    fn refuse_broken(&self, operation: &'static str) -> Result<()> {
        if self.broken {
            return Err(Error::sink(
                operation,
                format!(
                    "an earlier write to {} failed; reopen the sink (which repairs the log's \
                     tail) and replay from the last checkpoint",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<(K, V)>) -> Result<()> {
        self.refuse_broken("write")?;
        self.encoded.clear();
        for (i, (key, value)) in batch.iter().enumerate() {
            serde_json::to_writer(&mut self.encoded, &EntryRef { key, value }).map_err(|e| {
                Error::sink(
                    "write",
                    format!(
                        "record {i} of the batch could not be serialized as json for {}: {e}",
                        self.path.display()
                    ),
                )
            })?;
            self.encoded.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&self.encoded) {
            self.broken = true;
            return Err(Error::io(&self.path, e));
        }
        self.records += batch.len() as u64;
        self.table.extend(batch);
        Ok(())
    }

    fn flush_sync(&mut self) -> Result<()> {
        self.refuse_broken("flush")?;
        if let Err(e) = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_data())
        {
            self.broken = true;
            return Err(Error::io(&self.path, e));
        }
        if let Some(c) = self.compaction {
            let live = self.table.len() as u64;
            if self.records >= c.min_records && self.records > live.saturating_mul(c.ratio) {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Rewrites the log with one line per live key (in key order), through a
    /// temporary file renamed over the log, and `fsync`s it and its directory.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that failed. The log is unchanged if the rename
    /// did not happen.
    pub fn compact(&mut self) -> Result<()> {
        self.refuse_broken("compact")?;
        self.file
            .flush()
            .map_err(|e| Error::io(&self.path, e))
            .inspect_err(|_| self.broken = true)?;
        let tmp = compact_tmp_path(&self.path);
        let tmp_err = |e| Error::io(&tmp, e);
        let mut out = BufWriter::new(File::create(&tmp).map_err(tmp_err)?);
        for (key, value) in &self.table {
            serde_json::to_writer(&mut out, &EntryRef { key, value })
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(tmp_err)?;
        }
        out.flush().map_err(tmp_err)?;
        out.get_ref().sync_all().map_err(tmp_err)?;
        drop(out);
        fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        // From here on the old handle points at the replaced file.
        self.broken = true;
        sync_dir(parent_dir(&self.path))?;
        let file = File::options()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file = BufWriter::new(file);
        self.records = self.table.len() as u64;
        self.broken = false;
        tracing::debug!(file = %self.path.display(), keys = self.records, "compacted");
        Ok(())
    }
}

impl<K, V> Sink for KeyedFileSink<K, V>
where
    K: Serialize + DeserializeOwned + Ord + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = (K, V);

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }

    async fn write(&mut self, batch: Vec<(K, V)>) -> Result<()> {
        self.write_batch(batch)
    }

    /// Writes the buffer and `fsync`s the log, then compacts it if it is due.
    async fn flush(&mut self) -> Result<()> {
        self.flush_sync()
    }
}
