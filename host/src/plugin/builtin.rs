//! The built-in segmentation loss (`crate::builtin::dice_ce_loss`) behind the
//! same [`Plugin`](super::Plugin) face as a loaded plugin, so the trainer can
//! run without any plugin file: the yardstick that the wasm and native
//! plugins' overhead is measured against (`benches/vs_pytorch.rs`).

use super::{
    Backend, CallError, DecodeRequest, Example, Metric, SampleScore, ScoreInfo, TargetKind,
    TaskInfo,
};
use crate::builtin::dice_ce_loss;
use tch::{Kind, Tensor};

/// The segmentation plugin's task (plugins/segmentation), computed in tch.
pub(super) struct BuiltinSegmentation {
    pub classes: u32,
}

impl Backend for BuiltinSegmentation {
    fn last_usage(&self) -> super::Usage {
        super::Usage::default()
    }

    fn describe(&mut self) -> Result<TaskInfo, CallError> {
        Ok(TaskInfo {
            name: "segmentation-builtin".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Built-in per-pixel classes; loss = cross-entropy + (1 - soft Dice) per sample"
                    .into(),
            input_channels: 1,
            output_channels: self.classes,
            target_kind: TargetKind::ClassMap,
            tau: 0.35,
            intensity_min: 0.0,
            intensity_max: 1.0,
            metric_names: vec!["dice_mean".into()],
            scores: vec![ScoreInfo::new(
                "hard_dice",
                true,
                "per-sample hard Dice, the largest over foreground classes",
            )],
        })
    }

    fn decode(&mut self, _request: &DecodeRequest) -> Result<Vec<Example>, CallError> {
        Err(CallError::Plugin(
            "the built-in segmentation loss decodes no files".into(),
        ))
    }

    fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, CallError> {
        // 2D [B, C, H, W] or 3D [B, C, D, H, W]; the target drops C.
        let p = pred.size();
        let fits = matches!(p.len(), 4 | 5)
            && target.size().len() == p.len() - 1
            && target.size()[0] == p[0]
            && target.size()[1..] == p[2..];
        if !fits {
            return Err(CallError::Plugin(format!(
                "loss: prediction must be [B, C, *spatial] (2D or 3D) and target [B, *spatial], got {:?} and {:?}",
                pred.size(),
                target.size()
            )));
        }
        Ok(dice_ce_loss(pred, target))
    }

    fn correct(&mut self, _pred: &Tensor, _target: &Tensor) -> Result<Option<Tensor>, CallError> {
        Ok(None)
    }

    fn scores(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, CallError> {
        Ok(vec![SampleScore {
            name: "hard_dice".into(),
            values: hard_dice(pred, target),
        }])
    }

    fn contract(&self) -> String {
        "built-in".into()
    }

    /// Hard Dice over the batch, averaged over the classes present in the target.
    fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, CallError> {
        let classes = pred.size()[1];
        let spatial: &[i64] = &[0, 2, 3];
        let hard = pred
            .argmax(1, false)
            .one_hot(classes)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let y = target
            .to_kind(Kind::Int64)
            .one_hot(classes)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let sum = |t: &Tensor| {
            Vec::<f32>::try_from(t.sum_dim_intlist(spatial, false, Kind::Float)).unwrap_or_default()
        };
        let (inter, ph, py) = (sum(&(&hard * &y)), sum(&hard), sum(&y));
        let present: Vec<f64> = (0..classes as usize)
            .filter(|&c| py[c] > 0.0)
            .map(|c| 2.0 * inter[c] as f64 / (ph[c] as f64 + py[c] as f64))
            .collect();
        let mean = present.iter().sum::<f64>() / present.len().max(1) as f64;
        Ok(vec![Metric {
            name: "dice_mean".into(),
            value: mean,
        }])
    }
}

/// Per sample, the hard Dice of each foreground class (classes absent from
/// both prediction and target left out) and its largest value: the authors'
/// adversarial judgement for segmentation. 1 when no foreground class is in
/// either (nothing to find, nothing found).
fn hard_dice(pred: &Tensor, target: &Tensor) -> Vec<f64> {
    let _guard = tch::no_grad_guard();
    let classes = pred.size()[1];
    let hard = pred.argmax(1, false).one_hot(classes).to_kind(Kind::Float);
    let y = target
        .to_kind(Kind::Int64)
        .one_hot(classes)
        .to_kind(Kind::Float);
    let sums = |t: &Tensor| -> Vec<Vec<f32>> {
        let s = t.sum_dim_intlist(&[1i64, 2][..], false, Kind::Float);
        Vec::<Vec<f32>>::try_from(s).unwrap_or_default()
    };
    let (inter, ph, py) = (sums(&(&hard * &y)), sums(&hard), sums(&y));
    (0..inter.len())
        .map(|b| {
            (1..classes as usize)
                .filter(|&c| ph[b][c] + py[b][c] > 0.0)
                .map(|c| 2.0 * inter[b][c] as f64 / (ph[b][c] + py[b][c]) as f64)
                .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
                .unwrap_or(1.0)
        })
        .collect()
}
