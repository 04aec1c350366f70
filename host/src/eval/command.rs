//! `amat-host eval` and `amat-host attack`: a checkpoint's robustness curve,
//! and one sample attacked with its noise and predictions saved as `.npy`.

use super::{Curve, report};
use crate::attack::{Range, sample_norms};
use crate::model::{DeviceChoice, UNet};
use crate::train::checkpoint::{self, write_atomic};
use crate::train::config::RunConfig;
use crate::train::run::{Progress, Session, eval_seed, split_of};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Default)]
pub struct CheckpointArgs {
    /// A run folder (its newest checkpoint) or one checkpoint folder.
    pub checkpoint: PathBuf,
    pub plugin: Option<PathBuf>,
    /// Replaces the checkpoint's `[eval]` and `[data]` sections.
    pub config: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    pub out: Option<PathBuf>,
}

/// A checkpoint's model, ready to evaluate.
pub struct Loaded {
    pub cfg: RunConfig,
    pub ckpt: PathBuf,
    pub session: Session,
    pub vs: VarStore,
    pub model: UNet,
    pub range: Range,
}

/// The run folder a checkpoint folder belongs to.
pub(crate) fn run_dir_of(ckpt: &Path) -> PathBuf {
    match ckpt.parent() {
        Some(p) if p.file_name().is_some_and(|n| n == "checkpoints") => {
            p.parent().unwrap_or(p).to_path_buf()
        }
        _ => ckpt.to_path_buf(),
    }
}

pub fn load(args: &CheckpointArgs) -> Result<Loaded> {
    let ckpt = checkpoint::resolve(&args.checkpoint)?;
    let mut cfg = checkpoint::read_config(&ckpt)?;
    if let Some(path) = &args.config {
        let other = crate::train::run::effective_config(path, None, None, None)?;
        if other.model != cfg.model {
            bail!(
                "config {}: its [model] differs from the checkpoint's {}",
                path.display(),
                ckpt.display()
            );
        }
        cfg.eval = other.eval;
        cfg.data = other.data;
    }
    if let Some(p) = &args.plugin {
        cfg.run.plugin = Some(std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    }
    if let Some(d) = args.device {
        cfg.run.device = d;
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    let session = Session::open(&cfg)?;
    let info = session.plugin.info();
    let mut vs = VarStore::new(session.device);
    let model = UNet::new(
        &vs.root(),
        &cfg.model,
        info.input_channels as i64,
        info.output_channels as i64,
    );
    checkpoint::load_weights(&ckpt, &mut vs)?;
    let range = Range {
        min: info.intensity_min as f64,
        max: info.intensity_max as f64,
    };
    Ok(Loaded {
        cfg,
        ckpt,
        session,
        vs,
        model,
        range,
    })
}

/// `amat-host eval`: writes the curve's files and returns it.
pub fn evaluate(args: &CheckpointArgs) -> Result<(PathBuf, Curve)> {
    let mut l = load(args)?;
    let name = l
        .ckpt
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint")
        .to_string();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| run_dir_of(&l.ckpt).join(format!("eval-{name}")));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let progress = Progress::new();
    let bar = progress.bar("eval");
    let Session {
        plugin,
        splits,
        device,
    } = &mut l.session;
    let data = split_of(splits, &l.cfg.eval.split);
    let curve = super::robustness(
        &l.model,
        plugin,
        data,
        &l.cfg.eval,
        l.range,
        *device,
        eval_seed(l.cfg.run.seed),
        &bar,
    )?;
    bar.finish_and_clear();
    report::write(&out, &curve, &plugin.info().metric_names)?;
    Ok((out, curve))
}

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
    t.to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .write_npy(&path)
        .with_context(|| format!("cannot write {}", path.display()))
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
    let (x, y) = data.batch(&[args.sample], *device);
    let (clean_pred, clean_loss) = {
        let _guard = tch::no_grad_guard();
        let p = tch::nn::ModuleT::forward_t(&l.model, &x, false);
        let loss = plugin.loss(&p, &y)?.double_value(&[0]);
        (p, loss)
    };
    tch::manual_seed(eval_seed(l.cfg.run.seed));
    let (delta, adv_pred, adv_loss) =
        super::worst_case(&l.model, plugin, &x, &y, args.eps, &l.cfg.eval, l.range)?;
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
        clean_metrics: plugin.metrics(&clean_pred, &y)?,
        adversarial_metrics: plugin.metrics(&adv_pred, &y)?,
        dir: out.clone(),
    };
    write_atomic(
        &out.join("attack.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}
