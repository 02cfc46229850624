//! A progress bar for batch runs (feature `progress`).
//!
//! The batch executor makes one [`ProgressBar`] per run, tells it after each batch how
//! many records were read and what the source says of its
//! [`progress`](crate::Source::progress), and finishes it at the end. With the
//! `progress` feature it is an [`indicatif`] bar drawn on stderr (hidden when stderr is
//! not a terminal) showing the pipeline id, the records read and the records per
//! second, and, when the source knows its `total`, a bar with the percentage and the
//! ETA in the source's unit (bytes for a file); otherwise a spinner with the elapsed
//! time.
//! Without the feature it is a zero-sized type whose methods do nothing, so the
//! executor needs no `cfg`.
//!
//! Cost: the executor calls it once per batch, never per record; with the feature the
//! bar itself is redrawn at most every [`REFRESH`] (the latest numbers are kept and
//! shown at the next refresh or at [`finish`](ProgressBar::finish)).

use crate::source::SourceProgress;

#[cfg(feature = "progress")]
use std::time::{Duration, Instant};

/// The shortest time between two updates of the drawn bar.
#[cfg(feature = "progress")]
const REFRESH: Duration = Duration::from_millis(100);

/// The progress bar of one batch run: an [`indicatif::ProgressBar`] on stderr.
///
/// It switches between a bar (the source gives a `total`) and a spinner (it does not)
/// as the source's progress says, and copes with totals that grow or shrink. Dropped
/// without [`finish`](ProgressBar::finish) (a failed run), it is left as last drawn,
/// never shown as complete.
#[cfg(feature = "progress")]
pub(crate) struct ProgressBar {
    bar: indicatif::ProgressBar,
    /// What the bar is drawn as now.
    shape: Shape,
    /// When the run started (for records/s).
    started: Instant,
    /// When the drawn bar was last updated.
    refreshed: Instant,
    /// The latest records read, shown at the next refresh.
    records: u64,
    /// The latest source progress, shown at the next refresh.
    latest: Option<SourceProgress>,
}

/// The progress bar of one batch run: without the `progress` feature, a zero-sized
/// type whose methods do nothing.
#[cfg(not(feature = "progress"))]
#[derive(Debug)]
pub(crate) struct ProgressBar;

#[cfg(not(feature = "progress"))]
impl ProgressBar {
    /// Does nothing (no `progress` feature).
    #[inline]
    pub(crate) fn new(_pipeline_id: &str, _initial: Option<SourceProgress>) -> Self {
        ProgressBar
    }

    /// Does nothing (no `progress` feature).
    #[inline]
    pub(crate) fn update(&mut self, _records_read: u64, _progress: Option<SourceProgress>) {}

    /// Does nothing (no `progress` feature).
    #[inline]
    pub(crate) fn finish(&mut self, _records_read: u64) {}
}

/// What a [`ProgressBar`] is drawn as.
#[cfg(feature = "progress")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The total is unknown: a spinner with records and records/s.
    Spinner,
    /// The total is known: a bar in this unit, with percentage and ETA.
    Bar(&'static str),
}

#[cfg(feature = "progress")]
impl Shape {
    fn of(progress: Option<SourceProgress>) -> Self {
        match progress {
            Some(SourceProgress {
                total: Some(_),
                unit,
                ..
            }) => Shape::Bar(unit),
            _ => Shape::Spinner,
        }
    }

    /// The indicatif template drawing this shape. The bar leaves out the elapsed time
    /// (it shows the ETA) so that it fits an 80-column terminal.
    fn template(self) -> String {
        const HEAD: &str = "{spinner:.green} {prefix:.bold}";
        const TAIL: &str = "{percent}% ETA {eta} · {msg}";
        match self {
            Shape::Spinner => format!("{HEAD} [{{elapsed_precise}}] {{msg}}"),
            Shape::Bar("bytes") => {
                format!("{HEAD} [{{wide_bar:.cyan/blue}}] {{bytes}}/{{total_bytes}} {TAIL}")
            }
            Shape::Bar(unit) => format!(
                "{HEAD} [{{wide_bar:.cyan/blue}}] {{human_pos}}/{{human_len}} {} {TAIL}",
                // A literal in the template: its braces are doubled.
                unit.replace('{', "{{").replace('}', "}}")
            ),
        }
    }

