//! The window operator: state, closing, emission, snapshots.
//!
//! Times are `i64` microseconds since the Unix epoch (the whole range of
//! `DateTime<Utc>` fits). The watermark is `i64::MIN` before the first one and
//! `i64::MAX` at the end of input.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

// Window state is on the hot path: a fast, seeded hasher instead of SipHash.
use foldhash::{HashMap, HashMapExt};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Kind, OutputMode, Window, WindowResult, Windows, lateness_micros};
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Location, RecordError, RecordErrorKind, Result};
use crate::event_time::EventTimestamp;
use crate::transform::{Aggregator, Emit, Transform};

const STAGE: &str = "window";
/// No watermark yet: nothing is late.
const NO_WATERMARK: i64 = i64::MIN;
/// The end-of-input watermark: everything closes.
const END: i64 = i64::MAX;
/// `DateTime::<Utc>::MIN_UTC` in microseconds: event times are clamped to the range of
/// `DateTime` (integer timestamps may lie outside it), so window arithmetic cannot
/// overflow.
pub(super) const MIN_US: i64 = -8_334_601_228_800_000_000;
/// `DateTime::<Utc>::MAX_UTC` in microseconds (rounded down).
pub(super) const MAX_US: i64 = 8_210_266_876_799_999_999;
/// Emptied pane maps kept for reuse, so a new window does not regrow its map.
const MAX_SPARE: usize = 4;
/// Emptied session due lists kept for reuse.
const MAX_SPARE_DUE: usize = 64;

fn to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(if us < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

fn to_window(start: i64, end: i64) -> Window {
    Window {
        start: to_time(start),
        end: to_time(end),
    }
}

/// Keyed event-time window aggregation: the operator behind
/// [`KeyBy::window`](crate::transform::KeyBy::window).
///
/// Input `(key, record)`, output [`WindowResult`]s; see the [module docs](super)
/// for the semantics of windows, watermarks, lateness and output modes. Build it with
/// `key_by(..).window(..)`, or directly with [`new`](WindowAggregate::new) when the
/// input is already keyed.
///
/// Emitting complete-mode tables and snapshotting need `Ag::Output: Clone + Serialize
/// + DeserializeOwned`, and late records are serialized into their dead letters, so
/// the record type must be `Serialize`.
pub struct WindowAggregate<K, V, Ag: Aggregator<V>, Ts> {
    agg: Ag,
    timestamp: Ts,
    windows: Windows,
    lateness: i64,
    mode: OutputMode,
    watermark: i64,
    state: State<K, Ag::Acc>,
    /// Complete mode: the final results of closed windows.
    table: Vec<WindowResult<K, Ag::Output>>,
    _v: PhantomData<fn(V)>,
}

impl<K, V, Ag: Aggregator<V>, Ts> fmt::Debug for WindowAggregate<K, V, Ag, Ts> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowAggregate")
            .field("windows", &self.windows)
            .field("lateness", &TimeDelta::microseconds(self.lateness))
            .field("mode", &self.mode)
            .field("watermark", &self.watermark())
            .field("open_windows", &self.open_windows())
            .field("closed_results", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl<K, V, Ag: Aggregator<V>, Ts> WindowAggregate<K, V, Ag, Ts> {
    /// An operator over `(key, record)` input assigning records to `windows` by the
    /// event time `timestamp` reads, aggregating each (key, window) with `agg`.
    /// Lateness 0, [`OutputMode::Append`].
    ///
    /// `timestamp` returns any [`EventTimestamp`]: a `DateTime<Utc>`, or integer Unix time
    /// ([`UnixMillis`](crate::event_time::UnixMillis),
    /// [`UnixMicros`](crate::event_time::UnixMicros)), which skips calendar arithmetic.
    pub fn new<R>(windows: Windows, timestamp: Ts, agg: Ag) -> Self
    where
        Ts: FnMut(&V) -> R,
        R: EventTimestamp,
    {
        WindowAggregate {
            agg,
            timestamp,
            windows,
            lateness: 0,
            mode: OutputMode::Append,
            watermark: NO_WATERMARK,
            state: State::new(windows.kind),
            table: Vec::new(),
            _v: PhantomData,
        }
    }

    /// Sets the allowed lateness (default zero); see
    /// [`WindowBuilder::allowed_lateness`](super::WindowBuilder::allowed_lateness).
    ///
    /// # Panics
    /// If `lateness` is negative.
    pub fn allowed_lateness(mut self, lateness: TimeDelta) -> Self {
        self.lateness = lateness_micros(lateness);
        self
    }

    /// Sets the output mode (default [`OutputMode::Append`]).
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.mode = mode;
        self
    }

    /// How many (key, window) accumulators are held: open tumbling or sliding windows
    /// per key, or open sessions. Zero after the end-of-input watermark.
    pub fn open_windows(&self) -> usize {
        match &self.state {
            State::Fixed(s) => s.panes.iter().map(|p| p.slots.len()).sum(),
            State::Session(s) => s.book.open,
        }
    }

    /// How many final results a complete-mode operator keeps for closed windows (zero
    /// in the other modes).
    pub fn closed_results(&self) -> usize {
        self.table.len()
    }

    /// The current watermark: the largest one received (truncated to microseconds),
    /// or `None` before the first.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        match self.watermark {
            NO_WATERMARK => None,
            END => Some(DateTime::<Utc>::MAX_UTC),
            us => Some(to_time(us)),
        }
    }
}

