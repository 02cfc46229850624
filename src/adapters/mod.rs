//! Adapters: ready-made sources and sinks.
//!
//! | adapter | kind | notes |
//! |---|---|---|
//! | [`IterSource`] | source, bounded | any iterator; position = records consumed |
//! | [`SharedSource`] | source, bounded | records behind an `Arc`, copied per batch; seeks anywhere |
//! | [`CollectSink`] | sink, at-least-once | appends to a shared `Vec` |
//! | [`UpsertSink`] | sink, idempotent | last value per key |
//! | [`ChannelSource`] / [`ChannelSink`] | tokio mpsc | |
//! | [`StreamSource`] / [`FuturesSink`] | `futures` bridges | |
//! | [`mod@file`] | NDJSON and CSV files | byte-offset positions, tail mode; transactional and keyed file sinks |
//! | [`partitioned::PartitionedSource`] | source over N lanes | per-lane positions; records tagged with their partition for per-partition watermarks |

mod channel;
mod collect;
pub mod file;
mod iter;
pub mod partitioned;
mod stream;

pub use channel::{ChannelSink, ChannelSource};
pub use collect::{CollectSink, Collected, UpsertSink, UpsertTable};
pub use iter::{IterSource, SharedSource};
pub use stream::{FuturesSink, StreamSource};
