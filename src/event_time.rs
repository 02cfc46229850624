//! Event time: timestamps and watermarks.
//!
//! Give a pipeline an [`EventTime`] (how to read a record's timestamp, and a
//! [`WatermarkStrategy`]) and the executors track a watermark: the event time up to
//! which the input is believed complete. They advance it record by record, in
//! source order, and tell the transforms through
//! [`Transform::on_watermark`](crate::Transform::on_watermark) before the record that
//! advanced it, so whether a record is late never depends on batch boundaries or on
//! the executor.
//!
//! - **Bounded out-of-orderness** (`D`): watermark = largest timestamp seen − `D`.
//!   **Monotonic** is the same with `D = 0`. **Custom**: your [`WatermarkGenerator`].
//! - **Partitions**: with [`EventTime::partitioned_by`], each partition has its own
//!   generator and the pipeline's watermark is the minimum over partitions, so one fast
//!   partition does not make another's records late.
//! - **Idle partitions**: with [`EventTime::idle_timeout`], a partition that sent
//!   nothing for that long (processing time) stops holding the watermark back, and
//!   rejoins when it sends again.
//! - **Never backwards**: a combined watermark lower than the current one (a partition
//!   rejoining, say) is ignored and counted in
//!   [`RunReport::watermark_regressions`](crate::RunReport::watermark_regressions).
//! - **End of input**: every executor ends a finished input with a final watermark at
//!   [`DateTime::<Utc>::MAX_UTC`](chrono::DateTime::MAX_UTC), so every window closes.
//! - A record whose timestamp cannot be read becomes a dead letter of kind
//!   [`RecordErrorKind::Timestamp`](crate::RecordErrorKind::Timestamp).
//! - **Timestamps** are any [`EventTimestamp`]: a `DateTime<Utc>`, or integer Unix time
//!   as [`UnixMillis`] / [`UnixMicros`]. Integers skip the calendar arithmetic of building
//!   a `DateTime` for every record (the watermark is still reported as a `DateTime`), which
//!   matters on the hot path: prefer them when the records carry integer times.
//!
//! ```
//! use batchstream::event_time::EventTime;
//! use chrono::{DateTime, TimeDelta, Utc};
//!
//! struct Click { at: DateTime<Utc>, shard: u64 }
//!
//! let et = EventTime::new(|c: &Click| c.at)
//!     .bounded_out_of_orderness(TimeDelta::seconds(5))
//!     .partitioned_by(|c: &Click| c.shard)
//!     .idle_timeout(std::time::Duration::from_secs(30));
//! # let _ = et;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Produces a watermark from the timestamps of one partition's records.
pub trait WatermarkGenerator: Send {
    /// A record with event time `timestamp` arrived.
    fn on_event(&mut self, timestamp: DateTime<Utc>);
    /// The current watermark, or `None` before it can say anything.
    fn current(&self) -> Option<DateTime<Utc>>;
    /// State for a checkpoint. Default: `null`.
    fn snapshot(&self) -> Value {
        Value::Null
    }
    /// Restores [`snapshot`](WatermarkGenerator::snapshot) state.
    ///
    /// # Errors
    /// [`Error::State`] if `state` does not decode.
    fn restore(&mut self, state: Value) -> Result<()> {
        let _ = state;
        Ok(())
    }
}

/// Watermark = the largest timestamp seen minus a fixed delay.
#[derive(Debug, Clone)]
pub struct BoundedOutOfOrderness {
    delay: TimeDelta,
    max_seen: Option<DateTime<Utc>>,
}

impl BoundedOutOfOrderness {
    /// A generator tolerating records up to `delay` out of order.
    pub fn new(delay: TimeDelta) -> Self {
        BoundedOutOfOrderness {
            delay,
            max_seen: None,
        }
    }
}