#[cfg(test)]
impl<K, V, Ag: Aggregator<V>, Ts> WindowAggregate<K, V, Ag, Ts> {
    /// Session due entries held (including stale ones).
    pub(super) fn due_entries(&self) -> usize {
        match &self.state {
            State::Fixed(_) => 0,
            State::Session(s) => s.book.due.values().map(Vec::len).sum(),
        }
    }

    /// Update-mode entries waiting for a flush (including stale ones).
    pub(super) fn dirty_entries(&self) -> usize {
        match &self.state {
            State::Fixed(s) => s.panes.iter().map(|p| p.dirty.len()).sum(),
            State::Session(s) => s.book.dirty.len(),
        }
    }
}

/// One (key, window) accumulator; `dirty` = changed since it was last emitted
/// (tracked in update mode only).
struct Slot<A> {
    acc: A,
    dirty: bool,
}

/// The accumulators of one tumbling or sliding window.
struct Pane<K, A> {
    start: i64,
    slots: HashMap<K, Slot<A>>,
    /// Update mode: the keys changed since the last flush (freed with the pane).
    dirty: Vec<K>,
}

/// Tumbling (`slide == size`) and sliding windows: one pane per open window, ordered
/// by start (so also by end): closing looks at the front only. A `Vec`, not a
/// `VecDeque`: the newest pane (where in-order records go) is one pointer away, and
/// the few open panes make removing the front cheap.
struct Fixed<K, A> {
    size: i64,
    slide: i64,
    panes: Vec<Pane<K, A>>,
    /// Tumbling windows: `[fast_lo, fast_hi)` is the newest pane's window while that
    /// window is open (empty otherwise): a record in it goes straight to the last pane,
    /// with no window arithmetic and no lateness check. Kept by [`Fixed::refresh`]
    /// wherever the panes or the watermark change.
    fast_lo: i64,
    fast_hi: i64,
    spare: Vec<HashMap<K, Slot<A>>>,
    /// The slide-aligned start of the last record's period, `[hint, hint_end)` in
    /// microseconds: a record in it needs no division.
    hint: i64,
    hint_end: i64,
}

struct Session<A> {
    id: u64,
    start: i64,
    end: i64,
    acc: A,
    dirty: bool,
}

/// One key's open sessions, sorted by start; the usual single session is stored
/// inline. Never empty while in the map (`Many` of an empty `Vec` only in passing).
enum KeySessions<A> {
    One(Session<A>),
    Many(Vec<Session<A>>),
}

impl<A> std::ops::Deref for KeySessions<A> {
    type Target = [Session<A>];
    fn deref(&self) -> &[Session<A>] {
        match self {
            KeySessions::One(s) => std::slice::from_ref(s),
            KeySessions::Many(v) => v,
        }
    }
}

impl<A> std::ops::DerefMut for KeySessions<A> {
    fn deref_mut(&mut self) -> &mut [Session<A>] {
        match self {
            KeySessions::One(s) => std::slice::from_mut(s),
            KeySessions::Many(v) => v,
        }
    }
}

impl<A> KeySessions<A> {
    fn from_vec(mut v: Vec<Session<A>>) -> Self {
        match v.pop() {
            Some(s) if v.is_empty() => KeySessions::One(s),
            Some(s) => {
                v.push(s);
                KeySessions::Many(v)
            }
            None => KeySessions::Many(v),
        }
    }

