//! Transforms: your logic, free of any runtime.
//!
//! A [`Transform`] is synchronous: it takes records and pushes results into an
//! [`Emit`] output. It never awaits, so a plain `#[test]` can drive it (see
//! [`testing::run_transform`](crate::testing::run_transform)). An executor is the
//! processing model; a transform is your logic, and the same transform runs
//! under all three executors.
//!
//! Stateless chains built with [`TransformExt`] (`map`, `filter`, `flat_map`,
//! `try_map`, `inspect`) are *fused*: no buffer is allocated between stages. Given a
//! batch ([`Transform::process_batch`], what executors call without event time),
//! `map`, `filter` and `inspect` work on the batch's own buffer, one stage after the
//! other: `filter` compacts it in place without a branch per record (a branch the CPU
//! mispredicts for unpredictable predicates), `map` writes its results into the same
//! allocation when they fit. Records come out in the same order either way; what
//! changes is only the interleaving of different stages' closures within a batch, so
//! do not make one stage's closure depend on another's side effects. Record by
//! record ([`Transform::process`], as with event time), each record goes through the
//! whole chain before the next one starts.
//!
//! # Example
//! ```
//! use batchstream::transform::{self, TransformExt};
//! use batchstream::testing::run_transform;
//!
//! let t = transform::identity::<i64>()
//!     .filter(|x| *x % 2 == 0)
//!     .map(|x| x * 10);
//! let out = run_transform(t, vec![1, 2, 3, 4]);
//! assert_eq!(out.records, vec![20, 40]);
//! ```

mod dedup;
mod keyed;
mod ops;

pub use dedup::{Dedup, dedup_by};
pub use keyed::{Aggregator, KeyBy, KeyedAggregate, KeyedFold};
pub use ops::{FilterFn, FlatMapFn, Identity, InspectFn, MapFn, Then, TryMapFn};

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::dead_letter::DeadLetter;
use crate::error::Result;

/// The output of a transform: records go on with [`emit`](Emit::emit); rejected
/// records go to the dead-letter path with [`dead_letter`](Emit::dead_letter).
pub trait Emit<T> {
    /// Passes `item` downstream.
    fn emit(&mut self, item: T);
    /// Rejects a record. The executor adds the source position and sends it to the
    /// dead-letter sink, or fails the run if there is none.
    fn dead_letter(&mut self, letter: DeadLetter);
    /// Passes a whole batch downstream, in order. The default emits each record;
    /// emitters that can take the `Vec` as it is (a [`VecEmitter`], the next stage of
    /// a chain) override it so the batch is not copied.
    fn emit_batch(&mut self, batch: Vec<T>) {
        for item in batch {
            self.emit(item);
        }
    }
}

/// A collecting [`Emit`]: records into one `Vec`, dead letters into another.
///
/// Executors use it to gather a batch's output; tests can use it directly.
#[derive(Debug)]
pub struct VecEmitter<T> {
    /// The emitted records.
    pub records: Vec<T>,
    /// The dead letters.
    pub dead_letters: Vec<DeadLetter>,
}

impl<T> Default for VecEmitter<T> {
    fn default() -> Self {
        VecEmitter {
            records: Vec::new(),
            dead_letters: Vec::new(),
        }
    }
}

impl<T> VecEmitter<T> {
    /// An empty emitter.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T> Emit<T> for VecEmitter<T> {
    #[inline]
    fn emit(&mut self, item: T) {
        self.records.push(item);
    }
    fn dead_letter(&mut self, letter: DeadLetter) {
        self.dead_letters.push(letter);
    }
    fn emit_batch(&mut self, batch: Vec<T>) {
        if self.records.is_empty() {
            // Take the batch's buffer rather than copying it.
            self.records = batch;
        } else {
            self.records.extend(batch);
        }
    }
}

/// A synchronous, runtime-free step from `In` records to `Out` records.
///
/// Implement [`process`](Transform::process); the other methods have defaults.
/// State that must survive a restart goes through [`snapshot`](Transform::snapshot)
/// and [`restore`](Transform::restore) as JSON values, which the executor stores in
/// the checkpoint.
///
/// # Lifecycle
/// The executor calls `process` for each record of a batch (through
/// [`process_batch`](Transform::process_batch)), then [`flush`](Transform::flush) at the
/// end of each epoch: after every batch (stream), after every trigger (micro-batch), at
/// the end of input (batch). A stateful transform emits its updated results in
/// `flush`, so all three executors end with the same results.
///
/// # Example
/// A transform that splits lines into words, tested with a plain `#[test]`:
/// ```
/// use batchstream::transform::{Emit, Transform, VecEmitter};
///
/// struct Words;
/// impl Transform for Words {
///     type In = String;
///     type Out = String;
///     fn process<E: Emit<String>>(&mut self, line: String, out: &mut E) {
///         for w in line.split_whitespace() {
///             out.emit(w.to_owned());
///         }
///     }
/// }
///
/// let mut out = VecEmitter::new();
/// Words.process_batch(vec!["a b".into(), "c".into()], &mut out);
/// assert_eq!(out.records, ["a", "b", "c"]);
/// ```
pub trait Transform {
    /// Input record type.
    type In;
    /// Output record type.
    type Out;

