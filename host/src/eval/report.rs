//! A robustness curve on disk: `robustness.json`, `robustness.csv` and
//! `robustness.png` (drawn with plotters and an embedded font, so no system
//! font library is needed).

use super::{Curve, MetricCurve};
use crate::fsio::write_atomic;
use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Once;

/// A value for a table: 4 decimals, `–` where it is missing (NaN).
pub fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.4}")
    }
}

/// A CSV cell: empty where the value is missing.
pub fn cell(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else {
        v.to_string()
    }
}

/// The per-pixel size of level `i` (NaN for files without it).
pub fn rms_at(curve: &Curve, i: usize) -> f64 {
    curve.rms.get(i).copied().unwrap_or(f64::NAN)
}

/// A table heading for level `i`: `eps 2 (rms 0.0312)`.
pub fn level_heading(curve: &Curve, i: usize) -> String {
    let rms = rms_at(curve, i);
    if rms.is_nan() || curve.eps[i] == 0.0 {
        format!("eps {}", curve.eps[i])
    } else {
        format!("eps {} (rms {rms:.4})", curve.eps[i])
    }
}

/// One sentence on what the noise levels mean.
pub fn noise_note(curve: &Curve) -> String {
    let mut note = norm_note(curve);
    if !curve.intensity.is_empty() {
        note.push(' ');
        note.push_str(&curve.intensity);
    }
    note
}

/// Mean and sample standard deviation (n - 1) of the finite values; sd is
/// NaN (`null`) below two values, both are NaN with none.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    #[serde(deserialize_with = "super::nan_for_null::value")]
    pub mean: f64,
    #[serde(deserialize_with = "super::nan_for_null::value")]
    pub sd: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Stat {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        let n = v.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / n as f64
        };
        let sd = if n < 2 {
            f64::NAN
        } else {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        Stat { mean, sd, n }
    }

    /// `0.713 ± 0.012` (`–` for a missing part).
    pub fn text(&self) -> String {
        match (self.mean.is_nan(), self.sd.is_nan()) {
            (true, _) => "–".into(),
            (false, true) => format!("{:.3}", self.mean),
            (false, false) => format!("{:.3} ± {:.3}", self.mean, self.sd),
        }
    }
}

/// How the metrics cover the split, when they are per-case means: the
/// number of cases and the spread of the first metric over them.
pub fn aggregate_note(curve: &Curve) -> Option<String> {
    let first = curve.metrics.first()?;
    if curve.cases.is_empty() {
        return None;
    }
    let spread = |level: usize| {
        let values: Vec<(f64, &str)> = curve
            .cases
            .iter()
            .filter_map(|c| {
                let v = c.metrics.iter().find(|m| m.name == first.name)?.values[level];
                v.is_finite().then_some((v, c.case.as_str()))
            })
            .collect();
        let stat = Stat::of(values.iter().map(|v| v.0));
        let lowest = values.iter().min_by(|a, b| a.0.total_cmp(&b.0));
        format!(
            "{} over {} cases{}",
            stat.text(),
            stat.n,
            lowest.map_or(String::new(), |(v, c)| format!(
                ", lowest `{c}` {}",
                fmt(*v)
            ))
        )
    };
    let last = curve.eps.len() - 1;
    Some(format!(
        "Metrics are per case (each case's from its own samples), then the mean over the {} \
         cases of the split that define the value (`eval.aggregate = \"case\"`; per-case values \
         in `cases.csv`). {}: clean {}; at {} {}.",
        curve.cases.len(),
        first.name,
        spread(0),
        level_heading(curve, last),
        spread(last)
    ))
}

/// One row per case and level: the case's own metrics.
pub fn cases_csv(curve: &Curve) -> String {
    let mut out = csv_header("case,samples,eps", curve);
    for c in &curve.cases {
        for (i, eps) in curve.eps.iter().enumerate() {
            out.push_str(&format!("{},{},{eps}", c.case, c.samples));
            for m in &curve.metrics {
                let v = c
                    .metrics
                    .iter()
                    .find(|x| x.name == m.name)
                    .map_or(f64::NAN, |x| x.values[i]);
                out.push_str(&format!(",{}", cell(v)));
            }
            out.push('\n');
        }
    }
    out
}

