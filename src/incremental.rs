//! Incremental aggregates: turning a batch job into a stream job.
//!
//! A batch job recomputes a report from all of its input every time it runs. When
//! the report is made of *incremental* aggregates — per-key count, sum, average,
//! minimum and maximum — a stream job can keep it up to date instead: it holds one
//! small accumulator per key, folds each new record into it, and writes the changed
//! keys to an upsert table (an [`UpsertSink`](crate::adapters::UpsertSink), a
//! database table keyed by the group). After any prefix of the input, the table
//! equals what the batch job would compute over that prefix; after a crash the
//! accumulators come back from the checkpoint, so the equality survives restarts.
//!
//! [`Totals`] is the aggregator for the common case: count, sum, mean (kept as sum and
//! count, never as a running average) and min/max in one [`Summary`], built from the
//! [`Count`], [`Sum`], [`Min`] and [`Max`] aggregators. [`totals_by`] is the whole
//! keyed transform.
//!
//! # Insert-only input
//! Count, sum and mean can also take retractions (add a negative delta). Min and max
//! cannot: once the current minimum is retracted, the next one is unknown without the
//! full history. [`Totals`] therefore assumes insert-only input (appends, events, log
//! lines). For input with updates or deletes, recompute min/max in batch or keep the
//! full multiset of values per key.
//!
//! # The batch version and the streaming version of one job
//! The job: per customer, the number of orders, revenue, average, smallest and largest
//! order. Written once; the executor is the only difference.
//! ```
//! use batchstream::adapters::{IterSource, UpsertSink};
//! use batchstream::incremental::{Summary, totals_by};
//! use batchstream::{BatchExecutor, Pipeline, StreamExecutor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let orders = vec![("ann", 30i64), ("bob", 5), ("ann", 12), ("ann", 18)];
//! let job = |sink| {
//!     let logic = totals_by(|o: &(&str, i64)| o.0.to_string(), |o: &(&str, i64)| o.1);
//!     Pipeline::new("per-customer", IterSource::new(orders.clone()), logic, sink)
//! };
//!
//! // Batch: recompute everything, write the table once at the end.
//! let (sink, batch) = UpsertSink::new();
//! BatchExecutor::new().run(job(sink)).await?;
//!
//! // Stream: the table is updated after every source batch (here of one record).
//! let (sink, stream) = UpsertSink::new();
//! StreamExecutor::new().max_batch(1).run(job(sink)).await?;
//!
//! assert_eq!(batch.snapshot(), stream.snapshot());
//! let ann: Summary<i64> = batch.snapshot()["ann"];
//! assert_eq!((ann.count, ann.sum, ann.min, ann.max), (3, 60, Some(12), Some(30)));
//! assert_eq!(ann.mean(), Some(20.0));
//! # Ok(()) }
//! ```

use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::transform::{Aggregator, Identity, KeyBy, KeyedAggregate, Then, TransformExt, identity};
use crate::window::{Count, Max, Min, Number, Sum};

/// Count, sum, minimum and maximum of a group's values: the result of [`Totals`], and
/// its accumulator.
///
/// The mean is derived ([`Summary::mean`]) from the sum and the count, so merging two
/// summaries stays exact (averaging two averages would not).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary<N> {
    /// How many values.
    pub count: u64,
    /// Their sum (integer sums wrap around on overflow, as [`Sum`] does).
    pub sum: N,
    /// The smallest value; `None` only when `count` is 0. Insert-only: see the
    /// [module docs](self).
    pub min: Option<N>,
    /// The largest value; `None` only when `count` is 0. Insert-only: see the
    /// [module docs](self).
    pub max: Option<N>,
}

impl<N: Number> Summary<N> {
    /// The summary of no values.
    pub fn empty() -> Self {
        Summary {
            count: 0,
            sum: N::ZERO,
            min: None,
            max: None,
        }
    }

    /// The mean, `sum / count`; `None` when `count` is 0.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum.as_f64() / self.count as f64)
    }
}

impl<N: Number> Default for Summary<N> {
    fn default() -> Self {
        Self::empty()
    }
}

/// The identity number extractor the inner aggregators use: [`Totals`] reads the
/// value once per record and hands the number itself to each of them.
type Own<N> = fn(&N) -> N;

fn own<N: Copy>(n: &N) -> N {
    *n
}

/// An [`Aggregator`] computing a [`Summary`] (count, sum, mean, min, max) of a number
/// read from each record; it combines the [`Count`], [`Sum`], [`Min`] and [`Max`]
/// aggregators, reading the number once per record.
///
/// Use it with [`KeyBy::aggregate`], or through [`totals_by`].
///
/// ```
/// use batchstream::incremental::Totals;
/// use batchstream::transform::Aggregator;
///
/// let totals = Totals::of(|x: &i64| *x);
/// let mut acc = totals.create();
/// for v in [4, -2, 9] {
///     totals.add(&mut acc, v);
/// }
/// let s = totals.finish(&acc);
/// assert_eq!((s.count, s.sum, s.min, s.max), (3, 11, Some(-2), Some(9)));
/// ```
pub struct Totals<F, N> {
    value: F,
    sum: Sum<Own<N>>,
    min: Min<Own<N>>,
    max: Max<Own<N>>,
}

