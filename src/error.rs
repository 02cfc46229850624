//! Errors: one crate error, plus the typed errors it wraps.
//!
//! Every error says what failed and where. Context (file, line, byte offset,
//! pipeline, stage) lives in fields so that code can `match` on it; the
//! `Display` text repeats it for people reading logs.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A boxed error from user code (a custom source, sink or transform).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, batchstream::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The crate error.
///
/// Use the predicates ([`Error::is_retryable`], [`Error::kind`]) rather than
/// matching on message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A source failed to produce the next batch.
    #[error("source failed: {source}")]
    Source {
        /// Whether trying again may succeed (a timeout, a dropped connection).
        retryable: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A sink failed to write, flush, prepare or commit.
    #[error("sink failed during {operation}: {source}")]
    Sink {
        /// The sink operation that failed: `write`, `flush`, `prepare`, `commit`, `recover`.
        operation: &'static str,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A record was rejected (bad input or a failing `try_map`) and the pipeline has no
    /// dead-letter sink to send it to, so the run fails rather than drop it.
    #[error("{0} (no dead-letter sink is configured, so the run stops here)")]
    Record(Box<RecordError>),
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file could not be opened, read or written.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Transform state could not be snapshotted or restored.
    #[error("transform state of stage `{stage}` could not be {action}: {message}")]
    State {
        /// The stage whose state failed.
        stage: String,
        /// `snapshotted` or `restored`.
        action: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The checkpoint holds a position, but the source cannot seek to it.
    #[error(
        "source cannot seek to checkpointed position {position}; implement `Source::seek` to resume from checkpoints"
    )]
    SeekUnsupported {
        /// The position from the checkpoint, as JSON.
        position: String,
    },
    /// An executor that needs a bounded source was given an unbounded one.
    #[error("the {executor} executor needs a bounded source, but this source is unbounded")]
    UnboundedSource {
        /// The executor name.
        executor: &'static str,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// More records were dead-lettered than the pipeline's limit allows: the input is
    /// probably wrong as a whole, so the run stops instead of dead-lettering everything.
    #[error(
        "too many dead letters: {dead_lettered} of {records_read} records read (limit: {limit}); the last one: {last}"
    )]
    TooManyDeadLetters {
        /// Records dead-lettered so far.
        dead_lettered: u64,
        /// Records read so far.
        records_read: u64,
        /// The limit, as configured.
        limit: String,
        /// The record that crossed the limit.
        last: Box<RecordError>,
    },
    /// A second shutdown signal arrived while the run was stopping gracefully: it was
    /// abandoned where it stood. Nothing after the last saved checkpoint was committed
    /// or acked, so a restart resumes from that checkpoint without loss.
    #[error(
        "pipeline `{pipeline}` aborted by a second shutdown signal; it resumes from its last checkpoint"
    )]
    Aborted {
        /// The pipeline.
        pipeline: String,
    },
    /// A supervisor restarted the pipeline as often as its budget allows, and it failed
    /// again.
    #[error("pipeline `{pipeline}` failed after {restarts} restarts within {window:?}: {last}")]
    RestartsExhausted {
        /// The pipeline.
        pipeline: String,
        /// Restarts within the window.
        restarts: u32,
        /// The window.
        window: std::time::Duration,
        /// The last failure.
        #[source]
        last: Box<Error>,
    },
}

/// A coarse classification of [`Error`], for handling without matching every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::Source`].
    Source,
    /// See [`Error::Sink`].
    Sink,
    /// See [`Error::Record`].
    Record,
    /// See [`Error::Checkpoint`].
    Checkpoint,
    /// See [`Error::Io`].
    Io,
    /// See [`Error::State`].
    State,
    /// See [`Error::SeekUnsupported`] and [`Error::UnboundedSource`].
    Unsupported,
    /// See [`Error::Config`].
    Config,
    /// See [`Error::TooManyDeadLetters`].
    TooManyDeadLetters,
    /// See [`Error::RestartsExhausted`].
    RestartsExhausted,
    /// See [`Error::Aborted`].
    Aborted,
}

impl Error {
    /// A permanent source error wrapping `err`.
    pub fn source(err: impl Into<BoxError>) -> Self {
        Error::Source {
            retryable: false,
            source: err.into(),
        }
    }

    /// A transient source error wrapping `err` (a retry may succeed).
    pub fn source_retryable(err: impl Into<BoxError>) -> Self {
        Error::Source {
            retryable: true,
            source: err.into(),
        }
    }

