//! Rendering an [`EmpiricalReport`]: a plain table and a self-contained SVG.

use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use super::duration::format_duration;
use super::empirical::{EmpiricalReport, Measurement};
use crate::executor::ExecutorKind;

const WIDTH: f64 = 960.0;
const PANEL_W: f64 = 300.0;
const PANEL_GAP: f64 = 20.0;
const CHART_TOP: f64 = 96.0;
const PLOT_TOP: f64 = CHART_TOP + 48.0;
const PLOT_H: f64 = 220.0;
const PLOT_LEFT: f64 = 56.0;
const PLOT_W: f64 = 230.0;

/// Escapes text for SVG/XML content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn color(kind: ExecutorKind) -> &'static str {
    match kind {
        ExecutorKind::Batch => "#4e79a7",
        ExecutorKind::MicroBatch => "#f28e2b",
        ExecutorKind::Stream => "#59a14f",
    }
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn bytes(b: u64) -> String {
    format!("{:.1} MiB", mib(b))
}

pub(super) fn latency(d: Duration) -> String {
    if d >= Duration::from_secs(100) || d.is_zero() {
        format_duration(Duration::from_secs(d.as_secs()))
    } else if d >= Duration::from_secs(1) {
        format!("{:.3}s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}µs", d.as_micros())
    }
}

