//! Event-time windows: keyed aggregates over tumbling, sliding and session windows.
//!
//! A window groups the records of one key by their **event time** (the time a
//! timestamp function reads from the record, not the time it arrives). Build one
//! after [`key_by`](crate::transform::TransformExt::key_by):
//!
//! ```text
//! .key_by(|o| o.product.clone())
//! .window(Windows::tumbling(TimeDelta::minutes(5)), |o: &Order| o.ts)
//! .allowed_lateness(TimeDelta::minutes(1))   // default 0
//! .output_mode(OutputMode::Update)           // default Append
//! .aggregate(Sum::of(|o: &Order| o.amount_cents))   // or .count()
//! ```
//!
//! The result is a [`Transform`] from records to [`WindowResult`]s
//! (`{ key, window, value }`).
//!
//! # Windows
//! A [`Window`] is a half-open interval `[start, end)` of event time.
//! - [`Windows::tumbling`]`(size)`: consecutive, non-overlapping windows of `size`,
//!   aligned to the Unix epoch (`start` is a multiple of `size`).
//! - [`Windows::sliding`]`(size, slide)`: windows of `size` starting every `slide`
//!   (aligned to the epoch); a record belongs to every window that contains it, so it
//!   is added to about `size / slide` windows.
//! - [`Windows::session`]`(gap)`: per key, a record at `t` opens `[t, t + gap)`;
//!   sessions of a key that overlap or touch merge (their accumulators are combined
//!   with [`Aggregator::merge`]). Records at most `gap` apart therefore share a
//!   session, and a session ends `gap` after its last record.
//!
//! The timestamp function may return a `DateTime<Utc>` or integer Unix time
//! ([`UnixMillis`](crate::event_time::UnixMillis),
//! [`UnixMicros`](crate::event_time::UnixMicros)): the results are the same, integers
//! are cheaper (see [`EventTimestamp`]).
//!
//! Event times, sizes and lateness are handled in whole **microseconds**: sub-microsecond
//! digits of an event time, watermark or lateness are truncated, and sizes, slides and
//! gaps must be whole microseconds.
//!
//! # Watermarks and lateness
//! The watermark (given by the executor through [`Transform::on_watermark`]) says that
//! no record with an earlier event time is expected any more. A tumbling or sliding
//! window `[start, end)` **closes** once `end + allowed_lateness <= watermark` (a
//! session one microsecond later, see below): its result is final and its state is
//! freed. Before the first watermark nothing is late and nothing closes. A watermark
//! never goes backwards here: a lower value than the current one is ignored. The watermark [`DateTime::<Utc>::MAX_UTC`](chrono::DateTime::MAX_UTC)
//! (end of input) closes every window.
//!
//! A record is **late** when it could only change results that are already final. It
//! then goes to the dead-letter output ([`Emit::dead_letter`](crate::transform::Emit))
//! as a [`DeadLetter`](crate::DeadLetter) of kind
//! [`RecordErrorKind::Late`](crate::RecordErrorKind::Late), stage `"window"`, holding the
//! record as JSON and a message naming its event time, its window and the watermark.
//! A late record never changes any result.
//! - Tumbling and sliding: a record is late when **all** its windows have closed
//!   (`end + lateness <= watermark`). A sliding-window record whose earlier windows
//!   have closed still counts in its open ones.
//! - Sessions: a record at `t` is late when `t + lateness < watermark` **and** `t`
//!   does not lie inside an open session of its key (`start <= t <= end`). A session
//!   closes when `end + lateness < watermark` (strictly: a record exactly at the
//!   watermark would still touch a session ending there). With these two rules a
//!   record that is not late can never touch a session that has already closed, so
//!   the final sessions are exactly the sessions of the records that were not late,
//!   whatever their arrival order. (A looser rule, accepting any record whose own
//!   `[t, t + gap)` is still open, would let a record start a new session next to a
//!   closed one it should have merged with.)
//!
//! With bounded out-of-orderness `D` (watermark = largest event time seen − `D`) and
//! `allowed_lateness >= D`, no record is ever late and the final results equal those
//! of a batch job over the sorted input.
//!
//! # Output modes
//! - [`OutputMode::Append`] (default): each window is emitted **once**, final, when it
//!   closes (during [`Transform::on_watermark`]).
//! - [`OutputMode::Update`]: at every [`Transform::flush`] (each epoch end or trigger),
//!   the windows changed since the last flush; when a window closes, it is emitted if
//!   it changed since its last emission. Write the rows to a table keyed by
//!   `(key, window)` and the table ends with the final results. For **sessions** the
//!   window itself grows as records join: a row for `[s, e)` is superseded by a later
//!   row of the same key whose window contains `[s, e)`.
//! - [`OutputMode::Complete`]: at every flush, the whole result table: the current
//!   value of every open window and the final value of every closed one.
//!
//! # Memory
//! State for a window is freed as soon as it can no longer change, so memory is
//! bounded by the open windows × the keys active in them: one accumulator per
//! (key, open window), about `(lateness + out-of-orderness) / slide + size / slide`
//! windows per key for tumbling and sliding windows, and the open sessions of each
//! key for session windows. Nothing is kept per closed window, except in
//! **complete mode**, which (like Spark's) keeps one finished row per (key, window)
//! **forever**, since every flush re-emits the whole table: use it for small, bounded
//! key spaces. [`WindowAggregate::open_windows`] reports the live state.
//!
//! # Cost
//! - Per record: one hash-map update for tumbling windows; `size / slide` of them for
//!   sliding windows (each window keeps its own accumulators); for sessions one lookup
//!   of the key's open sessions, plus a merge when a record bridges sessions.
//! - [`Transform::on_watermark`] looks at the earliest window end only, so it is O(1)
//!   when nothing closes (executors call it whenever the watermark advances); closing
//!   costs O(1) per closed (key, window) plus, for sessions, re-filing a session that
//!   grew since it was filed under its old end.
//! - [`Transform::flush`]: nothing in append mode; the changed windows in update mode;
//!   the whole table in complete mode.
//!
//! [`run_transform`](crate::testing::run_transform) sends no watermark: in append mode
//! nothing is emitted unless you call [`Transform::on_watermark`] yourself, as below.
//!
//! # Example
//! ```
//! use batchstream::testing::run_transform;
//! use batchstream::transform::{self, Transform, TransformExt, VecEmitter};
//! use batchstream::window::{OutputMode, Sum, Window, WindowResult, Windows};
//! use chrono::{DateTime, TimeDelta, Utc};
//!
//! #[derive(Debug, Clone, serde::Serialize)]
//! struct Order { product: String, ts: DateTime<Utc>, amount_cents: i64 }
//!
//! let at = |min: i64| DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(min);
//! let orders = vec![
//!     Order { product: "tea".into(), ts: at(1), amount_cents: 300 },
//!     Order { product: "tea".into(), ts: at(3), amount_cents: 200 },
//!     Order { product: "tea".into(), ts: at(6), amount_cents: 500 },
//! ];
//! let revenue = |mode| {
//!     transform::identity::<Order>()
//!         .key_by(|o| o.product.clone())
//!         .window(Windows::tumbling(TimeDelta::minutes(5)), |o| o.ts)
//!         .output_mode(mode)
//!         .aggregate(Sum::of(|o: &Order| o.amount_cents))
//! };
//!
//! // Update mode: each flush emits the windows that changed, final or not.
//! let mut rows = run_transform(revenue(OutputMode::Update), orders.clone()).records;
//! rows.sort_by_key(|r| r.window);
//! assert_eq!(rows.iter().map(|r| r.value).collect::<Vec<_>>(), [500, 500]);
//!
//! // Append mode: a window is emitted once the watermark has passed its end.
//! let mut t = revenue(OutputMode::Append);
//! let mut out = VecEmitter::new();
//! t.process_batch(orders, &mut out);
//! assert!(out.records.is_empty(), "no window has closed yet");
//! t.on_watermark(at(5), &mut out);
//! assert_eq!(out.records, [WindowResult {
//!     key: "tea".to_string(),
//!     window: Window { start: at(0), end: at(5) },
//!     value: 500,
//! }]);
//! ```

