use serde_json::json;

use super::*;
use crate::RecordErrorKind;
use crate::transform::{VecEmitter, identity};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Ev {
    t: i64,
    v: i64,
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(secs)
}

fn win(start: i64, end: i64) -> Window {
    Window {
        start: at(start),
        end: at(end),
    }
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

type Op<Ag> = WindowAggregate<u8, Ev, Ag, fn(&Ev) -> DateTime<Utc>>;
type SumOp = Op<Sum<fn(&Ev) -> i64>>;

fn ts(e: &Ev) -> DateTime<Utc> {
    at(e.t)
}

fn value(e: &Ev) -> i64 {
    e.v
}

fn sum_op(windows: Windows) -> SumOp {
    let ts: fn(&Ev) -> DateTime<Utc> = ts;
    WindowAggregate::new(windows, ts, Sum::of(value as fn(&Ev) -> i64))
}

fn ev(key: u8, t: i64, v: i64) -> (u8, Ev) {
    (key, Ev { t, v })
}

fn rows<K: Ord + Clone, O: Clone>(out: &VecEmitter<WindowResult<K, O>>) -> Vec<(K, Window, O)> {
    let mut r: Vec<_> = out
        .records
        .iter()
        .map(|r| (r.key.clone(), r.window, r.value.clone()))
        .collect();
    r.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    r
}

#[test]
fn tumbling_append_emits_once_at_close_and_frees_state() {
    let mut op = sum_op(Windows::tumbling(secs(10)));
    let mut out = VecEmitter::new();
    for r in [ev(1, 1, 5), ev(2, 3, 7), ev(1, 9, 1), ev(1, 12, 100)] {
        op.process(r, &mut out);
    }
    op.flush(&mut out);
    assert!(out.records.is_empty(), "append emits only closed windows");
    assert_eq!(op.open_windows(), 3);
    op.on_watermark(at(9), &mut out);
    assert!(out.records.is_empty(), "[0, 10) is still open at 9");
    op.on_watermark(at(10), &mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 6), (2, win(0, 10), 7)]);
    assert_eq!(op.open_windows(), 1);
    out.records.clear();
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    op.flush(&mut out);
    assert_eq!(rows(&out), [(1, win(10, 20), 100)]);
    assert_eq!(op.open_windows(), 0);
    assert_eq!(op.watermark(), Some(DateTime::<Utc>::MAX_UTC));
}

#[test]
fn late_records_become_typed_dead_letters_and_change_nothing() {
    let mut op = sum_op(Windows::tumbling(secs(10))).allowed_lateness(secs(2));
    let mut out = VecEmitter::new();
    op.process(ev(1, 5, 1), &mut out);
    op.on_watermark(at(11), &mut out);
    op.process(ev(1, 6, 10), &mut out); // 10 + 2 > 11: still open
    op.on_watermark(at(12), &mut out); // closes [0, 10)
    op.process(ev(1, 7, 100), &mut out); // late
    assert_eq!(rows(&out), [(1, win(0, 10), 11)]);
    assert_eq!(out.dead_letters.len(), 1);
    let dl = &out.dead_letters[0];
    assert_eq!(dl.kind(), RecordErrorKind::Late);
    assert_eq!(dl.error.stage, "window");
    assert_eq!(dl.record, Some(json!({"t": 7, "v": 100})));
    let msg = &dl.error.message;
    for part in [
        &at(7).to_string(),
        &win(0, 10).to_string(),
        &at(12).to_string(),
    ] {
        assert!(msg.contains(part.as_str()), "{msg} should name {part}");
    }
    assert_eq!(op.open_windows(), 0);
}

#[test]
fn no_watermark_means_nothing_is_late() {
    let mut op = sum_op(Windows::tumbling(secs(10)));
    let mut out = VecEmitter::new();
    op.process(ev(1, -1_000_000, 1), &mut out);
    assert!(out.dead_letters.is_empty());
    assert_eq!(op.watermark(), None);
}

#[test]
fn watermark_never_goes_back() {
    let mut op = sum_op(Windows::tumbling(secs(10)));
    let mut out = VecEmitter::new();
    op.on_watermark(at(20), &mut out);
    op.on_watermark(at(5), &mut out);
    assert_eq!(op.watermark(), Some(at(20)));
    op.process(ev(1, 15, 1), &mut out);
    op.process(ev(1, 21, 1), &mut out);
    assert_eq!(out.dead_letters.len(), 1, "judged against 20, not 5");
}

