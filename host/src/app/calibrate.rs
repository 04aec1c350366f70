//! `amat-host calibrate`: the adversarial judgement's threshold from a
//! trained STD model, as the authors set it. The model predicts every sample
//! of a split (clean, evaluation mode); each per-sample score of the plugin
//! (and the loss) gets its distribution, and the threshold it implies: the
//! mean (the authors' choice) or the value at which a chosen share of the
//! samples would be judged wrong.

use super::evaluate::{CheckpointArgs, load, run_dir_of};
use super::session::split_of;
use crate::fsio::write_atomic;
use crate::plugin::check::quantile;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::PathBuf;
use tch::Kind;
use tch::nn::ModuleT;

#[derive(Clone, Debug)]
pub struct CalibrateArgs {
    pub checkpoint: CheckpointArgs,
    /// The split whose samples are scored (the authors: the training set).
    pub split: String,
    /// Threshold at which this share of the samples is judged wrong on clean
    /// input, instead of the mean.
    pub wrong_share: Option<f64>,
    /// The scores calibrated; empty: every score the plugin describes, or
    /// the loss when it describes none.
    pub scores: Vec<String>,
}

/// One score's distribution over the split and the threshold it implies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreStats {
    pub name: String,
    pub higher_is_better: bool,
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub q05: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub q95: f64,
    pub max: f64,
    pub threshold: f64,
    /// Share of the split the threshold judges wrong on clean input.
    pub judged_wrong: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub checkpoint: PathBuf,
    pub split: String,
    pub samples: usize,
    /// `mean`, or `share judged wrong <q>`.
    pub rule: String,
    pub scores: Vec<ScoreStats>,
    /// Where calibration.{json,toml} went.
    pub dir: PathBuf,
}

impl Calibration {
    /// The `[amat.judge]` section the thresholds make.
    pub fn snippet(&self) -> String {
        let mut s = format!(
            "# amat-host calibrate: {} on the {} split ({} samples), threshold = {}\n[amat.judge]\n",
            self.checkpoint.display(),
            self.split,
            self.samples,
            self.rule
        );
        for c in self.scores.iter().filter(|c| c.name != "loss") {
            s.push_str(&format!("{} = {}\n", c.name, c.threshold));
        }
        if let Some(l) = self.scores.iter().find(|c| c.name == "loss") {
            s.push_str(&format!("loss = {}\n", l.threshold));
        }
        s
    }
}

/// Distribution and threshold of one score's per-sample values.
pub fn stats(
    name: &str,
    higher_is_better: bool,
    values: &[f64],
    wrong_share: Option<f64>,
) -> ScoreStats {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p| quantile(&sorted, p);
    let threshold = match wrong_share {
        None => mean,
        // Higher is better: the lowest `share` fall below; else the highest.
        Some(share) if higher_is_better => q(share),
        Some(share) => q(1.0 - share),
    };
    let wrong = values
        .iter()
        .filter(|&&v| {
            if higher_is_better {
                v < threshold
            } else {
                v > threshold
            }
        })
        .count();
    ScoreStats {
        name: name.into(),
        higher_is_better,
        mean,
        sd,
        min: q(0.0),
        q05: q(0.05),
        q25: q(0.25),
        median: q(0.5),
        q75: q(0.75),
        q95: q(0.95),
        max: q(1.0),
        threshold,
        judged_wrong: wrong as f64 / n,
    }
}

pub fn calibrate(args: &CalibrateArgs) -> Result<Calibration> {
    if let Some(s) = args.wrong_share
        && !(0.0..=1.0).contains(&s)
    {
        bail!("--wrong-share {s} must lie in [0, 1]");
    }
    if !["train", "val", "test"].contains(&args.split.as_str()) {
        bail!("--split `{}` must be train, val or test", args.split);
    }
    let mut l = load(&args.checkpoint)?;
    let info = l.session.plugin.info().clone();
    let mut wanted: Vec<(String, bool)> = if args.scores.is_empty() {
        info.scores
            .iter()
            .map(|s| (s.name.clone(), s.higher_is_better))
            .collect()
    } else {
        args.scores
            .iter()
            .map(|name| match info.scores.iter().find(|s| &s.name == name) {
                Some(s) => Ok((s.name.clone(), s.higher_is_better)),
                None if name == "loss" => Ok(("loss".into(), false)),
                None => bail!(
                    "--score {name}: the plugin `{}` has no such score (it has: {}; `loss` names the loss)",
                    info.name,
                    info.scores.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect::<Result<_>>()?
    };
    if wanted.is_empty() {
        wanted.push(("loss".into(), false));
    }
    let session = &mut l.session;
    let data = split_of(&session.splits, &args.split);
    if data.is_empty() {
        bail!(
            "the {} split of {} holds no samples",
            args.split,
            args.checkpoint.checkpoint.display()
        );
    }
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); wanted.len()];
    let indices: Vec<usize> = (0..data.len()).collect();
    let _guard = tch::no_grad_guard();
    for idx in data.batches_of_one_shape(&indices, l.cfg.eval.batch_size) {
        let (x, y) = data.batch(&idx, session.device)?;
        let pred = l.model.forward_t(&x, false);
        let loss = session.plugin.loss(&pred, &y)?;
        let scores = session.plugin.scores(&pred, &y)?;
        for (k, (name, _)) in wanted.iter().enumerate() {
            if name == "loss" {
                values[k].extend(Vec::<f64>::try_from(loss.to_kind(Kind::Double))?);
            } else if let Some(s) = scores.iter().find(|s| &s.name == name) {
                values[k].extend(&s.values);
            }
        }
    }
    let dir = args
        .checkpoint
        .out
        .clone()
        .unwrap_or_else(|| run_dir_of(&l.ckpt));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let calibration = Calibration {
        checkpoint: l.ckpt.clone(),
        split: args.split.clone(),
        samples: data.len(),
        rule: match args.wrong_share {
            None => "mean".into(),
            Some(s) => format!("share judged wrong {s}"),
        },
        scores: wanted
            .iter()
            .zip(&values)
            .map(|((name, hib), v)| stats(name, *hib, v, args.wrong_share))
            .collect(),
        dir: dir.clone(),
    };
    write_atomic(
        &dir.join("calibration.json"),
        serde_json::to_string_pretty(&calibration)?.as_bytes(),
    )?;
    write_atomic(
        &dir.join("calibration.toml"),
        calibration.snippet().as_bytes(),
    )?;
    Ok(calibration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_the_mean_or_the_share_judged_wrong() {
        let v = [0.2, 0.4, 0.6, 0.8, 1.0];
        let s = stats("hard_dice", true, &v, None);
        assert!((s.threshold - 0.6).abs() < 1e-12);
        assert_eq!(s.judged_wrong, 0.4);
        let s = stats("hard_dice", true, &v, Some(0.25));
        assert!((s.threshold - 0.4).abs() < 1e-12, "{s:?}");
        assert_eq!(s.judged_wrong, 0.2);
        // Lower is better: the share above the threshold is judged wrong.
        let s = stats("mre_mm", false, &v, Some(0.25));
        assert!((s.threshold - 0.8).abs() < 1e-12, "{s:?}");
        assert_eq!(s.judged_wrong, 0.2);
    }
}