mod aggregate;
mod operator;

pub use aggregate::{Count, Max, Mean, Min, Number, Sum};
pub use operator::WindowAggregate;

use std::fmt;
use std::hash::Hash;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::event_time::EventTimestamp;
use crate::transform::{Aggregator, KeyBy, Then, Transform, TransformExt};

/// A window of event time: the half-open interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// The first instant in the window.
    pub start: DateTime<Utc>,
    /// The first instant after the window.
    pub end: DateTime<Utc>,
}

impl Window {
    /// Whether `t` lies in `[start, end)`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// One result of a window aggregation: the aggregate `value` of `key`'s records in
/// `window`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowResult<K, O> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The aggregate ([`Aggregator::finish`]) of the key's records in the window.
    pub value: O,
}

/// When window results are emitted; see the [module docs](self#output-modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// Each window once, final, when the watermark passes `end + allowed_lateness`.
    #[default]
    Append,
    /// At each flush, the windows changed since the last flush; a closing window is
    /// emitted if it changed since it was last emitted.
    Update,
    /// At each flush, every window: open ones and the final values of closed ones.
    /// Keeps one row per (key, window) forever.
    Complete,
}

/// The largest window size, slide or gap accepted: 10 000 years.
const MAX_SPAN_US: i64 = 10_000 * 36_525 * 86_400 * 10_000;

