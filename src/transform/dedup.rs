//! De-duplication of redelivered records.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};

use super::{Emit, Transform};
use crate::error::{Error, Result};

/// Drops records whose key was seen among the last `capacity` distinct keys: see
/// [`dedup_by`].
pub struct Dedup<T, K, F> {
    key: F,
    capacity: usize,
    seen: HashSet<K, foldhash::fast::RandomState>,
    order: VecDeque<K>,
    dropped: u64,
    _records: PhantomData<fn(T)>,
}

/// Passes each record whose key (from `key`) was not seen among the last `capacity`
/// distinct keys, and drops repeats: brokers with at-least-once delivery redeliver
/// messages (after a consumer restart, a rebalance, a missed ack), and an exactly-once
/// pipeline must not write them twice.
///
/// The remembered keys are part of the checkpoint, so a redelivery after a restart is
/// caught too. Memory is bounded: once `capacity` keys are remembered the oldest is
/// forgotten, so size it to cover the broker's redelivery horizon (e.g. its maximum
/// un-acked window). Dropped repeats are logged (`tracing`, debug) and counted in the
/// snapshot.
///
/// ```
/// use batchstream::testing::run_transform;
/// use batchstream::transform;
///
/// let out = run_transform(transform::dedup_by(1000, |x: &(u32, &str)| x.0),
///                         vec![(1, "a"), (2, "b"), (1, "a"), (3, "c"), (2, "b")]);
/// assert_eq!(out.records, vec![(1, "a"), (2, "b"), (3, "c")]);
/// ```
pub fn dedup_by<T, K, F>(capacity: usize, key: F) -> Dedup<T, K, F>
where
    F: FnMut(&T) -> K,
    K: Hash + Eq + Clone,
{
    Dedup {
        key,
        capacity: capacity.max(1),
        seen: HashSet::default(),
        order: VecDeque::new(),
        dropped: 0,
        _records: PhantomData,
    }
}

impl<T, K, F> Dedup<T, K, F> {
    /// Repeats dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<T, K: fmt::Debug, F> fmt::Debug for Dedup<T, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("capacity", &self.capacity)
            .field("remembered", &self.order.len())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DedupState<K> {
    keys: Vec<K>,
    dropped: u64,
}

impl<T, K, F> Transform for Dedup<T, K, F>
where
    F: FnMut(&T) -> K,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
{
    type In = T;
    type Out = T;

    fn process<E: Emit<T>>(&mut self, item: T, out: &mut E) {
        let key = (self.key)(&item);
        if self.seen.contains(&key) {
            self.dropped += 1;
            tracing::debug!(dropped = self.dropped, "dropped a redelivered record");
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        out.emit(item);
    }

    fn snapshot(&self) -> Result<serde_json::Value> {
        let state = DedupState {
            keys: self.order.iter().cloned().collect(),
            dropped: self.dropped,
        };
        serde_json::to_value(state).map_err(|e| Error::snapshot_failed("dedup", e))
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        let state: DedupState<K> =
            serde_json::from_value(state).map_err(|e| Error::restore_failed("dedup", e))?;
        self.seen.clear();
        self.order.clear();
        for k in state.keys {
            if self.seen.insert(k.clone()) {
                self.order.push_back(k);
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.dropped = state.dropped;
        Ok(())
    }
}
