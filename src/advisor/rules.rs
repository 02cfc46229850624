//! The rule-based advisor: requirements in, a recommended model with reasons out.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{self, format_duration};
use crate::executor::{
    BatchExecutor, Executor, ExecutorKind, MicroBatchExecutor, StreamExecutor, Trigger,
};

/// Whether the input ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A file, a table snapshot, a date range: all there before the run starts.
    Bounded,
    /// A log, a queue, a change feed: records keep arriving.
    Unbounded,
}

/// How much operational complexity the team can take on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Complexity {
    /// A job that starts, finishes and exits; nothing to keep running.
    Low,
    /// One long-running service with one code path.
    #[default]
    Medium,
    /// Several systems or code paths (a batch layer and a speed layer, say).
    High,
}

/// How tight the cost constraint is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cost {
    /// Pay for resources only while a job runs; fewest sink writes.
    Tight,
    /// Some always-on capacity is acceptable.
    #[default]
    Moderate,
    /// Latency matters more than cost.
    Flexible,
}

macro_rules! parse_enum {
    ($ty:ident, $what:literal, $($text:literal => $variant:ident),+) => {
        impl FromStr for $ty {
            type Err = AdviceError;

            #[doc = concat!("Parses ", $(concat!("`", $text, "` ")),+, "ignoring case.")]
            fn from_str(s: &str) -> Result<Self, AdviceError> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($ty::$variant),)+
                    other => Err(AdviceError::Invalid {
                        field: $what,
                        message: format!(
                            "unknown value `{other}`: expected one of {}",
                            [$(concat!("`", $text, "`")),+].join(", ")
                        ),
                    }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($ty::$variant => $text,)+ })
            }
        }
    };
}

parse_enum!(Input, "input", "bounded" => Bounded, "unbounded" => Unbounded);
parse_enum!(Complexity, "complexity", "low" => Low, "medium" => Medium, "high" => High);
parse_enum!(Cost, "cost", "tight" => Tight, "moderate" => Moderate, "flexible" => Flexible);

/// The order of magnitude of a latency budget, as the decision framework reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LatencyClass {
    /// Under one second.
    SubSecond,
    /// One second to under a minute.
    Seconds,
    /// One minute to under an hour.
    Minutes,
    /// One hour to under a day.
    Hours,
    /// A day or more.
    Days,
}

impl LatencyClass {
    /// The class of a latency budget.
    ///
    /// ```
    /// use std::time::Duration;
    /// use batchstream::advisor::LatencyClass;
    ///
    /// assert_eq!(LatencyClass::of(Duration::from_secs(59)), LatencyClass::Seconds);
    /// assert_eq!(LatencyClass::of(Duration::from_secs(60)), LatencyClass::Minutes);
    /// ```
    pub fn of(latency: Duration) -> Self {
        match latency.as_secs() {
            0 => LatencyClass::SubSecond,
            1..60 => LatencyClass::Seconds,
            60..3_600 => LatencyClass::Minutes,
            3_600..86_400 => LatencyClass::Hours,
            _ => LatencyClass::Days,
        }
    }

    /// Whether only a continuously running pipeline can meet it (under a minute).
    pub fn needs_streaming(self) -> bool {
        self <= LatencyClass::Seconds
    }
}

impl fmt::Display for LatencyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LatencyClass::SubSecond => "under a second",
            LatencyClass::Seconds => "seconds",
            LatencyClass::Minutes => "minutes",
            LatencyClass::Hours => "hours",
            LatencyClass::Days => "days",
        })
    }
}

