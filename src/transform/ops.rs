//! The stateless combinators and `Then`, which fuses two transforms.

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Emit, Transform};
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};

/// Passes records through unchanged; see [`identity`](super::identity).
pub struct Identity<T>(pub(super) PhantomData<fn(T) -> T>);

impl<T> fmt::Debug for Identity<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity")
    }
}

impl<T> Clone for Identity<T> {
    fn clone(&self) -> Self {
        Identity(PhantomData)
    }
}

impl<T> Transform for Identity<T> {
    type In = T;
    type Out = T;
    #[inline(always)]
    fn process<E: Emit<T>>(&mut self, item: T, out: &mut E) {
        out.emit(item);
    }
    #[inline]
    fn process_batch<E: Emit<T>>(&mut self, batch: Vec<T>, out: &mut E) {
        out.emit_batch(batch);
    }
}

/// Two transforms fused: every output of the first goes straight into the second,
/// with no buffer in between (a whole batch when the first stage passes its batch on:
/// see the [module docs](super)). See [`TransformExt::then`](super::TransformExt::then).
#[derive(Debug, Clone)]
pub struct Then<A, B> {
    first: A,
    second: B,
}

impl<A, B> Then<A, B> {
    pub(super) fn new(first: A, second: B) -> Self {
        Then { first, second }
    }
}

/// The emitter `Then` hands to its first stage: it runs the second stage in place.
struct Forward<'a, B, E> {
    next: &'a mut B,
    out: &'a mut E,
}

impl<B, E> Emit<B::In> for Forward<'_, B, E>
where
    B: Transform,
    E: Emit<B::Out>,
{
    #[inline(always)]
    fn emit(&mut self, item: B::In) {
        self.next.process(item, self.out);
    }
    fn dead_letter(&mut self, letter: DeadLetter) {
        self.out.dead_letter(letter);
    }
    #[inline]
    fn emit_batch(&mut self, batch: Vec<B::In>) {
        self.next.process_batch(batch, self.out);
    }
}

impl<A, B> Transform for Then<A, B>
where
    A: Transform,
    B: Transform<In = A::Out>,
{
    type In = A::In;
    type Out = B::Out;

    #[inline(always)]
    fn process<E: Emit<B::Out>>(&mut self, item: A::In, out: &mut E) {
        let mut fwd = Forward {
            next: &mut self.second,
            out,
        };
        self.first.process(item, &mut fwd);
    }

    fn process_batch<E: Emit<B::Out>>(&mut self, batch: Vec<A::In>, out: &mut E) {
        let mut fwd = Forward {
            next: &mut self.second,
            out,
        };
        self.first.process_batch(batch, &mut fwd);
    }

    fn flush<E: Emit<B::Out>>(&mut self, out: &mut E) {
        // The first stage's pending output flows through the second before the
        // second flushes its own.
        let mut fwd = Forward {
            next: &mut self.second,
            out,
        };
        self.first.flush(&mut fwd);
        self.second.flush(out);
    }

    fn on_watermark<E: Emit<B::Out>>(&mut self, watermark: DateTime<Utc>, out: &mut E) {
        // What the first stage releases flows through the second before the second
        // sees the watermark itself.
        let mut fwd = Forward {
            next: &mut self.second,
            out,
        };
        self.first.on_watermark(watermark, &mut fwd);
        self.second.on_watermark(watermark, out);
    }

    fn snapshot(&self) -> Result<Value> {
        let a = self.first.snapshot()?;
        let b = self.second.snapshot()?;
        if a.is_null() && b.is_null() {
            return Ok(Value::Null);
        }
        Ok(Value::Array(vec![a, b]))
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        match state {
            Value::Null => {
                self.first.restore(Value::Null)?;
                self.second.restore(Value::Null)
            }
            Value::Array(mut parts) if parts.len() == 2 => {
                let b = parts.pop().unwrap_or(Value::Null);
                let a = parts.pop().unwrap_or(Value::Null);
                self.first.restore(a)?;
                self.second.restore(b)
            }
            other => Err(Error::restore_failed(
                "then",
                format!("expected null or a pair of stage states, found {other}"),
            )),
        }
    }
}

