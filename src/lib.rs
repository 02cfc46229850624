//! # batchstream
//!
//! Write a data pipeline's logic **once**, then choose at deployment time whether it
//! runs as a bounded **batch**, an unbounded **stream**, or **micro-batches** on a
//! trigger. Same input, same results, whichever model runs it.
//!
//! A [`Transform`] is your logic: synchronous, runtime-free, unit-testable with a
//! plain `#[test]`. An executor is the processing model: [`BatchExecutor`],
//! [`StreamExecutor`] or [`MicroBatchExecutor`]. Between them sit a [`Source`]
//! (batches of records plus a resumable position), a [`Sink`] (batched writes with a
//! declared [`DeliveryGuarantee`]) and a [`CheckpointStore`] (an atomic, checksummed
//! snapshot of position, state and completed runs).
//!
//! ```
//! use batchstream::{BatchExecutor, MicroBatchExecutor, Pipeline, StreamExecutor, Trigger};
//! use batchstream::adapters::{IterSource, UpsertSink};
//! use batchstream::transform::{self, TransformExt};
//!
//! // The logic: total amount per customer, ignoring refunds.
//! fn pipeline(
//!     sink: UpsertSink<String, i64>,
//! ) -> Pipeline<impl batchstream::Source<Item = (String, i64)>,
//!               impl batchstream::Transform<In = (String, i64), Out = (String, i64)>,
//!               UpsertSink<String, i64>> {
//!     let orders = vec![("ann".to_string(), 30), ("bob".into(), -5), ("ann".into(), 12)];
//!     let logic = transform::identity::<(String, i64)>()
//!         .filter(|(_, amount)| *amount > 0)
//!         .key_by(|(customer, _)| customer.clone())
//!         .fold(0i64, |total, (_, amount)| *total += amount);
//!     Pipeline::new("totals", IterSource::new(orders), logic, sink)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! // The model: a deployment choice.
//! let (sink, batch) = UpsertSink::new();
//! BatchExecutor::new().run(pipeline(sink)).await?;
//! let (sink, stream) = UpsertSink::new();
//! StreamExecutor::new().run(pipeline(sink)).await?;
//! let (sink, micro) = UpsertSink::new();
//! MicroBatchExecutor::new(Trigger::AvailableNow).run(pipeline(sink)).await?;
//!
//! assert_eq!(batch.snapshot(), stream.snapshot());
//! assert_eq!(batch.snapshot(), micro.snapshot());
//! assert_eq!(batch.snapshot()["ann"], 42);
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! - Checkpoint order: sink flush → sink prepare → checkpoint save → sink commit →
//!   source ack. A crash anywhere loses nothing.
//! - No record disappears silently: it reaches the sink, the dead-letter sink (with
//!   its typed [`RecordError`] and position), or the run fails naming it. A record
//!   that arrives after its window closed goes to the late sink, or, without one, is
//!   counted in [`RunReport::late`].
//! - A corrupted checkpoint is an error ([`CheckpointError::Corrupt`]), never a silent
//!   restart from the beginning.
//! - Stateless chains (`map`, `filter`, `flat_map`, `try_map`, `inspect`) are fused:
//!   no buffer between stages. On a batch, `map`, `filter` and `inspect` work in place
//!   on the batch's own buffer (`filter` without a branch per record); record by record
//!   (with event time) each record goes through the whole chain first. Nothing on the
//!   hot path allocates, sends or awaits per record.
//!
//! ## Feature flags
//! - `progress`: a progress bar on stderr for batch runs (records/s, and percentage
//!   and ETA where the source knows its size, e.g. a file), drawn with `indicatif`.
//! - `metrics`: exports every pipeline's figures through the `metrics` facade crate
//!   (see [`metrics`](mod@metrics)). The live [`PipelineMetrics`] handle works without it.
//! - `postgres`, `redis`, `nats`, `kafka`, `sqlite`: connectors to real systems (see
//!   [`connectors`]), each built on the well-kept client crate for it.
//! - `cli`: the `batchstream advise` command-line model advisor.
//! - `failpoints`: named fault-injection points (the `fail` crate) for deterministic
//!   fault tests; see `docs/fault-tolerance.md`.
//!
//! ## Modules
//! - [`source`], [`transform`], [`sink`], [`checkpoint`]: the four core abstractions.
//! - [`executor`]: the three executors, [`Executor`] to pick one from configuration,
//!   and the [`RunReport`].
//! - [`adapters`]: iterators, collections, channels, `futures` bridges, NDJSON/CSV files.
//! - [`event_time`] and [`window`]: watermarks, lateness and keyed windows.
//! - [`metrics`](mod@metrics): live figures of a running pipeline.
//! - [`testing`]: helpers for testing your transforms and pipelines.
//! - [`retry`], [`supervisor`], [`shutdown`](mod@shutdown): retries of transient
//!   failures, restarts from the last checkpoint, graceful shutdown (a second signal
//!   aborts).
//! - [`connectors`]: PostgreSQL, Redis, NATS JetStream, Kafka and SQLite, behind features.
//! - [`lambda`], [`kappa`], [`incremental`]: the architectures around the model choice.
//! - [`advisor`]: recommends a model from requirements, and measures a pipeline under
//!   each executor.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod adapters;
pub mod advisor;
pub mod checkpoint;
pub mod connectors;
pub mod dead_letter;
pub mod error;
pub mod event_time;
pub mod executor;
mod failpoint;
pub mod incremental;
pub mod kappa;
pub mod lambda;
pub mod metrics;
pub mod pipeline;
mod progress;
pub mod retry;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod supervisor;
pub mod testing;
pub mod transform;
pub mod window;

pub use checkpoint::{Checkpoint, CheckpointStore};
pub use dead_letter::DeadLetter;
pub use error::{
    BoxError, CheckpointError, Error, ErrorKind, Location, RecordError, RecordErrorKind, Result,
};
pub use executor::{
    BatchExecutor, Executor, ExecutorKind, MicroBatchExecutor, Outcome, RunReport, StreamExecutor,
    Trigger,
};
pub use metrics::{MetricsSnapshot, PipelineMetrics};
pub use pipeline::{DeadLetterLimit, Pipeline};
pub use shutdown::{Shutdown, ShutdownHandle};
pub use sink::{BoxSink, DeliveryGuarantee, Sink};
pub use source::{Boundedness, BoxSource, Source, SourceBatch, SourceProgress};
pub use transform::{Emit, Transform, TransformExt};
