//! The empirical advisor: run a sample of a real pipeline under each executor,
//! measure it, and check the rule-based recommendation against the latency budget.

use std::time::Duration;

use super::duration::format_duration;
use super::rules::{Input, Model, Recommendation, Requirements, advise};
use crate::error::{Error, Result};
use crate::executor::{ExecutorKind, RunReport};
use crate::pipeline::Pipeline;
use crate::sink::Sink;
use crate::source::Source;
use crate::testing::Modes;
use crate::transform::Transform;

/// The figures of one executor's run over the sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The executor.
    pub executor: ExecutorKind,
    /// Records read (decoded and rejected).
    pub records: u64,
    /// Wall-clock duration of the run.
    pub elapsed: Duration,
    /// Records read per second of the run.
    pub throughput: f64,
    /// Median source-to-sink latency of a record's batch (from the run's metrics).
    pub p50: Duration,
    /// 99th percentile source-to-sink latency (from the run's metrics).
    pub p99: Duration,
    /// How long a result can take to become visible under this model, the figure
    /// compared with the budget: streaming, the measured p99; micro-batch, the
    /// trigger interval plus the longer of one measured micro-batch and the p99;
    /// batch, the schedule period (for an unbounded input) plus the whole run.
    pub result_latency: Duration,
    /// Peak resident memory of the process during the run, in bytes (Linux only;
    /// process-wide, so concurrent work in the same process counts too).
    pub peak_memory: Option<u64>,
    /// The executor's report.
    pub report: RunReport,
}

/// Measurements side by side and the refined recommendation. Render it with
/// [`table`](EmpiricalReport::table) or [`svg`](EmpiricalReport::svg).
#[derive(Debug, Clone, PartialEq)]
pub struct EmpiricalReport {
    /// The pipeline id.
    pub pipeline_id: String,
    /// The latency budget (the requirements' `max_latency`).
    pub budget: Duration,
    /// What the rules recommended before measuring.
    pub rule_based: Recommendation,
    /// One measurement per executor: batch, micro-batch, stream.
    pub measurements: Vec<Measurement>,
    /// The recommended model after measuring.
    pub model: Model,
    /// The executor to run it.
    pub executor: ExecutorKind,
    /// Why: the rules' reasons, then what the measurements showed.
    pub reasons: Vec<String>,
    /// Executors that could not run the sample, and why (the batch executor refuses
    /// an unbounded source).
    pub not_measured: Vec<(ExecutorKind, String)>,
}

impl EmpiricalReport {
    /// The measurement of `kind`.
    pub fn measurement(&self, kind: ExecutorKind) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.executor == kind)
    }
}

/// Runs a sample of a pipeline under batch, micro-batch and stream, and refines the
/// rule-based recommendation: when the recommended executor's result latency
/// exceeds the budget, the next faster one that fits is recommended (batch →
/// micro-batch → stream); it never picks a slower model than the rules did.
///
/// The runs are sequential, on the caller's runtime, with the executors of a
/// [`Modes`] (default: each executor's defaults, micro-batch with
/// `Trigger::AvailableNow` so the sample runs back to back). The micro-batch's
/// result latency adds the trigger the rules suggested (or half the budget).
///
/// Give it a bounded sample of the input (a file, a few thousand generated records):
/// the batch executor refuses an unbounded source, and is then listed in
/// [`EmpiricalReport::not_measured`].
///
/// ```
/// use std::time::Duration;
/// use batchstream::Pipeline;
/// use batchstream::adapters::{CollectSink, IterSource};
/// use batchstream::advisor::{EmpiricalAdvisor, Requirements};
/// use batchstream::transform::{identity, TransformExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let req = Requirements::new().max_latency(Duration::from_secs(3600)).bounded();
/// let report = EmpiricalAdvisor::new(req)
///     .run(|| {
///         let (sink, _out) = CollectSink::new();
///         Pipeline::new("sample", IterSource::new(0..10_000u64), identity::<u64>().map(|x| x * 2), sink)
///     })
///     .await?;
/// assert_eq!(report.measurements.len(), 3);
/// assert!(report.measurements.iter().all(|m| m.records == 10_000));
/// println!("{}", report.table());
/// let _svg: String = report.svg();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EmpiricalAdvisor {
    requirements: Requirements,
    modes: Modes,
    trigger: Option<Duration>,
    measure_memory: bool,
}

impl EmpiricalAdvisor {
    /// An advisor for these requirements (the budget is their `max_latency`).
    pub fn new(requirements: Requirements) -> Self {
        EmpiricalAdvisor {
            requirements,
            modes: Modes::default(),
            trigger: None,
            measure_memory: true,
        }
    }

    /// Runs the sample with these executors.
    pub fn modes(mut self, modes: Modes) -> Self {
        self.modes = modes;
        self
    }

    /// The micro-batch trigger interval to assume (default: the rules' suggestion,
    /// or half the budget).
    pub fn micro_batch_trigger(mut self, interval: Duration) -> Self {
        self.trigger = Some(interval);
        self
    }

    /// Whether to measure peak memory (default: yes, where the platform allows).
    pub fn measure_memory(mut self, yes: bool) -> Self {
        self.measure_memory = yes;
        self
    }

