//! Partitioned sources: N sub-sources (one per file, per partition, per shard) read
//! as N concurrent lanes of one [`Source`].
//!
//! [`PartitionedSource`] combines lanes of the same source type (use
//! [`BoxSource`](crate::BoxSource) to mix types). Each call to
//! [`next_batch`](Source::next_batch) reads every unfinished lane at once and returns
//! the batch of a lane that is ready, so a slow or silent lane never blocks a fast
//! one. Each round polls every lane's read, starting at a different lane each time;
//! batches of all lanes that finished in that round are kept (in `self`, so that
//! dropping `next_batch` loses nothing) and returned by the next calls, and the reads
//! still pending are dropped, which loses nothing because every [`Source`] is cancel
//! safe. A lane that is always ready therefore cannot starve the others.
//!
//! - **Records** are [`Partitioned<T>`]: the record and the id of the lane it came
//!   from, so that [`EventTime::partitioned_by`](crate::event_time::EventTime::partitioned_by)
//!   can keep one watermark per lane; the pipeline's watermark is then the minimum
//!   over lanes, and one fast lane does not make a slow lane's records late.
//!   A lane that has sent records and then falls silent holds the watermark back
//!   until [`EventTime::idle_timeout`](crate::event_time::EventTime::idle_timeout)
//!   (if set) declares it idle; a lane that has sent nothing yet does not hold it
//!   back at all.
//! - **Position**: a map from lane id to that lane's position
//!   ([`PartitionedPosition`]). A lane that has produced nothing yet has no entry.
//!   [`seek`](Source::seek) restores every lane in the map; [`ack`](Source::ack) acks
//!   every lane in it.
//! - **End**: bounded when every lane is; it ends when every lane has ended.
//! - **Rejected input** of a lane keeps its location, with the lane id as the
//!   partition when the lane did not name one.
//!
//! ```
//! use batchstream::adapters::partitioned::{Partitioned, PartitionedSource};
//! use batchstream::adapters::{CollectSink, IterSource};
//! use batchstream::transform::{self, TransformExt};
//! use batchstream::{BatchExecutor, Pipeline};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let lanes = vec![IterSource::new(vec![1, 2, 3]), IterSource::new(vec![10, 20])];
//! let (sink, out) = CollectSink::new();
//! let logic = transform::identity::<Partitioned<i32>>().map(|r| (r.partition, r.record));
//! let pipeline = Pipeline::new("lanes", PartitionedSource::new(lanes), logic, sink);
//! BatchExecutor::new().run(pipeline).await?;
//! let mut got = out.items();
//! got.sort();
//! assert_eq!(got, vec![(0, 1), (0, 2), (0, 3), (1, 10), (1, 20)]);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::task::Poll;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::{Boundedness, Source, SourceBatch, SourceProgress};

/// A record and the lane (partition) it came from.
///
/// One watermark per lane, combined with the minimum:
/// ```
/// use batchstream::adapters::partitioned::Partitioned;
/// use batchstream::event_time::EventTime;
/// use chrono::{DateTime, TimeDelta, Utc};
///
/// struct Reading { at: DateTime<Utc>, celsius: f64 }
///
/// let event_time = EventTime::new(|r: &Partitioned<Reading>| r.record.at)
///     .bounded_out_of_orderness(TimeDelta::seconds(30))
///     .partitioned_by(Partitioned::partition);
/// # let _ = event_time;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partitioned<T> {
    /// The id of the lane that read the record.
    pub partition: u64,
    /// The record.
    pub record: T,
}

impl<T> Partitioned<T> {
    /// `record` from lane `partition`.
    pub fn new(partition: u64, record: T) -> Self {
        Partitioned { partition, record }
    }

    /// The record, without its lane.
    pub fn into_inner(self) -> T {
        self.record
    }

    /// The lane id; a ready-made argument for
    /// [`EventTime::partitioned_by`](crate::event_time::EventTime::partitioned_by).
    pub fn partition(&self) -> u64 {
        self.partition
    }
}

