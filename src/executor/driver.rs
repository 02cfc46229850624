//! The driver all executors share: process a batch, end an epoch, checkpoint.
//!
//! Checkpoint order (the invariant every executor inherits):
//! sink flush → dead-letter flush → sink prepare → save checkpoint → sink commit →
//! source ack.

use std::time::Instant;

use crate::checkpoint::{BoxCheckpointStore, Checkpoint, CheckpointStore};
use crate::dead_letter::DeadLetter;
use chrono::{DateTime, Utc};

use crate::error::{CheckpointError, Error, Location, RecordError, RecordErrorKind, Result};
use crate::event_time::WatermarkTracker;
use crate::executor::{ExecutorKind, Outcome, RunReport};
#[cfg(feature = "failpoints")]
use crate::failpoint;
use crate::failpoint::failpoint;
use crate::metrics::PipelineMetrics;
use crate::pipeline::{DeadLetterLimit, Pipeline};
use crate::retry::RetryPolicy;
use crate::sink::{BoxSink, DeliveryGuarantee, Sink};
use crate::source::{Source, SourceBatch};
use crate::transform::{Transform, VecEmitter};

pub(crate) struct Driver<S: Source, T, K: Sink> {
    pub(crate) id: String,
    pub(crate) source: S,
    transform: T,
    sink: K,
    store: Option<BoxCheckpointStore>,
    dead_letters: Option<BoxSink<DeadLetter>>,
    late: Option<BoxSink<DeadLetter>>,
    watermarks: Option<WatermarkTracker<S::Item>>,
    out: VecEmitter<K::Item>,
    /// The checkpoint loaded at start, or the last one saved.
    base: Checkpoint,
    /// Position after the last processed batch.
    position: Option<S::Position>,
    /// Whether anything was processed since the last checkpoint.
    dirty: bool,
    pub(crate) report: RunReport,
    metrics: PipelineMetrics,
    dead_letter_limit: Option<DeadLetterLimit>,
    retry: Option<RetryPolicy>,
    exactly_once: bool,
    started: Instant,
}

