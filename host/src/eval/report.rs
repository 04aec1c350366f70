//! A robustness curve on disk: `robustness.json`, `robustness.csv` and
//! `robustness.png` (drawn with plotters and an embedded font, so no system
//! font library is needed).

use super::Curve;
use crate::train::checkpoint::write_atomic;
use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

pub fn csv(curve: &Curve) -> String {
    let mut out = String::from("eps,loss");
    for m in &curve.metrics {
        out.push(',');
        out.push_str(&m.name);
    }
    out.push('\n');
    for (i, eps) in curve.eps.iter().enumerate() {
        out.push_str(&format!("{eps},{}", curve.loss[i]));
        for m in &curve.metrics {
            out.push_str(&format!(",{}", m.values[i]));
        }
        out.push('\n');
    }
    out
}

/// Writes the three files into `dir`; `plotted` names the metrics drawn
/// (all of them when none of the names is found).
pub fn write(dir: &Path, curve: &Curve, plotted: &[String]) -> Result<()> {
    write_atomic(
        &dir.join("robustness.json"),
        serde_json::to_string_pretty(curve)?.as_bytes(),
    )?;
    write_atomic(&dir.join("robustness.csv"), csv(curve).as_bytes())?;
    plot(&dir.join("robustness.png"), curve, plotted)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in, so registering it cannot fail for want of a file.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn plot(path: &Path, curve: &Curve, plotted: &[String]) -> Result<()> {
    let mut metrics: Vec<_> = curve
        .metrics
        .iter()
        .filter(|m| plotted.contains(&m.name))
        .collect();
    if metrics.is_empty() {
        metrics = curve.metrics.iter().collect();
    }
    let series: Vec<Series> = metrics
        .iter()
        .map(|m| {
            Series::along(
                format!("{} (area {:.3})", m.name, m.area),
                &curve.eps,
                &m.values,
            )
        })
        .collect();
    let title = format!(
        "robustness on {} ({} samples, PGD {} {} steps)",
        curve.split, curve.samples, curve.norm, curve.steps
    );
    line_chart(
        path,
        &title,
        &format!("eps ({})", curve.norm),
        "metric",
        &series,
    )
}

/// One labelled line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A metric's values along the noise levels.
    pub fn along(label: String, eps: &[f64], values: &[f64]) -> Self {
        let points = eps.iter().copied().zip(values.iter().copied()).collect();
        Series { label, points }
    }
}

/// Draws lines with markers and a legend into the PNG `path`, atomically
/// (drawn beside it, then renamed); the y range covers [0, 1] and every
/// finite value.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    draw_lines(&tmp, title, x_desc, y_desc, series)
        .with_context(|| format!("cannot draw {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn draw_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.fold(0.0f64, f64::max).max(1e-9);
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((0.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, lo..hi)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