/// The position of a [`PartitionedSource`]: each lane's position, by lane id. Lanes
/// that have produced nothing yet are absent.
pub type PartitionedPosition<P> = BTreeMap<u64, P>;

struct Lane<S> {
    id: u64,
    source: S,
    ended: bool,
}

/// N sub-sources of one type, read concurrently as lanes of one source. See the
/// [module docs](self).
pub struct PartitionedSource<S: Source> {
    lanes: Vec<Lane<S>>,
    positions: PartitionedPosition<S::Position>,
    /// The lane the next scan starts at (round robin).
    start: usize,
    /// Results of lane reads that finished but are not returned yet, in scan order.
    ready: VecDeque<(u64, LaneResult<S>)>,
}

type LaneResult<S> = Result<Option<SourceBatch<<S as Source>::Item, <S as Source>::Position>>>;

impl<S: Source> std::fmt::Debug for PartitionedSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedSource")
            .field(
                "lanes",
                &self.lanes.iter().map(|l| l.id).collect::<Vec<_>>(),
            )
            .field(
                "ended",
                &self
                    .lanes
                    .iter()
                    .filter(|l| l.ended)
                    .map(|l| l.id)
                    .collect::<Vec<_>>(),
            )
            .field("positions", &self.positions)
            .finish()
    }
}

impl<S: Source> PartitionedSource<S> {
    /// Lanes numbered 0, 1, 2, … in the order given.
    pub fn new(lanes: impl IntoIterator<Item = S>) -> Self {
        let lanes = lanes
            .into_iter()
            .enumerate()
            .map(|(i, s)| Lane {
                id: i as u64,
                source: s,
                ended: false,
            })
            .collect();
        PartitionedSource {
            lanes,
            positions: BTreeMap::new(),
            start: 0,
            ready: VecDeque::new(),
        }
    }

    /// Lanes with ids of your choosing (e.g. a broker's partition numbers). The ids
    /// are what checkpoints store, so keep them stable across restarts.
    ///
    /// # Errors
    /// [`Error::Config`] if an id appears twice.
    pub fn with_ids(lanes: impl IntoIterator<Item = (u64, S)>) -> Result<Self> {
        let mut out = PartitionedSource::new(std::iter::empty());
        for (id, source) in lanes {
            if out.lanes.iter().any(|l| l.id == id) {
                return Err(Error::Config(format!(
                    "partitioned source: lane id {id} appears twice"
                )));
            }
            out.lanes.push(Lane {
                id,
                source,
                ended: false,
            });
        }
        Ok(out)
    }

    /// The lane ids, in order.
    pub fn lane_ids(&self) -> Vec<u64> {
        self.lanes.iter().map(|l| l.id).collect()
    }

    /// How many lanes.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether there are no lanes (such a source ends at once).
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}

impl<S: Source> PartitionedSource<S> {
    fn lane_mut(&mut self, id: u64) -> &mut Lane<S> {
        self.lanes
            .iter_mut()
            .find(|l| l.id == id)
            .expect("results come from existing lanes")
    }

    /// Records lane `id`'s batch as delivered: its records carry the lane, its
    /// rejected input names the lane, and the position moves for that lane only.
    fn deliver(
        &mut self,
        id: u64,
        batch: SourceBatch<S::Item, S::Position>,
    ) -> SourceBatch<Partitioned<S::Item>, PartitionedPosition<S::Position>> {
        let SourceBatch {
            records,
            mut rejected,
            position,
        } = batch;
        for letter in &mut rejected {
            if letter.error.location.partition.is_none() {
                letter.error.location.partition = Some(id.to_string());
            }
        }
        self.positions.insert(id, position);
        let records = records
            .into_iter()
            .map(|record| Partitioned {
                partition: id,
                record,
            })
            .collect();
        SourceBatch::new(records, self.positions.clone()).with_rejected(rejected)
    }
}

impl<S: Source> Source for PartitionedSource<S> {
    type Item = Partitioned<S::Item>;
    type Position = PartitionedPosition<S::Position>;