macro_rules! fn_stage {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<F, I> {
            f: F,
            _in: PhantomData<fn(I)>,
        }

        impl<F, I> $name<F, I> {
            pub(super) fn new(f: F) -> Self {
                $name { f, _in: PhantomData }
            }
        }

        impl<F, I> fmt::Debug for $name<F, I> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<F: Clone, I> Clone for $name<F, I> {
            fn clone(&self) -> Self {
                $name::new(self.f.clone())
            }
        }
    };
}

fn_stage!(
    /// Maps each record; see [`map`](super::map).
    MapFn
);
fn_stage!(
    /// Keeps matching records; see [`filter`](super::filter).
    FilterFn
);
fn_stage!(
    /// One record to many; see [`flat_map`](super::flat_map).
    FlatMapFn
);
fn_stage!(
    /// Observes each record; see [`inspect`](super::inspect).
    InspectFn
);

impl<I, O, F: FnMut(I) -> O> Transform for MapFn<F, I> {
    type In = I;
    type Out = O;
    #[inline]
    fn process<E: Emit<O>>(&mut self, item: I, out: &mut E) {
        out.emit((self.f)(item));
    }
    /// Maps the batch into its own allocation when `O` fits in it (the standard
    /// library's in-place `collect`), else into one new `Vec`.
    #[inline]
    fn process_batch<E: Emit<O>>(&mut self, batch: Vec<I>, out: &mut E) {
        let mapped: Vec<O> = batch.into_iter().map(&mut self.f).collect();
        out.emit_batch(mapped);
    }
}

impl<I, F: FnMut(&I) -> bool> Transform for FilterFn<F, I> {
    type In = I;
    type Out = I;
    #[inline]
    fn process<E: Emit<I>>(&mut self, item: I, out: &mut E) {
        if (self.f)(&item) {
            out.emit(item);
        }
    }
    /// Compacts the batch in place without a branch on the predicate: every record is
    /// swapped to the end of the kept prefix, which grows by one if it is kept; the
    /// rest is dropped at the end. An unpredictable predicate costs no mispredictions.
    #[inline]
    fn process_batch<E: Emit<I>>(&mut self, mut batch: Vec<I>, out: &mut E) {
        let mut kept = 0;
        for i in 0..batch.len() {
            let keep = (self.f)(&batch[i]);
            // `kept < i` once a record was dropped: a predictable branch. Swapping
            // two distinct slots needs no temporary on the stack.
            if kept < i {
                let (head, tail) = batch.split_at_mut(i);
                std::mem::swap(&mut head[kept], &mut tail[0]);
            }
            kept += usize::from(keep);
        }
        batch.truncate(kept);
        out.emit_batch(batch);
    }
}

impl<I, It: IntoIterator, F: FnMut(I) -> It> Transform for FlatMapFn<F, I> {
    type In = I;
    type Out = It::Item;
    #[inline]
    fn process<E: Emit<It::Item>>(&mut self, item: I, out: &mut E) {
        for o in (self.f)(item) {
            out.emit(o);
        }
    }
}

impl<I, F: FnMut(&I)> Transform for InspectFn<F, I> {
    type In = I;
    type Out = I;
    #[inline]
    fn process<E: Emit<I>>(&mut self, item: I, out: &mut E) {
        (self.f)(&item);
        out.emit(item);
    }
    #[inline]
    fn process_batch<E: Emit<I>>(&mut self, batch: Vec<I>, out: &mut E) {
        batch.iter().for_each(&mut self.f);
        out.emit_batch(batch);
    }
}

/// A fallible map whose failures become dead letters; see [`try_map`](super::try_map).
pub struct TryMapFn<F, I> {
    stage: &'static str,
    f: F,
    _in: PhantomData<fn(I)>,
}

impl<F, I> TryMapFn<F, I> {
    pub(super) fn new(stage: &'static str, f: F) -> Self {
        TryMapFn {
            stage,
            f,
            _in: PhantomData,
        }
    }
}

