//! Sinks: where results go.
//!
//! A [`Sink`] receives whole batches with [`write`](Sink::write) and makes them
//! durable with [`flush`](Sink::flush). It declares its
//! [`DeliveryGuarantee`]. Sinks that support two-phase commit implement
//! [`prepare`](Sink::prepare), [`commit`](Sink::commit) and
//! [`recover`](Sink::recover); the others keep the no-op defaults.
//!
//! # Checkpoint order
//! At each checkpoint an executor calls, in this order: `flush` → `prepare(epoch)`
//! → save the checkpoint → `commit(epoch)` → source ack. On restart it calls
//! `recover(last_checkpointed_epoch)` before writing anything.

use std::fmt::Debug;
use std::future::Future;

use futures::future::BoxFuture;

use crate::error::Result;

/// What a sink promises about records replayed after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryGuarantee {
    /// Every record arrives; records after the last checkpoint may arrive twice after a
    /// crash.
    AtLeastOnce,
    /// Writes are keyed upserts: a replayed record overwrites itself, so the stored
    /// result has no duplicates.
    Idempotent,
    /// Writes of an epoch become visible only at `commit(epoch)`, which happens after the
    /// checkpoint is saved: exactly once.
    Transactional,
}

/// A destination for records, written in batches.
///
/// # Contract
/// - [`write`](Sink::write) may buffer; after [`flush`](Sink::flush) returns `Ok`, every
///   record written before it is durable (for an at-least-once sink) or prepared.
/// - The executor never calls the sink concurrently.
///
/// # Errors
/// Return [`Error::Sink`](crate::Error::Sink) (see [`Error::sink`](crate::Error::sink)
/// and [`Error::sink_retryable`](crate::Error::sink_retryable)). The run stops and the
/// source is not acked past the last checkpoint, so nothing is lost.
///
/// # Example
/// A sink that sums what it receives:
/// ```
/// use batchstream::{Result, Sink};
///
/// #[derive(Default)]
/// struct Total(u64);
///
/// impl Sink for Total {
///     type Item = u64;
///     async fn write(&mut self, batch: Vec<u64>) -> Result<()> {
///         self.0 += batch.iter().sum::<u64>();
///         Ok(())
///     }
/// }
/// # futures::executor::block_on(async {
/// let mut t = Total::default();
/// t.write(vec![1, 2, 3]).await.unwrap();
/// t.flush().await.unwrap();
/// assert_eq!(t.0, 6);
/// # });
/// ```
pub trait Sink: Send {
    /// The record type.
    type Item: Send + 'static;

    /// What this sink promises on replay. Default: [`DeliveryGuarantee::AtLeastOnce`].
    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::AtLeastOnce
    }

    /// Writes a batch (it may be buffered until [`flush`](Sink::flush)).
    fn write(&mut self, batch: Vec<Self::Item>) -> impl Future<Output = Result<()>> + Send;

    /// Makes every written record durable. Default: nothing to do.
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Two-phase commit, phase one: make epoch `epoch`'s writes durable but not yet
    /// visible. Called after `flush`, before the checkpoint is saved. Default: nothing.
    fn prepare(&mut self, epoch: u64) -> impl Future<Output = Result<()>> + Send {
        let _ = epoch;
        async { Ok(()) }
    }

    /// Two-phase commit, phase two: make epoch `epoch` visible. Called after the
    /// checkpoint holding `epoch` is saved; may be called again for the same epoch after
    /// a restart, and must then succeed without writing twice. Default: nothing.
    fn commit(&mut self, epoch: u64) -> impl Future<Output = Result<()>> + Send {
        let _ = epoch;
        async { Ok(()) }
    }

    /// On restart: `checkpointed` is the last epoch recorded in the checkpoint (`None`
    /// when there is none). Commit prepared epochs up to it and discard later ones.
    /// Default: nothing.
    fn recover(&mut self, checkpointed: Option<u64>) -> impl Future<Output = Result<()>> + Send {
        let _ = checkpointed;
        async { Ok(()) }
    }
}

trait DynSink<T>: Send {
    fn guarantee(&self) -> DeliveryGuarantee;
    fn write(&mut self, batch: Vec<T>) -> BoxFuture<'_, Result<()>>;
    fn flush(&mut self) -> BoxFuture<'_, Result<()>>;
    fn prepare(&mut self, epoch: u64) -> BoxFuture<'_, Result<()>>;
    fn commit(&mut self, epoch: u64) -> BoxFuture<'_, Result<()>>;
    fn recover(&mut self, checkpointed: Option<u64>) -> BoxFuture<'_, Result<()>>;
}

impl<S: Sink> DynSink<S::Item> for S {
    fn guarantee(&self) -> DeliveryGuarantee {
        Sink::guarantee(self)
    }
    fn write(&mut self, batch: Vec<S::Item>) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sink::write(self, batch))
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sink::flush(self))
    }
    fn prepare(&mut self, epoch: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sink::prepare(self, epoch))
    }
    fn commit(&mut self, epoch: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sink::commit(self, epoch))
    }
    fn recover(&mut self, checkpointed: Option<u64>) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sink::recover(self, checkpointed))
    }
}

/// A type-erased sink (the dead-letter sink of a pipeline is one).
pub struct BoxSink<T> {
    inner: Box<dyn DynSink<T>>,
}

impl<T> BoxSink<T> {
    /// Erases the type of `sink`.
    pub fn new<S: Sink<Item = T> + 'static>(sink: S) -> Self {
        BoxSink {
            inner: Box::new(sink),
        }
    }
}

impl<T> Debug for BoxSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxSink")
            .field("guarantee", &self.inner.guarantee())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Sink for BoxSink<T> {
    type Item = T;
    fn guarantee(&self) -> DeliveryGuarantee {
        self.inner.guarantee()
    }
    fn write(&mut self, batch: Vec<T>) -> impl Future<Output = Result<()>> + Send {
        self.inner.write(batch)
    }
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.inner.flush()
    }
    fn prepare(&mut self, epoch: u64) -> impl Future<Output = Result<()>> + Send {
        self.inner.prepare(epoch)
    }
    fn commit(&mut self, epoch: u64) -> impl Future<Output = Result<()>> + Send {
        self.inner.commit(epoch)
    }
    fn recover(&mut self, checkpointed: Option<u64>) -> impl Future<Output = Result<()>> + Send {
        self.inner.recover(checkpointed)
    }
}
