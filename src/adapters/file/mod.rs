//! File sources and sinks: newline-delimited JSON (NDJSON) and CSV.
//!
//! | type | role | notes |
//! |---|---|---|
//! | [`NdjsonSource`] | source, bounded or tailed | one JSON value per line |
//! | [`CsvSource`] | source, bounded or tailed | first line is the header |
//! | [`NdjsonSink`] | sink, at-least-once | one JSON value per line; the default dead-letter sink |
//! | [`CsvSink`] | sink, at-least-once | writes the header once |
//!
//! Both sources checkpoint a [`FilePosition`]: the byte offset of the next unread
//! byte and the number of lines consumed, so a restart resumes exactly at the byte
//! where the last checkpoint stopped.
//!
//! A line that cannot be decoded (bad JSON, bad UTF-8, a short CSV row, a value of
//! the wrong shape) is not an error: it becomes a [`DeadLetter`] in
//! [`SourceBatch::rejected`](crate::SourceBatch::rejected), with the file, its 1-based
//! line number, the byte offset where the line starts and the raw text. Blank lines
//! are skipped (but counted in line numbers).
//!
//! By default a source is bounded: it ends at the end of the file. With `.tail(interval)`
//! it is unbounded and follows a growing file (like `tail -f`): at the end it waits
//! `interval` and reads again, and a last line without its `'\n'` is left until the
//! newline arrives. A file that shrinks while tailed (truncated or rotated in place) is
//! an error.
//!
//! Sources read with blocking `std::fs` calls, which is fine for local files; their
//! futures are cancel safe (all progress lives in the source).
//!
//! ```
//! use batchstream::Source;
//! use batchstream::adapters::file::NdjsonSource;
//!
//! #[derive(Debug, PartialEq, serde::Deserialize)]
//! struct Order { id: u32, amount: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let path = std::env::temp_dir().join(format!("orders-doc-{}.ndjson", std::process::id()));
//! std::fs::write(&path, "{\"id\":1,\"amount\":30}\nnot json\n{\"id\":2,\"amount\":12}\n").unwrap();
//!
//! let mut source = NdjsonSource::<Order>::open(&path)?;
//! let batch = source.next_batch(100).await?.expect("a batch");
//! assert_eq!(batch.records, vec![Order { id: 1, amount: 30 }, Order { id: 2, amount: 12 }]);
//!
//! // The bad line is kept, with where it came from.
//! let letter = &batch.rejected[0];
//! assert_eq!(letter.error.location.line, Some(2));
//! assert_eq!(letter.error.location.offset, Some(21));
//! assert_eq!(letter.raw.as_deref(), Some("not json"));
//!
//! // The position resumes after the last line read.
//! assert_eq!(batch.position.line, 3);
//! assert!(source.next_batch(100).await?.is_none());
//! # std::fs::remove_file(&path).ok();
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};

mod csv;
mod ndjson;

pub use self::csv::{CsvSink, CsvSource};
pub use self::ndjson::{NdjsonSink, NdjsonSource};

/// A position in a line-oriented file: where the next unread line starts.
///
/// Both [`NdjsonSource`] and [`CsvSource`] use it as their
/// [`Source::Position`](crate::Source::Position).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct FilePosition {
    /// Byte offset of the next unread byte.
    pub offset: u64,
    /// Number of lines consumed so far (blank lines and a CSV header included).
    pub line: u64,
}

/// An NDJSON sink for dead letters, appending to `path` (created if missing), so the
/// letters of earlier runs are kept.
///
/// ```no_run
/// # fn main() -> batchstream::Result<()> {
/// use batchstream::adapters::file::dead_letter_file;
/// let dlq = dead_letter_file("rejected.ndjson")?;
/// // pipeline.with_dead_letter_sink(dlq)
/// # let _ = dlq; Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened for appending.
pub fn dead_letter_file(path: impl AsRef<Path>) -> Result<NdjsonSink<DeadLetter>> {
    NdjsonSink::append(path)
}

/// The shortest poll interval of a tailed source.
const MIN_POLL: Duration = Duration::from_millis(1);

/// One complete line handed out by a [`LineReader`].
#[derive(Debug)]
struct RawLine<'a> {
    /// The file it was read from.
    path: &'a Path,
    /// The line without its `\n` or `\r\n`.
    bytes: &'a [u8],
    /// 1-based line number.
    number: u64,
    /// Byte offset of the line's first byte.
    offset: u64,
}

