//! Checkpoints: a consistent cut of a pipeline, and the stores that keep it.
//!
//! A [`Checkpoint`] holds the source position, the transform state, the last
//! committed sink epoch and the completed batch runs of one pipeline. A
//! [`CheckpointStore`] loads and atomically saves it.
//!
//! The trait is named `CheckpointStore` (the design sketch called it
//! `Checkpoint`) so that the data type can own the plain name.
//!
//! Stores: [`MemoryCheckpointStore`] for tests and [`FileCheckpointStore`], the
//! embedded default (temp file, fsync, rename, directory fsync, CRC-32, previous
//! generation kept).

mod file;
mod memory;

pub use file::FileCheckpointStore;
pub use memory::MemoryCheckpointStore;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;

/// A consistent cut of one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The pipeline this belongs to.
    pub pipeline_id: String,
    /// Increases by one with every saved checkpoint; the sink's two-phase epoch.
    pub epoch: u64,
    /// The source position after the last record included, as JSON; `None` before any.
    /// (`Some(null)` is kept distinct from `None`: a position may serialize to `null`.)
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub source_position: Option<serde_json::Value>,
    /// The transform chain's state, as returned by `Transform::snapshot`.
    pub transform_state: serde_json::Value,
    /// A sink-specific token (e.g. a transaction id), if the sink uses one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub sink_token: Option<serde_json::Value>,
    /// The watermark tracker's state (current watermark, per-partition progress).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub watermarks: Option<serde_json::Value>,
    /// Run keys of batch runs that completed (a second run of one is skipped).
    pub completed_runs: BTreeSet<String>,
    /// When this checkpoint was taken.
    pub created_at: DateTime<Utc>,
}

impl Checkpoint {
    /// An empty checkpoint (epoch 0) for `pipeline_id`.
    pub fn new(pipeline_id: impl Into<String>) -> Self {
        Checkpoint {
            pipeline_id: pipeline_id.into(),
            epoch: 0,
            source_position: None,
            transform_state: serde_json::Value::Null,
            sink_token: None,
            watermarks: None,
            completed_runs: BTreeSet::new(),
            created_at: Utc::now(),
        }
    }
}

/// A field that is present decodes as `Some`, even when it is `null`; an absent one is
/// `None` (through `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Loads and atomically saves [`Checkpoint`]s.
///
/// # Contract
/// - `save` is atomic: after a crash at any instant, `load` returns either the previous
///   or the new checkpoint, complete.
/// - `load` returns `Ok(None)` only when the pipeline never saved one. A damaged
///   checkpoint is [`CheckpointError::Corrupt`], never `Ok(None)`: a pipeline must not
///   silently restart from the beginning.
///
/// # Example
/// ```
/// use batchstream::checkpoint::{Checkpoint, CheckpointStore, MemoryCheckpointStore};
/// # futures::executor::block_on(async {
/// let store = MemoryCheckpointStore::new();
/// assert!(store.load("orders").await?.is_none());
/// let mut ck = Checkpoint::new("orders");
/// ck.epoch = 1;
/// store.save(&ck).await?;
/// assert_eq!(store.load("orders").await?.unwrap().epoch, 1);
/// # Ok::<(), batchstream::CheckpointError>(())
/// # }).unwrap();
/// ```
pub trait CheckpointStore: Send + Sync {
    /// The latest checkpoint of `pipeline_id`, or `None` if it never saved one.
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send;

    /// Atomically replaces the pipeline's checkpoint with `checkpoint`.
    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;

    /// Saves `checkpoint`, whose JSON encoding (`serde_json::to_vec(checkpoint)`) the
    /// caller already has in `json`: a store that writes JSON can write those bytes
    /// instead of encoding the checkpoint again (the executors call this one). The
    /// default ignores `json` and calls [`save`](CheckpointStore::save).
    fn save_json(
        &self,
        checkpoint: &Checkpoint,
        json: &[u8],
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        let _ = json;
        self.save(checkpoint)
    }
}

trait DynCheckpointStore: Send + Sync {
    fn load<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>>;
    fn save<'a>(&'a self, checkpoint: &'a Checkpoint)
    -> BoxFuture<'a, Result<(), CheckpointError>>;
    fn save_json<'a>(
        &'a self,
        checkpoint: &'a Checkpoint,
        json: &'a [u8],
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;
}

impl<S: CheckpointStore> DynCheckpointStore for S {
    fn load<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>> {
        Box::pin(CheckpointStore::load(self, pipeline_id))
    }
    fn save<'a>(
        &'a self,
        checkpoint: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(CheckpointStore::save(self, checkpoint))
    }
    fn save_json<'a>(
        &'a self,
        checkpoint: &'a Checkpoint,
        json: &'a [u8],
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(CheckpointStore::save_json(self, checkpoint, json))
    }
}

/// A shared, type-erased checkpoint store. Cloning shares the same store.
#[derive(Clone)]
pub struct BoxCheckpointStore {
    inner: Arc<dyn DynCheckpointStore>,
}

impl BoxCheckpointStore {
    /// Erases the type of `store`.
    pub fn new<S: CheckpointStore + 'static>(store: S) -> Self {
        BoxCheckpointStore {
            inner: Arc::new(store),
        }
    }
}

impl Debug for BoxCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxCheckpointStore").finish_non_exhaustive()
    }
}

impl CheckpointStore for BoxCheckpointStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        let inner = Arc::clone(&self.inner);
        let id = pipeline_id.to_owned();
        async move { inner.load(&id).await }
    }
    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.inner.save(checkpoint).await
    }
    async fn save_json(&self, checkpoint: &Checkpoint, json: &[u8]) -> Result<(), CheckpointError> {
        self.inner.save_json(checkpoint, json).await
    }
}

impl<S: CheckpointStore> CheckpointStore for Arc<S> {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        (**self).load(pipeline_id)
    }
    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        (**self).save(checkpoint)
    }
    fn save_json(
        &self,
        checkpoint: &Checkpoint,
        json: &[u8],
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        (**self).save_json(checkpoint, json)
    }
}
