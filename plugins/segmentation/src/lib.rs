//! Segmentation: the model outputs class logits [B, C, *spatial] (images
//! [B, C, H, W] or volumes [B, C, D, H, W]); the target is a class-index map
//! [B, *spatial] (or [B, 1, *spatial]) stored as floats.
//!
//! Loss per sample: cross-entropy (mean over pixels) + (1 - soft Dice, mean
//! over classes). Metrics: hard Dice per foreground class and their mean, as
//! nnU-Net reports them (see [`metrics`]).
//!
//! Data: Colin27 (`ch2`) slices; targets are AAL's regions grouped into lobes
//! (8 classes, the default) or the brain mask (a 2-class coarse variant on the
//! same 8 output channels). See [`decode`] for the options.

pub mod decode;
pub mod metrics;

use amat_plugin_sdk::losses::{nll, soft_dice};
use amat_plugin_sdk::{
    DecodeRequest, Example, Metric, SampleScore, ScoreInfo, TargetKind, Task, TaskInfo, Tensor,
    export_task,
};

pub struct Segmentation;

/// Classes of the default label set (background + seven AAL groups, see
/// [`decode::CLASS_NAMES`]).
pub const CLASSES: u32 = decode::CLASS_NAMES.len() as u32;
const SMOOTH: f64 = 1.0;

/// The spatial axes of a prediction of `rank` axes [B, C, *spatial].
pub fn spatial_dims(rank: usize) -> Vec<i64> {
    (2..rank as i64).collect()
}

/// Target as a long [B, *spatial] class map, for a prediction of `rank` axes.
fn class_map(target: &Tensor, rank: usize) -> Tensor {
    let s = target.shape();
    let t = if s.len() == rank {
        // [B, 1, *spatial]
        let squeezed: Vec<i64> = s[..1].iter().chain(&s[2..]).copied().collect();
        target.reshape(&squeezed)
    } else {
        target.reshape(&s)
    };
    t.to_long()
}

/// Moves a one-hot's class axis (last) to axis 1: [B, *spatial, C] -> [B, C, *spatial].
pub fn classes_first(t: &Tensor, rank: usize) -> Tensor {
    let r = rank as i64;
    let order: Vec<i64> = [0, r - 1].into_iter().chain(1..r - 1).collect();
    t.permute(&order)
}

/// One-hot target as float [B, C, *spatial], for a prediction of `rank` axes.
pub fn one_hot(target: &Tensor, classes: i64, rank: usize) -> Tensor {
    classes_first(&class_map(target, rank).one_hot(classes), rank)
}

/// Per-sample, per-class Dice [B, C] of two [B, C, *spatial] maps.
pub fn dice(p: &Tensor, y: &Tensor) -> Tensor {
    let spatial = spatial_dims(p.shape().len());
    let inter = (p * y).sum(&spatial, false);
    let total = p.sum(&spatial, false) + y.sum(&spatial, false);
    (inter * 2.0 + SMOOTH) / (total + SMOOTH)
}

impl Task for Segmentation {
    fn describe() -> TaskInfo {
        TaskInfo {
            name: "segmentation".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Per-pixel classes; loss = cross-entropy + (1 - soft Dice) per sample"
                .into(),
            input_channels: 1,
            output_channels: CLASSES,
            target_kind: TargetKind::ClassMap,
            tau: 0.35,
            intensity_min: 0.0,
            intensity_max: 1.0,
            // Per-class Dice values follow as extras, for the classes a set defines.
            metric_names: vec!["dice_mean".into()],
            scores: vec![ScoreInfo::new(
                "hard_dice",
                true,
                "per-sample hard Dice, the largest over foreground classes (the authors' judgement)",
            )],
        }
    }

    fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
        decode::decode(request)
    }

    fn loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
        let shape = pred.shape();
        if shape.len() != 4 && shape.len() != 5 {
            return Err(format!(
                "loss: prediction must be [B, C, H, W] or [B, C, D, H, W], got {shape:?}"
            ));
        }
        let classes = shape[1];
        let y = one_hot(target, classes, shape.len());
        if y.shape() != shape {
            return Err(format!(
                "loss: target {:?} does not match prediction {shape:?}",
                target.shape()
            ));
        }
        // One log_softmax for both terms, as the built-in loss and the
        // first studies computed it: two give the same loss but a gradient
        // that differs in its last bits, which moves every trained run.
        let log_p = pred.log_softmax(1);
        let ce = nll(&log_p, target)?;
        let dice = soft_dice(&log_p.exp(), &y, SMOOTH)?;
        Ok(ce + (1.0 - dice))
    }

    fn scores(pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, String> {
        Ok(vec![SampleScore {
            name: "hard_dice".into(),
            values: hard_dice(pred, target)?,
        }])
    }

    fn metrics(pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, String> {
        metrics::dice_metrics(pred, &one_hot(target, pred.size(1), pred.shape().len()))
    }
}

/// Per sample, the largest hard Dice over the foreground classes present in
/// the prediction or the target; 1 when neither holds any foreground.
pub fn hard_dice(pred: &Tensor, target: &Tensor) -> Result<Vec<f64>, String> {
    let shape = pred.shape();
    if shape.len() < 3 {
        return Err(format!(
            "scores: prediction must be [B, C, *spatial], got {shape:?}"
        ));
    }
    let (b, classes) = (shape[0] as usize, shape[1]);
    let y = one_hot(target, classes, shape.len());
    let hard = classes_first(&pred.argmax(1, false).one_hot(classes), shape.len());
    let spatial = spatial_dims(shape.len());
    let inter = (&hard * &y).sum(&spatial, false).to_vec();
    let total = (hard.sum(&spatial, false) + y.sum(&spatial, false)).to_vec();
    let c = classes as usize;
    Ok((0..b)
        .map(|i| {
            (1..c)
                .filter(|&k| total[i * c + k] > 0.0)
                .map(|k| 2.0 * inter[i * c + k] as f64 / total[i * c + k] as f64)
                .reduce(f64::max)
                .unwrap_or(1.0)
        })
        .collect())
}

export_task!(Segmentation);
