//! Event-time windows against a brute-force reference.
//!
//! The operator is driven the way the executors drive it: for each record in arrival
//! order, the watermark `max(event time of the records before it) - D` is sent first if
//! it advanced, then the record; flushes happen at random points (epoch ends); the input
//! ends with the `MAX_UTC` watermark and a flush.

use std::collections::{BTreeMap, BTreeSet};

use batchstream::transform::{Aggregator, Transform, TransformExt, VecEmitter, identity};
use batchstream::window::{OutputMode, Window, WindowAggregate, WindowResult, Windows};
use batchstream::{DeadLetter, RecordErrorKind};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Ev {
    id: u32,
    key: u8,
    /// Event time in seconds.
    t: i64,
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(secs)
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

/// Collects the ids of a window's records: exact membership, and `merge` is exercised
/// by sessions.
#[derive(Debug, Clone, Copy)]
struct Ids;

impl Aggregator<Ev> for Ids {
    type Acc = Vec<u32>;
    type Output = Vec<u32>;
    fn create(&self) -> Vec<u32> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<u32>, e: Ev) {
        acc.push(e.id);
    }
    fn merge(&self, acc: &mut Vec<u32>, other: Vec<u32>) {
        acc.extend(other);
    }
    fn finish(&self, acc: &Vec<u32>) -> Vec<u32> {
        let mut ids = acc.clone();
        ids.sort_unstable();
        ids
    }
}

#[derive(Debug, Clone, Copy)]
enum Assign {
    Tumbling(i64),
    Sliding(i64, i64),
    Session(i64),
}

impl Assign {
    fn windows(self) -> Windows {
        match self {
            Assign::Tumbling(size) => Windows::tumbling(secs(size)),
            Assign::Sliding(size, slide) => Windows::sliding(secs(size), secs(slide)),
            Assign::Session(gap) => Windows::session(secs(gap)),
        }
    }
}

type Op = WindowAggregate<u8, Ev, Ids, fn(&Ev) -> DateTime<Utc>>;

fn ts(e: &Ev) -> DateTime<Utc> {
    at(e.t)
}

fn make(assign: Assign, mode: OutputMode, lateness: i64) -> Op {
    WindowAggregate::new(assign.windows(), ts as fn(&Ev) -> DateTime<Utc>, Ids)
        .allowed_lateness(secs(lateness))
        .output_mode(mode)
}

type Key = (u8, i64, i64);
type Row = WindowResult<u8, Vec<u32>>;
type Table = BTreeMap<Key, Vec<u32>>;

fn key_of(r: &Row) -> Key {
    (r.key, r.window.start.timestamp(), r.window.end.timestamp())
}

// ---------------------------------------------------------------- reference

/// The watermark before each record: max event time of the records before it - `d`.
fn watermarks_before(events: &[Ev], d: i64) -> Vec<Option<i64>> {
    let mut max: Option<i64> = None;
    events
        .iter()
        .map(|e| {
            let wm = max.map(|m| m - d);
            max = Some(max.map_or(e.t, |m| m.max(e.t)));
            wm
        })
        .collect()
}

/// Every `[start, end)` of `size` starting at a multiple of `slide` that contains `t`,
/// by trying every candidate.
fn fixed_windows(t: i64, size: i64, slide: i64) -> Vec<(i64, i64)> {
    let lo = (t - size).div_euclid(slide) - 1;
    let hi = t.div_euclid(slide) + 1;
    (lo..=hi)
        .map(|k| (k * slide, k * slide + size))
        .filter(|(s, e)| *s <= t && t < *e)
        .collect()
}

/// Sessions of one key's records: sort, chain records at most `gap` apart.
fn sessions_of(mut events: Vec<Ev>, gap: i64) -> Vec<((i64, i64), Vec<u32>)> {
    events.sort_by_key(|e| e.t);
    let mut out: Vec<((i64, i64), Vec<u32>)> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(((_, end), ids)) if e.t <= *end => {
                *end = (*end).max(e.t + gap);
                ids.push(e.id);
            }
            _ => out.push(((e.t, e.t + gap), vec![e.id])),
        }
    }
    for (_, ids) in &mut out {
        ids.sort_unstable();
    }
    out
}

