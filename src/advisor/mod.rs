//! The model advisor: which processing model suits a pipeline, and why.
//!
//! Two halves:
//! - **Rules** ([`advise`], [`Requirements`] → [`Recommendation`]): the decision
//!   framework of the guide *Choosing a processing model*
//!   (`docs/choosing-a-model.md`) as code. Latency in seconds → streaming; minutes
//!   or hours → micro-batch, or batch on a schedule when the complexity budget is
//!   low, the cost tight or history must be reprocessed; days → batch; a bounded
//!   input → batch; reprocessing at streaming latency → Kappa (replayable log) or
//!   Lambda (high complexity budget). Contradictory requirements are an
//!   [`AdviceError::Conflicts`] naming the fields, never a silent pick.
//! - **Measurements** ([`EmpiricalAdvisor`] → [`EmpiricalReport`]): run a sample of
//!   the real pipeline under the batch, micro-batch and stream executors, compare
//!   throughput, latency percentiles and peak memory, and move the recommendation
//!   to a faster model when the measured latency exceeds the budget. The report
//!   prints as a table and renders as a self-contained SVG.
//!
//! The `batchstream` binary (feature `cli`) runs the rules from flags or a TOML
//! file: `batchstream advise --latency 5s --unbounded --exactly-once`.
//!
//! ```
//! use std::time::Duration;
//! use batchstream::ExecutorKind;
//! use batchstream::advisor::{Model, Requirements};
//!
//! let daily_report = Requirements::new()
//!     .max_latency(Duration::from_secs(86_400))
//!     .bounded()
//!     .reprocessing(true);
//! let advice = daily_report.advise()?;
//! assert_eq!(advice.model, Model::Batch);
//! assert_eq!(advice.executor.kind, ExecutorKind::Batch);
//! println!("{advice}"); // the model, the executor to use, reasons and alternatives
//! # Ok::<(), batchstream::advisor::AdviceError>(())
//! ```

mod duration;
mod empirical;
mod report;
mod rules;

pub use duration::{DurationError, format_duration, parse_duration};
pub use empirical::{EmpiricalAdvisor, EmpiricalReport, Measurement};
pub use rules::{
    AdviceError, Alternative, Complexity, Conflict, Cost, ExecutorAdvice, Input, LatencyClass,
    Model, Recommendation, Requirements, advise,
};