impl<S, T, K> Driver<S, T, K>
where
    S: Source,
    T: Transform<In = S::Item, Out = K::Item>,
    K: Sink,
{
    pub(crate) fn new(p: Pipeline<S, T, K>, executor: ExecutorKind) -> Self {
        let report = RunReport {
            pipeline_id: p.id.clone(),
            executor,
            run_key: None,
            outcome: Outcome::Completed,
            records_read: 0,
            records_written: 0,
            dead_lettered: 0,
            late: 0,
            watermark: None,
            watermark_regressions: 0,
            checkpoints: 0,
            epochs: 0,
            resumed_from_epoch: None,
            guarantee: DeliveryGuarantee::AtLeastOnce,
            duration: Default::default(),
            metrics: Default::default(),
        };
        Driver {
            base: Checkpoint::new(p.id.clone()),
            id: p.id,
            source: p.source,
            transform: p.transform,
            sink: p.sink,
            store: p.checkpoints,
            dead_letters: p.dead_letters,
            late: p.late,
            watermarks: p.event_time.map(WatermarkTracker::new),
            out: VecEmitter::new(),
            metrics: p.metrics,
            dead_letter_limit: p.dead_letter_limit,
            retry: p.retry,
            exactly_once: p.exactly_once,
            position: None,
            dirty: false,
            report,
            started: Instant::now(),
        }
    }

    /// What the run delivers: the sink's guarantee, except that a transactional sink
    /// without a checkpoint store cannot commit against anything (a restart replays from
    /// the start), so it is at-least-once.
    fn effective_guarantee(&self) -> DeliveryGuarantee {
        match self.sink.guarantee() {
            DeliveryGuarantee::Transactional if self.store.is_none() => {
                DeliveryGuarantee::AtLeastOnce
            }
            g => g,
        }
    }

    /// Checks the pipeline's delivery requirement against its sink and store.
    fn check_guarantee(&mut self) -> Result<()> {
        self.report.guarantee = self.effective_guarantee();
        if !self.exactly_once {
            return Ok(());
        }
        match self.sink.guarantee() {
            DeliveryGuarantee::AtLeastOnce => Err(Error::Config(format!(
                "pipeline `{}` requires exactly-once output, but its sink promises only \
                 at-least-once delivery: use an idempotent (keyed upsert) or a transactional \
                 (two-phase commit) sink",
                self.id
            ))),
            DeliveryGuarantee::Transactional if self.store.is_none() => {
                Err(Error::Config(format!(
                    "pipeline `{}` requires exactly-once output: its transactional sink needs a \
                 checkpoint store (with_checkpoint_store) to commit epochs against",
                    self.id
                )))
            }
            _ => Ok(()),
        }
    }

    /// Loads the last checkpoint (if a store is configured) without applying it, after
    /// checking the delivery requirement.
    pub(crate) async fn load(&mut self) -> Result<Option<&Checkpoint>> {
        self.check_guarantee()?;
        let Some(store) = &self.store else {
            return Ok(None);
        };
        match store.load(&self.id).await? {
            Some(ck) => {
                self.base = ck;
                Ok(Some(&self.base))
            }
            None => Ok(None),
        }
    }

    /// Loads the last checkpoint and resumes from it: sink recovery, transform state,
    /// source seek. Used by the stream and micro-batch executors.
    pub(crate) async fn resume(&mut self) -> Result<()> {
        let found = self.load().await?.is_some();
        if !found {
            return self.sink.recover(None).await;
        }
        self.sink.recover(Some(self.base.epoch)).await?;
        self.transform.restore(self.base.transform_state.clone())?;
        if let (Some(w), Some(state)) = (&mut self.watermarks, &self.base.watermarks) {
            w.restore(state.clone())?;
        }
        if let Some(pos) = &self.base.source_position {
            let pos: S::Position = serde_json::from_value(pos.clone()).map_err(|e| {
                Error::restore_failed(
                    "source position",
                    format!(
                        "checkpointed position {pos} does not decode as this source's position: {e}"
                    ),
                )
            })?;
            self.source.seek(pos.clone()).await?;
            self.position = Some(pos);
        }
        self.report.resumed_from_epoch = Some(self.base.epoch);
        Ok(())
    }

    /// Tells the sink the last checkpointed epoch without resuming the source (batch runs
    /// restart their range from the beginning).
    pub(crate) async fn recover_sink(&mut self) -> Result<()> {
        let epoch = (self.base.epoch > 0).then_some(self.base.epoch);
        self.sink.recover(epoch).await
    }

    /// Reads the next batch, retrying transient source errors as the pipeline's retry
    /// policy allows. Cancel safe when the source is: a cancelled backoff only
    /// restarts the attempt count.
    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<SourceBatch<S::Item, S::Position>>> {
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            match self.source.next_batch(max).await {
                Err(e) if self.may_retry(&e, attempt, first) => {
                    let delay = self.before_retry("source read", &e, attempt);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn may_retry(&self, e: &Error, attempt: u32, first: Instant) -> bool {
        e.is_retryable()
            && self
                .retry
                .is_some_and(|p| p.allows(attempt, first.elapsed()))
    }

    /// Counts and logs a retry; returns how long to wait before it. (Synchronous, so
    /// that no shared borrow of the driver is held across the wait.)
    fn before_retry(&self, operation: &str, e: &Error, attempt: u32) -> std::time::Duration {
        let delay = self.retry.map(|p| p.delay(attempt)).unwrap_or_default();
        self.metrics.add_retry();
        tracing::warn!(operation, attempt, ?delay, error = %e, "retrying");
        delay
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub(crate) fn checkpointed_runs(&self) -> &std::collections::BTreeSet<String> {
        &self.base.completed_runs
    }

    /// Runs one source batch through the transforms and writes the results.
    pub(crate) async fn process(&mut self, batch: SourceBatch<S::Item, S::Position>) -> Result<()> {
        let SourceBatch {
            records,
            rejected,
            position,
        } = batch;
        let received = Instant::now();
        let n = (records.len() + rejected.len()) as u64;
        self.report.records_read += n;
        self.metrics.add_in(n);
        self.out.dead_letters.extend(rejected);
        match &mut self.watermarks {
            None => self.transform.process_batch(records, &mut self.out),
            Some(w) => {
                // Event time: the watermark advances record by record, and the
                // transforms hear of it before the record that advanced it.
                if let Some(wm) = w.on_batch() {
                    self.transform.on_watermark(wm, &mut self.out);
                }
                for (i, item) in records.into_iter().enumerate() {
                    match w.observe(&item) {
                        Ok(advanced) => {
                            if let Some(wm) = advanced {
                                self.transform.on_watermark(wm, &mut self.out);
                            }
                            self.transform.process(item, &mut self.out);
                        }
                        Err(message) => {
                            let location = Location {
                                index_in_batch: Some(i as u64),
                                ..Location::default()
                            };
                            let error = RecordError::new(
                                RecordErrorKind::Timestamp,
                                "event-time",
                                message,
                                location,
                            );
                            self.out
                                .dead_letters
                                .push(DeadLetter::rejected(error, None));
                        }
                    }
                }
            }
        }
        self.position = Some(position);
        self.dirty = true;
        self.write_out().await?;
        self.metrics.record_latency(received.elapsed(), n);
        self.metrics
            .set_source_lag(self.source.progress().and_then(|p| p.remaining()));
        Ok(())
    }

    /// Ends an epoch: the transforms flush pending results, which are written.
    pub(crate) async fn end_epoch(&mut self) -> Result<()> {
        self.transform.flush(&mut self.out);
        self.write_out().await
    }

    /// The input is finished: a final watermark closes every window, and what it
    /// releases is written. Returns whether that wrote anything (which then needs a
    /// checkpoint, so that a restart does not release it again).
    pub(crate) async fn end_of_input(&mut self) -> Result<bool> {
        let before = self.report.records_written + self.report.dead_lettered + self.report.late;
        self.transform
            .on_watermark(DateTime::<Utc>::MAX_UTC, &mut self.out);
        self.report.watermark = Some(DateTime::<Utc>::MAX_UTC);
        self.end_epoch().await?;
        let after = self.report.records_written + self.report.dead_lettered + self.report.late;
        if after != before {
            self.dirty = true;
        }
        Ok(after != before)
    }

    async fn write_out(&mut self) -> Result<()> {
        if !self.out.records.is_empty() {
            // Hand the sink the filled Vec; start the next one at the same size.
            let n = self.out.records.len();
            let batch = std::mem::replace(&mut self.out.records, Vec::with_capacity(n));
            self.report.records_written += batch.len() as u64;
            self.metrics.add_out(batch.len() as u64);
            self.sink.write(batch).await?;
        }
        if !self.out.dead_letters.is_empty() {
            let mut letters = std::mem::take(&mut self.out.dead_letters);
            let pos = self
                .position
                .as_ref()
                .and_then(|p| serde_json::to_value(p).ok());
            for l in &mut letters {
                if l.position.is_none() {
                    l.position = pos.clone();
                }
            }
            if letters
                .iter()
                .any(|l| l.error.kind == RecordErrorKind::Late)
            {
                let (late, rest): (Vec<_>, Vec<_>) = letters
                    .into_iter()
                    .partition(|l| l.error.kind == RecordErrorKind::Late);
                letters = rest;
                self.report.late += late.len() as u64;
                self.metrics.add_late(late.len() as u64);
                tracing::debug!(count = late.len(), "late records");
                if let Some(sink) = &mut self.late {
                    sink.write(late).await?;
                }
                if letters.is_empty() {
                    return Ok(());
                }
            }
            match &mut self.dead_letters {
                Some(dlq) => {
                    // Over the limit: keep the letters before the one that crosses it,
                    // then fail with that one.
                    let crossing = self.dead_letter_limit.and_then(|limit| {
                        let at = limit.first_excess(
                            self.report.dead_lettered,
                            self.report.records_read,
                            letters.len(),
                        )?;
                        Some((limit, letters.drain(at..).next()?))
                    });
                    let n = letters.len() as u64;
                    self.report.dead_lettered += n;
                    self.metrics.add_dead_lettered(n);
                    if let Some(first) = letters.first() {
                        tracing::warn!(count = n, first = %first.error, "records sent to the dead-letter sink");
                        dlq.write(letters).await?;
                    }
                    if let Some((limit, last)) = crossing {
                        dlq.flush().await?;
                        return Err(Error::TooManyDeadLetters {
                            dead_lettered: self.report.dead_lettered + 1,
                            records_read: self.report.records_read,
                            limit: limit.to_string(),
                            last: Box::new(last.error),
                        });
                    }
                }
                None => {
                    let first = letters.swap_remove(0);
                    return Err(Error::Record(Box::new(first.error)));
                }
            }
        }
        Ok(())
    }

    /// Flushes the sink and the dead-letter sink.
    pub(crate) async fn flush_sinks(&mut self) -> Result<()> {
        self.sink.flush().await?;
        if let Some(dlq) = &mut self.dead_letters {
            dlq.flush().await?;
        }
        if let Some(late) = &mut self.late {
            late.flush().await?;
        }
        Ok(())
    }

    /// Takes a checkpoint of progress so far (position and transform state) and, when
    /// `completed_run` is given, marks that batch run complete.
    ///
    /// A batch run passes `progress = false`: it records only the run marker and keeps
    /// the stored position and state as they were.
    pub(crate) async fn checkpoint(
        &mut self,
        progress: bool,
        completed_run: Option<&str>,
    ) -> Result<()> {
        let span = tracing::debug_span!("checkpoint", epoch = self.base.epoch + 1);
        tracing::Instrument::instrument(self.checkpoint_in_span(progress, completed_run), span)
            .await
    }

    async fn checkpoint_in_span(
        &mut self,
        progress: bool,
        completed_run: Option<&str>,
    ) -> Result<()> {
        let started = Instant::now();
        let mut bytes = None;
        failpoint!(
            "batchstream::sink::before_flush",
            failpoint::sink_error("before_flush")
        );
        self.flush_sinks().await?;
        failpoint!(
            "batchstream::sink::after_flush",
            failpoint::sink_error("after_flush")
        );
        let epoch = self.base.epoch + 1;
        self.sink.prepare(epoch).await?;
        failpoint!(
            "batchstream::sink::after_prepare",
            failpoint::sink_error("after_prepare")
        );

        if let Some(key) = completed_run {
            self.base.completed_runs.insert(key.to_owned());
        }
        self.base.epoch = epoch;
        // Without a store nothing reads the snapshot: skip encoding state and position.
        if let Some(store) = &self.store {
            if progress {
                self.base.transform_state = self.transform.snapshot()?;
                self.base.watermarks = self.watermarks.as_ref().map(|w| w.snapshot());
                if let Some(p) = &self.position {
                    self.base.source_position = Some(
                        serde_json::to_value(p)
                            .map_err(|e| Error::snapshot_failed("source position", e))?,
                    );
                }
            }
            self.base.created_at = chrono::Utc::now();
            // Encoded once, here: the size goes to the metrics, the bytes to the store.
            let json = serde_json::to_vec(&self.base).map_err(|e| {
                Error::Checkpoint(CheckpointError::Serde {
                    pipeline_id: self.id.clone(),
                    action: "encoded",
                    message: e.to_string(),
                })
            })?;
            bytes = Some(json.len() as u64);
            let first = Instant::now();
            let mut attempt = 1;
            loop {
                match store.save_json(&self.base, &json).await {
                    Ok(()) => break,
                    Err(e) => {
                        let e = Error::from(e);
                        if !self.may_retry(&e, attempt, first) {
                            return Err(e);
                        }
                        let delay = self.before_retry("checkpoint save", &e, attempt);
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                }
            }
        }
        self.report.checkpoints += 1;
        self.dirty = false;

        self.sink.commit(epoch).await?;
        failpoint!(
            "batchstream::sink::after_commit",
            failpoint::sink_error("after_commit")
        );
        // Everything up to the position is durable now (for a batch run: the whole
        // run), so the source may commit it upstream.
        failpoint!(
            "batchstream::source::before_ack",
            failpoint::source_error("before_ack")
        );
        if let Some(p) = &self.position {
            self.source.ack(p).await?;
        }
        self.metrics.checkpoint_done(started.elapsed(), bytes);
        tracing::debug!(epoch, took = ?started.elapsed(), bytes, "checkpoint");
        Ok(())
    }

    pub(crate) fn finish(mut self, outcome: Outcome) -> RunReport {
        self.report.metrics = self.metrics.snapshot();
        if let Some(w) = &self.watermarks {
            self.report.watermark_regressions = w.regressions;
            if self.report.watermark.is_none() {
                self.report.watermark = w.current();
            }
        }
        self.report.outcome = outcome;
        self.report.duration = self.started.elapsed();
        self.report
    }
}
