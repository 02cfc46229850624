//! CSV files with a header line, read and written with the `csv` crate.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use ::csv::{ReaderBuilder, StringRecord, Terminator, WriterBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FilePosition;
use super::lines::{FileWriter, LineDecoder, LineReader, LineSource};
use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::source::{Boundedness, Source, SourceBatch, SourceProgress};

/// A source reading rows of a CSV file with a header line, decoding each row into a `T`
/// by header name (a struct) or by position (a tuple).
///
/// The first non-empty line is the header; it is read by [`open`](CsvSource::open) (or,
/// for a tailed file that has no complete header yet, as soon as it is written) and
/// kept, so a source that [`seek`](Source::seek)s into the middle of the file still
/// decodes rows by name. Line numbers count the header line.
///
/// Empty lines are skipped. A row that cannot be decoded (invalid UTF-8, a field count
/// different from the header's, a field that does not deserialize) goes to
/// [`SourceBatch::rejected`] with stage `"csv"`, its file, 1-based line number and byte
/// offset, and its raw text. Rejected rows count towards a batch's `max`.
///
/// # Limitation
/// Each row must be one line: quoted fields containing line breaks are **not
/// supported**. Such a row is never mis-read: each of its lines is rejected with its
/// location (the first one as an unterminated quoted field).
///
/// Bounded by default; [`tail`](CsvSource::tail) makes it follow a growing file. Its
/// position is a [`FilePosition`]; [`seek`](Source::seek) resumes at that exact byte
/// (it fails if the offset is past the end of the file, inside the header or not at the
/// start of a line). Read failures are [`Error::Io`] naming the file.
pub struct CsvSource<T> {
    inner: LineSource<CsvDecoder<T>>,
}

impl<T> fmt::Debug for CsvSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers = &self.inner.decoder.headers;
        self.inner
            .fmt_debug(f, "CsvSource", &[("headers", headers)])
    }
}

impl<T: DeserializeOwned> CsvSource<T> {
    /// A bounded source reading `path` from the beginning. The header line is read now
    /// if it is complete.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be opened or read;
    /// [`Error::Source`] if its header line is not valid CSV.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let mut inner = LineSource::open(path.as_ref(), CsvDecoder::new())?;
        inner.prepare()?;
        Ok(CsvSource { inner })
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

    /// The header fields, once the header line has been read.
    pub fn headers(&self) -> Option<Vec<&str>> {
        let headers = self.inner.decoder.headers.as_ref();
        headers.map(|h| h.iter().collect())
    }
}

impl<T: DeserializeOwned + Send + 'static> Source for CsvSource<T> {
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

    /// Moves to `position`. Offset 0 starts over (the header is read again); any other
    /// offset must be after the header line, whose fields are kept for decoding.
    async fn seek(&mut self, position: FilePosition) -> Result<()> {
        self.inner.seek(position)
    }
}

/// Decodes each line as one CSV row, by the header: the first non-empty line, which it
/// reads and keeps. Empty lines are blank.
struct CsvDecoder<T> {
    headers: Option<StringRecord>,
    /// Byte offset just after the header line (valid when `headers` is set).
    header_end: u64,
    /// Scratch space for decoding a row.
    row: RowDecoder,
    _records: PhantomData<fn() -> T>,
}

impl<T> CsvDecoder<T> {
    fn new() -> Self {
        CsvDecoder {
            headers: None,
            header_end: 0,
            row: RowDecoder::default(),
            _records: PhantomData,
        }
    }

    /// Reads the header line if it is not known yet and is available.
    fn read_header(&mut self, lines: &mut LineReader) -> Result<()> {
        while self.headers.is_none() {
            let Some(line) = lines.next_line()? else {
                return Ok(());
            };
            if line.bytes.is_empty() {
                continue;
            }
            let headers = self.row.decode(line.bytes).map_err(|e| {
                Error::source(format!(
                    "the csv header of {} (line {}) cannot be read: {e}",
                    line.path.display(),
                    line.number
                ))
            })?;
            self.headers = Some(headers.clone());
            self.header_end = lines.position().offset;
        }
        Ok(())
    }
}

impl<T: DeserializeOwned> LineDecoder for CsvDecoder<T> {
    type Record = T;

    const STAGE: &'static str = "csv";

    fn is_blank(line: &[u8]) -> bool {
        line.is_empty()
    }

    fn decode(&mut self, line: &[u8]) -> std::result::Result<T, String> {
        let Some(headers) = &self.headers else {
            // Not reached: rows are decoded only once `ready` has read the header.
            return Err("the csv header is not read yet".to_string());
        };
        let row = self.row.decode(line)?;
        if row.len() != headers.len() {
            return Err(format!(
                "the row has {} fields but the header has {}",
                row.len(),
                headers.len()
            ));
        }
        row.deserialize::<T>(Some(headers))
            .map_err(|e| describe(&e, headers))
    }

    fn ready(&mut self, lines: &mut LineReader) -> Result<bool> {
        self.read_header(lines)?;
        Ok(self.headers.is_some())
    }

    /// Offset 0 starts over (the header is read again); any other offset must be after
    /// the header line, which is read first if it is not known yet.
    fn before_seek(&mut self, lines: &mut LineReader, position: &FilePosition) -> Result<()> {
        if position.offset == 0 {
            self.headers = None;
            return Ok(());
        }
        if self.headers.is_none() {
            lines.seek(FilePosition::default())?;
            lines.complete_lines_only(|lines| self.read_header(lines))?;
            if self.headers.is_none() {
                return Err(Error::source(format!(
                    "cannot resume {} at byte offset {}: the file has no complete csv header line",
                    lines.path().display(),
                    position.offset
                )));
            }
        }
        if position.offset < self.header_end {
            return Err(Error::source(format!(
                "cannot resume {} at byte offset {}: it is inside the csv header, which ends at \
                 byte offset {}",
                lines.path().display(),
                position.offset,
                self.header_end
            )));
        }
        Ok(())
    }
}