impl WatermarkGenerator for BoundedOutOfOrderness {
    #[inline]
    fn on_event(&mut self, timestamp: DateTime<Utc>) {
        if self.max_seen.is_none_or(|m| timestamp > m) {
            self.max_seen = Some(timestamp);
        }
    }
    #[inline]
    fn current(&self) -> Option<DateTime<Utc>> {
        self.max_seen.map(|m| {
            m.checked_sub_signed(self.delay)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        })
    }
    fn snapshot(&self) -> Value {
        serde_json::to_value(self.max_seen).unwrap_or(Value::Null)
    }
    fn restore(&mut self, state: Value) -> Result<()> {
        self.max_seen =
            serde_json::from_value(state).map_err(|e| Error::restore_failed("watermark", e))?;
        Ok(())
    }
}

type Factory = Arc<dyn Fn() -> Box<dyn WatermarkGenerator> + Send + Sync>;

/// How watermarks are generated.
#[derive(Clone)]
pub enum WatermarkStrategy {
    /// Largest timestamp seen minus the delay.
    BoundedOutOfOrderness(TimeDelta),
    /// Largest timestamp seen (timestamps never go backwards).
    Monotonic,
    /// A generator of your own, made by the factory (once per partition).
    Custom(Factory),
}

impl fmt::Debug for WatermarkStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatermarkStrategy::BoundedOutOfOrderness(d) => {
                f.debug_tuple("BoundedOutOfOrderness").field(d).finish()
            }
            WatermarkStrategy::Monotonic => f.write_str("Monotonic"),
            WatermarkStrategy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl WatermarkStrategy {
    /// A custom strategy: `factory` makes one generator per partition.
    pub fn custom<G, F>(factory: F) -> Self
    where
        G: WatermarkGenerator + 'static,
        F: Fn() -> G + Send + Sync + 'static,
    {
        WatermarkStrategy::Custom(Arc::new(move || {
            Box::new(factory()) as Box<dyn WatermarkGenerator>
        }))
    }

    fn generator(&self) -> Generator {
        match self {
            WatermarkStrategy::BoundedOutOfOrderness(d) => Generator::Bounded {
                delay: *d,
                max_seen: None,
            },
            WatermarkStrategy::Monotonic => Generator::Bounded {
                delay: TimeDelta::zero(),
                max_seen: None,
            },
            WatermarkStrategy::Custom(f) => Generator::Custom(f()),
        }
    }
}

/// A partition's generator: the built-in one without dynamic dispatch or calendar
/// arithmetic (it runs once per record, on nanoseconds), or a custom one.
enum Generator {
    Bounded {
        delay: TimeDelta,
        /// The largest timestamp seen, in nanoseconds; `None` before the first.
        max_seen: Option<i128>,
    },
    Custom(Box<dyn WatermarkGenerator>),
}

impl Generator {
    /// Feeds an event; returns whether the generator's watermark may have changed.
    #[inline]
    fn on_event(&mut self, ts: i128) -> bool {
        match self {
            Generator::Bounded { max_seen, .. } => {
                if max_seen.is_some_and(|m| ts <= m) {
                    return false;
                }
                *max_seen = Some(ts);
                true
            }
            Generator::Custom(g) => {
                g.on_event(nanos_to_time(ts));
                true
            }
        }
    }

    /// The generator's watermark in nanoseconds.
    #[inline]
    fn current(&self) -> Option<i128> {
        match self {
            // As `BoundedOutOfOrderness::current`: the minimum time when the difference
            // leaves the range of `DateTime<Utc>`.
            Generator::Bounded { delay, max_seen } => max_seen.map(|m| {
                let w = m - delta_nanos(*delay);
                if (MIN_NANOS..=MAX_NANOS).contains(&w) {
                    w
                } else {
                    MIN_NANOS
                }
            }),
            Generator::Custom(g) => g.current().map(time_to_nanos),
        }
    }