#[test]
fn tumbling_window_closing_exactly_at_the_watermark_rejects() {
    let mut op = sum_op(Windows::tumbling(secs(10)));
    let mut out = VecEmitter::new();
    op.on_watermark(at(20), &mut out);
    op.process(ev(1, 19, 1), &mut out); // [10, 20): 20 <= 20, closed
    op.process(ev(1, 20, 1), &mut out); // [20, 30): open
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(op.open_windows(), 1);
}

#[test]
fn windows_align_to_the_epoch_and_handle_negative_times() {
    let mut op = sum_op(Windows::tumbling(secs(10)));
    let mut out = VecEmitter::new();
    for r in [ev(1, -1, 1), ev(1, -10, 2), ev(1, -11, 4), ev(1, 0, 8)] {
        op.process(r, &mut out);
    }
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    assert_eq!(
        rows(&out),
        [
            (1, win(-20, -10), 4),
            (1, win(-10, 0), 3),
            (1, win(0, 10), 8)
        ]
    );
}

#[test]
fn sliding_adds_to_every_window_and_only_to_open_ones() {
    let mut op = sum_op(Windows::sliding(secs(10), secs(5)));
    let mut out = VecEmitter::new();
    op.process(ev(1, 7, 1), &mut out); // [0, 10) and [5, 15)
    op.process(ev(1, 12, 10), &mut out); // [5, 15) and [10, 20)
    op.on_watermark(at(10), &mut out); // closes [0, 10)
    assert_eq!(rows(&out), [(1, win(0, 10), 1)]);
    op.process(ev(1, 8, 100), &mut out); // [0, 10) closed, [5, 15) open: not late
    assert!(out.dead_letters.is_empty());
    op.on_watermark(at(15), &mut out);
    op.process(ev(1, 9, 1000), &mut out); // both closed: late
    assert_eq!(out.dead_letters.len(), 1);
    assert!(
        out.dead_letters[0]
            .error
            .message
            .contains("all its windows")
    );
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    assert_eq!(
        rows(&out),
        [
            (1, win(0, 10), 1),
            (1, win(5, 15), 111),
            (1, win(10, 20), 10)
        ]
    );
}

#[test]
fn sliding_with_a_slide_that_does_not_divide_the_size() {
    let mut op = WindowAggregate::new(Windows::sliding(secs(10), secs(4)), |e: &Ev| at(e.t), Count);
    let mut out = VecEmitter::new();
    op.process(ev(1, 9, 0), &mut out);
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    // Windows starting at 0, 4, 8 contain 9.
    assert_eq!(
        rows(&out),
        [(1, win(0, 10), 1), (1, win(4, 14), 1), (1, win(8, 18), 1)]
    );
}

#[test]
fn sessions_merge_when_touching_or_bridged() {
    let mut op = sum_op(Windows::session(secs(5)));
    let mut out = VecEmitter::new();
    op.process(ev(1, 0, 1), &mut out); // [0, 5)
    op.process(ev(1, 20, 2), &mut out); // [20, 25)
    op.process(ev(1, 5, 4), &mut out); // touches [0, 5): [0, 10)
    op.process(ev(2, 12, 8), &mut out); // another key
    assert_eq!(op.open_windows(), 3);
    op.process(ev(1, 15, 16), &mut out); // touches [20, 25): [15, 25)
    assert_eq!(op.open_windows(), 3);
    op.process(ev(1, 10, 32), &mut out); // bridges [0, 10) and [15, 25): [0, 25)
    assert_eq!(op.open_windows(), 2);
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    assert_eq!(rows(&out), [(1, win(0, 25), 55), (2, win(12, 17), 8)]);
    assert_eq!(op.open_windows(), 0);
}

#[test]
fn sessions_close_strictly_after_end_plus_lateness() {
    let mut op = sum_op(Windows::session(secs(5)));
    let mut out = VecEmitter::new();
    op.process(ev(1, 0, 1), &mut out); // [0, 5)
    op.on_watermark(at(5), &mut out);
    assert!(
        out.records.is_empty(),
        "a record at 5 may still touch [0, 5)"
    );
    op.process(ev(1, 5, 2), &mut out); // [0, 10)
    op.on_watermark(at(10) + TimeDelta::microseconds(1), &mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 3)]);
}

