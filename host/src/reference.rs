//! The hand-over to the PyTorch-Python reference of the training steps
//! (`host/benches/reference/amat_reference.py`): a state directory holding
//! `config.json` (the run's settings, AMAT margins, batch order, torch seed),
//! `weights.npz` (the U-Net's variables under amat's names) and `data.npz`
//! (`images` [N, C, *spatial], `targets` [N, *spatial], 2D or 3D). From one state both sides
//! compute the same numbers; `host/benches/vs_pytorch/main.rs` times them and
//! `tests/vs_pytorch_parity.rs` compares them.

use crate::config::{OptimizerKind, RunConfig, Schedule};
use crate::data::{Dataset, Sample};
use crate::plugin::TaskInfo;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// What the reference starts from, besides the run's config.
pub struct StateInputs<'a> {
    pub info: &'a TaskInfo,
    pub weights: &'a VarStore,
    pub data: &'a Dataset,
    /// AMAT's margin per training sample.
    pub margins: &'a [f32],
    /// The sample order of the epoch.
    pub order: &'a [usize],
    /// The torch seed set at the start of the epoch (random starts).
    pub torch_seed: i64,
    pub threads: usize,
}

/// Writes the state directory `dir` (created if missing).
pub fn write_state(dir: &Path, cfg: &RunConfig, s: &StateInputs) -> Result<()> {
    let t = &cfg.train;
    // The reference implements what the benchmark and the parity test use.
    if t.optimizer != OptimizerKind::Adam
        || t.weight_decay != 0.0
        || t.schedule != Schedule::Constant
    {
        bail!(
            "reference state: only Adam without weight decay at a constant rate is mirrored in Python"
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("reference state {}", dir.display()))?;
    let a = &cfg.amat;
    let config = json!({
        "model": {
            "depth": cfg.model.depth, "width": cfg.model.width, "norm": cfg.model.norm,
            "dims": cfg.model.dims, "pool": cfg.model.pool, "kernel": cfg.model.kernel,
        },
        "in_channels": s.info.input_channels,
        "out_channels": s.info.output_channels,
        "train": {
            "batch_size": t.batch_size, "lr": t.lr, "adam_betas": t.adam_betas, "adam_eps": t.adam_eps,
            "beta": t.beta, "attack": t.attack,
        },
        "sat": { "eps": cfg.sat.eps },
        "amat": {
            "tau": a.tau.unwrap_or(s.info.tau as f64), "delta_eps": a.delta_eps(),
            // JSON has no infinity: none stands for it.
            "eps_max": a.eps_max.is_finite().then_some(a.eps_max),
            "rule": a.rule, "tau_clean": a.tau_clean, "reset_wrong": a.reset_wrong,
            "search_steps": a.search_steps, "search_tolerance": a.search_tolerance, "margins": s.margins,
        },
        "range": [s.info.intensity_min, s.info.intensity_max],
        "threads": s.threads,
        "order": s.order,
        "torch_seed": s.torch_seed,
    });
    crate::fsio::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let vars: Vec<(String, Tensor)> = s
        .weights
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.to(Device::Cpu)))
        .collect();
    Tensor::write_npz(&vars, dir.join("weights.npz")).context("writing weights.npz")?;
    let (images, targets) = s
        .data
        .batch(&(0..s.data.len()).collect::<Vec<_>>(), Device::Cpu)?;
    Tensor::write_npz(
        &[("images", images), ("targets", targets)],
        dir.join("data.npz"),
    )
    .context("writing data.npz")?;
    Ok(())
}

/// Loads `weights.npz` into the variables of `vs` (every variable must be there).
pub fn read_weights(vs: &VarStore, path: &Path) -> Result<()> {
    let named: HashMap<String, Tensor> = Tensor::read_npz(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect();
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let src = named
            .get(&name)
            .with_context(|| format!("{}: no variable `{name}`", path.display()))?;
        if src.size() != var.size() {
            bail!(
                "{}: `{name}` has shape {:?}, the model {:?}",
                path.display(),
                src.size(),
                var.size()
            );
        }
        var.copy_(src);
    }
    Ok(())
}

/// Loads `data.npz` as a dataset (one sample per row).
pub fn read_dataset(path: &Path) -> Result<Dataset> {
    let named: HashMap<String, Tensor> = Tensor::read_npz(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect();
    let get = |k: &str| {
        named
            .get(k)
            .with_context(|| format!("{}: no `{k}`", path.display()))
    };
    let (images, targets) = (
        get("images")?.to_kind(Kind::Float),
        get("targets")?.to_kind(Kind::Float),
    );
    let samples = (0..images.size()[0])
        .map(|i| Sample {
            id: format!("reference-{i:05}"),
            image: images.get(i),
            target: targets.get(i),
        })
        .collect();
    Ok(Dataset::new("reference", samples))
}

/// The reference script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/amat_reference.py")
}

/// A Python that can run the reference: `$AMAT_PYTHON`, else `python3` on the
/// PATH, provided it imports torch and numpy. Err says why not.
pub fn python() -> Result<PathBuf, String> {
    let python = std::env::var_os("AMAT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .args(["-c", "import torch, numpy; print(torch.__version__)"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() || out.stdout.trim_ascii().is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} cannot import torch and numpy: {}",
            python.display(),
            err.lines().last().unwrap_or("").trim()
        ));
    }
    Ok(python)
}