    fn insert(&mut self, i: usize, s: Session<A>) {
        match self {
            KeySessions::Many(v) => v.insert(i, s),
            KeySessions::One(_) => {
                let KeySessions::One(old) = std::mem::replace(self, KeySessions::Many(Vec::new()))
                else {
                    unreachable!()
                };
                let mut v = Vec::with_capacity(4);
                v.push(old);
                v.insert(i, s);
                *self = KeySessions::Many(v);
            }
        }
    }

    fn remove(&mut self, i: usize) -> Session<A> {
        match self {
            KeySessions::Many(v) => {
                let s = v.remove(i);
                if v.len() == 1 {
                    *self = KeySessions::from_vec(std::mem::take(v));
                }
                s
            }
            KeySessions::One(_) => {
                let KeySessions::One(s) = std::mem::replace(self, KeySessions::Many(Vec::new()))
                else {
                    unreachable!()
                };
                s
            }
        }
    }
}

/// Session windows: each key's open sessions, sorted by start, pairwise neither
/// overlapping nor touching; an index of due times for closing.
struct Sessions<K, A> {
    gap: i64,
    by_key: HashMap<K, KeySessions<A>>,
    book: Book<K>,
}

/// Session bookkeeping besides the sessions themselves.
struct Book<K> {
    /// When sessions may close: end -> (session id, key). An entry's end is a lower
    /// bound of the session's end (sessions only grow): a session found due is checked
    /// and, if it grew, filed again under its new end. Entries of sessions merged into
    /// another go stale and are dropped when due. Grouping by end keeps this small
    /// (ends cluster near the watermark) and the check for due sessions is one look
    /// at the first entry.
    due: BTreeMap<i64, Vec<(u64, K)>>,
    /// Emptied due lists kept for reuse.
    spare: Vec<Vec<(u64, K)>>,
    next_id: u64,
    /// Open sessions.
    open: usize,
    /// Update mode: (key, session id) changed since the last flush. Entries of
    /// sessions closed or merged since go stale; they are pruned when they outnumber
    /// the open sessions, so this stays bounded by the open sessions even when flushes
    /// are rare (the batch executor flushes once, at the end).
    dirty: Vec<(K, u64)>,
}

enum State<K, A> {
    Fixed(Fixed<K, A>),
    Session(Sessions<K, A>),
}

impl<K, A> State<K, A> {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Fixed { size, slide } => State::Fixed(Fixed {
                size,
                slide,
                panes: Vec::new(),
                spare: Vec::new(),
                fast_lo: 0,
                fast_hi: i64::MIN,
                hint: 0,
                hint_end: i64::MIN,
            }),
            Kind::Session { gap } => State::Session(Sessions {
                gap,
                by_key: HashMap::new(),
                book: Book {
                    due: BTreeMap::new(),
                    spare: Vec::new(),
                    next_id: 0,
                    open: 0,
                    dirty: Vec::new(),
                },
            }),
        }
    }
}

/// What a record contributes to one window: itself, or (sliding windows, all but one
/// window) a copy of a one-record accumulator.
enum Part<V, A> {
    Record(V),
    Partial(A),
}

impl<V, A> Part<V, A> {
    #[inline]
    fn add_to<Ag: Aggregator<V, Acc = A>>(self, agg: &Ag, acc: &mut A) {
        match self {
            Part::Record(v) => agg.add(acc, v),
            Part::Partial(p) => agg.merge(acc, p),
        }
    }
    #[inline]
    fn into_acc<Ag: Aggregator<V, Acc = A>>(self, agg: &Ag) -> A {
        match self {
            Part::Record(v) => {
                let mut acc = agg.create();
                agg.add(&mut acc, v);
                acc
            }
            Part::Partial(p) => p,
        }
    }
}

/// Whether a tumbling or sliding window ending at `end` is still open.
#[inline]
fn window_open(end: i64, lateness: i64, watermark: i64) -> bool {
    // At the end watermark (i64::MAX) nothing is greater: everything is closed.
    end.saturating_add(lateness) > watermark
}

/// Whether a session ending at `end` is still open: a record at the watermark may
/// still touch it while `end + lateness >= watermark`.
#[inline]
fn session_open(end: i64, lateness: i64, watermark: i64) -> bool {
    watermark != END && end.saturating_add(lateness) >= watermark
}