    fn boundedness(&self) -> Boundedness {
        if self
            .lanes
            .iter()
            .all(|l| l.source.boundedness() == Boundedness::Bounded)
        {
            Boundedness::Bounded
        } else {
            Boundedness::Unbounded
        }
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<SourceBatch<Self::Item, Self::Position>>> {
        loop {
            if let Some((id, result)) = self.ready.pop_front() {
                match result.map_err(|e| lane_error(id, e))? {
                    None => self.lane_mut(id).ended = true,
                    Some(batch) => return Ok(Some(self.deliver(id, batch))),
                }
                continue;
            }
            let n = self.lanes.len();
            if self.lanes.iter().all(|l| l.ended) {
                return Ok(None);
            }
            let start = self.start % n;
            self.start = (start + 1) % n;
            // One read per unfinished lane, scanned from `start`; the reads borrow
            // disjoint lanes. Every read is polled in each round, and the results of all
            // that finished go to `self.ready` at once (so a dropped `next_batch` loses
            // none); the reads still pending are dropped, which the `Source` contract
            // (cancel safety) makes lossless.
            let ready = &mut self.ready;
            let mut reads: Vec<_> = {
                let (tail, head) = self.lanes.split_at_mut(start);
                head.iter_mut()
                    .chain(tail.iter_mut())
                    .filter(|l| !l.ended)
                    .map(|l| (l.id, Box::pin(l.source.next_batch(max))))
                    .collect()
            };
            std::future::poll_fn(|cx| {
                for (id, read) in reads.iter_mut() {
                    if let Poll::Ready(r) = read.as_mut().poll(cx) {
                        ready.push_back((*id, r));
                    }
                }
                if ready.is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }

    async fn seek(&mut self, position: Self::Position) -> Result<()> {
        let unknown: Vec<u64> = position
            .keys()
            .filter(|id| !self.lanes.iter().any(|l| l.id == **id))
            .copied()
            .collect();
        if !unknown.is_empty() {
            return Err(Error::restore_failed(
                "partitioned source position",
                format!(
                    "the checkpoint has positions for lanes {unknown:?}, but this source has lanes {:?}; \
                     their records would be lost",
                    self.lane_ids()
                ),
            ));
        }
        for lane in &mut self.lanes {
            if let Some(p) = position.get(&lane.id) {
                lane.source
                    .seek(p.clone())
                    .await
                    .map_err(|e| lane_error(lane.id, e))?;
            }
        }
        self.positions = position;
        Ok(())
    }

    async fn ack(&mut self, position: &Self::Position) -> Result<()> {
        for lane in &mut self.lanes {
            if let Some(p) = position.get(&lane.id) {
                lane.source
                    .ack(p)
                    .await
                    .map_err(|e| lane_error(lane.id, e))?;
            }
        }
        Ok(())
    }

    /// The sum over lanes, when every lane knows its progress in the same unit.
    fn progress(&self) -> Option<SourceProgress> {
        let mut sum: Option<SourceProgress> = None;
        for lane in &self.lanes {
            let p = lane.source.progress()?;
            sum = Some(match sum {
                None => p,
                Some(s) if s.unit == p.unit => SourceProgress {
                    done: s.done + p.done,
                    total: s.total.zip(p.total).map(|(a, b)| a + b),
                    unit: s.unit,
                },
                Some(_) => return None,
            });
        }
        sum
    }
}

/// Names the lane in a lane's source error, keeping whether it is retryable.
fn lane_error(lane: u64, e: Error) -> Error {
    match e {
        Error::Source { retryable, source } => Error::Source {
            retryable,
            source: Box::new(LaneError {
                lane,
                inner: source,
            }),
        },
        other => other,
    }
}

/// A lane's source error: "lane N: <error>", with the error's own causes below it.
#[derive(Debug)]
struct LaneError {
    lane: u64,
    inner: crate::error::BoxError,
}

impl std::fmt::Display for LaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lane {}: {}", self.lane, self.inner)
    }
}

impl std::error::Error for LaneError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}