/// A power of ten of microseconds, as an axis label.
fn decade(us: f64) -> String {
    if us < 1e3 {
        format!("{us}µs")
    } else if us < 1e6 {
        format!("{}ms", us / 1e3)
    } else {
        format!("{}s", us / 1e6)
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// One bar to draw.
struct Bar<'a> {
    kind: ExecutorKind,
    metric: &'a str,
    value: f64,
    label: String,
    opacity: f64,
}

/// How values map to heights.
#[derive(Clone, Copy)]
enum Scale {
    /// Height proportional to the value, from zero to `max`.
    Linear { max: f64 },
    /// Height proportional to `log10(value)` from decade `lo` to decade `hi`.
    Log { lo: i32, hi: i32 },
}

impl Scale {
    fn linear(values: impl Iterator<Item = f64>) -> Self {
        let max = values.fold(0.0, f64::max);
        Scale::Linear {
            max: if max > 0.0 { max * 1.15 } else { 1.0 },
        }
    }

    fn log(values: impl Iterator<Item = f64>) -> Self {
        let (min, max) = values
            .filter(|v| *v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if max == 0.0 {
            return Scale::Log { lo: 0, hi: 1 };
        }
        let lo = min.log10().floor() as i32;
        let hi = (max.log10().ceil() as i32).max(lo + 1);
        Scale::Log { lo, hi }
    }

    /// The height of `value`, as a fraction of the plot (0 to 1).
    fn fraction(self, value: f64) -> f64 {
        match self {
            Scale::Linear { max } => value / max,
            Scale::Log { lo, hi } => {
                if value <= 0.0 {
                    0.0
                } else {
                    ((value.log10() - f64::from(lo)) / f64::from(hi - lo)).clamp(0.0, 1.0)
                }
            }
        }
    }

    /// Gridline values.
    fn ticks(self) -> Vec<f64> {
        match self {
            Scale::Linear { max } => (0..=4).map(|i| max * f64::from(i) / 4.0).collect(),
            Scale::Log { lo, hi } => (lo..=hi).map(|d| 10f64.powi(d)).collect(),
        }
    }

    fn attributes(self) -> String {
        match self {
            Scale::Linear { max } => format!(r#"data-scale="linear" data-max="{max}""#),
            Scale::Log { lo, hi } => format!(r#"data-scale="log" data-lo="{lo}" data-hi="{hi}""#),
        }
    }
}

struct Panel<'a> {
    index: usize,
    title: &'a str,
    bars: Vec<Bar<'a>>,
    /// Bars per executor group.
    per_group: usize,
    scale: Scale,
    /// A horizontal reference line: value and label.
    line: Option<(f64, String)>,
    axis_label: fn(f64) -> String,
    note: Option<String>,
}

impl Panel<'_> {
    fn render(&self, svg: &mut String) {
        let x0 = PANEL_GAP + self.index as f64 * (PANEL_W + PANEL_GAP);
        let left = x0 + PLOT_LEFT;
        let base = PLOT_TOP + PLOT_H;
        let _ = write!(
            svg,
            r##"<g class="panel" data-panel="{title}" {scale}><rect x="{x0}" y="{CHART_TOP}" width="{PANEL_W}" height="{h}" rx="6" fill="#fafafa" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="middle" class="h2">{title}</text>"##,
            title = escape(self.title),
            scale = self.scale.attributes(),
            h = PLOT_H + 96.0,
            tx = x0 + PANEL_W / 2.0,
            ty = CHART_TOP + 24.0,
        );
        // Axis and grid.
        for v in self.scale.ticks() {
            let y = base - PLOT_H * self.scale.fraction(v);
            let _ = write!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{lx}" y="{ly:.1}" text-anchor="end" class="axis">{label}</text>"##,
                r = left + PLOT_W,
                lx = left - 4.0,
                ly = y + 3.0,
                label = escape(&(self.axis_label)(v)),
            );
        }
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{base}" x2="{r}" y2="{base}" stroke="#888"/>"##,
            r = left + PLOT_W
        );
        let groups = self.bars.len().div_ceil(self.per_group.max(1)).max(1);
        let group_w = PLOT_W / groups as f64;
        let bar_w = (group_w - 16.0) / self.per_group as f64;
        for (i, bar) in self.bars.iter().enumerate() {
            let g = i / self.per_group;
            let j = i % self.per_group;
            let x = left + g as f64 * group_w + 8.0 + j as f64 * bar_w;
            let height = self.scale.fraction(bar.value) * PLOT_H;
            let y = base - height;
            let cx = x + bar_w / 2.0 - 1.0;
            let _ = write!(
                svg,
                r##"<rect class="bar" data-executor="{kind}" data-metric="{metric}" data-value="{value}" x="{x:.3}" y="{y:.3}" width="{w:.3}" height="{height:.3}" fill="{fill}" fill-opacity="{op}"><title>{kind} {metric}: {label}</title></rect>"##,
                kind = bar.kind,
                metric = escape(bar.metric),
                value = bar.value,
                w = (bar_w - 2.0).max(1.0),
                fill = color(bar.kind),
                op = bar.opacity,
                label = escape(&bar.label),
            );
            if self.per_group == 1 {
                let _ = write!(
                    svg,
                    r##"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle" class="value">{label}</text>"##,
                    ly = y - 4.0,
                    label = escape(&bar.label),
                );
            } else {
                // Narrow bars: the value reads upwards, above a short bar or inside
                // a tall one.
                let short = bar.metric.split_whitespace().next().unwrap_or(bar.metric);
                let (ly, class) = if height > PLOT_H * 0.5 {
                    (base - 4.0, "value inside")
                } else {
                    (y - 3.0, "value")
                };
                let _ = write!(
                    svg,
                    r##"<text x="{tx:.1}" y="{ly:.1}" transform="rotate(-90 {tx:.1} {ly:.1})" class="{class}">{metric} {label}</text>"##,
                    tx = cx + 3.0,
                    metric = escape(short),
                    label = escape(&bar.label),
                );
            }
            if j == 0 {
                let _ = write!(
                    svg,
                    r##"<text x="{cx:.1}" y="{ly}" text-anchor="middle" class="label">{kind}</text>"##,
                    cx = left + g as f64 * group_w + group_w / 2.0,
                    ly = base + 16.0,
                    kind = bar.kind,
                );
            }
        }
        if let Some((value, label)) = &self.line {
            let y = base - self.scale.fraction(*value) * PLOT_H;
            let _ = write!(
                svg,
                r##"<line class="budget" data-value="{value}" x1="{left}" y1="{y:.3}" x2="{r}" y2="{y:.3}" stroke="#d62728" stroke-width="2" stroke-dasharray="6 4"/><text x="{r}" y="{ty:.1}" text-anchor="end" class="budget-label">{label}</text>"##,
                r = left + PLOT_W,
                ty = y - 5.0,
                label = escape(label),
            );
        }
        if let Some(note) = &self.note {
            let _ = write!(
                svg,
                r##"<text x="{tx}" y="{ty}" text-anchor="middle" class="note">{note}</text>"##,
                tx = x0 + PANEL_W / 2.0,
                ty = base + 36.0,
                note = escape(note),
            );
        }
        svg.push_str("</g>");
    }
}