/// How records are assigned to windows: tumbling, sliding or session windows.
///
/// The constructors panic on invalid sizes; the `try_` variants return
/// [`Error::Config`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Windows {
    pub(crate) kind: Kind,
}

/// The assigner, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// Sliding windows; tumbling when `slide == size`.
    Fixed { size: i64, slide: i64 },
    /// Session windows.
    Session { gap: i64 },
}

/// `d` in whole microseconds, if it is positive, whole and at most [`MAX_SPAN_US`].
fn span_micros(what: &str, d: TimeDelta) -> Result<i64> {
    let us = d.num_microseconds().filter(|us| *us <= MAX_SPAN_US);
    match us {
        Some(us) if us > 0 && d.subsec_nanos() % 1_000 == 0 => Ok(us),
        _ => Err(Error::Config(format!(
            "window {what} must be a positive whole number of microseconds up to 10000 years, got {d}"
        ))),
    }
}

impl Windows {
    /// Tumbling windows of `size`, aligned to the Unix epoch.
    ///
    /// # Panics
    /// If `size` is not positive, not a whole number of microseconds, or longer than
    /// 10 000 years. [`try_tumbling`](Windows::try_tumbling) returns an error instead.
    pub fn tumbling(size: TimeDelta) -> Self {
        Self::try_tumbling(size).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Tumbling windows of `size`, aligned to the Unix epoch.
    ///
    /// # Errors
    /// [`Error::Config`] if `size` is not positive, not a whole number of microseconds,
    /// or longer than 10 000 years.
    pub fn try_tumbling(size: TimeDelta) -> Result<Self> {
        let size = span_micros("size", size)?;
        Ok(Windows {
            kind: Kind::Fixed { size, slide: size },
        })
    }

    /// Sliding (hopping) windows of `size` starting every `slide`, aligned to the Unix
    /// epoch. A record belongs to every window that contains it.
    ///
    /// # Panics
    /// If `size` or `slide` is not positive, not a whole number of microseconds, or
    /// longer than 10 000 years, or if `slide > size`.
    /// [`try_sliding`](Windows::try_sliding) returns an error instead.
    pub fn sliding(size: TimeDelta, slide: TimeDelta) -> Self {
        Self::try_sliding(size, slide).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sliding (hopping) windows of `size` starting every `slide`.
    ///
    /// # Errors
    /// [`Error::Config`] if `size` or `slide` is not positive, not a whole number of
    /// microseconds, or longer than 10 000 years, or if `slide > size`.
    pub fn try_sliding(size: TimeDelta, slide: TimeDelta) -> Result<Self> {
        let size_us = span_micros("size", size)?;
        let slide_us = span_micros("slide", slide)?;
        if slide_us > size_us {
            return Err(Error::Config(format!(
                "window slide ({slide}) must not be longer than the window size ({size})"
            )));
        }
        Ok(Windows {
            kind: Kind::Fixed {
                size: size_us,
                slide: slide_us,
            },
        })
    }

    /// Session windows: per key, records at most `gap` apart share a session.
    ///
    /// # Panics
    /// If `gap` is not positive, not a whole number of microseconds, or longer than
    /// 10 000 years. [`try_session`](Windows::try_session) returns an error instead.
    pub fn session(gap: TimeDelta) -> Self {
        Self::try_session(gap).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Session windows: per key, records at most `gap` apart share a session.
    ///
    /// # Errors
    /// [`Error::Config`] if `gap` is not positive, not a whole number of microseconds,
    /// or longer than 10 000 years.
    pub fn try_session(gap: TimeDelta) -> Result<Self> {
        let gap = span_micros("gap", gap)?;
        Ok(Windows {
            kind: Kind::Session { gap },
        })
    }

    /// Whether these are session windows.
    pub fn is_session(&self) -> bool {
        matches!(self.kind, Kind::Session { .. })
    }
}

impl fmt::Display for Windows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = TimeDelta::microseconds;
        match self.kind {
            Kind::Fixed { size, slide } if size == slide => write!(f, "tumbling {}", d(size)),
            Kind::Fixed { size, slide } => write!(f, "sliding {} every {}", d(size), d(slide)),
            Kind::Session { gap } => write!(f, "session, gap {}", d(gap)),
        }
    }
}

/// `d` in microseconds for a lateness: saturates at `i64::MAX`.
///
/// # Panics
/// If `d` is negative.
fn lateness_micros(d: TimeDelta) -> i64 {
    assert!(
        d >= TimeDelta::zero(),
        "allowed lateness must not be negative, got {d}"
    );
    d.num_microseconds().unwrap_or(i64::MAX)
}

/// Builds a windowed aggregation; see [`KeyBy::window`] and the
/// [module docs](self).
pub struct WindowBuilder<T, F, Ts> {
    keyed: KeyBy<T, F>,
    windows: Windows,
    timestamp: Ts,
    lateness: TimeDelta,
    mode: OutputMode,
}

impl<T, F, Ts> fmt::Debug for WindowBuilder<T, F, Ts> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowBuilder")
            .field("windows", &self.windows)
            .field("lateness", &self.lateness)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<T, F> KeyBy<T, F> {
    /// Groups each key's records into event-time `windows`, reading a record's event
    /// time with `timestamp`. Follow with [`aggregate`](WindowBuilder::aggregate) or
    /// [`count`](WindowBuilder::count); see the [`window`](crate::window) module.
    ///
    /// `timestamp` returns any [`EventTimestamp`]: a `DateTime<Utc>`, or integer Unix
    /// time ([`UnixMillis`](crate::event_time::UnixMillis),
    /// [`UnixMicros`](crate::event_time::UnixMicros)), which costs no calendar arithmetic
    /// per record.
    ///
    /// ```
    /// use batchstream::transform::{self, TransformExt};
    /// use batchstream::window::{OutputMode, Sum, Windows};
    /// use chrono::{DateTime, TimeDelta, Utc};
    ///
    /// #[derive(serde::Serialize)]
    /// struct Order { product: String, ts: DateTime<Utc>, amount_cents: i64 }
    ///
    /// let t = transform::identity::<Order>()
    ///     .key_by(|o| o.product.clone())
    ///     .window(Windows::tumbling(TimeDelta::minutes(5)), |o| o.ts)
    ///     .allowed_lateness(TimeDelta::minutes(1))
    ///     .output_mode(OutputMode::Update)
    ///     .aggregate(Sum::of(|o: &Order| o.amount_cents));
    /// # let _ = t;
    /// ```
    pub fn window<K, Ts, R>(self, windows: Windows, timestamp: Ts) -> WindowBuilder<T, F, Ts>
    where
        T: Transform,
        F: FnMut(&T::Out) -> K,
        Ts: FnMut(&T::Out) -> R,
        R: EventTimestamp,
    {
        WindowBuilder {
            keyed: self,
            windows,
            timestamp,
            lateness: TimeDelta::zero(),
            mode: OutputMode::Append,
        }
    }
}

impl<T, F, Ts> WindowBuilder<T, F, Ts> {
    /// How long after a window's end (in event time, measured by the watermark)
    /// records are still added to it. Default: zero.
    ///
    /// # Panics
    /// If `lateness` is negative.
    pub fn allowed_lateness(mut self, lateness: TimeDelta) -> Self {
        lateness_micros(lateness);
        self.lateness = lateness;
        self
    }