fn all_sessions(events: &[Ev], gap: i64) -> Table {
    let mut by_key: BTreeMap<u8, Vec<Ev>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key).or_default().push(*e);
    }
    let mut table = Table::new();
    for (key, evs) in by_key {
        for ((s, e), ids) in sessions_of(evs, gap) {
            table.insert((key, s, e), ids);
        }
    }
    table
}

/// The expected final windows and the ids of the late records.
fn reference(assign: Assign, lateness: i64, d: i64, events: &[Ev]) -> (Table, Vec<u32>) {
    let wms = watermarks_before(events, d);
    let mut late = Vec::new();
    match assign {
        Assign::Tumbling(size) | Assign::Sliding(size, _) => {
            let slide = match assign {
                Assign::Sliding(_, slide) => slide,
                _ => size,
            };
            let mut table = Table::new();
            for (e, wm) in events.iter().zip(&wms) {
                // A window takes the record iff it is open: end + L > watermark.
                let open: Vec<_> = fixed_windows(e.t, size, slide)
                    .into_iter()
                    .filter(|(_, end)| wm.is_none_or(|wm| end + lateness > wm))
                    .collect();
                if open.is_empty() {
                    late.push(e.id);
                }
                for (s, end) in open {
                    table.entry((e.key, s, end)).or_default().push(e.id);
                }
            }
            for ids in table.values_mut() {
                ids.sort_unstable();
            }
            (table, late)
        }
        Assign::Session(gap) => {
            // A record is late iff it is more than L behind the watermark and not inside
            // a still-open session (end + L >= watermark) of the records accepted so far.
            let mut accepted: Vec<Ev> = Vec::new();
            for (e, wm) in events.iter().zip(&wms) {
                let ok = match wm {
                    None => true,
                    Some(wm) if e.t + lateness >= *wm => true,
                    Some(wm) => {
                        let mine: Vec<Ev> = accepted
                            .iter()
                            .filter(|a| a.key == e.key)
                            .copied()
                            .collect();
                        sessions_of(mine, gap)
                            .iter()
                            .any(|((s, end), _)| end + lateness >= *wm && *s <= e.t && e.t <= *end)
                    }
                };
                if ok {
                    accepted.push(*e);
                } else {
                    late.push(e.id);
                }
            }
            (all_sessions(&accepted, gap), late)
        }
    }
}

// ---------------------------------------------------------------- driver

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Process,
    Watermark,
    Flush,
}

/// Everything a run produced, call by call.
struct Run {
    calls: Vec<(Call, Vec<Row>)>,
    late: Vec<DeadLetter>,
    open_at_end: usize,
    closed_results: usize,
}

impl Run {
    fn late_ids(&self) -> Vec<u32> {
        self.late
            .iter()
            .map(|dl| {
                let ev: Ev = serde_json::from_value(dl.record.clone().expect("record")).unwrap();
                ev.id
            })
            .collect()
    }

    fn emissions(&self) -> impl Iterator<Item = &Row> {
        self.calls.iter().flat_map(|(_, rows)| rows)
    }

    /// Last value per (key, window), over all emissions in order.
    fn last_values(&self) -> Table {
        self.emissions()
            .map(|r| (key_of(r), r.value.clone()))
            .collect()
    }