#[test]
fn session_lateness_rule() {
    let mut op = sum_op(Windows::session(secs(5))).allowed_lateness(secs(1));
    let mut out = VecEmitter::new();
    op.process(ev(1, 100, 1), &mut out); // [100, 105)
    op.on_watermark(at(103), &mut out);
    // Behind the watermark by more than the lateness, but inside the open session.
    op.process(ev(1, 101, 2), &mut out);
    // Behind the watermark and outside any open session: could touch a closed one.
    op.process(ev(1, 96, 4), &mut out);
    // Within the lateness: fine, merges.
    op.process(ev(1, 102, 8), &mut out);
    // Another key, no session, behind: late.
    op.process(ev(2, 101, 16), &mut out);
    assert_eq!(out.dead_letters.len(), 2);
    assert_eq!(out.dead_letters[0].record, Some(json!({"t": 96, "v": 4})));
    assert!(
        out.dead_letters[0].error.message.contains("open session"),
        "{}",
        out.dead_letters[0].error.message
    );
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    assert_eq!(rows(&out), [(1, win(100, 107), 11)]);
}

#[test]
fn session_due_entries_follow_a_growing_session() {
    let mut op = sum_op(Windows::session(secs(5)));
    let mut out = VecEmitter::new();
    for t in 0..20 {
        op.process(ev(1, t, 1), &mut out); // one session, growing
        op.on_watermark(at(t), &mut out);
    }
    assert!(out.records.is_empty());
    op.on_watermark(at(24), &mut out);
    assert!(out.records.is_empty(), "[0, 24) closes after 24");
    op.on_watermark(at(25), &mut out);
    assert_eq!(rows(&out), [(1, win(0, 24), 20)]);
    assert_eq!(op.due_entries(), 0, "no stale due entries left");
}

#[test]
fn update_mode_emits_changes_per_flush_and_at_close_if_changed() {
    let mut op = sum_op(Windows::tumbling(secs(10)))
        .allowed_lateness(secs(5))
        .output_mode(OutputMode::Update);
    let mut out = VecEmitter::new();
    op.process(ev(1, 1, 1), &mut out);
    op.process(ev(2, 2, 2), &mut out);
    op.flush(&mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 1), (2, win(0, 10), 2)]);
    out.records.clear();
    op.flush(&mut out);
    assert!(out.records.is_empty(), "nothing changed");
    op.on_watermark(at(12), &mut out); // past the end, within lateness
    op.process(ev(1, 3, 10), &mut out);
    op.flush(&mut out);
    assert_eq!(
        rows(&out),
        [(1, win(0, 10), 11)],
        "re-emitted after a change"
    );
    out.records.clear();
    op.process(ev(2, 4, 20), &mut out);
    op.on_watermark(at(15), &mut out); // closes; key 2 changed since its last emission
    assert_eq!(rows(&out), [(2, win(0, 10), 22)]);
    op.flush(&mut out);
    assert_eq!(out.records.len(), 1, "a closed window is not emitted again");
    assert_eq!(op.open_windows(), 0);
}

#[test]
fn update_mode_state_stays_bounded_without_flushes() {
    // The batch executor flushes once, at the end: pending updates of closed windows
    // must not pile up meanwhile.
    for windows in [Windows::tumbling(secs(1)), Windows::session(secs(1))] {
        let mut op = sum_op(windows).output_mode(OutputMode::Update);
        let mut out = VecEmitter::new();
        for t in 0..10_000 {
            op.on_watermark(at(t), &mut out);
            op.process(ev((t % 7) as u8, t, 1), &mut out);
            assert!(
                op.dirty_entries() <= 2 * op.open_windows() + 64,
                "{windows}"
            );
        }
        assert!(op.open_windows() <= 7, "{windows}");
        op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
        assert_eq!(
            out.records.len(),
            10_000,
            "{windows}: each window once, at close"
        );
    }
}

#[test]
fn update_mode_sessions_emit_the_grown_session() {
    let mut op = sum_op(Windows::session(secs(5))).output_mode(OutputMode::Update);
    let mut out = VecEmitter::new();
    op.process(ev(1, 0, 1), &mut out);
    op.flush(&mut out);
    op.process(ev(1, 3, 2), &mut out);
    op.flush(&mut out);
    assert_eq!(rows(&out), [(1, win(0, 5), 1), (1, win(0, 8), 3)]);
}

