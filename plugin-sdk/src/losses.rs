//! Per-sample losses built from the contract's ops. Each returns `[B]` (one
//! value per sample, as `Task::loss` must) and checks that the target
//! matches the prediction, instead of letting broadcasting pair them wrongly
//! (`[B, 1, H, W]` with `[B, H, W]` broadcasts to `[B, B, H, W]`).

use crate::Tensor;

fn elements(t: &Tensor) -> i64 {
    t.shape().iter().product()
}

/// `target` reshaped to `pred`'s shape, or why it cannot be.
fn like(pred: &Tensor, target: &Tensor, what: &str) -> Result<Tensor, String> {
    let p = pred.shape();
    if p.len() < 2 {
        return Err(format!(
            "{what}: prediction must be [B, ...] with 2 or more dims, got {p:?}"
        ));
    }
    if elements(target) != elements(pred) {
        return Err(format!(
            "{what}: target {:?} does not match prediction {p:?}",
            target.shape()
        ));
    }
    Ok(target.reshape(&p))
}

/// Binary cross-entropy of logits `pred` against targets in [0, 1] of the
/// same number of elements (`[B, 1, H, W]` and `[B, H, W]` both fit), the
/// mean over each sample's elements: `softplus(x) - x y`, which equals
/// `-[y log s(x) + (1 - y) log(1 - s(x))]` and stays finite for any `x`.
pub fn binary_cross_entropy_with_logits(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
    let y = like(pred, target, "binary cross-entropy")?;
    Ok((pred.softplus() - pred * &y).mean_per_sample())
}

/// Softmax cross-entropy of class logits `pred` `[B, C, *spatial]` against
/// class indices `target` `[B, *spatial]` (or `[B, 1, *spatial]`) stored as
/// floats: `-log softmax(pred)[class]`, the mean over each sample's
/// positions. An index outside `0..C` fails the call. A loss that also needs
/// the probabilities (soft Dice) takes `pred.log_softmax(1)` once and calls
/// [`nll`]: a second `log_softmax` gives the same loss but a gradient that
/// differs in its last bits, and training amplifies such bits.
pub fn softmax_cross_entropy(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
    nll(&pred.log_softmax(1), target)
}

/// Negative log-likelihood of log-probabilities `log_probs` `[B, C,
/// *spatial]` (`log_softmax(1)` of logits) against class indices `target`
/// as in [`softmax_cross_entropy`]: `-log_probs[class]`, the mean over each
/// sample's positions.
pub fn nll(log_probs: &Tensor, target: &Tensor) -> Result<Tensor, String> {
    let p = log_probs.shape();
    if p.len() < 2 {
        return Err(format!(
            "cross-entropy: prediction must be [B, C, ...], got {p:?}"
        ));
    }
    let mut index = p.clone();
    index[1] = 1;
    if elements(target) != index.iter().product::<i64>() {
        return Err(format!(
            "cross-entropy: target {:?} does not hold one class index per position of prediction {p:?}",
            target.shape()
        ));
    }
    let labels = target.reshape(&index).to_long();
    Ok(-log_probs.gather(1, &labels).mean_per_sample())
}

/// Soft Dice per sample: for probabilities `probs` `[B, C, *spatial]` and a
/// target of the same number of elements (one-hot, or a 0/1 mask for `C =
/// 1`), per channel `(2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth)` over
/// the positions, then the mean over the channels. A loss is `1 - dice`.
pub fn soft_dice(probs: &Tensor, target: &Tensor, smooth: f64) -> Result<Tensor, String> {
    let y = like(probs, target, "soft Dice")?;
    let spatial: Vec<i64> = (2..probs.shape().len() as i64).collect();
    let (inter, total) = if spatial.is_empty() {
        (probs * &y, probs + &y)
    } else {
        (
            (probs * &y).sum(&spatial, false),
            probs.sum(&spatial, false) + y.sum(&spatial, false),
        )
    };
    Ok(((inter * 2.0 + smooth) / (total + smooth)).mean(&[1], false))
}

/// Class indices `[B, *spatial]` (or `[B, 1, *spatial]`) stored as floats to
/// a float one-hot `[B, C, *spatial]`, the layout of a `C`-channel prediction.
pub fn one_hot_channels(target: &Tensor, classes: i64) -> Tensor {
    let s = target.shape();
    let labels = if s.len() >= 3 && s[1] == 1 {
        let mut squeezed = s.clone();
        squeezed.remove(1);
        target.reshape(&squeezed)
    } else {
        target.reshape(&s)
    };
    let n = labels.shape().len() as i64;
    // The one-hot dim comes last; move it to dim 1.
    let order: Vec<i64> = std::iter::once(0)
        .chain(std::iter::once(n))
        .chain(1..n)
        .collect();
    labels.to_long().one_hot(classes).permute(&order)
}
