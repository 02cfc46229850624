//! The `batchstream advise` command: a good case, bad input, and conflicts.

mod support;

use std::process::{Command, Output};

use support::TempFile;

fn advise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_batchstream"))
        .arg("advise")
        .args(args)
        .output()
        .expect("run the batchstream binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn fraud_detection_from_flags_is_streaming() {
    let o = advise(&[
        "--latency",
        "5s",
        "--unbounded",
        "--exactly-once",
        "--out-of-order",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("recommended model: streaming\n"), "{out}");
    assert!(out.contains("executor: stream, with event time"), "{out}");
    assert!(out.contains("within 5s"), "{out}");
    assert!(out.contains("transactional"), "{out}");
    for alternative in ["batch", "micro-batch", "lambda", "kappa"] {
        assert!(out.contains(&format!("  - {alternative}: ")), "{out}");
    }
}

#[test]
fn daily_report_from_toml_is_batch_and_flags_override_it() {
    let file = TempFile::new("daily.toml");
    file.write("max_latency = \"1d\"\ninput = \"bounded\"\nreprocessing = true\n");
    let path = file.path().to_str().unwrap();
    let o = advise(&["--config", path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("recommended model: batch\n"), "{out}");
    assert!(out.contains("force(true)"), "{out}");

    // A flag overrides the file: unbounded with a 10m budget and room for a service.
    let o = advise(&[
        "--config",
        path,
        "--latency",
        "10m",
        "--unbounded",
        "--complexity",
        "high",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Reprocessing (from the file) at minutes keeps it batch, every 5m.
    assert!(stdout(&o).contains("scheduled every 5m"), "{}", stdout(&o));
}

#[test]
fn bad_toml_field_exits_2_naming_it() {
    let file = TempFile::new("typo.toml");
    file.write("max_latency = \"5s\"\ninput = \"unbounded\"\nreprocesing = true\n");
    let o = advise(&["--config", file.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unknown field `reprocesing`"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(stdout(&o).is_empty());

    let file = TempFile::new("value.toml");
    file.write("max_latency = \"5 fortnights\"\ninput = \"unbounded\"\n");
    let o = advise(&["--config", file.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("max_latency: invalid duration `5 fortnights`"),
        "{err}"
    );

    let file = TempFile::new("cost.toml");
    file.write("max_latency = \"5s\"\ninput = \"unbounded\"\ncost = \"cheap\"\n");
    let o = advise(&["--config", file.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("cost = \"cheap\""), "{err}");
    assert!(err.contains("unknown variant `cheap`"), "{err}");
}

#[test]
fn bad_flags_and_missing_answers_exit_2() {
    let o = advise(&["--latency", "5x", "--unbounded"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--latency"), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown unit `x`"), "{}", stderr(&o));

    let o = advise(&["--latency", "5s", "--unbounded", "--cost", "cheap"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cost"), "{}", stderr(&o));

    let o = advise(&["--latency", "5s", "--bounded", "--unbounded"]);
    assert_eq!(o.status.code(), Some(2));

    let o = advise(&["--unbounded"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing max_latency"), "{}", stderr(&o));

    let o = advise(&["--config", "/nonexistent/batchstream/req.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/batchstream/req.toml"));
}

#[test]
fn conflicts_exit_nonzero_listing_the_requirements() {
    let o = advise(&[
        "--latency",
        "500ms",
        "--unbounded",
        "--complexity",
        "low",
        "--cost",
        "tight",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).is_empty());
    let err = stderr(&o);
    assert!(err.contains("max_latency + complexity + cost"), "{err}");

    let o = advise(&["--latency", "200ms", "--bounded"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("max_latency + input"), "{}", stderr(&o));
}