/// What a pipeline needs: the questions of the decision framework.
///
/// `max_latency` and `input` must be given; the rest have defaults (no
/// reprocessing, medium complexity, moderate cost, at-least-once, in order). It loads
/// from TOML or JSON with the same field names; `max_latency` is text such as
/// `"500ms"`, `"5s"`, `"10m"`, `"2h"`, `"1d"`:
///
/// ```toml
/// max_latency = "5s"
/// input = "unbounded"       # or "bounded"
/// reprocessing = false
/// replayable_log = false    # can the input be replayed from the start (Kappa)?
/// complexity = "medium"     # low | medium | high
/// cost = "moderate"         # tight | moderate | flexible
/// exactly_once = true
/// out_of_order = true
/// ```
///
/// ```
/// use std::time::Duration;
/// use batchstream::advisor::{Complexity, Model, Requirements};
///
/// let fraud = Requirements::new()
///     .max_latency(Duration::from_secs(2))
///     .unbounded()
///     .exactly_once(true)
///     .out_of_order(true)
///     .complexity(Complexity::Medium);
/// assert_eq!(fraud.advise()?.model, Model::Streaming);
/// # Ok::<(), batchstream::advisor::AdviceError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// The longest acceptable delay between a record arriving and its effect being
    /// visible in the output.
    #[serde(default, with = "duration::serde_opt")]
    pub max_latency: Option<Duration>,
    /// Whether the input ends.
    #[serde(default)]
    pub input: Option<Input>,
    /// Whether history must be reprocessed (after a bug fix or a logic change).
    #[serde(default)]
    pub reprocessing: bool,
    /// Whether the input is a log that can be replayed from the start (a Kafka topic
    /// with long retention, say); makes Kappa possible.
    #[serde(default)]
    pub replayable_log: bool,
    /// The operational complexity budget.
    #[serde(default)]
    pub complexity: Complexity,
    /// The cost constraint.
    #[serde(default)]
    pub cost: Cost,
    /// Whether each record's effect must appear exactly once in the output.
    #[serde(default)]
    pub exactly_once: bool,
    /// Whether records arrive out of event-time order.
    #[serde(default)]
    pub out_of_order: bool,
}

impl Requirements {
    /// Requirements with nothing said yet (latency and input must still be set).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the maximum acceptable latency.
    pub fn max_latency(mut self, latency: Duration) -> Self {
        self.max_latency = Some(latency);
        self
    }

    /// The input ends (a file, a snapshot).
    pub fn bounded(mut self) -> Self {
        self.input = Some(Input::Bounded);
        self
    }

    /// The input keeps arriving.
    pub fn unbounded(mut self) -> Self {
        self.input = Some(Input::Unbounded);
        self
    }

    /// Sets whether history must be reprocessed.
    pub fn reprocessing(mut self, yes: bool) -> Self {
        self.reprocessing = yes;
        self
    }

    /// Sets whether the input log can be replayed from the start.
    pub fn replayable_log(mut self, yes: bool) -> Self {
        self.replayable_log = yes;
        self
    }

    /// Sets the complexity budget.
    pub fn complexity(mut self, complexity: Complexity) -> Self {
        self.complexity = complexity;
        self
    }

    /// Sets the cost constraint.
    pub fn cost(mut self, cost: Cost) -> Self {
        self.cost = cost;
        self
    }

    /// Sets whether exactly-once output is needed.
    pub fn exactly_once(mut self, yes: bool) -> Self {
        self.exactly_once = yes;
        self
    }

    /// Sets whether records arrive out of order.
    pub fn out_of_order(mut self, yes: bool) -> Self {
        self.out_of_order = yes;
        self
    }

    /// Applies the decision framework; see [`advise`].
    ///
    /// # Errors
    /// As [`advise`].
    pub fn advise(&self) -> Result<Recommendation, AdviceError> {
        advise(self)
    }
}

impl fmt::Display for Requirements {
    /// One line: `latency 2s, unbounded input, complexity medium, cost moderate,
    /// exactly-once, out of order` (unset answers as `?`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max_latency {
            Some(d) => write!(f, "latency {}", format_duration(d))?,
            None => f.write_str("latency ?")?,
        }
        match self.input {
            Some(i) => write!(f, ", {i} input")?,
            None => f.write_str(", input ?")?,
        }
        if self.reprocessing {
            f.write_str(", reprocessing")?;
        }
        if self.replayable_log {
            f.write_str(", replayable log")?;
        }
        write!(f, ", complexity {}, cost {}", self.complexity, self.cost)?;
        if self.exactly_once {
            f.write_str(", exactly-once")?;
        }
        if self.out_of_order {
            f.write_str(", out of order")?;
        }
        Ok(())
    }
}

/// A processing model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// Bounded runs on a schedule ([`BatchExecutor`]).
    Batch,
    /// Micro-batches on a processing-time trigger ([`MicroBatchExecutor`]).
    MicroBatch {
        /// The suggested trigger interval.
        trigger: Duration,
    },
    /// A continuously running pipeline ([`StreamExecutor`]).
    Streaming,
    /// A batch layer for exact, reprocessable results plus a streaming speed layer
    /// for fresh approximate ones, merged by a serving layer.
    Lambda,
    /// One streaming code path; reprocessing replays the log into a new versioned
    /// output.
    Kappa,
}

