//! `amat-host compare`: several finished runs side by side — one table of a
//! metric at every noise level with its area, and one plot of their curves.
//! Runs are only comparable when they were attacked alike, so the noise
//! levels, norm and steps of their curves must agree.

use crate::config::RunConfig;
use crate::eval::Curve;
use crate::eval::report::{
    Collapse, Series, collapse_line, collapse_rule, collapses, dice_convention, fmt, level_heading,
    line_chart, noise_note, parts,
};
use crate::fsio::write_atomic;
use crate::train::EpochRecord;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One finished run, as read back from its folder.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub name: String,
    pub dir: PathBuf,
    pub method: String,
    pub epochs: usize,
    pub seconds_per_epoch: f64,
    /// Training wall time, the sum of the epochs' seconds.
    pub train_seconds: f64,
    pub final_clean_loss: f64,
    pub curve: Curve,
}

impl RunResult {
    /// Training plus evaluation seconds (evaluation is 0 in older runs).
    pub fn wall_seconds(&self) -> f64 {
        self.train_seconds + self.curve.seconds
    }
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub eps: Vec<f64>,
    pub runs: Vec<RunResult>,
    /// The run collapses are judged against: the first STD run.
    pub reference: Option<String>,
    /// Per run (by name), its collapsed parts of the metric.
    pub collapses: Vec<(String, Vec<Collapse>)>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid file of a finished run", path.display()))
}

pub fn read_run(dir: &Path) -> Result<RunResult> {
    let curve_path = dir.join("robustness.json");
    if !curve_path.is_file() {
        bail!(
            "{}: no robustness.json (is the run finished? `amat-host run --resume {0}` finishes it)",
            dir.display()
        );
    }
    let curve: Curve = read_json(&curve_path)?;
    let cfg = RunConfig::read(&dir.join("config.toml")).map_err(anyhow::Error::msg)?;
    let epochs_path = dir.join("epochs.jsonl");
    let text = std::fs::read_to_string(&epochs_path)
        .with_context(|| format!("cannot read {}", epochs_path.display()))?;
    let history: Vec<EpochRecord> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not an epoch record",
                    epochs_path.display(),
                    i + 1
                )
            })
        })
        .collect::<Result<_>>()?;
    let seconds: f64 = history.iter().map(|r| r.seconds).sum();
    Ok(RunResult {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        dir: dir.to_path_buf(),
        method: cfg.method().to_string(),
        epochs: history.len(),
        seconds_per_epoch: seconds / history.len().max(1) as f64,
        train_seconds: seconds,
        final_clean_loss: history.last().map(|r| r.clean_loss).unwrap_or(f64::NAN),
        curve,
    })
}

/// Reads the runs and checks that their curves can be compared; `metric`
/// defaults to the first metric of the first run's curve.
pub fn compare(dirs: &[PathBuf], metric: Option<&str>) -> Result<Comparison> {
    if dirs.is_empty() {
        bail!("compare: name at least one run folder");
    }
    let runs = dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    let first = &runs[0];
    let metric = match metric {
        Some(m) => m.to_string(),
        None => match first.curve.metrics.first() {
            Some(m) => m.name.clone(),
            None => bail!(
                "{}: its robustness curve has no metric",
                first.dir.display()
            ),
        },
    };
    for r in &runs {
        let c = &r.curve;
        if c.eps != first.curve.eps || c.norm != first.curve.norm || c.steps != first.curve.steps {
            bail!(
                "{} was attacked at eps {:?} ({} x{}), {} at eps {:?} ({} x{}): evaluate both with the same [eval] (amat-host eval --config)",
                r.dir.display(),
                c.eps,
                c.norm,
                c.steps,
                first.dir.display(),
                first.curve.eps,
                first.curve.norm,
                first.curve.steps
            );
        }
        if c.metric(&metric).is_none() {
            let names: Vec<_> = c.metrics.iter().map(|m| m.name.as_str()).collect();
            bail!(
                "{}: no metric `{metric}` in its curve (it has {})",
                r.dir.display(),
                names.join(", ")
            );
        }
    }
    let reference = runs.iter().find(|r| r.method == "std");
    let collapsed = match reference {
        Some(reference) => runs
            .iter()
            .filter(|r| r.dir != reference.dir)
            .map(|r| {
                (
                    r.name.clone(),
                    collapses(&r.curve, &reference.curve, &metric),
                )
            })
            .filter(|(_, c)| !c.is_empty())
            .collect(),
        None => Vec::new(),
    };
    Ok(Comparison {
        metric,
        eps: first.curve.eps.clone(),
        reference: reference.map(|r| r.name.clone()),
        collapses: collapsed,
        runs,
    })
}

