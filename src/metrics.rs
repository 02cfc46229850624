//! Live pipeline metrics.
//!
//! Every [`Pipeline`](crate::Pipeline) carries a [`PipelineMetrics`] handle. Take a
//! clone with [`Pipeline::metrics`](crate::Pipeline::metrics) before handing the
//! pipeline to an executor, and read a [`MetricsSnapshot`] from it at any time while
//! the pipeline runs; the run report carries the final snapshot too.
//!
//! Counters are atomics updated once per batch, never per record. Latency is the
//! time from a batch leaving the source to its results being accepted by the sink,
//! recorded once per batch weighted by its records, in an HDR histogram (microsecond
//! resolution, 3 significant digits).
//!
//! With the `metrics` feature, the same figures are also exported through the
//! [`metrics`](https://docs.rs/metrics) facade, labelled with `pipeline`:
//! `batchstream_records_in_total`, `batchstream_records_out_total`,
//! `batchstream_dead_lettered_total`, `batchstream_late_total`,
//! `batchstream_checkpoints_total`, `batchstream_checkpoint_seconds` (histogram),
//! `batchstream_checkpoint_bytes` (gauge), `batchstream_source_lag` (gauge) and
//! `batchstream_batch_latency_seconds` (histogram).
//!
//! ```
//! use batchstream::{BatchExecutor, Pipeline};
//! use batchstream::adapters::{CollectSink, IterSource};
//! use batchstream::transform::identity;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let (sink, _out) = CollectSink::new();
//! let pipeline = Pipeline::new("m", IterSource::new(0..100), identity::<i32>(), sink);
//! let metrics = pipeline.metrics(); // readable from another task while it runs
//! let report = BatchExecutor::new().run(pipeline).await?;
//! assert_eq!(metrics.snapshot().records_in, 100);
//! assert_eq!(report.metrics.records_out, 100);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

const UNKNOWN: u64 = u64::MAX;

