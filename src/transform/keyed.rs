//! Keyed state: `key_by` followed by `fold` or `aggregate`.
//!
//! Keyed results are **upserts**: at the end of each epoch
//! ([`Transform::flush`]) the transform emits `(key, result)` for every key whose
//! result changed during the epoch. A sink that keeps the last value per key
//! (an upsert table) therefore holds the same final table whichever executor ran
//! the pipeline. Memory is one accumulator per distinct key.

use std::fmt;
use std::hash::Hash;

use chrono::{DateTime, Utc};
// Keyed state is on the hot path: a fast, seeded hasher instead of SipHash.
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Emit, Then, Transform, TransformExt};
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};

/// Pairs each record with its key; see [`TransformExt::key_by`].
pub struct KeyBy<T, F> {
    inner: T,
    key: F,
}

impl<T: fmt::Debug, F> fmt::Debug for KeyBy<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBy")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T, F> KeyBy<T, F> {
    pub(super) fn new(inner: T, key: F) -> Self {
        KeyBy { inner, key }
    }
}

struct KeyEmit<'a, F, E> {
    key: &'a mut F,
    out: &'a mut E,
}

impl<V, K, F, E> Emit<V> for KeyEmit<'_, F, E>
where
    F: FnMut(&V) -> K,
    E: Emit<(K, V)>,
{
    #[inline(always)]
    fn emit(&mut self, item: V) {
        let k = (self.key)(&item);
        self.out.emit((k, item));
    }
    fn dead_letter(&mut self, letter: DeadLetter) {
        self.out.dead_letter(letter);
    }
}

impl<T, K, F> Transform for KeyBy<T, F>
where
    T: Transform,
    F: FnMut(&T::Out) -> K,
{
    type In = T::In;
    type Out = (K, T::Out);

    #[inline(always)]
    fn process<E: Emit<(K, T::Out)>>(&mut self, item: T::In, out: &mut E) {
        let mut ke = KeyEmit {
            key: &mut self.key,
            out,
        };
        self.inner.process(item, &mut ke);
    }
    fn flush<E: Emit<(K, T::Out)>>(&mut self, out: &mut E) {
        let mut ke = KeyEmit {
            key: &mut self.key,
            out,
        };
        self.inner.flush(&mut ke);
    }
    fn on_watermark<E: Emit<(K, T::Out)>>(&mut self, watermark: DateTime<Utc>, out: &mut E) {
        let mut ke = KeyEmit {
            key: &mut self.key,
            out,
        };
        self.inner.on_watermark(watermark, &mut ke);
    }
    fn snapshot(&self) -> Result<Value> {
        self.inner.snapshot()
    }
    fn restore(&mut self, state: Value) -> Result<()> {
        self.inner.restore(state)
    }
}

impl<T, K, F> KeyBy<T, F>
where
    T: Transform,
    F: FnMut(&T::Out) -> K,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
{
    /// Folds the records of each key into an accumulator that starts as `init`;
    /// emits `(key, accumulator)` for changed keys at each epoch end.
    ///
    /// ```
    /// use batchstream::transform::{self, TransformExt};
    /// use batchstream::testing::run_transform;
    ///
    /// let totals = transform::identity::<(&'static str, u32)>()
    ///     .key_by(|(k, _)| k.to_string())
    ///     .fold(0u32, |acc, (_, v)| *acc += v);
    /// let mut out = run_transform(totals, vec![("a", 1), ("b", 2), ("a", 3)]).records;
    /// out.sort();
    /// assert_eq!(out, vec![("a".to_string(), 4), ("b".to_string(), 2)]);
    /// ```
    pub fn fold<A, G>(self, init: A, f: G) -> Then<Self, KeyedFold<K, T::Out, A, G>>
    where
        A: Clone + Serialize + DeserializeOwned,
        G: FnMut(&mut A, T::Out),
    {
        self.then(KeyedFold {
            init,
            f,
            state: KeyedState::default(),
            _v: std::marker::PhantomData,
        })
    }

    /// Aggregates each key's records with `agg`; emits `(key, agg.finish(acc))` for
    /// changed keys at each epoch end.
    pub fn aggregate<Ag>(self, agg: Ag) -> Then<Self, KeyedAggregate<K, T::Out, Ag>>
    where
        Ag: Aggregator<T::Out>,
    {
        self.then(KeyedAggregate {
            agg,
            state: KeyedState::default(),
            _v: std::marker::PhantomData,
        })
    }
}

