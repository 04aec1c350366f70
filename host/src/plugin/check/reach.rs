//! Can the plugin's tau be reached at all? With decoded examples, `plugin
//! check` fits a prediction directly to their targets (gradient steps on the
//! prediction itself, no network) and sets the per-sample losses against
//! tau. If even a fitted prediction leaves every sample above tau, no trained
//! network does better: AMAT would judge every sample wrong and its margins
//! could never grow.

use super::{Battery, Line, dense, pass, skip, values};
use crate::plugin::{Example, TaskInfo};
use tch::{Device, Kind, Tensor};

/// Adam steps of the fit.
const FIT_STEPS: usize = 100;
/// Largest and smallest step: the step shrinks linearly so a regression
/// loss settles instead of circling its minimum.
const FIT_LR: (f64, f64) = (0.1, 0.001);
/// Most decoded examples fitted.
const MAX_EXAMPLES: usize = 8;

/// The q-quantile of sorted values (linear interpolation).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// Least, quartiles and largest of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiles {
    pub min: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub max: f64,
}

impl Quantiles {
    /// None when `values` is empty or holds a NaN.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let q = |p| quantile(&sorted, p);
        Some(Self {
            min: sorted[0],
            q25: q(0.25),
            median: q(0.5),
            q75: q(0.75),
            max: sorted[sorted.len() - 1],
        })
    }

    pub fn text(&self) -> String {
        format!(
            "min {:.4}, q25 {:.4}, median {:.4}, q75 {:.4}, max {:.4}",
            self.min, self.q25, self.median, self.q75, self.max
        )
    }
}

/// The `tau` line: pass when some fitted sample reaches tau, a warning when
/// none does, skipped without decoded examples.
pub(super) fn tau_line(b: &mut Battery, info: &TaskInfo, decoded: Option<&[Example]>) -> Line {
    let Some(examples) = decoded.filter(|e| !e.is_empty()) else {
        return skip(
            "tau",
            "skipped: needs --sample FILE (the loss of a prediction fitted to real targets, against tau)",
        );
    };
    let first = &examples[0];
    let same: Vec<&Example> = examples
        .iter()
        .filter(|e| e.image.shape == first.image.shape && e.target.shape == first.target.shape)
        .take(MAX_EXAMPLES)
        .collect();
    let target = Tensor::stack(
        &same.iter().map(|e| dense(&e.target)).collect::<Vec<_>>(),
        0,
    );
    let (h, w) = (
        first.image.shape.get(1).copied().unwrap_or(1),
        first.image.shape.get(2).copied().unwrap_or(1),
    );
    let shape = [same.len() as i64, info.output_channels as i64, h, w];
    let (start, fitted) = match fit(b, &target, shape) {
        Ok(r) => r,
        Err(e) => {
            return skip(
                "tau",
                format!("skipped: the loss failed while fitting: {e}"),
            );
        }
    };
    let (Some(start), Some(q)) = (Quantiles::of(&start), Quantiles::of(&fitted)) else {
        return skip("tau", "skipped: the fitted loss is not finite");
    };
    let tau = info.tau as f64;
    let reached = fitted.iter().filter(|&&l| l <= tau).count();
    let detail = format!(
        "loss of a prediction fitted to {} decoded target(s) by {FIT_STEPS} steps: {} (from median {:.4}); \
         tau {tau}: {reached} of {} at or below",
        same.len(),
        q.text(),
        start.median,
        same.len()
    );
    if reached > 0 {
        pass("tau", detail)
    } else {
        Line {
            name: "tau",
            status: super::Status::Warn,
            detail: format!(
                "{detail}. No sample reaches tau, so AMAT would judge every sample wrong and no margin \
                 could grow: raise tau in describe to about the fitted median, or judge by a score \
                 ([amat.judge] in the run config)"
            ),
        }
    }
}

/// Per-sample losses of a zero prediction of `shape` and of the same
/// prediction after Adam steps on it.
fn fit(b: &mut Battery, target: &Tensor, shape: [i64; 4]) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut p = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let (mut m, mut v) = (p.zeros_like(), p.zeros_like());
    let (beta1, beta2) = (0.9f64, 0.999f64);
    let mut start = Vec::new();
    for step in 0..FIT_STEPS {
        let leaf = p.detach().set_requires_grad(true);
        let loss = b.sound_loss(&leaf, target)?;
        if step == 0 {
            start = values(&loss);
        }
        let g = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&leaf], false, false).remove(0);
        m = &m * beta1 + &g * (1.0 - beta1);
        v = &v * beta2 + g.square() * (1.0 - beta2);
        let t = (step + 1) as i32;
        let m_hat = &m / (1.0 - beta1.powi(t));
        let v_hat = &v / (1.0 - beta2.powi(t));
        let lr = FIT_LR.0 + (FIT_LR.1 - FIT_LR.0) * step as f64 / (FIT_STEPS - 1) as f64;
        p = leaf.detach() - m_hat / (v_hat.sqrt() + 1e-8) * lr;
    }
    let _guard = tch::no_grad_guard();
    let end = b.sound_loss(&p, target)?;
    Ok((start, values(&end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_and_refuse_nan() {
        let q = Quantiles::of(&[4.0, 0.0, 2.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (q.min, q.q25, q.median, q.q75, q.max),
            (0.0, 1.0, 2.0, 3.0, 4.0)
        );
        let q = Quantiles::of(&[0.0, 1.0]).unwrap();
        assert_eq!(q.q25, 0.25);
        assert!(Quantiles::of(&[]).is_none());
        assert!(Quantiles::of(&[1.0, f64::NAN]).is_none());
    }
}
