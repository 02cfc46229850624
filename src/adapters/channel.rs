//! Tokio mpsc channels as source and sink.

use std::future::Future;

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::source::{Boundedness, Source, SourceBatch};

/// An unbounded source reading a `tokio::sync::mpsc::Receiver`; it ends when every
/// sender is dropped. Reads take all waiting messages at once (`recv_many`), so
/// batches form by themselves under load.
///
/// Its position counts records received. A channel cannot replay, so `seek` only
/// restores the count: records in flight at a crash are the sender's to resend.
#[derive(Debug)]
pub struct ChannelSource<T> {
    rx: mpsc::Receiver<T>,
    received: u64,
}

impl<T> ChannelSource<T> {
    /// A source over `rx`.
    pub fn new(rx: mpsc::Receiver<T>) -> Self {
        ChannelSource { rx, received: 0 }
    }
}

impl<T: Send + 'static> Source for ChannelSource<T> {
    type Item = T;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Unbounded
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<T, u64>>> {
        // `recv_many` is cancel safe: dropped before completion, it received nothing.
        let mut records = Vec::with_capacity(max.min(1024));
        if self.rx.recv_many(&mut records, max).await == 0 {
            return Ok(None);
        }
        self.received += records.len() as u64;
        Ok(Some(SourceBatch::new(records, self.received)))
    }

    async fn seek(&mut self, position: u64) -> Result<()> {
        self.received = position;
        Ok(())
    }
}

/// A sink sending each batch as one message on a `tokio::sync::mpsc::Sender<Vec<T>>`.
/// A full channel makes `write` wait: backpressure reaches the pipeline.
#[derive(Debug)]
pub struct ChannelSink<T> {
    tx: mpsc::Sender<Vec<T>>,
}

impl<T> ChannelSink<T> {
    /// A sink sending to `tx`.
    pub fn new(tx: mpsc::Sender<Vec<T>>) -> Self {
        ChannelSink { tx }
    }
}

impl<T: Send + 'static> Sink for ChannelSink<T> {
    type Item = T;
    fn write(&mut self, batch: Vec<T>) -> impl Future<Output = Result<()>> + Send {
        let tx = self.tx.clone();
        async move {
            let n = batch.len();
            tx.send(batch).await.map_err(|_| {
                Error::sink(
                    "write",
                    format!("channel receiver dropped; a batch of {n} records was not delivered"),
                )
            })
        }
    }
}