    /// The final result table as a consumer of `mode` reads it.
    fn final_table(&self, assign: Assign, mode: OutputMode) -> Table {
        match (mode, assign) {
            // Complete mode: the last flush holds the whole table.
            (OutputMode::Complete, _) => {
                let (call, rows) = self.calls.last().expect("a final flush");
                assert_eq!(*call, Call::Flush);
                let table: Table = rows.iter().map(|r| (key_of(r), r.value.clone())).collect();
                assert_eq!(
                    table.len(),
                    rows.len(),
                    "a complete table has no duplicates"
                );
                table
            }
            // Update mode, sessions: a row is superseded by a later row of the same key
            // whose window contains it (the session grew).
            (OutputMode::Update, Assign::Session(_)) => {
                let all = self.last_values();
                all.iter()
                    .filter(|((k, s, e), _)| {
                        !all.keys()
                            .any(|(k2, s2, e2)| k2 == k && s2 <= s && e <= e2 && (s2, e2) != (s, e))
                    })
                    .map(|(k, v)| (*k, v.clone()))
                    .collect()
            }
            _ => self.last_values(),
        }
    }
}

struct Plan<'a> {
    assign: Assign,
    mode: OutputMode,
    lateness: i64,
    d: i64,
    events: &'a [Ev],
    flush_after: &'a [bool],
    snapshot_after: Option<usize>,
}

fn run(p: &Plan<'_>) -> Run {
    let mut op = make(p.assign, p.mode, p.lateness);
    let mut calls = Vec::new();
    let mut late = Vec::new();
    let mut record = |call: Call, out: VecEmitter<Row>| {
        late.extend(out.dead_letters);
        calls.push((call, out.records));
    };
    let mut max: Option<i64> = None;
    let mut wm: Option<i64> = None;
    for (i, e) in p.events.iter().enumerate() {
        if let Some(m) = max {
            if wm.is_none_or(|w| m - p.d > w) {
                wm = Some(m - p.d);
                let mut out = VecEmitter::new();
                op.on_watermark(at(m - p.d), &mut out);
                record(Call::Watermark, out);
            }
        }
        let mut out = VecEmitter::new();
        op.process((e.key, *e), &mut out);
        assert!(out.records.is_empty(), "process emits nothing");
        record(Call::Process, out);
        max = Some(max.map_or(e.t, |m| m.max(e.t)));
        if p.flush_after[i] {
            let mut out = VecEmitter::new();
            op.flush(&mut out);
            record(Call::Flush, out);
        }
        if p.snapshot_after == Some(i) {
            let text = serde_json::to_string(&op.snapshot().unwrap()).unwrap();
            op = make(p.assign, p.mode, p.lateness);
            op.restore(serde_json::from_str(&text).unwrap()).unwrap();
        }
    }
    let mut out = VecEmitter::new();
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    record(Call::Watermark, out);
    let mut out = VecEmitter::new();
    op.flush(&mut out);
    record(Call::Flush, out);
    Run {
        calls,
        late,
        open_at_end: op.open_windows(),
        closed_results: op.closed_results(),
    }
}

/// Checks one run against the reference; returns it for further checks.
fn check(p: &Plan<'_>) -> Result<Run, TestCaseError> {
    let (expected, expected_late) = reference(p.assign, p.lateness, p.d, p.events);
    let r = run(p);
    let ctx = format!("{:?} {:?} L={} D={}", p.assign, p.mode, p.lateness, p.d);
    prop_assert_eq!(r.late_ids(), expected_late, "late set, {}", ctx);
    for dl in &r.late {
        prop_assert_eq!(dl.kind(), RecordErrorKind::Late);
        prop_assert_eq!(&dl.error.stage, "window");
    }
    prop_assert_eq!(
        r.final_table(p.assign, p.mode),
        expected.clone(),
        "final windows, {}",
        ctx
    );
    // Memory: nothing is held after the end of input but complete mode's table.
    prop_assert_eq!(r.open_at_end, 0, "open windows after the end, {}", ctx);
    let kept = if p.mode == OutputMode::Complete {
        expected.len()
    } else {
        0
    };
    prop_assert_eq!(r.closed_results, kept, "closed results kept, {}", ctx);
    match p.mode {
        OutputMode::Append => {
            // Each (key, window) exactly once, final, and only from watermarks.
            let mut seen = BTreeSet::new();
            for (call, rows) in &r.calls {
                for row in rows {
                    prop_assert_eq!(*call, Call::Watermark);
                    prop_assert!(
                        seen.insert(key_of(row)),
                        "emitted twice: {:?}, {}",
                        row,
                        ctx
                    );
                }
            }
        }
        OutputMode::Update => {
            // A window is emitted again only after it changed (Ids grows with every record).
            let mut last: Table = Table::new();
            for row in r.emissions() {
                if let Some(prev) = last.insert(key_of(row), row.value.clone()) {
                    prop_assert!(
                        prev.len() < row.value.len(),
                        "re-emitted unchanged: {:?}, {}",
                        row,
                        ctx
                    );
                }
            }
            if !matches!(p.assign, Assign::Session(_)) {
                prop_assert_eq!(r.last_values(), expected, "{}", ctx);
            }
        }
        OutputMode::Complete => {}
    }
    Ok(r)
}