/// An aggregation in four steps: create an accumulator, add values, merge two
/// accumulators (for windows that combine partial results), finish into a result.
pub trait Aggregator<V> {
    /// The running state, stored in checkpoints.
    type Acc: Clone + Serialize + DeserializeOwned;
    /// The result.
    type Output;
    /// A new, empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one value.
    fn add(&self, acc: &mut Self::Acc, value: V);
    /// Merges `other` into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result for `acc`.
    fn finish(&self, acc: &Self::Acc) -> Self::Output;
}

/// Per-key accumulators plus the keys changed since the last flush.
struct KeyedState<K, A> {
    map: HashMap<K, (A, bool)>,
    dirty: Vec<K>,
}

impl<K, A> Default for KeyedState<K, A> {
    fn default() -> Self {
        KeyedState {
            map: HashMap::new(),
            dirty: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyedSnapshot<K, A> {
    entries: Vec<(K, A)>,
    dirty: Vec<K>,
}

impl<K, A> KeyedState<K, A>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    A: Clone + Serialize + DeserializeOwned,
{
    #[inline]
    fn update(&mut self, key: K, init: impl FnOnce() -> A, f: impl FnOnce(&mut A)) {
        match self.map.get_mut(&key) {
            Some((acc, dirty)) => {
                f(acc);
                if !*dirty {
                    *dirty = true;
                    self.dirty.push(key);
                }
            }
            None => {
                let mut acc = init();
                f(&mut acc);
                self.dirty.push(key.clone());
                self.map.insert(key, (acc, true));
            }
        }
    }

    fn drain_dirty(&mut self, mut each: impl FnMut(K, &A)) {
        for key in self.dirty.drain(..) {
            if let Some((acc, dirty)) = self.map.get_mut(&key) {
                *dirty = false;
                each(key, acc);
            }
        }
    }

    fn snapshot(&self, stage: &str) -> Result<Value> {
        let snap = KeyedSnapshot {
            entries: self
                .map
                .iter()
                .map(|(k, (a, _))| (k.clone(), a.clone()))
                .collect(),
            dirty: self.dirty.clone(),
        };
        serde_json::to_value(&snap).map_err(|e| Error::snapshot_failed(stage, e))
    }

    fn restore(&mut self, stage: &str, state: Value) -> Result<()> {
        self.map.clear();
        self.dirty.clear();
        if state.is_null() {
            return Ok(());
        }
        let snap: KeyedSnapshot<K, A> =
            serde_json::from_value(state).map_err(|e| Error::restore_failed(stage, e))?;
        self.map = snap
            .entries
            .into_iter()
            .map(|(k, a)| (k, (a, false)))
            .collect();
        for k in snap.dirty {
            if let Some((_, d)) = self.map.get_mut(&k) {
                *d = true;
                self.dirty.push(k);
            }
        }
        Ok(())
    }
}

/// A keyed fold; see [`KeyBy::fold`].
pub struct KeyedFold<K, V, A, G> {
    init: A,
    f: G,
    state: KeyedState<K, A>,
    _v: std::marker::PhantomData<fn(V)>,
}

impl<K, V, A, G> fmt::Debug for KeyedFold<K, V, A, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedFold")
            .field("keys", &self.state.map.len())
            .finish_non_exhaustive()
    }
}

impl<K, V, A, G> Transform for KeyedFold<K, V, A, G>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    A: Clone + Serialize + DeserializeOwned,
    G: FnMut(&mut A, V),
{
    type In = (K, V);
    type Out = (K, A);

    #[inline]
    fn process<E: Emit<(K, A)>>(&mut self, (key, value): (K, V), _out: &mut E) {
        let init = &self.init;
        let f = &mut self.f;
        self.state.update(key, || init.clone(), |acc| f(acc, value));
    }
    fn flush<E: Emit<(K, A)>>(&mut self, out: &mut E) {
        self.state.drain_dirty(|k, a| out.emit((k, a.clone())));
    }
    fn snapshot(&self) -> Result<Value> {
        self.state.snapshot("fold")
    }
    fn restore(&mut self, state: Value) -> Result<()> {
        self.state.restore("fold", state)
    }
}

/// A keyed aggregation; see [`KeyBy::aggregate`].
pub struct KeyedAggregate<K, V, Ag: Aggregator<V>> {
    agg: Ag,
    state: KeyedState<K, Ag::Acc>,
    _v: std::marker::PhantomData<fn(V)>,
}

impl<K, V, Ag: Aggregator<V>> fmt::Debug for KeyedAggregate<K, V, Ag> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedAggregate")
            .field("keys", &self.state.map.len())
            .finish_non_exhaustive()
    }
}

