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
    cdf(
        path,
        title,
        "convergence latency (ms, log scale)",
        latencies_us,
    )
}

/// A distribution of times (µs) as a cumulative share over a logarithmic axis in ms, with the
/// p50 and p95 marked.
pub fn cdf(path: &Path, title: &str, x_desc: &str, latencies_us: &[u64]) -> Result<(), PlotError> {
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
        .x_desc(x_desc)
        .y_desc("share")
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
        .label("cumulative share")
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

/// One half of the scale plot.
type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
/// What a half of the scale plot shows of each run.
type Measure = fn(&ScalePoint) -> f64;

/// One run of a scale series: its size and what it cost.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ScalePoint {
    pub devices: u64,
    pub events: u64,
    pub wall_s: f64,
    pub peak_rss_bytes: u64,
}

/// Wall time and peak memory against the number of devices, side by side, each with the line
/// through the origin and the largest run (what linear growth would be).
pub fn scale(path: &Path, title: &str, points: &[ScalePoint]) -> Result<(), PlotError> {
    let error = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| error(&e))?;
    let (left, right) = root.split_horizontally(500);
    let max_n = points.iter().map(|p| p.devices).max().unwrap_or(1).max(1) as f64;
    let panels: [(&Panel<'_>, &str, Measure); 2] = [
        (&left, "wall time (s)", |p| p.wall_s),
        (&right, "peak memory (MB)", |p| {
            p.peak_rss_bytes as f64 / 1e6
        }),
    ];
    for (area, label, value) in panels {
        let largest = points
            .iter()
            .max_by_key(|p| p.devices)
            .map_or(1.0, value)
            .max(1e-9);
        let top = points.iter().map(value).fold(largest, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_n * 1.05, 0.0..top)
            .map_err(|e| error(&e))?;
        chart
            .configure_mesh()
            .x_desc("devices")
            .x_label_formatter(&|x| {
                if *x >= 1_000.0 {
                    format!("{:.0}k", x / 1_000.0)
                } else {
                    format!("{x:.0}")
                }
            })
            .y_desc(label)
            .draw()
            .map_err(|e| error(&e))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (max_n, largest)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(|e| error(&e))?
            .label("linear")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.devices as f64, value(p))),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| error(&e))?
            .label("measured")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.devices as f64, value(p)), 4, BLUE.filled())),
            )
            .map_err(|e| error(&e))?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| error(&e))?;
    }
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

/// The relay fleet over time: connections, CPU share and storage of each instance, one panel
/// each, stacked.
pub fn fleet(path: &Path, title: &str, series: &[crate::light::Sample]) -> Result<(), PlotError> {
    let error = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| error(&e))?;
    let panels = root.split_evenly((3, 1));
    let end = series.last().map_or(1.0, |s| s.at_s).max(1.0) / 60.0;
    let instances = series.first().map_or(0, |s| s.connections.len());
    type Read = fn(&crate::light::Sample, usize) -> f64;
    let measures: [(&str, Read); 3] = [
        ("connections", |s, i| {
            s.connections.get(i).copied().unwrap_or(0) as f64
        }),
        ("CPU (share of its cores)", |s, i| {
            s.cpu.get(i).copied().unwrap_or(0.0)
        }),
        ("storage (MB)", |s, i| {
            s.storage_bytes.get(i).copied().unwrap_or(0) as f64 / 1e6
        }),
    ];
    for (area, (label, read)) in panels.iter().zip(measures) {
        let columns = series.first().map_or(0, |s| match label {
            "storage (MB)" => s.storage_bytes.len(),
            _ => instances,
        });
        let top = series
            .iter()
            .flat_map(|s| (0..columns).map(move |i| read(s, i)))
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(|e| error(&e))?;
        chart
            .configure_mesh()
            .x_desc("simulated minutes")
            .y_desc(label)
            .draw()
            .map_err(|e| error(&e))?;
        for i in 0..columns {
            let colour = Palette99::pick(i);
            chart
                .draw_series(LineSeries::new(
                    series.iter().map(|s| (s.at_s / 60.0, read(s, i))),
                    colour.stroke_width(2),
                ))
                .map_err(|e| error(&e))?
                .label(format!("instance {i}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(i))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| error(&e))?;
    }
    root.present().map_err(|e| error(&e))?;
    Ok(())
}