// ---------------------------------------------------------------- strategies

const MODES: [OutputMode; 3] = [OutputMode::Append, OutputMode::Update, OutputMode::Complete];

fn assign() -> impl Strategy<Value = Assign> {
    prop_oneof![
        (1i64..=8).prop_map(Assign::Tumbling),
        (2i64..=8)
            .prop_flat_map(|size| (Just(size), 1..=size))
            .prop_map(|(size, slide)| Assign::Sliding(size, slide)),
        (1i64..=6).prop_map(Assign::Session),
    ]
}

/// Events in arrival order, each at most `disorder` behind the largest event time
/// before it: t = max_before + step - delay.
fn events(disorder: i64) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0u8..3, 0i64..=4, 0..=disorder), 0..60).prop_map(|raw| {
        let mut max = 0;
        raw.into_iter()
            .enumerate()
            .map(|(i, (key, step, delay))| {
                let t = max + step - delay;
                max = max.max(t);
                Ev {
                    id: i as u32,
                    key,
                    t,
                }
            })
            .collect()
    })
}

fn flushes(n: usize) -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec(prop::bool::weighted(0.3), n)
}

/// (assigner, D, lateness, events, flush points) with disorder <= D <= lateness.
fn in_bounds() -> impl Strategy<Value = (Assign, i64, i64, Vec<Ev>, Vec<bool>)> {
    (assign(), 0i64..=6, 0i64..=3)
        .prop_flat_map(|(a, d, extra)| (Just(a), Just(d), Just(d + extra), events(d)))
        .prop_flat_map(|(a, d, l, ev)| {
            let n = ev.len();
            (Just(a), Just(d), Just(l), Just(ev), flushes(n))
        })
}