impl Model {
    /// The model's name without parameters: `batch`, `micro-batch`, `streaming`,
    /// `lambda` or `kappa`.
    pub fn name(&self) -> &'static str {
        match self {
            Model::Batch => "batch",
            Model::MicroBatch { .. } => "micro-batch",
            Model::Streaming => "streaming",
            Model::Lambda => "lambda",
            Model::Kappa => "kappa",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::MicroBatch { trigger } => {
                write!(
                    f,
                    "micro-batch (trigger every {})",
                    format_duration(*trigger)
                )
            }
            other => f.write_str(other.name()),
        }
    }
}

/// A model that was not chosen, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// The model.
    pub model: Model,
    /// Why it was not recommended (its trade-off for these requirements).
    pub why_not: String,
}

/// How to configure batchstream for the recommended model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorAdvice {
    /// The executor to run the pipeline (for Lambda: the speed layer's; the batch
    /// layer runs under [`BatchExecutor`]).
    pub kind: ExecutorKind,
    /// For [`ExecutorKind::MicroBatch`]: the processing-time trigger interval.
    pub trigger: Option<Duration>,
    /// For scheduled batch runs: how often to start one.
    pub schedule: Option<Duration>,
    /// Whether to set up event time (watermarks, allowed lateness).
    pub event_time: bool,
    /// Which sink guarantee to pick, in words.
    pub sink: &'static str,
}

impl ExecutorAdvice {
    /// An [`Executor`] configured as advised, ready to run a pipeline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use batchstream::ExecutorKind;
    /// use batchstream::advisor::Requirements;
    ///
    /// let advice = Requirements::new().max_latency(Duration::from_secs(30)).unbounded().advise()?;
    /// assert_eq!(advice.executor.executor().kind(), ExecutorKind::Stream);
    /// # Ok::<(), batchstream::advisor::AdviceError>(())
    /// ```
    pub fn executor(&self) -> Executor {
        match self.kind {
            ExecutorKind::Batch => BatchExecutor::new().into(),
            ExecutorKind::Stream => StreamExecutor::new().into(),
            ExecutorKind::MicroBatch => match self.trigger {
                Some(t) => MicroBatchExecutor::new(Trigger::ProcessingTime(t)).into(),
                None => MicroBatchExecutor::new(Trigger::AvailableNow).into(),
            },
        }
    }
}

/// The advisor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommendation {
    /// The recommended model.
    pub model: Model,
    /// Why, one requirement per line.
    pub reasons: Vec<String>,
    /// Every other model, with its trade-off.
    pub alternatives: Vec<Alternative>,
    /// The executor configuration to use.
    pub executor: ExecutorAdvice,
}

impl fmt::Display for Recommendation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recommended model: {}", self.model)?;
        let e = &self.executor;
        write!(f, "executor: {}", e.kind)?;
        if let Some(t) = e.trigger {
            write!(f, ", Trigger::ProcessingTime({})", format_duration(t))?;
        }
        if let Some(s) = e.schedule {
            write!(f, ", scheduled every {}", format_duration(s))?;
        }
        if e.event_time {
            write!(f, ", with event time")?;
        }
        writeln!(f, "; sink: {}", e.sink)?;
        writeln!(f, "reasons:")?;
        for r in &self.reasons {
            writeln!(f, "  - {r}")?;
        }
        writeln!(f, "alternatives:")?;
        for a in &self.alternatives {
            writeln!(f, "  - {}: {}", a.model.name(), a.why_not)?;
        }
        Ok(())
    }
}

/// Requirements that cannot all be met by one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The conflicting requirements, by field name (`max_latency`, `input`, ...).
    pub requirements: Vec<&'static str>,
    /// Why they conflict, and what to relax.
    pub explanation: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conflict: {}",
            self.requirements.join(" + "),
            self.explanation
        )
    }
}

/// Why no recommendation could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdviceError {
    /// Required answers are missing.
    #[error("incomplete requirements: missing {}", .missing.join(", "))]
    Incomplete {
        /// The missing fields.
        missing: Vec<&'static str>,
    },
    /// An answer is out of range or unreadable.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Requirements contradict each other; no model is picked silently.
    #[error("conflicting requirements: {}", .0.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; "))]
    Conflicts(Vec<Conflict>),
}

impl AdviceError {
    /// The conflicts, if that is the error.
    pub fn conflicts(&self) -> &[Conflict] {
        match self {
            AdviceError::Conflicts(c) => c,
            _ => &[],
        }
    }
}

impl From<AdviceError> for crate::Error {
    fn from(e: AdviceError) -> Self {
        crate::Error::Config(e.to_string())
    }
}

