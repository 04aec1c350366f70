//! Losses written directly in tch: the yardstick the plugins are checked and
//! benchmarked against, and a way to train without any plugin.

use tch::{Kind, Tensor};

/// Per-sample segmentation loss, the same formula as `plugins/segmentation`:
/// cross-entropy (mean over pixels) + 1 - soft Dice (mean over classes).
/// `pred` is logits [B, C, *spatial] (2D or 3D); `target` class indices
/// [B, *spatial] (any dtype).
pub fn dice_ce_loss(pred: &Tensor, target: &Tensor) -> Tensor {
    let classes = pred.size()[1];
    let dims = pred.dim() as i64;
    // [B, *spatial, C] -> [B, C, *spatial]
    let order: Vec<i64> = [0, dims - 1].into_iter().chain(1..dims - 1).collect();
    let y = target
        .to_kind(Kind::Int64)
        .one_hot(classes)
        .permute(order.as_slice())
        .to_kind(Kind::Float);
    let spatial: Vec<i64> = (2..dims).collect();
    let pixels: Vec<i64> = (1..dims - 1).collect();
    let log_p = pred.log_softmax(1, Kind::Float);
    let ce = -(&log_p * &y)
        .sum_dim_intlist(1, false, Kind::Float)
        .mean_dim(pixels.as_slice(), false, Kind::Float);
    let p = log_p.exp();
    let spatial = spatial.as_slice();
    let inter = (&p * &y).sum_dim_intlist(spatial, false, Kind::Float);
    let total = p.sum_dim_intlist(spatial, false, Kind::Float)
        + y.sum_dim_intlist(spatial, false, Kind::Float);
    let dice = (inter * 2.0 + 1.0) / (total + 1.0);
    ce + (1.0 - dice.mean_dim(1, false, Kind::Float))
}
