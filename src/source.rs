//! Sources: where records come from.
//!
//! A [`Source`] yields records in batches. Each batch carries the source
//! [`Position`](Source::Position) *after* it, which is what a checkpoint
//! stores; on restart the executor calls [`Source::seek`] with it. Once a
//! checkpoint holding a position is durable, the executor calls
//! [`Source::ack`], so that a broker offset commit happens after the data is
//! safe, never before.

use std::fmt::Debug;
use std::future::Future;

use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};

use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};

/// Whether a source ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Boundedness {
    /// The source ends: a file, a table snapshot, a date range.
    Bounded,
    /// The source may never end: a channel, a broker topic, a tailed file.
    Unbounded,
}

/// One batch from a source: decoded records, records that failed to decode,
/// and the position after the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBatch<T, P> {
    /// The decoded records, in source order.
    pub records: Vec<T>,
    /// Input the source read but could not decode. The executor sends these to the
    /// dead-letter sink (or fails the run if there is none).
    pub rejected: Vec<DeadLetter>,
    /// The source position after this batch: resuming from it reads the next record.
    pub position: P,
}

impl<T, P> SourceBatch<T, P> {
    /// A batch with no rejected input.
    pub fn new(records: Vec<T>, position: P) -> Self {
        SourceBatch {
            records,
            rejected: Vec::new(),
            position,
        }
    }

    /// Adds input that could not be decoded.
    pub fn with_rejected(mut self, rejected: Vec<DeadLetter>) -> Self {
        self.rejected = rejected;
        self
    }
}

/// How far through its input a source is, in its own unit (bytes for a file, rows for
/// a table), as far as it knows. Used for progress bars and for lag in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceProgress {
    /// Units consumed so far.
    pub done: u64,
    /// Units in the whole input (or available now, for an unbounded source), if known.
    pub total: Option<u64>,
    /// The unit, e.g. `"bytes"` or `"records"`.
    pub unit: &'static str,
}

impl SourceProgress {
    /// Units known to be available but not yet consumed (`total - done`).
    pub fn remaining(&self) -> Option<u64> {
        self.total.map(|t| t.saturating_sub(self.done))
    }
}

/// A position a source can checkpoint and resume from.
///
/// Blanket-implemented for every type with the required bounds.
pub trait Position: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<P> Position for P where P: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {}

/// A source of records, read in batches.
///
/// # Contract
/// - [`next_batch`](Source::next_batch) returns `Ok(Some(batch))` with at most `max`
///   records (an empty batch is allowed, e.g. when only rejected input was read), or
///   `Ok(None)` at the end of input. After `Ok(None)` it is not called again.
/// - It must be **cancel safe**: executors race it against timers and shutdown signals,
///   and if its future is dropped before completing, no record may be lost (the next
///   call returns it). Keep partial progress in `self`, not in the future.
/// - [`seek`](Source::seek) is called at most once, before the first `next_batch`, with
///   the position of the last durable checkpoint.
///
/// # Errors
/// Return [`Error::Source`] (use [`Error::source`] or [`Error::source_retryable`]) when
/// the source cannot continue. Bad individual records are not errors: put them in
/// [`SourceBatch::rejected`].
///
/// # Example
/// A source counting from 0 to `end`, resumable from a checkpoint:
/// ```
/// use batchstream::{Boundedness, Result, Source, SourceBatch};
///
/// struct Counter { next: u64, end: u64 }
///
/// impl Source for Counter {
///     type Item = u64;
///     type Position = u64;
///
///     fn boundedness(&self) -> Boundedness { Boundedness::Bounded }
///
///     async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<u64, u64>>> {
///         if self.next == self.end { return Ok(None); }
///         let stop = self.end.min(self.next + max as u64);
///         let records: Vec<u64> = (self.next..stop).collect();
///         self.next = stop;
///         Ok(Some(SourceBatch::new(records, stop)))
///     }
///
///     async fn seek(&mut self, position: u64) -> Result<()> {
///         self.next = position;
///         Ok(())
///     }
/// }
/// # futures::executor::block_on(async {
/// let mut src = Counter { next: 0, end: 5 };
/// src.seek(3).await.unwrap();
/// let batch = src.next_batch(10).await.unwrap().unwrap();
/// assert_eq!(batch.records, vec![3, 4]);
/// assert_eq!(batch.position, 5);
/// # });
/// ```
pub trait Source: Send {
    /// The record type.
    type Item: Send + 'static;
    /// The resumable position (an offset, a byte offset, per-partition offsets).
    type Position: Position;