impl<F, I> fmt::Debug for TryMapFn<F, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryMapFn")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl<I, O, Er, F> Transform for TryMapFn<F, I>
where
    F: FnMut(&I) -> std::result::Result<O, Er>,
    Er: fmt::Display,
    I: Serialize,
{
    type In = I;
    type Out = O;
    #[inline]
    fn process<E: Emit<O>>(&mut self, item: I, out: &mut E) {
        match (self.f)(&item) {
            Ok(o) => out.emit(o),
            Err(e) => out.dead_letter(DeadLetter::from_transform(self.stage, e, &item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TransformExt, VecEmitter, identity};
    use super::*;
    use crate::error::RecordErrorKind;

    #[test]
    fn chain_is_applied_in_order_per_record() {
        let mut seen = Vec::new();
        let mut out = VecEmitter::new();
        identity::<i32>()
            .inspect(|x| seen.push(*x))
            .flat_map(|x| vec![x, x + 100])
            .filter(|x| *x != 2)
            .map(|x| x * 2)
            .process_batch(vec![1, 2, 3], &mut out);
        assert_eq!(out.records, vec![2, 202, 204, 6, 206]);
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn try_map_routes_failures_with_the_record_and_stage() {
        let mut t = identity::<String>().try_map("parse-int", |s| s.parse::<i64>());
        let mut out = VecEmitter::new();
        t.process_batch(vec!["1".into(), "x".into(), "3".into()], &mut out);
        assert_eq!(out.records, vec![1, 3]);
        assert_eq!(out.dead_letters.len(), 1);
        let dl = &out.dead_letters[0];
        assert_eq!(dl.error.kind, RecordErrorKind::Transform);
        assert_eq!(dl.error.stage, "parse-int");
        assert_eq!(dl.record, Some(serde_json::json!("x")));
        assert!(dl.error.message.contains("invalid digit"));
    }

    #[test]
    fn stateless_chain_snapshot_is_null_and_restores() {
        let mut t = identity::<i32>().map(|x| x + 1).filter(|_| true);
        assert_eq!(t.snapshot().unwrap(), Value::Null);
        t.restore(Value::Null).unwrap();
        let err = t.restore(serde_json::json!({"bad": 1})).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::State);
    }
}

#[cfg(test)]
mod batch_tests {
    use std::rc::Rc;

    use super::super::{Emit, Transform, TransformExt, VecEmitter, identity};

    /// The batch path (in-place filter, in-place map, whole-batch emission) gives the
    /// records, in the order, that record-by-record processing gives, and drops every
    /// record it filters out exactly once.
    #[test]
    fn batch_path_equals_record_path_and_drops_what_it_filters() {
        let chain = || {
            identity::<(u32, Rc<()>)>()
                .inspect(|_| {})
                .filter(|(x, _)| x % 3 != 0)
                .map(|(x, rc)| (x * 10, rc))
                .filter(|(x, _)| *x != 70)
        };
        let token = Rc::new(());
        let input = || {
            (0..50u32)
                .map(|x| (x, Rc::clone(&token)))
                .collect::<Vec<_>>()
        };

        let mut by_batch = VecEmitter::new();
        chain().process_batch(input(), &mut by_batch);
        let mut by_record = VecEmitter::new();
        let mut t = chain();
        for r in input() {
            t.process(r, &mut by_record);
        }
        let got: Vec<u32> = by_batch.records.iter().map(|r| r.0).collect();
        let want: Vec<u32> = by_record.records.iter().map(|r| r.0).collect();
        assert_eq!(got, want);
        assert_eq!(got.len(), 32, "50 - 17 multiples of 3 - the 7");
        drop(by_record);
        assert_eq!(
            Rc::strong_count(&token),
            1 + got.len(),
            "filtered records were dropped"
        );
        drop(by_batch);
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn emit_batch_appends_after_records_already_emitted() {
        let mut out = VecEmitter::new();
        out.emit(1);
        out.emit_batch(vec![2, 3]);
        identity::<i32>()
            .map(|x| x + 3)
            .process_batch(vec![1, 2], &mut out);
        assert_eq!(out.records, [1, 2, 3, 4, 5]);
    }
}
