//! Sinks that keep what they receive in memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;
use crate::sink::{DeliveryGuarantee, Sink};

/// The shared handle of a [`CollectSink`]: read what the sink received.
#[derive(Debug)]
pub struct Collected<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for Collected<T> {
    fn clone(&self) -> Self {
        Collected {
            items: Arc::clone(&self.items),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Clone> Collected<T> {
    /// A copy of everything received so far, in arrival order.
    pub fn items(&self) -> Vec<T> {
        lock(&self.items).clone()
    }
}

impl<T> Collected<T> {
    /// How many items were received.
    pub fn len(&self) -> usize {
        lock(&self.items).len()
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns everything received so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *lock(&self.items))
    }
}

/// An at-least-once sink appending every record to a shared `Vec`.
///
/// ```
/// use batchstream::{Sink, adapters::CollectSink};
/// # futures::executor::block_on(async {
/// let (mut sink, out) = CollectSink::new();
/// sink.write(vec![1, 2]).await.unwrap();
/// assert_eq!(out.items(), vec![1, 2]);
/// # });
/// ```
#[derive(Debug)]
pub struct CollectSink<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> CollectSink<T> {
    /// A sink and the handle to read it.
    pub fn new() -> (Self, Collected<T>) {
        let items = Arc::new(Mutex::new(Vec::new()));
        (
            CollectSink {
                items: Arc::clone(&items),
            },
            Collected { items },
        )
    }

    /// A sink that appends to the same `Vec` as `handle` (e.g. after a restart).
    pub fn resume(handle: &Collected<T>) -> Self {
        CollectSink {
            items: Arc::clone(&handle.items),
        }
    }
}

impl<T: Send + 'static> Sink for CollectSink<T> {
    type Item = T;
    fn write(&mut self, batch: Vec<T>) -> impl Future<Output = Result<()>> + Send {
        lock(&self.items).extend(batch);
        std::future::ready(Ok(()))
    }
}

/// An idempotent sink for `(key, value)` records that keeps the last value per key:
/// an upsert table in memory. Keyed aggregates write their final table here.
///
/// ```
/// use batchstream::{Sink, adapters::UpsertSink};
/// # futures::executor::block_on(async {
/// let (mut sink, table) = UpsertSink::new();
/// sink.write(vec![("a", 1), ("b", 2), ("a", 3)]).await.unwrap();
/// assert_eq!(table.snapshot(), [("a", 3), ("b", 2)].into_iter().collect());
/// # });
/// ```
#[derive(Debug)]
pub struct UpsertSink<K, V> {
    table: Arc<Mutex<BTreeMap<K, V>>>,
}

/// The shared handle of an [`UpsertSink`].
#[derive(Debug)]
pub struct UpsertTable<K, V> {
    table: Arc<Mutex<BTreeMap<K, V>>>,
}

impl<K, V> Clone for UpsertTable<K, V> {
    fn clone(&self) -> Self {
        UpsertTable {
            table: Arc::clone(&self.table),
        }
    }
}

impl<K: Clone + Ord, V: Clone> UpsertTable<K, V> {
    /// A copy of the table.
    pub fn snapshot(&self) -> BTreeMap<K, V> {
        lock(&self.table).clone()
    }
}

impl<K, V> UpsertSink<K, V> {
    /// A sink and the handle to read its table.
    pub fn new() -> (Self, UpsertTable<K, V>) {
        let table = Arc::new(Mutex::new(BTreeMap::new()));
        (
            UpsertSink {
                table: Arc::clone(&table),
            },
            UpsertTable { table },
        )
    }

    /// A sink writing into the same table as `handle` (e.g. after a restart).
    pub fn resume(handle: &UpsertTable<K, V>) -> Self {
        UpsertSink {
            table: Arc::clone(&handle.table),
        }
    }
}

impl<K, V> Sink for UpsertSink<K, V>
where
    K: Ord + Send + 'static,
    V: Send + 'static,
{
    type Item = (K, V);
    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }
    fn write(&mut self, batch: Vec<(K, V)>) -> impl Future<Output = Result<()>> + Send {
        lock(&self.table).extend(batch);
        std::future::ready(Ok(()))
    }
}