/// Reads a file line by line, keeping a byte-exact [`FilePosition`].
///
/// All progress lives here: a line is counted only once it is complete, and a
/// partial last line (tail mode) stays in `pending` until its newline arrives.
#[derive(Debug)]
struct LineReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// Position after the last line handed out.
    position: FilePosition,
    /// Bytes of the line being read (possibly partial), or of the line last handed out.
    pending: Vec<u8>,
    /// Whether `pending` holds the line last handed out (to clear on the next call).
    handed_out: bool,
    /// Tail mode: a last line without `'\n'` is not complete.
    follow: bool,
}

impl LineReader {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(LineReader {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            position: FilePosition::default(),
            pending: Vec::new(),
            handed_out: false,
            follow: false,
        })
    }

    /// The next complete line, or `None` at the end of the file (in follow mode, also
    /// when only a partial line is available).
    fn next_line(&mut self) -> Result<Option<RawLine<'_>>> {
        if self.handed_out {
            self.pending.clear();
            self.handed_out = false;
        }
        if !self.pending.ends_with(b"\n") {
            // On error, the bytes read so far stay in `pending`: nothing is lost.
            self.reader
                .read_until(b'\n', &mut self.pending)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        if self.pending.is_empty() || (self.follow && !self.pending.ends_with(b"\n")) {
            return Ok(None);
        }
        let number = self.position.line + 1;
        let offset = self.position.offset;
        self.position.line = number;
        self.position.offset += self.pending.len() as u64;
        self.handed_out = true;
        let mut bytes = self.pending.as_slice();
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        Ok(Some(RawLine {
            path: &self.path,
            bytes,
            number,
            offset,
        }))
    }

    /// In follow mode, fails if the file is now shorter than what was read from it.
    fn check_not_truncated(&self) -> Result<()> {
        let len = self
            .reader
            .get_ref()
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        let read = self.position.offset + self.pending.len() as u64;
        if len < read {
            return Err(Error::source(format!(
                "tailed file {} shrank from at least {read} to {len} bytes (truncated or \
                 replaced); tail mode follows a growing file only",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Moves to `position`, which must be within the file and at the start of a line.
    fn seek(&mut self, position: FilePosition) -> Result<()> {
        let io_err = |e| Error::io(&self.path, e);
        let len = self.reader.get_ref().metadata().map_err(io_err)?.len();
        let offset = position.offset;
        if offset > len {
            return Err(Error::source(format!(
                "cannot resume {} at byte offset {offset}: the file has only {len} bytes \
                 (was it truncated or replaced?)",
                self.path.display()
            )));
        }
        if offset > 0 && offset < len {
            let mut before = [0u8; 1];
            self.reader
                .seek(SeekFrom::Start(offset - 1))
                .map_err(io_err)?;
            self.reader.read_exact(&mut before).map_err(io_err)?;
            if before[0] != b'\n' {
                return Err(Error::source(format!(
                    "cannot resume {} at byte offset {offset}: it is not the start of a line \
                     (was the file changed?)",
                    self.path.display()
                )));
            }
        }
        self.reader.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        self.pending.clear();
        self.handed_out = false;
        self.position = position;
        Ok(())
    }
}

/// Opens `path` for writing: truncated, or for appending. When appending to a file
/// whose last line lacks its newline (a crash mid-write), a newline is added first so
/// that the next record starts on a line of its own.
fn open_for_write(path: &Path, append: bool) -> Result<(File, bool)> {
    let io_err = |e| Error::io(path, e);
    if !append {
        let file = File::create(path).map_err(io_err)?;
        return Ok((file, true));
    }
    let mut file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1)).map_err(io_err)?;
        file.read_exact(&mut last).map_err(io_err)?;
        if last[0] != b'\n' {
            file.write_all(b"\n").map_err(io_err)?;
        }
    }
    Ok((file, len == 0))
}

/// Flushes `writer` and makes its file durable, mapping errors to a sink `flush` error
/// naming `path`.
fn flush_and_sync(writer: &mut io::BufWriter<File>, path: &Path) -> Result<()> {
    writer
        .flush()
        .and_then(|()| writer.get_ref().sync_data())
        .map_err(|e| Error::sink("flush", Error::io(path, e)))
}
