//! The overview's chart: an agent type's sampled queue depth, running jobs and fleet size over
//! the last hours as an inline SVG drawn on the server (no script, no image files). Pure:
//! samples in, markup out.

use crate::hub::Sample;
use maud::{html, Markup};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 160.0;
/// Room for the axis labels.
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 18.0;

/// One line of the chart: its legend name, CSS class and value per sample.
struct Series {
    name: &'static str,
    class: &'static str,
    value: fn(&Sample) -> u64,
}

const SERIES: [Series; 3] = [
    Series {
        name: "queued",
        class: "c-queued",
        value: |s| s.queued,
    },
    Series {
        name: "running",
        class: "c-running",
        value: |s| s.running,
    },
    Series {
        name: "agents",
        class: "c-agents",
        value: |s| s.agents,
    },
];

/// The `points` attribute of one series' polyline, scaled to the chart's box.
fn points(
    samples: &[Sample],
    value: fn(&Sample) -> u64,
    top: u64,
    (from, to): (i64, i64),
) -> String {
    let span = (to - from).max(1) as f64;
    let plot_width = WIDTH - LEFT;
    let plot_height = HEIGHT - BOTTOM;
    samples
        .iter()
        .map(|sample| {
            let x = LEFT + (sample.at - from) as f64 / span * plot_width;
            let y = plot_height - value(sample) as f64 / top.max(1) as f64 * (plot_height - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The chart of `samples` (oldest first) for `title`, or a note when there are too few.
pub(super) fn chart(title: &str, samples: &[Sample]) -> Markup {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return html! { p.note { "No samples yet: the chart fills in as the hub runs." } };
    };
    let top = samples
        .iter()
        .flat_map(|s| SERIES.iter().map(move |series| (series.value)(s)))
        .max()
        .unwrap_or(0)
        .max(1);
    let range = (first.at, last.at);
    let span = super::layout::duration(last.at - first.at);
    let label = format!("{title}: queue depth, running jobs and agents over the last {span}");
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(label) {
                title { (label) }
                line.axis x1=(LEFT) y1="0" x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
                line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                text x="2" y="12" { (top) }
                text x="2" y=(HEIGHT - BOTTOM) { "0" }
                text x=(LEFT) y=(HEIGHT - 2.0) { "-" (span) }
                text x=(WIDTH - 30.0) y=(HEIGHT - 2.0) { "now" }
                @for series in &SERIES {
                    polyline class=(series.class) fill="none"
                        points=(points(samples, series.value, top, range)) {}
                }
            }
            figcaption {
                @for series in &SERIES {
                    span class=(format!("key {}", series.class)) { (series.name) }
                    " "
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, queued: u64) -> Sample {
        Sample {
            at,
            queued,
            running: 1,
            agents: 2,
        }
    }

    #[test]
    fn chart_draws_one_point_per_sample_scaled_to_the_box() {
        let samples = [sample(0, 0), sample(60, 4), sample(120, 2)];
        let line = points(&samples, |s| s.queued, 4, (0, 120));
        assert_eq!(line, "36.0,142.0 338.0,4.0 640.0,73.0");
        let markup = chart("gpu", &samples).into_string();
        assert_eq!(markup.matches("<polyline").count(), 3);
        assert!(markup.contains("over the last 2m"));
    }

    #[test]
    fn chart_without_samples_says_so() {
        assert!(chart("gpu", &[]).into_string().contains("No samples yet"));
    }
}