    /// The indicatif style drawing this shape (indicatif's default one if the template
    /// does not parse, which the tests rule out).
    fn style(self) -> indicatif::ProgressStyle {
        use indicatif::ProgressStyle;
        match ProgressStyle::with_template(&self.template()) {
            Ok(style) => style.progress_chars("=> "),
            Err(_) if self == Shape::Spinner => ProgressStyle::default_spinner(),
            Err(_) => ProgressStyle::default_bar(),
        }
    }
}

#[cfg(feature = "progress")]
impl ProgressBar {
    /// A progress bar on stderr for the run of `pipeline_id`, drawn from the source's
    /// `initial` progress (a bar if it has a total, a spinner otherwise).
    pub(crate) fn new(pipeline_id: &str, initial: Option<SourceProgress>) -> Self {
        Self::with_draw_target(
            pipeline_id,
            initial,
            indicatif::ProgressDrawTarget::stderr(),
        )
    }

    /// [`new`](Self::new), drawing on `target`.
    fn with_draw_target(
        pipeline_id: &str,
        initial: Option<SourceProgress>,
        target: indicatif::ProgressDrawTarget,
    ) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(None, target)
            .with_prefix(pipeline_id.to_owned())
            // Dropped unfinished (a failed run): leave the progress as it is, instead
            // of indicatif's default of showing it complete.
            .with_finish(indicatif::ProgressFinish::Abandon);
        let now = Instant::now();
        let mut this = ProgressBar {
            bar,
            shape: Shape::Spinner,
            started: now,
            refreshed: now,
            records: 0,
            latest: initial,
        };
        this.bar.set_style(Shape::Spinner.style());
        this.draw(now);
        if !this.bar.is_hidden() {
            // Keeps the spinner and the elapsed time moving while a batch is slow. No
            // thread when nothing is drawn.
            this.bar.enable_steady_tick(REFRESH);
        }
        this
    }

    /// After a batch: `records_read` so far in the run, and the source's `progress`.
    /// Cheap: the drawn bar changes at most every [`REFRESH`].
    pub(crate) fn update(&mut self, records_read: u64, progress: Option<SourceProgress>) {
        self.update_at(records_read, progress, Instant::now());
    }

    /// [`update`](Self::update) at time `now`.
    fn update_at(&mut self, records_read: u64, progress: Option<SourceProgress>, now: Instant) {
        self.records = records_read;
        self.latest = progress;
        if now.saturating_duration_since(self.refreshed) >= REFRESH {
            self.draw(now);
        }
    }

    /// The run is over (completed or stopped) after reading `records_read` records:
    /// shows the last progress, the total records and the average records/s, and
    /// stops drawing. The bar keeps its last position (a stopped run is not shown as
    /// complete).
    pub(crate) fn finish(&mut self, records_read: u64) {
        if self.bar.is_finished() {
            return;
        }
        self.records = records_read;
        let now = Instant::now();
        self.draw(now);
        self.bar.abandon_with_message(self.message(now));
    }

    /// Shows the latest numbers.
    fn draw(&mut self, now: Instant) {
        self.refreshed = now;
        let shape = Shape::of(self.latest);
        if shape != self.shape {
            self.shape = shape;
            self.bar.set_style(shape.style());
            if shape == Shape::Spinner {
                self.bar.unset_length();
            }
        }
        if let Some(SourceProgress { done, total, .. }) = self.latest {
            if let Some(total) = total {
                // A total below what is done (a shrunk file) would draw past the end.
                self.bar.set_length(total.max(done));
            }
            self.bar.set_position(done);
        }
        self.bar.set_message(self.message(now));
    }

    /// `"{records} records ({rate}/s)"`, the rate (records/s) averaged over the run; only
    /// `"{rate} records/s"` when the bar already counts records.
    fn message(&self, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let rate = (secs >= 1e-3).then(|| human_rate(self.records as f64 / secs));
        let records = indicatif::HumanCount(self.records);
        match (self.shape, rate) {
            (Shape::Bar("records"), Some(rate)) => format!("{rate} records/s"),
            (Shape::Bar("records"), None) => String::new(),
            (_, Some(rate)) => format!("{records} records ({rate}/s)"),
            (_, None) => format!("{records} records"),
        }
    }
}