impl<F, N: Number> Totals<F, N> {
    /// Summarizes the number `value` reads from each record.
    pub fn of<V>(value: F) -> Self
    where
        F: Fn(&V) -> N,
    {
        Totals {
            value,
            sum: Sum::of(own as Own<N>),
            min: Min::of(own as Own<N>),
            max: Max::of(own as Own<N>),
        }
    }
}

impl<F, N> fmt::Debug for Totals<F, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Totals")
    }
}

impl<F: Clone, N> Clone for Totals<F, N> {
    fn clone(&self) -> Self {
        Totals {
            value: self.value.clone(),
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }
}

impl<V, N: Number, F: Fn(&V) -> N> Aggregator<V> for Totals<F, N> {
    type Acc = Summary<N>;
    type Output = Summary<N>;

    fn create(&self) -> Summary<N> {
        Summary {
            count: Aggregator::<N>::create(&Count),
            sum: self.sum.create(),
            min: self.min.create(),
            max: self.max.create(),
        }
    }

    #[inline]
    fn add(&self, acc: &mut Summary<N>, value: V) {
        let n = (self.value)(&value);
        Count.add(&mut acc.count, n);
        self.sum.add(&mut acc.sum, n);
        self.min.add(&mut acc.min, n);
        self.max.add(&mut acc.max, n);
    }

    fn merge(&self, acc: &mut Summary<N>, other: Summary<N>) {
        Aggregator::<N>::merge(&Count, &mut acc.count, other.count);
        self.sum.merge(&mut acc.sum, other.sum);
        self.min.merge(&mut acc.min, other.min);
        self.max.merge(&mut acc.max, other.max);
    }

    fn finish(&self, acc: &Summary<N>) -> Summary<N> {
        *acc
    }
}

/// The keyed transform of an incremental report: groups records by `key` and keeps a
/// [`Summary`] of the number `value` reads from each, emitting `(key, summary)` upserts
/// for the keys that changed at every epoch end (after every source batch under the
/// stream executor, once at the end under the batch executor).
///
/// Write the output to an idempotent upsert sink ([`UpsertSink`](crate::adapters::UpsertSink)
/// or a keyed table): the last value per key is the report. Memory: one [`Summary`] per
/// distinct key.
///
/// ```
/// use batchstream::incremental::totals_by;
/// use batchstream::testing::run_transform;
///
/// let logic = totals_by(|r: &(char, u64)| r.0, |r: &(char, u64)| r.1);
/// let out = run_transform(logic, vec![('a', 2), ('b', 7), ('a', 4)]).records;
/// let a = out.iter().find(|(k, _)| *k == 'a').unwrap().1;
/// assert_eq!((a.count, a.sum, a.mean()), (2, 6, Some(3.0)));
/// ```
#[allow(clippy::type_complexity)]
pub fn totals_by<T, K, N, KF, VF>(
    key: KF,
    value: VF,
) -> Then<KeyBy<Identity<T>, KF>, KeyedAggregate<K, T, Totals<VF, N>>>
where
    KF: FnMut(&T) -> K,
    VF: Fn(&T) -> N,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    N: Number,
{
    identity::<T>().key_by(key).aggregate(Totals::of(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summarize(values: &[i64]) -> Summary<i64> {
        let t = Totals::of(|v: &i64| *v);
        let mut acc = t.create();
        for v in values {
            t.add(&mut acc, *v);
        }
        t.finish(&acc)
    }

    #[test]
    fn summary_of_values() {
        let s = summarize(&[5, -3, 10, 0]);
        assert_eq!(
            s,
            Summary {
                count: 4,
                sum: 12,
                min: Some(-3),
                max: Some(10)
            }
        );
        assert_eq!(s.mean(), Some(3.0));
        assert_eq!(summarize(&[]), Summary::empty());
        assert_eq!(summarize(&[]).mean(), None);
    }

    #[test]
    fn merge_equals_adding_everything() {
        let t = Totals::of(|v: &i64| *v);
        let (a, b) = ([7, 1, -4], [12, 3]);
        let mut left = summarize(&a);
        t.merge(&mut left, summarize(&b));
        let all: Vec<i64> = a.iter().chain(&b).copied().collect();
        assert_eq!(left, summarize(&all));
        let mut empty = Summary::empty();
        t.merge(&mut empty, summarize(&b));
        assert_eq!(empty, summarize(&b));
    }

    #[test]
    fn summary_survives_a_json_round_trip() {
        let s = summarize(&[2, 9]);
        let back: Summary<i64> = serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