/// Disorder up to 15 with D and lateness smaller: late records.
fn out_of_bounds() -> impl Strategy<Value = (Assign, i64, i64, Vec<Ev>, Vec<bool>)> {
    (assign(), 0i64..=3, 0i64..=4, 1i64..=15)
        .prop_flat_map(|(a, d, l, x)| (Just(a), Just(d), Just(l), events(x)))
        .prop_flat_map(|(a, d, l, ev)| {
            let n = ev.len();
            (Just(a), Just(d), Just(l), Just(ev), flushes(n))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Disorder within D and lateness >= D: nothing is late and the final windows are
    /// those of the sorted input, in every mode.
    #[test]
    fn windows_within_lateness_equal_those_of_the_sorted_input((a, d, l, events, flush_after) in in_bounds()) {
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.t);
        let (sorted_table, _) = reference(a, 0, 0, &sorted);
        for mode in MODES {
            let plan = Plan { assign: a, mode, lateness: l, d, events: &events, flush_after: &flush_after, snapshot_after: None };
            let r = check(&plan)?;
            prop_assert!(r.late.is_empty(), "nothing is late with lateness >= disorder");
            prop_assert_eq!(r.final_table(a, mode), sorted_table.clone());
        }
    }

    /// Lateness below the disorder: exactly the predicted records are late and the final
    /// windows are those of the records that were not.
    #[test]
    fn windows_beyond_lateness_late_set_and_results_match((a, d, l, events, flush_after) in out_of_bounds()) {
        for mode in MODES {
            let plan = Plan { assign: a, mode, lateness: l, d, events: &events, flush_after: &flush_after, snapshot_after: None };
            check(&plan)?;
        }
    }

    /// Snapshot after a random record, restore into a fresh operator, continue: the
    /// same output, call by call, and the same late records as an uninterrupted run.
    #[test]
    fn window_snapshot_restore_continues_like_an_uninterrupted_run(
        (a, d, l, events, flush_after) in out_of_bounds(),
        cut in any::<prop::sample::Index>(),
    ) {
        prop_assume!(!events.is_empty());
        let cut_at = cut.index(events.len());
        for mode in MODES {
            let plain = Plan { assign: a, mode, lateness: l, d, events: &events, flush_after: &flush_after, snapshot_after: None };
            let resumed = Plan { snapshot_after: Some(cut_at), ..plain };
            let (x, y) = (run(&plain), check(&resumed)?);
            prop_assert_eq!(x.late_ids(), y.late_ids());
            prop_assert_eq!(x.calls.len(), y.calls.len());
            for ((cx, rx), (cy, ry)) in x.calls.iter().zip(&y.calls) {
                prop_assert_eq!(cx, cy);
                let mut rx = rx.clone();
                let mut ry = ry.clone();
                rx.sort();
                ry.sort();
                prop_assert_eq!(rx, ry, "{:?} {:?}", a, mode);
            }
        }
    }
}

// ---------------------------------------------------------------- examples

fn key_window(rows: &[Row]) -> Vec<(u8, Window, Vec<u32>)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| (r.key, r.window, r.value.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn update_mode_re_emits_a_window_changed_after_its_emission() {
    let mut op = make(Assign::Tumbling(10), OutputMode::Update, 5);
    let mut out = VecEmitter::new();
    let e = |id, t| (0u8, Ev { id, key: 0, t });
    op.process(e(1, 3), &mut out);
    op.flush(&mut out);
    op.on_watermark(at(12), &mut out); // past [0, 10), within lateness
    op.process(e(2, 4), &mut out);
    op.flush(&mut out);
    op.flush(&mut out);
    op.on_watermark(at(15), &mut out);
    let w = Window {
        start: at(0),
        end: at(10),
    };
    assert_eq!(
        key_window(&out.records),
        [(0, w, vec![1]), (0, w, vec![1, 2])],
        "emitted at the first flush, again after the change, not again at close"
    );
    assert_eq!(op.open_windows(), 0);
}

#[test]
fn window_builder_chain_drives_like_the_operator() {
    let mut t = identity::<Ev>()
        .key_by(|e| e.key)
        .window(Windows::session(secs(3)), |e| at(e.t))
        .allowed_lateness(secs(1))
        .aggregate(Ids);
    let mut out = VecEmitter::new();
    let evs = [(0, 0, 1), (1, 1, 2), (2, 0, 4), (3, 0, 20), (4, 0, 3)];
    let mut max = None;
    for (id, key, t_) in evs {
        // The watermark (D = 0) goes before the record, as the executors send it.
        if let Some(m) = max {
            t.on_watermark(at(m), &mut out);
        }
        max = Some(max.map_or(t_, |m: i64| m.max(t_)));
        t.process(Ev { id, key, t: t_ }, &mut out);
    }
    t.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    let w = |s, e| Window {
        start: at(s),
        end: at(e),
    };
    assert_eq!(
        key_window(&out.records),
        [
            (0, w(1, 7), vec![0, 2]),
            (0, w(20, 23), vec![3]),
            (1, w(2, 5), vec![1])
        ]
    );
    assert_eq!(
        out.dead_letters.len(),
        1,
        "id 4 at 3 is late at watermark 20"
    );
}
