//! The `batchstream` command-line model advisor.
//!
//! ```text
//! batchstream advise --latency 5s --unbounded --exactly-once --out-of-order
//! batchstream advise --config requirements.toml [--latency 10m ...]
//! ```
//!
//! Prints the recommended processing model, the executor to configure, the reasons
//! and the trade-offs of each alternative. Flags override the TOML file. Exit codes:
//! 0 with a recommendation; 2 for invalid flags, an unreadable or invalid TOML file,
//! or incomplete requirements; 3 when the requirements conflict (each conflict is
//! listed with the requirements involved).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use batchstream::advisor::{
    AdviceError, Complexity, Cost, Input, Requirements, advise, parse_duration,
};
use clap::{Parser, Subcommand};

/// Recommends a processing model (batch, micro-batch, streaming, Lambda or Kappa)
/// for a pipeline's requirements.
#[derive(Debug, Parser)]
#[command(name = "batchstream", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recommends a model from requirements given as flags or a TOML file.
    #[command(
        after_help = "Exit codes: 0 a recommendation; 2 invalid flags or TOML, or missing \
                      answers; 3 conflicting requirements."
    )]
    Advise(AdviseArgs),
}

#[derive(Debug, clap::Args)]
struct AdviseArgs {
    /// A TOML file of requirements (fields: max_latency, input, reprocessing,
    /// replayable_log, complexity, cost, exactly_once, out_of_order); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The longest acceptable delay until results are visible: 500ms, 5s, 10m, 2h, 1d.
    #[arg(long, value_name = "DURATION", value_parser = parse_latency)]
    latency: Option<Duration>,
    /// The input ends (a file, a table snapshot, a date range).
    #[arg(long, conflicts_with = "unbounded")]
    bounded: bool,
    /// The input keeps arriving (a log, a queue).
    #[arg(long)]
    unbounded: bool,
    /// History must be reprocessed after fixes.
    #[arg(long)]
    reprocessing: bool,
    /// The input is a log that can be replayed from the start.
    #[arg(long)]
    replayable_log: bool,
    /// The operational complexity budget: low, medium or high.
    #[arg(long, value_name = "LEVEL")]
    complexity: Option<Complexity>,
    /// The cost constraint: tight, moderate or flexible.
    #[arg(long, value_name = "LEVEL")]
    cost: Option<Cost>,
    /// Each record's effect must appear exactly once.
    #[arg(long)]
    exactly_once: bool,
    /// Records arrive out of event-time order.
    #[arg(long)]
    out_of_order: bool,
}

fn parse_latency(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// Exit code for bad input (as clap uses for invalid flags).
const USAGE: u8 = 2;
/// Exit code for conflicting requirements.
const CONFLICT: u8 = 3;

fn main() -> ExitCode {
    let Cli {
        command: Command::Advise(args),
    } = Cli::parse();
    let req = match requirements(&args) {
        Ok(req) => req,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(USAGE);
        }
    };
    match advise(&req) {
        Ok(recommendation) => {
            print!("{recommendation}");
            ExitCode::SUCCESS
        }
        Err(AdviceError::Conflicts(conflicts)) => {
            eprintln!("error: the requirements conflict; relax one of each group:");
            for c in &conflicts {
                eprintln!("  - {}: {}", c.requirements.join(" + "), c.explanation);
            }
            ExitCode::from(CONFLICT)
        }
        Err(e @ AdviceError::Incomplete { .. }) => {
            eprintln!(
                "error: {e} (give --latency and --bounded or --unbounded, or set max_latency \
                 and input in --config)"
            );
            ExitCode::from(USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(USAGE)
        }
    }
}

/// The requirements from the TOML file (if any), overridden by the flags.
fn requirements(args: &AdviseArgs) -> Result<Requirements, String> {
    let mut req = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<Requirements>(&text)
                .map_err(|e| format!("invalid requirements in {}: {e}", path.display()))?
        }
        None => Requirements::new(),
    };
    if let Some(latency) = args.latency {
        req.max_latency = Some(latency);
    }
    if args.bounded {
        req.input = Some(Input::Bounded);
    }
    if args.unbounded {
        req.input = Some(Input::Unbounded);
    }
    if let Some(c) = args.complexity {
        req.complexity = c;
    }
    if let Some(c) = args.cost {
        req.cost = c;
    }
    req.reprocessing |= args.reprocessing;
    req.replayable_log |= args.replayable_log;
    req.exactly_once |= args.exactly_once;
    req.out_of_order |= args.out_of_order;
    Ok(req)
}
