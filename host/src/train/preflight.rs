//! Checks a run makes of its plugin, so that a loss which would train
//! silently wrong stops the run instead:
//!
//! - before training (`run`, each run of a `study`): the part of `plugin
//!   check` that catches such a loss, on the run's own first training batch
//!   through its fresh network (evaluation mode, so nothing the run keeps
//!   changes): loss shape, finite values, a graph to the prediction, per-sample
//!   independence, a non-zero gradient at the input, metrics (and scores) as
//!   described. A failure stops the run with the check's message and its fix;
//!   `--skip-checks` trains anyway.
//! - when AMAT's warm-up ends: if no training sample is judged correct, no
//!   margin can grow, so the run warns (log and `summary.md`) and shows the
//!   clean-loss quantiles against tau.

use super::amat::Judge;
use crate::data::Dataset;
use crate::plugin::Plugin;
use crate::plugin::check::{self, Battery, Case, Quantiles, Status};
use anyhow::{Result, bail};
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// Most samples of the batch checked before training.
const MAX_BATCH: usize = 8;
/// Most training samples judged when the warm-up ends.
const MAX_JUDGED: usize = 64;

/// What to change when a check fails.
fn fix(check: &str) -> &'static str {
    match check {
        "loss shape" => {
            "return one value per sample, shape [B]: reduce every dim but the first (Tensor::mean_per_sample)"
        }
        "loss finite" => {
            "keep the loss finite on real data: use the stable ops (log_softmax, softplus, log_sigmoid) \
             instead of log(softmax) or log(sigmoid), and clamp before log or division"
        }
        "loss attached" => {
            "compute the loss from `pred` with tensor ops only: detach, to_vec and Tensor::from_f32 cut the gradient"
        }
        "per-sample" => {
            "compute each sample's loss from its own prediction and target alone: no mean, sum or \
             normalisation over the batch (dim 0); reduce with Tensor::mean_per_sample"
        }
        "input gradient" => {
            "the loss must change smoothly with the prediction: round, floor, ceil, sign, argmax and \
             comparisons have zero gradient, so train on a smooth surrogate (softmax, sigmoid, a soft Dice) \
             and keep hard values for metrics and scores"
        }
        "metrics" => {
            "return every name `describe` lists in metric_names, each once (extra metrics may follow)"
        }
        "scores" => {
            "return exactly the scores `describe` lists, in order, with one finite value per sample"
        }
        _ => "see `amat-host plugin check`",
    }
}

/// The checks before training on the first samples of `data` (the training
/// split) through `model`; an error names the failing check and its fix.
pub fn before_training(
    plugin: &mut Plugin,
    model: &dyn ModuleT,
    data: &Dataset,
    batch_size: usize,
    device: Device,
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let n = data.len().min(batch_size.clamp(2, MAX_BATCH));
    // Volumes of several shapes: the first batch of one shape.
    let first = data
        .batches_of_one_shape(&(0..n).collect::<Vec<_>>(), n)
        .remove(0);
    let n = first.len();
    let (x, y) = data.batch(&first, device)?;
    let x = x.set_requires_grad(true);
    let pred = model.forward_t(&x, false);
    let path = plugin.path().to_path_buf();
    let scored = !plugin.info().scores.is_empty();
    let mut b = Battery {
        plugin,
        stats: Vec::new(),
        lines: Vec::new(),
    };
    if let Some((loss, sound)) = b.first_loss(&pred, &y)
        && sound
        && loss.requires_grad()
    {
        b.lines.push(input_gradient(&loss, &x));
        let case = Case {
            pred: pred.detach(),
            target: y.shallow_clone(),
        };
        b.per_sample(&case, &loss.detach());
        b.metrics_line(&case);
        if scored {
            let line = match b.plugin.scores(&case.pred, &case.target) {
                Ok(s) => check::pass("scores", format!("{} score(s)", s.len())),
                Err(e) => check::fail("scores", e.to_string()),
            };
            b.lines.push(line);
        }
    }
    if let Some(bad) = b.lines.iter().find(|l| l.status == Status::Fail) {
        bail!(
            "the check before training failed on the first {n} training samples: {}: {}. Fix: {}. \
             `amat-host plugin check {}` runs every check; --skip-checks trains anyway",
            bad.name,
            bad.detail,
            fix(bad.name),
            path.display()
        );
    }
    tracing::info!(
        "checks before training passed on {n} samples in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The summed loss's gradient at the network's input: finite and not zero.
fn input_gradient(loss: &Tensor, x: &Tensor) -> check::Line {
    use check::{fail, pass};
    let g = Tensor::run_backward(&[loss.sum(Kind::Float)], &[x], false, false).remove(0);
    let finite = g.isfinite().all().int64_value(&[]) == 1;
    let norm = g.norm().double_value(&[]);
    if !finite {
        fail(
            "input gradient",
            "the gradient at the network's input is not finite",
        )
    } else if norm == 0.0 {
        fail(
            "input gradient",
            "the gradient at the network's input is zero: the attacks and the training have nothing to follow",
        )
    } else {
        pass(
            "input gradient",
            format!("|grad x| = {norm:.3e} through the run's network"),
        )
    }
}

/// When AMAT's warm-up ends: judges the first training samples' clean
/// predictions (evaluation mode). With none judged correct, returns (and
/// logs) a warning with the clean-loss quantiles against tau.
pub fn after_warmup(
    plugin: &mut Plugin,
    judge: &mut Judge,
    model: &dyn ModuleT,
    data: &Dataset,
    batch_size: usize,
    device: Device,
    warmup_epochs: usize,
) -> Result<Option<String>> {
    let _guard = tch::no_grad_guard();
    let n = data.len().min(MAX_JUDGED);
    let (mut losses, mut correct) = (Vec::with_capacity(n), 0);
    let indices: Vec<usize> = (0..n).collect();
    for idx in data.batches_of_one_shape(&indices, batch_size) {
        let (x, y) = data.batch(&idx, device)?;
        let pred = model.forward_t(&x, false);
        let loss = plugin.loss(&pred, &y)?;
        correct += judge
            .correct(plugin, &pred, &y, Some(&loss))?
            .iter()
            .filter(|&&ok| ok)
            .count();
        losses.extend(Vec::<f64>::try_from(
            loss.to_device(Device::Cpu).to_kind(Kind::Double),
        )?);
    }
    if correct > 0 || n == 0 {
        return Ok(None);
    }
    let quantiles = Quantiles::of(&losses)
        .map(|q| q.text())
        .unwrap_or_else(|| "not finite".into());
    let warning = format!(
        "after {warmup_epochs} warm-up epoch(s) no training sample is judged correct ({n} judged by {}), \
         so AMAT's margins cannot move: every sample stays at the smallest margin, as in SAT at that \
         noise level. Clean loss {quantiles}; tau {}. Raise amat.tau (or the plugin's tau) to about the \
         median, warm up longer (train.warmup_epochs), or judge by a score ([amat.judge])",
        judge.describe(),
        judge.tau
    );
    tracing::warn!("{warning}");
    Ok(Some(warning))
}
