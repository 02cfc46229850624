//! Newline-delimited JSON: one value per line.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FilePosition;
use super::lines::{FileWriter, LineDecoder, LineSource};
use crate::error::Result;
use crate::sink::Sink;
use crate::source::{Boundedness, Source, SourceBatch, SourceProgress};

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
/// line). Read failures are [`Error::Io`](crate::Error::Io) naming the file. See the
/// [module docs](super) for an example.
pub struct NdjsonSource<T> {
    inner: LineSource<NdjsonDecoder<T>>,
}

impl<T> fmt::Debug for NdjsonSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_debug(f, "NdjsonSource", &[])
    }
}

impl<T: DeserializeOwned> NdjsonSource<T> {
    /// A bounded source reading `path` from the beginning.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming `path` if the file cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let inner = LineSource::open(path.as_ref(), NdjsonDecoder(PhantomData))?;
        Ok(NdjsonSource { inner })
    }

    /// Tail mode: the source becomes unbounded and follows the growing file. At the end
    /// of the file it waits `poll_interval` (at least 1 ms) and reads again; a last line
    /// without `'\n'` is read only once its newline arrives.
    pub fn tail(mut self, poll_interval: Duration) -> Self {
        self.inner.tail(poll_interval);
        self
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The position after the last line read.
    pub fn position(&self) -> FilePosition {
        self.inner.position()
    }
}

/// Decodes each line as one JSON value of type `T`; lines of whitespace only are blank.
struct NdjsonDecoder<T>(PhantomData<fn() -> T>);

impl<T: DeserializeOwned> LineDecoder for NdjsonDecoder<T> {
    type Record = T;

    const STAGE: &'static str = "ndjson";

    fn is_blank(line: &[u8]) -> bool {
        line.iter().all(u8::is_ascii_whitespace)
    }

    fn decode(&mut self, line: &[u8]) -> std::result::Result<T, String> {
        match std::str::from_utf8(line) {
            Ok(text) => serde_json::from_str::<T>(text).map_err(|e| describe(&e)),
            Err(e) => Err(format!("invalid utf-8: {e}")),
        }
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
        self.inner.boundedness()
    }

    /// Bytes consumed (the offset of [`position`](Self::position)) out of the file's
    /// current length, which grows with a tailed file. At the end of a bounded file
    /// `done == total`.
    fn progress(&self) -> Option<SourceProgress> {
        Some(self.inner.progress())
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<T, FilePosition>>> {
        self.inner.next_batch(max).await
    }

    async fn seek(&mut self, position: FilePosition) -> Result<()> {
        self.inner.seek(position)
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
/// It works for [`DeadLetter`](crate::DeadLetter) too, and is the usual dead-letter sink (see
/// [`dead_letter_file`](super::dead_letter_file)).
pub struct NdjsonSink<T> {
    file: FileWriter,
    encoded: Vec<u8>,
    _records: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for NdjsonSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NdjsonSink")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> NdjsonSink<T> {
    /// A sink writing to `path`, created or truncated.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming `path` if the file cannot be created.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(path.as_ref(), false)
    }

    /// A sink appending to `path`, created if missing. If the file's last line lacks its
    /// newline (a torn record from a crash mid-write, which the restart writes again),
    /// that partial line is cut off first, so the file stays one record per line.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming `path` if the file cannot be opened.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(path.as_ref(), true)
    }

    fn new(path: &Path, append: bool) -> Result<Self> {
        let (file, _) = FileWriter::open(path, append)?;
        Ok(NdjsonSink {
            file,
            encoded: Vec::new(),
            _records: PhantomData,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn write_batch(&mut self, batch: &[T]) -> Result<()> {
        self.encoded.clear();
        for (i, record) in batch.iter().enumerate() {
            serde_json::to_writer(&mut self.encoded, record).map_err(|e| {
                self.file.write_error(
                    format_args!("record {i} of the batch could not be serialized as json"),
                    e,
                )
            })?;
            self.encoded.push(b'\n');
        }
        self.file.write_all(&self.encoded)
    }
}

impl<T: Serialize + Send + 'static> Sink for NdjsonSink<T> {
    type Item = T;

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        self.write_batch(&batch)
    }

    async fn flush(&mut self) -> Result<()> {
        self.file.flush()
    }
}