/// What the images' intensities are, and so what eps is measured in: the
/// host's normalisation when the manifest records one, else the plugin's
/// declared range.
pub fn intensity_note(
    normalization: Option<&crate::data::normalize::NormRecord>,
    range: crate::attack::Range,
) -> String {
    match normalization {
        Some(n) => format!(
            "Intensities: {}; eps is in those units. Attacked images are clamped to [{:.3}, {:.3}], \
             the smallest and largest normalised value of the dataset.",
            n.unit, range.min, range.max
        ),
        None => format!(
            "Intensities: as the plugin scaled them, into its declared range [{}, {}]; eps is in those units, \
             and attacked images are clamped to that range.",
            range.min, range.max
        ),
    }
}

fn norm_note(curve: &Curve) -> String {
    match curve.norm {
        super::Norm::L2 => format!(
            "eps is the L2 norm of the noise over one whole input sample; rms = eps / sqrt(elements per sample) is its per-pixel size{}.",
            if curve.rms.is_empty() {
                " (not recorded in this run's robustness.json)"
            } else {
                ""
            }
        ),
        super::Norm::Linf => {
            "eps is the Linf bound, itself the per-pixel bound on the noise (its rms is at most eps).".into()
        }
    }
}

/// The Dice convention, stated where a curve carries nnU-Net-style Dice
/// (`dice_mean` beside per-class `dice_<class>` values, as
/// plugins/segmentation reports it).
pub fn dice_convention(curve: &Curve) -> Option<&'static str> {
    let per_class = curve
        .metrics
        .iter()
        .any(|m| m.name.starts_with("dice_") && m.name != "dice_mean");
    (curve.metric("dice_mean").is_some() && per_class).then_some(
        "Dice as nnU-Net reports it: per foreground class (background excluded) and per sample; \
         a sample in which a class is absent from both target and prediction is left out of that \
         class's mean (not counted as 1.0); each class's value is the mean over the samples that \
         define it (with per-case metrics: within each case, then over the cases), and dice_mean \
         the mean over the classes. `–`: no sample defines the value.",
    )
}

/// The parts of a metric named `<stem>_mean`: the curve's other metrics
/// named `<stem>_<part>` (per-class Dice for `dice_mean`); none otherwise.
pub fn parts<'a>(curve: &'a Curve, metric: &str) -> Vec<&'a MetricCurve> {
    let Some(stem) = metric.strip_suffix("mean") else {
        return Vec::new();
    };
    if !stem.ends_with('_') {
        return Vec::new();
    }
    curve
        .metrics
        .iter()
        .filter(|m| m.name != metric && m.name.starts_with(stem))
        .collect()
}

/// A part (class) counts as collapsed at a level where its value is below
/// this while the reference run's value there is at least
/// [`REFERENCE_AT_LEAST`]: the model has stopped segmenting a class the
/// reference (STD) segments.
pub const COLLAPSED_BELOW: f64 = 0.05;
pub const REFERENCE_AT_LEAST: f64 = 0.3;

