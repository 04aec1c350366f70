//! Mistakes that used to train without a word (issue 14): a loss with a
//! zero gradient, a loss normalised over the batch, metric names that differ
//! from `describe`, a tau no sample reaches, a negative tau. And the SDK's
//! loss helpers on hand-made tensors, returned as metrics for a test to
//! compare with hand-computed values.
#![allow(dead_code)] // `metrics` serves two of the builds only

use amat_plugin_sdk::{Metric, Tensor};

pub fn tau() -> f32 {
    if cfg!(feature = "tau-unreachable") {
        // A cross-entropy is never 0: no sample can be judged correct.
        0.0
    } else if cfg!(feature = "negative-tau") {
        -1.0
    } else {
        0.35
    }
}

/// The per-sample `loss` of `pred`, or a broken variant of it.
pub fn loss(loss: fn(&Tensor, &Tensor) -> Tensor, pred: &Tensor, target: &Tensor) -> Tensor {
    if cfg!(feature = "round-loss") {
        // Rounded logits: the same kind of value, but a zero gradient.
        return loss(&pred.round(), target);
    }
    let l = loss(pred, target);
    if cfg!(feature = "batch-normalised") {
        // Each sample's share of the batch: every value depends on the others.
        return &l / &l.sum(&[], false);
    }
    l
}

pub fn metrics(accuracy: Metric) -> Result<Vec<Metric>, String> {
    if cfg!(feature = "metrics-renamed") {
        return Ok(vec![Metric {
            name: "acc".into(),
            value: accuracy.value,
        }]);
    }
    let mut out = vec![accuracy];
    out.extend(sdk_losses()?);
    Ok(out)
}

/// Each helper of `amat_plugin_sdk::losses` on a batch of two samples, one
/// metric per sample: `<helper>_<sample>`.
fn sdk_losses() -> Result<Vec<Metric>, String> {
    use amat_plugin_sdk::losses::{
        binary_cross_entropy_with_logits, one_hot_channels, soft_dice, softmax_cross_entropy,
    };
    // Logits [2, 1, 2] against masks [2, 2].
    let logits = Tensor::from_f32(&[2.0, -1.0, 0.0, 0.0], &[2, 1, 2]);
    let masks = Tensor::from_f32(&[1.0, 0.0, 1.0, 0.0], &[2, 2]);
    let bce = binary_cross_entropy_with_logits(&logits, &masks)?;
    // Class logits [2, 2 classes, 1 position] against class indices [2, 1].
    let classes = Tensor::from_f32(&[0.0, 3f32.ln(), 1.0, 1.0], &[2, 2, 1]);
    let labels = Tensor::from_f32(&[1.0, 0.0], &[2, 1]);
    let ce = softmax_cross_entropy(&classes, &labels)?;
    // Probabilities [2, 1, 2] against masks; smooth 1.
    let probs = Tensor::from_f32(&[0.5, 1.0, 0.0, 0.0], &[2, 1, 2]);
    let full = Tensor::from_f32(&[1.0, 1.0, 1.0, 1.0], &[2, 2]);
    let dice = soft_dice(&probs, &full, 1.0)?;
    // A one-hot [2, 3, 1] of classes [2, 0]: its channel sums pick the classes.
    let hot = one_hot_channels(&Tensor::from_f32(&[2.0, 0.0], &[2, 1]), 3).reshape(&[6]);
    let mut out = Vec::new();
    for (name, t) in [("bce", bce), ("ce", ce), ("dice", dice), ("hot", hot)] {
        for (i, v) in t.to_vec().into_iter().enumerate() {
            out.push(Metric {
                name: format!("{name}_{i}"),
                value: v as f64,
            });
        }
    }
    Ok(out)
}