/// The window starting at `start`, created if absent.
#[inline(always)]
fn pane<'a, K, A>(
    panes: &'a mut Vec<Pane<K, A>>,
    spare: &mut Vec<HashMap<K, Slot<A>>>,
    start: i64,
) -> &'a mut Pane<K, A> {
    if panes.last().is_some_and(|p| p.start == start) {
        let last = panes.len() - 1;
        return &mut panes[last];
    }
    let i = match panes.binary_search_by_key(&start, |p| p.start) {
        Ok(i) => i,
        Err(i) => {
            let slots = spare.pop().unwrap_or_default();
            let dirty = Vec::new();
            panes.insert(
                i,
                Pane {
                    start,
                    slots,
                    dirty,
                },
            );
            i
        }
    };
    &mut panes[i]
}

impl<K, A> Fixed<K, A> {
    /// Sets the fast range to the newest pane's window if it is a tumbling window
    /// open at `watermark`, else empties it.
    #[inline]
    fn refresh(&mut self, lateness: i64, watermark: i64) {
        (self.fast_lo, self.fast_hi) = match self.panes.last() {
            Some(p)
                if self.slide == self.size
                    && window_open(p.start + self.size, lateness, watermark) =>
            {
                (p.start, p.start.saturating_add(self.size))
            }
            _ => (0, i64::MIN),
        };
    }
}

impl<K: Hash + Eq + Clone, A> Fixed<K, A> {
    /// Adds a record to the newest pane, whose window holds it (the fast range).
    #[inline(always)]
    fn add_last<V, Ag: Aggregator<V, Acc = A>>(&mut self, agg: &Ag, track: bool, key: K, value: V) {
        let Some(pane) = self.panes.last_mut() else {
            // Not reached (a fast range names an existing pane), but never drop a record.
            return self.add(agg, track, self.fast_lo, key, Part::Record(value));
        };
        match pane.slots.get_mut(&key) {
            Some(slot) => {
                if track && !slot.dirty {
                    slot.dirty = true;
                    pane.dirty.push(key);
                }
                agg.add(&mut slot.acc, value);
            }
            None => {
                if track {
                    pane.dirty.push(key.clone());
                }
                let slot = Slot {
                    acc: Part::Record(value).into_acc(agg),
                    dirty: track,
                };
                pane.slots.insert(key, slot);
            }
        }
    }

    /// The start of the newest window containing `t_us` (a multiple of `slide`).
    #[inline(always)]
    fn last_start(&mut self, t_us: i64) -> i64 {
        if self.hint <= t_us && t_us < self.hint_end {
            return self.hint;
        }
        self.last_start_slow(t_us)
    }

    #[inline(never)]
    fn last_start_slow(&mut self, t_us: i64) -> i64 {
        let s = t_us.div_euclid(self.slide) * self.slide;
        self.hint = s;
        // Saturated at the end of time (a time there misses the hint and takes this
        // path, which is exact).
        self.hint_end = s.saturating_add(self.slide);
        s
    }

    #[inline(always)]
    fn add<V, Ag: Aggregator<V, Acc = A>>(
        &mut self,
        agg: &Ag,
        track: bool,
        start: i64,
        key: K,
        part: Part<V, A>,
    ) {
        let pane = pane(&mut self.panes, &mut self.spare, start);
        match pane.slots.entry(key) {
            Entry::Occupied(mut e) => {
                if track && !e.get().dirty {
                    pane.dirty.push(e.key().clone());
                    e.get_mut().dirty = true;
                }
                part.add_to(agg, &mut e.get_mut().acc);
            }
            Entry::Vacant(e) => {
                if track {
                    pane.dirty.push(e.key().clone());
                }
                e.insert(Slot {
                    acc: part.into_acc(agg),
                    dirty: track,
                });
            }
        }
    }
}

impl<K: Clone> Book<K> {
    /// Files session `id` of `key` as due at `end`.
    fn file(&mut self, end: i64, id: u64, key: K) {
        let spare = &mut self.spare;
        self.due
            .entry(end)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push((id, key));
    }

    /// A new session of `key` ending at `end`: an id, a due entry, a dirty mark.
    fn register(&mut self, key: &K, end: i64, dirty: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.open += 1;
        self.file(end, id, key.clone());
        if dirty {
            self.dirty.push((key.clone(), id));
        }
        id
    }
}