/// Applies the decision framework to `req`.
///
/// The rules, in order:
/// 1. A bounded input is processed by **batch** (reprocessing: rerun a run key with
///    `force(true)`), unless the latency budget is under a second, which conflicts
///    with reading a whole input before answering.
/// 2. For an unbounded input, a budget under a minute needs a continuously running
///    pipeline: **streaming**; with reprocessing, **Kappa** when the log is
///    replayable (one code path), else **Lambda** when the complexity budget is high.
///    Conflicts: a low complexity budget together with a tight cost (a long-running
///    service is neither), and reprocessing without a replayable log or a high
///    complexity budget.
/// 3. A budget of minutes or hours: **batch** on a schedule when the complexity
///    budget is low, the cost tight, or history must be reprocessed; else
///    **micro-batch** with a trigger of half the budget (the other half is for the
///    micro-batch itself).
/// 4. A budget of days: **batch**, once a day (or per period) with a run key.
///
/// Exactly-once and out-of-order data shape the configuration (a transactional or
/// idempotent sink; event time with watermarks), not the model.
///
/// ```
/// use std::time::Duration;
/// use batchstream::advisor::{advise, Complexity, Cost, Requirements};
///
/// let req = Requirements::new()
///     .max_latency(Duration::from_millis(200))
///     .unbounded()
///     .complexity(Complexity::Low)
///     .cost(Cost::Tight);
/// let err = advise(&req).unwrap_err();
/// assert_eq!(err.conflicts()[0].requirements, ["max_latency", "complexity", "cost"]);
/// ```
///
/// # Errors
/// [`AdviceError::Incomplete`] without `max_latency` or `input`,
/// [`AdviceError::Invalid`] for a zero latency, [`AdviceError::Conflicts`] listing
/// every set of requirements that cannot be met together.
pub fn advise(req: &Requirements) -> Result<Recommendation, AdviceError> {
    let mut missing = Vec::new();
    if req.max_latency.is_none() {
        missing.push("max_latency");
    }
    if req.input.is_none() {
        missing.push("input");
    }
    let (Some(latency), Some(input)) = (req.max_latency, req.input) else {
        return Err(AdviceError::Incomplete { missing });
    };
    if latency.is_zero() {
        return Err(AdviceError::Invalid {
            field: "max_latency",
            message: "must be more than zero".into(),
        });
    }
    let class = LatencyClass::of(latency);
    let conflicts = conflicts(req, latency, input, class);
    if !conflicts.is_empty() {
        return Err(AdviceError::Conflicts(conflicts));
    }

    let lat = format_duration(latency);
    let mut reasons = Vec::new();
    let model = match input {
        Input::Bounded => {
            reasons.push(
                "the input is bounded: a batch run reads it whole and emits each result once"
                    .to_string(),
            );
            if class <= LatencyClass::Minutes {
                reasons.push(format!(
                    "a run must finish within {lat}: measure a sample with the empirical advisor"
                ));
            }
            if req.reprocessing {
                reasons.push(REPROCESS_BATCH.to_string());
            }
            Model::Batch
        }
        Input::Unbounded if class.needs_streaming() => {
            reasons.push(format!(
                "results are needed within {lat} ({class}): only a continuously running pipeline \
                 answers that fast"
            ));
            if req.reprocessing && req.replayable_log {
                reasons.push(
                    "history must be reprocessed and the log is replayable: replay it into a new \
                     versioned output with the same streaming code (one code path)"
                        .to_string(),
                );
                Model::Kappa
            } else if req.reprocessing {
                reasons.push(
                    "history must be reprocessed but the log cannot be replayed: a batch layer \
                     recomputes history, a speed layer keeps results fresh (the complexity \
                     budget is high)"
                        .to_string(),
                );
                Model::Lambda
            } else {
                Model::Streaming
            }
        }
        Input::Unbounded if class == LatencyClass::Days => {
            reasons.push(format!(
                "a delay of {lat} is acceptable: one batch run per period is the cheapest and \
                 simplest"
            ));
            if req.reprocessing {
                reasons.push(REPROCESS_BATCH.to_string());
            }
            Model::Batch
        }
        Input::Unbounded => {
            reasons.push(format!(
                "a delay of {lat} ({class}) is acceptable: no need for an always-on pipeline"
            ));
            if req.complexity == Complexity::Low {
                reasons.push(
                    "the complexity budget is low: a job that starts, finishes and exits"
                        .to_string(),
                );
            }
            if req.cost == Cost::Tight {
                reasons.push(
                    "the cost is tight: resources only while running, fewest sink writes"
                        .to_string(),
                );
            }
            if req.reprocessing {
                reasons.push(REPROCESS_BATCH.to_string());
            }
            if req.complexity == Complexity::Low || req.cost == Cost::Tight || req.reprocessing {
                reasons.push(format!(
                    "run it every {} over the period's data (a run key per period), or use \
                     MicroBatchExecutor with Trigger::AvailableNow from the scheduler",
                    format_duration(latency / 2)
                ));
                Model::Batch
            } else {
                reasons.push(format!(
                    "the budget allows a long-running service: micro-batches every {} leave \
                     the rest of the {lat} for processing, with one checkpoint per micro-batch",
                    format_duration(latency / 2)
                ));
                Model::MicroBatch {
                    trigger: latency / 2,
                }
            }
        }
    };

    if class.needs_streaming() && input == Input::Unbounded {
        if req.complexity == Complexity::Low {
            reasons.push(
                "trade-off: a long-running pipeline exceeds the low complexity budget \
                 (shutdown handling, monitoring); the latency requirement wins"
                    .to_string(),
            );
        }
        if req.cost == Cost::Tight {
            reasons.push(
                "trade-off: an always-on pipeline strains the tight cost budget; the latency \
                 requirement wins"
                    .to_string(),
            );
        }
    }
    let sink = if req.exactly_once {
        reasons.push(
            "exactly-once: use a transactional sink (two-phase prepare/commit) or an idempotent \
             upsert sink keyed by the result key; checkpoints make the source replay from the \
             last commit"
                .to_string(),
        );
        "transactional or idempotent"
    } else {
        "at-least-once is enough"
    };
    let streaming_like = matches!(model, Model::Streaming | Model::Kappa | Model::Lambda);
    let event_time = req.out_of_order && input == Input::Unbounded;
    if req.out_of_order {
        reasons.push(if input == Input::Bounded {
            "out-of-order data: a batch run sees the whole input, so order within it does not \
             matter; window by event time"
                .to_string()
        } else if streaming_like || matches!(model, Model::MicroBatch { .. }) {
            "out-of-order data: use event time with bounded out-of-orderness and allowed \
             lateness, and a late-data sink"
                .to_string()
        } else {
            "out-of-order data: key each run by event-time period and leave a margin for late \
             records (or rerun the period with `force(true)`)"
                .to_string()
        });
    }

    let executor = ExecutorAdvice {
        kind: match model {
            Model::Batch => ExecutorKind::Batch,
            Model::MicroBatch { .. } => ExecutorKind::MicroBatch,
            Model::Streaming | Model::Lambda | Model::Kappa => ExecutorKind::Stream,
        },
        trigger: match model {
            Model::MicroBatch { trigger } => Some(trigger),
            _ => None,
        },
        schedule: match (model, input) {
            (Model::Batch, Input::Unbounded) => Some(if class == LatencyClass::Days {
                Duration::from_secs(86_400).min(latency)
            } else {
                latency / 2
            }),
            _ => None,
        },
        event_time,
        sink,
    };
    let alternatives = alternatives(req, model, latency, input, class);
    Ok(Recommendation {
        model,
        reasons,
        alternatives,
        executor,
    })
}

