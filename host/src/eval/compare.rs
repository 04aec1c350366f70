//! `amat-host compare`: several finished runs side by side — one table of a
//! metric at every noise level with its area, and one plot of their curves.
//! Runs are only comparable when they were attacked alike, so the noise
//! levels, norm and steps of their curves must agree.

use super::Curve;
use super::report::{Series, line_chart};
use crate::train::EpochRecord;
use crate::train::checkpoint::write_atomic;
use crate::train::config::RunConfig;
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
    pub final_clean_loss: f64,
    pub curve: Curve,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub eps: Vec<f64>,
    pub runs: Vec<RunResult>,
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
    Ok(Comparison {
        metric,
        eps: first.curve.eps.clone(),
        runs,
    })
}

pub fn markdown(c: &Comparison) -> String {
    let curve = &c.runs[0].curve;
    let mut out = format!(
        "# Robustness comparison: {}\n\n{} split ({} samples), PGD {} with {} steps and {} restart(s) at every noise level.\n\n",
        c.metric, curve.split, curve.samples, curve.norm, curve.steps, curve.restarts
    );
    out.push_str("| run | method |");
    for e in &c.eps {
        out.push_str(&format!(" eps {e} |"));
    }
    out.push_str(" area | epochs | s / epoch |\n|---|---|");
    out.push_str(&"---|".repeat(c.eps.len() + 3));
    out.push('\n');
    for r in &c.runs {
        let m = r.curve.metric(&c.metric).expect("checked in compare");
        out.push_str(&format!("| {} | {} |", r.name, r.method));
        for v in &m.values {
            out.push_str(&format!(" {v:.4} |"));
        }
        out.push_str(&format!(
            " **{:.4}** | {} | {:.2} |\n",
            m.area, r.epochs, r.seconds_per_epoch
        ));
    }
    out.push_str(&format!(
        "\nArea: the mean of {} over the eps range (trapezoids). eps 0 is the clean score.\n\
         Plot: `comparison.png`; per-run details in each run's `summary.md`.\n",
        c.metric
    ));
    out
}

pub fn csv(c: &Comparison) -> String {
    let mut out = String::from("run,method,eps,metric,value\n");
    for r in &c.runs {
        let m = r.curve.metric(&c.metric).expect("checked in compare");
        for (e, v) in c.eps.iter().zip(&m.values) {
            out.push_str(&format!("{},{},{e},{},{v}\n", r.name, r.method, c.metric));
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