#[test]
fn complete_mode_emits_the_whole_table_every_flush() {
    let mut op = sum_op(Windows::tumbling(secs(10))).output_mode(OutputMode::Complete);
    let mut out = VecEmitter::new();
    op.process(ev(1, 1, 1), &mut out);
    op.process(ev(1, 11, 2), &mut out);
    op.on_watermark(at(10), &mut out);
    assert!(out.records.is_empty(), "complete mode emits at flush");
    op.flush(&mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 1), (1, win(10, 20), 2)]);
    out.records.clear();
    op.flush(&mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 1), (1, win(10, 20), 2)]);
    assert_eq!((op.open_windows(), op.closed_results()), (1, 1));
    out.records.clear();
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    op.flush(&mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 1), (1, win(10, 20), 2)]);
    assert_eq!((op.open_windows(), op.closed_results()), (0, 2));
}

#[test]
fn snapshot_restore_round_trips_every_mode_and_assigner() {
    let assigners = [
        Windows::tumbling(secs(10)),
        Windows::sliding(secs(10), secs(5)),
        Windows::session(secs(5)),
    ];
    for windows in assigners {
        for mode in [OutputMode::Append, OutputMode::Update, OutputMode::Complete] {
            let make = || sum_op(windows).output_mode(mode).allowed_lateness(secs(3));
            let input = [
                ev(1, 1, 1),
                ev(2, 4, 2),
                ev(1, 12, 4),
                ev(1, 3, 8),
                ev(2, 30, 16),
            ];
            let (first, rest) = input.split_at(3);
            let mut a = make();
            let mut out_a = VecEmitter::new();
            for r in first {
                a.process(*r, &mut out_a);
            }
            a.on_watermark(at(11), &mut out_a);
            let text = serde_json::to_string(&a.snapshot().unwrap()).unwrap();
            let mut b = make();
            b.restore(serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(b.watermark(), Some(at(11)));
            assert_eq!(b.open_windows(), a.open_windows());
            let mut out_b = VecEmitter::new();
            out_a.records.clear();
            out_a.dead_letters.clear();
            for op_out in [(&mut a, &mut out_a), (&mut b, &mut out_b)] {
                let (op, out) = op_out;
                for r in rest {
                    op.process(*r, out);
                }
                op.flush(out);
                op.on_watermark(DateTime::<Utc>::MAX_UTC, out);
                op.flush(out);
            }
            assert_eq!(rows(&out_a), rows(&out_b), "{windows} {mode:?}");
            assert_eq!(out_a.dead_letters, out_b.dead_letters, "{windows} {mode:?}");
        }
    }
}

#[test]
fn restore_rejects_other_windows_and_garbage_and_null_resets() {
    let mut a = sum_op(Windows::tumbling(secs(10)));
    let mut out = VecEmitter::new();
    a.process(ev(1, 1, 1), &mut out);
    let snap = a.snapshot().unwrap();
    let mut b = sum_op(Windows::tumbling(secs(5)));
    let err = b.restore(snap.clone()).unwrap_err();
    assert!(
        matches!(err, Error::State { ref stage, .. } if stage == "window"),
        "{err}"
    );
    assert!(err.to_string().contains("tumbling"), "{err}");
    let err = a.restore(json!({"panes": 3})).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::State);
    a.restore(snap).unwrap();
    assert_eq!(a.open_windows(), 1);
    a.restore(Value::Null).unwrap();
    assert_eq!((a.open_windows(), a.watermark()), (0, None));
}

#[test]
fn invalid_sizes_are_config_errors_or_panics() {
    for bad in [
        Windows::try_tumbling(TimeDelta::zero()),
        Windows::try_tumbling(secs(-1)),
        Windows::try_tumbling(TimeDelta::nanoseconds(1500)),
        Windows::try_tumbling(TimeDelta::days(365 * 20_000)),
        Windows::try_sliding(secs(5), secs(10)),
        Windows::try_sliding(secs(5), TimeDelta::zero()),
        Windows::try_session(TimeDelta::zero()),
    ] {
        let err = bad.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config, "{err}");
    }
    assert!(Windows::try_sliding(secs(5), secs(5)).is_ok());
    assert!(Windows::try_tumbling(TimeDelta::microseconds(1)).is_ok());
    let panic = std::panic::catch_unwind(|| Windows::tumbling(TimeDelta::zero()));
    assert!(panic.is_err());
    let panic =
        std::panic::catch_unwind(|| sum_op(Windows::tumbling(secs(1))).allowed_lateness(secs(-1)));
    assert!(panic.is_err());
}