impl EmpiricalReport {
    /// A plain-text table of the measurements, the budget and the recommendation.
    ///
    /// The columns: executor, records read, run time, records/s, p50 and p99
    /// source-to-sink latency, the result latency compared with the budget, and peak
    /// memory (`-` where unknown).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>10} {:>12} {:>10} {:>10} {:>14} {:>12}",
            "executor",
            "records",
            "elapsed",
            "records/s",
            "p50",
            "p99",
            "result latency",
            "peak memory"
        );
        for m in &self.measurements {
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>10} {:>12} {:>10} {:>10} {:>14} {:>12}",
                m.executor.to_string(),
                m.records,
                latency(m.elapsed),
                rate(m.throughput),
                latency(m.p50),
                latency(m.p99),
                latency(m.result_latency),
                m.peak_memory.map_or_else(|| "-".to_string(), bytes),
            );
        }
        for (kind, why) in &self.not_measured {
            let _ = writeln!(out, "{:<12} not measured: {why}", kind.to_string());
        }
        let _ = writeln!(out, "budget: {}", format_duration(self.budget));
        let _ = writeln!(
            out,
            "rules recommended: {}; after measuring: {} ({} executor)",
            self.rule_based.model, self.model, self.executor
        );
        for r in &self.reasons {
            let _ = writeln!(out, "  - {r}");
        }
        out
    }

    /// A self-contained SVG: bar charts of throughput, latency (p50, p99 and result
    /// latency, with the budget as a dashed line) and peak memory per executor,
    /// then the recommendation and its reasons. No scripts, no external resources;
    /// every text is escaped. Each bar is a `rect` with `data-executor`,
    /// `data-metric` and `data-value` attributes, its height proportional to its
    /// value within its chart.
    pub fn svg(&self) -> String {
        let mut text_lines: Vec<(String, &str)> = Vec::new();
        text_lines.push((
            format!(
                "Recommendation: {} — run it with the {} executor",
                self.model, self.executor
            ),
            "h1",
        ));
        text_lines.push((
            format!(
                "Before measuring, the rules said: {}",
                self.rule_based.model
            ),
            "body",
        ));
        let not_measured = self
            .not_measured
            .iter()
            .map(|(kind, why)| format!("{kind} not measured: {why}"));
        for r in self.reasons.iter().cloned().chain(not_measured) {
            for (i, line) in wrap(&r, 130).into_iter().enumerate() {
                text_lines.push((
                    if i == 0 {
                        format!("• {line}")
                    } else {
                        format!("  {line}")
                    },
                    "body",
                ));
            }
        }
        let text_top = PLOT_TOP + PLOT_H + 90.0;
        let height = text_top + 28.0 + 18.0 * (text_lines.len() as f64 - 1.0) + 24.0;

        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif"><style>.h1{{font-size:18px;font-weight:bold;fill:#222}} .h2{{font-size:14px;font-weight:bold;fill:#333}} .axis{{font-size:10px;fill:#777}} .value{{font-size:10px;fill:#333}} .inside{{fill:white}} .label{{font-size:12px;fill:#333}} .note{{font-size:10px;fill:#666}} .body{{font-size:13px;fill:#333}} .budget-label{{font-size:11px;fill:#d62728;font-weight:bold}}</style><rect width="100%" height="100%" fill="white"/><text x="{PANEL_GAP}" y="34" class="h1">Model advisor: {id}</text><text x="{PANEL_GAP}" y="58" class="body">{sub}</text>"##,
            id = escape(&self.pipeline_id),
            sub = escape(&format!(
                "{} records per run, latency budget {}; batch, micro-batch and stream runs of the same pipeline",
                self.measurements.first().map_or(0, |m| m.records),
                format_duration(self.budget)
            )),
        );
        let ms = &self.measurements;
        Panel {
            index: 0,
            title: "Throughput (records/s)",
            bars: ms
                .iter()
                .map(|m| Bar {
                    kind: m.executor,
                    metric: "throughput",
                    value: m.throughput,
                    label: rate(m.throughput),
                    opacity: 1.0,
                })
                .collect(),
            per_group: 1,
            scale: Scale::linear(ms.iter().map(|m| m.throughput)),
            line: None,
            axis_label: |v| rate(v).trim_end_matches("/s").to_string(),
            note: Some("higher is better".into()),
        }
        .render(&mut svg);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Panel {
            index: 1,
            title: "Latency (log scale)",
            bars: ms
                .iter()
                .flat_map(|m| {
                    [
                        ("p50", m.p50, 0.35),
                        ("p99", m.p99, 0.65),
                        ("result latency", m.result_latency, 1.0),
                    ]
                    .map(|(metric, d, opacity)| Bar {
                        kind: m.executor,
                        metric,
                        value: us(d),
                        label: latency(d),
                        opacity,
                    })
                })
                .collect(),
            per_group: 3,
            scale: Scale::log(
                ms.iter()
                    .flat_map(|m| [m.p50, m.p99, m.result_latency])
                    .chain([self.budget])
                    .map(us),
            ),
            line: Some((
                us(self.budget),
                format!("budget {}", format_duration(self.budget)),
            )),
            axis_label: decade,
            note: Some("p50 and p99 per batch; result: until visible".into()),
        }
        .render(&mut svg);
        let with_memory: Vec<&Measurement> =
            ms.iter().filter(|m| m.peak_memory.is_some()).collect();
        Panel {
            index: 2,
            title: "Peak memory (MiB)",
            bars: with_memory
                .iter()
                .map(|m| {
                    let b = m.peak_memory.unwrap_or(0);
                    Bar {
                        kind: m.executor,
                        metric: "peak memory",
                        value: mib(b),
                        label: bytes(b),
                        opacity: 1.0,
                    }
                })
                .collect(),
            per_group: 1,
            scale: Scale::linear(with_memory.iter().map(|m| mib(m.peak_memory.unwrap_or(0)))),
            line: None,
            axis_label: |v| format!("{v:.1}"),
            note: Some(if with_memory.is_empty() {
                "not measured on this platform".into()
            } else {
                "process peak RSS during each run".into()
            }),
        }
        .render(&mut svg);

        let mut y = text_top;
        for (line, class) in &text_lines {
            let _ = write!(
                svg,
                r##"<text x="{PANEL_GAP}" y="{y}" class="{class}" xml:space="preserve">{t}</text>"##,
                t = escape(line)
            );
            y += if *class == "h1" { 28.0 } else { 18.0 };
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Writes [`svg`](EmpiricalReport::svg) to `path`, creating parent directories.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming the path when it cannot be written.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> crate::Result<()> {
        let path = path.as_ref();
        let io = |source: std::io::Error| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, self.svg()).map_err(io)
    }
}

impl fmt::Display for EmpiricalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;"
        );
    }

    #[test]
    fn wraps_on_words() {
        assert_eq!(wrap("aaa bbb ccc", 7), ["aaa bbb", "ccc"]);
        assert_eq!(wrap("", 7), Vec::<String>::new());
    }
}