#[cfg(feature = "progress")]
impl std::fmt::Debug for ProgressBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressBar")
            .field("prefix", &self.bar.prefix())
            .field("shape", &self.shape)
            .field("records", &self.records)
            .field("latest", &self.latest)
            .finish_non_exhaustive()
    }
}

/// A rate, short: `"950"`, `"12.3k"`, `"4.5M"`.
#[cfg(feature = "progress")]
fn human_rate(rate: f64) -> String {
    if rate >= 999_950.0 {
        format!("{:.1}M", rate / 1e6)
    } else if rate >= 9_999.5 {
        format!("{:.1}k", rate / 1e3)
    } else if rate >= 99.5 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(done: u64, total: Option<u64>) -> Option<SourceProgress> {
        Some(SourceProgress {
            done,
            total,
            unit: "bytes",
        })
    }

    /// The public API, with and without the feature: nothing panics, whatever the
    /// source says.
    #[test]
    fn any_sequence_of_updates_is_accepted() {
        let cases: &[&[Option<SourceProgress>]] = &[
            // No progress at all, and zero records.
            &[],
            &[None, None],
            // Known, then unknown, then known total; totals that grow and shrink; done
            // past the total; done going backwards; a zero total.
            &[
                bytes(0, Some(100)),
                bytes(50, Some(100)),
                bytes(60, None),
                bytes(70, Some(200)),
                bytes(180, Some(90)),
                bytes(10, Some(90)),
                bytes(0, Some(0)),
                None,
            ],
            // Another unit, and units that change.
            &[
                Some(SourceProgress {
                    done: 3,
                    total: Some(10),
                    unit: "rows",
                }),
                Some(SourceProgress {
                    done: 4,
                    total: Some(10),
                    unit: "{weird}",
                }),
                bytes(u64::MAX, Some(u64::MAX)),
            ],
        ];
        for updates in cases {
            let mut bar = ProgressBar::new("p", updates.first().copied().flatten());
            for (i, p) in updates.iter().enumerate() {
                bar.update(i as u64 * 1000, *p);
            }
            bar.finish(updates.len() as u64 * 1000);
            bar.finish(0); // a second finish is harmless
        }
        {
            // Dropped without `finish`, as on a failed run.
            let mut unfinished = ProgressBar::new("dropped", bytes(0, Some(1)));
            unfinished.update(0, None);
        }
    }

    #[cfg(not(feature = "progress"))]
    #[test]
    fn without_the_feature_it_is_zero_sized() {
        assert_eq!(std::mem::size_of::<ProgressBar>(), 0);
    }

    #[cfg(feature = "progress")]
    mod drawn {
        use super::super::*;
        use super::bytes;

        fn hidden(initial: Option<SourceProgress>) -> ProgressBar {
            let target = indicatif::ProgressDrawTarget::hidden();
            ProgressBar::with_draw_target("orders", initial, target)
        }

        #[test]
        fn a_known_total_draws_a_bar_and_an_unknown_one_a_spinner() {
            let mut bar = hidden(bytes(0, Some(1000)));
            assert_eq!(bar.shape, Shape::Bar("bytes"));
            assert_eq!(bar.bar.length(), Some(1000));
            assert_eq!(bar.bar.position(), 0);
            assert_eq!(bar.bar.prefix(), "orders");

            let t0 = bar.started;
            bar.update_at(10, bytes(400, Some(1000)), t0 + REFRESH);
            assert_eq!(bar.bar.position(), 400);
            assert_eq!(bar.records, 10);

            bar.update_at(20, None, t0 + 2 * REFRESH);
            assert_eq!(bar.shape, Shape::Spinner);
            assert_eq!(bar.bar.length(), None);

            bar.update_at(30, bytes(500, Some(2000)), t0 + 3 * REFRESH);
            assert_eq!(bar.shape, Shape::Bar("bytes"));
            assert_eq!(bar.bar.length(), Some(2000));

            let rows = Some(SourceProgress {
                done: 5,
                total: Some(9),
                unit: "rows",
            });
            bar.update_at(40, rows, t0 + 4 * REFRESH);
            assert_eq!(bar.shape, Shape::Bar("rows"));
            assert_eq!(bar.bar.length(), Some(9));
        }

        #[test]
        fn no_initial_progress_is_a_spinner() {
            let bar = hidden(None);
            assert_eq!(bar.shape, Shape::Spinner);
            assert_eq!(bar.bar.length(), None);
            let bar = hidden(bytes(7, None));
            assert_eq!(bar.shape, Shape::Spinner);
        }

        #[test]
        fn updates_are_drawn_at_most_every_refresh_and_the_last_one_at_finish() {
            let mut bar = hidden(bytes(0, Some(100)));
            let t0 = bar.started;
            bar.update_at(1, bytes(10, Some(100)), t0 + REFRESH / 2);
            assert_eq!(bar.bar.position(), 0, "too soon: not drawn");
            bar.update_at(2, bytes(20, Some(100)), t0 + REFRESH);
            assert_eq!(bar.bar.position(), 20);
            bar.update_at(3, bytes(30, Some(100)), t0 + REFRESH + REFRESH / 2);
            assert_eq!(bar.bar.position(), 20, "too soon: not drawn");
            bar.finish(3);
            assert!(bar.bar.is_finished());
            assert_eq!(bar.bar.position(), 30, "finish shows the latest progress");
            assert!(
                bar.bar.message().starts_with("3 records"),
                "{}",
                bar.bar.message()
            );
        }

        #[test]
        fn a_stopped_run_is_not_shown_complete() {
            let mut bar = hidden(bytes(0, Some(100)));
            bar.update(1, bytes(40, Some(100)));
            bar.finish(1);
            assert_eq!(bar.bar.position(), 40);
            assert_eq!(bar.bar.length(), Some(100));
        }

        #[test]
        fn a_total_below_done_draws_a_full_bar_not_past_it() {
            let mut bar = hidden(bytes(0, Some(100)));
            let t0 = bar.started;
            bar.update_at(1, bytes(80, Some(50)), t0 + REFRESH);
            assert_eq!(bar.bar.length(), Some(80));
            assert_eq!(bar.bar.position(), 80);
        }

        #[test]
        fn the_message_has_records_and_records_per_second() {
            let mut bar = hidden(None);
            let t0 = bar.started;
            bar.update_at(25_000, None, t0 + std::time::Duration::from_secs(2));
            assert_eq!(bar.bar.message(), "25,000 records (12.5k/s)");
            bar.update_at(0, None, t0 + std::time::Duration::from_secs(3));
            assert_eq!(bar.bar.message(), "0 records (0.0/s)");
        }

        #[test]
        fn a_bar_counting_records_shows_only_the_rate() {
            let records = |done| {
                Some(SourceProgress {
                    done,
                    total: Some(100),
                    unit: "records",
                })
            };
            let mut bar = hidden(records(0));
            let t0 = bar.started;
            bar.update_at(50, records(50), t0 + std::time::Duration::from_secs(2));
            assert_eq!(bar.bar.message(), "25.0 records/s");
        }

        #[test]
        fn rates_are_short() {
            assert_eq!(human_rate(0.24), "0.2");
            assert_eq!(human_rate(99.0), "99.0");
            assert_eq!(human_rate(950.4), "950");
            assert_eq!(human_rate(9_999.0), "9999");
            assert_eq!(human_rate(12_345.0), "12.3k");
            assert_eq!(human_rate(4_500_000.0), "4.5M");
        }

        #[test]
        fn every_style_template_parses() {
            for shape in [
                Shape::Spinner,
                Shape::Bar("bytes"),
                Shape::Bar("rows"),
                Shape::Bar("{odd} unit}"),
            ] {
                let template = shape.template();
                let parsed = indicatif::ProgressStyle::with_template(&template);
                assert!(parsed.is_ok(), "{shape:?}: {template}");
            }
        }
    }
}