impl<K, V, Ag> Transform for KeyedAggregate<K, V, Ag>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    Ag: Aggregator<V>,
{
    type In = (K, V);
    type Out = (K, Ag::Output);

    #[inline]
    fn process<E: Emit<(K, Ag::Output)>>(&mut self, (key, value): (K, V), _out: &mut E) {
        let agg = &self.agg;
        self.state
            .update(key, || agg.create(), |acc| agg.add(acc, value));
    }
    fn flush<E: Emit<(K, Ag::Output)>>(&mut self, out: &mut E) {
        let agg = &self.agg;
        self.state.drain_dirty(|k, a| out.emit((k, agg.finish(a))));
    }
    fn snapshot(&self) -> Result<Value> {
        self.state.snapshot("aggregate")
    }
    fn restore(&mut self, state: Value) -> Result<()> {
        self.state.restore("aggregate", state)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{VecEmitter, identity};
    use super::*;

    struct Mean;
    impl Aggregator<f64> for Mean {
        type Acc = (f64, u64);
        type Output = f64;
        fn create(&self) -> (f64, u64) {
            (0.0, 0)
        }
        fn add(&self, acc: &mut (f64, u64), v: f64) {
            acc.0 += v;
            acc.1 += 1;
        }
        fn merge(&self, acc: &mut (f64, u64), o: (f64, u64)) {
            acc.0 += o.0;
            acc.1 += o.1;
        }
        fn finish(&self, acc: &(f64, u64)) -> f64 {
            acc.0 / acc.1 as f64
        }
    }

    #[test]
    fn fold_emits_only_changed_keys_per_flush() {
        let mut t = identity::<(u8, u32)>()
            .key_by(|r| r.0)
            .fold(0u32, |a, (_, v)| *a += v);
        let mut out = VecEmitter::new();
        t.process_batch(vec![(1, 1), (2, 2), (1, 3)], &mut out);
        assert!(out.records.is_empty(), "nothing before the epoch ends");
        t.flush(&mut out);
        out.records.sort();
        assert_eq!(out.records, vec![(1, 4), (2, 2)]);
        out.records.clear();
        t.process_batch(vec![(2, 5)], &mut out);
        t.flush(&mut out);
        assert_eq!(out.records, vec![(2, 7)]);
    }

    #[test]
    fn aggregate_snapshot_restore_continues_where_it_stopped() {
        let make = || {
            identity::<f64>()
                .key_by(|_| "x".to_string())
                .aggregate(Mean)
        };
        let mut a = make();
        let mut out = VecEmitter::new();
        a.process_batch(vec![1.0, 3.0], &mut out);
        a.flush(&mut out);
        let snap = a.snapshot().unwrap();

        let mut b = make();
        b.restore(snap).unwrap();
        let mut out = VecEmitter::new();
        b.process_batch(vec![5.0], &mut out);
        b.flush(&mut out);
        assert_eq!(out.records, vec![("x".to_string(), 3.0)]);
    }

    #[test]
    fn restoring_garbage_is_a_state_error() {
        let mut t = identity::<(u8, u32)>()
            .key_by(|r| r.0)
            .fold(0u32, |a, (_, v)| *a += v);
        let err = t
            .restore(serde_json::json!([null, {"entries": "nope"}]))
            .unwrap_err();
        assert!(
            matches!(err, Error::State { ref stage, .. } if stage == "fold"),
            "{err}"
        );
    }
}