    /// A source error wrapping `err`, transient when `retryable` (connectors that
    /// classify their client's errors use this).
    pub fn source_with(retryable: bool, err: impl Into<BoxError>) -> Self {
        Error::Source {
            retryable,
            source: err.into(),
        }
    }

    /// A sink error from `operation` wrapping `err`, transient when `retryable`.
    pub fn sink_with(operation: &'static str, retryable: bool, err: impl Into<BoxError>) -> Self {
        Error::Sink {
            operation,
            retryable,
            source: err.into(),
        }
    }

    /// A permanent sink error from `operation` wrapping `err`.
    pub fn sink(operation: &'static str, err: impl Into<BoxError>) -> Self {
        Error::Sink {
            operation,
            retryable: false,
            source: err.into(),
        }
    }

    /// A transient sink error from `operation` wrapping `err`.
    pub fn sink_retryable(operation: &'static str, err: impl Into<BoxError>) -> Self {
        Error::Sink {
            operation,
            retryable: true,
            source: err.into(),
        }
    }

    /// An i/o error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Transform (or source position) state of `stage` could not be snapshotted.
    pub fn snapshot_failed(stage: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::State {
            stage: stage.into(),
            action: "snapshotted",
            message: err.to_string(),
        }
    }

    /// Transform (or source position) state of `stage` could not be restored.
    pub fn restore_failed(stage: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::State {
            stage: stage.into(),
            action: "restored",
            message: err.to_string(),
        }
    }

    /// Whether retrying the failed operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Source { retryable, .. } | Error::Sink { retryable, .. } => *retryable,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            Error::Checkpoint(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether restarting the pipeline from its last checkpoint may cure this error:
    /// source, sink and i/o failures, and checkpoint i/o. Not: a rejected record with
    /// no dead-letter sink (it would fail again: a poison record must not loop), a
    /// corrupt checkpoint, bad state, configuration or unsupported operations.
    pub fn is_restartable(&self) -> bool {
        matches!(
            self,
            Error::Source { .. }
                | Error::Sink { .. }
                | Error::Io { .. }
                | Error::Checkpoint(CheckpointError::Io { .. } | CheckpointError::Other(_))
        )
    }

    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Source { .. } => ErrorKind::Source,
            Error::Sink { .. } => ErrorKind::Sink,
            Error::Record(_) => ErrorKind::Record,
            Error::Checkpoint(_) => ErrorKind::Checkpoint,
            Error::Io { .. } => ErrorKind::Io,
            Error::State { .. } => ErrorKind::State,
            Error::SeekUnsupported { .. } | Error::UnboundedSource { .. } => ErrorKind::Unsupported,
            Error::Config(_) => ErrorKind::Config,
            Error::TooManyDeadLetters { .. } => ErrorKind::TooManyDeadLetters,
            Error::RestartsExhausted { .. } => ErrorKind::RestartsExhausted,
            Error::Aborted { .. } => ErrorKind::Aborted,
        }
    }

    /// The rejected record's error, if this is [`Error::Record`].
    pub fn as_record_error(&self) -> Option<&RecordError> {
        match self {
            Error::Record(r) => Some(r),
            _ => None,
        }
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Self {
        Error::Record(Box::new(e))
    }
}

/// Errors of a checkpoint store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The checkpoint exists but is damaged: truncated, bit-flipped or not a checkpoint.
    /// It is never ignored: a damaged checkpoint must not restart a pipeline from the beginning.
    #[error("checkpoint {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The damaged file (or a store-specific locator).
        path: PathBuf,
        /// What check failed, e.g. `checksum mismatch: expected 0x1234abcd, found 0x0badf00d`.
        reason: String,
    },
    /// Reading or writing the store failed.
    #[error("checkpoint i/o failed on {}: {source}", path.display())]
    Io {
        /// The file (or store-specific locator).
        path: PathBuf,
        /// The underlying error; `source.kind()` tells e.g. `StorageFull`.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint could not be encoded or decoded.
    #[error("checkpoint for pipeline `{pipeline_id}` could not be {action}: {message}")]
    Serde {
        /// The pipeline.
        pipeline_id: String,
        /// `encoded` or `decoded`.
        action: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A pipeline id that the store cannot use (e.g. characters not allowed in a file name).
    #[error("invalid pipeline id `{0}`: use letters, digits, `-`, `_` and `.`")]
    InvalidId(String),
    /// A store-specific error (a database store, say).
    #[error("checkpoint store failed: {0}")]
    Other(#[source] BoxError),
}

impl CheckpointError {
    /// Whether the store ran out of space (`ENOSPC`): saving failed, the previous
    /// checkpoint is intact, and nothing was acked past it.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, CheckpointError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull)
    }

    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        use std::io::ErrorKind as K;
        matches!(self, CheckpointError::Io { source, .. }
        if matches!(
            source.kind(),
            K::Interrupted
                | K::TimedOut
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::ConnectionRefused
                | K::NotConnected
                | K::BrokenPipe
        ))
    }
}