impl<K: Hash + Eq + Clone, A> Sessions<K, A> {
    /// Whether `t` lies inside an open session of `key` (`start <= t <= end`).
    fn inside(&self, key: &K, t: i64) -> bool {
        self.by_key.get(key).is_some_and(|v| {
            let i = v.partition_point(|s| s.end < t);
            i < v.len() && v[i].start <= t
        })
    }

    /// Adds a record at `t` to `key`'s sessions, merging every session that its
    /// `[t, t + gap)` overlaps or touches.
    fn add<V, Ag: Aggregator<V, Acc = A>>(
        &mut self,
        agg: &Ag,
        track: bool,
        key: K,
        t: i64,
        value: V,
    ) {
        let end = t.saturating_add(self.gap);
        let book = &mut self.book;
        let Some(v) = self.by_key.get_mut(&key) else {
            let id = book.register(&key, end, track);
            let acc = Part::Record(value).into_acc(agg);
            let s = Session {
                id,
                start: t,
                end,
                acc,
                dirty: track,
            };
            self.by_key.insert(key, KeySessions::One(s));
            return;
        };
        let lo = v.partition_point(|s| s.end < t);
        let hi = v.partition_point(|s| s.start <= end);
        if lo == hi {
            // Touches nothing: a new session.
            let id = book.register(&key, end, track);
            let acc = Part::Record(value).into_acc(agg);
            let s = Session {
                id,
                start: t,
                end,
                acc,
                dirty: track,
            };
            v.insert(lo, s);
            return;
        }
        // Merge sessions lo+1..hi into lo (their due entries go stale).
        for _ in lo + 1..hi {
            let other = v.remove(lo + 1);
            let s = &mut v[lo];
            agg.merge(&mut s.acc, other.acc);
            s.end = s.end.max(other.end);
            book.open -= 1;
        }
        let s = &mut v[lo];
        s.start = s.start.min(t);
        s.end = s.end.max(end);
        agg.add(&mut s.acc, value);
        if track && !s.dirty {
            s.dirty = true;
            book.dirty.push((key, s.id));
        }
    }

    /// Drops stale update-mode entries once they could outnumber the open sessions:
    /// amortized O(1) per entry.
    #[inline]
    fn prune_dirty(&mut self) {
        if self.book.dirty.len() <= 2 * self.book.open + 64 {
            return;
        }
        let by_key = &self.by_key;
        self.book.dirty.retain(|(key, id)| {
            by_key
                .get(key)
                .is_some_and(|v| v.iter().any(|s| s.id == *id && s.dirty))
        });
    }
}

/// Where a closed window's result goes, by output mode.
#[inline]
fn close_one<K, O, E: Emit<WindowResult<K, O>>>(
    mode: OutputMode,
    table: &mut Vec<WindowResult<K, O>>,
    out: &mut E,
    row: WindowResult<K, O>,
    dirty: bool,
) {
    match mode {
        OutputMode::Append => out.emit(row),
        OutputMode::Update => {
            if dirty {
                out.emit(row);
            }
        }
        OutputMode::Complete => table.push(row),
    }
}

impl<K, V, Ag, Ts> WindowAggregate<K, V, Ag, Ts>
where
    K: Hash + Eq + Clone,
    V: Serialize,
    Ag: Aggregator<V>,
{
    #[cold]
    fn late(&self, record: &V, t: DateTime<Utc>) -> DeadLetter {
        let t_us = t.timestamp_micros();
        self.late_at(record, t, t_us)
    }

    #[cold]
    fn late_at(&self, record: &V, t: DateTime<Utc>, t_us: i64) -> DeadLetter {
        let wm = self
            .watermark()
            .map_or_else(|| "none".to_string(), |w| w.to_string());
        let lateness = TimeDelta::microseconds(self.lateness);
        let message = match self.windows.kind {
            Kind::Fixed { size, slide } => {
                let start = t_us.div_euclid(slide) * slide;
                let w = to_window(start, start.saturating_add(size));
                let which = if slide == size {
                    "its window"
                } else {
                    "all its windows closed; the last one,"
                };
                format!(
                    "record with event time {t} is late: {which} {w} closed at watermark {wm} (allowed lateness {lateness})"
                )
            }
            Kind::Session { gap } => {
                let w = to_window(t_us, t_us.saturating_add(gap));
                format!(
                    "record with event time {t} is late: it is more than the allowed lateness ({lateness}) behind watermark {wm} and outside every open session of its key, so its session window {w} could touch one that has closed"
                )
            }
        };
        DeadLetter::rejected(
            RecordError::new(RecordErrorKind::Late, STAGE, message, Location::default()),
            serde_json::to_value(record).ok(),
        )
    }
}

