//! The model advisor: the decision framework over every combination of answers, the
//! empirical runs, and the SVG report.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use batchstream::ExecutorKind;
use batchstream::Pipeline;
use batchstream::adapters::{CollectSink, IterSource};
use batchstream::advisor::{
    AdviceError, Complexity, Cost, EmpiricalAdvisor, EmpiricalReport, Input, LatencyClass, Model,
    Requirements, advise,
};
use batchstream::testing::ScriptedSource;
use batchstream::transform::{TransformExt, identity};

/// A representative budget per latency class.
const CLASSES: [(LatencyClass, Duration); 5] = [
    (LatencyClass::SubSecond, Duration::from_millis(200)),
    (LatencyClass::Seconds, Duration::from_secs(5)),
    (LatencyClass::Minutes, Duration::from_secs(10 * 60)),
    (LatencyClass::Hours, Duration::from_secs(3 * 3600)),
    (LatencyClass::Days, Duration::from_secs(86_400)),
];

/// What the framework says for one set of answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Model(&'static str),
    /// Conflicts, each as the set of fields it names.
    Conflicts(Vec<BTreeSet<&'static str>>),
}

/// The seed's framework as a decision table: each row is a rule of
/// `docs/choosing-a-model.md` (and the advisor brief), checked in order.
struct Rule {
    name: &'static str,
    applies: fn(&Case) -> bool,
    expect: fn(&Case) -> Expected,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    class: LatencyClass,
    latency: Duration,
    input: Input,
    reprocessing: bool,
    replayable: bool,
    complexity: Complexity,
    cost: Cost,
    exactly_once: bool,
    out_of_order: bool,
}

impl Case {
    fn requirements(&self) -> Requirements {
        let r = Requirements::new()
            .max_latency(self.latency)
            .reprocessing(self.reprocessing)
            .replayable_log(self.replayable)
            .complexity(self.complexity)
            .cost(self.cost)
            .exactly_once(self.exactly_once)
            .out_of_order(self.out_of_order);
        match self.input {
            Input::Bounded => r.bounded(),
            Input::Unbounded => r.unbounded(),
        }
    }
    fn fast(&self) -> bool {
        matches!(self.class, LatencyClass::SubSecond | LatencyClass::Seconds)
    }
}

