//! The line-oriented machinery shared by the NDJSON and CSV adapters: a [`LineReader`]
//! keeping a byte-exact position, a [`LineSource`] turning lines into batches with a
//! [`LineDecoder`], and a [`FileWriter`] behind the sinks.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::FilePosition;
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Location, RecordError, RecordErrorKind, Result};
use crate::source::{Boundedness, SourceBatch, SourceProgress};

/// The shortest poll interval of a tailed source.
const MIN_POLL: Duration = Duration::from_millis(1);

/// One complete line handed out by a [`LineReader`].
#[derive(Debug)]
pub(super) struct RawLine<'a> {
    /// The file it was read from.
    pub(super) path: &'a Path,
    /// The line without its `\n` or `\r\n`.
    pub(super) bytes: &'a [u8],
    /// 1-based line number.
    pub(super) number: u64,
    /// Byte offset of the line's first byte.
    pub(super) offset: u64,
}

/// Reads a file line by line, keeping a byte-exact [`FilePosition`].
///
/// All progress lives here: a line is counted only once it is complete, and a
/// partial last line (tail mode) stays in `pending` until its newline arrives.
#[derive(Debug)]
pub(super) struct LineReader {
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

    /// The file read.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The position after the last line handed out.
    pub(super) fn position(&self) -> &FilePosition {
        &self.position
    }

    /// Runs `read` handing out complete lines only (as in tail mode), whatever the
    /// mode: a last line without `'\n'` is left for later.
    pub(super) fn complete_lines_only<R>(&mut self, read: impl FnOnce(&mut Self) -> R) -> R {
        let follow = std::mem::replace(&mut self.follow, true);
        let result = read(self);
        self.follow = follow;
        result
    }

    /// The next complete line, or `None` at the end of the file (in follow mode, also
    /// when only a partial line is available).
    pub(super) fn next_line(&mut self) -> Result<Option<RawLine<'_>>> {
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

