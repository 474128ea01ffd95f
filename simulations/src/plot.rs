//! Plots of a run, as SVG (the `plotters` crate: pure Rust, no system fonts or C libraries).

use std::path::Path;

use plotters::prelude::*;

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

/// The distribution of convergence latencies (write → arrival at another device of the user),
/// as a cumulative share over a logarithmic time axis, with the p50 and p95 marked.
pub fn convergence_cdf(path: &Path, title: &str, latencies_us: &[u64]) -> Result<(), PlotError> {
    let error = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut ms: Vec<f64> = latencies_us.iter().map(|&us| us as f64 / 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let lowest = ms.first().copied().unwrap_or(1.0).max(0.1);
    let highest = ms.last().copied().unwrap_or(10.0).max(lowest * 10.0);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lowest..highest).log_scale(), 0.0..1.0)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("convergence latency (ms, log scale)")
        .y_desc("share of deliveries")
        .draw()
        .map_err(|e| error(&e))?;
    let n = ms.len().max(1) as f64;
    // At most ~2,000 points, evenly spaced by rank.
    let stride = (ms.len() / 2000).max(1);
    let points = ms
        .iter()
        .enumerate()
        .filter(|(i, _)| i % stride == 0 || *i + 1 == ms.len())
        .map(|(i, &v)| (v, (i + 1) as f64 / n));
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(|e| error(&e))?
        .label("deliveries")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    for (p, colour) in [(0.5, GREEN), (0.95, RED)] {
        let rank = ((p * n).ceil() as usize).clamp(1, ms.len().max(1)) - 1;
        if let Some(&at) = ms.get(rank) {
            chart
                .draw_series(LineSeries::new(
                    [(at, 0.0), (at, 1.0)],
                    colour.mix(0.6).stroke_width(1),
                ))
                .map_err(|e| error(&e))?
                .label(format!("p{:.0} {at:.1} ms", p * 100.0))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}