    /// The same JSON as [`BoundedOutOfOrderness`] or the custom generator writes.
    fn snapshot(&self) -> Value {
        match self {
            Generator::Bounded { max_seen, .. } => {
                serde_json::to_value(max_seen.map(nanos_to_time)).unwrap_or(Value::Null)
            }
            Generator::Custom(g) => g.snapshot(),
        }
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        match self {
            Generator::Bounded { max_seen, .. } => {
                let t: Option<DateTime<Utc>> = serde_json::from_value(state)
                    .map_err(|e| Error::restore_failed("watermark", e))?;
                *max_seen = t.map(time_to_nanos);
                Ok(())
            }
            Generator::Custom(g) => g.restore(state),
        }
    }
}

/// `DateTime::<Utc>::MIN_UTC` in nanoseconds since the Unix epoch.
const MIN_NANOS: i128 = -8_334_601_228_800_000_000_000;
/// `DateTime::<Utc>::MAX_UTC` in nanoseconds since the Unix epoch.
const MAX_NANOS: i128 = 8_210_266_876_799_999_999_999;

#[inline]
fn time_to_nanos(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())
}

/// The time `n` nanoseconds after the epoch, clamped to the range of `DateTime<Utc>`.
fn nanos_to_time(n: i128) -> DateTime<Utc> {
    // The common case (years 1677..2262) without 128-bit division.
    if let Ok(n) = i64::try_from(n) {
        let secs = n.div_euclid(1_000_000_000);
        let sub = n.rem_euclid(1_000_000_000) as u32;
        return DateTime::from_timestamp(secs, sub).unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
    let n = n.clamp(MIN_NANOS, MAX_NANOS);
    let secs = n.div_euclid(1_000_000_000) as i64;
    let sub = n.rem_euclid(1_000_000_000) as u32;
    DateTime::from_timestamp(secs, sub).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[inline]
fn delta_nanos(d: TimeDelta) -> i128 {
    i128::from(d.num_seconds()) * 1_000_000_000 + i128::from(d.subsec_nanos())
}

/// A record's event time, as the timestamp function of an [`EventTime`] or of a window
/// ([`KeyBy::window`](crate::transform::KeyBy::window)) returns it: a `DateTime<Utc>`,
/// or integer Unix time ([`UnixMillis`], [`UnixMicros`]), which needs no calendar
/// arithmetic per record.
///
/// ```
/// use batchstream::event_time::{EventTimestamp, UnixMillis};
/// use chrono::DateTime;
///
/// let t = UnixMillis(1_700_000_000_123);
/// assert_eq!(t.unix_micros(), 1_700_000_000_123_000);
/// assert_eq!(t.to_datetime(), DateTime::from_timestamp_millis(1_700_000_000_123));
/// assert_eq!(UnixMillis(i64::MAX).to_datetime(), None, "beyond DateTime's range");
/// ```
pub trait EventTimestamp: Copy {
    /// Nanoseconds since the Unix epoch, or `None` outside the range of `DateTime<Utc>`.
    fn unix_nanos(self) -> Option<i128>;
    /// Microseconds since the Unix epoch, rounded down (towards the past); saturating.
    /// Windows work in whole microseconds.
    fn unix_micros(self) -> i64;
    /// As a `DateTime<Utc>`, or `None` outside its range.
    fn to_datetime(self) -> Option<DateTime<Utc>> {
        self.unix_nanos().map(nanos_to_time)
    }
}

impl EventTimestamp for DateTime<Utc> {
    #[inline]
    fn unix_nanos(self) -> Option<i128> {
        Some(time_to_nanos(self))
    }
    #[inline]
    fn unix_micros(self) -> i64 {
        self.timestamp_micros()
    }
    #[inline]
    fn to_datetime(self) -> Option<DateTime<Utc>> {
        Some(self)
    }
}

/// Event time as whole milliseconds since the Unix epoch (an [`EventTimestamp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(pub i64);

/// Event time as whole microseconds since the Unix epoch (an [`EventTimestamp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMicros(pub i64);

/// The range of `DateTime<Utc>` in whole milliseconds and microseconds (`MIN_NANOS` is
/// a whole number of both; the maxima are rounded down): a range check on the `i64`
/// is cheaper than one on the `i128` product.
const MIN_MILLIS: i64 = (MIN_NANOS / 1_000_000) as i64;
const MAX_MILLIS: i64 = (MAX_NANOS / 1_000_000) as i64;
const MIN_MICROS: i64 = (MIN_NANOS / 1_000) as i64;
const MAX_MICROS: i64 = (MAX_NANOS / 1_000) as i64;

impl EventTimestamp for UnixMillis {
    #[inline]
    fn unix_nanos(self) -> Option<i128> {
        (MIN_MILLIS..=MAX_MILLIS)
            .contains(&self.0)
            .then(|| i128::from(self.0) * 1_000_000)
    }
    #[inline]
    fn unix_micros(self) -> i64 {
        self.0.saturating_mul(1_000)
    }
}

impl EventTimestamp for UnixMicros {
    #[inline]
    fn unix_nanos(self) -> Option<i128> {
        (MIN_MICROS..=MAX_MICROS)
            .contains(&self.0)
            .then(|| i128::from(self.0) * 1_000)
    }
    #[inline]
    fn unix_micros(self) -> i64 {
        self.0
    }
}

/// Reads a record's event time in nanoseconds since the epoch, or [`BAD_TIME`] after
/// writing the error text to the `String` (an `i128` comes back in registers, where a
/// `Result<i128, String>` would go through memory: this runs once per record).
type TimestampFn<T> = Box<dyn FnMut(&T, &mut String) -> i128 + Send>;
/// What a [`TimestampFn`] returns for a timestamp it could not read: above every valid
/// time (which lie in `MIN_NANOS..=MAX_NANOS`).
const BAD_TIME: i128 = i128::MAX;
type PartitionFn<T> = Box<dyn FnMut(&T) -> u64 + Send>;

/// A pipeline's event-time settings: timestamps, watermark strategy, partitions,
/// idleness. See the [module docs](self).
pub struct EventTime<T> {
    timestamp: TimestampFn<T>,
    strategy: WatermarkStrategy,
    partition: Option<PartitionFn<T>>,
    idle_timeout: Option<Duration>,
    expected: Vec<u64>,
}

impl<T> fmt::Debug for EventTime<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventTime")
            .field("strategy", &self.strategy)
            .field("partitioned", &self.partition.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .field("expected_partitions", &self.expected)
            .finish_non_exhaustive()
    }
}

impl<T> EventTime<T> {
    /// Event time read by `timestamp` (a `DateTime<Utc>`, or integer Unix time: see
    /// [`EventTimestamp`]); monotonic watermarks until configured otherwise.
    ///
    /// An integer time outside the range of `DateTime<Utc>` makes the record a dead
    /// letter of kind [`Timestamp`](crate::RecordErrorKind::Timestamp).
    ///
    /// ```
    /// use batchstream::event_time::{EventTime, UnixMillis};
    ///
    /// struct Tick { ts_ms: i64 }
    /// let et = EventTime::new(|t: &Tick| UnixMillis(t.ts_ms));
    /// # let _ = et;
    /// ```
    pub fn new<R: EventTimestamp>(mut timestamp: impl FnMut(&T) -> R + Send + 'static) -> Self {
        Self::with_timestamp(Box::new(move |t: &T, err: &mut String| {
            let r = timestamp(t);
            match r.unix_nanos() {
                Some(n) => n,
                None => out_of_range_into(r, err),
            }
        }))
    }

    /// Event time read by a fallible `timestamp`. A record for which it fails becomes a
    /// dead letter of kind [`Timestamp`](crate::RecordErrorKind::Timestamp) whose
    /// message is the error's text: make it name the field.
    pub fn try_new<R: EventTimestamp, E: fmt::Display>(
        mut timestamp: impl FnMut(&T) -> std::result::Result<R, E> + Send + 'static,
    ) -> Self {
        Self::with_timestamp(Box::new(move |t: &T, err: &mut String| {
            match timestamp(t) {
                Ok(r) => match r.unix_nanos() {
                    Some(n) => n,
                    None => out_of_range_into(r, err),
                },
                Err(e) => {
                    *err = e.to_string();
                    BAD_TIME
                }
            }
        }))
    }

    fn with_timestamp(timestamp: TimestampFn<T>) -> Self {
        EventTime {
            timestamp,
            strategy: WatermarkStrategy::Monotonic,
            partition: None,
            idle_timeout: None,
            expected: Vec::new(),
        }
    }

    /// Watermark = largest timestamp seen − `delay`.
    pub fn bounded_out_of_orderness(mut self, delay: TimeDelta) -> Self {
        self.strategy = WatermarkStrategy::BoundedOutOfOrderness(delay);
        self
    }

    /// Any [`WatermarkStrategy`].
    pub fn strategy(mut self, strategy: WatermarkStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Tracks a watermark per partition (as `partition` says) and combines them with
    /// the minimum.
    pub fn partitioned_by(mut self, partition: impl FnMut(&T) -> u64 + Send + 'static) -> Self {
        self.partition = Some(Box::new(partition));
        self
    }

    /// Declares the partitions the input has (with [`partitioned_by`](Self::partitioned_by)):
    /// each holds the watermark back from the start, until its first record (or, with
    /// an [`idle_timeout`](Self::idle_timeout), until it has been silent that long).
    /// Without this, a partition counts only from its first record, so one that is
    /// read late (a broker delivering a backlog partition by partition) finds the
    /// watermark already past its records, which then arrive late.
    ///
    /// ```
    /// use batchstream::event_time::{EventTime, UnixMillis};
    ///
    /// struct Msg { partition: u64, ts_ms: i64 }
    /// let et = EventTime::new(|m: &Msg| UnixMillis(m.ts_ms))
    ///     .partitioned_by(|m: &Msg| m.partition)
    ///     .expect_partitions(0..3);
    /// # let _ = et;
    /// ```
    pub fn expect_partitions(mut self, partitions: impl IntoIterator<Item = u64>) -> Self {
        self.expected = partitions.into_iter().collect();
        self
    }

    /// A partition silent for `timeout` (processing time) stops holding the watermark
    /// back until it sends again.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
}

/// Writes the error text for a timestamp `DateTime<Utc>` cannot hold to `err`;
/// returns [`BAD_TIME`].
#[cold]
#[inline(never)]
fn out_of_range_into<R: EventTimestamp>(r: R, err: &mut String) -> i128 {
    *err = format!(
        "event time {} µs since the Unix epoch is outside the range of DateTime<Utc>",
        r.unix_micros()
    );
    BAD_TIME
}

struct Partition {
    id: u64,
    generator: Generator,
    last_active: tokio::time::Instant,
    idle: bool,
}

#[derive(Serialize, Deserialize)]
struct TrackerState {
    current: Option<DateTime<Utc>>,
    partitions: Vec<(u64, Value)>,
}

/// The executors' watermark bookkeeping for one pipeline.
pub(crate) struct WatermarkTracker<T> {
    settings: EventTime<T>,
    partitions: Vec<Partition>,
    /// The watermark in nanoseconds since the epoch.
    current: Option<i128>,
    /// Processing time of the batch being read (set by `on_batch`).
    batch_now: tokio::time::Instant,
    pub(crate) regressions: u64,
    /// One partition, the built-in generator, no idleness: a record at or below the
    /// largest time seen changes nothing, and nothing else needs updating.
    simple: bool,
    /// When `simple`: the largest time seen (`i128::MIN` before the first, or when not
    /// `simple`). A record at or below it changes nothing.
    fast_max: i128,
    /// Where the timestamp function writes its error text.
    error: String,
}

impl<T> WatermarkTracker<T> {
    pub(crate) fn new(settings: EventTime<T>) -> Self {
        let simple = settings.partition.is_none()
            && settings.idle_timeout.is_none()
            && settings.expected.is_empty()
            && !matches!(settings.strategy, WatermarkStrategy::Custom(_));
        let mut tracker = WatermarkTracker {
            simple,
            settings,
            partitions: Vec::new(),
            current: None,
            batch_now: tokio::time::Instant::now(),
            regressions: 0,
            fast_max: i128::MIN,
            error: String::new(),
        };
        tracker.add_expected();
        tracker
    }

    /// Registers the declared partitions that are not tracked yet: with no watermark
    /// of their own, they hold the combined one back.
    fn add_expected(&mut self) {
        for id in self.settings.expected.clone() {
            self.partition_index(id);
        }
    }

    pub(crate) fn current(&self) -> Option<DateTime<Utc>> {
        self.current.map(nanos_to_time)
    }

    #[inline(never)]
    fn partition_index(&mut self, id: u64) -> usize {
        match self.partitions.iter().position(|p| p.id == id) {
            Some(i) => i,
            None => {
                self.partitions.push(Partition {
                    id,
                    generator: self.settings.strategy.generator(),
                    last_active: self.batch_now,
                    idle: false,
                });
                self.partitions.len() - 1
            }
        }
    }

    /// Reads `item`'s timestamp and feeds it to its partition's generator. Returns the
    /// new watermark if it advanced, or the timestamp error text.
    ///
    /// Runs once per record: the common case (a partition's watermark does not move)
    /// is small enough to inline into the executor's loop; the rest is out of line.
    #[inline(always)]
    pub(crate) fn observe(
        &mut self,
        item: &T,
    ) -> std::result::Result<Option<DateTime<Utc>>, String> {
        let ts = (self.settings.timestamp)(item, &mut self.error);
        // BAD_TIME is above every `fast_max`.
        if ts <= self.fast_max {
            return Ok(None);
        }
        if ts == BAD_TIME {
            return Err(std::mem::take(&mut self.error));
        }
        self.observe_slow(item, ts)
    }

    /// [`observe`](Self::observe) past the fast check and the timestamp error: a new
    /// largest time, a partitioned or custom watermark.
    #[inline(never)]
    fn observe_slow(
        &mut self,
        item: &T,
        ts: i128,
    ) -> std::result::Result<Option<DateTime<Utc>>, String> {
        let id = match &mut self.settings.partition {
            Some(f) => f(item),
            None => 0,
        };
        let i = match self.partitions.first() {
            Some(p) if p.id == id => 0,
            _ => self.partition_index(id),
        };
        let p = &mut self.partitions[i];
        let changed = p.generator.on_event(ts);
        p.last_active = self.batch_now;
        let was_idle = std::mem::replace(&mut p.idle, false);
        if !changed && !was_idle {
            // An event that does not move its partition's watermark.
            return Ok(None);
        }
        self.sync_fast();
        Ok(self.recompute())
    }

    /// Sets `fast_max` from the single partition's largest time when `simple`.
    fn sync_fast(&mut self) {
        self.fast_max = i128::MIN;
        if self.simple
            && let Some(Partition {
                generator:
                    Generator::Bounded {
                        max_seen: Some(max),
                        ..
                    },
                ..
            }) = self.partitions.first()
        {
            self.fast_max = *max;
        }
    }

    /// Starts a batch: partitions silent for longer than the idle timeout become idle
    /// (they send nothing in this batch until proven otherwise). Call once per batch,
    /// before its records. Returns the new watermark if idleness advanced it.
    pub(crate) fn on_batch(&mut self) -> Option<DateTime<Utc>> {
        self.batch_now = tokio::time::Instant::now();
        let timeout = self.settings.idle_timeout?;
        let mut changed = false;
        for p in &mut self.partitions {
            if !p.idle && self.batch_now.duration_since(p.last_active) >= timeout {
                p.idle = true;
                changed = true;
            }
        }
        if changed { self.recompute() } else { None }
    }

    /// Minimum over active partitions; applied only if it moves forward.
    #[inline(never)]
    fn recompute(&mut self) -> Option<DateTime<Utc>> {
        let combined = if self.partitions.len() == 1 {
            self.partitions[0].generator.current()
        } else {
            let mut min: Option<i128> = None;
            for p in self.partitions.iter().filter(|p| !p.idle) {
                match p.generator.current() {
                    // A partition with no watermark yet holds everything back.
                    None => return None,
                    Some(w) => min = Some(min.map_or(w, |m| m.min(w))),
                }
            }
            min
        }?;
        match self.current {
            Some(c) if combined < c => {
                self.regressions += 1;
                None
            }
            Some(c) if combined == c => None,
            _ => {
                self.current = Some(combined);
                Some(nanos_to_time(combined))
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Value {
        let state = TrackerState {
            current: self.current(),
            partitions: self
                .partitions
                .iter()
                .map(|p| (p.id, p.generator.snapshot()))
                .collect(),
        };
        serde_json::to_value(state).unwrap_or(Value::Null)
    }

    pub(crate) fn restore(&mut self, state: Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        let state: TrackerState =
            serde_json::from_value(state).map_err(|e| Error::restore_failed("watermark", e))?;
        self.current = state.current.map(time_to_nanos);
        self.fast_max = i128::MIN;
        self.partitions.clear();
        for (id, gen_state) in state.partitions {
            let i = self.partition_index(id);
            self.partitions[i].generator.restore(gen_state)?;
        }
        self.add_expected();
        self.sync_fast();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn nanosecond_bounds_are_those_of_datetime() {
        assert_eq!(time_to_nanos(DateTime::<Utc>::MIN_UTC), MIN_NANOS);
        assert_eq!(time_to_nanos(DateTime::<Utc>::MAX_UTC), MAX_NANOS);
        assert_eq!(nanos_to_time(MIN_NANOS), DateTime::<Utc>::MIN_UTC);
        assert_eq!(nanos_to_time(MAX_NANOS), DateTime::<Utc>::MAX_UTC);
        let t = DateTime::from_timestamp(-5, 123_456_789).unwrap();
        assert_eq!(nanos_to_time(time_to_nanos(t)), t);
        assert_eq!(UnixMicros(-1).unix_nanos(), Some(-1_000));
        assert_eq!(UnixMillis(MIN_NANOS as i64).unix_nanos(), None);
    }

    #[test]
    fn integer_timestamps_are_in_range_exactly_when_a_datetime_holds_them() {
        for ms in [MIN_MILLIS - 1, MIN_MILLIS, 0, MAX_MILLIS, MAX_MILLIS + 1] {
            let n = i128::from(ms) * 1_000_000;
            let fits = (MIN_NANOS..=MAX_NANOS).contains(&n);
            assert_eq!(UnixMillis(ms).unix_nanos(), fits.then_some(n), "{ms} ms");
            assert_eq!(
                fits,
                DateTime::from_timestamp_millis(ms).is_some(),
                "{ms} ms"
            );
        }
        for us in [MIN_MICROS - 1, MIN_MICROS, -1, MAX_MICROS, MAX_MICROS + 1] {
            let n = i128::from(us) * 1_000;
            let fits = (MIN_NANOS..=MAX_NANOS).contains(&n);
            assert_eq!(UnixMicros(us).unix_nanos(), fits.then_some(n), "{us} µs");
        }
    }

    #[test]
    fn nanos_to_time_agrees_across_the_i64_boundary() {
        for n in [
            i128::from(i64::MIN) - 1,
            i128::from(i64::MIN),
            -1_000_000_001,
            -1,
            0,
            1_999_999_999,
            i128::from(i64::MAX),
            i128::from(i64::MAX) + 1,
        ] {
            let t = nanos_to_time(n);
            assert_eq!(time_to_nanos(t), n, "{n}");
        }
    }

    #[test]
    fn integer_timestamps_give_the_same_watermarks_as_datetimes() {
        let mut ms = WatermarkTracker::new(
            EventTime::new(|x: &i64| UnixMillis(*x))
                .bounded_out_of_orderness(TimeDelta::milliseconds(3)),
        );
        let mut dt = WatermarkTracker::new(
            EventTime::new(|x: &i64| DateTime::from_timestamp_millis(*x).unwrap())
                .bounded_out_of_orderness(TimeDelta::milliseconds(3)),
        );
        for x in [10, 9, 10, 15, -20, 1_700_000_000_001] {
            assert_eq!(ms.observe(&x).unwrap(), dt.observe(&x).unwrap(), "at {x}");
        }
        assert_eq!(
            ms.current(),
            DateTime::from_timestamp_millis(1_699_999_999_998)
        );
        let err = ms.observe(&i64::MAX).unwrap_err();
        assert!(err.contains("outside the range of DateTime"), "{err}");
    }

    #[test]
    fn bounded_out_of_orderness_lags_the_max_by_the_delay() {
        let mut tr = WatermarkTracker::new(
            EventTime::new(|x: &i64| t(*x)).bounded_out_of_orderness(TimeDelta::seconds(2)),
        );
        assert_eq!(tr.observe(&10).unwrap(), Some(t(8)));
        assert_eq!(tr.observe(&9).unwrap(), None, "older record: no change");
        assert_eq!(tr.observe(&15).unwrap(), Some(t(13)));
    }

    #[test]
    fn partitions_combine_with_the_minimum_and_never_go_backwards() {
        let mut tr = WatermarkTracker::new(
            EventTime::new(|x: &(u64, i64)| t(x.1)).partitioned_by(|x: &(u64, i64)| x.0),
        );
        assert_eq!(tr.observe(&(0, 10)).unwrap(), Some(t(10)));
        // Partition 1 appears far behind: the minimum would go back, so it is ignored.
        assert_eq!(tr.observe(&(1, 3)).unwrap(), None);
        assert_eq!(tr.regressions, 1);
        assert_eq!(
            tr.observe(&(1, 12)).unwrap(),
            None,
            "min(10, 12) = 10: unchanged"
        );
        assert_eq!(tr.observe(&(0, 20)).unwrap(), Some(t(12)));
    }

    #[test]
    fn a_custom_strategy_makes_one_generator_per_partition() {
        struct Fixed(Option<DateTime<Utc>>);
        impl WatermarkGenerator for Fixed {
            fn on_event(&mut self, ts: DateTime<Utc>) {
                self.0 = Some(ts - TimeDelta::seconds(100));
            }
            fn current(&self) -> Option<DateTime<Utc>> {
                self.0
            }
        }
        let mut tr = WatermarkTracker::new(
            EventTime::new(|x: &(u64, i64)| t(x.1))
                .strategy(WatermarkStrategy::custom(|| Fixed(None)))
                .partitioned_by(|x: &(u64, i64)| x.0),
        );
        assert_eq!(tr.observe(&(0, 500)).unwrap(), Some(t(400)));
        assert_eq!(
            tr.observe(&(1, 450)).unwrap(),
            None,
            "min(400, 350) goes back"
        );
        assert_eq!(tr.observe(&(1, 900)).unwrap(), None, "min(400, 800) = 400");
        assert_eq!(tr.observe(&(0, 700)).unwrap(), Some(t(600)));
    }

    #[test]
    fn a_timestamp_error_names_what_failed() {
        let mut tr = WatermarkTracker::new(EventTime::try_new(|s: &&str| {
            s.parse::<i64>()
                .map(t)
                .map_err(|e| format!("field `ts`: {e}"))
        }));
        let err = tr.observe(&"noon").unwrap_err();
        assert!(err.starts_with("field `ts`"), "{err}");
    }

    #[test]
    fn snapshot_and_restore_keep_partition_progress() {
        let make = || {
            WatermarkTracker::new(
                EventTime::new(|x: &(u64, i64)| t(x.1)).partitioned_by(|x: &(u64, i64)| x.0),
            )
        };
        let mut a = make();
        a.observe(&(0, 10)).unwrap();
        a.observe(&(1, 7)).unwrap();
        let mut b = make();
        b.restore(a.snapshot()).unwrap();
        assert_eq!(b.current(), a.current());
        assert_eq!(b.observe(&(1, 9)).unwrap(), a.observe(&(1, 9)).unwrap());
    }
}
