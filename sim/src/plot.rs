//! `scaler simulate --plot FILE.png`: queue depth and fleet size over time, one line per policy,
//! drawn with plotters into a PNG. Text needs a TrueType font from the system (DejaVu Sans by
//! default, or `FLOTILLA_PLOT_FONT`).

use super::Outcome;
use thiserror::Error;

/// Why a plot could not be drawn.
#[derive(Debug, Error)]
pub enum PlotError {
    #[error("--plot needs a TrueType font: install fonts-dejavu-core or set FLOTILLA_PLOT_FONT")]
    NoFont,
    #[error("cannot read font {path}: {source}")]
    ReadFont {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a usable TrueType font")]
    BadFont(String),
    #[error("drawing: {0}")]
    Drawing(String),
}

type Result<T> = std::result::Result<T, PlotError>;

/// plotters' drawing errors are generic over the backend; their text is all they share.
fn drawing<E: std::fmt::Display>(error: E) -> PlotError {
    PlotError::Drawing(error.to_string())
}
use plotters::prelude::*;
use std::path::Path;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<()> {
    let path = std::env::var("FLOTILLA_PLOT_FONT")
        .ok()
        .or_else(|| {
            FONT_CANDIDATES
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .ok_or(PlotError::NoFont)?;
    let bytes = std::fs::read(&path).map_err(|source| PlotError::ReadFont {
        path: path.clone(),
        source,
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::BadFont(path.clone()))?;
    Ok(())
}

const COLORS: [RGBColor; 3] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
];

pub fn render(outcomes: &[Outcome], title: &str, path: &Path) -> Result<()> {
    register_font()?;
    let hours = outcomes
        .iter()
        .flat_map(|o| o.series.last())
        .map(|r| r.time_s / 3600.0)
        .fold(1.0, f64::max);
    let max_queue = outcomes
        .iter()
        .flat_map(|o| &o.series)
        .map(|r| r.queued)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_fleet = outcomes
        .iter()
        .flat_map(|o| &o.series)
        .map(|r| r.instances)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(drawing)?;
    let panels = root.split_evenly((2, 1));
    for (panel, (label, max, pick)) in panels.iter().zip([
        (
            "queued jobs",
            max_queue,
            (|r: &super::SeriesRow| r.queued) as fn(&super::SeriesRow) -> u32,
        ),
        (
            "instances (launched, not yet gone)",
            max_fleet,
            |r: &super::SeriesRow| r.instances,
        ),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .caption(label, ("sans-serif", 18))
            .build_cartesian_2d(0f64..hours, 0f64..max * 1.05)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc("hours")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(drawing)?;
        for (index, outcome) in outcomes.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    outcome
                        .series
                        .iter()
                        .map(|r| (r.time_s / 3600.0, pick(r) as f64)),
                    color.stroke_width(2),
                ))
                .map_err(drawing)?
                .label(outcome.policy.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(drawing)?;
    }
    root.present()
        .map_err(|e| PlotError::Drawing(format!("writing {}: {e}", path.display())))?;
    Ok(())
}