#[test]
fn huge_lateness_keeps_windows_until_the_end_of_input() {
    let mut op = sum_op(Windows::tumbling(secs(10))).allowed_lateness(TimeDelta::MAX);
    let mut out = VecEmitter::new();
    op.process(ev(1, 1, 1), &mut out);
    op.on_watermark(at(1_000_000_000), &mut out);
    op.process(ev(1, 2, 1), &mut out);
    assert!(out.records.is_empty() && out.dead_letters.is_empty());
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    assert_eq!(rows(&out), [(1, win(0, 10), 2)]);
}

#[test]
fn builder_chain_reads_like_the_other_combinators() {
    let mut t = identity::<Ev>()
        .key_by(|e| e.v % 2)
        .window(Windows::tumbling(secs(10)), |e| at(e.t))
        .allowed_lateness(secs(1))
        .output_mode(OutputMode::Update)
        .count();
    let mut out = VecEmitter::new();
    t.process_batch(
        vec![Ev { t: 1, v: 1 }, Ev { t: 2, v: 3 }, Ev { t: 3, v: 2 }],
        &mut out,
    );
    t.flush(&mut out);
    assert_eq!(rows(&out), [(0, win(0, 10), 1), (1, win(0, 10), 2)]);
    let snap = t.snapshot().unwrap();
    assert!(!snap.is_null());
}

#[test]
fn microsecond_bounds_are_those_of_datetime() {
    use super::operator::{MAX_US, MIN_US};
    assert_eq!(DateTime::<Utc>::MIN_UTC.timestamp_micros(), MIN_US);
    assert_eq!(DateTime::<Utc>::MAX_UTC.timestamp_micros(), MAX_US);
}

/// Integer times beyond the range of `DateTime` are clamped to it: no overflow, and
/// they land in the first or last window.
#[test]
fn out_of_range_integer_times_are_clamped() {
    use crate::event_time::UnixMicros;
    let mut op = WindowAggregate::new(
        Windows::sliding(secs(10), secs(5)),
        |r: &(i64, i64)| UnixMicros(r.0),
        Sum::of(|r: &(i64, i64)| r.1),
    );
    let mut out = VecEmitter::new();
    op.process((1u8, (i64::MAX, 1)), &mut out);
    op.process((1u8, (i64::MIN, 2)), &mut out);
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    let mut values: Vec<i64> = out.records.iter().map(|r| r.value).collect();
    values.sort();
    assert_eq!(values, [1, 1, 2, 2], "each record in its 2 windows, alone");
    assert!(
        out.records
            .iter()
            .any(|r| r.window.start == DateTime::<Utc>::MIN_UTC)
    );
}

/// Feeds `input` `(key, ms, value)` to `op` with the watermark "largest time seen − 5 s"
/// before each record, then the end of input; returns the sorted results and the late
/// records' messages.
fn drive_ms<T>(op: &mut T, input: &[(u8, i64, i64)]) -> (Vec<(u8, Window, i64)>, Vec<String>)
where
    T: Transform<In = (u8, (i64, i64)), Out = WindowResult<u8, i64>>,
{
    let mut out = VecEmitter::new();
    let mut max = i64::MIN;
    for &(k, t, v) in input {
        max = max.max(t);
        let wm = DateTime::from_timestamp_millis(max - 5_000).unwrap();
        op.on_watermark(wm, &mut out);
        op.process((k, (t, v)), &mut out);
    }
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    let late = out
        .dead_letters
        .iter()
        .map(|d| d.error.message.clone())
        .collect();
    (rows(&out), late)
}

/// Integer timestamps (`UnixMillis`, `UnixMicros`) assign records to the same windows,
/// close them at the same watermarks and reject the same late records as `DateTime`s,
/// for every kind of window and with sub-second and negative times.
#[test]
fn integer_timestamps_behave_exactly_like_datetimes() {
    use crate::event_time::{UnixMicros, UnixMillis};
    // (key, time in ms, value); out of order, some late, some before the epoch.
    let input: Vec<(u8, i64, i64)> = vec![
        (1, 1_500, 1),
        (2, 9_999, 2),
        (1, -2_500, 4),
        (1, 10_000, 8),
        (2, 4_000, 16),
        (1, 31_001, 32),
        (2, 12_000, 64),
        (1, 30_999, 128),
        (2, 45_000, 256),
        (1, 20_000, 512),
    ];
    let value = |r: &(i64, i64)| r.1;
    let windows = [
        Windows::tumbling(secs(10)),
        Windows::sliding(secs(10), TimeDelta::milliseconds(2_500)),
        Windows::session(secs(3)),
    ];
    for w in windows {
        let by_datetime = |r: &(i64, i64)| DateTime::from_timestamp_millis(r.0).unwrap();
        let expected = drive_ms(
            &mut WindowAggregate::new(w, by_datetime, Sum::of(value)),
            &input,
        );
        assert!(
            !expected.0.is_empty() && !expected.1.is_empty(),
            "{w}: results and late records"
        );
        let by_millis = |r: &(i64, i64)| UnixMillis(r.0);
        let got = drive_ms(
            &mut WindowAggregate::new(w, by_millis, Sum::of(value)),
            &input,
        );
        assert_eq!(got, expected, "{w}: UnixMillis");
        let by_micros = |r: &(i64, i64)| UnixMicros(r.0 * 1_000);
        let got = drive_ms(
            &mut WindowAggregate::new(w, by_micros, Sum::of(value)),
            &input,
        );
        assert_eq!(got, expected, "{w}: UnixMicros");
    }
}