    /// When results are emitted. Default: [`OutputMode::Append`].
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.mode = mode;
        self
    }

    /// Aggregates each (key, window) with `agg`.
    #[allow(clippy::type_complexity)]
    pub fn aggregate<K, Ag, R>(
        self,
        agg: Ag,
    ) -> Then<KeyBy<T, F>, WindowAggregate<K, T::Out, Ag, Ts>>
    where
        T: Transform,
        T::Out: Serialize,
        F: FnMut(&T::Out) -> K,
        K: Hash + Eq + Clone + Serialize + DeserializeOwned,
        Ts: FnMut(&T::Out) -> R,
        R: EventTimestamp,
        Ag: Aggregator<T::Out>,
        Ag::Output: Clone + Serialize + DeserializeOwned,
    {
        let op = WindowAggregate::new(self.windows, self.timestamp, agg)
            .allowed_lateness(self.lateness)
            .output_mode(self.mode);
        self.keyed.then(op)
    }

    /// Counts the records of each (key, window): shorthand for
    /// [`aggregate`](WindowBuilder::aggregate)`(`[`Count`]`)`.
    #[allow(clippy::type_complexity)]
    pub fn count<K, R>(self) -> Then<KeyBy<T, F>, WindowAggregate<K, T::Out, Count, Ts>>
    where
        T: Transform,
        T::Out: Serialize,
        F: FnMut(&T::Out) -> K,
        K: Hash + Eq + Clone + Serialize + DeserializeOwned,
        Ts: FnMut(&T::Out) -> R,
        R: EventTimestamp,
    {
        self.aggregate(Count)
    }
}

#[cfg(test)]
mod tests;
