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
            WatermarkStrategy::BoundedOutOfOrderness(d) => {
                Generator::Bounded(BoundedOutOfOrderness::new(*d))
            }
            WatermarkStrategy::Monotonic => {
                Generator::Bounded(BoundedOutOfOrderness::new(TimeDelta::zero()))
            }
            WatermarkStrategy::Custom(f) => Generator::Custom(f()),
        }
    }
}

/// A partition's generator: the built-in one without dynamic dispatch (it runs once
/// per record), or a custom one.
enum Generator {
    Bounded(BoundedOutOfOrderness),
    Custom(Box<dyn WatermarkGenerator>),
}

impl Generator {
    /// Feeds an event; returns whether the generator's watermark may have changed.
    #[inline]
    fn on_event(&mut self, ts: DateTime<Utc>) -> bool {
        match self {
            Generator::Bounded(b) => {
                if b.max_seen.is_some_and(|m| ts <= m) {
                    return false;
                }
                b.max_seen = Some(ts);
                true
            }
            Generator::Custom(g) => {
                g.on_event(ts);
                true
            }
        }
    }

    #[inline]
    fn current(&self) -> Option<DateTime<Utc>> {
        match self {
            Generator::Bounded(b) => b.current(),
            Generator::Custom(g) => g.current(),
        }
    }

    fn snapshot(&self) -> Value {
        match self {
            Generator::Bounded(b) => b.snapshot(),
            Generator::Custom(g) => g.snapshot(),
        }
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        match self {
            Generator::Bounded(b) => b.restore(state),
            Generator::Custom(g) => g.restore(state),
        }
    }
}

type TimestampFn<T> = Box<dyn FnMut(&T) -> std::result::Result<DateTime<Utc>, String> + Send>;
type PartitionFn<T> = Box<dyn FnMut(&T) -> u64 + Send>;

/// A pipeline's event-time settings: timestamps, watermark strategy, partitions,
/// idleness. See the [module docs](self).
pub struct EventTime<T> {
    timestamp: TimestampFn<T>,
    strategy: WatermarkStrategy,
    partition: Option<PartitionFn<T>>,
    idle_timeout: Option<Duration>,
}

impl<T> fmt::Debug for EventTime<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventTime")
            .field("strategy", &self.strategy)
            .field("partitioned", &self.partition.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<T> EventTime<T> {
    /// Event time read by `timestamp`; monotonic watermarks until configured otherwise.
    pub fn new(mut timestamp: impl FnMut(&T) -> DateTime<Utc> + Send + 'static) -> Self {
        Self::try_new(move |t| Ok::<_, std::convert::Infallible>(timestamp(t)))
    }

    /// Event time read by a fallible `timestamp`. A record for which it fails becomes a
    /// dead letter of kind [`Timestamp`](crate::RecordErrorKind::Timestamp) whose
    /// message is the error's text: make it name the field.
    pub fn try_new<E: fmt::Display>(
        mut timestamp: impl FnMut(&T) -> std::result::Result<DateTime<Utc>, E> + Send + 'static,
    ) -> Self {
        EventTime {
            timestamp: Box::new(move |t| timestamp(t).map_err(|e| e.to_string())),
            strategy: WatermarkStrategy::Monotonic,
            partition: None,
            idle_timeout: None,
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

    /// A partition silent for `timeout` (processing time) stops holding the watermark
    /// back until it sends again.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
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
    current: Option<DateTime<Utc>>,
    /// Processing time of the batch being read (set by `on_batch`).
    batch_now: tokio::time::Instant,
    pub(crate) regressions: u64,
}

impl<T> WatermarkTracker<T> {
    pub(crate) fn new(settings: EventTime<T>) -> Self {
        WatermarkTracker {
            settings,
            partitions: Vec::new(),
            current: None,
            batch_now: tokio::time::Instant::now(),
            regressions: 0,
        }
    }

    pub(crate) fn current(&self) -> Option<DateTime<Utc>> {
        self.current
    }

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
    #[inline]
    pub(crate) fn observe(
        &mut self,
        item: &T,
    ) -> std::result::Result<Option<DateTime<Utc>>, String> {
        let ts = (self.settings.timestamp)(item)?;
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
            // The common case: an event that does not move its partition's watermark.
            return Ok(None);
        }
        Ok(self.recompute())
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
    #[inline]
    fn recompute(&mut self) -> Option<DateTime<Utc>> {
        let combined = if self.partitions.len() == 1 {
            self.partitions[0].generator.current()
        } else {
            let mut min: Option<DateTime<Utc>> = None;
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
                Some(combined)
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Value {
        let state = TrackerState {
            current: self.current,
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
        self.current = state.current;
        self.partitions.clear();
        for (id, gen_state) in state.partitions {
            let i = self.partition_index(id);
            self.partitions[i].generator.restore(gen_state)?;
        }
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