const REPROCESS_BATCH: &str = "history must be reprocessed: give each run a run key (a day, \
     a date range) and rerun it with `force(true)` after a fix";

fn conflicts(
    req: &Requirements,
    latency: Duration,
    input: Input,
    class: LatencyClass,
) -> Vec<Conflict> {
    let lat = format_duration(latency);
    let mut out = Vec::new();
    if input == Input::Bounded && class == LatencyClass::SubSecond {
        out.push(Conflict {
            requirements: vec!["max_latency", "input"],
            explanation: format!(
                "a bounded input is read whole before results are final, which cannot promise \
                 {lat}; if records keep arriving the input is unbounded, else allow at least a \
                 second"
            ),
        });
    }
    if input == Input::Unbounded && class.needs_streaming() {
        if req.complexity == Complexity::Low && req.cost == Cost::Tight {
            out.push(Conflict {
                requirements: vec!["max_latency", "complexity", "cost"],
                explanation: format!(
                    "{lat} needs an always-on streaming service, which neither a low complexity \
                     budget nor a tight cost allows; relax the latency to minutes (batch) or \
                     one of the budgets"
                ),
            });
        }
        if req.reprocessing && !req.replayable_log && req.complexity != Complexity::High {
            out.push(Conflict {
                requirements: vec![
                    "max_latency",
                    "reprocessing",
                    "replayable_log",
                    "complexity",
                ],
                explanation: format!(
                    "reprocessing history at {lat} needs either a replayable log (Kappa) or a \
                     high complexity budget for two code paths (Lambda)"
                ),
            });
        }
    }
    out
}

