//! `amat-host attack`: one sample of a checkpoint's data attacked, with its
//! noise and predictions saved as `.npy` for a viewer.

use super::evaluate::{CheckpointArgs, load, run_dir_of};
use super::session::{Session, eval_seed, split_of};
use crate::attack::{self, sample_norms};
use crate::eval;
use crate::fsio::{write_atomic, write_atomic_with};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct AttackArgs {
    pub checkpoint: CheckpointArgs,
    pub split: String,
    pub sample: usize,
    pub eps: f64,
}

/// What `attack` found for one sample.
#[derive(Debug, serde::Serialize)]
pub struct AttackReport {
    pub sample: String,
    pub eps: f64,
    pub noise_norm: f64,
    pub clean_loss: f64,
    pub adversarial_loss: f64,
    pub clean_metrics: Vec<crate::plugin::Metric>,
    pub adversarial_metrics: Vec<crate::plugin::Metric>,
    pub dir: PathBuf,
}

fn npy(dir: &Path, name: &str, t: &Tensor) -> Result<()> {
    let path = dir.join(name);
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float);
    write_atomic_with(&path, |tmp| {
        t.write_npy(tmp)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

/// `amat-host attack`: attacks one sample with the config's evaluation
/// attack and saves image, target, noise, attacked image and both
/// predictions as `.npy`, plus `attack.json`.
pub fn attack(args: &AttackArgs) -> Result<AttackReport> {
    if !(args.eps.is_finite() && args.eps >= 0.0) {
        bail!("--eps {} must be >= 0", args.eps);
    }
    let mut l = load(&args.checkpoint)?;
    if !["train", "val", "test"].contains(&args.split.as_str()) {
        bail!("--split `{}` must be train, val or test", args.split);
    }
    let Session {
        plugin,
        splits,
        device,
    } = &mut l.session;
    let data = split_of(splits, &args.split);
    let Some(id) = data.id(args.sample) else {
        bail!(
            "--sample {}: the {} split has {} samples",
            args.sample,
            args.split,
            data.len()
        );
    };
    let id = id.to_string();
    let (x, y) = data.batch(&[args.sample], *device)?;
    let mut ctx = attack::Context::new(&l.model, plugin, l.range);
    let (clean_pred, clean_loss) = ctx.predict(&x, &y)?;
    let clean_loss = clean_loss.double_value(&[0]);
    tch::manual_seed(eval_seed(l.cfg.run.seed));
    let (delta, adv_pred, adv_loss) = eval::worst_case(&mut ctx, &x, &y, args.eps, &l.cfg.eval)?;
    let out = args.checkpoint.out.clone().unwrap_or_else(|| {
        run_dir_of(&l.ckpt)
            .join("attacks")
            .join(format!("{}-{}-eps-{}", args.split, args.sample, args.eps))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    npy(&out, "image.npy", &x.get(0))?;
    npy(&out, "target.npy", &y.get(0))?;
    npy(&out, "noise.npy", &delta.get(0))?;
    npy(&out, "adversarial.npy", &(&x + &delta).get(0))?;
    npy(&out, "prediction_clean.npy", &clean_pred.get(0))?;
    npy(&out, "prediction_adversarial.npy", &adv_pred.get(0))?;
    let report = AttackReport {
        sample: id,
        eps: args.eps,
        noise_norm: sample_norms(&delta, l.cfg.eval.attack.norm).double_value(&[0]),
        clean_loss,
        adversarial_loss: adv_loss.double_value(&[0]),
        clean_metrics: ctx.plugin.metrics(&clean_pred, &y)?,
        adversarial_metrics: ctx.plugin.metrics(&adv_pred, &y)?,
        dir: out.clone(),
    };
    write_atomic(
        &out.join("attack.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}
