//! File sources and sinks: newline-delimited JSON (NDJSON) and CSV.
//!
//! | type | role | notes |
//! |---|---|---|
//! | [`NdjsonSource`] | source, bounded or tailed | one JSON value per line |
//! | [`CsvSource`] | source, bounded or tailed | first line is the header |
//! | [`NdjsonSink`] | sink, at-least-once | one JSON value per line; the default dead-letter sink |
//! | [`CsvSink`] | sink, at-least-once | writes the header once |
//! | [`TransactionalFileSink`] | sink, transactional (exactly once) | one NDJSON file per committed epoch, see [`transactional`] |
//! | [`KeyedFileSink`] | sink, idempotent | an NDJSON log of `(key, value)`, last value wins, see [`keyed`] |
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
//! Both sources report their [`progress`](crate::Source::progress) in bytes: the
//! offset of their position out of the file's current length (asked of the open file
//! on each call, so it grows with a tailed file); at the end of a bounded file the two
//! are equal.
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

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetter;
use crate::error::Result;

mod csv;
pub mod keyed;
mod lines;
mod ndjson;
pub mod transactional;

pub use self::csv::{CsvSink, CsvSource};
pub use self::keyed::KeyedFileSink;
pub use self::ndjson::{NdjsonSink, NdjsonSource};
pub use self::transactional::{TransactionalFileSink, read_committed};

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
/// [`Error::Io`](crate::Error::Io) if the file cannot be opened for appending.
pub fn dead_letter_file(path: impl AsRef<Path>) -> Result<NdjsonSink<DeadLetter>> {
    NdjsonSink::append(path)
}