/// Tumbling windows against a direct model of the rules, over pseudo-random
/// out-of-order input with allowed lateness and a snapshot/restore into a fresh
/// operator halfway: a record is late exactly when its window's end plus the lateness
/// is at or below the watermark; a window is emitted once, when the watermark reaches
/// its end plus the lateness, with the sum of its on-time records. This exercises the
/// operator's fast path (records of the newest open window) and every way around it:
/// older open windows, new windows, closed ones, a restored state.
#[test]
fn tumbling_matches_a_model_of_the_rules() {
    use crate::event_time::UnixMillis;
    use std::collections::BTreeMap;
    let (size, lateness, delay) = (1_000i64, 700i64, 1_500i64);
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move |n: u64| {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n
    };
    let mut t = -3_000i64;
    let input: Vec<(u8, i64, i64)> = (0..4_000)
        .map(|i| {
            t += rand(20) as i64;
            // Mostly in order, some up to 3 s behind.
            let at = if rand(5) == 0 {
                t - rand(3_000) as i64
            } else {
                t
            };
            (rand(7) as u8, at, i)
        })
        .collect();

    // The model.
    let mut open: BTreeMap<(i64, u8), i64> = BTreeMap::new();
    let mut expected: Vec<(u8, Window, i64)> = Vec::new();
    let mut late = 0;
    let mut wm = i64::MIN;
    let close = |open: &mut BTreeMap<(i64, u8), i64>, out: &mut Vec<_>, wm: i64| {
        open.retain(|&(start, k), v| {
            let keep = wm == i64::MAX || start + size + lateness > wm;
            if !keep || wm == i64::MAX {
                let w = Window {
                    start: DateTime::from_timestamp_millis(start).unwrap(),
                    end: DateTime::from_timestamp_millis(start + size).unwrap(),
                };
                out.push((k, w, *v));
            }
            keep && wm != i64::MAX
        });
    };
    let mut max = i64::MIN;
    for &(k, at, v) in &input {
        max = max.max(at);
        wm = wm.max(max - delay);
        close(&mut open, &mut expected, wm);
        let start = at.div_euclid(size) * size;
        if start + size + lateness <= wm {
            late += 1;
        } else {
            *open.entry((start, k)).or_default() += v;
        }
    }
    close(&mut open, &mut expected, i64::MAX);
    expected.sort_by_key(|a| (a.0, a.1));
    assert!(
        late > 50 && expected.len() > 50,
        "late {late}, results {}",
        expected.len()
    );

    // The operator, restored into a fresh one halfway.
    let value = |r: &(i64, i64)| r.1;
    let new_op = || {
        WindowAggregate::new(
            Windows::tumbling(TimeDelta::milliseconds(size)),
            |r: &(i64, i64)| UnixMillis(r.0),
            Sum::of(value),
        )
        .allowed_lateness(TimeDelta::milliseconds(lateness))
    };
    let mut op = new_op();
    let mut out = VecEmitter::new();
    let mut max = i64::MIN;
    for (i, &(k, at, v)) in input.iter().enumerate() {
        if i == input.len() / 2 {
            let snap = op.snapshot().unwrap();
            op = new_op();
            op.restore(snap).unwrap();
        }
        max = max.max(at);
        op.on_watermark(
            DateTime::from_timestamp_millis(max - delay).unwrap(),
            &mut out,
        );
        op.process((k, (at, v)), &mut out);
    }
    op.on_watermark(DateTime::<Utc>::MAX_UTC, &mut out);
    assert_eq!(out.dead_letters.len(), late);
    assert_eq!(rows(&out), expected);
    assert_eq!(op.open_windows(), 0);
}
