//! Segmentation: the model outputs class logits [B, C, H, W]; the target is a
//! class-index map [B, H, W] (or [B, 1, H, W]) stored as floats.
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

use amat_plugin_sdk::losses::{one_hot_channels, soft_dice, softmax_cross_entropy};
use amat_plugin_sdk::{
    DecodeRequest, Example, Metric, SampleScore, ScoreInfo, TargetKind, Task, TaskInfo, Tensor,
    export_task,
};

pub struct Segmentation;

/// Classes of the default label set (background + seven AAL groups, see
/// [`decode::CLASS_NAMES`]).
pub const CLASSES: u32 = decode::CLASS_NAMES.len() as u32;
const SMOOTH: f64 = 1.0;

/// Target as a long [B, H, W] class map.
fn class_map(target: &Tensor) -> Tensor {
    let s = target.shape();
    let t = if s.len() == 4 {
        target.reshape(&[s[0], s[2], s[3]])
    } else {
        target.reshape(&s)
    };
    t.to_long()
}

/// One-hot target as float [B, C, H, W].
fn one_hot(target: &Tensor, classes: i64) -> Tensor {
    one_hot_channels(&class_map(target), classes)
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
        if shape.len() != 4 {
            return Err(format!(
                "loss: prediction must be [B, C, H, W], got {shape:?}"
            ));
        }
        let classes = shape[1];
        let y = one_hot(target, classes);
        if y.shape() != shape {
            return Err(format!(
                "loss: target {:?} does not match prediction {shape:?}",
                target.shape()
            ));
        }
        let ce = softmax_cross_entropy(pred, &class_map(target))?;
        let dice = soft_dice(&pred.log_softmax(1).exp(), &y, SMOOTH)?;
        Ok(ce + (1.0 - dice))
    }

    fn scores(pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, String> {
        Ok(vec![SampleScore {
            name: "hard_dice".into(),
            values: hard_dice(pred, target)?,
        }])
    }

    fn metrics(pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, String> {
        metrics::dice_metrics(pred, &one_hot(target, pred.size(1)))
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
    let y = one_hot(target, classes);
    let hard = pred
        .argmax(1, false)
        .one_hot(classes)
        .permute(&[0, 3, 1, 2]);
    let inter = (&hard * &y).sum(&[2, 3], false).to_vec();
    let total = (hard.sum(&[2, 3], false) + y.sum(&[2, 3], false)).to_vec();
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
