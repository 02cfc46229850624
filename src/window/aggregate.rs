//! Built-in aggregators: count, sum, min, max, mean.
//!
//! They implement [`Aggregator`], so they also work with
//! [`KeyBy::aggregate`](crate::transform::KeyBy::aggregate).

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::transform::Aggregator;

mod sealed {
    #[allow(unreachable_pub)]
    pub trait Sealed {}
    impl Sealed for i64 {}
    impl Sealed for u64 {}
    impl Sealed for f64 {}
}

/// The numbers [`Sum`], [`Min`], [`Max`] and [`Mean`] accept: `i64`, `u64` and `f64`.
///
/// Sealed: it cannot be implemented outside this crate.
///
/// Integer sums wrap around on overflow. `f64` minimum and maximum ignore NaN
/// (like [`f64::min`]). `f64` accumulators that are NaN or infinite do not survive a
/// snapshot (JSON has no such numbers; `serde_json` writes them as `null`).
pub trait Number:
    sealed::Sealed + Copy + PartialOrd + fmt::Debug + Serialize + DeserializeOwned
{
    /// Zero.
    const ZERO: Self;
    /// `self + other` (wrapping for integers).
    fn plus(self, other: Self) -> Self;
    /// The smaller of the two (for `f64`, the one that is not NaN).
    fn smaller(self, other: Self) -> Self;
    /// The larger of the two (for `f64`, the one that is not NaN).
    fn larger(self, other: Self) -> Self;
    /// As `f64` (rounded for large integers).
    fn as_f64(self) -> f64;
}