    /// How far through the file the reader is, in bytes: `done` is the offset after the
    /// last line handed out (a partial last line read ahead is not counted), `total`
    /// the file's current length, asked of the open file (one `fstat`), so that it
    /// follows a growing file. `total` is never less than `done` (a file that shrank
    /// reports what was read), and is `None` if the length cannot be read.
    fn progress(&self) -> SourceProgress {
        let done = self.position.offset;
        let total = self
            .reader
            .get_ref()
            .metadata()
            .ok()
            .map(|m| m.len().max(done));
        SourceProgress {
            done,
            total,
            unit: "bytes",
        }
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
    pub(super) fn seek(&mut self, position: FilePosition) -> Result<()> {
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

/// What makes a [`LineSource`] NDJSON or CSV: how one line becomes one record.
pub(super) trait LineDecoder {
    /// The record type.
    type Record;

    /// The stage name of parse errors.
    const STAGE: &'static str;

    /// Whether `line` holds no record and is skipped (it still counts in line numbers).
    fn is_blank(line: &[u8]) -> bool;

    /// Decodes one line that is not blank (without its line terminator); an `Err` is
    /// the message of a rejected line.
    fn decode(&mut self, line: &[u8]) -> std::result::Result<Self::Record, String>;

    /// Reads what must come before the records (the CSV header) if it is not read yet
    /// and is available: `Ok(false)` while it is not, and no line is decoded then.
    fn ready(&mut self, lines: &mut LineReader) -> Result<bool> {
        let _ = lines;
        Ok(true)
    }

    /// Checks a seek to `position` and prepares for it, before `lines` moves there.
    fn before_seek(&mut self, lines: &mut LineReader, position: &FilePosition) -> Result<()> {
        let _ = (lines, position);
        Ok(())
    }
}

/// A source of records decoded one per line of a file by a `D`, bounded or tailed:
/// the body of [`NdjsonSource`](super::NdjsonSource) and
/// [`CsvSource`](super::CsvSource), which implement [`Source`](crate::Source) with it.
pub(super) struct LineSource<D> {
    lines: LineReader,
    /// The poll interval in tail mode; `None` when bounded.
    poll: Option<Duration>,
    pub(super) decoder: D,
}

impl<D> LineSource<D> {
    /// Formats the source as `name { path, position, <extra fields>, tail_poll_interval,
    /// .. }`.
    pub(super) fn fmt_debug(
        &self,
        f: &mut fmt::Formatter<'_>,
        name: &str,
        extra: &[(&str, &dyn fmt::Debug)],
    ) -> fmt::Result {
        let mut out = f.debug_struct(name);
        out.field("path", &self.lines.path)
            .field("position", &self.lines.position);
        for (field, value) in extra {
            out.field(field, value);
        }
        out.field("tail_poll_interval", &self.poll)
            .finish_non_exhaustive()
    }
}

impl<D: LineDecoder> LineSource<D> {
    /// A bounded source reading `path` from the beginning.
    pub(super) fn open(path: &Path, decoder: D) -> Result<Self> {
        Ok(LineSource {
            lines: LineReader::open(path)?,
            poll: None,
            decoder,
        })
    }

    /// Lets the decoder read what comes before the records (the CSV header) now, if it
    /// is complete: whether a last line without `'\n'` is complete depends on tail mode,
    /// which may not be chosen yet.
    pub(super) fn prepare(&mut self) -> Result<()> {
        let LineSource { lines, decoder, .. } = self;
        lines.complete_lines_only(|lines| decoder.ready(lines))?;
        Ok(())
    }

    /// Tail mode, polling every `poll_interval` (at least [`MIN_POLL`]).
    pub(super) fn tail(&mut self, poll_interval: Duration) {
        self.poll = Some(poll_interval.max(MIN_POLL));
        self.lines.follow = true;
    }

    /// The file read.
    pub(super) fn path(&self) -> &Path {
        &self.lines.path
    }

    /// The position after the last line read.
    pub(super) fn position(&self) -> FilePosition {
        self.lines.position.clone()
    }

    /// Reads complete lines without waiting, until `max` records and rejected lines
    /// are collected or the available input ends.
    fn read_available(
        &mut self,
        max: usize,
        records: &mut Vec<D::Record>,
        rejected: &mut Vec<DeadLetter>,
    ) -> Result<()> {
        if !self.decoder.ready(&mut self.lines)? {
            return Ok(());
        }
        while records.len() + rejected.len() < max {
            let Some(line) = self.lines.next_line()? else {
                break;
            };
            if D::is_blank(line.bytes) {
                continue;
            }
            match self.decoder.decode(line.bytes) {
                Ok(record) => records.push(record),
                Err(message) => {
                    let location = Location::in_file(line.path, line.number, line.offset);
                    rejected.push(DeadLetter::unparsed(
                        RecordError::new(RecordErrorKind::Parse, D::STAGE, message, location),
                        String::from_utf8_lossy(line.bytes),
                    ));
                }
            }
        }
        Ok(())
    }

    /// [`Source::boundedness`](crate::Source::boundedness).
    pub(super) fn boundedness(&self) -> Boundedness {
        if self.poll.is_some() {
            Boundedness::Unbounded
        } else {
            Boundedness::Bounded
        }
    }

    /// [`Source::progress`](crate::Source::progress): bytes consumed out of the file's
    /// current length (see [`LineReader::progress`]).
    pub(super) fn progress(&self) -> SourceProgress {
        self.lines.progress()
    }

    /// [`Source::next_batch`](crate::Source::next_batch).
    pub(super) async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<SourceBatch<D::Record, FilePosition>>> {
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

    /// [`Source::seek`](crate::Source::seek): checked by the decoder, then done by the
    /// reader.
    pub(super) fn seek(&mut self, position: FilePosition) -> Result<()> {
        self.decoder.before_seek(&mut self.lines, &position)?;
        self.lines.seek(position)
    }
}

/// The length of the prefix of `file` (of length `len`) that ends with its last
/// newline: everything after it is a partial line.
fn complete_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A buffered file behind a sink, with errors naming it.
#[derive(Debug)]
pub(super) struct FileWriter {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl FileWriter {
    /// Opens `path` for writing: truncated, or for appending. When appending to a file
    /// whose last line lacks its newline (a crash mid-write: a torn record, written
    /// after the last flush and so after the last checkpoint, which a restart writes
    /// again), that partial line is cut off so that the file stays one record per
    /// line. Also tells whether the file was empty.
    pub(super) fn open(path: &Path, append: bool) -> Result<(Self, bool)> {
        let io_err = |e| Error::io(path, e);
        let (file, empty) = if append {
            let mut file = File::options()
                .read(true)
                .append(true)
                .create(true)
                .open(path)
                .map_err(io_err)?;
            let mut len = file.metadata().map_err(io_err)?.len();
            let keep = complete_lines_len(&mut file, len).map_err(io_err)?;
            if keep < len {
                tracing::warn!(
                    file = %path.display(),
                    offset = keep,
                    bytes = len - keep,
                    "cutting off a partial last line left by a crash"
                );
                file.set_len(keep).map_err(io_err)?;
                len = keep;
            }
            (file, len == 0)
        } else {
            (File::create(path).map_err(io_err)?, true)
        };
        let writer = FileWriter {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        };
        Ok((writer, empty))
    }

    /// The file written.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// A sink `write` error: `"{what} for {file}: {error}"`.
    pub(super) fn write_error(&self, what: fmt::Arguments<'_>, error: impl fmt::Display) -> Error {
        Error::sink(
            "write",
            format!("{what} for {}: {error}", self.path.display()),
        )
    }

    /// Writes encoded records (buffered), mapping errors to a sink `write` error.
    pub(super) fn write_all(&mut self, encoded: &[u8]) -> Result<()> {
        self.writer
            .write_all(encoded)
            .map_err(|e| Error::sink("write", Error::io(&self.path, e)))
    }

    /// Writes the buffer and makes the file durable (`sync_data`), mapping errors to a
    /// sink `flush` error.
    pub(super) fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .and_then(|()| self.writer.get_ref().sync_data())
            .map_err(|e| Error::sink("flush", Error::io(&self.path, e)))
    }
}
