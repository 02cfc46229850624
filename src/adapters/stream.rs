//! Bridges to the `futures` traits: any `Stream` as a source, any `futures::Sink`
//! as a sink.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::Poll;

use futures::{SinkExt as _, Stream, StreamExt as _};

use crate::error::{BoxError, Error, Result};
use crate::sink::Sink;
use crate::source::{Boundedness, Source, SourceBatch};

/// A source over any `futures::Stream`. Each read waits for one item, then takes
/// every item that is ready at once, up to the batch limit.
///
/// Its position counts items; `seek(n)` on a fresh stream skips `n` items (so a
/// stream that replays the same items resumes exactly).
pub struct StreamSource<St> {
    stream: Pin<Box<St>>,
    seen: u64,
    boundedness: Boundedness,
    done: bool,
}

impl<St> fmt::Debug for StreamSource<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("seen", &self.seen)
            .field("boundedness", &self.boundedness)
            .finish_non_exhaustive()
    }
}

impl<St: Stream> StreamSource<St> {
    /// An unbounded source over `stream`.
    pub fn new(stream: St) -> Self {
        StreamSource {
            stream: Box::pin(stream),
            seen: 0,
            boundedness: Boundedness::Unbounded,
            done: false,
        }
    }

    /// Declares the stream finite, so the batch executor accepts it.
    pub fn bounded(mut self) -> Self {
        self.boundedness = Boundedness::Bounded;
        self
    }
}

impl<St> Source for StreamSource<St>
where
    St: Stream + Send,
    St::Item: Send + 'static,
{
    type Item = St::Item;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        self.boundedness
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<St::Item, u64>>> {
        if self.done {
            return Ok(None);
        }
        // Cancel safe: an item is only taken out of the stream inside a single poll
        // that also returns it.
        let mut records = Vec::new();
        let stream = &mut self.stream;
        let done = &mut self.done;
        std::future::poll_fn(|cx| {
            while records.len() < max {
                match stream.as_mut().poll_next(cx) {
                    Poll::Ready(Some(item)) => records.push(item),
                    Poll::Ready(None) => {
                        *done = true;
                        return Poll::Ready(());
                    }
                    Poll::Pending if records.is_empty() => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(()),
                }
            }
            Poll::Ready(())
        })
        .await;
        if records.is_empty() {
            return Ok(None);
        }
        self.seen += records.len() as u64;
        Ok(Some(SourceBatch::new(records, self.seen)))
    }

    async fn seek(&mut self, position: u64) -> Result<()> {
        while self.seen < position {
            match self.stream.next().await {
                Some(_) => self.seen += 1,
                None => {
                    return Err(Error::source(format!(
                        "stream ended after {} items, before checkpointed position {position}",
                        self.seen
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Our [`Sink`] over any `futures::Sink<T>`: each batch is fed item by item and
/// flushed once per batch.
pub struct FuturesSink<Si, T> {
    inner: Pin<Box<Si>>,
    _item: PhantomData<fn(T)>,
}

impl<Si, T> fmt::Debug for FuturesSink<Si, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuturesSink").finish_non_exhaustive()
    }
}

impl<Si, T> FuturesSink<Si, T> {
    /// Wraps `sink`, a `futures::Sink<T>`.
    pub fn new(sink: Si) -> Self {
        FuturesSink {
            inner: Box::pin(sink),
            _item: PhantomData,
        }
    }
}

impl<Si, T> Sink for FuturesSink<Si, T>
where
    Si: futures::Sink<T> + Send,
    Si::Error: Into<BoxError>,
    T: Send + 'static,
{
    type Item = T;

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        for item in batch {
            self.inner
                .feed(item)
                .await
                .map_err(|e| Error::sink("write", e))?;
        }
        self.inner
            .flush()
            .await
            .map_err(|e| Error::sink("write", e))
    }

    async fn flush(&mut self) -> Result<()> {
        self.inner
            .flush()
            .await
            .map_err(|e| Error::sink("flush", e))
    }
}