    /// Builds a pipeline with `factory` for each executor, runs it, and compares.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when the requirements are incomplete
    /// or conflict (see [`advise`]); whatever a run returns.
    pub async fn run<F, S, T, K>(&self, factory: F) -> Result<EmpiricalReport>
    where
        F: Fn() -> Pipeline<S, T, K>,
        S: Source,
        T: Transform<In = S::Item, Out = K::Item>,
        K: Sink,
    {
        let rule_based = advise(&self.requirements)?;
        let budget = self
            .requirements
            .max_latency
            .expect("advise succeeded, so max_latency is set");
        let trigger = self
            .trigger
            .or(rule_based.executor.trigger)
            .unwrap_or(budget / 2);
        let schedule = match self.requirements.input {
            Some(Input::Unbounded) => rule_based.executor.schedule.unwrap_or(budget / 2),
            _ => Duration::ZERO,
        };
        let mut measurements = Vec::with_capacity(3);
        let mut not_measured = Vec::new();
        let mut pipeline_id = String::new();
        for kind in [
            ExecutorKind::Batch,
            ExecutorKind::MicroBatch,
            ExecutorKind::Stream,
        ] {
            let pipeline = factory();
            pipeline_id = pipeline.id().to_string();
            let memory = self.measure_memory && reset_peak_memory();
            let report = match self.modes.run(kind, pipeline).await {
                Ok(report) => report,
                Err(e @ Error::UnboundedSource { .. }) => {
                    not_measured.push((kind, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let peak_memory = if memory { peak_memory() } else { None };
            measurements.push(measure(kind, report, peak_memory, trigger, schedule));
        }
        let (model, executor, reasons) =
            refine(&rule_based, &measurements, &not_measured, budget, trigger);
        Ok(EmpiricalReport {
            pipeline_id,
            budget,
            rule_based,
            measurements,
            model,
            executor,
            reasons,
            not_measured,
        })
    }
}

fn measure(
    kind: ExecutorKind,
    report: RunReport,
    peak_memory: Option<u64>,
    trigger: Duration,
    schedule: Duration,
) -> Measurement {
    let records = report.records_read;
    let elapsed = report.duration;
    let throughput = records as f64 / elapsed.as_secs_f64().max(1e-6);
    let lat = &report.metrics.latency;
    let p50 = Duration::from_micros(lat.p50_us);
    let p99 = Duration::from_micros(lat.p99_us);
    let result_latency = match kind {
        ExecutorKind::Stream => p99,
        ExecutorKind::MicroBatch => {
            let per_batch = elapsed / u32::try_from(report.epochs.max(1)).unwrap_or(u32::MAX);
            trigger + per_batch.max(p99)
        }
        ExecutorKind::Batch => schedule + elapsed,
    };
    Measurement {
        executor: kind,
        records,
        elapsed,
        throughput,
        p50,
        p99,
        result_latency,
        peak_memory,
        report,
    }
}

/// The refined model, executor and reasons.
fn refine(
    rule: &Recommendation,
    measurements: &[Measurement],
    not_measured: &[(ExecutorKind, String)],
    budget: Duration,
    trigger: Duration,
) -> (Model, ExecutorKind, Vec<String>) {
    let order = [
        ExecutorKind::Batch,
        ExecutorKind::MicroBatch,
        ExecutorKind::Stream,
    ];
    let start = order
        .iter()
        .position(|k| *k == rule.executor.kind)
        .unwrap_or(0);
    let budget_text = format_duration(budget);
    let mut reasons = rule.reasons.clone();
    if let Some((kind, why)) = not_measured.iter().find(|(k, _)| *k == rule.executor.kind) {
        reasons.push(format!(
            "not measured: {kind} could not run the sample ({why}); the rules' answer stands"
        ));
        return (rule.model, *kind, reasons);
    }
    let latency_of = |kind: ExecutorKind| {
        measurements
            .iter()
            .find(|m| m.executor == kind)
            .map(|m| m.result_latency)
    };
    for (i, kind) in order.iter().enumerate().skip(start) {
        let Some(lat) = latency_of(*kind) else {
            continue;
        };
        if lat <= budget {
            reasons.push(format!(
                "measured: {kind}'s result latency {} is within the {budget_text} budget",
                super::report::latency(lat)
            ));
            if i == start {
                return (rule.model, *kind, reasons);
            }
            let model = match kind {
                ExecutorKind::MicroBatch => Model::MicroBatch { trigger },
                _ => Model::Streaming,
            };
            return (model, *kind, reasons);
        }
        reasons.push(format!(
            "measured: {kind}'s result latency {} exceeds the {budget_text} budget",
            super::report::latency(lat)
        ));
    }
    reasons.push(
        "no executor met the budget on this sample: streaming is the fastest; relax the \
         budget, scale out, or make the transforms cheaper"
            .to_string(),
    );
    let model = match rule.model {
        m @ (Model::Lambda | Model::Kappa | Model::Streaming) => m,
        _ => Model::Streaming,
    };
    (model, ExecutorKind::Stream, reasons)
}

/// Resets the process's peak resident set size (Linux: writes `5` to
/// `/proc/self/clear_refs`). Returns whether it worked.
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident set size in bytes since the last reset (Linux:
/// `VmHWM` in `/proc/self/status`).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(reset_peak_memory());
            let before = peak_memory().expect("VmHWM on linux");
            let big = vec![1u8; 64 << 20];
            std::hint::black_box(&big);
            let after = peak_memory().expect("VmHWM on linux");
            assert!(after >= before + (32 << 20), "{before} -> {after}");
        }
    }
}