/// A shared, live view of one pipeline's figures. Cloning shares it.
#[derive(Clone)]
pub struct PipelineMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: String,
    records_in: AtomicU64,
    records_out: AtomicU64,
    dead_lettered: AtomicU64,
    late: AtomicU64,
    retries: AtomicU64,
    restarts: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_nanos_total: AtomicU64,
    last_checkpoint_nanos: AtomicU64,
    last_checkpoint_bytes: AtomicU64,
    source_lag: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl fmt::Debug for PipelineMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineMetrics")
            .field("pipeline", &self.inner.pipeline)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Records measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// The figures of a pipeline at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Records read from the source (decoded and rejected).
    pub records_in: u64,
    /// Records written to the sink.
    pub records_out: u64,
    /// Records sent to the dead-letter sink.
    pub dead_lettered: u64,
    /// Records that arrived after their window closed.
    pub late: u64,
    /// Retried operations (sink writes, source reads, checkpoint saves).
    pub retries: u64,
    /// Pipeline restarts by a supervisor.
    pub restarts: u64,
    /// Checkpoints saved.
    pub checkpoints: u64,
    /// Time spent in checkpoints, in total (flush, prepare, save, commit, ack).
    pub checkpoint_time_total: Duration,
    /// Duration of the last checkpoint.
    pub last_checkpoint_time: Option<Duration>,
    /// Size of the last saved checkpoint, in bytes of JSON.
    pub last_checkpoint_bytes: Option<u64>,
    /// Units the source has available but not yet read (bytes behind the end of a
    /// tailed file, say), where the source knows.
    pub source_lag: Option<u64>,
    /// Source-to-sink latency per record.
    pub latency: LatencySummary,
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {}, out {}, dead-lettered {}, late {}, retries {}, restarts {}, checkpoints {} ({:.1?} total",
            self.records_in,
            self.records_out,
            self.dead_lettered,
            self.late,
            self.retries,
            self.restarts,
            self.checkpoints,
            self.checkpoint_time_total,
        )?;
        if let Some(b) = self.last_checkpoint_bytes {
            write!(f, ", last {b} B")?;
        }
        f.write_str(")")?;
        if let Some(lag) = self.source_lag {
            write!(f, ", source lag {lag}")?;
        }
        let l = &self.latency;
        if l.count > 0 {
            write!(
                f,
                ", latency p50 {} µs, p99 {} µs, max {} µs",
                l.p50_us, l.p99_us, l.max_us
            )?;
        }
        Ok(())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl PipelineMetrics {
    /// Fresh metrics for `pipeline`.
    pub fn new(pipeline: impl Into<String>) -> Self {
        PipelineMetrics {
            inner: Arc::new(Inner {
                pipeline: pipeline.into(),
                records_in: AtomicU64::new(0),
                records_out: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                late: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                restarts: AtomicU64::new(0),
                checkpoints: AtomicU64::new(0),
                checkpoint_nanos_total: AtomicU64::new(0),
                last_checkpoint_nanos: AtomicU64::new(UNKNOWN),
                last_checkpoint_bytes: AtomicU64::new(UNKNOWN),
                source_lag: AtomicU64::new(UNKNOWN),
                latency: Mutex::new(
                    Histogram::new_with_bounds(1, 3_600_000_000, 3)
                        .expect("valid histogram bounds"),
                ),
            }),
        }
    }

    /// The pipeline these metrics belong to.
    pub fn pipeline(&self) -> &str {
        &self.inner.pipeline
    }

    /// The figures now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let i = &self.inner;
        let known = |v: u64| (v != UNKNOWN).then_some(v);
        let latency = {
            let h = i.latency.lock().unwrap_or_else(|e| e.into_inner());
            if h.is_empty() {
                LatencySummary::default()
            } else {
                LatencySummary {
                    count: h.len(),
                    p50_us: h.value_at_quantile(0.5),
                    p90_us: h.value_at_quantile(0.9),
                    p99_us: h.value_at_quantile(0.99),
                    p999_us: h.value_at_quantile(0.999),
                    max_us: h.max(),
                }
            }
        };
        MetricsSnapshot {
            records_in: i.records_in.load(Ordering::Relaxed),
            records_out: i.records_out.load(Ordering::Relaxed),
            dead_lettered: i.dead_lettered.load(Ordering::Relaxed),
            late: i.late.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            restarts: i.restarts.load(Ordering::Relaxed),
            checkpoints: i.checkpoints.load(Ordering::Relaxed),
            checkpoint_time_total: Duration::from_nanos(
                i.checkpoint_nanos_total.load(Ordering::Relaxed),
            ),
            last_checkpoint_time: known(i.last_checkpoint_nanos.load(Ordering::Relaxed))
                .map(Duration::from_nanos),
            last_checkpoint_bytes: known(i.last_checkpoint_bytes.load(Ordering::Relaxed)),
            source_lag: known(i.source_lag.load(Ordering::Relaxed)),
            latency,
        }
    }

    pub(crate) fn add_in(&self, n: u64) {
        self.inner.records_in.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("batchstream_records_in_total", "pipeline" => self.inner.pipeline.clone())
            .increment(n);
    }

    pub(crate) fn add_out(&self, n: u64) {
        self.inner.records_out.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("batchstream_records_out_total", "pipeline" => self.inner.pipeline.clone())
            .increment(n);
    }

    pub(crate) fn add_dead_lettered(&self, n: u64) {
        self.inner.dead_lettered.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("batchstream_dead_lettered_total", "pipeline" => self.inner.pipeline.clone())
            .increment(n);
    }

    pub(crate) fn add_late(&self, n: u64) {
        self.inner.late.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("batchstream_late_total", "pipeline" => self.inner.pipeline.clone())
            .increment(n);
    }

    /// Counts a retried operation (for retry policies, including your own).
    pub fn add_retry(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("batchstream_retries_total", "pipeline" => self.inner.pipeline.clone())
            .increment(1);
    }

    /// Counts a restart of the pipeline (for supervisors, including your own).
    pub fn add_restart(&self) {
        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("batchstream_restarts_total", "pipeline" => self.inner.pipeline.clone())
            .increment(1);
    }

    pub(crate) fn checkpoint_done(&self, took: Duration, bytes: Option<u64>) {
        let i = &self.inner;
        i.checkpoints.fetch_add(1, Ordering::Relaxed);
        i.checkpoint_nanos_total
            .fetch_add(nanos(took), Ordering::Relaxed);
        i.last_checkpoint_nanos
            .store(nanos(took), Ordering::Relaxed);
        if let Some(b) = bytes {
            i.last_checkpoint_bytes.store(b, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        {
            let p = i.pipeline.clone();
            metrics::counter!("batchstream_checkpoints_total", "pipeline" => p.clone())
                .increment(1);
            metrics::histogram!("batchstream_checkpoint_seconds", "pipeline" => p.clone())
                .record(took.as_secs_f64());
            if let Some(b) = bytes {
                metrics::gauge!("batchstream_checkpoint_bytes", "pipeline" => p).set(b as f64);
            }
        }
    }

    pub(crate) fn set_source_lag(&self, lag: Option<u64>) {
        self.inner
            .source_lag
            .store(lag.unwrap_or(UNKNOWN), Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(l) = lag {
            metrics::gauge!("batchstream_source_lag", "pipeline" => self.inner.pipeline.clone())
                .set(l as f64);
        }
    }

    /// Records that `records` records took `latency` from source to sink.
    pub(crate) fn record_latency(&self, latency: Duration, records: u64) {
        if records == 0 {
            return;
        }
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut h = self.inner.latency.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record_n(us, records);
        drop(h);
        #[cfg(feature = "metrics")]
        metrics::histogram!("batchstream_batch_latency_seconds", "pipeline" => self.inner.pipeline.clone())
            .record(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_updates_and_unknowns() {
        let m = PipelineMetrics::new("p");
        let s = m.snapshot();
        assert_eq!(
            (s.records_in, s.source_lag, s.last_checkpoint_bytes),
            (0, None, None)
        );
        m.add_in(10);
        m.add_out(7);
        m.add_dead_lettered(2);
        m.add_late(1);
        m.set_source_lag(Some(4096));
        m.checkpoint_done(Duration::from_millis(3), Some(512));
        m.record_latency(Duration::from_micros(100), 9);
        m.record_latency(Duration::from_micros(5000), 1);
        let s = m.clone().snapshot();
        assert_eq!(
            (s.records_in, s.records_out, s.dead_lettered, s.late),
            (10, 7, 2, 1)
        );
        assert_eq!(s.source_lag, Some(4096));
        assert_eq!(s.checkpoints, 1);
        assert_eq!(s.last_checkpoint_bytes, Some(512));
        assert_eq!(s.latency.count, 10);
        assert!((99..=101).contains(&s.latency.p50_us), "{:?}", s.latency);
        assert!(s.latency.max_us >= 4990, "{:?}", s.latency);
        assert!(s.to_string().contains("latency p50"), "{s}");
    }
}
