//! A study's report: per arm, mean ± sd over seeds of the metric at every
//! noise level and of its area (and of its per-class parts), collapse flags
//! against the reference arm, wall times; `study.md`, `study.json`,
//! `study.csv`, `curves.png` and `clean-vs-robust.png` in the study folder.

use super::{State, Study, state};
use crate::app::compare::{self, RunResult};
use crate::attack::Norm;
use crate::eval::Curve;
use crate::eval::report::{
    Collapse, Point, Series, Stat, cell, collapse_line, collapse_rule, collapses, dice_convention,
    fmt, level_heading, line_chart, noise_note, parts, scatter_chart,
};
use crate::fsio::write_atomic;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::PathBuf;

/// A metric over seeds: one Stat per noise level, and of the area.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub levels: Vec<Stat>,
    pub area: Stat,
}

fn summarise(name: &str, curves: &[&Curve], levels: usize) -> Summary {
    let ms: Vec<_> = curves.iter().filter_map(|c| c.metric(name)).collect();
    Summary {
        name: name.to_string(),
        levels: (0..levels)
            .map(|i| Stat::of(ms.iter().map(|m| m.values[i])))
            .collect(),
        area: Stat::of(ms.iter().map(|m| m.area)),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunEntry {
    pub seed: u64,
    pub dir: PathBuf,
    /// The metric at every level, and its area.
    #[serde(deserialize_with = "nan_vec")]
    pub values: Vec<f64>,
    #[serde(deserialize_with = "crate::eval::nan_for_null::value")]
    pub area: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

fn nan_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<Option<f64>>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmReport {
    pub name: String,
    pub method: String,
    /// The overrides, `key = value`.
    pub set: Vec<String>,
    pub runs: Vec<RunEntry>,
    pub metric: Summary,
    /// Per-class parts of the metric (`dice_<class>` of `dice_mean`).
    pub parts: Vec<Summary>,
    /// Training + evaluation seconds per run.
    pub wall_seconds: Stat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollapseFlag {
    pub arm: String,
    pub seed: u64,
    pub collapses: Vec<Collapse>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attack {
    pub split: String,
    pub samples: usize,
    pub norm: Norm,
    pub steps: usize,
    pub restarts: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyReport {
    pub name: String,
    pub metric: String,
    pub seeds: Vec<u64>,
    pub attack: Attack,
    pub eps: Vec<f64>,
    #[serde(default)]
    pub rms: Vec<f64>,
    pub arms: Vec<ArmReport>,
    /// The arm collapses are judged against.
    pub reference: Option<String>,
    pub collapse_rule: Option<String>,
    pub collapses: Vec<CollapseFlag>,
    pub dice_convention: Option<String>,
    /// Run folders without a final curve, left out of the statistics.
    pub missing: Vec<PathBuf>,
}

/// Reads the finished runs of the grid (all attacked alike) and summarises
/// them per arm.
pub fn build(study: &Study) -> Result<StudyReport> {
    let mut done = Vec::new();
    let mut missing = Vec::new();
    for c in &study.cells {
        // state() also refuses folders made with another config.
        if state(study, c)? == State::Finished {
            done.push(c);
        } else {
            missing.push(c);
        }
    }
    if done.is_empty() {
        bail!(
            "study {}: no finished run under {}",
            study.name,
            study.out.display()
        );
    }
    let dirs: Vec<PathBuf> = done.iter().map(|c| c.dir.clone()).collect();
    // compare checks that the curves share levels, norm and steps.
    let cmp = compare::compare(&dirs, study.metric.as_deref())?;
    let metric = cmp.metric.clone();
    let results: Vec<(&super::Cell, RunResult)> = done.into_iter().zip(cmp.runs).collect();
    let first = &results[0].1.curve;
    if let Some((c, _)) = results.iter().find(|(_, r)| {
        r.curve.restarts != first.restarts
            || r.curve.split != first.split
            || r.curve.samples != first.samples
    }) {
        bail!(
            "{}: attacked with other restarts or data than {}",
            c.dir.display(),
            results[0].0.dir.display()
        );
    }
    let levels = first.eps.len();
    let mut part_names: Vec<String> = Vec::new();
    for (_, r) in &results {
        for p in parts(&r.curve, &metric) {
            if !part_names.contains(&p.name) {
                part_names.push(p.name.clone());
            }
        }
    }
    let arms: Vec<ArmReport> = study
        .arms
        .iter()
        .enumerate()
        .map(|(i, arm)| {
            let mine: Vec<&RunResult> = results
                .iter()
                .filter(|(c, _)| c.arm == i)
                .map(|(_, r)| r)
                .collect();
            let curves: Vec<&Curve> = mine.iter().map(|r| &r.curve).collect();
            let runs = results
                .iter()
                .filter(|(c, _)| c.arm == i)
                .map(|(c, r)| {
                    let m = r.curve.metric(&metric).expect("checked in compare");
                    RunEntry {
                        seed: c.seed,
                        dir: c.dir.clone(),
                        values: m.values.clone(),
                        area: m.area,
                        train_seconds: r.train_seconds,
                        eval_seconds: r.curve.seconds,
                    }
                })
                .collect();
            ArmReport {
                name: arm.name.clone(),
                method: arm.method.to_string(),
                set: arm.set.clone(),
                runs,
                metric: summarise(&metric, &curves, levels),
                parts: part_names
                    .iter()
                    .map(|p| summarise(p, &curves, levels))
                    .collect(),
                wall_seconds: Stat::of(mine.iter().map(|r| r.wall_seconds())),
            }
        })
        .collect();
    let reference = study.reference;
    let mut flags = Vec::new();
    if let Some(ri) = reference {
        let refs: Vec<_> = results.iter().filter(|(c, _)| c.arm == ri).collect();
        for (c, r) in results.iter().filter(|(c, _)| c.arm != ri) {
            // The reference run of the same seed, else its first run.
            let Some((_, rr)) = refs
                .iter()
                .find(|(rc, _)| rc.seed == c.seed)
                .or(refs.first())
            else {
                continue;
            };
            let list = collapses(&r.curve, &rr.curve, &metric);
            if !list.is_empty() {
                flags.push(CollapseFlag {
                    arm: study.arms[c.arm].name.clone(),
                    seed: c.seed,
                    collapses: list,
                });
            }
        }
    }
    let ref_name = reference.map(|i| study.arms[i].name.clone());
    Ok(StudyReport {
        name: study.name.clone(),
        metric,
        seeds: study.seeds.clone(),
        attack: Attack {
            split: first.split.clone(),
            samples: first.samples,
            norm: first.norm,
            steps: first.steps,
            restarts: first.restarts,
        },
        eps: first.eps.clone(),
        rms: first.rms.clone(),
        collapse_rule: ref_name
            .as_ref()
            .filter(|_| !part_names.is_empty())
            .map(|r| collapse_rule(&format!("the {r} run of the same seed"))),
        reference: ref_name,
        collapses: flags,
        dice_convention: dice_convention(first).map(str::to_string),
        missing: missing.iter().map(|c| c.dir.clone()).collect(),
        arms,
    })
}

/// A curve with only what the headings need.
fn heading_curve(r: &StudyReport) -> Curve {
    Curve {
        split: r.attack.split.clone(),
        samples: r.attack.samples,
        norm: r.attack.norm,
        steps: r.attack.steps,
        restarts: r.attack.restarts,
        eps: r.eps.clone(),
        rms: r.rms.clone(),
        loss: Vec::new(),
        metrics: Vec::new(),
        seconds: 0.0,
        intensity: String::new(),
        aggregate: crate::config::Aggregate::Set,
        cases: Vec::new(),
    }
}

fn seconds(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

pub fn markdown(r: &StudyReport) -> String {
    let curve = heading_curve(r);
    let mut s = String::new();
    let _ = writeln!(s, "# Study: {}\n", r.name);
    let _ = writeln!(
        s,
        "{} arm(s) x seeds {:?}. Metric `{}`: mean ± sd over seeds (sd: sample standard deviation, n - 1; none with one seed).\n",
        r.arms.len(),
        r.seeds,
        r.metric
    );
    let _ = writeln!(
        s,
        "Attack (the same for every run): PGD {}, {} steps, {} restart(s), on the {} split ({} samples). {}\n",
        r.attack.norm,
        r.attack.steps,
        r.attack.restarts,
        r.attack.split,
        r.attack.samples,
        noise_note(&curve)
    );
    let _ = write!(s, "| arm | method |");
    for i in 0..r.eps.len() {
        let _ = write!(s, " {} |", level_heading(&curve, i));
    }
    let _ = writeln!(s, " area | seeds | training + evaluation per run |");
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(r.eps.len() + 3));
    for a in &r.arms {
        let _ = write!(s, "| {} | {} |", a.name, a.method);
        for l in &a.metric.levels {
            let _ = write!(s, " {} |", l.text());
        }
        let _ = writeln!(
            s,
            " **{}** | {} | {} |",
            a.metric.area.text(),
            a.runs.len(),
            if a.wall_seconds.n == 0 {
                "–".into()
            } else {
                seconds(a.wall_seconds.mean)
            }
        );
    }
    let _ = writeln!(
        s,
        "\nArea: the mean of {} over the eps range (trapezoids); eps 0 is the clean score.",
        r.metric
    );
    for a in &r.arms {
        if !a.set.is_empty() {
            let _ = writeln!(s, "- {}: {}", a.name, a.set.join(", "));
        }
    }
    if let Some(first) = r.arms.iter().find(|a| !a.parts.is_empty()) {
        let names: Vec<&str> = first.parts.iter().map(|p| p.name.as_str()).collect();
        for (title, pick) in [
            ("clean (eps 0)", 0usize),
            ("area under the curve", usize::MAX),
        ] {
            let _ = write!(s, "\n## Parts of {}: {title}\n\n| arm |", r.metric);
            for n in &names {
                let _ = write!(s, " {n} |");
            }
            let _ = writeln!(s, "\n|---|{}", "---|".repeat(names.len()));
            for a in &r.arms {
                let _ = write!(s, "| {} |", a.name);
                for p in &a.parts {
                    let stat = if pick == usize::MAX {
                        p.area
                    } else {
                        p.levels[pick]
                    };
                    // A part no sample defines in some seeds has fewer values.
                    let fewer = if stat.n < a.runs.len() && stat.n > 0 {
                        format!(" (n {})", stat.n)
                    } else {
                        String::new()
                    };
                    let _ = write!(s, " {}{fewer} |", stat.text());
                }
                s.push('\n');
            }
        }
        if let Some(rule) = &r.collapse_rule {
            let _ = write!(s, "\nCollapse flags ({rule}):");
            if r.collapses.is_empty() {
                s.push_str(" none.\n");
            } else {
                s.push('\n');
                for f in &r.collapses {
                    let _ = writeln!(
                        s,
                        "- **{}**, seed {}: {}",
                        f.arm,
                        f.seed,
                        collapse_line(&f.collapses)
                    );
                }
            }
        } else {
            s.push_str("\nNo STD (reference) arm, so no collapse flags.\n");
        }
    }
    if let Some(note) = &r.dice_convention {
        let _ = writeln!(s, "\n{note}");
    }
    let _ = writeln!(
        s,
        "\n## Runs\n\n| arm | seed | folder | {} clean | area | training | evaluation |\n|---|---|---|---|---|---|---|",
        r.metric
    );
    for a in &r.arms {
        for run in &a.runs {
            let _ = writeln!(
                s,
                "| {} | {} | `{}` | {} | {} | {} | {} |",
                a.name,
                run.seed,
                run.dir.display(),
                fmt(run.values.first().copied().unwrap_or(f64::NAN)),
                fmt(run.area),
                seconds(run.train_seconds),
                seconds(run.eval_seconds)
            );
        }
    }
    if !r.missing.is_empty() {
        let _ = writeln!(
            s,
            "\nNot finished, left out: {}.",
            r.missing
                .iter()
                .map(|d| format!("`{}`", d.display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s.push_str("\nPlots: `curves.png` (mean curve per arm, bars: sd), `clean-vs-robust.png`. Data: `study.json`, `study.csv`.\n");
    s
}

/// One row per arm, metric (and part), level (`area` for the area).
pub fn csv(r: &StudyReport) -> String {
    let mut out = String::from("arm,method,metric,eps,rms,seeds,mean,sd\n");
    for a in &r.arms {
        for m in std::iter::once(&a.metric).chain(&a.parts) {
            for (i, st) in m.levels.iter().enumerate() {
                let rms = r.rms.get(i).copied().unwrap_or(f64::NAN);
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{}",
                    quote(&a.name),
                    a.method,
                    m.name,
                    r.eps[i],
                    cell(rms),
                    st.n,
                    cell(st.mean),
                    cell(st.sd)
                );
            }
            let _ = writeln!(
                out,
                "{},{},{},area,,{},{},{}",
                quote(&a.name),
                a.method,
                m.name,
                m.area.n,
                cell(m.area.mean),
                cell(m.area.sd)
            );
        }
    }
    out
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes study.{md,json,csv}, curves.png and clean-vs-robust.png.
pub fn write(study: &Study, r: &StudyReport) -> Result<()> {
    let out = &study.out;
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("study.md"), markdown(r).as_bytes())?;
    write_atomic(
        &out.join("study.json"),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    write_atomic(&out.join("study.csv"), csv(r).as_bytes())?;
    let with_runs: Vec<&ArmReport> = r.arms.iter().filter(|a| !a.runs.is_empty()).collect();
    let series: Vec<Series> = with_runs
        .iter()
        .map(|a| {
            let mean: Vec<f64> = a.metric.levels.iter().map(|l| l.mean).collect();
            let sd: Vec<f64> = a.metric.levels.iter().map(|l| l.sd).collect();
            Series::with_errors(
                format!("{} (area {})", a.name, a.metric.area.text()),
                &r.eps,
                &mean,
                &sd,
            )
        })
        .collect();
    let norm = r.attack.norm;
    line_chart(
        &out.join("curves.png"),
        &format!(
            "{}: {} under PGD {} (mean ± sd over seeds)",
            r.name, r.metric, norm
        ),
        &format!("eps ({norm})"),
        &r.metric,
        &series,
    )?;
    let points: Vec<Point> = with_runs
        .iter()
        .filter(|a| a.metric.levels.first().is_some_and(|l| l.mean.is_finite()))
        .map(|a| Point {
            label: a.name.clone(),
            x: a.metric.levels[0].mean,
            y: a.metric.area.mean,
            x_err: a.metric.levels[0].sd,
            y_err: a.metric.area.sd,
        })
        .collect();
    scatter_chart(
        &out.join("clean-vs-robust.png"),
        &format!("{}: clean vs robust (bars: sd over seeds)", r.name),
        &format!("{} at eps 0", r.metric),
        &format!("area under {}(eps)", r.metric),
        &points,
    )
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn stats_over_seeds() {
        let s = Stat::of([1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!((s.mean, s.sd, s.n), (2.0, 1.0, 3));
        let one = Stat::of([0.5]);
        assert!(one.sd.is_nan() && one.mean == 0.5);
        assert_eq!(one.text(), "0.500");
        assert_eq!(Stat::of([]).text(), "–");
    }
}