fn set(fields: &[&'static str]) -> BTreeSet<&'static str> {
    fields.iter().copied().collect()
}

fn streaming_conflicts(c: &Case) -> Vec<BTreeSet<&'static str>> {
    let mut v = Vec::new();
    if c.complexity == Complexity::Low && c.cost == Cost::Tight {
        v.push(set(&["max_latency", "complexity", "cost"]));
    }
    if c.reprocessing && !c.replayable && c.complexity != Complexity::High {
        v.push(set(&[
            "max_latency",
            "reprocessing",
            "replayable_log",
            "complexity",
        ]));
    }
    v
}

const RULES: &[Rule] = &[
    Rule {
        name: "bounded input with a sub-second budget conflicts",
        applies: |c| c.input == Input::Bounded && c.class == LatencyClass::SubSecond,
        expect: |_| Expected::Conflicts(vec![set(&["max_latency", "input"])]),
    },
    Rule {
        name: "bounded input -> batch",
        applies: |c| c.input == Input::Bounded,
        expect: |_| Expected::Model("batch"),
    },
    Rule {
        name: "seconds with low complexity and tight cost, or reprocessing without a \
               replayable log or a high complexity budget, conflict",
        applies: |c| c.fast() && !streaming_conflicts(c).is_empty(),
        expect: |c| Expected::Conflicts(streaming_conflicts(c)),
    },
    Rule {
        name: "seconds + reprocessing + replayable log -> kappa",
        applies: |c| c.fast() && c.reprocessing && c.replayable,
        expect: |_| Expected::Model("kappa"),
    },
    Rule {
        name: "seconds + reprocessing + high complexity budget -> lambda",
        applies: |c| c.fast() && c.reprocessing,
        expect: |_| Expected::Model("lambda"),
    },
    Rule {
        name: "seconds -> streaming",
        applies: |c| c.fast(),
        expect: |_| Expected::Model("streaming"),
    },
    Rule {
        name: "days -> batch",
        applies: |c| c.class == LatencyClass::Days,
        expect: |_| Expected::Model("batch"),
    },
    Rule {
        name: "minutes/hours with low complexity, tight cost or reprocessing -> batch",
        applies: |c| c.complexity == Complexity::Low || c.cost == Cost::Tight || c.reprocessing,
        expect: |_| Expected::Model("batch"),
    },
    Rule {
        name: "minutes/hours otherwise -> micro-batch",
        applies: |_| true,
        expect: |_| Expected::Model("micro-batch"),
    },
];

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (class, latency) in CLASSES {
        for input in [Input::Bounded, Input::Unbounded] {
            for reprocessing in [false, true] {
                for replayable in [false, true] {
                    for complexity in [Complexity::Low, Complexity::Medium, Complexity::High] {
                        for cost in [Cost::Tight, Cost::Moderate, Cost::Flexible] {
                            for exactly_once in [false, true] {
                                for out_of_order in [false, true] {
                                    cases.push(Case {
                                        class,
                                        latency,
                                        input,
                                        reprocessing,
                                        replayable,
                                        complexity,
                                        cost,
                                        exactly_once,
                                        out_of_order,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    cases
}

#[test]
fn every_combination_follows_the_framework() {
    let cases = all_cases();
    assert_eq!(cases.len(), 5 * 2 * 2 * 2 * 3 * 3 * 2 * 2);
    let mut rules_hit = vec![0usize; RULES.len()];
    for case in &cases {
        let i = RULES
            .iter()
            .position(|r| (r.applies)(case))
            .expect("the last rule applies to everything");
        rules_hit[i] += 1;
        let expected = (RULES[i].expect)(case);
        let got = advise(&case.requirements());
        match (&expected, &got) {
            (Expected::Model(name), Ok(rec)) => {
                assert_eq!(rec.model.name(), *name, "{case:?} ({})", RULES[i].name);
                check_recommendation(case, rec);
            }
            (Expected::Conflicts(sets), Err(AdviceError::Conflicts(conflicts))) => {
                let got: Vec<BTreeSet<&str>> = conflicts
                    .iter()
                    .map(|c| c.requirements.iter().copied().collect())
                    .collect();
                assert_eq!(&got, sets, "{case:?} ({})", RULES[i].name);
                let message = got_message(&got_err(case));
                for field in sets.iter().flatten() {
                    assert!(message.contains(field), "{message} should name {field}");
                }
            }
            _ => panic!(
                "{case:?}: expected {expected:?} ({}), got {got:?}",
                RULES[i].name
            ),
        }
    }
    for (rule, hits) in RULES.iter().zip(&rules_hit) {
        assert!(*hits > 0, "no combination exercised rule `{}`", rule.name);
    }
}

fn got_err(case: &Case) -> AdviceError {
    advise(&case.requirements()).unwrap_err()
}

fn got_message(e: &AdviceError) -> String {
    e.to_string()
}

/// What every recommendation must carry, whatever the model.
fn check_recommendation(case: &Case, rec: &batchstream::advisor::Recommendation) {
    assert!(!rec.reasons.is_empty(), "{case:?}: no reasons");
    // Every other model appears once, with a non-empty trade-off.
    let mut names: Vec<&str> = rec.alternatives.iter().map(|a| a.model.name()).collect();
    names.push(rec.model.name());
    names.sort_unstable();
    assert_eq!(
        names,
        ["batch", "kappa", "lambda", "micro-batch", "streaming"],
        "{case:?}"
    );
    assert!(rec.alternatives.iter().all(|a| !a.why_not.is_empty()));
    // The executor matches the model.
    let kind = match rec.model {
        Model::Batch => ExecutorKind::Batch,
        Model::MicroBatch { trigger } => {
            assert!(trigger < case.latency && !trigger.is_zero(), "{case:?}");
            assert_eq!(rec.executor.trigger, Some(trigger));
            ExecutorKind::MicroBatch
        }
        Model::Streaming | Model::Lambda | Model::Kappa => ExecutorKind::Stream,
    };
    assert_eq!(rec.executor.kind, kind, "{case:?}");
    assert_eq!(rec.executor.executor().kind(), kind);
    if let Some(schedule) = rec.executor.schedule {
        assert!(schedule <= case.latency, "{case:?}: schedule {schedule:?}");
    }
    let text = rec.to_string();
    let reasons = rec.reasons.join("\n");
    assert_eq!(
        reasons.contains("reprocessed"),
        case.reprocessing,
        "{case:?}: {reasons}"
    );
    if case.exactly_once {
        assert!(text.contains("transactional"), "{case:?}: {text}");
    } else {
        assert!(!text.contains("exactly-once"), "{case:?}: {text}");
    }
    assert_eq!(text.contains("out-of-order"), case.out_of_order, "{case:?}");
    assert_eq!(
        rec.executor.event_time,
        case.out_of_order && case.input == Input::Unbounded,
        "{case:?}"
    );
}

#[test]
fn latency_class_boundaries() {
    let of = |ms: u64| LatencyClass::of(Duration::from_millis(ms));
    assert_eq!(of(999), LatencyClass::SubSecond);
    assert_eq!(of(1_000), LatencyClass::Seconds);
    assert_eq!(of(59_999), LatencyClass::Seconds);
    assert_eq!(of(60_000), LatencyClass::Minutes);
    assert_eq!(of(3_599_999), LatencyClass::Minutes);
    assert_eq!(of(3_600_000), LatencyClass::Hours);
    assert_eq!(of(86_399_999), LatencyClass::Hours);
    assert_eq!(of(86_400_000), LatencyClass::Days);
}

#[test]
fn the_seeds_two_cases() {
    let fraud = Requirements::new()
        .max_latency(Duration::from_secs(2))
        .unbounded()
        .exactly_once(true)
        .out_of_order(true);
    let rec = fraud.advise().unwrap();
    assert_eq!(rec.model, Model::Streaming);
    assert!(rec.executor.event_time);

    let daily = Requirements::new()
        .max_latency(Duration::from_secs(86_400))
        .bounded()
        .reprocessing(true);
    let rec = daily.advise().unwrap();
    assert_eq!(rec.model, Model::Batch);
    assert!(rec.to_string().contains("force(true)"), "{rec}");
}

#[test]
fn incomplete_and_invalid_requirements_are_typed_errors() {
    let e = advise(&Requirements::new().bounded()).unwrap_err();
    assert_eq!(
        e,
        AdviceError::Incomplete {
            missing: vec!["max_latency"]
        }
    );
    let e = advise(&Requirements::new().max_latency(Duration::from_secs(1))).unwrap_err();
    assert_eq!(
        e,
        AdviceError::Incomplete {
            missing: vec!["input"]
        }
    );
    let e = advise(&Requirements::new().max_latency(Duration::ZERO).unbounded()).unwrap_err();
    assert!(
        matches!(
            e,
            AdviceError::Invalid {
                field: "max_latency",
                ..
            }
        ),
        "{e:?}"
    );
    // Into the crate error, as a configuration error naming the field.
    let e: batchstream::Error = e.into();
    assert_eq!(e.kind(), batchstream::ErrorKind::Config);
    assert!(e.to_string().contains("max_latency"), "{e}");
}

#[test]
fn requirements_load_with_serde_and_reject_unknown_fields() {
    let req: Requirements = serde_json::from_str(
        r#"{"max_latency": "10m", "input": "unbounded", "complexity": "high", "cost": "flexible"}"#,
    )
    .unwrap();
    assert_eq!(req.max_latency, Some(Duration::from_secs(600)));
    assert_eq!(req.input, Some(Input::Unbounded));
    assert_eq!(
        req.advise().unwrap().model,
        Model::MicroBatch {
            trigger: Duration::from_secs(300)
        }
    );
    // Round trip.
    let back: Requirements = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
    assert_eq!(back, req);

    let e = serde_json::from_str::<Requirements>(r#"{"latency": "5s"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `latency`"), "{e}");
    let e = serde_json::from_str::<Requirements>(r#"{"max_latency": "5 parsecs"}"#).unwrap_err();
    assert!(e.to_string().contains("max_latency"), "{e}");
    let e = serde_json::from_str::<Requirements>(r#"{"cost": "cheap"}"#).unwrap_err();
    assert!(e.to_string().contains("cheap"), "{e}");
}

// ---- empirical advisor ----

fn sample_pipeline(
    id: &str,
) -> Pipeline<
    IterSource<std::ops::Range<u64>>,
    impl batchstream::Transform<In = u64, Out = u64> + use<>,
    CollectSink<u64>,
> {
    let (sink, _out) = CollectSink::new();
    Pipeline::new(
        id,
        IterSource::new(0..5_000u64),
        identity::<u64>().filter(|x| x % 3 != 0).map(|x| x * 2),
        sink,
    )
}

#[tokio::test]
async fn measures_every_executor_over_the_same_sample() {
    let req = Requirements::new()
        .max_latency(Duration::from_secs(3600))
        .bounded();
    let report = EmpiricalAdvisor::new(req)
        .run(|| sample_pipeline("sample"))
        .await
        .unwrap();
    let kinds: Vec<_> = report.measurements.iter().map(|m| m.executor).collect();
    assert_eq!(
        kinds,
        [
            ExecutorKind::Batch,
            ExecutorKind::MicroBatch,
            ExecutorKind::Stream
        ]
    );
    for m in &report.measurements {
        assert_eq!(m.records, 5_000, "{:?}", m.executor);
        assert_eq!(m.report.executor, m.executor);
        assert_eq!(m.report.records_written, 3_333);
        let expected = m.records as f64 / m.elapsed.as_secs_f64().max(1e-6);
        assert!((m.throughput - expected).abs() <= expected * 1e-9);
        assert!(m.p50 <= m.p99);
        if cfg!(target_os = "linux") {
            assert!(m.peak_memory.is_some_and(|b| b > 0));
        }
    }
    // Batch's result latency is its whole run (a bounded input has no schedule);
    // stream's is its p99.
    let batch = report.measurement(ExecutorKind::Batch).unwrap();
    assert_eq!(batch.result_latency, batch.elapsed);
    let stream = report.measurement(ExecutorKind::Stream).unwrap();
    assert_eq!(stream.result_latency, stream.p99);
    // The rules' answer (batch) stands when it is measured within the budget.
    assert_eq!(report.rule_based.model, Model::Batch);
    if batch.result_latency <= report.budget {
        assert_eq!(report.model, Model::Batch);
        assert_eq!(report.executor, ExecutorKind::Batch);
    }
    let table = report.table();
    for kind in ["batch", "micro-batch", "stream", "budget: 1h"] {
        assert!(table.contains(kind), "{table}");
    }
}

#[tokio::test]
async fn micro_batch_over_budget_moves_to_streaming() {
    // Minutes, medium complexity, moderate cost: the rules say micro-batch. A trigger
    // longer than the budget puts micro-batch's result latency over it, so the
    // measured recommendation moves to streaming.
    let budget = Duration::from_secs(600);
    let req = Requirements::new().max_latency(budget).unbounded();
    let report = EmpiricalAdvisor::new(req)
        .micro_batch_trigger(budget * 2)
        .measure_memory(false)
        .run(|| sample_pipeline("late"))
        .await
        .unwrap();
    assert!(matches!(report.rule_based.model, Model::MicroBatch { .. }));
    let micro = report.measurement(ExecutorKind::MicroBatch).unwrap();
    assert!(micro.result_latency > budget);
    let stream = report.measurement(ExecutorKind::Stream).unwrap();
    assert!(micro.peak_memory.is_none());
    if stream.result_latency <= budget {
        assert_eq!(report.model, Model::Streaming);
        assert_eq!(report.executor, ExecutorKind::Stream);
    }
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("micro-batch's result latency") && r.contains("exceeds")),
        "{:?}",
        report.reasons
    );
}

#[tokio::test]
async fn an_unbounded_sample_is_not_measured_by_batch() {
    let req = Requirements::new()
        .max_latency(Duration::from_secs(86_400))
        .unbounded();
    let report = EmpiricalAdvisor::new(req)
        .measure_memory(false)
        .run(|| {
            let (sink, _out) = CollectSink::new();
            let source = ScriptedSource::from_records((0..100u32).collect()).unbounded();
            Pipeline::new("tail", source, identity::<u32>(), sink)
        })
        .await
        .unwrap();
    assert_eq!(report.not_measured.len(), 1);
    assert_eq!(report.not_measured[0].0, ExecutorKind::Batch);
    assert!(report.not_measured[0].1.contains("unbounded"));
    assert_eq!(report.measurements.len(), 2);
    // The rules said batch; it could not be measured, so their answer stands.
    assert_eq!(report.model, Model::Batch);
    assert!(report.table().contains("not measured"));
}

#[tokio::test]
async fn conflicting_requirements_fail_before_running() {
    let req = Requirements::new()
        .max_latency(Duration::from_millis(100))
        .bounded();
    let e = EmpiricalAdvisor::new(req)
        .run(|| sample_pipeline("x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_latency + input"), "{e}");
}

// ---- the SVG report ----

/// A small XML well-formedness check: tags balance, attributes are quoted, and no
/// raw `<` or `&` appears in text.
fn assert_well_formed(svg: &str) {
    let body = svg
        .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
        .expect("xml declaration");
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "`<` inside tag {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
            assert_eq!(top, name, "mismatched close tag");
        } else {
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name = tag.split_whitespace().next().expect("tag name").to_string();
            check_attributes(tag[name.len()..].trim());
            if stack.is_empty() {
                roots += 1;
            }
            if !self_closing {
                stack.push(name);
            }
        }
        rest = &rest[close + 1..];
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert_eq!(roots, 1, "one root element");
}

fn check_text(text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        let after = &rest[i + 1..];
        let end = after.find(';').expect("entity ends with ;");
        assert!(
            ["amp", "lt", "gt", "quot", "apos"].contains(&&after[..end]),
            "unknown entity &{};",
            &after[..end]
        );
        rest = &after[end + 1..];
    }
}

fn check_attributes(mut attrs: &str) {
    while !attrs.is_empty() {
        let eq = attrs
            .find('=')
            .unwrap_or_else(|| panic!("attribute without value: {attrs}"));
        let after = &attrs[eq + 1..];
        assert!(after.starts_with('"'), "unquoted attribute: {attrs}");
        let end = after[1..].find('"').expect("closing quote") + 1;
        check_text(&after[1..end]);
        attrs = after[end + 1..].trim_start();
    }
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// One `<rect class="bar" ...>` of the SVG.
#[derive(Debug, Clone)]
struct SvgBar {
    executor: String,
    metric: String,
    value: f64,
    y: f64,
    height: f64,
}

fn bars(svg: &str) -> Vec<SvgBar> {
    svg.split("<rect ")
        .skip(1)
        .filter(|t| t.starts_with("class=\"bar\""))
        .map(|t| {
            let t = format!(" {}", &t[..t.find('>').unwrap()]);
            let num = |name: &str| -> f64 { attr(&t, name).unwrap().parse().unwrap() };
            SvgBar {
                executor: attr(&t, "data-executor").unwrap().to_string(),
                metric: attr(&t, "data-metric").unwrap().to_string(),
                value: num("data-value"),
                y: num("y"),
                height: num("height"),
            }
        })
        .collect()
}

/// Checks that heights are `a + k * f(value)` for one `k > 0` across `chart`
/// (linear charts: `f` is the identity and `a` is 0; log charts: `f` is `log10`),
/// and returns `(a, k)`.
fn check_scale(chart: &[&SvgBar], f: fn(f64) -> f64, through_zero: bool) -> (f64, f64) {
    let positive: Vec<_> = chart.iter().filter(|b| b.value > 0.0).collect();
    let lo = positive
        .iter()
        .min_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    let hi = positive
        .iter()
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    let k = if through_zero || f(hi.value) == f(lo.value) {
        hi.height / f(hi.value)
    } else {
        (hi.height - lo.height) / (f(hi.value) - f(lo.value))
    };
    let a = hi.height - k * f(hi.value);
    assert!(k > 0.0 && k.is_finite(), "scale {k}");
    if through_zero {
        assert!(a.abs() < 0.01);
    }
    for b in &positive {
        assert!(
            (b.height - (a + k * f(b.value))).abs() < 0.01,
            "{} {}: value {} height {} (a {a}, k {k})",
            b.executor,
            b.metric,
            b.value,
            b.height
        );
    }
    (a, k)
}

async fn sample_report(id: &str, budget: Duration) -> EmpiricalReport {
    let req = Requirements::new().max_latency(budget).unbounded();
    EmpiricalAdvisor::new(req)
        .run(|| sample_pipeline(id))
        .await
        .unwrap()
}

#[tokio::test]
async fn svg_report_is_well_formed_with_proportional_bars() {
    let report = sample_report("orders <daily> & \"more\"", Duration::from_secs(600)).await;
    let svg = report.svg();
    assert_well_formed(&svg);
    assert!(svg.contains("orders &lt;daily&gt; &amp; &quot;more&quot;"));
    assert!(!svg.contains("<script"));
    assert!(!svg.contains("href"));

    let bars = bars(&svg);
    for metric in ["throughput", "p50", "p99", "result latency"] {
        let executors: BTreeSet<&str> = bars
            .iter()
            .filter(|b| b.metric == metric)
            .map(|b| b.executor.as_str())
            .collect();
        assert_eq!(
            executors,
            set(&["batch", "micro-batch", "stream"]),
            "{metric}"
        );
    }
    let chart = |metrics: &[&str]| -> Vec<&SvgBar> {
        bars.iter()
            .filter(|b| metrics.contains(&b.metric.as_str()))
            .collect()
    };
    // Throughput and memory: height proportional to the value. Latency, spanning
    // microseconds to minutes: height proportional to its logarithm.
    check_scale(&chart(&["throughput"]), |v| v, true);
    if cfg!(target_os = "linux") {
        check_scale(&chart(&["peak memory"]), |v| v, true);
    }
    check_scale(&chart(&["p50", "p99", "result latency"]), f64::log10, false);
    // All bars of a chart stand on one baseline.
    for b in &bars {
        assert!((b.y + b.height - (bars[0].y + bars[0].height)).abs() < 0.01);
    }
    // The measured values are what the bars say.
    for m in &report.measurements {
        let find = |metric: &str| {
            bars.iter()
                .find(|b| b.executor == m.executor.to_string() && b.metric == metric)
                .unwrap()
        };
        assert!((find("throughput").value - m.throughput).abs() <= m.throughput * 1e-9);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        assert!((find("result latency").value - us(m.result_latency)).abs() < 1e-3);
        assert!((find("p99").value - us(m.p99)).abs() < 1e-3);
        assert!((find("p50").value - us(m.p50)).abs() < 1e-3);
    }
    // The budget and the recommendation are in the picture.
    assert!(svg.contains("budget 10m"), "budget label");
    assert!(svg.contains("Recommendation: "));
    assert!(
        svg.contains(
            &report.reasons[0]
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ")
        )
    );
}

#[tokio::test]
async fn budget_line_sits_at_its_value_on_the_latency_scale() {
    let report = sample_report("line", Duration::from_secs(600)).await;
    let svg = report.svg();
    let line = svg
        .split("<line ")
        .find(|t| t.starts_with("class=\"budget\""))
        .expect("budget line");
    let line = format!(" {}", &line[..line.find('>').unwrap()]);
    let value: f64 = attr(&line, "data-value").unwrap().parse().unwrap();
    assert_eq!(value, 600e6);
    let y: f64 = attr(&line, "y1").unwrap().parse().unwrap();
    let bars = bars(&svg);
    let latency: Vec<&SvgBar> = bars
        .iter()
        .filter(|b| ["p50", "p99", "result latency"].contains(&b.metric.as_str()))
        .collect();
    let (a, k) = check_scale(&latency, f64::log10, false);
    let base = latency[0].y + latency[0].height;
    assert!(
        (base - y - (a + k * value.log10())).abs() < 0.01,
        "line at {y}, base {base}"
    );
    // Micro-batch waits for its 5m trigger: its result bar is below the 10m line,
    // and above every p99 bar.
    let micro = latency
        .iter()
        .find(|b| b.executor == "micro-batch" && b.metric == "result latency")
        .unwrap();
    assert!(micro.y > y);
    assert!(
        latency
            .iter()
            .filter(|b| b.metric == "p99")
            .all(|b| b.y > micro.y)
    );
}

#[tokio::test]
async fn write_svg_creates_the_file() {
    let report = sample_report("file", Duration::from_secs(600)).await;
    let dir = support::TempFile::new("advisor-report");
    let path = dir.path().join("nested").join("report.svg");
    report.write_svg(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, report.svg());
    std::fs::remove_dir_all(dir.path()).unwrap();
}