macro_rules! int_number {
    ($t:ty) => {
        impl Number for $t {
            const ZERO: Self = 0;
            #[inline]
            fn plus(self, other: Self) -> Self {
                self.wrapping_add(other)
            }
            #[inline]
            fn smaller(self, other: Self) -> Self {
                Ord::min(self, other)
            }
            #[inline]
            fn larger(self, other: Self) -> Self {
                Ord::max(self, other)
            }
            #[inline]
            fn as_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
int_number!(i64);
int_number!(u64);

impl Number for f64 {
    const ZERO: Self = 0.0;
    #[inline]
    fn plus(self, other: Self) -> Self {
        self + other
    }
    #[inline]
    fn smaller(self, other: Self) -> Self {
        self.min(other)
    }
    #[inline]
    fn larger(self, other: Self) -> Self {
        self.max(other)
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
}

/// Counts records. Output: `u64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count;

impl<V> Aggregator<V> for Count {
    type Acc = u64;
    type Output = u64;
    #[inline]
    fn create(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, acc: &mut u64, _value: V) {
        *acc += 1;
    }
    #[inline]
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    #[inline]
    fn finish(&self, acc: &u64) -> u64 {
        *acc
    }
}

macro_rules! field_aggregator {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name<F> {
            f: F,
        }

        impl<F> $name<F> {
            /// Aggregates the number `f` reads from each record.
            pub fn of<V, N>(f: F) -> Self
            where
                F: Fn(&V) -> N,
                N: Number,
            {
                $name { f }
            }
        }

        impl<F> fmt::Debug for $name<F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

field_aggregator!(
    /// Sums a number read from each record. Output: the number type (`i64`, `u64` or
    /// `f64`); integer sums wrap around on overflow.
    ///
    /// ```
    /// use batchstream::transform::Aggregator;
    /// use batchstream::window::Sum;
    ///
    /// let sum = Sum::of(|x: &(u8, i64)| x.1);
    /// let mut acc = sum.create();
    /// sum.add(&mut acc, (0, 5));
    /// sum.add(&mut acc, (0, -2));
    /// assert_eq!(sum.finish(&acc), 3);
    /// ```
    Sum
);
field_aggregator!(
    /// The smallest number read from the records. Output: `Option<N>`, `None` only
    /// for an empty accumulator (a window always holds at least one record).
    Min
);
field_aggregator!(
    /// The largest number read from the records. Output: `Option<N>`, `None` only
    /// for an empty accumulator (a window always holds at least one record).
    Max
);
field_aggregator!(
    /// The mean of a number read from the records, kept as a sum (of the number type)
    /// and a count. Output: `Option<f64>`, `None` only for an empty accumulator.
    Mean
);

impl<V, N: Number, F: Fn(&V) -> N> Aggregator<V> for Sum<F> {
    type Acc = N;
    type Output = N;
    #[inline]
    fn create(&self) -> N {
        N::ZERO
    }
    #[inline]
    fn add(&self, acc: &mut N, value: V) {
        *acc = acc.plus((self.f)(&value));
    }
    #[inline]
    fn merge(&self, acc: &mut N, other: N) {
        *acc = acc.plus(other);
    }
    #[inline]
    fn finish(&self, acc: &N) -> N {
        *acc
    }
}

impl<V, N: Number, F: Fn(&V) -> N> Aggregator<V> for Min<F> {
    type Acc = Option<N>;
    type Output = Option<N>;
    #[inline]
    fn create(&self) -> Option<N> {
        None
    }
    #[inline]
    fn add(&self, acc: &mut Option<N>, value: V) {
        let v = (self.f)(&value);
        *acc = Some(acc.map_or(v, |a| a.smaller(v)));
    }
    #[inline]
    fn merge(&self, acc: &mut Option<N>, other: Option<N>) {
        if let Some(o) = other {
            *acc = Some(acc.map_or(o, |a| a.smaller(o)));
        }
    }
    #[inline]
    fn finish(&self, acc: &Option<N>) -> Option<N> {
        *acc
    }
}

impl<V, N: Number, F: Fn(&V) -> N> Aggregator<V> for Max<F> {
    type Acc = Option<N>;
    type Output = Option<N>;
    #[inline]
    fn create(&self) -> Option<N> {
        None
    }
    #[inline]
    fn add(&self, acc: &mut Option<N>, value: V) {
        let v = (self.f)(&value);
        *acc = Some(acc.map_or(v, |a| a.larger(v)));
    }
    #[inline]
    fn merge(&self, acc: &mut Option<N>, other: Option<N>) {
        if let Some(o) = other {
            *acc = Some(acc.map_or(o, |a| a.larger(o)));
        }
    }
    #[inline]
    fn finish(&self, acc: &Option<N>) -> Option<N> {
        *acc
    }
}

impl<V, N: Number, F: Fn(&V) -> N> Aggregator<V> for Mean<F> {
    type Acc = (N, u64);
    type Output = Option<f64>;
    #[inline]
    fn create(&self) -> (N, u64) {
        (N::ZERO, 0)
    }
    #[inline]
    fn add(&self, acc: &mut (N, u64), value: V) {
        acc.0 = acc.0.plus((self.f)(&value));
        acc.1 += 1;
    }
    #[inline]
    fn merge(&self, acc: &mut (N, u64), other: (N, u64)) {
        acc.0 = acc.0.plus(other.0);
        acc.1 += other.1;
    }
    #[inline]
    fn finish(&self, acc: &(N, u64)) -> Option<f64> {
        (acc.1 > 0).then(|| acc.0.as_f64() / acc.1 as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<Ag: Aggregator<i64>>(agg: &Ag, values: &[i64]) -> Ag::Output {
        let mut acc = agg.create();
        for v in values {
            agg.add(&mut acc, *v);
        }
        agg.finish(&acc)
    }

    /// `merge` of two halves equals adding everything to one accumulator.
    fn merges_like_adding<Ag>(agg: &Ag, a: &[i64], b: &[i64])
    where
        Ag: Aggregator<i64>,
        Ag::Output: PartialEq + fmt::Debug,
    {
        let fill = |vals: &[i64]| {
            let mut acc = agg.create();
            for v in vals {
                agg.add(&mut acc, *v);
            }
            acc
        };
        let mut left = fill(a);
        agg.merge(&mut left, fill(b));
        let all: Vec<i64> = a.iter().chain(b).copied().collect();
        assert_eq!(agg.finish(&left), run(agg, &all));
    }

    #[test]
    fn built_ins_on_numbers() {
        let vals = [4, -2, 9, 3];
        assert_eq!(run(&Count, &vals), 4);
        assert_eq!(run(&Sum::of(|v: &i64| *v), &vals), 14);
        assert_eq!(run(&Min::of(|v: &i64| *v), &vals), Some(-2));
        assert_eq!(run(&Max::of(|v: &i64| *v), &vals), Some(9));
        assert_eq!(run(&Mean::of(|v: &i64| *v), &vals), Some(3.5));
        assert_eq!(run(&Sum::of(|v: &i64| *v as f64 / 2.0), &vals), 7.0);
        assert_eq!(run(&Max::of(|v: &i64| v.unsigned_abs()), &vals), Some(9u64));
    }

    #[test]
    fn empty_accumulators_are_none_or_zero() {
        assert_eq!(run(&Count, &[]), 0);
        assert_eq!(run(&Sum::of(|v: &i64| *v), &[]), 0);
        assert_eq!(run(&Min::of(|v: &i64| *v), &[]), None);
        assert_eq!(run(&Max::of(|v: &i64| *v), &[]), None);
        assert_eq!(run(&Mean::of(|v: &i64| *v), &[]), None);
    }

    #[test]
    fn merge_equals_adding_all() {
        let (a, b) = ([1, 7, -3], [5, -9]);
        merges_like_adding(&Count, &a, &b);
        merges_like_adding(&Sum::of(|v: &i64| *v), &a, &b);
        merges_like_adding(&Min::of(|v: &i64| *v), &a, &b);
        merges_like_adding(&Max::of(|v: &i64| *v), &a, &b);
        merges_like_adding(&Mean::of(|v: &i64| *v), &a, &b);
        merges_like_adding(&Min::of(|v: &i64| *v), &[], &b);
        merges_like_adding(&Max::of(|v: &i64| *v), &a, &[]);
    }

    #[test]
    fn float_min_max_ignore_nan_and_int_sums_wrap() {
        let agg = Min::of(|v: &f64| *v);
        let mut acc = agg.create();
        for v in [f64::NAN, 2.0, f64::NAN, 1.0] {
            agg.add(&mut acc, v);
        }
        assert_eq!(agg.finish(&acc), Some(1.0));
        let agg = Max::of(|v: &f64| *v);
        let mut acc = agg.create();
        for v in [3.0, f64::NAN] {
            agg.add(&mut acc, v);
        }
        assert_eq!(agg.finish(&acc), Some(3.0));
        assert_eq!(run(&Sum::of(|v: &i64| *v), &[i64::MAX, 1]), i64::MIN);
    }
}