/// Where a record came from: whatever of file, line, byte offset, partition and
/// index within its batch is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Location {
    /// The file the record was read from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<PathBuf>,
    /// 1-based line number in the file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u64>,
    /// Byte offset of the start of the record in the file; for a record from a broker
    /// (no file), its offset or sequence number in the partition.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offset: Option<u64>,
    /// The source partition.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partition: Option<String>,
    /// 0-based index of the record within the batch that carried it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index_in_batch: Option<u64>,
}

impl Location {
    /// A location in a file.
    pub fn in_file(file: impl Into<PathBuf>, line: u64, offset: u64) -> Self {
        Location {
            file: Some(file.into()),
            line: Some(line),
            offset: Some(offset),
            ..Location::default()
        }
    }

    /// Sets the file.
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Sets the 1-based line number.
    pub fn with_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// Sets the byte offset.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Location::default()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(file) = &self.file {
            parts.push(format!("file {}", file.display()));
        }
        if let Some(line) = self.line {
            parts.push(format!("line {line}"));
        }
        if let Some(offset) = self.offset {
            // In a file it counts bytes; in a broker partition it is the message offset.
            let unit = if self.file.is_some() {
                "byte offset"
            } else {
                "offset"
            };
            parts.push(format!("{unit} {offset}"));
        }
        if let Some(p) = &self.partition {
            parts.push(format!("partition {p}"));
        }
        if let Some(i) = self.index_in_batch {
            parts.push(format!("record {i} of its batch"));
        }
        if parts.is_empty() {
            f.write_str("unknown location")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Formats " at <location>", or nothing when the location is unknown.
struct AtLocation<'a>(&'a Location);

impl fmt::Display for AtLocation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " at {}", self.0)
        }
    }
}

/// Why a single record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordErrorKind {
    /// The record's bytes could not be decoded (bad JSON, a short CSV row, bad UTF-8).
    Parse,
    /// A transform (`try_map`) returned an error for it.
    Transform,
    /// A sink refused it permanently.
    Sink,
    /// Its event time could not be read (a missing or unparsable timestamp).
    Timestamp,
    /// It arrived after the watermark had passed its window's end plus the allowed
    /// lateness.
    Late,
}

impl fmt::Display for RecordErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordErrorKind::Parse => "parse",
            RecordErrorKind::Transform => "transform",
            RecordErrorKind::Sink => "sink",
            RecordErrorKind::Timestamp => "timestamp",
            RecordErrorKind::Late => "late",
        })
    }
}

/// One rejected record: what stage rejected it, why, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind} error in stage `{stage}`{}: {message}", AtLocation(location))]
pub struct RecordError {
    /// The kind of failure.
    pub kind: RecordErrorKind,
    /// The stage that rejected the record (a source name or a transform name).
    pub stage: String,
    /// The error text.
    pub message: String,
    /// Where the record came from.
    pub location: Location,
}

impl RecordError {
    /// A new record error.
    pub fn new(
        kind: RecordErrorKind,
        stage: impl Into<String>,
        message: impl fmt::Display,
        location: Location,
    ) -> Self {
        RecordError {
            kind,
            stage: stage.into(),
            message: message.to_string(),
            location,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_error_names_file_line_and_offset() {
        let e = RecordError::new(
            RecordErrorKind::Parse,
            "ndjson",
            "expected value at line 1 column 1",
            Location::in_file("orders.ndjson", 17, 1234),
        );
        let text = Error::from(e).to_string();
        assert!(text.contains("orders.ndjson"), "{text}");
        assert!(text.contains("line 17"), "{text}");
        assert!(text.contains("byte offset 1234"), "{text}");
        assert!(text.contains("no dead-letter sink"), "{text}");
    }

    #[test]
    fn retryable_predicate_follows_the_constructor() {
        assert!(Error::sink_retryable("write", "timeout").is_retryable());
        assert!(!Error::sink("write", "constraint violated").is_retryable());
        assert_eq!(Error::source("x").kind(), ErrorKind::Source);
    }
}