impl<K, V, Ag, Ts, R> Transform for WindowAggregate<K, V, Ag, Ts>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    V: Serialize,
    Ag: Aggregator<V>,
    Ag::Output: Clone + Serialize + DeserializeOwned,
    Ts: FnMut(&V) -> R,
    R: EventTimestamp,
{
    type In = (K, V);
    type Out = WindowResult<K, Ag::Output>;

    #[inline(always)]
    fn process<E: Emit<Self::Out>>(&mut self, (key, value): (K, V), out: &mut E) {
        let t = (self.timestamp)(&value);
        let t_us = t.unix_micros();
        // The hot path, small enough to inline into the caller's loop: a record of the
        // newest tumbling window, which is still open. Everything else is out of line.
        // (The fast range lies inside [MIN_US, MAX_US], so an unclamped time outside it
        // takes the slow path, which clamps.)
        if let State::Fixed(st) = &mut self.state
            && st.fast_lo <= t_us
            && t_us < st.fast_hi
        {
            let track = self.mode == OutputMode::Update;
            st.add_last(&self.agg, track, key, value);
            return;
        }
        self.process_slow(key, value, t, t_us.clamp(MIN_US, MAX_US), out);
    }

    fn on_watermark<E: Emit<Self::Out>>(&mut self, watermark: DateTime<Utc>, out: &mut E) {
        let wm = if watermark == DateTime::<Utc>::MAX_UTC {
            END
        } else {
            watermark.timestamp_micros()
        };
        if wm <= self.watermark {
            return;
        }
        self.watermark = wm;
        let lateness = self.lateness;
        let (agg, mode, table) = (&self.agg, self.mode, &mut self.table);
        match &mut self.state {
            State::Fixed(st) => {
                let size = st.size;
                let closed = st
                    .panes
                    .iter()
                    .take_while(|p| !window_open(p.start + size, lateness, wm))
                    .count();
                for mut pane in st.panes.drain(..closed) {
                    let window = to_window(pane.start, pane.start + st.size);
                    for (key, slot) in pane.slots.drain() {
                        let row = WindowResult {
                            key,
                            window,
                            value: agg.finish(&slot.acc),
                        };
                        close_one(mode, table, out, row, slot.dirty);
                    }
                    if st.spare.len() < MAX_SPARE {
                        st.spare.push(pane.slots);
                    }
                }
                if wm == END {
                    st.spare = Vec::new();
                    st.panes = Vec::new();
                }
                st.refresh(lateness, wm);
            }
            State::Session(st) => {
                while let Some(entry) = st.book.due.first_entry() {
                    if session_open(*entry.key(), lateness, wm) {
                        break;
                    }
                    let mut due = entry.remove();
                    for (id, key) in due.drain(..) {
                        let Some(v) = st.by_key.get_mut(&key) else {
                            continue; // stale: merged into a session with its own entry
                        };
                        let Some(i) = v.iter().position(|s| s.id == id) else {
                            continue;
                        };
                        if session_open(v[i].end, lateness, wm) {
                            let end = v[i].end;
                            st.book.file(end, id, key);
                            continue;
                        }
                        let s = v.remove(i);
                        if v.is_empty() {
                            st.by_key.remove(&key);
                        }
                        st.book.open -= 1;
                        let row = WindowResult {
                            key,
                            window: to_window(s.start, s.end),
                            value: agg.finish(&s.acc),
                        };
                        close_one(mode, table, out, row, s.dirty);
                    }
                    if st.book.spare.len() < MAX_SPARE_DUE {
                        st.book.spare.push(due);
                    }
                }
                if wm == END {
                    st.by_key = HashMap::new();
                    st.book.due = BTreeMap::new();
                    st.book.spare = Vec::new();
                    st.book.dirty = Vec::new();
                }
            }
        }
    }

    fn flush<E: Emit<Self::Out>>(&mut self, out: &mut E) {
        let agg = &self.agg;
        match self.mode {
            OutputMode::Append => {}
            OutputMode::Update => match &mut self.state {
                State::Fixed(st) => {
                    for pane in &mut st.panes {
                        let window = to_window(pane.start, pane.start + st.size);
                        for key in pane.dirty.drain(..) {
                            if let Some(slot) = pane.slots.get_mut(&key).filter(|s| s.dirty) {
                                slot.dirty = false;
                                out.emit(WindowResult {
                                    key,
                                    window,
                                    value: agg.finish(&slot.acc),
                                });
                            }
                        }
                    }
                }
                State::Session(st) => {
                    for (key, id) in st.book.dirty.drain(..) {
                        let found = st
                            .by_key
                            .get_mut(&key)
                            .and_then(|v| v.iter_mut().find(|s| s.id == id && s.dirty));
                        if let Some(s) = found {
                            s.dirty = false;
                            out.emit(WindowResult {
                                key,
                                window: to_window(s.start, s.end),
                                value: agg.finish(&s.acc),
                            });
                        }
                    }
                }
            },
            OutputMode::Complete => {
                for row in &self.table {
                    out.emit(row.clone());
                }
                match &self.state {
                    State::Fixed(st) => {
                        for pane in &st.panes {
                            let window = to_window(pane.start, pane.start + st.size);
                            for (key, slot) in &pane.slots {
                                out.emit(WindowResult {
                                    key: key.clone(),
                                    window,
                                    value: agg.finish(&slot.acc),
                                });
                            }
                        }
                    }
                    State::Session(st) => {
                        for (key, sessions) in &st.by_key {
                            for s in sessions.iter() {
                                out.emit(WindowResult {
                                    key: key.clone(),
                                    window: to_window(s.start, s.end),
                                    value: agg.finish(&s.acc),
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> Result<Value> {
        let mut snap = SnapshotRef {
            windows: self.windows.kind,
            watermark: (self.watermark != NO_WATERMARK).then_some(self.watermark),
            panes: Vec::new(),
            sessions: Vec::new(),
            table: &self.table,
        };
        match &self.state {
            State::Fixed(st) => {
                snap.panes = st
                    .panes
                    .iter()
                    .map(|p| {
                        let slots = p.slots.iter().map(|(k, s)| (k, &s.acc, s.dirty));
                        (p.start, slots.collect())
                    })
                    .collect();
            }
            State::Session(st) => {
                snap.sessions = st
                    .by_key
                    .iter()
                    .map(|(k, v)| {
                        let v = v.iter().map(|s| (s.start, s.end, &s.acc, s.dirty));
                        (k, v.collect())
                    })
                    .collect();
            }
        }
        serde_json::to_value(&snap).map_err(|e| Error::snapshot_failed(STAGE, e))
    }

    fn restore(&mut self, state: Value) -> Result<()> {
        self.state = State::new(self.windows.kind);
        self.table.clear();
        self.watermark = NO_WATERMARK;
        if state.is_null() {
            return Ok(());
        }
        let snap: SnapshotOwned<K, Ag::Acc, Ag::Output> =
            serde_json::from_value(state).map_err(|e| Error::restore_failed(STAGE, e))?;
        if snap.windows != self.windows.kind {
            let theirs = Windows { kind: snap.windows };
            return Err(Error::restore_failed(
                STAGE,
                format!(
                    "the snapshot holds {theirs} windows, but this operator has {} windows",
                    self.windows
                ),
            ));
        }
        self.watermark = snap.watermark.unwrap_or(NO_WATERMARK);
        // What a snapshot of another output mode holds for that mode only.
        let track = self.mode == OutputMode::Update;
        if self.mode == OutputMode::Complete {
            self.table = snap.table;
        }
        match &mut self.state {
            State::Fixed(st) => {
                let mut panes = snap.panes;
                panes.sort_by_key(|p| p.0);
                for (start, entries) in panes {
                    let mut slots = HashMap::with_capacity(entries.len());
                    let mut dirty = Vec::new();
                    for (key, acc, changed) in entries {
                        let changed = changed && track;
                        if changed {
                            dirty.push(key.clone());
                        }
                        let slot = Slot {
                            acc,
                            dirty: changed,
                        };
                        slots.insert(key, slot);
                    }
                    st.panes.push(Pane {
                        start,
                        slots,
                        dirty,
                    });
                }
                st.refresh(self.lateness, self.watermark);
            }
            State::Session(st) => {
                for (key, mut sessions) in snap.sessions {
                    sessions.sort_by_key(|s| s.0);
                    let mut v = Vec::with_capacity(sessions.len());
                    for (start, end, acc, dirty) in sessions {
                        let dirty = dirty && track;
                        let id = st.book.register(&key, end, dirty);
                        v.push(Session {
                            id,
                            start,
                            end,
                            acc,
                            dirty,
                        });
                    }
                    st.by_key.insert(key, KeySessions::from_vec(v));
                }
            }
        }
        Ok(())
    }
}

impl<K, V, Ag, Ts> WindowAggregate<K, V, Ag, Ts>
where
    K: Hash + Eq + Clone,
    V: Serialize,
    Ag: Aggregator<V>,
{
    /// [`Transform::process`] for all but an open tumbling window: sliding windows,
    /// sessions, late records.
    #[inline(never)]
    fn process_slow<R: EventTimestamp, E: Emit<WindowResult<K, Ag::Output>>>(
        &mut self,
        key: K,
        value: V,
        t: R,
        t_us: i64,
        out: &mut E,
    ) {
        let (lateness, wm) = (self.lateness, self.watermark);
        let track = self.mode == OutputMode::Update;
        let agg = &self.agg;
        let rejected = match &mut self.state {
            State::Fixed(st) => {
                let last = st.last_start(t_us);
                let size = st.size;
                let rejected = if !window_open(last + size, lateness, wm) {
                    Some(value)
                } else if st.slide == size {
                    st.add(agg, track, last, key, Part::Record(value));
                    None
                } else {
                    // Sliding: the open windows containing t start at last, last - slide, ..
                    let mut n = 1;
                    let mut s = last - st.slide;
                    while s > t_us - size && window_open(s + size, lateness, wm) {
                        n += 1;
                        s -= st.slide;
                    }
                    if n == 1 {
                        st.add(agg, track, last, key, Part::Record(value));
                    } else {
                        let one = Part::Record(value).into_acc(agg);
                        let mut start = last;
                        for _ in 1..n {
                            st.add(agg, track, start, key.clone(), Part::Partial(one.clone()));
                            start -= st.slide;
                        }
                        st.add::<V, Ag>(agg, track, start, key, Part::Partial(one));
                    }
                    None
                };
                st.refresh(lateness, wm);
                rejected
            }
            State::Session(st) => {
                let on_time = wm != END && t_us.saturating_add(lateness) >= wm;
                if on_time || st.inside(&key, t_us) {
                    st.add(agg, track, key, t_us, value);
                    if track {
                        st.prune_dirty();
                    }
                    None
                } else {
                    Some(value)
                }
            }
        };
        if let Some(value) = rejected {
            let letter = match t.to_datetime() {
                Some(dt) => self.late(&value, dt),
                None => self.late_at(&value, to_time(t_us), t_us),
            };
            out.dead_letter(letter);
        }
    }
}

/// A window start and its `(key, accumulator, dirty)` entries.
type PaneSnapshot<K, A> = (i64, Vec<(K, A, bool)>);
/// A key and its `(start, end, accumulator, dirty)` sessions.
type SessionsSnapshot<K, A> = (K, Vec<(i64, i64, A, bool)>);

/// The snapshot format: `panes` = `[[start_us, [[key, acc, dirty], ..]], ..]` for
/// tumbling and sliding windows, `sessions` = `[[key, [[start_us, end_us, acc,
/// dirty], ..]], ..]` for sessions; `watermark` in microseconds (`i64::MAX` = end of
/// input); `table` = complete mode's closed results.
#[derive(Serialize)]
struct SnapshotRef<'a, K, A, O> {
    windows: Kind,
    watermark: Option<i64>,
    panes: Vec<PaneSnapshot<&'a K, &'a A>>,
    sessions: Vec<SessionsSnapshot<&'a K, &'a A>>,
    table: &'a [WindowResult<K, O>],
}

#[derive(Deserialize)]
struct SnapshotOwned<K, A, O> {
    windows: Kind,
    watermark: Option<i64>,
    panes: Vec<PaneSnapshot<K, A>>,
    sessions: Vec<SessionsSnapshot<K, A>>,
    table: Vec<WindowResult<K, O>>,
}