    /// Processes one record, emitting zero or more outputs or a dead letter.
    fn process<E: Emit<Self::Out>>(&mut self, item: Self::In, out: &mut E);

    /// Processes a batch. The default calls [`process`](Transform::process) per record;
    /// override it to work on the whole batch at once.
    fn process_batch<E: Emit<Self::Out>>(&mut self, batch: Vec<Self::In>, out: &mut E) {
        for item in batch {
            self.process(item, out);
        }
    }

    /// End of an epoch or of the input: emit what is pending (e.g. updated aggregates).
    fn flush<E: Emit<Self::Out>>(&mut self, out: &mut E) {
        let _ = out;
    }

    /// The event-time watermark advanced to `watermark`: no record with an earlier
    /// event time is expected any more (later ones are *late*). Event-time operators
    /// (windows) close what can no longer change and free its state. Called between
    /// records, in source order, so lateness does not depend on batch boundaries; at the
    /// end of input the executors send [`DateTime::<Utc>::MAX_UTC`](chrono::DateTime::MAX_UTC).
    /// Default: nothing.
    fn on_watermark<E: Emit<Self::Out>>(&mut self, watermark: DateTime<Utc>, out: &mut E) {
        let _ = (watermark, out);
    }

    /// The transform's state, for a checkpoint. Default: `null` (stateless).
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) if the state cannot be encoded.
    fn snapshot(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Restores state from a [`snapshot`](Transform::snapshot).
    ///
    /// # Errors
    /// [`Error::State`](crate::Error::State) if `state` does not decode.
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let _ = state;
        Ok(())
    }
}

/// Combinators for every [`Transform`]; each returns a new, fused transform.
pub trait TransformExt: Transform + Sized {
    /// Runs `next` on every output of `self`.
    fn then<T2>(self, next: T2) -> Then<Self, T2>
    where
        T2: Transform<In = Self::Out>,
    {
        Then::new(self, next)
    }

    /// Maps each output with `f`.
    fn map<O, F>(self, f: F) -> Then<Self, MapFn<F, Self::Out>>
    where
        F: FnMut(Self::Out) -> O,
    {
        self.then(map(f))
    }

    /// Keeps the outputs for which `f` is true.
    fn filter<F>(self, f: F) -> Then<Self, FilterFn<F, Self::Out>>
    where
        F: FnMut(&Self::Out) -> bool,
    {
        self.then(filter(f))
    }

    /// Maps each output to any number of records.
    fn flat_map<I, F>(self, f: F) -> Then<Self, FlatMapFn<F, Self::Out>>
    where
        F: FnMut(Self::Out) -> I,
        I: IntoIterator,
    {
        self.then(flat_map(f))
    }

    /// Maps each output with a fallible `f`; a record for which `f` fails becomes a
    /// [`DeadLetter`] naming `stage`, holding the record as JSON and the error text.
    fn try_map<O, Er, F>(self, stage: &'static str, f: F) -> Then<Self, TryMapFn<F, Self::Out>>
    where
        F: FnMut(&Self::Out) -> std::result::Result<O, Er>,
        Er: std::fmt::Display,
        Self::Out: Serialize,
    {
        self.then(try_map(stage, f))
    }

    /// Calls `f` on each output and passes it on unchanged.
    fn inspect<F>(self, f: F) -> Then<Self, InspectFn<F, Self::Out>>
    where
        F: FnMut(&Self::Out),
    {
        self.then(inspect(f))
    }

    /// Pairs each output with its key, `(key, record)`; follow with
    /// [`KeyBy::fold`] or [`KeyBy::aggregate`] for keyed state.
    fn key_by<K, F>(self, f: F) -> KeyBy<Self, F>
    where
        F: FnMut(&Self::Out) -> K,
    {
        KeyBy::new(self, f)
    }
}

impl<T: Transform> TransformExt for T {}

/// The transform that passes `T` records through unchanged: the start of a chain.
pub fn identity<T>() -> Identity<T> {
    Identity(PhantomData)
}

/// A transform mapping each record with `f`.
pub fn map<I, O, F: FnMut(I) -> O>(f: F) -> MapFn<F, I> {
    MapFn::new(f)
}

/// A transform keeping the records for which `f` is true.
pub fn filter<I, F: FnMut(&I) -> bool>(f: F) -> FilterFn<F, I> {
    FilterFn::new(f)
}

/// A transform mapping each record to any number of records.
pub fn flat_map<I, It: IntoIterator, F: FnMut(I) -> It>(f: F) -> FlatMapFn<F, I> {
    FlatMapFn::new(f)
}

/// A fallible map; failures become dead letters from stage `stage`.
pub fn try_map<I, O, Er, F>(stage: &'static str, f: F) -> TryMapFn<F, I>
where
    F: FnMut(&I) -> std::result::Result<O, Er>,
    Er: std::fmt::Display,
    I: Serialize,
{
    TryMapFn::new(stage, f)
}

/// A transform calling `f` on each record and passing it on.
pub fn inspect<I, F: FnMut(&I)>(f: F) -> InspectFn<F, I> {
    InspectFn::new(f)
}
