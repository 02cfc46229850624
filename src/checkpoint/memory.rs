//! An in-memory checkpoint store, for tests and examples.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Checkpoint, CheckpointStore};
use crate::error::CheckpointError;

/// Keeps checkpoints in memory. Clones share the same map, so a test can keep one
/// clone, hand another to a pipeline, and inspect or reuse it after a "crash".
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    latest: HashMap<String, Checkpoint>,
    saves: u64,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written checkpoint:
        // every update is a single insert.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many checkpoints were saved, over all pipelines.
    pub fn saves(&self) -> u64 {
        self.lock().saves
    }

    /// The latest checkpoint of `pipeline_id`, without going through the async trait.
    pub fn get(&self, pipeline_id: &str) -> Option<Checkpoint> {
        self.lock().latest.get(pipeline_id).cloned()
    }
}

impl CheckpointStore for MemoryCheckpointStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        let found = self.get(pipeline_id);
        async move { Ok(found) }
    }

    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        let mut inner = self.lock();
        inner.saves += 1;
        inner
            .latest
            .insert(checkpoint.pipeline_id.clone(), checkpoint.clone());
        async { Ok(()) }
    }
}
