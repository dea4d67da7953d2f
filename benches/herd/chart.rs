//! The scenario as a picture: latency by class, direct against through
//! Corral, and refusals over time. SVG from `plotters` (its SVG backend
//! needs no font files).

use std::time::Duration;

use plotters::prelude::*;

use super::record::{refusals_over_time, summarise};
use super::{Error, Options, RunResult};

const WIDTH: u32 = 960;
const PANEL: u32 = 380;
/// Refusals are counted per bucket of this width.
const BUCKET: Duration = Duration::from_secs(5);

/// The chart of `runs` as an SVG document.
pub fn svg(options: &Options, runs: &[RunResult]) -> Result<String, Error> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, PANEL * 2)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(PANEL);
        latency(&top, options, runs)?;
        refusals(&bottom, options, runs)?;
        root.present()?;
    }
    Ok(text)
}

/// Bars to p99, a mark at p50, per class and run, on a log scale.
fn latency(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    options: &Options,
    runs: &[RunResult],
) -> Result<(), Error> {
    let per_run: Vec<_> = runs
        .iter()
        .map(|r| summarise(&options.fleet, &r.records, options.duration))
        .collect();
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64().max(1e-3));
    let all: Vec<f64> = per_run
        .iter()
        .flatten()
        .flat_map(|s| [seconds(s.p50), seconds(s.p99)])
        .flatten()
        .collect();
    let low = all.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
    let high = all.iter().copied().fold(0.0, f64::max).max(low * 10.0) * 2.0;
    let group = runs.len() as f64 + 1.0;
    let width = options.fleet.len() as f64 * group;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Answer latency by class: bar to p99, line at p50 (log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..width, (low..high).log_scale())?;
    let names: Vec<String> = options
        .fleet
        .iter()
        .map(|c| format!("{} (p{})", c.name, c.priority))
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(options.fleet.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let slot = x / group;
            let i = slot.floor() as usize;
            if (slot - slot.floor() - 0.5).abs() < 0.26 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds")
        .draw()?;
    for (r, (run, summary)) in runs.iter().zip(&per_run).enumerate() {
        let color = Palette99::pick(r * 3 + 1).to_rgba();
        let bars = summary.iter().enumerate().filter_map(|(i, s)| {
            let p99 = seconds(s.p99)?;
            let x = i as f64 * group + 0.5 + r as f64;
            Some(Rectangle::new(
                [(x, low), (x + 0.9, p99)],
                color.mix(0.45).filled(),
            ))
        });
        chart
            .draw_series(bars)?
            .label(run.mode.as_str())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.45).filled())
            });
        let medians = summary.iter().enumerate().filter_map(|(i, s)| {
            let p50 = seconds(s.p50)?;
            let x = i as f64 * group + 0.5 + r as f64;
            Some(PathElement::new(
                vec![(x, p50), (x + 0.9, p50)],
                color.stroke_width(3),
            ))
        });
        chart.draw_series(medians)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// Refusals, default answers and give-ups per bucket of the run.
fn refusals(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    options: &Options,
    runs: &[RunResult],
) -> Result<(), Error> {
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .flat_map(|run| {
            refusals_over_time(&run.records, BUCKET, options.duration + options.grace)
                .into_iter()
                .map(move |(reason, points)| {
                    let points = points
                        .into_iter()
                        .map(|(at, n)| (at.as_secs_f64(), n as f64 / BUCKET.as_secs_f64()))
                        .collect();
                    (format!("{}: {reason}", run.mode.as_str()), points)
                })
        })
        .collect();
    let end = (options.duration + options.grace).as_secs_f64();
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Refused, defaulted or given up, per second (5 s buckets)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("requests / s")
        .draw()?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i * 2 + 5).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