/// The collapse rule in words, for reports.
pub fn collapse_rule(reference: &str) -> String {
    format!(
        "collapsed: a class's value is below {COLLAPSED_BELOW} at a noise level where {reference}'s is at least {REFERENCE_AT_LEAST}"
    )
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Collapse {
    pub part: String,
    pub eps: f64,
    pub value: f64,
    pub reference: f64,
}

/// The parts of `metric` in `run` that collapsed against `reference` (both
/// attacked at the same levels).
pub fn collapses(run: &Curve, reference: &Curve, metric: &str) -> Vec<Collapse> {
    let mut out = Vec::new();
    for part in parts(run, metric) {
        let Some(r) = reference.metric(&part.name) else {
            continue;
        };
        for (i, &eps) in run.eps.iter().enumerate() {
            let (v, rv) = (part.values[i], r.values.get(i).copied().unwrap_or(f64::NAN));
            if v < COLLAPSED_BELOW && rv >= REFERENCE_AT_LEAST {
                out.push(Collapse {
                    part: part.name.clone(),
                    eps,
                    value: v,
                    reference: rv,
                });
            }
        }
    }
    out
}

/// Collapses as one line: `dice_occipital at eps 0 (0.000 vs 0.625), …`.
pub fn collapse_line(c: &[Collapse]) -> String {
    c.iter()
        .map(|c| {
            format!(
                "{} at eps {} ({:.3} vs {:.3})",
                c.part, c.eps, c.value, c.reference
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A CSV header line: `columns`, then every metric's name.
fn csv_header(columns: &str, curve: &Curve) -> String {
    let mut out = String::from(columns);
    for m in &curve.metrics {
        out.push(',');
        out.push_str(&m.name);
    }
    out.push('\n');
    out
}

pub fn csv(curve: &Curve) -> String {
    let mut out = csv_header("eps,rms,loss", curve);
    for (i, eps) in curve.eps.iter().enumerate() {
        out.push_str(&format!(
            "{eps},{},{}",
            cell(rms_at(curve, i)),
            curve.loss[i]
        ));
        for m in &curve.metrics {
            out.push_str(&format!(",{}", cell(m.values[i])));
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
    if !curve.cases.is_empty() {
        write_atomic(&dir.join("cases.csv"), cases_csv(curve).as_bytes())?;
    }
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

/// One labelled line of a chart, with optional vertical error bars (one
/// half-width per point).
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub errors: Vec<f64>,
}

impl Series {
    /// A metric's values along the noise levels; missing (NaN) values are
    /// left out of the line.
    pub fn along(label: String, eps: &[f64], values: &[f64]) -> Self {
        let points = eps
            .iter()
            .copied()
            .zip(values.iter().copied())
            .filter(|p| p.1.is_finite())
            .collect();
        Series {
            label,
            points,
            errors: Vec::new(),
        }
    }

    /// The same line with error bars of half-width `errors` (NaN: none).
    pub fn with_errors(label: String, eps: &[f64], values: &[f64], errors: &[f64]) -> Self {
        let (points, errors) = eps
            .iter()
            .zip(values)
            .zip(errors)
            .filter(|((_, v), _)| v.is_finite())
            .map(|((&e, &v), &s)| ((e, v), if s.is_finite() { s } else { 0.0 }))
            .unzip();
        Series {
            label,
            points,
            errors,
        }
    }
}

/// One labelled point of a scatter chart with error bars in x and y
/// (half-widths; NaN: none).
pub struct Point {
    pub label: String,
    pub x: f64,
    pub y: f64,
    pub x_err: f64,
    pub y_err: f64,
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
    draw_atomic(path, |tmp| draw_lines(tmp, title, x_desc, y_desc, series))
}

/// Labelled points with error bars into the PNG `path`, atomically.
pub fn scatter_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[Point],
) -> Result<()> {
    draw_atomic(path, |tmp| draw_points(tmp, title, x_desc, y_desc, points))
}

/// Draws into a hidden file beside `path`, then renames it into place.
fn draw_atomic(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    crate::fsio::write_atomic_with(path, |tmp| {
        draw(tmp).with_context(|| format!("cannot draw {}", path.display()))
    })
}

/// A vertical bar with caps from y - e to y + e at x (`cap` wide in x units).
fn vertical_bar(x: f64, y: f64, e: f64, cap: f64) -> Vec<Vec<(f64, f64)>> {
    vec![
        vec![(x, y - e), (x, y + e)],
        vec![(x - cap, y - e), (x + cap, y - e)],
        vec![(x - cap, y + e), (x + cap, y + e)],
    ]
}

fn draw_points(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[Point],
) -> Result<()> {
    register_font();
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let span = |lo: f64, hi: f64| {
        let pad = ((hi - lo) * 0.15).max(0.02);
        (lo - pad)..(hi + pad)
    };
    let (xlo, xhi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.x - finite(p.x_err)), hi.max(p.x + finite(p.x_err)))
    });
    let (ylo, yhi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.y - finite(p.y_err)), hi.max(p.y + finite(p.y_err)))
    });
    if points.is_empty() || !(xlo.is_finite() && ylo.is_finite()) {
        return Err(anyhow!("no finite point to draw"));
    }
    let (xr, yr) = (span(xlo, xhi), span(ylo, yhi));
    let (xcap, ycap) = ((xr.end - xr.start) * 0.008, (yr.end - yr.start) * 0.008);
    let root = BitMapBackend::new(path, (800, 560)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(xr, yr)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(e)?;
    for (i, p) in points.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut lines = vertical_bar(p.x, p.y, finite(p.y_err), xcap);
        let xe = finite(p.x_err);
        lines.push(vec![(p.x - xe, p.y), (p.x + xe, p.y)]);
        lines.push(vec![(p.x - xe, p.y - ycap), (p.x - xe, p.y + ycap)]);
        lines.push(vec![(p.x + xe, p.y - ycap), (p.x + xe, p.y + ycap)]);
        chart
            .draw_series(
                lines
                    .into_iter()
                    .map(|l| PathElement::new(l, color.stroke_width(1))),
            )
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Circle::new((p.x, p.y), 4, color.filled())))
            .map_err(e)?
            .label(p.label.clone())
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
        // The label just above and right of its point.
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((p.x, p.y))
                    + Text::new(
                        p.label.clone(),
                        (6, -18),
                        ("sans-serif", 14).into_font().color(&BLACK),
                    ),
            ))
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
        .flat_map(|s| {
            s.points.iter().enumerate().flat_map(|(i, p)| {
                let e = s.errors.get(i).copied().unwrap_or(0.0);
                [p.1 - e, p.1 + e]
            })
        })
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
        let cap = x_max * 0.006;
        chart
            .draw_series(
                s.points
                    .iter()
                    .zip(&s.errors)
                    .filter(|(_, e)| **e > 0.0)
                    .flat_map(|(p, &err)| vertical_bar(p.0, p.1, err, cap))
                    .map(|l| PathElement::new(l, color.stroke_width(1))),
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::Norm;

    fn curve(parts: &[(&str, [f64; 2])]) -> Curve {
        Curve {
            split: "test".into(),
            samples: 2,
            norm: Norm::L2,
            steps: 1,
            restarts: 1,
            eps: vec![0.0, 1.0],
            rms: vec![0.0, 0.25],
            loss: vec![0.0, 0.0],
            metrics: parts
                .iter()
                .map(|(n, v)| MetricCurve {
                    name: n.to_string(),
                    values: v.to_vec(),
                    area: (v[0] + v[1]) / 2.0,
                })
                .collect(),
            seconds: 0.0,
            intensity: String::new(),
            aggregate: crate::config::Aggregate::Set,
            cases: Vec::new(),
        }
    }

    #[test]
    fn a_class_near_zero_where_the_reference_is_not_is_flagged() {
        let std = curve(&[
            ("dice_mean", [0.6, 0.3]),
            ("dice_a", [0.625, 0.4]),
            ("dice_b", [0.6, 0.2]),
        ]);
        let sat = curve(&[
            ("dice_mean", [0.3, 0.2]),
            ("dice_a", [0.0, 0.01]),
            ("dice_b", [0.6, 0.0]),
        ]);
        let c = collapses(&sat, &std, "dice_mean");
        // dice_b at eps 1 is near 0, but so is nothing the reference holds
        // there (0.2 < 0.3): not a collapse.
        assert_eq!(
            c.iter()
                .map(|c| (c.part.as_str(), c.eps))
                .collect::<Vec<_>>(),
            [("dice_a", 0.0), ("dice_a", 1.0)]
        );
        assert_eq!(collapse_line(&c[..1]), "dice_a at eps 0 (0.000 vs 0.625)");
        assert!(dice_convention(&sat).is_some());
        assert!(dice_convention(&curve(&[("dice_mean", [1.0, 1.0])])).is_none());
        assert!(parts(&sat, "dice_a").is_empty());
        assert_eq!(level_heading(&sat, 1), "eps 1 (rms 0.2500)");
    }
}