    /// Whether this source ends.
    fn boundedness(&self) -> Boundedness;

    /// Reads the next batch of at most `max` records; `Ok(None)` at the end of input.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<SourceBatch<Self::Item, Self::Position>>>> + Send;

    /// Moves to `position`, taken from a checkpoint, so the next batch starts after it.
    ///
    /// The default refuses with [`Error::SeekUnsupported`]: a source that cannot seek
    /// can still run, but not resume from a checkpoint.
    fn seek(&mut self, position: Self::Position) -> impl Future<Output = Result<()>> + Send {
        let position = serde_json::to_string(&position).unwrap_or_else(|e| e.to_string());
        async move { Err(Error::SeekUnsupported { position }) }
    }

    /// How far through its input the source is, if it knows. Called once per batch;
    /// keep it cheap. Default: `None`.
    fn progress(&self) -> Option<SourceProgress> {
        None
    }

    /// Told that every record up to `position` is durably processed (the checkpoint that
    /// holds it is saved). A broker source commits its offsets here. Default: nothing.
    fn ack(&mut self, position: &Self::Position) -> impl Future<Output = Result<()>> + Send {
        let _ = position;
        async { Ok(()) }
    }
}

/// Object-safe form of [`Source`], used by [`BoxSource`].
trait DynSource<T, P>: Send {
    fn boundedness(&self) -> Boundedness;
    fn progress(&self) -> Option<SourceProgress>;
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Option<SourceBatch<T, P>>>>;
    fn seek(&mut self, position: P) -> BoxFuture<'_, Result<()>>;
    fn ack(&mut self, position: P) -> BoxFuture<'_, Result<()>>;
}

impl<S: Source> DynSource<S::Item, S::Position> for S {
    fn boundedness(&self) -> Boundedness {
        Source::boundedness(self)
    }
    fn progress(&self) -> Option<SourceProgress> {
        Source::progress(self)
    }
    fn next_batch(
        &mut self,
        max: usize,
    ) -> BoxFuture<'_, Result<Option<SourceBatch<S::Item, S::Position>>>> {
        Box::pin(Source::next_batch(self, max))
    }
    fn seek(&mut self, position: S::Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(Source::seek(self, position))
    }
    fn ack(&mut self, position: S::Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { Source::ack(self, &position).await })
    }
}

/// A type-erased source, for choosing a source at run time (`Vec<BoxSource<..>>`,
/// a config switch). Costs one allocation per batch.
pub struct BoxSource<T, P> {
    inner: Box<dyn DynSource<T, P>>,
}

impl<T, P> BoxSource<T, P> {
    /// Erases the type of `source`.
    pub fn new<S>(source: S) -> Self
    where
        S: Source<Item = T, Position = P> + 'static,
    {
        BoxSource {
            inner: Box::new(source),
        }
    }
}

impl<T, P> Debug for BoxSource<T, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxSource").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, P: Position> Source for BoxSource<T, P> {
    type Item = T;
    type Position = P;

    fn boundedness(&self) -> Boundedness {
        self.inner.boundedness()
    }
    fn progress(&self) -> Option<SourceProgress> {
        self.inner.progress()
    }
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<SourceBatch<T, P>>>> + Send {
        self.inner.next_batch(max)
    }
    fn seek(&mut self, position: P) -> impl Future<Output = Result<()>> + Send {
        self.inner.seek(position)
    }
    fn ack(&mut self, position: &P) -> impl Future<Output = Result<()>> + Send {
        self.inner.ack(position.clone())
    }
}
