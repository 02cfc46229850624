//! Newline-delimited JSON: one value per line.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FilePosition, LineReader, MIN_POLL, flush_and_sync, open_for_write};
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Location, RecordError, RecordErrorKind, Result};
use crate::sink::Sink;
use crate::source::{Boundedness, Source, SourceBatch};

/// The stage name of NDJSON parse errors.
const STAGE: &str = "ndjson";

/// A source reading one JSON value of type `T` per line of a file.
///
/// Bounded by default: it ends at the end of the file, where a last line without
/// `'\n'` is read too. [`tail`](NdjsonSource::tail) makes it follow a growing file.
/// Blank lines are skipped. A line that is not valid UTF-8 or not a valid `T` goes to
/// [`SourceBatch::rejected`] with stage `"ndjson"`, its file, 1-based line number and
/// byte offset, and its raw text. Rejected lines count towards a batch's `max`.
///
/// Its position is a [`FilePosition`]; [`seek`](Source::seek) resumes at that exact
/// byte (it fails if the offset is past the end of the file or not at the start of a
/// line). Read failures are [`Error::Io`] naming the file. See the
/// [module docs](super) for an example.
pub struct NdjsonSource<T> {
    lines: LineReader,
    poll: Option<Duration>,
    _records: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for NdjsonSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NdjsonSource")
            .field("path", &self.lines.path)
            .field("position", &self.lines.position)
            .field("tail_poll_interval", &self.poll)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> NdjsonSource<T> {
    /// A bounded source reading `path` from the beginning.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(NdjsonSource {
            lines: LineReader::open(path.as_ref())?,
            poll: None,
            _records: PhantomData,
        })
    }

    /// Tail mode: the source becomes unbounded and follows the growing file. At the end
    /// of the file it waits `poll_interval` (at least 1 ms) and reads again; a last line
    /// without `'\n'` is read only once its newline arrives.
    pub fn tail(mut self, poll_interval: Duration) -> Self {
        self.poll = Some(poll_interval.max(MIN_POLL));
        self.lines.follow = true;
        self
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.lines.path
    }

    /// The position after the last line read.
    pub fn position(&self) -> FilePosition {
        self.lines.position.clone()
    }

    /// Reads complete lines without waiting, until `max` records and rejected lines
    /// are collected or the available input ends.
    fn read_available(
        &mut self,
        max: usize,
        records: &mut Vec<T>,
        rejected: &mut Vec<DeadLetter>,
    ) -> Result<()> {
        while records.len() + rejected.len() < max {
            let Some(line) = self.lines.next_line()? else {
                break;
            };
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let decoded = match std::str::from_utf8(line.bytes) {
                Ok(text) => serde_json::from_str::<T>(text).map_err(|e| describe(&e)),
                Err(e) => Err(format!("invalid utf-8: {e}")),
            };
            match decoded {
                Ok(record) => records.push(record),
                Err(message) => {
                    let location = Location::in_file(line.path, line.number, line.offset);
                    rejected.push(DeadLetter::unparsed(
                        RecordError::new(RecordErrorKind::Parse, STAGE, message, location),
                        String::from_utf8_lossy(line.bytes),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The serde_json error text, with its position given as a column: each line is
/// parsed on its own, so serde_json's "line 1" is not the line of the file.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) if e.line() == 1 => format!("{message} at column {}", e.column()),
        _ => text,
    }
}

impl<T: DeserializeOwned + Send + 'static> Source for NdjsonSource<T> {
    type Item = T;
    type Position = FilePosition;

    fn boundedness(&self) -> Boundedness {
        if self.poll.is_some() {
            Boundedness::Unbounded
        } else {
            Boundedness::Bounded
        }
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<T, FilePosition>>> {
        if max == 0 {
            return Ok(Some(SourceBatch::new(Vec::new(), self.position())));
        }
        loop {
            let mut records = Vec::new();
            let mut rejected = Vec::new();
            self.read_available(max, &mut records, &mut rejected)?;
            if !records.is_empty() || !rejected.is_empty() {
                let batch = SourceBatch::new(records, self.position());
                return Ok(Some(batch.with_rejected(rejected)));
            }
            match self.poll {
                None => return Ok(None),
                Some(interval) => {
                    self.lines.check_not_truncated()?;
                    // The only await: dropping it loses nothing, all progress is in `self`.
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }

    async fn seek(&mut self, position: FilePosition) -> Result<()> {
        self.lines.seek(position)
    }
}

/// A sink writing each record as one line of JSON.
///
/// Writes are buffered; [`flush`](Sink::flush) writes the buffer and `fsync`s the file
/// (`sync_data`). A batch is serialized completely before any of it is written, so a
/// record that cannot be serialized fails the batch without leaving half a line.
/// At-least-once: after a crash, records written after the last checkpoint are written
/// again.
///
/// It works for [`DeadLetter`] too, and is the usual dead-letter sink (see
/// [`dead_letter_file`](super::dead_letter_file)).
pub struct NdjsonSink<T> {
    path: PathBuf,
    writer: BufWriter<File>,
    encoded: Vec<u8>,
    _records: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for NdjsonSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NdjsonSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> NdjsonSink<T> {
    /// A sink writing to `path`, created or truncated.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be created.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(path.as_ref(), false)
    }

    /// A sink appending to `path`, created if missing. If the file's last line lacks its
    /// newline (a crash mid-write), a newline is added first.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be opened.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(path.as_ref(), true)
    }

    fn new(path: &Path, append: bool) -> Result<Self> {
        let (file, _) = open_for_write(path, append)?;
        Ok(NdjsonSink {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
            encoded: Vec::new(),
            _records: PhantomData,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_batch(&mut self, batch: &[T]) -> Result<()> {
        self.encoded.clear();
        for (i, record) in batch.iter().enumerate() {
            serde_json::to_writer(&mut self.encoded, record).map_err(|e| {
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
        self.writer
            .write_all(&self.encoded)
            .map_err(|e| Error::sink("write", Error::io(&self.path, e)))
    }
}

impl<T: Serialize + Send + 'static> Sink for NdjsonSink<T> {
    type Item = T;

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        self.write_batch(&batch)
    }

    async fn flush(&mut self) -> Result<()> {
        flush_and_sync(&mut self.writer, &self.path)
    }
}
