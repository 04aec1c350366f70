//! `amat-host eval`: a checkpoint's robustness curve, and the loading of a
//! checkpoint with its run's plugin and data that `attack` shares.

use super::progress::Progress;
use super::session::{Session, effective_config, eval_seed, split_of};
use crate::attack::{self, Range};
use crate::config::RunConfig;
use crate::eval::{self, Curve, report};
use crate::model::{DeviceChoice, Net};
use crate::train::checkpoint;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

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
    pub model: Net,
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
        let other = effective_config(path, None, None, None)?;
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
    let model = cfg.network(&vs.root(), info);
    checkpoint::load_weights(&ckpt, &mut vs)?;
    let range = session.range();
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
    let intensity = crate::eval::report::intensity_note(splits.normalization.as_ref(), l.range);
    let data = split_of(splits, &l.cfg.eval.split);
    let mut curve = eval::robustness(
        &mut attack::Context::new(&l.model, plugin, l.range),
        data,
        &l.cfg.eval,
        *device,
        eval_seed(l.cfg.run.seed),
        &bar,
    )?;
    curve.intensity = intensity;
    bar.finish_and_clear();
    report::write(&out, &curve, &plugin.info().metric_names)?;
    Ok((out, curve))
}