pub fn markdown(c: &Comparison) -> String {
    let curve = &c.runs[0].curve;
    let mut out = format!(
        "# Robustness comparison: {}\n\n{} split ({} samples), PGD {} with {} steps and {} restart(s) at every noise level. {}\n\n",
        c.metric,
        curve.split,
        curve.samples,
        curve.norm,
        curve.steps,
        curve.restarts,
        noise_note(curve)
    );
    out.push_str("| run | method |");
    for i in 0..c.eps.len() {
        out.push_str(&format!(" {} |", level_heading(curve, i)));
    }
    out.push_str(" area | epochs | s / epoch |\n|---|---|");
    out.push_str(&"---|".repeat(c.eps.len() + 3));
    out.push('\n');
    for r in &c.runs {
        let m = r.curve.metric(&c.metric).expect("checked in compare");
        out.push_str(&format!("| {} | {} |", r.name, r.method));
        for v in &m.values {
            out.push_str(&format!(" {} |", fmt(*v)));
        }
        out.push_str(&format!(
            " **{}** | {} | {:.2} |\n",
            fmt(m.area),
            r.epochs,
            r.seconds_per_epoch
        ));
    }
    out.push_str(&format!(
        "\nArea: the mean of {} over the eps range (trapezoids). eps 0 is the clean score.\n",
        c.metric
    ));
    // Every run's parts: a part no sample defines is missing from a curve.
    let mut part_names: Vec<String> = Vec::new();
    for r in &c.runs {
        for m in parts(&r.curve, &c.metric) {
            if !part_names.contains(&m.name) {
                part_names.push(m.name.clone());
            }
        }
    }
    if !part_names.is_empty() {
        out.push_str(&format!(
            "\n## Per part of {} on clean inputs (eps 0) and its area\n\n| run |",
            c.metric
        ));
        for p in &part_names {
            out.push_str(&format!(" {p} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(part_names.len()));
        out.push('\n');
        for r in &c.runs {
            out.push_str(&format!("| {} |", r.name));
            for p in &part_names {
                let cell = match r.curve.metric(p) {
                    Some(m) => format!("{} ({})", fmt(m.values[0]), fmt(m.area)),
                    None => "–".into(),
                };
                out.push_str(&format!(" {cell} |"));
            }
            out.push('\n');
        }
        out.push_str("\nEach cell: clean value (area).\n");
        match &c.reference {
            Some(reference) => {
                out.push_str(&format!("\nCollapse flags ({}):", collapse_rule(reference)));
                if c.collapses.is_empty() {
                    out.push_str(" none.\n");
                } else {
                    out.push('\n');
                    for (run, list) in &c.collapses {
                        out.push_str(&format!("- **{run}**: {}\n", collapse_line(list)));
                    }
                }
            }
            None => out.push_str("\nNo STD run among these, so no collapse flags.\n"),
        }
    }
    if let Some(note) = dice_convention(curve) {
        out.push_str(&format!("\n{note}\n"));
    }
    out.push_str("\nPlot: `comparison.png`; per-run details in each run's `summary.md`.\n");
    out
}

pub fn csv(c: &Comparison) -> String {
    let mut out = String::from("run,method,eps,rms,metric,value\n");
    for r in &c.runs {
        let mut names = vec![c.metric.clone()];
        names.extend(parts(&r.curve, &c.metric).iter().map(|m| m.name.clone()));
        for name in names {
            let m = r.curve.metric(&name).expect("a metric of the curve");
            for (i, (e, v)) in c.eps.iter().zip(&m.values).enumerate() {
                out.push_str(&format!(
                    "{},{},{e},{},{name},{}\n",
                    r.name,
                    r.method,
                    crate::eval::report::cell(crate::eval::report::rms_at(&r.curve, i)),
                    crate::eval::report::cell(*v)
                ));
            }
        }
    }
    out
}

/// Writes comparison.{md,csv,json,png} into `out`.
pub fn write(out: &Path, c: &Comparison) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&out.join("comparison.md"), markdown(c).as_bytes())?;
    write_atomic(&out.join("comparison.csv"), csv(c).as_bytes())?;
    write_atomic(
        &out.join("comparison.json"),
        serde_json::to_string_pretty(c)?.as_bytes(),
    )?;
    let series: Vec<Series> = c
        .runs
        .iter()
        .map(|r| {
            let m = r.curve.metric(&c.metric).expect("checked in compare");
            Series::along(
                format!("{} (area {:.3})", r.name, m.area),
                &c.eps,
                &m.values,
            )
        })
        .collect();
    let curve = &c.runs[0].curve;
    let title = format!(
        "{} under PGD {} ({} samples of {})",
        c.metric, curve.norm, curve.samples, curve.split
    );
    line_chart(
        &out.join("comparison.png"),
        &title,
        &format!("eps ({})", curve.norm),
        &c.metric,
        &series,
    )
}