fn alternatives(
    req: &Requirements,
    chosen: Model,
    latency: Duration,
    input: Input,
    class: LatencyClass,
) -> Vec<Alternative> {
    let lat = format_duration(latency);
    let all = [
        Model::Batch,
        Model::MicroBatch {
            trigger: latency / 2,
        },
        Model::Streaming,
        Model::Lambda,
        Model::Kappa,
    ];
    all.into_iter()
        .filter(|m| m.name() != chosen.name())
        .map(|model| {
            let why_not = match model {
                Model::Batch if input == Input::Unbounded && class.needs_streaming() => {
                    format!("results appear only at the end of a run, far later than {lat}")
                }
                Model::Batch => "possible, but a run every period delays results the most and \
                                 the latency budget allows more freshness"
                    .to_string(),
                Model::MicroBatch { .. } if input == Input::Bounded => {
                    "adds triggers and one checkpoint per micro-batch to an input that a single \
                     batch run reads whole"
                        .to_string()
                }
                Model::MicroBatch { .. } if class.needs_streaming() => format!(
                    "a trigger plus a micro-batch is hard to keep within {lat}; streaming emits \
                     after every source batch"
                ),
                Model::MicroBatch { .. } => {
                    if req.complexity == Complexity::Low || req.cost == Cost::Tight {
                        "a long-running service: more cost and operations than a scheduled batch \
                         for the same budget"
                            .to_string()
                    } else if req.reprocessing {
                        "resumes only; reprocessing history needs a new pipeline id and a \
                         replay"
                            .to_string()
                    } else {
                        "would also work, with a checkpoint per micro-batch".to_string()
                    }
                }
                Model::Streaming if input == Input::Bounded => {
                    "always-on machinery (checkpoints every few seconds, many small upserts) for \
                     an input that ends"
                        .to_string()
                }
                Model::Streaming if !class.needs_streaming() => format!(
                    "always on, a checkpoint every few seconds and many small upserts, for \
                     freshness that a {lat} budget does not need"
                ),
                Model::Streaming => "cannot reprocess history without replaying it into a new \
                                     output (Kappa) or a batch layer (Lambda)"
                    .to_string(),
                Model::Lambda if req.reprocessing && class.needs_streaming() => {
                    "two code paths (batch and speed layers) and a serving layer, where one \
                     replayable streaming path suffices"
                        .to_string()
                }
                Model::Lambda => "two code paths (batch and speed layers) and a serving layer: \
                                  more complexity than these requirements need"
                    .to_string(),
                Model::Kappa if !req.replayable_log => {
                    "needs a log that can be replayed from the start".to_string()
                }
                Model::Kappa if !req.reprocessing => {
                    "its replay machinery only pays off when history must be reprocessed"
                        .to_string()
                }
                Model::Kappa => "an always-on streaming job plus replays, where a scheduled \
                                 batch rerun meets the budget"
                    .to_string(),
            };
            Alternative { model, why_not }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_and_name_the_field() {
        assert_eq!("LOW".parse::<Complexity>().unwrap(), Complexity::Low);
        assert_eq!(" flexible ".parse::<Cost>().unwrap(), Cost::Flexible);
        let e = "cheap".parse::<Cost>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid cost: unknown value `cheap`: expected one of `tight`, `moderate`, `flexible`"
        );
    }

    #[test]
    fn requirements_display_on_one_line() {
        let r = Requirements::new()
            .max_latency(Duration::from_secs(2))
            .unbounded()
            .exactly_once(true);
        assert_eq!(
            r.to_string(),
            "latency 2s, unbounded input, complexity medium, cost moderate, exactly-once"
        );
        assert_eq!(
            Requirements::new().to_string(),
            "latency ?, input ?, complexity medium, cost moderate"
        );
    }

    #[test]
    fn incomplete_lists_missing_fields() {
        let e = advise(&Requirements::new()).unwrap_err();
        assert_eq!(
            e,
            AdviceError::Incomplete {
                missing: vec!["max_latency", "input"]
            }
        );
    }
}
