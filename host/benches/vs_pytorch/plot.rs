//! The scaling plot: seconds per training step against image side (left) and
//! batch size (right), SAT and STD, amat (wasm plugin) and PyTorch-Python.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

type Series = (&'static str, &'static str, RGBColor, bool);

const SERIES: [Series; 4] = [
    ("wasm_sat", "amat SAT", RGBColor(200, 40, 40), true),
    ("pytorch_sat", "PyTorch SAT", RGBColor(40, 80, 200), true),
    ("wasm_std", "amat STD", RGBColor(200, 40, 40), false),
    ("pytorch_std", "PyTorch STD", RGBColor(40, 80, 200), false),
];

/// `suffix` picks the clock of each series' key ("" CPU time, "_wall" wall-clock).
pub fn scaling(
    path: &Path,
    rows: &[Value],
    suffix: &str,
    batch: usize,
    size: i64,
    caption: &str,
) -> Result<()> {
    let _ = plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        epaint_default_fonts::UBUNTU_LIGHT,
    );
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let root = BitMapBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(caption, ("sans-serif", 22)).map_err(e)?;
    let panels = root.split_evenly((1, 2));
    let by_size: Vec<&Value> = rows.iter().filter(|r| r["batch"] == batch).collect();
    let by_batch: Vec<&Value> = rows.iter().filter(|r| r["size"] == size).collect();
    for (area, (pts, key, xlabel)) in panels.iter().zip([
        (by_size, "size", format!("image side (batch {batch})")),
        (
            by_batch,
            "batch",
            format!("batch size (image {size}x{size})"),
        ),
    ]) {
        let mut pts = pts;
        pts.sort_by_key(|r| r[key].as_i64().unwrap_or(0));
        let x = |r: &Value| r[key].as_f64().unwrap_or(0.0);
        let xmax = pts.iter().map(|r| x(r)).fold(1.0, f64::max) * 1.05;
        let ymax = pts
            .iter()
            .flat_map(|r| {
                SERIES
                    .iter()
                    .filter_map(move |s| r[format!("{}{suffix}", s.0)].as_f64())
            })
            .fold(1e-3, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc("s / step")
            .draw()
            .map_err(e)?;
        for (k, name, color, solid) in SERIES {
            let key = format!("{k}{suffix}");
            let line: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|r| Some((x(r), r[&key].as_f64()?)))
                .collect();
            let style = color.stroke_width(if solid { 3 } else { 1 });
            chart
                .draw_series(LineSeries::new(line.clone(), style))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