/// Describes a deserialization error without the csv reader's own position (which is
/// relative to the single line decoded, not to the file), naming the column.
fn describe(e: &::csv::Error, headers: &StringRecord) -> String {
    match e.kind() {
        ::csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(i) => match headers.get(i as usize) {
                Some(name) => format!("field `{name}` (column {}): {}", i + 1, err.kind()),
                None => format!("column {}: {}", i + 1, err.kind()),
            },
            None => err.kind().to_string(),
        },
        _ => e.to_string(),
    }
}

/// Decodes one line as one CSV record with the `csv` crate.
///
/// One `csv::Reader` is reused for every line (building one costs far more than
/// decoding a row): its input is swapped and `seek_raw` resets the parser.
#[derive(Debug)]
struct RowDecoder {
    reader: ::csv::Reader<LineInput>,
    record: StringRecord,
    sentinel: StringRecord,
}

impl Default for RowDecoder {
    fn default() -> Self {
        let mut reader = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .from_reader(LineInput::default());
        // Headers are ours to handle: this keeps `seek_raw` from reading a row for them.
        reader.set_headers(StringRecord::new());
        RowDecoder {
            reader,
            record: StringRecord::new(),
            sentinel: StringRecord::new(),
        }
    }
}

impl RowDecoder {
    /// Appended after the line: read back as a second record only if the line's
    /// quoting is balanced. Inside an unterminated quoted field it is swallowed.
    const SENTINEL: &'static [u8] = b"\n.";

    /// Decodes `line` (without its line terminator) into one record.
    fn decode(&mut self, line: &[u8]) -> std::result::Result<&StringRecord, String> {
        let input = self.reader.get_mut();
        input.bytes.clear();
        input.bytes.extend_from_slice(line);
        input.bytes.extend_from_slice(Self::SENTINEL);
        // Back to the start of the new input, with a fresh parser state and no
        // buffered bytes. The header logic of `csv` is off once a reader has sought.
        self.reader
            .seek_raw(SeekFrom::Start(0), ::csv::Position::new())
            .map_err(|e| e.to_string())?;
        match self.reader.read_record(&mut self.record) {
            Ok(true) => {}
            Ok(false) => return Err("empty row".to_string()),
            Err(e) => {
                return Err(match e.kind() {
                    ::csv::ErrorKind::Utf8 { err, .. } => format!(
                        "invalid utf-8 in column {} near byte {} of the field",
                        err.field() + 1,
                        err.valid_up_to()
                    ),
                    _ => e.to_string(),
                });
            }
        }
        match self.reader.read_record(&mut self.sentinel) {
            Ok(true) => Ok(&self.record),
            _ => Err(
                "unterminated quoted field (a csv row must be one line: quoted fields \
                 containing line breaks are not supported)"
                    .to_string(),
            ),
        }
    }
}

/// The in-memory input of a [`RowDecoder`]'s reader: the current line.
#[derive(Debug, Default)]
struct LineInput {
    bytes: Vec<u8>,
    at: usize,
}

impl Read for LineInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

impl Seek for LineInput {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match pos {
            SeekFrom::Start(0) => {
                self.at = 0;
                Ok(0)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a csv line input only seeks to its start",
            )),
        }
    }
}

/// A sink writing records as CSV rows, with a header line.
///
/// For a struct `T` the header (its field names) is written once, before the first
/// row; tuples and sequences get no header. Writes are buffered;
/// [`flush`](Sink::flush) writes the buffer and `fsync`s the file (`sync_data`). A
/// batch is encoded completely before any of it is written, so a record that cannot be
/// encoded (e.g. a nested struct) fails the batch without leaving half a row.
/// At-least-once.
pub struct CsvSink<T> {
    file: FileWriter,
    /// Whether the header must still be written (before the first row).
    needs_header: bool,
    _records: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for CsvSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvSink")
            .field("path", &self.file.path())
            .field("needs_header", &self.needs_header)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> CsvSink<T> {
    /// A sink writing to `path`, created or truncated.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be created.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(path.as_ref(), false)
    }

    /// A sink appending rows to `path`, created if missing. The header is written only
    /// if the file is empty (it is assumed to match otherwise).
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be opened.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(path.as_ref(), true)
    }

    fn new(path: &Path, append: bool) -> Result<Self> {
        let (file, empty) = FileWriter::open(path, append)?;
        Ok(CsvSink {
            file,
            needs_header: empty,
            _records: PhantomData,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn write_batch(&mut self, batch: &[T]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut encoder = WriterBuilder::new()
            .has_headers(self.needs_header)
            .from_writer(Vec::new());
        for (i, record) in batch.iter().enumerate() {
            encoder.serialize(record).map_err(|e| {
                self.file.write_error(
                    format_args!("record {i} of the batch could not be encoded as csv"),
                    e,
                )
            })?;
        }
        let encoded = encoder.into_inner().map_err(|e| {
            self.file
                .write_error(format_args!("csv encoding failed"), e.error())
        })?;
        self.file.write_all(&encoded)?;
        self.needs_header = false;
        Ok(())
    }
}

impl<T: Serialize + Send + 'static> Sink for CsvSink<T> {
    type Item = T;

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        self.write_batch(&batch)
    }

    async fn flush(&mut self) -> Result<()> {
        self.file.flush()
    }
}
